//! The session protocol's endpoints: `GET /connection/websocket`, the HTTP
//! downstreams (`/connection/sse`, `/stream`, `/iframe`, `POST
//! /connection/longpoll`), and the short requests that carry commands
//! upstream (`POST /connection/{id}`), take long-poll frames (`GET
//! /connection/longpoll/{id}`) and end a session (`DELETE
//! /connection/{id}`).
//!
//! Every opening goes through the one admission path and opens a
//! [`Session`] of the session dialect; the transports in
//! [`crate::transport`] serve it. An HTTP session's secret id is in the
//! [`Registry`]; its public client id is another.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Extension, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use herald_core::Refusal;
use serde::Deserialize;
use serde_json::{json, value::RawValue};
use tokio::sync::mpsc;

use super::api::read_body;
use crate::access::limits::Conn;
use crate::error::ApiError;
use crate::protocol::admission::{self, Hold, Opening};
use crate::protocol::{Dialect, Push, Session, Transport};
use crate::state::AppState;
use crate::transport::downstream::Downstream;
use crate::transport::iframe::{valid_callback, Iframe};
use crate::transport::poll::{self, Mailbox};
use crate::transport::registry::{Registry, COMMAND_QUEUE};
use crate::transport::stream::no_buffering;
use crate::transport::{self, ndjson::Ndjson, sse::Sse, Encoder};

#[derive(Deserialize)]
pub(crate) struct OpenQuery {
    callback: Option<String>,
    ticket: Option<String>,
}

/// `GET /connection/websocket`.
pub(crate) async fn websocket(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(tcp): Extension<Conn>,
    Query(query): Query<OpenQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let (mut parts, _body) = request.into_parts();
    let accept = match crate::ws::Accept::check(&mut parts) {
        Ok(accept) => accept,
        Err(refusal) => return Ok(*refusal),
    };
    let opening = Opening {
        peer,
        conn: &tcp,
        headers: &parts.headers,
        ticket: query.ticket.as_deref(),
    };
    let admitted = admission::admit(&state, Hold::Upgrade, opening).await?;
    let session = Session::new(state, Dialect::Session, Transport::Session, admitted);
    Ok(transport::ws::upgrade(accept, session))
}

/// Admits a new HTTP session: it holds a slot of its own, since it
/// outlives the request that opens it.
async fn open_session(
    state: &AppState,
    peer: SocketAddr,
    conn: &Conn,
    headers: &HeaderMap,
    ticket: Option<&str>,
) -> Result<Session, ApiError> {
    let opening = Opening {
        peer,
        conn,
        headers,
        ticket,
    };
    let admitted = admission::admit(state, Hold::Session, opening).await?;
    Ok(Session::new(
        state.clone(),
        Dialect::Session,
        Transport::Session,
        admitted,
    ))
}

/// `{"session":{"id","ping"}}`: the first frame, with the secret id.
fn session_frame(id: &str, state: &AppState) -> Bytes {
    Bytes::from(
        json!({"session": {"id": id, "ping": state.config.heartbeat.as_secs()}}).to_string(),
    )
}

/// A streaming session: registered, then served by its response body.
fn stream_session<E: Encoder>(
    state: &AppState,
    registry: &Arc<Registry>,
    session: Session,
    encoder: E,
) -> Response {
    let entry = registry.register(None);
    let first = session_frame(entry.registered.id(), state);
    transport::stream::serve(
        Downstream::new(session, Some(entry)),
        encoder,
        Some(Push::Frame(first)),
    )
}

/// `GET /connection/sse`.
pub(crate) async fn sse(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(tcp): Extension<Conn>,
    Extension(registry): Extension<Arc<Registry>>,
    headers: HeaderMap,
    Query(query): Query<OpenQuery>,
) -> Result<Response, ApiError> {
    let session = open_session(&state, peer, &tcp, &headers, query.ticket.as_deref()).await?;
    let encoder = Sse {
        dialect: Dialect::Session,
    };
    Ok(stream_session(&state, &registry, session, encoder))
}

/// `GET /connection/stream`.
pub(crate) async fn stream(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(tcp): Extension<Conn>,
    Extension(registry): Extension<Arc<Registry>>,
    headers: HeaderMap,
    Query(query): Query<OpenQuery>,
) -> Result<Response, ApiError> {
    let session = open_session(&state, peer, &tcp, &headers, query.ticket.as_deref()).await?;
    let encoder = Ndjson {
        dialect: Dialect::Session,
    };
    Ok(stream_session(&state, &registry, session, encoder))
}

