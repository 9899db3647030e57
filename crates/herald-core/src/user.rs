//! Per-user offline queues: messages for a user who has no connection are
//! kept (bounded by count and age) and handed over, in order, when the user
//! next subscribes to their personal channel `user:{id}`.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::channel::ChannelName;
use crate::message::Message;
use crate::sharded::Sharded;

/// The prefix of personal channels.
pub const USER_PREFIX: &str = "user:";

/// The personal channel of `user`, if the id makes a valid channel name.
pub fn user_channel(user: &str) -> Result<ChannelName, crate::channel::InvalidChannel> {
    ChannelName::new(&format!("{USER_PREFIX}{user}"))
}

/// The user a personal channel belongs to.
pub fn channel_user(channel: &ChannelName) -> Option<&str> {
    channel.as_str().strip_prefix(USER_PREFIX)
}

/// Bounds of one user's queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub size: usize,
    pub ttl_ms: u64,
}

/// Offline queues kept in this process, keyed by personal channel.
#[derive(Default)]
pub struct LocalQueues {
    queues: Sharded<VecDeque<Arc<Message>>>,
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
        queue.push_back(message);
        trim(queue, limits, now_ms);
    }

    /// Takes the whole queue (oldest first), leaving it empty.
    pub fn take(
        &self,
        channel: &ChannelName,
        limits: QueueLimits,
        now_ms: u64,
    ) -> Vec<Arc<Message>> {
        let mut shard = self.queues.shard(channel).lock();
        let Some(mut queue) = shard.remove(channel) else {
            return Vec::new();
        };
        trim(&mut queue, limits, now_ms);
        queue.into()
    }

    pub fn len(&self, channel: &ChannelName) -> usize {
        self.queues
            .shard(channel)
            .lock()
            .get(channel)
            .map_or(0, VecDeque::len)
    }

    /// Drops expired messages and empty queues.
    pub fn sweep(&self, limits: QueueLimits, now_ms: u64) {
        for shard in self.queues.shards() {
            shard.lock().retain(|_, q| {
                trim(q, limits, now_ms);
                !q.is_empty()
            });
        }
    }
}

fn trim(queue: &mut VecDeque<Arc<Message>>, limits: QueueLimits, now_ms: u64) {
    let oldest = now_ms.saturating_sub(limits.ttl_ms);
    while queue.len() > limits.size || queue.front().is_some_and(|m| m.time_ms < oldest) {
        queue.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::MessageId;
    use crate::message::Payload;
    use bytes::Bytes;

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
        let taken: Vec<u64> = q.take(&ch, limits, 100).iter().map(|m| m.id.seq).collect();
        assert_eq!(taken, vec![2, 3]);
        assert!(q.take(&ch, limits, 100).is_empty());
        let m = Arc::new(Message::new(
            ch.clone(),
            MessageId::new(1, 9),
            Payload::from_bytes(Bytes::new()),
            100,
        ));
        q.push(&ch, m, limits, 100);
        q.sweep(limits, 5_000);
        assert_eq!(q.len(&ch), 0);
    }
}
