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
}

impl Counters {
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
