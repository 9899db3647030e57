//! Backend hooks (docs/security.md, "Backend hooks"): connect, subscribe
//! and publish decisions, RPC, disconnect notifications, and a backend that
//! is down, against the real binary and a hook endpoint in the test.

mod common;
mod support_security;

use common::*;
use serde_json::json;
use support_security::*;

// ---------------------------------------------------------------------------
// Hooks
// ---------------------------------------------------------------------------

#[tokio::test]
async fn subscribe_hook_refusal_is_403_denied_and_others_go_on() {
    let backend = HookBackend::start(|body| {
        if body["channel"]
            .as_str()
            .is_some_and(|c| c.contains("blocked"))
        {
            HookAnswer::Json(json!({"allow": false, "reason": "blocked by policy"}))
        } else {
            HookAnswer::Json(json!({"allow": true}))
        }
    })
    .await;
    let s = Server::builder()
        .extra_config(&format!(
            "{}{}",
            auth("5s"),
            hooks(&backend.url, &["subscribe"], "deny", "2s")
        ))
        .start()
        .await;
    let ok = channel("fine");
    let blocked = channel("blocked");
    let t = bearer(&token("u1", &[]));
    let mut good = s
        .ws_with(&format!("/sub/{ok}"), &[("Authorization", &t)])
        .await;
    let call = backend
        .wait_call("subscribe hook for the allowed channel", |c| {
            c.body["channel"] == ok.as_str()
        })
        .await;
    assert_eq!(call.event_header.as_deref(), Some("subscribe"), "{call:?}");
    assert_eq!(call.body["event"], "subscribe");
    assert_eq!(call.body["user"], "u1");
    assert!(
        call.body["client"].as_str().is_some_and(|c| !c.is_empty()),
        "{call:?}"
    );

    let path = format!("/sub/{blocked}");
    let body = assert_ws_refused(s.try_ws(&path, &[]).await, 403, "denied", "WS");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("blocked by policy")),
        "the backend's reason: {body}"
    );
    answer(sse_req(&s, &path), "SSE")
        .await
        .assert_error(403, "denied");
    answer(s.get(&format!("{path}?timeout=0")), "long-poll")
        .await
        .assert_error(403, "denied");
    let mut sessions = Vec::new();
    for via in [Via::Ws, Via::Sse] {
        let (mut sess, _) = Session::connected(&s, via, None).await;
        assert_eq!(
            sess.refused_code("subscribe", json!({"channel": blocked}))
                .await,
            "denied",
            "{via:?}"
        );
        sess.ok("subscribe", json!({"channel": ok})).await;
        sessions.push(sess);
    }
    assert_eq!(s.info(&blocked).await["subscribers"], 0);

    let id = s.publish_text(&ok, "go on").await;
    assert_eq!(good.next_json().await["id"], id.as_str());
    for sess in &mut sessions {
        sess.push_until("message", |v| v["id"] == id.as_str()).await;
    }
}

#[tokio::test]
async fn publish_hook_rewrites_client_publishes_and_can_refuse_them() {
    let backend = HookBackend::start(|body| {
        if body["data"]["text"] == "bad" {
            HookAnswer::Json(json!({"allow": false, "reason": "no bad words"}))
        } else {
            HookAnswer::Json(
                json!({"allow": true, "data": {"checked": true, "original": body["data"]}}),
            )
        }
    })
    .await;
    let s = Server::builder()
        .extra_config(&format!(
            "{CHAT_NS}{}{}",
            auth("5s"),
            hooks(&backend.url, &["publish"], "deny", "2s")
        ))
        .start()
        .await;
    let ch = channel("chat:hook");
    let mut sub = s.ws(&format!("/sub/{ch}")).await;
    let mut listener = Session::open(&s, Via::Sse, "", &[]).await;
    listener.ok("subscribe", json!({"channel": ch})).await;
    let (mut author, _) = Session::connected(&s, Via::Ws, Some(&token("writer", &[]))).await;

    let r = author
        .ok("publish", json!({"channel": ch, "data": {"text": "hi"}}))
        .await;
    let id = r["id"].as_str().expect("id").to_string();
    let rewritten = json!({"checked": true, "original": {"text": "hi"}});
    let got = sub.next_json().await;
    assert_eq!(
        (got["id"].clone(), got["data"].clone()),
        (json!(id), rewritten.clone()),
        "{got}"
    );
    let got = listener
        .push_until("rewritten message", |v| v["id"] == id.as_str())
        .await;
    assert_eq!(got["data"], rewritten);
    let call = backend
        .wait_call("publish hook", |c| c.body["event"] == "publish")
        .await;
    assert_eq!(call.body["user"], "writer");
    assert_eq!(call.body["channel"], ch.as_str());
    assert_eq!(call.body["data"], json!({"text": "hi"}));

    assert_eq!(
        author
            .refused_code("publish", json!({"channel": ch, "data": {"text": "bad"}}))
            .await,
        "denied"
    );
    // Outside a client_publish namespace the hook is not even asked.
    let before = backend.calls_for("publish").len();
    let news = channel("news");
    assert_eq!(
        author
            .refused_code("publish", json!({"channel": news, "data": 1}))
            .await,
        "forbidden"
    );
    assert_eq!(backend.calls_for("publish").len(), before);
    assert_eq!(
        s.info(&ch).await["messages"],
        1,
        "the refused publish stored nothing"
    );
    let next = s.publish_text(&ch, "backend").await;
    assert_eq!(
        sub.next_json().await["id"],
        next.as_str(),
        "nothing was delivered in between"
    );
    // Backend publishes are not client publishes: no hook call.
    assert_eq!(backend.calls_for("publish").len(), before);
}

