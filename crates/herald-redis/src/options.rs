//! Settings of the Redis engine, with the defaults a server uses.

use std::time::Duration;

use crate::keys::DEFAULT_PREFIX;

/// How long connecting and each Redis answer may take unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the pub/sub connection is pinged unless configured.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);
/// The longest wait between two pub/sub reconnect attempts unless configured.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);

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
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }
}
