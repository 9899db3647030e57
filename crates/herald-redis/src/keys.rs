//! Redis names: every key and pub/sub channel this engine uses, in one place.
//!
//! Per Herald channel `C`, with the default prefix `herald`:
//!
//! | name                | type            | holds                                   |
//! |---------------------|-----------------|-----------------------------------------|
//! | `herald:{C}:stream` | stream          | history; the entry id is the message id |
//! | `herald:{C}:live`   | pub/sub channel | one frame per publish ([`crate::frame`]) |
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
    }
}
