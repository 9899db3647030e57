//! Cluster-wide subscriber counts that cost Redis work only when they
//! change, never per channel per interval.
//!
//! Each node writes its local count of every channel it holds to the
//! channel's `subs` hash, under a *count identity* `<node>.<epoch>`, only
//! when the count changed since it last wrote it (at a sweep, about once a
//! second), and records the key in its set `nodecounts:<identity>` in the
//! same `MULTI`. The publish script sums the fields of the other identities
//! (the node adds its own live count), so a count is at most one sweep old.
//!
//! Whose counts still hold is the **registry** `nodes`: each node rewrites
//! its identity's expiry (Redis time + `node_ttl`) at every sweep, and the
//! same call answers the identities that expired. Those are *dead*: every
//! node leaves them out of its sums at once (the dead list is passed to the
//! scripts) and cleans them up: it deletes their fields from the keys in
//! their set, then the set, then the registry entry, so an identity leaves
//! the dead list only once none of its fields is left. A node that dies
//! therefore drops out of every count within `node_ttl`.
//!
//! A node that was only *thought* dead (cut off from Redis or paused longer
//! than `node_ttl`, or Redis lost its data) finds its identity expired or
//! gone at its next beat. It does not revive it, since its fields may be
//! half cleaned by then: it takes the next epoch, a fresh identity, and
//! writes all its counts again. Cleanup of the old identity can then never
//! delete a count the node still holds.
//!
//! The cost: one `HGETALL` of the small registry per node per sweep, one
//! write per channel whose local count changed, and on a node's death one
//! `HDEL` per channel it counted, once. A connection opened only to make
//! Redis work costs one count write when it comes and one when it goes, as
//! its subscribe does anyway.

use std::sync::Arc;

use parking_lot::Mutex;

/// This node's count identity and its view of the dead ones. The lock is
/// held for reads and swaps only, never across an `.await`.
pub struct Counts {
    node: Arc<str>,
    state: Mutex<State>,
}

struct State {
    epoch: u64,
    id: Arc<str>,
    /// Whether a beat registered `id` (later beats then only refresh it).
    known: bool,
    /// Dead identities, space-separated, as the scripts take them.
    dead: Arc<str>,
}

impl Counts {
    pub fn new(node: Arc<str>) -> Self {
        let id = Arc::from(format!("{node}.0"));
        Self {
            node,
            state: Mutex::new(State {
                epoch: 0,
                id,
                known: false,
                dead: Arc::from(""),
            }),
        }
    }

    /// The identity the publish and read scripts skip (this node adds its
    /// live count itself), and the dead identities they skip too.
    pub fn view(&self) -> (Arc<str>, Arc<str>) {
        let s = self.state.lock();
        (Arc::clone(&s.id), Arc::clone(&s.dead))
    }

    /// The identity to beat with, and whether it is registered already.
    pub fn identity(&self) -> (Arc<str>, bool) {
        let s = self.state.lock();
        (Arc::clone(&s.id), s.known)
    }

    /// A beat registered or refreshed `id`, and saw these dead.
    pub fn beat_ok(&self, id: &str, dead: &[String]) {
        let mut s = self.state.lock();
        if &*s.id == id {
            s.known = true;
        }
        s.dead = Arc::from(dead.join(" "));
    }

    /// The identity expired: take the next one (its counts must all be
    /// written again).
    pub fn renew(&self) {
        let mut s = self.state.lock();
        s.epoch += 1;
        s.id = Arc::from(format!("{}.{}", self.node, s.epoch));
        s.known = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_renew_and_dead_ones_are_listed() {
        let c = Counts::new(Arc::from("n"));
        assert_eq!(c.identity(), (Arc::from("n.0"), false));
        c.beat_ok("n.0", &["m.3".to_owned(), "k.0".to_owned()]);
        assert_eq!(c.identity(), (Arc::from("n.0"), true));
        assert_eq!(&*c.view().1, "m.3 k.0");
        c.renew();
        assert_eq!(c.identity(), (Arc::from("n.1"), false));
        // A late answer for the old identity does not mark the new one.
        c.beat_ok("n.0", &[]);
        assert!(!c.identity().1);
    }
}
