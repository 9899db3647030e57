//! The session over plain HTTP: a downstream (SSE, NDJSON, forever-iframe,
//! or long-poll) plus short POSTs carrying commands upstream.
//!
//! Each HTTP session is a task that owns its [`Session`]; the registry maps
//! the session's secret id to the task's command queue. The task ends when
//! its stream is dropped (the client went away), when a long-poll client
//! stops polling, on a slow consumer, or at shutdown; its registry entry
//! goes with it.

#[cfg(test)]
mod framing_props;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::{BufMut, Bytes, BytesMut};
use herald_core::disconnect::{Disconnect, SHUTDOWN, SLOW_CONSUMER, WRITE_TIMEOUT};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, value::RawValue};
use std::net::SocketAddr;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::{disconnect_frame, random_id, Push, Session, PING};
use crate::api::read_body;
use crate::error::ApiError;
use crate::state::AppState;
use crate::subscribe::{no_buffering, valid_callback};
use crate::transport::stream::heartbeat_interval;
use herald_core::Refusal;

/// Commands waiting for a session task; more are refused with 429.
const COMMAND_QUEUE: usize = 64;
/// Body chunks waiting for the client to read them.
const STREAM_QUEUE: usize = 64;
/// Most items handled per wake-up.
const BATCH: usize = 64;
/// A long-poll session with no poll waiting for this long is abandoned and
/// ends, so it lives at most its last poll's timeout plus this.
pub const POLL_LINGER: Duration = Duration::from_secs(10);

/// Live HTTP sessions by id.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Handle>>,
}

#[derive(Clone)]
struct Handle {
    commands: mpsc::Sender<Bytes>,
    poll: Option<Arc<PollBox>>,
    /// Cancelled by `DELETE /connection/{id}`: the client ends the session.
    ended: tokio_util::sync::CancellationToken,
}

impl Registry {
    fn get(&self, id: &str) -> Option<Handle> {
        self.sessions.lock().get(id).cloned()
    }

    fn insert(&self, id: String, handle: Handle) {
        self.sessions.lock().insert(id, handle);
    }

    fn remove(&self, id: &str) {
        self.sessions.lock().remove(id);
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Frames waiting for the next long-poll.
struct PollBox {
    frames: Mutex<VecDeque<Bytes>>,
    notify: Notify,
    ended: AtomicBool,
    /// When a poll last started or ended.
    last_poll: Mutex<Instant>,
    /// Polls waiting now (a session with one waiting is not abandoned).
    waiting: std::sync::atomic::AtomicUsize,
}

impl PollBox {
    fn abandoned(&self) -> bool {
        self.waiting.load(Ordering::Acquire) == 0 && self.last_poll.lock().elapsed() >= POLL_LINGER
    }
}

/// Counts a waiting poll for as long as it lives.
struct Waiting<'a>(&'a PollBox);

impl<'a> Waiting<'a> {
    fn new(pollbox: &'a PollBox) -> Self {
        *pollbox.last_poll.lock() = Instant::now();
        pollbox.waiting.fetch_add(1, Ordering::AcqRel);
        Self(pollbox)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        *self.0.last_poll.lock() = Instant::now();
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a stream session writes frames.
#[derive(Clone)]
enum Framing {
    Sse,
    Ndjson,
    Iframe(Bytes),
}

impl Framing {
    fn content_type(&self) -> &'static str {
        match self {
            Self::Sse => "text/event-stream; charset=utf-8",
            Self::Ndjson => "application/x-ndjson",
            Self::Iframe(_) => "text/html; charset=utf-8",
        }
    }

    fn open(&self) -> Option<Bytes> {
        match self {
            Self::Sse => Some(Bytes::from_static(b"retry: 2000\n\n")),
            Self::Ndjson => None,
            Self::Iframe(_) => Some(crate::transport::iframe::document_head()),
        }
    }

    /// One frame as body chunks. `script_safe` is the frame already escaped
    /// for a script context, when the caller has it (shared envelopes).
    fn frame(&self, json: Bytes, script_safe: Option<Bytes>) -> Vec<Bytes> {
        match self {
            Self::Sse => vec![
                Bytes::from_static(b"data: "),
                json,
                Bytes::from_static(b"\n\n"),
            ],
            Self::Ndjson => vec![json, Bytes::from_static(b"\n")],
            Self::Iframe(call) => vec![
                call.clone(),
                script_safe.unwrap_or_else(|| herald_core::message::script_safe(&json)),
                Bytes::from_static(b");</script>\n"),
            ],
        }
    }
}

/// Where a session task writes.
enum Down {
    Stream(mpsc::Sender<Bytes>, Framing),
    Poll(Arc<PollBox>, usize),
}

impl Down {
    async fn send(
        &mut self,
        state: &AppState,
        json: Bytes,
        script_safe: Option<Bytes>,
    ) -> Result<(), Disconnect> {
        match self {
            Self::Stream(tx, framing) => {
                for chunk in framing.frame(json, script_safe) {
                    match tokio::time::timeout(state.config.write_timeout, tx.send(chunk)).await {
                        Ok(Ok(())) => {}
                        _ => return Err(WRITE_TIMEOUT),
                    }
                }
                Ok(())
            }
            Self::Poll(pollbox, cap) => {
                let mut frames = pollbox.frames.lock();
                if frames.len() >= *cap {
                    return Err(SLOW_CONSUMER);
                }
                frames.push_back(json);
                drop(frames);
                pollbox.notify.notify_one();
                Ok(())
            }
        }
    }

