//! The node's one pub/sub connection: which channels it follows, delivery
//! into the hub, and recovery when the connection drops.
//!
//! One task owns the connection. Within it, two futures run side by side:
//! the *reader* decodes each frame once and hands the shared message to
//! [`Hub::deliver`] (one Redis message per node per publish, however many
//! local subscribers), presence notices to [`Hub::deliver_notice`] and user
//! disconnects to [`Hub::disconnect_user`]; the *writer* applies
//! follow/unfollow commands in batches (one `SUBSCRIBE` or `UNSUBSCRIBE` for
//! everything queued) and pings the connection so that a silent drop is
//! noticed. Besides the followed channels, every session subscribes to the
//! node-wide control channel.
//!
//! When the connection is lost, every local subscriber is told
//! [`ENGINE_UNAVAILABLE`]: messages published while the connection is down
//! never reach this node, so clients must reconnect and resume from history.
//! The task then reconnects with exponential backoff and subscribes again to
//! every channel that still has local subscribers.
//!
//! Commands travel on a bounded queue. `follow` waits for room (with the
//! engine's timeout); `unfollow` never waits and is dropped when the queue is
//! full, which only delays an `UNSUBSCRIBE` until the next reconcile pass
//! (every few sweeps). The reader's own buffer is the `redis` crate's, which
//! is unbounded; it holds frames only as long as the hub takes to accept
//! them, and the hub never waits for a subscriber.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herald_core::disconnect::{CHANNEL_DELETED, ENGINE_UNAVAILABLE};
use herald_core::hub::Hub;
use herald_core::ChannelName;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, PubSub, PubSubSink, PubSubStream};
use redis::{Client, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};

use crate::frame::{self, Frame};
use crate::keys::Keys;
use crate::options::RedisOptions;
use crate::presence::LocalPresence;

/// Commands queued for the pub/sub task.
pub enum Command {
    /// Subscribe (if not yet) and answer once Redis confirmed.
    Follow(ChannelName, oneshot::Sender<()>),
    /// Unsubscribe if the hub has no local subscriber for it any more.
    Unfollow(ChannelName),
    /// Unsubscribe from every followed channel without local subscribers.
    Reconcile,
}

/// Channels subscribed per `SUBSCRIBE`/`UNSUBSCRIBE` command at most.
const CHUNK: usize = 1_000;
/// Commands applied per batch at most.
const BATCH: usize = 4_096;
/// The first wait before reconnecting.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// State shared between the engine and its pub/sub task.
pub struct State {
    pub hub: Arc<Hub>,
    /// This node's presence entries, forgotten when their channel is removed
    /// (its subscribers are closed without leaving presence one by one).
    pub presence: Arc<LocalPresence>,
    /// Channels the current pub/sub connection has a confirmed subscription
    /// for. `follow` answers at once for these. The lock is held only for set
    /// operations and `Hub::count` (lock order: this set, then a hub shard),
    /// never across an `.await`; checking "no local subscriber" and removing
    /// from the set under it is what keeps a concurrent follow from being
    /// answered by a subscription that is about to go.
    pub followed: Mutex<HashSet<ChannelName>>,
    /// True while a pub/sub connection is up and subscribed to `followed`.
    pub up: AtomicBool,
    /// False after a command failed for lack of Redis, true after one worked.
    pub commands_ok: AtomicBool,
}

impl State {
    pub fn new(hub: Arc<Hub>, presence: Arc<LocalPresence>) -> Self {
        Self {
            hub,
            presence,
            followed: Mutex::new(HashSet::new()),
            up: AtomicBool::new(false),
            commands_ok: AtomicBool::new(true),
        }
    }
}

/// What the pub/sub task needs besides its queue.
pub struct Task {
    pub client: Client,
    pub conn: ConnectionManager,
    pub keys: Keys,
    pub options: RedisOptions,
    pub state: Arc<State>,
    /// For the reader to queue unfollows; weak so that dropping the engine
    /// closes the queue.
    pub commands: mpsc::WeakSender<Command>,
}

