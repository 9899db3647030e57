//! Occupancy: who holds a user, a channel or a presence member, and the
//! events of a real change (`user.online`/`user.offline`,
//! `channel.occupied`/`channel.vacated`, `channel.member_added`/
//! `channel.member_removed`), each once, debounced by a grace period.
//!
//! A **member** is a (channel, user) pair: held while the node has a
//! presence entry of the user on the channel (any of the user's
//! connections), from the hub's member index ([`Hub::member_joined`]). It
//! goes through the same machine as users and channels, so a user whose
//! connections come and go on a presence channel, on any node, is added
//! once and removed once, after the grace.
//!
//! **What the hub says.** The [`Hub`] knows when this node's first
//! connection of a user opens and its last one closes (its user index),
//! and when a channel's first local subscriber comes and its last one goes
//! (its channel map): whenever such an entry is created or removed, it
//! calls its [`Occupancy`] watcher with the key, after releasing its own
//! locks. The watcher is *level-triggered*: it is told only that the key
//! may have changed, and reads what the hub holds now
//! ([`Hub::holds`]). A late, repeated or reordered call therefore cannot
//! leave a wrong state: whichever call comes last reads the last state.
//! Only node-level transitions reach the engine, never every connection.
//! Personal channels (`user:{id}`) are users, not channels: they make no
//! channel events ([`tracked`]).
//!
//! **The state machine** (per key, cluster-wide on Redis):
//!
//! ```text
//!   Offline --held--> Online            (records user.online / channel.occupied)
//!   Online --released--> Leaving(since)
//!   Leaving --held--> Online            (silent: back within the grace)
//!   Leaving --grace passed--> Offline   (records user.offline / channel.vacated,
//!                                         time_ms = since)
//! ```
//!
//! [`LocalOccupancy`] is the memory engine's (one node); the Redis engine
//! keeps the same machine in Redis, one Lua script per transition (its
//! `occupancy` module). Both record into the engine's outbox in the same
//! step as the transition, so an event is recorded exactly once per change.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::channel::ChannelName;
use crate::event::{
    event_json, EventCounts, EventOptions, EventOutbox, CHANNEL_OCCUPIED, CHANNEL_VACATED,
    MEMBER_ADDED, MEMBER_REMOVED, USER_OFFLINE, USER_ONLINE,
};
use crate::hub::Hub;
use crate::user::channel_user;

/// A key whose local holding may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held<'a> {
    /// A user, by personal channel (`user:{id}`): held while this node has
    /// a connection of the user.
    User(&'a ChannelName),
    /// A channel: held while this node has a subscriber of it.
    Channel(&'a ChannelName),
    /// A user on a presence channel: held while this node has a presence
    /// entry of the user there.
    Member(&'a ChannelName, &'a str),
}

impl Held<'_> {
    /// The user id or channel name the event names (a member's channel).
    pub fn name(&self) -> &str {
        match self {
            Held::User(c) => channel_user(c).unwrap_or(c.as_str()),
            Held::Channel(c) | Held::Member(c, _) => c.as_str(),
        }
    }

    /// The event's fields naming it: `user`, `channel`, or both.
    pub fn fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut fields = serde_json::Map::new();
        match self {
            Held::User(_) => {
                fields.insert("user".to_owned(), self.name().into());
            }
            Held::Channel(c) => {
                fields.insert("channel".to_owned(), c.as_str().into());
            }
            Held::Member(c, user) => {
                fields.insert("channel".to_owned(), c.as_str().into());
                fields.insert("user".to_owned(), (*user).into());
            }
        }
        fields
    }

    /// The events of arriving and of leaving.
    pub fn events(&self) -> (&'static str, &'static str) {
        match self {
            Held::User(_) => (USER_ONLINE, USER_OFFLINE),
            Held::Channel(_) => (CHANNEL_OCCUPIED, CHANNEL_VACATED),
            Held::Member(..) => (MEMBER_ADDED, MEMBER_REMOVED),
        }
    }

    /// The personal channel, the channel, or the member's channel.
    pub fn channel(&self) -> &ChannelName {
        match self {
            Held::User(c) | Held::Channel(c) | Held::Member(c, _) => c,
        }
    }
}

