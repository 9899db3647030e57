//! The session protocol: one connection, many channels, the same JSON frames
//! on every transport (see docs/session-protocol.md).
//!
//! [`Session`] holds one connection's state (who it is, its
//! [`Subscriber`], its publish rate) and turns commands into replies and
//! queue items into pushes. It does no I/O: the WebSocket loop ([`ws`]) and
//! the HTTP loops ([`http`]) feed it frames and write out what it returns.
//! Every rule (tokens, private channels, limits, hooks) is applied through
//! [`crate::access`], the same functions the per-channel transports use.

pub mod command;
#[cfg(test)]
mod command_props;
pub mod http;
pub mod ws;

use bytes::{BufMut, Bytes, BytesMut};
use herald_core::disconnect::Disconnect;
use herald_core::node::SubscribeError;
use herald_core::{ChannelName, Item, Refusal, Since, Subscriber};
use serde_json::json;

use crate::access;
use crate::error::ApiError;
use crate::hook::HookEvent;
use crate::limits::RateLimit;
use crate::state::AppState;
use crate::token::Identity;
use command::{Command, Frame};

/// `{"ping":{}}`, sent every heartbeat.
pub const PING: Bytes = Bytes::from_static(b"{\"ping\":{}}");

pub struct Session {
    state: AppState,
    sub: Subscriber,
    client: String,
    identity: Identity,
    /// Whether the connect step (hook) has run.
    connected: bool,
    publish_rate: RateLimit,
    /// Set when a command ends the session (e.g. the connect hook refused).
    closing: Option<Disconnect>,
    /// The client's address, for hooks and logs.
    peer: Option<std::net::IpAddr>,
}

/// A random 128-bit id, hex-encoded.
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

fn reply(id: u64, key: &str, body: serde_json::Value) -> Bytes {
    let mut map = serde_json::Map::new();
    map.insert("id".into(), id.into());
    map.insert(key.into(), body);
    Bytes::from(serde_json::Value::Object(map).to_string())
}

/// A refused command's reply: `{"id": N, "error": {"code", "message"}}`.
pub fn error_frame(id: Option<u64>, code: Refusal, message: &str) -> Bytes {
    Bytes::from(json!({"id": id, "error": {"code": code, "message": message}}).to_string())
}

pub fn disconnect_frame(why: Disconnect) -> Bytes {
    Bytes::from(json!({ "disconnect": why }).to_string())
}

/// What a queue item becomes on the wire, and whether the session ends.
pub enum Push {
    Frame(Bytes),
    /// A message envelope (shared bytes; transports may frame it specially).
    Message(std::sync::Arc<herald_core::Message>),
    End(Disconnect),
}

/// A refused command: the refusal and its message (the HTTP status of an
/// [`ApiError`] has no place in a session reply).
type Refused = (Refusal, String);

fn refusal(e: ApiError) -> Refused {
    (e.code, e.message)
}

fn engine_down() -> Refused {
    (
        Refusal::EngineUnavailable,
        Refusal::EngineUnavailable.message().to_string(),
    )
}

impl Session {
    /// A session for a client whose opening request carried `identity`.
    pub fn new(state: AppState, client: String, identity: Identity) -> Self {
        let sub = Self::subscriber_for(&state, &client, &identity);
        let limits = &state.config.limits;
        let publish_rate = RateLimit::new(limits.client_publish_rate, limits.client_publish_burst);
        Self {
            state,
            sub,
            client,
            identity,
            connected: false,
            publish_rate,
            closing: None,
            peer: None,
        }
    }

    /// The client's address (see [`crate::client_addr`]).
    pub fn set_peer(&mut self, peer: std::net::IpAddr) {
        self.peer = Some(peer);
    }

    fn subscriber_for(state: &AppState, client: &str, identity: &Identity) -> Subscriber {
        let mut sub = state.node.subscriber_for(
            state.config.queue_size,
            access::client_info(identity, client),
        );
        sub.set_deadline(access::deadline(state, identity));
        sub
    }

