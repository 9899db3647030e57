//! Several real `herald` processes sharing one real Redis behave as one
//! server (docs/deployment.md, "Many nodes"): fan-out to every transport on
//! every node, resume on another node after a node dies, Redis outages and
//! data loss, and the cluster-wide state (presence, user queues, single-use
//! tickets).
//!
//! Each test starts its own `redis-server` and three nodes A, B and C
//! ([`support_redis::Cluster`]); every process is killed when the test ends.

mod common;
mod support_redis;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use support_redis::*;

/// Bound on cluster-wide state settling (presence, subscriber counts).
const WAIT: Duration = Duration::from_secs(5);
/// Bound on a node serving again after Redis came back: its reconnect
/// backoff tops out at 5 s, plus the 2 s command timeout, plus slack.
const RECOVERY: Duration = Duration::from_secs(15);
/// A publish must be refused this fast while Redis is down.
const FAST_REFUSAL: Duration = Duration::from_secs(3);
/// Upper bound on publishes of the continuous publishers (a runaway guard).
const MAX_PUBLISHES: usize = 3000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Fan-out
// ---------------------------------------------------------------------------

/// Every kind of subscriber one node can hold on a channel.
struct Streams {
    ws: Sub,
    sse: Sub,
    ndjson: Sub,
    iframe: Iframe,
    session: Ws,
}

async fn open_streams(node: &Server, ch: &str, seed: &str) -> Streams {
    let path = format!("/sub/{ch}");
    let ws = Sub::open(node, Kind::Ws, &path, &[]).await;
    let sse = Sub::open(node, Kind::Sse, &path, &[]).await;
    let ndjson = Sub::open(node, Kind::Ndjson, &path, &[]).await;
    let iframe = node
        .iframe(&format!("/sub/{ch}?transport=iframe&callback=cb"), "cb")
        .await;
    let mut session = node.ws("/connection/websocket").await;
    session
        .send_text(&json!({"id": 1, "subscribe": {"channel": ch}}).to_string())
        .await;
    let reply = session.next_json().await;
    assert_eq!(reply["id"], 1, "session subscribe reply {reply}");
    assert_eq!(
        reply["subscribe"]["channel"], ch,
        "session subscribe reply {reply}"
    );
    assert_eq!(
        reply["subscribe"]["position"], seed,
        "session subscribe reply {reply}"
    );
    Streams {
        ws,
        sse,
        ndjson,
        iframe,
        session,
    }
}

impl Streams {
    /// Reads `n` messages from every stream and checks each saw `expected`.
    async fn expect(&mut self, node: &str, ch: &str, expected: &[(String, String)]) {
        let n = expected.len();
        assert_eq!(
            self.ws.messages(ch, n).await,
            expected,
            "WebSocket on {node}"
        );
        assert_eq!(self.sse.messages(ch, n).await, expected, "SSE on {node}");
        assert_eq!(
            self.ndjson.messages(ch, n).await,
            expected,
            "NDJSON on {node}"
        );
        let mut iframe = Vec::new();
        let mut session = Vec::new();
        for _ in 0..n {
            match json_got(&self.iframe.next_call().await, ch) {
                Got::Msg { id, text } => iframe.push((id, text)),
                other => panic!("forever-iframe on {node}: {other:?}"),
            }
            match json_got(&self.session.next_json().await, ch) {
                Got::Msg { id, text } => session.push((id, text)),
                other => panic!("session WebSocket on {node}: {other:?}"),
            }
        }
        assert_eq!(iframe, expected, "forever-iframe on {node}");
        assert_eq!(session, expected, "session WebSocket on {node}");
    }
}

async fn long_poll(node: &Server, ch: &str, since: &str) -> Vec<(String, String)> {
    let answer = node
        .poll(&format!("/sub/{ch}?since={since}&timeout=20"))
        .await;
    assert_eq!(answer["gap"], false, "long-poll answer {answer}");
    poll_messages(&answer, ch)
}