/// `GET /connection/iframe?callback=NAME`.
pub(crate) async fn iframe(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(tcp): Extension<Conn>,
    Extension(registry): Extension<Arc<Registry>>,
    headers: HeaderMap,
    Query(query): Query<OpenQuery>,
) -> Result<Response, ApiError> {
    let encoder = match &query.callback {
        Some(name) if valid_callback(name) => Iframe::new(name, Dialect::Session),
        _ => {
            return Err(ApiError::new(
                Refusal::InvalidCallback,
                "?callback= must be a JavaScript identifier (dotted paths allowed)",
            ))
        }
    };
    let session = open_session(&state, peer, &tcp, &headers, query.ticket.as_deref()).await?;
    Ok(stream_session(&state, &registry, session, encoder))
}

/// `POST /connection/longpoll`: a new long-poll session, driven by a task
/// into its mailbox.
pub(crate) async fn longpoll_open(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(tcp): Extension<Conn>,
    Extension(registry): Extension<Arc<Registry>>,
    headers: HeaderMap,
    Query(query): Query<OpenQuery>,
) -> Result<Response, ApiError> {
    let session = open_session(&state, peer, &tcp, &headers, query.ticket.as_deref()).await?;
    let mailbox = Mailbox::new(state.config.queue_size);
    let entry = registry.register(Some(Arc::clone(&mailbox)));
    let reply = session_frame(entry.registered.id(), &state);
    tokio::spawn(poll::drive(Downstream::new(session, Some(entry)), mailbox));
    Ok(json_response(StatusCode::CREATED, reply))
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    no_buffering(&mut response);
    response
}

pub(crate) fn session_not_found() -> ApiError {
    ApiError::new(
        Refusal::SessionNotFound,
        "no such session (it ended or never existed); open a new one",
    )
}

#[derive(Deserialize)]
pub(crate) struct PollQuery {
    timeout: Option<String>,
}

/// `GET /connection/longpoll/{id}?timeout=N`: waiting frames, or none after the timeout.
pub(crate) async fn longpoll_poll(
    State(state): State<AppState>,
    Extension(registry): Extension<Arc<Registry>>,
    path: Result<Path<String>, PathRejection>,
    query: Query<PollQuery>,
) -> Result<Response, ApiError> {
    let Ok(Path(id)) = path else {
        return Err(session_not_found());
    };
    let wait = poll::timeout(query.0.timeout.as_deref(), &state.config)?;
    let mailbox = registry
        .get(&id)
        .and_then(|h| h.mailbox)
        .ok_or_else(session_not_found)?;
    // Deferred: the poll waits outside the router and its middlewares.
    Ok(super::response::deferred(async move {
        let (frames, ended) = mailbox.take(wait, &state.shutdown).await;
        if ended {
            // This poll takes the last frames: the session is gone after it.
            registry.remove(&id);
            if frames.is_empty() {
                return session_not_found().into_response();
            }
        }
        json_response(StatusCode::OK, poll::frames_body(&frames))
    }))
}

/// `POST /connection/{id}`: one command or an array of commands.
pub(crate) async fn send(
    State(state): State<AppState>,
    Extension(registry): Extension<Arc<Registry>>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let Ok(Path(id)) = path else {
        return Err(session_not_found());
    };
    let handle = registry.get(&id).ok_or_else(session_not_found)?;
    let limit = state.config.limits.max_command_size;
    let raw = read_body(body, limit * 4).await?;
    let frames: Vec<Bytes> = if raw.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        let list: Vec<Box<RawValue>> = serde_json::from_slice(&raw).map_err(|e| {
            ApiError::new(
                Refusal::InvalidCommand,
                format!("not a JSON array of commands: {e}"),
            )
        })?;
        list.iter()
            .map(|v| Bytes::copy_from_slice(v.get().as_bytes()))
            .collect()
    } else {
        vec![raw]
    };
    if frames.iter().any(|f| f.len() > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    let count = frames.len();
    if count > COMMAND_QUEUE {
        return Err(ApiError::new(
            Refusal::LimitExceeded,
            format!("at most {COMMAND_QUEUE} commands in one batch; none of this batch ran"),
        ));
    }
    if count == 0 {
        return Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": 0 }))).into_response());
    }
    // Room for the whole batch or nothing: a refused batch ran none of its
    // commands, so the client can retry it as it is.
    let permits =
        handle.commands.try_reserve_many(count).map_err(|e| {
            match e {
        mpsc::error::TrySendError::Full(()) => ApiError::new(
            Refusal::LimitExceeded,
            "too many commands waiting for this session; none of this batch ran, retry it later",
        ),
        mpsc::error::TrySendError::Closed(()) => session_not_found(),
    }
        })?;
    for (permit, frame) in permits.zip(frames) {
        permit.send(frame);
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": count }))).into_response())
}

/// `DELETE /connection/{id}`: the client ends its session now (instead of
/// leaving it to time out).
pub(crate) async fn end(
    Extension(registry): Extension<Arc<Registry>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Ok(Path(id)) = path else {
        return Err(session_not_found());
    };
    let handle = registry.get(&id).ok_or_else(session_not_found)?;
    handle.ended.cancel();
    registry.remove(&id);
    Ok(Json(json!({ "ended": true })).into_response())
}
