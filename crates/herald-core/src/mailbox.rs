//! Acknowledged user mailboxes: at-least-once delivery to a person.
//!
//! A message published to a user with `ack` stays in that user's mailbox
//! until a client of the user acknowledges it, by id or cumulatively up to
//! an id. It is delivered live to every connection of the user as any
//! message of the personal channel is; every subscribe of the personal
//! channel (a new tab, a reconnect, on any node and transport) gets every
//! message still pending first, in id order with its original id, then live
//! ones (the node merges them with history, see [`crate::node`]). One
//! acknowledgement removes a message for every connection.
//!
//! Bounds, per user namespace: `mailbox_size` messages and `mailbox_ttl` of
//! age. Overflow policy: the oldest pending message is dropped. A dropped
//! message is never dropped silently: the engine reports it ([`Dropped`],
//! with the ids, which the server sends to the backend as the
//! `user.mailbox_dropped` webhook), and the user hears of the gap: at once,
//! as a gap notice on the personal channel, when a connection of the user
//! is there; otherwise the mailbox remembers it and the next subscribe that
//! reads the mailbox gets the gap notice first (once: the read takes the
//! mark). A mailbox that holds only that mark is forgotten after
//! [`crate::user::GAP_MEMORY_MS`].
//!
//! This module is the in-process store of the memory engine; the Redis
//! engine keeps the same state in Redis (its `mailbox` scripts).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::channel::ChannelName;
use crate::id::MessageId;
use crate::message::Message;
use crate::sharded::Sharded;
use crate::user::GAP_MEMORY_MS;

/// Bounds of one user's mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxLimits {
    /// Pending messages kept at most.
    pub size: usize,
    /// How long a message may stay pending.
    pub ttl_ms: u64,
}

/// What a client acknowledges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// These messages.
    Ids(Vec<MessageId>),
    /// Every pending message up to and including this id.
    UpTo(MessageId),
}

impl Ack {
    /// Whether `id` is acknowledged by this.
    pub fn covers(&self, id: MessageId) -> bool {
        match self {
            Self::Ids(ids) => ids.contains(&id),
            Self::UpTo(upto) => id <= *upto,
        }
    }
}

/// Most ids one acknowledgement may list.
pub const MAX_ACK_IDS: usize = 1_000;

/// The outcome of an acknowledgement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Acked {
    /// Pending messages it removed.
    pub removed: usize,
    /// Messages still pending.
    pub pending: usize,
}

/// A mailbox as the backend sees it (`GET /api/users/{id}/mailbox`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailboxState {
    pub pending: usize,
    /// The oldest pending message's id and when it was published (ms since
    /// the Unix epoch).
    pub oldest: Option<(MessageId, u64)>,
    /// The mailbox dropped messages that no client of the user has heard
    /// of yet.
    pub gap: bool,
}

/// Why pending messages were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// More than `mailbox_size` were pending.
    Overflow,
    /// They were pending longer than `mailbox_ttl`.
    Expired,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overflow => "overflow",
            Self::Expired => "expired",
        }
    }
}

/// Pending messages a mailbox dropped unacknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The personal channel.
    pub channel: ChannelName,
    /// Oldest first.
    pub ids: Vec<MessageId>,
    pub reason: DropReason,
}

/// What a subscribe reads from the mailbox.
#[derive(Debug, Clone, Default)]
pub struct MailboxRead {
    /// Every pending message, oldest first.
    pub messages: Vec<Arc<Message>>,
    /// Messages were dropped that no client heard of; taken by this read.
    pub gap: bool,
}

#[derive(Default)]
struct Mailbox {
    messages: VecDeque<Arc<Message>>,
    /// When it dropped messages no client heard of (ms), if it did.
    gap_since: Option<u64>,
}

/// The memory engine's mailboxes, keyed by personal channel.
#[derive(Default)]
pub struct LocalMailboxes {
    boxes: Sharded<Mailbox>,
}

