//! The Pusher dialect's encoder: what a subscriber of a Pusher app
//! receives, as protocol 7 frames. A message is encoded once per publish
//! ([`form`], cached in the message) and shared by every Pusher
//! subscriber of its channel; the frames built per connection are
//! replies, presence notices and errors.
//!
//! Every event frame carries its Herald message id in `herald_id`, a
//! field pusher-js ignores, for resume.
//!
//! pusher-js's HTTP fallbacks (`xhr_streaming`, `xhr_polling`) carry the
//! same frames in a SockJS-like framing, one line each: `o` (the session
//! opened), `a[...]` (frames, each a JSON string), `h` (a heartbeat) and
//! `c[code,"reason"]` (the close). A message's line is built once too
//! ([`Form::xhr_line`]).

use std::sync::OnceLock;

use bytes::Bytes;
use herald_core::message::PayloadKind;
use herald_core::Message;
use serde::Deserialize;
use serde_json::{json, value::RawValue};

use super::name::pusher_name;
use super::Code;

/// A message as Pusher subscribers get it, and the connection it leaves
/// out (an event's `socket_id`: the sender of a client event, or the one
/// a trigger excluded).
#[derive(Debug)]
pub(crate) struct Form {
    pub(crate) frame: Bytes,
    pub(crate) exclude: Option<Box<str>>,
    /// The frame as an HTTP fallback's line, built the first time one
    /// needs it.
    line: OnceLock<Bytes>,
}

impl Form {
    /// `a["<frame>"]\n`, shared by every HTTP fallback subscriber.
    pub(crate) fn xhr_line(&self) -> &Bytes {
        self.line.get_or_init(|| xhr_line(&self.frame))
    }
}

/// How the Pusher dialect stores an event in Herald: the payload
/// `{"event","data"[,"socket_id"][,"user_id"]}` (no other key). A Herald
/// publish of any other payload reaches Pusher subscribers as the event
/// `message` with the payload as its data.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Stored<'a> {
    pub(crate) event: String,
    #[serde(borrow)]
    pub(crate) data: &'a RawValue,
    pub(crate) socket_id: Option<String>,
    pub(crate) user_id: Option<String>,
}

/// The message's Pusher form, built once.
pub(crate) fn form(message: &Message) -> Option<&Form> {
    message.dialect_form(build)
}

fn build(message: &Message) -> Form {
    let channel = pusher_name(message.channel.as_str());
    let id = message.id.to_string();
    let stored = match message.payload.kind() {
        PayloadKind::Json => serde_json::from_slice::<Stored<'_>>(message.payload.raw()).ok(),
        _ => None,
    };
    let (frame, exclude) = match stored {
        Some(event) => {
            // Pusher's data is a string (of JSON, usually): kept when it
            // is one, written as one otherwise.
            let data: serde_json::Value = if event.data.get().starts_with('"') {
                serde_json::from_str(event.data.get()).unwrap_or_default()
            } else {
                serde_json::Value::String(event.data.get().to_string())
            };
            let mut frame = json!({
                "event": event.event,
                "channel": channel,
                "data": data,
                "herald_id": id,
            });
            if let Some(user) = event.user_id {
                frame["user_id"] = user.into();
            }
            (frame, event.socket_id.map(String::into_boxed_str))
        }
        None => (
            json!({
                "event": "message",
                "channel": channel,
                "data": message.payload.text(),
                "herald_id": id,
            }),
            None,
        ),
    };
    Form {
        frame: Bytes::from(frame.to_string()),
        exclude,
        line: OnceLock::new(),
    }
}

/// `{"event", "channel"?, "data": "<json text>"}`: a frame whose data
/// is a JSON string, as the server's events are.
pub(crate) fn event(event: &str, channel: Option<&str>, data: &serde_json::Value) -> Bytes {
    let mut frame = json!({"event": event, "data": data.to_string()});
    if let Some(channel) = channel {
        frame["channel"] = channel.into();
    }
    Bytes::from(frame.to_string())
}

/// `pusher:error` with a code of the protocol's table.
pub(crate) fn error(code: Code, message: &str) -> Bytes {
    Bytes::from(
        json!({"event": "pusher:error", "data": {"code": code.code, "message": message}})
            .to_string(),
    )
}

/// The first line of a new HTTP fallback session.
pub(crate) const XHR_OPEN: Bytes = Bytes::from_static(b"o\n");

/// An HTTP fallback's heartbeat line (a streaming client answers it with
/// an empty send).
pub(crate) const XHR_HEARTBEAT: Bytes = Bytes::from_static(b"h\n");

/// `a["<frame>"]\n`: one frame as an HTTP fallback's line, the frame a
/// JSON string (pusher-js parses it as a WebSocket message's text).
pub(crate) fn xhr_line(frame: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(frame);
    let mut out = Vec::with_capacity(frame.len() + frame.len() / 8 + 8);
    out.extend_from_slice(b"a[");
    herald_core::message::write_json_string(&mut out, &text);
    out.extend_from_slice(b"]\n");
    Bytes::from(out)
}

/// `c[code,"reason"]\n`: the close of an HTTP fallback session.
pub(crate) fn xhr_close(code: Code) -> Bytes {
    Bytes::from(format!("c{}\n", json!([code.code, code.message])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{ChannelName, MessageId, Payload};

    fn message(payload: &str) -> Message {
        Message::new(
            ChannelName::new("pusher:1:news").expect("channel"),
            MessageId::new(5, 1),
            Payload::json(Bytes::from(payload.to_string())).expect("json"),
            0,
        )
    }

    fn frame(m: &Message) -> serde_json::Value {
        serde_json::from_slice(&form(m).expect("form").frame).expect("json")
    }

    #[test]
    fn stored_events_and_herald_publishes() {
        let m = message(r#"{"event":"e","data":"{\"a\":1}","socket_id":"1.2"}"#);
        let f = frame(&m);
        assert_eq!(f["event"], "e");
        assert_eq!(f["channel"], "news");
        assert_eq!(f["data"], r#"{"a":1}"#);
        assert_eq!(f["herald_id"], m.id.to_string());
        assert_eq!(form(&m).and_then(|f| f.exclude.as_deref()), Some("1.2"));
        let m = message(r#"{"event":"client-e","data":{"a":1},"user_id":"u"}"#);
        assert_eq!(frame(&m)["data"], r#"{"a":1}"#);
        assert_eq!(frame(&m)["user_id"], "u");
        let m = message(r#"{"t":"hi"}"#);
        assert_eq!(frame(&m)["event"], "message");
        assert_eq!(frame(&m)["data"], r#"{"t":"hi"}"#);
        assert!(form(&m).is_some_and(|f| f.exclude.is_none()));
    }

    #[test]
    fn xhr_framing() {
        let m = message(r#"{"event":"e","data":"x"}"#);
        let line = form(&m).expect("form").xhr_line().clone();
        assert!(
            line.starts_with(b"a[\"") && line.ends_with(b"]\n"),
            "{line:?}"
        );
        let list: Vec<String> =
            serde_json::from_slice(&line[1..line.len() - 1]).expect("a JSON array of strings");
        assert_eq!(list[0].as_bytes(), &form(&m).expect("form").frame[..]);
        assert_eq!(
            &xhr_close(super::super::RECONNECT)[..],
            b"c[4200,\"reconnect immediately\"]\n"
        );
    }
}
