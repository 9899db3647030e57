//! The forever-frame: an HTML document that never ends, each message a
//! `<script>parent.NAME(envelope);</script>` chunk. Envelopes are written
//! with `<` and `>` escaped, so a payload cannot close the script element.
//! The document starts with padding because some old browsers render a
//! streamed document only after its first kilobyte or so.

use std::collections::VecDeque;

use bytes::Bytes;
use herald_core::message::script_safe;
use serde_json::json;

use super::{disconnect_json, leave_line, session_frame, Encoder};
use crate::protocol::{Dialect, Push, PING};

/// Longest JSONP / forever-frame callback name.
pub(crate) const MAX_CALLBACK_LEN: usize = 64;

/// A JavaScript identifier or dotted path of them (`cb`, `jQuery1_2`, `a.b$`).
pub(crate) fn valid_callback(name: &str) -> bool {
    name.len() <= MAX_CALLBACK_LEN
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        })
}

/// Bytes of padding at the start of the document.
pub(crate) const PADDING: usize = 2048;

/// The start of a forever-frame document, padded.
pub(crate) fn document_head() -> Bytes {
    let mut head = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>herald</title></head><body>\n<!--",
    );
    head.push_str(&" ".repeat(PADDING));
    head.push_str("-->\n");
    Bytes::from(head)
}

pub(crate) struct Iframe {
    /// `<script>parent.NAME(`, built once per connection.
    call: Bytes,
    dialect: Dialect,
}

const END_CALL: Bytes = Bytes::from_static(b");</script>\n");

impl Iframe {
    /// `callback` must already be a validated identifier path.
    pub(crate) fn new(callback: &str, dialect: Dialect) -> Self {
        Self {
            call: Bytes::from(format!("<script>parent.{callback}(")),
            dialect,
        }
    }

    fn call(&self, json: Bytes, out: &mut VecDeque<Bytes>) {
        out.push_back(self.call.clone());
        out.push_back(json);
        out.push_back(END_CALL);
    }
}

impl Encoder for Iframe {
    fn content_type(&self) -> &'static str {
        "text/html; charset=utf-8"
    }

    fn open(&self, out: &mut VecDeque<Bytes>) {
        out.push_back(document_head());
    }

    fn push(&self, push: &Push, out: &mut VecDeque<Bytes>) {
        match (&self.dialect, push) {
            (Dialect::Channel(channel), Push::End(why)) => {
                self.call(script_safe(&disconnect_json(channel, *why)), out);
                out.push_back(Bytes::from_static(b"</body></html>\n"));
            }
            (Dialect::Channel(channel), Push::Leave(delay_ms)) => {
                self.call(script_safe(&leave_line(channel, *delay_ms)), out);
                out.push_back(Bytes::from_static(b"</body></html>\n"));
            }
            (_, push) => {
                let (json, shared) = session_frame(push);
                self.call(shared.unwrap_or_else(|| script_safe(&json)), out);
            }
        }
    }

    fn heartbeat(&self, out: &mut VecDeque<Bytes>) {
        let beat = match &self.dialect {
            Dialect::Channel(channel) => {
                Bytes::from(json!({"channel": channel.as_str(), "heartbeat": true}).to_string())
            }
            // (No HTTP transport serves the Pusher dialect yet.)
            Dialect::Session | Dialect::Pusher => PING,
        };
        self.call(script_safe(&beat), out);
    }
}
