//! Per-user offline queues: messages for a user who has no connection are
//! kept (bounded by count and age) and handed over, in order, when the user
//! next subscribes to their personal channel `user:{id}`.
//!
//! Overflow policy: past `history_size` messages or `history_ttl` of age the
//! oldest are dropped, and the queue remembers that it dropped some; the
//! next take reports it ([`Taken::gap`]) so the user is told of the gap
//! instead of silently missing messages. A queue whose messages all aged
//! out is kept (empty, marked) for [`GAP_MEMORY_MS`] after its last push,
//! then forgotten: a user away longer than `history_ttl` plus that long gets
//! no gap notice for it.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::channel::ChannelName;
use crate::message::Message;
use crate::sharded::Sharded;

/// The prefix of personal channels.
pub const USER_PREFIX: &str = "user:";

/// The personal channel of `user`, if the id makes a valid channel name.
/// An empty id is refused: `user:` alone would be a channel, but names no
/// one.
pub fn user_channel(user: &str) -> Result<ChannelName, crate::channel::InvalidChannel> {
    if user.is_empty() {
        return Err(crate::channel::InvalidChannel::Empty);
    }
    ChannelName::new(&format!("{USER_PREFIX}{user}"))
}

/// The user a personal channel belongs to.
pub fn channel_user(channel: &ChannelName) -> Option<&str> {
    channel.as_str().strip_prefix(USER_PREFIX)
}

/// How long an emptied queue still remembers that it dropped messages.
pub const GAP_MEMORY_MS: u64 = 3_600_000;

/// Bounds of one user's queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub size: usize,
    pub ttl_ms: u64,
}

/// One user's queue.
#[derive(Default)]
struct Queue {
    messages: VecDeque<Arc<Message>>,
    /// Messages were dropped since the queue was last taken.
    dropped: bool,
    last_push_ms: u64,
}

/// What [`LocalQueues::take`] hands over.
#[derive(Debug, Default)]
pub struct Taken {
    /// Oldest first.
    pub messages: Vec<Arc<Message>>,
    /// Messages were dropped (size or age) since the last take.
    pub gap: bool,
}

/// Offline queues kept in this process, keyed by personal channel.
#[derive(Default)]
pub struct LocalQueues {
    queues: Sharded<Queue>,
}

impl LocalQueues {
    /// Appends, dropping the oldest past the limits.
    pub fn push(
        &self,
        channel: &ChannelName,
        message: Arc<Message>,
        limits: QueueLimits,
        now_ms: u64,
    ) {
        if limits.size == 0 {
            return;
        }
        let mut shard = self.queues.shard(channel).lock();
        let queue = shard.entry(channel.clone()).or_default();
        queue.messages.push_back(message);
        queue.last_push_ms = now_ms;
        trim(queue, limits, now_ms);
    }

    /// Takes the whole queue (oldest first), leaving it empty.
    pub fn take(&self, channel: &ChannelName, limits: QueueLimits, now_ms: u64) -> Taken {
        let mut shard = self.queues.shard(channel).lock();
        let Some(mut queue) = shard.remove(channel) else {
            return Taken::default();
        };
        trim(&mut queue, limits, now_ms);
        Taken {
            messages: queue.messages.into(),
            gap: queue.dropped,
        }
    }

    pub fn len(&self, channel: &ChannelName) -> usize {
        self.queues
            .shard(channel)
            .lock()
            .get(channel)
            .map_or(0, |q| q.messages.len())
    }

    /// Drops expired messages, and empty queues unless they still have a
    /// gap to report (for at most [`GAP_MEMORY_MS`] after their last push).
    pub fn sweep(&self, limits: QueueLimits, now_ms: u64) {
        let memory = limits.ttl_ms.saturating_add(GAP_MEMORY_MS);
        for shard in self.queues.shards() {
            shard.lock().retain(|_, q| {
                trim(q, limits, now_ms);
                !q.messages.is_empty()
                    || (q.dropped && now_ms.saturating_sub(q.last_push_ms) < memory)
            });
        }
    }
}

fn trim(queue: &mut Queue, limits: QueueLimits, now_ms: u64) {
    let oldest = now_ms.saturating_sub(limits.ttl_ms);
    while queue.messages.len() > limits.size
        || queue.messages.front().is_some_and(|m| m.time_ms < oldest)
    {
        queue.messages.pop_front();
        queue.dropped = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::MessageId;
    use crate::message::Payload;
    use bytes::Bytes;

    #[test]
    fn an_empty_user_id_names_no_channel() {
        assert!(user_channel("").is_err());
        assert!(user_channel(&"u".repeat(123)).is_ok());
        assert!(user_channel(&"u".repeat(124)).is_err());
    }

    #[test]
    fn bounded_and_taken_in_order() {
        let q = LocalQueues::default();
        let ch = user_channel("7").expect("valid");
        assert_eq!(channel_user(&ch), Some("7"));
        let limits = QueueLimits {
            size: 2,
            ttl_ms: 1_000,
        };
        for seq in 1..=3 {
            let m = Arc::new(Message::new(
                ch.clone(),
                MessageId::new(1, seq),
                Payload::from_bytes(Bytes::new()),
                100,
            ));
            q.push(&ch, m, limits, 100);
        }
        let taken = q.take(&ch, limits, 100);
        assert!(taken.gap, "the oldest was dropped");
        let seqs: Vec<u64> = taken.messages.iter().map(|m| m.id.seq).collect();
        assert_eq!(seqs, vec![2, 3]);
        let again = q.take(&ch, limits, 100);
        assert!(again.messages.is_empty() && !again.gap);
        let m = Arc::new(Message::new(
            ch.clone(),
            MessageId::new(1, 9),
            Payload::from_bytes(Bytes::new()),
            100,
        ));
        q.push(&ch, m, limits, 100);
        q.sweep(limits, 5_000);
        assert_eq!(q.len(&ch), 0);
        let aged = q.take(&ch, limits, 5_000);
        assert!(aged.messages.is_empty() && aged.gap, "aged out: a gap");
    }
}
