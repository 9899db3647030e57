//! Acknowledged user mailboxes in Redis (see [`herald_core::mailbox`] for
//! the rules): the scripts and the decoding of their replies.
//!
//! Per personal channel `C`: the mailbox is the stream `herald:{C}:mbox`
//! whose entry ids *are* the message ids (the publish script adds the
//! history entry first and reuses its id), with fields `k`, `t`, `d` as in
//! history and `x`, the Redis time (ms) at which the entry expires
//! unacknowledged. `herald:{C}:mbox_gap` marks a drop no client heard of.
//! One deployment-wide sorted set `herald:mailboxes` indexes every mailbox
//! that holds entries by the `x` of its oldest one, so the sweep finds what
//! is due without scanning.
//!
//! Every change is one script, so each step is atomic across nodes:
//! - **publish**: history entry (marked `a` = `1`), mailbox entry, overflow
//!   (the oldest pending dropped), index, then the `h1 a` frame: a
//!   subscribe that follows the channel and then reads the mailbox misses
//!   nothing.
//! - **read**: every entry, and the gap mark (taken with `GETDEL`).
//! - **ack**: `XDEL` of the ids given, or of every entry up to an id.
//! - **sweep** (every node, about once a second): pops the mailboxes whose
//!   oldest entry is due and drops every expired entry. Because a script
//!   runs alone, an expired message is dropped, and reported, by exactly
//!   one node.
//!
//! A drop (overflow or expiry) publishes an `h1 g` frame on the channel so
//! that connected clients hear of the gap at once; when no node follows the
//! channel, the gap mark is set instead, for the next subscribe. The
//! `user.mailbox_dropped` event goes into the webhook outbox in the same
//! script (`record_event` of the `script` module), when webhooks record
//! that event; the scripts answer how many they recorded, for the counts.
//!
//! The sweep builds the key names from the prefix itself (it visits many
//! channels): they must stay as [`crate::keys::Keys`] builds them.

use std::sync::Arc;

use herald_core::engine::EngineError;
use herald_core::mailbox::{Acked, MailboxRead, MailboxState};
use herald_core::{ChannelName, MessageId};
use redis::{Script, Value};

use crate::script::{parse_entry, CLOCK_LUA, COUNTS_LUA, EVENT_LUA, TRIM_LUA};

/// Mailboxes one sweep script visits at most (it is called again while it
/// finds that many).
pub const SWEEP_BATCH: usize = 200;

