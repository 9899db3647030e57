//! The backend's side: publish, inspect and delete channels.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::engine::Published;
use herald_core::{ChannelName, Payload};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, value::RawValue};

use crate::access::auth::check_backend;
use crate::error::ApiError;
use crate::state::AppState;
use herald_core::Refusal;

/// Extra room in `/api/publish` bodies beyond the payload limit, for the
/// channel list and the JSON around `data`.
const API_BODY_SLACK: usize = 16 * 1024;

/// A channel name from the path, or a 400.
pub(crate) fn channel_from_path(
    path: Result<Path<String>, PathRejection>,
) -> Result<ChannelName, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::new(Refusal::InvalidChannel, e.body_text()))?;
    Ok(ChannelName::new(&name)?)
}

/// Longest time a request body may take to arrive once its head has.
pub(crate) const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads a whole body, refusing it past `limit` bytes (the limit is inclusive)
/// or past [`BODY_TIMEOUT`].
///
/// The bytes are copied into their own allocation: a body that arrived in one
/// piece is otherwise a slice of the connection's read buffer, and a message
/// kept in history would keep that whole buffer alive (measured: ~4.6 KB per
/// retained 60-byte message, against ~0.3 KB with the copy).
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let collect = http_body_util::Limited::new(body, limit).collect();
    let Ok(collected) = tokio::time::timeout(BODY_TIMEOUT, collect).await else {
        return Err(ApiError::new(
            Refusal::RequestTimeout,
            format!(
                "the request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        ));
    };
    match collected {
        Ok(collected) => Ok(Bytes::copy_from_slice(&collected.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::payload_too_large(limit))
        }
        Err(_) => Err(ApiError::new(
            Refusal::InvalidRequest,
            "the request body could not be read",
        )),
    }
}

/// A JSON request body of the shape `T`: `400 invalid_json` when it is not
/// JSON at all (on every endpoint alike), `400 invalid_request` when it is
/// JSON of the wrong shape, with `shape` telling what was expected.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    raw: &[u8],
    shape: &str,
) -> Result<T, ApiError> {
    serde_json::from_slice(raw).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::new(Refusal::InvalidJson, format!("body is not valid JSON: {e}"))
        } else {
            ApiError::new(Refusal::InvalidRequest, format!("expected {shape}: {e}"))
        }
    })
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// A publish's answer: `{"channel", "duplicate" (only when true), "id",
/// "subscribers"}`, serialized straight from the publish (no
/// `serde_json::Value` map on the way; BENCHMARKS.md, "2026-12-03, later").
#[derive(serde::Serialize)]
struct PublishedJson<'a> {
    channel: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
    #[serde(serialize_with = "display")]
    id: herald_core::MessageId,
    subscribers: usize,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn published_json(p: &Published) -> PublishedJson<'_> {
    PublishedJson {
        channel: p.message.channel.as_str(),
        duplicate: p.duplicate,
        id: p.message.id,
        subscribers: p.subscribers,
    }
}

/// The idempotency key a publish names, validated; `what` names where it
/// came from for the error.
fn idempotency_key<'a>(key: Option<&'a str>, what: &str) -> Result<Option<&'a str>, ApiError> {
    match key {
        None => Ok(None),
        Some(key) if herald_core::engine::valid_idempotency_key(key) => Ok(Some(key)),
        Some(_) => Err(ApiError::new(
            Refusal::InvalidRequest,
            format!(
                "{what} must be 1 to {} printable ASCII characters",
                herald_core::engine::MAX_IDEMPOTENCY_KEY_LEN
            ),
        )),
    }
}

/// Publishes, once per idempotency key within the configured window.
/// Duplicates are not counted as publishes.
async fn publish_once(
    state: &AppState,
    channel: &ChannelName,
    payload: Payload,
    key: Option<&str>,
) -> Result<Published, ApiError> {
    let published = match key {
        None => state.node.engine.publish(channel, payload).await?,
        Some(key) => {
            let window_ms =
                u64::try_from(state.config.idempotency_window.as_millis()).unwrap_or(u64::MAX);
            state
                .node
                .engine
                .publish_idempotent(channel, payload, key, window_ms)
                .await?
        }
    };
    if !published.duplicate {
        state.counters.published(&published, false);
    }
    Ok(published)
}

