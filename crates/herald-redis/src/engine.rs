//! [`RedisEngine`]: the [`Engine`](herald_core::engine::Engine) whose history and fan-out live in Redis,
//! so that several Herald processes sharing one Redis behave as one server.
//!
//! Commands go over one multiplexed connection (a `ConnectionManager`, which
//! pipelines concurrent requests and reconnects by itself); each call is
//! bounded by [`RedisOptions::timeout`]. Live messages arrive over the node's
//! own pub/sub connection (the `pubsub` module). A publish is never delivered
//! to the local hub directly: it reaches every node, this one included,
//! through pub/sub, in stream-id order. The same holds for presence notices
//! and user disconnects.
//!
//! Work that must not block its caller (presence leaves) and the periodic
//! rewrites of this node's presence entries and subscriber counts run in the
//! `upkeep` task, fed by a bounded queue.
//!
//! With webhooks ([`RedisOptions::events`]) the hub's occupancy watcher is
//! the `occupancy` module's dirty set, written to Redis by its own task;
//! events go to the outbox stream `<prefix>:webhooks`, read by whichever
//! node holds the delivery lease.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::disconnect::Disconnect;
use herald_core::engine::{
    Broker, ChannelStats, Claims, EngineError, EventLog, Mailboxes, PresenceStore, Published,
    SubscriberSlot, UserPublished, UserQueue, UserQueues,
};
use herald_core::event::{
    event_json, EventCounts, EventOptions, OutboxStats, RecordedEvent, USER_MAILBOX_DROPPED,
};
use herald_core::histogram::Histogram;
use herald_core::history::{unknown_channel_page, HistoryPage};
use herald_core::hub::Hub;
use herald_core::mailbox::{Ack, Acked, MailboxRead, MailboxState};
use herald_core::namespace::{ChannelOptions, Namespaces};
use herald_core::presence::{Notice, NoticeKind, PresenceEntry};
use herald_core::user::GAP_MEMORY_MS;
use herald_core::{ChannelName, Message, Payload, Since};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

use crate::call::{bounded, millis, UNLIMITED};
use crate::counts::Counts;
use crate::frame;
use crate::keys::Keys;
use crate::mailbox::{self as mbox, MailboxScripts};
use crate::occupancy::{self, Dirty};
use crate::options::RedisOptions;
use crate::presence::{self, LocalPresence};
use crate::pubsub::{Command, State, Task};
use crate::script::{
    parse_count, parse_events, parse_publish, parse_read, parse_take, parse_values, PublishReply,
    ReadReply, Scripts, Taken,
};
use crate::slot::LocalSlots;
use crate::upkeep::{Job, Leave, Upkeep, UPKEEP_QUEUE};

/// The oldest Redis this engine works with: it needs `XINFO STREAM`'s
/// `max-deleted-entry-id` and exclusive `XRANGE` bounds.
pub const MIN_REDIS_MAJOR: u32 = 7;
/// Commands waiting for the pub/sub task at most (see the `pubsub` module).
const COMMAND_QUEUE: usize = 4_096;
/// A channel's key never expires sooner than this after its last publish, so
/// that its newest id outlives a history TTL of zero.
const MIN_KEY_EXPIRY_MS: u64 = 1_000;
/// Sweeps (about one a second) between two reconcile passes.
const RECONCILE_EVERY: u64 = 10;
/// How often the delivering node looks for new events in the outbox.
const OUTBOX_POLL: Duration = Duration::from_millis(200);
/// Outbox entries one `XDEL` deletes at most.
const DONE_CHUNK: usize = 500;
/// `SSCAN` steps per node when listing occupied channels, and the `COUNT`
/// of each: at most 100,000 set members read per node per listing.
const MAX_SCAN_STEPS: usize = 200;
const SCAN_COUNT: usize = 500;

/// Herald's Redis engine. See the crate docs for the layout in Redis.
pub struct RedisEngine {
    hub: Arc<Hub>,
    namespaces: Arc<Namespaces>,
    keys: Keys,
    options: RedisOptions,
    /// Cheap to clone; clones share one multiplexed connection.
    conn: ConnectionManager,
    scripts: Arc<Scripts>,
    pubsub: Arc<State>,
    commands: mpsc::Sender<Command>,
    sweeps: AtomicU64,
    task: tokio::task::AbortHandle,
    /// This node's presence entries (also held by the upkeep and pub/sub tasks).
    presence: Arc<LocalPresence>,
    /// This node's `max_subscribers` places (also held by the upkeep task).
    slots: Arc<LocalSlots>,
    /// This node's subscriber-count identity and the dead ones (written by
    /// the upkeep task).
    counts: Arc<Counts>,
    /// Feeds the upkeep task; dropping the engine closes it.
    upkeep: mpsc::Sender<Job>,
    /// Set while a sweep job waits in the upkeep queue (cleared by the task).
    sweep_queued: Arc<AtomicBool>,
    /// How long each command of `call` took, answered or not.
    latency: Histogram,
    mailbox_scripts: Arc<MailboxScripts>,
    /// Set while a mailbox sweep runs (one at a time per node).
    mailbox_sweeping: Arc<AtomicBool>,
    /// Only with webhooks.
    events: Option<Events>,
}

/// What the engine keeps for webhooks.
struct Events {
    options: EventOptions,
    /// What this node's scripts recorded.
    recorded: Arc<EventCounts>,
    /// Feeds the occupancy task (the hub's watcher).
    dirty: Arc<Dirty>,
    task: tokio::task::AbortHandle,
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(events) = &self.events {
            events.task.abort();
        }
    }
}

