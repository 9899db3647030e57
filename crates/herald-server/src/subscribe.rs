//! `GET /sub/{channel}`: one URL, the transport chosen by the request.
//!
//! This module only reads the request (channel, resume point, options) and
//! picks a transport; each transport is a thin adapter over
//! [`herald_core::Subscriber`].

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::{header, HeaderMap, Request};
use axum::response::Response;
use herald_core::node::{SubscribeError, Subscribed};
use herald_core::{ChannelName, Since, Subscriber};
use serde::Deserialize;

use crate::api::channel_from_path;
use crate::error::ApiError;
use crate::state::AppState;
use crate::transport;
use herald_core::Refusal;

/// Longest JSONP / forever-frame callback name.
pub const MAX_CALLBACK_LEN: usize = 64;

#[derive(Debug, Default, Deserialize)]
pub struct SubQuery {
    pub since: Option<String>,
    pub last_event_id: Option<String>,
    pub timeout: Option<String>,
    pub callback: Option<String>,
    pub transport: Option<String>,
    pub ticket: Option<String>,
}

/// An admitted, authorized and subscribed connection, ready for a
/// transport to write out. Dropping it frees its connection slot and tells
/// the backend (disconnect hook).
pub struct Connection {
    pub sub: Subscriber,
    pub subscribed: Subscribed,
    pub channel: ChannelName,
    _slot: crate::limits::Slot,
    _hook: DisconnectHook,
}

struct DisconnectHook {
    state: AppState,
    user: Option<std::sync::Arc<str>>,
    client: String,
}

impl Drop for DisconnectHook {
    fn drop(&mut self) {
        crate::access::disconnected(&self.state, self.user.as_deref(), &self.client);
    }
}

/// Everything every transport does before its first byte: the connection
/// limit, the credentials, the connect and subscribe rules, the subscribe
/// itself (with resume).
pub async fn open(
    state: &AppState,
    peer: std::net::SocketAddr,
    conn: &crate::serve::Conn,
    headers: &HeaderMap,
    ticket: Option<&str>,
    request: SubRequest,
    transport: &str,
) -> Result<Connection, ApiError> {
    let slot = state.admit(peer, conn, transport == "websocket")?;
    let identity = crate::access::identify(state, headers, ticket).await?;
    let client = crate::session::random_id();
    crate::access::may_connect(state, &identity, &client, transport, Some(peer.ip())).await?;
    let place = crate::access::may_subscribe(state, &identity, &client, &request.channel).await?;
    let mut sub = state.node.subscriber_for(
        state.config.queue_size,
        crate::access::client_info(&identity, &client),
    );
    sub.set_deadline(crate::access::deadline(state, &identity));
    let subscribed = sub
        .subscribe_holding(request.channel.clone(), request.since, place)
        .await
        .map_err(|e| match e {
            SubscribeError::Engine(e) => ApiError::from(e),
            other => ApiError::new(Refusal::InvalidRequest, other.to_string()),
        })?;
    Ok(Connection {
        sub,
        subscribed,
        channel: request.channel,
        _slot: slot,
        _hook: DisconnectHook {
            state: state.clone(),
            user: identity.user.clone(),
            client,
        },
    })
}

/// What a subscribe request asked for, validated.
#[derive(Debug, Clone)]
pub struct SubRequest {
    pub channel: ChannelName,
    pub since: Since,
}

/// The resume point: `?since=`, `?last_event_id=`, then `Last-Event-ID`.
pub fn resume_point(query: &SubQuery, headers: &HeaderMap) -> Result<Since, ApiError> {
    let header = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    // An empty `?since=` is a client bug (a lost id), not "live": say so
    // rather than silently skipping what the client missed.
    if query.since.as_deref() == Some("") || query.last_event_id.as_deref() == Some("") {
        return Err(ApiError::new(
            Refusal::InvalidSince,
            "since is empty: give an id, \"earliest\", or leave the parameter out to start live",
        ));
    }
    let text = query
        .since
        .as_deref()
        .or(query.last_event_id.as_deref())
        .or(header)
        .filter(|t| !t.is_empty());
    match text {
        None => Ok(Since::Live),
        Some(t) => Since::parse(t).map_err(|e| ApiError::new(Refusal::InvalidSince, e.to_string())),
    }
}