/// The request header naming a publish's idempotency key.
pub(crate) const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// What `POST /pub/{channel}` checks before its body, in this order, on both
/// of its paths ([`publish`] and [`direct_publish`]): the backend's key, the
/// channel's name, the idempotency key if one is named.
fn publish_target<'h>(
    state: &AppState,
    peer: SocketAddr,
    headers: &'h HeaderMap,
    channel: Result<ChannelName, ApiError>,
) -> Result<(ChannelName, Option<&'h str>), ApiError> {
    check_backend(&state.config.api_keys, headers, peer)?;
    let channel = channel?;
    let header = headers
        .get(IDEMPOTENCY_KEY_HEADER)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let key = idempotency_key(header, "the Idempotency-Key header")?;
    Ok((channel, key))
}

/// A `POST /pub/{channel}` body as the message: JSON when the request says
/// so (and then it must parse), else opaque bytes.
fn publish_payload(headers: &HeaderMap, raw: Bytes) -> Result<Payload, ApiError> {
    if is_json(headers) {
        Payload::json(raw).map_err(|e| ApiError::new(Refusal::InvalidJson, e.to_string()))
    } else {
        Ok(Payload::from_bytes(raw))
    }
}

/// `POST /pub/{channel}`: the body is the message.
pub(crate) async fn publish(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (channel, key) = publish_target(&state, peer, &headers, channel_from_path(path))?;
    let raw = read_body(body, state.config.max_payload).await?;
    let payload = publish_payload(&headers, raw)?;
    let published = publish_once(&state, &channel, payload, key).await?;
    Ok((StatusCode::CREATED, Json(published_json(&published))).into_response())
}

/// What [`direct_publish`] publishes.
pub(crate) struct DirectPublish {
    peer: SocketAddr,
    channel: ChannelName,
    payload: Payload,
    key: Option<String>,
}

/// `POST /pub/{channel}` on Herald's own HTTP/1 path, which has the whole
/// body in hand: the checks of [`publish`] ([`publish_target`],
/// [`publish_payload`]), without the router and its
/// middlewares (a third of a publish's CPU time, BENCHMARKS.md).
/// `None` whenever the router could answer anything but a plain publish (an
/// `Origin` header, a key refused, a name to percent-decode or refuse, an
/// idempotency key or a body refused): the request then goes through the
/// router as every other one does, so every refusal stays the router's.
pub(crate) fn direct_publish(
    state: &AppState,
    request: &axum::extract::Request,
    body: &Bytes,
) -> Option<DirectPublish> {
    if request.method() != axum::http::Method::POST {
        return None;
    }
    let name = request.uri().path().strip_prefix("/pub/")?;
    let headers = request.headers();
    if name.contains(['/', '%']) || headers.contains_key(header::ORIGIN) {
        return None;
    }
    let ConnectInfo(peer) = *request.extensions().get::<ConnectInfo<SocketAddr>>()?;
    let channel = ChannelName::new(name).map_err(ApiError::from);
    let (channel, key) = publish_target(state, peer, headers, channel).ok()?;
    if body.len() > state.config.max_payload {
        return None;
    }
    let payload = publish_payload(headers, body.clone()).ok()?;
    Some(DirectPublish {
        peer,
        channel,
        payload,
        key: key.map(str::to_owned),
    })
}

