"""The shapes of the server's answers (docs/openapi.json, components.schemas).

``TypedDict``s: the answers are the server's JSON objects as they are, so a
field the server adds later is there too. Optional fields sit in a
``total=False`` subclass (Python 3.9 has no ``NotRequired``).
"""

from __future__ import annotations

from typing import Any, List, Optional, TypedDict

__all__ = [
    "Published",
    "ChannelInfo",
    "ChannelDeleted",
    "Envelope",
    "History",
    "PresenceUser",
    "Presence",
    "UserPublished",
    "Mailbox",
    "UserDisconnected",
    "Token",
    "Ticket",
    "WebhookEvent",
    "WebhookBatch",
]


class _PublishedBase(TypedDict):
    channel: str
    id: str
    subscribers: int


class Published(_PublishedBase, total=False):
    duplicate: bool  # a repeat of an idempotency key: nothing was stored


class ChannelInfo(TypedDict):
    channel: str
    subscribers: int
    messages: int
    last_id: Optional[str]


class ChannelDeleted(TypedDict):
    channel: str
    deleted: bool
    subscribers: int


class _EnvelopeBase(TypedDict):
    channel: str
    id: str
    data: Any


class Envelope(_EnvelopeBase, total=False):
    encoding: str  # "base64" for a binary payload


class History(TypedDict):
    channel: str
    messages: List[Envelope]
    last_id: Optional[str]
    gap: bool


class PresenceUser(TypedDict):
    user: str
    connections: int
    info: Any


class Presence(TypedDict):
    channel: str
    enabled: bool
    connections: int
    anonymous: int
    users: List[PresenceUser]


class UserPublished(TypedDict):
    user: str
    channel: str
    id: str
    subscribers: int
    queued: bool
    ack: bool


class Mailbox(TypedDict):
    user: str
    pending: int
    oldest_id: Optional[str]
    oldest_age_ms: Optional[int]
    gap: bool


class UserDisconnected(TypedDict):
    user: str
    disconnected: bool


class Token(TypedDict):
    token: str
    expires_at: int


class Ticket(TypedDict):
    ticket: str
    expires_at: int


class _WebhookEventBase(TypedDict):
    id: str
    event: str
    time_ms: int


class WebhookEvent(_WebhookEventBase, total=False):
    user: str
    channel: str
    ids: List[str]
    reason: str


class WebhookBatch(TypedDict):
    time_ms: int
    events: List[WebhookEvent]
