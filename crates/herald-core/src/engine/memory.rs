//! The in-memory engine: one process, no dependencies. The default.
//!
//! Ids are `START_MS-SEQ`: the process start time and a process-wide counter,
//! so ids never repeat within a run and every id of an earlier run sorts
//! before this run's ids (resuming from one is reported as a gap).
//!
//! Per channel, one mutex orders everything: taking the id, appending to
//! history and handing the message to the hub happen under it, so every
//! subscriber sees a channel's messages in id order.
//!
//! Idempotency keys live in the channel's entry too, checked and recorded
//! under the same lock as the publish, so two publishes racing with one key
//! store one message. Each channel remembers at most
//! [`MAX_IDEMPOTENCY_KEYS`] keys: past that the oldest is forgotten early
//! (a retry with it would be stored again). A channel deleted with
//! `DELETE /pub/{channel}` forgets its keys.
//!
//! Subscriber slots (`max_subscribers`) are one counter per channel, taken
//! and given back under its shard's lock: exact, and nothing to reclaim
//! since every slot lives in this process.
//!
//! Events (only with [`EventOptions`], i.e. webhooks configured): the hub's
//! occupancy watcher is a [`LocalOccupancy`], which records into an
//! [`EventOutbox`] in this process; the sweep turns what left more than
//! the grace ago offline. The outbox dies with the process: events not
//! delivered by then are lost, among them the offline events of the
//! connections a shutdown ends (the node stops before their grace passes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{now_ms, Broker, ChannelStats, Claims, EngineError, PresenceStore, Published};
use super::{EventLog, Mailboxes, SubscriberSlot, UserPublished, UserQueue, UserQueues};
use crate::channel::ChannelName;
use crate::disconnect::Disconnect;
use crate::disconnect::CHANNEL_DELETED;
use crate::event::{
    event_json, EventCounts, EventOptions, EventOutbox, OutboxStats, RecordedEvent,
};
use crate::history::{unknown_channel_page, History, HistoryPage};
use crate::hub::Hub;
use crate::id::{MessageId, Since};
use crate::mailbox::{Ack, Acked, Dropped, LocalMailboxes, MailboxRead, MailboxState};
use crate::message::{Message, Payload};
use crate::namespace::Namespaces;
use crate::occupancy::LocalOccupancy;
use crate::presence::{LocalPresence, Notice, NoticeKind, PresenceEntry};
use crate::sharded::{Shard, Sharded};
use crate::user::{LocalQueues, QueueLimits};

/// Idempotency keys one channel remembers at most.
pub const MAX_IDEMPOTENCY_KEYS: usize = 10_000;

/// A channel's recent idempotency keys, oldest first (one window for the
/// whole server, so insertion order is expiry order).
#[derive(Default)]
struct Keys {
    by_key: std::collections::HashMap<String, (MessageId, u64, u64)>,
    /// (key, expires_ms), oldest first; an entry whose expiry differs from
    /// the map's is stale (the key was recorded again).
    order: std::collections::VecDeque<(String, u64)>,
}

impl Keys {
    fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The earlier (id, time) of `key`, if still within its window.
    fn get(&self, key: &str, now: u64) -> Option<(MessageId, u64)> {
        self.by_key
            .get(key)
            .filter(|(_, _, expires)| *expires > now)
            .map(|(id, time, _)| (*id, *time))
    }

