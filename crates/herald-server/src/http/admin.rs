//! The admin page (`GET /admin`) and its read-only data endpoints:
//! `GET /api/stats` (this node's live counts) and `GET /api/history/{channel}`
//! (a channel's retained messages, the inspector's third view beside
//! `GET /pub/{channel}` and `GET /api/presence/{channel}`).
//!
//! The page is one self-contained HTML file compiled into the binary. It is
//! public; everything it shows comes from backend endpoints that need the
//! API key, which the page asks for and keeps in `sessionStorage` (see
//! docs/security.md, "The admin page"). It publishes with `POST
//! /pub/{channel}` and disconnects with `POST /api/users/{id}/disconnect`,
//! the endpoints a backend uses.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Extension, Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::{Refusal, Since};
use serde::Deserialize;
use serde_json::json;

use super::api::channel_from_path;
use crate::access::auth::check_backend;
use crate::error::ApiError;
use crate::protocol::Transport;
use crate::state::AppState;
use crate::transport::registry::Registry;

const PAGE: &str = include_str!("admin.html");

/// Most channels `GET /api/stats` lists in `top_channels`.
pub(crate) const TOP_CHANNELS: usize = 20;

/// `GET /admin`.
pub(crate) async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // The page talks to its own origin only, and is never framed.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; img-src data:; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
}

/// `GET /api/stats`: this node's counts now. The counters only grow; the
/// page shows rates as their differences between two reads.
///
/// `top_channels` walks the hub's followed channels once (one count per
/// channel): cheap for an admin page polling every few seconds, not meant
/// for a tight loop.
pub(crate) async fn stats(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(sessions): Extension<Arc<Registry>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_backend(&state.config.api_keys, &headers, peer)?;
    let c = &state.counters;
    let hub = &state.node.hub;
    let mut top: Vec<(usize, String)> = hub
        .channels()
        .into_iter()
        .map(|ch| (hub.count(&ch), ch.as_str().to_string()))
        .filter(|(n, _)| *n > 0)
        .collect();
    top.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    top.truncate(TOP_CHANNELS);
    let by_transport: serde_json::Map<String, serde_json::Value> = Transport::ALL
        .iter()
        .map(|t| (t.as_str().to_string(), json!(c.open_now(*t as usize))))
        .collect();
    let engine = state.node.engine.name();
    // The engine's registry of the nodes sharing it (Redis), or this node
    // alone (memory, or a registry that cannot be read now).
    let nodes: Vec<serde_json::Value> = match state.node.engine.nodes().await {
        Ok(list) if !list.is_empty() => list
            .iter()
            .map(|n| {
                json!({
                    "name": if n.this { format!("{} (this node)", n.id) } else { n.id.clone() },
                    "engine": engine,
                    "this": n.this,
                    "expires_at_ms": n.expires_at_ms,
                })
            })
            .collect(),
        _ => vec![json!({"name": "this node", "engine": engine, "this": true})],
    };
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "engine": engine,
        "connections": state.clients.load(Ordering::Relaxed),
        "connections_by_transport": by_transport,
        "tcp_connections": state.limiter.total(),
        "http_sessions": sessions.len(),
        "channels": hub.channel_count(),
        "top_channels": top
            .into_iter()
            .map(|(n, ch)| json!({"channel": ch, "subscribers": n}))
            .collect::<Vec<_>>(),
        "published": c.published.load(Ordering::Relaxed),
        "client_published": c.client_published.load(Ordering::Relaxed),
        "deliveries": hub.delivered(),
        "nodes": nodes,
    }))
    .into_response())
}

#[derive(Deserialize)]
pub(crate) struct HistoryQuery {
    since: Option<String>,
}

/// `GET /api/history/{channel}?since=`: the retained messages after
/// `since` (default: all), in the long-poll answer's shape.
pub(crate) async fn history(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_backend(&state.config.api_keys, &headers, peer)?;
    let channel = channel_from_path(path)?;
    let Query(query) = query.map_err(|e| ApiError::new(Refusal::InvalidRequest, e.body_text()))?;
    let since = match query.since.as_deref() {
        None => Since::Earliest,
        Some(text) => {
            Since::parse(text).map_err(|e| ApiError::new(Refusal::InvalidSince, e.to_string()))?
        }
    };
    let page = state.node.engine.history(&channel, since).await?;
    let body = crate::transport::poll::body(
        &channel,
        &page.messages,
        None,
        page.last_id,
        page.gap,
        None,
        None,
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
