//! The Lua scripts that do all of a channel's Redis work in one atomic step,
//! and the decoding of their replies.
//!
//! - **publish**: `XADD` (Redis assigns the id `ms-seq`, which *is* the Herald
//!   message id), trim, `PEXPIRE`, then `PUBLISH` the frame. Because Redis runs
//!   a script alone, the order in which frames reach the nodes is the order of
//!   the stream ids, however many nodes publish to the channel; a subscriber
//!   therefore never sees a smaller id after a larger one (it would drop it as
//!   a duplicate).
//! - **read**: trim by age, then answer history and stats in one round trip:
//!   the newest id, the newest id trimmed away, whether the resume id is still
//!   retained, the length, and the entries after the resume id.
//! - **publish_user**: publish, and when no node received the frame (no
//!   connection of the user follows the personal channel anywhere), append
//!   the same frame to the channel's bounded queue, in the same step: a
//!   message is queued exactly when nobody could have got it live.
//!   A gap marker next to the queue records whether it dropped messages.
//! - **publish_idem**: publish unless the idempotency key's record exists,
//!   and write the record in the same step (one message per key).
//! - Every publish variant also sums the other nodes' subscriber counts, so
//!   the answer counts the whole cluster at no extra round trip.
//! - **take_queue**: read and delete the queue and its gap marker at once,
//!   so two nodes taking it together never both get a message.
//! - **slot_claim / slot_refresh**: take a `max_subscribers` place only
//!   below the limit (see the `slot` module); rewrite this node's expiries.
//! - **remove**: `DEL` the stream, queue and presence and `PUBLISH` the
//!   removal frame, so the removal reaches every node after the messages
//!   published before it.
//! - **presence_join / presence_leave**: write or delete one presence entry
//!   and `PUBLISH` its notice frame in the same step, so a leave notice
//!   goes out only for an entry that was there.
//! - **presence_refresh / presence_read**: the per-node state that expires
//!   unless its node rewrites it (see the `presence` module); readers skip
//!   and delete what expired.
//! - **subs_read / node_beat**: subscriber counts and the node registry
//!   that says whose counts still hold (see the `counts` module);
//!   **node_forget** drops a dead identity from the registry once nothing
//!   of it is left.
//! - **occupancy_set / occupancy_due / occupancy_orphans**: the occupancy
//!   state machine (see the `occupancy` module): one node's holding of a
//!   user or channel comes or goes; members released longer than the grace
//!   ago go offline; a dead identity's members are released. Each records
//!   its event into the outbox in the same step.
//! - **event_record / lease**: an event from Rust into the outbox; the
//!   delivery lease.
//!
//! Every expiry is computed from Redis' `TIME`, never from a node's clock.
//!
//! Trimming deletes entries with `XDEL` rather than `XTRIM`: only `XDEL`
//! updates the stream's `max-deleted-entry-id` (Redis 7.0+), which is exactly
//! the "last id trimmed away" of the gap rule ([`herald_core::history`]). The
//! stream keeps its `last-generated-id` when it is empty, so with a history
//! size of 0 the newest id is still known and resuming from it is no gap. The
//! whole state of a channel is thus one key, and losing that key (expiry,
//! `FLUSHALL`, a restart without persistence) makes every resume from an id a
//! gap, never silence.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::engine::EngineError;
use herald_core::{ChannelName, Message, MessageId, Payload, PayloadKind};
use redis::{Script, Value};

use crate::frame::{self, Frame};

/// Redis' clock, shared by every script: all expiries compare against the
/// one Redis clock, never a node's, so node clock skew does not matter.
pub(crate) const CLOCK_LUA: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function extend(key, ttl)
  if redis.call('PTTL', key) < tonumber(ttl) then redis.call('PEXPIRE', key, ttl) end
