//! An echo server on Herald's own WebSocket code, for Autobahn|Testsuite
//! (`scripts/autobahn.sh`): every text or binary message goes back as it
//! came, pings are answered, the close handshake is done, nothing else.
//!
//! It runs the code paths Herald's endpoints run: the accept loop
//! (`serve::serve`), the handshake check (`ws::Accept`), the frame parser
//! behind `WsSocket::read`, and the socket's writes (`write_batch`, the
//! queued control frames, `flush`, `close`).
//!
//! ```text
//! cargo run --release -p herald-server --example ws_echo -- 127.0.0.1:9001
//! ```

use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use herald_core::disconnect::{Disconnect, NORMAL};
use herald_server::ws::{frame, handshake, Accept, Incoming, Out, ReadError, WsSocket};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Large enough for Autobahn's group 9 (16 MiB messages).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// How long a write may wait for a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Client frames handled per wake-up before flushing (as Herald's endpoints).
const FRAMES_PER_WAKE: usize = 32;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    println!("ws_echo listening on ws://{}", listener.local_addr()?);
    let app = Router::new()
        .route("/", get(upgrade))
        .fallback(get(upgrade));
    let edge = herald_server::http::serve::Edge::standalone("ws_echo");
    herald_server::http::serve::serve(listener, app, CancellationToken::new(), edge).await;
    Ok(())
}

async fn upgrade(request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let accept = match Accept::check(&mut parts) {
        Ok(accept) => accept,
        Err(refusal) => return *refusal,
    };
    let (response, on_upgrade) = accept.into_parts();
    tokio::spawn(async move {
        if let Some((tcp, early)) = handshake::upgraded(on_upgrade).await {
            let mut socket = WsSocket::new(tcp, early, MAX_MESSAGE);
            if let Some(why) = echo(&mut socket).await {
                socket.close(WRITE_TIMEOUT, why, None).await;
            }
        }
    });
    response
}

/// Echoes until the connection ends; returns the close to send, if any.
async fn echo(socket: &mut WsSocket) -> Option<Disconnect> {
    loop {
        socket.readable().await.ok()?;
        for _ in 0..FRAMES_PER_WAKE {
            match socket.read() {
                Ok(None) => break,
                Ok(Some(Incoming::Text(text))) => {
                    // The push path: header and shared body in one writev.
                    socket
                        .write_batch(Out::Text(Bytes::from(text)), || None)
                        .ok()?;
                }
                Ok(Some(Incoming::Binary(data))) => socket.queue_binary(&data),
                Ok(Some(Incoming::Ping(payload))) => socket.queue_control(frame::PONG, &payload),
                Ok(Some(Incoming::Pong)) => {}
                Ok(Some(Incoming::Close(_))) => return Some(NORMAL),
                Err(ReadError::Gone) => return None,
                Err(ReadError::Frame(e)) => return Some(e.disconnect()),
            }
        }
        socket.flush(WRITE_TIMEOUT).await.ok()?;
    }
}
