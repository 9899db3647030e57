//! Occupancy across nodes: `user.online`/`user.offline`,
//! `channel.occupied`/`channel.vacated` and `channel.member_added`/
//! `channel.member_removed` once per real change, whichever
//! node each connection is on, debounced by the grace (the state machine of
//! [`herald_core::occupancy`], kept in Redis). Only with webhooks
//! configured ([`RedisOptions::events`](crate::RedisOptions::events));
//! otherwise none of this runs.
//!
//! In Redis, per member (`u:<user>`, `c:<channel>`, or `m:<channel>
//! <user>` for a user on a presence channel): the set of count
//! identities holding it (`holders`), per identity the set of members it
//! holds (`nodeholds`, for cleanup), and per kind a sorted set of members
//! held by nobody, scored by when they were released (`leaving`). Every
//! transition is one script, which records its event into the outbox in
//! the same atomic step, so two nodes can never both record one change:
//!
//! - a node's first holding of a member adds its identity to `holders`;
//!   the first holder of a member not leaving records the arrival, one
//!   that is leaving takes it back silently (`occupancy_set`);
//! - a node's last release removes it; the last holder's release puts the
//!   member in `leaving`;
//! - every node's sweep (about once a second) takes the members released
//!   at least the grace ago and records their departure (`occupancy_due`;
//!   the `ZREM` in the script makes each taken once);
//! - a node found dead (its registry entry expired, see the `counts`
//!   module) has its members released by whichever node cleans it up, in
//!   `SPOP` chunks, so two nodes cleaning at once each take a chunk once
//!   (`occupancy_orphans`, from the `upkeep` task); the release is dated
//!   at its last beat, so its users go offline `node_ttl` after it was last
//!   known alive (or the grace after, if that is longer), exactly once.
//!
//! Which node holds what: the hub tells a [`Dirty`] set (its occupancy
//! watcher) that a key may have changed; this node's [`Task`] takes the
//! set, reads what the hub holds *now* and writes the difference to what it
//! last wrote. Level-triggered, it is right whatever the order of the
//! hub's calls, and a write that failed (Redis down, or this identity found
//! expired) is retried at the next sweep. A node that took a new count
//! identity (its old one expired) writes everything it holds again under
//! the new one; the old one is cleaned up as a dead node's.
//!
//! The scripts refuse to write for an identity that is not alive in the
//! registry: a node thought dead and cleaned up can never leave a holder
//! behind that nobody would clean again.
//!
//! Cost, only with webhooks: one script per user's first connection and
//! last departure on a node, the same per channel; per node per sweep one
//! `ZRANGEBYSCORE` per kind tracked; on a node's death, one script per
//! 500 members it held.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use herald_core::event::{EventCounts, EventOptions};
use herald_core::hub::Hub;
use herald_core::occupancy::{records, tracked, Held, Occupancy};
use herald_core::ChannelName;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::Value;
use tokio::sync::Notify;

use crate::call::{bounded, UNLIMITED};
use crate::counts::Counts;
use crate::keys::Keys;
use crate::options::RedisOptions;
use crate::script::{parse_pair, Scripts};

/// Scripts in flight at once per pass.
const IN_FLIGHT: usize = 64;
/// Members one due or orphan script takes at most.
pub const CHUNK: usize = 500;
/// Due scripts per kind per sweep at most (the rest at the next sweep).
const DUE_ROUNDS: usize = 20;

/// A user, a channel or a presence member, as this node tracks it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Member {
    /// By personal channel.
    User(ChannelName),
    Channel(ChannelName),
    /// A user on a presence channel.
    Presence(ChannelName, Arc<str>),
}

impl Member {
    fn of(held: Held<'_>) -> Self {
        match held {
            Held::User(c) => Member::User(c.clone()),
            Held::Channel(c) => Member::Channel(c.clone()),
            Held::Member(c, user) => Member::Presence(c.clone(), Arc::from(user)),
        }
    }