    pub fn subscriber(&mut self) -> &mut Subscriber {
        &mut self.sub
    }

    /// Set when the session must end after its last reply.
    pub fn closing(&self) -> Option<Disconnect> {
        self.closing
    }

    /// The wire form of a queue item.
    pub fn push(item: Item) -> Push {
        match item {
            Item::Message(m) => Push::Message(m),
            Item::Gap(channel) => Push::Frame(crate::transport::gap_json(&channel)),
            Item::Closed(channel, why) => Push::Frame(Bytes::from(
                json!({"channel": channel.as_str(), "unsubscribed": why}).to_string(),
            )),
            Item::Notice(notice) => Push::Frame(notice.json.clone()),
            Item::Disconnect(why) => Push::End(why),
        }
    }

    /// Handles one frame from the client; returns the reply, if any.
    pub async fn handle(&mut self, text: &[u8]) -> Option<Bytes> {
        if text.len() > self.state.config.limits.max_command_size {
            return Some(error_frame(
                None,
                Refusal::LimitExceeded,
                &format!(
                    "command frame larger than {} bytes",
                    self.state.config.limits.max_command_size
                ),
            ));
        }
        match command::parse(text) {
            Ok(Frame::Pong) => None,
            Ok(Frame::Command { id, command }) => Some(match self.execute(id, command).await {
                Ok(reply) => reply,
                Err((code, message)) => error_frame(Some(id), code, &message),
            }),
            Err(invalid) => Some(error_frame(
                invalid.id,
                Refusal::InvalidCommand,
                &invalid.message,
            )),
        }
    }

    /// Runs the connect step once: the connect hook for this identity.
    async fn ensure_connected(&mut self) -> Result<(), Refused> {
        if self.connected {
            return Ok(());
        }
        if let Err(e) = access::may_connect(
            &self.state,
            &self.identity,
            &self.client,
            "session",
            self.peer,
        )
        .await
        {
            // A connect hook's `denied` ends the session (Refusal::close).
            if let Some(close) = e.code.close() {
                self.closing = Some(close);
            }
            return Err(refusal(e));
        }
        self.connected = true;
        Ok(())
    }

    fn verify(&self, token: &str) -> Result<Identity, Refused> {
        self.state
            .tokens
            .verify(token)
            .map_err(|e| (e.refusal(), e.to_string()))
    }

