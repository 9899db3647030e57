//! Why the server says no to a client: one table of refusal codes.
//!
//! The sibling of [`crate::disconnect`]. A refusal is what a client sees in
//! an error body: `{"error": {"code": "invalid_channel", "message": …}}` on
//! HTTP, `{"id": N, "error": {…}}` in a session-protocol reply. Each
//! [`Refusal`] carries its stable code string, the HTTP status it is
//! answered with (core has no HTTP dependency, so a `u16`; `None` for the
//! refusals only session replies carry), the close code when the refusal
//! also ends a session, and a default message.
//!
//! HTTP answers (`ApiError` in herald-server), session replies, the
//! "Errors" table of docs/protocol.md, the code list of
//! docs/session-protocol.md and the `ErrorCodes` constants of the
//! JavaScript client are all derived from or checked against [`ALL`]
//! (herald-server's `tests/refusals.rs`).
//!
//! One code, one main status. Two codes are also answered with another
//! status, listed by [`Refusal::also_status`]:
//! - `invalid_upgrade` is 426 (not 400) when only the WebSocket version is
//!   wrong (RFC 6455 section 4.4);
//! - `invalid_request` is 505 when hyper refuses a non-HTTP/1.x request.
//!
//! Besides those, an error answered by the framework rather than a handler
//! keeps the framework's status and gets the code [`Refusal::for_status`]
//! chooses (e.g. a 411 is `invalid_request`, a 502 `internal_error`).

use crate::disconnect::{Disconnect, FORCED};

/// Every refusal the server can send, by its code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// 400: a channel name that breaks the naming rules.
    InvalidChannel,
    /// 400: a resume point (`since`, `Last-Event-ID`) that cannot be ours.
    InvalidSince,
    /// 400: a JSON body (or payload) that is not JSON.
    InvalidJson,
    /// 400: a body, query or request of the wrong shape; also the code of
    /// any other 4xx the framework answers, and of hyper's 505.
    InvalidRequest,
    /// 400: a long-poll `timeout` that is not a whole number of seconds.
    InvalidTimeout,
    /// 400: a JSONP / iframe callback that is not a JavaScript identifier.
    InvalidCallback,
    /// 400: an unknown `?transport=`.
    InvalidTransport,
    /// 400: a broken WebSocket handshake; 426 for a wrong version.
    InvalidUpgrade,
    /// 400: a user id that cannot name a personal channel.
    InvalidUser,
    /// 400 (session over HTTP) and session replies: a command frame that
    /// is not a command.
    InvalidCommand,
    /// 401: a missing or wrong API key.
    Unauthorized,
    /// 401: a token that is malformed, badly signed or of the wrong kind.
    InvalidToken,
    /// 401: a token past its `exp`.
    TokenExpired,
    /// 401: a private channel asked without a token.
    TokenRequired,
    /// 401: a single-use ticket used a second time.
    TicketUsed,
    /// 403: not allowed (another user's channel, a private channel the
    /// token does not grant, client publish off, no API key configured).
    Forbidden,
    /// 403: a browser origin not in `allowed_origins`.
    OriginNotAllowed,
    /// 403: the backend's connect/subscribe/publish hook said no. A session
    /// whose connect hook says no is closed with [`FORCED`].
    Denied,
    /// 404: no such endpoint.
    NotFound,
    /// 404: the session (protocol over HTTP) ended or never existed.
    SessionNotFound,
    /// 405: the endpoint does not accept that method.
    MethodNotAllowed,
    /// 408: the request head or body did not arrive in time.
    RequestTimeout,
    /// 413: a body or payload over its limit.
    PayloadTooLarge,
    /// 414: a request target over its limit.
    UriTooLong,
    /// 415: a body of a type the endpoint does not take.
    UnsupportedMediaType,
    /// 429: a limit of the connection or session (queued commands,
    /// subscriptions, command size).
    LimitExceeded,
    /// 429: the channel holds its `max_subscribers`.
    ChannelFull,
    /// 429: the client address holds its maximum of connections.
    TooManyConnectionsFromIp,
    /// 431: request headers over their limit.
    HeadersTooLarge,
    /// 500: the server failed (answered by the framework).
    InternalError,
    /// 503: the server holds its maximum of connections.
    TooManyConnections,
    /// 503: the hook backend did not answer (`on_error = "deny"`).
    HookUnavailable,
    /// 503: the engine (e.g. Redis) cannot serve; retry.
    EngineUnavailable,
    /// 503: the server cannot serve right now (answered by the framework).
    Unavailable,
    /// Session replies only: `subscribe` to a channel already followed.
    AlreadySubscribed,
    /// Session replies only: `unsubscribe` from a channel not followed.
    NotSubscribed,
    /// Session replies only: presence off for the channel, no rpc backend.
    NotAvailable,
    /// Session replies only: client publishes over the per-connection rate.
    RateLimited,
    /// Session replies only: the rpc backend answered with an error.
    RpcError,
}

use Refusal::*;

