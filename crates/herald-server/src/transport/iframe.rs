//! The forever-frame: an HTML document that never ends, each message a
//! `<script>parent.NAME(envelope);</script>` chunk. Envelopes are written
//! with `<` and `>` escaped, so a payload cannot close the script element.
//! The document starts with padding because some old browsers render a
//! streamed document only after its first kilobyte or so.

use std::collections::VecDeque;

use bytes::Bytes;
use herald_core::disconnect::Disconnect;
use herald_core::message::script_safe;
use herald_core::{ChannelName, Message};
use serde_json::json;

use super::stream::Framing;
use super::{disconnect_json, gap_json};

/// Bytes of padding at the start of the document.
pub const PADDING: usize = 2048;

/// The start of a forever-frame document, padded.
pub fn document_head() -> Bytes {
    let mut head = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>herald</title></head><body>\n<!--",
    );
    head.push_str(&" ".repeat(PADDING));
    head.push_str("-->\n");
    Bytes::from(head)
}

pub struct Iframe {
    /// `<script>parent.NAME(`, built once per connection.
    call: Bytes,
}

const END_CALL: Bytes = Bytes::from_static(b");</script>\n");

impl Iframe {
    /// `callback` must already be a validated identifier path.
    pub fn new(callback: &str) -> Self {
        Self {
            call: Bytes::from(format!("<script>parent.{callback}(")),
        }
    }

    fn call(&self, json: Bytes, out: &mut VecDeque<Bytes>) {
        out.push_back(self.call.clone());
        out.push_back(json);
        out.push_back(END_CALL);
    }
}

impl Framing for Iframe {
    fn content_type(&self) -> &'static str {
        "text/html; charset=utf-8"
    }

    fn open(&self, out: &mut VecDeque<Bytes>) {
        out.push_back(document_head());
    }

    fn message(&self, message: &Message, out: &mut VecDeque<Bytes>) {
        self.call(message.script_envelope().clone(), out);
    }

    fn gap(&self, channel: &ChannelName, out: &mut VecDeque<Bytes>) {
        self.call(script_safe(&gap_json(channel)), out);
    }

    fn heartbeat(&self, channel: &ChannelName, out: &mut VecDeque<Bytes>) {
        let beat = json!({"channel": channel.as_str(), "heartbeat": true}).to_string();
        self.call(script_safe(beat.as_bytes()), out);
    }

    fn close(&self, channel: &ChannelName, why: Disconnect, out: &mut VecDeque<Bytes>) {
        self.call(script_safe(&disconnect_json(channel, why)), out);
        out.push_back(Bytes::from_static(b"</body></html>\n"));
    }

    fn notice(&self, notice: &herald_core::presence::Notice, out: &mut VecDeque<Bytes>) {
        self.call(script_safe(&notice.json), out);
    }
}
