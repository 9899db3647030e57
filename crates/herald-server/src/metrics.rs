//! The process-wide counters behind `GET /metrics` (served by
//! `http::metrics`): atomics bumped on the publish paths, so keeping them
//! costs nothing per message.

use std::sync::atomic::{AtomicU64, Ordering};

use herald_core::engine::Published;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    pub(crate) client_published: AtomicU64,
    /// Open sessions by transport, indexed by `protocol::Transport as
    /// usize` (a gauge: up in `Session::new`, down when it is dropped).
    pub(crate) open_by_transport: [AtomicU64; TRANSPORT_SLOTS],
}

/// How many transports `open_by_transport` counts (`protocol::Transport::ALL`).
pub(crate) const TRANSPORT_SLOTS: usize = 6;

impl Counters {
    /// Open sessions of the transport at `index` now.
    pub(crate) fn open(&self, index: usize) -> u64 {
        self.open_by_transport
            .get(index)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// A session of the transport at `index` opened (`up`) or ended.
    pub(crate) fn session(&self, index: usize, up: bool) {
        if let Some(n) = self.open_by_transport.get(index) {
            if up {
                n.fetch_add(1, Ordering::Relaxed);
            } else {
                n.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts one stored message and the subscribers it was published to
    /// (on Redis, every node's: see `Published::subscribers`).
    pub(crate) fn published(&self, published: &Published, by_client: bool) {
        self.published.fetch_add(1, Ordering::Relaxed);
        self.deliveries
            .fetch_add(published.subscribers as u64, Ordering::Relaxed);
        if by_client {
            self.client_published.fetch_add(1, Ordering::Relaxed);
        }
    }
}
