//! Limits: the inclusive payload limit, the configured limit, and the slow
//! consumer that is closed while fast subscribers keep every message.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn payload_limit_is_inclusive_at_65536_bytes() {
    let s = Server::start().await;
    let ch = channel("limit");
    let exact = vec![b'a'; 65_536];
    let resp = s
        .post(&format!("/pub/{ch}"))
        .header("Content-Type", "text/plain")
        .body(&exact)
        .send()
        .await;
    assert_eq!(resp.status, 201, "exactly 65536 bytes: {}", resp.text());

    let over = vec![b'a'; 65_537];
    let resp = s
        .post(&format!("/pub/{ch}"))
        .header("Content-Type", "text/plain")
        .body(&over)
        .send()
        .await;
    resp.assert_error(413, "payload_too_large");

    // Binary payloads count their raw bytes, not their base64 form.
    let mut bin = vec![0xffu8; 65_536];
    bin[0] = 0x80;
    let resp = s
        .post(&format!("/pub/{ch}"))
        .header("Content-Type", "application/octet-stream")
        .body(&bin)
        .send()
        .await;
    assert_eq!(resp.status, 201, "65536 binary bytes: {}", resp.text());

    let info = s.info(&ch).await;
    assert_eq!(
        info["messages"], 2,
        "only accepted payloads are stored: {info}"
    );

    // The delivered payload is whole.
    let v = s.poll(&format!("/sub/{ch}?since=earliest&timeout=0")).await;
    assert_eq!(
        v["messages"][0]["data"].as_str().map(str::len),
        Some(65_536)
    );
    assert_eq!(
        unb64(v["messages"][1]["data"].as_str().expect("base64")).len(),
        65_536
    );
}

#[tokio::test]
async fn api_publish_over_the_limit_is_413() {
    let s = Server::start().await;
    let ch = channel("limit-api");
    let big = "b".repeat(200_000);
    let resp = s
        .post("/api/publish")
        .header("Content-Type", "application/json")
        .body(json!({"channel": ch, "data": big}).to_string())
        .send()
        .await;
    resp.assert_error(413, "payload_too_large");
    assert_eq!(s.info(&ch).await["messages"], 0);
}

#[tokio::test]
async fn configured_max_payload_is_honoured() {
    let s = Server::builder().set("max_payload", "1000").start().await;
    let ch = channel("limit-cfg");
    let resp = s
        .post(&format!("/pub/{ch}"))
        .body(vec![b'x'; 1000])
        .send()
        .await;
    assert_eq!(
        resp.status,
        201,
        "1000 bytes with max_payload = 1000: {}",
        resp.text()
    );
    let resp = s
        .post(&format!("/pub/{ch}"))
        .body(vec![b'x'; 1001])
        .send()
        .await;
    resp.assert_error(413, "payload_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_websocket_consumer_is_closed_while_fast_one_gets_everything() {
    const COUNT: usize = 300;
    const SIZE: usize = 60_000;
    let s = Server::builder()
        .set("queue_size", "8")
        .set("write_timeout", "\"3s\"")
        .start()
        .await;
    let ch = channel("slow");

    let mut fast = s.ws(&format!("/sub/{ch}")).await;
    let slow = s.ws_small_buffer(&format!("/sub/{ch}")).await;
    s.wait_subscribers(&ch, 2, IO_TIMEOUT).await;

    // "Fast" means faster than the publisher. A debug-build WebSocket
    // client reads 60 KB frames slower than the server can publish them, so
    // the publisher keeps at most WINDOW messages ahead of the fast reader
    // (WINDOW < queue_size): any cut of the fast one is then the server's
    // fault. The slow one never reads, so it falls behind without bound.
    const WINDOW: usize = 4;
    let (seen_tx, mut seen_rx) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut frames = Vec::with_capacity(COUNT);
        while frames.len() < COUNT {
            match fast.stream.next().await {
                Some(Ok(Message::Text(t))) => {
                    frames.push(t);
                    let _ = seen_tx.send(frames.len());
                }
                Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => {}
                other => panic!(
                    "fast subscriber cut off after {} messages: {other:?}",
                    frames.len()
                ),
            }
        }
        // Hand the connection back: it must stay open to be counted.
        (frames, fast)
    });

    let started = Instant::now();
    let mut published = Vec::with_capacity(COUNT);
    for i in 1..=COUNT {
        // Only the Ok/Err is kept: the `Ref` guard must not be held, or
        // the reader's `send` blocks on it.
        let reached = within(
            Duration::from_secs(10),
            &format!(
                "the fast subscriber to reach message {}",
                i.saturating_sub(WINDOW)
            ),
            async { seen_rx.wait_for(|seen| seen + WINDOW >= i).await.is_ok() },
        )
        .await;
        assert!(reached, "fast reader stopped before message {i}");
        let mut text = format!("{i:06}");
        text.push_str(&"p".repeat(SIZE - text.len()));
        published.push(s.publish_text(&ch, &text).await);
    }
    let publish_time = started.elapsed();
    let (frames, _fast) = within(Duration::from_secs(60), "fast subscriber", reader)
        .await
        .expect("fast subscriber task");
    let mut received = Vec::with_capacity(COUNT);
    for (i, frame) in frames.iter().enumerate() {
        let v: Value = serde_json::from_str(frame.as_str()).expect("envelope JSON");
        let text = v["data"].as_str().expect("text payload");
        assert_eq!(text.len(), SIZE, "payload size");
        assert_eq!(&text[..6], format!("{:06}", i + 1), "fast subscriber order");
        received.push(envelope_id(&v, &ch));
    }
    assert_eq!(
        received, published,
        "fast subscriber got every message in order"
    );
    assert!(
        publish_time < Duration::from_secs(60),
        "publishing took {publish_time:?}: a slow subscriber must not hold the publisher"
    );

    // The slow one is dropped by the server: only the fast one is counted.
    s.wait_subscribers(&ch, 1, Duration::from_secs(10)).await;

    // Reading the slow one now drains what was buffered, then it ends: a
    // close frame 4001 "slow consumer..." or the end of the connection.
    let mut slow = slow;
    let mut count = 0usize;
    let end = within(
        Duration::from_secs(20),
        "the slow subscriber's end",
        async {
            loop {
                match slow.next_event(Duration::from_secs(10)).await {
                    WsEvent::Json(_) => count += 1,
                    WsEvent::Ping => {}
                    WsEvent::Close(frame) => return Some(frame),
                    WsEvent::End(_) => return None,
                }
            }
        },
    )
    .await;
    match end {
        Some(Some((code, reason))) => {
            assert_eq!(code, 4001, "slow consumer close code (reason {reason:?})");
            assert!(
                reason.starts_with("slow consumer"),
                "close reason {reason:?}"
            );
        }
        Some(None) => panic!("slow consumer closed without a code"),
        None => {}
    }
    assert!(
        count < COUNT,
        "the slow subscriber was not cut off: it received all {count} messages"
    );
}

