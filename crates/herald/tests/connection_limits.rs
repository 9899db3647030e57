//! Limits refused with their codes (docs/security.md, "Limits"): total and
//! per-address connections, subscriptions per session, client publish rate,
//! command and payload sizes, `max_subscribers`, waiting session commands,
//! and settings that stop the start.

mod common;
mod support_security;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use support_security::*;

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn max_connections_refuses_with_503_while_others_receive() {
    let s = Server::builder()
        .extra_config("\n[limits]\nmax_connections = 2\n")
        .start()
        .await;
    let ch = channel("maxc");
    let path = format!("/sub/{ch}");
    // Refused and finished requests give their slot back.
    for _ in 0..3 {
        let (status, _) = ws_refusal(
            s.try_ws(&path, &[("Authorization", "Bearer not-a-token")])
                .await,
            "bad token",
        );
        assert_eq!(status, 401);
        let resp = answer(s.get(&format!("{path}?timeout=0")), "short poll").await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let mut a = s.ws(&path).await;
    let b = s.sse(&path, &[]).await;

    assert_ws_refused(
        s.try_ws(&path, &[]).await,
        503,
        "too_many_connections",
        "third WS",
    );
    answer(sse_req(&s, &path), "third SSE")
        .await
        .assert_error(503, "too_many_connections");
    answer(s.get(&format!("{path}?timeout=0")), "third long-poll")
        .await
        .assert_error(503, "too_many_connections");
    for via in [Via::Ws, Via::Sse] {
        let (status, body) = Session::refused(&s, via, "", &[]).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (503, &json!("too_many_connections")),
            "{via:?} {body}"
        );
    }
    // Backend calls are not connections.
    let id = s.publish_text(&ch, "full house").await;
    assert_eq!(a.next_json().await["id"], id.as_str());

    drop(b);
    let mut c = eventually(WAIT, "a freed slot admits a new connection", || async {
        s.try_ws(&path, &[]).await
    })
    .await;
    let id = s.publish_text(&ch, "again").await;
    assert_eq!(a.next_json().await["id"], id.as_str());
    assert_eq!(c.next_json().await["id"], id.as_str());
}

#[tokio::test]
async fn max_connections_per_ip_refuses_with_429_for_that_address_only() {
    let s = Server::builder()
        .extra_config("\n[limits]\nmax_connections = 100\nmax_connections_per_ip = 2\n")
        .start()
        .await;
    let ch = channel("perip");
    let path = format!("/sub/{ch}");
    let mut a = s.ws(&path).await;
    let mut b = s.sse(&path, &[]).await;
    assert_ws_refused(
        s.try_ws(&path, &[]).await,
        429,
        "too_many_connections_from_ip",
        "third WS from 127.0.0.1",
    );
    answer(sse_req(&s, &path), "third SSE")
        .await
        .assert_error(429, "too_many_connections_from_ip");
    let (status, body) = Session::refused(&s, Via::Ws, "", &[]).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (429, &json!("too_many_connections_from_ip")),
        "{body}"
    );

    let mut c = match ws_from(&s, "127.0.0.2", &path, &[]).await {
        Ok(ws) => ws,
        Err(e) => panic!("a connection from another address must be admitted: {e}"),
    };
    let id = s.publish_text(&ch, "per ip").await;
    assert_eq!(a.next_json().await["id"], id.as_str());
    sse_message(&mut b, &id).await;
    assert_eq!(c.next_json().await["id"], id.as_str());
}

#[tokio::test]
async fn max_subscriptions_per_session_is_limit_exceeded() {
    let s = Server::builder()
        .extra_config("\n[limits]\nmax_subscriptions = 3\n")
        .start()
        .await;
    for via in [Via::Ws, Via::Sse] {
        let chans: Vec<String> = (0..4).map(|i| channel(&format!("ms{i}"))).collect();
        let (mut sess, _) = Session::connected(&s, via, None).await;
        for c in &chans[..3] {
            sess.ok("subscribe", json!({"channel": c})).await;
        }
        assert_eq!(
            sess.refused_code("subscribe", json!({"channel": chans[3]}))
                .await,
            "limit_exceeded",
            "{via:?}"
        );
        let id = s.publish_text(&chans[0], "still subscribed").await;
        sess.push_until("message on a kept subscription", |v| v["id"] == id.as_str())
            .await;
        sess.ok("unsubscribe", json!({"channel": chans[2]})).await;
        sess.ok("subscribe", json!({"channel": chans[3]})).await;
        let id = s.publish_text(&chans[3], "room again").await;
        sess.push_until("message on the fourth channel", |v| v["id"] == id.as_str())
            .await;
    }
}