    fn held(&self) -> Held<'_> {
        match self {
            Member::User(c) => Held::User(c),
            Member::Channel(c) => Held::Channel(c),
            Member::Presence(c, user) => Held::Member(c, user),
        }
    }

    fn kind(&self) -> char {
        match self {
            Member::User(_) => 'u',
            Member::Channel(_) => 'c',
            Member::Presence(..) => 'm',
        }
    }

    /// Its name in Redis: `u:<user id>`, `c:<channel>` or `m:<channel>
    /// <user id>` (a channel name has no space; the user id is anything).
    fn redis(&self) -> String {
        match self {
            Member::Presence(c, user) => format!("m:{c} {user}"),
            _ => format!("{}:{}", self.kind(), self.held().name()),
        }
    }
}

/// The keys that may have changed since the task last looked, and the
/// task's wake-up. The hub calls it (as its watcher) from connection tasks
/// and publishers: a set insert and a notify, never a wait. The set holds
/// each key once, so it is bounded by the keys this node holds or just
/// released; in an outage it keeps them until Redis answers again.
pub struct Dirty {
    options: EventOptions,
    keys: Mutex<HashSet<Member>>,
    wake: Notify,
    /// Set by the engine's sweep: the task also retries failures and takes
    /// what is due.
    sweep: AtomicBool,
}

impl Dirty {
    pub fn new(options: EventOptions) -> Self {
        Self {
            options,
            keys: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            sweep: AtomicBool::new(false),
        }
    }

    /// The engine's sweep ran.
    pub fn sweep(&self) {
        self.sweep.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn mark(&self, members: impl IntoIterator<Item = Member>) {
        self.keys.lock().extend(members);
        self.wake.notify_one();
    }

    fn take(&self) -> HashSet<Member> {
        std::mem::take(&mut *self.keys.lock())
    }
}

impl Occupancy for Dirty {
    fn changed(&self, _hub: &Hub, held: Held<'_>) {
        if tracked(held, &self.options) {
            self.mark([Member::of(held)]);
        }
    }
}

/// The node's occupancy writer (see the module docs). Aborted with the
/// engine.
pub struct Task {
    pub conn: ConnectionManager,
    pub keys: Keys,
    pub scripts: Arc<Scripts>,
    pub hub: Arc<Hub>,
    pub counts: Arc<Counts>,
    pub options: RedisOptions,
    pub events: EventOptions,
    pub dirty: Arc<Dirty>,
    pub recorded: Arc<EventCounts>,
}

/// What one write did.
enum Wrote {
    /// Redis holds what the hub holds (`true`: held), and whether an event
    /// was recorded.
    Done(bool, bool),
    /// Not written (Redis unreachable, or the identity not alive): retry.
    Retry,
}

impl Task {
    pub async fn run(self) {
        // Members this node's current identity holds in Redis.
        let mut held: HashSet<Member> = HashSet::new();
        let mut identity: Option<Arc<str>> = None;
        let mut retry: HashSet<Member> = HashSet::new();
        loop {
            self.dirty.wake.notified().await;
            let sweep = self.dirty.sweep.swap(false, Ordering::AcqRel);
            let (id, _) = self.counts.identity();
            if identity.as_ref() != Some(&id) {
                // A fresh identity holds nothing yet: write all again.
                held.clear();
                identity = Some(Arc::clone(&id));
                self.dirty.mark(self.everything());
            }
            let mut todo = self.dirty.take();
            if sweep {
                todo.extend(retry.drain());
            }
            let results = self.write(&id, todo, &held).await;
            for (member, wrote) in results {
                match wrote {
                    Wrote::Done(now_held, event) => {
                        if event {
                            let (arrival, _) = member.held().events();
                            self.recorded.add(arrival, 1);
                        }
                        if now_held {
                            held.insert(member);
                        } else {
                            held.remove(&member);
                        }
                    }
                    Wrote::Retry => {
                        retry.insert(member);
                    }
                }
            }
            if sweep {
                self.due().await;
            }
        }
    }

    /// Every member the hub holds now.
    fn everything(&self) -> Vec<Member> {
        let users = self.hub.users().into_iter().map(Member::User);
        let channels = self.hub.channels().into_iter().map(Member::Channel);
        let members = self
            .hub
            .members()
            .into_iter()
            .map(|(c, user)| Member::Presence(c, user));
        users
            .chain(channels)
            .chain(members)
            .filter(|m| tracked(m.held(), &self.events))
            .collect()
    }

