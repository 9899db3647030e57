//! The mapping between an app's Pusher channel names and Herald channels
//! (docs/pusher.md, "Channels: the mapping"), in one place for the
//! WebSocket dialect and the HTTP API:
//!
//! - the app's channel `c` is the Herald channel `{prefix}c`
//!   (`pusher:{id}:c`);
//! - the user channel `#server-to-user-{u}` (Pusher's user events) is the
//!   personal channel of the Herald user `pusher:{id}:{u}`, that is
//!   `user:pusher:{id}:{u}`: the user's own connections follow it, and
//!   Herald's user delivery (the offline queue) applies.
//!
//! Pusher channel names never hold `:` (their alphabet is letters, digits
//! and `_ - = @ , . ;`), so a name with one is refused: no Pusher client
//! can reach a Herald channel outside its app's mapping with it.

use std::borrow::Cow;

use herald_core::user::{user_channel, USER_PREFIX};
use herald_core::ChannelName;

/// The prefix of Pusher's user channels.
pub(crate) const USER_CHANNEL: &str = "#server-to-user-";

/// The Herald user id of the app's user `user`: `{prefix}{user}`.
pub(crate) fn herald_user(prefix: &str, user: &str) -> String {
    format!("{prefix}{user}")
}

/// The Herald channel of the app's channel `name` (`prefix` is the app's
/// `pusher:{id}:`), or why it cannot be one, said to the client.
pub(crate) fn herald_channel(prefix: &str, name: &str) -> Result<ChannelName, String> {
    if let Some(user) = name.strip_prefix(USER_CHANNEL) {
        if user.is_empty() {
            return Err(format!("{USER_CHANNEL} needs a user id"));
        }
        return user_channel(&herald_user(prefix, user))
            .map_err(|e| format!("user id {user:?} cannot be served: {e}"));
    }
    if name.is_empty() {
        return Err("a channel needs a name".into());
    }
    if name.contains(':') || name.contains('#') {
        return Err(format!(
            "channel name {name:?} holds a character Pusher channel names do not have"
        ));
    }
    ChannelName::new(&format!("{prefix}{name}")).map_err(|e| {
        format!(
            "channel name {name:?} is not served: {e} (letters, digits and _ - = @ . only, \
             at most {} bytes)",
            herald_core::channel::MAX_CHANNEL_LEN - prefix.len()
        )
    })
}

/// The Pusher channel name of a Herald channel of an app:
/// `pusher:{id}:{name}` is `name`, `user:pusher:{id}:{u}` is
/// `#server-to-user-{u}`; any other name is given back as it is.
pub(crate) fn pusher_name(channel: &str) -> Cow<'_, str> {
    if let Some(user) = channel
        .strip_prefix(USER_PREFIX)
        .and_then(|rest| rest.strip_prefix("pusher:"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, user)| user)
    {
        return Cow::Owned(format!("{USER_CHANNEL}{user}"));
    }
    Cow::Borrowed(
        channel
            .strip_prefix("pusher:")
            .and_then(|rest| rest.split_once(':'))
            .map_or(channel, |(_, name)| name),
    )
}

/// Whether the Herald channel is an app's user channel.
pub(crate) fn is_user_channel(channel: &ChannelName) -> bool {
    channel.as_str().starts_with(USER_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ways() {
        let p = "pusher:app-1:";
        for name in ["news", "presence-room", "private-encrypted-x", "cache-c"] {
            let channel = herald_channel(p, name).expect("served");
            assert_eq!(channel.as_str(), format!("{p}{name}"));
            assert_eq!(pusher_name(channel.as_str()), name);
            assert!(!is_user_channel(&channel));
        }
        let user = herald_channel(p, "#server-to-user-ann@x.org").expect("user");
        assert_eq!(user.as_str(), "user:pusher:app-1:ann@x.org");
        assert!(is_user_channel(&user));
        assert_eq!(pusher_name(user.as_str()), "#server-to-user-ann@x.org");
        // A user id with a colon round-trips (the app id has none).
        let user = herald_channel(p, "#server-to-user-a:b").expect("user");
        assert_eq!(pusher_name(user.as_str()), "#server-to-user-a:b");
        for bad in [
            "user:x",
            "a:b",
            "#other",
            "#server-to-user-",
            "a,b",
            "sp ace",
            "",
        ] {
            assert!(herald_channel(p, bad).is_err(), "{bad:?}");
        }
        assert_eq!(pusher_name("plain"), "plain");
    }
}
