//! The one WebSocket loop, for every dialect.
//!
//! - Channel dialect (`/sub/{channel}`): one envelope per text frame, push
//!   only; what the client sends is ignored (it counts as a sign of life);
//!   the heartbeat is a WebSocket ping frame; a close carries its code and
//!   reason only.
//! - Session dialect (`/connection/websocket`): text frames are commands,
//!   a binary frame ends the session (`4000`); the heartbeat is
//!   `{"ping":{}}`; a close is preceded by a `{"disconnect"}` frame.
//! - Pusher dialect (`/app/{key}`): the first frame is
//!   `pusher:connection_established`; text frames are Pusher events; the
//!   heartbeat is `pusher:ping`; items become frames through the session's
//!   Pusher state (which leaves out a client's own events); a close is
//!   preceded by `pusher:error` and carries a Pusher code
//!   ([`crate::protocol::pusher::close_for`]). Its messages always go
//!   through the queue (the hub's direct write knows only envelopes).
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
use crate::protocol::pusher::{self, encode};
use crate::protocol::{disconnect_frame, Push, Session, Speaks, PING};
use crate::ws::{frame, handshake, Accept, Incoming, Out, ReadError, WsSocket};

/// The largest message a push-only (channel URL) client may send us.
pub(crate) const MAX_INCOMING: usize = 16 * 1024;
/// Client frames handled per wake-up before flushing and yielding.
const FRAMES_PER_WAKE: usize = 32;

/// Answers the upgrade and serves the session on the upgraded socket.
pub(crate) fn upgrade(accept: Accept, session: Session) -> Response {
    let state = session.state().clone();
    let token = state.connections.token();
    let limit = match session.speaks() {
        Speaks::Channel => MAX_INCOMING,
        Speaks::Session | Speaks::Pusher => state.config.limits.max_command_size,
    };
    let (response, on_upgrade) = accept.into_parts();
    tokio::spawn(task(on_upgrade, session, limit, token));
    response
}

/// Answers the upgrade of a Pusher client refused before it has a
/// session (an unknown app key, an app at its quota, a bad protocol
/// version): `pusher:error`, then the close with the same code, as Pusher
/// does.
pub(crate) fn refuse_pusher(
    accept: Accept,
    state: &crate::state::AppState,
    code: pusher::Code,
    message: String,
) -> Response {
    let timeout = state.config.write_timeout;
    let token = state.connections.token();
    let (response, on_upgrade) = accept.into_parts();
    tokio::spawn(async move {
        if let Some((tcp, early)) = handshake::upgraded(on_upgrade).await {
            let mut socket = WsSocket::new(tcp, early, MAX_INCOMING);
            let last = encode::error(code, &message);
            socket
                .close_saying(timeout, code.code, code.message, Some(last))
                .await;
        }
        drop(token);
    });
    response
}

/// The connection's task once the upgrade is answered. An `async` block,
/// not an `async fn`: the session is captured once and lives here; `run`
/// borrows it (an `async fn` parameter, or moving it into `run`, would
/// reserve its room twice in this future: measured, 888 bytes against
/// 1,168).
#[allow(clippy::manual_async_fn)]
fn task(
    on_upgrade: hyper::upgrade::OnUpgrade,
    mut session: Session,
    limit: usize,
    token: tokio_util::task::task_tracker::TaskTrackerToken,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        if let Some((tcp, early)) = handshake::upgraded(on_upgrade).await {
            let mut socket = WsSocket::new(tcp, early, limit);
            if session.speaks() != Speaks::Pusher {
                session.subscriber().set_writer(socket.writer());
            }
            if let Some(end) = run(&mut socket, &mut session).await {
                session.ended(end.why);
                let timeout = session.state().config.write_timeout;
                // One close path (two would both be room in this future).
                let (code, reason): (u16, std::borrow::Cow<'static, str>) =
                    match (end.delay_ms, session.speaks()) {
                        (_, Speaks::Pusher) => {
                            let close = pusher::close_for(end.why);
                            (close.code, close.message.into())
                        }
                        (Some(ms), _) => (end.why.code, crate::protocol::leave_reason(ms).into()),
                        (None, _) => (end.why.code, end.why.reason.into()),
                    };
                socket.close_saying(timeout, code, &reason, end.last).await;
            }
        }
        drop(session);
        drop(token);
    }
}

