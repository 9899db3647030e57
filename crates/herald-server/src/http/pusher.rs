//! The Pusher Channels surface (docs/pusher.md): `GET /app/{key}`, a
//! Pusher client's WebSocket (a session of the Pusher dialect, through
//! the one admission path); pusher-js's HTTP fallbacks under
//! `/pusher/app/{key}/{server}/{session}/` (`xhr_streaming`, `xhr`,
//! `xhr_send`: the same session, served by `transport::xhr`); and the HTTP API that Pusher's server
//! libraries call, `/apps/{id}/…`, each request signed with the app's
//! secret (`access::pusher::check_request`). An app's channel `c` is the
//! Herald channel `pusher:{id}:c`: a trigger is a publish to the engine
//! like any other, stored as `{"event","data"[,"socket_id"]}`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Json;
use bytes::Bytes;
use herald_core::{ChannelName, Payload, Refusal};
use serde::Deserialize;
use serde_json::{json, value::RawValue};
use tokio::sync::mpsc;

use super::api::{parse_json, read_body};
use super::connection::session_not_found;
use crate::access::limits::Conn;
use crate::access::pusher::{check_request, RequestRefusal};
use crate::error::ApiError;
use crate::protocol::admission::{self, Hold, Opening};
use crate::protocol::pusher::{self as dialect, name::pusher_name};
use crate::protocol::Session;
use crate::state::{AppState, PusherApp, PusherSlot};
use crate::transport;
use crate::transport::poll::Mailbox;
use crate::transport::registry::{Registry, COMMAND_QUEUE};
use crate::transport::xhr::{Finish, Receive};

/// Most channels one trigger may name (Pusher's limit).
pub(crate) const MAX_TRIGGER_CHANNELS: usize = 100;
/// Most events one batch may hold (Pusher's limit).
pub(crate) const MAX_BATCH: usize = 10;
/// Longest event name.
pub(crate) const MAX_EVENT_NAME: usize = dialect::command::MAX_EVENT_NAME;

/// `GET /app/{key}?protocol=7`: a Pusher client's WebSocket.
pub(crate) async fn websocket(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(tcp): Extension<Conn>,
    Path(key): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let (mut parts, _body) = request.into_parts();
    let accept = match crate::ws::Accept::check(&mut parts) {
        Ok(accept) => accept,
        Err(refusal) => return Ok(*refusal),
    };
    let slot = match app_slot(&state, &key, &parts.uri) {
        Ok(slot) => slot,
        Err((code, message)) => {
            return Ok(transport::ws::refuse_pusher(accept, &state, code, message))
        }
    };
    let opening = Opening {
        peer,
        conn: &tcp,
        headers: &parts.headers,
        ticket: None,
    };
    let admitted = admission::admit(&state, Hold::Upgrade, opening).await?;
    let session = Session::pusher(state.clone(), slot, admitted);
    Ok(transport::ws::upgrade(accept, session))
}

/// The app's place for one more connection, or the Pusher refusal: a
/// bad `?protocol=` (4006 to 4008), an unknown key (4001), the app at its
/// `max_connections` (4004).
fn app_slot(state: &AppState, key: &str, uri: &Uri) -> Result<PusherSlot, (dialect::Code, String)> {
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default();
    let protocol = query
        .iter()
        .find(|(k, _)| k == "protocol")
        .map(|(_, v)| v.as_str());
    if let Err(code) = dialect::check_protocol(protocol) {
        return Err((
            code,
            format!("{}: this server speaks protocols 5 to 7", code.message),
        ));
    }
    let Some(app) = state.pusher_by_key(key) else {
        return Err((
            dialect::APP_NOT_FOUND,
            format!("app key {key} is not served here"),
        ));
    };
    app.take_slot().ok_or_else(|| {
        (
            dialect::OVER_QUOTA,
            format!(
                "app {} has its {} connections",
                app.app.id, app.app.max_connections
            ),
        )
    })
}

// ---- pusher-js's HTTP fallbacks: /pusher/app/{key}/{server}/{session}/… ----

/// Longest `{server}` and `{session}` segment of an HTTP socket session's
/// path (pusher-js makes them 1 to 3 digits and 8 characters).
pub(crate) const MAX_SESSION_SEGMENT: usize = 32;