    fn insert(&mut self, key: &str, id: MessageId, time: u64, expires: u64) {
        self.by_key.insert(key.to_owned(), (id, time, expires));
        self.order.push_back((key.to_owned(), expires));
        while self.order.len() > MAX_IDEMPOTENCY_KEYS {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((key, expires)) = self.order.pop_front() {
            if self.by_key.get(&key).is_some_and(|e| e.2 == expires) {
                self.by_key.remove(&key);
            }
        }
    }

    fn expire(&mut self, now: u64) {
        while self
            .order
            .front()
            .is_some_and(|(_, expires)| *expires <= now)
        {
            self.pop_front();
        }
    }
}

#[derive(Default)]
struct Channel {
    history: History,
    idempotency: Keys,
    /// Set when the entry was taken out of the map; a publisher holding a
    /// stale `Arc` must look the channel up again.
    removed: bool,
}

type Entry = Arc<Mutex<Channel>>;

pub struct MemoryEngine {
    hub: Arc<Hub>,
    namespaces: Arc<Namespaces>,
    epoch_ms: u64,
    seq: AtomicU64,
    channels: Sharded<Entry>,
    presence: LocalPresence,
    queues: LocalQueues,
    mailboxes: LocalMailboxes,
    /// Subscriber slots taken per channel (`max_subscribers`).
    slots: Arc<Sharded<usize>>,
    /// Used single-use keys and when they may be forgotten (ms).
    claims: Mutex<std::collections::HashMap<String, u64>>,
    /// Only when events are recorded (webhooks configured).
    events: Option<Events>,
}

/// The memory engine's events: the outbox, the occupancy the hub reports
/// to, and what this node recorded.
struct Events {
    options: EventOptions,
    outbox: Arc<EventOutbox>,
    occupancy: Arc<LocalOccupancy>,
    counts: Arc<EventCounts>,
}

impl MemoryEngine {
    /// An engine that records no events.
    pub fn new(hub: Arc<Hub>, namespaces: Arc<Namespaces>) -> Self {
        Self::with_events(hub, namespaces, None)
    }

    /// An engine that records `events` (see the module docs), or none.
    /// Installs the hub's occupancy watcher.
    pub fn with_events(
        hub: Arc<Hub>,
        namespaces: Arc<Namespaces>,
        events: Option<EventOptions>,
    ) -> Self {
        let epoch_ms = now_ms();
        let events = events.map(|options| {
            let outbox = Arc::new(EventOutbox::new(epoch_ms, options.capacity));
            let counts = Arc::new(EventCounts::default());
            let occupancy = Arc::new(LocalOccupancy::new(
                options.clone(),
                Arc::clone(&outbox),
                Arc::clone(&counts),
            ));
            hub.watch(occupancy.clone());
            Events {
                options,
                outbox,
                occupancy,
                counts,
            }
        });
        Self {
            hub,
            namespaces,
            epoch_ms,
            seq: AtomicU64::new(1),
            channels: Sharded::new(),
            presence: LocalPresence::default(),
            queues: LocalQueues::default(),
            mailboxes: LocalMailboxes::default(),
            slots: Arc::new(Sharded::new()),
            claims: Mutex::new(std::collections::HashMap::new()),
            events,
        }
    }

    fn shard(&self, channel: &ChannelName) -> &Shard<Entry> {
        self.channels.shard(channel)
    }

    fn get(&self, channel: &ChannelName) -> Option<Arc<Mutex<Channel>>> {
        self.shard(channel).lock().get(channel).cloned()
    }

    /// [`EventLog::record_event`] without the `async`, for this engine's
    /// own code that runs under its locks (the outbox lock is the innermost
    /// of them): appends the event after everything recorded before it, if
    /// it is among the configured events.
    pub fn record_event_now(
        &self,
        event: &str,
        fields: serde_json::Map<String, serde_json::Value>,
    ) {
        if let Some(events) = self.events.as_ref().filter(|e| e.options.records(event)) {
            events.outbox.push(event_json(event, fields, now_ms()));
            events.counts.add(event, 1);
        }
    }

    /// Channels that hold history.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Publishes, or with an idempotency `(key, window_ms)` that was used
    /// within the window answers the earlier publish.
    fn publish_now(
        &self,
        channel: &ChannelName,
        payload: Payload,
        idempotency: Option<(&str, u64)>,
    ) -> Published {
        self.publish_with(channel, payload, idempotency, false)
    }

