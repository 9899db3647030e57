//! Why the server ends a connection or a subscription: one table of codes.
//!
//! WebSocket transports send the code and reason in the close frame; the
//! session protocol sends them in a `disconnect` push; streaming HTTP
//! transports send them as a final event before ending the stream.
//! `reconnect` tells a client whether trying again can help.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Disconnect {
    pub code: u16,
    pub reason: &'static str,
    pub reconnect: bool,
}

const fn d(code: u16, reason: &'static str, reconnect: bool) -> Disconnect {
    Disconnect {
        code,
        reason,
        reconnect,
    }
}

/// The server is stopping; another node (or this one, restarted) will serve.
pub const SHUTDOWN: Disconnect = d(1001, "server shutting down", true);
/// The connection's queue filled up: it read too slowly. Resume from history.
pub const SLOW_CONSUMER: Disconnect = d(4001, "slow consumer: outgoing queue full", true);
/// The channel was deleted by the backend.
pub const CHANNEL_DELETED: Disconnect = d(4002, "channel deleted", false);
/// No pong or message from the client within the allowed time.
pub const HEARTBEAT_TIMEOUT: Disconnect = d(4003, "no heartbeat from client", true);
/// A socket write did not complete in time.
pub const WRITE_TIMEOUT: Disconnect = d(4004, "write timed out", true);
/// The engine (e.g. Redis) cannot serve this connection right now.
pub const ENGINE_UNAVAILABLE: Disconnect = d(4005, "engine unavailable, retry", true);
/// The client sent something the protocol does not allow.
pub const BAD_REQUEST: Disconnect = d(4400, "bad request", false);
/// The backend or an administrator closed the connection.
pub const FORCED: Disconnect = d(4006, "disconnected by the server", false);

/// The connection's token expired and was not refreshed.
pub const TOKEN_EXPIRED: Disconnect = d(4007, "token expired", true);
/// A limit was exceeded (e.g. too many connections); see the reason.
pub const LIMIT_EXCEEDED: Disconnect = d(4008, "limit exceeded", false);
/// A command frame was larger than allowed.
pub const MESSAGE_TOO_BIG: Disconnect = d(1009, "message too big", false);
/// The client broke the WebSocket framing rules (RFC 6455): an unmasked
/// frame, reserved bits, a bad opcode or a malformed close frame.
pub const PROTOCOL_ERROR: Disconnect = d(1002, "protocol error", false);
/// A text frame (or close reason) from the client was not UTF-8.
pub const INVALID_DATA: Disconnect = d(1007, "invalid UTF-8 in a text frame", false);
/// The answer to a client's own close frame.
pub const NORMAL: Disconnect = d(1000, "bye", false);

/// Every code, for docs and tests.
pub const ALL: &[Disconnect] = &[
    SHUTDOWN,
    SLOW_CONSUMER,
    CHANNEL_DELETED,
    HEARTBEAT_TIMEOUT,
    WRITE_TIMEOUT,
    ENGINE_UNAVAILABLE,
    BAD_REQUEST,
    FORCED,
    TOKEN_EXPIRED,
    LIMIT_EXCEEDED,
    MESSAGE_TOO_BIG,
    PROTOCOL_ERROR,
    INVALID_DATA,
    NORMAL,
];

#[cfg(test)]
mod tests {
    #[test]
    fn codes_are_unique() {
        let mut codes: Vec<u16> = super::ALL.iter().map(|d| d.code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), super::ALL.len());
    }
}