    async fn execute(&mut self, id: u64, command: Command) -> Result<Bytes, Refused> {
        let channel_name = |name: &str| {
            ChannelName::new(name).map_err(|e| (Refusal::InvalidChannel, e.to_string()))
        };
        let since = |text: Option<String>, default: Since| match text {
            None => Ok(default),
            Some(t) => Since::parse(&t).map_err(|e| (Refusal::InvalidSince, e.to_string())),
        };
        if !matches!(command, Command::Connect { .. } | Command::Ping) {
            self.ensure_connected().await?;
        }
        match command {
            Command::Connect { token } => {
                if self.connected {
                    return Err((
                        Refusal::InvalidCommand,
                        "connect must be the first command of a session".into(),
                    ));
                }
                if let Some(token) = token {
                    self.identity = self.verify(&token)?;
                    self.sub = Self::subscriber_for(&self.state, &self.client, &self.identity);
                }
                self.ensure_connected().await?;
                Ok(reply(
                    id,
                    "connect",
                    json!({
                        "client": self.client,
                        "user": self.identity.user.as_deref(),
                        "expires_at": self.identity.expires_at_ms.map(|ms| ms / 1000),
                        "ping": self.state.config.heartbeat.as_secs(),
                        "version": env!("CARGO_PKG_VERSION"),
                    }),
                ))
            }
            Command::Refresh { token } => {
                let fresh = self.verify(&token)?;
                if fresh.user != self.identity.user {
                    return Err((
                        Refusal::Forbidden,
                        "a refreshed token must be for the same user".into(),
                    ));
                }
                self.sub
                    .set_client(access::client_info(&fresh, &self.client));
                self.sub.set_deadline(access::deadline(&self.state, &fresh));
                let expires_at = fresh.expires_at_ms.map(|ms| ms / 1000);
                self.identity = fresh;
                Ok(reply(id, "refresh", json!({ "expires_at": expires_at })))
            }
            Command::Ping => Ok(reply(id, "pong", json!({}))),
            Command::Subscribe { channel, since: s } => {
                let channel = channel_name(&channel)?;
                let since = since(s, Since::Live)?;
                let max = self.state.config.limits.max_subscriptions;
                if self.sub.channel_count() >= max {
                    return Err((
                        Refusal::LimitExceeded,
                        format!("at most {max} subscriptions per connection"),
                    ));
                }
                if self.sub.is_subscribed(&channel) {
                    return Err((
                        Refusal::AlreadySubscribed,
                        format!("already subscribed to {channel}"),
                    ));
                }
                let place =
                    access::may_subscribe(&self.state, &self.identity, &self.client, &channel)
                        .await
                        .map_err(refusal)?;
                let done = self
                    .sub
                    .subscribe_holding(channel.clone(), since, place)
                    .await
                    .map_err(|e| match e {
                        SubscribeError::AlreadySubscribed(_) => {
                            (Refusal::AlreadySubscribed, e.to_string())
                        }
                        SubscribeError::Engine(_) => engine_down(),
                    })?;
                Ok(reply(
                    id,
                    "subscribe",
                    json!({
                        "channel": channel.as_str(),
                        "position": done.position.map(|p| p.to_string()),
                        "gap": done.gap,
                        "replayed": done.replayed,
                    }),
                ))
            }
            Command::Unsubscribe { channel } => {
                let channel = channel_name(&channel)?;
                if !self.sub.unsubscribe(&channel) {
                    return Err((
                        Refusal::NotSubscribed,
                        format!("not subscribed to {channel}"),
                    ));
                }
                Ok(reply(
                    id,
                    "unsubscribe",
                    json!({"channel": channel.as_str()}),
                ))
            }
            Command::Publish { channel, data } => {
                let channel = channel_name(&channel)?;
                self.publish(id, channel, data).await
            }
            Command::History { channel, since: s } => {
                let channel = channel_name(&channel)?;
                let since = since(s, Since::Earliest)?;
                access::may_read(&self.state, &self.identity, &channel).map_err(refusal)?;
                let page = self
                    .state
                    .node
                    .engine
                    .history(&channel, since)
                    .await
                    .map_err(|_| engine_down())?;
                // Envelopes are spliced in as they are (already JSON).
                let mut out = BytesMut::new();
                out.put_slice(format!("{{\"id\":{id},\"history\":{{\"channel\":").as_bytes());
                let mut name = Vec::new();
                herald_core::message::write_json_string(&mut name, channel.as_str());
                out.put_slice(&name);
                out.put_slice(b",\"messages\":[");
                for (i, m) in page.messages.iter().enumerate() {
                    if i > 0 {
                        out.put_u8(b',');
                    }
                    out.put_slice(m.envelope());
                }
                out.put_slice(format!("],\"gap\":{},\"last_id\":", page.gap).as_bytes());
                match page.last_id {
                    Some(last) => out.put_slice(format!("\"{last}\"").as_bytes()),
                    None => out.put_slice(b"null"),
                }
                out.put_slice(b"}}");
                Ok(out.freeze())
            }
            Command::Presence { channel } => {
                let channel = channel_name(&channel)?;
                access::may_read(&self.state, &self.identity, &channel).map_err(refusal)?;
                if !self
                    .state
                    .node
                    .namespaces
                    .options(channel.as_str())
                    .presence
                {
                    return Err((
                        Refusal::NotAvailable,
                        format!("presence is not enabled for {channel}"),
                    ));
                }
                let entries = self
                    .state
                    .node
                    .engine
                    .presence(&channel)
                    .await
                    .map_err(|_| engine_down())?;
                let summary = herald_core::presence::PresenceSummary::from_entries(&entries);
                Ok(reply(
                    id,
                    "presence",
                    json!({
                        "channel": channel.as_str(),
                        "connections": summary.connections,
                        "anonymous": summary.anonymous,
                        "users": summary.users,
                    }),
                ))
            }
            Command::Rpc { method, params } => self.rpc(id, method, params).await,
        }
    }

