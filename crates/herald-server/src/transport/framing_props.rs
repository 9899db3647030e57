//! Property tests of the HTTP session's downstream framing: every frame
//! (a shared envelope, or a reply the session builds) reaches the browser
//! exactly, as one SSE event, one NDJSON line or one forever-frame call
//! whose argument cannot end the script.
//!
//! `PROPTEST_CASES=100000 cargo test -p herald-server --lib framing_props`
//! for a longer run.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::Value;

use std::collections::VecDeque;

use super::encoding_props::{
    callback, iframe_argument, message, parse_event_stream, script_argument, tricky_text,
};
use super::{iframe::Iframe, ndjson::Ndjson, sse::Sse, Encoder};
use crate::protocol::{Dialect, Push};

fn joined(chunks: VecDeque<Bytes>) -> String {
    String::from_utf8(chunks.into_iter().flat_map(|b| b.to_vec()).collect()).expect("UTF-8")
}

fn encoded(encoder: &impl Encoder, push: &Push) -> String {
    let mut out = VecDeque::new();
    encoder.push(push, &mut out);
    joined(out)
}

proptest! {
    #[test]
    fn session_frames_reach_the_browser_exactly(
        m in message(),
        said in tricky_text(),
        callback in callback(),
    ) {
        // A shared envelope (with its script-safe form) and a reply built
        // by the session (escaped on the spot).
        let reply = Bytes::from(serde_json::json!({ "id": 3, "error": { "message": said } }).to_string());
        let pushes = [
            (Push::Message(m.clone()), m.envelope().clone()),
            (Push::Frame(reply.clone()), reply),
        ];
        let sse = Sse { dialect: Dialect::Session };
        let ndjson = Ndjson { dialect: Dialect::Session };
        let iframe = Iframe::new(&callback, Dialect::Session);
        for (push, json) in pushes {
            let want: Value = serde_json::from_slice(&json).expect("JSON");
            let text = std::str::from_utf8(&json).expect("UTF-8");

            let mut open = VecDeque::new();
            sse.open(&mut open);
            let stream = format!("{}{}", joined(open), encoded(&sse, &push));
            let events = parse_event_stream(&stream);
            prop_assert_eq!(events.len(), 1);
            prop_assert_eq!(events[0].0.as_str(), "message");
            prop_assert_eq!(events[0].1.as_str(), text);

            let line = encoded(&ndjson, &push);
            prop_assert_eq!(line.strip_suffix('\n'), Some(text));
            prop_assert!(!text.contains('\n'));

            let chunk = encoded(&iframe, &push);
            let arg = script_argument(iframe_argument(&chunk, &callback)?)?;
            prop_assert_eq!(arg, want);
        }
    }
}
