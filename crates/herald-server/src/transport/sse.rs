//! Server-Sent Events. Channel dialect: `id:` is the message id and `data:`
//! the payload, with `event: gap`, `event: join`/`leave` and a last
//! `event: disconnect`; the latest message a subscription opens with is an
//! ordinary message event, announced by an `event: latest` just before it
//! (so that `EventSource.onmessage` still gets the value). Session
//! dialect: every frame is one `data:` event.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use herald_core::message::write_sse_data;
use serde_json::json;

use super::{session_frame, Encoder};
use crate::protocol::{leave_json, Dialect, Push, PING};

/// How long a browser waits before reconnecting, sent as `retry:`.
pub(crate) const RETRY_MS: u32 = 2000;

pub(crate) struct Sse {
    pub(crate) dialect: Dialect,
}

fn event(name: &str, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 32);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\n");
    write_sse_data(&mut out, data);
    out.extend_from_slice(b"\n");
    out.freeze()
}

/// One unnamed event whose data is a one-line JSON frame.
pub(crate) fn data_event(json: Bytes, out: &mut VecDeque<Bytes>) {
    out.push_back(Bytes::from_static(b"data: "));
    out.push_back(json);
    out.push_back(Bytes::from_static(b"\n\n"));
}

impl Encoder for Sse {
    fn content_type(&self) -> &'static str {
        "text/event-stream; charset=utf-8"
    }

    fn open(&self, out: &mut VecDeque<Bytes>) {
        let open = match self.dialect {
            Dialect::Channel(_) => format!("retry: {RETRY_MS}\n: herald\n\n"),
            Dialect::Session | Dialect::Pusher => format!("retry: {RETRY_MS}\n\n"),
        };
        out.push_back(Bytes::from(open));
    }

    fn push(&self, push: &Push, out: &mut VecDeque<Bytes>) {
        let Dialect::Channel(channel) = &self.dialect else {
            if let Push::Leave(delay_ms) = push {
                out.push_back(Bytes::from(format!("retry: {delay_ms}\n")));
            }
            data_event(session_frame(push).0, out);
            return;
        };
        match push {
            Push::Message(m) => out.push_back(m.sse_frame().clone()),
            Push::Latest(m) => {
                // A named event would hide the value from `onmessage`: the
                // value is the plain message event, and the mark comes
                // first as its own event, naming the message by id.
                out.push_back(event(
                    "latest",
                    &json!({"channel": channel.as_str(), "id": m.id.to_string()}).to_string(),
                ));
                out.push_back(m.sse_frame().clone());
            }
            Push::Gap(channel) => out.push_back(event(
                "gap",
                &json!({"channel": channel.as_str()}).to_string(),
            )),
            Push::Notice(notice) => {
                let data = std::str::from_utf8(&notice.json).unwrap_or("{}");
                out.push_back(event(notice.kind.as_str(), data));
            }
            Push::Frame(frame) => data_event(frame.clone(), out),
            Push::End(why) => {
                let data = json!({
                    "channel": channel.as_str(),
                    "code": why.code,
                    "reason": why.reason,
                    "reconnect": why.reconnect,
                });
                out.push_back(event("disconnect", &data.to_string()));
            }
            Push::Leave(delay_ms) => {
                // `retry:` makes a browser's EventSource wait that long.
                out.push_back(Bytes::from(format!("retry: {delay_ms}\n")));
                let mut data = leave_json(*delay_ms);
                data["channel"] = json!(channel.as_str());
                out.push_back(event("disconnect", &data.to_string()));
            }
        }
    }

    fn heartbeat(&self, out: &mut VecDeque<Bytes>) {
        match self.dialect {
            Dialect::Channel(_) => out.push_back(Bytes::from_static(b": heartbeat\n\n")),
            Dialect::Session | Dialect::Pusher => data_event(PING, out),
        }
    }
}
