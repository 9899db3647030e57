//! Bounded per-channel history and the resume rule every engine shares.
//!
//! Resume is continuous (no gap) only when the server can prove that nothing
//! between the subscriber's id and the first message it is sent was lost: the
//! id is still retained, is the channel's newest id, or is exactly the last id
//! trimmed away. Anything else (trimmed further back, unknown, from before a
//! restart) is reported as a gap, and the subscriber then gets every retained
//! message newer than its id; an id newer than the channel's newest is a gap
//! followed by everything retained.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::id::{MessageId, Since};
use crate::message::Message;

/// The answer to "what came after this point?".
#[derive(Debug, Default, Clone)]
pub struct HistoryPage {
    /// Retained messages after the resume point, oldest first.
    pub messages: Vec<Arc<Message>>,
    /// True when messages may have been lost between the resume point and
    /// the first message of `messages`.
    pub gap: bool,
    /// The channel's newest id (retained or not), if the engine knows one.
    pub last_id: Option<MessageId>,
}

/// The messages one channel retains, oldest first.
#[derive(Debug, Default)]
pub struct History {
    messages: VecDeque<Arc<Message>>,
    /// The newest id ever stored here (survives trimming).
    last_id: Option<MessageId>,
    /// The id of the newest message trimmed away, if any.
    trimmed_through: Option<MessageId>,
}

impl History {
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn last_id(&self) -> Option<MessageId> {
        self.last_id
    }

    /// Appends a message (ids must grow) and trims to `max_len` and `ttl_ms`.
    pub fn push(&mut self, message: Arc<Message>, max_len: usize, ttl_ms: u64, now_ms: u64) {
        self.last_id = Some(message.id);
        if max_len == 0 || ttl_ms == 0 {
            self.trimmed_through = Some(message.id);
            return;
        }
        self.messages.push_back(message);
        self.trim(max_len, ttl_ms, now_ms);
    }

    /// Drops messages past the count or older than the age limit.
    pub fn trim(&mut self, max_len: usize, ttl_ms: u64, now_ms: u64) {
        let oldest_kept = now_ms.saturating_sub(ttl_ms);
        while let Some(front) = self.messages.front() {
            if self.messages.len() > max_len || front.time_ms < oldest_kept {
                self.trimmed_through = Some(front.id);
                self.messages.pop_front();
            } else {
                break;
            }
        }
    }

    /// What a subscriber resuming from `since` must be sent.
    pub fn after(&self, since: Since) -> HistoryPage {
        let (messages, gap) = match since {
            Since::Live => (Vec::new(), false),
            Since::Earliest => (self.messages.iter().cloned().collect(), false),
            // An id newer than anything this channel has (another
            // channel's, a clock that ran ahead, a forged one): the same as
            // any other id we cannot vouch for, a gap and then everything
            // retained, so the subscriber does not wait for ids that will
            // never come.
            Since::After(id) if self.last_id.is_some_and(|last| id > last) => {
                (self.messages.iter().cloned().collect(), true)
            }
            Since::After(id) => {
                let start = self.messages.partition_point(|m| m.id <= id);
                let retained = start > 0 && self.messages[start - 1].id == id;
                let continuous =
                    retained || Some(id) == self.last_id || Some(id) == self.trimmed_through;
                (self.messages.range(start..).cloned().collect(), !continuous)
            }
        };
        HistoryPage {
            messages,
            gap,
            last_id: self.last_id,
        }
    }

    /// The newest id and the newest retained message, if any (`messages`
    /// holds at most that one; never a gap): what a subscribe with
    /// `latest_on_subscribe` reads instead of [`Since::Live`].
    pub fn latest(&self) -> HistoryPage {
        HistoryPage {
            messages: self.messages.back().cloned().into_iter().collect(),
            gap: false,
            last_id: self.last_id,
        }
    }
}

