//! The one protocol core: a [`Session`] is one client connection's state
//! machine, whatever the URL, dialect and wire format.
//!
//! Three dialects share it ([`Dialect`]):
//! - **channel**: `GET /sub/{channel}`, a session with one implied
//!   subscription, made at admission, on a one-way transport: the client
//!   sends no commands;
//! - **session**: `/connection/*`, the session protocol of
//!   docs/session-protocol.md: commands in, replies and pushes out;
//! - **pusher**: `/app/{key}`, the Pusher Channels protocol ([`pusher`]:
//!   its parser, encoder and channel rules over this same session).
//!
//! The session applies every command and rule (through [`crate::access`]):
//! the connect step, subscribe (with resume, private channels, full
//! channels, hooks), publish, history, presence, rpc, token refresh. It does
//! no I/O: a transport ([`crate::transport`]) feeds it command frames and
//! writes out what it returns, a queue item turned into a [`Push`] by
//! [`Speaks::push`] and then encoded by the transport's encoder for the
//! dialect. Admission (limits and identity) is [`admission`]; each command
//! is one file in [`cmd`] with its arguments and how it is applied.

pub(crate) mod admission;
pub(crate) mod cmd;
pub(crate) mod command;
#[cfg(test)]
mod command_props;
pub(crate) mod pusher;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use herald_core::disconnect::{Disconnect, SHUTDOWN};
use herald_core::node::{SubscribeError, Subscribed};
use herald_core::presence::Notice;
use herald_core::{ChannelName, Item, Message, Refusal, Since, Subscriber};
use serde_json::json;

use crate::access::limits::{RateLimit, Slot};
use crate::access::token::Identity;
use crate::access::{self, Rules};
use crate::error::Refused;
use crate::state::AppState;
use command::Frame;

/// `{"ping":{}}`, the session dialect's heartbeat.
pub(crate) const PING: Bytes = Bytes::from_static(b"{\"ping\":{}}");

/// What the client speaks, chosen by the URL it opened.
#[derive(Debug, Clone)]
pub(crate) enum Dialect {
    /// `GET /sub/{channel}`: envelopes of one channel, no commands.
    Channel(ChannelName),
    /// `/connection/*`: the session protocol's frames.
    Session,
    /// `/app/{key}`: the Pusher Channels protocol ([`pusher`]).
    Pusher,
}

impl Dialect {
    /// Which dialect, without its data.
    pub(crate) fn speaks(&self) -> Speaks {
        match self {
            Self::Channel(_) => Speaks::Channel,
            Self::Session => Speaks::Session,
            Self::Pusher => Speaks::Pusher,
        }
    }
}

/// The dialect a session speaks, in one byte (every idle connection
/// carries it; encoders carry the [`Dialect`] with its channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Speaks {
    Channel,
    Session,
    /// Items become frames through the session's [`pusher::State`], which
    /// [`Speaks::push`] does not know.
    Pusher,
}

impl Speaks {
    /// What a queue item becomes in this dialect.
    pub(crate) fn push(self, item: Item) -> Push {
        match item {
            Item::Message(m) => Push::Message(m),
            Item::Latest(m) => Push::Latest(m),
            Item::Gap(channel) => Push::Gap(channel),
            Item::Notice(notice) => Push::Notice(notice),
            Item::Disconnect(why) => Push::End(why),
            // A channel URL follows one channel: its end is the connection's.
            Item::Closed(_, why) if self == Speaks::Channel => Push::End(why),
            Item::Closed(channel, why) => Push::Frame(Bytes::from(
                json!({"channel": channel.as_str(), "unsubscribed": why}).to_string(),
            )),
        }
    }
}

/// What a queue item or a command becomes before a transport encodes it.
/// Shared pieces (envelopes, notices) stay shared: the transport writes
/// them out as they are, encoded once per publish.
pub(crate) enum Push {
    Message(Arc<Message>),
    /// The channel's newest message, which a subscribe without a resume
    /// point opens with (`latest_on_subscribe`): each format marks it
    /// (docs/protocol.md), in bytes built for this connection only.
    Latest(Arc<Message>),
    /// Messages may be missing before the next one of this channel.
    Gap(ChannelName),
    /// Someone joined or left a followed channel.
    Notice(Arc<Notice>),
    /// A frame of the session dialect built for this connection: a reply,
    /// `{"channel","unsubscribed"}`, the opening `{"session"}` frame.
    Frame(Bytes),
    /// The connection ends, saying why.
    End(Disconnect),
    /// The node is draining: the connection ends ([`SHUTDOWN`]) and its
    /// client should reconnect after this many milliseconds (each
    /// connection gets its own, spread over `drain_window`).
    Leave(u32),
}

