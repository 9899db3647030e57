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
//! What else is cluster-wide, and how fresh it is (defaults in brackets,
//! see [`RedisOptions`]):
//!
//! - **Presence** is exact for live nodes: a join is written (and its notice
//!   published) before `subscribe` answers; a leave is queued and reaches
//!   Redis within one round trip unless the node's bounded upkeep queue is
//!   full. Join and leave notices travel as `h1 j`/`h1 l` frames on the
//!   channel's pub/sub channel, so they reach the subscribers of every node,
//!   ordered with the messages. Each node rewrites its entries every
//!   `refresh_interval` (5 s, rounded up to the next sweep); each entry
//!   expires `node_ttl` (15 s) after its last write. A node that dies or is
//!   cut off from Redis thus drops out of presence within `node_ttl` (15 s),
//!   without leave notices.
//! - **Subscriber counts** (the `subscribers` of a publish answer and of
//!   `GET /pub/{channel}`): each node writes its local count of a channel
//!   only when it changed, at the next sweep (about 1 s); the publish script
//!   sums the others' counts in the same call that stores the message, and
//!   the node adds its own live one. A node registry (each node's expiry,
//!   rewritten at every sweep) says whose counts hold: a dead node's counts
//!   drop out within `node_ttl` and are then deleted, and a node that
//!   shuts down withdraws its counts (the `counts` module). Redis work is
//!   proportional to count changes, not to the number of channels.
//! - **`max_subscribers`** is not judged on those counts but on *places*
//!   (the `slot` module): one script takes a place only below the limit, so
//!   subscribers racing on several nodes never exceed it; places expire
//!   unless their node refreshes them, so a dead node's come back within
//!   `node_ttl`.
//! - **Idempotency keys**: the publish variant with a key checks and writes
//!   the key's record in the script that stores the message: one message
//!   per key and channel within the window, across nodes.
//! - **User queues**: a message for a personal channel that no node follows
//!   is queued in the same script that stores and publishes it, bounded by
//!   the channel's `history_size` and `history_ttl`; taking the queue reads
//!   and deletes it at once, on any node. A gap marker written with the
//!   queue says whether it dropped messages (and outlives the queue by an
//!   hour), so the user is told of the gap.
//! - **User disconnects** go out as `h1 d` frames on the node-wide control
//!   channel, which every node subscribes to before `connect` returns.
//! - **Single-use claims** are one `SET NX PX` each: exactly one winner.
//! - **Webhook events** (only with [`RedisOptions::events`]): which node
//!   holds which user and channel, and the debounced online/offline state,
//!   live in Redis, each transition one script that records its event into
//!   the outbox stream in the same step (the `occupancy` module); a dead
//!   node's holdings are released once, `node_ttl` after its last beat.
//!   One node at a time delivers the outbox, under a lease.
//!
//! All expiries are computed from Redis' clock (`TIME`), so node clocks may
//! disagree.
//!
//! Redis layout (prefix `herald` by default, see [`keys`]):
//!
//! | name                  | type            | holds                                    |
//! |-----------------------|-----------------|------------------------------------------|
//! | `herald:{C}:stream`   | stream          | entries `k` (kind), `t` (time ms), `d` (payload bytes) |
//! | `herald:{C}:live`     | pub/sub channel | `h1 m` message, `h1 x` removal, `h1 j`/`h1 l` notice frames ([`frame`]) |
//! | `herald:{C}:presence` | hash            | field `<node>/<seq>` → `{"expires_ms":…,"client":…,"user":…,"info":…,"node":…}` |
//! | `herald:{C}:subs`     | hash            | field `<node>` → `<local count>:<expires_ms>` |
//! | `herald:{C}:queue`    | list            | a personal channel's offline queue of `h1 m` frames |
//! | `herald:{C}:queue_gap` | string         | `1`: the queue dropped messages; `0`: it holds (or held) some |
//! | `herald:{C}:slots`    | hash            | field `<node>/<seq>` → expiry ms, one per `max_subscribers` place |
//! | `herald:{C}:idem:<key>` | string        | `<id> <time_ms>` of the publish that used the key, for the window |
//! | `herald:control`      | pub/sub channel | `h1 d` user disconnect frames            |
//! | `herald:claim:<key>`  | string          | a used single-use key, until it expires  |
//! | `herald:nodes`        | hash            | count identity → expiry ms: the nodes whose counts hold |
//! | `herald:nodecounts:<identity>` | set    | the `subs` keys that identity wrote (for cleanup) |
//! | `herald:holders:<member>` | set         | webhooks: the identities holding a user (`u:<id>`) or channel (`c:<name>`) |
//! | `herald:nodeholds:<identity>` | set     | webhooks: the members that identity holds (for cleanup) |
//! | `herald:leaving:u`, `:c` | sorted set   | webhooks: members held by nobody, by release time |
//! | `herald:webhooks`     | stream          | webhooks: the event outbox (field `e`: the event's JSON; see [`keys`]) |
//! | `herald:webhooks:dropped`, `:lease` | string | webhooks: events trimmed from a full outbox; the delivering node |
//!
//! Requirements: Redis 7.0 or newer (or a compatible server reporting
//! `redis_version` 7+), scripting enabled, and the `TIME`, `X*`, `H*`, `L*`,
//! `RPUSH`, `DEL`, `GET`, `SET`, `PEXPIRE`, `PTTL`, `PUBLISH` and `SUBSCRIBE`
//! commands allowed for the configured user.
//!
//! **Redis Cluster is not supported.** The key layout is mostly ready for
//! it: each channel's keys share the `{C}` hash tag, so every script on a
//! channel touches one slot, except the subscriber-count write, which also
//! checks the node registry (see the `counts` module).
//! What is missing is the connection side: this engine opens a single-node
//! connection, and cluster support would need a cluster client for commands
//! and sharded pub/sub (`SPUBLISH` from the script, `SSUBSCRIBE` per shard,
//! resubscribing when slots move). A single primary, with replicas and
//! Sentinel failover in front (reached through one address), works; after a
//! failover the pub/sub connection drops and nodes recover as after any
//! Redis outage.
//!
//! Layout of this crate:
//! - [`engine`]: [`RedisEngine`], which implements the [`Engine`] parts.
//! - `script`: every Lua script and the decoding of its reply.
//! - `pubsub`: the per-node pub/sub connection, follow set and reconnects.
//! - `presence`: this node's presence entries and how they are stored.
//! - `counts`: cluster-wide subscriber counts and the node registry.
//! - `occupancy`: online/offline and occupied/vacated across nodes, once
//!   per real change, for webhooks.
//! - `slot`: this node's `max_subscribers` places and how they are reclaimed.
//! - `upkeep`: the bounded background queue: leaves, releases and refreshes.
//! - `call`: every Redis call's timeout and error mapping, and number clamps
//!   (below the engine and the upkeep task, which both use it).
//! - [`frame`]: the pub/sub frame format.
//! - [`keys`]: Redis key and channel names.
//! - [`options`]: timeouts and prefix.
//!
//! [`Hub`]: herald_core::hub::Hub
//! [`Engine`]: herald_core::engine::Engine
//! [`EngineError::Unavailable`]: herald_core::engine::EngineError::Unavailable

mod call;
mod counts;
pub mod engine;
pub mod frame;
pub mod keys;
mod mailbox;
mod occupancy;
pub mod options;
mod presence;
mod pubsub;
mod script;
mod slot;
mod upkeep;

pub use engine::RedisEngine;
pub use options::RedisOptions;