/// The registry name of the HTTP socket session `…/app/{key}/{server}/{session}`,
/// or a 400 when a segment is not 1 to 32 letters, digits, `_` or `-`.
fn socket_session(key: &str, server: &str, session: &str) -> Result<String, ApiError> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= MAX_SESSION_SEGMENT
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if !ok(server) || !ok(session) {
        return Err(ApiError::new(
            Refusal::InvalidRequest,
            format!(
                "an HTTP socket session is /app/{{key}}/{{server}}/{{session}}/…, each of \
                 server and session 1 to {MAX_SESSION_SEGMENT} letters, digits, _ or -"
            ),
        ));
    }
    Ok(format!("pusher/{key}/{server}/{session}"))
}

/// The mailbox and entry serial of an open HTTP socket session.
type Opened = (Arc<Mailbox>, u64);

/// Opens the HTTP socket session `id` (the first receive request for it):
/// the app's slot, the one admission path, then a task runs the session.
/// `Err(Ok(response))`: refused in the protocol (4001, 4004, 4006-4008).
async fn open_socket_session(
    state: &AppState,
    registry: &Arc<Registry>,
    id: &str,
    key: &str,
    opening: Opening<'_>,
    uri: &Uri,
) -> Result<Opened, Result<Response, ApiError>> {
    let slot = match app_slot(state, key, uri) {
        Ok(slot) => slot,
        Err((code, message)) => return Err(Ok(transport::xhr::refused(code, &message))),
    };
    let mailbox = Mailbox::new(state.config.queue_size);
    let Some(entry) = registry.register_as(id, Some(Arc::clone(&mailbox))) else {
        // Another request opened it meanwhile: this one reads it too.
        return registry
            .get_pusher(id)
            .and_then(|h| Some((h.mailbox?, h.serial)))
            .ok_or_else(|| Err(session_not_found()));
    };
    let admitted = match admission::admit(state, Hold::Session, opening).await {
        Ok(admitted) => admitted,
        Err(refused) => {
            // A reader that found the entry meanwhile stops waiting.
            mailbox.end(None);
            drop(entry);
            return Err(Err(refused.into()));
        }
    };
    let serial = entry.registered.serial();
    let session = Session::pusher(state.clone(), slot, admitted);
    tokio::spawn(transport::xhr::drive(session, entry, Arc::clone(&mailbox)));
    Ok((mailbox, serial))
}

/// A receive request: opens the session if it is new, then reads it.
#[allow(clippy::too_many_arguments)]
async fn receive(
    state: AppState,
    peer: SocketAddr,
    tcp: Conn,
    registry: Arc<Registry>,
    (key, server, session): (String, String, String),
    uri: Uri,
    headers: HeaderMap,
    kind: Receive,
) -> Result<Response, ApiError> {
    let id = socket_session(&key, &server, &session)?;
    let (mailbox, serial) = match registry.get_pusher(&id) {
        Some(handle) => (handle.mailbox.ok_or_else(session_not_found)?, handle.serial),
        None => {
            let opening = Opening {
                peer,
                conn: &tcp,
                headers: &headers,
                ticket: None,
            };
            match open_socket_session(&state, &registry, &id, &key, opening, &uri).await {
                Ok(opened) => opened,
                Err(answer) => return answer,
            }
        }
    };
    let ticket = mailbox.attach();
    let finish = Finish {
        registry,
        id,
        serial,
    };
    let period = state.config.heartbeat;
    let shutdown = state.shutdown.clone();
    Ok(match kind {
        Receive::Streaming => transport::xhr::stream(mailbox, ticket, finish, period, shutdown),
        Receive::Polling => transport::xhr::poll(mailbox, ticket, finish, period, shutdown).await,
    })
}

