//! `GET /sub/{channel}`: one URL, the transport chosen by the request.
//!
//! This module only reads the request (channel, resume point, options) and
//! picks a transport; each transport is a thin adapter over
//! [`herald_core::Subscriber`].

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::{header, HeaderMap, Request};
use axum::response::Response;
use herald_core::{ChannelName, Since};
use serde::Deserialize;

use crate::api::channel_from_path;
use crate::error::ApiError;
use crate::state::AppState;
use crate::transport;

/// Longest JSONP / forever-frame callback name.
pub const MAX_CALLBACK_LEN: usize = 64;

#[derive(Debug, Default, Deserialize)]
pub struct SubQuery {
    pub since: Option<String>,
    pub last_event_id: Option<String>,
    pub timeout: Option<String>,
    pub callback: Option<String>,
    pub transport: Option<String>,
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
    let text = query
        .since
        .as_deref()
        .or(query.last_event_id.as_deref())
        .or(header)
        .filter(|t| !t.is_empty());
    match text {
        None => Ok(Since::Live),
        Some(t) => {
            Since::parse(t).map_err(|e| ApiError::bad_request("invalid_since", e.to_string()))
        }
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
        Some(_) => Err(ApiError::bad_request(
            "invalid_callback",
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
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

pub async fn subscribe(
    State(state): State<AppState>,
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

    if is_websocket(&parts.headers) {
        let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &state)
            .await
            .map_err(|e| ApiError::bad_request("invalid_upgrade", e.body_text()))?;
        return Ok(transport::ws::upgrade(state, upgrade, sub));
    }
    let forced = query.transport.as_deref();
    match forced {
        Some("iframe") => {
            let Some(callback) = callback else {
                return Err(ApiError::bad_request(
                    "invalid_callback",
                    "transport=iframe needs ?callback=NAME",
                ));
            };
            transport::stream::serve(&state, sub, transport::iframe::Iframe::new(&callback)).await
        }
        Some("sse") => transport::stream::serve(&state, sub, transport::sse::Sse).await,
        Some("stream") | Some("ndjson") => {
            transport::stream::serve(&state, sub, transport::ndjson::Ndjson).await
        }
        Some("longpoll") | Some("poll") | None => {
            if forced.is_none() && callback.is_none() {
                if accepts(&parts.headers, "text/event-stream") {
                    return transport::stream::serve(&state, sub, transport::sse::Sse).await;
                }
                if accepts(&parts.headers, "application/x-ndjson") {
                    return transport::stream::serve(&state, sub, transport::ndjson::Ndjson).await;
                }
            }
            let timeout = transport::poll::timeout(query.timeout.as_deref(), &state.config)?;
            transport::poll::serve(&state, sub, timeout, callback).await
        }
        Some(other) => Err(ApiError::bad_request(
            "invalid_transport",
            format!("unknown transport {other:?}: use sse, stream, longpoll or iframe (WebSocket is chosen by the Upgrade header)"),
        )),
    }
}

fn serde_urlencoded_query(q: &str) -> Result<SubQuery, ApiError> {
    serde_urlencoded::from_str(q)
        .map_err(|e| ApiError::bad_request("invalid_request", format!("malformed query: {e}")))
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
