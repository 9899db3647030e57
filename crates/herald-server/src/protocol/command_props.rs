//! Property tests of the session command parser: arbitrary bytes and
//! arbitrary JSON never panic (an error always says why), and every valid
//! command, however its JSON is spaced, parses to the expected enum.
//!
//! `PROPTEST_CASES=100000 cargo test -p herald-server --lib command_props`
//! for a longer run.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::command::{parse, Command, Frame};

/// Arbitrary JSON, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 20, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The keys a frame may have, so that random frames come near valid ones.
const KEYS: &[&str] = &[
    "id",
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "history",
    "ping",
    "pong",
    "refresh",
    "presence",
    "rpc",
    "channel",
    "since",
    "token",
    "data",
    "method",
    "params",
];

/// Objects built from the frame's own keys, nested, with arbitrary values.
fn near_frame() -> impl Strategy<Value = Value> {
    let key = prop::sample::select(KEYS);
    let inner = proptest::collection::btree_map(key.clone(), json_value(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    proptest::collection::btree_map(key, prop_oneof![json_value(), inner], 0..4)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

/// A valid command, as the JSON body a client sends.
#[derive(Debug, Clone)]
enum Valid {
    Connect(Option<String>),
    Subscribe(String, Option<String>),
    Unsubscribe(String),
    Publish(String, Value),
    History(String, Option<String>),
    Ping,
    Refresh(String),
    Presence(String),
    Rpc(String, Option<Value>),
}

fn valid() -> impl Strategy<Value = Valid> {
    let s = any::<String>;
    let opt = || proptest::option::of(any::<String>());
    prop_oneof![
        opt().prop_map(Valid::Connect),
        (s(), opt()).prop_map(|(c, since)| Valid::Subscribe(c, since)),
        s().prop_map(Valid::Unsubscribe),
        (s(), json_value()).prop_map(|(c, d)| Valid::Publish(c, d)),
        (s(), opt()).prop_map(|(c, since)| Valid::History(c, since)),
        Just(Valid::Ping),
        s().prop_map(Valid::Refresh),
        s().prop_map(Valid::Presence),
        (s(), proptest::option::of(json_value()))
            .prop_map(|(m, p)| Valid::Rpc(m, p.filter(|p| !p.is_null()))),
    ]
}

/// `value` as read back from its JSON text (floats read back may differ in
/// the last bit from the value written; the parser sees only the text).
fn reparsed(value: &Value) -> Value {
    serde_json::from_str(&value.to_string()).expect("JSON")
}

/// Sets `key` only when there is a value (omitted and `null` mean the same).
fn put(body: &mut Map<String, Value>, key: &str, value: Option<&String>, null: bool) {
    match value {
        Some(v) => {
            body.insert(key.to_owned(), Value::from(v.as_str()));
        }
        None if null => {
            body.insert(key.to_owned(), Value::Null);
        }
        None => {}
    }
}

impl Valid {
    fn to_json(&self, id: u64, null: bool) -> Value {
        let mut body = Map::new();
        let name = match self {
            Valid::Connect(token) => {
                put(&mut body, "token", token.as_ref(), null);
                "connect"
            }
            Valid::Subscribe(c, since) | Valid::History(c, since) => {
                body.insert("channel".into(), Value::from(c.as_str()));
                put(&mut body, "since", since.as_ref(), null);
                if matches!(self, Valid::Subscribe(..)) {
                    "subscribe"
                } else {
                    "history"
                }
            }
            Valid::Unsubscribe(c) | Valid::Presence(c) => {
                body.insert("channel".into(), Value::from(c.as_str()));
                if matches!(self, Valid::Unsubscribe(_)) {
                    "unsubscribe"
                } else {
                    "presence"
                }
            }
            Valid::Publish(c, data) => {
                body.insert("channel".into(), Value::from(c.as_str()));
                body.insert("data".into(), data.clone());
                "publish"
            }
            Valid::Ping => "ping",
            Valid::Refresh(token) => {
                body.insert("token".into(), Value::from(token.as_str()));
                "refresh"
            }
            Valid::Rpc(method, params) => {
                body.insert("method".into(), Value::from(method.as_str()));
                if let Some(p) = params {
                    body.insert("params".into(), p.clone());
                }
                "rpc"
            }
        };
        json!({ "id": id, name: Value::Object(body) })
    }

    /// Whether `command` is this one.
    fn matches(&self, command: &Command) -> Result<(), TestCaseError> {
        let raw = |r: &serde_json::value::RawValue| -> Value {
            serde_json::from_str(r.get()).expect("raw values are JSON")
        };
        match (self, command) {
            (Valid::Connect(a), Command::Connect(b)) => prop_assert_eq!(a, &b.token),
            (Valid::Subscribe(c, s), Command::Subscribe(b)) => {
                prop_assert_eq!(c, &b.channel);
                prop_assert_eq!(s, &b.since);
            }
            (Valid::History(c, s), Command::History(b)) => {
                prop_assert_eq!(c, &b.channel);
                prop_assert_eq!(s, &b.since);
            }
            (Valid::Unsubscribe(c), Command::Unsubscribe(b)) => prop_assert_eq!(c, &b.channel),
            (Valid::Presence(c), Command::Presence(b)) => prop_assert_eq!(c, &b.channel),
            (Valid::Publish(c, d), Command::Publish(b)) => {
                prop_assert_eq!(c, &b.channel);
                prop_assert_eq!(&reparsed(d), &raw(&b.data));
            }
            (Valid::Ping, Command::Ping(_)) => {}
            (Valid::Refresh(t), Command::Refresh(b)) => prop_assert_eq!(t, &b.token),
            (Valid::Rpc(m, p), Command::Rpc(b)) => {
                prop_assert_eq!(m, &b.method);
                prop_assert_eq!(p.as_ref().map(reparsed), b.params.as_deref().map(raw));
            }
            (want, got) => {
                return Err(TestCaseError::fail(format!("{want:?} parsed as {got:?}")));
            }
        }
        Ok(())
    }
}

/// Found by `arbitrary_json_never_panics`: serde reads a struct from an
/// array of its fields, so `[7, null, …]` was a frame with id 7, and an
/// error answer could carry id 0.
#[test]
fn arrays_are_not_frames_and_errors_carry_only_positive_ids() {
    let e = parse(b"[0]").expect_err("an array");
    assert_eq!(e.id, None);
    // RawFrame's 11 fields in order: was a ping with id 5.
    let e = parse(b" [5, null, null, null, null, null, {}, null, null, null, null]")
        .expect_err("an array");
    assert_eq!(e.id, None);
    let e = parse(br#"{"id":0,"subscribe":{}}"#).expect_err("no channel");
    assert_eq!(e.id, None);
    let e = parse(br#"{"id":7,"subscribe":{}}"#).expect_err("no channel");
    assert_eq!(e.id, Some(7));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Err(e) = parse(&bytes) {
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn arbitrary_json_never_panics(value in prop_oneof![json_value(), near_frame()]) {
        let text = serde_json::to_vec(&value).expect("serialisable");
        match parse(&text) {
            Ok(Frame::Command { id, .. }) => {
                prop_assert!(id > 0);
                prop_assert!(value.is_object());
            }
            Ok(Frame::Pong) => prop_assert!(value.get("pong").is_some()),
            Err(e) => {
                prop_assert!(!e.message.is_empty());
                // An id given back is the frame's own.
                if let Some(id) = e.id {
                    prop_assert_eq!(value.get("id").and_then(Value::as_u64), Some(id));
                }
            }
        }
    }

    #[test]
    fn valid_commands_parse_to_the_expected_enum(
        command in valid(),
        id in 1u64..,
        null in any::<bool>(),
        pretty in any::<bool>(),
    ) {
        let value = command.to_json(id, null);
        let text = if pretty {
            serde_json::to_vec_pretty(&value)
        } else {
            serde_json::to_vec(&value)
        }
        .expect("serialisable");
        match parse(&text) {
            Ok(Frame::Command { id: got, command: parsed }) => {
                prop_assert_eq!(got, id);
                command.matches(&parsed)?;
            }
            Ok(Frame::Pong) => return Err(TestCaseError::fail("parsed as a pong")),
            Err(e) => return Err(TestCaseError::fail(format!("refused: {}", e.message))),
        }
        // Without its id, the same command is refused, and says why.
        let mut no_id = value.clone();
        no_id.as_object_mut().expect("an object").remove("id");
        let e = parse(&serde_json::to_vec(&no_id).expect("serialisable")).expect_err("no id");
        prop_assert!(e.message.contains("id"));
        // Two commands in one frame are refused, with the id kept.
        let mut two = value;
        two.as_object_mut().expect("an object").insert("ping".into(), json!({}));
        two.as_object_mut().expect("an object").insert("presence".into(), json!({"channel": "c"}));
        let e = parse(&serde_json::to_vec(&two).expect("serialisable")).expect_err("two commands");
        prop_assert_eq!(e.id, Some(id));
    }
}
