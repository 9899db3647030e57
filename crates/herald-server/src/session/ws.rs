//! The session over WebSocket: `GET /connection/websocket`.

use axum::response::Response;
use herald_core::disconnect::{Disconnect, BAD_REQUEST, HEARTBEAT_TIMEOUT, NORMAL, SHUTDOWN};

use super::{disconnect_frame, random_id, Push, Session, PING};
use crate::state::AppState;
use crate::transport::stream::heartbeat_interval;
use crate::ws::{frame, handshake, Accept, Incoming, Out, ReadError, WsSocket};

/// Commands handled per wake-up before the connection yields to others.
const COMMANDS_PER_WAKE: usize = 32;

/// Largest command frame a client may send.
pub fn max_frame(state: &AppState) -> usize {
    state.config.limits.max_command_size
}

pub fn upgrade(
    state: AppState,
    accept: Accept,
    identity: crate::token::Identity,
    slot: crate::limits::Slot,
    peer: std::net::IpAddr,
) -> Response {
    let token = state.connections.token();
    let limit = max_frame(&state);
    let (response, on_upgrade) = accept.into_parts();
    tokio::spawn(async move {
        if let Some((tcp, early)) = handshake::upgraded(on_upgrade).await {
            let mut socket = WsSocket::new(tcp, early, limit);
            run(state, &mut socket, identity, peer).await;
        }
        drop(slot);
        drop(token);
    });
    response
}

async fn run(
    state: AppState,
    socket: &mut WsSocket,
    identity: crate::token::Identity,
    peer: std::net::IpAddr,
) {
    let mut session = Session::new(state.clone(), random_id(), identity);
    session.set_peer(peer);
    // While `serve` waits in `next()`, the hub writes messages of a session
    // with one channel itself; every branch below flushes before looping.
    session.subscriber().set_writer(socket.writer());
    if let Some((why, last)) = serve(&state, socket, &mut session).await {
        socket.close(state.config.write_timeout, why, last).await;
    }
    session.ended();
}

/// What a queue item becomes on the session.
fn out(item: herald_core::Item) -> Out {
    match Session::push(item) {
        Push::Message(m) => Out::Text(m.envelope().clone()),
        Push::Frame(f) => Out::Text(f),
        Push::End(why) => Out::End(why, Some(disconnect_frame(why))),
    }
}

/// Serves until the session ends; returns the close to send, if any.
async fn serve(
    state: &AppState,
    socket: &mut WsSocket,
    session: &mut Session,
) -> Option<(Disconnect, Option<bytes::Bytes>)> {
    let timeout = state.config.write_timeout;
    let ending = |why: Disconnect| Some((why, Some(disconnect_frame(why))));
    let mut heartbeat = heartbeat_interval(state.config.heartbeat);
    // Ticks since the client last sent anything; two silent intervals end it.
    let mut silent_ticks = 0u8;
    // Registered once, not on every wake-up (10k connections share this token).
    let shutdown = state.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return ending(SHUTDOWN),
            ready = socket.readable() => {
                // (Also ready when the hub left bytes to flush: only what the
                // client sent counts as a sign of life.)
                ready.ok()?;
                for _ in 0..COMMANDS_PER_WAKE {
                    let incoming = socket.read();
                    if matches!(incoming, Ok(Some(_))) {
                        silent_ticks = 0;
                    }
                    let reply = match incoming {
                        Ok(None) => break,
                        Ok(Some(Incoming::Text(text))) => session.handle(&text).await,
                        Ok(Some(Incoming::Binary(_))) => return ending(BAD_REQUEST),
                        Ok(Some(Incoming::Ping(payload))) => {
                            socket.queue_control(frame::PONG, &payload);
                            None
                        }
                        Ok(Some(Incoming::Pong)) => None,
                        Ok(Some(Incoming::Close(_))) => return Some((NORMAL, None)),
                        Err(ReadError::Gone) => return None,
                        Err(ReadError::Frame(e)) => return ending(e.disconnect()),
                    };
                    if let Some(reply) = reply {
                        socket.queue_text(&reply);
                    }
                    if let Some(why) = session.closing() {
                        // The close queues behind the reply and flushes both.
                        return ending(why);
                    }
                }
                socket.flush(timeout).await.ok()?;
            }
            item = session.subscriber().next() => {
                let end = socket
                    .write_batch(out(item), || session.subscriber().try_next().map(out))
                    .ok()?;
                socket.flush(timeout).await.ok()?;
                if let Some(end) = end {
                    return Some(end);
                }
            }
            _ = heartbeat.tick() => {
                silent_ticks += 1;
                if silent_ticks > 2 {
                    return ending(HEARTBEAT_TIMEOUT);
                }
                socket.queue_text(&PING);
                socket.flush(timeout).await.ok()?;
            }
        }
    }
}