#[tokio::test]
async fn client_publish_rate_limits_one_connection_only() {
    let s = Server::builder()
        .extra_config(&format!(
            "{CHAT_NS}\n[limits]\nclient_publish_rate = 1\nclient_publish_burst = 3\n"
        ))
        .start()
        .await;
    let ch = channel("chat:rate");
    let mut sub = s.ws(&format!("/sub/{ch}")).await;
    let (mut a, _) = Session::connected(&s, Via::Ws, None).await;
    let (mut b, _) = Session::connected(&s, Via::Sse, None).await;
    // Four publishes at once (pipelined): the burst of 3 passes, the 4th does not.
    for n in 1..=4 {
        a.send_raw(
            &json!({"id": 100 + n, "publish": {"channel": ch, "data": {"a": n}}}).to_string(),
        )
        .await;
    }
    for n in 1..=3 {
        let r = a.reply(100 + n).await;
        assert!(
            r.get("publish").is_some(),
            "publish {n} within the burst: {r}"
        );
    }
    let r = a.reply(104).await;
    assert_eq!(r["error"]["code"], "rate_limited", "{r}");
    b.ok("publish", json!({"channel": ch, "data": {"b": 1}}))
        .await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(sub.next_json().await["data"].clone());
    }
    assert_eq!(
        got,
        vec![
            json!({"a": 1}),
            json!({"a": 2}),
            json!({"a": 3}),
            json!({"b": 1})
        ]
    );
    // The limited session is still alive.
    a.ok("ping", json!({})).await;
}

