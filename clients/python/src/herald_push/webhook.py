"""Checking Herald's webhook requests (docs/webhooks.md, "Checking the signature").

Each request carries ``X-Herald-Signature: sha256=<hex>``, the lowercase
hex HMAC-SHA256 of the raw body under ``[webhooks] secret``. Check it over
the bytes received, before parsing, in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Optional, Union, cast

from .types import WebhookBatch

__all__ = ["SIGNATURE_HEADER", "WebhookError", "verify_webhook", "parse_webhook"]

SIGNATURE_HEADER = "X-Herald-Signature"

# How old a request's top-level time_ms may be by default: retries are
# re-signed with a fresh time, so this only has to cover clock differences.
_DEFAULT_TOLERANCE_MS = 5 * 60 * 1000


class WebhookError(ValueError):
    """A webhook request that must be refused (answer 401): bad or missing
    signature, a body that is not Herald's, or a stale ``time_ms``."""


def _bytes(value: Union[str, bytes]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def verify_webhook(
    secret: Union[str, bytes], body: bytes, signature: Optional[str]
) -> bool:
    """Whether ``signature`` (the header's value) signs ``body`` under ``secret``."""
    want = "sha256=" + hmac.new(_bytes(secret), bytes(body), hashlib.sha256).hexdigest()
    return hmac.compare_digest(want.encode("ascii"), _bytes(signature or ""))


def parse_webhook(
    secret: Union[str, bytes],
    body: bytes,
    signature: Optional[str],
    *,
    tolerance_ms: Optional[int] = _DEFAULT_TOLERANCE_MS,
    now_ms: Optional[int] = None,
) -> WebhookBatch:
    """Verify, then parse: ``{"time_ms", "events": [...]}``.

    Raises :class:`WebhookError` on a bad signature, a body without
    ``events``, or a ``time_ms`` further than ``tolerance_ms`` from now
    (``None`` turns that check off). De-duplicate the events by ``id``:
    delivery is at least once.
    """
    if not verify_webhook(secret, body, signature):
        raise WebhookError(f"{SIGNATURE_HEADER} does not sign this body")
    try:
        batch = json.loads(body)
        sent = int(batch["time_ms"])
        events = batch["events"]
    except (ValueError, KeyError, TypeError) as bad:
        raise WebhookError(f"not a Herald webhook body: {bad}") from None
    if not isinstance(events, list):
        raise WebhookError("not a Herald webhook body: events is not a list")
    if tolerance_ms is not None:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        if abs(now - sent) > tolerance_ms:
            raise WebhookError(f"time_ms {sent} is more than {tolerance_ms} ms from now")
    return cast(WebhookBatch, batch)
