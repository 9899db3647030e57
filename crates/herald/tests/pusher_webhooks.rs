//! Webhooks in Pusher's format (docs/pusher.md, "Webhooks") against the
//! real binary: the memory engine, or `HERALD_TEST_ENGINE`'s Redis with a
//! key prefix of the test's own. A receiver in the test
//! (`support_webhook`) checks `X-Pusher-Key` and `X-Pusher-Signature` of
//! every request; Pusher clients speak protocol 7 (`support_pusher`).
//!
//! channel_occupied/vacated and member_added/removed once per change (two
//! sockets of one user are one member), a flap within `presence_grace`
//! silent, client_event and cache_miss, `webhook_events` choosing, other
//! apps' and Herald's channels kept out, a failed request retried and
//! counted in `/metrics`. The cluster cases are in
//! `pusher_webhooks_cluster.rs`.
//!
//! Absence ("nothing arrives") can only be seen by waiting: those waits are
//! bounded, a little longer than the grace plus a sweep, and say so.

mod common;
mod support_pusher;
mod support_webhook;

use std::time::Duration;

use common::*;
use serde_json::json;
use support_pusher::*;
use support_webhook::*;

const KEY: &str = "key1";
const APP_SECRET: &str = "secret-of-app1";
/// A little more than the grace (1 s) plus a sweep (1 s).
const QUIET: Duration = Duration::from_millis(2_800);

/// app1 with its webhook to `url` (and `events`), app2 without one, a
/// Redis prefix of the test's own.
fn config(url: &str, events: Option<&[&str]>) -> String {
    let events = events
        .map(|e| format!("webhook_events = {}\n", json!(e)))
        .unwrap_or_default();
    format!(
        "\n[[pusher.apps]]\nid = \"app1\"\nkey = \"{KEY}\"\nsecret = \"{APP_SECRET}\"\nclient_events = true\nwebhook_url = \"{url}\"\n{events}\
         \n[[pusher.apps]]\nid = \"app2\"\nkey = \"key2\"\nsecret = \"secret-of-app2\"\n\
         \n[redis]\nprefix = \"{}\"\n",
        channel("pwh")
    )
}

async fn server(rx: &Receiver, events: Option<&[&str]>) -> Server {
    Server::builder()
        .set("presence_grace", "\"1s\"")
        .extra_config(&config(&rx.url, events))
        .start()
        .await
}

fn metric(text: &str, line: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn occupied_members_and_vacated_once_each_signed_in_pushers_format() {
    let rx = Receiver::start_pusher(KEY, APP_SECRET, |_| 200).await;
    let s = server(&rx, None).await;
    let room = "presence-room";
    // Two sockets of u1 and one of u2: u1 is one member.
    let mut one = Pusher::connect(&s, KEY).await;
    one.subscribe(KEY, APP_SECRET, room, Some("u1")).await;
    let mut two = Pusher::connect(&s, KEY).await;
    two.subscribe(KEY, APP_SECRET, room, Some("u1")).await;
    let mut three = Pusher::connect(&s, KEY).await;
    three.subscribe(KEY, APP_SECRET, room, Some("u2")).await;
    let events = rx
        .wait_pusher("occupied and two members", |e| of(e, room).len() >= 3)
        .await;
    assert_eq!(
        of(&events, room),
        [
            pair("channel_occupied", ""),
            pair("member_added", "u1"),
            pair("member_added", "u2")
        ]
    );
    let body = &rx.deliveries()[0].body;
    let sent = body["time_ms"].as_u64().expect("time_ms");
    assert!(
        sent + 60_000 > now_ms() && sent <= now_ms() + 1_000,
        "{body}"
    );
    // One of u1's two sockets goes: u1 is still a member.
    one.close().await;
    three.close().await;
    let events = rx
        .wait_pusher("u2 removed", |e| of(e, room).len() >= 4)
        .await;
    assert_eq!(of(&events, room)[3], pair("member_removed", "u2"));
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        of(&rx.pusher_events(), room).len(),
        4,
        "u1 stays (waited {QUIET:?})"
    );
    two.close().await;
    let events = rx
        .wait_pusher("u1 removed and vacated", |e| of(e, room).len() >= 6)
        .await;
    assert_eq!(
        of(&events, room)[4..],
        [pair("member_removed", "u1"), pair("channel_vacated", "")]
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        of(&rx.pusher_events(), room).len(),
        6,
        "once (waited {QUIET:?})"
    );
    // app2 has no webhook, Herald channels are not any app's: nothing
    // of theirs ever came.
    assert!(rx.pusher_events().iter().all(|e| e["channel"] == room));
}

