//! The Pusher dialect (Pusher Channels protocol 7, docs/pusher.md): a
//! command parser ([`command`]) and an encoder ([`encode`]) over the one
//! session core. A Pusher connection is a [`Session`] like any other: it
//! is admitted by [`super::admission`], follows channels through
//! [`Session::subscribe`] (limits, hooks, history, presence) and is
//! served by the one WebSocket loop; what is Pusher's own is here:
//!
//! - the channel mapping: the app's channel `c` is the Herald channel
//!   `pusher:{app_id}:c`, so history, both engines and metrics apply and
//!   a Herald publish there reaches Pusher subscribers;
//! - the subscription rules: `private-` and `presence-` channels need the
//!   app's HMAC signature (`access::pusher`), after which the session holds
//!   a grant for that one channel (their namespaces are private, so no
//!   other client reads them without one); `cache-` channels replay their
//!   last event through the subscription itself, once and in order;
//! - presence members per user, from Herald's per-connection presence
//!   ([`State::push`] turns join/leave notices into `member_added` /
//!   `member_removed` only when a user's first connection joins or its
//!   last one leaves);
//! - `client-` events, published through the engine like any message,
//!   with the sender's `socket_id` so that it does not get its own;
//! - the error and close codes ([`Code`], one table);
//! - the wire: a WebSocket, or pusher-js's HTTP fallbacks ([`Wire`]),
//!   whose lines [`encode`] also writes.

pub(crate) mod command;
pub(crate) mod encode;
pub(crate) mod name;
mod webhook;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use herald_core::disconnect::{self, Disconnect};
use herald_core::presence::ClientInfo;
use herald_core::{ChannelName, Item, Payload, Refusal, Since, Subscriber};
use serde::Deserialize;
use serde_json::json;

use super::{admission, Dialect, Push, Session, Transport};
use crate::access::token::Grant;
use crate::state::{AppState, PusherSlot};
use command::Command;

/// `pusher:ping`, the server's heartbeat (pusher-js answers `pusher:pong`).
pub(crate) const PING: Bytes = Bytes::from_static(b"{\"event\":\"pusher:ping\",\"data\":\"{}\"}");

/// The protocol versions served (`?protocol=` of `/app/{key}`).
pub(crate) const PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=7;

/// A `pusher:error` code and its default message. 4000-4099: the client
/// must not reconnect as it is; 4100-4199: reconnect after a while;
/// 4200-4299: reconnect at once; 4300-4399: any other error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Code {
    pub(crate) code: u16,
    pub(crate) message: &'static str,
}

const fn code(code: u16, message: &'static str) -> Code {
    Code { code, message }
}

pub(crate) const APP_NOT_FOUND: Code = code(4001, "application does not exist");
pub(crate) const OVER_QUOTA: Code = code(4004, "application is over its connection quota");
pub(crate) const BAD_VERSION: Code = code(4006, "invalid protocol version format");
pub(crate) const UNSUPPORTED_VERSION: Code = code(4007, "unsupported protocol version");
pub(crate) const NO_VERSION: Code = code(4008, "no protocol version supplied");
pub(crate) const UNAUTHORIZED: Code = code(4009, "connection is unauthorized");
pub(crate) const OVER_CAPACITY: Code = code(4100, "over capacity");
pub(crate) const RECONNECT: Code = code(4200, "reconnect immediately");
pub(crate) const PONG_NOT_RECEIVED: Code = code(4201, "pong reply not received");
pub(crate) const REFUSED: Code = code(4300, "refused");
pub(crate) const RATE_LIMITED: Code = code(4301, "client event rejected due to rate limit");

/// Every code, for docs and tests.
#[cfg(test)]
pub(crate) const ALL: &[Code] = &[
    APP_NOT_FOUND,
    OVER_QUOTA,
    BAD_VERSION,
    UNSUPPORTED_VERSION,
    NO_VERSION,
    UNAUTHORIZED,
    OVER_CAPACITY,
    RECONNECT,
    PONG_NOT_RECEIVED,
    REFUSED,
    RATE_LIMITED,
];

/// The Pusher close of a connection Herald ends with `why` (WebSocket's
/// own codes, below 4000, stay).
pub(crate) fn close_for(why: Disconnect) -> Code {
    match why {
        w if w == disconnect::SHUTDOWN => RECONNECT,
        w if w == disconnect::HEARTBEAT_TIMEOUT => PONG_NOT_RECEIVED,
        w if w == disconnect::SLOW_CONSUMER
            || w == disconnect::WRITE_TIMEOUT
            || w == disconnect::ENGINE_UNAVAILABLE =>
        {
            OVER_CAPACITY
        }
        w if w == disconnect::FORCED => UNAUTHORIZED,
        w if w.code < 4000 => code(w.code, w.reason),
        w if w.reconnect => RECONNECT,
        _ => REFUSED,
    }
}