impl RedisEngine {
    /// Connects with the default [`RedisOptions`]. `url` is like
    /// `redis://127.0.0.1:6379/0` (`rediss://` is not enabled in this build).
    pub async fn connect(
        url: &str,
        hub: Arc<Hub>,
        namespaces: Arc<Namespaces>,
    ) -> Result<Arc<Self>, EngineError> {
        Self::connect_with(url, hub, namespaces, RedisOptions::default()).await
    }

    /// Connects both connections, checks the Redis version and starts the
    /// pub/sub task. Fails with [`EngineError::Unavailable`] when the URL is
    /// invalid, Redis cannot be reached within the timeout, or it is older
    /// than 7.0. Must be called inside a Tokio runtime.
    pub async fn connect_with(
        url: &str,
        hub: Arc<Hub>,
        namespaces: Arc<Namespaces>,
        mut options: RedisOptions,
    ) -> Result<Arc<Self>, EngineError> {
        let floor = Duration::from_millis(1);
        options.timeout = options.timeout.max(floor);
        options.ping_interval = options.ping_interval.max(floor);
        options.max_backoff = options.max_backoff.max(floor);
        options.refresh_interval = options.refresh_interval.max(floor);
        options.node_ttl = options.node_ttl.max(floor);
        let t = options.timeout;

        let client = Client::open(url)
            .map_err(|e| EngineError::Unavailable(format!("invalid redis url: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(t))
            .set_response_timeout(Some(t))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(options.max_backoff);
        let mut conn = bounded(
            t,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await?;
        check_version(
            &bounded(
                t,
                redis::cmd("INFO")
                    .arg("server")
                    .query_async::<String>(&mut conn),
            )
            .await?,
        )?;
        let keys = Keys::new(&options.prefix);
        let mut first = bounded(t, client.get_async_pubsub()).await?;
        // Control frames (user disconnects) reach this node from the moment
        // `connect` returns; each later session subscribes again.
        bounded(t, first.subscribe(keys.control())).await?;

        let presence = Arc::new(LocalPresence::new(presence::node_id()));
        let slots = Arc::new(LocalSlots::new(Arc::clone(presence.node())));
        let counts = Arc::new(Counts::new(Arc::clone(presence.node())));
        let scripts = Arc::new(Scripts::default());
        first_beat(&mut conn, &keys, &scripts, &counts, &options).await?;
        let pubsub = Arc::new(State::new(Arc::clone(&hub), Arc::clone(&presence)));
        // The connection is up: follows may queue now; the task applies them
        // once it has subscribed again to what the hub already holds.
        pubsub.up.store(true, Ordering::Release);
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let task = Task {
            client,
            conn: conn.clone(),
            keys: keys.clone(),
            options: options.clone(),
            state: Arc::clone(&pubsub),
            commands: commands.downgrade(),
        };
        let task = tokio::spawn(task.run(Some(first), queue)).abort_handle();

        let events = options.events.clone().map(|events| {
            let dirty = Arc::new(Dirty::new(events.clone()));
            let recorded = Arc::new(EventCounts::default());
            hub.watch(dirty.clone());
            let writer = occupancy::Task {
                conn: conn.clone(),
                keys: keys.clone(),
                scripts: Arc::clone(&scripts),
                hub: Arc::clone(&hub),
                counts: Arc::clone(&counts),
                options: options.clone(),
                events: events.clone(),
                dirty: Arc::clone(&dirty),
                recorded: Arc::clone(&recorded),
            };
            let task = tokio::spawn(writer.run()).abort_handle();
            Events {
                options: events,
                recorded,
                dirty,
                task,
            }
        });
        let sweep_queued = Arc::new(AtomicBool::new(false));
        let (upkeep, jobs) = mpsc::channel(UPKEEP_QUEUE);
        let worker = Upkeep {
            conn: conn.clone(),
            keys: keys.clone(),
            scripts: Arc::clone(&scripts),
            hub: Arc::clone(&hub),
            presence: Arc::clone(&presence),
            slots: Arc::clone(&slots),
            counts: Arc::clone(&counts),
            options: options.clone(),
            sweep_queued: Arc::clone(&sweep_queued),
        };
        // Not aborted on drop: it ends by itself once it drained the queue.
        tokio::spawn(worker.run(jobs));
        Ok(Arc::new(Self {
            hub,
            namespaces,
            keys,
            options,
            conn,
            scripts,
            pubsub,
            commands,
            sweeps: AtomicU64::new(0),
            task,
            presence,
            slots,
            counts,
            upkeep,
            sweep_queued,
            latency: Histogram::default(),
            mailbox_scripts: Arc::new(MailboxScripts::default()),
            mailbox_sweeping: Arc::new(AtomicBool::new(false)),
            events,
        }))
    }

    /// True while the pub/sub connection is up and the last command (or
    /// health ping) reached Redis. A node that is not healthy cannot deliver
    /// live messages; a load balancer may take it out of rotation.
    pub fn is_healthy(&self) -> bool {
        self.pubsub.up.load(Ordering::Acquire) && self.pubsub.commands_ok.load(Ordering::Acquire)
    }

    /// Runs one command within the timeout, mapping failures and keeping the
    /// health flag.
    async fn call<T>(&self, fut: impl Future<Output = RedisResult<T>>) -> Result<T, EngineError> {
        let started = std::time::Instant::now();
        let result = bounded(self.options.timeout, fut).await;
        self.latency.observe(started.elapsed());
        match &result {
            Ok(_) => self.pubsub.commands_ok.store(true, Ordering::Release),
            Err(EngineError::Unavailable(_)) => {
                self.pubsub.commands_ok.store(false, Ordering::Release);
            }
            Err(EngineError::Corrupt(_)) => {}
        }
        result
    }

    /// This node's id in Redis (the prefix of its presence fields, its
    /// places and its subscriber-count identity); random per run.
    pub fn node_id(&self) -> &str {
        self.presence.node()
    }

    /// Runs the publish script, or the variant that also queues for an
    /// absent user, or the one that checks and records an idempotency key.
    async fn publish_as(
        &self,
        channel: &ChannelName,
        payload: &Payload,
        variant: Variant<'_>,
    ) -> Result<PublishReply, EngineError> {
        let limits = Limits::of(self.namespaces.options(channel.as_str()));
        let expiry_ms = limits.ttl_ms.max(MIN_KEY_EXPIRY_MS);
        let mut conn = self.conn.clone();
        let script = match variant {
            Variant::Plain => &self.scripts.publish,
            Variant::User => &self.scripts.publish_user,
            Variant::Idempotent { .. } => &self.scripts.publish_idem,
            Variant::Mailbox => &self.mailbox_scripts.publish,
        };
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.keys.stream(channel))
            .key(self.keys.subs(channel));
        let extra = match variant {
            Variant::Plain => None,
            Variant::User => {
                invocation
                    .key(self.keys.queue(channel))
                    .key(self.keys.queue_gap(channel));
                Some(expiry_ms.saturating_add(GAP_MEMORY_MS).min(UNLIMITED))
            }
            Variant::Idempotent { key, window_ms } => {
                invocation.key(self.keys.idempotency(channel, key));
                Some(window_ms.clamp(1, UNLIMITED))
            }
            Variant::Mailbox => {
                invocation
                    .key(self.keys.mailbox(channel))
                    .key(self.keys.mailbox_gap(channel))
                    .key(self.keys.mailboxes())
                    .key(self.outbox().0);
                None
            }
        };
        invocation
            .arg(self.keys.live(channel))
            .arg(channel.as_str())
            .arg(payload.kind().as_str())
            .arg(&payload.raw()[..])
            .arg(limits.max_len)
            .arg(limits.ttl_ms)
            .arg(expiry_ms);
        let (me, dead) = self.counts.view();
        invocation.arg(&*me).arg(&*dead);
        if let Some(extra) = extra {
            invocation.arg(extra);
        }
        if let Variant::Mailbox = variant {
            let mailbox = self.namespaces.options(channel.as_str()).mailbox_limits();
            invocation
                .arg(mailbox.size.max(1))
                .arg(mailbox.ttl_ms.min(UNLIMITED))
                .arg(if self.records_mailbox_events() {
                    "1"
                } else {
                    "0"
                })
                .arg(self.outbox().1)
                .arg(GAP_MEMORY_MS);
        }
        let reply: Value = self.call(invocation.invoke_async(&mut conn)).await?;
        parse_publish(reply)
    }

    /// A publish answer: the cluster-wide count is the others' stored
    /// counts plus this node's live one.
    fn published(
        &self,
        channel: &ChannelName,
        payload: Payload,
        reply: &PublishReply,
        ack: bool,
    ) -> Published {
        Published {
            message: Arc::new(
                Message::new(channel.clone(), reply.id, payload, reply.time_ms).acknowledged(ack),
            ),
            subscribers: reply.others.saturating_add(self.hub.count(channel)),
            duplicate: false,
        }
    }

    /// Queues a job for the upkeep task without waiting. False when full.
    fn queue_job(&self, job: Job) -> bool {
        match self.upkeep.try_send(job) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => false,
            // Only while the runtime shuts down: nothing left to do.
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }

    /// Runs the read script: trims by age and answers in one round trip.
    async fn read(&self, channel: &ChannelName, since: Since) -> Result<ReadReply, EngineError> {
        let (mode, id) = match since {
            Since::Live => ("live", String::new()),
            Since::Earliest => ("earliest", String::new()),
            Since::After(id) => ("after", id.to_string()),
        };
        self.read_as(channel, mode, id).await
    }

    /// Runs the read script in `mode` (`live`, `earliest`, `after` with
    /// the resume `id`, or `latest`).
    async fn read_as(
        &self,
        channel: &ChannelName,
        mode: &str,
        id: String,
    ) -> Result<ReadReply, EngineError> {
        let limits = Limits::of(self.namespaces.options(channel.as_str()));
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.read.prepare_invoke();
        invocation
            .key(self.keys.stream(channel))
            .arg(mode)
            .arg(id)
            .arg(limits.max_len)
            .arg(limits.ttl_ms);
        let reply: Value = self.call(invocation.invoke_async(&mut conn)).await?;
        parse_read(reply, channel)
    }
}

impl RedisEngine {
    /// Whether `user.mailbox_dropped` events go into the webhook outbox.
    fn records_mailbox_events(&self) -> bool {
        self.events
            .as_ref()
            .is_some_and(|e| e.options.records(USER_MAILBOX_DROPPED))
    }

    /// The webhook outbox stream and its bound.
    fn outbox(&self) -> (String, u64) {
        let bound = self
            .events
            .as_ref()
            .map_or(UNLIMITED, |e| capacity(&e.options));
        (self.keys.webhooks(), bound)
    }

    /// Counts `n` mailbox drop events a script recorded.
    fn count_mailbox_events(&self, n: u64) {
        if let Some(events) = self.events.as_ref().filter(|_| n > 0) {
            events.recorded.add(USER_MAILBOX_DROPPED, n);
        }
    }

    /// Runs the mailbox sweep script in the background until it finds
    /// fewer due mailboxes than a batch; one at a time per node (every node
    /// sweeps, and the script makes each expiry happen once).
    fn sweep_mailboxes(&self) {
        if self.mailbox_sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.mailbox_sweeping.store(false, Ordering::Release);
            return;
        };
        let mut conn = self.conn.clone();
        let scripts = Arc::clone(&self.mailbox_scripts);
        let sweeping = Arc::clone(&self.mailbox_sweeping);
        let index = self.keys.mailboxes();
        let prefix = self.keys.prefix().to_owned();
        let (outbox, outbox_max) = self.outbox();
        let record = if self.records_mailbox_events() {
            "1"
        } else {
            "0"
        };
        let counts = self.events.as_ref().map(|e| Arc::clone(&e.recorded));
        let t = self.options.timeout;
        runtime.spawn(async move {
            // Bounded: a backlog is worked off over later sweeps.
            for _ in 0..50 {
                let mut invocation = scripts.sweep.prepare_invoke();
                invocation
                    .key(&index)
                    .key(&outbox)
                    .arg(&prefix)
                    .arg(mbox::SWEEP_BATCH)
                    .arg(record)
                    .arg(outbox_max)
                    .arg(GAP_MEMORY_MS);
                let reply = bounded(t, invocation.invoke_async::<Value>(&mut conn)).await;
                match reply.and_then(mbox::parse_sweep) {
                    Ok((due, recorded)) => {
                        if let Some(counts) = counts.as_ref().filter(|_| recorded > 0) {
                            counts.add(USER_MAILBOX_DROPPED, recorded);
                        }
                        if due < mbox::SWEEP_BATCH {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "mailbox sweep failed; the next one retries");
                        break;
                    }
                }
            }
            sweeping.store(false, Ordering::Release);
        });
    }
}

/// Which publish script to run.
#[derive(Clone, Copy)]
enum Variant<'a> {
    Plain,
    /// Also queue for an absent user.
    User,
    Idempotent {
        key: &'a str,
        window_ms: u64,
    },
    /// Also into the user's mailbox (the `mailbox` module's script).
    Mailbox,
}

/// A channel's retention, clamped to what Redis and Lua take exactly.
struct Limits {
    max_len: u64,
    ttl_ms: u64,
}

impl Limits {
    fn of(options: &ChannelOptions) -> Self {
        let ttl_ms = options.history_ttl_ms().min(UNLIMITED);
        // As in the memory engine, a zero TTL retains nothing.
        let max_len = if ttl_ms == 0 {
            0
        } else {
            u64::try_from(options.history_size)
                .unwrap_or(UNLIMITED)
                .min(UNLIMITED)
        };
        Self { max_len, ttl_ms }
    }
}

/// Registers this node's count identity before `connect` returns, so that
/// the scripts that write only for a live identity (counts, occupancy)
/// accept its writes from the start, before its first sweep.
async fn first_beat(
    conn: &mut ConnectionManager,
    keys: &Keys,
    scripts: &Scripts,
    counts: &Counts,
    options: &RedisOptions,
) -> Result<(), EngineError> {
    let (id, _) = counts.identity();
    let mut invocation = scripts.node_beat.prepare_invoke();
    invocation
        .key(keys.nodes())
        .arg(&*id)
        .arg(millis(options.node_ttl))
        .arg("new");
    let reply: Value = bounded(options.timeout, invocation.invoke_async(conn)).await?;
    if let Value::Array(items) = &reply {
        if matches!(items.first(), Some(Value::Int(1))) {
            counts.beat_ok(&id, &[]);
        }
    }
    Ok(())
}

fn check_version(info: &str) -> Result<(), EngineError> {
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(str::trim)
        .unwrap_or("unknown");
    let major: Option<u32> = version.split('.').next().and_then(|m| m.parse().ok());
    if major.is_some_and(|m| m >= MIN_REDIS_MAJOR) {
        Ok(())
    } else {
        Err(EngineError::Unavailable(format!(
            "redis {MIN_REDIS_MAJOR}.0 or newer is required, found {version}"
        )))
    }
}

#[async_trait]
impl Broker for RedisEngine {
    fn command_latency(&self) -> Option<&Histogram> {
        Some(&self.latency)
    }

