//! The node's background Redis work: what must not block its caller
//! (presence leaves, which run when a connection ends) and the rewrites that
//! keep this node's presence entries and subscriber counts from expiring
//! (see the `presence` module).
//!
//! One task serves one bounded queue of [`UPKEEP_QUEUE`] jobs. Overflow
//! policy: a leave that finds the queue full is dropped with a warning; its
//! entry is already out of the local table, so nothing rewrites it and it
//! still leaves Redis within `node_ttl`, only without a leave notice. A sweep
//! is queued only when none is waiting (one is as good as many).
//!
//! Jobs run in queue order, which is what keeps a refresh from bringing back
//! an entry that left: the refresh reads the local table when it runs, and a
//! leave removed its entry from that table before queuing its `HDEL`, so the
//! `HDEL` runs after any refresh that still saw the entry. Consecutive leaves
//! touch distinct fields and run concurrently (pipelined on the shared
//! connection); a sweep waits for them.
//!
//! Each sweep also beats this node's entry in the node registry (cleaning
//! up identities that died, see the `counts` module, and releasing what
//! they held, see the `occupancy` module), then compares this
//! node's local subscriber count of every channel it holds against what it
//! last wrote, and writes the ones that changed: the publish script sums
//! them into the cluster-wide `subscribers` of its answer. The cost is one
//! small script call per channel whose count changed, per sweep (about a
//! second), never per subscribe, per message or per channel per interval. With presence, the refresh also
//! rewrites the expiry of this node's `max_subscribers` places (the `slot`
//! module), and a `Release` job deletes one; a release that finds the queue
//! full is dropped with a warning and its place expires within `node_ttl`.
//! When the engine is dropped the task drains the queue, deletes its counts
//! and ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use herald_core::hub::Hub;
use herald_core::ChannelName;
use redis::aio::ConnectionManager;
use redis::Value;
use tokio::sync::mpsc;

use crate::call::{bounded, millis};
use crate::counts::Counts;
use crate::keys::Keys;
use crate::options::RedisOptions;
use crate::presence::{LocalPresence, Stored};
use crate::script::Scripts;
use crate::slot::LocalSlots;

/// Jobs waiting for the upkeep task at most.
pub const UPKEEP_QUEUE: usize = 16_384;
/// Leaves taken from the queue and run together at most.
const LEAVE_BATCH: usize = 512;
/// Redis calls one upkeep step has in flight at most.
const IN_FLIGHT: usize = 64;
/// Entries rewritten per refresh script call at most.
const REFRESH_CHUNK: usize = 500;
/// Batches of `REFRESH_CHUNK` counts one sweep deletes per dead identity.
const CLEAN_BATCHES: usize = 20;

pub enum Job {
    Leave(Leave),
    /// Give back one `max_subscribers` place.
    Release {
        channel: ChannelName,
        field: String,
    },
    /// Rewrite what is due (see the module docs).
    Sweep {
        now_ms: u64,
    },
}

/// Delete one presence entry and, with a notice frame, publish the notice.
pub struct Leave {
    pub channel: ChannelName,
    pub field: String,
    pub notice: Option<Vec<u8>>,
}

/// What the task needs besides its queue.
pub struct Upkeep {
    pub conn: ConnectionManager,
    pub keys: Keys,
    pub scripts: Arc<Scripts>,
    pub hub: Arc<Hub>,
    pub presence: Arc<LocalPresence>,
    pub slots: Arc<LocalSlots>,
    pub counts: Arc<Counts>,
    pub options: RedisOptions,
    /// True while a sweep waits in the queue; the engine queues another only
    /// when this is false.
    pub sweep_queued: Arc<AtomicBool>,
}

/// The task's own memory between sweeps.
#[derive(Default)]
struct Written {
    /// When presence was last rewritten completely.
    presence_ms: Option<u64>,
    /// The counts written under the current count identity.
    counts: HashMap<ChannelName, usize>,
}