/// A WebSocket client that stops reading for a while (but not long enough to
/// overflow its queue) gets every message, in order, once it reads again.
/// While it waits, the server writes messages straight from the publishing
/// thread until the socket is full; then a message goes out in part and the
/// rest (and what follows) through the connection's queue: this checks the
/// seams between those paths, on the channel URL and on a one-channel session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_websocket_reader_gets_every_message_in_order() {
    const COUNT: usize = 150;
    const SIZE: usize = 30_000;
    let s = Server::builder()
        .set("queue_size", "256")
        .set("write_timeout", "\"60s\"")
        .start()
        .await;
    for session in [false, true] {
        let ch = channel("paused");
        let mut ws = if session {
            let mut ws = s.ws_small_buffer("/connection/websocket").await;
            ws.send_text(&json!({"id": 1, "subscribe": {"channel": ch}}).to_string())
                .await;
            let reply = ws.next_json().await;
            assert_eq!(reply["id"], 1, "session subscribe reply {reply}");
            ws
        } else {
            s.ws_small_buffer(&format!("/sub/{ch}")).await
        };
        s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;
        // 4.5 MB: more than the kernel buffers between server and client.
        let mut published = Vec::with_capacity(COUNT);
        for i in 1..=COUNT {
            // Paced, not a burst: a message arriving within a millisecond of
            // the previous one would go through the queue (hub::BURST_GAP),
            // and this test is about the direct path and its fallbacks.
            tokio::time::sleep(Duration::from_millis(3)).await;
            let mut text = format!("{i:06}");
            text.push_str(&"q".repeat(SIZE - text.len()));
            published.push(s.publish_text(&ch, &text).await);
        }
        let mut received = Vec::with_capacity(COUNT);
        while received.len() < COUNT {
            match ws.next_event(Duration::from_secs(30)).await {
                WsEvent::Json(v) => {
                    let text = v["data"].as_str().expect("text payload");
                    assert_eq!(
                        &text[..6],
                        format!("{:06}", received.len() + 1),
                        "order (session: {session})"
                    );
                    assert_eq!(text.len(), SIZE, "payload size (session: {session})");
                    received.push(envelope_id(&v, &ch));
                }
                WsEvent::Ping => {}
                other => panic!(
                    "paused reader (session: {session}) ended after {} messages: {other:?}",
                    received.len()
                ),
            }
        }
        assert_eq!(
            received, published,
            "every message once (session: {session})"
        );
        // And it goes on: the next message comes straight through.
        let last = s.publish_text(&ch, "after").await;
        let v = ws.next_json().await;
        assert_eq!(envelope_id(&v, &ch), last, "live after catching up");
    }
}
