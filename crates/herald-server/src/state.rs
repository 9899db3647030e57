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
    /// TCP connections of the public listener, counted from accept.
    pub limiter: Arc<crate::limits::ConnectionLimiter>,
    /// HTTP sessions, which outlive the requests that opened them.
    pub session_limiter: Arc<crate::limits::ConnectionLimiter>,
    /// TCP connections of the API listener (apart, so a flood of the public
    /// one cannot use up the backend's).
    pub api_limiter: Arc<crate::limits::ConnectionLimiter>,
    pub counters: crate::metrics::Counters,
    /// Client connections (WebSockets, streams, polls, HTTP sessions) now.
    pub clients: Arc<std::sync::atomic::AtomicUsize>,
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
        let limiter = || {
            crate::limits::ConnectionLimiter::new(
                config.limits.max_connections,
                config.limits.max_connections_per_ip,
            )
        };
        let (limiter, session_limiter, api_limiter) = (limiter(), limiter(), limiter());
        Ok(Self(Arc::new(Inner {
            node,
            config,
            shutdown,
            connections: TaskTracker::new(),
            sessions: crate::session::http::Registry::default(),
            tokens,
            hooks,
            limiter,
            session_limiter,
            api_limiter,
            counters: crate::metrics::Counters::default(),
            clients: Arc::default(),
        })))
    }

    /// The slots a long-lived request holds: the TCP connection's own when
    /// it takes the socket over (`upgrade`), and behind a trusted proxy one
    /// for the client's address, which the TCP count cannot see.
    pub fn admit(
        &self,
        peer: std::net::SocketAddr,
        conn: &crate::serve::Conn,
        upgrade: bool,
    ) -> Result<crate::limits::Slot, crate::error::ApiError> {
        let client = if conn.proxied {
            Some(
                self.limiter
                    .acquire_per_ip(peer.ip())
                    .map_err(crate::limits::LimitHit::error)?,
            )
        } else {
            None
        };
        let tcp = if upgrade { conn.slot.take() } else { None };
        Ok(crate::limits::Slot::new(tcp, client, &self.clients))
    }

    /// A slot for a new HTTP session of the client at `peer`.
    pub fn admit_session(
        &self,
        peer: std::net::SocketAddr,
    ) -> Result<crate::limits::Slot, crate::error::ApiError> {
        let guard = self
            .session_limiter
            .acquire(peer.ip())
            .map_err(crate::limits::LimitHit::error)?;
        Ok(crate::limits::Slot::new(None, Some(guard), &self.clients))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
