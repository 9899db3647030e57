"""herald-push: the backend side of a Herald push server, standard library only.

    from herald_push import Herald, HeraldError, sign_token, parse_webhook

    herald = Herald("http://127.0.0.1:7070", api_key="...")
    herald.publish("news", {"text": "hello"})

Layout: ``client`` (one method per backend endpoint, ``HeraldError``),
``token`` (HS256 tokens signed locally), ``webhook`` (signature checks),
``types`` (the answers' shapes). See docs/backend-libraries.md.
"""

from .client import Herald, HeraldError
from .token import sign_token
from .types import (
    ChannelDeleted,
    ChannelInfo,
    Envelope,
    History,
    Mailbox,
    Presence,
    PresenceUser,
    Published,
    Ticket,
    Token,
    UserDisconnected,
    UserPublished,
    WebhookBatch,
    WebhookEvent,
)
from .webhook import SIGNATURE_HEADER, WebhookError, parse_webhook, verify_webhook

__version__ = "0.1.0"

__all__ = [
    "Herald",
    "HeraldError",
    "sign_token",
    "verify_webhook",
    "parse_webhook",
    "WebhookError",
    "SIGNATURE_HEADER",
    "ChannelDeleted",
    "ChannelInfo",
    "Envelope",
    "History",
    "Mailbox",
    "Presence",
    "PresenceUser",
    "Published",
    "Ticket",
    "Token",
    "UserDisconnected",
    "UserPublished",
    "WebhookBatch",
    "WebhookEvent",
]