async fn jsonp(node: &Server, ch: &str, since: &str) -> Vec<(String, String)> {
    let resp = node
        .get(&format!("/sub/{ch}?callback=cb&since={since}&timeout=20"))
        .send()
        .await;
    assert_eq!(resp.status, 200, "JSONP: {}", resp.text());
    let answer = jsonp_arg(&resp.text(), "cb");
    assert_eq!(answer["gap"], false, "JSONP answer {answer}");
    poll_messages(&answer, ch)
}

#[tokio::test]
async fn publish_on_one_node_reaches_every_transport_on_the_others() {
    let cluster = Cluster::start().await;
    let (a, b, c) = (cluster.a(), cluster.b(), cluster.c());
    let ch = channel("mn:fan");
    // A first message gives the polls a resume point, so they cannot miss
    // the live one whichever comes first.
    let seed = a.publish_text(&ch, "seed").await;

    let mut on_b = open_streams(b, &ch, &seed).await;
    let mut on_c = open_streams(c, &ch, &seed).await;

    // Two polls per node join the five streams; publish once all seven wait
    // on both nodes, so the message reaches them live through Redis.
    let publish = async {
        b.wait_subscribers(&ch, 7, WAIT).await;
        c.wait_subscribers(&ch, 7, WAIT).await;
        a.publish_text(&ch, "from-A").await
    };
    let (id_a, poll_b, jsonp_b, poll_c, jsonp_c) = tokio::join!(
        publish,
        long_poll(b, &ch, &seed),
        jsonp(b, &ch, &seed),
        long_poll(c, &ch, &seed),
        jsonp(c, &ch, &seed),
    );
    let first = vec![(id_a.clone(), "from-A".to_string())];
    assert_eq!(poll_b, first, "long-poll on B");
    assert_eq!(jsonp_b, first, "JSONP on B");
    assert_eq!(poll_c, first, "long-poll on C");
    assert_eq!(jsonp_c, first, "JSONP on C");

    // A second publish from B: the publishing node's own subscribers get it
    // too, in order after the first.
    let id_b = b.publish_text(&ch, "from-B").await;
    assert_ne!(id_a, id_b);
    let expected = vec![(id_a, "from-A".to_string()), (id_b, "from-B".to_string())];
    on_b.expect("B", &ch, &expected).await;
    on_c.expect("C", &ch, &expected).await;
}

