//! `max_subscribers` across nodes, with no window: each admitted
//! subscription holds one *place* in the channel's `slots` hash, taken by a
//! script that counts the places and adds one only below the limit, in one
//! atomic step. Two nodes admitting at the same moment therefore never both
//! take the last place.
//!
//! Design, and why a crashed node cannot leak places:
//!
//! - A place is a hash field `<node>/<seq>` (unique per claim) whose value
//!   is its expiry, Redis time + `node_ttl`. The node that took it keeps it
//!   in its [`LocalSlots`] table and rewrites its expiry every
//!   `refresh_interval` (the `upkeep` task, with presence).
//! - The claim script reads `HLEN` first; only a hash that looks full is
//!   scanned, and places whose expiry passed are deleted before counting.
//!   A node that died (or hung, or lost Redis) stops rewriting its places,
//!   so they free themselves within `node_ttl` (15 s by default) of its last
//!   refresh, at the next claim that needs them. The hash itself expires
//!   `node_ttl` after its last write.
//! - A subscription that ends drops its slot: the field leaves the local
//!   table at once (so no refresh rewrites it again) and its `HDEL` is
//!   queued on the upkeep queue, behind any refresh that still saw it (the
//!   ordering argument of the `upkeep` module). If that queue is full, the
//!   place frees itself within `node_ttl` instead.
//! - A claim whose caller went away while the script ran (a client that
//!   disconnected mid-subscribe) may have written a field this node never
//!   recorded: nothing refreshes it, so it too expires within `node_ttl`.
//!
//! So a place is held at most `node_ttl` longer than its subscription, and
//! never by a dead node for longer; the limit is never exceeded, only
//! (briefly) under-used.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use herald_core::ChannelName;
use parking_lot::Mutex;

/// The places this node holds: channel → fields. The lock is held for map
/// operations only, never across an `.await`.
pub struct LocalSlots {
    node: Arc<str>,
    seq: AtomicU64,
    held: Mutex<HashMap<ChannelName, HashSet<String>>>,
}

impl LocalSlots {
    pub fn new(node: Arc<str>) -> Self {
        Self {
            node,
            seq: AtomicU64::new(1),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh field for a claim.
    pub fn next_field(&self) -> String {
        format!("{}/{}", self.node, self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Records a place the claim script granted.
    pub fn insert(&self, channel: &ChannelName, field: String) {
        self.held
            .lock()
            .entry(channel.clone())
            .or_default()
            .insert(field);
    }

    /// Forgets a place; true if it was held.
    pub fn remove(&self, channel: &ChannelName, field: &str) -> bool {
        let mut held = self.held.lock();
        let Some(fields) = held.get_mut(channel) else {
            return false;
        };
        let removed = fields.remove(field);
        if fields.is_empty() {
            held.remove(channel);
        }
        removed
    }

    /// Every held place, per channel (for the refresh).
    pub fn snapshot(&self) -> Vec<(ChannelName, Vec<String>)> {
        self.held
            .lock()
            .iter()
            .map(|(c, fields)| (c.clone(), fields.iter().cloned().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_unique_and_removed_once() {
        let slots = LocalSlots::new(Arc::from("n"));
        let c = ChannelName::new("c").expect("valid");
        let (a, b) = (slots.next_field(), slots.next_field());
        assert_ne!(a, b);
        slots.insert(&c, a.clone());
        slots.insert(&c, b.clone());
        assert_eq!(slots.snapshot()[0].1.len(), 2);
        assert!(slots.remove(&c, &a));
        assert!(!slots.remove(&c, &a));
        assert!(slots.remove(&c, &b));
        assert!(slots.snapshot().is_empty());
    }
}
