//! The engine seam: where messages are stored and how they reach every node.
//!
//! An engine assigns ids, keeps history and makes sure every node's [`Hub`]
//! gets each message once, in id order per channel. [`MemoryEngine`] does all
//! of that inside one process; a Redis engine does it across many nodes.
//! Everything above this trait (the node, the transports) is the same for
//! both.
//!
//! [`Hub`]: crate::hub::Hub

mod memory;

use std::sync::Arc;

use async_trait::async_trait;

use crate::channel::ChannelName;
use crate::history::HistoryPage;
use crate::id::{MessageId, Since};
use crate::message::{Message, Payload};

pub use memory::MemoryEngine;

/// Why an engine could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The storage behind the engine cannot be reached; try again later.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The storage answered with something this engine did not write.
    #[error("engine data is corrupt: {0}")]
    Corrupt(String),
}

/// The result of a publish.
#[derive(Debug, Clone)]
pub struct Published {
    pub message: Arc<Message>,
    /// Subscribers this node delivered to (all nodes' for engines that know).
    pub subscribers: usize,
}

/// What `GET /pub/{channel}` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Messages retained.
    pub messages: usize,
    /// The newest id, retained or not, if known.
    pub last_id: Option<MessageId>,
}

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Short name for logs and metrics (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Stores a message and delivers it to every node's subscribers. Answers
    /// only once the message is stored.
    async fn publish(
        &self,
        channel: &ChannelName,
        payload: Payload,
    ) -> Result<Published, EngineError>;

    /// Retained messages after `since`, with the gap flag (see [`crate::history`]).
    async fn history(
        &self,
        channel: &ChannelName,
        since: Since,
    ) -> Result<HistoryPage, EngineError>;

    async fn stats(&self, channel: &ChannelName) -> Result<ChannelStats, EngineError>;

    /// Drops the channel's history and closes its subscribers on every node.
    async fn remove(&self, channel: &ChannelName) -> Result<(), EngineError>;

    /// A local connection now follows `channel`; when this returns, every
    /// message published afterwards reaches this node's hub.
    async fn follow(&self, channel: &ChannelName) -> Result<(), EngineError>;

    /// No local connection follows `channel` any more.
    fn unfollow(&self, channel: &ChannelName);

    /// Housekeeping (expiring history), called about once a second.
    fn sweep(&self, _now_ms: u64) {}
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
