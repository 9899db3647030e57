//! What every handler shares: the node, the settings and the shutdown signal.

use std::sync::Arc;

use herald_core::Node;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub node: Node,
    pub config: Config,
    /// Cancelled once when shutdown begins; every connection watches it and
    /// tells its client to reconnect.
    pub shutdown: CancellationToken,
    /// Upgraded (WebSocket) connections, which the HTTP server no longer
    /// tracks: shutdown waits on these for the grace period.
    pub connections: TaskTracker,
    /// HTTP sessions (streams and long-polls) by their secret id.
    pub sessions: crate::session::http::Registry,
    pub tokens: crate::token::Tokens,
    pub hooks: Option<Arc<crate::hook::Hooks>>,
    pub limiter: Arc<crate::limits::ConnectionLimiter>,
    pub counters: crate::metrics::Counters,
}

impl AppState {
    pub fn new(
        node: Node,
        config: Config,
        shutdown: CancellationToken,
    ) -> Result<Self, crate::token::KeyError> {
        let tokens = crate::token::Tokens::new(&config.tokens)?;
        let hooks = config
            .hooks
            .clone()
            .map(|h| Arc::new(crate::hook::Hooks::new(h)));
        Ok(Self(Arc::new(Inner {
            node,
            config,
            shutdown,
            connections: TaskTracker::new(),
            sessions: crate::session::http::Registry::default(),
            tokens,
            hooks,
            limiter: Arc::new(crate::limits::ConnectionLimiter::default()),
            counters: crate::metrics::Counters::default(),
        })))
    }

    /// A slot for a new connection from `peer`, or the limit it hits.
    pub fn admit(
        &self,
        peer: std::net::SocketAddr,
    ) -> Result<crate::limits::ConnectionGuard, crate::error::ApiError> {
        self.limiter.acquire(
            peer.ip(),
            self.config.limits.max_connections,
            self.config.limits.max_connections_per_ip,
        )
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