/// Whether `held` is tracked with these options: one of its kind's events
/// is recorded (for its channel, see [`EventOptions::scopes`]), and it is
/// not a personal channel taken as a channel.
pub fn tracked(held: Held<'_>, options: &EventOptions) -> bool {
    let (arrival, departure) = held.events();
    let wanted = |c: &ChannelName| {
        options.records_for(arrival, c.as_str()) || options.records_for(departure, c.as_str())
    };
    match held {
        Held::User(_) => options.tracks_users(),
        Held::Channel(c) => channel_user(c).is_none() && wanted(c),
        Held::Member(c, _) => wanted(c),
    }
}

/// Whether `event` of `held` is recorded: a user's when it is recorded at
/// all, a channel's or member's for its channel's scope.
pub fn records(held: Held<'_>, event: &str, options: &EventOptions) -> bool {
    match held {
        Held::User(_) => options.records(event),
        Held::Channel(c) | Held::Member(c, _) => options.records_for(event, c.as_str()),
    }
}

/// What the hub calls when a key's local holding may have changed (see the
/// module docs). Called without any hub lock held, from whatever thread
/// changed the hub (a connection's task, a publisher): it must not wait.
pub trait Occupancy: Send + Sync {
    fn changed(&self, hub: &Hub, held: Held<'_>);
}

/// One key's state; absent means offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Online,
    /// Released at `since` (ms); gone once the grace has passed.
    Leaving(u64),
}

/// Shards of a tracker's states.
const SHARDS: usize = 64;

/// The states of one kind of key (a channel name, or a member's channel
/// and user), and the keys leaving in the order they left.
struct Tracker<K> {
    /// Per-key state, sharded: connections of different users rarely meet
    /// on one lock. Held for a transition only; under it the hub's shard
    /// lock (to read what it holds) and the outbox lock may be taken, never
    /// the other way round.
    states: Box<[Mutex<HashMap<K, State>>]>,
    hasher: RandomState,
    /// (key, since), oldest first: the grace is one duration, so this is
    /// also deadline order and the sweep only looks at its front. An entry
    /// whose key came back (or left again later) is stale and skipped. It
    /// holds one entry per departure within the last grace period.
    leaving: Mutex<VecDeque<(K, u64)>>,
}

impl<K: Hash + Eq + Clone> Tracker<K> {
    fn new() -> Self {
        Self {
            states: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            leaving: Mutex::new(VecDeque::new()),
        }
    }

    fn shard(&self, key: &K) -> &Mutex<HashMap<K, State>> {
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        &self.states[i]
    }

    /// Applies `present` to `key`'s state (the hub read under the shard's
    /// lock, by `present`); true when the arrival is to be recorded.
    fn apply(&self, key: &K, present: impl FnOnce() -> bool, now_ms: u64) -> bool {
        let mut shard = self.shard(key).lock();
        match (shard.get(key).copied(), present()) {
            (None, true) => {
                shard.insert(key.clone(), State::Online);
                true
            }
            (Some(State::Leaving(_)), true) => {
                // Back within the grace: no event pair.
                shard.insert(key.clone(), State::Online);
                false
            }
            (Some(State::Online), false) => {
                shard.insert(key.clone(), State::Leaving(now_ms));
                self.leaving.lock().push_back((key.clone(), now_ms));
                false
            }
            _ => false,
        }
    }

    /// The keys whose grace has passed by `now_ms`, taken offline, with
    /// when they left.
    fn due(&self, grace: u64, now_ms: u64) -> Vec<(K, u64)> {
        let due: Vec<(K, u64)> = {
            let mut leaving = self.leaving.lock();
            let mut due = Vec::new();
            while leaving
                .front()
                .is_some_and(|(_, since)| since.saturating_add(grace) <= now_ms)
            {
                due.extend(leaving.pop_front());
            }
            due
        };
        due.into_iter()
            .filter(|(key, since)| {
                let mut shard = self.shard(key).lock();
                let gone = shard.get(key) == Some(&State::Leaving(*since));
                if gone {
                    shard.remove(key);
                }
                gone
            })
            .collect()
    }
}

