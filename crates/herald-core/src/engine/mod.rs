//! The engine seam: where messages are stored and how they reach every node.
//!
//! An engine assigns ids, keeps history and makes sure every node's [`Hub`]
//! gets each message once, in id order per channel. [`MemoryEngine`] does all
//! of that inside one process; a Redis engine does it across many nodes.
//! Everything above this seam (the node, the transports) is the same for
//! both.
//!
//! The seam is six traits, one per concern, and [`Engine`], which is
//! implemented for every type that implements all six (so a node holds one
//! `Arc<dyn Engine>` and calls any of them):
//!
//! - [`Broker`]: publish (also with an idempotency key), history, stats,
//!   remove, follow/unfollow, sweep, subscriber counts and slots;
//! - [`PresenceStore`]: join, leave, list;
//! - [`UserQueues`]: publish to a user, take a user's offline queue,
//!   disconnect a user;
//! - [`Mailboxes`]: acknowledged user mailboxes (see [`crate::mailbox`]);
//! - [`Claims`]: single-use keys;
//! - [`EventLog`]: the outbox of events for webhooks (record, lease,
//!   read, mark done; see [`crate::event`] and [`crate::occupancy`]).
//!
//! What every engine must do is tested once, by the contract suite in
//! `herald_core::testing::contract` (cargo feature `testing`), which both
//! engines' tests run.
//!
//! [`Hub`]: crate::hub::Hub

mod memory;

use std::sync::Arc;

use async_trait::async_trait;

use crate::channel::ChannelName;
use crate::disconnect::Disconnect;
use crate::event::{EventOptions, OutboxStats, RecordedEvent};
use crate::history::HistoryPage;
use crate::id::{MessageId, Since};
use crate::mailbox::{Ack, Acked, MailboxRead, MailboxState};
use crate::message::{Message, Payload};
use crate::presence::PresenceEntry;

pub use memory::{MemoryEngine, MAX_IDEMPOTENCY_KEYS};

/// Why an engine could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The storage behind the engine cannot be reached; try again later.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The storage answered with something this engine did not write.
    #[error("engine data is corrupt: {0}")]
    Corrupt(String),
}

/// The result of a publish.
#[derive(Debug, Clone)]
pub struct Published {
    pub message: Arc<Message>,
    /// Subscribers of the channel when it was published, on every node
    /// (Redis: the other nodes' counts are up to a sweep old, see its docs).
    /// For a duplicate, the channel's subscribers now.
    pub subscribers: usize,
    /// True when an idempotency key matched an earlier publish: nothing was
    /// stored or delivered, and `message` carries the earlier id and time.
    pub duplicate: bool,
}

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Whether `key` is a usable idempotency key: 1 to
/// [`MAX_IDEMPOTENCY_KEY_LEN`] printable ASCII characters (space to `~`).
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&key.len())
        && key.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// A place among a channel's `max_subscribers`, held by one subscription;
/// dropping it gives the place back (on every node). See
/// [`Broker::claim_subscriber_slot`].
pub struct SubscriberSlot {
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl SubscriberSlot {
    /// A slot that runs `release` once when dropped.
    pub fn new(release: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self {
            release: Some(Box::new(release)),
        }
    }
}

impl Drop for SubscriberSlot {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl std::fmt::Debug for SubscriberSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubscriberSlot")
    }
}

/// A user's offline queue as taken by [`UserQueues::take_user_queue`].
#[derive(Debug, Clone, Default)]
pub struct UserQueue {
    /// Oldest first.
    pub messages: Vec<Arc<Message>>,
    /// True when messages were dropped from the queue (it overflowed its
    /// size, or messages aged past its TTL) since it was last taken: the
    /// user must hear of the gap, as a channel resume would say it.
    pub gap: bool,
}

/// What `GET /pub/{channel}` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Messages retained.
    pub messages: usize,
    /// The newest id, retained or not, if known.
    pub last_id: Option<MessageId>,
}

/// A node sharing an engine, as the engine's registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's identity in the registry.
    pub id: String,
    /// Whether it is the node asking.
    pub this: bool,
    /// When its registration expires unless it beats again (ms since the
    /// Unix epoch).
    pub expires_at_ms: u64,
}