/// A JavaScript identifier or dotted path of them (`cb`, `jQuery1_2`, `a.b$`).
pub fn valid_callback(name: &str) -> bool {
    name.len() <= MAX_CALLBACK_LEN
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        })
}

fn callback(query: &SubQuery) -> Result<Option<String>, ApiError> {
    match &query.callback {
        None => Ok(None),
        Some(name) if valid_callback(name) => Ok(Some(name.clone())),
        Some(_) => Err(ApiError::new(
            Refusal::InvalidCallback,
            format!("callback must be a JavaScript identifier (dotted paths allowed), at most {MAX_CALLBACK_LEN} characters"),
        )),
    }
}

fn accepts(headers: &HeaderMap, mime: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|part| part.trim().starts_with(mime)))
}

fn is_websocket(headers: &HeaderMap) -> bool {
    crate::ws::handshake::has_token(headers, header::UPGRADE, "websocket")
}

pub async fn subscribe(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Extension(tcp): Extension<crate::serve::Conn>,
    path: Result<Path<String>, PathRejection>,
    request: Request<Body>,
) -> Result<Response, ApiError> {
    let channel = channel_from_path(path)?;
    let (mut parts, _body) = request.into_parts();
    let query: SubQuery = match parts.uri.query() {
        None => SubQuery::default(),
        Some(q) => serde_urlencoded_query(q)?,
    };
    let since = resume_point(&query, &parts.headers)?;
    let sub = SubRequest { channel, since };
    let callback = callback(&query)?;

    let ticket = query.ticket.as_deref();
    let headers = &parts.headers;
    if is_websocket(headers) {
        let accept = match crate::ws::Accept::check(&mut parts) {
            Ok(accept) => accept,
            Err(refusal) => return Ok(*refusal),
        };
        let conn = open(&state, peer, &tcp, &parts.headers, ticket, sub, "websocket").await?;
        return Ok(transport::ws::upgrade(state, accept, conn));
    }
    let forced = query.transport.as_deref();
    let chosen = match forced {
        Some("iframe") => "iframe",
        Some("sse") => "sse",
        Some("stream") | Some("ndjson") => "stream",
        Some("longpoll") | Some("poll") => "longpoll",
        None if callback.is_some() => "longpoll",
        None if accepts(headers, "text/event-stream") => "sse",
        None if accepts(headers, "application/x-ndjson") => "stream",
        None => "longpoll",
        Some(other) => {
            return Err(ApiError::new(
                Refusal::InvalidTransport,
                format!("unknown transport {other:?}: use sse, stream, longpoll or iframe (WebSocket is chosen by the Upgrade header)"),
            ))
        }
    };
    if chosen == "iframe" && callback.is_none() {
        return Err(ApiError::new(
            Refusal::InvalidCallback,
            "transport=iframe needs ?callback=NAME",
        ));
    }
    let timeout = if chosen == "longpoll" {
        transport::poll::timeout(query.timeout.as_deref(), &state.config)?
    } else {
        std::time::Duration::ZERO
    };
    let conn = open(&state, peer, &tcp, headers, ticket, sub, chosen).await?;
    match (chosen, callback) {
        ("iframe", Some(name)) => Ok(transport::stream::serve(
            &state,
            conn,
            transport::iframe::Iframe::new(&name),
        )),
        ("sse", _) => Ok(transport::stream::serve(&state, conn, transport::sse::Sse)),
        ("stream", _) => Ok(transport::stream::serve(
            &state,
            conn,
            transport::ndjson::Ndjson,
        )),
        (_, callback) => Ok(transport::poll::serve(&state, conn, timeout, callback).await),
    }
}

fn serde_urlencoded_query(q: &str) -> Result<SubQuery, ApiError> {
    serde_urlencoded::from_str(q)
        .map_err(|e| ApiError::new(Refusal::InvalidRequest, format!("malformed query: {e}")))
}

/// Responses of streaming transports start with these headers so proxies
/// and CDNs pass bytes through at once.
pub fn no_buffering(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache, no-store"),
    );
    h.insert("x-accel-buffering", header::HeaderValue::from_static("no"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks() {
        for ok in ["cb", "_x", "$", "jQuery123_456", "a.b.c", "ns.$cb1"] {
            assert!(valid_callback(ok), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "a..b",
            "a.",
            "alert(1)",
            "a-b",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(!valid_callback(bad), "{bad}");
        }
    }
}