impl LocalMailboxes {
    /// Adds a message, dropping the oldest past `limits.size`. `live`: a
    /// connection of the user is there to hear of a drop at once; if not,
    /// the mailbox remembers the gap.
    pub fn push(
        &self,
        message: Arc<Message>,
        limits: MailboxLimits,
        live: bool,
        now_ms: u64,
    ) -> Option<Dropped> {
        let channel = message.channel.clone();
        let mut shard = self.boxes.shard(&channel).lock();
        let mailbox = shard.entry(channel.clone()).or_default();
        mailbox.messages.push_back(message);
        let mut ids = Vec::new();
        while mailbox.messages.len() > limits.size {
            if let Some(m) = mailbox.messages.pop_front() {
                ids.push(m.id);
            }
        }
        dropped(
            shard_mark(&mut shard, &channel, live, now_ms, &ids),
            channel,
            ids,
            DropReason::Overflow,
        )
    }

    /// Every pending message, and the gap mark (taken).
    pub fn read(&self, channel: &ChannelName) -> MailboxRead {
        let mut shard = self.boxes.shard(channel).lock();
        let Some(mailbox) = shard.get_mut(channel) else {
            return MailboxRead::default();
        };
        let gap = mailbox.gap_since.take().is_some();
        let messages = mailbox.messages.iter().cloned().collect();
        if mailbox.messages.is_empty() {
            shard.remove(channel);
        }
        MailboxRead { messages, gap }
    }

    /// Removes what `ack` covers.
    pub fn ack(&self, channel: &ChannelName, ack: &Ack) -> Acked {
        let mut shard = self.boxes.shard(channel).lock();
        let Some(mailbox) = shard.get_mut(channel) else {
            return Acked::default();
        };
        let before = mailbox.messages.len();
        mailbox.messages.retain(|m| !ack.covers(m.id));
        let acked = Acked {
            removed: before - mailbox.messages.len(),
            pending: mailbox.messages.len(),
        };
        if mailbox.messages.is_empty() && mailbox.gap_since.is_none() {
            shard.remove(channel);
        }
        acked
    }

    /// Forgets a mailbox (its channel was deleted by the backend).
    pub fn remove(&self, channel: &ChannelName) {
        self.boxes.shard(channel).lock().remove(channel);
    }

    pub fn state(&self, channel: &ChannelName) -> MailboxState {
        let shard = self.boxes.shard(channel).lock();
        shard
            .get(channel)
            .map_or_else(MailboxState::default, |m| MailboxState {
                pending: m.messages.len(),
                oldest: m.messages.front().map(|m| (m.id, m.time_ms)),
                gap: m.gap_since.is_some(),
            })
    }

    /// Drops what is pending past its TTL (`limits` per personal channel)
    /// and forgets old gap marks; answers what it dropped. `live` says
    /// whether a connection of the user is there to hear of it at once.
    pub fn sweep(
        &self,
        now_ms: u64,
        limits: impl Fn(&ChannelName) -> MailboxLimits,
        live: impl Fn(&ChannelName) -> bool,
    ) -> Vec<Dropped> {
        let mut all = Vec::new();
        for shard in self.boxes.shards() {
            let mut shard = shard.lock();
            let mut expired = Vec::new();
            for (channel, mailbox) in shard.iter_mut() {
                let oldest = now_ms.saturating_sub(limits(channel).ttl_ms);
                let mut ids = Vec::new();
                while mailbox.messages.front().is_some_and(|m| m.time_ms < oldest) {
                    if let Some(m) = mailbox.messages.pop_front() {
                        ids.push(m.id);
                    }
                }
                if !ids.is_empty() {
                    expired.push((channel.clone(), ids));
                }
            }
            for (channel, ids) in expired {
                let live = live(&channel);
                if let Some(d) = dropped(
                    shard_mark(&mut shard, &channel, live, now_ms, &ids),
                    channel,
                    ids,
                    DropReason::Expired,
                ) {
                    all.push(d);
                }
            }
            shard.retain(|_, m| {
                !m.messages.is_empty()
                    || m.gap_since
                        .is_some_and(|at| now_ms.saturating_sub(at) < GAP_MEMORY_MS)
            });
        }
        all
    }
}

/// Records the gap of `ids` just dropped from `channel`'s mailbox unless a
/// connection hears of it live; true when something was dropped.
fn shard_mark(
    shard: &mut std::collections::HashMap<ChannelName, Mailbox>,
    channel: &ChannelName,
    live: bool,
    now_ms: u64,
    ids: &[MessageId],
) -> bool {
    if ids.is_empty() {
        return false;
    }
    if !live {
        shard.entry(channel.clone()).or_default().gap_since = Some(now_ms);
    }
    true
}

