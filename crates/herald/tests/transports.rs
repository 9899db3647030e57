//! Each subscribe transport on `GET /sub/{channel}`: WebSocket, SSE, NDJSON,
//! long-poll, JSONP and the iframe stream, with their framing, headers and
//! heartbeats.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn websocket_one_envelope_per_text_frame_in_order() {
    let s = Server::start().await;
    let ch = channel("ws");
    let mut ws = s.ws(&format!("/sub/{ch}")).await;
    s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;
    let ids = s.publish_many(&ch, "m", 20).await;
    for (i, id) in ids.iter().enumerate() {
        let v = ws.next_json().await;
        assert_text_envelope(&v, &ch, id, &format!("m{}", i + 1));
    }
    ws.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn sse_headers_retry_and_first_bytes_at_once() {
    let s = Server::start().await;
    let ch = channel("sse-head");
    let mut sse = within(
        Duration::from_secs(2),
        "SSE response headers before any message",
        s.sse(&format!("/sub/{ch}"), &[]),
    )
    .await;
    let cache = sse.http.header("cache-control").unwrap_or_default();
    assert!(
        cache.split(',').any(|d| d.trim() == "no-cache"),
        "Cache-Control must say no-cache: {cache:?}"
    );
    assert_eq!(
        sse.http.header("x-accel-buffering").as_deref(),
        Some("no"),
        "X-Accel-Buffering"
    );
    // Some bytes of the body arrive at once, and a retry: line comes before
    // the first message.
    let first = sse.next_item(Duration::from_secs(2)).await;
    assert!(first.is_some(), "SSE stream ended at once");
    let mut saw_retry = matches!(first, Some(SseItem::Retry(_)));
    if let Some(SseItem::Retry(r)) = &first {
        assert!(r.parse::<u64>().is_ok(), "retry is not a number: {r:?}");
    }
    s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;
    let id = s.publish_text(&ch, "after").await;
    loop {
        match sse.next_item(IO_TIMEOUT).await {
            Some(SseItem::Retry(r)) => {
                assert!(r.parse::<u64>().is_ok(), "retry is not a number: {r:?}");
                saw_retry = true;
            }
            Some(SseItem::Comment(_)) => {}
            Some(SseItem::Event(e)) => {
                assert!(saw_retry, "no retry: line before the first message");
                assert_sse_message(&e, &id, "after");
                break;
            }
            None => panic!("SSE stream ended"),
        }
    }
}

#[tokio::test]
async fn sse_data_is_the_payload_as_sent() {
    let s = Server::start().await;
    let ch = channel("sse-data");
    let mut sse = s.sse(&format!("/sub/{ch}"), &[]).await;
    s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;

    let json_text = "{\"a\":  [1,2] ,\n \"b\": \"x\"}";
    let binary: Vec<u8> = vec![0, 159, 146, 150, 255, 10, 13];
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "application/json",
            json_text.as_bytes().to_vec(),
            json_text.to_string(),
        ),
        ("text/plain", b"plain text".to_vec(), "plain text".into()),
        (
            "text/plain",
            b"line1\nline2\n\nline4".to_vec(),
            "line1\nline2\n\nline4".into(),
        ),
        (
            "text/plain",
            b"trailing newline\n".to_vec(),
            "trailing newline\n".into(),
        ),
        (
            "text/plain",
            b"\nleading newline".to_vec(),
            "\nleading newline".into(),
        ),
        (
            "text/plain",
            b" leading space".to_vec(),
            " leading space".into(),
        ),
        (
            "text/plain",
            b"data: not a field\nid: 7".to_vec(),
            "data: not a field\nid: 7".into(),
        ),
        ("application/octet-stream", binary.clone(), b64(&binary)),
    ];
    for (ct, body, expected) in &cases {
        let id = s.publish(&ch, ct, body).await;
        let e = sse.next_event().await;
        assert_sse_message(&e, &id, expected);
    }
}

#[tokio::test]
async fn ndjson_one_envelope_per_line_and_first_byte_at_once() {
    let s = Server::start().await;
    let ch = channel("nd");
    let mut nd = within(
        Duration::from_secs(2),
        "NDJSON response headers before any message",
        s.ndjson(&format!("/sub/{ch}")),
    )
    .await;
    let first = nd.next_line(Duration::from_secs(2)).await;
    assert_eq!(
        first.as_deref(),
        Some(""),
        "the first NDJSON bytes are an empty line"
    );
    s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;

    let id1 = s.publish_text(&ch, "multi\nline").await;
    let id2 = s.publish_json(&ch, "[1, {\"x\": \"y\"}]").await;
    let bin = [0xffu8, 0x00, 0x41];
    let id3 = s.publish(&ch, "application/octet-stream", &bin).await;

    let v = nd.next_json().await;
    assert_text_envelope(&v, &ch, &id1, "multi\nline");
    let v = nd.next_json().await;
    assert_eq!(envelope_id(&v, &ch), id2);
    assert_eq!(v["data"], json!([1, {"x": "y"}]));
    let v = nd.next_json().await;
    assert_eq!(envelope_id(&v, &ch), id3);
    assert_eq!(v["encoding"], "base64", "{v}");
    assert_eq!(unb64(v["data"].as_str().expect("string")), bin);
}

