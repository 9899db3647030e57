//! Acknowledged user mailboxes (docs/session-protocol.md, "Acknowledged
//! messages"): at-least-once delivery to a person, against the real binary,
//! on every transport, with the memory engine and with Redis; the
//! multi-node cases run three nodes on their own Redis.

mod common;
mod support_redis;
mod support_security;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use support_security::*;

/// Personal channels whose messages wait for an acknowledgement.
const ACK_NS: &str = "\n[[namespace]]\nprefix = \"user:\"\nack = true\n\
     \n[[namespace]]\nprefix = \"user:small-\"\nack = true\nmailbox_size = 2\n\
     \n[[namespace]]\nprefix = \"user:brief-\"\nack = true\nmailbox_ttl = \"1s\"\n\
     \n[[namespace]]\nprefix = \"user:plain-\"\n";

async fn ack_server() -> Server {
    Server::builder()
        .extra_config(&format!("{ACK_NS}{}", auth("5s")))
        .start()
        .await
}

async fn to_user(s: &Server, user: &str, body: Value) -> Value {
    let resp = s
        .post(&format!("/api/users/{user}/publish"))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await;
    assert_eq!(resp.status, 201, "user publish: {}", resp.text());
    resp.json()
}

/// Publishes `{"n": n}` for n in `range` to `user`; answers the ids.
async fn fill(s: &Server, user: &str, range: std::ops::RangeInclusive<u64>) -> Vec<String> {
    let mut ids = Vec::new();
    for n in range {
        let v = to_user(s, user, json!({"data": {"n": n}})).await;
        assert_eq!(v["ack"], true, "{v}");
        ids.push(v["id"].as_str().expect("id").to_string());
    }
    ids
}

async fn mailbox(s: &Server, user: &str) -> Value {
    let resp = s.get(&format!("/api/users/{user}/mailbox")).send().await;
    assert_eq!(resp.status, 200, "mailbox: {}", resp.text());
    resp.json()
}

async fn http_ack(s: &Server, tok: Option<&str>, body: &str) -> Resp {
    let mut req = s
        .post("/ack")
        .no_auth()
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(t) = tok {
        req = req.header("Authorization", &bearer(t));
    }
    req.send().await
}

fn ids_and_marks(envelopes: &[Value]) -> Vec<(String, bool)> {
    envelopes
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap_or("?").to_string(),
                v["ack"] == true,
            )
        })
        .collect()
}

fn marked(ids: &[String]) -> Vec<(String, bool)> {
    ids.iter().map(|id| (id.clone(), true)).collect()
}