    /// Resolves when the client is gone (stream dropped).
    async fn closed(&self) {
        match self {
            Self::Stream(tx, _) => tx.closed().await,
            Self::Poll(..) => std::future::pending().await,
        }
    }

    /// A long-poll client with no poll waiting for [`POLL_LINGER`] is gone.
    fn idle(&self) -> bool {
        match self {
            Self::Stream(..) => false,
            Self::Poll(pollbox, _) => pollbox.abandoned(),
        }
    }

    /// Resolves once a long-poll client is gone: it wakes when the linger
    /// since the last poll would end, not on a fixed tick.
    async fn abandoned(&self) {
        match self {
            Self::Stream(..) => std::future::pending().await,
            Self::Poll(pollbox, _) => loop {
                let due = *pollbox.last_poll.lock() + POLL_LINGER;
                tokio::time::sleep_until(due).await;
                if pollbox.abandoned() {
                    return;
                }
                if pollbox.waiting.load(Ordering::Acquire) > 0 {
                    // A poll is waiting: look again once it could have ended.
                    tokio::time::sleep(POLL_LINGER).await;
                }
            },
        }
    }
}

async fn drive(
    state: AppState,
    id: String,
    mut session: Session,
    mut commands: mpsc::Receiver<Bytes>,
    mut down: Down,
    slot: crate::limits::Slot,
    ended: tokio_util::sync::CancellationToken,
) {
    let end = drive_loop(&state, &mut session, &mut commands, &mut down, &ended).await;
    let kept = finish(&state, &id, &down, end).await;
    session.ended();
    drop(slot);
    drop(session);
    if kept {
        // The last frames wait for one more poll, but not for ever.
        tokio::time::sleep(POLL_LINGER).await;
        state.sessions.remove(&id);
    }
}

async fn drive_loop(
    state: &AppState,
    session: &mut Session,
    commands: &mut mpsc::Receiver<Bytes>,
    down: &mut Down,
    ended: &tokio_util::sync::CancellationToken,
) -> Option<Disconnect> {
    let mut heartbeat = heartbeat_interval(state.config.heartbeat);
    // Registered once, not on every wake-up (10k connections share this token).
    let shutdown = state.shutdown.cancelled();
    tokio::pin!(shutdown);
    let end: Option<Disconnect> = loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break Some(SHUTDOWN),
            () = down.closed() => break None,
            () = ended.cancelled() => break None,
            () = down.abandoned() => break None,
            Some(command) = commands.recv() => {
                if let Some(reply) = session.handle(&command).await {
                    if let Err(why) = down.send(state, reply, None).await {
                        break Some(why);
                    }
                }
                if let Some(why) = session.closing() {
                    break Some(why);
                }
            }
            item = session.subscriber().next() => {
                let mut item = Some(item);
                let mut count = 0;
                let mut ended = None;
                while let Some(current) = item.take() {
                    let sent = match Session::push(current) {
                        Push::Message(m) => down.send(state, m.envelope().clone(), Some(m.script_envelope().clone())).await,
                        Push::Frame(f) => down.send(state, f, None).await,
                        Push::End(why) => Err(why),
                    };
                    if let Err(why) = sent {
                        ended = Some(why);
                        break;
                    }
                    count += 1;
                    if count < BATCH {
                        item = session.subscriber().try_next();
                    }
                }
                if ended.is_some() {
                    break ended;
                }
            }
            _ = heartbeat.tick() => {
                if down.idle() {
                    break None;
                }
                if let Err(why) = down.send(state, PING, None).await {
                    break Some(why);
                }
            }
        }
    };
    end
}