#[tokio::test]
async fn long_poll_without_since_waits_for_the_next_message() {
    let s = Server::start().await;
    let ch = channel("lp-wait");
    let old = s.publish_text(&ch, "old").await;
    // The answer (headers included) comes only with the next message, so
    // the poll and the publish run side by side.
    let poll = s.get(&format!("/sub/{ch}?timeout=10")).send();
    let publish = async {
        s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;
        s.publish_text(&ch, "new").await
    };
    let (resp, id) = within(IO_TIMEOUT * 2, "long-poll answer", async {
        tokio::join!(poll, publish)
    })
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let body = resp.body;
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(v["channel"], ch.as_str(), "{v}");
    let msgs = v["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 1, "only the new message: {v} (old was {old})");
    assert_text_envelope(&msgs[0], &ch, &id, "new");
    assert_eq!(v["last_id"], id.as_str(), "{v}");
    assert_eq!(v["gap"], false, "{v}");
}

#[tokio::test]
async fn long_poll_with_since_answers_at_once() {
    let s = Server::start().await;
    let ch = channel("lp-since");
    let ids = s.publish_many(&ch, "m", 3).await;
    let started = Instant::now();
    let v = s
        .poll(&format!("/sub/{ch}?since={}&timeout=20", ids[0]))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "long-poll with retained messages must answer at once"
    );
    let msgs = v["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 2, "{v}");
    assert_text_envelope(&msgs[0], &ch, &ids[1], "m2");
    assert_text_envelope(&msgs[1], &ch, &ids[2], "m3");
    assert_eq!(v["last_id"], ids[2].as_str(), "{v}");
    assert_eq!(v["gap"], false, "{v}");
}

#[tokio::test]
async fn long_poll_timeouts_and_last_id_rules() {
    let s = Server::start().await;
    let ch = channel("lp-timeout");

    // Short poll on an empty channel: at once, empty, last_id null.
    let started = Instant::now();
    let v = s.poll(&format!("/sub/{ch}?timeout=0")).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "timeout=0 waited"
    );
    assert_eq!(v["messages"], json!([]), "{v}");
    assert_eq!(v["last_id"], Value::Null, "{v}");
    assert_eq!(v["gap"], false, "{v}");

    let ids = s.publish_many(&ch, "m", 2).await;

    // No since, short poll: empty, last_id = the channel's newest id.
    let v = s.poll(&format!("/sub/{ch}?timeout=0")).await;
    assert_eq!(v["messages"], json!([]), "{v}");
    assert_eq!(v["last_id"], ids[1].as_str(), "{v}");

    // since = newest, timeout = 1: waits about a second, then empty with
    // last_id = the since id given.
    let started = Instant::now();
    let v = s
        .poll(&format!("/sub/{ch}?since={}&timeout=1", ids[1]))
        .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "timeout=1 answered after {waited:?}"
    );
    assert_eq!(v["messages"], json!([]), "{v}");
    assert_eq!(v["last_id"], ids[1].as_str(), "{v}");
    assert_eq!(v["gap"], false, "{v}");

    // since an older id, short poll: that message onwards.
    let v = s
        .poll(&format!("/sub/{ch}?since={}&timeout=0", ids[0]))
        .await;
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["last_id"], ids[1].as_str(), "{v}");
}

#[tokio::test]
async fn long_poll_bad_timeout_is_400() {
    let s = Server::start().await;
    let ch = channel("lp-badtimeout");
    for bad in ["abc", "-1", "1.5", "1e3", "10s"] {
        let resp = s.get(&format!("/sub/{ch}?timeout={bad}")).send().await;
        resp.assert_error(400, "invalid_timeout");
    }
}

#[tokio::test]
async fn jsonp_wraps_the_long_poll_answer() {
    let s = Server::start().await;
    let ch = channel("jsonp");
    let ids = s.publish_many(&ch, "m", 2).await;
    for cb in ["cb", "a.b_c$1", "_x", "$", "jQuery123_456"] {
        let resp = s
            .get(&format!("/sub/{ch}?since={}&callback={cb}", ids[0]))
            .send()
            .await;
        assert_eq!(resp.status, 200, "callback {cb}: {}", resp.text());
        let ct = resp.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("application/javascript"),
            "content-type {ct:?}"
        );
        let v = jsonp_arg(&resp.text(), cb);
        assert_eq!(v["channel"], ch.as_str(), "{v}");
        assert_eq!(v["messages"].as_array().map(Vec::len), Some(1), "{v}");
        assert_text_envelope(&v["messages"][0], &ch, &ids[1], "m2");
        assert_eq!(v["last_id"], ids[1].as_str(), "{v}");
        assert_eq!(v["gap"], false, "{v}");
    }
}