#[tokio::test]
async fn oversized_command_closes_the_websocket_with_1009_and_is_413_over_http() {
    let s = Server::builder()
        .extra_config("\n[limits]\nmax_command_size = 1024\n")
        .start()
        .await;
    let ch = channel("big");
    let (mut other, _) = Session::connected(&s, Via::Ws, None).await;
    other.ok("subscribe", json!({"channel": ch})).await;

    let big = json!({"id": 2, "subscribe": {"channel": ch}, "pad": "x".repeat(2000)}).to_string();
    let (mut ws_sess, _) = Session::connected(&s, Via::Ws, None).await;
    ws_sess.send_raw(&big).await;
    let end = within(WAIT, "close after an oversized frame", async {
        loop {
            match ws_sess.frame(WAIT).await {
                Frame::Json(v) if v.get("disconnect").is_some() => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(
        matches!(end, Frame::Closed(Some(1009))),
        "expected close 1009, got {end:?}"
    );

    let (mut http_sess, _) = Session::connected(&s, Via::Sse, None).await;
    let sid = http_sess.http_id().expect("id").to_string();
    let resp = s
        .post(&format!("/connection/{sid}"))
        .header("Content-Type", "application/json")
        .body(&big)
        .send()
        .await;
    assert_eq!(
        resp.status,
        413,
        "oversized POSTed command: {}",
        resp.text()
    );
    http_sess.ok("ping", json!({})).await;

    let id = s.publish_text(&ch, "others go on").await;
    other
        .push_until("message", |v| v["id"] == id.as_str())
        .await;
}

#[tokio::test]
async fn max_payload_is_enforced_on_every_way_in() {
    let s = Server::builder()
        .set("max_payload", "1000")
        .extra_config(CHAT_NS)
        .start()
        .await;
    let ch = channel("chat:payload");
    let mut sub = s.ws(&format!("/sub/{ch}")).await;

    let resp = s
        .post(&format!("/pub/{ch}"))
        .header("Content-Type", "text/plain")
        .body(vec![b'a'; 1001])
        .send()
        .await;
    resp.assert_error(413, "payload_too_large");
    let resp = s
        .post("/api/publish")
        .header("Content-Type", "application/json")
        .body(json!({"channel": ch, "data": "b".repeat(1200)}).to_string())
        .send()
        .await;
    resp.assert_error(413, "payload_too_large");
    let resp = s
        .post("/api/users/someone/publish")
        .header("Content-Type", "application/json")
        .body(json!({"data": "c".repeat(1200)}).to_string())
        .send()
        .await;
    resp.assert_error(413, "payload_too_large");
    let (mut sess, _) = Session::connected(&s, Via::Ws, None).await;
    assert_eq!(
        sess.refused_code("publish", json!({"channel": ch, "data": "d".repeat(1200)}))
            .await,
        "payload_too_large"
    );

    let exact = s.publish(&ch, "text/plain", &[b'e'; 1000]).await;
    let small = sess
        .ok("publish", json!({"channel": ch, "data": "small"}))
        .await;
    assert_eq!(
        sub.next_json().await["id"],
        exact.as_str(),
        "only accepted payloads are delivered"
    );
    assert_eq!(sub.next_json().await["id"], small["id"]);
}

#[tokio::test]
async fn max_subscribers_refuses_with_429_channel_full() {
    let s = Server::builder()
        .extra_config("\n[[namespace]]\nprefix = \"full:\"\nmax_subscribers = 2\n")
        .start()
        .await;
    let ch = channel("full:c");
    let path = format!("/sub/{ch}");
    let a = s.ws(&path).await;
    let mut b = s.sse(&path, &[]).await;
    s.wait_subscribers(&ch, 2, WAIT).await;

    assert_ws_refused(s.try_ws(&path, &[]).await, 429, "channel_full", "third WS");
    answer(sse_req(&s, &path), "third SSE")
        .await
        .assert_error(429, "channel_full");
    answer(s.get(&format!("{path}?timeout=0")), "third long-poll")
        .await
        .assert_error(429, "channel_full");
    let (mut sess, _) = Session::connected(&s, Via::Ws, None).await;
    assert_eq!(
        sess.refused_code("subscribe", json!({"channel": ch})).await,
        "channel_full"
    );
    // The limit is per channel.
    let other = channel("full:d");
    sess.ok("subscribe", json!({"channel": other})).await;

    let id = s.publish_text(&ch, "full").await;
    sse_message(&mut b, &id).await;
    let mut a = a;
    assert_eq!(a.next_json().await["id"], id.as_str());

    a.close().await;
    s.wait_subscribers(&ch, 1, WAIT).await;
    sess.ok("subscribe", json!({"channel": ch})).await;
    let id = s.publish_text(&ch, "a seat freed").await;
    sess.push_until("message after a seat freed", |v| v["id"] == id.as_str())
        .await;
}

#[tokio::test]
async fn http_session_with_too_many_waiting_commands_is_429() {
    // The session task is held in a subscribe hook call to a backend that
    // never answers, so posted commands wait in its bounded queue.
    let backend = HookBackend::start(|_| HookAnswer::Silent).await;
    let s = Server::builder()
        .extra_config(&hooks(&backend.url, &["subscribe"], "deny", "1500ms"))
        .start()
        .await;
    let ch = channel("stuck");
    let mut sess = Session::open(&s, Via::Sse, "", &[]).await;
    let sid = sess.http_id().expect("id").to_string();
    sess.send_raw(&json!({"id": 1, "subscribe": {"channel": ch}}).to_string())
        .await;
    backend
        .wait_call("the subscribe hook call", |c| {
            c.body["channel"] == ch.as_str()
        })
        .await;

    let many: Vec<Value> = (100..300).map(|i| json!({"id": i, "ping": {}})).collect();
    let resp = s
        .post(&format!("/connection/{sid}"))
        .header("Content-Type", "application/json")
        .body(Value::Array(many).to_string())
        .send()
        .await;
    resp.assert_error(429, "limit_exceeded");

    // The session survives: the held command ends (backend down) and later ones work.
    let reply = within(WAIT, "the held subscribe's reply", async {
        loop {
            let v = sess.push().await;
            if v["id"] == 1 {
                return v;
            }
        }
    })
    .await;
    assert_eq!(reply["error"]["code"], "hook_unavailable", "{reply}");
    assert_eq!(sess.ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn bad_security_settings_stop_the_start_with_exit_2() {
    let missing = std::env::temp_dir().join("herald-security-no-such-key.pem");
    let not_json =
        std::env::temp_dir().join(format!("herald-security-{}.jwks", std::process::id()));
    std::fs::write(&not_json, "not json").expect("write");
    let cases = [
        (
            "\n[auth]\nhmac_secret = \"too short\"\n".to_string(),
            "hmac_secret",
        ),
        (
            format!("\n[auth]\npublic_keys = [{}]\n", toml_path(&missing)),
            "herald-security-no-such-key.pem",
        ),
        (
            format!("\n[auth]\njwks_file = {}\n", toml_path(&not_json)),
            "jwks",
        ),
        (
            hooks("https://127.0.0.1:9/h", &["connect"], "deny", "1s"),
            "url",
        ),
        (
            hooks("http://127.0.0.1:9/h", &["connect"], "maybe", "1s"),
            "on_error",
        ),
        (
            hooks("http://127.0.0.1:9/h", &["conect"], "deny", "1s"),
            "events",
        ),
    ];
    for (config, needle) in cases {
        let mut p = Server::builder().extra_config(&config).spawn();
        let status = p.wait_exit(Duration::from_secs(10)).await;
        let err = p.stderr_text();
        assert_eq!(
            status.code(),
            Some(2),
            "config {config:?}: {status:?}, stderr {err}"
        );
        assert!(
            err.contains(needle),
            "config {config:?}: the message must name {needle:?}: {err}"
        );
    }
    let _ = std::fs::remove_file(&not_json);
}