/// The resume rule for an engine that knows nothing of a channel (never
/// published, or freed after its history expired): a resume from a specific
/// id cannot be proven continuous.
pub fn unknown_channel_page(since: Since) -> HistoryPage {
    HistoryPage {
        messages: Vec::new(),
        gap: matches!(since, Since::After(_)),
        last_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelName;
    use crate::message::Payload;
    use bytes::Bytes;

    fn m(seq: u64, time_ms: u64) -> Arc<Message> {
        Arc::new(Message::new(
            ChannelName::new("c").expect("valid"),
            MessageId::new(1, seq),
            Payload::from_bytes(Bytes::from(seq.to_string())),
            time_ms,
        ))
    }

    fn ids(page: &HistoryPage) -> Vec<u64> {
        page.messages.iter().map(|m| m.id.seq).collect()
    }

    #[test]
    fn resume_from_retained_id_is_exact() {
        let mut h = History::default();
        for seq in [2, 5, 9] {
            h.push(m(seq, 0), 10, u64::MAX, 0);
        }
        let page = h.after(Since::After(MessageId::new(1, 5)));
        assert_eq!(ids(&page), vec![9]);
        assert!(!page.gap);
        let page = h.after(Since::After(MessageId::new(1, 9)));
        assert!(page.messages.is_empty() && !page.gap);
        assert_eq!(ids(&h.after(Since::Earliest)), vec![2, 5, 9]);
        assert!(h.after(Since::Live).messages.is_empty());
    }

    #[test]
    fn trimmed_and_unknown_ids_are_gaps() {
        let mut h = History::default();
        for seq in 1..=5 {
            h.push(m(seq, 0), 3, u64::MAX, 0);
        }
        assert_eq!(ids(&h.after(Since::Earliest)), vec![3, 4, 5]);
        // 2 was the last one trimmed: nothing lost after it.
        let page = h.after(Since::After(MessageId::new(1, 2)));
        assert!(!page.gap);
        assert_eq!(ids(&page), vec![3, 4, 5]);
        // 1 is further back: message 2 is lost.
        let page = h.after(Since::After(MessageId::new(1, 1)));
        assert!(page.gap);
        assert_eq!(ids(&page), vec![3, 4, 5]);
        // An id this channel never had.
        let page = h.after(Since::After(MessageId::new(0, 77)));
        assert!(page.gap);
        // An id from the future: unknown, a gap, then everything retained.
        let page = h.after(Since::After(MessageId::new(9, 9)));
        assert!(page.gap);
        assert_eq!(ids(&page), vec![3, 4, 5]);
    }

    #[test]
    fn age_limit_trims() {
        let mut h = History::default();
        h.push(m(1, 1_000), 100, 500, 1_000);
        h.push(m(2, 1_400), 100, 500, 1_400);
        h.trim(100, 500, 1_600);
        assert_eq!(ids(&h.after(Since::Earliest)), vec![2]);
        h.trim(100, 500, 2_000);
        assert!(h.is_empty());
        // The newest id is still known: resuming from it is not a gap.
        let page = h.after(Since::After(MessageId::new(1, 2)));
        assert!(!page.gap);
    }

    #[test]
    fn zero_size_history_keeps_nothing() {
        let mut h = History::default();
        h.push(m(1, 0), 0, 1_000, 0);
        assert!(h.is_empty());
        assert_eq!(h.last_id(), Some(MessageId::new(1, 1)));
        let latest = h.latest();
        assert!(
            latest.messages.is_empty(),
            "nothing retained, nothing latest"
        );
        assert_eq!(latest.last_id, Some(MessageId::new(1, 1)));
    }

    #[test]
    fn latest_is_the_newest_retained_message() {
        let mut h = History::default();
        assert!(h.latest().messages.is_empty());
        assert_eq!(h.latest().last_id, None);
        for seq in 1..=4 {
            h.push(m(seq, 1_000), 3, 500, 1_000);
        }
        let page = h.latest();
        assert_eq!(ids(&page), vec![4]);
        assert_eq!(page.last_id, Some(MessageId::new(1, 4)));
        assert!(!page.gap);
        // Aged out: the id is still known, the message is not.
        h.trim(3, 500, 2_000);
        assert!(h.latest().messages.is_empty());
        assert_eq!(h.latest().last_id, Some(MessageId::new(1, 4)));
    }

    #[test]
    fn an_id_from_the_future_is_a_gap_then_everything() {
        let mut h = History::default();
        for seq in 1..=3 {
            h.push(m(seq, 1_000), 10, 60_000, 1_000);
        }
        let page = h.after(Since::After(MessageId::new(9_999_999, 1)));
        assert!(page.gap);
        let ids: Vec<u64> = page.messages.iter().map(|m| m.id.seq).collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }
}
