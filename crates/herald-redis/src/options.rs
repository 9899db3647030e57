//! Settings of the Redis engine, with the defaults a server uses.

use std::time::Duration;

use herald_core::event::EventOptions;

use crate::keys::DEFAULT_PREFIX;

/// How long connecting and each Redis answer may take unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the pub/sub connection is pinged unless configured.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);
/// The longest wait between two pub/sub reconnect attempts unless configured.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a node rewrites its presence entries unless configured.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// How long a node's presence entries and subscriber counts outlive its last
/// refresh unless configured.
pub const DEFAULT_NODE_TTL: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Prefix of every key and pub/sub channel. Pub/sub ignores the database
    /// number, so deployments sharing one Redis need different prefixes.
    pub prefix: String,
    /// Bound on connecting and on every command: past it the engine answers
    /// [`herald_core::engine::EngineError::Unavailable`].
    pub timeout: Duration,
    /// How often the pub/sub connection is pinged, to notice a silent drop.
    pub ping_interval: Duration,
    /// The longest wait between two reconnect attempts.
    pub max_backoff: Duration,
    /// How often this node rewrites its presence entries (and subscriber
    /// counts that did not change) in Redis. The node's sweep triggers the
    /// rewrite, so the real period is this rounded up to the next sweep.
    pub refresh_interval: Duration,
    /// How long a node's presence entries and subscriber counts count without
    /// a rewrite: a node that dies drops out of presence and counts within
    /// this. Keep it well above `refresh_interval` plus one sweep plus
    /// `timeout` (the defaults: 5 s, 1 s, 2 s against 15 s), or live entries
    /// flicker out when Redis is slow.
    pub node_ttl: Duration,
    /// The events to record for webhooks (`None`: none, and no occupancy
    /// is tracked at all). Give every node of a cluster the same: the
    /// transitions are shared, and a node records what it is configured
    /// to. Keep `node_ttl` at least the grace: a dead node's users and
    /// channels go offline `node_ttl` after its last beat at the soonest.
    pub events: Option<EventOptions>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            max_backoff: DEFAULT_MAX_BACKOFF,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            node_ttl: DEFAULT_NODE_TTL,
            events: None,
        }
    }
}