/// Messages: ids, history, live fan-out to every node's hub, subscriber
/// counts and `max_subscribers` places.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Short name for logs and metrics (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Whether the engine can serve now, for readiness probes. The memory
    /// engine always can; a networked engine checks its store is reachable.
    async fn ready(&self) -> Result<(), EngineError> {
        Ok(())
    }

    /// The nodes sharing this engine that are alive now, for the admin
    /// page: an engine shared by many nodes lists them (this one marked);
    /// an engine of one node (memory) answers an empty list.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        Ok(Vec::new())
    }

    /// How long the engine's commands to its store take, for metrics; an
    /// engine with no store (memory) has none.
    fn command_latency(&self) -> Option<&crate::histogram::Histogram> {
        None
    }

    /// Stores a message and delivers it to every node's subscribers. Answers
    /// only once the message is stored.
    async fn publish(
        &self,
        channel: &ChannelName,
        payload: Payload,
    ) -> Result<Published, EngineError>;

    /// As [`Broker::publish`], unless a publish to the same channel with the
    /// same `key` (see [`valid_idempotency_key`]) was stored less than
    /// `window_ms` ago: then nothing is stored or delivered and the answer is
    /// the earlier message's id and time with `duplicate` set. The check and
    /// the store are one atomic step on every node.
    async fn publish_idempotent(
        &self,
        channel: &ChannelName,
        payload: Payload,
        key: &str,
        window_ms: u64,
    ) -> Result<Published, EngineError>;

    /// Retained messages after `since`, with the gap flag (see [`crate::history`]).
    async fn history(
        &self,
        channel: &ChannelName,
        since: Since,
    ) -> Result<HistoryPage, EngineError>;

    /// The channel's newest id (as `history` with [`Since::Live`] gives it)
    /// and its newest retained message, if any: `messages` holds at most
    /// that one and `gap` is false. One read, so that a subscribe with
    /// `latest_on_subscribe` costs no more round trips than a live one.
    async fn latest(&self, channel: &ChannelName) -> Result<HistoryPage, EngineError>;

    async fn stats(&self, channel: &ChannelName) -> Result<ChannelStats, EngineError>;

    /// Drops the channel's history and closes its subscribers on every node.
    async fn remove(&self, channel: &ChannelName) -> Result<(), EngineError>;

    /// A local connection now follows `channel`; when this returns, every
    /// message published afterwards reaches this node's hub.
    async fn follow(&self, channel: &ChannelName) -> Result<(), EngineError>;

    /// No local connection follows `channel` any more.
    fn unfollow(&self, channel: &ChannelName);

    /// Housekeeping (expiring history), called about once a second.
    fn sweep(&self, _now_ms: u64) {}

    /// Subscribers of `channel` on every node (`GET /pub/{channel}`).
    async fn subscriber_count(&self, channel: &ChannelName) -> Result<usize, EngineError>;

    /// The channels whose name starts with `prefix` that have a subscriber
    /// on some node, sorted, at most `max` of them (another node's are
    /// seen as fresh as its subscriber counts: engine-specific).
    async fn occupied_channels(
        &self,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<ChannelName>, EngineError>;

    /// Takes one of `channel`'s `max` subscriber places, atomically across
    /// every node, or answers `None` when all are taken. The place is held
    /// until the slot is dropped; an engine must give back the places of a
    /// node that died, within a bounded time.
    async fn claim_subscriber_slot(
        &self,
        channel: &ChannelName,
        max: usize,
    ) -> Result<Option<SubscriberSlot>, EngineError>;
}

/// Who is on a channel, on every node, and the join/leave notices.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Records a connection's presence on `channel`; with `notify`, every
    /// subscriber of the channel (on every node) gets a join notice.
    async fn presence_join(
        &self,
        channel: &ChannelName,
        entry: &PresenceEntry,
        notify: bool,
    ) -> Result<(), EngineError>;

    /// Removes it (called when a connection ends, so it must not block;
    /// engines that need I/O do it in the background). An engine must also
    /// drop the entries of a node that died, within a bounded time.
    fn presence_leave(&self, channel: &ChannelName, entry: &PresenceEntry, notify: bool);

    /// Everyone present on `channel`, on every node.
    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, EngineError>;
}

/// Personal channels: offline queues and closing a user's connections.
#[async_trait]
pub trait UserQueues: Send + Sync + 'static {
    /// Publishes on a user's personal channel; when no connection of the
    /// user follows it anywhere, the message is also queued (bounded by the
    /// channel's history limits) for the user's next subscribe.
    async fn publish_to_user(
        &self,
        channel: &ChannelName,
        payload: Payload,
    ) -> Result<UserPublished, EngineError>;

    /// Takes (and empties) a user's offline queue, oldest first, with
    /// whether messages were dropped from it.
    async fn take_user_queue(&self, channel: &ChannelName) -> Result<UserQueue, EngineError>;

    /// Closes every connection of a user (by personal channel) on every node.
    async fn disconnect_user(
        &self,
        channel: &ChannelName,
        why: Disconnect,
    ) -> Result<(), EngineError>;
}

