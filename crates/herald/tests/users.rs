//! Personal channels `user:{id}` and offline queues (docs/security.md,
//! "Personal channels and offline queues"), against the real binary.

mod common;
mod support_security;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use support_security::*;

// ---------------------------------------------------------------------------
// Personal channels and offline queues
// ---------------------------------------------------------------------------

async fn user_server() -> Server {
    Server::builder()
        .extra_config(&format!("{USER_NS}{}", auth("5s")))
        .start()
        .await
}

async fn user_publish(s: &Server, user: &str, data: Value) -> Value {
    let resp = s
        .post(&format!("/api/users/{user}/publish"))
        .header("Content-Type", "application/json")
        .body(json!({ "data": data }).to_string())
        .send()
        .await;
    assert_eq!(resp.status, 201, "user publish: {}", resp.text());
    resp.json()
}

#[tokio::test]
async fn personal_channel_belongs_to_its_user() {
    let s = user_server().await;
    let me = channel("u");
    let uch = format!("user:{me}");
    let path = format!("/sub/{uch}");
    let mut mine = s
        .ws_with(&path, &[("Authorization", &bearer(&token(&me, &[])))])
        .await;

    let other = bearer(&token("someone-else", &[]));
    let granted_other = bearer(&token("someone-else", &["user:*", "*"]));
    for (name, headers) in [
        ("another user", vec![("Authorization", other.as_str())]),
        (
            "another user granted user:*",
            vec![("Authorization", granted_other.as_str())],
        ),
        ("no token", vec![]),
    ] {
        assert_ws_refused(
            s.try_ws(&path, &headers).await,
            403,
            "forbidden",
            &format!("{name}, WS"),
        );
        let mut r = sse_req(&s, &path);
        for (k, v) in &headers {
            r = r.header(k, v);
        }
        answer(r, name).await.assert_error(403, "forbidden");
        let mut r = s.get(&format!("{path}?timeout=0"));
        for (k, v) in &headers {
            r = r.header(k, v);
        }
        answer(r, name).await.assert_error(403, "forbidden");
    }
    for t in [Some(token("someone-else", &["*"])), None] {
        let (mut sess, _) = Session::connected(&s, Via::Ws, t.as_deref()).await;
        assert_eq!(
            sess.refused_code("subscribe", json!({"channel": uch}))
                .await,
            "forbidden"
        );
    }
    let v = user_publish(&s, &me, json!({"hello": "me"})).await;
    assert_eq!(v["queued"], false, "{v}");
    assert_eq!(v["channel"], uch.as_str(), "{v}");
    assert_eq!(mine.next_json().await["data"], json!({"hello": "me"}));
}

#[tokio::test]
async fn offline_queue_is_delivered_in_order_then_live() {
    let s = user_server().await;
    for via in ["ws", "session"] {
        let user = channel("q");
        let uch = format!("user:{user}");
        for n in 1..=3 {
            let v = user_publish(&s, &user, json!({ "n": n })).await;
            assert_eq!(v["queued"], true, "offline publish {n}: {v}");
            assert_eq!(v["subscribers"], 0, "{v}");
        }
        let t = token(&user, &[]);
        let mut got = Vec::new();
        if via == "ws" {
            let mut ws = s
                .ws_with(&format!("/sub/{uch}"), &[("Authorization", &bearer(&t))])
                .await;
            for _ in 1..=3 {
                got.push(ws.next_json().await["data"]["n"].clone());
            }
            let v = user_publish(&s, &user, json!({"n": 4})).await;
            assert_eq!(
                (v["queued"].clone(), v["subscribers"].clone()),
                (json!(false), json!(1)),
                "{v}"
            );
            got.push(ws.next_json().await["data"]["n"].clone());
        } else {
            let mut sess = Session::open(&s, Via::Sse, "", &[("Authorization", &bearer(&t))]).await;
            sess.ok("subscribe", json!({"channel": uch})).await;
            for _ in 1..=3 {
                got.push(sess.push().await["data"]["n"].clone());
            }
            let v = user_publish(&s, &user, json!({"n": 4})).await;
            assert_eq!(v["queued"], false, "{v}");
            got.push(sess.push().await["data"]["n"].clone());
        }
        assert_eq!(
            got,
            vec![json!(1), json!(2), json!(3), json!(4)],
            "{via}: queued then live"
        );
    }
}