/// Shared by the mailbox scripts: dropping entries (with the gap and the
/// event) and rewriting the index entry of one mailbox.
const MAILBOX_FN_LUA: &str = r"
local recorded = 0
local function mbox_drop(mbox, gap, outbox, live, channel, ids, reason, now, record, outbox_max, gap_ms)
  for i = 1, #ids, 500 do
    redis.call('XDEL', mbox, unpack(ids, i, math.min(i + 499, #ids)))
  end
  if redis.call('PUBLISH', live, 'h1 g ' .. channel .. '\n') == 0 then
    redis.call('SET', gap, string.format('%.0f', now), 'PX', gap_ms)
  end
  if record == '1' then
    local event = cjson.encode({event = 'user.mailbox_dropped', time_ms = now,
      user = string.sub(channel, 6), ids = ids, reason = reason})
    record_event(outbox, outbox_max, event)
    recorded = recorded + 1
  end
end
local function mbox_expiry(fields)
  for i = 1, #fields - 1, 2 do
    if fields[i] == 'x' then return tonumber(fields[i + 1]) end
  end
  return 0
end
local function mbox_index(mbox, index, channel)
  local first = redis.call('XRANGE', mbox, '-', '+', 'COUNT', 1)
  if #first == 0 then
    redis.call('ZREM', index, channel)
    redis.call('DEL', mbox)
  else
    redis.call('ZADD', index, mbox_expiry(first[1][2]), channel)
  end
end
";

/// KEYS: 1 stream, 2 subs, 3 mailbox, 4 gap mark, 5 index, 6 outbox.
/// ARGV: 1 live channel, 2 channel name, 3 kind, 4 payload, 5 history max
/// length, 6 history ttl ms, 7 stream expiry ms, 8 this node's count
/// identity, 9 dead identities, 10 mailbox size, 11 mailbox ttl ms,
/// 12 record events (`1`/`0`), 13 outbox max length, 14 gap memory ms.
/// Returns `{id, time_ms, receivers, others, events recorded}`.
const PUBLISH_LUA: &str = r"
local now = now_ms()
local time = string.format('%.0f', now)
local id = redis.call('XADD', KEYS[1], '*', 'k', ARGV[3], 't', time, 'd', ARGV[4], 'a', '1')
trim(KEYS[1], tonumber(ARGV[5]), now - tonumber(ARGV[6]))
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('XADD', KEYS[3], id, 'k', ARGV[3], 't', time, 'd', ARGV[4],
  'x', string.format('%.0f', now + tonumber(ARGV[11])))
local over = redis.call('XLEN', KEYS[3]) - tonumber(ARGV[10])
if over > 0 then
  local ids = {}
  for _, e in ipairs(redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', over)) do ids[#ids + 1] = e[1] end
  mbox_drop(KEYS[3], KEYS[4], KEYS[6], ARGV[1], ARGV[2], ids, 'overflow', now, ARGV[12], ARGV[13], ARGV[14])
end
mbox_index(KEYS[3], KEYS[5], ARGV[2])
local frame = 'h1 a ' .. ARGV[2] .. ' ' .. id .. ' ' .. ARGV[3] .. ' ' .. time .. '\n' .. ARGV[4]
local receivers = redis.call('PUBLISH', ARGV[1], frame)
return {id, time, receivers, others(KEYS[2], ARGV[8], ARGV[9]), recorded}
";

/// KEYS: mailbox, gap mark. Returns `{entries, mark}` (mark `''` if none).
const READ_LUA: &str = r"
return {redis.call('XRANGE', KEYS[1], '-', '+'), redis.call('GETDEL', KEYS[2]) or ''}
";

/// KEYS: mailbox, index. ARGV: channel, `ids` or `upto`, then the ids (or
/// the one id up to which). Returns `{removed, pending}`.
const ACK_LUA: &str = r"
local removed = 0
local ids = {}
if ARGV[2] == 'upto' then
  for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', ARGV[3])) do ids[#ids + 1] = e[1] end
else
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
end
for i = 1, #ids, 500 do
  removed = removed + redis.call('XDEL', KEYS[1], unpack(ids, i, math.min(i + 499, #ids)))
end
if removed > 0 then mbox_index(KEYS[1], KEYS[2], ARGV[1]) end
return {removed, redis.call('XLEN', KEYS[1])}
";

/// KEYS: mailbox, gap mark. Returns `{pending, oldest entry or {}, mark}`.
const STATE_LUA: &str = r"
return {redis.call('XLEN', KEYS[1]), redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1),
  redis.call('EXISTS', KEYS[2])}
";

/// KEYS: index, outbox. ARGV: key prefix, mailboxes at most, record events,
/// outbox max length, gap memory ms. Returns `{mailboxes due, events
/// recorded}`.
const SWEEP_LUA: &str = r"
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, channel in ipairs(due) do
  local base = ARGV[1] .. ':{' .. channel .. '}:'
  local mbox = base .. 'mbox'
  local ids = {}
  local from = '-'
  while true do
    local entries = redis.call('XRANGE', mbox, from, '+', 'COUNT', 100)
    local stop = #entries < 100
    for _, e in ipairs(entries) do
      if mbox_expiry(e[2]) > now then stop = true break end
      ids[#ids + 1] = e[1]
    end
    if stop then break end
    from = '(' .. entries[#entries][1]
  end
  if #ids > 0 then
    mbox_drop(mbox, base .. 'mbox_gap', KEYS[2], base .. 'live', channel, ids, 'expired', now,
      ARGV[3], ARGV[4], ARGV[5])
  end
  mbox_index(mbox, KEYS[1], channel)
end
return {#due, recorded}
";

/// The mailbox scripts, hashed once.
pub struct MailboxScripts {
    pub publish: Script,
    pub read: Script,
    pub ack: Script,
    pub state: Script,
    pub sweep: Script,
}

impl Default for MailboxScripts {
    fn default() -> Self {
        let with =
            |body: &str| Script::new(&format!("{CLOCK_LUA}{EVENT_LUA}{MAILBOX_FN_LUA}{body}"));
        Self {
            publish: with(&format!("{TRIM_LUA}{COUNTS_LUA}{PUBLISH_LUA}")),
            read: Script::new(READ_LUA),
            ack: with(ACK_LUA),
            state: Script::new(STATE_LUA),
            sweep: with(SWEEP_LUA),
        }
    }
}

fn corrupt(what: &str) -> EngineError {
    EngineError::Corrupt(format!("unexpected mailbox reply from redis: {what}"))
}

fn items(reply: Value) -> Result<Vec<Value>, EngineError> {
    match reply {
        Value::Array(items) => Ok(items),
        _ => Err(corrupt("not an array")),
    }
}

fn count(v: &Value) -> Result<usize, EngineError> {
    match v {
        Value::Int(n) => usize::try_from(*n).map_err(|_| corrupt("negative count")),
        _ => Err(corrupt("count is not an integer")),
    }
}

/// `{entries, mark}` of the read script.
pub fn parse_read(reply: Value, channel: &ChannelName) -> Result<MailboxRead, EngineError> {
    let mut parts = items(reply)?.into_iter();
    let (Some(entries), Some(mark)) = (parts.next(), parts.next()) else {
        return Err(corrupt("read reply is too short"));
    };
    let messages = items(entries)?
        .into_iter()
        .map(|e| parse_entry(e, channel).map(|m| Arc::new(m.acknowledged(true))))
        .collect::<Result<_, _>>()?;
    let gap = !matches!(&mark, Value::BulkString(b) if b.is_empty()) && mark != Value::Nil;
    Ok(MailboxRead { messages, gap })
}

/// `{removed, pending}` of the ack script.
pub fn parse_ack(reply: Value) -> Result<Acked, EngineError> {
    let parts = items(reply)?;
    match parts.as_slice() {
        [removed, pending] => Ok(Acked {
            removed: count(removed)?,
            pending: count(pending)?,
        }),
        _ => Err(corrupt("ack reply is not two counts")),
    }
}

/// `{pending, oldest, mark}` of the state script.
pub fn parse_state(reply: Value, channel: &ChannelName) -> Result<MailboxState, EngineError> {
    let mut parts = items(reply)?.into_iter();
    let (Some(pending), Some(oldest), Some(mark)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(corrupt("state reply is too short"));
    };
    let oldest = items(oldest)?
        .into_iter()
        .next()
        .map(|e| parse_entry(e, channel))
        .transpose()?
        .map(|m| (m.id, m.time_ms));
    Ok(MailboxState {
        pending: count(&pending)?,
        oldest,
        gap: count(&mark)? > 0,
    })
}

/// `{mailboxes due, events recorded}` of the sweep script.
pub fn parse_sweep(reply: Value) -> Result<(usize, u64), EngineError> {
    let parts = items(reply)?;
    match parts.as_slice() {
        [due, recorded] => Ok((count(due)?, count(recorded)? as u64)),
        _ => Err(corrupt("sweep reply is not two counts")),
    }
}

/// The script arguments of an acknowledgement.
pub fn ack_args(ack: &herald_core::mailbox::Ack) -> (&'static str, Vec<String>) {
    match ack {
        herald_core::mailbox::Ack::Ids(ids) => {
            ("ids", ids.iter().map(MessageId::to_string).collect())
        }
        herald_core::mailbox::Ack::UpTo(id) => ("upto", vec![id.to_string()]),
    }
}