/// Every refusal, for docs, clients and tests.
pub const ALL: &[Refusal] = &[
    InvalidChannel,
    InvalidSince,
    InvalidJson,
    InvalidRequest,
    InvalidTimeout,
    InvalidCallback,
    InvalidTransport,
    InvalidUpgrade,
    InvalidUser,
    InvalidCommand,
    Unauthorized,
    InvalidToken,
    TokenExpired,
    TokenRequired,
    TicketUsed,
    Forbidden,
    OriginNotAllowed,
    Denied,
    NotFound,
    SessionNotFound,
    MethodNotAllowed,
    RequestTimeout,
    PayloadTooLarge,
    UriTooLong,
    UnsupportedMediaType,
    LimitExceeded,
    ChannelFull,
    TooManyConnectionsFromIp,
    HeadersTooLarge,
    InternalError,
    TooManyConnections,
    HookUnavailable,
    EngineUnavailable,
    Unavailable,
    AlreadySubscribed,
    NotSubscribed,
    NotAvailable,
    RateLimited,
    RpcError,
];

impl Refusal {
    /// The stable code clients see.
    pub const fn code(self) -> &'static str {
        match self {
            InvalidChannel => "invalid_channel",
            InvalidSince => "invalid_since",
            InvalidJson => "invalid_json",
            InvalidRequest => "invalid_request",
            InvalidTimeout => "invalid_timeout",
            InvalidCallback => "invalid_callback",
            InvalidTransport => "invalid_transport",
            InvalidUpgrade => "invalid_upgrade",
            InvalidUser => "invalid_user",
            InvalidCommand => "invalid_command",
            Unauthorized => "unauthorized",
            InvalidToken => "invalid_token",
            TokenExpired => "token_expired",
            TokenRequired => "token_required",
            TicketUsed => "ticket_used",
            Forbidden => "forbidden",
            OriginNotAllowed => "origin_not_allowed",
            Denied => "denied",
            NotFound => "not_found",
            SessionNotFound => "session_not_found",
            MethodNotAllowed => "method_not_allowed",
            RequestTimeout => "request_timeout",
            PayloadTooLarge => "payload_too_large",
            UriTooLong => "uri_too_long",
            UnsupportedMediaType => "unsupported_media_type",
            LimitExceeded => "limit_exceeded",
            ChannelFull => "channel_full",
            TooManyConnectionsFromIp => "too_many_connections_from_ip",
            HeadersTooLarge => "headers_too_large",
            InternalError => "internal_error",
            TooManyConnections => "too_many_connections",
            HookUnavailable => "hook_unavailable",
            EngineUnavailable => "engine_unavailable",
            Unavailable => "unavailable",
            AlreadySubscribed => "already_subscribed",
            NotSubscribed => "not_subscribed",
            NotAvailable => "not_available",
            RateLimited => "rate_limited",
            RpcError => "rpc_error",
        }
    }

    /// The HTTP status of an answer carrying this refusal; `None` for the
    /// refusals only session replies carry (they never answer a request).
    pub const fn status(self) -> Option<u16> {
        Some(match self {
            InvalidChannel | InvalidSince | InvalidJson | InvalidRequest | InvalidTimeout
            | InvalidCallback | InvalidTransport | InvalidUpgrade | InvalidUser
            | InvalidCommand => 400,
            Unauthorized | InvalidToken | TokenExpired | TokenRequired | TicketUsed => 401,
            Forbidden | OriginNotAllowed | Denied => 403,
            NotFound | SessionNotFound => 404,
            MethodNotAllowed => 405,
            RequestTimeout => 408,
            PayloadTooLarge => 413,
            UriTooLong => 414,
            UnsupportedMediaType => 415,
            LimitExceeded | ChannelFull | TooManyConnectionsFromIp => 429,
            HeadersTooLarge => 431,
            InternalError => 500,
            TooManyConnections | HookUnavailable | EngineUnavailable | Unavailable => 503,
            AlreadySubscribed | NotSubscribed | NotAvailable | RateLimited | RpcError => {
                return None
            }
        })
    }

    /// The other status this refusal is answered with in one named place
    /// (see the module docs), if any.
    pub const fn also_status(self) -> Option<u16> {
        match self {
            // ws/handshake.rs: a wrong Sec-WebSocket-Version.
            InvalidUpgrade => Some(426),
            // edge.rs: hyper's own answer to a request that is not HTTP/1.x.
            InvalidRequest => Some(505),
            _ => None,
        }
    }

    /// Whether session-protocol replies can carry this refusal.
    pub const fn in_session(self) -> bool {
        matches!(
            self,
            InvalidChannel
                | InvalidSince
                | InvalidJson
                | InvalidCommand
                | InvalidToken
                | TokenExpired
                | TokenRequired
                | Forbidden
                | Denied
                | PayloadTooLarge
                | LimitExceeded
                | ChannelFull
                | HookUnavailable
                | EngineUnavailable
                | AlreadySubscribed
                | NotSubscribed
                | NotAvailable
                | RateLimited
                | RpcError
        )
    }

    /// How a session ends when a command is refused with this (today only
    /// a connect hook's `denied`); `None`: the session goes on.
    pub const fn close(self) -> Option<Disconnect> {
        match self {
            Denied => Some(FORCED),
            _ => None,
        }
    }

    /// The message sent when the place refusing has nothing more precise.
    pub const fn message(self) -> &'static str {
        match self {
            InvalidChannel => "channel name is not valid",
            InvalidSince => "the resume point is not valid",
            InvalidJson => "body is not valid JSON",
            InvalidRequest => "the request could not be parsed",
            InvalidTimeout => "timeout must be a whole number of seconds (0 for a short poll)",
            InvalidCallback => {
                "the callback must be a JavaScript identifier (dotted paths allowed)"
            }
            InvalidTransport => "unknown transport",
            InvalidUpgrade => "not a valid WebSocket handshake",
            InvalidUser => "user id is not valid",
            InvalidCommand => "not a valid command",
            Unauthorized => "missing or invalid API key",
            InvalidToken => "token is not valid",
            TokenExpired => "token has expired",
            TokenRequired => "a token is needed",
            TicketUsed => "ticket was already used",
            Forbidden => "not allowed",
            OriginNotAllowed => "origin is not in allowed_origins",
            Denied => "refused by the application backend",
            NotFound => "no such endpoint",
            SessionNotFound => "no such session (it ended or never existed); open a new one",
            MethodNotAllowed => "this endpoint does not accept that method",
            RequestTimeout => "the request did not arrive in time",
            PayloadTooLarge => "the request body is too large",
            UriTooLong => "the request URI is too long",
            UnsupportedMediaType => "unsupported media type",
            LimitExceeded => "limit exceeded",
            ChannelFull => "the channel holds its maximum of subscribers",
            TooManyConnectionsFromIp => "too many connections from this client address",
            HeadersTooLarge => "the request headers are too large or too many",
            InternalError => "internal error",
            TooManyConnections => "the server holds its maximum of connections; retry later",
            HookUnavailable => "the application backend did not answer; retry later",
            EngineUnavailable => "the message store is unavailable; retry later",
            Unavailable => "the server cannot serve right now; retry later",
            AlreadySubscribed => "already subscribed",
            NotSubscribed => "not subscribed",
            NotAvailable => "not available",
            RateLimited => "too many publishes",
            RpcError => "the rpc backend answered with an error",
        }
    }

    /// The refusal whose code is `code`.
    pub fn from_code(code: &str) -> Option<Self> {
        ALL.iter().copied().find(|r| r.code() == code)
    }

    /// The refusal for an error status that something other than a handler
    /// (an extractor's rejection, a framework default) answered; the answer
    /// keeps that status.
    pub const fn for_status(status: u16) -> Self {
        match status {
            401 => Unauthorized,
            403 => Forbidden,
            404 => NotFound,
            405 => MethodNotAllowed,
            408 => RequestTimeout,
            413 => PayloadTooLarge,
            414 => UriTooLong,
            415 => UnsupportedMediaType,
            429 => LimitExceeded,
            431 => HeadersTooLarge,
            503 => Unavailable,
            500..=599 => InternalError,
            _ => InvalidRequest,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl serde::Serialize for Refusal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::{Refusal, ALL};

    #[test]
    fn codes_are_unique_snake_case_and_map_back() {
        let mut codes: Vec<&str> = ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ALL.len(), "a code is used twice");
        for &r in ALL {
            let code = r.code();
            let snake = !code.is_empty()
                && code.starts_with(|c: char| c.is_ascii_lowercase())
                && !code.ends_with('_')
                && !code.contains("__")
                && code
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            assert!(snake, "{code} is not snake_case");
            assert_eq!(Refusal::from_code(code), Some(r));
            assert_eq!(r.to_string(), code);
            assert!(!r.message().is_empty());
        }
        assert_eq!(Refusal::from_code("no_such_code"), None);
    }

    #[test]
    fn every_variant_is_listed() {
        // A new variant goes into ALL too: bump this count when adding one.
        let mut seen = std::collections::HashSet::new();
        for &r in ALL {
            assert!(seen.insert(r), "{r} listed twice");
        }
        assert_eq!(seen.len(), 39);
    }

    #[test]
    fn statuses_are_errors_and_session_only_ones_have_none() {
        for &r in ALL {
            match r.status() {
                Some(s) => assert!((400..600).contains(&s), "{r}: {s}"),
                None => assert!(r.in_session(), "{r} is sent nowhere"),
            }
            if let Some(also) = r.also_status() {
                assert_ne!(Some(also), r.status(), "{r}");
            }
        }
    }

    #[test]
    fn framework_statuses_keep_their_codes() {
        for (status, code) in [
            (401, "unauthorized"),
            (403, "forbidden"),
            (404, "not_found"),
            (405, "method_not_allowed"),
            (408, "request_timeout"),
            (413, "payload_too_large"),
            (414, "uri_too_long"),
            (415, "unsupported_media_type"),
            (429, "limit_exceeded"),
            (431, "headers_too_large"),
            (503, "unavailable"),
            (500, "internal_error"),
            (502, "internal_error"),
            (400, "invalid_request"),
            (411, "invalid_request"),
        ] {
            assert_eq!(Refusal::for_status(status).code(), code, "{status}");
        }
    }
}