#[tokio::test]
async fn pending_messages_come_again_on_every_transport_until_acknowledged() {
    let s = ack_server().await;
    let user = channel("mb");
    let uch = format!("user:{user}");
    let tok = token(&user, &[]);
    let auth_header = bearer(&tok);
    let headers = [("Authorization", auth_header.as_str())];
    let sent = fill(&s, &user, 1..=3).await;

    let state = mailbox(&s, &user).await;
    assert_eq!(state["pending"], 3, "{state}");
    assert_eq!(state["oldest_id"], sent[0].as_str(), "{state}");
    assert!(state["oldest_age_ms"].as_u64().is_some(), "{state}");

    // Each transport of the channel URL gets all three, in order, with
    // their ids; every one of them, as nothing acknowledged yet.
    let mut ws = s.ws_with(&format!("/sub/{uch}"), &headers).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(ws.next_json().await);
    }
    assert_eq!(ids_and_marks(&got), marked(&sent), "WebSocket");
    assert_eq!(got[2]["data"], json!({"n": 3}));

    let mut sse = s.sse(&format!("/sub/{uch}"), &headers).await;
    for id in &sent {
        sse_message(&mut sse, id).await;
    }

    let poll = s
        .get(&format!("/sub/{uch}?timeout=0"))
        .header("Authorization", &auth_header)
        .send()
        .await;
    assert_eq!(poll.status, 200, "{}", poll.text());
    let answer = poll.json();
    let polled: Vec<Value> = answer["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(ids_and_marks(&polled), marked(&sent), "long-poll: {answer}");

    // The session protocol, over WebSocket and over SSE + POST, even when
    // it resumes after the newest id.
    for via in [Via::Ws, Via::Sse] {
        let (mut sess, _) = Session::connected(&s, via, Some(&tok)).await;
        sess.ok("subscribe", json!({"channel": uch, "since": sent[2]}))
            .await;
        let mut pushed = Vec::new();
        for _ in 0..3 {
            pushed.push(sess.push().await);
        }
        assert_eq!(ids_and_marks(&pushed), marked(&sent), "session {via:?}");
    }

    // Acknowledged by id in a session: gone for everyone.
    let (mut sess, _) = Session::connected(&s, Via::Ws, Some(&tok)).await;
    let reply = sess.ok("ack", json!({"ids": [sent[0]]})).await;
    assert_eq!(reply, json!({"removed": 1, "pending": 2}));
    let state = mailbox(&s, &user).await;
    assert_eq!(
        (state["pending"].clone(), state["oldest_id"].clone()),
        (json!(2), json!(sent[1]))
    );
    // A live one reaches the open connection, marked.
    let live = fill(&s, &user, 4..=4).await;
    let v = ws.next_json().await;
    assert_eq!(ids_and_marks(&[v]), marked(&live));

    // Over plain HTTP, cumulatively.
    let resp = http_ack(&s, Some(&tok), &json!({"upto": sent[2]}).to_string()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json(),
        json!({"user": user, "removed": 2, "pending": 1})
    );
    let resp = http_ack(&s, Some(&tok), &json!({"ids": live}).to_string()).await;
    assert_eq!(resp.json()["pending"], 0);
    let state = mailbox(&s, &user).await;
    assert_eq!(state["pending"], 0, "{state}");
    assert_eq!(state["oldest_id"], Value::Null, "{state}");

    // A new connection gets nothing again: its first message is a new one.
    let mut again = s.ws_with(&format!("/sub/{uch}"), &headers).await;
    let next = fill(&s, &user, 5..=5).await;
    assert_eq!(ids_and_marks(&[again.next_json().await]), marked(&next));

    // The node counts them (this test's server is its own).
    let metrics = s.get("/metrics").send().await.text();
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    assert_eq!(value("herald_mailbox_messages_published_total"), Some(5));
    assert_eq!(value("herald_mailbox_messages_acknowledged_total"), Some(4));
}

#[tokio::test]
async fn the_publish_chooses_and_the_namespace_is_the_default() {
    let s = ack_server().await;
    let user = format!("plain-{}", channel("u"));
    let v = to_user(&s, &user, json!({"data": 1})).await;
    assert_eq!(v["ack"], false, "the namespace has no ack: {v}");
    let v = to_user(&s, &user, json!({"data": 2, "ack": true})).await;
    assert_eq!(v["ack"], true, "{v}");
    assert_eq!(mailbox(&s, &user).await["pending"], 1);
    for bad in [json!(null), json!("yes"), json!(1)] {
        let resp = s
            .post(&format!("/api/users/{user}/publish"))
            .header("Content-Type", "application/json")
            .body(json!({"data": 1, "ack": bad}).to_string())
            .send()
            .await;
        resp.assert_error(400, "invalid_request");
    }
    let acked = channel("u");
    let v = to_user(&s, &acked, json!({"data": 3, "ack": false})).await;
    assert_eq!(v["ack"], false, "{v}");
    assert_eq!(mailbox(&s, &acked).await["pending"], 0);
}

#[tokio::test]
async fn overflow_and_expiry_are_gaps_never_silence() {
    let s = ack_server().await;
    // mailbox_size 2: the oldest of three is dropped.
    let user = format!("small-{}", channel("u"));
    let sent = fill(&s, &user, 1..=3).await;
    let state = mailbox(&s, &user).await;
    assert_eq!(
        (state["pending"].clone(), state["gap"].clone()),
        (json!(2), json!(true))
    );
    let tok = token(&user, &[]);
    let mut ws = s
        .ws_with(
            &format!("/sub/user:{user}"),
            &[("Authorization", &bearer(&tok))],
        )
        .await;
    assert_gap_marker(&ws.next_json().await, &format!("user:{user}"));
    let got = [ws.next_json().await, ws.next_json().await];
    assert_eq!(ids_and_marks(&got), marked(&sent[1..]));
    assert_eq!(mailbox(&s, &user).await["gap"], false, "told once");
    // Connected: the gap is told at once, before the new message.
    let newest = fill(&s, &user, 4..=4).await;
    assert_gap_marker(&ws.next_json().await, &format!("user:{user}"));
    assert_eq!(ids_and_marks(&[ws.next_json().await]), marked(&newest));

    // mailbox_ttl 1s: the sweep drops it and the next subscribe hears of it.
    let user = format!("brief-{}", channel("u"));
    fill(&s, &user, 1..=1).await;
    eventually(Duration::from_secs(10), "the message to expire", || async {
        let state = mailbox(&s, &user).await;
        if state["pending"] == 0 && state["gap"] == true {
            Ok(())
        } else {
            Err(state.to_string())
        }
    })
    .await;
    let tok = token(&user, &[]);
    let (mut sess, _) = Session::connected(&s, Via::Ws, Some(&tok)).await;
    let reply = sess
        .ok("subscribe", json!({"channel": format!("user:{user}")}))
        .await;
    assert_eq!(reply["gap"], true, "{reply}");
}