/// How the connection ends: the close, the frame before it, and a
/// draining node's reconnect delay (then the close reason says it).
struct Ending {
    why: Disconnect,
    last: Option<Bytes>,
    delay_ms: Option<u32>,
}

impl From<(Disconnect, Option<Bytes>)> for Ending {
    fn from((why, last): (Disconnect, Option<Bytes>)) -> Self {
        Self {
            why,
            last,
            delay_ms: None,
        }
    }
}

/// What a queue item becomes on a WebSocket in `speaks` (not Pusher:
/// [`pusher_out`]).
fn out(speaks: Speaks, item: Item) -> Out {
    push_out(speaks, speaks.push(item))
}

/// What a push becomes on a WebSocket in `speaks`.
fn push_out(speaks: Speaks, push: Push) -> Out {
    match (speaks, push) {
        (Speaks::Channel, Push::End(why)) => Out::End(why, None),
        (Speaks::Session, Push::End(why)) => Out::End(why, Some(disconnect_frame(why))),
        (Speaks::Pusher, Push::End(why)) => Out::End(why, Some(pusher_error(why))),
        (_, push) => Out::Text(session_frame(&push).0),
    }
}

/// The `pusher:error` before a Pusher connection's close.
fn pusher_error(why: Disconnect) -> Bytes {
    encode::error(pusher::close_for(why), why.reason)
}

/// What a queue item becomes on a Pusher WebSocket, if anything (its
/// session's [`pusher::State`] decides).
fn pusher_out(state: &mut pusher::State, item: Item) -> Option<Out> {
    state.push(item).map(|push| push_out(Speaks::Pusher, push))
}

/// How the connection ends in `dialect`: the close, and the frame before it.
fn ending(speaks: Speaks, why: Disconnect) -> Option<Ending> {
    let last = match speaks {
        Speaks::Channel => None,
        Speaks::Session => Some(disconnect_frame(why)),
        Speaks::Pusher => Some(pusher_error(why)),
    };
    Some((why, last).into())
}

/// How the connection ends when the node stops: with a drain window, the
/// reconnect delay is in the close reason (and the session's last frame).
fn leaving(speaks: Speaks, farewell: Push) -> Option<Ending> {
    let Push::Leave(delay_ms) = farewell else {
        return ending(speaks, SHUTDOWN);
    };
    let last = match speaks {
        Speaks::Channel => None,
        Speaks::Session => Some(session_frame(&farewell).0),
        // Pusher has no reconnect delay: 4200, reconnect at once.
        Speaks::Pusher => return ending(speaks, SHUTDOWN),
    };
    Some(Ending {
        why: SHUTDOWN,
        last,
        delay_ms: Some(delay_ms),
    })
}

/// A Pusher connection's first frame (`pusher:connection_established`,
/// or the refusal that ends it). `None`: the socket broke.
async fn greet(socket: &mut WsSocket, session: &mut Session) -> Option<Option<Ending>> {
    let hello = session.pusher_open().await;
    socket.queue_text(&hello);
    if let Some(why) = session.closing() {
        return Some(Some((why, None).into()));
    }
    let timeout = session.state().config.write_timeout;
    socket.flush(timeout).await.ok()?;
    Some(None)
}