#[tokio::test]
async fn connect_hook_refusal_ends_the_session_with_4006() {
    let backend = HookBackend::start(|body| {
        if body["user"] == "mallory" {
            HookAnswer::Json(json!({"allow": false, "reason": "banned"}))
        } else {
            HookAnswer::Empty
        }
    })
    .await;
    let s = Server::builder()
        .extra_config(&format!(
            "{}{}",
            auth("5s"),
            hooks(&backend.url, &["connect"], "deny", "2s")
        ))
        .start()
        .await;
    let ch = channel("c");
    let mallory = token_with_info("mallory", &[], json!({"n": "M"}));

    let mut ws_sess = Session::open(&s, Via::Ws, "", &[]).await;
    let reply = ws_sess.call("connect", json!({"token": mallory})).await;
    assert_eq!(reply["error"]["code"], "denied", "{reply}");
    ws_sess.expect_end(4006, WAIT).await;

    let mut sse_sess =
        Session::open(&s, Via::Sse, "", &[("Authorization", &bearer(&mallory))]).await;
    let reply = sse_sess.call("subscribe", json!({"channel": ch})).await;
    assert_eq!(reply["error"]["code"], "denied", "{reply}");
    sse_sess.expect_end(4006, WAIT).await;

    assert_ws_refused(
        s.try_ws(
            &format!("/sub/{ch}"),
            &[("Authorization", &bearer(&mallory))],
        )
        .await,
        403,
        "denied",
        "per-channel WS of a refused user",
    );

    let alice = token_with_info("alice", &[], json!({"n": "A"}));
    let (mut ok, reply) = Session::connected(&s, Via::Ws, Some(&alice)).await;
    assert_eq!(reply["user"], "alice");
    ok.ok("subscribe", json!({"channel": ch})).await;
    let call = backend
        .wait_call("alice's connect", |c| c.body["user"] == "alice")
        .await;
    assert_eq!(call.event_header.as_deref(), Some("connect"));
    assert_eq!(call.body["info"], json!({"n": "A"}));
    assert!(call.body["transport"].is_string(), "{call:?}");
    let id = s.publish_text(&ch, "welcome").await;
    ok.push_until("message", |v| v["id"] == id.as_str()).await;
}

#[tokio::test]
async fn hook_backend_down_denies_or_allows_per_on_error() {
    let silent = HookBackend::start(|_| HookAnswer::Silent).await;
    let failing = HookBackend::start(|_| HookAnswer::Status(500)).await;
    let dead = dead_url();
    let events = ["subscribe", "rpc"];
    for (name, url, on_error) in [
        ("nothing listening", dead.as_str(), "deny"),
        ("never answers", silent.url.as_str(), "deny"),
        ("answers 500", failing.url.as_str(), "deny"),
        ("nothing listening", dead.as_str(), "allow"),
    ] {
        let s = Server::builder()
            .extra_config(&hooks(url, &events, on_error, "300ms"))
            .start()
            .await;
        let ch = channel("h");
        let path = format!("/sub/{ch}");
        let what = format!("backend {name}, on_error={on_error}");
        let (mut sess, _) = Session::connected(&s, Via::Ws, None).await;
        if on_error == "deny" {
            assert_ws_refused(s.try_ws(&path, &[]).await, 503, "hook_unavailable", &what);
            answer(sse_req(&s, &path), &what)
                .await
                .assert_error(503, "hook_unavailable");
            answer(s.get(&format!("{path}?timeout=0")), &what)
                .await
                .assert_error(503, "hook_unavailable");
            assert_eq!(
                sess.refused_code("subscribe", json!({"channel": ch})).await,
                "hook_unavailable",
                "{what}"
            );
        } else {
            let mut ws = s.ws(&path).await;
            sess.ok("subscribe", json!({"channel": ch})).await;
            let id = s.publish_text(&ch, "allowed").await;
            assert_eq!(ws.next_json().await["id"], id.as_str(), "{what}");
            sess.push_until("message", |v| v["id"] == id.as_str()).await;
        }
        assert_eq!(
            sess.refused_code("rpc", json!({"method": "m", "params": {}}))
                .await,
            "hook_unavailable",
            "rpc, {what}"
        );
    }
}

