//! Property tests of what herald-core parses from clients (message ids,
//! `since`, channel names) and of the wire forms it encodes once per
//! message (the envelope, its script-safe form, the SSE frame), decoded here
//! the way a client would.
//!
//! `PROPTEST_CASES=100000 cargo test -p herald-core --test properties` for a
//! longer run.

use base64::Engine as _;
use bytes::Bytes;
use herald_core::channel::{InvalidChannel, MAX_CHANNEL_LEN};
use herald_core::id::MAX_ID_LEN;
use herald_core::{ChannelName, Message, MessageId, Payload, PayloadKind, Since};
use proptest::prelude::*;
use serde_json::Value;

/// Strings that look like ids, nearly ids, or anything.
fn id_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{0,22}-[0-9]{0,22}",
        "[0-9 +-]{0,45}",
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| format!("{a}-{b}")),
        "0*[0-9]{1,3}-0*[0-9]{1,3}",
    ]
}

proptest! {
    #[test]
    fn ids_parse_only_two_decimal_numbers_and_display_round_trips(text in id_like()) {
        match text.parse::<MessageId>() {
            Ok(id) => {
                prop_assert!(text.len() <= MAX_ID_LEN);
                let (ms, seq) = text.split_once('-').expect("a dash");
                prop_assert!(!ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()));
                prop_assert!(!seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()));
                prop_assert_eq!(id.to_string().parse::<MessageId>(), Ok(id));
            }
            Err(_) => {
                // Refused: too long, not two digit runs, or a number over u64.
                let two_numbers = text.split_once('-').is_some_and(|(a, b)| {
                    a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok()
                        && !a.starts_with('+') && !b.starts_with('+')
                });
                prop_assert!(text.len() > MAX_ID_LEN || !two_numbers, "{text:?} refused");
            }
        }
    }

    #[test]
    fn id_display_parses_back_and_order_is_numeric(
        a in (any::<u64>(), any::<u64>()),
        b in (any::<u64>(), any::<u64>()),
    ) {
        let (x, y) = (MessageId::new(a.0, a.1), MessageId::new(b.0, b.1));
        let (px, py): (MessageId, MessageId) = (
            x.to_string().parse().expect("own ids parse"),
            y.to_string().parse().expect("own ids parse"),
        );
        prop_assert_eq!(px, x);
        prop_assert_eq!(px.cmp(&py), a.cmp(&b));
        prop_assert_eq!(px == py, a == b);
    }

    #[test]
    fn since_is_earliest_or_an_id(text in prop_oneof![id_like(), Just("earliest".to_owned()), "[a-z]{0,9}"]) {
        match Since::parse(&text) {
            Ok(Since::Earliest) => prop_assert_eq!(text.as_str(), "earliest"),
            Ok(Since::After(id)) => prop_assert_eq!(text.parse::<MessageId>(), Ok(id)),
            Ok(Since::Live) => prop_assert!(false, "Live is never parsed"),
            Err(_) => prop_assert!(text != "earliest" && text.parse::<MessageId>().is_err()),
        }
    }

    #[test]
    fn channel_names_follow_the_documented_rules(
        text in prop_oneof![
            any::<String>(),
            "[a-zA-Z0-9_.:@=-]{0,140}",
            "[a-z0-9_.:@= /#*?é-]{0,20}",
        ],
    ) {
        // docs/protocol.md: 1 to 128 bytes of ASCII letters, digits and _ - . : @ =
        let allowed = |c: char| c.is_ascii_alphanumeric() || "_-.:@=".contains(c);
        match ChannelName::new(&text) {
            Ok(name) => {
                prop_assert_eq!(name.as_str(), text.as_str());
                prop_assert!(!text.is_empty() && text.len() <= MAX_CHANNEL_LEN);
                prop_assert!(text.chars().all(allowed));
            }
            Err(InvalidChannel::Empty) => prop_assert!(text.is_empty()),
            Err(InvalidChannel::TooLong) => prop_assert!(text.len() > MAX_CHANNEL_LEN),
            Err(InvalidChannel::BadChar(c)) => {
                prop_assert!(text.contains(c) && !allowed(c));
            }
        }
    }
}

