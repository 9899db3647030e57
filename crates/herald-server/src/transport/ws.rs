//! WebSocket on a channel URL: one envelope per text frame, push only.
//!
//! The server pings every heartbeat interval and closes a connection that
//! has not answered by the next one (`4003`). Data frames from the client are
//! ignored. Every close carries a code and reason from
//! [`herald_core::disconnect`].

use axum::response::Response;
use herald_core::disconnect::{Disconnect, HEARTBEAT_TIMEOUT, NORMAL, SHUTDOWN};
use herald_core::Item;

use super::gap_json;
use super::stream::heartbeat_interval;
use crate::state::AppState;
use crate::subscribe::Connection;
use crate::ws::{frame, handshake, Accept, Incoming, Out, ReadError, WsSocket};

/// The largest message a push-only client may send us.
pub const MAX_INCOMING: usize = 16 * 1024;
/// Client frames handled per wake-up before flushing and yielding.
const FRAMES_PER_WAKE: usize = 32;

pub fn upgrade(state: AppState, accept: Accept, mut conn: Connection) -> Response {
    let token = state.connections.token();
    let (response, on_upgrade) = accept.into_parts();
    // The connection's state lives here, once; `run` borrows it (moving it
    // into `run` would reserve its room twice in this task's future).
    tokio::spawn(async move {
        if let Some((tcp, early)) = handshake::upgraded(on_upgrade).await {
            let mut socket = WsSocket::new(tcp, early, MAX_INCOMING);
            // While `run` waits in `sub.next()`, the hub writes the channel's
            // messages itself; every branch below flushes before looping.
            conn.sub.set_writer(socket.writer());
            if let Some(why) = run(&state, &mut socket, &mut conn).await {
                socket.close(state.config.write_timeout, why, None).await;
            }
        }
        drop(token);
    });
    response
}

/// What a queue item becomes on this transport.
fn out(item: Item) -> Out {
    match item {
        Item::Message(m) => Out::Text(m.envelope().clone()),
        Item::Gap(channel) => Out::Text(gap_json(&channel)),
        Item::Notice(notice) => Out::Text(notice.json.clone()),
        Item::Closed(_, why) | Item::Disconnect(why) => Out::End(why, None),
    }
}

/// Serves until the connection ends; returns the close to send, if any.
async fn run(state: &AppState, socket: &mut WsSocket, conn: &mut Connection) -> Option<Disconnect> {
    let sub = &mut conn.sub;
    let timeout = state.config.write_timeout;
    let mut heartbeat = heartbeat_interval(state.config.heartbeat);
    let mut awaiting_pong = false;
    // Registered once, not on every wake-up (10k connections share this token).
    let shutdown = state.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return Some(SHUTDOWN),
            ready = socket.readable() => {
                ready.ok()?;
                // Bounded, then flushed: a client sending pings without
                // reading cannot grow the pong backlog past one round.
                for _ in 0..FRAMES_PER_WAKE {
                    match socket.read() {
                        Ok(None) => break,
                        Ok(Some(Incoming::Ping(payload))) => {
                            awaiting_pong = false;
                            socket.queue_control(frame::PONG, &payload);
                        }
                        Ok(Some(Incoming::Close(_))) => return Some(NORMAL),
                        Ok(Some(_)) => awaiting_pong = false,
                        Err(ReadError::Gone) => return None,
                        Err(ReadError::Frame(e)) => return Some(e.disconnect()),
                    }
                }
                socket.flush(timeout).await.ok()?;
            }
            item = sub.next() => {
                let end = match socket.write_batch(out(item), || sub.try_next().map(out)) {
                    Ok(end) => end,
                    Err(why) => {
                        tracing::debug!(reason = why.reason, "websocket write failed");
                        return None;
                    }
                };
                if let Some((why, _)) = end {
                    return Some(why);
                }
                socket.flush(timeout).await.ok()?;
            }
            _ = heartbeat.tick() => {
                if awaiting_pong {
                    return Some(HEARTBEAT_TIMEOUT);
                }
                awaiting_pong = true;
                socket.queue_control(frame::PING, b"");
                socket.flush(timeout).await.ok()?;
            }
        }
    }
}