impl Upkeep {
    pub async fn run(self, mut queue: mpsc::Receiver<Job>) {
        let mut written = Written::default();
        let mut held = None;
        loop {
            let job = match held.take() {
                Some(job) => job,
                None => match queue.recv().await {
                    Some(job) => job,
                    None => break,
                },
            };
            match job {
                Job::Sweep { now_ms } => {
                    self.sweep_queued.store(false, Ordering::Release);
                    self.sweep(&mut written, now_ms).await;
                }
                Job::Release { channel, field } => {
                    let mut conn = self.conn.clone();
                    let mut hdel = redis::cmd("HDEL");
                    hdel.arg(self.keys.slots(&channel)).arg(field);
                    if let Err(e) =
                        bounded(self.options.timeout, hdel.query_async::<Value>(&mut conn)).await
                    {
                        tracing::warn!(
                            error = %e,
                            %channel,
                            "subscriber place release failed; it expires within node_ttl"
                        );
                    }
                }
                Job::Leave(leave) => {
                    let mut leaves = vec![leave];
                    while leaves.len() < LEAVE_BATCH {
                        match queue.try_recv() {
                            Ok(Job::Leave(leave)) => leaves.push(leave),
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.leave(leaves).await;
                }
            }
        }
        // The engine is gone: this node's counts no longer hold.
        let gone: Vec<_> = written.counts.into_keys().map(|c| (c, 0)).collect();
        self.write_counts(gone).await;
        let (id, _) = self.counts.identity();
        self.clean(&id).await;
    }

    /// Runs leaves concurrently; failures are logged once per batch (an
    /// outage ends many connections at once).
    async fn leave(&self, leaves: Vec<Leave>) {
        let total = leaves.len();
        let failed = futures_util::stream::iter(leaves)
            .map(|leave| async move {
                let mut conn = self.conn.clone();
                let mut invocation = self.scripts.presence_leave.prepare_invoke();
                invocation
                    .key(self.keys.presence(&leave.channel))
                    .arg(leave.field)
                    .arg(self.keys.live(&leave.channel))
                    .arg(leave.notice.unwrap_or_default());
                bounded(
                    self.options.timeout,
                    invocation.invoke_async::<Value>(&mut conn),
                )
                .await
                .err()
            })
            .buffer_unordered(IN_FLIGHT)
            .filter_map(std::future::ready)
            .collect::<Vec<_>>()
            .await;
        if let Some(e) = failed.first() {
            tracing::warn!(
                error = %e,
                failed = failed.len(),
                total,
                "presence leaves failed; their entries expire from redis within node_ttl"
            );
        }
    }

    async fn sweep(&self, written: &mut Written, now_ms: u64) {
        let interval = millis(self.options.refresh_interval);
        let due = |at: u64| now_ms < at || now_ms - at >= interval;
        if written.presence_ms.is_none_or(due) {
            // Both, even if one fails: each retries at the next sweep.
            let slots = self.refresh_slots().await;
            if self.refresh_presence().await && slots {
                written.presence_ms = Some(now_ms);
            }
        }

        if !self.beat(written).await {
            return;
        }
        let mut counts: HashMap<ChannelName, usize> = self
            .hub
            .channels()
            .into_iter()
            .map(|c| {
                let n = self.hub.count(&c);
                (c, n)
            })
            .collect();
        for channel in written.counts.keys() {
            counts.entry(channel.clone()).or_insert(0);
        }
        let changed: Vec<(ChannelName, usize)> = counts
            .into_iter()
            .filter(|(c, n)| written.counts.get(c).copied().unwrap_or(0) != *n)
            .collect();
        for (channel, count) in self.write_counts(changed).await {
            if count == 0 {
                written.counts.remove(&channel);
            } else {
                written.counts.insert(channel, count);
            }
        }
    }

    /// Registers or refreshes this node's count identity, renewing it if it
    /// expired (see the `counts` module), and cleans up dead identities.
    /// False if Redis could not be reached: no counts are written then.
    async fn beat(&self, written: &mut Written) -> bool {
        let ttl = millis(self.options.node_ttl);
        for _ in 0..2 {
            let (id, known) = self.counts.identity();
            let mut conn = self.conn.clone();
            let mut invocation = self.scripts.node_beat.prepare_invoke();
            invocation
                .key(self.keys.nodes())
                .arg(&*id)
                .arg(ttl)
                .arg(if known { "known" } else { "new" });
            let reply = match bounded(
                self.options.timeout,
                invocation.invoke_async::<Value>(&mut conn),
            )
            .await
            {
                Ok(reply) => reply,
                Err(e) => {
                    tracing::debug!(error = %e, "node beat failed");
                    return false;
                }
            };
            let Some((alive, dead)) = parse_beat(reply) else {
                tracing::warn!("unexpected node beat reply");
                return false;
            };
            if !alive {
                tracing::warn!(
                    identity = %id,
                    "this node's subscriber counts expired in redis; writing them again"
                );
                self.counts.renew();
                written.counts.clear();
                continue;
            }
            self.counts.beat_ok(&id, &dead);
            for identity in &dead {
                self.clean(identity).await;
            }
            return true;
        }
        false
    }

    /// Deletes a dead identity's counts and its set, releases what it held
    /// (the `occupancy` module), then drops its registry entry once nothing
    /// of it is left (at most `CLEAN_BATCHES` batches of each per call; the
    /// rest at the next sweep, while it stays on the dead list).
    async fn clean(&self, identity: &str) {
        let set = self.keys.node_counts(identity);
        let mut counts_left = true;
        for _ in 0..CLEAN_BATCHES {
            let mut conn = self.conn.clone();
            let mut pick = redis::cmd("SRANDMEMBER");
            pick.arg(&set).arg(REFRESH_CHUNK);
            let members: Vec<String> =
                match bounded(self.options.timeout, pick.query_async(&mut conn)).await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(error = %e, identity, "count cleanup failed");
                        return;
                    }
                };
            if members.is_empty() {
                counts_left = false;
                break;
            }
            let mut pipe = redis::pipe();
            for key in &members {
                pipe.cmd("HDEL").arg(key).arg(identity).ignore();
            }
            pipe.cmd("SREM").arg(&set).arg(&members).ignore();
            if let Err(e) =
                bounded(self.options.timeout, pipe.query_async::<Value>(&mut conn)).await
            {
                tracing::debug!(error = %e, identity, "count cleanup failed");
                return;
            }
        }
        let holds_left = self.release_holdings(identity).await;
        if counts_left || holds_left {
            return;
        }
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.node_forget.prepare_invoke();
        invocation
            .key(self.keys.nodes())
            .key(&set)
            .key(self.keys.node_holds(identity))
            .arg(identity);
        if let Err(e) = bounded(
            self.options.timeout,
            invocation.invoke_async::<Value>(&mut conn),
        )
        .await
        {
            tracing::debug!(error = %e, identity, "registry cleanup failed");
        }
    }