/// Serves until the connection ends; returns the close to send, if any.
async fn run(socket: &mut WsSocket, session: &mut Session) -> Option<Ending> {
    let state = session.state().clone();
    let timeout = state.config.write_timeout;
    let speaks = session.speaks();
    let commands = speaks != Speaks::Channel;
    let mut heartbeat = heartbeat_interval(state.config.heartbeat);
    let mut liveness = Liveness::default();
    if speaks == Speaks::Pusher {
        // Boxed: only Pusher connections pay for it, once.
        if let Some(end) = Box::pin(greet(socket, session)).await? {
            return Some(end);
        }
    }
    // Registered once, not on every wake-up (10k connections share this token).
    let shutdown = state.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return leaving(speaks, super::farewell(&state)),
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
                        Ok(Some(Incoming::Text(text))) if speaks == Speaks::Pusher => {
                            for reply in Box::pin(session.handle_pusher(&text)).await {
                                socket.queue_text(&reply);
                            }
                        }
                        Ok(Some(Incoming::Text(text))) if commands => {
                            // Boxed: a command's future (hooks, the engine)
                            // is large, and would otherwise be room in every
                            // idle connection's task.
                            if let Some(reply) = Box::pin(session.handle(&text)).await {
                                socket.queue_text(&reply);
                            }
                        }
                        Ok(Some(Incoming::Text(_))) => {}
                        Ok(Some(Incoming::Binary(_))) if commands => {
                            return ending(speaks, BAD_REQUEST)
                        }
                        Ok(Some(Incoming::Binary(_)) | Some(Incoming::Pong)) => {}
                        Ok(Some(Incoming::Ping(payload))) => {
                            socket.queue_control(frame::PONG, &payload);
                        }
                        Ok(Some(Incoming::Close(_))) => return Some((NORMAL, None).into()),
                        Err(ReadError::Gone) => return None,
                        Err(ReadError::Frame(e)) => return ending(speaks, e.disconnect()),
                    }
                    if let Some(why) = session.closing() {
                        // The close queues behind the reply and flushes both.
                        return ending(speaks, why);
                    }
                }
                socket.flush(timeout).await.ok()?;
            }
            item = session.subscriber().next() => {
                let written = match session.pusher_parts() {
                    Some((pusher, sub)) => match pusher_out(pusher, item) {
                        // Nothing for this connection (its own event, a gap).
                        None => continue,
                        Some(first) => socket.write_batch(first, || loop {
                            if let Some(out) = pusher_out(pusher, sub.try_next()?) {
                                return Some(out);
                            }
                        }),
                    },
                    None => {
                        let sub = session.subscriber();
                        socket.write_batch(out(speaks, item), || sub.try_next().map(|i| out(speaks, i)))
                    }
                };
                let end = match written {
                    Ok(end) => end,
                    Err(why) => {
                        tracing::debug!(reason = why.reason, "websocket write failed");
                        return None;
                    }
                };
                if let Some((why, _)) = &end {
                    // Said before the flush, which a client that stopped
                    // reading (a slow consumer) may never let finish.
                    session.ended(*why);
                }
                socket.flush(timeout).await.ok()?;
                if let Some(end) = end {
                    return Some(end.into());
                }
            }
            _ = heartbeat.tick() => {
                if !liveness.tick() {
                    return ending(speaks, HEARTBEAT_TIMEOUT);
                }
                if speaks == Speaks::Pusher {
                    socket.queue_text(&pusher::PING);
                } else if commands {
                    socket.queue_text(&PING);
                } else {
                    socket.queue_control(frame::PING, b"");
                }
                socket.flush(timeout).await.ok()?;
            }
        }
    }
}

/// Memory per idle connection is planned, not discovered: an idle
/// channel-URL WebSocket is its task (this future, on the heap) plus the
/// hub's side. These budgets hold the layout where BENCHMARKS.md measured
/// it (an idle WebSocket about 2.5 KB of server memory in all); growing a
/// per-connection struct past them needs a measurement first.
#[cfg(test)]
mod layout {
    use crate::config::Config;
    use crate::protocol::{admission, Dialect, Session, Transport};
    use crate::state::AppState;

    #[tokio::test]
    async fn an_idle_websocket_stays_within_its_memory_budget() {
        let config = Config::default();
        let node = herald_core::Node::memory(config.namespaces.clone());
        let state =
            AppState::new(node, config, tokio_util::sync::CancellationToken::new()).expect("state");
        let channel = herald_core::ChannelName::new("x").expect("channel");
        let session = Session::new(
            state,
            Dialect::Channel(channel),
            Transport::WebSocket,
            admission::Admitted::anonymous(),
        );
        let session_bytes = std::mem::size_of_val(&session);
        let accept = hyper::upgrade::on(axum::http::Request::new(()));
        let token = session.state().connections.token();
        let task = super::task(accept, session, super::MAX_INCOMING, token);
        let task_bytes = std::mem::size_of_val(&task);
        assert!(
            session_bytes <= 320,
            "Session is {session_bytes} bytes (budget 320)"
        );
        assert!(
            task_bytes <= 960,
            "a WebSocket's task is {task_bytes} bytes (budget 960)"
        );
    }
}