    /// The registry `nodes` (identity → expiry), the live entries only:
    /// every node rewrites its own at each sweep, so a node that stopped
    /// drops out within `node_ttl`.
    async fn nodes(&self) -> Result<Vec<herald_core::engine::NodeInfo>, EngineError> {
        let mut conn = self.conn.clone();
        let entries: Vec<(String, u64)> = self
            .call(
                redis::cmd("HGETALL")
                    .arg(self.keys.nodes())
                    .query_async(&mut conn),
            )
            .await?;
        let (own, _) = self.counts.identity();
        let now = herald_core::engine::now_ms();
        let mut nodes: Vec<_> = entries
            .into_iter()
            .filter(|(_, expires)| *expires > now)
            .map(|(id, expires_at_ms)| herald_core::engine::NodeInfo {
                this: id == *own,
                id,
                expires_at_ms,
            })
            .collect();
        if !nodes.iter().any(|n| n.this) {
            // This node serves, though its first beat is not in yet.
            nodes.push(herald_core::engine::NodeInfo {
                id: own.to_string(),
                this: true,
                expires_at_ms: now,
            });
        }
        nodes.sort_by(|a, b| b.this.cmp(&a.this).then_with(|| a.id.cmp(&b.id)));
        Ok(nodes)
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    /// The pub/sub connection is up and Redis answers a `PING` within the
    /// command timeout.
    async fn ready(&self) -> Result<(), EngineError> {
        if !self.pubsub.up.load(Ordering::Acquire) {
            return Err(EngineError::Unavailable(
                "the redis pub/sub connection is down".to_string(),
            ));
        }
        let mut conn = self.conn.clone();
        self.call(redis::cmd("PING").query_async::<Value>(&mut conn))
            .await
            .map(|_| ())
    }

    /// Stores the message and publishes it in one script. `subscribers` in
    /// the answer counts every node's subscribers: the script sums the
    /// counts the other nodes wrote (at most one sweep, about a second, old)
    /// and this node adds its live one.
    async fn publish(
        &self,
        channel: &ChannelName,
        payload: Payload,
    ) -> Result<Published, EngineError> {
        let reply = self.publish_as(channel, &payload, Variant::Plain).await?;
        Ok(self.published(channel, payload, &reply, false))
    }

    /// The key's record (`<prefix>:{C}:idem:<key>`, expiring after the
    /// window) is checked and written in the same script that stores the
    /// message, so two nodes racing with one key store one message.
    async fn publish_idempotent(
        &self,
        channel: &ChannelName,
        payload: Payload,
        key: &str,
        window_ms: u64,
    ) -> Result<Published, EngineError> {
        let reply = self
            .publish_as(channel, &payload, Variant::Idempotent { key, window_ms })
            .await?;
        let mut published = self.published(channel, payload, &reply, false);
        published.duplicate = reply.flag;
        Ok(published)
    }

    async fn history(
        &self,
        channel: &ChannelName,
        since: Since,
    ) -> Result<HistoryPage, EngineError> {
        let ReadReply::Known {
            last_id,
            trimmed_through,
            retained,
            messages,
            ..
        } = self.read(channel, since).await?
        else {
            return Ok(unknown_channel_page(since));
        };
        // An id newer than the channel's newest: a gap, then everything
        // retained (the rule of `herald_core::history`), read again from
        // the start.
        if let (Since::After(id), Some(last)) = (since, last_id) {
            if id > last {
                if let ReadReply::Known {
                    messages, last_id, ..
                } = self.read(channel, Since::Earliest).await?
                {
                    return Ok(HistoryPage {
                        messages,
                        gap: true,
                        last_id,
                    });
                }
            }
        }
        // The gap rule of `herald_core::history`, on the stream's own state.
        let (messages, gap) = match since {
            Since::Live => (Vec::new(), false),
            Since::Earliest => (messages, false),
            Since::After(id) => {
                let continuous = retained || Some(id) == last_id || Some(id) == trimmed_through;
                (messages, !continuous)
            }
        };
        Ok(HistoryPage {
            messages,
            gap,
            last_id,
        })
    }

    async fn latest(&self, channel: &ChannelName) -> Result<HistoryPage, EngineError> {
        Ok(
            match self.read_as(channel, "latest", String::new()).await? {
                ReadReply::Unknown => unknown_channel_page(Since::Live),
                ReadReply::Known {
                    last_id, messages, ..
                } => HistoryPage {
                    messages,
                    gap: false,
                    last_id,
                },
            },
        )
    }

    async fn stats(&self, channel: &ChannelName) -> Result<ChannelStats, EngineError> {
        Ok(match self.read(channel, Since::Live).await? {
            ReadReply::Unknown => ChannelStats::default(),
            ReadReply::Known { last_id, len, .. } => ChannelStats {
                messages: len,
                last_id,
            },
        })
    }

    /// Deletes the stream, queue, mailbox and presence and tells every node
    /// following the channel (this one included) to close its subscribers
    /// with `CHANNEL_DELETED` and forget their presence there.
    async fn remove(&self, channel: &ChannelName) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.remove.prepare_invoke();
        invocation
            .key(self.keys.stream(channel))
            .key(self.keys.queue(channel))
            .key(self.keys.presence(channel))
            .key(self.keys.queue_gap(channel))
            .key(self.keys.mailbox(channel))
            .key(self.keys.mailbox_gap(channel))
            .key(self.keys.mailboxes())
            .arg(self.keys.live(channel))
            .arg(frame::removed(channel))
            .arg(channel.as_str());
        let _: Value = self.call(invocation.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Answers at once when this node already follows the channel; otherwise
    /// waits (within the timeout) until Redis confirmed the `SUBSCRIBE`.
    async fn follow(&self, channel: &ChannelName) -> Result<(), EngineError> {
        if self.pubsub.followed.lock().contains(channel) {
            return Ok(());
        }
        if !self.pubsub.up.load(Ordering::Acquire) {
            return Err(EngineError::Unavailable(
                "redis pub/sub connection is down".to_owned(),
            ));
        }
        let (reply, confirmed) = oneshot::channel();
        let wait = async {
            self.commands
                .send(Command::Follow(channel.clone(), reply))
                .await
                .ok()?;
            confirmed.await.ok()
        };
        match timeout(self.options.timeout, wait).await {
            Ok(Some(())) => Ok(()),
            Ok(None) => Err(EngineError::Unavailable(
                "redis pub/sub connection lost while subscribing".to_owned(),
            )),
            Err(_) => Err(EngineError::Unavailable(format!(
                "redis did not confirm the subscription within {:?}",
                self.options.timeout
            ))),
        }
    }

    fn unfollow(&self, channel: &ChannelName) {
        if self.hub.count(channel) == 0 {
            // Full queue: the next reconcile pass unsubscribes instead.
            let _ = self.commands.try_send(Command::Unfollow(channel.clone()));
        }
    }

    /// Redis expires history by itself (trimming on publish and read, key
    /// expiry); the sweep reconciles pub/sub subscriptions now and then and
    /// has the upkeep task rewrite this node's changed subscriber counts and,
    /// every `refresh_interval`, its presence entries.
    fn sweep(&self, now_ms: u64) {
        self.sweep_mailboxes();
        if let Some(events) = &self.events {
            events.dirty.sweep();
        }
        if self.sweeps.fetch_add(1, Ordering::Relaxed) % RECONCILE_EVERY == RECONCILE_EVERY - 1 {
            let _ = self.commands.try_send(Command::Reconcile);
        }
        if !self.sweep_queued.swap(true, Ordering::AcqRel) && !self.queue_job(Job::Sweep { now_ms })
        {
            self.sweep_queued.store(false, Ordering::Release);
            tracing::warn!("upkeep queue full; skipping this sweep's refresh");
        }
    }

    /// The other nodes' counts as they last wrote them (at most one sweep,
    /// about a second, old; a dead node's drop out within `node_ttl`, see
    /// the `counts` module) plus this node's live count.
    async fn subscriber_count(&self, channel: &ChannelName) -> Result<usize, EngineError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.subs_read.prepare_invoke();
        let (me, dead) = self.counts.view();
        invocation
            .key(self.keys.subs(channel))
            .arg(&*me)
            .arg(&*dead);
        let reply: Value = self.call(invocation.invoke_async(&mut conn)).await?;
        Ok(parse_count(&reply)?.saturating_add(self.hub.count(channel)))
    }

    /// This node's channels, and the other live nodes' from their count
    /// sets (`nodecounts:<identity>` holds the `subs` key of every channel
    /// where that identity has a subscriber, written at its sweeps), read
    /// with `SSCAN … MATCH` in bounded steps.
    async fn occupied_channels(
        &self,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<ChannelName>, EngineError> {
        let mut found: std::collections::BTreeSet<ChannelName> = self
            .hub
            .channels()
            .into_iter()
            .filter(|c| c.as_str().starts_with(prefix))
            .collect();
        let (me, dead) = self.counts.view();
        let dead: Vec<&str> = dead.split(' ').filter(|d| !d.is_empty()).collect();
        let mut conn = self.conn.clone();
        let mut hkeys = redis::cmd("HKEYS");
        hkeys.arg(self.keys.nodes());
        let identities: Vec<String> = self.call(hkeys.query_async(&mut conn)).await?;
        // Channel names hold no glob character; escaped all the same.
        let glob: String = prefix
            .chars()
            .flat_map(|c| {
                let escape = matches!(c, '*' | '?' | '[' | ']' | '\\');
                escape.then_some('\\').into_iter().chain(std::iter::once(c))
            })
            .collect();
        let (head, tail) = self.keys.subs_parts();
        let pattern = format!("{head}{glob}*{tail}");
        for identity in identities {
            if identity == *me || dead.contains(&identity.as_str()) {
                continue;
            }
            let set = self.keys.node_counts(&identity);
            let mut cursor: u64 = 0;
            for _ in 0..MAX_SCAN_STEPS {
                let mut scan = redis::cmd("SSCAN");
                scan.arg(&set)
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let (next, keys): (u64, Vec<String>) =
                    self.call(scan.query_async(&mut conn)).await?;
                found.extend(keys.iter().filter_map(|k| {
                    let name = k.strip_prefix(head.as_str())?.strip_suffix(tail)?;
                    ChannelName::new(name).ok()
                }));
                cursor = next;
                if cursor == 0 || found.len() >= max {
                    break;
                }
            }
        }
        Ok(found.into_iter().take(max).collect())
    }

    /// One script takes a place in `<prefix>:{C}:slots` only below `max`
    /// (see the `slot` module for how places of dead nodes are reclaimed).
    async fn claim_subscriber_slot(
        &self,
        channel: &ChannelName,
        max: usize,
    ) -> Result<Option<SubscriberSlot>, EngineError> {
        let field = self.slots.next_field();
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.slot_claim.prepare_invoke();
        invocation
            .key(self.keys.slots(channel))
            .arg(&field)
            .arg(u64::try_from(max).unwrap_or(UNLIMITED).min(UNLIMITED))
            .arg(millis(self.options.node_ttl));
        let reply: Value = self.call(invocation.invoke_async(&mut conn)).await?;
        if parse_count(&reply)? != 1 {
            return Ok(None);
        }
        self.slots.insert(channel, field.clone());
        let slots = Arc::clone(&self.slots);
        let upkeep = self.upkeep.clone();
        let channel = channel.clone();
        Ok(Some(SubscriberSlot::new(move || {
            if !slots.remove(&channel, &field) {
                return;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) =
                upkeep.try_send(Job::Release { channel, field })
            {
                tracing::warn!("upkeep queue full; a subscriber place is left to expire");
            }
        })))
    }
}

#[async_trait]
impl PresenceStore for RedisEngine {
    /// Writes the entry (expiring `node_ttl` from now unless refreshed) and,
    /// with `notify`, publishes the join notice in the same script. A
    /// connection already present is not written again.
    async fn presence_join(
        &self,
        channel: &ChannelName,
        entry: &PresenceEntry,
        notify: bool,
    ) -> Result<(), EngineError> {
        if self.presence.contains(channel, &entry.client) {
            return Ok(());
        }
        let stored = self.presence.prepare(entry);
        let notice = if notify {
            frame::notice(&Notice::new(channel, NoticeKind::Join, entry))
        } else {
            Vec::new()
        };
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.presence_join.prepare_invoke();
        invocation
            .key(self.keys.presence(channel))
            .arg(&stored.field)
            .arg(&stored.tail)
            .arg(millis(self.options.node_ttl))
            .arg(self.keys.live(channel))
            .arg(notice);
        let _: Value = self.call(invocation.invoke_async(&mut conn)).await?;
        // Only now: a join cancelled or failed above is never refreshed, so
        // whatever it wrote expires.
        if let Some(lost) = self.presence.insert(channel, &entry.client, stored) {
            // A concurrent join of the same connection won; drop ours quietly.
            self.queue_job(Job::Leave(Leave {
                channel: channel.clone(),
                field: lost.field,
                notice: None,
            }));
        } else {
            self.hub.member_joined(channel, entry);
        }
        Ok(())
    }

    /// Forgets the entry locally at once (so it is no longer refreshed) and
    /// queues the `HDEL` and leave notice for the upkeep task. If the queue
    /// is full the entry still expires within `node_ttl`, without a notice.
    fn presence_leave(&self, channel: &ChannelName, entry: &PresenceEntry, notify: bool) {
        self.hub.member_left(channel, entry);
        let Some(stored) = self.presence.remove(channel, &entry.client) else {
            return;
        };
        let notice = notify.then(|| frame::notice(&Notice::new(channel, NoticeKind::Leave, entry)));
        let job = Job::Leave(Leave {
            channel: channel.clone(),
            field: stored.field,
            notice,
        });
        if !self.queue_job(job) {
            tracing::warn!(
                %channel,
                "upkeep queue full; presence entry left to expire, without a leave notice"
            );
        }
    }

    /// Every node's entries that have not expired (expired ones are deleted
    /// on the way). Entries this node cannot read are skipped with a warning.
    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, EngineError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.presence_read.prepare_invoke();
        invocation.key(self.keys.presence(channel));
        let reply: Value = self.call(invocation.invoke_async(&mut conn)).await?;
        Ok(parse_values(reply)?
            .iter()
            .filter_map(|value| match presence::decode(value) {
                Ok(entry) => Some(entry),
                Err(e) => {
                    tracing::warn!(error = %e, %channel, "skipping an unreadable presence entry");
                    None
                }
            })
            .collect())
    }
}

#[async_trait]
impl Mailboxes for RedisEngine {
    /// One script: history, mailbox (and overflow), index, then the frame
    /// (see the `mailbox` module).
    async fn publish_to_mailbox(
        &self,
        channel: &ChannelName,
        payload: Payload,
    ) -> Result<UserPublished, EngineError> {
        let reply = self.publish_as(channel, &payload, Variant::Mailbox).await?;
        // The script's fifth answer: the drop events it recorded.
        self.count_mailbox_events(u64::from(reply.flag));
        let published = self.published(channel, payload, &reply, true);
        let queued = published.subscribers == 0;
        Ok(UserPublished { published, queued })
    }

