//! Who a request is, and what it may subscribe to. Every transport and the
//! session protocol go through these functions, so a rule holds everywhere.

use axum::http::{header, HeaderMap};
use herald_core::engine::SubscriberSlot;
use herald_core::presence::ClientInfo;
use herald_core::user::channel_user;
use herald_core::ChannelName;
use serde_json::json;

use crate::error::ApiError;
use crate::hook::{HookEvent, Verdict};
use crate::state::AppState;
use crate::token::{Identity, TokenError};
use herald_core::Refusal;

/// The cookie a browser may carry its token in.
pub const TOKEN_COOKIE: &str = "herald_token";

pub fn token_error(e: &TokenError) -> ApiError {
    ApiError::new(e.refusal(), e.to_string())
}

fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, value)| value)
}

/// The identity of a client request: a `?ticket=`, else `Authorization:
/// Bearer`, else the `herald_token` cookie, else anonymous. A credential
/// that is present but wrong is an error, never silently anonymous.
pub async fn identify(
    state: &AppState,
    headers: &HeaderMap,
    ticket: Option<&str>,
) -> Result<Identity, ApiError> {
    if let Some(ticket) = ticket {
        let (identity, id) = state
            .tokens
            .verify_ticket(ticket)
            .map_err(|e| token_error(&e))?;
        let ttl_ms = u64::try_from(state.tokens.ticket_ttl().as_millis()).unwrap_or(u64::MAX);
        if !state
            .node
            .engine
            .claim_once(&format!("ticket:{id}"), ttl_ms.saturating_add(60_000))
            .await?
        {
            return Err(token_error(&TokenError::TicketUsed));
        }
        return Ok(identity);
    }
    let token = crate::auth::bearer(headers).or_else(|| cookie_token(headers));
    match token {
        None => Ok(Identity::default()),
        Some(token) => state.tokens.verify(token).map_err(|e| token_error(&e)),
    }
}

/// The presence/queue view of an identity for a connection.
pub fn client_info(identity: &Identity, client: &str) -> ClientInfo {
    ClientInfo {
        client: client.into(),
        user: identity.user.clone(),
        info: identity.info.clone(),
    }
}

/// When the connection must end because its token expires: the token's
/// `exp` plus the leeway that also let it in.
pub fn deadline(state: &AppState, identity: &Identity) -> Option<tokio::time::Instant> {
    let leeway = u64::try_from(state.tokens.leeway().as_millis()).unwrap_or(u64::MAX);
    let at = identity.expires_at_ms?.saturating_add(leeway);
    let now = herald_core::engine::now_ms();
    let left = std::time::Duration::from_millis(at.saturating_sub(now));
    Some(tokio::time::Instant::now() + left)
}

/// Whether `identity` may see `channel` at all: personal channels belong to
/// their user, private namespaces need a grant.
pub fn may_read(
    state: &AppState,
    identity: &Identity,
    channel: &ChannelName,
) -> Result<(), ApiError> {
    if let Some(owner) = channel_user(channel) {
        if identity.user.as_deref() != Some(owner) {
            return Err(ApiError::new(
                Refusal::Forbidden,
                format!("{channel} is the personal channel of another user; a token with sub={owner:?} is needed"),
            ));
        }
    }
    let options = state.node.namespaces.options(channel.as_str());
    if options.private && !identity.granted(channel.as_str()) {
        let refusal = if identity.is_anonymous() {
            Refusal::TokenRequired
        } else {
            Refusal::Forbidden
        };
        return Err(ApiError::new(
            refusal,
            format!("{channel} is private: a token granting it is needed"),
        ));
    }
    Ok(())
}

/// Whether `identity` may follow `channel`: [`may_read`], then a full
/// channel refuses, and the backend's subscribe hook has the last word.
///
/// With `max_subscribers`, admission takes a place atomically across every
/// node ([`herald_core::engine::Engine::claim_subscriber_slot`]); the
/// caller must hand the slot to the subscription
/// ([`herald_core::Subscriber::subscribe_holding`]) so that the place is
/// given back when the subscription ends, on every transport. A refusal
/// after the claim (the hook) drops the slot at once.
pub async fn may_subscribe(
    state: &AppState,
    identity: &Identity,
    client: &str,
    channel: &ChannelName,
) -> Result<Option<SubscriberSlot>, ApiError> {
    may_read(state, identity, channel)?;
    let options = state.node.namespaces.options(channel.as_str());
    let mut slot = None;
    if options.max_subscribers > 0 {
        slot = state
            .node
            .engine
            .claim_subscriber_slot(channel, options.max_subscribers)
            .await?;
    }
    if options.max_subscribers > 0 && slot.is_none() {
        return Err(ApiError::new(
            Refusal::ChannelFull,
            format!(
                "{channel} has its maximum of {} subscribers",
                options.max_subscribers
            ),
        ));
    }
    if let Some(hooks) = &state.hooks {
        let body = json!({
            "event": "subscribe",
            "client": client,
            "user": identity.user.as_deref(),
            "channel": channel.as_str(),
        });
        hook_verdict(hooks.decide(HookEvent::Subscribe, &body).await)?;
    }
    Ok(slot)
}

/// Runs the connect hook for a new connection.
pub async fn may_connect(
    state: &AppState,
    identity: &Identity,
    client: &str,
    transport: &str,
    peer: Option<std::net::IpAddr>,
) -> Result<(), ApiError> {
    tracing::debug!(client, transport, peer = ?peer, user = identity.user.as_deref(), "connection opened");
    if let Some(hooks) = &state.hooks {
        // `ip` is the client's address: the TCP peer, or what a trusted
        // proxy reported (`trusted_proxies`), in canonical form.
        let body = json!({
            "event": "connect",
            "client": client,
            "ip": peer.map(|ip| ip.to_string()),
            "user": identity.user.as_deref(),
            "info": identity.info.as_deref(),
            "transport": transport,
        });
        hook_verdict(hooks.decide(HookEvent::Connect, &body).await)?;
    }
    Ok(())
}

/// Tells the backend a connection ended (fire and forget).
pub fn disconnected(state: &AppState, identity_user: Option<&str>, client: &str) {
    if let Some(hooks) = &state.hooks {
        hooks.notify(
            HookEvent::Disconnect,
            json!({"event": "disconnect", "client": client, "user": identity_user}),
        );
    }
}

/// A hook verdict as an error (the replacement data is dropped here).
pub fn hook_verdict(
    verdict: Verdict,
) -> Result<Option<Box<serde_json::value::RawValue>>, ApiError> {
    match verdict {
        Verdict::Allow(data) => Ok(data),
        Verdict::Deny(reason) => Err(ApiError::new(Refusal::Denied, reason)),
        Verdict::Unavailable => Err(ApiError::new(
            Refusal::HookUnavailable,
            "the application backend did not answer; retry later",
        )),
    }
}
