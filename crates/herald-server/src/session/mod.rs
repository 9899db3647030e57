//! The session protocol: one connection, many channels, the same JSON frames
//! on every transport (see docs/session-protocol.md).
//!
//! [`Session`] holds one connection's state (its [`Subscriber`]) and turns
//! commands into replies and queue items into pushes. It does no I/O: the
//! WebSocket loop ([`ws`]) and the HTTP loops ([`http`]) feed it frames and
//! write out what it returns.

pub mod command;
pub mod http;
pub mod ws;

use bytes::{BufMut, Bytes, BytesMut};
use herald_core::disconnect::Disconnect;
use herald_core::node::SubscribeError;
use herald_core::{ChannelName, Item, Payload, Since, Subscriber};
use serde_json::json;

use crate::state::AppState;
use command::{Command, Frame};

/// Subscriptions one session may hold.
pub const MAX_SUBSCRIPTIONS: usize = 256;

/// `{"ping":{}}`, sent every heartbeat.
pub const PING: Bytes = Bytes::from_static(b"{\"ping\":{}}");

pub struct Session {
    state: AppState,
    sub: Subscriber,
    client: String,
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

pub fn error_frame(id: Option<u64>, code: &str, message: &str) -> Bytes {
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

impl Session {
    pub fn new(state: AppState, client: String) -> Self {
        let sub = state.node.subscriber(state.config.queue_size);
        Self { state, sub, client }
    }

    pub fn client(&self) -> &str {
        &self.client
    }

    pub fn subscriber(&mut self) -> &mut Subscriber {
        &mut self.sub
    }

    /// The wire form of a queue item.
    pub fn push(item: Item) -> Push {
        match item {
            Item::Message(m) => Push::Message(m),
            Item::Gap(channel) => Push::Frame(crate::transport::gap_json(&channel)),
            Item::Closed(channel, why) => Push::Frame(Bytes::from(
                json!({"channel": channel.as_str(), "unsubscribed": why}).to_string(),
            )),
            Item::Disconnect(why) => Push::End(why),
        }
    }

    /// Handles one frame from the client; returns the reply, if any.
    pub async fn handle(&mut self, text: &[u8]) -> Option<Bytes> {
        match command::parse(text) {
            Ok(Frame::Pong) => None,
            Ok(Frame::Command { id, command }) => Some(match self.execute(id, command).await {
                Ok(reply) => reply,
                Err((code, message)) => error_frame(Some(id), code, &message),
            }),
            Err(invalid) => Some(error_frame(invalid.id, "invalid_command", &invalid.message)),
        }
    }

    async fn execute(
        &mut self,
        id: u64,
        command: Command,
    ) -> Result<Bytes, (&'static str, String)> {
        let channel_name =
            |name: &str| ChannelName::new(name).map_err(|e| ("invalid_channel", e.to_string()));
        let since = |text: Option<String>, default: Since| match text {
            None => Ok(default),
            Some(t) => Since::parse(&t).map_err(|e| ("invalid_since", e.to_string())),
        };
        match command {
            Command::Connect { token: _ } => Ok(reply(
                id,
                "connect",
                json!({
                    "client": self.client,
                    "ping": self.state.config.heartbeat.as_secs(),
                    "version": env!("CARGO_PKG_VERSION"),
                }),
            )),
            Command::Ping => Ok(reply(id, "pong", json!({}))),
            Command::Subscribe { channel, since: s } => {
                let channel = channel_name(&channel)?;
                let since = since(s, Since::Live)?;
                if self.sub.channel_count() >= MAX_SUBSCRIPTIONS {
                    return Err((
                        "limit_exceeded",
                        format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection"),
                    ));
                }
                let done =
                    self.sub
                        .subscribe(channel.clone(), since)
                        .await
                        .map_err(|e| match e {
                            SubscribeError::AlreadySubscribed(_) => {
                                ("already_subscribed", e.to_string())
                            }
                            SubscribeError::Engine(_) => (
                                "engine_unavailable",
                                "the message store is unavailable; retry later".to_string(),
                            ),
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
                    return Err(("not_subscribed", format!("not subscribed to {channel}")));
                }
                Ok(reply(
                    id,
                    "unsubscribe",
                    json!({"channel": channel.as_str()}),
                ))
            }
            Command::Publish { channel, data } => {
                let channel = channel_name(&channel)?;
                if !self
                    .state
                    .node
                    .namespaces
                    .options(channel.as_str())
                    .client_publish
                {
                    return Err(("forbidden", format!("clients may not publish to {channel}")));
                }
                let raw = data.get();
                if raw.len() > self.state.config.max_payload {
                    return Err((
                        "payload_too_large",
                        format!(
                            "payload is larger than {} bytes",
                            self.state.config.max_payload
                        ),
                    ));
                }
                let payload = Payload::json(Bytes::copy_from_slice(raw.as_bytes()))
                    .map_err(|e| ("invalid_command", e.to_string()))?;
                let published = self
                    .state
                    .node
                    .engine
                    .publish(&channel, payload)
                    .await
                    .map_err(|_| {
                        (
                            "engine_unavailable",
                            "the message store is unavailable; retry later".to_string(),
                        )
                    })?;
                Ok(reply(
                    id,
                    "publish",
                    json!({"channel": channel.as_str(), "id": published.message.id.to_string()}),
                ))
            }
            Command::History { channel, since: s } => {
                let channel = channel_name(&channel)?;
                let since = since(s, Since::Earliest)?;
                let page = self
                    .state
                    .node
                    .engine
                    .history(&channel, since)
                    .await
                    .map_err(|_| {
                        (
                            "engine_unavailable",
                            "the message store is unavailable; retry later".to_string(),
                        )
                    })?;
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
        }
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
        Session::new(
            AppState::new(node, config, CancellationToken::new()),
            "t".into(),
        )
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
        match Session::push(s.subscriber().next().await) {
            Push::Message(m) => assert_eq!(m.id.to_string(), id),
            _ => panic!("expected the message"),
        }
        let r = ask(&mut s, r#"{"id":3,"history":{"channel":"chat:x"}}"#).await;
        assert_eq!(r["history"]["messages"][0]["data"]["t"], "hi");
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
        assert!(s.handle(br#"{"pong":{}}"#).await.is_none());
    }
}
