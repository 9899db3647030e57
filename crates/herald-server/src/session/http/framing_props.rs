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

use super::Framing;
use crate::transport::encoding_props::{
    callback, iframe_argument, message, parse_event_stream, script_argument, tricky_text,
};

fn joined(chunks: Vec<Bytes>) -> String {
    String::from_utf8(chunks.concat()).expect("UTF-8")
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
        let frames = [
            (m.envelope().clone(), Some(m.script_envelope().clone())),
            (reply, None),
        ];
        for (json, script) in frames {
            let want: Value = serde_json::from_slice(&json).expect("JSON");
            let text = std::str::from_utf8(&json).expect("UTF-8");

            let sse = joined(Framing::Sse.frame(json.clone(), script.clone()));
            let stream = format!("{}{sse}", joined(Framing::Sse.open().into_iter().collect()));
            let events = parse_event_stream(&stream);
            prop_assert_eq!(events.len(), 1);
            prop_assert_eq!(events[0].0.as_str(), "message");
            prop_assert_eq!(events[0].1.as_str(), text);

            let line = joined(Framing::Ndjson.frame(json.clone(), script.clone()));
            prop_assert_eq!(line.strip_suffix('\n'), Some(text));
            prop_assert!(!text.contains('\n'));

            let call = Bytes::from(format!("<script>parent.{callback}("));
            let chunk = joined(Framing::Iframe(call).frame(json.clone(), script));
            let arg = script_argument(iframe_argument(&chunk, &callback)?)?;
            prop_assert_eq!(arg, want);
        }
    }
}
