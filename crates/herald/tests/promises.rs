//! The promises that make a server safe to put on the internet, against
//! the real binary on one node (the memory engine, or Redis with
//! `HERALD_TEST_ENGINE`; the cross-node halves are in `cluster_promises.rs`):
//!
//! - an idempotent publish stores once per key and channel within the
//!   window, and answers a repeat like the first publish;
//! - `max_subscribers` places are given back when a subscription ends, on
//!   every transport;
//! - a user's offline queue that overflowed says so (the gap marker) before
//!   the newest messages.

mod common;
mod support_security;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use support_security::*;

const WAIT: Duration = Duration::from_secs(5);

fn auth() -> String {
    format!("\n[auth]\nhmac_secret = \"{SECRET}\"\n")
}

async fn pub_with_key(s: &Server, ch: &str, key: &str, text: &str) -> Value {
    let resp = s
        .post(&format!("/pub/{ch}"))
        .header("Content-Type", "text/plain")
        .header("Idempotency-Key", key)
        .body(text)
        .send()
        .await;
    assert_eq!(resp.status, 201, "publish with a key: {}", resp.text());
    resp.json()
}

async fn api_publish(s: &Server, body: Value) -> Value {
    let resp = s
        .post("/api/publish")
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await;
    assert_eq!(resp.status, 201, "api publish: {}", resp.text());
    resp.json()
}

/// Every message of the channel's history, as (id, data) from a long-poll.
async fn history(s: &Server, ch: &str) -> Vec<Value> {
    let v = s.poll(&format!("/sub/{ch}?since=earliest&timeout=0")).await;
    v["messages"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("long-poll answer without messages: {v}"))
}

// ---------------------------------------------------------------------------
// Idempotent publish
// ---------------------------------------------------------------------------

#[tokio::test]
async fn same_key_twice_stores_one_message_and_answers_the_same_id() {
    let s = Server::start().await;
    let ch = channel("idem");
    let first = pub_with_key(&s, &ch, "order-17", "once").await;
    assert!(first.get("duplicate").is_none(), "first publish: {first}");
    let again = pub_with_key(&s, &ch, "order-17", "once").await;
    assert_eq!(again["id"], first["id"], "repeat answers the first id");
    assert_eq!(again["channel"], first["channel"]);
    assert_eq!(again["duplicate"], true, "repeat: {again}");
    let kept = history(&s, &ch).await;
    assert_eq!(kept.len(), 1, "one message stored: {kept:?}");
    assert_eq!(kept[0]["id"], first["id"]);
    assert_eq!(s.info(&ch).await["messages"], 1);

    // /api/publish with the field: the same promise.
    let ch2 = channel("idem-api");
    let body = json!({"channel": ch2, "data": {"n": 1}, "idempotency_key": "k-1"});
    let a = api_publish(&s, body.clone()).await;
    let b = api_publish(&s, body).await;
    assert_eq!(
        (a["id"].clone(), b["duplicate"].clone()),
        (b["id"].clone(), json!(true))
    );
    assert_eq!(history(&s, &ch2).await.len(), 1);

    // A publish without a key is never a duplicate.
    s.publish_text(&ch, "keyless").await;
    assert_eq!(history(&s, &ch).await.len(), 2);
}

#[tokio::test]
async fn one_key_on_different_channels_stores_on_each() {
    let s = Server::start().await;
    let (c1, c2) = (channel("idem-a"), channel("idem-b"));
    let a = pub_with_key(&s, &c1, "same", "x").await;
    let b = pub_with_key(&s, &c2, "same", "x").await;
    assert!(a.get("duplicate").is_none() && b.get("duplicate").is_none());
    assert_eq!(history(&s, &c1).await.len(), 1);
    assert_eq!(history(&s, &c2).await.len(), 1);

    // The multi-channel form applies the key per channel: a retry after a
    // partial success stores only where the first attempt did not.
    let c3 = channel("idem-c");
    let v = api_publish(
        &s,
        json!({"channels": [c1, c3], "data": "y", "idempotency_key": "batch-1"}),
    )
    .await;
    let first: Vec<Value> = v["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(first.len(), 2, "{v}");
    assert!(first.iter().all(|r| r.get("duplicate").is_none()), "{v}");
    let v = api_publish(
        &s,
        json!({"channels": [c1, c3], "data": "y", "idempotency_key": "batch-1"}),
    )
    .await;
    let again: Vec<Value> = v["results"].as_array().cloned().unwrap_or_default();
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a["id"], b["id"], "{v}");
        assert_eq!(b["duplicate"], true, "{v}");
    }
    assert_eq!(
        history(&s, &c1).await.len(),
        2,
        "c1: one keyed 'same', one 'batch-1'"
    );
    assert_eq!(history(&s, &c3).await.len(), 1);
}

