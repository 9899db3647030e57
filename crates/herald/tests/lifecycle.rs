//! Lifecycles: graceful shutdown on SIGTERM/SIGINT, channel deletion, and
//! subscribers that go away being freed at once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Reads an SSE stream up to its `disconnect` event and returns its data.
async fn sse_disconnect(sse: &mut Sse, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match sse.next_item(left).await {
            Some(SseItem::Event(e)) if e.event == "disconnect" => {
                return serde_json::from_str(&e.data)
                    .unwrap_or_else(|err| panic!("disconnect data not JSON ({err}): {e:?}"))
            }
            Some(SseItem::Event(e)) => panic!("SSE: expected the disconnect event, got {e:?}"),
            Some(_) => continue,
            None => panic!("SSE stream ended without a disconnect event"),
        }
    }
}

/// Reads an NDJSON stream up to its final `disconnect` line.
async fn ndjson_disconnect(nd: &mut Ndjson, ch: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match nd.next_line(left).await {
            Some(l) if l.trim().is_empty() => continue,
            Some(l) => {
                let v: Value = serde_json::from_str(&l)
                    .unwrap_or_else(|e| panic!("NDJSON line not JSON ({e}): {l:?}"));
                assert_eq!(v["channel"], ch, "NDJSON disconnect line {v}");
                assert!(
                    v.get("disconnect").is_some(),
                    "expected a disconnect line, got {v}"
                );
                return v["disconnect"].clone();
            }
            None => panic!("NDJSON stream ended without a disconnect line"),
        }
    }
}

