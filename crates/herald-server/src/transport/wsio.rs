//! What both WebSocket endpoints (the channel URL and the session) share:
//! text frames from shared bytes, writes with a deadline, and closing with
//! a code and reason.

use std::future::Future;
use std::pin::pin;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt};
use herald_core::disconnect::{Disconnect, WRITE_TIMEOUT};

use crate::state::AppState;

/// A text frame carrying `bytes` (shared, not copied).
pub fn text(bytes: Bytes) -> Option<WsMessage> {
    Utf8Bytes::try_from(bytes).ok().map(WsMessage::Text)
}

/// Runs a socket write, ending the connection if it takes longer than
/// `write_timeout`. Nearly every write completes at once (the socket has
/// room), so the timer is armed, on the heap, only for one that does not:
/// no timer registration per message, and no timer in every connection's
/// future.
pub async fn write_timed<F, E>(state: &AppState, write: F) -> Result<(), Disconnect>
where
    F: Future<Output = Result<(), E>>,
{
    let mut write = pin!(write);
    let result = match write.as_mut().now_or_never() {
        Some(result) => result,
        None => match Box::pin(tokio::time::timeout(state.config.write_timeout, write)).await {
            Ok(result) => result,
            Err(_) => return Err(WRITE_TIMEOUT),
        },
    };
    result.map_err(|_| WRITE_TIMEOUT)
}

/// Sends `last` (if any) and a close frame with the code and reason.
pub async fn close(state: &AppState, socket: &mut WebSocket, why: Disconnect, last: Option<Bytes>) {
    if let Some(frame) = last.and_then(text) {
        let _ = write_timed(state, socket.feed(frame)).await;
    }
    let frame = CloseFrame {
        code: why.code,
        reason: Utf8Bytes::from_static(why.reason),
    };
    let _ = write_timed(state, socket.send(WsMessage::Close(Some(frame)))).await;
}
