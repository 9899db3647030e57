//! Property tests of the script and event-stream encoders: for arbitrary
//! payloads (line breaks, `</script>`, U+2028/2029, quotes, non-ASCII),
//! what the forever-frame, JSONP and SSE transports write decodes, the way
//! a browser would, to exactly the envelope or notice that was sent; and a
//! callback name that is accepted can only be an identifier path.
//!
//! `PROPTEST_CASES=100000 cargo test -p herald-server --lib encoding_props`
//! for a longer run.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use herald_core::disconnect::ALL;
use herald_core::presence::{Notice, NoticeKind, PresenceEntry};
use herald_core::{ChannelName, Message, MessageId, Payload};
use proptest::prelude::*;
use serde_json::Value;

use super::iframe::{valid_callback, Iframe, MAX_CALLBACK_LEN};
use super::sse::Sse;
use super::Encoder;
use crate::protocol::{Dialect, Push};

/// Text with what breaks naive encoders.
pub(crate) fn tricky_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        any::<String>(),
        Just("\n".to_owned()),
        Just("\r\n".to_owned()),
        Just("\r".to_owned()),
        Just("</script>".to_owned()),
        Just("</ScRiPt\t".to_owned()),
        Just("<!--<script>".to_owned()),
        Just("\u{2028}\u{2029}".to_owned()),
        Just("\"');\\".to_owned()),
        Just("é€😀".to_owned()),
        Just("-->".to_owned()),
    ];
    proptest::collection::vec(piece, 0..6).prop_map(|p| p.concat())
}

/// A payload of each kind built from tricky text.
fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        tricky_text().prop_map(|t| Payload::from_bytes(Bytes::from(t))),
        (tricky_text(), tricky_text()).prop_map(|(k, v)| {
            let json = serde_json::to_vec_pretty(&serde_json::json!({ k: [v, 1, null] }))
                .expect("serialisable");
            Payload::json(Bytes::from(json)).expect("valid JSON")
        }),
        proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| Payload::from_bytes(Bytes::from(b))),
    ]
}

fn channel() -> impl Strategy<Value = ChannelName> {
    "[a-zA-Z0-9_.:@=-]{1,30}".prop_map(|c| ChannelName::new(&c).expect("valid channel"))
}

pub(crate) fn message() -> impl Strategy<Value = Arc<Message>> {
    (channel(), any::<u64>(), any::<u64>(), payload())
        .prop_map(|(c, ms, seq, p)| Arc::new(Message::new(c, MessageId::new(ms, seq), p, 0)))
}

pub(crate) fn callback() -> impl Strategy<Value = String> {
    "[a-zA-Z_$][a-zA-Z0-9_$]{0,10}(\\.[a-zA-Z_$][a-zA-Z0-9_$]{0,10}){0,3}"
}

fn notice() -> impl Strategy<Value = Notice> {
    (channel(), any::<bool>(), tricky_text(), tricky_text()).prop_map(|(c, join, user, info)| {
        let entry = PresenceEntry {
            client: "c1".into(),
            user: Some(user.into()),
            info: Some(Arc::new(serde_json::json!({ "say": info }))),
        };
        let kind = if join {
            NoticeKind::Join
        } else {
            NoticeKind::Leave
        };
        Notice::new(&c, kind, &entry)
    })
}

fn concat(out: VecDeque<Bytes>) -> String {
    let bytes: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
    String::from_utf8(bytes).expect("UTF-8")
}

/// A script argument a browser runs safely: nothing that ends or opens an
/// element (no `<` at all), no raw line terminators, and valid JSON.
pub(crate) fn script_argument(arg: &str) -> Result<Value, TestCaseError> {
    prop_assert!(
        !arg.contains(['<', '>', '\u{2028}', '\u{2029}', '\n', '\r']),
        "unsafe in a script: {arg}"
    );
    serde_json::from_str(arg).map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {arg}")))
}