#[tokio::test]
async fn offline_queue_is_bounded_and_delivered_once() {
    let s = user_server().await;
    let user = channel("bq");
    let uch = format!("user:{user}");
    let t = bearer(&token(&user, &[]));

    // Online, but not following the personal channel: still queued.
    let mut elsewhere = s
        .ws_with(
            &format!("/sub/{}", channel("news")),
            &[("Authorization", &t)],
        )
        .await;
    for n in 1..=12 {
        let v = user_publish(&s, &user, json!({ "n": n })).await;
        assert_eq!(
            v["queued"], true,
            "publish {n} while not following {uch}: {v}"
        );
    }
    // The user: namespace keeps 10: the oldest two are gone.
    let mut ws = s
        .ws_with(&format!("/sub/{uch}"), &[("Authorization", &t)])
        .await;
    let mut got = Vec::new();
    while got.len() < 10 {
        let v = ws.next_json().await;
        if v.get("gap").is_none() {
            got.push(
                v["data"]["n"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("queued message {v}")),
            );
        }
    }
    assert_eq!(
        got,
        (3..=12).collect::<Vec<u64>>(),
        "the bounded queue, in order"
    );
    ws.close().await;
    s.wait_subscribers(&uch, 0, WAIT).await;

    // The queue was delivered: the next subscribe starts with live messages.
    let mut again = s
        .ws_with(&format!("/sub/{uch}"), &[("Authorization", &t)])
        .await;
    let v = user_publish(&s, &user, json!({"n": "live"})).await;
    assert_eq!(v["queued"], false, "{v}");
    let first = again.next_json().await;
    assert_eq!(
        first["data"]["n"], "live",
        "a second subscribe must not get the already delivered queue again: {first}"
    );
    elsewhere.expect_silence(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn user_disconnect_closes_that_users_connections_only() {
    let s = user_server().await;
    let target = channel("t");
    let bystander = channel("b");
    let news = channel("news");
    let tt = bearer(&token(&target, &[]));

    let mut t_personal = s
        .ws_with(&format!("/sub/user:{target}"), &[("Authorization", &tt)])
        .await;
    let mut t_news = s
        .ws_with(&format!("/sub/{news}"), &[("Authorization", &tt)])
        .await;
    let mut t_sse = s
        .sse(&format!("/sub/{news}"), &[("Authorization", &tt)])
        .await;
    let (mut t_sess, _) = Session::connected(&s, Via::Ws, Some(&token(&target, &[]))).await;
    t_sess.ok("subscribe", json!({"channel": news})).await;
    let mut t_sess_sse = Session::open(&s, Via::Sse, "", &[("Authorization", &tt)]).await;
    t_sess_sse.ok("subscribe", json!({"channel": news})).await;

    let mut b_ws = s
        .ws_with(
            &format!("/sub/{news}"),
            &[("Authorization", &bearer(&token(&bystander, &[])))],
        )
        .await;
    let mut anon_sse = s.sse(&format!("/sub/{news}"), &[]).await;
    let (mut b_sess, _) = Session::connected(&s, Via::Ws, Some(&token(&bystander, &[]))).await;
    b_sess.ok("subscribe", json!({"channel": news})).await;

    let resp = s
        .post(&format!("/api/users/{target}/disconnect"))
        .send()
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    assert_eq!(
        t_personal.expect_close(WAIT).await.0,
        4006,
        "personal channel WS"
    );
    assert_eq!(
        t_news.expect_close(WAIT).await.0,
        4006,
        "the user's WS on another channel"
    );
    let e = sse_until(&mut t_sse, "SSE disconnect", |e| e.event == "disconnect").await;
    assert_eq!(
        serde_json::from_str::<Value>(&e.data).expect("json")["code"],
        4006
    );
    t_sess.expect_end(4006, WAIT).await;
    t_sess_sse.expect_end(4006, WAIT).await;

    let id = s.publish_text(&news, "others stay").await;
    assert_eq!(b_ws.next_json().await["id"], id.as_str());
    sse_message(&mut anon_sse, &id).await;
    b_sess
        .push_until("bystander session message", |v| v["id"] == id.as_str())
        .await;
}
