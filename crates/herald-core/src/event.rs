//! Events for webhooks: what an engine records in its **outbox**, and the
//! memory engine's outbox.
//!
//! An event is a JSON object `{"event": NAME, "time_ms": WHEN, ...fields}`
//! appended to the engine's outbox; the outbox gives each one an id, unique
//! and increasing in outbox order. The server's webhook sender
//! (`herald-server`, `access/webhook.rs`) takes them oldest first, posts
//! them, and marks them done ([`EventLog`](crate::engine::EventLog)).
//! Nothing is recorded when webhooks are not configured: an engine without
//! [`EventOptions`] keeps no outbox and tracks nothing.
//!
//! Herald's own events ([`EVENTS`]) come from the occupancy tracking (see
//! [`crate::occupancy`]); other engine code may append any event with
//! [`EventLog::record_event`](crate::engine::EventLog::record_event).
//!
//! [`EventOutbox`] is the memory engine's outbox: one bounded queue.
//! Overflow policy: when it holds [`EventOptions::capacity`] events, the
//! oldest is dropped (and counted, [`OutboxStats::dropped`]) to make room;
//! recording never waits, so no connection ever blocks on a webhook
//! receiver that is down.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// A user's first connection opened (on any node).
pub const USER_ONLINE: &str = "user.online";
/// A user's last connection closed, and no new one came within the grace.
pub const USER_OFFLINE: &str = "user.offline";
/// A channel got its first subscriber (on any node).
pub const CHANNEL_OCCUPIED: &str = "channel.occupied";
/// A channel lost its last subscriber, and no new one came within the grace.
pub const CHANNEL_VACATED: &str = "channel.vacated";
/// A user's mailbox dropped pending messages unacknowledged (overflow or
/// expiry; see [`crate::mailbox`]): `{"user", "ids", "reason"}`.
pub const USER_MAILBOX_DROPPED: &str = "user.mailbox_dropped";

/// A user's first presence entry on a channel was made (on any node):
/// `{"channel", "user"}`. Recorded for the Pusher apps' `member_added`
/// webhook; not one of `[webhooks] events`.
pub const MEMBER_ADDED: &str = "channel.member_added";
/// A user's last presence entry on a channel ended, and no new one came
/// within the grace: `{"channel", "user"}` (Pusher's `member_removed`).
pub const MEMBER_REMOVED: &str = "channel.member_removed";
/// A Pusher client sent a `client-` event: `{"channel", "event_name",
/// "data", "socket_id", "user_id"?}` (the Herald channel name; `event` is
/// the outbox event's own name).
pub const PUSHER_CLIENT_EVENT: &str = "pusher.client_event";
/// A Pusher client subscribed to a `cache-` channel holding no event:
/// `{"channel"}` (the Herald channel name).
pub const PUSHER_CACHE_MISS: &str = "pusher.cache_miss";

/// Every event of Herald's own webhooks, in the order the docs list them.
/// The `[webhooks] events` setting names a subset (all of them by
/// default). The member and `pusher.` events above are recorded only for
/// the Pusher apps' webhooks.
pub const EVENTS: &[&str] = &[
    USER_ONLINE,
    USER_OFFLINE,
    CHANNEL_OCCUPIED,
    CHANNEL_VACATED,
    USER_MAILBOX_DROPPED,
];

/// Events an outbox holds at most unless configured otherwise.
pub const DEFAULT_OUTBOX_CAPACITY: usize = 100_000;
/// How long a user or channel may be away before it counts as gone.
pub const DEFAULT_PRESENCE_GRACE: Duration = Duration::from_secs(5);

/// What an engine records, when webhooks are configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOptions {
    /// The events recorded; any other is not (not even counted).
    pub events: BTreeSet<String>,
    /// A user who reconnects, or a channel re-occupied, within this after
    /// leaving makes no event pair (`presence_grace`).
    pub grace: Duration,
    /// Events the outbox holds at most (see the module docs).
    pub capacity: usize,
    /// Channel events recorded only for some channels: event name → the
    /// channel prefixes it is recorded for (a Pusher app's `pusher:{id}:`
    /// when only the app wants it). An event not listed is recorded for
    /// every channel. So Pusher apps' webhooks never make Herald track
    /// the occupancy of channels nobody asked about.
    pub scopes: BTreeMap<String, Vec<String>>,
}