    /// Writes what differs between the hub and `held`, for `todo`.
    async fn write(
        &self,
        identity: &str,
        todo: HashSet<Member>,
        held: &HashSet<Member>,
    ) -> Vec<(Member, Wrote)> {
        let changes: Vec<(Member, bool)> = todo
            .into_iter()
            .filter_map(|m| {
                let want = self.hub.holds(m.held());
                (want != held.contains(&m)).then_some((m, want))
            })
            .collect();
        let failed = std::sync::atomic::AtomicUsize::new(0);
        let results = futures_util::stream::iter(changes)
            .map(|(member, want)| {
                let failed = &failed;
                async move {
                    let wrote = self.set(identity, &member, want).await;
                    if matches!(wrote, Wrote::Retry) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    (member, wrote)
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        let failed = failed.into_inner();
        if failed > 0 {
            tracing::debug!(
                failed,
                "occupancy writes failed; retrying at the next sweep"
            );
        }
        results
    }

    async fn set(&self, identity: &str, member: &Member, want: bool) -> Wrote {
        let name = member.redis();
        let (arrival, _) = member.held().events();
        let record = if want && records(member.held(), arrival, &self.events) {
            arrival
        } else {
            ""
        };
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.occupancy_set.prepare_invoke();
        invocation
            .key(self.keys.nodes())
            .key(self.keys.holders(&name))
            .key(self.keys.node_holds(identity))
            .key(self.keys.leaving(member.kind()))
            .key(self.keys.webhooks())
            .arg(identity)
            .arg(&name)
            .arg(if want { "1" } else { "0" })
            .arg(record)
            .arg(self.capacity());
        match bounded(
            self.options.timeout,
            invocation.invoke_async::<Value>(&mut conn),
        )
        .await
        {
            Ok(Value::Int(-1)) => Wrote::Retry,
            Ok(Value::Int(n)) => Wrote::Done(want, n == 1),
            Ok(_) => {
                tracing::warn!("unexpected occupancy reply");
                Wrote::Retry
            }
            Err(e) => {
                tracing::debug!(error = %e, member = %name, "occupancy write failed");
                Wrote::Retry
            }
        }
    }

    fn capacity(&self) -> u64 {
        u64::try_from(self.events.capacity)
            .unwrap_or(UNLIMITED)
            .clamp(1, UNLIMITED)
    }

    /// Takes what is due of each kind tracked and records its departure.
    async fn due(&self) {
        for (kind, tracks, departure) in [
            (
                'u',
                self.events.tracks_users(),
                herald_core::event::USER_OFFLINE,
            ),
            // Members before channels: a channel's last member goes no
            // later than the channel, so its removal comes first.
            (
                'm',
                self.events.tracks_members(),
                herald_core::event::MEMBER_REMOVED,
            ),
            (
                'c',
                self.events.tracks_channels(),
                herald_core::event::CHANNEL_VACATED,
            ),
        ] {
            if !tracks {
                continue;
            }
            let record = if self.events.records(departure) {
                departure
            } else {
                ""
            };
            for _ in 0..DUE_ROUNDS {
                let mut conn = self.conn.clone();
                let mut invocation = self.scripts.occupancy_due.prepare_invoke();
                invocation
                    .key(self.keys.leaving(kind))
                    .key(self.keys.webhooks())
                    .arg(self.events.grace_ms().min(UNLIMITED))
                    .arg(CHUNK)
                    .arg(self.keys.holders_prefix())
                    .arg(record)
                    .arg(self.capacity());
                let reply = match bounded(
                    self.options.timeout,
                    invocation.invoke_async::<Value>(&mut conn),
                )
                .await
                {
                    Ok(reply) => reply,
                    Err(e) => {
                        tracing::debug!(error = %e, "occupancy sweep failed");
                        return;
                    }
                };
                let Ok((taken, recorded)) = parse_pair(&reply) else {
                    tracing::warn!("unexpected occupancy sweep reply");
                    return;
                };
                self.recorded.add(departure, recorded);
                if taken < CHUNK as u64 {
                    break;
                }
            }
        }
    }
}