/// The memory engine's occupancy: the state machine of the module docs,
/// for one node.
pub struct LocalOccupancy {
    options: EventOptions,
    outbox: Arc<EventOutbox>,
    counts: Arc<EventCounts>,
    users: Tracker<ChannelName>,
    channels: Tracker<ChannelName>,
    members: Tracker<(ChannelName, Arc<str>)>,
}

impl LocalOccupancy {
    pub fn new(options: EventOptions, outbox: Arc<EventOutbox>, counts: Arc<EventCounts>) -> Self {
        Self {
            options,
            outbox,
            counts,
            users: Tracker::new(),
            channels: Tracker::new(),
            members: Tracker::new(),
        }
    }

    fn record(&self, held: Held<'_>, event: &'static str, time_ms: u64) {
        if !records(held, event, &self.options) {
            return;
        }
        let mut fields = held.fields();
        fields.insert("time_ms".to_owned(), time_ms.into());
        self.outbox.push(event_json(event, fields, time_ms));
        self.counts.add(event, 1);
    }

    /// Applies what the hub holds now to `held`'s state, at `now_ms`. The
    /// hub is read under the state's lock: the last call to take it reads
    /// the hub's last state (see the module docs).
    fn apply(&self, hub: &Hub, held: Held<'_>, now_ms: u64) {
        let present = || hub.holds(held);
        let arrived = match held {
            Held::User(c) => self.users.apply(c, present, now_ms),
            Held::Channel(c) => self.channels.apply(c, present, now_ms),
            Held::Member(c, user) => {
                self.members
                    .apply(&(c.clone(), Arc::from(user)), present, now_ms)
            }
        };
        if arrived {
            self.record(held, held.events().0, now_ms);
        }
    }

    /// Turns the keys whose grace has passed by `now_ms` offline, recording
    /// their events (called from the engine's sweep, about once a second).
    pub fn sweep(&self, now_ms: u64) {
        let grace = self.options.grace_ms();
        // Members before channels: a channel's last member goes no later
        // than the channel, so its removal comes before the vacancy.
        for (key, since) in self.users.due(grace, now_ms) {
            self.record(Held::User(&key), USER_OFFLINE, since);
        }
        for ((channel, user), since) in self.members.due(grace, now_ms) {
            self.record(Held::Member(&channel, &user), MEMBER_REMOVED, since);
        }
        for (key, since) in self.channels.due(grace, now_ms) {
            self.record(Held::Channel(&key), CHANNEL_VACATED, since);
        }
    }
}

impl Occupancy for LocalOccupancy {
    fn changed(&self, hub: &Hub, held: Held<'_>) {
        if !tracked(held, &self.options) {
            return;
        }
        self.apply(hub, held, crate::engine::now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::RecordedEvent;

    fn setup(grace_ms: u64) -> (Arc<Hub>, Arc<LocalOccupancy>, Arc<EventOutbox>) {
        let hub = Arc::new(Hub::new());
        let outbox = Arc::new(EventOutbox::new(1, 100));
        let options = EventOptions {
            grace: std::time::Duration::from_millis(grace_ms),
            ..EventOptions::default()
        };
        let occ = Arc::new(LocalOccupancy::new(
            options,
            Arc::clone(&outbox),
            Arc::default(),
        ));
        hub.watch(occ.clone());
        (hub, occ, outbox)
    }

    fn events(outbox: &EventOutbox) -> Vec<serde_json::Value> {
        outbox
            .pending(100)
            .iter()
            .map(|RecordedEvent { json, .. }| serde_json::from_str(json).expect("json"))
            .collect()
    }

    fn user(id: &str) -> ChannelName {
        crate::user::user_channel(id).expect("valid")
    }

    #[test]
    fn a_user_goes_online_once_and_offline_after_the_grace() {
        let (hub, occ, outbox) = setup(1_000);
        let ann = user("ann");
        let (a, _ra) = hub.user_outbox(4, Some(ann.clone()));
        let (b, _rb) = hub.user_outbox(4, Some(ann.clone()));
        hub.forget(&a);
        let e = events(&outbox);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            (e[0]["event"].clone(), e[0]["user"].clone()),
            ("user.online".into(), "ann".into())
        );
        hub.forget(&b);
        let left = crate::engine::now_ms();
        occ.sweep(left);
        assert_eq!(events(&outbox).len(), 1, "not before the grace");
        occ.sweep(left + 2_000);
        let e = events(&outbox);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[1]["event"], "user.offline");
        assert!(e[1]["time_ms"].as_u64().is_some_and(|t| t <= left));
        occ.sweep(left + 10_000);
        assert_eq!(events(&outbox).len(), 2, "once");
    }