#[tokio::test]
async fn after_the_window_the_key_stores_again() {
    let s = Server::builder()
        .set("idempotency_window", "\"300ms\"")
        .start()
        .await;
    let ch = channel("idem-window");
    let first = pub_with_key(&s, &ch, "k", "1").await;
    // Repeats inside the window store nothing; once it has passed, the same
    // key stores a new message with a new id.
    let later = eventually(WAIT, "the window to end", || async {
        let v = pub_with_key(&s, &ch, "k", "1").await;
        if v.get("duplicate").is_some() {
            assert_eq!(v["id"], first["id"], "inside the window: {v}");
            Err(v.to_string())
        } else {
            Ok(v)
        }
    })
    .await;
    assert_ne!(later["id"], first["id"]);
    assert_eq!(history(&s, &ch).await.len(), 2);
}

#[tokio::test]
async fn a_zero_window_stops_the_start_naming_the_key() {
    let mut p = Server::builder()
        .set("idempotency_window", "\"0s\"")
        .spawn();
    let status = p.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(2), "a zero window must fail the start");
    let err = p.stderr_text();
    assert!(
        err.contains("idempotency_window"),
        "stderr must name the key: {err}"
    );
}

#[tokio::test]
async fn bad_keys_are_refused_naming_where_they_came_from() {
    let s = Server::start().await;
    let ch = channel("idem-bad");
    for key in [String::new(), "k".repeat(256)] {
        let resp = s
            .post(&format!("/pub/{ch}"))
            .header("Idempotency-Key", &key)
            .body("x")
            .send()
            .await;
        resp.assert_error(400, "invalid_request");
        let message = resp.json()["error"]["message"].to_string();
        assert!(message.contains("Idempotency-Key"), "{message}");
    }
    for key in [
        json!(""),
        json!("é"),
        json!("tab\there"),
        json!("k".repeat(256)),
    ] {
        let resp = s
            .post("/api/publish")
            .header("Content-Type", "application/json")
            .body(json!({"channel": ch, "data": 1, "idempotency_key": key}).to_string())
            .send()
            .await;
        resp.assert_error(400, "invalid_request");
        let message = resp.json()["error"]["message"].to_string();
        assert!(message.contains("idempotency_key"), "{message}");
    }
    // 255 printable characters, spaces included, are fine.
    let long = format!("a b{}", "~".repeat(252));
    pub_with_key(&s, &ch, &long, "ok").await;
    assert_eq!(history(&s, &ch).await.len(), 1, "only the valid key stored");
}

// ---------------------------------------------------------------------------
// max_subscribers places come back on every transport
// ---------------------------------------------------------------------------

fn capped() -> String {
    format!(
        "\n[[namespace]]\nprefix = \"one:\"\nmax_subscribers = 1\n{}",
        auth()
    )
}

/// Tries a WebSocket subscribe until it is admitted (a place given back
/// reaches the claim at once on memory; on Redis the `HDEL` is queued).
async fn ws_when_free(s: &Server, path: &str) -> Ws {
    eventually(WAIT, "a place to come back", || async {
        s.try_ws(path, &[]).await
    })
    .await
}

#[tokio::test]
async fn a_place_is_given_back_when_the_subscription_ends_on_every_transport() {
    let s = Server::builder().extra_config(&capped()).start().await;
    let ch = channel("one:c");
    let path = format!("/sub/{ch}");

    // SSE holds the place; every other way in is refused with 429.
    let sse = s.sse(&path, &[]).await;
    assert_ws_refused(s.try_ws(&path, &[]).await, 429, "channel_full", "second WS");
    s.get(&format!("{path}?timeout=0"))
        .send()
        .await
        .assert_error(429, "channel_full");
    drop(sse);

    // The WebSocket transport gets it back once SSE is gone.
    let ws = ws_when_free(&s, &path).await;
    let mut sess = Session::open(&s, Via::Ws, "", &[]).await;
    sess.ok("connect", json!({})).await;
    assert_eq!(
        sess.refused_code("subscribe", json!({"channel": ch})).await,
        "channel_full"
    );
    ws.close().await;

    // The session protocol: subscribe takes it, unsubscribe gives it back.
    within(WAIT, "the session to be admitted", async {
        loop {
            let v = sess.call("subscribe", json!({"channel": ch})).await;
            match v["error"]["code"].as_str() {
                None => break,
                Some("channel_full") => tokio::time::sleep(Duration::from_millis(25)).await,
                Some(other) => panic!("subscribe refused with {other}: {v}"),
            }
        }
    })
    .await;
    sess.ok("unsubscribe", json!({"channel": ch})).await;
    let ws = ws_when_free(&s, &path).await;
    drop(ws);

    // A long-poll holds it for its request and gives it back when it ends.
    let answer = eventually(WAIT, "a long-poll to be admitted", || async {
        let resp = s.get(&format!("{path}?timeout=0")).send().await;
        if resp.status == 200 {
            Ok(resp.json())
        } else {
            Err(resp.text())
        }
    })
    .await;
    assert_eq!(answer["messages"], json!([]), "{answer}");
    ws_when_free(&s, &path).await;
}