    /// `publish_now`, with `ack`: also into the user's mailbox, before the
    /// hub delivers it (a subscribe that joins the hub after the delivery
    /// reads the mailbox after this), all under the channel lock.
    fn publish_with(
        &self,
        channel: &ChannelName,
        payload: Payload,
        idempotency: Option<(&str, u64)>,
        ack: bool,
    ) -> Published {
        let options = self.namespaces.options(channel.as_str());
        loop {
            let entry = Arc::clone(
                self.shard(channel)
                    .lock()
                    .entry(channel.clone())
                    .or_default(),
            );
            let mut ch = entry.lock();
            if ch.removed {
                continue;
            }
            let now = now_ms();
            if let Some((key, _)) = idempotency {
                ch.idempotency.expire(now);
                if let Some((id, time)) = ch.idempotency.get(key, now) {
                    drop(ch);
                    return Published {
                        message: Arc::new(Message::new(channel.clone(), id, payload, time)),
                        subscribers: self.hub.count(channel),
                        duplicate: true,
                    };
                }
            }
            let id = MessageId::new(self.epoch_ms, self.seq.fetch_add(1, Ordering::Relaxed));
            if let Some((key, window_ms)) = idempotency {
                ch.idempotency
                    .insert(key, id, now, now.saturating_add(window_ms));
            }
            let message =
                Arc::new(Message::new(channel.clone(), id, payload, now).acknowledged(ack));
            let dropped = if ack {
                let live = self.hub.count(channel) > 0;
                let dropped =
                    self.mailboxes
                        .push(Arc::clone(&message), options.mailbox_limits(), live, now);
                if live && dropped.is_some() {
                    // Before the message: its subscribers hear of the gap first.
                    self.hub.deliver_gap(channel);
                }
                dropped
            } else {
                None
            };
            ch.history.push(
                Arc::clone(&message),
                options.history_size,
                options.history_ttl_ms(),
                now,
            );
            // Still under the channel lock: deliveries leave in id order.
            let subscribers = self.hub.deliver(&message);
            let empty = ch.history.is_empty() && ch.idempotency.is_empty();
            drop(ch);
            if empty {
                self.free_if_empty(channel, &entry);
            }
            if let Some(dropped) = dropped {
                self.report_dropped(&dropped);
            }
            return Published {
                message,
                subscribers,
                duplicate: false,
            };
        }
    }

    /// Tells the backend of pending messages a mailbox dropped.
    fn report_dropped(&self, dropped: &Dropped) {
        tracing::info!(
            channel = dropped.channel.as_str(),
            reason = dropped.reason.as_str(),
            count = dropped.ids.len(),
            "mailbox dropped messages unacknowledged"
        );
        let mut fields = serde_json::Map::new();
        fields.insert(
            "user".into(),
            crate::user::channel_user(&dropped.channel)
                .unwrap_or_default()
                .into(),
        );
        fields.insert(
            "ids".into(),
            dropped.ids.iter().map(|id| id.to_string()).collect(),
        );
        fields.insert("reason".into(), dropped.reason.as_str().into());
        self.record_event_now(crate::event::USER_MAILBOX_DROPPED, fields);
    }

    fn queue_limits(&self, channel: &ChannelName) -> QueueLimits {
        let options = self.namespaces.options(channel.as_str());
        QueueLimits {
            size: options.history_size,
            ttl_ms: options.history_ttl_ms(),
        }
    }

    /// Takes a channel without history out of the map.
    fn free_if_empty(&self, channel: &ChannelName, entry: &Arc<Mutex<Channel>>) {
        let mut shard = self.shard(channel).lock();
        if !shard.get(channel).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            return;
        }
        let mut ch = entry.lock();
        if ch.history.is_empty() && ch.idempotency.is_empty() {
            ch.removed = true;
            drop(ch);
            shard.remove(channel);
        }
    }
}

