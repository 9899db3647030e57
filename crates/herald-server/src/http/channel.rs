//! `GET /sub/{channel}`: one URL, the transport chosen by the request.
//!
//! This module only reads the request (channel, resume point, options) and
//! picks a transport; the connection is a session of the channel dialect
//! ([`Dialect::Channel`]), admitted and subscribed by the one protocol core,
//! and written out by the transport's encoder.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::Response;
use herald_core::node::Subscribed;
use herald_core::{ChannelName, Refusal, Since};
use serde::Deserialize;

use super::api::channel_from_path;
use super::response::deferred;
use crate::access::limits::Conn;
use crate::error::ApiError;
use crate::protocol::admission::{self, Hold, Opening};
use crate::protocol::{Dialect, Session, Transport};
use crate::state::AppState;
use crate::transport::downstream::Downstream;
use crate::transport::iframe::{valid_callback, MAX_CALLBACK_LEN};
use crate::transport::stream::no_buffering;
use crate::transport::{self, iframe::Iframe, ndjson::Ndjson, sse::Sse};

#[derive(Debug, Default, Deserialize)]
pub(crate) struct SubQuery {
    since: Option<String>,
    last_event_id: Option<String>,
    timeout: Option<String>,
    callback: Option<String>,
    transport: Option<String>,
    ticket: Option<String>,
}

/// The resume point: `?since=`, `?last_event_id=`, then `Last-Event-ID`.
fn resume_point(query: &SubQuery, headers: &HeaderMap) -> Result<Since, ApiError> {
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

/// Admits the client and opens its session on `channel`: the connect
/// step and the implied subscription, under every rule.
async fn open(
    state: &AppState,
    hold: Hold,
    opening: Opening<'_>,
    channel: ChannelName,
    since: Since,
    transport: Transport,
) -> Result<(Session, Subscribed), ApiError> {
    let admitted = admission::admit(state, hold, opening).await?;
    let mut session = Session::new(
        state.clone(),
        Dialect::Channel(channel.clone()),
        transport,
        admitted,
    );
    let subscribed = session.open_channel(channel, since).await?;
    Ok((session, subscribed))
}

pub(crate) async fn subscribe(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Extension(tcp): Extension<Conn>,
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
    let callback = callback(&query)?;
    let ticket = query.ticket.as_deref();

    if is_websocket(&parts.headers) {
        let accept = match crate::ws::Accept::check(&mut parts) {
            Ok(accept) => accept,
            Err(refusal) => return Ok(*refusal),
        };
        let opening = Opening {
            peer,
            conn: &tcp,
            headers: &parts.headers,
            ticket,
        };
        let (session, _) = open(
            &state,
            Hold::Upgrade,
            opening,
            channel,
            since,
            Transport::WebSocket,
        )
        .await?;
        return Ok(transport::ws::upgrade(accept, session));
    }
    let headers = &parts.headers;
    let forced = query.transport.as_deref();
    let chosen = match forced {
        Some("iframe") => Transport::Iframe,
        Some("sse") => Transport::Sse,
        Some("stream") | Some("ndjson") => Transport::Stream,
        Some("longpoll") | Some("poll") => Transport::LongPoll,
        None if callback.is_some() => Transport::LongPoll,
        None if accepts(headers, "text/event-stream") => Transport::Sse,
        None if accepts(headers, "application/x-ndjson") => Transport::Stream,
        None => Transport::LongPoll,
        Some(other) => {
            return Err(ApiError::new(
                Refusal::InvalidTransport,
                format!("unknown transport {other:?}: use sse, stream, longpoll or iframe (WebSocket is chosen by the Upgrade header)"),
            ))
        }
    };
    if chosen == Transport::Iframe && callback.is_none() {
        return Err(ApiError::new(
            Refusal::InvalidCallback,
            "transport=iframe needs ?callback=NAME",
        ));
    }
    let timeout = if chosen == Transport::LongPoll {
        transport::poll::timeout(query.timeout.as_deref(), &state.config)?
    } else {
        std::time::Duration::ZERO
    };
    let opening = Opening {
        peer,
        conn: &tcp,
        headers,
        ticket,
    };
    let (session, subscribed) = open(
        &state,
        Hold::Request,
        opening,
        channel.clone(),
        since,
        chosen,
    )
    .await?;
    let dialect = Dialect::Channel(channel.clone());
    let down = Downstream::new(session, None);
    Ok(match (chosen, callback) {
        (Transport::Iframe, Some(name)) => {
            transport::stream::serve(down, Iframe::new(&name, dialect), None)
        }
        (Transport::Sse, _) => transport::stream::serve(down, Sse { dialect }, None),
        (Transport::Stream, _) => transport::stream::serve(down, Ndjson { dialect }, None),
        // Deferred: the poll waits outside the router and its middlewares.
        (_, callback) => deferred(async move {
            let body =
                transport::poll::answer(down, &channel, subscribed, timeout, callback.as_deref())
                    .await;
            poll_response(body, callback.is_some())
        }),
    })
}

/// A poll's answer: JSON, or with a callback JavaScript (JSONP).
fn poll_response(body: bytes::Bytes, jsonp: bool) -> Response {
    let content_type = if jsonp {
        "application/javascript; charset=utf-8"
    } else {
        "application/json"
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    no_buffering(&mut response);
    response
}

fn serde_urlencoded_query(q: &str) -> Result<SubQuery, ApiError> {
    serde_urlencoded::from_str(q)
        .map_err(|e| ApiError::new(Refusal::InvalidRequest, format!("malformed query: {e}")))
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