/// Checks `?protocol=`.
pub(crate) fn check_protocol(text: Option<&str>) -> Result<(), Code> {
    let text = text.ok_or(NO_VERSION)?;
    let version: u32 = text.parse().map_err(|_| BAD_VERSION)?;
    if PROTOCOLS.contains(&version) {
        Ok(())
    } else {
        Err(UNSUPPORTED_VERSION)
    }
}

/// A socket id in Pusher's `N.N` form (the server libraries check it),
/// random: it is also the connection's Herald client id.
fn socket_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        static FALLBACK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = FALLBACK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[..4].copy_from_slice(&n.to_le_bytes());
    }
    let [a, b, c, d, e, f, g, h] = bytes;
    format!(
        "{}.{}",
        u32::from_le_bytes([a, b, c, d]),
        u32::from_le_bytes([e, f, g, h])
    )
}

/// What a Pusher session keeps beyond the core's state.
pub(crate) struct State {
    /// Its place under the app's `max_connections`, and the app.
    slot: PusherSlot,
    /// Also the session's Herald client id.
    socket_id: Arc<str>,
    /// Per presence channel followed: connection id → user id, so that a
    /// user is added on its first connection and removed after its last.
    members: HashMap<ChannelName, HashMap<Arc<str>, Arc<str>>>,
    /// The app's user id this connection signed in as (`pusher:signin`).
    user: Option<Arc<str>>,
    /// The channels subscribed with the resume helper's `herald_since`:
    /// only they are told of a gap (`herald:gap`); Pusher has no such
    /// event, so a plain pusher-js never gets one.
    resuming: HashSet<ChannelName>,
}

/// `pusher:signin`'s `user_data`, as the app's backend signed it.
#[derive(Deserialize)]
struct UserData {
    id: serde_json::Value,
}

/// A user id as the app's backend wrote it (in `user_data` or
/// `channel_data`): a non-empty string, or a number as its text.
fn user_id(value: serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) if !s.is_empty() => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The event that tells a resuming client (the helper) that events may
/// be missing before the next one of the channel.
pub(crate) const GAP_EVENT: &str = "herald:gap";

/// A presence member, as the app's auth endpoint put it in
/// `channel_data`.
#[derive(Deserialize)]
struct Member {
    user_id: serde_json::Value,
    user_info: Option<serde_json::Value>,
}

/// A join or leave notice's body (`herald_core::presence::Notice`).
#[derive(Deserialize)]
struct NoticeBody {
    join: Option<NoticeEntry>,
    leave: Option<NoticeEntry>,
}

#[derive(Deserialize)]
struct NoticeEntry {
    client: String,
    user: Option<String>,
    info: Option<serde_json::Value>,
}

/// How the frames of a Pusher session go out: a WebSocket's text frames,
/// or an HTTP fallback's lines (`a["<frame>"]`, [`encode::xhr_line`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    WebSocket,
    Xhr,
}

impl Wire {
    /// A frame built for this connection, on this wire.
    pub(crate) fn frame(self, frame: Bytes) -> Bytes {
        match self {
            Self::WebSocket => frame,
            Self::Xhr => encode::xhr_line(&frame),
        }
    }
}

impl State {
    /// What a queue item becomes for this connection, if anything: a
    /// message in its shared Pusher form (unless this connection sent or
    /// was excluded from it), a presence change, a gap (`herald:gap`, only
    /// on a channel the resume helper resumed), or the end. A channel's
    /// end has no Pusher form.
    pub(crate) fn push(&mut self, item: Item) -> Option<Push> {
        self.push_on(Wire::WebSocket, item)
    }

    /// [`State::push`] on `wire`: every [`Push::Frame`] is in its form.
    pub(crate) fn push_on(&mut self, wire: Wire, item: Item) -> Option<Push> {
        match item {
            // The latest message of a `latest_on_subscribe` namespace is
            // an ordinary event in Pusher (which has no such mark).
            Item::Message(m) | Item::Latest(m) => {
                let form = encode::form(&m)?;
                if form.exclude.as_deref() == Some(&*self.socket_id) {
                    return None;
                }
                Some(Push::Frame(match wire {
                    Wire::WebSocket => form.frame.clone(),
                    Wire::Xhr => form.xhr_line().clone(),
                }))
            }
            Item::Notice(notice) => self
                .presence_change(&notice.channel, &notice.json)
                .map(|frame| Push::Frame(wire.frame(frame))),
            Item::Disconnect(why) => Some(Push::End(why)),
            Item::Closed(channel, _) => {
                self.members.remove(&channel);
                self.resuming.remove(&channel);
                None
            }
            Item::Gap(channel) => self.resuming.contains(&channel).then(|| {
                let name = name::pusher_name(channel.as_str());
                Push::Frame(wire.frame(encode::event(GAP_EVENT, Some(&name), &json!({}))))
            }),
        }
    }

