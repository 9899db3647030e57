"""Connection tokens signed here, without a request (docs/security.md).

A token is an HS256 JWT that Herald checks against its ``[auth]
hmac_secret``: the same secret, shared with the backend, signs it here.
Claims: ``sub`` (the user), ``exp`` (required), ``iat``, ``nbf``,
``channels`` (private channels or patterns granted) and ``info`` (shown in
presence). ``Herald.create_token`` asks the server to sign one instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any, Dict, Optional, Sequence, Union

__all__ = ["sign_token"]

_MIN_SECRET = 32  # the server refuses a shorter hmac_secret at start


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def sign_token(
    secret: Union[str, bytes],
    user: Optional[str] = None,
    *,
    channels: Optional[Sequence[str]] = None,
    ttl: int = 3600,
    info: Any = None,
    not_before: Optional[int] = None,
    now: Optional[int] = None,
) -> str:
    """An HS256 connection token for ``user`` valid ``ttl`` seconds.

    ``secret`` is the server's ``auth.hmac_secret`` (at least 32 bytes);
    ``now`` (Unix seconds) replaces the clock, ``not_before`` sets ``nbf``.
    """
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < _MIN_SECRET:
        raise ValueError(f"hmac_secret must be at least {_MIN_SECRET} bytes")
    issued = int(time.time()) if now is None else int(now)
    claims: Dict[str, Any] = {"exp": issued + int(ttl), "iat": issued}
    if user is not None:
        claims["sub"] = user
    if channels:
        claims["channels"] = list(channels)
    if info is not None:
        claims["info"] = info
    if not_before is not None:
        claims["nbf"] = int(not_before)
    signing_input = _b64(_json({"alg": "HS256", "typ": "JWT"})) + "." + _b64(_json(claims))
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)
