//! Presence: who follows a channel, and the join/leave notices.
//!
//! An entry is one connection's subscription: its connection id, its user
//! (if it has one) and the `info` its token carried. `GET
//! /api/presence/{channel}` groups entries by user.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;

use crate::channel::ChannelName;
use crate::sharded::Sharded;

/// Who a connection is, as far as presence and user queues care.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientInfo {
    /// The connection's id (unique per node run; random for sessions).
    pub client: Arc<str>,
    pub user: Option<Arc<str>>,
    pub info: Option<Arc<serde_json::Value>>,
}

/// One connection's presence on a channel.
pub type PresenceEntry = ClientInfo;

/// What kind of notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    Join,
    Leave,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Leave => "leave",
        }
    }
}

/// A join or leave on a channel, encoded once as
/// `{"channel":…,"join":{"client":…,"user":…,"info":…}}`.
#[derive(Debug, Clone)]
pub struct Notice {
    pub channel: ChannelName,
    pub kind: NoticeKind,
    pub json: Bytes,
}

impl Notice {
    pub fn new(channel: &ChannelName, kind: NoticeKind, entry: &PresenceEntry) -> Self {
        let body = json!({
            "channel": channel.as_str(),
            kind.as_str(): {
                "client": &*entry.client,
                "user": entry.user.as_deref(),
                "info": entry.info.as_deref(),
            }
        });
        Self {
            channel: channel.clone(),
            kind,
            json: Bytes::from(body.to_string()),
        }
    }
}

/// A user in a presence answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PresenceUser {
    pub user: String,
    pub connections: usize,
    pub info: Option<serde_json::Value>,
}

/// `GET /api/presence/{channel}`.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct PresenceSummary {
    pub connections: usize,
    pub anonymous: usize,
    pub users: Vec<PresenceUser>,
}

impl PresenceSummary {
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a PresenceEntry>) -> Self {
        let mut summary = Self::default();
        let mut by_user: HashMap<&str, PresenceUser> = HashMap::new();
        for e in entries {
            summary.connections += 1;
            match &e.user {
                None => summary.anonymous += 1,
                Some(user) => {
                    let entry = by_user.entry(user).or_insert_with(|| PresenceUser {
                        user: user.to_string(),
                        connections: 0,
                        info: e.info.as_deref().cloned(),
                    });
                    entry.connections += 1;
                }
            }
        }
        summary.users = by_user.into_values().collect();
        summary.users.sort_by(|a, b| a.user.cmp(&b.user));
        summary
    }
}

/// Presence kept in this process: channel → connection id → entry. Used by
/// the memory engine; empty channels are removed.
#[derive(Default)]
pub struct LocalPresence {
    channels: Sharded<HashMap<Arc<str>, PresenceEntry>>,
}

impl LocalPresence {
    /// Adds an entry; false if the connection was already present.
    pub fn join(&self, channel: &ChannelName, entry: &PresenceEntry) -> bool {
        let mut shard = self.channels.shard(channel).lock();
        shard
            .entry(channel.clone())
            .or_default()
            .insert(Arc::clone(&entry.client), entry.clone())
            .is_none()
    }

    /// Removes an entry; false if it was not there.
    pub fn leave(&self, channel: &ChannelName, client: &str) -> bool {
        let mut shard = self.channels.shard(channel).lock();
        let Some(entries) = shard.get_mut(channel) else {
            return false;
        };
        let removed = entries.remove(client).is_some();
        if entries.is_empty() {
            shard.remove(channel);
        }
        removed
    }

    pub fn entries(&self, channel: &ChannelName) -> Vec<PresenceEntry> {
        self.channels
            .shard(channel)
            .lock()
            .get(channel)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn count(&self, channel: &ChannelName) -> usize {
        self.channels
            .shard(channel)
            .lock()
            .get(channel)
            .map_or(0, HashMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(client: &str, user: Option<&str>) -> PresenceEntry {
        PresenceEntry {
            client: client.into(),
            user: user.map(Arc::from),
            info: None,
        }
    }

    #[test]
    fn summary_groups_by_user() {
        let p = LocalPresence::default();
        let ch = ChannelName::new("room").expect("valid");
        assert!(p.join(&ch, &entry("a", Some("ann"))));
        assert!(p.join(&ch, &entry("b", Some("ann"))));
        assert!(p.join(&ch, &entry("c", None)));
        assert!(!p.join(&ch, &entry("c", None)));
        let s = PresenceSummary::from_entries(&p.entries(&ch));
        assert_eq!(s.connections, 3);
        assert_eq!(s.anonymous, 1);
        assert_eq!(s.users.len(), 1);
        assert_eq!(s.users[0].connections, 2);
        assert!(p.leave(&ch, "a") && p.leave(&ch, "b") && p.leave(&ch, "c"));
        assert_eq!(p.count(&ch), 0);
    }

    #[test]
    fn notice_json() {
        let ch = ChannelName::new("room").expect("valid");
        let n = Notice::new(&ch, NoticeKind::Join, &entry("a", Some("ann")));
        let v: serde_json::Value = serde_json::from_slice(&n.json).expect("json");
        assert_eq!(v["join"]["user"], "ann");
        assert_eq!(v["channel"], "room");
    }
}
