//! Messages and their wire forms.
//!
//! A message is encoded at most once per wire format, however many subscribers
//! receive it: the first transport that needs a form builds it, every other
//! subscriber shares the same [`Bytes`].

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

use crate::channel::ChannelName;
use crate::id::MessageId;

/// How a payload travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadKind {
    /// Valid JSON, sent as a JSON value.
    Json,
    /// UTF-8 text, sent as a JSON string.
    Text,
    /// Any other bytes, sent as a base64 string with `"encoding": "base64"`.
    Binary,
}

impl PayloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Text => "text",
            Self::Binary => "binary",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "json" => Some(Self::Json),
            "text" => Some(Self::Text),
            "binary" => Some(Self::Binary),
            _ => None,
        }
    }
}

/// Deepest nesting of arrays and objects a JSON payload may have, on every
/// publish path alike (HTTP, API, session). Well inside the 128 levels that
/// common JSON parsers (serde_json, and so session commands) accept, so that
/// a payload wrapped in an envelope, a session frame or a long-poll answer
/// still parses everywhere it is delivered.
pub const MAX_JSON_DEPTH: usize = 64;

/// The deepest nesting of `[` and `{` in JSON text (strings skipped); a
/// cheap scan, so that the check does not itself recurse.
fn depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// A message body as the publisher sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    kind: PayloadKind,
    raw: Bytes,
}

/// Why a body cannot be a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("text payload is not valid UTF-8")]
    InvalidUtf8,
}

impl Payload {
    /// A JSON payload; the text is checked.
    pub fn json(raw: Bytes) -> Result<Self, PayloadError> {
        // UTF-8 first: serde_json skips the bytes of strings it is told to
        // ignore, and an invalid byte inside one would go out in a WebSocket
        // text frame that standard clients must refuse (1007).
        let text = std::str::from_utf8(&raw).map_err(|e| {
            PayloadError::InvalidJson(format!("not valid UTF-8 (at byte {})", e.valid_up_to()))
        })?;
        if depth(text.as_bytes()) > MAX_JSON_DEPTH {
            return Err(PayloadError::InvalidJson(format!(
                "nested deeper than {MAX_JSON_DEPTH} levels"
            )));
        }
        serde_json::from_str::<serde::de::IgnoredAny>(text)
            .map_err(|e| PayloadError::InvalidJson(e.to_string()))?;
        Ok(Self {
            kind: PayloadKind::Json,
            raw,
        })
    }

    /// A body of another content type: text when it is UTF-8, binary otherwise.
    pub fn from_bytes(raw: Bytes) -> Self {
        let kind = if std::str::from_utf8(&raw).is_ok() {
            PayloadKind::Text
        } else {
            PayloadKind::Binary
        };
        Self { kind, raw }
    }

    /// Rebuilds a payload stored by an engine. Text must still be UTF-8.
    pub fn from_stored(kind: PayloadKind, raw: Bytes) -> Result<Self, PayloadError> {
        match kind {
            PayloadKind::Json => Self::json(raw),
            PayloadKind::Text => {
                std::str::from_utf8(&raw).map_err(|_| PayloadError::InvalidUtf8)?;
                Ok(Self { kind, raw })
            }
            PayloadKind::Binary => Ok(Self { kind, raw }),
        }
    }

    pub fn kind(&self) -> PayloadKind {
        self.kind
    }

    /// The bytes as published.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The payload as a line-oriented text: JSON as sent, text as is, binary
    /// as base64. This is what SSE's `data:` lines carry.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self.kind {
            PayloadKind::Json | PayloadKind::Text => String::from_utf8_lossy(&self.raw),
            PayloadKind::Binary => base64::engine::general_purpose::STANDARD
                .encode(&self.raw)
                .into(),
        }
    }

    /// Appends the payload as a JSON value (compact: no raw newlines).
    fn write_json_value(&self, out: &mut Vec<u8>) {
        match self.kind {
            PayloadKind::Json => compact_json(&self.raw, out),
            PayloadKind::Text => write_json_string(out, &String::from_utf8_lossy(&self.raw)),
            PayloadKind::Binary => {
                write_json_string(
                    out,
                    &base64::engine::general_purpose::STANDARD.encode(&self.raw),
                );
            }
        }
    }
}