    fn presence_change(&mut self, channel: &ChannelName, json: &[u8]) -> Option<Bytes> {
        let members = self.members.get_mut(channel)?;
        let body: NoticeBody = serde_json::from_slice(json).ok()?;
        let name = name::pusher_name(channel.as_str());
        if let Some(join) = body.join {
            let user: Arc<str> = Arc::from(join.user?);
            let client: Arc<str> = Arc::from(join.client);
            if members.contains_key(&client) {
                return None;
            }
            let first = !members.values().any(|u| *u == user);
            members.insert(client, Arc::clone(&user));
            return first.then(|| {
                encode::event(
                    "pusher_internal:member_added",
                    Some(&name),
                    &json!({"user_id": &*user, "user_info": join.info}),
                )
            });
        }
        let leave = body.leave?;
        let user = members.remove(leave.client.as_str())?;
        let last = !members.values().any(|u| *u == user);
        last.then(|| {
            encode::event(
                "pusher_internal:member_removed",
                Some(&name),
                &json!({ "user_id": &*user }),
            )
        })
    }
}

impl Session {
    /// A session of the Pusher dialect for an admitted client of the app
    /// whose slot it holds. Its client id is its socket id.
    pub(crate) fn pusher(state: AppState, slot: PusherSlot, admitted: admission::Admitted) -> Self {
        let socket: Arc<str> = Arc::from(socket_id());
        let mut session = Session::with_client(
            state,
            Dialect::Pusher,
            Transport::Pusher,
            admitted,
            Arc::clone(&socket),
        );
        session.pusher = Some(Box::new(State {
            slot,
            socket_id: socket,
            members: HashMap::new(),
            user: None,
            resuming: HashSet::new(),
        }));
        session
    }

    /// The Pusher state and the subscriber at once, for the loop that
    /// turns items into frames ([`State::push`]).
    pub(crate) fn pusher_parts(&mut self) -> Option<(&mut State, &mut Subscriber)> {
        let state = self.pusher.as_deref_mut()?;
        Some((state, &mut self.sub))
    }

    /// The connection's first frame: the connect step (hook), then
    /// `pusher:connection_established`, or the refusal (and the session
    /// closes).
    pub(crate) async fn pusher_open(&mut self) -> Bytes {
        match self.ensure_connected().await {
            Ok(()) => {
                let data = json!({
                    "socket_id": &**self.client(),
                    "activity_timeout": self.state.config.heartbeat.as_secs().max(1),
                });
                encode::event("pusher:connection_established", None, &data)
            }
            Err(refused) => {
                self.closing = Some(&disconnect::FORCED);
                encode::error(UNAUTHORIZED, &refused.message)
            }
        }
    }

    /// Handles one frame of a Pusher client; returns the frames to send.
    pub(crate) async fn handle_pusher(&mut self, text: &[u8]) -> Vec<Bytes> {
        let max = self.state.config.limits.max_command_size;
        if text.len() > max {
            return vec![encode::error(
                REFUSED,
                &format!("frame larger than {max} bytes"),
            )];
        }
        match command::parse(text) {
            Ok(Command::Ping) => vec![encode::event("pusher:pong", None, &json!({}))],
            Ok(Command::Pong) => Vec::new(),
            Ok(Command::Subscribe(args)) => self.pusher_subscribe(args).await,
            Ok(Command::Signin(args)) => self.pusher_signin(args).await,
            Ok(Command::Unsubscribe { channel }) => {
                if let Some(channel) = self.herald_channel(&channel) {
                    self.sub.unsubscribe(&channel);
                    if let Some(p) = self.pusher.as_deref_mut() {
                        p.members.remove(&channel);
                        p.resuming.remove(&channel);
                    }
                }
                Vec::new()
            }
            Ok(Command::ClientEvent {
                event,
                channel,
                data,
            }) => match self.client_event(event, &channel, &data).await {
                Ok(()) => Vec::new(),
                Err((code, message)) => vec![encode::error(code, &message)],
            },
            Ok(Command::Unsupported(event)) => vec![encode::error(
                REFUSED,
                &format!("{event} is not supported by this server"),
            )],
            Err(invalid) => vec![encode::error(REFUSED, &invalid.0)],
        }
    }

    fn app(&self) -> Option<Arc<crate::state::PusherApp>> {
        self.pusher.as_ref().map(|p| Arc::clone(p.slot.app()))
    }

