//! The one WebSocket loop, for both dialects.
//!
//! - Channel dialect (`/sub/{channel}`): one envelope per text frame, push
//!   only; what the client sends is ignored (it counts as a sign of life);
//!   the heartbeat is a WebSocket ping frame; a close carries its code and
//!   reason only.
//! - Session dialect (`/connection/websocket`): text frames are commands,
//!   a binary frame ends the session (`4000`); the heartbeat is
//!   `{"ping":{}}`; a close is preceded by a `{"disconnect"}` frame.
//!
//! Both: a connection that sent nothing since the previous ping when the
//! next is due is closed with `4003` ([`super::Liveness`]); every close
//! carries a code and reason from [`herald_core::disconnect`]. While the
//! loop waits in `Subscriber::next`, the hub writes the messages of a
//! connection following one channel itself (direct delivery through
//! [`WsSocket::writer`]); every branch below flushes before looping.

use axum::response::Response;
use bytes::Bytes;
use herald_core::disconnect::{Disconnect, BAD_REQUEST, HEARTBEAT_TIMEOUT, NORMAL, SHUTDOWN};
use herald_core::Item;

use super::{heartbeat_interval, session_frame, Liveness};
use crate::protocol::{disconnect_frame, Dialect, Session, PING};
use crate::ws::{frame, handshake, Accept, Incoming, Out, ReadError, WsSocket};

/// The largest message a push-only (channel URL) client may send us.
pub(crate) const MAX_INCOMING: usize = 16 * 1024;
/// Client frames handled per wake-up before flushing and yielding.
const FRAMES_PER_WAKE: usize = 32;

/// Answers the upgrade and serves the session on the upgraded socket.
pub(crate) fn upgrade(accept: Accept, mut session: Session) -> Response {
    let state = session.state().clone();
    let token = state.connections.token();
    let limit = match session.dialect() {
        Dialect::Channel(_) => MAX_INCOMING,
        Dialect::Session => state.config.limits.max_command_size,
    };
    let (response, on_upgrade) = accept.into_parts();
    // The session lives here, once; `run` borrows it (moving it into `run`
    // would reserve its room twice in this task's future).
    tokio::spawn(async move {
        if let Some((tcp, early)) = handshake::upgraded(on_upgrade).await {
            let mut socket = WsSocket::new(tcp, early, limit);
            session.subscriber().set_writer(socket.writer());
            if let Some((why, last)) = run(&mut socket, &mut session).await {
                socket
                    .close(session.state().config.write_timeout, why, last)
                    .await;
            }
        }
        drop(session);
        drop(token);
    });
    response
}

/// What a queue item becomes on a WebSocket in `dialect`.
fn out(dialect: &Dialect, item: Item) -> Out {
    let push = dialect.push(item);
    match (dialect, push) {
        (Dialect::Channel(_), crate::protocol::Push::End(why)) => Out::End(why, None),
        (Dialect::Session, crate::protocol::Push::End(why)) => {
            Out::End(why, Some(disconnect_frame(why)))
        }
        (_, push) => Out::Text(session_frame(&push).0),
    }
}

/// How the connection ends in `dialect`: the close, and the frame before it.
fn ending(dialect: &Dialect, why: Disconnect) -> Option<(Disconnect, Option<Bytes>)> {
    match dialect {
        Dialect::Channel(_) => Some((why, None)),
        Dialect::Session => Some((why, Some(disconnect_frame(why)))),
    }
}

/// Serves until the connection ends; returns the close to send, if any.
async fn run(socket: &mut WsSocket, session: &mut Session) -> Option<(Disconnect, Option<Bytes>)> {
    let state = session.state().clone();
    let timeout = state.config.write_timeout;
    let commands = matches!(session.dialect(), Dialect::Session);
    let mut heartbeat = heartbeat_interval(state.config.heartbeat);
    let mut liveness = Liveness::default();
    // Registered once, not on every wake-up (10k connections share this token).
    let shutdown = state.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return ending(session.dialect(), SHUTDOWN),
            ready = socket.readable() => {
                // (Also ready when the hub left bytes to flush: only what the
                // client sent counts as a sign of life.)
                ready.ok()?;
                // Bounded, then flushed: a client sending pings without
                // reading cannot grow the pong backlog past one round.
                for _ in 0..FRAMES_PER_WAKE {
                    let incoming = socket.read();
                    if matches!(incoming, Ok(Some(_))) {
                        liveness.heard();
                    }
                    match incoming {
                        Ok(None) => break,
                        Ok(Some(Incoming::Text(text))) => {
                            if let Some(reply) = session.handle(&text).await {
                                socket.queue_text(&reply);
                            }
                        }
                        Ok(Some(Incoming::Binary(_))) if commands => {
                            return ending(session.dialect(), BAD_REQUEST)
                        }
                        Ok(Some(Incoming::Binary(_)) | Some(Incoming::Pong)) => {}
                        Ok(Some(Incoming::Ping(payload))) => {
                            socket.queue_control(frame::PONG, &payload);
                        }
                        Ok(Some(Incoming::Close(_))) => return Some((NORMAL, None)),
                        Err(ReadError::Gone) => return None,
                        Err(ReadError::Frame(e)) => return ending(session.dialect(), e.disconnect()),
                    }
                    if let Some(why) = session.closing() {
                        // The close queues behind the reply and flushes both.
                        return ending(session.dialect(), why);
                    }
                }
                socket.flush(timeout).await.ok()?;
            }
            item = session.subscriber().next() => {
                let (dialect, sub) = session.parts();
                let end = match socket.write_batch(out(dialect, item), || sub.try_next().map(|i| out(dialect, i))) {
                    Ok(end) => end,
                    Err(why) => {
                        tracing::debug!(reason = why.reason, "websocket write failed");
                        return None;
                    }
                };
                socket.flush(timeout).await.ok()?;
                if let Some(end) = end {
                    return Some(end);
                }
            }
            _ = heartbeat.tick() => {
                if !liveness.tick() {
                    return ending(session.dialect(), HEARTBEAT_TIMEOUT);
                }
                if commands {
                    socket.queue_text(&PING);
                } else {
                    socket.queue_control(frame::PING, b"");
                }
                socket.flush(timeout).await.ok()?;
            }
        }
    }
}
