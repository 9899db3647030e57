//! Herald's own WebSocket server side, used by both WebSocket endpoints
//! (the channel URL and the session): [`handshake`] checks the upgrade and
//! takes the TCP socket back from hyper, [`frame`] is RFC 6455 framing with
//! no I/O, and [`socket`] pushes batches of shared envelopes with one
//! system call and holds no buffer while idle. See `socket.rs` for why this
//! is not a general-purpose WebSocket crate.

pub mod frame;
#[cfg(test)]
mod frame_props;
pub mod handshake;
pub mod socket;

pub use frame::Incoming;
pub use handshake::Accept;
pub use socket::{Out, ReadError, WsSocket};