/// Tells the client why the session ended; returns whether the registry
/// entry was kept for a last poll.
async fn finish(state: &AppState, id: &str, down: &Down, end: Option<Disconnect>) -> bool {
    match (down, end) {
        (Down::Poll(pollbox, _), end) => {
            if let Some(why) = end {
                pollbox.frames.lock().push_back(disconnect_frame(why));
            }
            pollbox.ended.store(true, Ordering::Release);
            pollbox.notify.notify_one();
            // The entry stays until the client's next poll takes the last
            // frames, unless the client is already gone.
            if end.is_none() || down.idle() {
                state.sessions.remove(id);
                return false;
            }
            true
        }
        (Down::Stream(tx, framing), Some(why)) => {
            for chunk in framing.frame(disconnect_frame(why), None) {
                let _ = tokio::time::timeout(state.config.write_timeout, tx.send(chunk)).await;
            }
            state.sessions.remove(id);
            false
        }
        (Down::Stream(..), None) => {
            state.sessions.remove(id);
            false
        }
    }
}

fn session_frame(id: &str, state: &AppState) -> Bytes {
    Bytes::from(
        json!({"session": {"id": id, "ping": state.config.heartbeat.as_secs()}}).to_string(),
    )
}

#[derive(Deserialize)]
pub struct OpenQuery {
    callback: Option<String>,
    ticket: Option<String>,
}

/// Admission and credentials for a new HTTP session.
async fn admit(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    ticket: Option<&str>,
) -> Result<(crate::limits::Slot, crate::token::Identity), ApiError> {
    let slot = state.admit_session(peer)?;
    let identity = crate::access::identify(state, headers, ticket).await?;
    Ok((slot, identity))
}

/// `GET /connection/sse`, `/connection/stream`, `/connection/iframe`.
async fn open_stream(
    state: AppState,
    peer: SocketAddr,
    framing: Framing,
    slot: crate::limits::Slot,
    identity: crate::token::Identity,
) -> Response {
    let id = random_id();
    let ended = tokio_util::sync::CancellationToken::new();
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
    state.sessions.insert(
        id.clone(),
        Handle {
            commands: commands_tx,
            poll: None,
            ended: ended.clone(),
        },
    );
    // The first chunks fit in the fresh queue, so these never wait.
    if let Some(open) = framing.open() {
        let _ = body_tx.try_send(open);
    }
    for chunk in framing.frame(session_frame(&id, &state), None) {
        let _ = body_tx.try_send(chunk);
    }
    let content_type = framing.content_type();
    // The client id others see (notices, presence, hooks) is public; the
    // session id is the secret that controls the session: never the same.
    let mut session = Session::new(state.clone(), random_id(), identity);
    session.set_peer(peer.ip());
    tokio::spawn(drive(
        state,
        id,
        session,
        commands_rx,
        Down::Stream(body_tx, framing),
        slot,
        ended,
    ));
    let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    no_buffering(&mut response);
    response
}

pub async fn sse(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<OpenQuery>,
) -> Result<Response, ApiError> {
    let (slot, identity) = admit(&state, peer, &headers, query.ticket.as_deref()).await?;
    Ok(open_stream(state, peer, Framing::Sse, slot, identity).await)
}

pub async fn stream(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<OpenQuery>,
) -> Result<Response, ApiError> {
    let (slot, identity) = admit(&state, peer, &headers, query.ticket.as_deref()).await?;
    Ok(open_stream(state, peer, Framing::Ndjson, slot, identity).await)
}