#[tokio::test]
async fn bad_acknowledgements_are_refused_clearly() {
    let s = ack_server().await;
    let user = channel("u");
    let tok = token(&user, &[]);
    let (mut anon, _) = Session::connected(&s, Via::Ws, None).await;
    assert_eq!(
        anon.refused_code("ack", json!({"ids": ["1-1"]})).await,
        "forbidden"
    );
    let (mut sess, _) = Session::connected(&s, Via::Ws, Some(&tok)).await;
    for bad in [
        json!({}),
        json!({"ids": []}),
        json!({"ids": ["nope"]}),
        json!({"upto": "1-1", "ids": ["1-1"]}),
        json!({"upto": 7}),
    ] {
        assert_eq!(
            sess.refused_code("ack", bad.clone()).await,
            "invalid_command",
            "{bad}"
        );
    }
    let ok = sess.ok("ack", json!({"ids": ["1-1"]})).await;
    assert_eq!(ok, json!({"removed": 0, "pending": 0}), "harmless");

    let resp = http_ack(&s, None, r#"{"ids":["1-1"]}"#).await;
    resp.assert_error(401, "token_required");
    let resp = http_ack(&s, Some("not-a-token"), r#"{"ids":["1-1"]}"#).await;
    assert_eq!(resp.status, 401, "{}", resp.text());
    for bad in [r#"{"ids":["x"]}"#, r#"{}"#, r#"{"what":1}"#] {
        let resp = http_ack(&s, Some(&tok), bad).await;
        assert_eq!(resp.status, 400, "{bad}: {}", resp.text());
    }
    http_ack(&s, Some(&tok), "{oops")
        .await
        .assert_error(400, "invalid_json");
}

/// Three nodes on one Redis: a message published on one node reaches the
/// user's connections on the others, an acknowledgement on any node removes
/// it for all, and the mailbox outlives the node the message went through.
#[tokio::test]
async fn on_redis_every_node_shares_the_mailbox_and_it_survives_a_node() {
    let cluster =
        support_redis::Cluster::start_with("\n[[namespace]]\nprefix = \"user:\"\nack = true\n")
            .await;
    let (a, b, c) = (cluster.a(), cluster.b(), cluster.c());
    let tok = support_redis::token(c, json!({"user": "ann", "channels": [], "ttl": 60})).await;
    let auth_header = format!("Bearer {tok}");
    let headers = [("Authorization", auth_header.as_str())];
    let mut on_b = b.ws_with("/sub/user:ann", &headers).await;
    let mut on_c = c.ws_with("/sub/user:ann", &headers).await;
    b.wait_subscribers("user:ann", 2, Duration::from_secs(5))
        .await;
    let sent = fill(a, "ann", 1..=2).await;
    for ws in [&mut on_b, &mut on_c] {
        let got = [ws.next_json().await, ws.next_json().await];
        assert_eq!(ids_and_marks(&got), marked(&sent));
    }
    // Acknowledged on C: gone for a new connection on B.
    let resp = c
        .post("/ack")
        .no_auth()
        .header("Authorization", &auth_header)
        .header("Content-Type", "application/json")
        .body(json!({"ids": [sent[0]]}).to_string())
        .send()
        .await;
    assert_eq!(resp.json()["pending"], 1, "{}", resp.text());
    let mut again = b.ws_with("/sub/user:ann", &headers).await;
    assert_eq!(
        ids_and_marks(&[again.next_json().await]),
        marked(&sent[1..])
    );

    // The node that took the publish dies; the message is still pending.
    cluster.nodes[0].process.signal("KILL");
    let mut after = c.ws_with("/sub/user:ann", &headers).await;
    assert_eq!(
        ids_and_marks(&[after.next_json().await]),
        marked(&sent[1..])
    );
    assert_eq!(mailbox(b, "ann").await["pending"], 1);
}