impl Push {
    /// Whether this push ends the connection.
    pub(crate) fn is_end(&self) -> bool {
        matches!(self, Push::End(_) | Push::Leave(_))
    }
}

/// `{"code","reason","reconnect","delay_ms"}`: the shutdown notice of a
/// draining node, with the delay the client should wait.
pub(crate) fn leave_json(delay_ms: u32) -> serde_json::Value {
    json!({
        "code": SHUTDOWN.code,
        "reason": SHUTDOWN.reason,
        "reconnect": SHUTDOWN.reconnect,
        "delay_ms": delay_ms,
    })
}

/// The close reason of a draining node's WebSocket close frame (at most
/// 123 bytes, as RFC 6455 allows).
pub(crate) fn leave_reason(delay_ms: u32) -> String {
    format!("{}; reconnect in {delay_ms} ms", SHUTDOWN.reason)
}

/// `{"channel":"c","gap":true}`: the gap notice of the JSON encodings.
pub(crate) fn gap_json(channel: &ChannelName) -> Bytes {
    Bytes::from(json!({"channel": channel.as_str(), "gap": true}).to_string())
}

/// `{"disconnect":{"code","reason","reconnect"}}`: the session's last frame.
pub(crate) fn disconnect_frame(why: Disconnect) -> Bytes {
    Bytes::from(json!({ "disconnect": why }).to_string())
}

/// A refused command's reply: `{"id": N, "error": {"code", "message"}}`.
pub(crate) fn error_frame(id: Option<u64>, code: Refusal, message: &str) -> Bytes {
    Bytes::from(json!({"id": id, "error": {"code": code, "message": message}}).to_string())
}

/// Writes `[a,b,…]` of values that are JSON already (shared envelopes,
/// frames) as they are: the one place where JSON is spliced rather than
/// serialised, so that what was encoded once per publish is not parsed and
/// written again per connection.
pub(crate) fn put_json_list<'a>(out: &mut BytesMut, items: impl IntoIterator<Item = &'a [u8]>) {
    out.put_u8(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(item);
    }
    out.put_u8(b']');
}

/// Writes `text` as a JSON string.
pub(crate) fn put_json_string(out: &mut BytesMut, text: &str) {
    let mut quoted = Vec::with_capacity(text.len() + 2);
    herald_core::message::write_json_string(&mut quoted, text);
    out.put_slice(&quoted);
}

/// A command's reply: `{"id": N, "<key>": body}`.
pub(crate) fn reply(id: u64, key: &str, body: serde_json::Value) -> Bytes {
    let mut map = serde_json::Map::new();
    map.insert("id".into(), id.into());
    map.insert(key.into(), body);
    Bytes::from(serde_json::Value::Object(map).to_string())
}

/// The transport a session came over, as the connect hook names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    WebSocket,
    Sse,
    Stream,
    LongPoll,
    Iframe,
    /// Any transport of the session protocol.
    Session,
    /// A Pusher client's WebSocket (`/app/{key}`).
    Pusher,
}

impl Transport {
    /// Every transport, in the order of the per-transport gauges
    /// (`metrics::Counters::open`).
    pub(crate) const ALL: [Transport; crate::metrics::TRANSPORTS] = [
        Self::WebSocket,
        Self::Sse,
        Self::Stream,
        Self::LongPoll,
        Self::Iframe,
        Self::Session,
        Self::Pusher,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Sse => "sse",
            Self::Stream => "stream",
            Self::LongPoll => "longpoll",
            Self::Iframe => "iframe",
            Self::Session => "session",
            Self::Pusher => "pusher",
        }
    }
}

