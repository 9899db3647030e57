//! Webhooks (docs/webhooks.md) on one node, against the real binary: the
//! memory engine, or `HERALD_TEST_ENGINE`'s Redis with a key prefix of the
//! test's own (its own outbox and lease). A receiver in the test
//! (`support_webhook`) checks the signature of every request.
//!
//! Online/offline once, a quick reconnect within the grace sends nothing,
//! channels occupied/vacated once (not personal ones), a channel
//! unsubscribed and subscribed again within the grace sends nothing, a failed request
//! retried whole with the same ids in order, a batch given up counted in
//! `/metrics` and delivery going on. The three-node cases are in
//! `webhooks_cluster.rs` (they start their own Redis).
//!
//! Absence ("nothing arrives") can only be seen by waiting: those waits are
//! bounded, a little longer than the grace plus a sweep, and say so.

mod common;
mod support_security;
mod support_webhook;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use support_security::{auth, bearer};
use support_webhook::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------
// ---------------------------------------------------------------------------

/// `[webhooks]` to `url` (with a Redis prefix of the test's own, so that
/// tests sharing `HERALD_TEST_ENGINE`'s Redis have their own outbox).
fn webhooks(url: &str, max_attempts: u32, events: Option<&[&str]>) -> String {
    let events = events
        .map(|e| format!("events = {}\n", json!(e)))
        .unwrap_or_default();
    format!(
        "\n[webhooks]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\ntimeout = \"1s\"\nmax_attempts = {max_attempts}\n{events}\n[redis]\nprefix = \"{}\"\n",
        channel("wh")
    )
}

async fn server(rx: &Receiver, grace: &str, max_attempts: u32, events: Option<&[&str]>) -> Server {
    Server::builder()
        .set("presence_grace", &format!("\"{grace}\""))
        .extra_config(&format!(
            "{}{}",
            auth("5s"),
            webhooks(&rx.url, max_attempts, events)
        ))
        .start()
        .await
}

