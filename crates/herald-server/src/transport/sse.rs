//! Server-Sent Events: `id:` is the message id, `data:` the payload as sent.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use herald_core::disconnect::Disconnect;
use herald_core::message::write_sse_data;
use herald_core::{ChannelName, Message};
use serde_json::json;

use super::stream::Framing;

/// How long a browser waits before reconnecting, sent as `retry:`.
pub const RETRY_MS: u32 = 2000;

pub struct Sse;

fn event(name: &str, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 32);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\n");
    write_sse_data(&mut out, data);
    out.extend_from_slice(b"\n");
    out.freeze()
}

impl Framing for Sse {
    fn content_type(&self) -> &'static str {
        "text/event-stream; charset=utf-8"
    }

    fn open(&self, out: &mut VecDeque<Bytes>) {
        out.push_back(Bytes::from(format!("retry: {RETRY_MS}\n: herald\n\n")));
    }

    fn message(&self, message: &Message, out: &mut VecDeque<Bytes>) {
        out.push_back(message.sse_frame().clone());
    }

    fn gap(&self, channel: &ChannelName, out: &mut VecDeque<Bytes>) {
        out.push_back(event(
            "gap",
            &json!({"channel": channel.as_str()}).to_string(),
        ));
    }

    fn heartbeat(&self, _channel: &ChannelName, out: &mut VecDeque<Bytes>) {
        out.push_back(Bytes::from_static(b": heartbeat\n\n"));
    }

    fn close(&self, channel: &ChannelName, why: Disconnect, out: &mut VecDeque<Bytes>) {
        let data = json!({
            "channel": channel.as_str(),
            "code": why.code,
            "reason": why.reason,
            "reconnect": why.reconnect,
        });
        out.push_back(event("disconnect", &data.to_string()));
    }

    fn notice(&self, notice: &herald_core::presence::Notice, out: &mut VecDeque<Bytes>) {
        let data = std::str::from_utf8(&notice.json).unwrap_or("{}");
        out.push_back(event(notice.kind.as_str(), data));
    }
}
