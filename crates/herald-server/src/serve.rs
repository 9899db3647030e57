//! The accept loop: hyper's HTTP/1 server on each TCP connection, with
//! upgrades, the peer address for handlers, and graceful shutdown.
//!
//! Why not `axum::serve`: a WebSocket upgrade must give back the plain
//! `TcpStream` (see [`crate::ws::handshake`]), which needs hyper to be
//! handed `TokioIo<TcpStream>` itself, not wrapped by protocol detection.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// Serves `app` on `listener` until `shutdown` is cancelled, then stops
/// accepting and waits for the HTTP connections to finish their responses
/// (upgraded WebSockets are no longer HTTP connections; they watch the
/// token themselves).
pub async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            // The client gave up before we accepted: nothing to do.
            Err(e) if is_connection_error(&e) => continue,
            // Out of file descriptors, most often: wait for some to close.
            Err(e) => {
                tracing::error!(error = %e, "accept failed; retrying in 1 s");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // Pushes are small and latency matters: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        tracker.spawn(connection(tcp, peer, app.clone(), shutdown.clone()));
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

async fn connection(tcp: TcpStream, peer: SocketAddr, app: Router, shutdown: CancellationToken) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        // A Router is always ready: no poll_ready needed.
        app.clone().call(request.map(axum::body::Body::new))
    });
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = shutdown.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