/// Appends `text` as a JSON string literal.
pub fn write_json_string(out: &mut Vec<u8>, text: &str) {
    // serde_json's string escaping is exact and fast; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// Copies valid JSON without the whitespace between tokens, so a value fits on
/// one line (NDJSON) and costs fewer bytes everywhere.
fn compact_json(raw: &[u8], out: &mut Vec<u8>) {
    let mut in_string = false;
    let mut escaped = false;
    for &b in raw {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
}

/// A stored message. Shared by every subscriber that receives it.
#[derive(Debug)]
pub struct Message {
    pub channel: ChannelName,
    pub id: MessageId,
    pub payload: Payload,
    /// When the engine stored it, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// It waits in its user's mailbox until a client acknowledges it (see
    /// [`crate::mailbox`]); its envelope says `"ack":true`.
    pub ack: bool,
    envelope: OnceLock<Bytes>,
    sse: OnceLock<Bytes>,
    script: OnceLock<Bytes>,
    line: OnceLock<Bytes>,
    /// The form of the one dialect that encodes this channel's messages
    /// its own way (a Pusher app's channel: herald-server's Pusher
    /// dialect), built once like the envelopes. One slot: a channel
    /// belongs to at most one such dialect.
    dialect: OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

impl Message {
    pub fn new(channel: ChannelName, id: MessageId, payload: Payload, time_ms: u64) -> Self {
        Self {
            channel,
            id,
            payload,
            time_ms,
            ack: false,
            envelope: OnceLock::new(),
            sse: OnceLock::new(),
            script: OnceLock::new(),
            line: OnceLock::new(),
            dialect: OnceLock::new(),
        }
    }

    /// The dialect's form of this message, built by `build` the first
    /// time and shared afterwards. `None` if another type was stored
    /// first (a channel shared by two dialects, which the caller rules
    /// out).
    pub fn dialect_form<T: std::any::Any + Send + Sync>(
        &self,
        build: impl FnOnce(&Message) -> T,
    ) -> Option<&T> {
        self.dialect
            .get_or_init(|| Box::new(build(self)))
            .downcast_ref::<T>()
    }

    /// The message marked as one to acknowledge (before it is shared).
    pub fn acknowledged(mut self, ack: bool) -> Self {
        self.ack = ack;
        self
    }

    /// `{"channel":…,"id":…,"data":…}` on one line, built once; a message
    /// to acknowledge adds `"ack":true`.
    pub fn envelope(&self) -> &Bytes {
        self.envelope.get_or_init(|| {
            // Room for the keys, the quotes, an id of two u64s and the
            // marks: one allocation, never grown (unless the channel or a
            // text payload needs escapes).
            let mut out = Vec::with_capacity(self.payload.len() + self.channel.as_str().len() + 96);
            out.extend_from_slice(b"{\"channel\":");
            write_json_string(&mut out, self.channel.as_str());
            out.extend_from_slice(b",\"id\":\"");
            // (Writing into a Vec cannot fail.)
            let _ = write!(out, "{}", self.id);
            out.extend_from_slice(b"\",\"data\":");
            self.payload.write_json_value(&mut out);
            if self.payload.kind() == PayloadKind::Binary {
                out.extend_from_slice(b",\"encoding\":\"base64\"");
            }
            if self.ack {
                out.extend_from_slice(b",\"ack\":true");
            }
            out.push(b'}');
            Bytes::from(out)
        })
    }

    /// The envelope and a newline: one NDJSON line. Built once.
    pub fn envelope_line(&self) -> &Bytes {
        self.line.get_or_init(|| {
            let envelope = self.envelope();
            let mut out = BytesMut::with_capacity(envelope.len() + 1);
            out.put_slice(envelope);
            out.put_u8(b'\n');
            out.freeze()
        })
    }

    /// The envelope made safe to place inside an HTML `<script>` element or a
    /// JSONP body: `<`, `>`, U+2028 and U+2029 are written as `\uXXXX`
    /// escapes, which mean the same in JSON and JavaScript. Built once.
    pub fn script_envelope(&self) -> &Bytes {
        self.script.get_or_init(|| script_safe(self.envelope()))
    }

    /// The envelope with `"latest":true` last: the message as a subscriber
    /// with `latest_on_subscribe` opens with it ([`crate::node::Item::Latest`]).
    /// Built for that one subscriber, a copy of the shared envelope with the
    /// mark, which stays as it is for everyone else.
    pub fn latest_envelope(&self) -> Bytes {
        with_latest_mark(self.envelope())
    }

    /// [`Message::latest_envelope`] in its script-safe form (the mark holds
    /// nothing to escape).
    pub fn latest_script_envelope(&self) -> Bytes {
        with_latest_mark(self.script_envelope())
    }

    /// One Server-Sent Events frame: `id:`, one `data:` line per payload line,
    /// and a blank line. Built once.
    pub fn sse_frame(&self) -> &Bytes {
        self.sse.get_or_init(|| {
            let text = self.payload.text();
            let mut out = BytesMut::with_capacity(text.len() + 48);
            out.put_slice(b"id: ");
            let _ = write!(out, "{}", self.id);
            out.put_u8(b'\n');
            write_sse_data(&mut out, &text);
            out.put_u8(b'\n');
            out.freeze()
        })
    }
}

/// `{…}` as `{…,"latest":true}`. Every envelope is one JSON object, so
/// it ends with its closing brace.
fn with_latest_mark(envelope: &[u8]) -> Bytes {
    let open = envelope.strip_suffix(b"}").unwrap_or(envelope);
    let mut out = BytesMut::with_capacity(open.len() + LATEST_MARK.len());
    out.put_slice(open);
    out.put_slice(LATEST_MARK);
    out.freeze()
}

/// The end of an envelope marked as the latest message.
const LATEST_MARK: &[u8] = b",\"latest\":true}";

/// Writes `text` as SSE `data:` lines. Lines end at `\r\n`, `\r` or `\n`, as
/// the SSE parser splits them, so `event.data` joins them back with `\n`.
pub fn write_sse_data(out: &mut BytesMut, text: &str) {
    let mut rest = text;
    loop {
        let end = rest.find(['\r', '\n']);
        let line = &rest[..end.unwrap_or(rest.len())];
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
        match end {
            None => break,
            Some(i) => {
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[i + skip..];
            }
        }
    }
}

/// Escapes JSON text for an HTML script context (see [`Message::script_envelope`]).
pub fn script_safe(json: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(json);
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(payload: Payload) -> Message {
        Message::new(
            ChannelName::new("news").expect("valid"),
            MessageId::new(1, 2),
            payload,
            0,
        )
    }

    #[test]
    fn json_payload_is_compacted_into_the_envelope() {
        let m = msg(
            Payload::json(Bytes::from_static(b"{ \"a\" :\n [1, \"x y\\\" z\"] }")).expect("json"),
        );
        assert_eq!(
            &m.envelope()[..],
            br#"{"channel":"news","id":"1-2","data":{"a":[1,"x y\" z"]}}"#
        );
        let v: serde_json::Value = serde_json::from_slice(m.envelope()).expect("valid JSON");
        assert_eq!(v["data"]["a"][1], "x y\" z");
    }

    #[test]
    fn invalid_json_is_refused() {
        assert!(Payload::json(Bytes::from_static(b"{nope")).is_err());
        assert!(Payload::json(Bytes::from_static(b"")).is_err());
        // Invalid UTF-8 inside a string: refused, not passed on.
        assert!(Payload::json(Bytes::from_static(b"\"a\xff\xfeb\"")).is_err());
        assert!(Payload::json(Bytes::from_static(b"{\"k\":\"\xc3\"}")).is_err());
        assert!(Payload::json(Bytes::from("\"h\u{e9}llo\"".as_bytes().to_vec())).is_ok());
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH),
            "]".repeat(MAX_JSON_DEPTH)
        );
        assert!(Payload::json(Bytes::from(ok)).is_ok());
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH + 1),
            "]".repeat(MAX_JSON_DEPTH + 1)
        );
        let err = Payload::json(Bytes::from(deep)).expect_err("too deep");
        assert!(err.to_string().contains("nested"), "{err}");
        // Brackets inside strings do not count.
        let text = format!("[\"{}\"]", "[".repeat(500));
        assert!(Payload::json(Bytes::from(text)).is_ok());
    }

    #[test]
    fn text_and_binary() {
        let t = msg(Payload::from_bytes(Bytes::from_static(
            "héllo\n\"w\"".as_bytes(),
        )));
        assert_eq!(t.payload.kind(), PayloadKind::Text);
        assert_eq!(
            &t.envelope()[..],
            "{\"channel\":\"news\",\"id\":\"1-2\",\"data\":\"héllo\\n\\\"w\\\"\"}".as_bytes()
        );
        let b = msg(Payload::from_bytes(Bytes::from_static(&[0xff, 0x00, 0x10])));
        assert_eq!(b.payload.kind(), PayloadKind::Binary);
        assert_eq!(
            &b.envelope()[..],
            br#"{"channel":"news","id":"1-2","data":"/wAQ","encoding":"base64"}"#
        );
    }

    #[test]
    fn sse_frame_splits_lines() {
        let m = msg(Payload::from_bytes(Bytes::from_static(b"a\nb\r\nc\rd")));
        assert_eq!(
            &m.sse_frame()[..],
            b"id: 1-2\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        let empty = msg(Payload::from_bytes(Bytes::new()));
        assert_eq!(&empty.sse_frame()[..], b"id: 1-2\ndata: \n\n");
    }

    #[test]
    fn the_latest_mark_is_a_copy_and_leaves_the_shared_forms_alone() {
        let m = msg(Payload::from_bytes(Bytes::from_static(&[0xff, b'<'])));
        let shared = m.envelope().clone();
        let latest = m.latest_envelope();
        assert_eq!(
            &latest[..],
            br#"{"channel":"news","id":"1-2","data":"/zw=","encoding":"base64","latest":true}"#
        );
        assert_eq!(m.envelope(), &shared, "the shared envelope is untouched");
        assert!(!m.envelope_line().windows(6).any(|w| w == b"latest"));
        let t = msg(Payload::from_bytes(Bytes::from_static(b"</script>")));
        let script = t.latest_script_envelope();
        let v: serde_json::Value =
            serde_json::from_slice(&script).expect("the marked script form is JSON");
        assert_eq!(v["latest"], true);
        assert_eq!(v["data"], "</script>");
        assert!(!script.contains(&b'<'));
    }

    #[test]
    fn script_envelope_cannot_close_the_script() {
        let m = msg(Payload::from_bytes(Bytes::from_static(
            "</script><script>alert(1)</script>\u{2028}".as_bytes(),
        )));
        let s = std::str::from_utf8(m.script_envelope()).expect("utf8");
        assert!(!s.contains('<') && !s.contains('\u{2028}'));
        let v: serde_json::Value = serde_json::from_str(s).expect("still JSON");
        assert_eq!(v["data"], "</script><script>alert(1)</script>\u{2028}");
    }
}