    /// Releases what a dead identity held, in `SPOP` chunks (each member
    /// once, however many nodes clean at once). True if some may be left.
    async fn release_holdings(&self, identity: &str) -> bool {
        let holds = self.keys.node_holds(identity);
        for _ in 0..CLEAN_BATCHES {
            let mut conn = self.conn.clone();
            let mut invocation = self.scripts.occupancy_orphans.prepare_invoke();
            invocation
                .key(self.keys.nodes())
                .key(&holds)
                .arg(identity)
                .arg(self.keys.holders_prefix())
                .arg(self.keys.leaving_prefix())
                .arg(crate::occupancy::CHUNK)
                .arg(millis(self.options.node_ttl));
            match bounded(
                self.options.timeout,
                invocation.invoke_async::<Value>(&mut conn),
            )
            .await
            {
                Ok(Value::Int(n)) if n < crate::occupancy::CHUNK as i64 => return false,
                Ok(Value::Int(_)) => {}
                Ok(_) => {
                    tracing::warn!("unexpected occupancy cleanup reply");
                    return true;
                }
                Err(e) => {
                    tracing::debug!(error = %e, identity, "occupancy cleanup failed");
                    return true;
                }
            }
        }
        true
    }

    /// Rewrites every local entry with a fresh expiry. True if all of it
    /// reached Redis; otherwise the next sweep tries again.
    async fn refresh_presence(&self) -> bool {
        let ttl = millis(self.options.node_ttl);
        let batches: Vec<(ChannelName, Vec<Stored>)> = self
            .presence
            .snapshot()
            .into_iter()
            .flat_map(|(channel, entries)| {
                entries
                    .chunks(REFRESH_CHUNK)
                    .map(|chunk| (channel.clone(), chunk.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let failed = futures_util::stream::iter(batches)
            .map(|(channel, entries)| async move {
                let mut conn = self.conn.clone();
                let mut invocation = self.scripts.presence_refresh.prepare_invoke();
                invocation.key(self.keys.presence(&channel)).arg(ttl);
                for e in &entries {
                    invocation.arg(&e.field).arg(&e.tail);
                }
                bounded(
                    self.options.timeout,
                    invocation.invoke_async::<Value>(&mut conn),
                )
                .await
                .err()
            })
            .buffer_unordered(IN_FLIGHT)
            .filter_map(std::future::ready)
            .collect::<Vec<_>>()
            .await;
        if let Some(e) = failed.first() {
            tracing::warn!(
                error = %e,
                failed = failed.len(),
                "presence refresh failed; retrying at the next sweep"
            );
        }
        failed.is_empty()
    }

    /// Rewrites the expiry of every place this node holds. True if all of
    /// it reached Redis.
    async fn refresh_slots(&self) -> bool {
        let ttl = millis(self.options.node_ttl);
        let batches: Vec<(ChannelName, Vec<String>)> = self
            .slots
            .snapshot()
            .into_iter()
            .flat_map(|(channel, fields)| {
                fields
                    .chunks(REFRESH_CHUNK)
                    .map(|chunk| (channel.clone(), chunk.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let failed = futures_util::stream::iter(batches)
            .map(|(channel, fields)| async move {
                let mut conn = self.conn.clone();
                let mut invocation = self.scripts.slot_refresh.prepare_invoke();
                invocation.key(self.keys.slots(&channel)).arg(ttl);
                for f in &fields {
                    invocation.arg(f);
                }
                bounded(
                    self.options.timeout,
                    invocation.invoke_async::<Value>(&mut conn),
                )
                .await
                .err()
            })
            .buffer_unordered(IN_FLIGHT)
            .filter_map(std::future::ready)
            .collect::<Vec<_>>()
            .await;
        if let Some(e) = failed.first() {
            tracing::warn!(
                error = %e,
                failed = failed.len(),
                "subscriber place refresh failed; retrying at the next sweep"
            );
        }
        failed.is_empty()
    }

    /// Writes counts (zero deletes) under the current identity; returns
    /// those that reached Redis.
    async fn write_counts(&self, counts: Vec<(ChannelName, usize)>) -> Vec<(ChannelName, usize)> {
        let (id, _) = self.counts.identity();
        let (nodes, set) = (self.keys.nodes(), self.keys.node_counts(&id));
        let (id, nodes, set) = (&*id, &nodes, &set);
        futures_util::stream::iter(counts)
            .map(|(channel, count)| async move {
                let subs = self.keys.subs(&channel);
                let mut conn = self.conn.clone();
                let mut invocation = self.scripts.subs_write.prepare_invoke();
                invocation
                    .key(nodes)
                    .key(&subs)
                    .key(set)
                    .arg(id)
                    .arg(count)
                    .arg(&subs);
                match bounded(
                    self.options.timeout,
                    invocation.invoke_async::<Value>(&mut conn),
                )
                .await
                {
                    Ok(Value::Int(1)) => Some((channel, count)),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::debug!(error = %e, %channel, "subscriber count write failed");
                        None
                    }
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .filter_map(std::future::ready)
            .collect()
            .await
    }
}

/// `{alive, [dead identities]}` from the beat script.
fn parse_beat(reply: Value) -> Option<(bool, Vec<String>)> {
    let Value::Array(items) = reply else {
        return None;
    };
    let [alive, Value::Array(dead)] = items.as_slice() else {
        return None;
    };
    let dead = dead
        .iter()
        .map(|d| match d {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some((matches!(alive, Value::Int(1)), dead))
}