#[async_trait]
impl Broker for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn publish(
        &self,
        channel: &ChannelName,
        payload: Payload,
    ) -> Result<Published, EngineError> {
        Ok(self.publish_now(channel, payload, None))
    }

    async fn publish_idempotent(
        &self,
        channel: &ChannelName,
        payload: Payload,
        key: &str,
        window_ms: u64,
    ) -> Result<Published, EngineError> {
        Ok(self.publish_now(channel, payload, Some((key, window_ms))))
    }

    async fn history(
        &self,
        channel: &ChannelName,
        since: Since,
    ) -> Result<HistoryPage, EngineError> {
        let Some(entry) = self.get(channel) else {
            return Ok(unknown_channel_page(since));
        };
        let options = self.namespaces.options(channel.as_str());
        let mut ch = entry.lock();
        ch.history
            .trim(options.history_size, options.history_ttl_ms(), now_ms());
        Ok(ch.history.after(since))
    }

    async fn latest(&self, channel: &ChannelName) -> Result<HistoryPage, EngineError> {
        let Some(entry) = self.get(channel) else {
            return Ok(unknown_channel_page(Since::Live));
        };
        let options = self.namespaces.options(channel.as_str());
        let mut ch = entry.lock();
        ch.history
            .trim(options.history_size, options.history_ttl_ms(), now_ms());
        Ok(ch.history.latest())
    }

    async fn stats(&self, channel: &ChannelName) -> Result<ChannelStats, EngineError> {
        let Some(entry) = self.get(channel) else {
            return Ok(ChannelStats::default());
        };
        let ch = entry.lock();
        Ok(ChannelStats {
            messages: ch.history.len(),
            last_id: ch.history.last_id(),
        })
    }

    async fn remove(&self, channel: &ChannelName) -> Result<(), EngineError> {
        if let Some(entry) = self.shard(channel).lock().remove(channel) {
            entry.lock().removed = true;
        }
        self.mailboxes.remove(channel);
        self.hub.close_channel(channel, CHANNEL_DELETED);
        Ok(())
    }

    async fn follow(&self, _channel: &ChannelName) -> Result<(), EngineError> {
        Ok(())
    }

    fn unfollow(&self, _channel: &ChannelName) {}

    async fn subscriber_count(&self, channel: &ChannelName) -> Result<usize, EngineError> {
        Ok(self.hub.count(channel))
    }

    async fn occupied_channels(
        &self,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<ChannelName>, EngineError> {
        let mut found: Vec<ChannelName> = self
            .hub
            .channels()
            .into_iter()
            .filter(|c| c.as_str().starts_with(prefix))
            .collect();
        found.sort();
        found.truncate(max);
        Ok(found)
    }

    async fn claim_subscriber_slot(
        &self,
        channel: &ChannelName,
        max: usize,
    ) -> Result<Option<SubscriberSlot>, EngineError> {
        {
            let mut shard = self.slots.shard(channel).lock();
            let taken = shard.entry(channel.clone()).or_insert(0);
            if *taken >= max {
                if *taken == 0 {
                    shard.remove(channel);
                }
                return Ok(None);
            }
            *taken += 1;
        }
        let slots = Arc::clone(&self.slots);
        let channel = channel.clone();
        Ok(Some(SubscriberSlot::new(move || {
            let mut shard = slots.shard(&channel).lock();
            if let Some(taken) = shard.get_mut(&channel) {
                *taken = taken.saturating_sub(1);
                if *taken == 0 {
                    shard.remove(&channel);
                }
            }
        })))
    }

    fn sweep(&self, now_ms: u64) {
        if let Some(events) = &self.events {
            events.occupancy.sweep(now_ms);
        }
        self.queues.sweep(
            QueueLimits {
                size: usize::MAX,
                ttl_ms: self
                    .namespaces
                    .options(crate::user::USER_PREFIX)
                    .history_ttl_ms(),
            },
            now_ms,
        );
        self.claims.lock().retain(|_, until| *until > now_ms);
        let dropped = self.mailboxes.sweep(
            now_ms,
            |channel| self.namespaces.options(channel.as_str()).mailbox_limits(),
            |channel| self.hub.deliver_gap(channel) > 0,
        );
        for dropped in &dropped {
            self.report_dropped(dropped);
        }
        for shard in self.channels.shards() {
            let mut shard = shard.lock();
            shard.retain(|name, entry| {
                let options = self.namespaces.options(name.as_str());
                let mut ch = entry.lock();
                ch.history
                    .trim(options.history_size, options.history_ttl_ms(), now_ms);
                ch.idempotency.expire(now_ms);
                if ch.history.is_empty() && ch.idempotency.is_empty() {
                    ch.removed = true;
                    false
                } else {
                    true
                }
            });
        }
    }
}

