//! Cluster-wide presence: per-node state in Redis that expires unless its
//! node keeps rewriting it (subscriber counts use a node registry instead,
//! see the `counts` module).
//!
//! No node can tell another one's death apart from silence, so everything a
//! node contributes carries an expiry (Redis time + [`node_ttl`]) and is
//! rewritten by its node every [`refresh_interval`]. Readers skip and delete what
//! expired. A node that dies, hangs or loses Redis therefore drops out within
//! `node_ttl` of its last rewrite, without sending leave notices.
//!
//! A presence entry's field is `<node>/<seq>`: unique per join, so a leave
//! that runs late (it is queued, see the `upkeep` module) can never delete a
//! later join of the same connection, and two nodes' connection ids (unique
//! per node only) never collide. This node keeps its own entries in a
//! [`LocalPresence`] table, which is what its refresh rewrites; a write
//! that Redis lost (restart, `FLUSHALL`) comes back with the next refresh.
//!
//! [`node_ttl`]: crate::RedisOptions::node_ttl
//! [`refresh_interval`]: crate::RedisOptions::refresh_interval

use std::collections::hash_map::{Entry, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use herald_core::presence::PresenceEntry;
use herald_core::ChannelName;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// A random id for this node's run: it names the node's fields in Redis.
pub fn node_id() -> Arc<str> {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Arc::from(format!("{random:016x}"))
}

/// What this node wrote to Redis for one of its presence entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The hash field, `<node>/<seq>`.
    pub field: String,
    /// The value's JSON after its leading `{"expires_ms":…,` member.
    pub tail: String,
}

/// This node's presence entries: channel → connection id → what was stored.
/// Written on join and leave, read by the refresh. The lock is held for map
/// operations only, never across an `.await`; joins and leaves are per
/// subscribe, not per message, so one lock is enough.
pub struct LocalPresence {
    node: Arc<str>,
    seq: AtomicU64,
    channels: Mutex<HashMap<ChannelName, HashMap<Arc<str>, Stored>>>,
}

#[derive(Serialize)]
struct Encode<'a> {
    client: &'a str,
    user: Option<&'a str>,
    info: Option<&'a serde_json::Value>,
    node: &'a str,
}

#[derive(Deserialize)]
struct Decode {
    client: String,
    user: Option<String>,
    info: Option<serde_json::Value>,
}

impl LocalPresence {
    pub fn new(node: Arc<str>) -> Self {
        Self {
            node,
            seq: AtomicU64::new(1),
            channels: Mutex::new(HashMap::new()),
        }
    }

    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    /// A fresh field and the encoded entry, for a join.
    pub fn prepare(&self, entry: &PresenceEntry) -> Stored {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let json = serde_json::to_string(&Encode {
            client: &entry.client,
            user: entry.user.as_deref(),
            info: entry.info.as_deref(),
            node: &self.node,
        })
        .unwrap_or_else(|_| "{}".to_owned());
        Stored {
            field: format!("{}/{seq}", self.node),
            // Serializing a struct always starts with `{`.
            tail: json.get(1..).unwrap_or("}").to_owned(),
        }
    }

    pub fn contains(&self, channel: &ChannelName, client: &str) -> bool {
        self.channels
            .lock()
            .get(channel)
            .is_some_and(|m| m.contains_key(client))
    }

    /// Records a join that Redis accepted. Gives `stored` back when the
    /// connection was already present (a concurrent join won).
    pub fn insert(
        &self,
        channel: &ChannelName,
        client: &Arc<str>,
        stored: Stored,
    ) -> Option<Stored> {
        let mut channels = self.channels.lock();
        match channels
            .entry(channel.clone())
            .or_default()
            .entry(Arc::clone(client))
        {
            Entry::Occupied(_) => Some(stored),
            Entry::Vacant(v) => {
                v.insert(stored);
                None
            }
        }
    }

    /// Forgets an entry, giving back what was stored for it.
    pub fn remove(&self, channel: &ChannelName, client: &str) -> Option<Stored> {
        let mut channels = self.channels.lock();
        let entries = channels.get_mut(channel)?;
        let stored = entries.remove(client);
        if entries.is_empty() {
            channels.remove(channel);
        }
        stored
    }

    /// Forgets every entry of a channel (it was removed, and its hash with it).
    pub fn remove_channel(&self, channel: &ChannelName) {
        self.channels.lock().remove(channel);
    }

    /// Every entry, per channel, for a refresh.
    pub fn snapshot(&self) -> Vec<(ChannelName, Vec<Stored>)> {
        self.channels
            .lock()
            .iter()
            .map(|(c, m)| (c.clone(), m.values().cloned().collect()))
            .collect()
    }
}

/// Reads a stored value (any node's) back into an entry.
pub fn decode(value: &[u8]) -> Result<PresenceEntry, serde_json::Error> {
    let d: Decode = serde_json::from_slice(value)?;
    Ok(PresenceEntry {
        client: Arc::from(d.client),
        user: d.user.map(Arc::from),
        info: d.info.map(Arc::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_value_round_trips() {
        let table = LocalPresence::new(Arc::from("n1"));
        let entry = PresenceEntry {
            client: "c1".into(),
            user: Some("ann".into()),
            info: Some(Arc::new(
                serde_json::json!({"name": "Ann", "big": 12345678901234567_u64}),
            )),
        };
        let stored = table.prepare(&entry);
        assert_eq!(stored.field, "n1/1");
        // What the join script writes.
        let value = format!("{{\"expires_ms\":17,{}", stored.tail);
        assert_eq!(decode(value.as_bytes()).expect("decodes"), entry);
        let anonymous = PresenceEntry {
            client: "c2".into(),
            ..PresenceEntry::default()
        };
        let value = format!("{{\"expires_ms\":17,{}", table.prepare(&anonymous).tail);
        assert_eq!(decode(value.as_bytes()).expect("decodes"), anonymous);
        assert_eq!(
            table.prepare(&anonymous).field,
            "n1/3",
            "fields never repeat"
        );
    }

    #[test]
    fn table_keeps_one_entry_per_connection() {
        let table = LocalPresence::new(Arc::from("n1"));
        let c = ChannelName::new("room").expect("valid");
        let client: Arc<str> = Arc::from("c1");
        let entry = PresenceEntry {
            client: Arc::clone(&client),
            ..PresenceEntry::default()
        };
        let first = table.prepare(&entry);
        assert!(table.insert(&c, &client, first.clone()).is_none());
        let second = table.prepare(&entry);
        assert_eq!(table.insert(&c, &client, second.clone()), Some(second));
        assert!(table.contains(&c, "c1"));
        assert_eq!(table.snapshot(), vec![(c.clone(), vec![first.clone()])]);
        assert_eq!(table.remove(&c, "c1"), Some(first));
        assert!(table.remove(&c, "c1").is_none());
        assert!(table.snapshot().is_empty(), "empty channels are freed");
    }
}
