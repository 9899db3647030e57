//! The session over WebSocket: `GET /connection/websocket`.

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::SinkExt;
use herald_core::disconnect::{BAD_REQUEST, HEARTBEAT_TIMEOUT, MESSAGE_TOO_BIG, SHUTDOWN};

use super::{disconnect_frame, random_id, Push, Session, PING};
use crate::state::AppState;
use crate::transport::stream::heartbeat_interval;
use crate::transport::wsio::{close, text, write_timed};

/// Initial read buffer; grows only for large commands.
const READ_BUFFER: usize = 1024;
const WRITE_BUFFER: usize = 16 * 1024;
/// Most items written in one batch.
const BATCH: usize = 64;

/// Largest command frame a client may send.
pub fn max_frame(state: &AppState) -> usize {
    state.config.limits.max_command_size
}

pub fn upgrade(
    state: AppState,
    upgrade: WebSocketUpgrade,
    identity: crate::token::Identity,
    slot: crate::limits::ConnectionGuard,
) -> Response {
    let token = state.connections.token();
    let limit = max_frame(&state);
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            run(state, socket, identity).await;
            drop(slot);
            drop(token);
        })
}

async fn run(state: AppState, mut socket: WebSocket, identity: crate::token::Identity) {
    let mut session = Session::new(state.clone(), random_id(), identity);
    serve(&state, &mut socket, &mut session).await;
    session.ended();
}

async fn serve(state: &AppState, socket: &mut WebSocket, session: &mut Session) {
    let mut heartbeat = heartbeat_interval(state.config.heartbeat);
    // Ticks since the client last sent anything; two silent intervals end it.
    let mut silent_ticks = 0u8;
    // Registered once, not on every wake-up (10k connections share this token).
    let shutdown = state.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => {
                close(state, socket, SHUTDOWN, Some(disconnect_frame(SHUTDOWN))).await;
                return;
            }
            incoming = socket.recv() => {
                silent_ticks = 0;
                let reply = match incoming {
                    None | Some(Ok(WsMessage::Close(_))) => return,
                    // Most often a frame over the size limit.
                    Some(Err(_)) => {
                        close(state, socket, MESSAGE_TOO_BIG, Some(disconnect_frame(MESSAGE_TOO_BIG))).await;
                        return;
                    }
                    Some(Ok(WsMessage::Text(t))) => session.handle(t.as_bytes()).await,
                    Some(Ok(WsMessage::Binary(_))) => {
                        close(state, socket, BAD_REQUEST, Some(disconnect_frame(BAD_REQUEST))).await;
                        return;
                    }
                    // tungstenite queued a pong for a ping; the flush below sends it.
                    Some(Ok(_)) => None,
                };
                if let Some(frame) = reply.and_then(text) {
                    if write_timed(state, socket.feed(frame)).await.is_err() {
                        return;
                    }
                }
                if let Some(why) = session.closing() {
                    close(state, socket, why, Some(disconnect_frame(why))).await;
                    return;
                }
                if write_timed(state, socket.flush()).await.is_err() {
                    return;
                }
            }
            item = session.subscriber().next() => {
                let mut item = Some(item);
                let mut count = 0;
                while let Some(current) = item.take() {
                    let frame = match Session::push(current) {
                        Push::Message(m) => text(m.envelope().clone()),
                        Push::Frame(f) => text(f),
                        Push::End(why) => {
                            close(state, socket, why, Some(disconnect_frame(why))).await;
                            return;
                        }
                    };
                    if let Some(frame) = frame {
                        if write_timed(state, socket.feed(frame)).await.is_err() {
                            return;
                        }
                    }
                    count += 1;
                    if count < BATCH {
                        item = session.subscriber().try_next();
                    }
                }
                if write_timed(state, socket.flush()).await.is_err() {
                    return;
                }
            }
            _ = heartbeat.tick() => {
                silent_ticks += 1;
                if silent_ticks > 2 {
                    close(state, socket, HEARTBEAT_TIMEOUT, Some(disconnect_frame(HEARTBEAT_TIMEOUT))).await;
                    return;
                }
                if let Some(ping) = text(PING) {
                    if write_timed(state, socket.send(ping)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