pub(crate) struct Session {
    state: AppState,
    sub: Subscriber,
    speaks: Speaks,
    /// The transport named to the connect hook.
    transport: Transport,
    /// Whether the connect step (hook) has run and let the client in.
    connected: bool,
    /// Whether the connect step refused the client: the backend is then
    /// not told that the connection ended (it never began).
    refused: bool,

    /// Set when a command ends the session (e.g. the connect hook refused).
    /// (A row of the close-code table: one word, not a copy.)
    closing: Option<&'static Disconnect>,
    /// The close its transport sent, counted and logged when the session
    /// is dropped (`None`: the client went away without one).
    ended: Option<&'static Disconnect>,
    /// The connection's slot under the limits, freed with the session.
    _slot: Option<Slot>,
    /// Who the client is, while it can still send commands; a channel URL
    /// needs it only to open, then keeps none (boxed: every idle
    /// connection carries this struct, most of them channel URLs).
    who: Option<Box<Who>>,
    /// What a Pusher session keeps beyond this (`None` in the others).
    pusher: Option<Box<pusher::State>>,
}

/// What a session keeps about its client for its commands.
struct Who {
    identity: Identity,
    /// The client's address, for hooks and logs.
    peer: Option<IpAddr>,
    /// Made at the first client publish.
    publish_rate: Option<RateLimit>,
}

/// An anonymous identity, for a session that keeps none (a channel URL
/// after it opened, which runs no more rules).
static NO_ONE: std::sync::LazyLock<Identity> = std::sync::LazyLock::new(Identity::default);

impl Session {
    /// A session for an admitted client, holding its slot.
    pub(crate) fn new(
        state: AppState,
        dialect: Dialect,
        transport: Transport,
        admitted: admission::Admitted,
    ) -> Self {
        // The public client id others see (notices, presence, hooks); never
        // the secret id of an HTTP session. The subscriber keeps it.
        let client: Arc<str> = Arc::from(access::random_id());
        Self::with_client(state, dialect, transport, admitted, client)
    }

    /// [`Session::new`] with the given public client id.
    fn with_client(
        state: AppState,
        dialect: Dialect,
        transport: Transport,
        admitted: admission::Admitted,
        client: Arc<str>,
    ) -> Self {
        let sub = subscriber_for(&state, &client, &admitted.identity);
        state.counters.opened(transport as usize);
        Self {
            state,
            sub,
            speaks: dialect.speaks(),
            transport,
            connected: false,
            refused: false,
            closing: None,
            ended: None,
            _slot: admitted.slot,
            who: Some(Box::new(Who {
                identity: admitted.identity,
                peer: admitted.peer,
                publish_rate: None,
            })),
            pusher: None,
        }
    }

    /// The channel dialect's start: the connect step, then the implied
    /// subscription to its channel from `since`.
    pub(crate) async fn open_channel(
        &mut self,
        channel: ChannelName,
        since: Since,
    ) -> Result<Subscribed, Refused> {
        if self.speaks != Speaks::Channel {
            return Err(Refused::new(
                Refusal::InvalidRequest,
                "only a channel URL has an implied subscription",
            ));
        }
        self.ensure_connected().await?;
        let done = self.subscribe(channel, since).await?;
        // No command will come: the rules have run for good.
        self.who = None;
        Ok(done)
    }

    pub(crate) fn speaks(&self) -> Speaks {
        self.speaks
    }

    /// Who the client is (anonymous once a channel URL has opened).
    fn identity(&self) -> &Identity {
        self.who.as_ref().map_or(&NO_ONE, |w| &w.identity)
    }

    pub(crate) fn state(&self) -> &AppState {
        &self.state
    }

    /// Takes one client publish from the connection's rate.
    fn may_publish_now(&mut self) -> bool {
        let limits = &self.state.config.limits;
        let Some(who) = self.who.as_mut() else {
            return false;
        };
        who.publish_rate
            .get_or_insert_with(|| {
                RateLimit::new(limits.client_publish_rate, limits.client_publish_burst)
            })
            .try_take()
    }

    fn rules(&self) -> &Rules {
        &self.state.rules
    }

    pub(crate) fn subscriber(&mut self) -> &mut Subscriber {
        &mut self.sub
    }

    /// Set when the session must end after its last reply.
    pub(crate) fn closing(&self) -> Option<Disconnect> {
        self.closing.copied()
    }

