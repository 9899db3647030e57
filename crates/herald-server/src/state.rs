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
}

impl AppState {
    pub fn new(node: Node, config: Config, shutdown: CancellationToken) -> Self {
        Self(Arc::new(Inner {
            node,
            config,
            shutdown,
            connections: TaskTracker::new(),
            sessions: crate::session::http::Registry::default(),
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