/// Acknowledged user mailboxes, shared by every node (see
/// [`crate::mailbox`] for the rules).
#[async_trait]
pub trait Mailboxes: Send + Sync + 'static {
    /// Publishes on a user's personal channel a message to acknowledge: it
    /// is stored in history and in the user's mailbox, then delivered live,
    /// in one step (a subscribe that follows the channel and then reads
    /// the mailbox misses it nowhere). A pending message dropped to make
    /// room is reported (the `user.mailbox_dropped` event) and its gap told
    /// to the user.
    async fn publish_to_mailbox(
        &self,
        channel: &ChannelName,
        payload: Payload,
    ) -> Result<UserPublished, EngineError>;

    /// Every message pending in a user's mailbox, oldest first, and whether
    /// it dropped messages no client heard of (the mark is taken).
    async fn read_mailbox(&self, channel: &ChannelName) -> Result<MailboxRead, EngineError>;

    /// Removes what `ack` covers from a user's mailbox, for every
    /// connection of the user.
    async fn ack(&self, channel: &ChannelName, ack: &Ack) -> Result<Acked, EngineError>;

    /// A mailbox's pending count and oldest message, for the backend.
    async fn mailbox_state(&self, channel: &ChannelName) -> Result<MailboxState, EngineError>;
}

/// Single-use keys shared by every node.
#[async_trait]
pub trait Claims: Send + Sync + 'static {
    /// Marks `key` as used for `ttl_ms`; false if it already was (single-use
    /// tickets), on every node.
    async fn claim_once(&self, key: &str, ttl_ms: u64) -> Result<bool, EngineError>;
}

/// The outbox of events for webhooks (see [`crate::event`]). An engine
/// built without [`EventOptions`] records nothing and its outbox stays
/// empty.
///
/// Delivery, cluster-wide: one node at a time holds the **lease**
/// ([`EventLog::delivery_lease`]) and delivers; it reads the oldest events
/// ([`EventLog::pending_events`]), posts them, and marks them done
/// ([`EventLog::events_done`]), which takes them out of the outbox. A node
/// that dies stops renewing its lease and another takes over when it
/// expires, from the oldest event not yet done.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// The events recorded, or `None` when none are (no webhooks).
    fn event_options(&self) -> Option<&EventOptions>;

    /// Appends `event` with `fields` to the outbox (its JSON is
    /// `{"event", "time_ms", ...fields}`, see [`crate::event::event_json`]),
    /// after every event recorded before it. Does nothing when `event` is
    /// not among the configured events. Never waits for a receiver; a full
    /// outbox drops its oldest event.
    async fn record_event(
        &self,
        event: &str,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), EngineError>;

    /// Takes or renews this node's right to deliver, for `ttl`: true for
    /// one node at a time. An engine of one node always has it.
    async fn delivery_lease(&self, ttl: std::time::Duration) -> Result<bool, EngineError>;

    /// Up to `max` events, oldest first; they stay in the outbox until done.
    async fn pending_events(&self, max: usize) -> Result<Vec<RecordedEvent>, EngineError>;

    /// Takes these events (delivered or given up) out of the outbox.
    async fn events_done(&self, ids: &[String]) -> Result<(), EngineError>;

    /// How full the outbox is (cluster-wide on a shared engine).
    async fn outbox_stats(&self) -> Result<OutboxStats, EngineError>;

    /// Waits up to `max` for an event to be recorded (an engine that cannot
    /// tell just waits a polling interval, at most `max`).
    async fn wait_for_events(&self, max: std::time::Duration);

    /// Events this node recorded, by name (configured events at 0 included).
    fn recorded_events(&self) -> Vec<(String, u64)>;
}

/// Everything a [`Node`](crate::node::Node) needs from its engine, held as
/// one `Arc<dyn Engine>`. Implemented for every type that implements the
/// six parts.
pub trait Engine: Broker + PresenceStore + UserQueues + Mailboxes + Claims + EventLog {}

impl<T: Broker + PresenceStore + UserQueues + Mailboxes + Claims + EventLog + ?Sized> Engine for T {}

/// The result of [`UserQueues::publish_to_user`].
#[derive(Debug, Clone)]
pub struct UserPublished {
    pub published: Published,
    /// True when the user had no connection and the message was queued.
    pub queued: bool,
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