/// Publishes what [`direct_publish`] took. `Ok` is the JSON body of the
/// `201 Created` that [`publish`] answers (the caller frames it, with
/// `content-type: application/json`, as the router's answer is framed);
/// `Err` is any other answer: a refusal, logged as the router would log it,
/// or (never seen: strings and numbers always serialize) axum's own answer
/// to a failed serialization.
pub(crate) async fn publish_directly(
    state: &AppState,
    publish: DirectPublish,
) -> Result<Vec<u8>, Response> {
    let DirectPublish {
        peer,
        channel,
        payload,
        key,
    } = publish;
    match publish_once(state, &channel, payload, key.as_deref()).await {
        Ok(published) => match serde_json::to_vec(&published_json(&published)) {
            Ok(body) => Ok(body),
            // Strings and numbers always serialize; were it ever not so,
            // axum's `Json` answers the failure.
            Err(_) => Err((StatusCode::CREATED, Json(published_json(&published))).into_response()),
        },
        Err(e) => {
            let response = e.into_response();
            let path = format!("/pub/{}", channel.as_str());
            crate::http::response::log_refused("POST", &path, Some(peer), &response);
            Err(response)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    channel: Option<String>,
    channels: Option<Vec<String>>,
    data: Box<RawValue>,
    idempotency_key: Option<String>,
}

/// `POST /api/publish`: `{"channel": c, "data": …}` or `{"channels": […], "data": …}`.
pub(crate) async fn api_publish(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_backend(&state.config.api_keys, &headers, peer)?;
    let limit = state.config.max_payload;
    let raw = read_body(body, limit + API_BODY_SLACK).await?;
    let request: PublishRequest = parse_json(&raw, "{\"channel\" or \"channels\", \"data\"}")?;
    let payload = crate::access::json_payload(&request.data, limit)?;
    let key = idempotency_key(
        request.idempotency_key.as_deref(),
        "the idempotency_key field",
    )?;
    match (request.channel, request.channels) {
        (Some(name), None) => {
            let channel = ChannelName::new(&name)?;
            let published = publish_once(&state, &channel, payload, key).await?;
            Ok((StatusCode::CREATED, Json(published_json(&published))).into_response())
        }
        (None, Some(names)) if !names.is_empty() => {
            if names.len() > MAX_CHANNELS_PER_PUBLISH {
                return Err(ApiError::new(
                    Refusal::InvalidRequest,
                    format!("at most {MAX_CHANNELS_PER_PUBLISH} channels per publish"),
                ));
            }
            // Validate all first: a bad name publishes nothing.
            let channels = names
                .iter()
                .map(|n| ChannelName::new(n))
                .collect::<Result<Vec<_>, _>>()?;
            let mut results = Vec::with_capacity(channels.len());
            // The key applies per channel: a retry stores only where the
            // first attempt did not.
            for channel in &channels {
                results.push(publish_once(&state, channel, payload.clone(), key).await?);
            }
            let results: Vec<_> = results.iter().map(published_json).collect();
            Ok((StatusCode::CREATED, Json(json!({ "results": results }))).into_response())
        }
        _ => Err(ApiError::new(
            Refusal::InvalidRequest,
            "give exactly one of \"channel\" or a non-empty \"channels\"",
        )),
    }
}

/// Most channels one `/api/publish` may name.
pub(crate) const MAX_CHANNELS_PER_PUBLISH: usize = 100;

/// `GET /pub/{channel}`.
pub(crate) async fn channel_info(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_backend(&state.config.api_keys, &headers, peer)?;
    let channel = channel_from_path(path)?;
    let stats = state.node.engine.stats(&channel).await?;
    let subscribers = state.node.engine.subscriber_count(&channel).await?;
    Ok(Json(json!({
        "channel": channel.as_str(),
        "subscribers": subscribers,
        "messages": stats.messages,
        "last_id": stats.last_id.map(|id| id.to_string()),
    }))
    .into_response())
}

/// `DELETE /pub/{channel}`: drops history and closes subscribers.
pub(crate) async fn delete_channel(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_backend(&state.config.api_keys, &headers, peer)?;
    let channel = channel_from_path(path)?;
    let subscribers = state.node.hub.count(&channel);
    state.node.engine.remove(&channel).await?;
    Ok(
        Json(json!({"channel": channel.as_str(), "deleted": true, "subscribers": subscribers}))
            .into_response(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default, deserialize_with = "whole_number")]
    ttl: Option<u64>,
    info: Option<serde_json::Value>,
}

/// A non-negative whole number, also when written `940.0` (JSON has one
/// number type: OpenAPI's `integer` takes it, so the server does too).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                // In range and whole: the cast is exact enough for a ttl.
                .map(|f| f as u64)
        })
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a whole number of seconds")))
}

