//! Message ids: opaque to clients, ordered per channel inside the server.
//!
//! An id is written `MS-SEQ` (two unsigned decimal numbers), the shape Redis
//! streams use, so both engines share one parser and one ordering. The memory
//! engine puts its start time in `MS` and a process-wide counter in `SEQ`, so
//! ids from an earlier run of the process sort before every new id and can be
//! recognised as "not retained" (a gap), never confused with new messages.

use std::fmt;
use std::str::FromStr;

/// The longest id text we accept: two 20-digit numbers and a dash.
pub const MAX_ID_LEN: usize = 41;

/// A message id. Ordered by `(ms, seq)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId {
    pub ms: u64,
    pub seq: u64,
}

impl MessageId {
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a text is not a message id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a message id: expected two decimal numbers joined by '-', at most {MAX_ID_LEN} characters"
)]
pub struct InvalidId;

impl FromStr for MessageId {
    type Err = InvalidId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > MAX_ID_LEN {
            return Err(InvalidId);
        }
        let (ms, seq) = s.split_once('-').ok_or(InvalidId)?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(InvalidId);
        }
        Ok(Self {
            ms: ms.parse().map_err(|_| InvalidId)?,
            seq: seq.parse().map_err(|_| InvalidId)?,
        })
    }
}

/// Where a subscriber wants to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// Only messages published after the subscription is made.
    Live,
    /// Everything retained (`since=earliest`).
    Earliest,
    /// Everything after this id.
    After(MessageId),
}

impl Since {
    /// Parses the text of `?since=`, `?last_event_id=` or `Last-Event-ID`.
    pub fn parse(text: &str) -> Result<Self, InvalidId> {
        match text {
            "earliest" => Ok(Self::Earliest),
            _ => text.parse().map(Self::After),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_order() {
        let a: MessageId = "1700000000000-5".parse().expect("valid");
        let b: MessageId = "1700000000000-12".parse().expect("valid");
        let c: MessageId = "1700000000001-0".parse().expect("valid");
        assert!(a < b && b < c, "numeric, not lexicographic, order");
        assert_eq!(a.to_string(), "1700000000000-5");
    }

    #[test]
    fn rejects_what_cannot_be_ours() {
        for bad in [
            "",
            "12",
            "-1",
            "1-",
            "a-1",
            "1-1-1",
            "1 -1",
            "99999999999999999999-1",
            &"1".repeat(60),
        ] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn since_keywords() {
        assert_eq!(Since::parse("earliest"), Ok(Since::Earliest));
        assert_eq!(Since::parse("3-4"), Ok(Since::After(MessageId::new(3, 4))));
        assert!(Since::parse("latest").is_err());
    }
}