impl Default for EventOptions {
    /// Every event, the default grace and capacity.
    fn default() -> Self {
        Self {
            events: EVENTS.iter().map(|e| (*e).to_owned()).collect(),
            grace: DEFAULT_PRESENCE_GRACE,
            capacity: DEFAULT_OUTBOX_CAPACITY,
            scopes: BTreeMap::new(),
        }
    }
}

impl EventOptions {
    /// Whether `event` is recorded.
    pub fn records(&self, event: &str) -> bool {
        self.events.contains(event)
    }

    /// Whether `event` is recorded for `channel` (its scope, if it has one).
    pub fn records_for(&self, event: &str, channel: &str) -> bool {
        self.records(event)
            && self
                .scopes
                .get(event)
                .is_none_or(|prefixes| prefixes.iter().any(|p| channel.starts_with(p.as_str())))
    }

    /// Whether users' connections are tracked (some user event is recorded).
    pub fn tracks_users(&self) -> bool {
        self.records(USER_ONLINE) || self.records(USER_OFFLINE)
    }

    /// Whether channels' subscribers are tracked.
    pub fn tracks_channels(&self) -> bool {
        self.records(CHANNEL_OCCUPIED) || self.records(CHANNEL_VACATED)
    }

    /// Whether presence members ((channel, user) pairs) are tracked.
    pub fn tracks_members(&self) -> bool {
        self.records(MEMBER_ADDED) || self.records(MEMBER_REMOVED)
    }

    /// The grace in whole milliseconds.
    pub fn grace_ms(&self) -> u64 {
        u64::try_from(self.grace.as_millis()).unwrap_or(u64::MAX)
    }
}

/// One event as the outbox holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Unique and increasing in outbox order (on Redis, the stream id).
    pub id: String,
    /// The event's JSON object, without `id`.
    pub json: String,
}

/// How full an outbox is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Events waiting to be delivered.
    pub len: usize,
    /// Events dropped because the outbox was full (oldest first).
    pub dropped: u64,
}

/// Events recorded by this node, by name (for metrics). A lock, not
/// atomics: names are open-ended, and it is taken once per recorded event
/// (a connection's arrival or departure at most), never per message.
#[derive(Debug, Default)]
pub struct EventCounts(Mutex<BTreeMap<String, u64>>);

impl EventCounts {
    /// Counts `n` more `event`s.
    pub fn add(&self, event: &str, n: u64) {
        if n == 0 {
            return;
        }
        let mut counts = self.0.lock();
        match counts.get_mut(event) {
            Some(count) => *count += n,
            None => {
                counts.insert(event.to_owned(), n);
            }
        }
    }

    /// Every count, with a zero for each configured event not seen yet.
    pub fn snapshot(&self, options: &EventOptions) -> Vec<(String, u64)> {
        let mut all: BTreeMap<String, u64> =
            options.events.iter().map(|e| (e.clone(), 0)).collect();
        for (event, n) in self.0.lock().iter() {
            all.insert(event.clone(), *n);
        }
        all.into_iter().collect()
    }
}

/// The JSON object of an event: `{"event", "time_ms", ...fields}`. A
/// `time_ms` in `fields` is kept (the caller knows when it happened);
/// otherwise it is `now_ms`. An `event` or `id` in `fields` is ignored:
/// the name is `event`'s, the id the outbox's.
pub fn event_json(
    event: &str,
    mut fields: serde_json::Map<String, serde_json::Value>,
    now_ms: u64,
) -> String {
    fields.remove("id");
    fields.insert("event".to_owned(), serde_json::Value::from(event));
    fields
        .entry("time_ms")
        .or_insert_with(|| serde_json::Value::from(now_ms));
    serde_json::Value::Object(fields).to_string()
}

/// The memory engine's outbox (see the module docs for its overflow
/// policy). Ids are `<start_ms>-<seq>`, as message ids are: unique and
/// increasing within a run.
pub struct EventOutbox {
    epoch_ms: u64,
    capacity: usize,
    /// Held to push, read or pop only: never across an `.await`, and no
    /// other lock is taken under it (it is the innermost of the engine's).
    queue: Mutex<Queue>,
    /// Woken when an event is recorded (the sender waits on it).
    recorded: Notify,
}