// ---------------------------------------------------------------------------
// A user's offline queue that overflowed is not silent
// ---------------------------------------------------------------------------

/// Personal channels keep 3 queued messages.
fn small_queue() -> String {
    format!(
        "\n[[namespace]]\nprefix = \"user:\"\nhistory_size = 3\nhistory_ttl = \"10m\"\n{}",
        auth()
    )
}

async fn user_publish(s: &Server, user: &str, n: u64) -> Value {
    let resp = s
        .post(&format!("/api/users/{user}/publish"))
        .header("Content-Type", "application/json")
        .body(json!({"data": {"n": n}}).to_string())
        .send()
        .await;
    assert_eq!(resp.status, 201, "user publish: {}", resp.text());
    let v = resp.json();
    assert_eq!(v["queued"], true, "the user is offline: {v}");
    v
}

#[tokio::test]
async fn an_overflowed_queue_says_gap_then_delivers_the_newest_in_order() {
    let s = Server::builder().extra_config(&small_queue()).start().await;
    for via in ["ws", "session", "sse"] {
        let user = channel("gq");
        let uch = format!("user:{user}");
        let mut ids = Vec::new();
        for n in 1..=5 {
            ids.push(user_publish(&s, &user, n).await["id"].clone());
        }
        let auth = bearer(&token(&user, &[]));
        let headers = [("Authorization", auth.as_str())];
        let mut got = Vec::new();
        match via {
            "ws" => {
                let mut ws = s.ws_with(&format!("/sub/{uch}"), &headers).await;
                assert_gap_marker(&ws.next_json().await, &uch);
                for _ in 0..3 {
                    let v = ws.next_json().await;
                    got.push((v["id"].clone(), v["data"]["n"].clone()));
                }
            }
            "sse" => {
                let mut sse = s.sse(&format!("/sub/{uch}"), &headers).await;
                let first = sse_until(&mut sse, "the gap event", |_| true).await;
                assert_eq!(first.event, "gap", "{first:?}");
                for _ in 0..3 {
                    let e = sse_until(&mut sse, "a message", |e| e.event == "message").await;
                    let v: Value = serde_json::from_str(&e.data).expect("JSON data");
                    got.push((json!(e.id), v["n"].clone()));
                }
            }
            _ => {
                let mut sess = Session::open(&s, Via::Ws, "", &headers).await;
                sess.ok("connect", json!({})).await;
                let reply = sess.ok("subscribe", json!({"channel": uch})).await;
                assert_eq!(reply["gap"], true, "subscribe reply: {reply}");
                assert_gap_marker(&sess.push().await, &uch);
                for _ in 0..3 {
                    let v = sess.push().await;
                    got.push((v["id"].clone(), v["data"]["n"].clone()));
                }
            }
        }
        let want: Vec<(Value, Value)> = ids[2..]
            .iter()
            .cloned()
            .zip([json!(3), json!(4), json!(5)])
            .collect();
        assert_eq!(got, want, "{via}: the newest three, oldest first");
    }

    // A queue that did not overflow has no gap.
    let user = channel("fits");
    let uch = format!("user:{user}");
    for n in 1..=3 {
        user_publish(&s, &user, n).await;
    }
    let auth = bearer(&token(&user, &[]));
    let mut ws = s
        .ws_with(&format!("/sub/{uch}"), &[("Authorization", auth.as_str())])
        .await;
    for n in 1..=3 {
        let v = ws.next_json().await;
        assert_eq!(v["data"]["n"], n, "no gap marker before a full queue: {v}");
    }
}
