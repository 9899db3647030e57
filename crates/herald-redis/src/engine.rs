//! [`RedisEngine`]: the [`Engine`] whose history and fan-out live in Redis,
//! so that several Herald processes sharing one Redis behave as one server.
//!
//! Commands go over one multiplexed connection (a `ConnectionManager`, which
//! pipelines concurrent requests and reconnects by itself); each call is
//! bounded by [`RedisOptions::timeout`]. Live messages arrive over the node's
//! own pub/sub connection (the `pubsub` module). A publish is never delivered
//! to the local hub directly: it reaches every node, this one included,
//! through pub/sub, in stream-id order.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::engine::{ChannelStats, Engine, EngineError, Published};
use herald_core::history::{unknown_channel_page, HistoryPage};
use herald_core::hub::Hub;
use herald_core::namespace::{ChannelOptions, Namespaces};
use herald_core::{ChannelName, Message, Payload, Since};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

use crate::frame;
use crate::keys::Keys;
use crate::options::RedisOptions;
use crate::pubsub::{Command, State, Task};
use crate::script::{parse_publish, parse_read, ReadReply, Scripts};

/// The oldest Redis this engine works with: it needs `XINFO STREAM`'s
/// `max-deleted-entry-id` and exclusive `XRANGE` bounds.
pub const MIN_REDIS_MAJOR: u32 = 7;
/// Commands waiting for the pub/sub task at most (see the `pubsub` module).
const COMMAND_QUEUE: usize = 4_096;
/// Ages and lengths beyond this are treated as "no limit": Lua numbers are
/// doubles, exact only up to 2^53, and Redis expiries must not overflow.
const UNLIMITED: u64 = 1 << 50;
/// A channel's key never expires sooner than this after its last publish, so
/// that its newest id outlives a history TTL of zero.
const MIN_KEY_EXPIRY_MS: u64 = 1_000;
/// Sweeps (about one a second) between two reconcile passes.
const RECONCILE_EVERY: u64 = 10;

/// Herald's Redis engine. See the crate docs for the layout in Redis.
pub struct RedisEngine {
    hub: Arc<Hub>,
    namespaces: Arc<Namespaces>,
    keys: Keys,
    options: RedisOptions,
    /// Cheap to clone; clones share one multiplexed connection.
    conn: ConnectionManager,
    scripts: Scripts,
    pubsub: Arc<State>,
    commands: mpsc::Sender<Command>,
    sweeps: AtomicU64,
    task: tokio::task::AbortHandle,
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        self.task.abort();
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
        let first = bounded(t, client.get_async_pubsub()).await?;

        let pubsub = Arc::new(State::new(Arc::clone(&hub)));
        // The connection is up: follows may queue now; the task applies them
        // once it has subscribed again to what the hub already holds.
        pubsub.up.store(true, Ordering::Release);
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let keys = Keys::new(&options.prefix);
        let task = Task {
            client,
            conn: conn.clone(),
            keys: keys.clone(),
            options: options.clone(),
            state: Arc::clone(&pubsub),
            commands: commands.downgrade(),
        };
        let task = tokio::spawn(task.run(Some(first), queue)).abort_handle();
        Ok(Arc::new(Self {
            hub,
            namespaces,
            keys,
            options,
            conn,
            scripts: Scripts::default(),
            pubsub,
            commands,
            sweeps: AtomicU64::new(0),
            task,
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
        let result = bounded(self.options.timeout, fut).await;
        match &result {
            Ok(_) => self.pubsub.commands_ok.store(true, Ordering::Release),
            Err(EngineError::Unavailable(_)) => {
                self.pubsub.commands_ok.store(false, Ordering::Release);
            }
            Err(EngineError::Corrupt(_)) => {}
        }
        result
    }

    /// Runs the read script: trims by age and answers in one round trip.
    async fn read(&self, channel: &ChannelName, since: Since) -> Result<ReadReply, EngineError> {
        let (mode, id) = match since {
            Since::Live => ("live", String::new()),
            Since::Earliest => ("earliest", String::new()),
            Since::After(id) => ("after", id.to_string()),
        };
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

/// Awaits a Redis future within `t`.
async fn bounded<T>(
    t: Duration,
    fut: impl Future<Output = RedisResult<T>>,
) -> Result<T, EngineError> {
    match timeout(t, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(map_error(&e)),
        Err(_) => Err(EngineError::Unavailable(format!(
            "redis did not answer within {t:?}"
        ))),
    }
}

/// A key of another type or a reply we cannot read means the data is not
/// ours; everything else (I/O, timeouts, OOM, loading, read-only replica)
/// means Redis cannot serve right now.
fn map_error(e: &RedisError) -> EngineError {
    let wrong_data = e.code() == Some("WRONGTYPE")
        || matches!(
            e.kind(),
            redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType
        );
    if wrong_data {
        EngineError::Corrupt(e.to_string())
    } else {
        EngineError::Unavailable(e.to_string())
    }
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
impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        "redis"
    }

    /// Stores the message and publishes it in one script. `subscribers` in
    /// the answer is the number of *nodes* (pub/sub connections) that
    /// received the message, not of connections: no node knows the others'
    /// subscriber counts.
    async fn publish(
        &self,
        channel: &ChannelName,
        payload: Payload,
    ) -> Result<Published, EngineError> {
        let limits = Limits::of(self.namespaces.options(channel.as_str()));
        let expiry_ms = limits.ttl_ms.max(MIN_KEY_EXPIRY_MS);
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.publish.prepare_invoke();
        invocation
            .key(self.keys.stream(channel))
            .arg(self.keys.live(channel))
            .arg(channel.as_str())
            .arg(payload.kind().as_str())
            .arg(&payload.raw()[..])
            .arg(limits.max_len)
            .arg(limits.ttl_ms)
            .arg(expiry_ms);
        let reply: Value = self.call(invocation.invoke_async(&mut conn)).await?;
        let reply = parse_publish(reply)?;
        Ok(Published {
            message: Arc::new(Message::new(
                channel.clone(),
                reply.id,
                payload,
                reply.time_ms,
            )),
            subscribers: reply.receivers,
        })
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

    async fn stats(&self, channel: &ChannelName) -> Result<ChannelStats, EngineError> {
        Ok(match self.read(channel, Since::Live).await? {
            ReadReply::Unknown => ChannelStats::default(),
            ReadReply::Known { last_id, len, .. } => ChannelStats {
                messages: len,
                last_id,
            },
        })
    }

    /// Deletes the stream and tells every node following the channel (this
    /// one included) to close its subscribers with `CHANNEL_DELETED`.
    async fn remove(&self, channel: &ChannelName) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.remove.prepare_invoke();
        invocation
            .key(self.keys.stream(channel))
            .arg(self.keys.live(channel))
            .arg(frame::removed(channel));
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
    /// expiry); the sweep only reconciles pub/sub subscriptions now and then.
    fn sweep(&self, _now_ms: u64) {
        if self.sweeps.fetch_add(1, Ordering::Relaxed) % RECONCILE_EVERY == RECONCILE_EVERY - 1 {
            let _ = self.commands.try_send(Command::Reconcile);
        }
    }
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
            client_publish: false,
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