/// Token lifetime when `/api/tokens` is asked for none.
pub(crate) const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;

/// `POST /api/tokens`: a connection token signed by Herald, for backends
/// without a JWT library.
pub(crate) async fn create_token(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_backend(&state.config.api_keys, &headers, peer)?;
    let raw = read_body(body, state.config.max_payload).await?;
    let request: TokenRequest = parse_json(&raw, "{\"user\", \"channels\", \"ttl\"}")?;
    let ttl = request.ttl.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    let max = state.config.max_token_ttl.as_secs();
    if ttl == 0 || ttl > max {
        return Err(ApiError::new(
            Refusal::InvalidRequest,
            format!("ttl must be between 1 and {max} seconds"),
        ));
    }
    if let Some(user) = &request.user {
        herald_core::user::user_channel(user)
            .map_err(|e| ApiError::new(Refusal::InvalidUser, format!("user id: {e}")))?;
    }
    let now = herald_core::engine::now_ms() / 1000;
    let claims = crate::access::token::Claims {
        sub: request.user,
        exp: now + ttl,
        iat: Some(now),
        channels: request.channels,
        info: request.info,
        ..crate::access::token::Claims::default()
    };
    let token = state.rules.tokens.sign(&claims);
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "expires_at": claims.exp})),
    )
        .into_response())
}

/// `POST /auth/ticket`: a client trades its token (Bearer or cookie) for a
/// short-lived single-use ticket to put in a URL (`?ticket=`), where
/// headers cannot go (EventSource, iframes) and a long-lived token must not
/// (URLs end up in logs).
pub(crate) async fn create_ticket(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let identity = crate::access::identify(&state.rules, &headers, None).await?;
    if identity.is_anonymous() {
        return Err(ApiError::new(
            Refusal::TokenRequired,
            "send the token as Authorization: Bearer or in the herald_token cookie",
        ));
    }
    let (ticket, expires_at) = state.rules.tokens.ticket(&identity);
    Ok((
        StatusCode::CREATED,
        Json(json!({"ticket": ticket, "expires_at": expires_at})),
    )
        .into_response())
}

/// `POST /ack`: acknowledges messages of the client's own mailbox, for
/// clients whose transport has no way up (the session protocol has the
/// `ack` command). The user is the one the token names (`Authorization:
/// Bearer` or the token cookie); the body is the `ack` command's arguments.
pub(crate) async fn ack(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let identity = crate::access::identify(&state.rules, &headers, None).await?;
    if identity.is_anonymous() {
        return Err(ApiError::new(
            Refusal::TokenRequired,
            "send the token as Authorization: Bearer or in the herald_token cookie",
        ));
    }
    let raw = read_body(body, API_BODY_SLACK + 64 * 1024).await?;
    let args: crate::protocol::cmd::ack::Args =
        parse_json(&raw, "{\"ids\": [\"<id>\", ...]} or {\"upto\": \"<id>\"}")?;
    let ack = args.ack(Refusal::InvalidRequest)?;
    let done =
        crate::protocol::cmd::ack::acknowledge(&state, identity.user.as_deref(), &ack).await?;
    Ok(Json(json!({
        "user": identity.user.as_deref(),
        "removed": done.removed,
        "pending": done.pending,
    }))
    .into_response())
}

