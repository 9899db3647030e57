//! Webhooks (docs/webhooks.md) against the real binary: a receiver in the
//! test (a plain HTTP/1.1 server on a tokio listener) checks the signature
//! of every request it gets, and the tests check what arrives.
//!
//! - one node (the memory engine, or `HERALD_TEST_ENGINE`'s Redis with a
//!   prefix of the test's own): online/offline once, a quick reconnect
//!   within the grace sends nothing, channels occupied/vacated once (not
//!   personal ones), a failed request retried with the same ids in order,
//!   a batch given up counted in `/metrics` and delivery going on;
//! - three nodes on one Redis ([`support_redis::Cluster`]): 100 users
//!   flapping (disconnect and reconnect elsewhere within the grace) send
//!   nothing; 100 users leaving send exactly 100 `user.offline`, whichever
//!   node each was on, one of them SIGKILLed.
//!
//! Absence ("nothing arrives") can only be seen by waiting: those waits are
//! bounded, a little longer than the grace plus a sweep, and say so.

mod common;
mod support_redis;
mod support_security;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use support_redis::Cluster;
use support_security::{auth, bearer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the servers sign with.
const SECRET: &str = "webhook-test-secret";
/// Bound on events arriving.
const WAIT: Duration = Duration::from_secs(15);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// The receiver
// ---------------------------------------------------------------------------

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    at: Instant,
    /// What the receiver answered.
    status: u16,
    body: Value,
}

impl Delivery {
    fn ids(&self) -> Vec<String> {
        events_of(&self.body)
            .iter()
            .map(|e| e["id"].as_str().expect("an event id").to_owned())
            .collect()
    }
}

fn events_of(body: &Value) -> Vec<Value> {
    body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("a body without events: {body}"))
        .clone()
}

#[derive(Default)]
struct Log {
    deliveries: Vec<Delivery>,
    /// Requests refused for their signature, content type or method.
    bad: Vec<String>,
}

/// An HTTP receiver on a loopback port that checks each request's
/// `X-Herald-Signature` against the HMAC-SHA256 of its body and answers
/// with the status `answer` gives for the request's number (0 first).
struct Receiver {
    url: String,
    log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Answer = Arc<dyn Fn(usize) -> u16 + Send + Sync>;

impl Receiver {
    async fn start(answer: impl Fn(usize) -> u16 + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let url = format!(
            "http://{}/herald/events",
            listener.local_addr().expect("addr")
        );
        let log = Arc::new(Mutex::new(Log::default()));
        let answer: Answer = Arc::new(answer);
        let shared = Arc::clone(&log);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, Arc::clone(&answer), Arc::clone(&shared)));
            }
        });
        Self { url, log, task }
    }

    /// Every request so far; fails the test if any was badly signed.
    fn deliveries(&self) -> Vec<Delivery> {
        let log = lock(&self.log);
        assert!(log.bad.is_empty(), "badly signed requests: {:?}", log.bad);
        log.deliveries.clone()
    }

    /// The events of the requests answered 2xx, each id once (a receiver
    /// de-duplicates), in the order first delivered; also checks that ids
    /// first seen grow.
    fn events(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut last: Option<(u64, u64)> = None;
        for d in self
            .deliveries()
            .iter()
            .filter(|d| (200..300).contains(&d.status))
        {
            for e in events_of(&d.body) {
                let id = e["id"].as_str().expect("id").to_owned();
                if seen.insert(id.clone()) {
                    let parsed = parse_id(&id);
                    assert!(
                        last.is_none_or(|l| l < parsed),
                        "event ids first delivered grow: {id} after {last:?}"
                    );
                    last = Some(parsed);
                    out.push(e);
                }
            }
        }
        out
    }

    /// Waits until `done` holds of the events (see [`Receiver::events`]).
    async fn wait(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        eventually(WAIT, what, || {
            let events = self.events();
            let ok = done(&events);
            async move {
                if ok {
                    Ok(events)
                } else {
                    Err(format!("{} events: {events:?}", events.len()))
                }
            }
        })
        .await
    }
}

fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("an id like ms-seq: {id}"));
    (ms.parse().expect("id ms"), seq.parse().expect("id seq"))
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Serves one keep-alive connection: requests with a `Content-Length` body.
async fn serve(mut tcp: TcpStream, answer: Answer, log: Arc<Mutex<Log>>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < length {
            let mut chunk = [0u8; 8192];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let problem = if !head.starts_with("POST /herald/events ") {
            Some(format!("request line {:?}", head.lines().next()))
        } else if header("content-type").as_deref() != Some("application/json") {
            Some(format!("content-type {:?}", header("content-type")))
        } else if header("x-herald-signature") != Some(sign(&body)) {
            Some(format!(
                "signature {:?} for {:?}",
                header("x-herald-signature"),
                String::from_utf8_lossy(&body)
            ))
        } else {
            None
        };
        let status = {
            let mut log = lock(&log);
            match problem {
                Some(p) => {
                    log.bad.push(p);
                    401
                }
                None => {
                    let body: Value = serde_json::from_slice(&body)
                        .unwrap_or_else(|e| panic!("a body that is not JSON ({e}): {body:?}"));
                    assert!(body["time_ms"].as_u64().is_some(), "time_ms in {body}");
                    let status = answer(log.deliveries.len());
                    log.deliveries.push(Delivery {
                        at: Instant::now(),
                        status,
                        body,
                    });
                    status
                }
            }
        };
        let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
        if tcp.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The event names about one user or channel, in order:
/// `names(&events, "user", "ann")`.
fn names(events: &[Value], field: &str, name: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e[field] == name)
        .map(|e| e["event"].as_str().unwrap_or("").to_owned())
        .collect()
}

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
// Three nodes on one Redis
// ---------------------------------------------------------------------------

/// The users' webhooks, short TTLs: a dead node is found within 4 s.
fn cluster_extra(url: &str) -> String {
    format!(
        "\n[webhooks]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\ntimeout = \"1s\"\n\n[redis]\nnode_ttl = \"4s\"\nrefresh_interval = \"1s\"\n"
    )
}

/// `n` fresh user ids and a token for each (from node A).
async fn cluster_users(cluster: &Cluster, prefix: &str, n: usize) -> Vec<(String, String)> {
    let mut users = Vec::with_capacity(n);
    for i in 0..n {
        let user = channel(&format!("{prefix}{i}"));
        let token = support_redis::token(cluster.a(), json!({"user": user})).await;
        users.push((user, token));
    }
    users
}

async fn cluster_ws(node: &Server, user: &str, token: &str) -> Ws {
    node.ws_with(
        &format!("/sub/user:{user}"),
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// Per user, the ids of its events of `kind`.
fn by_user(events: &[Value], kind: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for e in events.iter().filter(|e| e["event"] == kind) {
        out.entry(e["user"].as_str().unwrap_or("").to_owned())
            .or_default()
            .push(e["id"].as_str().unwrap_or("").to_owned());
    }
    out
}

#[tokio::test]
async fn a_hundred_users_flapping_across_three_nodes_send_nothing() {
    let rx = Receiver::start(|_| 200).await;
    let cluster =
        Cluster::start_with_env(&cluster_extra(&rx.url), &[("HERALD_PRESENCE_GRACE", "3s")]).await;
    let users = cluster_users(&cluster, "f", 100).await;
    let mut held: Vec<Option<Ws>> = Vec::new();
    for (i, (user, token)) in users.iter().enumerate() {
        held.push(Some(cluster_ws(&cluster.nodes[i % 3], user, token).await));
    }
    rx.wait("100 users online", |e| {
        by_user(e, "user.online").len() == 100
    })
    .await;

    // Each disconnects and reconnects, to another node, within the grace.
    let flaps = users.iter().enumerate().map(|(i, (user, token))| {
        let old = held[i].take().expect("held");
        let node = &cluster.nodes[(i + 1) % 3];
        async move {
            old.close().await;
            cluster_ws(node, user, token).await
        }
    });
    let started = Instant::now();
    let back: Vec<Ws> = futures_util::future::join_all(flaps).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the flaps took {:?}, longer than the grace",
        started.elapsed()
    );
    // Absence: the grace (3 s) and two sweeps after the last flap.
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    let events = rx.events();
    assert_eq!(events.len(), 100, "only the 100 onlines: {events:?}");
    assert!(by_user(&events, "user.online")
        .values()
        .all(|ids| ids.len() == 1));
    drop(back);
}

#[tokio::test]
async fn a_hundred_users_leaving_three_nodes_one_killed_send_exactly_a_hundred_offlines() {
    let rx = Receiver::start(|_| 200).await;
    let cluster = Cluster::start_with_env(
        &cluster_extra(&rx.url),
        &[("HERALD_PRESENCE_GRACE", "1500ms")],
    )
    .await;
    let users = cluster_users(&cluster, "l", 100).await;
    let mut held: BTreeMap<usize, Vec<Ws>> = BTreeMap::new();
    for (i, (user, token)) in users.iter().enumerate() {
        let ws = cluster_ws(&cluster.nodes[i % 3], user, token).await;
        held.entry(i % 3).or_default().push(ws);
    }
    rx.wait("100 users online", |e| {
        by_user(e, "user.online").len() == 100
    })
    .await;

    // A's and B's users leave; C dies with its users connected.
    let on_c = held.remove(&2).expect("users on C");
    cluster.c().process.signal("KILL");
    let leaving = held.into_values().flatten().map(|ws| ws.close());
    futures_util::future::join_all(leaving).await;
    drop(on_c);
    rx.wait("100 users offline", |e| {
        let offline = by_user(e, "user.offline");
        assert!(
            offline.values().all(|ids| ids.len() == 1),
            "a user offline twice: {offline:?}"
        );
        offline.len() == 100
    })
    .await;
    // Absence: more sweeps and cleanups later, still exactly once each.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let events = rx.events();
    let offline = by_user(&events, "user.offline");
    assert_eq!(offline.len(), 100);
    assert!(offline.values().all(|ids| ids.len() == 1), "{offline:?}");
    let ours: std::collections::HashSet<&str> = users.iter().map(|(u, _)| u.as_str()).collect();
    assert!(offline.keys().all(|u| ours.contains(u.as_str())));
    assert_eq!(events.len(), 200, "100 online, 100 offline");
}