    /// The Herald channel of the app's channel `name`, if it can be one
    /// (Herald's names lack Pusher's `,` and `;`, and are shorter).
    fn herald_channel(&self, name: &str) -> Option<ChannelName> {
        let app = self.app()?;
        name::herald_channel(&app.prefix, name).ok()
    }

    /// `pusher:signin`: the app's backend signed `user_data` (with an
    /// `id`) for this socket. The connection is then that user's: it may
    /// follow `#server-to-user-{id}` (which pusher-js subscribes next),
    /// and `terminate_connections` closes it. Once per connection.
    async fn pusher_signin(&mut self, args: command::Signin) -> Vec<Bytes> {
        let Some(app) = self.app() else {
            return Vec::new();
        };
        let fail = |code: Code, message: String| vec![encode::error(code, &message)];
        let signed = crate::access::pusher::user_auth_ok(
            &app.app.key,
            &app.app.secret,
            self.client(),
            &args.user_data,
            &args.auth,
        );
        if !signed {
            return fail(
                UNAUTHORIZED,
                "invalid signature for pusher:signin: expected HMAC SHA256 hex digest of \
                 socket_id::user::user_data"
                    .into(),
            );
        }
        let Ok(data) = serde_json::from_str::<UserData>(&args.user_data) else {
            return fail(
                UNAUTHORIZED,
                "user_data must be a JSON object with an id".into(),
            );
        };
        let Some(id) = user_id(data.id) else {
            return fail(
                UNAUTHORIZED,
                "user_data's id must be a non-empty string or a number".into(),
            );
        };
        let user = name::herald_user(&app.prefix, &id);
        if herald_core::user::user_channel(&user).is_err() {
            return fail(
                REFUSED,
                format!("user id {id:?} cannot be served: letters, digits and _ - = @ . : only"),
            );
        }
        let current = self
            .pusher
            .as_ref()
            .and_then(|p| p.user.as_deref().map(str::to_string));
        match current {
            Some(same) if same == id => {}
            Some(other) => {
                return fail(
                    REFUSED,
                    format!("this connection is signed in as {other:?} already"),
                )
            }
            None => {
                if !self.sub.attach_user(&user) {
                    return fail(REFUSED, "this connection belongs to a user already".into());
                }
                if let Some(who) = self.who.as_mut() {
                    who.identity.user = Some(Arc::from(user.as_str()));
                }
                if let Some(p) = self.pusher.as_deref_mut() {
                    p.user = Some(Arc::from(id.as_str()));
                }
            }
        }
        vec![encode::event(
            "pusher:signin_success",
            None,
            &json!({ "user_data": args.user_data }),
        )]
    }