// ---------------------------------------------------------------------------
// A node dies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn subscriber_of_a_killed_node_resumes_on_another_with_nothing_lost_or_repeated() {
    let cluster = Cluster::start().await;
    let (a, b, c) = (cluster.a(), cluster.b(), cluster.c());
    let ch = channel("mn:kill");
    let path = format!("/sub/{ch}");
    let mut ws = Sub::open(b, Kind::Ws, &path, &[]).await;
    // The SSE subscriber is not read until B is dead: what B wrote waits in
    // its socket, then it resumes with Last-Event-ID as EventSource does.
    let mut sse = Sub::open(b, Kind::Sse, &path, &[]).await;
    b.wait_subscribers(&ch, 2, WAIT).await;

    let published: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);

    // C publishes continuously until the subscriber has switched nodes.
    let publisher = async {
        for i in 1..=MAX_PUBLISHES {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let text = format!("m{i}");
            let id = c.publish_text(&ch, &text).await;
            lock(&published).push((id, text));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the subscriber did not switch nodes within {MAX_PUBLISHES} publishes");
    };

    let subscriber = async {
        let mut got = ws.messages(&ch, 30).await;
        let at_kill = lock(&published).len();
        b.process.signal("KILL");
        // Whatever B had written before it died, then the end.
        loop {
            match ws.next(&ch, IO_TIMEOUT).await {
                Got::Msg { id, text } => got.push((id, text)),
                Got::End => break,
                other => panic!("WebSocket on B after SIGKILL: {other:?}"),
            }
        }
        // Let publishes happen while the subscriber is away.
        eventually(
            WAIT,
            "10 publishes while the subscriber is away",
            || async {
                let n = lock(&published).len();
                if n >= at_kill + 10 {
                    Ok(())
                } else {
                    Err(format!("{n} published, {at_kill} at the kill"))
                }
            },
        )
        .await;
        let last = got.last().map(|(id, _)| id.clone()).expect("a last id");
        let mut resumed = Sub::open(a, Kind::Ws, &format!("{path}?since={last}"), &[]).await;
        got.extend(resumed.messages(&ch, 20).await);
        stop.store(true, Ordering::SeqCst);
        (got, resumed)
    };

    let ((), (mut got, mut resumed)) = tokio::join!(publisher, subscriber);
    let published = published.into_inner().unwrap_or_else(|e| e.into_inner());
    assert!(
        got.len() <= published.len(),
        "WebSocket got {} messages, {} were published",
        got.len(),
        published.len()
    );
    got.extend(resumed.messages(&ch, published.len() - got.len()).await);
    assert_eq!(
        got, published,
        "WebSocket: B killed, resumed on A; every publish of C exactly once, in order"
    );
    resumed
        .expect_silence(&ch, Duration::from_millis(300))
        .await;

    let mut sse_got = Vec::new();
    loop {
        match sse.next(&ch, IO_TIMEOUT).await {
            Got::Msg { id, text } => sse_got.push((id, text)),
            Got::End => break,
            other => panic!("SSE on B after SIGKILL: {other:?}"),
        }
    }
    assert!(!sse_got.is_empty(), "SSE on B got nothing before the kill");
    let last = sse_got.last().map(|(id, _)| id.clone()).expect("a last id");
    let mut sse = Sub::open(c, Kind::Sse, &path, &[("Last-Event-ID", &last)]).await;
    sse_got.extend(sse.messages(&ch, published.len() - sse_got.len()).await);
    assert_eq!(
        sse_got, published,
        "SSE: B killed, resumed on C with Last-Event-ID; every publish exactly once, in order"
    );
    sse.expect_silence(&ch, Duration::from_millis(300)).await;
}

// ---------------------------------------------------------------------------
// Redis outages
// ---------------------------------------------------------------------------

/// Where the Redis restart test stands, as seen by the publisher.
const REDIS_UP: u8 = 0;
const REDIS_DOWN: u8 = 1;
const REDIS_RESTARTED: u8 = 2;

/// One publish of the continuous publisher.
#[derive(Debug)]
struct Attempt {
    text: String,
    /// The id of a 201 answer, or the status of a refusal.
    outcome: Result<String, u16>,
    /// The phase when the answer came.
    phase: u8,
}

/// Asserts that what a subscriber received before Redis died is the start
/// of the publish sequence, with the ids the publisher was given. The last
/// one may be a publish whose answer was lost with Redis (stored and sent,
/// then answered 503).
fn assert_prefix_of_attempts(got: &[(String, String)], attempts: &[Attempt], what: &str) {
    for (i, (id, text)) in got.iter().enumerate() {
        let attempt = attempts
            .get(i)
            .unwrap_or_else(|| panic!("{what}: message {i} {text} was never published"));
        assert_eq!(*text, attempt.text, "{what}: message {i} out of order");
        match &attempt.outcome {
            Ok(pid) => assert_eq!(id, pid, "{what}: id of {text}"),
            Err(status) => assert_eq!(
                i + 1,
                got.len(),
                "{what}: {text} was answered {status} yet delivered, and more followed"
            ),
        }
    }
}