    async fn read_mailbox(&self, channel: &ChannelName) -> Result<MailboxRead, EngineError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.mailbox_scripts.read.prepare_invoke();
        invocation
            .key(self.keys.mailbox(channel))
            .key(self.keys.mailbox_gap(channel));
        let reply: Value = self.call(invocation.invoke_async(&mut conn)).await?;
        mbox::parse_read(reply, channel)
    }

    async fn ack(&self, channel: &ChannelName, ack: &Ack) -> Result<Acked, EngineError> {
        let (mode, ids) = mbox::ack_args(ack);
        let mut conn = self.conn.clone();
        let mut invocation = self.mailbox_scripts.ack.prepare_invoke();
        invocation
            .key(self.keys.mailbox(channel))
            .key(self.keys.mailboxes())
            .arg(channel.as_str())
            .arg(mode);
        for id in &ids {
            invocation.arg(id);
        }
        let reply: Value = self.call(invocation.invoke_async(&mut conn)).await?;
        mbox::parse_ack(reply)
    }

    async fn mailbox_state(&self, channel: &ChannelName) -> Result<MailboxState, EngineError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.mailbox_scripts.state.prepare_invoke();
        invocation
            .key(self.keys.mailbox(channel))
            .key(self.keys.mailbox_gap(channel));
        let reply: Value = self.call(invocation.invoke_async(&mut conn)).await?;
        mbox::parse_state(reply, channel)
    }
}

