//! The session over WebSocket: `GET /connection/websocket`.

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::Bytes;
use futures_util::SinkExt;
use herald_core::disconnect::{
    Disconnect, BAD_REQUEST, HEARTBEAT_TIMEOUT, MESSAGE_TOO_BIG, SHUTDOWN, WRITE_TIMEOUT,
};

use super::{disconnect_frame, random_id, Push, Session, PING};
use crate::state::AppState;
use crate::transport::stream::heartbeat_interval;

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

fn text(bytes: Bytes) -> Option<WsMessage> {
    Utf8Bytes::try_from(bytes).ok().map(WsMessage::Text)
}

async fn timed<F, E>(state: &AppState, write: F) -> Result<(), Disconnect>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    match tokio::time::timeout(state.config.write_timeout, write).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(WRITE_TIMEOUT),
    }
}

async fn close(state: &AppState, socket: &mut WebSocket, why: Disconnect) {
    if let Some(frame) = text(disconnect_frame(why)) {
        let _ = timed(state, socket.feed(frame)).await;
    }
    let frame = CloseFrame {
        code: why.code,
        reason: Utf8Bytes::from_static(why.reason),
    };
    let _ = timed(state, socket.send(WsMessage::Close(Some(frame)))).await;
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
    loop {
        tokio::select! {
            biased;
            () = state.shutdown.cancelled() => {
                close(state, socket, SHUTDOWN).await;
                return;
            }
            incoming = socket.recv() => {
                silent_ticks = 0;
                let reply = match incoming {
                    None | Some(Ok(WsMessage::Close(_))) => return,
                    // Most often a frame over the size limit.
                    Some(Err(_)) => {
                        close(state, socket, MESSAGE_TOO_BIG).await;
                        return;
                    }
                    Some(Ok(WsMessage::Text(t))) => session.handle(t.as_bytes()).await,
                    Some(Ok(WsMessage::Binary(_))) => {
                        close(state, socket, BAD_REQUEST).await;
                        return;
                    }
                    // tungstenite queued a pong for a ping; the flush below sends it.
                    Some(Ok(_)) => None,
                };
                if let Some(frame) = reply.and_then(text) {
                    if timed(state, socket.feed(frame)).await.is_err() {
                        return;
                    }
                }
                if let Some(why) = session.closing() {
                    close(state, socket, why).await;
                    return;
                }
                if timed(state, socket.flush()).await.is_err() {
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
                            close(state, socket, why).await;
                            return;
                        }
                    };
                    if let Some(frame) = frame {
                        if timed(state, socket.feed(frame)).await.is_err() {
                            return;
                        }
                    }
                    count += 1;
                    if count < BATCH {
                        item = session.subscriber().try_next();
                    }
                }
                if timed(state, socket.flush()).await.is_err() {
                    return;
                }
            }
            _ = heartbeat.tick() => {
                silent_ticks += 1;
                if silent_ticks > 2 {
                    close(state, socket, HEARTBEAT_TIMEOUT).await;
                    return;
                }
                if let Some(ping) = text(PING) {
                    if timed(state, socket.send(ping)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
