//! Graceful drain on SIGTERM: `/ready` turns 503 at once while the node
//! serves on for `drain_delay`; then every connection is told to reconnect
//! after its own delay, spread at random over `drain_window`, and the
//! process exits 0. Clients that honour the delay reconnect to another node
//! spread over the window, not all at once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The delay a draining node's close reason asks for:
/// `server shutting down; reconnect in N ms`.
fn reason_delay(reason: &str) -> u64 {
    let rest = reason
        .strip_prefix("server shutting down; reconnect in ")
        .and_then(|r| r.strip_suffix(" ms"))
        .unwrap_or_else(|| panic!("not a drain close reason: {reason:?}"));
    rest.parse()
        .unwrap_or_else(|e| panic!("delay in {reason:?} ({e})"))
}

#[tokio::test]
async fn sigterm_drains_then_tells_every_transport_when_to_come_back() {
    let mut s = Server::builder()
        .set("drain_delay", "\"1500ms\"")
        .set("drain_window", "\"3s\"")
        .start()
        .await;
    let ch = channel("drain");
    let mut ws = s.ws(&format!("/sub/{ch}")).await;
    let mut sse = s.sse(&format!("/sub/{ch}"), &[]).await;
    s.wait_subscribers(&ch, 2, IO_TIMEOUT).await;
    let ready = s.get("/ready").send().await;
    assert_eq!(ready.status, 200, "{}", ready.text());

    let started = Instant::now();
    s.process.signal("TERM");
    // Not ready at once, while still serving everyone.
    let deadline = Instant::now() + Duration::from_millis(700);
    loop {
        let r = s.get("/ready").send().await;
        if r.status == 503 {
            assert_eq!(r.json()["error"]["code"], "unavailable", "{}", r.text());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/ready still {} {} after SIGTERM",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.get("/health").send().await.status, 200);
    let id = s.publish_text(&ch, "during the drain").await;
    let got = ws.next_json().await;
    assert_eq!(got["id"], id.as_str(), "delivered while draining: {got}");
    // A new client is still served during the delay.
    let mut late = s.ws(&format!("/sub/{ch}")).await;

    let (code, reason) = ws.expect_close(Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert_eq!(code, 1001, "{reason}");
    assert!(
        waited >= Duration::from_millis(1400),
        "closed after {waited:?}, before drain_delay"
    );
    assert!(reason_delay(&reason) < 3000, "{reason}");
    let (code, reason) = late.expect_close(Duration::from_secs(2)).await;
    assert_eq!(code, 1001);
    reason_delay(&reason);

    // SSE: `retry:` with the delay (EventSource honours it), then the
    // disconnect event carrying it.
    let mut retry = None;
    let disconnect: Value = loop {
        match sse.next_item(Duration::from_secs(3)).await {
            Some(SseItem::Retry(ms)) => retry = Some(ms),
            Some(SseItem::Event(e)) if e.event == "disconnect" => {
                break serde_json::from_str(&e.data).expect("JSON")
            }
            Some(SseItem::Event(e)) if e.event == "message" => continue,
            Some(_) => continue,
            None => panic!("SSE ended without a disconnect event"),
        }
    };
    assert_eq!(disconnect["code"], 1001, "{disconnect}");
    assert_eq!(disconnect["reconnect"], true, "{disconnect}");
    let delay = disconnect["delay_ms"].as_u64().expect("delay_ms");
    assert!(delay < 3000, "{disconnect}");
    assert_eq!(retry.as_deref(), Some(delay.to_string().as_str()));

    let status = s.process.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn a_drain_spreads_the_reconnections_of_2000_clients_over_the_window() {
    const CLIENTS: usize = 2000;
    let window = Duration::from_secs(4);
    let mut a = Server::builder()
        .set("drain_delay", "\"200ms\"")
        .set("drain_window", "\"4s\"")
        .start()
        .await;
    let b = std::sync::Arc::new(Server::start().await);
    let ch = channel("spread");
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(a.ws(&format!("/sub/{ch}")).await);
    }
    a.wait_subscribers(&ch, CLIENTS as u64, Duration::from_secs(20))
        .await;

    let signalled = Instant::now();
    a.process.signal("TERM");
    // Each client does what the JS client does: wait the delay the close
    // asks for, then connect to another node.
    let mut tasks = Vec::with_capacity(CLIENTS);
    for mut ws in clients {
        let b = b.clone();
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            let (code, reason) = ws.expect_close(Duration::from_secs(10)).await;
            assert_eq!(code, 1001, "{reason}");
            let told = Instant::now();
            let delay = reason_delay(&reason);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let again = b.ws(&format!("/sub/{ch}")).await;
            (told, Instant::now(), delay, again)
        }));
    }
    let mut back = Vec::with_capacity(CLIENTS);
    for t in tasks {
        back.push(t.await.expect("a client"));
    }
    let status = a.process.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");

    // Every client was told within a moment of the end of the drain delay…
    let first_told = back.iter().map(|c| c.0).min().expect("clients");
    let last_told = back.iter().map(|c| c.0).max().expect("clients");
    assert!(
        last_told - first_told < Duration::from_secs(2),
        "told over {:?}",
        last_told - first_told
    );
    // …and their reconnections to the other node spread over the window:
    // each quarter of it holds a fair share, none holds most of them.
    let mut quarters = [0usize; 4];
    for (_, at, delay, _) in &back {
        assert!(*delay < 4000, "a delay past the window: {delay} ms");
        let since = at.saturating_duration_since(first_told);
        let q = (since.as_secs_f64() / (window.as_secs_f64() / 4.0)) as usize;
        quarters[q.min(3)] += 1;
    }
    for (i, n) in quarters.iter().enumerate() {
        assert!(
            *n >= CLIENTS / 10 && *n <= CLIENTS / 2,
            "quarter {i} of the window holds {n} of {CLIENTS} reconnections: {quarters:?}"
        );
    }
    // Every client is connected to the other node now (each holds its new
    // socket in `back`; on Redis the subscriber count is the cluster's, with
    // the drained node's entries still ageing out, so it is not read here).
    assert_eq!(back.len(), CLIENTS);
    assert!(signalled.elapsed() < Duration::from_secs(15));
}