end
local function delete_fields(key, fields)
  for i = 1, #fields, 500 do
    redis.call('HDEL', key, unpack(fields, i, math.min(i + 499, #fields)))
  end
end
";

/// Shared by the scripts that trim. `min_ms <= 0` means no age limit.
pub(crate) const TRIM_LUA: &str = r"
local function delete(key, entries)
  for i = 1, #entries, 500 do
    local ids = {}
    for j = i, math.min(i + 499, #entries) do ids[#ids + 1] = entries[j][1] end
    redis.call('XDEL', key, unpack(ids))
  end
end
local function trim(key, maxlen, min_ms)
  local over = redis.call('XLEN', key) - maxlen
  if over > 0 then
    delete(key, redis.call('XRANGE', key, '-', '+', 'COUNT', over))
  end
  if min_ms > 0 then
    delete(key, redis.call('XRANGE', key, '-', '(' .. string.format('%.0f', min_ms) .. '-0'))
  end
end
";

/// Shared by the scripts that sum subscriber counts: the fields of a
/// `subs` hash except this node's own and those of identities known dead
/// (`dead`: space-separated), see the `counts` module.
pub(crate) const COUNTS_LUA: &str = r"
local function others(key, me, dead)
  local skip = {[me] = true}
  for d in string.gmatch(dead, '%S+') do skip[d] = true end
  local all = redis.call('HGETALL', key)
  local sum = 0
  for i = 1, #all - 1, 2 do
    if not skip[all[i]] then
      local n = tonumber(all[i + 1])
      if n ~= nil then sum = sum + n end
    end
  end
  return sum
end
";

/// Appending to the event outbox, for every script that records an event
/// (see the `keys` module): `record_event(key, capacity, json)` appends one
/// entry `e <json>`, trimming the stream to about `capacity` entries, and
/// adds what the trim dropped to `<key>:dropped`. `occupancy_event(name,
/// member, time)` is the JSON of an occupancy event: channel names and
/// Herald user ids hold only letters, digits and `_ - . : @ =`
/// ([`herald_core::channel`]), so they go into JSON as they are; a
/// presence member's user id (`m:<channel> <user>`, any string a Pusher
/// app's `channel_data` gave) is encoded by `cjson`.
pub const EVENT_LUA: &str = r#"
local function record_event(key, capacity, json)
  local before = redis.call('XLEN', key)
  redis.call('XADD', key, 'MAXLEN', '~', capacity, '*', 'e', json)
  local dropped = before + 1 - redis.call('XLEN', key)
  if dropped > 0 then redis.call('INCRBY', key .. ':dropped', dropped) end
end
local function occupancy_event(name, member, time)
  local head = '{"event":"' .. name .. '","time_ms":' .. string.format('%.0f', time)
  local kind = string.sub(member, 1, 1)
  if kind == 'm' then
    local space = string.find(member, ' ', 3, true)
    return head .. ',"channel":"' .. string.sub(member, 3, space - 1) .. '","user":' ..
      cjson.encode(string.sub(member, space + 1)) .. '}'
  end
  local field = 'channel'
  if kind == 'u' then field = 'user' end
  return head .. ',"' .. field .. '":"' .. string.sub(member, 3) .. '"}'
end
"#;

/// KEYS[1]: stream, KEYS[2]: subs. ARGV: live channel, channel name, kind,
/// payload, max length, ttl ms, key expiry ms, this node's count identity,
/// dead identities. `publish()` returns id, time, frame, receivers and
/// Redis' time; `others()` (`COUNTS_LUA`) sums the other nodes' counts.
const PUBLISH_FN_LUA: &str = r"
local function publish()
  local key = KEYS[1]
  local now = now_ms()
  local time = string.format('%.0f', now)
  local id = redis.call('XADD', key, '*', 'k', ARGV[3], 't', time, 'd', ARGV[4])
  trim(key, tonumber(ARGV[5]), now - tonumber(ARGV[6]))
  redis.call('PEXPIRE', key, ARGV[7])
  local frame = 'h1 m ' .. ARGV[2] .. ' ' .. id .. ' ' .. ARGV[3] .. ' ' .. time .. '\n' .. ARGV[4]
  return id, time, frame, redis.call('PUBLISH', ARGV[1], frame)
end
";

/// See `PUBLISH_FN_LUA`. Returns `{id, time_ms, receivers, others}`.
const PUBLISH_LUA: &str = r"
local id, time, _, receivers = publish()
return {id, time, receivers, others(KEYS[2], ARGV[8], ARGV[9])}
";

/// As `PUBLISH_LUA`, with KEYS[3] the personal channel's queue and KEYS[4]
/// its gap marker, ARGV[10] the marker's expiry: when no node received the
/// frame, it is also appended to the queue, keeping the newest `max length`
/// frames; the queue key expires with the stream. The marker becomes `1`
/// when a frame was trimmed away, else stays (or becomes) `0`, and outlives
/// the queue, so a queue that expired whole still reads as a gap. Returns
/// `{id, time_ms, receivers, others, queued}`.
const PUBLISH_USER_LUA: &str = r"
local id, time, frame, receivers = publish()
local queued = 0
local max = tonumber(ARGV[5])
if receivers == 0 and max > 0 then
  local len = redis.call('RPUSH', KEYS[3], frame)
  local mark = redis.call('GET', KEYS[4])
  if len > max then
    redis.call('LTRIM', KEYS[3], -max, -1)
    mark = '1'
  elseif not mark then
    mark = '0'
  end
  redis.call('PEXPIRE', KEYS[3], ARGV[7])
  redis.call('SET', KEYS[4], mark, 'PX', ARGV[10])
  queued = 1
end
return {id, time, receivers, others(KEYS[2], ARGV[8], ARGV[9]), queued}
";

/// As `PUBLISH_LUA`, with KEYS[3] the idempotency key's record and ARGV[10]
/// the window (ms). A record still there answers the earlier id and time
/// and stores nothing; otherwise the message is stored and the record
/// written in the same step, so racing publishes with one key store one
/// message. Returns `{id, time_ms, receivers, others, duplicate}`.
const PUBLISH_IDEM_LUA: &str = r"
local prev = redis.call('GET', KEYS[3])
if prev then
  local id, time = string.match(prev, '^(%S+) (%d+)$')
  if id ~= nil then return {id, time, 0, others(KEYS[2], ARGV[8], ARGV[9]), 1} end
end
local id, time, _, receivers = publish()
redis.call('SET', KEYS[3], id .. ' ' .. time, 'PX', ARGV[10])
return {id, time, receivers, others(KEYS[2], ARGV[8], ARGV[9]), 0}
";

/// KEYS: queue, gap marker. Returns `{now_ms, frames, marker}` (marker `''`
/// when there is none) and deletes both.
const TAKE_QUEUE_LUA: &str = r"
local frames = redis.call('LRANGE', KEYS[1], 0, -1)
local mark = redis.call('GET', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
return {string.format('%.0f', now_ms()), frames, mark or ''}
";

/// KEYS: slots. ARGV: field, max, ttl ms. Takes a place if fewer than max
/// are held: `HLEN` first (cheap); only a full-looking hash is scanned for
/// places that expired (their node died or lost them), which are deleted.
/// Returns 1 if the place was taken.
const SLOT_CLAIM_LUA: &str = r"
local now = now_ms()
local max = tonumber(ARGV[2])
local n = redis.call('HLEN', KEYS[1])
if n >= max then
  local all = redis.call('HGETALL', KEYS[1])
  local dead = {}
  for i = 1, #all - 1, 2 do
    local expires = tonumber(all[i + 1])
    if expires == nil or expires <= now then dead[#dead + 1] = all[i] end
  end
  delete_fields(KEYS[1], dead)
  if n - #dead >= max then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', now + tonumber(ARGV[3])))
extend(KEYS[1], ARGV[3])
return 1
";

/// KEYS: slots. ARGV: ttl ms, then this node's fields. Rewrites their
/// expiry.
const SLOT_REFRESH_LUA: &str = r"
local expires = string.format('%.0f', now_ms() + tonumber(ARGV[1]))
local args = {}
for i = 2, #ARGV do
  args[#args + 1] = ARGV[i]
  args[#args + 1] = expires
end
if #args > 0 then redis.call('HSET', KEYS[1], unpack(args)) end
extend(KEYS[1], ARGV[1])
return 1
";

/// KEYS: stream. ARGV: mode (`live`, `earliest`, `after`, `latest`),
/// resume id, max length, ttl ms. Returns `{0}` for an unknown channel,
/// else `{1, last_id, max_deleted_id, retained, length, entries}`; the
/// entries are none (`live`), all (`earliest`), those after the resume id
/// (`after`), or the newest one (`latest`).
const READ_LUA: &str = r"
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then return {0} end
trim(key, tonumber(ARGV[3]), now_ms() - tonumber(ARGV[4]))
local info = redis.call('XINFO', 'STREAM', key)
local last, deleted = '', ''
for i = 1, #info - 1, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1]
  elseif info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
end
local retained, entries = 0, {}
if ARGV[1] == 'earliest' then
  entries = redis.call('XRANGE', key, '-', '+')
elseif ARGV[1] == 'after' then
  if #redis.call('XRANGE', key, ARGV[2], ARGV[2]) > 0 then retained = 1 end
  local r = redis.pcall('XRANGE', key, '(' .. ARGV[2], '+')
  if r.err == nil then entries = r end
elseif ARGV[1] == 'latest' then
  entries = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
end
return {1, last, deleted, retained, redis.call('XLEN', key), entries}
";

/// KEYS: stream, queue, presence, queue gap marker, mailbox, mailbox gap
/// mark, mailbox index. ARGV: live channel, removal frame, channel name.
/// Returns the receivers.
const REMOVE_LUA: &str = r"
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('ZREM', KEYS[7], ARGV[3])
return redis.call('PUBLISH', ARGV[1], ARGV[2])
";

/// KEYS: presence. ARGV: field, entry JSON after its `expires_ms` member,
/// ttl ms, live channel, notice frame (empty: no notice). The value is
/// `{"expires_ms":<Redis time + ttl>,` followed by the rest, so that the
/// expiry can be read without a JSON parser and the rest stays byte-exact.
const PRESENCE_JOIN_LUA: &str = r#"
local expires = string.format('%.0f', now_ms() + tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], ARGV[1], '{"expires_ms":' .. expires .. ',' .. ARGV[2])
extend(KEYS[1], ARGV[3])
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1
"#;

/// KEYS: presence. ARGV: field, live channel, notice frame (empty: none).
/// The notice goes out only when the entry was still there. Returns 1 if so.
const PRESENCE_LEAVE_LUA: &str = r"
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed == 1 and ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return removed
";

/// KEYS: presence. ARGV: ttl ms, then pairs of field and entry JSON after
/// its `expires_ms` member (as in `PRESENCE_JOIN_LUA`). Rewrites them all
/// with a new expiry.
const PRESENCE_REFRESH_LUA: &str = r#"
local head = '{"expires_ms":' .. string.format('%.0f', now_ms() + tonumber(ARGV[1])) .. ','
local args = {}
for i = 2, #ARGV - 1, 2 do
  args[#args + 1] = ARGV[i]
  args[#args + 1] = head .. ARGV[i + 1]
end
if #args > 0 then redis.call('HSET', KEYS[1], unpack(args)) end
extend(KEYS[1], ARGV[1])
return 1
"#;

/// KEYS: presence. Deletes expired entries and returns the others' values
/// (values it cannot read too: the caller decides).
const PRESENCE_READ_LUA: &str = r#"
local now = now_ms()
local all = redis.call('HGETALL', KEYS[1])
local live, dead = {}, {}
for i = 1, #all - 1, 2 do
  local expires = tonumber(string.match(all[i + 1], '^{"expires_ms":(%d+),'))
  if expires ~= nil and expires <= now then
    dead[#dead + 1] = all[i]
  else
    live[#live + 1] = all[i + 1]
  end
end
delete_fields(KEYS[1], dead)
return live
"#;

/// KEYS: subs. ARGV: this node's count identity, dead identities. Returns
/// the sum of the other live identities' counts.
const SUBS_READ_LUA: &str = r"
return others(KEYS[1], ARGV[1], ARGV[2])
";

/// KEYS: the node registry, subs, the identity's set of subs keys. ARGV:
/// count identity, local count, the subs key's name. Writes (a count of
/// zero deletes) only while the identity is alive in the registry, so a
/// node thought dead and cleaned up can never leave a count behind; answers
/// 0 then (its next beat takes a new identity).
const SUBS_WRITE_LUA: &str = r"
local mine = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if mine == nil or mine <= now_ms() then return 0 end
if tonumber(ARGV[2]) == 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[3])
else
  redis.call('SADD', KEYS[3], ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
return 1
";

/// KEYS: the node registry. ARGV: this node's count identity, ttl ms, mode
/// (`new`: register; `known`: refresh only if still alive). Returns
/// `{alive, dead identities}`: `alive` 0 means a `known` identity had
/// expired (or was lost) and was not written: its counts may be gone, the
/// node must take a new identity and write them again.
const NODE_BEAT_LUA: &str = r"
local now = now_ms()
local all = redis.call('HGETALL', KEYS[1])
local mine, dead = nil, {}
for i = 1, #all - 1, 2 do
  local expires = tonumber(all[i + 1])
  if all[i] == ARGV[1] then mine = expires
  elseif expires == nil or expires <= now then dead[#dead + 1] = all[i] end
end
if ARGV[3] == 'known' and (mine == nil or mine <= now) then return {0, dead} end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', now + tonumber(ARGV[2])))
return {1, dead}
";

/// KEYS: the node registry, this count identity's counts set, its holds
/// set. ARGV: the identity. Deletes the registry entry only once both sets
/// are gone: until then the identity stays on the dead list and its
/// leftovers keep being cleaned. Returns 1 if deleted.
const NODE_FORGET_LUA: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
";

/// KEYS: the node registry, the member's holders, this identity's holds,
/// the member kind's leaving set, the outbox. ARGV: count identity,
/// member, `1` (held) or `0` (released), the arrival event to record (`''`:
/// not recorded), outbox capacity. Writes only while the identity is alive
/// (as `SUBS_WRITE_LUA`), answering -1 otherwise. The first holder of a
/// member that was not leaving records the arrival (returns 1); one that
/// was leaving takes it back silently; the last holder's release puts it
/// in the leaving set, scored by Redis time.
const OCCUPANCY_SET_LUA: &str = r"
local now = now_ms()
local mine = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if mine == nil or mine <= now then return -1 end
if ARGV[3] == '1' then
  if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
    redis.call('SADD', KEYS[3], ARGV[2])
    if redis.call('SCARD', KEYS[2]) == 1 and redis.call('ZREM', KEYS[4], ARGV[2]) == 0
        and ARGV[4] ~= '' then
      record_event(KEYS[5], ARGV[5], occupancy_event(ARGV[4], ARGV[2], now))
      return 1
    end
  end
  return 0
end
if redis.call('SREM', KEYS[2], ARGV[1]) == 1 then
  redis.call('SREM', KEYS[3], ARGV[2])
  if redis.call('SCARD', KEYS[2]) == 0 then
    redis.call('ZADD', KEYS[4], string.format('%.0f', now), ARGV[2])
  end
end
return 0
";

/// KEYS: a kind's leaving set, the outbox. ARGV: grace ms, most members to
/// take, the holders key prefix, the departure event (`''`: not recorded),
/// outbox capacity. Takes the members released at least the grace ago
/// (`ZREM` here, so each is taken once however many nodes sweep) and, for
/// each still held by nobody, records the departure dated when it was
/// released. Returns `{taken, recorded}`.
const OCCUPANCY_DUE_LUA: &str = r"
local now = now_ms()
local upto = string.format('%.0f', now - tonumber(ARGV[1]))
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', upto, 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[2]))
local recorded = 0
for i = 1, #due - 1, 2 do
  local member = due[i]
  redis.call('ZREM', KEYS[1], member)
  if redis.call('SCARD', ARGV[3] .. member) == 0 and ARGV[4] ~= '' then
    record_event(KEYS[2], ARGV[5], occupancy_event(ARGV[4], member, tonumber(due[i + 1])))
    recorded = recorded + 1
  end
end
return {#due / 2, recorded}
";

/// KEYS: the node registry, a dead identity's holds. ARGV: the identity,
/// the holders key prefix, the leaving key prefix, most members to take,
/// node ttl ms. `SPOP`s a chunk of what the dead identity held (so two
/// nodes cleaning at once each take different members, each once) and
/// releases each; a member nobody else holds joins its kind's leaving set,
/// released at the identity's last beat (its expiry less `node_ttl`), so
/// the grace counts from when the node was last known alive. Returns how
/// many were taken.
const OCCUPANCY_ORPHANS_LUA: &str = r"
local now = now_ms()
local members = redis.call('SPOP', KEYS[2], tonumber(ARGV[4]))
local expires = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
local since = now
if expires ~= nil then since = math.min(now, expires - tonumber(ARGV[5])) end
for _, m in ipairs(members) do
  local holders = ARGV[2] .. m
  if redis.call('SREM', holders, ARGV[1]) == 1 and redis.call('SCARD', holders) == 0 then
    redis.call('ZADD', ARGV[3] .. string.sub(m, 1, 1), string.format('%.0f', since), m)
  end
end
return #members
";

/// KEYS: the outbox. ARGV: capacity, the event's JSON. Appends it.
const EVENT_RECORD_LUA: &str = r"
record_event(KEYS[1], ARGV[1], ARGV[2])
return 1
";

/// KEYS: the lease. ARGV: this node's id, ttl ms. Takes the lease when
/// nobody holds it, renews it when this node does. Returns 1 if held now.
const LEASE_LUA: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// The scripts, hashed once; `redis::Script` runs `EVALSHA` and falls back
/// to loading the script when Redis does not know it (after a restart).
pub struct Scripts {
    pub publish: Script,
    pub publish_user: Script,
    pub publish_idem: Script,
    pub take_queue: Script,
    pub slot_claim: Script,
    pub slot_refresh: Script,
    pub read: Script,
    pub remove: Script,
    pub presence_join: Script,
    pub presence_leave: Script,
    pub presence_refresh: Script,
    pub presence_read: Script,
    pub subs_read: Script,
    pub subs_write: Script,
    pub node_beat: Script,
    pub node_forget: Script,
    pub occupancy_set: Script,
    pub occupancy_due: Script,
    pub occupancy_orphans: Script,
    pub event_record: Script,
    pub lease: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        let with_clock = |body: &str| Script::new(&format!("{CLOCK_LUA}{body}"));
        Self {
            publish: with_clock(&format!(
                "{TRIM_LUA}{COUNTS_LUA}{PUBLISH_FN_LUA}{PUBLISH_LUA}"
            )),
            publish_user: with_clock(&format!(
                "{TRIM_LUA}{COUNTS_LUA}{PUBLISH_FN_LUA}{PUBLISH_USER_LUA}"
            )),
            publish_idem: with_clock(&format!(
                "{TRIM_LUA}{COUNTS_LUA}{PUBLISH_FN_LUA}{PUBLISH_IDEM_LUA}"
            )),
            take_queue: with_clock(TAKE_QUEUE_LUA),
            slot_claim: with_clock(SLOT_CLAIM_LUA),
            slot_refresh: with_clock(SLOT_REFRESH_LUA),
            read: with_clock(&format!("{TRIM_LUA}{READ_LUA}")),
            remove: Script::new(REMOVE_LUA),
            presence_join: with_clock(PRESENCE_JOIN_LUA),
            presence_leave: Script::new(PRESENCE_LEAVE_LUA),
            presence_refresh: with_clock(PRESENCE_REFRESH_LUA),
            presence_read: with_clock(PRESENCE_READ_LUA),
            subs_read: Script::new(&format!("{COUNTS_LUA}{SUBS_READ_LUA}")),
            subs_write: with_clock(SUBS_WRITE_LUA),
            node_beat: with_clock(NODE_BEAT_LUA),
            node_forget: Script::new(NODE_FORGET_LUA),
            occupancy_set: with_clock(&format!("{EVENT_LUA}{OCCUPANCY_SET_LUA}")),
            occupancy_due: with_clock(&format!("{EVENT_LUA}{OCCUPANCY_DUE_LUA}")),
            occupancy_orphans: with_clock(OCCUPANCY_ORPHANS_LUA),
            event_record: Script::new(&format!("{EVENT_LUA}{EVENT_RECORD_LUA}")),
            lease: Script::new(LEASE_LUA),
        }
    }
}

/// What the publish script answered.
#[derive(Debug)]
pub struct PublishReply {
    pub id: MessageId,
    pub time_ms: u64,
    /// The other nodes' subscribers of the channel, as they last wrote them.
    pub others: usize,
    /// publish_user: the frame went into the personal channel's queue;
    /// publish_idem: the key was used already and nothing was stored.
    pub flag: bool,
}

/// What the read script answered.
#[derive(Debug)]
pub enum ReadReply {
    /// No such stream: never published, expired, removed or lost.
    Unknown,
    Known {
        last_id: Option<MessageId>,
        /// The newest id trimmed away, if any.
        trimmed_through: Option<MessageId>,
        /// Whether the resume id is still in the stream.
        retained: bool,
        len: usize,
        /// Entries after the resume id (all of them for `earliest`, the
        /// newest one for `latest`).
        messages: Vec<Arc<Message>>,
    },
}

fn corrupt(what: &str) -> EngineError {
    EngineError::Corrupt(format!("unexpected reply from redis: {what}"))
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&str> {
    bytes(v).and_then(|b| std::str::from_utf8(b).ok())
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other).and_then(|s| s.parse().ok()),
    }
}

/// A stream id; `0-0` (Redis' "none") and the empty text are `None`.
fn optional_id(v: &Value) -> Result<Option<MessageId>, EngineError> {
    let s = text(v).ok_or_else(|| corrupt("id is not text"))?;
    if s.is_empty() || s == "0-0" {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| corrupt("not a stream id"))
}

fn array(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

pub fn parse_publish(reply: Value) -> Result<PublishReply, EngineError> {
    let items = array(reply).ok_or_else(|| corrupt("publish reply is not an array"))?;
    let (id, time, receivers, others, flag) = match items.as_slice() {
        [id, time, receivers, others] => (id, time, receivers, others, false),
        [id, time, receivers, others, flag] => (id, time, receivers, others, int(flag) == Some(1)),
        _ => return Err(corrupt("publish reply has the wrong length")),
    };
    int(receivers)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| corrupt("publish reply has no receiver count"))?;
    Ok(PublishReply {
        id: optional_id(id)?.ok_or_else(|| corrupt("publish reply has no id"))?,
        time_ms: int(time)
            .and_then(|t| u64::try_from(t).ok())
            .ok_or_else(|| corrupt("publish reply has no time"))?,
        others: int(others)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| corrupt("publish reply has no subscriber count"))?,
        flag,
    })
}

/// What the take script answered.
pub struct Taken {
    /// Redis' time.
    pub now_ms: u64,
    /// Oldest first, checked to belong to the channel.
    pub messages: Vec<Arc<Message>>,
    /// The gap marker: `Some(true)` if the queue dropped messages,
    /// `Some(false)` if it held some, `None` if there was none.
    pub marker: Option<bool>,
}

/// The take script's answer: Redis' time, the queued frames (decoded and
/// checked to belong to `channel`, oldest first) and the gap marker.
pub fn parse_take(reply: Value, channel: &ChannelName) -> Result<Taken, EngineError> {
    let items = array(reply).ok_or_else(|| corrupt("take reply is not an array"))?;
    let [now, frames, marker] = items.as_slice() else {
        return Err(corrupt("take reply has the wrong length"));
    };
    let marker = match text(marker) {
        Some("1") => Some(true),
        Some("0") => Some(false),
        _ => None,
    };
    let now = int(now)
        .and_then(|t| u64::try_from(t).ok())
        .ok_or_else(|| corrupt("take reply has no time"))?;
    let Value::Array(frames) = frames else {
        return Err(corrupt("queued frames are not an array"));
    };
    let messages = frames
        .iter()
        .map(|f| {
            let bytes = bytes(f).ok_or_else(|| corrupt("queued frame is not bytes"))?;
            match frame::decode(bytes) {
                Ok(Frame::Message(m)) if &m.channel == channel => Ok(m),
                Ok(_) => Err(EngineError::Corrupt(format!(
                    "queue of {channel} holds a frame of another kind or channel"
                ))),
                Err(e) => Err(EngineError::Corrupt(format!("queue of {channel}: {e}"))),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(Taken {
        now_ms: now,
        messages,
        marker,
    })
}

/// Bulk strings of an array reply.
pub fn parse_values(reply: Value) -> Result<Vec<Vec<u8>>, EngineError> {
    array(reply)
        .ok_or_else(|| corrupt("reply is not an array"))?
        .into_iter()
        .map(|v| match v {
            Value::BulkString(b) => Ok(b),
            _ => Err(corrupt("array item is not a string")),
        })
        .collect()
}

/// The outbox entries of an `XRANGE` reply, oldest first. An entry without
/// its `e` field (not written by Herald) is answered with an empty JSON,
/// which the sender skips (and marks done).
pub fn parse_events(reply: Value) -> Result<Vec<herald_core::event::RecordedEvent>, EngineError> {
    array(reply)
        .ok_or_else(|| corrupt("outbox range is not an array"))?
        .into_iter()
        .map(|entry| {
            let mut parts = array(entry)
                .ok_or_else(|| corrupt("outbox entry is not an array"))?
                .into_iter();
            let id = parts
                .next()
                .as_ref()
                .and_then(text)
                .map(str::to_owned)
                .ok_or_else(|| corrupt("outbox entry has no id"))?;
            let fields = parts.next().and_then(array).unwrap_or_default();
            let mut json = String::new();
            let mut fields = fields.iter();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                if bytes(name) == Some(b"e") {
                    json = text(value).unwrap_or("").to_owned();
                }
            }
            Ok(herald_core::event::RecordedEvent { id, json })
        })
        .collect()
}

/// A `{a, b}` integer pair reply.
pub fn parse_pair(reply: &Value) -> Result<(u64, u64), EngineError> {
    match reply {
        Value::Array(items) => match items.as_slice() {
            [a, b] => Ok((
                int(a).and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                int(b).and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
            )),
            _ => Err(corrupt("pair reply has the wrong length")),
        },
        _ => Err(corrupt("pair reply is not an array")),
    }
}

/// An integer reply that fits a `usize`.
pub fn parse_count(reply: &Value) -> Result<usize, EngineError> {
    int(reply)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| corrupt("count is not a non-negative integer"))
}

pub fn parse_read(reply: Value, channel: &ChannelName) -> Result<ReadReply, EngineError> {
    let mut items = array(reply)
        .ok_or_else(|| corrupt("read reply is not an array"))?
        .into_iter();
    match items.next().as_ref().and_then(int) {
        Some(0) => return Ok(ReadReply::Unknown),
        Some(1) => {}
        _ => return Err(corrupt("read reply has no status")),
    }
    let mut next = || {
        items
            .next()
            .ok_or_else(|| corrupt("read reply is too short"))
    };
    let last_id = optional_id(&next()?)?;
    let trimmed_through = optional_id(&next()?)?;
    let retained = int(&next()?) == Some(1);
    let len = int(&next()?)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| corrupt("read reply has no length"))?;
    let entries = array(next()?).ok_or_else(|| corrupt("entries are not an array"))?;
    let messages = entries
        .into_iter()
        .map(|e| parse_entry(e, channel).map(Arc::new))
        .collect::<Result<_, _>>()?;
    Ok(ReadReply::Known {
        last_id,
        trimmed_through,
        retained,
        len,
        messages,
    })
}

/// One stream entry: `[id, [field, value, ...]]` with fields `k`, `t`, `d`
/// and, for a message to acknowledge, `a` = `1` (other fields, such as a
/// mailbox entry's expiry `x`, are skipped).
pub(crate) fn parse_entry(entry: Value, channel: &ChannelName) -> Result<Message, EngineError> {
    let mut parts = array(entry)
        .ok_or_else(|| corrupt("entry is not an array"))?
        .into_iter();
    let id = parts
        .next()
        .as_ref()
        .map(optional_id)
        .transpose()?
        .flatten()
        .ok_or_else(|| corrupt("entry has no id"))?;
    let fields = parts
        .next()
        .and_then(array)
        .ok_or_else(|| corrupt("entry has no fields"))?;
    let (mut kind, mut time, mut data, mut ack) = (None, None, None, false);
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match bytes(&name) {
            Some(b"k") => kind = text(&value).and_then(PayloadKind::parse),
            Some(b"t") => time = int(&value).and_then(|t| u64::try_from(t).ok()),
            Some(b"a") => ack = bytes(&value) == Some(b"1"),
            Some(b"d") => {
                data = match value {
                    Value::BulkString(b) => Some(Bytes::from(b)),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    let (Some(kind), Some(time), Some(data)) = (kind, time, data) else {
        return Err(EngineError::Corrupt(format!(
            "stream entry {id} of {channel} lacks a field"
        )));
    };
    let payload = Payload::from_stored(kind, data)
        .map_err(|e| EngineError::Corrupt(format!("stream entry {id} of {channel}: {e}")))?;
    Ok(Message::new(channel.clone(), id, payload, time).acknowledged(ack))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    #[test]
    fn publish_reply() {
        let r = parse_publish(Value::Array(vec![
            bulk(b"5-1"),
            bulk(b"5"),
            Value::Int(2),
            Value::Int(7),
        ]))
        .expect("valid");
        assert_eq!((r.id, r.time_ms, r.others), (MessageId::new(5, 1), 5, 7));
        assert!(!r.flag);
        let r = parse_publish(Value::Array(vec![
            bulk(b"5-1"),
            bulk(b"5"),
            Value::Int(0),
            Value::Int(0),
            Value::Int(1),
        ]))
        .expect("valid");
        assert!(r.flag);
        assert!(parse_publish(Value::Array(vec![
            bulk(b"x"),
            bulk(b"5"),
            Value::Int(2),
            Value::Int(0)
        ]))
        .is_err());
        assert!(
            parse_publish(Value::Array(vec![bulk(b"5-1"), bulk(b"5"), Value::Int(2)])).is_err()
        );
        assert!(parse_publish(Value::Nil).is_err());
    }

    #[test]
    fn read_reply() {
        let c = ChannelName::new("c").expect("valid");
        assert!(matches!(
            parse_read(Value::Array(vec![Value::Int(0)]), &c),
            Ok(ReadReply::Unknown)
        ));
        let entry = Value::Array(vec![
            bulk(b"7-0"),
            Value::Array(vec![
                bulk(b"k"),
                bulk(b"binary"),
                bulk(b"t"),
                bulk(b"7"),
                bulk(b"d"),
                bulk(&[0xff, 0]),
            ]),
        ]);
        let reply = Value::Array(vec![
            Value::Int(1),
            bulk(b"7-0"),
            bulk(b"0-0"),
            Value::Int(0),
            Value::Int(1),
            Value::Array(vec![entry]),
        ]);
        let Ok(ReadReply::Known {
            last_id,
            trimmed_through,
            retained,
            len,
            messages,
        }) = parse_read(reply, &c)
        else {
            panic!("expected a known channel");
        };
        assert_eq!(last_id, Some(MessageId::new(7, 0)));
        assert_eq!(trimmed_through, None);
        assert!(!retained);
        assert_eq!(len, 1);
        assert_eq!(&messages[0].payload.raw()[..], &[0xff, 0]);
        assert_eq!(messages[0].time_ms, 7);

        let bad_entry = Value::Array(vec![bulk(b"7-0"), Value::Array(vec![bulk(b"k")])]);
        let reply = Value::Array(vec![
            Value::Int(1),
            bulk(b"7-0"),
            bulk(b"0-0"),
            Value::Int(0),
            Value::Int(1),
            Value::Array(vec![bad_entry]),
        ]);
        assert!(matches!(
            parse_read(reply, &c),
            Err(EngineError::Corrupt(_))
        ));
    }
}