#[async_trait]
impl UserQueues for RedisEngine {
    /// Publishes as [`Broker::publish`]; in the same script, when no node
    /// received the frame, it is appended to the channel's queue (the newest
    /// `history_size` kept, the key expiring with the history TTL). A node
    /// still subscribed for a moment after its last local subscriber left
    /// counts as a receiver; the message is then in history only.
    async fn publish_to_user(
        &self,
        channel: &ChannelName,
        payload: Payload,
    ) -> Result<UserPublished, EngineError> {
        let reply = self.publish_as(channel, &payload, Variant::User).await?;
        Ok(UserPublished {
            published: self.published(channel, payload, &reply, false),
            queued: reply.flag,
        })
    }

    /// Reads and deletes the queue and its gap marker in one script, oldest
    /// first, dropping messages older than the channel's history TTL (by
    /// Redis' clock). A gap: the marker says messages were trimmed away, or
    /// it says the queue held messages that are all gone (the queue key
    /// expired), or messages were dropped here for their age.
    async fn take_user_queue(&self, channel: &ChannelName) -> Result<UserQueue, EngineError> {
        let limits = Limits::of(self.namespaces.options(channel.as_str()));
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.take_queue.prepare_invoke();
        invocation
            .key(self.keys.queue(channel))
            .key(self.keys.queue_gap(channel));
        let reply: Value = self.call(invocation.invoke_async(&mut conn)).await?;
        let Taken {
            now_ms,
            mut messages,
            marker,
        } = parse_take(reply, channel)?;
        let oldest = now_ms.saturating_sub(limits.ttl_ms);
        let before = messages.len();
        messages.retain(|m| m.time_ms >= oldest);
        let gap = marker == Some(true)
            || (marker == Some(false) && before == 0)
            || messages.len() < before;
        Ok(UserQueue { messages, gap })
    }

