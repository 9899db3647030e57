"""The backend HTTP API of a Herald server (docs/protocol.md, docs/openapi.json).

One method per endpoint; every call is one blocking HTTP request made with
``urllib`` (no dependency). A 4xx or 5xx answer raises :class:`HeraldError`
carrying the status and the server's ``{"error": {"code", "message"}}``;
a network failure raises what ``urllib`` raises (an ``OSError``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union, cast

from .types import (
    ChannelDeleted,
    ChannelInfo,
    History,
    Mailbox,
    Presence,
    Published,
    Ticket,
    Token,
    UserDisconnected,
    UserPublished,
)

__all__ = ["Herald", "HeraldError"]

# Characters of the channel alphabet that may stay as they are in a path.
_PATH_SAFE = ":@=-._"


class HeraldError(Exception):
    """A refusal from the server: any 4xx or 5xx answer.

    ``status`` is the HTTP status; ``code`` and ``message`` come from the
    JSON error body (docs/protocol.md, "Errors"): ``code`` is one of the
    documented codes (``unauthorized``, ``invalid_channel``, ...), or
    ``None`` when the body was not Herald's (a proxy's page, say), in which
    case ``message`` holds the start of the body. ``retry_after`` is the
    ``Retry-After`` header in seconds when the server sent one (503s).
    """

    def __init__(
        self,
        status: int,
        code: Optional[str],
        message: str,
        retry_after: Optional[int] = None,
    ) -> None:
        super().__init__(f"{status} {code or 'http_error'}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def _path(segment: str) -> str:
    return urllib.parse.quote(segment, safe=_PATH_SAFE)


class Herald:
    """A handle on one Herald server's backend API.

    ``url`` is where the backend endpoints are served (``api_listen`` when
    set, else ``listen``); ``public_url`` is the public listener, used only
    by :meth:`create_ticket` (``/auth/ticket`` is a client endpoint), and
    defaults to ``url``. ``api_key`` is sent as ``Authorization: Bearer``;
    without one, only a keyless server on loopback answers (security.md).
    """

    def __init__(
        self,
        url: str,
        api_key: Optional[str] = None,
        *,
        public_url: Optional[str] = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.public_url = (public_url or url).rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    # --- publishing -------------------------------------------------------

    def publish(
        self, channel: str, data: Any, *, idempotency_key: Optional[str] = None
    ) -> Published:
        """Publish a JSON value to one channel (``POST /api/publish``).

        With ``idempotency_key``, a repeat within the server's
        ``idempotency_window`` stores nothing and answers the first id with
        ``"duplicate": True``: retry with the same key after a 503.
        """
        body: Dict[str, Any] = {"channel": channel, "data": data}
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        return cast(Published, self._call("POST", "/api/publish", json_body=body))

    def publish_many(
        self,
        channels: Sequence[str],
        data: Any,
        *,
        idempotency_key: Optional[str] = None,
    ) -> List[Published]:
        """Publish one JSON value to up to 100 channels in one request.

        Every name is checked before anything is published; the answer has
        one result per channel, in order.
        """
        body: Dict[str, Any] = {"channels": list(channels), "data": data}
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        answer = self._call("POST", "/api/publish", json_body=body)
        return cast(List[Published], answer["results"])

    def publish_raw(
        self,
        channel: str,
        body: Union[str, bytes],
        *,
        content_type: Optional[str] = None,
        idempotency_key: Optional[str] = None,
    ) -> Published:
        """Publish a body as it is (``POST /pub/{channel}``).

        A ``str`` goes as ``text/plain`` (it travels as a JSON string),
        ``bytes`` as ``application/octet-stream`` (UTF-8 travels as a
        string, other bytes base64-encoded); ``content_type`` overrides,
        ``application/json`` making the server parse the body as JSON.
        """
        if isinstance(body, str):
            raw = body.encode("utf-8")
            ctype = content_type or "text/plain; charset=utf-8"
        else:
            raw = bytes(body)
            ctype = content_type or "application/octet-stream"
        headers = {"Content-Type": ctype}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return cast(
            Published,
            self._call("POST", f"/pub/{_path(channel)}", raw_body=raw, headers=headers),
        )

    # --- channels ---------------------------------------------------------

    def channel(self, channel: str) -> ChannelInfo:
        """A channel's subscribers (every node), retained messages, last id."""
        return cast(ChannelInfo, self._call("GET", f"/pub/{_path(channel)}"))

    def delete_channel(self, channel: str) -> ChannelDeleted:
        """Drop a channel's history and close its subscribers (code 4002)."""
        return cast(ChannelDeleted, self._call("DELETE", f"/pub/{_path(channel)}"))

    def history(self, channel: str, since: Optional[str] = None) -> History:
        """The retained messages after ``since`` (default: all), oldest first."""
        query = "" if since is None else "?" + urllib.parse.urlencode({"since": since})
        return cast(History, self._call("GET", f"/api/history/{_path(channel)}{query}"))

    def presence(self, channel: str) -> Presence:
        """Who follows a channel, by user (``enabled`` is False outside a
        ``presence`` namespace, and then the lists are empty)."""
        return cast(Presence, self._call("GET", f"/api/presence/{_path(channel)}"))

    # --- users ------------------------------------------------------------

    def publish_to_user(
        self, user: str, data: Any, *, ack: Optional[bool] = None
    ) -> UserPublished:
        """Send to ``user:{user}``, queued while the user is away.

        ``ack=True`` keeps the message in the user's mailbox until a client
        of the user acknowledges it; ``None`` leaves it to the namespace.
        """
        body: Dict[str, Any] = {"data": data}
        if ack is not None:
            body["ack"] = ack
        return cast(
            UserPublished,
            self._call("POST", f"/api/users/{_path(user)}/publish", json_body=body),
        )

    def mailbox(self, user: str) -> Mailbox:
        """How many acknowledged messages wait for ``user``, and the oldest."""
        return cast(Mailbox, self._call("GET", f"/api/users/{_path(user)}/mailbox"))

    def disconnect_user(self, user: str) -> UserDisconnected:
        """Close every connection of ``user`` on every node (code 4006)."""
        return cast(
            UserDisconnected, self._call("POST", f"/api/users/{_path(user)}/disconnect")
        )

    # --- tokens and tickets -----------------------------------------------

    def create_token(
        self,
        user: Optional[str] = None,
        *,
        channels: Optional[Sequence[str]] = None,
        ttl: Optional[int] = None,
        info: Any = None,
    ) -> Token:
        """Have the server sign a connection token (``POST /api/tokens``).

        ``ttl`` is seconds (server default 3600, at most ``max_token_ttl``);
        ``channels`` are the private channels or patterns (``"team:*"``)
        granted; ``info`` is shown in presence. To sign without a request,
        see :func:`herald_push.sign_token`.
        """
        body: Dict[str, Any] = {}
        if user is not None:
            body["user"] = user
        if channels is not None:
            body["channels"] = list(channels)
        if ttl is not None:
            body["ttl"] = ttl
        if info is not None:
            body["info"] = info
        return cast(Token, self._call("POST", "/api/tokens", json_body=body))

    def create_ticket(self, token: str) -> Ticket:
        """Trade a connection token for a single-use ticket for a URL
        (``POST /auth/ticket`` on the public listener, ``?ticket=``)."""
        return cast(
            Ticket,
            self._call(
                "POST", "/auth/ticket", base=self.public_url, bearer=token, raw_body=b""
            ),
        )

    # --- the one request path ---------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        raw_body: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
        base: Optional[str] = None,
        bearer: Optional[str] = None,
    ) -> Any:
        sent: Dict[str, str] = {"Accept": "application/json"}
        data = raw_body
        if json_body is not None:
            data = json.dumps(json_body, separators=(",", ":")).encode("utf-8")
            sent["Content-Type"] = "application/json"
        if headers:
            sent.update(headers)
        key = bearer if bearer is not None else self.api_key
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(
            (base or self.url) + path, data=data, headers=sent, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                text = answer.read()
        except urllib.error.HTTPError as refused:
            raise _refusal(refused) from None
        return json.loads(text)


def _refusal(refused: urllib.error.HTTPError) -> HeraldError:
    try:
        raw = refused.read()
    finally:
        refused.close()
    retry = refused.headers.get("Retry-After") if refused.headers else None
    retry_after = int(retry) if retry is not None and retry.isdigit() else None
    try:
        error = json.loads(raw)["error"]
        return HeraldError(refused.code, str(error["code"]), str(error["message"]), retry_after)
    except (ValueError, KeyError, TypeError):
        return HeraldError(
            refused.code, None, raw[:200].decode("utf-8", "replace"), retry_after
        )