// --- the wire forms ----------------------------------------------------------

/// An arbitrary JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        tricky_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(tricky_text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Text with what breaks naive encoders: line breaks of every kind, script
/// end tags, U+2028/2029, quotes, backslashes, non-ASCII, NUL.
fn tricky_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        any::<String>(),
        Just("\n".to_owned()),
        Just("\r\n".to_owned()),
        Just("\r".to_owned()),
        Just("</script>".to_owned()),
        Just("</SCRIPT ".to_owned()),
        Just("<!--".to_owned()),
        Just("\u{2028}\u{2029}".to_owned()),
        Just("\"'\\".to_owned()),
        Just("é€😀".to_owned()),
        Just("\0".to_owned()),
        Just(" ".to_owned()),
        Just("data: x".to_owned()),
    ];
    proptest::collection::vec(piece, 0..6).prop_map(|p| p.concat())
}

#[derive(Debug, Clone)]
enum Published {
    /// A JSON value, as the publisher formatted it (pretty or compact).
    Json(Value, bool),
    Text(String),
    Binary(Vec<u8>),
}

fn published() -> impl Strategy<Value = Published> {
    prop_oneof![
        (json_value(), any::<bool>()).prop_map(|(v, pretty)| Published::Json(v, pretty)),
        tricky_text().prop_map(Published::Text),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Published::Binary),
    ]
}

impl Published {
    fn raw(&self) -> Vec<u8> {
        match self {
            Published::Json(v, true) => serde_json::to_vec_pretty(v).expect("serialisable"),
            Published::Json(v, false) => serde_json::to_vec(v).expect("serialisable"),
            Published::Text(t) => t.clone().into_bytes(),
            Published::Binary(b) => b.clone(),
        }
    }

    fn payload(&self) -> Payload {
        let raw = Bytes::from(self.raw());
        match self {
            Published::Json(..) => Payload::json(raw).expect("valid JSON"),
            Published::Text(_) => Payload::from_stored(PayloadKind::Text, raw).expect("UTF-8"),
            Published::Binary(_) => {
                Payload::from_stored(PayloadKind::Binary, raw).expect("any bytes")
            }
        }
    }

    /// What a client must find in the envelope's `data` (and `encoding`).
    fn check_envelope(&self, envelope: &Value) -> Result<(), TestCaseError> {
        let data = &envelope["data"];
        match self {
            Published::Json(..) => {
                let want: Value = serde_json::from_slice(&self.raw()).expect("valid JSON");
                prop_assert_eq!(data, &want);
                prop_assert!(envelope.get("encoding").is_none());
            }
            Published::Text(t) => {
                prop_assert_eq!(data, &Value::String(t.clone()));
                prop_assert!(envelope.get("encoding").is_none());
            }
            Published::Binary(b) => {
                let text = data.as_str().expect("base64 text");
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .expect("valid base64");
                prop_assert_eq!(&bytes, b);
                prop_assert_eq!(&envelope["encoding"], &Value::from("base64"));
            }
        }
        Ok(())
    }

    /// What `event.data` must be for this payload: the payload as text,
    /// with its line breaks (`\r\n`, `\r`) made `\n` (docs/protocol.md).
    fn sse_data(&self) -> String {
        let text = match self {
            Published::Binary(b) => base64::engine::general_purpose::STANDARD.encode(b),
            _ => String::from_utf8(self.raw()).expect("UTF-8"),
        };
        text.replace("\r\n", "\n").replace('\r', "\n")
    }
}