    /// Publishes a control frame that every node (this one included, over
    /// its own pub/sub connection) turns into [`Hub::disconnect_user`].
    async fn disconnect_user(
        &self,
        channel: &ChannelName,
        why: Disconnect,
    ) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        let mut publish = redis::cmd("PUBLISH");
        publish
            .arg(self.keys.control())
            .arg(frame::disconnect_user(channel, why));
        self.call(publish.query_async::<Value>(&mut conn)).await?;
        Ok(())
    }
}

#[async_trait]
impl Claims for RedisEngine {
    /// `SET <prefix>:claim:<key> 1 NX PX <ttl>`: one winner across all nodes.
    async fn claim_once(&self, key: &str, ttl_ms: u64) -> Result<bool, EngineError> {
        let mut conn = self.conn.clone();
        let mut set = redis::cmd("SET");
        set.arg(self.keys.claim(key))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms.clamp(1, UNLIMITED));
        let reply = self.call(set.query_async::<Value>(&mut conn)).await?;
        Ok(!matches!(reply, Value::Nil))
    }
}

/// The outbox is the stream `<prefix>:webhooks` (see the `keys` module);
/// the lease is `<prefix>:webhooks:lease`, holding this node's id.
#[async_trait]
impl EventLog for RedisEngine {
    fn event_options(&self) -> Option<&EventOptions> {
        self.events.as_ref().map(|e| &e.options)
    }

