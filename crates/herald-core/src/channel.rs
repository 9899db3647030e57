//! Channel names: the one place that says what a channel name may be.

use std::fmt;
use std::sync::Arc;

/// The longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;

/// A validated channel name. Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a text is not a channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidChannel {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    #[error("channel name may hold only letters, digits and _ - . : @ = (found {0:?})")]
    BadChar(char),
}

/// Whether `c` may appear in a channel name.
fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@' | '=')
}

impl ChannelName {
    pub fn new(text: &str) -> Result<Self, InvalidChannel> {
        if text.is_empty() {
            return Err(InvalidChannel::Empty);
        }
        if text.len() > MAX_CHANNEL_LEN {
            return Err(InvalidChannel::TooLong);
        }
        if let Some(c) = text.chars().find(|c| !allowed(*c)) {
            return Err(InvalidChannel::BadChar(c));
        }
        Ok(Self(Arc::from(text)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_usual_names() {
        for ok in [
            "news",
            "chat:lobby",
            "user:42",
            "a.b-c_d@e=f",
            &"x".repeat(128),
        ] {
            assert!(ChannelName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(ChannelName::new(""), Err(InvalidChannel::Empty));
        assert_eq!(
            ChannelName::new(&"x".repeat(129)),
            Err(InvalidChannel::TooLong)
        );
        assert_eq!(ChannelName::new("a b"), Err(InvalidChannel::BadChar(' ')));
        assert!(ChannelName::new("a/b").is_err());
        assert!(ChannelName::new("é").is_err());
    }
}