    #[test]
    fn a_return_within_the_grace_is_silent_and_a_later_leave_counts_from_then() {
        let (hub, occ, outbox) = setup(1_000);
        let ann = user("ann");
        let (a, _ra) = hub.user_outbox(4, Some(ann.clone()));
        hub.forget(&a);
        let (b, _rb) = hub.user_outbox(4, Some(ann.clone()));
        occ.sweep(crate::engine::now_ms() + 5_000);
        assert_eq!(events(&outbox).len(), 1, "online only: the flap was silent");
        hub.forget(&b);
        occ.sweep(crate::engine::now_ms() + 5_000);
        let e = events(&outbox);
        assert_eq!(e.len(), 2);
        assert_eq!(e[1]["event"], "user.offline");
    }

    #[test]
    fn channels_are_occupied_and_vacated_but_personal_channels_are_not() {
        let (hub, occ, outbox) = setup(0);
        let room = ChannelName::new("room").expect("valid");
        let mine = user("ann");
        let (a, _ra) = hub.outbox(4);
        let (b, _rb) = hub.outbox(4);
        hub.add(&room, &a);
        hub.add(&room, &b);
        hub.add(&mine, &a);
        hub.remove(&room, a.id());
        hub.remove(&room, b.id());
        hub.remove(&mine, a.id());
        occ.sweep(crate::engine::now_ms() + 1);
        let e = events(&outbox);
        let names: Vec<_> = e
            .iter()
            .map(|v| v["event"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(names, ["channel.occupied", "channel.vacated"]);
        assert!(e.iter().all(|v| v["channel"] == "room"));
    }

    #[test]
    fn a_channel_closed_by_the_hub_is_vacated() {
        let (hub, occ, outbox) = setup(0);
        let room = ChannelName::new("room").expect("valid");
        let (a, _ra) = hub.outbox(4);
        hub.add(&room, &a);
        hub.close_channel(&room, crate::disconnect::CHANNEL_DELETED);
        occ.sweep(crate::engine::now_ms() + 1);
        assert_eq!(events(&outbox).len(), 2);
    }

    #[test]
    fn a_scoped_event_tracks_only_its_channels() {
        let hub = Arc::new(Hub::new());
        let outbox = Arc::new(EventOutbox::new(1, 100));
        let options = EventOptions {
            events: [CHANNEL_OCCUPIED.to_owned(), MEMBER_ADDED.to_owned()].into(),
            scopes: [
                (CHANNEL_OCCUPIED.to_owned(), vec!["pusher:1:".to_owned()]),
                (MEMBER_ADDED.to_owned(), vec!["pusher:1:".to_owned()]),
            ]
            .into(),
            ..EventOptions::default()
        };
        let occ = Arc::new(LocalOccupancy::new(
            options,
            Arc::clone(&outbox),
            Arc::default(),
        ));
        hub.watch(occ.clone());
        let (a, _ra) = hub.outbox(4);
        for name in ["room", "pusher:1:presence-x", "pusher:2:presence-x"] {
            let channel = ChannelName::new(name).expect("valid");
            hub.add(&channel, &a);
            let entry = crate::presence::ClientInfo {
                client: Arc::from("c1"),
                user: Some(Arc::from("u")),
                info: None,
            };
            hub.member_joined(&channel, &entry);
        }
        let e = events(&outbox);
        let got: Vec<(String, String)> = e
            .iter()
            .map(|v| (v["event"].to_string(), v["channel"].to_string()))
            .collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            e.iter().all(|v| v["channel"] == "pusher:1:presence-x"),
            "{got:?}"
        );
        assert!(e
            .iter()
            .any(|v| v["event"] == MEMBER_ADDED && v["user"] == "u"));
    }
}
