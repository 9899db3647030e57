//! Redis names: every key and pub/sub channel this engine uses, in one place.
//!
//! Per Herald channel `C`, with the default prefix `herald`:
//!
//! | name                | type            | holds                                   |
//! |---------------------|-----------------|-----------------------------------------|
//! | `herald:{C}:stream` | stream          | history; the entry id is the message id |
//! | `herald:{C}:live`   | pub/sub channel | one frame per publish, removal or presence notice ([`crate::frame`]) |
//! | `herald:{C}:presence` | hash          | field `<node>/<seq>` per joined connection, value JSON `{"expires_ms":…,"client":…,"user":…,"info":…,"node":…}` |
//! | `herald:{C}:subs`   | hash            | field `<node>.<epoch>` (a count identity), value its local subscribers |
//! | `herald:{C}:queue`  | list            | a personal channel's offline queue: `h1 m` frames, oldest first |
//! | `herald:{C}:queue_gap` | string       | `1` if the queue dropped messages since it was last taken, `0` if it holds (or held) messages |
//! | `herald:{C}:slots`  | hash            | field `<node>/<seq>` per `max_subscribers` place held, value its expiry (ms) |
//! | `herald:{C}:idem:<key>` | string      | `<id> <time_ms>` of the publish that used idempotency key `<key>`, until the window ends |
//! | `herald:{C}:mbox`   | stream          | a personal channel's acknowledged mailbox: entry id = message id, fields `k`, `t`, `d`, `x` (expiry ms) ([`crate::mailbox`]) |
//! | `herald:{C}:mbox_gap` | string        | set while the mailbox dropped messages no client heard of |
//!
//! and once per deployment:
//!
//! | name                | type            | holds                                   |
//! |---------------------|-----------------|-----------------------------------------|
//! | `herald:control`    | pub/sub channel | node-wide commands (`h1 d` disconnect a user), every node subscribes |
//! | `herald:claim:<key>` | string         | a used single-use key, until its expiry  |
//! | `herald:mailboxes`  | sorted set      | personal channel → expiry (ms) of its mailbox's oldest entry |
//! | `herald:nodes`      | hash            | node count identity `<node>.<epoch>` → expiry ms (the registry of live nodes) |
//! | `herald:nodecounts:<identity>` | set  | the `subs` keys where that identity wrote a count (for cleanup when it dies) |
//!
//! The `{C}` hash tag puts everything of one channel in one Redis Cluster
//! slot, so each script touches a single slot. Channel names cannot contain
//! `{` or `}` (see [`herald_core::channel`]), so the tag is always exactly
//! the channel name.

use herald_core::ChannelName;

/// The default prefix of keys and pub/sub channels.
pub const DEFAULT_PREFIX: &str = "herald";

/// Builds the names for one deployment's prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The stream holding the channel's history.
    pub fn stream(&self, channel: &ChannelName) -> String {
        format!("{}:{{{channel}}}:stream", self.prefix)
    }

    /// The pub/sub channel every node following `channel` subscribes to.
    pub fn live(&self, channel: &ChannelName) -> String {
        format!("{}:{{{channel}}}:live", self.prefix)
    }

    /// The hash of the channel's presence entries, from every node.
    pub fn presence(&self, channel: &ChannelName) -> String {
        format!("{}:{{{channel}}}:presence", self.prefix)
    }

    /// The hash of each node's local subscriber count of the channel.
    pub fn subs(&self, channel: &ChannelName) -> String {
        format!("{}:{{{channel}}}:subs", self.prefix)
    }

    /// The offline queue of a personal channel.
    pub fn queue(&self, channel: &ChannelName) -> String {
        format!("{}:{{{channel}}}:queue", self.prefix)
    }

    /// The marker of a personal channel's queue: did it drop messages.
    pub fn queue_gap(&self, channel: &ChannelName) -> String {
        format!("{}:{{{channel}}}:queue_gap", self.prefix)
    }

    /// The hash of the `max_subscribers` places held on the channel.
    pub fn slots(&self, channel: &ChannelName) -> String {
        format!("{}:{{{channel}}}:slots", self.prefix)
    }

    /// What the publish that used idempotency key `key` on `channel` got.
    pub fn idempotency(&self, channel: &ChannelName, key: &str) -> String {
        format!("{}:{{{channel}}}:idem:{key}", self.prefix)
    }

    /// A personal channel's acknowledged mailbox.
    pub fn mailbox(&self, channel: &ChannelName) -> String {
        format!("{}:{{{channel}}}:mbox", self.prefix)
    }

    /// The mark of a mailbox that dropped messages no client heard of.
    pub fn mailbox_gap(&self, channel: &ChannelName) -> String {
        format!("{}:{{{channel}}}:mbox_gap", self.prefix)
    }

    /// Every mailbox holding messages, by the expiry of its oldest.
    pub fn mailboxes(&self) -> String {
        format!("{}:mailboxes", self.prefix)
    }

    /// The key prefix (the mailbox sweep builds names from it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The pub/sub channel every node subscribes to for node-wide commands.
    pub fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// The registry of nodes whose subscriber counts hold.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// The `subs` keys a count identity wrote to.
    pub fn node_counts(&self, identity: &str) -> String {
        format!("{}:nodecounts:{identity}", self.prefix)
    }

    /// The marker of a used single-use key.
    pub fn claim(&self, key: &str) -> String {
        format!("{}:claim:{key}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_the_hash_tag() {
        let keys = Keys::new(DEFAULT_PREFIX);
        let c = ChannelName::new("chat:lobby").expect("valid");
        assert_eq!(keys.stream(&c), "herald:{chat:lobby}:stream");
        assert_eq!(keys.live(&c), "herald:{chat:lobby}:live");
        assert_eq!(keys.presence(&c), "herald:{chat:lobby}:presence");
        assert_eq!(keys.subs(&c), "herald:{chat:lobby}:subs");
        assert_eq!(keys.queue(&c), "herald:{chat:lobby}:queue");
        // The mailbox sweep builds these from the prefix itself.
        assert_eq!(keys.mailbox(&c), "herald:{chat:lobby}:mbox");
        assert_eq!(keys.mailbox_gap(&c), "herald:{chat:lobby}:mbox_gap");
        assert_eq!(keys.control(), "herald:control");
        assert_eq!(keys.claim("t1"), "herald:claim:t1");
    }
}