    async fn pusher_subscribe(&mut self, args: command::Subscribe) -> Vec<Bytes> {
        let Some(app) = self.app() else {
            return Vec::new();
        };
        let name = args.channel;
        let fail = |code: Code, message: String| vec![encode::error(code, &message)];
        let channel = match name::herald_channel(&app.prefix, &name) {
            Ok(channel) => channel,
            Err(message) => return fail(REFUSED, message),
        };
        if name::is_user_channel(&channel) {
            let mine = self
                .pusher
                .as_ref()
                .and_then(|p| p.user.as_deref())
                .map(|u| format!("{}{u}", name::USER_CHANNEL) == name);
            if mine != Some(true) {
                return fail(
                    UNAUTHORIZED,
                    format!("{name} is another user's: sign in (pusher:signin) as that user first"),
                );
            }
        }
        let presence = name.starts_with("presence-");
        let mut member = None;
        if presence || name.starts_with("private-") {
            let Some(auth) = args.auth.as_deref() else {
                return fail(UNAUTHORIZED, format!("{name} needs auth"));
            };
            let data = if presence {
                let Some(data) = args.channel_data.as_deref() else {
                    return fail(UNAUTHORIZED, format!("{name} needs channel_data"));
                };
                Some(data)
            } else {
                None
            };
            let signed = crate::access::pusher::channel_auth_ok(
                &app.app.key,
                &app.app.secret,
                self.client(),
                &name,
                data,
                auth,
            );
            if !signed {
                return fail(
                    UNAUTHORIZED,
                    format!("invalid signature for {name}: expected HMAC SHA256 hex digest of socket_id:channel{}", if presence { ":channel_data" } else { "" }),
                );
            }
            if let Some(data) = data {
                let Ok(m) = serde_json::from_str::<Member>(data) else {
                    return fail(
                        UNAUTHORIZED,
                        "channel_data must be JSON with a user_id".into(),
                    );
                };
                let Some(user) = user_id(m.user_id) else {
                    return fail(
                        UNAUTHORIZED,
                        "channel_data's user_id must be a non-empty string or a number".into(),
                    );
                };
                member = Some((Arc::<str>::from(user), m.user_info));
            }
            self.grant(&channel);
        }
        if let Some((user, info)) = &member {
            let client = Arc::clone(self.client());
            self.sub.set_client(ClientInfo {
                client,
                user: Some(Arc::clone(user)),
                info: info.clone().map(Arc::new),
            });
        }
        let cache = name
            .trim_start_matches("private-encrypted-")
            .trim_start_matches("private-")
            .trim_start_matches("presence-")
            .starts_with("cache-");
        // The resume helper's point: after it, with a gap event if history
        // no longer reaches it. Without the helper: Pusher's behaviour.
        let resume = match args.herald_since.as_deref() {
            None => None,
            Some(text) => match text.parse::<herald_core::MessageId>() {
                Ok(id) => Some(id),
                Err(_) => {
                    return fail(
                        REFUSED,
                        format!("herald_since {text:?} is not a Herald message id"),
                    )
                }
            },
        };
        let (since, miss) = if let Some(id) = resume {
            (Since::After(id), false)
        } else if cache {
            match self
                .state
                .node
                .engine
                .history(&channel, Since::Earliest)
                .await
            {
                Ok(page) => match page.messages.len() {
                    0 => (Since::Live, true),
                    1 => (Since::Earliest, false),
                    n => (Since::After(page.messages[n - 2].id), false),
                },
                Err(e) => return fail(OVER_CAPACITY, e.to_string()),
            }
        } else {
            (Since::Live, false)
        };
        if let Some(p) = self.pusher.as_deref_mut() {
            if resume.is_some() {
                p.resuming.insert(channel.clone());
            } else {
                p.resuming.remove(&channel);
            }
        }
        if let Err(refused) = self.subscribe(channel.clone(), since).await {
            let code = match refused.code {
                Refusal::Forbidden | Refusal::TokenRequired | Refusal::Denied => UNAUTHORIZED,
                Refusal::EngineUnavailable => OVER_CAPACITY,
                _ => REFUSED,
            };
            return fail(code, format!("{name}: {}", refused.message));
        }
        let data = if presence {
            match self.members_of(&channel).await {
                Ok(data) => data,
                Err(message) => return fail(OVER_CAPACITY, message),
            }
        } else {
            json!({})
        };
        let mut out = vec![encode::event(
            "pusher_internal:subscription_succeeded",
            Some(&name),
            &data,
        )];
        if miss {
            out.push(encode::event("pusher:cache_miss", Some(&name), &json!({})));
            // Webhook hook (protocol/pusher/webhook.rs).
            self.webhook_cache_miss(&channel).await;
        }
        out
    }

    /// The presence channel's members now (`{"presence":{ids,hash,count}}`),
    /// remembered for the notices that follow.
    async fn members_of(&mut self, channel: &ChannelName) -> Result<serde_json::Value, String> {
        let entries = self
            .state
            .node
            .engine
            .presence(channel)
            .await
            .map_err(|e| e.to_string())?;
        let me = self.sub.client().clone();
        let mut members: HashMap<Arc<str>, Arc<str>> = HashMap::new();
        let mut hash = serde_json::Map::new();
        let mut ids = Vec::new();
        for e in entries.iter().chain(std::iter::once(&me)) {
            let Some(user) = &e.user else { continue };
            members.insert(Arc::clone(&e.client), Arc::clone(user));
            if !hash.contains_key(&**user) {
                ids.push(user.to_string());
                hash.insert(
                    user.to_string(),
                    e.info
                        .as_deref()
                        .cloned()
                        .unwrap_or(serde_json::Value::Null),
                );
            }
        }
        if let Some(p) = self.pusher.as_deref_mut() {
            p.members.insert(channel.clone(), members);
        }
        Ok(json!({"presence": {"ids": ids, "hash": hash, "count": ids.len()}}))
    }

    /// The session may follow `channel` (a private namespace): the app
    /// signed it for this socket.
    fn grant(&mut self, channel: &ChannelName) {
        if let Some(who) = self.who.as_mut() {
            let mut grants: Vec<Grant> = who.identity.grants.to_vec();
            grants.push(Grant::Exact(channel.as_str().to_string()));
            who.identity.grants = grants.into();
        }
    }