    /// One script: `XADD` (trimming the outbox to its capacity, counting
    /// what that drops), so events keep the order their calls reached
    /// Redis in. `time_ms` is this node's clock unless `fields` has one.
    async fn record_event(
        &self,
        event: &str,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), EngineError> {
        let Some(events) = self.events.as_ref().filter(|e| e.options.records(event)) else {
            return Ok(());
        };
        let json = event_json(event, fields, herald_core::engine::now_ms());
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.event_record.prepare_invoke();
        invocation
            .key(self.keys.webhooks())
            .arg(capacity(&events.options))
            .arg(json);
        let _: Value = self.call(invocation.invoke_async(&mut conn)).await?;
        events.recorded.add(event, 1);
        Ok(())
    }

    async fn delivery_lease(&self, ttl: Duration) -> Result<bool, EngineError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.lease.prepare_invoke();
        invocation
            .key(self.keys.webhooks_lease())
            .arg(self.node_id())
            .arg(millis(ttl));
        let reply: Value = self.call(invocation.invoke_async(&mut conn)).await?;
        Ok(parse_count(&reply)? == 1)
    }

    async fn pending_events(&self, max: usize) -> Result<Vec<RecordedEvent>, EngineError> {
        if self.events.is_none() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let reply: Value = self
            .call(
                redis::cmd("XRANGE")
                    .arg(self.keys.webhooks())
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(max.max(1))
                    .query_async(&mut conn),
            )
            .await?;
        parse_events(reply)
    }

    async fn events_done(&self, ids: &[String]) -> Result<(), EngineError> {
        for chunk in ids.chunks(DONE_CHUNK) {
            let mut conn = self.conn.clone();
            let _: Value = self
                .call(
                    redis::cmd("XDEL")
                        .arg(self.keys.webhooks())
                        .arg(chunk)
                        .query_async(&mut conn),
                )
                .await?;
        }
        Ok(())
    }

    /// `XLEN` of the outbox and the dropped counter: the cluster's.
    async fn outbox_stats(&self) -> Result<OutboxStats, EngineError> {
        if self.events.is_none() {
            return Ok(OutboxStats::default());
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN")
            .arg(self.keys.webhooks())
            .cmd("GET")
            .arg(self.keys.webhooks_dropped());
        let (len, dropped): (usize, Option<u64>) = self.call(pipe.query_async(&mut conn)).await?;
        Ok(OutboxStats {
            len,
            dropped: dropped.unwrap_or(0),
        })
    }

    /// Polls: Redis tells no one of an `XADD` (a blocking `XREAD` would
    /// hold the shared connection).
    async fn wait_for_events(&self, max: Duration) {
        tokio::time::sleep(max.min(OUTBOX_POLL)).await;
    }

    fn recorded_events(&self) -> Vec<(String, u64)> {
        self.events
            .as_ref()
            .map(|e| e.recorded.snapshot(&e.options))
            .unwrap_or_default()
    }
}

/// The outbox capacity as the scripts take it.
fn capacity(options: &EventOptions) -> u64 {
    u64::try_from(options.capacity)
        .unwrap_or(UNLIMITED)
        .clamp(1, UNLIMITED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_check() {
        assert!(check_version("# Server\r\nredis_version:7.0.15\r\n").is_ok());
        assert!(check_version("redis_version:8.2.1\r\n").is_ok());
        assert!(check_version("redis_version:6.2.14\r\n").is_err());
        assert!(check_version("nothing here").is_err());
    }

    #[test]
    fn limits_clamp() {
        let o = ChannelOptions {
            history_size: usize::MAX,
            history_ttl: Duration::MAX,
            ..ChannelOptions::default()
        };
        let l = Limits::of(&o);
        assert_eq!((l.max_len, l.ttl_ms), (UNLIMITED, UNLIMITED));
        let o = ChannelOptions {
            history_ttl: Duration::ZERO,
            ..ChannelOptions::default()
        };
        assert_eq!(Limits::of(&o).max_len, 0);
    }
}
