//! `GET /metrics`: what an operator watches, in the Prometheus text format.
//! Counters come from [`crate::metrics::Counters`]; gauges are read from the
//! hub, the connection limiter and the session registry when scraped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use crate::access::auth::check_backend;
use crate::error::ApiError;
use crate::state::AppState;
use crate::transport::registry::Registry;

fn line(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// `GET /metrics` (a backend endpoint: API key, or loopback without one).
pub(crate) async fn metrics(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(sessions): Extension<Arc<Registry>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_backend(&state.config.api_keys, &headers, peer).map_err(ApiError::from)?;
    let c = &state.counters;
    let mut out = String::with_capacity(1024);
    line(
        &mut out,
        "herald_connections",
        "gauge",
        "Open client connections (all transports).",
        state.clients.load(Ordering::Relaxed) as u64,
    );
    line(
        &mut out,
        "herald_tcp_connections",
        "gauge",
        "Open TCP connections on the public listener, counted from accept (idle keep-alive and half-open ones included).",
        state.limiter.total() as u64,
    );
    line(
        &mut out,
        "herald_channels_followed",
        "gauge",
        "Channels with at least one subscriber on this node.",
        state.node.hub.channel_count() as u64,
    );
    line(
        &mut out,
        "herald_http_sessions",
        "gauge",
        "Session-protocol sessions over HTTP (streams and long-polls).",
        sessions.len() as u64,
    );
    line(
        &mut out,
        "herald_messages_published_total",
        "counter",
        "Messages stored through this node.",
        c.published.load(Ordering::Relaxed),
    );
    line(
        &mut out,
        "herald_client_messages_published_total",
        "counter",
        "Of those, published by clients (session protocol).",
        c.client_published.load(Ordering::Relaxed),
    );
    line(
        &mut out,
        "herald_deliveries_total",
        "counter",
        "Subscribers of the messages published through this node, counted at publish time (on Redis, every node's subscribers).",
        c.deliveries.load(Ordering::Relaxed),
    );
    let _ = writeln!(out, "# HELP herald_info Build and engine.\n# TYPE herald_info gauge\nherald_info{{version=\"{}\",engine=\"{}\"}} 1", env!("CARGO_PKG_VERSION"), state.node.engine.name());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