    /// The transport closes the connection with `why` (counted and logged
    /// when the session is dropped).
    pub(crate) fn ended(&mut self, why: Disconnect) {
        if self.ended.is_none() {
            self.ended = herald_core::disconnect::ALL
                .iter()
                .find(|d| d.code == why.code);
        }
    }

    /// The public client id.
    fn client(&self) -> &Arc<str> {
        &self.sub.client().client
    }

    /// The dialect and the subscriber at once, for a loop that takes
    /// items and turns them into pushes ([`Speaks::push`]).
    pub(crate) fn parts(&mut self) -> (Speaks, &mut Subscriber) {
        (self.speaks, &mut self.sub)
    }

    /// Handles one frame from the client; returns the reply, if any. A
    /// channel URL takes no commands: what its client sends is ignored.
    pub(crate) async fn handle(&mut self, text: &[u8]) -> Option<Bytes> {
        if self.speaks != Speaks::Session {
            return None;
        }
        let max = self.state.config.limits.max_command_size;
        if text.len() > max {
            return Some(error_frame(
                None,
                Refusal::LimitExceeded,
                &format!("command frame larger than {max} bytes"),
            ));
        }
        match command::parse(text) {
            Ok(Frame::Pong) => None,
            Ok(Frame::Command { id, command }) => Some(match self.execute(id, command).await {
                Ok(reply) => reply,
                Err(refused) => error_frame(Some(id), refused.code, &refused.message),
            }),
            Err(invalid) => Some(error_frame(
                invalid.id,
                Refusal::InvalidCommand,
                &invalid.message,
            )),
        }
    }

    async fn execute(&mut self, id: u64, command: command::Command) -> Result<Bytes, Refused> {
        use command::Command;
        if !matches!(command, Command::Connect(_) | Command::Ping(_)) {
            self.ensure_connected().await?;
        }
        match command {
            Command::Connect(args) => cmd::connect::apply(self, id, args).await,
            Command::Refresh(args) => cmd::refresh::apply(self, id, args),
            Command::Ping(_) => Ok(reply(id, "pong", json!({}))),
            Command::Subscribe(args) => cmd::subscribe::apply(self, id, args).await,
            Command::Unsubscribe(args) => cmd::unsubscribe::apply(self, id, args),
            Command::Publish(args) => cmd::publish::apply(self, id, args).await,
            Command::History(args) => cmd::history::apply(self, id, args).await,
            Command::Presence(args) => cmd::presence::apply(self, id, args).await,
            Command::Rpc(args) => cmd::rpc::apply(self, id, args).await,
            Command::Ack(args) => cmd::ack::apply(self, id, args).await,
        }
    }

    /// The connect step, once: the connect hook for this identity. A
    /// refusal that ends connections (`denied`) ends the session.
    async fn ensure_connected(&mut self) -> Result<(), Refused> {
        if self.connected {
            return Ok(());
        }
        if let Err(e) = access::may_connect(
            self.rules(),
            self.identity(),
            self.client(),
            self.transport.as_str(),
            self.who.as_ref().and_then(|w| w.peer),
        )
        .await
        {
            if let Some(close) = e.code.close() {
                self.closing = herald_core::disconnect::ALL
                    .iter()
                    .find(|d| d.code == close.code);
            }
            self.refused = true;
            return Err(e);
        }
        self.connected = true;
        Ok(())
    }

    /// Follows `channel` from `since`, under every rule: the subscription
    /// limit, private channels, a full channel, the subscribe hook.
    pub(crate) async fn subscribe(
        &mut self,
        channel: ChannelName,
        since: Since,
    ) -> Result<Subscribed, Refused> {
        let max = self.state.config.limits.max_subscriptions;
        if self.sub.channel_count() >= max {
            return Err(Refused::new(
                Refusal::LimitExceeded,
                format!("at most {max} subscriptions per connection"),
            ));
        }
        if self.sub.is_subscribed(&channel) {
            return Err(Refused::new(
                Refusal::AlreadySubscribed,
                format!("already subscribed to {channel}"),
            ));
        }
        let place =
            access::may_subscribe(&self.state.rules, self.identity(), self.client(), &channel)
                .await?;
        let done = self
            .sub
            .subscribe_holding(channel.clone(), since, place)
            .await
            .map_err(|e| match e {
                SubscribeError::AlreadySubscribed(_) => {
                    Refused::new(Refusal::AlreadySubscribed, e.to_string())
                }
                SubscribeError::Engine(e) => Refused::from(e),
            })?;
        tracing::debug!(
            client = &**self.client(),
            channel = channel.as_str(),
            replayed = done.replayed,
            "subscribed"
        );
        Ok(done)
    }