/// `POST /pusher/app/{key}/{server}/{session}/xhr_streaming`: pusher-js's
/// `xhr_streaming` receive (the first one opens the session).
pub(crate) async fn xhr_streaming(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(tcp): Extension<Conn>,
    Extension(registry): Extension<Arc<Registry>>,
    Path(path): Path<(String, String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    receive(
        state,
        peer,
        tcp,
        registry,
        path,
        uri,
        headers,
        Receive::Streaming,
    )
    .await
}

/// `POST /pusher/app/{key}/{server}/{session}/xhr`: pusher-js's
/// `xhr_polling` receive (the first one opens the session).
pub(crate) async fn xhr_polling(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(tcp): Extension<Conn>,
    Extension(registry): Extension<Arc<Registry>>,
    Path(path): Path<(String, String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    receive(
        state,
        peer,
        tcp,
        registry,
        path,
        uri,
        headers,
        Receive::Polling,
    )
    .await
}

/// `POST /pusher/app/{key}/{server}/{session}/xhr_send`: a JSON array of
/// strings, each one Pusher event as a WebSocket would carry it (`[]` is
/// pusher-js's heartbeat), for the session's command queue; 204.
pub(crate) async fn xhr_send(
    State(state): State<AppState>,
    Extension(registry): Extension<Arc<Registry>>,
    Path((key, server, session)): Path<(String, String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let id = socket_session(&key, &server, &session)?;
    let handle = registry.get_pusher(&id).ok_or_else(session_not_found)?;
    let limit = state.config.limits.max_command_size;
    // Room for escapes: each event is checked against the limit below.
    let raw = read_body(body, limit.saturating_mul(6).saturating_add(64)).await?;
    let frames: Vec<String> = serde_json::from_slice(&raw).map_err(|e| {
        ApiError::new(
            Refusal::InvalidCommand,
            format!("xhr_send takes a JSON array of strings, each one Pusher event: {e}"),
        )
    })?;
    if frames.iter().any(|f| f.len() > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    if frames.len() > COMMAND_QUEUE {
        return Err(ApiError::new(
            Refusal::LimitExceeded,
            format!("at most {COMMAND_QUEUE} events in one send; none of this one ran"),
        ));
    }
    if let Some(mailbox) = &handle.mailbox {
        mailbox.heard();
    }
    if !frames.is_empty() {
        // Room for all of them or none: a refused send ran nothing.
        let permits = handle
            .commands
            .try_reserve_many(frames.len())
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(()) => ApiError::new(
                    Refusal::LimitExceeded,
                    "too many events waiting for this session; none of this send ran",
                ),
                mpsc::error::TrySendError::Closed(()) => session_not_found(),
            })?;
        for (permit, frame) in permits.zip(frames) {
            permit.send(Bytes::from(frame));
        }
    }
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

/// The app a signed request is for, or the refusal: 404 for an unknown
/// app id, 400 for a missing parameter, 401 for a bad key, version,
/// timestamp, body hash or signature.
fn signed(
    state: &AppState,
    id: &str,
    method: &Method,
    uri: &Uri,
    body: &[u8],
) -> Result<Arc<PusherApp>, ApiError> {
    let app = state
        .pusher_by_id(id)
        .cloned()
        .ok_or_else(|| ApiError::new(Refusal::NotFound, format!("unknown app id {id}")))?;
    let query: Vec<(String, String)> = serde_urlencoded::from_str(uri.query().unwrap_or(""))
        .map_err(|e| ApiError::new(Refusal::InvalidRequest, format!("query: {e}")))?;
    let now = herald_core::engine::now_ms() / 1000;
    check_request(
        &app.app.key,
        &app.app.secret,
        method.as_str(),
        uri.path(),
        &query,
        body,
        now,
    )
    .map_err(|e: RequestRefusal| {
        let code = if e.is_bad_request() {
            Refusal::InvalidRequest
        } else {
            Refusal::Unauthorized
        };
        ApiError::new(code, e.to_string())
    })?;
    Ok(app)
}

/// A query parameter of a signed request.
fn param(uri: &Uri, name: &str) -> Option<String> {
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default();
    query.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// The Herald channel of the app's channel `name`, or a 400.
fn channel_of(app: &PusherApp, name: &str) -> Result<ChannelName, ApiError> {
    dialect::name::herald_channel(&app.prefix, name)
        .map_err(|e| ApiError::new(Refusal::InvalidChannel, e))
}

/// One event to publish.
#[derive(Deserialize)]
struct Event {
    name: String,
    /// A string (of JSON, usually), as Pusher's libraries send it.
    data: Box<RawValue>,
    channel: Option<String>,
    channels: Option<Vec<String>>,
    socket_id: Option<String>,
    /// `user_count`, `subscription_count`: what to answer per channel.
    info: Option<String>,
}

#[derive(Deserialize)]
struct Batch {
    batch: Vec<Event>,
}

/// Publishes `event` to each of its channels; answers the `info` asked
/// for, per channel.
async fn trigger(
    state: &AppState,
    app: &PusherApp,
    event: Event,
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    let names: Vec<String> = match (event.channels, event.channel) {
        (Some(list), None) => list,
        (None, Some(one)) => vec![one],
        _ => {
            return Err(ApiError::new(
                Refusal::InvalidRequest,
                "an event names either \"channels\" or \"channel\"",
            ))
        }
    };
    if names.is_empty() || names.len() > MAX_TRIGGER_CHANNELS {
        return Err(ApiError::new(
            Refusal::InvalidRequest,
            format!("an event goes to 1 to {MAX_TRIGGER_CHANNELS} channels"),
        ));
    }
    if event.name.is_empty() || event.name.len() > MAX_EVENT_NAME {
        return Err(ApiError::new(
            Refusal::InvalidRequest,
            format!("event names are 1 to {MAX_EVENT_NAME} bytes"),
        ));
    }
    let limit = app.app.max_event_size.min(state.config.max_payload);
    if event.data.get().len() > limit {
        return Err(ApiError::payload_too_large(limit));
    }
    let channels = names
        .iter()
        .map(|n| channel_of(app, n))
        .collect::<Result<Vec<_>, _>>()?;
    let mut stored = json!({"event": event.name, "data": &*event.data});
    if let Some(socket) = &event.socket_id {
        stored["socket_id"] = socket.as_str().into();
    }
    let payload = Payload::json(Bytes::from(stored.to_string()))
        .map_err(|e| ApiError::new(Refusal::InvalidJson, e.to_string()))?;
    let mut answer = serde_json::Map::new();
    for (channel, name) in channels.iter().zip(&names) {
        // A user channel (`#server-to-user-{id}`, what `sendToUser`
        // triggers) is the user's personal channel: kept for a user who
        // has no connection, like every Herald user publish.
        let published = if dialect::name::is_user_channel(channel) {
            state
                .node
                .engine
                .publish_to_user(channel, payload.clone())
                .await?
                .published
        } else {
            state.node.engine.publish(channel, payload.clone()).await?
        };
        state.counters.published(&published, false);
        if let Some(info) = &event.info {
            answer.insert(name.clone(), channel_info(state, channel, info).await?);
        }
    }
    Ok(answer)
}

/// `{"subscription_count", "user_count"}` as `info` asks (`user_count`
/// only for presence channels).
async fn channel_info(
    state: &AppState,
    channel: &ChannelName,
    info: &str,
) -> Result<serde_json::Value, ApiError> {
    let mut out = serde_json::Map::new();
    for attribute in info.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match attribute {
            "subscription_count" => {
                let n = state.node.engine.subscriber_count(channel).await?;
                out.insert(attribute.into(), n.into());
            }
            "user_count" if pusher_name(channel.as_str()).starts_with("presence-") => {
                out.insert(attribute.into(), users(state, channel).await?.len().into());
            }
            "user_count" => {
                return Err(ApiError::new(
                    Refusal::InvalidRequest,
                    "user_count is only available for presence channels",
                ))
            }
            other => {
                return Err(ApiError::new(
                    Refusal::InvalidRequest,
                    format!("unknown info attribute {other:?} (user_count, subscription_count)"),
                ))
            }
        }
    }
    Ok(serde_json::Value::Object(out))
}

/// The distinct users of a presence channel, in order.
async fn users(state: &AppState, channel: &ChannelName) -> Result<Vec<String>, ApiError> {
    let entries = state.node.engine.presence(channel).await?;
    let mut users: Vec<String> = entries
        .iter()
        .filter_map(|e| e.user.as_deref().map(str::to_string))
        .collect();
    users.sort();
    users.dedup();
    Ok(users)
}

/// `POST /apps/{id}/events`: one event to up to 100 channels; `socket_id`
/// names a connection that does not get it.
pub(crate) async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = read_body(body, state.config.max_payload + 16 * 1024).await?;
    let app = signed(&state, &id, &method, &uri, &body)?;
    let event: Event = parse_json(&body, "an event {name, data, channels}")?;
    let info = event.info.is_some();
    let channels = trigger(&state, &app, event).await?;
    Ok(Json(if info {
        json!({ "channels": channels })
    } else {
        json!({})
    }))
}

/// `POST /apps/{id}/batch_events`: up to 10 events, each to one channel.
pub(crate) async fn batch_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = (state.config.max_payload + 1024) * MAX_BATCH;
    let body = read_body(body, limit).await?;
    let app = signed(&state, &id, &method, &uri, &body)?;
    let batch: Batch = parse_json(&body, "{\"batch\": [events]}")?;
    if batch.batch.is_empty() || batch.batch.len() > MAX_BATCH {
        return Err(ApiError::new(
            Refusal::InvalidRequest,
            format!("a batch holds 1 to {MAX_BATCH} events"),
        ));
    }
    let info = batch.batch.iter().any(|e| e.info.is_some());
    let mut answers = Vec::new();
    for event in batch.batch {
        if event.channels.is_some() {
            return Err(ApiError::new(
                Refusal::InvalidRequest,
                "a batch event names one \"channel\"",
            ));
        }
        let channels = trigger(&state, &app, event).await?;
        answers.push(channels.into_values().next().unwrap_or_else(|| json!({})));
    }
    Ok(Json(if info {
        json!({ "batch": answers })
    } else {
        json!({})
    }))
}

/// Most channels `GET /apps/{id}/channels` lists.
pub(crate) const MAX_LISTED: usize = 10_000;

/// `GET /apps/{id}/channels?filter_by_prefix=&info=`: the app's occupied
/// channels, on every node (another node's as fresh as its subscriber
/// counts, about a second), at most [`MAX_LISTED`].
pub(crate) async fn channels(
    State(state): State<AppState>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
) -> Result<Json<serde_json::Value>, ApiError> {
    let app = signed(&state, &id, &method, &uri, b"")?;
    let prefix = param(&uri, "filter_by_prefix").unwrap_or_default();
    let info = param(&uri, "info").unwrap_or_default();
    if info.contains("user_count") && !prefix.starts_with("presence-") {
        return Err(ApiError::new(
            Refusal::InvalidRequest,
            "info=user_count needs filter_by_prefix=presence-",
        ));
    }
    let wanted = format!("{}{prefix}", app.prefix);
    let mut list = BTreeMap::new();
    for channel in state
        .node
        .engine
        .occupied_channels(&wanted, MAX_LISTED)
        .await?
    {
        let value = channel_info(&state, &channel, &info).await?;
        list.insert(pusher_name(channel.as_str()).to_string(), value);
    }
    Ok(Json(json!({ "channels": list })))
}

/// `GET /apps/{id}/channels/{name}?info=`: whether it is occupied, and
/// the counts asked for.
pub(crate) async fn channel(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    method: Method,
    uri: Uri,
) -> Result<Json<serde_json::Value>, ApiError> {
    let app = signed(&state, &id, &method, &uri, b"")?;
    let channel = channel_of(&app, &name)?;
    let info = param(&uri, "info").unwrap_or_default();
    let mut answer = channel_info(&state, &channel, &info).await?;
    let occupied = state.node.engine.subscriber_count(&channel).await? > 0;
    answer["occupied"] = occupied.into();
    Ok(Json(answer))
}

/// `GET /apps/{id}/channels/{name}/users`: a presence channel's users.
pub(crate) async fn channel_users(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    method: Method,
    uri: Uri,
) -> Result<Json<serde_json::Value>, ApiError> {
    let app = signed(&state, &id, &method, &uri, b"")?;
    if !name.starts_with("presence-") {
        return Err(ApiError::new(
            Refusal::InvalidRequest,
            "only presence channels have users",
        ));
    }
    let channel = channel_of(&app, &name)?;
    let users: Vec<serde_json::Value> = users(&state, &channel)
        .await?
        .into_iter()
        .map(|id| json!({ "id": id }))
        .collect();
    Ok(Json(json!({ "users": users })))
}

/// `POST /apps/{id}/users/{user_id}/terminate_connections`: closes every
/// connection signed in as the user (`pusher:signin`), on every node,
/// with `pusher:error` 4009 (pusher-js does not reconnect).
pub(crate) async fn terminate_connections(
    State(state): State<AppState>,
    Path((id, user)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    terminate(&state, Some(&id), &user, &method, &uri, body).await
}

/// `POST /users/{user_id}/terminate_connections`, the path without the app
/// that the PyPI `pusher` library (3.x) calls: the app is the one whose
/// key signed the request (`auth_key`).
pub(crate) async fn terminate_connections_keyed(
    State(state): State<AppState>,
    Path(user): Path<String>,
    method: Method,
    uri: Uri,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    terminate(&state, None, &user, &method, &uri, body).await
}

async fn terminate(
    state: &AppState,
    id: Option<&str>,
    user: &str,
    method: &Method,
    uri: &Uri,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = read_body(body, 16 * 1024).await?;
    let id = match id {
        Some(id) => id.to_string(),
        None => {
            let key = param(uri, "auth_key").ok_or_else(|| {
                ApiError::new(Refusal::InvalidRequest, "missing parameter auth_key")
            })?;
            state
                .pusher_by_key(&key)
                .map(|app| app.app.id.clone())
                .ok_or_else(|| ApiError::new(Refusal::Unauthorized, "unknown auth_key"))?
        }
    };
    let app = signed(state, &id, method, uri, &body)?;
    let channel = herald_core::user::user_channel(&dialect::name::herald_user(&app.prefix, user))
        .map_err(|e| {
        ApiError::new(Refusal::InvalidRequest, format!("user id {user:?}: {e}"))
    })?;
    state
        .node
        .engine
        .disconnect_user(&channel, herald_core::disconnect::FORCED)
        .await?;
    Ok(Json(json!({})))
}