#[tokio::test]
async fn rpc_is_forwarded_to_the_backend_and_answered() {
    let backend = HookBackend::start(|body| match body["method"].as_str() {
        Some("echo") => {
            HookAnswer::Json(json!({"result": {"params": body["params"], "user": body["user"]}}))
        }
        _ => HookAnswer::Json(json!({"error": {"code": "no_method", "message": "unknown method"}})),
    })
    .await;
    let s = Server::builder()
        .extra_config(&format!(
            "{}{}",
            auth("5s"),
            hooks(&backend.url, &["rpc"], "deny", "2s")
        ))
        .start()
        .await;
    let (mut ws_sess, _) = Session::connected(&s, Via::Ws, Some(&token("u9", &[]))).await;
    let r = ws_sess
        .ok("rpc", json!({"method": "echo", "params": {"a": [1, 2]}}))
        .await;
    assert_eq!(
        r["result"],
        json!({"params": {"a": [1, 2]}, "user": "u9"}),
        "{r}"
    );
    let call = backend
        .wait_call("rpc call", |c| c.body["event"] == "rpc")
        .await;
    assert_eq!(call.event_header.as_deref(), Some("rpc"));
    assert_eq!(call.body["method"], "echo");
    assert!(call.body["client"].is_string(), "{call:?}");
    assert_eq!(
        ws_sess.refused_code("rpc", json!({"method": "nope"})).await,
        "rpc_error"
    );

    let (mut sse_sess, _) = Session::connected(&s, Via::Sse, None).await;
    let r = sse_sess
        .ok("rpc", json!({"method": "echo", "params": 5}))
        .await;
    assert_eq!(r["result"], json!({"params": 5, "user": null}), "{r}");

    let plain = Server::start().await;
    let (mut sess, _) = Session::connected(&plain, Via::Ws, None).await;
    assert_eq!(
        sess.refused_code("rpc", json!({"method": "echo"})).await,
        "not_available"
    );
}

#[tokio::test]
async fn disconnect_notifications_reach_the_backend() {
    let backend = HookBackend::start(|_| HookAnswer::Empty).await;
    let s = Server::builder()
        .extra_config(&format!(
            "{}{}",
            auth("5s"),
            hooks(&backend.url, &["disconnect"], "deny", "2s")
        ))
        .start()
        .await;
    let ch = channel("d");
    let ws = s
        .ws_with(
            &format!("/sub/{ch}"),
            &[("Authorization", &bearer(&token("u11", &[])))],
        )
        .await;
    let (sess, _) = Session::connected(&s, Via::Ws, Some(&token("u12", &[]))).await;
    let sse_sess = Session::open(
        &s,
        Via::Sse,
        "",
        &[("Authorization", &bearer(&token("u13", &[])))],
    )
    .await;
    let sse = s
        .sse(
            &format!("/sub/{ch}"),
            &[("Authorization", &bearer(&token("u14", &[])))],
        )
        .await;
    assert!(
        backend.calls_for("disconnect").is_empty(),
        "{:?}",
        backend.calls()
    );

    ws.close().await;
    drop(sess);
    drop(sse_sess);
    drop(sse);
    for user in ["u11", "u12", "u13", "u14"] {
        let call = backend
            .wait_call(&format!("disconnect of {user}"), |c| {
                c.body["event"] == "disconnect" && c.body["user"] == user
            })
            .await;
        assert_eq!(call.event_header.as_deref(), Some("disconnect"));
        assert!(call.body["client"].is_string(), "{call:?}");
    }
}