async fn shutdown_notifies_and_exits(signal: &str) {
    let mut s = Server::builder()
        .set("shutdown_grace", "\"3s\"")
        .start()
        .await;
    let ch = channel("shutdown");
    let mut ws = s.ws(&format!("/sub/{ch}")).await;
    let mut sse = s.sse(&format!("/sub/{ch}"), &[]).await;
    let mut nd = s.ndjson(&format!("/sub/{ch}")).await;
    s.wait_subscribers(&ch, 3, IO_TIMEOUT).await;

    let started = Instant::now();
    s.process.signal(signal);
    let limit = Duration::from_secs(4);

    let (code, reason) = ws.expect_close(limit).await;
    assert_eq!(
        (code, reason.as_str()),
        (1001, "server shutting down"),
        "WS close on {signal}"
    );

    let d = sse_disconnect(&mut sse, limit).await;
    assert_eq!(
        (&d["code"], &d["reason"], &d["reconnect"]),
        (&json!(1001), &json!("server shutting down"), &json!(true)),
        "SSE disconnect on {signal}: {d}"
    );
    sse.expect_end(limit).await;

    let d = ndjson_disconnect(&mut nd, &ch, limit).await;
    assert_eq!(d["code"], 1001, "NDJSON disconnect {d}");
    assert_eq!(d["reconnect"], true, "NDJSON disconnect {d}");
    assert!(
        d["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "NDJSON disconnect {d}"
    );
    nd.expect_end(limit).await;

    // Stopped accepting: a new request gets no successful answer.
    let late = s
        .get(&format!("/pub/{ch}"))
        .try_send(Duration::from_millis(1000))
        .await;
    if let Ok(resp) = late {
        assert!(
            resp.status >= 500,
            "a new request was served during shutdown: {} {}",
            resp.status,
            resp.text()
        );
    }

    let status = s
        .process
        .wait_exit(Duration::from_secs(5).saturating_sub(started.elapsed()))
        .await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after {signal}: {status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exit took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sigterm_tells_streaming_subscribers_to_reconnect_and_exits_zero() {
    shutdown_notifies_and_exits("TERM").await;
}

#[tokio::test]
async fn sigint_tells_streaming_subscribers_to_reconnect_and_exits_zero() {
    shutdown_notifies_and_exits("INT").await;
}

#[tokio::test]
async fn sigterm_with_idle_and_long_polling_clients_exits_zero_quickly() {
    let mut s = Server::start().await;
    let ch = channel("shutdown-lp");
    let _poll = s.get(&format!("/sub/{ch}?timeout=30")).send_only().await;
    let _iframe = s
        .get(&format!("/sub/{ch}?transport=iframe&callback=cb"))
        .stream()
        .await;
    s.wait_subscribers(&ch, 2, IO_TIMEOUT).await;
    let started = Instant::now();
    s.process.signal("TERM");
    let status = s.process.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn sigterm_right_after_the_listening_line_exits_zero() {
    // The listening line says the server is up; a supervisor may stop it
    // at any moment from then on, and that must still be a clean stop.
    for signal in ["TERM", "INT"] {
        let mut p = Server::builder().spawn();
        let armed = p.arm_signal(signal);
        p.wait_listening();
        armed.fire();
        let status = p.wait_exit(Duration::from_secs(5)).await;
        assert_eq!(
            status.code(),
            Some(0),
            "SIG{signal} sent right after the listening line: {status:?} (no code = killed by the signal: handlers not installed yet)"
        );
    }
}

#[tokio::test]
async fn sigterm_exits_zero_even_when_stderr_is_gone() {
    // The log collector goes away while the server runs (stderr becomes a
    // broken pipe); the server must still stop cleanly when told to.
    let mut s = Server::builder().stderr_closable().start().await;
    let ch = channel("stderr-gone");
    let _ws = s.ws(&format!("/sub/{ch}")).await;
    s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;
    s.process.close_stderr();
    s.process.signal("TERM");
    let status = s.process.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn delete_drops_history_and_closes_subscribers() {
    let s = Server::start().await;
    let ch = channel("del");
    s.publish_many(&ch, "d", 3).await;
    assert_eq!(s.info(&ch).await["messages"], 3);

    let mut ws = s.ws(&format!("/sub/{ch}")).await;
    let mut sse = s.sse(&format!("/sub/{ch}"), &[]).await;
    let mut nd = s.ndjson(&format!("/sub/{ch}")).await;
    s.wait_subscribers(&ch, 3, IO_TIMEOUT).await;

    let resp = s.delete(&format!("/pub/{ch}")).send().await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["channel"], ch.as_str(), "{}", resp.text());

    let (code, reason) = ws.expect_close(IO_TIMEOUT).await;
    assert_eq!(
        (code, reason.as_str()),
        (4002, "channel deleted"),
        "WS close on delete"
    );

    let d = sse_disconnect(&mut sse, IO_TIMEOUT).await;
    assert_eq!(d["code"], 4002, "SSE disconnect on delete: {d}");
    sse.expect_end(IO_TIMEOUT).await;

    let d = ndjson_disconnect(&mut nd, &ch, IO_TIMEOUT).await;
    assert_eq!(d["code"], 4002, "NDJSON disconnect on delete: {d}");
    nd.expect_end(IO_TIMEOUT).await;

    let info = s.info(&ch).await;
    assert_eq!(info["messages"], 0, "history dropped: {info}");
    s.wait_subscribers(&ch, 0, Duration::from_secs(2)).await;
    let v = s.poll(&format!("/sub/{ch}?since=earliest&timeout=0")).await;
    assert_eq!(v["messages"], json!([]), "{v}");

    // The channel can be used again afterwards.
    let id = s.publish_text(&ch, "again").await;
    let v = s.poll(&format!("/sub/{ch}?since=earliest&timeout=0")).await;
    assert_text_envelope(&v["messages"][0], &ch, &id, "again");
}

#[tokio::test]
async fn subscribers_that_go_away_are_freed_at_once() {
    let s = Server::start().await;
    let freed_within = Duration::from_millis(1500);

    let ch = channel("gone-ws");
    let ws = s.ws(&format!("/sub/{ch}")).await;
    s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;
    drop(ws);
    s.wait_subscribers(&ch, 0, freed_within).await;

    let ch = channel("gone-ws-close");
    let ws = s.ws(&format!("/sub/{ch}")).await;
    s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;
    ws.close().await;
    s.wait_subscribers(&ch, 0, freed_within).await;

    let ch = channel("gone-sse");
    let sse = s.sse(&format!("/sub/{ch}"), &[]).await;
    s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;
    drop(sse);
    s.wait_subscribers(&ch, 0, freed_within).await;

    let ch = channel("gone-nd");
    let nd = s.ndjson(&format!("/sub/{ch}")).await;
    s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;
    drop(nd);
    s.wait_subscribers(&ch, 0, freed_within).await;

    let ch = channel("gone-iframe");
    let ifr = s
        .get(&format!("/sub/{ch}?transport=iframe&callback=cb"))
        .stream()
        .await;
    s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;
    drop(ifr);
    s.wait_subscribers(&ch, 0, freed_within).await;

    let ch = channel("gone-lp");
    // The long-poll answers only when a message comes, so its headers are
    // not awaited: send it, then watch the count.
    let lp = s.get(&format!("/sub/{ch}?timeout=30")).send_only().await;
    s.wait_subscribers(&ch, 1, IO_TIMEOUT).await;
    drop(lp);
    s.wait_subscribers(&ch, 0, freed_within).await;
}

#[tokio::test]
async fn bad_config_key_exits_nonzero_naming_the_key() {
    let mut p = Server::builder().set("no_such_setting", "1").spawn();
    let status = p.wait_exit(Duration::from_secs(10)).await;
    assert!(
        !status.success(),
        "an unknown config key must fail the start: {status:?}"
    );
    let err = p.stderr_text();
    assert!(
        err.contains("no_such_setting"),
        "stderr must name the key: {err}"
    );
}