    async fn publish(
        &mut self,
        id: u64,
        channel: ChannelName,
        data: Box<serde_json::value::RawValue>,
    ) -> Result<Bytes, Refused> {
        if !self
            .state
            .node
            .namespaces
            .options(channel.as_str())
            .client_publish
        {
            return Err((
                Refusal::Forbidden,
                format!("clients may not publish to {channel}"),
            ));
        }
        access::may_read(&self.state, &self.identity, &channel).map_err(refusal)?;
        // Checked before the rate limit and the hook: a refused payload
        // costs neither.
        crate::api::json_payload(&data, self.state.config.max_payload).map_err(refusal)?;
        if !self.publish_rate.try_take() {
            return Err((
                Refusal::RateLimited,
                format!(
                    "at most {} publishes per second per connection",
                    self.state.config.limits.client_publish_rate
                ),
            ));
        }
        let mut data = data;
        if let Some(hooks) = &self.state.hooks {
            let body = json!({
                "event": "publish",
                "client": self.client,
                "user": self.identity.user.as_deref(),
                "channel": channel.as_str(),
                "data": &data,
            });
            if let Some(rewritten) =
                access::hook_verdict(hooks.decide(HookEvent::Publish, &body).await)
                    .map_err(refusal)?
            {
                data = rewritten;
            }
        }
        let payload =
            crate::api::json_payload(&data, self.state.config.max_payload).map_err(refusal)?;
        let published = self
            .state
            .node
            .engine
            .publish(&channel, payload)
            .await
            .map_err(|_| engine_down())?;
        self.state.counters.published(&published, true);
        Ok(reply(
            id,
            "publish",
            json!({"channel": channel.as_str(), "id": published.message.id.to_string()}),
        ))
    }

    async fn rpc(
        &mut self,
        id: u64,
        method: String,
        params: Option<Box<serde_json::value::RawValue>>,
    ) -> Result<Bytes, Refused> {
        let Some(hooks) = self.state.hooks.clone().filter(|h| h.wants(HookEvent::Rpc)) else {
            return Err((Refusal::NotAvailable, "no rpc backend is configured".into()));
        };
        let body = json!({
            "event": "rpc",
            "client": self.client,
            "user": self.identity.user.as_deref(),
            "method": method,
            "params": params,
        });
        let Some(answer) = hooks.call(HookEvent::Rpc, &body).await else {
            return Err((
                Refusal::HookUnavailable,
                "the application backend did not answer; retry later".into(),
            ));
        };
        if let Some(error) = answer.error {
            return Err((
                Refusal::RpcError,
                format!(
                    "{}: {}",
                    error.code.unwrap_or_else(|| "error".into()),
                    error.message.unwrap_or_default()
                ),
            ));
        }
        let result: serde_json::Value = answer
            .result
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .unwrap_or(serde_json::Value::Null);
        Ok(reply(id, "rpc", json!({ "result": result })))
    }

