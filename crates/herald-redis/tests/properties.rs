//! Property tests of the node-to-node pub/sub frame (`herald_redis::frame`):
//! what one node (or the publish script) encodes, another decodes to the same
//! message, notice or disconnect; arbitrary bytes from Redis never panic.
//! No Redis needed.
//!
//! `PROPTEST_CASES=100000 cargo test -p herald-redis --test properties` for a
//! longer run.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::disconnect::{ALL, FORCED};
use herald_core::presence::{Notice, NoticeKind, PresenceEntry};
use herald_core::{ChannelName, MessageId, Payload, PayloadKind};
use herald_redis::frame::{decode, disconnect_user, notice, removed, Frame};
use proptest::prelude::*;

fn channel() -> impl Strategy<Value = ChannelName> {
    "[a-zA-Z0-9_.:@=-]{1,128}".prop_map(|c| ChannelName::new(&c).expect("valid channel"))
}

/// A payload of each kind, bytes included that look like frame syntax.
fn payload() -> impl Strategy<Value = Payload> {
    let bytes = proptest::collection::vec(
        prop_oneof![any::<u8>(), Just(b'\n'), Just(b' '), Just(b'h'), Just(b'1')],
        0..200,
    );
    prop_oneof![
        bytes.prop_map(|b| Payload::from_bytes(Bytes::from(b))),
        any::<String>().prop_map(|s| {
            let json = serde_json::to_vec_pretty(&serde_json::json!({ "s": s, "n": [1, 2.5] }))
                .expect("serialisable");
            Payload::json(Bytes::from(json)).expect("valid JSON")
        }),
    ]
}

/// An `m` frame exactly as the publish script builds it (`crate::script`):
/// `'h1 m ' .. channel .. ' ' .. id .. ' ' .. kind .. ' ' .. time .. '\n' .. payload`.
fn message_frame(channel: &ChannelName, id: MessageId, payload: &Payload, time: u64) -> Vec<u8> {
    let mut f = format!("h1 m {channel} {id} {} {time}\n", payload.kind().as_str()).into_bytes();
    f.extend_from_slice(payload.raw());
    f
}

proptest! {
    #[test]
    fn message_frames_round_trip(
        channel in channel(),
        id in (any::<u64>(), any::<u64>()),
        payload in payload(),
        time in any::<u64>(),
    ) {
        let id = MessageId::new(id.0, id.1);
        let frame = message_frame(&channel, id, &payload, time);
        let Ok(Frame::Message(m)) = decode(&frame) else {
            return Err(TestCaseError::fail(format!("not a message: {:?}", decode(&frame))));
        };
        prop_assert_eq!(&m.channel, &channel);
        prop_assert_eq!(m.id, id);
        prop_assert_eq!(&m.payload, &payload);
        prop_assert_eq!(m.time_ms, time);
    }

    #[test]
    fn text_payloads_round_trip_as_text(channel in channel(), text in any::<String>()) {
        let payload = Payload::from_stored(PayloadKind::Text, Bytes::from(text)).expect("UTF-8");
        let frame = message_frame(&channel, MessageId::new(1, 0), &payload, 5);
        let Ok(Frame::Message(m)) = decode(&frame) else {
            return Err(TestCaseError::fail("not a message"));
        };
        prop_assert_eq!(&m.payload, &payload);
    }

    #[test]
    fn removal_notice_and_disconnect_frames_round_trip(
        channel in channel(),
        client in "[a-z0-9]{1,12}",
        user in proptest::option::of(any::<String>()),
        info in proptest::option::of(any::<String>()),
        join in any::<bool>(),
        which in 0..ALL.len(),
        unknown_code in 0u16..=u16::MAX,
    ) {
        prop_assert!(matches!(decode(&removed(&channel)), Ok(Frame::Removed(c)) if c == channel));

        let entry = PresenceEntry {
            client: client.into(),
            user: user.map(Arc::from),
            info: info.map(|i| Arc::new(serde_json::json!({ "i": i }))),
        };
        let kind = if join { NoticeKind::Join } else { NoticeKind::Leave };
        let sent = Notice::new(&channel, kind, &entry);
        let Ok(Frame::Notice(got)) = decode(&notice(&sent)) else {
            return Err(TestCaseError::fail("not a notice"));
        };
        prop_assert_eq!(&got.channel, &channel);
        prop_assert_eq!(got.kind, kind);
        prop_assert_eq!(&got.json, &sent.json);

        let why = ALL[which];
        let decoded = decode(&disconnect_user(&channel, why));
        prop_assert!(matches!(decoded, Ok(Frame::DisconnectUser(ref c, d)) if *c == channel && d == why));
        // A code from a newer node: closes with FORCED.
        let frame = format!("h1 d {channel} {unknown_code}\n");
        let want = ALL.iter().find(|d| d.code == unknown_code).copied().unwrap_or(FORCED);
        prop_assert!(matches!(decode(frame.as_bytes()), Ok(Frame::DisconnectUser(_, d)) if d == want));
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            // Near-frames: a valid start and anything after it.
            ("h1 [mxjld] [a-z:]{0,5}( [0-9-]{0,8})?( [a-z]{0,7})?( [0-9-]{0,4})?\n?", proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(head, body)| [head.into_bytes(), body].concat()),
        ],
    ) {
        // Every outcome is fine except a panic; a decoded message's text
        // payload is UTF-8 and a JSON one is JSON.
        if let Ok(Frame::Message(m)) = decode(&bytes) {
            match m.payload.kind() {
                PayloadKind::Text => prop_assert!(std::str::from_utf8(m.payload.raw()).is_ok()),
                PayloadKind::Json => prop_assert!(
                    serde_json::from_slice::<serde_json::Value>(m.payload.raw()).is_ok()
                ),
                PayloadKind::Binary => {}
            }
        }
    }
}
