//! The rules: who a request is, and what it may do. Every dialect and
//! transport goes through these functions (by way of
//! `protocol::admission` and the session's commands), so a rule holds
//! everywhere. Nothing here knows HTTP routing or wire formats: a rule
//! answers a [`Refused`], which the caller turns into an HTTP answer, a
//! session reply or a close.
//!
//! - `auth`: the backend's credential (API key, keyless loopback).
//! - `client_addr`: the client's address behind trusted proxies.
//! - `token`: connection tokens and tickets.
//! - `hook`: the application backend's say (connect, subscribe, publish, rpc).
//! - `limits`: connection counts and rates.
//! - `webhook`: events posted to the application (signed, retried, in
//!   order); `pusher_webhook`: what of them each Pusher app gets, in
//!   Pusher's format.

pub(crate) mod auth;
pub(crate) mod client_addr;
pub(crate) mod hook;
pub(crate) mod limits;
pub(crate) mod pusher;
pub(crate) mod pusher_webhook;
pub mod token;
#[cfg(test)]
mod token_props;
pub(crate) mod webhook;

use std::sync::Arc;

use herald_core::engine::SubscriberSlot;
use herald_core::presence::ClientInfo;
use herald_core::user::channel_user;
use herald_core::ChannelName;
use herald_core::Node;
use http::{header, HeaderMap};
use serde_json::json;

use crate::error::Refused;
use herald_core::Refusal;
use hook::{HookEvent, Hooks, Verdict};
use token::{Identity, TokenError, Tokens};

/// What the rules consult: the node (engine, namespaces), the token keys
/// and the application backend's hooks.
pub(crate) struct Rules {
    pub(crate) node: Node,
    pub(crate) tokens: Tokens,
    pub(crate) hooks: Option<Arc<Hooks>>,
}

/// A random 128-bit id, hex-encoded: client ids, session ids (secrets),
/// ticket ids and generated keys.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness is a broken host; fall back to a unique (not
        // secret) value so the server keeps serving.
        static FALLBACK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = FALLBACK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        bytes[8..].copy_from_slice(&herald_core::engine::now_ms().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cookie a browser may carry its token in.
pub(crate) const TOKEN_COOKIE: &str = "herald_token";

pub(crate) fn token_error(e: &TokenError) -> Refused {
    Refused::new(e.refusal(), e.to_string())
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
pub(crate) async fn identify(
    rules: &Rules,
    headers: &HeaderMap,
    ticket: Option<&str>,
) -> Result<Identity, Refused> {
    if let Some(ticket) = ticket {
        let (identity, id) = rules
            .tokens
            .verify_ticket(ticket)
            .map_err(|e| token_error(&e))?;
        let ttl_ms = u64::try_from(rules.tokens.ticket_ttl().as_millis()).unwrap_or(u64::MAX);
        if !rules
            .node
            .engine
            .claim_once(&format!("ticket:{id}"), ttl_ms.saturating_add(60_000))
            .await?
        {
            return Err(token_error(&TokenError::TicketUsed));
        }
        return Ok(identity);
    }
    let token = auth::bearer(headers).or_else(|| cookie_token(headers));
    match token {
        None => Ok(Identity::default()),
        Some(token) => rules.tokens.verify(token).map_err(|e| token_error(&e)),
    }
}

/// The presence/queue view of an identity for a connection.
pub(crate) fn client_info(identity: &Identity, client: &Arc<str>) -> ClientInfo {
    ClientInfo {
        client: Arc::clone(client),
        user: identity.user.clone(),
        info: identity.info.clone(),
    }
}

/// When the connection must end because its token expires: the token's
/// `exp` plus the leeway that also let it in.
pub(crate) fn deadline(rules: &Rules, identity: &Identity) -> Option<tokio::time::Instant> {
    let leeway = u64::try_from(rules.tokens.leeway().as_millis()).unwrap_or(u64::MAX);
    let at = identity.expires_at_ms?.saturating_add(leeway);
    let now = herald_core::engine::now_ms();
    let left = std::time::Duration::from_millis(at.saturating_sub(now));
    Some(tokio::time::Instant::now() + left)
}

/// Whether `identity` may see `channel` at all: personal channels belong to
/// their user, private namespaces need a grant.
pub(crate) fn may_read(
    rules: &Rules,
    identity: &Identity,
    channel: &ChannelName,
) -> Result<(), Refused> {
    if let Some(owner) = channel_user(channel) {
        if identity.user.as_deref() != Some(owner) {
            return Err(Refused::new(
                Refusal::Forbidden,
                format!("{channel} is the personal channel of another user; a token with sub={owner:?} is needed"),
            ));
        }
    }
    let options = rules.node.namespaces.options(channel.as_str());
    if options.private && !identity.granted(channel.as_str()) {
        let refusal = if identity.is_anonymous() {
            Refusal::TokenRequired
        } else {
            Refusal::Forbidden
        };
        return Err(Refused::new(
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
pub(crate) async fn may_subscribe(
    rules: &Rules,
    identity: &Identity,
    client: &str,
    channel: &ChannelName,
) -> Result<Option<SubscriberSlot>, Refused> {
    may_read(rules, identity, channel)?;
    let options = rules.node.namespaces.options(channel.as_str());
    let mut slot = None;
    if options.max_subscribers > 0 {
        slot = rules
            .node
            .engine
            .claim_subscriber_slot(channel, options.max_subscribers)
            .await?;
    }
    if options.max_subscribers > 0 && slot.is_none() {
        return Err(Refused::new(
            Refusal::ChannelFull,
            format!(
                "{channel} has its maximum of {} subscribers",
                options.max_subscribers
            ),
        ));
    }
    if let Some(hooks) = &rules.hooks {
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
pub(crate) async fn may_connect(
    rules: &Rules,
    identity: &Identity,
    client: &str,
    transport: &str,
    peer: Option<std::net::IpAddr>,
) -> Result<(), Refused> {
    tracing::debug!(client, transport, peer = ?peer, user = identity.user.as_deref(), "connection opened");
    if let Some(hooks) = &rules.hooks {
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
pub(crate) fn disconnected(rules: &Rules, identity_user: Option<&str>, client: &str) {
    if let Some(hooks) = &rules.hooks {
        hooks.notify(
            HookEvent::Disconnect,
            json!({"event": "disconnect", "client": client, "user": identity_user}),
        );
    }
}

/// A hook verdict as an error (the replacement data is dropped here).
pub(crate) fn hook_verdict(
    verdict: Verdict,
) -> Result<Option<Box<serde_json::value::RawValue>>, Refused> {
    match verdict {
        Verdict::Allow(data) => Ok(data),
        Verdict::Deny(reason) => Err(Refused::new(Refusal::Denied, reason)),
        Verdict::Unavailable => Err(Refused::new(
            Refusal::HookUnavailable,
            "the application backend did not answer; retry later",
        )),
    }
}

/// A JSON value from a client or backend as a payload: within the size
/// limit, and valid (UTF-8, nesting at most `herald_core`'s limit).
pub(crate) fn json_payload(
    data: &serde_json::value::RawValue,
    limit: usize,
) -> Result<herald_core::Payload, Refused> {
    let text = data.get();
    if text.len() > limit {
        return Err(Refused::new(
            Refusal::PayloadTooLarge,
            format!("payload is larger than {limit} bytes"),
        ));
    }
    herald_core::Payload::json(bytes::Bytes::copy_from_slice(text.as_bytes()))
        .map_err(|e| Refused::new(Refusal::InvalidJson, e.to_string()))
}