    /// Tells the backend the session ended.
    pub fn ended(&self) {
        access::disconnected(&self.state, self.identity.user.as_deref(), &self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use tokio_util::sync::CancellationToken;

    fn session() -> Session {
        let config = Config::default();
        let node = crate::memory_node(&config);
        let state = AppState::new(node, config, CancellationToken::new()).expect("state");
        Session::new(state, "t".into(), Identity::default())
    }

    async fn ask(s: &mut Session, frame: &str) -> serde_json::Value {
        let reply = s.handle(frame.as_bytes()).await.expect("a reply");
        serde_json::from_slice(&reply).expect("json")
    }

    #[tokio::test]
    async fn subscribe_publish_and_receive() {
        let mut s = session();
        let r = ask(&mut s, r#"{"id":1,"subscribe":{"channel":"chat:x"}}"#).await;
        assert_eq!(r["subscribe"]["channel"], "chat:x");
        assert_eq!(r["subscribe"]["position"], serde_json::Value::Null);
        let r = ask(
            &mut s,
            r#"{"id":2,"publish":{"channel":"chat:x","data":{"t":"hi"}}}"#,
        )
        .await;
        assert_eq!(r["id"], 2);
        let id = r["publish"]["id"].as_str().expect("id").to_string();
        // The demo namespace has join/leave on: our own join comes first.
        loop {
            match Session::push(s.subscriber().next().await) {
                Push::Message(m) => {
                    assert_eq!(m.id.to_string(), id);
                    break;
                }
                Push::Frame(_) => continue,
                Push::End(_) => panic!("expected the message"),
            }
        }
        let r = ask(&mut s, r#"{"id":3,"history":{"channel":"chat:x"}}"#).await;
        assert_eq!(r["history"]["messages"][0]["data"]["t"], "hi");
        let r = ask(&mut s, r#"{"id":4,"presence":{"channel":"chat:x"}}"#).await;
        assert_eq!(r["presence"]["connections"], 1);
    }

    #[tokio::test]
    async fn refusals() {
        let mut s = session();
        let r = ask(&mut s, r#"{"id":1,"publish":{"channel":"news","data":1}}"#).await;
        assert_eq!(r["error"]["code"], "forbidden");
        let r = ask(&mut s, r#"{"id":2,"subscribe":{"channel":"a b"}}"#).await;
        assert_eq!(r["error"]["code"], "invalid_channel");
        let r = ask(
            &mut s,
            r#"{"id":3,"subscribe":{"channel":"a","since":"x"}}"#,
        )
        .await;
        assert_eq!(r["error"]["code"], "invalid_since");
        ask(&mut s, r#"{"id":4,"subscribe":{"channel":"a"}}"#).await;
        let r = ask(&mut s, r#"{"id":5,"subscribe":{"channel":"a"}}"#).await;
        assert_eq!(r["error"]["code"], "already_subscribed");
        let r = ask(&mut s, r#"{"id":6,"unsubscribe":{"channel":"b"}}"#).await;
        assert_eq!(r["error"]["code"], "not_subscribed");
        let r = ask(&mut s, "{oops").await;
        assert_eq!(r["error"]["code"], "invalid_command");
        let r = ask(&mut s, r#"{"id":7,"subscribe":{"channel":"user:someone"}}"#).await;
        assert_eq!(r["error"]["code"], "forbidden");
        let r = ask(&mut s, r#"{"id":8,"rpc":{"method":"x"}}"#).await;
        assert_eq!(r["error"]["code"], "not_available");
        let r = ask(&mut s, r#"{"id":9,"connect":{"token":"nope"}}"#).await;
        assert_eq!(
            r["error"]["code"], "invalid_command",
            "connect after other commands"
        );
        assert!(s.handle(br#"{"pong":{}}"#).await.is_none());
    }

    #[tokio::test]
    async fn publish_rate_is_limited() {
        let mut s = session();
        let mut limited = 0;
        for i in 1..=40 {
            let r = ask(
                &mut s,
                &format!(r#"{{"id":{i},"publish":{{"channel":"chat:r","data":{i}}}}}"#),
            )
            .await;
            if r["error"]["code"] == "rate_limited" {
                limited += 1;
            }
        }
        assert!(
            limited >= 15,
            "burst 20 of 40 quick publishes: {limited} limited"
        );
    }
}