/// A Server-Sent Events parser written from the WHATWG rules ("9.2.6
/// Interpreting an event stream"): the events a browser dispatches, as
/// (type, data, lastEventId).
fn parse_event_stream(stream: &[u8]) -> Vec<(String, String, String)> {
    let text = String::from_utf8_lossy(stream);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut events = Vec::new();
    let (mut kind, mut data, mut last_id) = (String::new(), String::new(), String::new());
    // Lines end at CRLF, LF or CR; a trailing line without an end is not
    // a line yet (the stream has not finished it).
    let mut lines = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(['\r', '\n']) {
        lines.push(&rest[..i]);
        let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[i + skip..];
    }
    for line in lines {
        if line.is_empty() {
            if data.is_empty() {
                kind.clear();
                continue;
            }
            if data.ends_with('\n') {
                data.pop();
            }
            let name = if kind.is_empty() {
                "message".to_owned()
            } else {
                kind.clone()
            };
            events.push((name, std::mem::take(&mut data), last_id.clone()));
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
            "id" if !value.contains('\0') => last_id = value.to_owned(),
            _ => {}
        }
    }
    events
}

fn message(published: &Published, channel: &str, id: MessageId) -> Message {
    let channel = ChannelName::new(channel).expect("valid channel");
    Message::new(channel, id, published.payload(), 0)
}

proptest! {
    #[test]
    fn envelopes_decode_to_what_was_published(
        published in published(),
        channel in "[a-zA-Z0-9_.:@=-]{1,20}",
        id in (any::<u64>(), any::<u64>()),
    ) {
        let m = message(&published, &channel, MessageId::new(id.0, id.1));
        let envelope = m.envelope();
        // One line: NDJSON and every stream transport rely on it.
        prop_assert!(!envelope.contains(&b'\n') && !envelope.contains(&b'\r'));
        let line = m.envelope_line();
        prop_assert_eq!(&line[..line.len() - 1], &envelope[..]);
        prop_assert_eq!(line[line.len() - 1], b'\n');
        let value: Value = serde_json::from_slice(envelope).expect("the envelope is JSON");
        prop_assert_eq!(&value["channel"], &Value::from(channel.as_str()));
        prop_assert_eq!(&value["id"], &Value::from(format!("{}-{}", id.0, id.1)));
        published.check_envelope(&value)?;
    }

    #[test]
    fn script_envelopes_are_the_envelope_and_cannot_end_a_script(
        published in published(),
        channel in "[a-zA-Z0-9_.:@=-]{1,20}",
    ) {
        let m = message(&published, &channel, MessageId::new(1, 2));
        let script = std::str::from_utf8(m.script_envelope()).expect("UTF-8");
        // Nothing that can end or open an element or break a JS string.
        prop_assert!(!script.contains(['<', '>', '\u{2028}', '\u{2029}', '\n', '\r']), "{script}");
        let a: Value = serde_json::from_str(script).expect("still JSON");
        let b: Value = serde_json::from_slice(m.envelope()).expect("JSON");
        prop_assert_eq!(a, b);
    }

    #[test]
    fn sse_frames_decode_to_the_payload(
        published in published(),
        id in (any::<u64>(), any::<u64>()),
    ) {
        let m = message(&published, "news", MessageId::new(id.0, id.1));
        // As a browser sees it: the stream's opening, then the frame.
        let mut stream = b"retry: 2000\n: herald\n\n".to_vec();
        stream.extend_from_slice(m.sse_frame());
        let events = parse_event_stream(&stream);
        prop_assert_eq!(events.len(), 1, "{:?}", String::from_utf8_lossy(&stream));
        let (kind, data, last_id) = &events[0];
        prop_assert_eq!(kind.as_str(), "message");
        prop_assert_eq!(last_id, &format!("{}-{}", id.0, id.1));
        prop_assert_eq!(data, &published.sse_data());
        if let Published::Json(..) = published {
            let a: Value = serde_json::from_str(data).expect("JSON data");
            let b: Value = serde_json::from_slice(&published.raw()).expect("JSON");
            prop_assert_eq!(a, b);
        }
    }
}