/// One forever-frame call, `<script>parent.NAME(ARG);</script>\n`: its ARG.
pub(crate) fn iframe_argument<'a>(
    chunk: &'a str,
    callback: &str,
) -> Result<&'a str, TestCaseError> {
    let head = format!("<script>parent.{callback}(");
    let Some(arg) = chunk
        .strip_prefix(head.as_str())
        .and_then(|rest| rest.strip_suffix(");</script>\n"))
    else {
        return Err(TestCaseError::fail(format!("not one call: {chunk}")));
    };
    // The HTML parser ends the script at the first `</script`, any case.
    let lower = chunk.to_ascii_lowercase();
    prop_assert_eq!(lower.matches("</script").count(), 1);
    Ok(arg)
}

/// The events of an event stream, per the WHATWG rules: (type, data).
pub(crate) fn parse_event_stream(stream: &str) -> Vec<(String, String)> {
    let mut events = Vec::new();
    let (mut kind, mut data) = (String::new(), String::new());
    let mut rest = stream;
    while let Some(i) = rest.find(['\r', '\n']) {
        let line = &rest[..i];
        rest = &rest[i + if rest[i..].starts_with("\r\n") { 2 } else { 1 }..];
        if line.is_empty() {
            if !data.is_empty() {
                if data.ends_with('\n') {
                    data.pop();
                }
                let name = if kind.is_empty() { "message" } else { &kind };
                events.push((name.to_owned(), std::mem::take(&mut data)));
            }
            kind.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => kind = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            _ => {}
        }
    }
    events
}

