//! What every connection and handler shares, behind one cheap handle: the
//! node, the settings, the rules, the limiters and the shutdown signal.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use herald_core::Node;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::hook::Hooks;
use crate::access::limits::ConnectionLimiter;
use crate::access::token::{KeyError, Tokens};
use crate::access::Rules;
use crate::config::Config;
use crate::metrics::Counters;

#[derive(Clone)]
pub(crate) struct AppState(Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) node: Node,
    pub(crate) config: Config,
    pub(crate) rules: Rules,
    /// Cancelled once when shutdown begins; every connection watches it and
    /// tells its client to reconnect.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the node starts draining (`drain_delay` before
    /// `shutdown`): `/ready` answers 503 from then on.
    pub(crate) draining: CancellationToken,
    /// Upgraded (WebSocket) connections, which the HTTP server no longer
    /// tracks: shutdown waits on these for the grace period.
    pub(crate) connections: TaskTracker,
    /// TCP connections of the public listener, counted from accept.
    pub(crate) limiter: Arc<ConnectionLimiter>,
    /// HTTP sessions, which outlive the requests that opened them.
    pub(crate) session_limiter: Arc<ConnectionLimiter>,
    /// TCP connections of the API listener (apart, so a flood of the public
    /// one cannot use up the backend's).
    pub(crate) api_limiter: Arc<ConnectionLimiter>,
    pub(crate) counters: Counters,
    /// Client connections (WebSockets, streams, polls, HTTP sessions) now.
    pub(crate) clients: Arc<AtomicUsize>,
}

impl AppState {
    pub(crate) fn new(
        node: Node,
        config: Config,
        shutdown: CancellationToken,
    ) -> Result<Self, KeyError> {
        let tokens = Tokens::new(&config.tokens)?;
        let hooks = config.hooks.clone().map(|h| Arc::new(Hooks::new(h)));
        let limiter = || {
            ConnectionLimiter::new(
                config.limits.max_connections,
                config.limits.max_connections_per_ip,
            )
        };
        let (limiter, session_limiter, api_limiter) = (limiter(), limiter(), limiter());
        Ok(Self(Arc::new(Inner {
            rules: Rules {
                node: node.clone(),
                tokens,
                hooks,
            },
            node,
            config,
            shutdown,
            draining: CancellationToken::new(),
            connections: TaskTracker::new(),
            limiter,
            session_limiter,
            api_limiter,
            counters: Counters::default(),
            clients: Arc::default(),
        })))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
