//! Settings per channel-name prefix.
//!
//! A channel takes the options of the longest configured prefix its name
//! starts with, or the defaults.

use std::time::Duration;

/// Options that apply to every channel under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelOptions {
    /// Messages retained per channel.
    pub history_size: usize,
    /// How long a message is retained.
    pub history_ttl: Duration,
    /// Whether connected clients (not only the backend) may publish.
    pub client_publish: bool,
    /// Subscribing needs a token granting the channel.
    pub private: bool,
    /// Presence is kept (who is subscribed).
    pub presence: bool,
    /// Subscribers get join and leave notices (needs `presence`).
    pub join_leave: bool,
    /// Most subscribers at once (0: no limit).
    pub max_subscribers: usize,
    /// Messages to a user of this namespace wait in the user's mailbox
    /// until acknowledged, unless the publish says otherwise (see
    /// [`crate::mailbox`]).
    pub ack: bool,
    /// Pending messages one user's mailbox keeps at most.
    pub mailbox_size: usize,
    /// How long a message may stay pending in a mailbox.
    pub mailbox_ttl: Duration,
    /// A subscriber without a resume point first gets the channel's newest
    /// retained message, marked as such (see [`crate::node::Item::Latest`]).
    pub latest_on_subscribe: bool,
}

/// Pending messages per mailbox unless configured otherwise.
pub const DEFAULT_MAILBOX_SIZE: usize = 100;
/// How long a message may stay pending unless configured otherwise.
pub const DEFAULT_MAILBOX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Retained messages per channel unless configured otherwise.
pub const DEFAULT_HISTORY_SIZE: usize = 100;
/// How long messages are retained unless configured otherwise.
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(600);

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            history_size: DEFAULT_HISTORY_SIZE,
            history_ttl: DEFAULT_HISTORY_TTL,
            client_publish: false,
            private: false,
            presence: false,
            join_leave: false,
            max_subscribers: 0,
            ack: false,
            mailbox_size: DEFAULT_MAILBOX_SIZE,
            mailbox_ttl: DEFAULT_MAILBOX_TTL,
            latest_on_subscribe: false,
        }
    }
}

impl ChannelOptions {
    pub fn history_ttl_ms(&self) -> u64 {
        u64::try_from(self.history_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// The bounds of a mailbox under these options.
    pub fn mailbox_limits(&self) -> crate::mailbox::MailboxLimits {
        crate::mailbox::MailboxLimits {
            size: self.mailbox_size,
            ttl_ms: u64::try_from(self.mailbox_ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// The options table: defaults plus prefixes.
#[derive(Clone, Debug, Default)]
pub struct Namespaces {
    default: ChannelOptions,
    /// Sorted longest prefix first, so the first match is the best.
    prefixes: Vec<(String, ChannelOptions)>,
}

impl Namespaces {
    pub fn new(default: ChannelOptions, mut prefixes: Vec<(String, ChannelOptions)>) -> Self {
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Self { default, prefixes }
    }

    /// The defaults, and every configured prefix with its options.
    pub fn entries(&self) -> (&ChannelOptions, &[(String, ChannelOptions)]) {
        (&self.default, &self.prefixes)
    }

    pub fn options(&self, channel: &str) -> &ChannelOptions {
        self.prefixes
            .iter()
            .find(|(p, _)| channel.starts_with(p.as_str()))
            .map_or(&self.default, |(_, o)| o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let small = |n| ChannelOptions {
            history_size: n,
            ..ChannelOptions::default()
        };
        let ns = Namespaces::new(
            ChannelOptions::default(),
            vec![("chat:".into(), small(5)), ("chat:vip:".into(), small(50))],
        );
        assert_eq!(ns.options("chat:vip:1").history_size, 50);
        assert_eq!(ns.options("chat:x").history_size, 5);
        assert_eq!(ns.options("news").history_size, DEFAULT_HISTORY_SIZE);
    }
}