#[derive(Default)]
struct Queue {
    /// (seq, JSON), oldest first.
    events: VecDeque<(u64, String)>,
    next: u64,
    dropped: u64,
}

impl EventOutbox {
    pub fn new(epoch_ms: u64, capacity: usize) -> Self {
        Self {
            epoch_ms,
            capacity: capacity.max(1),
            queue: Mutex::new(Queue {
                next: 1,
                ..Queue::default()
            }),
            recorded: Notify::new(),
        }
    }

    /// Appends an event's JSON, dropping the oldest when full.
    pub fn push(&self, json: String) {
        {
            let mut q = self.queue.lock();
            if q.events.len() >= self.capacity {
                q.events.pop_front();
                q.dropped += 1;
            }
            let seq = q.next;
            q.next += 1;
            q.events.push_back((seq, json));
        }
        self.recorded.notify_one();
    }

    /// Up to `max` events, oldest first, left in the outbox.
    pub fn pending(&self, max: usize) -> Vec<RecordedEvent> {
        self.queue
            .lock()
            .events
            .iter()
            .take(max)
            .map(|(seq, json)| RecordedEvent {
                id: format!("{}-{seq}", self.epoch_ms),
                json: json.clone(),
            })
            .collect()
    }

    /// Drops the events with these ids (delivered or given up). Only the
    /// oldest are ever done, so this pops from the front up to the newest
    /// of them.
    pub fn done(&self, ids: &[String]) {
        let newest = ids
            .iter()
            .filter_map(|id| id.rsplit_once('-')?.1.parse::<u64>().ok())
            .max();
        let Some(newest) = newest else { return };
        let mut q = self.queue.lock();
        while q.events.front().is_some_and(|(seq, _)| *seq <= newest) {
            q.events.pop_front();
        }
        if q.events.is_empty() && q.events.capacity() > 1024 {
            // A backlog was delivered: give its memory back.
            q.events = VecDeque::new();
        }
    }

    pub fn stats(&self) -> OutboxStats {
        let q = self.queue.lock();
        OutboxStats {
            len: q.events.len(),
            dropped: q.dropped,
        }
    }

    /// Waits until an event is recorded (or one was since the last wait),
    /// at most `max`.
    pub async fn wait(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.recorded.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts_it() {
        let outbox = EventOutbox::new(7, 2);
        for n in 1..=3 {
            outbox.push(format!("{{\"n\":{n}}}"));
        }
        let pending = outbox.pending(10);
        let ids: Vec<_> = pending.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["7-2", "7-3"]);
        assert_eq!(outbox.stats(), OutboxStats { len: 2, dropped: 1 });
        outbox.done(&[pending[0].id.clone()]);
        assert_eq!(outbox.pending(10)[0].id, "7-3");
        outbox.done(&["7-3".to_owned()]);
        assert_eq!(outbox.stats().len, 0);
    }

    #[test]
    fn the_json_names_the_event_and_keeps_a_given_time() {
        let mut fields = serde_json::Map::new();
        fields.insert("user".into(), "ann".into());
        fields.insert("id".into(), "forged".into());
        let v: serde_json::Value =
            serde_json::from_str(&event_json(USER_ONLINE, fields.clone(), 5)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"event": "user.online", "time_ms": 5, "user": "ann"})
        );
        fields.insert("time_ms".into(), 3.into());
        let v: serde_json::Value =
            serde_json::from_str(&event_json("x.y", fields, 5)).expect("json");
        assert_eq!(v["time_ms"], 3);
        assert_eq!(v["event"], "x.y");
    }

    #[test]
    fn counts_list_every_configured_event() {
        let counts = EventCounts::default();
        counts.add(USER_ONLINE, 2);
        counts.add("custom", 1);
        let all = counts.snapshot(&EventOptions::default());
        assert!(all.contains(&(USER_ONLINE.to_owned(), 2)));
        assert!(all.contains(&(CHANNEL_VACATED.to_owned(), 0)));
        assert!(all.contains(&("custom".to_owned(), 1)));
    }
}
