//! Presence and join/leave notices (docs/security.md), against the real
//! binary, on every kind of subscriber.

mod common;
mod support_security;

use common::*;
use serde_json::{json, Value};
use support_security::*;

// ---------------------------------------------------------------------------
// Presence
// ---------------------------------------------------------------------------

async fn presence(s: &Server, ch: &str) -> Value {
    let resp = s.get(&format!("/api/presence/{ch}")).send().await;
    assert_eq!(resp.status, 200, "presence: {}", resp.text());
    resp.json()
}

fn user_entry<'a>(p: &'a Value, user: &str) -> Option<&'a Value> {
    p["users"].as_array()?.iter().find(|u| u["user"] == user)
}

#[tokio::test]
async fn presence_lists_users_with_connection_counts_and_info() {
    let s = Server::builder()
        .extra_config(&format!("{ROOM_NS}{}", auth("5s")))
        .start()
        .await;
    let room = channel("room:p");
    let path = format!("/sub/{room}");
    let ann = token_with_info("ann", &[], json!({"name": "Ann"}));
    let bob = token_with_info("bob", &[], json!({"name": "Bob", "role": "admin"}));

    let ann_ws = s.ws_with(&path, &[("Authorization", &bearer(&ann))]).await;
    let ann_sse = s.sse(&path, &[("Cookie", &cookie(&ann))]).await;
    let (mut bob_sess, _) = Session::connected(&s, Via::Ws, Some(&bob)).await;
    bob_sess.ok("subscribe", json!({"channel": room})).await;
    let _anon = s.ws(&path).await;

    let p = eventually(WAIT, "presence of 4 connections", || async {
        let p = presence(&s, &room).await;
        if p["connections"] == 4 {
            Ok(p)
        } else {
            Err(p.to_string())
        }
    })
    .await;
    assert_eq!(p["enabled"], true, "{p}");
    assert_eq!(p["anonymous"], 1, "{p}");
    let a = user_entry(&p, "ann").unwrap_or_else(|| panic!("ann in {p}"));
    assert_eq!(
        (a["connections"].clone(), a["info"].clone()),
        (json!(2), json!({"name": "Ann"})),
        "{p}"
    );
    let b = user_entry(&p, "bob").unwrap_or_else(|| panic!("bob in {p}"));
    assert_eq!(
        (b["connections"].clone(), b["info"].clone()),
        (json!(1), json!({"name": "Bob", "role": "admin"})),
        "{p}"
    );
    assert_eq!(p["users"].as_array().map(Vec::len), Some(2), "{p}");

    let sp = bob_sess.ok("presence", json!({"channel": room})).await;
    assert_eq!(sp["connections"], 4, "session presence {sp}");
    assert_eq!(
        user_entry(&sp, "ann").map(|a| a["connections"].clone()),
        Some(json!(2)),
        "{sp}"
    );

    // Leaving connections leave presence.
    ann_ws.close().await;
    eventually(WAIT, "ann down to one connection", || async {
        let p = presence(&s, &room).await;
        match user_entry(&p, "ann") {
            Some(a) if a["connections"] == 1 => Ok(()),
            _ => Err(p.to_string()),
        }
    })
    .await;
    drop(ann_sse);
    eventually(WAIT, "ann gone from presence", || async {
        let p = presence(&s, &room).await;
        if user_entry(&p, "ann").is_none() && p["connections"] == 2 {
            Ok(())
        } else {
            Err(p.to_string())
        }
    })
    .await;

    let plain = channel("plain");
    let p = presence(&s, &plain).await;
    assert_eq!(
        p["enabled"], false,
        "presence off outside presence namespaces: {p}"
    );
}

#[tokio::test]
async fn join_and_leave_notices_reach_every_kind_of_subscriber() {
    let s = Server::builder()
        .extra_config(&format!("{ROOM_NS}{}", auth("5s")))
        .start()
        .await;
    let room = channel("room:j");
    let path = format!("/sub/{room}");
    let mut w_ws = s.ws(&path).await;
    let mut w_nd = ndjson_with(&s, &path, &[]).await;
    let mut w_sse = s.sse(&path, &[]).await;
    let (mut w_sess, _) = Session::connected(&s, Via::Ws, None).await;
    w_sess.ok("subscribe", json!({"channel": room})).await;

    let carol = token_with_info("carol", &[], json!({"name": "Carol"}));
    let carol_ws = s
        .ws_with(&path, &[("Authorization", &bearer(&carol))])
        .await;

    let is = |kind: &'static str| {
        let room = room.clone();
        move |v: &Value| v["channel"] == room.as_str() && v[kind]["user"] == "carol"
    };
    let join = ws_until(&mut w_ws, "join on WS", is("join")).await;
    assert_eq!(join["join"]["info"], json!({"name": "Carol"}), "{join}");
    let client = join["join"]["client"]
        .as_str()
        .expect("client id")
        .to_string();
    nd_until(&mut w_nd, "join on NDJSON", is("join")).await;
    let e = sse_until(&mut w_sse, "join on SSE", |e| {
        e.event == "join" && e.data.contains("carol")
    })
    .await;
    let v: Value = serde_json::from_str(&e.data).expect("json");
    assert_eq!(v["join"]["client"], client.as_str(), "{v}");
    let j = w_sess.push_until("join on session", is("join")).await;
    assert_eq!(j["join"]["client"], client.as_str(), "{j}");

    carol_ws.close().await;
    let leave = ws_until(&mut w_ws, "leave on WS", is("leave")).await;
    assert_eq!(leave["leave"]["client"], client.as_str(), "{leave}");
    nd_until(&mut w_nd, "leave on NDJSON", is("leave")).await;
    sse_until(&mut w_sse, "leave on SSE", |e| {
        e.event == "leave" && e.data.contains("carol")
    })
    .await;
    w_sess.push_until("leave on session", is("leave")).await;

    // A session subscriber's own leave, when its connection ends.
    let dave = token_with_info("dave", &[], json!({"name": "Dave"}));
    let (mut dave_sess, _) = Session::connected(&s, Via::Ws, Some(&dave)).await;
    dave_sess.ok("subscribe", json!({"channel": room})).await;
    ws_until(&mut w_ws, "dave joins", |v| v["join"]["user"] == "dave").await;
    drop(dave_sess);
    ws_until(&mut w_ws, "dave leaves", |v| v["leave"]["user"] == "dave").await;
    eventually(WAIT, "nobody named left in presence", || async {
        let p = presence(&s, &room).await;
        if p["users"].as_array().is_some_and(Vec::is_empty) {
            Ok(())
        } else {
            Err(p.to_string())
        }
    })
    .await;
}