pub async fn iframe(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<OpenQuery>,
) -> Result<Response, ApiError> {
    let call = match &query.callback {
        Some(name) if valid_callback(name) => Bytes::from(format!("<script>parent.{name}(")),
        _ => {
            return Err(ApiError::new(
                Refusal::InvalidCallback,
                "?callback= must be a JavaScript identifier (dotted paths allowed)",
            ))
        }
    };
    let (slot, identity) = admit(&state, peer, &headers, query.ticket.as_deref()).await?;
    Ok(open_stream(state, peer, Framing::Iframe(call), slot, identity).await)
}

/// `POST /connection/longpoll`: a new long-poll session.
pub async fn longpoll_open(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<OpenQuery>,
) -> Result<Response, ApiError> {
    let (slot, identity) = admit(&state, peer, &headers, query.ticket.as_deref()).await?;
    let id = random_id();
    let ended = tokio_util::sync::CancellationToken::new();
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
    let pollbox = Arc::new(PollBox {
        frames: Mutex::new(VecDeque::new()),
        notify: Notify::new(),
        ended: AtomicBool::new(false),
        last_poll: Mutex::new(Instant::now()),
        waiting: std::sync::atomic::AtomicUsize::new(0),
    });
    state.sessions.insert(
        id.clone(),
        Handle {
            commands: commands_tx,
            poll: Some(Arc::clone(&pollbox)),
            ended: ended.clone(),
        },
    );
    // The client id others see (notices, presence, hooks) is public; the
    // session id is the secret that controls the session: never the same.
    let mut session = Session::new(state.clone(), random_id(), identity);
    session.set_peer(peer.ip());
    let cap = state.config.queue_size;
    let reply = session_frame(&id, &state);
    tokio::spawn(drive(
        state,
        id,
        session,
        commands_rx,
        Down::Poll(pollbox, cap),
        slot,
        ended,
    ));
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

fn session_not_found() -> ApiError {
    ApiError::new(
        Refusal::SessionNotFound,
        "no such session (it ended or never existed); open a new one",
    )
}

#[derive(Deserialize)]
pub struct PollQuery {
    timeout: Option<String>,
}

/// `GET /connection/longpoll/{id}?timeout=N`: waiting frames, or none after the timeout.
pub async fn longpoll_poll(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Query<PollQuery>,
) -> Result<Response, ApiError> {
    let Ok(Path(id)) = path else {
        return Err(session_not_found());
    };
    let wait = crate::transport::poll::timeout(query.0.timeout.as_deref(), &state.config)?;
    let pollbox = state
        .sessions
        .get(&id)
        .and_then(|h| h.poll)
        .ok_or_else(session_not_found)?;
    let _waiting = Waiting::new(&pollbox);
    let deadline = Instant::now() + wait;
    loop {
        let notified = pollbox.notify.notified();
        let taken: Vec<Bytes> = pollbox.frames.lock().drain(..).collect();
        let ended = pollbox.ended.load(Ordering::Acquire);
        if !taken.is_empty() || ended || Instant::now() >= deadline {
            if ended {
                state.sessions.remove(&id);
                if taken.is_empty() {
                    return Err(session_not_found());
                }
            }
            let mut body = BytesMut::from(&b"{\"frames\":["[..]);
            for (i, frame) in taken.iter().enumerate() {
                if i > 0 {
                    body.put_u8(b',');
                }
                body.put_slice(frame);
            }
            body.put_slice(b"]}");
            return Ok(json_response(StatusCode::OK, body.freeze()));
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = state.shutdown.cancelled(), if !state.shutdown.is_cancelled() => {}
        }
    }
}

/// `POST /connection/{id}`: one command or an array of commands.
pub async fn send(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let Ok(Path(id)) = path else {
        return Err(session_not_found());
    };
    let handle = state.sessions.get(&id).ok_or_else(session_not_found)?;
    let limit = super::ws::max_frame(&state);
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
pub async fn end(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Ok(Path(id)) = path else {
        return Err(session_not_found());
    };
    let handle = state.sessions.get(&id).ok_or_else(session_not_found)?;
    handle.ended.cancel();
    state.sessions.remove(&id);
    Ok(Json(json!({ "ended": true })).into_response())
}