/// Why a session ended.
enum End {
    /// The engine is gone: stop.
    Closed,
    /// The connection failed: reconnect.
    Lost(String),
}

impl Task {
    /// Runs until the engine is dropped. `first` is the connection made by
    /// `connect`, so that a bad URL or an unreachable Redis fails there.
    pub async fn run(self, mut first: Option<PubSub>, mut queue: mpsc::Receiver<Command>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let pubsub = match first.take() {
                Some(p) => Ok(p),
                None => match timeout(self.options.timeout, self.client.get_async_pubsub()).await {
                    Ok(Ok(p)) => Ok(p),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("connect timed out".to_owned()),
                },
            };
            let started = Instant::now();
            match pubsub {
                Err(e) => tracing::debug!(error = %e, "redis pub/sub reconnect failed"),
                Ok(pubsub) => match self.session(pubsub, &mut queue).await {
                    End::Closed => return,
                    End::Lost(why) => self.lost(&why),
                },
            }
            if started.elapsed() > self.options.max_backoff {
                backoff = MIN_BACKOFF;
            }
            if !refuse_for(&mut queue, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(self.options.max_backoff);
        }
    }

    fn lost(&self, why: &str) {
        self.state.up.store(false, Ordering::Release);
        self.state.followed.lock().clear();
        let told = self.state.hub.disconnect_all(ENGINE_UNAVAILABLE);
        tracing::warn!(
            reason = why,
            connections = told,
            "redis pub/sub connection lost; local subscribers disconnected, reconnecting"
        );
    }

    /// One connection's life: subscribe again to what the hub still needs,
    /// then read and write until something fails.
    async fn session(&self, pubsub: PubSub, queue: &mut mpsc::Receiver<Command>) -> End {
        let (mut sink, stream) = pubsub.split();
        match timeout(self.options.timeout, sink.subscribe(self.keys.control())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return End::Lost(format!("subscribe to control failed: {e}")),
            Err(_) => return End::Lost("subscribe to control timed out".to_owned()),
        }
        let channels = self.state.hub.channels();
        if let Err(why) = self.subscribe(&mut sink, &channels).await {
            return End::Lost(why);
        }
        self.state.followed.lock().extend(channels.iter().cloned());
        self.ping_commands().await;
        self.state.up.store(true, Ordering::Release);
        tracing::info!(channels = channels.len(), "redis pub/sub connected");
        tokio::select! {
            why = self.read(stream) => End::Lost(why),
            end = self.write(sink, queue) => end,
        }
    }

    /// Delivers every frame to the hub. Returns when the connection closes.
    async fn read(&self, mut stream: PubSubStream) -> String {
        while let Some(msg) = stream.next().await {
            match frame::decode(msg.get_payload_bytes()) {
                Ok(Frame::Message(message)) => {
                    self.state.hub.deliver(&message);
                }
                Ok(Frame::Notice(notice)) => {
                    self.state.hub.deliver_notice(&notice);
                }
                Ok(Frame::Gap(channel)) => {
                    self.state.hub.deliver_gap(&channel);
                }
                Ok(Frame::DisconnectUser(user, why)) => {
                    self.state.hub.disconnect_user(&user, why);
                }
                Ok(Frame::Removed(channel)) => {
                    self.state.presence.remove_channel(&channel);
                    self.state.hub.close_channel(&channel, CHANNEL_DELETED);
                    if let Some(tx) = self.commands.upgrade() {
                        // Full queue: the next reconcile unsubscribes instead.
                        let _ = tx.try_send(Command::Unfollow(channel));
                    }
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    redis_channel = msg.get_channel_name(),
                    "ignoring a malformed pub/sub frame"
                ),
            }
        }
        "connection closed".to_owned()
    }

