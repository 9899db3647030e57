//! Herald's Redis engine: several Herald processes ("nodes") sharing one
//! Redis behave as one server.
//!
//! - **History** lives in one Redis stream per channel. The stream entry id
//!   (`ms-seq`, assigned by Redis) is the Herald message id, so ids grow per
//!   channel across all nodes and survive node restarts.
//! - **Fan-out**: each publish sends exactly one pub/sub frame per following
//!   node; each node decodes it once and hands it to its [`Hub`], which
//!   shares it among the local subscribers. No Redis work is done per
//!   subscriber.
//! - **Ordering**: storing and publishing happen in one Lua script, so the
//!   pub/sub order is the stream-id order even with many publishing nodes.
//! - **Failure**: every call is bounded by a timeout and answers
//!   [`EngineError::Unavailable`] when Redis cannot be reached. When a node's
//!   pub/sub connection drops, its subscribers are disconnected with
//!   `ENGINE_UNAVAILABLE` (they resume from history elsewhere or later) and
//!   the node reconnects in the background. If Redis lost its data, a resume
//!   from an old id is reported as a gap.
//!
//! Redis layout (prefix `herald` by default, see [`keys`]):
//!
//! | name                | type            | holds                                    |
//! |---------------------|-----------------|------------------------------------------|
//! | `herald:{C}:stream` | stream          | entries `k` (kind), `t` (time ms), `d` (payload bytes) |
//! | `herald:{C}:live`   | pub/sub channel | `h1 m …` message and `h1 x …` removal frames ([`frame`]) |
//!
//! Requirements: Redis 7.0 or newer (or a compatible server reporting
//! `redis_version` 7+), scripting enabled, and the `TIME`, `X*`, `PEXPIRE`,
//! `PUBLISH` and `SUBSCRIBE` commands allowed for the configured user.
//!
//! **Redis Cluster is not supported.** The key layout is ready for it: each
//! channel's keys share the `{C}` hash tag, so every script touches one slot.
//! What is missing is the connection side: this engine opens a single-node
//! connection, and cluster support would need a cluster client for commands
//! and sharded pub/sub (`SPUBLISH` from the script, `SSUBSCRIBE` per shard,
//! resubscribing when slots move). A single primary, with replicas and
//! Sentinel failover in front (reached through one address), works; after a
//! failover the pub/sub connection drops and nodes recover as after any
//! Redis outage.
//!
//! Layout of this crate:
//! - [`engine`]: [`RedisEngine`], the [`Engine`] implementation.
//! - `script`: the Lua scripts (publish, read, remove) and their replies.
//! - `pubsub`: the per-node pub/sub connection, follow set and reconnects.
//! - [`frame`]: the pub/sub frame format.
//! - [`keys`]: Redis key and channel names.
//! - [`options`]: timeouts and prefix.
//!
//! [`Hub`]: herald_core::hub::Hub
//! [`Engine`]: herald_core::engine::Engine
//! [`EngineError::Unavailable`]: herald_core::engine::EngineError::Unavailable

pub mod engine;
pub mod frame;
pub mod keys;
pub mod options;
mod pubsub;
mod script;

pub use engine::RedisEngine;
pub use options::RedisOptions;
