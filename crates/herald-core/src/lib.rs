//! Herald's core: channels, message ids, history, subscriptions and the
//! engine seam. No sockets and no HTTP live here; the server crate adapts
//! connections to [`node::Subscriber`].
//!
//! Layout:
//! - [`channel`]: what a channel name may be.
//! - [`id`]: message ids and resume points.
//! - [`message`]: payloads and their wire forms, encoded once per message.
//! - [`history`]: bounded history and the gap rule.
//! - [`hub`]: local fan-out into bounded per-connection queues.
//! - [`engine`]: the storage/fan-out seam; [`engine::MemoryEngine`] is the default.
//! - [`node`]: the subscription API transports use.
//! - [`namespace`]: settings per channel-name prefix.
//! - [`disconnect`]: the table of close codes.
//! - [`refusal`]: the table of refusal (error) codes, beside it.
//! - [`presence`]: who follows a channel; join/leave notices.
//! - [`user`]: personal channels and offline queues.
//! - [`mailbox`]: acknowledged user mailboxes (at-least-once to a person).
//! - [`event`]: the events recorded for webhooks, and the memory outbox.
//! - [`occupancy`]: who holds a user or channel; online/offline and
//!   occupied/vacated once per real change, debounced.
//! - `testing` (cargo feature `testing`): the engine contract suite every
//!   engine runs, and the bounded `eventually` wait.

pub mod channel;
pub mod disconnect;
pub mod engine;
pub mod event;
pub mod histogram;
pub mod history;
pub mod hub;
pub mod id;
pub mod mailbox;
pub mod message;
pub mod namespace;
pub mod node;
pub mod occupancy;
pub mod presence;
pub mod refusal;
mod sharded;
#[cfg(feature = "testing")]
pub mod testing;
pub mod user;

pub use channel::ChannelName;
pub use hub::{DirectWriter, Written};
pub use id::{MessageId, Since};
pub use message::{Message, Payload, PayloadKind};
pub use node::{Item, Node, Subscribed, Subscriber};
pub use refusal::Refusal;