    /// A new identity (a `connect` token, or a `refresh` for the same
    /// user): the subscriber's client info and deadline follow it.
    fn set_identity(&mut self, identity: Identity, fresh_subscriber: bool) {
        if fresh_subscriber {
            let client = Arc::clone(self.client());
            self.sub = subscriber_for(&self.state, &client, &identity);
        } else {
            self.sub
                .set_client(access::client_info(&identity, self.client()));
            self.sub
                .set_deadline(access::deadline(self.rules(), &identity));
        }
        match self.who.as_mut() {
            Some(who) => who.identity = identity,
            None => {
                self.who = Some(Box::new(Who {
                    identity,
                    peer: None,
                    publish_rate: None,
                }))
            }
        }
    }
}

impl Drop for Session {
    /// Tells the backend the connection ended (unless its connect step
    /// refused it).
    fn drop(&mut self) {
        if self.ended.is_none() && self.sub.overflowed() {
            // Cut as a slow consumer, though its transport could not say so
            // (the socket stayed full until the write timeout).
            self.ended = Some(&herald_core::disconnect::SLOW_CONSUMER);
        }
        self.state
            .counters
            .closed(self.transport as usize, self.ended.map(|d| d.code));
        tracing::debug!(
            client = &**self.client(),
            transport = self.transport.as_str(),
            code = self.ended.map(|d| d.code),
            reason = self.ended.map(|d| d.reason),
            "connection closed"
        );
        if !self.refused {
            access::disconnected(
                &self.state.rules,
                self.sub.client().user.as_deref(),
                self.client(),
            );
        }
    }
}

fn subscriber_for(state: &AppState, client: &Arc<str>, identity: &Identity) -> Subscriber {
    let mut sub = state.node.subscriber_for(
        state.config.queue_size,
        access::client_info(identity, client),
    );
    sub.set_deadline(access::deadline(&state.rules, identity));
    sub
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use tokio_util::sync::CancellationToken;

    fn session() -> Session {
        let config = Config::default();
        let node = herald_core::Node::memory(config.namespaces.clone());
        let state = AppState::new(node, config, CancellationToken::new()).expect("state");
        Session::new(
            state,
            Dialect::Session,
            Transport::Session,
            admission::Admitted::anonymous(),
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
        // The demo namespace has join/leave on: our own join comes first.
        loop {
            let item = s.subscriber().next().await;
            match s.speaks().push(item) {
                Push::Message(m) => {
                    assert_eq!(m.id.to_string(), id);
                    break;
                }
                Push::End(_) => panic!("expected the message"),
                _ => continue,
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
    async fn a_channel_url_takes_no_commands() {
        let config = Config::default();
        let node = herald_core::Node::memory(config.namespaces.clone());
        let state = AppState::new(node, config, CancellationToken::new()).expect("state");
        let channel = ChannelName::new("news").expect("channel");
        let mut s = Session::new(
            state,
            Dialect::Channel(channel.clone()),
            Transport::WebSocket,
            admission::Admitted::anonymous(),
        );
        let done = s
            .open_channel(channel.clone(), Since::Live)
            .await
            .expect("subscribed");
        assert!(!done.gap);
        assert!(s.sub.is_subscribed(&channel));
        assert!(s
            .handle(br#"{"id":1,"subscribe":{"channel":"other"}}"#)
            .await
            .is_none());
        assert_eq!(s.sub.channel_count(), 1, "a command did nothing");
        // The end of its one channel is the end of the connection.
        let why = herald_core::disconnect::SHUTDOWN;
        assert!(matches!(
            s.speaks().push(Item::Closed(channel, why)),
            Push::End(w) if w == why
        ));
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