    /// A `client-` event: on a private or presence channel this
    /// connection follows, when the app allows them, within the
    /// connection's publish rate. Published through the engine (every
    /// node's subscribers get it, history keeps it) with this socket id,
    /// so that the sender does not get its own.
    async fn client_event(
        &mut self,
        event: String,
        name: &str,
        data: &serde_json::value::RawValue,
    ) -> Result<(), (Code, String)> {
        let app = self.app().ok_or((REFUSED, String::new()))?;
        if !app.app.client_events {
            return Err((
                UNAUTHORIZED,
                "client events are not enabled for this app (client_events in [[pusher.apps]])"
                    .into(),
            ));
        }
        if !(name.starts_with("private-") || name.starts_with("presence-")) {
            return Err((
                UNAUTHORIZED,
                format!(
                    "client events are only allowed on private and presence channels, not {name}"
                ),
            ));
        }
        let channel = self
            .herald_channel(name)
            .filter(|c| self.sub.is_subscribed(c))
            .ok_or_else(|| (UNAUTHORIZED, format!("not subscribed to {name}")))?;
        let max = app.app.max_event_size.min(self.state.config.max_payload);
        if data.get().len() > max {
            return Err((REFUSED, format!("event data larger than {max} bytes")));
        }
        if !self.may_publish_now() {
            return Err((RATE_LIMITED, RATE_LIMITED.message.into()));
        }
        let user = self
            .pusher
            .as_ref()
            .and_then(|p| p.members.get(&channel)?.get(&*p.socket_id).cloned());
        let mut stored = json!({"event": event, "data": data, "socket_id": &**self.client()});
        if let Some(user) = user {
            stored["user_id"] = (&*user).into();
        }
        let payload =
            Payload::json(Bytes::from(stored.to_string())).map_err(|e| (REFUSED, e.to_string()))?;
        let published = self
            .state
            .node
            .engine
            .publish(&channel, payload)
            .await
            .map_err(|e| (OVER_CAPACITY, e.to_string()))?;
        self.state.counters.published(&published, true);
        // Webhook hook (protocol/pusher/webhook.rs).
        self.webhook_client_event(&channel, &stored).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, FileConfig, Overrides};
    use tokio_util::sync::CancellationToken;

    fn state() -> AppState {
        let file: FileConfig = toml::from_str(
            "[[pusher.apps]]\nid = \"1\"\nkey = \"key\"\nsecret = \"secret-secret\"\nclient_events = true",
        )
        .expect("toml");
        let config = Config::resolve(file, Overrides::default()).expect("config");
        let node = herald_core::Node::memory(config.namespaces.clone());
        AppState::new(node, config, CancellationToken::new()).expect("state")
    }

    fn session(state: &AppState) -> Session {
        let app = state.pusher_by_key("key").expect("app");
        let slot = app.take_slot().expect("slot");
        Session::pusher(state.clone(), slot, admission::Admitted::anonymous())
    }