#[async_trait]
impl PresenceStore for MemoryEngine {
    async fn presence_join(
        &self,
        channel: &ChannelName,
        entry: &PresenceEntry,
        notify: bool,
    ) -> Result<(), EngineError> {
        if self.presence.join(channel, entry) {
            self.hub.member_joined(channel, entry);
            if notify {
                self.hub
                    .deliver_notice(&Arc::new(Notice::new(channel, NoticeKind::Join, entry)));
            }
        }
        Ok(())
    }

    fn presence_leave(&self, channel: &ChannelName, entry: &PresenceEntry, notify: bool) {
        self.hub.member_left(channel, entry);
        if self.presence.leave(channel, &entry.client) && notify {
            self.hub
                .deliver_notice(&Arc::new(Notice::new(channel, NoticeKind::Leave, entry)));
        }
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, EngineError> {
        Ok(self.presence.entries(channel))
    }
}

#[async_trait]
impl UserQueues for MemoryEngine {
    async fn publish_to_user(
        &self,
        channel: &ChannelName,
        payload: Payload,
    ) -> Result<UserPublished, EngineError> {
        let published = self.publish_now(channel, payload, None);
        let queued = published.subscribers == 0;
        if queued {
            self.queues.push(
                channel,
                Arc::clone(&published.message),
                self.queue_limits(channel),
                now_ms(),
            );
        }
        Ok(UserPublished { published, queued })
    }

    async fn take_user_queue(&self, channel: &ChannelName) -> Result<UserQueue, EngineError> {
        let taken = self
            .queues
            .take(channel, self.queue_limits(channel), now_ms());
        Ok(UserQueue {
            messages: taken.messages,
            gap: taken.gap,
        })
    }

    async fn disconnect_user(
        &self,
        channel: &ChannelName,
        why: Disconnect,
    ) -> Result<(), EngineError> {
        self.hub.disconnect_user(channel, why);
        Ok(())
    }
}

#[async_trait]
impl Mailboxes for MemoryEngine {
    async fn publish_to_mailbox(
        &self,
        channel: &ChannelName,
        payload: Payload,
    ) -> Result<UserPublished, EngineError> {
        let published = self.publish_with(channel, payload, None, true);
        let queued = published.subscribers == 0;
        Ok(UserPublished { published, queued })
    }

    async fn read_mailbox(&self, channel: &ChannelName) -> Result<MailboxRead, EngineError> {
        Ok(self.mailboxes.read(channel))
    }

    async fn ack(&self, channel: &ChannelName, ack: &Ack) -> Result<Acked, EngineError> {
        Ok(self.mailboxes.ack(channel, ack))
    }

    async fn mailbox_state(&self, channel: &ChannelName) -> Result<MailboxState, EngineError> {
        Ok(self.mailboxes.state(channel))
    }
}

#[async_trait]
impl Claims for MemoryEngine {
    async fn claim_once(&self, key: &str, ttl_ms: u64) -> Result<bool, EngineError> {
        let now = now_ms();
        let mut claims = self.claims.lock();
        if claims.len() > 10_000 {
            claims.retain(|_, until| *until > now);
        }
        match claims.get(key) {
            Some(until) if *until > now => Ok(false),
            _ => {
                claims.insert(key.to_string(), now.saturating_add(ttl_ms));
                Ok(true)
            }
        }
    }
}

#[async_trait]
impl EventLog for MemoryEngine {
    fn event_options(&self) -> Option<&EventOptions> {
        self.events.as_ref().map(|e| &e.options)
    }

    async fn record_event(
        &self,
        event: &str,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), EngineError> {
        self.record_event_now(event, fields);
        Ok(())
    }