/// Reads messages until the disconnect notice; asserts its code is 4005.
async fn until_engine_unavailable(sub: &mut Sub, ch: &str, what: &str) -> Vec<(String, String)> {
    let mut got = Vec::new();
    loop {
        // The node notices the pub/sub connection drop; give it as long as
        // its ping interval (5 s) plus slack.
        match sub.next(ch, Duration::from_secs(10)).await {
            Got::Msg { id, text } => got.push((id, text)),
            Got::Disconnect(code) => {
                assert_eq!(code, 4005, "{what}: close code when Redis died");
                return got;
            }
            other => panic!("{what}: expected 4005 when Redis died, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn redis_restart_mid_stream_disconnects_and_resume_gets_every_later_message() {
    let cluster = Cluster::start().await;
    let (a, b, c) = (cluster.a(), cluster.b(), cluster.c());
    let ch = channel("mn:restart");
    let path = format!("/sub/{ch}");
    let mut ws = Sub::open(b, Kind::Ws, &path, &[]).await;
    let ndjson = Sub::open(b, Kind::Ndjson, &path, &[]).await;
    let sse = Sub::open(c, Kind::Sse, &path, &[]).await;
    // Channel info counts the whole cluster's subscribers (2 on B, 1 on C).
    b.wait_subscribers(&ch, 3, WAIT).await;
    c.wait_subscribers(&ch, 3, WAIT).await;

    let phase = AtomicU8::new(REDIS_UP);
    let attempts: Mutex<Vec<Attempt>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);

    // A publishes continuously, through the outage.
    let publisher = async {
        for i in 1..=MAX_PUBLISHES {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let text = format!("m{i}");
            let started = Instant::now();
            let resp = a
                .post(&format!("/pub/{ch}"))
                .header("Content-Type", "text/plain")
                .body(&text)
                .try_send(IO_TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("POST /pub/{ch} ({text}): {e}"));
            let answered_in = started.elapsed();
            let outcome = if resp.status == 201 {
                Ok(resp.json()["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("publish answer without id: {}", resp.text()))
                    .to_string())
            } else {
                resp.assert_error(503, "engine_unavailable");
                assert!(
                    answered_in < FAST_REFUSAL,
                    "POST /pub/{ch} refused after {answered_in:?}"
                );
                Err(resp.status)
            };
            let phase = phase.load(Ordering::SeqCst);
            lock(&attempts).push(Attempt {
                text,
                outcome,
                phase,
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the test did not finish within {MAX_PUBLISHES} publishes");
    };

    let controller = async {
        // Mid-stream: messages are flowing to B's WebSocket.
        let mut before = ws.messages(&ch, 10).await;
        cluster.redis.kill();
        phase.store(REDIS_DOWN, Ordering::SeqCst);
        before.extend(until_engine_unavailable(&mut ws, &ch, "WebSocket on B").await);

        // Keep Redis down while a few publishes are refused.
        eventually(WAIT, "3 publishes refused while Redis is down", || async {
            let refused = lock(&attempts)
                .iter()
                .filter(|t| t.phase == REDIS_DOWN && t.outcome.is_err())
                .count();
            if refused >= 3 {
                Ok(())
            } else {
                Err(format!("{refused} refused"))
            }
        })
        .await;

        phase.store(REDIS_RESTARTED, Ordering::SeqCst);
        cluster.redis.spawn();
        let restarted = Instant::now();
        eventually(
            RECOVERY,
            "POST /pub answers 201 again after Redis restarted",
            || async {
                let ok = lock(&attempts)
                    .iter()
                    .any(|t| t.phase == REDIS_RESTARTED && t.outcome.is_ok());
                ok.then_some(()).ok_or_else(|| "no 201 yet".to_string())
            },
        )
        .await;
        eprintln!(
            "publishes accepted {:?} after Redis restarted",
            restarted.elapsed()
        );

        // Reconnect as a client would, with the last id received. Redis
        // restarted without persistence, so the resume is a gap.
        let last = before.last().map(|(id, _)| id.clone()).expect("a last id");
        let (mut resumed, first) = resubscribe(
            b,
            Kind::Ws,
            &format!("{path}?since={last}"),
            &[],
            &ch,
            RECOVERY,
        )
        .await;
        assert_eq!(first, Got::Gap, "WebSocket resume from a pre-restart id");
        let after = resumed.messages(&ch, 10).await;
        stop.store(true, Ordering::SeqCst);
        (before, resumed, after)
    };

    let ((), (before, mut resumed, mut after)) = tokio::join!(publisher, controller);
    let attempts = attempts.into_inner().unwrap_or_else(|e| e.into_inner());
    let accepted_after: Vec<(String, String)> = attempts
        .iter()
        .filter(|t| t.phase == REDIS_RESTARTED)
        .filter_map(|t| {
            t.outcome
                .as_ref()
                .ok()
                .map(|id| (id.clone(), t.text.clone()))
        })
        .collect();

    // What Redis holds now is exactly what was accepted after the restart.
    let history = poll_messages(
        &a.poll(&format!("{path}?since=earliest&timeout=0")).await,
        &ch,
    );
    assert_eq!(
        history, accepted_after,
        "history after the restart vs the publishes answered 201 after it"
    );

    assert_prefix_of_attempts(&before, &attempts, "WebSocket on B before the outage");
    after.extend(
        resumed
            .messages(&ch, accepted_after.len() - after.len())
            .await,
    );
    assert_eq!(after, accepted_after, "WebSocket on B after resuming");
    resumed
        .expect_silence(&ch, Duration::from_millis(300))
        .await;

    // The streams that were not read during the outage were told too.
    for (mut sub, what, resume_on, kind) in [
        (ndjson, "NDJSON on B", c, Kind::Ndjson),
        (sse, "SSE on C", a, Kind::Sse),
    ] {
        let before = until_engine_unavailable(&mut sub, &ch, what).await;
        assert_eq!(
            sub.next(&ch, IO_TIMEOUT).await,
            Got::End,
            "{what} after 4005"
        );
        assert_prefix_of_attempts(&before, &attempts, what);
        let last = before.last().map(|(id, _)| id.clone()).expect("a last id");
        let (mut resumed, first) = resubscribe(
            resume_on,
            kind,
            &format!("{path}?since={last}"),
            &[],
            &ch,
            RECOVERY,
        )
        .await;
        assert_eq!(first, Got::Gap, "{what}: resume from a pre-restart id");
        let after = resumed.messages(&ch, accepted_after.len()).await;
        assert_eq!(after, accepted_after, "{what}: resumed on another node");
    }
}

/// POST /pub/{ch} on `server`, retried (bounded) while it answers
/// `503 engine_unavailable`; returns the id of the 201.
async fn publish_when_back(node: &str, server: &Server, ch: &str, text: &str) -> String {
    let path = format!("/pub/{ch}");
    eventually(
        RECOVERY,
        &format!("POST /pub on {node} answers 201 again"),
        || async {
            let resp = server
                .post(&path)
                .header("Content-Type", "text/plain")
                .body(text)
                .try_send(IO_TIMEOUT)
                .await?;
            match resp.status {
                201 => Ok(resp.json()["id"].as_str().unwrap_or_default().to_string()),
                503 => {
                    resp.assert_error(503, "engine_unavailable");
                    Err(resp.text())
                }
                other => panic!("POST {path} on {node}: {other} {}", resp.text()),
            }
        },
    )
    .await
}

#[tokio::test]
async fn redis_down_refuses_publishes_fast_and_lost_data_is_reported_as_a_gap() {
    let cluster = Cluster::start().await;
    let (a, b, c) = (cluster.a(), cluster.b(), cluster.c());
    let busy = channel("mn:lost");
    let idle = channel("mn:idle");
    let old = a.publish_many(&busy, "old", 3).await;
    let idle_id = b.publish_text(&idle, "idle").await;

    cluster.redis.kill();
    let started = Instant::now();
    let resp = a
        .post(&format!("/pub/{busy}"))
        .header("Content-Type", "text/plain")
        .body("while down")
        .try_send(IO_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("POST /pub/{busy} with Redis down: {e}"));
    let took = started.elapsed();
    resp.assert_error(503, "engine_unavailable");
    assert!(
        took < FAST_REFUSAL,
        "POST /pub with Redis down took {took:?}"
    );
    assert_eq!(
        resp.header("retry-after").as_deref(),
        Some("1"),
        "Retry-After of the 503"
    );

    let started = Instant::now();
    let resp = b
        .post("/api/publish")
        .header("Content-Type", "application/json")
        .body(json!({"channel": busy, "data": {"while": "down"}}).to_string())
        .try_send(IO_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("POST /api/publish with Redis down: {e}"));
    let took = started.elapsed();
    resp.assert_error(503, "engine_unavailable");
    assert!(
        took < FAST_REFUSAL,
        "POST /api/publish with Redis down took {took:?}"
    );

    // Redis comes back empty: it ran without persistence.
    cluster.redis.spawn();
    let p1 = publish_when_back("A", a, &busy, "new1").await;
    let p2 = publish_when_back("C", c, &busy, "new2").await;
    let fresh = vec![(p1, "new1".to_string()), (p2.clone(), "new2".to_string())];
    let last_old = &old[2];

    // Long-poll on B: gap, then what was published since Redis came back.
    let answer = poll_retrying(
        b,
        &format!("/sub/{busy}?since={last_old}&timeout=0"),
        RECOVERY,
    )
    .await;
    assert_eq!(
        answer["gap"], true,
        "long-poll resume from a lost id: {answer}"
    );
    assert_eq!(
        poll_messages(&answer, &busy),
        fresh,
        "long-poll resume from a lost id"
    );
    assert_eq!(answer["last_id"], p2.as_str(), "long-poll last_id {answer}");

    // WebSocket on C and SSE (Last-Event-ID) on A likewise.
    let mut resumed = Vec::new();
    for (node, kind, path, headers) in [
        (c, Kind::Ws, format!("/sub/{busy}?since={last_old}"), vec![]),
        (
            a,
            Kind::Sse,
            format!("/sub/{busy}"),
            vec![("Last-Event-ID", last_old.as_str())],
        ),
    ] {
        let (mut sub, first) = resubscribe(node, kind, &path, &headers, &busy, RECOVERY).await;
        assert_eq!(first, Got::Gap, "{kind:?} resume from a lost id");
        assert_eq!(
            sub.messages(&busy, 2).await,
            fresh,
            "{kind:?} after the gap"
        );
        resumed.push((kind, sub));
    }
    // and live messages reach them again through the recovered pub/sub.
    let p3 = b.publish_text(&busy, "new3").await;
    for (kind, mut sub) in resumed {
        assert_eq!(
            sub.messages(&busy, 1).await,
            vec![(p3.clone(), "new3".to_string())],
            "{kind:?}: live message published on B after the restart"
        );
    }

    // A channel nobody published to since: the gap, and nothing else.
    let answer = poll_retrying(
        b,
        &format!("/sub/{idle}?since={idle_id}&timeout=0"),
        RECOVERY,
    )
    .await;
    assert_eq!(
        answer["gap"], true,
        "long-poll resume of an emptied channel: {answer}"
    );
    assert_eq!(
        poll_messages(&answer, &idle),
        vec![],
        "long-poll of an emptied channel"
    );
    let (mut nd, first) = resubscribe(
        c,
        Kind::Ndjson,
        &format!("/sub/{idle}?since={idle_id}"),
        &[],
        &idle,
        RECOVERY,
    )
    .await;
    assert_eq!(first, Got::Gap, "NDJSON resume of an emptied channel");
    nd.expect_silence(&idle, Duration::from_millis(300)).await;

    // The newest id after the restart resumes without a gap.
    let answer = b.poll(&format!("/sub/{busy}?since={p3}&timeout=0")).await;
    assert_eq!(answer["gap"], false, "resume from the newest id: {answer}");
    assert_eq!(
        poll_messages(&answer, &busy),
        vec![],
        "resume from the newest id"
    );
}

// ---------------------------------------------------------------------------
// Cluster-wide state
// ---------------------------------------------------------------------------

async fn presence(node: &Server, ch: &str) -> Value {
    let resp = node.get(&format!("/api/presence/{ch}")).send().await;
    assert_eq!(resp.status, 200, "GET /api/presence/{ch}: {}", resp.text());
    resp.json()
}

/// Waits (bounded) until `node` reports `connections`, `anonymous` and `users`.
async fn wait_presence(node: &Server, ch: &str, connections: u64, anonymous: u64, users: Value) {
    eventually(WAIT, &format!("presence of {ch}"), || async {
        let p = presence(node, ch).await;
        if p["enabled"] == true
            && p["connections"] == connections
            && p["anonymous"] == anonymous
            && p["users"] == users
        {
            Ok(())
        } else {
            Err(p.to_string())
        }
    })
    .await
}

#[tokio::test]
async fn presence_spans_nodes() {
    let cluster = Cluster::start().await;
    let (a, b, c) = (cluster.a(), cluster.b(), cluster.c());
    let ch = channel("room:presence");
    // Signed on C, verified on B: the nodes share the hmac_secret.
    let tok = token(
        c,
        json!({"user": "ann", "channels": [], "ttl": 60, "info": {"name": "Ann"}}),
    )
    .await;
    let bearer = format!("Bearer {tok}");
    let ann = b
        .ws_with(&format!("/sub/{ch}"), &[("Authorization", &bearer)])
        .await;
    let ann_only = json!([{"user": "ann", "connections": 1, "info": {"name": "Ann"}}]);
    wait_presence(a, &ch, 1, 0, ann_only.clone()).await;

    let anonymous = c.ws(&format!("/sub/{ch}")).await;
    wait_presence(a, &ch, 2, 1, ann_only.clone()).await;
    wait_presence(b, &ch, 2, 1, ann_only).await;

    ann.close().await;
    wait_presence(a, &ch, 1, 1, json!([])).await;
    anonymous.close().await;
    wait_presence(b, &ch, 0, 0, json!([])).await;
}

/// POST /api/users/7/publish `{"data": {"n": n}}` on `node`, asserting 201.
async fn publish_to_user_7(node: &Server, n: u64) -> Value {
    let resp = node
        .post("/api/users/7/publish")
        .header("Content-Type", "application/json")
        .body(json!({"data": {"n": n}}).to_string())
        .send()
        .await;
    assert_eq!(
        resp.status,
        201,
        "POST /api/users/7/publish: {}",
        resp.text()
    );
    resp.json()
}

#[tokio::test]
async fn user_queue_filled_on_one_node_is_delivered_on_another() {
    let cluster = Cluster::start().await;
    let (a, b, c) = (cluster.a(), cluster.b(), cluster.c());
    // User 7 is offline: A queues.
    let mut queued = Vec::new();
    for n in 1..=3 {
        let v = publish_to_user_7(a, n).await;
        assert_eq!(v["queued"], true, "publish to an offline user: {v}");
        assert_eq!(v["channel"], "user:7", "publish answer {v}");
        queued.push(v["id"].as_str().expect("an id").to_string());
    }

    // User 7 subscribes on B with a token signed on C.
    let tok = token(c, json!({"user": "7", "channels": [], "ttl": 60})).await;
    let bearer = format!("Bearer {tok}");
    let mut ws = b
        .ws_with("/sub/user:7", &[("Authorization", &bearer)])
        .await;
    for (i, id) in queued.iter().enumerate() {
        let v = ws.next_json().await;
        assert_eq!(
            envelope_id(&v, "user:7"),
            *id,
            "queued message {} on B: {v}",
            i + 1
        );
        assert_eq!(
            v["data"],
            json!({"n": i + 1}),
            "queued message {} on B",
            i + 1
        );
    }

    // Now online (on B): C's publish is delivered live, not queued.
    let v = publish_to_user_7(c, 4).await;
    assert_eq!(v["queued"], false, "publish to an online user: {v}");
    let live = ws.next_json().await;
    assert_eq!(
        envelope_id(&live, "user:7"),
        v["id"].as_str().expect("an id")
    );
    assert_eq!(live["data"], json!({"n": 4}), "live message on B");

    // The queue was taken once: a second connection on A gets no replay.
    let mut second = a
        .ws_with("/sub/user:7", &[("Authorization", &bearer)])
        .await;
    second.expect_silence(Duration::from_millis(300)).await;

    // A user disconnect on C closes the user's connections on A and B.
    let resp = c.post("/api/users/7/disconnect").send().await;
    assert_eq!(
        resp.status,
        200,
        "POST /api/users/7/disconnect: {}",
        resp.text()
    );
    for (node, sock) in [("B", &mut ws), ("A", &mut second)] {
        let (code, _) = sock.expect_close(IO_TIMEOUT).await;
        assert_eq!(code, 4006, "user:7 on {node} after a disconnect on C");
    }
}

#[tokio::test]
async fn single_use_ticket_holds_across_nodes() {
    let cluster = Cluster::start().await;
    let (a, b, c) = (cluster.a(), cluster.b(), cluster.c());
    let ch = channel("mn:ticket");
    let tok = token(a, json!({"user": "u1", "channels": [], "ttl": 60})).await;
    async fn short_poll(node: &Server, ch: &str, ticket: &str) -> Result<Resp, String> {
        node.get(&format!("/sub/{ch}?ticket={ticket}&timeout=0"))
            .try_send(IO_TIMEOUT)
            .await
    }

    // Made on B, used on A, then refused on B and C.
    let t = ticket(b, &tok).await;
    let first = short_poll(a, &ch, &t).await.expect("first use on A");
    assert_eq!(first.status, 200, "first use of a ticket: {}", first.text());
    for (name, node) in [("B", b), ("C", c)] {
        let again = short_poll(node, &ch, &t).await.expect("second use");
        assert!(
            again.status == 401,
            "ticket reused on {name}: {} {}",
            again.status,
            again.text()
        );
        again.assert_error(401, "ticket_used");
    }

    // A WebSocket upgrade on C spends it for the SSE on A.
    let t = ticket(c, &tok).await;
    let ws = c.try_ws(&format!("/sub/{ch}?ticket={t}"), &[]).await;
    assert!(ws.is_ok(), "WebSocket with a fresh ticket: {:?}", ws.err());
    match Sub::try_open(a, Kind::Sse, &format!("/sub/{ch}?ticket={t}"), &[]).await {
        Ok(_) => panic!("a ticket used on C was accepted by A"),
        Err(e) => assert!(
            e.starts_with("HTTP 401") && e.contains("ticket_used"),
            "ticket reused on A: {e}"
        ),
    }

    // Used on all three at once: exactly one wins.
    let t = ticket(a, &tok).await;
    let (ra, rb, rc) = tokio::join!(
        short_poll(a, &ch, &t),
        short_poll(b, &ch, &t),
        short_poll(c, &ch, &t)
    );
    let answers: Vec<Resp> = [ra, rb, rc]
        .into_iter()
        .map(|r| r.expect("an answer"))
        .collect();
    let winners = answers.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        winners,
        1,
        "one ticket used concurrently on three nodes: {:?}",
        answers
            .iter()
            .map(|r| (r.status, r.text()))
            .collect::<Vec<_>>()
    );
    for r in answers.iter().filter(|r| r.status != 200) {
        r.assert_error(401, "ticket_used");
    }
}

#[tokio::test]
async fn ready_follows_redis_and_health_does_not() {
    let cluster = Cluster::start().await;
    let a = cluster.a();
    let ready = a.get("/ready").send().await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["status"], "ready");
    cluster.redis.kill();
    eventually(WAIT, "/ready to answer 503 without Redis", || async {
        let r = a.get("/ready").send().await;
        match (r.status, r.json()["error"]["code"].as_str()) {
            (503, Some("engine_unavailable")) => Ok(()),
            (status, code) => Err(format!("{status} {code:?}")),
        }
    })
    .await;
    let health = a.get("/health").send().await;
    assert_eq!(
        (health.status, health.json()),
        (200, json!({"status": "ok"}))
    );
    cluster.redis.spawn();
    eventually(
        Duration::from_secs(15),
        "/ready to come back with Redis",
        || async {
            match a.get("/ready").send().await.status {
                200 => Ok(()),
                status => Err(format!("{status}")),
            }
        },
    )
    .await;
}