    fn json(bytes: &Bytes) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("json")
    }

    async fn ask(s: &mut Session, frame: serde_json::Value) -> Vec<serde_json::Value> {
        s.handle_pusher(frame.to_string().as_bytes())
            .await
            .iter()
            .map(json)
            .collect()
    }

    fn auth(s: &Session, channel: &str, data: Option<&str>) -> String {
        let text = match data {
            Some(d) => format!("{}:{channel}:{d}", s.client()),
            None => format!("{}:{channel}", s.client()),
        };
        format!(
            "key:{}",
            crate::access::pusher::sign("secret-secret", &text)
        )
    }

    /// The next item that has a Pusher form.
    async fn next(s: &mut Session) -> serde_json::Value {
        loop {
            let item = s.sub.next().await;
            let Some((state, _)) = s.pusher_parts() else {
                panic!("a Pusher session")
            };
            if let Some(Push::Frame(frame)) = state.push(item) {
                return json(&frame);
            }
        }
    }

    #[tokio::test]
    async fn connect_subscribe_and_auth() {
        let state = state();
        let mut s = session(&state);
        let hello = json(&s.pusher_open().await);
        assert_eq!(hello["event"], "pusher:connection_established");
        let data: serde_json::Value =
            serde_json::from_str(hello["data"].as_str().expect("string data")).expect("json");
        let id = data["socket_id"].as_str().expect("socket id");
        let (a, b) = id.split_once('.').expect("N.N");
        assert!(a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok());
        let r = ask(&mut s, json!({"event":"pusher:ping","data":{}})).await;
        assert_eq!(r[0]["event"], "pusher:pong");
        let r = ask(
            &mut s,
            json!({"event":"pusher:subscribe","data":{"channel":"news"}}),
        )
        .await;
        assert_eq!(r[0]["event"], "pusher_internal:subscription_succeeded");
        assert_eq!(r[0]["channel"], "news");
        let r = ask(
            &mut s,
            json!({"event":"pusher:subscribe","data":{"channel":"private-x","auth":"key:00"}}),
        )
        .await;
        assert_eq!(r[0]["event"], "pusher:error");
        assert_eq!(r[0]["data"]["code"], 4009);
        let good = auth(&s, "private-x", None);
        let r = ask(
            &mut s,
            json!({"event":"pusher:subscribe","data":{"channel":"private-x","auth":good}}),
        )
        .await;
        assert_eq!(r[0]["event"], "pusher_internal:subscription_succeeded");
        let r = ask(
            &mut s,
            json!({"event":"pusher:subscribe","data":{"channel":"a,b"}}),
        )
        .await;
        assert_eq!(r[0]["data"]["code"], 4300);
        let r = s.handle_pusher(b"{oops").await;
        assert_eq!(json(&r[0])["data"]["code"], 4300);
        // A Herald publish to the mapped channel reaches the subscriber.
        let channel = ChannelName::new("pusher:1:news").expect("channel");
        let payload = Payload::json(Bytes::from_static(br#"{"t":1}"#)).expect("json");
        state
            .node
            .engine
            .publish(&channel, payload)
            .await
            .expect("published");
        let got = next(&mut s).await;
        assert_eq!(
            (got["event"].as_str(), got["channel"].as_str()),
            (Some("message"), Some("news"))
        );
        assert!(got["herald_id"].is_string());
    }

    #[tokio::test]
    async fn presence_members_client_events_and_cache() {
        let state = state();
        let mut a = session(&state);
        let mut b = session(&state);
        let sub = |s: &Session, user: &str| {
            let data = json!({"user_id": user, "user_info": {"name": user}}).to_string();
            json!({"event":"pusher:subscribe","data":{"channel":"presence-room","auth":auth(s, "presence-room", Some(&data)),"channel_data":data}})
        };
        let frame = sub(&a, "ann");
        let r = ask(&mut a, frame).await;
        let data: serde_json::Value =
            serde_json::from_str(r[0]["data"].as_str().expect("data")).expect("json");
        assert_eq!(data["presence"]["count"], 1);
        assert_eq!(data["presence"]["hash"]["ann"]["name"], "ann");
        let frame = sub(&b, "bob");
        let r = ask(&mut b, frame).await;
        let data: serde_json::Value =
            serde_json::from_str(r[0]["data"].as_str().expect("data")).expect("json");
        assert_eq!(data["presence"]["count"], 2);
        let added = next(&mut a).await;
        assert_eq!(added["event"], "pusher_internal:member_added");
        assert!(added["data"].as_str().expect("data").contains("bob"));
        // A client event reaches the others, not its sender.
        let r = ask(
            &mut b,
            json!({"event":"client-typing","channel":"presence-room","data":{"x":1}}),
        )
        .await;
        assert!(r.is_empty(), "{r:?}");
        let got = next(&mut a).await;
        assert_eq!(
            (got["event"].as_str(), got["user_id"].as_str()),
            (Some("client-typing"), Some("bob"))
        );
        let r = ask(
            &mut b,
            json!({"event":"client-x","channel":"news","data":{}}),
        )
        .await;
        assert_eq!(r[0]["data"]["code"], 4009);
        drop(b);
        let removed = next(&mut a).await;
        assert_eq!(removed["event"], "pusher_internal:member_removed");
        // cache-: a miss, then the last event on a later subscribe.
        let r = ask(
            &mut a,
            json!({"event":"pusher:subscribe","data":{"channel":"cache-c"}}),
        )
        .await;
        assert_eq!(r[1]["event"], "pusher:cache_miss");
        let channel = ChannelName::new("pusher:1:cache-c").expect("channel");
        for n in 1..=3 {
            let stored = json!({"event":"e","data":n.to_string()}).to_string();
            let payload = Payload::json(Bytes::from(stored)).expect("json");
            state
                .node
                .engine
                .publish(&channel, payload)
                .await
                .expect("published");
        }
        let mut c = session(&state);
        let r = ask(
            &mut c,
            json!({"event":"pusher:subscribe","data":{"channel":"cache-c"}}),
        )
        .await;
        assert_eq!(r.len(), 1);
        assert_eq!(next(&mut c).await["data"], "3");
    }

    fn user_auth(s: &Session, user_data: &str) -> String {
        let text = format!("{}::user::{user_data}", s.client());
        format!(
            "key:{}",
            crate::access::pusher::sign("secret-secret", &text)
        )
    }

    #[tokio::test]
    async fn signin_user_channel_and_terminate() {
        let state = state();
        let mut s = session(&state);
        let _ = s.pusher_open().await;
        // Before sign-in the user channel is no one's.
        let r = ask(
            &mut s,
            json!({"event":"pusher:subscribe","data":{"channel":"#server-to-user-ann"}}),
        )
        .await;
        assert_eq!(r[0]["data"]["code"], 4009, "{r:?}");
        let data = r#"{"id":"ann","user_info":{"n":1}}"#;
        let r = ask(
            &mut s,
            json!({"event":"pusher:signin","data":{"auth":"key:00","user_data":data}}),
        )
        .await;
        assert_eq!(r[0]["data"]["code"], 4009, "a forged signature: {r:?}");
        let good = user_auth(&s, data);
        let r = ask(
            &mut s,
            json!({"event":"pusher:signin","data":{"auth":good,"user_data":data}}),
        )
        .await;
        assert_eq!(r[0]["event"], "pusher:signin_success", "{r:?}");
        let r = ask(
            &mut s,
            json!({"event":"pusher:subscribe","data":{"channel":"#server-to-user-bob"}}),
        )
        .await;
        assert_eq!(r[0]["data"]["code"], 4009, "another user's channel: {r:?}");
        let r = ask(
            &mut s,
            json!({"event":"pusher:subscribe","data":{"channel":"#server-to-user-ann"}}),
        )
        .await;
        assert_eq!(r[0]["event"], "pusher_internal:subscription_succeeded");
        // An event to the user, as `sendToUser` triggers it.
        let channel = ChannelName::new("user:pusher:1:ann").expect("channel");
        let stored = json!({"event":"note","data":"\"hi\""}).to_string();
        let payload = Payload::json(Bytes::from(stored)).expect("json");
        state
            .node
            .engine
            .publish_to_user(&channel, payload)
            .await
            .expect("published");
        let got = next(&mut s).await;
        assert_eq!(
            (got["event"].as_str(), got["channel"].as_str()),
            (Some("note"), Some("#server-to-user-ann"))
        );
        // A second sign-in as someone else is refused; the same is fine.
        let other = r#"{"id":"bob"}"#;
        let auth = user_auth(&s, other);
        let r = ask(
            &mut s,
            json!({"event":"pusher:signin","data":{"auth":auth,"user_data":other}}),
        )
        .await;
        assert_eq!(r[0]["data"]["code"], 4300, "{r:?}");
        // terminate_connections: the user's connections are told to close.
        state
            .node
            .engine
            .disconnect_user(&channel, disconnect::FORCED)
            .await
            .expect("disconnect");
        loop {
            let item = s.sub.next().await;
            if let Item::Disconnect(why) = item {
                assert_eq!(close_for(why), UNAUTHORIZED);
                break;
            }
        }
    }

    #[tokio::test]
    async fn resume_from_herald_since() {
        let state = state();
        let channel = ChannelName::new("pusher:1:feed").expect("channel");
        let mut ids = Vec::new();
        for n in 1..=3 {
            let stored = json!({"event":"e","data":n.to_string()}).to_string();
            let payload = Payload::json(Bytes::from(stored)).expect("json");
            let published = state
                .node
                .engine
                .publish(&channel, payload)
                .await
                .expect("published");
            ids.push(published.message.id.to_string());
        }
        let mut s = session(&state);
        let r = ask(
            &mut s,
            json!({"event":"pusher:subscribe","data":{"channel":"feed","herald_since":ids[0]}}),
        )
        .await;
        assert_eq!(r[0]["event"], "pusher_internal:subscription_succeeded");
        for (n, id) in [(2, &ids[1]), (3, &ids[2])] {
            let got = next(&mut s).await;
            assert_eq!(got["data"], n.to_string());
            assert_eq!(got["herald_id"].as_str(), Some(id.as_str()));
        }
        // A point history does not reach: the gap event, then what is kept.
        let mut t = session(&state);
        let old = herald_core::MessageId::new(1, 1).to_string();
        let _ = ask(
            &mut t,
            json!({"event":"pusher:subscribe","data":{"channel":"feed","herald_since":old}}),
        )
        .await;
        let got = next(&mut t).await;
        assert_eq!(
            (got["event"].as_str(), got["channel"].as_str()),
            (Some(GAP_EVENT), Some("feed"))
        );
        let r = ask(
            &mut t,
            json!({"event":"pusher:subscribe","data":{"channel":"feed2","herald_since":"x"}}),
        )
        .await;
        assert_eq!(r[0]["data"]["code"], 4300);
    }

    #[test]
    fn codes_are_in_their_ranges() {
        for c in ALL {
            assert!((4000..4400).contains(&c.code), "{c:?}");
        }
        assert_eq!(close_for(disconnect::SHUTDOWN), RECONNECT);
        assert_eq!(close_for(disconnect::SLOW_CONSUMER), OVER_CAPACITY);
        assert_eq!(close_for(disconnect::NORMAL).code, 1000);
        assert!(check_protocol(Some("7")).is_ok());
        assert_eq!(check_protocol(None), Err(NO_VERSION));
        assert_eq!(check_protocol(Some("x")), Err(BAD_VERSION));
        assert_eq!(check_protocol(Some("99")), Err(UNSUPPORTED_VERSION));
    }
}
