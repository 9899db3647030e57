//! What every connection and handler shares, behind one cheap handle: the
//! node, the settings, the rules, the limiters and the shutdown signal.

use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// The Pusher apps, each with its connection count.
    pub(crate) pusher: Vec<Arc<PusherApp>>,
}

/// A configured Pusher app and the connections it holds on this node.
pub(crate) struct PusherApp {
    pub(crate) app: crate::config::PusherApp,
    /// `pusher:{id}:`, the Herald prefix of its channels.
    pub(crate) prefix: String,
    /// Its open connections, for `max_connections`: taken by
    /// [`PusherApp::take_slot`], given back when the slot drops.
    connections: AtomicUsize,
    /// What the webhook sender did for the app's `webhook_url` (shared
    /// with its task; in `/metrics` with the app's id).
    pub(crate) webhooks: Arc<crate::metrics::WebhookCounters>,
}

/// One connection's place under its app's `max_connections`.
pub(crate) struct PusherSlot(Arc<PusherApp>);

impl PusherSlot {
    pub(crate) fn app(&self) -> &Arc<PusherApp> {
        &self.0
    }
}

impl Drop for PusherSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PusherApp {
    /// The app's webhook destination, with a `webhook_url`.
    pub(crate) fn webhook_target(&self) -> Option<crate::access::pusher_webhook::AppTarget> {
        let webhook = self.app.webhook.clone()?;
        Some(crate::access::pusher_webhook::AppTarget {
            id: self.app.id.clone(),
            key: self.app.key.clone(),
            secret: self.app.secret.clone(),
            prefix: self.prefix.clone(),
            webhook,
        })
    }

    /// Whether the app's webhooks want `event` (an outbox event name).
    pub(crate) fn webhook_wants(&self, event: &str) -> bool {
        self.app
            .webhook
            .as_ref()
            .is_some_and(|w| w.events.contains(event))
    }

    /// A place for one more connection, unless the app has its maximum.
    pub(crate) fn take_slot(self: &Arc<Self>) -> Option<PusherSlot> {
        let max = self.app.max_connections;
        let taken = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            });
        taken.is_ok().then(|| PusherSlot(Arc::clone(self)))
    }
}

impl AppState {
    /// The Pusher app with this key.
    pub(crate) fn pusher_by_key(&self, key: &str) -> Option<&Arc<PusherApp>> {
        self.pusher.iter().find(|a| a.app.key == key)
    }

    /// The Pusher app with this id.
    pub(crate) fn pusher_by_id(&self, id: &str) -> Option<&Arc<PusherApp>> {
        self.pusher.iter().find(|a| a.app.id == id)
    }
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
        let pusher = config
            .pusher_apps
            .iter()
            .map(|app| {
                Arc::new(PusherApp {
                    prefix: app.prefix(),
                    app: app.clone(),
                    connections: AtomicUsize::new(0),
                    webhooks: Arc::default(),
                })
            })
            .collect();
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
            pusher,
        })))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