proptest! {
    #[test]
    fn forever_frame_calls_carry_the_envelope_and_cannot_end_the_script(
        m in message(),
        notice in notice(),
        callback in callback(),
        which in 0..ALL.len(),
    ) {
        let iframe = Iframe::new(&callback, Dialect::Channel(notice.channel.clone()));
        let mut out = VecDeque::new();
        iframe.push(&Push::Message(m.clone()), &mut out);
        let chunk = concat(out);
        let arg = script_argument(iframe_argument(&chunk, &callback)?)?;
        let mut envelope: Value = serde_json::from_slice(m.envelope()).expect("JSON");
        prop_assert_eq!(&arg, &envelope);

        let mut out = VecDeque::new();
        iframe.push(&Push::Latest(m.clone()), &mut out);
        let chunk = concat(out);
        let arg = script_argument(iframe_argument(&chunk, &callback)?)?;
        envelope["latest"] = Value::Bool(true);
        prop_assert_eq!(arg, envelope, "the latest one, marked");

        let notice = Arc::new(notice);
        let mut out = VecDeque::new();
        iframe.push(&Push::Notice(notice.clone()), &mut out);
        let chunk = concat(out);
        let arg = script_argument(iframe_argument(&chunk, &callback)?)?;
        let sent: Value = serde_json::from_slice(&notice.json).expect("JSON");
        prop_assert_eq!(arg, sent);

        let mut gap = VecDeque::new();
        iframe.push(&Push::Gap(notice.channel.clone()), &mut gap);
        let mut beat = VecDeque::new();
        iframe.heartbeat(&mut beat);
        for out in [gap, beat] {
            let chunk = concat(out);
            let arg = script_argument(iframe_argument(&chunk, &callback)?)?;
            prop_assert_eq!(&arg["channel"], &Value::from(notice.channel.as_str()));
        }
        let mut out = VecDeque::new();
        iframe.push(&Push::End(ALL[which]), &mut out);
        let chunk = concat(out);
        let call = chunk.strip_suffix("</body></html>\n").expect("the document ends");
        let arg = script_argument(iframe_argument(call, &callback)?)?;
        prop_assert_eq!(&arg["disconnect"]["code"], &Value::from(ALL[which].code));
    }

    #[test]
    fn jsonp_answers_are_one_call_with_the_poll_answer(
        messages in proptest::collection::vec(message(), 0..4),
        channel in channel(),
        gap in any::<bool>(),
        ended in proptest::option::of(0..ALL.len()),
        callback in callback(),
        first_is_latest in any::<bool>(),
    ) {
        let last_id = messages.last().map(|m| m.id);
        let latest = messages.first().filter(|_| first_is_latest).map(|m| m.id);
        let ended = ended.map(|i| serde_json::to_value(ALL[i]).expect("a disconnect is JSON"));
        let plain = super::poll::body(&channel, &messages, latest, last_id, gap, ended.clone(), None);
        let jsonp = super::poll::body(&channel, &messages, latest, last_id, gap, ended.clone(), Some(&callback));
        let jsonp = std::str::from_utf8(&jsonp).expect("UTF-8");
        let arg = jsonp
            .strip_prefix(&format!("{callback}("))
            .and_then(|rest| rest.strip_suffix(");"))
            .ok_or_else(|| TestCaseError::fail(format!("not one call: {jsonp}")))?;
        let arg = script_argument(arg)?;
        let plain: Value = serde_json::from_slice(&plain).expect("the plain answer is JSON");
        prop_assert_eq!(&arg, &plain);
        prop_assert_eq!(&arg["channel"], &Value::from(channel.as_str()));
        prop_assert_eq!(&arg["gap"], &Value::from(gap));
        let got = arg["messages"].as_array().expect("a list");
        prop_assert_eq!(got.len(), messages.len());
        for (i, (got, m)) in got.iter().zip(&messages).enumerate() {
            let mut envelope: Value = serde_json::from_slice(m.envelope()).expect("JSON");
            if i == 0 && latest.is_some() {
                envelope["latest"] = Value::Bool(true);
            }
            prop_assert_eq!(got, &envelope);
        }
        match last_id {
            Some(id) => prop_assert_eq!(&arg["last_id"], &Value::from(id.to_string())),
            None => prop_assert_eq!(&arg["last_id"], &Value::Null),
        }
        prop_assert_eq!(arg.get("disconnect").is_some(), ended.is_some());
    }

    #[test]
    fn sse_events_decode_to_what_was_sent(
        m in message(),
        notice in notice(),
        which in 0..ALL.len(),
    ) {
        let sse = Sse { dialect: Dialect::Channel(notice.channel.clone()) };
        let mut out = VecDeque::new();
        sse.open(&mut out);
        sse.push(&Push::Message(m.clone()), &mut out);
        sse.push(&Push::Notice(Arc::new(notice.clone())), &mut out);
        sse.push(&Push::Gap(notice.channel.clone()), &mut out);
        sse.heartbeat(&mut out);
        sse.push(&Push::End(ALL[which]), &mut out);
        sse.push(&Push::Latest(m.clone()), &mut out);
        let events = parse_event_stream(&concat(out));
        prop_assert_eq!(events.len(), 6, "{:?}", events);
        prop_assert_eq!(events[0].0.as_str(), "message");
        let text = m.payload.text().replace("\r\n", "\n").replace('\r', "\n");
        prop_assert_eq!(&events[0].1, &text);
        let kind = if notice.kind == NoticeKind::Join { "join" } else { "leave" };
        prop_assert_eq!(events[1].0.as_str(), kind);
        prop_assert_eq!(events[1].1.as_bytes(), &notice.json[..]);
        prop_assert_eq!(events[2].0.as_str(), "gap");
        let gap: Value = serde_json::from_str(&events[2].1).expect("JSON");
        prop_assert_eq!(&gap["channel"], &Value::from(notice.channel.as_str()));
        prop_assert_eq!(events[3].0.as_str(), "disconnect");
        let close: Value = serde_json::from_str(&events[3].1).expect("JSON");
        prop_assert_eq!(&close["code"], &Value::from(ALL[which].code));
        // The latest message: its mark, then the value as a plain message
        // event (which `onmessage` gets).
        prop_assert_eq!(events[4].0.as_str(), "latest");
        let mark: Value = serde_json::from_str(&events[4].1).expect("JSON");
        prop_assert_eq!(&mark["channel"], &Value::from(notice.channel.as_str()));
        prop_assert_eq!(&mark["id"], &Value::from(m.id.to_string()));
        prop_assert_eq!(events[5].0.as_str(), "message");
        prop_assert_eq!(&events[5].1, &text);
    }

    #[test]
    fn accepted_callbacks_are_identifier_paths(
        name in prop_oneof![any::<String>(), callback(), "[a-z.$_0-9<>();'\" ]{0,80}"],
    ) {
        let identifier = |part: &str| {
            let mut chars = part.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        };
        let rule = name.len() <= MAX_CALLBACK_LEN && name.split('.').all(identifier);
        prop_assert_eq!(valid_callback(&name), rule);
        if valid_callback(&name) {
            prop_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "_$.".contains(c)));
        }
    }
}