    /// One node: always this one.
    async fn delivery_lease(&self, _ttl: std::time::Duration) -> Result<bool, EngineError> {
        Ok(true)
    }

    async fn pending_events(&self, max: usize) -> Result<Vec<RecordedEvent>, EngineError> {
        Ok(self
            .events
            .as_ref()
            .map(|e| e.outbox.pending(max))
            .unwrap_or_default())
    }

    async fn events_done(&self, ids: &[String]) -> Result<(), EngineError> {
        if let Some(events) = &self.events {
            events.outbox.done(ids);
        }
        Ok(())
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, EngineError> {
        Ok(self
            .events
            .as_ref()
            .map(|e| e.outbox.stats())
            .unwrap_or_default())
    }

    async fn wait_for_events(&self, max: std::time::Duration) {
        match &self.events {
            Some(events) => events.outbox.wait(max).await,
            None => tokio::time::sleep(max).await,
        }
    }

    fn recorded_events(&self) -> Vec<(String, u64)> {
        self.events
            .as_ref()
            .map(|e| e.counts.snapshot(&e.options))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn engine() -> MemoryEngine {
        MemoryEngine::new(Arc::new(Hub::new()), Arc::new(Namespaces::default()))
    }

    fn text(t: &'static str) -> Payload {
        Payload::from_bytes(Bytes::from_static(t.as_bytes()))
    }

    #[tokio::test]
    async fn a_key_is_remembered_per_channel_and_bounded() {
        let e = engine();
        let (a, b) = (
            ChannelName::new("a").expect("valid"),
            ChannelName::new("b").expect("valid"),
        );
        let first = e
            .publish_idempotent(&a, text("1"), "k", 60_000)
            .await
            .expect("publish");
        let again = e
            .publish_idempotent(&a, text("1"), "k", 60_000)
            .await
            .expect("publish");
        assert!(!first.duplicate && again.duplicate);
        assert_eq!(first.message.id, again.message.id);
        let other = e
            .publish_idempotent(&b, text("1"), "k", 60_000)
            .await
            .expect("publish");
        assert!(!other.duplicate, "another channel, another message");

        // Past the bound the oldest key is forgotten: it stores again.
        for i in 0..MAX_IDEMPOTENCY_KEYS {
            e.publish_idempotent(&a, text("x"), &format!("fill-{i}"), 60_000)
                .await
                .expect("publish");
        }
        let evicted = e
            .publish_idempotent(&a, text("1"), "k", 60_000)
            .await
            .expect("publish");
        assert!(!evicted.duplicate);
        let kept = e
            .publish_idempotent(
                &a,
                text("x"),
                &format!("fill-{}", MAX_IDEMPOTENCY_KEYS - 1),
                60_000,
            )
            .await
            .expect("publish");
        assert!(kept.duplicate);
    }

    #[tokio::test]
    async fn keys_keep_a_channel_without_history_and_expire() {
        let e = engine();
        let c = ChannelName::new("c").expect("valid");
        let first = e
            .publish_idempotent(&c, text("1"), "k", 1)
            .await
            .expect("publish");
        e.sweep(now_ms() + 10);
        let later = e
            .publish_idempotent(&c, text("1"), "k", 60_000)
            .await
            .expect("publish");
        assert!(!later.duplicate, "the window passed");
        assert_ne!(first.message.id, later.message.id);
    }

    #[tokio::test]
    async fn slots_are_counted_and_given_back() {
        let e = engine();
        let c = ChannelName::new("c").expect("valid");
        let one = e.claim_subscriber_slot(&c, 2).await.expect("claim");
        let two = e.claim_subscriber_slot(&c, 2).await.expect("claim");
        assert!(one.is_some() && two.is_some());
        assert!(e
            .claim_subscriber_slot(&c, 2)
            .await
            .expect("claim")
            .is_none());
        drop(one);
        let three = e.claim_subscriber_slot(&c, 2).await.expect("claim");
        assert!(three.is_some());
        drop((two, three));
        assert_eq!(e.slots.len(), 0, "an unused channel is freed");
    }
}