#[tokio::test]
async fn bad_callback_names_are_400() {
    let s = Server::start().await;
    let ch = channel("badcb");
    let too_long = "a".repeat(65);
    let bad = [
        "1abc",
        "a-b",
        "alert(1)",
        "a%3Bb",
        "a..b",
        ".a",
        "a.",
        "%3Cscript%3E",
        too_long.as_str(),
    ];
    for cb in bad {
        let resp = s
            .get(&format!("/sub/{ch}?timeout=0&callback={cb}"))
            .send()
            .await;
        resp.assert_error(400, "invalid_callback");
        let resp = s
            .get(&format!("/sub/{ch}?transport=iframe&callback={cb}"))
            .send()
            .await;
        resp.assert_error(400, "invalid_callback");
    }
    // 64 characters are fine.
    let ok = "b".repeat(64);
    let resp = s
        .get(&format!("/sub/{ch}?timeout=0&callback={ok}"))
        .send()
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test]
async fn iframe_streams_padded_script_chunks_that_cannot_break_out() {
    let s = Server::start().await;
    let ch = channel("iframe");
    let mut ifr = within(
        Duration::from_secs(2),
        "iframe response headers",
        s.iframe(&format!("/sub/{ch}?transport=iframe&callback=cb"), "cb"),
    )
    .await;
    // The padding arrives at once, before any message.
    ifr.read_at_least(1024, Duration::from_secs(2)).await;
    assert!(
        !ifr.text.contains("parent.cb("),
        "no message was published yet"
    );
    s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;

    let evil = "x</script><script>alert(1)</script><!-- y";
    let id1 = s.publish_text(&ch, evil).await;
    let id2 = s.publish_json(&ch, "{\"html\": \"</SCRIPT>\"}").await;
    let v = ifr.next_call().await;
    assert_text_envelope(&v, &ch, &id1, evil);
    let v = ifr.next_call().await;
    assert_eq!(envelope_id(&v, &ch), id2);
    assert_eq!(v["data"], json!({"html": "</SCRIPT>"}));
    assert!(
        !ifr.text.contains("<script>alert(1)") && !ifr.text.to_lowercase().contains("x</script>"),
        "a payload broke out of its script element: {:?}",
        &ifr.text[ifr.text.len().saturating_sub(400)..]
    );
    assert!(ifr.text.contains("\\u003c"), "< must be escaped as \\u003c");
}

#[tokio::test]
async fn heartbeats_on_every_streaming_transport() {
    let s = Server::builder().set("heartbeat", "\"1s\"").start().await;
    let ch = channel("hb");

    let mut sse = s.sse(&format!("/sub/{ch}"), &[]).await;
    let mut nd = s.ndjson(&format!("/sub/{ch}")).await;
    let mut ws = s.ws(&format!("/sub/{ch}")).await;
    let limit = Duration::from_millis(2500);

    let opened = Instant::now();
    let sse_task = tokio::spawn(async move {
        // A comment sent with the first bytes is not a heartbeat: wait for
        // one that comes later, about `heartbeat` after opening.
        loop {
            match sse.next_item(limit).await {
                Some(SseItem::Comment(_)) if opened.elapsed() > Duration::from_millis(300) => {
                    return
                }
                Some(SseItem::Comment(_)) | Some(SseItem::Retry(_)) => continue,
                other => panic!("SSE heartbeat expected, got {other:?}"),
            }
        }
    });
    let nd_task = tokio::spawn(async move {
        let first = nd.next_line(limit).await;
        assert_eq!(first.as_deref(), Some(""), "initial NDJSON empty line");
        let started = Instant::now();
        let hb = nd.next_line(limit).await;
        assert_eq!(hb.as_deref(), Some(""), "NDJSON heartbeat is an empty line");
        started.elapsed()
    });
    let ws_task = tokio::spawn(async move {
        match ws.next_event(limit).await {
            WsEvent::Ping => {}
            other => panic!("WS heartbeat Ping expected, got {other:?}"),
        }
    });
    sse_task.await.expect("SSE heartbeat");
    let nd_gap = nd_task.await.expect("NDJSON heartbeat");
    assert!(
        nd_gap > Duration::from_millis(100),
        "NDJSON heartbeat came with the first line"
    );
    ws_task.await.expect("WS heartbeat");
}
