//! WebSocket on a channel URL: one envelope per text frame, push only.
//!
//! The server pings every heartbeat interval and closes a connection that
//! has not answered by the next one (`4003`). Data frames from the client are
//! ignored. Every close carries a code and reason from
//! [`herald_core::disconnect`].

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::Bytes;
use futures_util::SinkExt;
use herald_core::disconnect::{Disconnect, HEARTBEAT_TIMEOUT, SHUTDOWN};
use herald_core::{Item, Subscriber};

use super::gap_json;
use super::stream::heartbeat_interval;
use super::wsio::{close, text, write_timed};
use crate::state::AppState;
use crate::subscribe::Connection;

/// Initial read buffer per connection (grows only if a client sends more).
pub const READ_BUFFER: usize = 256;
/// Frames are gathered up to this many bytes before a write.
pub const WRITE_BUFFER: usize = 16 * 1024;
/// The largest frame a push-only client may send us.
pub const MAX_INCOMING: usize = 16 * 1024;
/// Most items written in one batch.
const BATCH: usize = 64;

pub fn upgrade(state: AppState, upgrade: WebSocketUpgrade, conn: Connection) -> Response {
    let token = state.connections.token();
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(MAX_INCOMING)
        .max_frame_size(MAX_INCOMING)
        .on_upgrade(move |socket| async move {
            run(&state, socket, conn).await;
            drop(token);
        })
}

/// What to do after writing a batch.
enum Next {
    Continue,
    Close(Disconnect),
}

async fn run(state: &AppState, mut socket: WebSocket, mut conn: Connection) {
    let sub = &mut conn.sub;
    let mut heartbeat = heartbeat_interval(state.config.heartbeat);
    let mut awaiting_pong = false;
    // Registered once, not on every wake-up (10k connections share this token).
    let shutdown = state.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => {
                close(state, &mut socket, SHUTDOWN, None).await;
                return;
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return,
                Some(Ok(WsMessage::Ping(_))) => {
                    awaiting_pong = false;
                    // tungstenite queued the pong; send it now.
                    if write_timed(state, socket.flush()).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => awaiting_pong = false,
            },
            item = sub.next() => {
                match write_batch(state, &mut socket, sub, item).await {
                    Ok(Next::Continue) => {}
                    Ok(Next::Close(why)) => {
                        close(state, &mut socket, why, None).await;
                        return;
                    }
                    Err(why) => {
                        tracing::debug!(reason = why.reason, "websocket write failed");
                        return;
                    }
                }
            }
            _ = heartbeat.tick() => {
                if awaiting_pong {
                    close(state, &mut socket, HEARTBEAT_TIMEOUT, None).await;
                    return;
                }
                awaiting_pong = true;
                if write_timed(state, socket.send(WsMessage::Ping(Bytes::new()))).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes `first` and whatever else is ready, with one flush.
async fn write_batch(
    state: &AppState,
    socket: &mut WebSocket,
    sub: &mut Subscriber,
    first: Item,
) -> Result<Next, Disconnect> {
    let mut item = Some(first);
    let mut count = 0;
    while let Some(current) = item.take() {
        let frame = match current {
            Item::Message(m) => text(m.envelope().clone()),
            Item::Gap(channel) => text(gap_json(&channel)),
            Item::Notice(notice) => text(notice.json.clone()),
            Item::Closed(_, why) | Item::Disconnect(why) => {
                write_timed(state, socket.flush()).await?;
                return Ok(Next::Close(why));
            }
        };
        if let Some(frame) = frame {
            write_timed(state, socket.feed(frame)).await?;
        }
        count += 1;
        if count < BATCH {
            item = sub.try_next();
        }
    }
    write_timed(state, socket.flush()).await?;
    Ok(Next::Continue)
}