#[tokio::test]
async fn a_flap_within_the_grace_sends_nothing() {
    let rx = Receiver::start_pusher(KEY, APP_SECRET, |_| 200).await;
    let s = server(&rx, None).await;
    let room = "presence-flap";
    let mut first = Pusher::connect(&s, KEY).await;
    first.subscribe(KEY, APP_SECRET, room, Some("u1")).await;
    let mut public = Pusher::connect(&s, KEY).await;
    public.subscribe(KEY, APP_SECRET, "news", None).await;
    rx.wait_pusher("occupied, added", |e| {
        of(e, room).len() == 2 && of(e, "news").len() == 1
    })
    .await;
    // A page reload: the socket goes and another comes within the grace.
    first.close().await;
    public.close().await;
    let mut again = Pusher::connect(&s, KEY).await;
    again.subscribe(KEY, APP_SECRET, room, Some("u1")).await;
    let mut public = Pusher::connect(&s, KEY).await;
    public.subscribe(KEY, APP_SECRET, "news", None).await;
    tokio::time::sleep(QUIET).await;
    let events = rx.pusher_events();
    assert_eq!(
        of(&events, room),
        [pair("channel_occupied", ""), pair("member_added", "u1")],
        "silent flap (waited {QUIET:?})"
    );
    assert_eq!(of(&events, "news"), [pair("channel_occupied", "")]);
    drop((again, public));
}

#[tokio::test]
async fn client_events_and_cache_misses() {
    let rx = Receiver::start_pusher(KEY, APP_SECRET, |_| 200).await;
    let s = server(&rx, Some(&["client_event", "cache_miss"])).await;
    let mut a = Pusher::connect(&s, KEY).await;
    let mut b = Pusher::connect(&s, KEY).await;
    a.subscribe(KEY, APP_SECRET, "private-chat", None).await;
    b.subscribe(KEY, APP_SECRET, "private-chat", None).await;
    a.subscribe(KEY, APP_SECRET, "presence-chat", Some("ann"))
        .await;
    a.send(json!({"event": "client-typing", "channel": "private-chat", "data": {"x": 1}}))
        .await;
    a.send(json!({"event": "client-hi", "channel": "presence-chat", "data": "hello"}))
        .await;
    b.subscribe(KEY, APP_SECRET, "cache-news", None).await;
    let events = rx
        .wait_pusher("two client events and a cache miss", |e| e.len() >= 3)
        .await;
    let typing = events
        .iter()
        .find(|e| e["channel"] == "private-chat")
        .expect("client_event");
    assert_eq!(
        *typing,
        json!({"name": "client_event", "channel": "private-chat", "event": "client-typing",
            "data": "{\"x\":1}", "socket_id": a.socket})
    );
    let hi = events
        .iter()
        .find(|e| e["channel"] == "presence-chat")
        .expect("client_event");
    assert_eq!(
        *hi,
        json!({"name": "client_event", "channel": "presence-chat", "event": "client-hi",
            "data": "hello", "socket_id": a.socket, "user_id": "ann"})
    );
    let miss = events
        .iter()
        .find(|e| e["name"] == "cache_miss")
        .expect("cache_miss");
    assert_eq!(
        *miss,
        json!({"name": "cache_miss", "channel": "cache-news"})
    );
    tokio::time::sleep(QUIET).await;
    // Only the events asked for: no occupancy, no members.
    assert_eq!(rx.pusher_events().len(), 3, "{:?}", rx.pusher_events());
}

#[tokio::test]
async fn a_failed_request_is_retried_and_counted() {
    // The first answer is a 500: the same events come again.
    let rx = Receiver::start_pusher(KEY, APP_SECRET, |n| if n == 0 { 500 } else { 200 }).await;
    let s = server(&rx, Some(&["channel_occupied"])).await;
    let mut a = Pusher::connect(&s, KEY).await;
    a.subscribe(KEY, APP_SECRET, "news", None).await;
    rx.wait_pusher("occupied after a retry", |e| !e.is_empty())
        .await;
    let d = rx.deliveries();
    assert_eq!(d[0].status, 500);
    assert_eq!(
        events_of(&d[0].body),
        events_of(&d[1].body),
        "the same events again"
    );
    assert!(
        d[1].at - d[0].at >= Duration::from_millis(400),
        "after the backoff"
    );
    eventually(WAIT, "the metrics", || async {
        let text = s.get("/metrics").send().await.text();
        let ok = metric(
            &text,
            "herald_pusher_webhook_requests_total{app=\"app1\",outcome=\"ok\"}",
        );
        let err = metric(
            &text,
            "herald_pusher_webhook_requests_total{app=\"app1\",outcome=\"error\"}",
        );
        let given_up = metric(&text, "herald_pusher_webhook_given_up_total{app=\"app1\"}");
        if ok == Some(1) && err == Some(1) && given_up == Some(0) {
            Ok(())
        } else {
            Err(format!("ok {ok:?}, error {err:?}, given up {given_up:?}"))
        }
    })
    .await;
    a.close().await;
}

#[tokio::test]
async fn bad_webhook_settings_are_refused_before_binding() {
    for (bad, says) in [
        ("webhook_url = \"https://x/\"", "only http://"),
        (
            "webhook_url = \"http://x/\"\nwebhook_events = [\"nope\"]",
            "unknown event \"nope\"",
        ),
        (
            "webhook_events = [\"channel_occupied\", \"member_gone\"]",
            "member_gone",
        ),
    ] {
        let extra = format!(
            "\n[[pusher.apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"secret-secret\"\n{bad}\n"
        );
        let mut p = Server::builder().extra_config(&extra).spawn();
        let status = p.wait_exit(Duration::from_secs(10)).await;
        assert!(!status.success(), "{bad}");
        let err = p.stderr_text();
        assert!(
            err.contains(says) && err.contains("pusher.apps"),
            "{bad}: {err}"
        );
    }
}
