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

/// Declares the enum and its one table: each row is a variant (with its
/// docs), its code, its HTTP status (`None`: session replies only) and its
/// default message. [`ALL`], [`Refusal::code`], [`Refusal::status`] and
/// [`Refusal::message`] are generated from the same rows, so a variant
/// cannot be missing from any of them.
macro_rules! refusals {
    ($($(#[$doc:meta])* $name:ident = ($code:literal, $status:expr, $message:expr),)*) => {
        /// Every refusal the server can send, by its code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Refusal {
            $($(#[$doc])* $name,)*
        }

        /// Every refusal, for docs, clients and tests.
        pub const ALL: &[Refusal] = &[$(Refusal::$name,)*];

        impl Refusal {
            /// The stable code clients see.
            pub const fn code(self) -> &'static str {
                match self {
                    $(Refusal::$name => $code,)*
                }
            }

            /// The HTTP status of an answer carrying this refusal; `None`
            /// for the refusals only session replies carry (they never
            /// answer a request).
            pub const fn status(self) -> Option<u16> {
                match self {
                    $(Refusal::$name => $status,)*
                }
            }

            /// The message sent when the place refusing has nothing more
            /// precise.
            pub const fn message(self) -> &'static str {
                match self {
                    $(Refusal::$name => $message,)*
                }
            }
        }
    };
}

refusals! {
    /// 400: a channel name that breaks the naming rules.
    InvalidChannel = ("invalid_channel", Some(400), "channel name is not valid"),
    /// 400: a resume point (`since`, `Last-Event-ID`) that cannot be ours.
    InvalidSince = ("invalid_since", Some(400), "the resume point is not valid"),
    /// 400: a JSON body (or payload) that is not JSON.
    InvalidJson = ("invalid_json", Some(400), "body is not valid JSON"),
    /// 400: a body, query or request of the wrong shape; also the code of
    /// any other 4xx the framework answers, and of hyper's 505.
    InvalidRequest = ("invalid_request", Some(400), "the request could not be parsed"),
    /// 400: a long-poll `timeout` that is not a whole number of seconds.
    InvalidTimeout = ("invalid_timeout", Some(400), "timeout must be a whole number of seconds (0 for a short poll)"),
    /// 400: a JSONP / iframe callback that is not a JavaScript identifier.
    InvalidCallback = ("invalid_callback", Some(400), "the callback must be a JavaScript identifier (dotted paths allowed)"),
    /// 400: an unknown `?transport=`.
    InvalidTransport = ("invalid_transport", Some(400), "unknown transport"),
    /// 400: a broken WebSocket handshake; 426 for a wrong version.
    InvalidUpgrade = ("invalid_upgrade", Some(400), "not a valid WebSocket handshake"),
    /// 400: a user id that cannot name a personal channel.
    InvalidUser = ("invalid_user", Some(400), "user id is not valid"),
    /// 400 (session over HTTP) and session replies: a command frame that
    /// is not a command.
    InvalidCommand = ("invalid_command", Some(400), "not a valid command"),
    /// 401: a missing or wrong API key.
    Unauthorized = ("unauthorized", Some(401), "missing or invalid API key"),
    /// 401: a token that is malformed, badly signed or of the wrong kind.
    InvalidToken = ("invalid_token", Some(401), "token is not valid"),
    /// 401: a token past its `exp`.
    TokenExpired = ("token_expired", Some(401), "token has expired"),
    /// 401: a private channel asked without a token.
    TokenRequired = ("token_required", Some(401), "a token is needed"),
    /// 401: a single-use ticket used a second time.
    TicketUsed = ("ticket_used", Some(401), "ticket was already used"),
    /// 403: not allowed (another user's channel, a private channel the
    /// token does not grant, client publish off, no API key configured).
    Forbidden = ("forbidden", Some(403), "not allowed"),
    /// 403: a browser origin not in `allowed_origins`.
    OriginNotAllowed = ("origin_not_allowed", Some(403), "origin is not in allowed_origins"),
    /// 403: the backend's connect/subscribe/publish hook said no. A session
    /// whose connect hook says no is closed with [`FORCED`].
    Denied = ("denied", Some(403), "refused by the application backend"),
    /// 404: no such endpoint.
    NotFound = ("not_found", Some(404), "no such endpoint"),
    /// 404: the session (protocol over HTTP) ended or never existed.
    SessionNotFound = ("session_not_found", Some(404), "no such session (it ended or never existed); open a new one"),
    /// 405: the endpoint does not accept that method.
    MethodNotAllowed = ("method_not_allowed", Some(405), "this endpoint does not accept that method"),
    /// 408: the request head or body did not arrive in time.
    RequestTimeout = ("request_timeout", Some(408), "the request did not arrive in time"),
    /// 413: a body or payload over its limit.
    PayloadTooLarge = ("payload_too_large", Some(413), "the request body is too large"),
    /// 414: a request target over its limit.
    UriTooLong = ("uri_too_long", Some(414), "the request URI is too long"),
    /// 415: a body of a type the endpoint does not take.
    UnsupportedMediaType = ("unsupported_media_type", Some(415), "unsupported media type"),
    /// 429: a limit of the connection or session (queued commands,
    /// subscriptions, command size).
    LimitExceeded = ("limit_exceeded", Some(429), "limit exceeded"),
    /// 429: the channel holds its `max_subscribers`.
    ChannelFull = ("channel_full", Some(429), "the channel holds its maximum of subscribers"),
    /// 429: the client address holds its maximum of connections.
    TooManyConnectionsFromIp = ("too_many_connections_from_ip", Some(429), "too many connections from this client address"),
    /// 431: request headers over their limit.
    HeadersTooLarge = ("headers_too_large", Some(431), "the request headers are too large or too many"),
    /// 500: the server failed (answered by the framework).
    InternalError = ("internal_error", Some(500), "internal error"),
    /// 503: the server holds its maximum of connections.
    TooManyConnections = ("too_many_connections", Some(503), "the server holds its maximum of connections; retry later"),
    /// 503: the hook backend did not answer (`on_error = "deny"`).
    HookUnavailable = ("hook_unavailable", Some(503), "the application backend did not answer; retry later"),
    /// 503: the engine (e.g. Redis) cannot serve; retry.
    EngineUnavailable = ("engine_unavailable", Some(503), "the message store is unavailable; retry later"),
    /// 503: the server cannot serve right now (answered by the framework).
    Unavailable = ("unavailable", Some(503), "the server cannot serve right now; retry later"),
    /// Session replies only: `subscribe` to a channel already followed.
    AlreadySubscribed = ("already_subscribed", None, "already subscribed"),
    /// Session replies only: `unsubscribe` from a channel not followed.
    NotSubscribed = ("not_subscribed", None, "not subscribed"),
    /// Session replies only: presence off for the channel, no rpc backend.
    NotAvailable = ("not_available", None, "not available"),
    /// Session replies only: client publishes over the per-connection rate.
    RateLimited = ("rate_limited", None, "too many publishes"),
    /// Session replies only: the rpc backend answered with an error.
    RpcError = ("rpc_error", None, "the rpc backend answered with an error"),
}

use Refusal::*;

impl Refusal {
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
