//! Transports: thin adapters from a connection to [`herald_core::Subscriber`].
//! None of them knows about history, resume or ids beyond writing them out.

#[cfg(test)]
pub(crate) mod encoding_props;
pub mod iframe;
pub mod ndjson;
pub mod poll;
pub mod sse;
pub mod stream;
pub mod ws;

use bytes::Bytes;
use herald_core::disconnect::Disconnect;
use herald_core::ChannelName;
use serde_json::json;

/// `{"channel":"c","gap":true}`: the gap notice on JSON transports.
pub fn gap_json(channel: &ChannelName) -> Bytes {
    Bytes::from(json!({"channel": channel.as_str(), "gap": true}).to_string())
}

/// `{"channel":"c","disconnect":{"code":…,"reason":…,"reconnect":…}}`.
pub fn disconnect_json(channel: &ChannelName, why: Disconnect) -> Bytes {
    Bytes::from(json!({"channel": channel.as_str(), "disconnect": why}).to_string())
}