/// A WebSocket of `user` on its personal channel (a token signed with the
/// harness' secret).
async fn user_ws(s: &Server, user: &str) -> Ws {
    let t = bearer(&support_security::token(user, &[]));
    s.ws_with(&format!("/sub/user:{user}"), &[("Authorization", &t)])
        .await
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

async fn metric_becomes(s: &Server, name: &str, want: u64) {
    eventually(WAIT, &format!("{name} = {want}"), || async {
        let text = s.get("/metrics").send().await.text();
        match metric(&text, name) {
            Some(n) if n == want => Ok(()),
            other => Err(format!("{name} is {other:?}")),
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// One node
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_user_goes_online_and_offline_once_in_signed_requests() {
    let rx = Receiver::start(|_| 200).await;
    let s = server(&rx, "1s", 8, None).await;
    let ann = channel("ann");
    let one = user_ws(&s, &ann).await;
    let two = user_ws(&s, &ann).await;
    let events = rx
        .wait("ann online", |e| names(e, "user", &ann) == ["user.online"])
        .await;
    let online = events
        .iter()
        .find(|e| e["user"] == ann.as_str())
        .expect("online");
    assert!(online["time_ms"].as_u64().is_some(), "{online}");
    one.close().await;
    let left = now_ms();
    two.close().await;
    let events = rx
        .wait("ann offline", |e| {
            names(e, "user", &ann) == ["user.online", "user.offline"]
        })
        .await;
    let offline = events
        .iter()
        .find(|e| e["user"] == ann.as_str() && e["event"] == "user.offline")
        .expect("offline");
    let at = offline["time_ms"].as_u64().expect("time_ms");
    // Dated when the last connection closed, not when the grace ended.
    assert!(
        at + 200 >= left && at < left + 1_000,
        "offline at {at}, the last connection closed at {left}"
    );
    assert!(!rx.deliveries().is_empty());
}

#[tokio::test]
async fn a_quick_reconnect_within_the_grace_sends_nothing() {
    let rx = Receiver::start(|_| 200).await;
    let s = server(&rx, "2s", 8, None).await;
    let bob = channel("bob");
    let first = user_ws(&s, &bob).await;
    rx.wait("bob online", |e| names(e, "user", &bob) == ["user.online"])
        .await;
    first.close().await;
    let back = user_ws(&s, &bob).await;
    // Absence: past the grace of the flap (2 s) and a sweep, nothing.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(
        names(&rx.events(), "user", &bob),
        ["user.online"],
        "a reconnect within the grace sends no offline/online pair"
    );
    let left = now_ms();
    back.close().await;
    let events = rx
        .wait("bob offline", |e| {
            names(e, "user", &bob) == ["user.online", "user.offline"]
        })
        .await;
    let at = events
        .iter()
        .find(|e| e["user"] == bob.as_str() && e["event"] == "user.offline")
        .and_then(|e| e["time_ms"].as_u64())
        .expect("offline time");
    assert!(at + 200 >= left, "the offline is the later departure's");
}

#[tokio::test]
async fn a_channel_is_occupied_and_vacated_once_but_a_personal_channel_is_not() {
    let rx = Receiver::start(|_| 200).await;
    let s = server(&rx, "500ms", 8, None).await;
    let room = channel("room");
    let cy = channel("cy");
    let a = s.ws(&format!("/sub/{room}")).await;
    let b = s.ws(&format!("/sub/{room}")).await;
    let me = user_ws(&s, &cy).await;
    rx.wait("room occupied, cy online", |e| {
        names(e, "channel", &room) == ["channel.occupied"]
            && names(e, "user", &cy) == ["user.online"]
    })
    .await;
    a.close().await;
    b.close().await;
    me.close().await;
    let events = rx
        .wait("room vacated, cy offline", |e| {
            names(e, "channel", &room) == ["channel.occupied", "channel.vacated"]
                && names(e, "user", &cy) == ["user.online", "user.offline"]
        })
        .await;
    assert!(
        events.iter().all(|e| !e["channel"]
            .as_str()
            .is_some_and(|c| c.starts_with("user:"))),
        "personal channels make no channel events: {events:?}"
    );
}

#[tokio::test]
async fn a_channel_re_occupied_within_the_grace_sends_nothing() {
    let rx = Receiver::start(|_| 200).await;
    let s = server(&rx, "2s", 8, None).await;
    let room = channel("reoccupied");
    let dee = channel("dee");
    let token = support_security::token(&dee, &[]);
    let (mut sess, _) =
        support_security::Session::connected(&s, support_security::Via::Ws, Some(&token)).await;
    sess.ok("subscribe", json!({"channel": room})).await;
    rx.wait("room occupied", |e| {
        names(e, "channel", &room) == ["channel.occupied"]
    })
    .await;
    // The channel's only subscriber leaves it and comes back at once, on
    // the same connection: the channel was empty for well under the grace.
    sess.ok("unsubscribe", json!({"channel": room})).await;
    sess.ok("subscribe", json!({"channel": room})).await;
    // Absence: past the grace of the flap (2 s) and a sweep, nothing.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(
        names(&rx.events(), "channel", &room),
        ["channel.occupied"],
        "a channel re-occupied within the grace sends no vacated/occupied pair"
    );
    // Its real departure still counts, once.
    drop(sess);
    rx.wait("room vacated", |e| {
        names(e, "channel", &room) == ["channel.occupied", "channel.vacated"]
    })
    .await;
}

#[tokio::test]
async fn a_failed_request_is_retried_whole_with_the_same_ids_in_order() {
    let rx = Receiver::start(|n| if n == 0 { 500 } else { 200 }).await;
    let s = server(&rx, "1s", 8, Some(&["user.online"])).await;
    let users: Vec<String> = (0..3).map(|i| channel(&format!("r{i}"))).collect();
    let mut held = Vec::new();
    for u in &users {
        held.push(user_ws(&s, u).await);
    }
    rx.wait("three users online", |e| {
        users.iter().all(|u| names(e, "user", u) == ["user.online"])
    })
    .await;
    let d = rx.deliveries();
    assert_eq!(d[0].status, 500);
    assert_eq!(d[1].status, 200);
    assert_eq!(d[1].ids(), d[0].ids(), "the whole batch again, same ids");
    assert!(
        d[1].at - d[0].at >= Duration::from_millis(400),
        "after the backoff: {:?}",
        d[1].at - d[0].at
    );
    // Only the configured event is sent.
    assert!(rx.events().iter().all(|e| e["event"] == "user.online"));
    drop(held);
}

#[tokio::test]
async fn a_batch_given_up_is_counted_and_delivery_goes_on() {
    let failing = Arc::new(AtomicBool::new(true));
    let fails = Arc::clone(&failing);
    let rx = Receiver::start(move |_| {
        if fails.load(Ordering::SeqCst) {
            503
        } else {
            200
        }
    })
    .await;
    let s = server(&rx, "1s", 2, Some(&["user.online"])).await;
    let lost = channel("lost");
    let _l = user_ws(&s, &lost).await;
    metric_becomes(&s, "herald_webhook_given_up_total", 1).await;
    metric_becomes(&s, "herald_webhook_requests_total{outcome=\"error\"}", 2).await;
    failing.store(false, Ordering::SeqCst);
    let found = channel("found");
    let _f = user_ws(&s, &found).await;
    let events = rx
        .wait("found online", |e| {
            names(e, "user", &found) == ["user.online"]
        })
        .await;
    assert!(
        names(&events, "user", &lost).is_empty(),
        "given up: {events:?}"
    );
    metric_becomes(&s, "herald_webhook_requests_total{outcome=\"ok\"}", 1).await;
    let text = s.get("/metrics").send().await.text();
    assert!(
        metric(&text, "herald_webhook_events_total{event=\"user.online\"}").is_some_and(|n| n >= 2),
        "{text}"
    );
    assert_eq!(metric(&text, "herald_webhook_outbox"), Some(0), "{text}");
    assert_eq!(rx.deliveries().len(), 3);
}

// ---------------------------------------------------------------------------
// Mailbox drops
// ---------------------------------------------------------------------------

async fn to_mailbox(s: &Server, user: &str, n: u64) -> String {
    let resp = s
        .post(&format!("/api/users/{user}/publish"))
        .header("Content-Type", "application/json")
        .body(json!({"data": {"n": n}, "ack": true}).to_string())
        .send()
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    resp.json()["id"].as_str().expect("id").to_string()
}

/// A pending message dropped unacknowledged (past `mailbox_size`, or older
/// than `mailbox_ttl`) is told to the backend with its ids and why.
#[tokio::test]
async fn a_mailbox_drop_is_told_to_the_backend_with_the_ids() {
    let rx = Receiver::start(|_| 200).await;
    let s = Server::builder()
        .extra_config(&format!(
            "\n[[namespace]]\nprefix = \"user:small-\"\nmailbox_size = 2\n\
             \n[[namespace]]\nprefix = \"user:brief-\"\nmailbox_ttl = \"1s\"\n{}{}",
            auth("5s"),
            webhooks(&rx.url, 8, Some(&["user.mailbox_dropped"]))
        ))
        .start()
        .await;
    let small = format!("small-{}", channel("u"));
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(to_mailbox(&s, &small, n).await);
    }
    let brief = format!("brief-{}", channel("u"));
    let stale = to_mailbox(&s, &brief, 1).await;
    let events = rx
        .wait("both drops", |e| {
            e.iter()
                .filter(|e| e["event"] == "user.mailbox_dropped")
                .count()
                == 2
        })
        .await;
    let of = |user: &str| {
        events
            .iter()
            .find(|e| e["user"] == user)
            .unwrap_or_else(|| panic!("no drop event of {user}: {events:?}"))
            .clone()
    };
    let overflow = of(&small);
    assert_eq!(overflow["reason"], "overflow", "{overflow}");
    assert_eq!(overflow["ids"], json!([ids[0]]), "{overflow}");
    let expired = of(&brief);
    assert_eq!(expired["reason"], "expired", "{expired}");
    assert_eq!(expired["ids"], json!([stale]), "{expired}");
    metric_becomes(
        &s,
        "herald_webhook_events_total{event=\"user.mailbox_dropped\"}",
        2,
    )
    .await;
}
