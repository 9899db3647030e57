//! The process-wide counters behind `GET /metrics` (served by
//! `http::metrics`): atomics bumped on the publish paths and at each
//! connection's open and close, so keeping them costs nothing per message.
//! (Deliveries and their latency are the hub's, in herald-core: counted
//! where this node writes them.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use herald_core::engine::Published;
use parking_lot::Mutex;

/// How many transports the per-transport gauges hold (the protocol's
/// `Transport` enum, indexed by its discriminant).
pub(crate) const TRANSPORTS: usize = 7;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) client_published: AtomicU64,
    /// Messages published to a user's mailbox (to acknowledge) through
    /// this node, and pending messages acknowledged through it.
    pub(crate) mailbox_published: AtomicU64,
    pub(crate) mailbox_acknowledged: AtomicU64,
    /// Open connections by transport (`Transport as usize`).
    pub(crate) open: [AtomicUsize; TRANSPORTS],
    /// Ended connections by close code; `None`: the client went away
    /// without one. A lock, not atomics: taken once per close, never per
    /// message, and the codes are a short table.
    disconnects: Mutex<BTreeMap<Option<u16>, u64>>,
    pub(crate) slow_consumers: AtomicU64,
    /// TCP connections the public listener accepted and closed unanswered
    /// (shared with its accept loop, `http::serve`).
    pub(crate) tcp_shed: std::sync::Arc<AtomicU64>,
    /// The webhook sender's (shared with its task).
    pub(crate) webhooks: std::sync::Arc<WebhookCounters>,
}

/// What the webhook sender did: requests answered 2xx or not, and events
/// given up on after the last attempt.
#[derive(Default)]
pub(crate) struct WebhookCounters {
    pub(crate) ok: AtomicU64,
    pub(crate) error: AtomicU64,
    pub(crate) given_up: AtomicU64,
}

impl Counters {
    /// Counts one stored message.
    pub(crate) fn published(&self, _published: &Published, by_client: bool) {
        self.published.fetch_add(1, Ordering::Relaxed);
        if by_client {
            self.client_published.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Open connections of the transport at `index` now.
    pub(crate) fn open_now(&self, index: usize) -> usize {
        self.open
            .get(index)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    pub(crate) fn opened(&self, transport: usize) {
        self.open[transport].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection ended, with the close code it was sent (if any).
    pub(crate) fn closed(&self, transport: usize, code: Option<u16>) {
        self.open[transport].fetch_sub(1, Ordering::Relaxed);
        *self.disconnects.lock().entry(code).or_default() += 1;
        if code == Some(herald_core::disconnect::SLOW_CONSUMER.code) {
            self.slow_consumers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Ended connections by close code, for a scrape.
    pub(crate) fn disconnects(&self) -> Vec<(Option<u16>, u64)> {
        self.disconnects
            .lock()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// Open connections in all.
    pub(crate) fn open_total(&self) -> usize {
        self.open.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }
}

/// Calls of one hook event by outcome, and how long they took.
#[derive(Default)]
pub(crate) struct HookCalls {
    /// Allowed, refused, failed (unreachable, timed out, a bad answer).
    pub(crate) outcomes: [AtomicU64; 3],
    pub(crate) latency: herald_core::histogram::Histogram,
}

/// The outcome labels of [`HookCalls::outcomes`], in order.
pub(crate) const HOOK_OUTCOMES: [&str; 3] = ["allowed", "refused", "failed"];