    /// Applies commands and pings until the connection fails or the queue
    /// closes.
    async fn write(&self, mut sink: PubSubSink, queue: &mut mpsc::Receiver<Command>) -> End {
        let mut ping = tokio::time::interval(self.options.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                command = queue.recv() => {
                    let Some(command) = command else { return End::Closed };
                    let mut batch = vec![command];
                    while batch.len() < BATCH {
                        match queue.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    if let Err(why) = self.apply(&mut sink, batch).await {
                        return End::Lost(why);
                    }
                }
                _ = ping.tick() => {
                    match timeout(self.options.timeout, sink.ping::<Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return End::Lost(format!("ping failed: {e}")),
                        Err(_) => return End::Lost("ping timed out".to_owned()),
                    }
                    self.ping_commands().await;
                }
            }
        }
    }

    /// Unsubscribes first, then subscribes, so a channel both left and
    /// followed in one batch ends up subscribed.
    async fn apply(&self, sink: &mut PubSubSink, batch: Vec<Command>) -> Result<(), String> {
        let mut follows = Vec::new();
        let mut unfollows = Vec::new();
        let mut reconcile = false;
        for command in batch {
            match command {
                Command::Follow(channel, reply) => follows.push((channel, reply)),
                Command::Unfollow(channel) => unfollows.push(channel),
                Command::Reconcile => reconcile = true,
            }
        }
        let gone: Vec<ChannelName> = {
            let mut followed = self.state.followed.lock();
            if reconcile {
                unfollows.extend(followed.iter().cloned());
            }
            unfollows
                .into_iter()
                .filter(|c| self.state.hub.count(c) == 0 && followed.remove(c))
                .collect()
        };
        self.unsubscribe(sink, &gone).await?;

        let new: Vec<ChannelName> = {
            let followed = self.state.followed.lock();
            let mut seen = HashSet::new();
            follows
                .iter()
                .map(|(c, _)| c)
                .filter(|c| !followed.contains(*c) && seen.insert(*c))
                .cloned()
                .collect()
        };
        // On failure the replies are dropped: each waiting follow fails.
        self.subscribe(sink, &new).await?;
        self.state.followed.lock().extend(new);
        for (_, reply) in follows {
            let _ = reply.send(());
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        sink: &mut PubSubSink,
        channels: &[ChannelName],
    ) -> Result<(), String> {
        for chunk in channels.chunks(CHUNK) {
            let names: Vec<String> = chunk.iter().map(|c| self.keys.live(c)).collect();
            match timeout(self.options.timeout, sink.subscribe(names)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("subscribe failed: {e}")),
                Err(_) => return Err("subscribe timed out".to_owned()),
            }
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        sink: &mut PubSubSink,
        channels: &[ChannelName],
    ) -> Result<(), String> {
        for chunk in channels.chunks(CHUNK) {
            let names: Vec<String> = chunk.iter().map(|c| self.keys.live(c)).collect();
            match timeout(self.options.timeout, sink.unsubscribe(names)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("unsubscribe failed: {e}")),
                Err(_) => return Err("unsubscribe timed out".to_owned()),
            }
        }
        Ok(())
    }

    /// Refreshes the command connection's health flag, so that
    /// `is_healthy` recovers without waiting for a publish.
    async fn ping_commands(&self) {
        let mut conn = self.conn.clone();
        let ok = matches!(
            timeout(
                self.options.timeout,
                redis::cmd("PING").query_async::<Value>(&mut conn)
            )
            .await,
            Ok(Ok(_))
        );
        self.state.commands_ok.store(ok, Ordering::Release);
    }
}

/// Waits `wait` while the connection is down, failing every follow at once
/// instead of letting it time out. Returns false when the engine is gone.
async fn refuse_for(queue: &mut mpsc::Receiver<Command>, wait: Duration) -> bool {
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return true,
            command = queue.recv() => match command {
                // Dropping the reply fails the follow.
                Some(_) => {}
                None => return false,
            },
        }
    }
}