fn dropped(
    any: bool,
    channel: ChannelName,
    ids: Vec<MessageId>,
    reason: DropReason,
) -> Option<Dropped> {
    any.then_some(Dropped {
        channel,
        ids,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Payload;
    use crate::user::user_channel;
    use bytes::Bytes;

    fn msg(channel: &ChannelName, seq: u64, time_ms: u64) -> Arc<Message> {
        Arc::new(
            Message::new(
                channel.clone(),
                MessageId::new(1, seq),
                Payload::from_bytes(Bytes::from_static(b"x")),
                time_ms,
            )
            .acknowledged(true),
        )
    }

    const LIMITS: MailboxLimits = MailboxLimits {
        size: 3,
        ttl_ms: 1_000,
    };

    #[test]
    fn pending_until_acknowledged_by_id_or_up_to() {
        let boxes = LocalMailboxes::default();
        let ch = user_channel("ann").expect("valid");
        for seq in 1..=3 {
            assert_eq!(boxes.push(msg(&ch, seq, 10), LIMITS, true, 10), None);
        }
        let read = boxes.read(&ch);
        let seqs: Vec<u64> = read.messages.iter().map(|m| m.id.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert!(!read.gap);
        assert_eq!(boxes.read(&ch).messages.len(), 3, "a read removes nothing");
        let acked = boxes.ack(&ch, &Ack::Ids(vec![MessageId::new(1, 2)]));
        assert_eq!(
            acked,
            Acked {
                removed: 1,
                pending: 2
            }
        );
        let acked = boxes.ack(&ch, &Ack::Ids(vec![MessageId::new(1, 2)]));
        assert_eq!(acked.removed, 0, "twice is harmless");
        let state = boxes.state(&ch);
        assert_eq!(state.pending, 2);
        assert_eq!(state.oldest, Some((MessageId::new(1, 1), 10)));
        let acked = boxes.ack(&ch, &Ack::UpTo(MessageId::new(1, 3)));
        assert_eq!(
            acked,
            Acked {
                removed: 2,
                pending: 0
            }
        );
        assert_eq!(boxes.state(&ch), MailboxState::default());
        assert!(boxes.boxes.shards().all(|s| s.lock().is_empty()), "freed");
    }

    #[test]
    fn overflow_drops_the_oldest_and_reports_it() {
        let boxes = LocalMailboxes::default();
        let ch = user_channel("bo").expect("valid");
        for seq in 1..=3 {
            boxes.push(msg(&ch, seq, 10), LIMITS, false, 10);
        }
        let dropped = boxes
            .push(msg(&ch, 4, 10), LIMITS, false, 10)
            .expect("dropped");
        assert_eq!(dropped.ids, vec![MessageId::new(1, 1)]);
        assert_eq!(dropped.reason, DropReason::Overflow);
        assert!(boxes.state(&ch).gap);
        let read = boxes.read(&ch);
        assert!(read.gap, "the next read hears of it");
        assert_eq!(read.messages.len(), 3);
        assert!(!boxes.read(&ch).gap, "once");
        // With a connection there, it hears at once and nothing is kept.
        boxes
            .push(msg(&ch, 5, 10), LIMITS, true, 10)
            .expect("dropped");
        assert!(!boxes.state(&ch).gap);
    }

    #[test]
    fn expiry_drops_and_reports_then_forgets() {
        let boxes = LocalMailboxes::default();
        let ch = user_channel("cy").expect("valid");
        boxes.push(msg(&ch, 1, 100), LIMITS, false, 100);
        boxes.push(msg(&ch, 2, 900), LIMITS, false, 900);
        assert!(boxes.sweep(1_000, |_| LIMITS, |_| false).is_empty());
        let dropped = boxes.sweep(1_500, |_| LIMITS, |_| false);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].ids, vec![MessageId::new(1, 1)]);
        assert_eq!(dropped[0].reason, DropReason::Expired);
        let dropped = boxes.sweep(2_000, |_| LIMITS, |_| false);
        assert_eq!(dropped[0].ids, vec![MessageId::new(1, 2)]);
        let state = boxes.state(&ch);
        assert_eq!((state.pending, state.gap), (0, true));
        boxes.sweep(2_000 + GAP_MEMORY_MS, |_| LIMITS, |_| false);
        assert_eq!(boxes.state(&ch), MailboxState::default(), "forgotten");
    }
}
