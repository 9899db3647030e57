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
//! and, only with webhooks (the `occupancy` module; `<member>` is `u:<user
//! id>` or `c:<channel>`):
//!
//! | name                | type            | holds                                   |
//! |---------------------|-----------------|-----------------------------------------|
//! | `herald:holders:<member>` | set       | the count identities with a connection of that user / a subscriber of that channel |
//! | `herald:nodeholds:<identity>` | set   | the members that identity holds (for cleanup when it dies) |
//! | `herald:leaving:u`, `herald:leaving:c` | sorted set | members held by nobody, scored by when they were released (ms) |
//! | `herald:webhooks`   | stream          | the event outbox: one field `e`, the event's JSON object without `id`; the entry id is the event id |
//! | `herald:webhooks:dropped` | string    | events trimmed from the outbox because it was full |
//! | `herald:webhooks:lease` | string      | the node id of the node delivering, until its lease expires |
//!
//! **Appending an event from a Lua script.** The outbox is the stream
//! [`Keys::webhooks`]; an event is one entry with the single field `e`,
//! its JSON object without `id` (the stream id is the id). A script appends
//! one with
//!
//! ```text
//! XADD <prefix>:webhooks MAXLEN ~ <capacity> * e <json>
//! ```
//!
//! where `<json>` is `{"event":"<name>","time_ms":<ms>,...}` and
//! `<capacity>` the configured outbox size (`EventOptions::capacity`). To
//! have what the trim drops counted, a script includes the `EVENT_LUA`
//! snippet of the `script` module and calls `record_event(key, capacity,
//! json)`, which does that `XADD` and adds the entries trimmed away to
//! `<prefix>:webhooks:dropped`. Record only events the node is configured
//! to (the script cannot know: pass the name, or `''` for "not recorded",
//! as an argument), and count them in the engine's `EventCounts` when the
//! script says it recorded one.
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

    /// What comes before and after the channel name in [`Keys::subs`].
    pub fn subs_parts(&self) -> (String, &'static str) {
        (format!("{}:{{", self.prefix), "}:subs")
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

    /// The node identities holding `member` (`u:<user>` or `c:<channel>`).
    pub fn holders(&self, member: &str) -> String {
        format!("{}{member}", self.holders_prefix())
    }

    /// What [`Keys::holders`] puts before the member (scripts build the
    /// name from it).
    pub fn holders_prefix(&self) -> String {
        format!("{}:holders:", self.prefix)
    }

    /// The members a count identity holds.
    pub fn node_holds(&self, identity: &str) -> String {
        format!("{}:nodeholds:{identity}", self.prefix)
    }

    /// The members of `kind` (`u`, `c` or `m`) held by nobody, by release time.
    pub fn leaving(&self, kind: char) -> String {
        format!("{}{kind}", self.leaving_prefix())
    }

    /// What [`Keys::leaving`] puts before the kind.
    pub fn leaving_prefix(&self) -> String {
        format!("{}:leaving:", self.prefix)
    }

    /// The event outbox (a stream; see the module docs).
    pub fn webhooks(&self) -> String {
        format!("{}:webhooks", self.prefix)
    }

    /// Events trimmed from the outbox because it was full.
    pub fn webhooks_dropped(&self) -> String {
        format!("{}:webhooks:dropped", self.prefix)
    }

    /// Which node delivers the outbox, until its lease expires.
    pub fn webhooks_lease(&self) -> String {
        format!("{}:webhooks:lease", self.prefix)
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
        assert_eq!(keys.holders("u:ann"), "herald:holders:u:ann");
        assert_eq!(keys.leaving('c'), "herald:leaving:c");
        assert_eq!(keys.webhooks(), "herald:webhooks");
        // The scripts name the dropped counter `<outbox>:dropped`.
        assert_eq!(
            keys.webhooks_dropped(),
            format!("{}:dropped", keys.webhooks())
        );
    }
}