fn user_channel_from_path(
    path: Result<Path<String>, PathRejection>,
) -> Result<(String, ChannelName), ApiError> {
    let Path(user) = path.map_err(|e| ApiError::new(Refusal::InvalidUser, e.body_text()))?;
    let channel = herald_core::user::user_channel(&user)
        .map_err(|e| ApiError::new(Refusal::InvalidUser, format!("user id: {e}")))?;
    Ok((user, channel))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPublishRequest {
    data: Box<RawValue>,
    /// Keep it in the user's mailbox until a client acknowledges it; the
    /// user namespace's `ack` when absent (read as a value so that `null`
    /// is refused rather than taken for "absent").
    #[serde(default, deserialize_with = "present")]
    ack: Option<serde_json::Value>,
}

/// A field that is there, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// `POST /api/users/{id}/publish`: to every connection of the user now, or
/// queued until the user is back.
pub(crate) async fn user_publish(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_backend(&state.config.api_keys, &headers, peer)?;
    let (user, channel) = user_channel_from_path(path)?;
    let limit = state.config.max_payload;
    let raw = read_body(body, limit + API_BODY_SLACK).await?;
    let request: UserPublishRequest = parse_json(&raw, "{\"data\": ..., \"ack\": bool}")?;
    let payload = crate::access::json_payload(&request.data, limit)?;
    let ack = match request.ack {
        None => state.node.namespaces.options(channel.as_str()).ack,
        Some(serde_json::Value::Bool(ack)) => ack,
        Some(_) => {
            return Err(ApiError::new(
                Refusal::InvalidRequest,
                "\"ack\" must be true or false",
            ))
        }
    };
    let result = if ack {
        let done = state
            .node
            .engine
            .publish_to_mailbox(&channel, payload)
            .await?;
        state
            .counters
            .mailbox_published
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        done
    } else {
        state.node.engine.publish_to_user(&channel, payload).await?
    };
    state.counters.published(&result.published, false);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "user": user,
            "channel": channel.as_str(),
            "id": result.published.message.id.to_string(),
            "subscribers": result.published.subscribers,
            "queued": result.queued,
            "ack": ack,
        })),
    )
        .into_response())
}

/// `GET /api/users/{id}/mailbox`: how many messages wait for an
/// acknowledgement, and the oldest of them.
pub(crate) async fn user_mailbox(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_backend(&state.config.api_keys, &headers, peer)?;
    let (user, channel) = user_channel_from_path(path)?;
    let mailbox = state.node.engine.mailbox_state(&channel).await?;
    let now = herald_core::engine::now_ms();
    Ok(Json(json!({
        "user": user,
        "pending": mailbox.pending,
        "oldest_id": mailbox.oldest.map(|(id, _)| id.to_string()),
        "oldest_age_ms": mailbox.oldest.map(|(_, t)| now.saturating_sub(t)),
        "gap": mailbox.gap,
    }))
    .into_response())
}

/// `POST /api/users/{id}/disconnect`: closes every connection of the user
/// (code 4006, no reconnect).
pub(crate) async fn user_disconnect(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_backend(&state.config.api_keys, &headers, peer)?;
    let (user, channel) = user_channel_from_path(path)?;
    state
        .node
        .engine
        .disconnect_user(&channel, herald_core::disconnect::FORCED)
        .await?;
    Ok(Json(json!({"user": user, "disconnected": true})).into_response())
}

/// `GET /api/presence/{channel}`: who is subscribed, grouped by user.
pub(crate) async fn presence(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_backend(&state.config.api_keys, &headers, peer)?;
    let channel = channel_from_path(path)?;
    let enabled = state.node.namespaces.options(channel.as_str()).presence;
    let entries = state.node.engine.presence(&channel).await?;
    let summary = herald_core::presence::PresenceSummary::from_entries(&entries);
    Ok(Json(json!({
        "channel": channel.as_str(),
        "enabled": enabled,
        "connections": summary.connections,
        "anonymous": summary.anonymous,
        "users": summary.users,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{Message, MessageId};

    /// The answer's bytes are those of the `serde_json::Value` it replaced
    /// (keys sorted, `duplicate` only when true).
    #[test]
    fn the_publish_answer_has_the_bytes_of_the_sorted_map() {
        for duplicate in [false, true] {
            let channel = ChannelName::new("chat:1@x").expect("valid");
            let published = Published {
                message: std::sync::Arc::new(Message::new(
                    channel.clone(),
                    MessageId::new(17, 4),
                    Payload::from_bytes(Bytes::from_static(b"x")),
                    0,
                )),
                subscribers: 3,
                duplicate,
            };
            let mut old = json!({
                "channel": channel.as_str(),
                "id": MessageId::new(17, 4).to_string(),
                "subscribers": 3,
            });
            if duplicate {
                old["duplicate"] = json!(true);
            }
            assert_eq!(
                serde_json::to_vec(&published_json(&published)).expect("serializes"),
                serde_json::to_vec(&old).expect("serializes"),
            );
        }
    }
}
