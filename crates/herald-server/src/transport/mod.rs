//! Wire formats over the one session core: each writes what a
//! [`Session`](crate::protocol::Session) pushes, in its dialect, and none
//! knows history, resume or rules.
//!
//! - [`ws`]: the one WebSocket loop (both dialects).
//! - [`downstream`]: the one loop of the HTTP downstreams (SSE, NDJSON,
//!   forever-frame, long-poll), which [`stream`] and [`poll`] write out.
//! - [`sse`], [`ndjson`], [`iframe`]: the streaming encoders, one per
//!   format, each with the dialect as a parameter ([`Encoder`]).
//! - [`poll`]: the long-poll mailbox and the poll answers (JSON, JSONP).
//! - [`registry`]: live HTTP sessions by their secret id.
//! - [`xhr`]: pusher-js's HTTP fallbacks (`xhr_streaming`, `xhr_polling`)
//!   for a Pusher session, over the same mailbox as the long-poll.
//!
//! A message's bytes for each format are built once per publish
//! ([`herald_core::Message`] caches them) and shared by every subscriber.
//! The one exception is the latest message a subscription opens with
//! ([`Push::Latest`]): its marked form is built for that connection alone.

pub(crate) mod downstream;
#[cfg(test)]
pub(crate) mod encoding_props;
#[cfg(test)]
mod framing_props;
pub(crate) mod iframe;
pub(crate) mod ndjson;
pub(crate) mod poll;
pub(crate) mod registry;
pub(crate) mod sse;
pub(crate) mod stream;
pub(crate) mod ws;
pub(crate) mod xhr;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use herald_core::disconnect::Disconnect;
use herald_core::ChannelName;
use serde_json::json;
use tokio::time::{Interval, MissedTickBehavior};

use crate::protocol::{disconnect_frame, gap_json, leave_json, Push};

/// How one streaming format writes each thing a session pushes. Built with
/// the session's dialect, so one encoder per format serves both.
pub(crate) trait Encoder: Send + 'static {
    fn content_type(&self) -> &'static str;
    /// The first bytes, written at once (so a client can tell a live
    /// stream from one a proxy buffers).
    fn open(&self, out: &mut VecDeque<Bytes>);
    fn push(&self, push: &Push, out: &mut VecDeque<Bytes>);
    fn heartbeat(&self, out: &mut VecDeque<Bytes>);
}

/// `{"channel":"c","disconnect":{"code":…,"reason":…,"reconnect":…}}`.
pub(crate) fn disconnect_json(channel: &ChannelName, why: Disconnect) -> Bytes {
    Bytes::from(json!({"channel": channel.as_str(), "disconnect": why}).to_string())
}

/// `{"channel":"c","disconnect":{…,"delay_ms":N}}`: a draining node's last
/// line of a channel URL's JSON encodings.
pub(crate) fn leave_line(channel: &ChannelName, delay_ms: u32) -> Bytes {
    Bytes::from(
        json!({"channel": channel.as_str(), "disconnect": leave_json(delay_ms)}).to_string(),
    )
}

/// A push as the session dialect's JSON frame, with its script-safe form
/// when one is shared (message envelopes).
pub(crate) fn session_frame(push: &Push) -> (Bytes, Option<Bytes>) {
    match push {
        Push::Message(m) => (m.envelope().clone(), Some(m.script_envelope().clone())),
        // Built for this connection; the script-safe form only where needed.
        Push::Latest(m) => (m.latest_envelope(), None),
        Push::Gap(channel) => (gap_json(channel), None),
        Push::Notice(notice) => (notice.json.clone(), None),
        Push::Frame(frame) => (frame.clone(), None),
        Push::End(why) => (disconnect_frame(*why), None),
        Push::Leave(delay_ms) => (
            Bytes::from(json!({ "disconnect": leave_json(*delay_ms) }).to_string()),
            None,
        ),
    }
}

/// How a connection is told the node stops: when a drain spreads
/// reconnections (`drain_window` above zero), each connection gets its own
/// delay, at random within the window; else the plain shutdown close.
pub(crate) fn farewell(state: &crate::state::AppState) -> Push {
    let window = state.config.drain_window.as_millis();
    if window == 0 {
        return Push::End(herald_core::disconnect::SHUTDOWN);
    }
    let mut bytes = [0u8; 4];
    // No OS randomness: everyone reconnects at once, as without a window.
    let random = getrandom::fill(&mut bytes).map_or(0, |()| u32::from_le_bytes(bytes));
    let delay = u128::from(random) % window;
    Push::Leave(u32::try_from(delay).unwrap_or(u32::MAX))
}

/// An interval whose first tick is one period from now.
pub(crate) fn heartbeat_interval(period: Duration) -> Interval {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// The heartbeat rule of every transport with an upstream: a ping every
/// interval; a connection that has sent nothing since the previous ping
/// when the next one is due is gone (`4003`).
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    silent_ticks: u8,
}

impl Liveness {
    /// The client sent something.
    pub(crate) fn heard(&mut self) {
        self.silent_ticks = 0;
    }

    /// A heartbeat is due: whether the connection is still alive (then
    /// ping it).
    pub(crate) fn tick(&mut self) -> bool {
        self.silent_ticks = self.silent_ticks.saturating_add(1);
        self.silent_ticks < 2
    }
}
