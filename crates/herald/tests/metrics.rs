//! `GET /metrics` and the operator's logs: the view moves with what
//! happens. A real scrape passes `promtool check metrics` (Debian's
//! `prometheus` package; scripts/test.sh installs it); connections are
//! counted by transport, closes by code, slow consumers cut, deliveries
//! as written with their latency; at debug every connection's open,
//! subscribe and close is logged, at info a periodic summary and every
//! refused backend request.

mod common;

use common::*;
use serde_json::Value;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn metric(text: &str, name: &str) -> u64 {
    metric_or(text, name).unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

/// A sample's value (`name` with its labels, as printed), if present.
fn metric_or(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

async fn scrape(server: &Server) -> String {
    let resp = server.get("/metrics").send().await;
    assert_eq!(resp.status, 200, "scrape: {}", resp.text());
    resp.text()
}

/// Waits until the sample `name` reads `want`.
async fn metric_becomes(server: &Server, name: &str, want: u64) {
    eventually(WAIT, &format!("{name} = {want}"), || async {
        let text = scrape(server).await;
        match metric_or(&text, name) {
            Some(n) if n == want => Ok(()),
            other => Err(format!("{name} is {other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn metrics_follow_connections_and_publishes() {
    let server = Server::start().await;
    let ch = channel("metrics");
    let before = server.get("/metrics").send().await;
    assert_eq!(before.status, 200);
    let before = before.text();
    assert!(before.contains("# TYPE herald_deliveries_total counter"));
    assert_eq!(metric(&before, "herald_connections"), 0);
    let published_before = metric(&before, "herald_messages_published_total");

    let mut ws = server.ws(&format!("/sub/{ch}")).await;
    server
        .wait_subscribers(&ch, 1, Duration::from_secs(5))
        .await;
    server.publish_text(&ch, "one").await;
    ws.next_json().await;

    let after = server.get("/metrics").send().await.text();
    assert_eq!(metric(&after, "herald_connections"), 1);
    assert_eq!(metric(&after, "herald_channels_followed"), 1);
    assert_eq!(
        metric(&after, "herald_messages_published_total"),
        published_before + 1
    );
    assert!(metric(&after, "herald_deliveries_total") >= 1);

    drop(ws);
    eventually(
        Duration::from_secs(5),
        "connection gauge falls back",
        || async {
            let text = server.get("/metrics").send().await.text();
            match metric(&text, "herald_connections") {
                0 => Ok(()),
                n => Err(format!("{n} connections")),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn metrics_need_the_api_key_when_one_is_set() {
    let server = Server::builder().api_key("k-metrics").start().await;
    let refused = server.get("/metrics").no_auth().send().await;
    assert_eq!(refused.status, 401);
    let ok = server.get("/metrics").bearer("k-metrics").send().await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn a_scrape_passes_promtool() {
    // Hooks, webhooks and a Pusher app's webhooks configured (to a closed
    // port; hooks allowed on error), so that their families are in the
    // scrape too.
    let server = Server::builder()
        .extra_config(
            "[hooks]\nurl = \"http://127.0.0.1:9/hook\"\nevents = [\"connect\"]\ntimeout = \"1s\"\non_error = \"allow\"\n\n[webhooks]\nurl = \"http://127.0.0.1:9/events\"\nsecret = \"s\"\ntimeout = \"1s\"\n\n[[pusher.apps]]\nid = \"p1\"\nkey = \"pk\"\nsecret = \"secret-of-p1\"\nwebhook_url = \"http://127.0.0.1:9/pusher\"\n",
        )
        .start()
        .await;
    let ch = channel("promtool");
    let mut ws = server.ws(&format!("/sub/{ch}")).await;
    server.wait_subscribers(&ch, 1, WAIT).await;
    server.publish_text(&ch, "one").await;
    ws.next_json().await;
    let text = scrape(&server).await;
    for family in [
        "herald_connections_by_transport",
        "herald_subscriptions",
        "herald_deliveries_total",
        "herald_delivery_latency_seconds",
        "herald_disconnects_total",
        "herald_slow_consumer_disconnects_total",
        "herald_hook_calls_total",
        "herald_hook_duration_seconds",
        "herald_webhook_events_total",
        "herald_webhook_requests_total",
        "herald_webhook_given_up_total",
        "herald_webhook_outbox",
        "herald_webhook_dropped_total",
        "herald_pusher_webhook_requests_total",
        "herald_pusher_webhook_given_up_total",
        "herald_engine_up",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing in:\n{text}"
        );
    }
    assert_eq!(metric(&text, "herald_engine_up"), 1);
    assert_eq!(
        metric(
            &text,
            "herald_hook_calls_total{hook=\"connect\",outcome=\"failed\"}"
        ),
        1
    );
    assert!(metric(&text, "process_open_fds") > 0);
    assert!(metric(&text, "process_resident_memory_bytes") > 1_000_000);

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be on PATH (apt-get install prometheus)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- the scrape ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn connections_are_counted_by_transport() {
    let server = Server::start().await;
    let ch = channel("by-transport");
    let by = |t: &str| format!("herald_connections_by_transport{{transport=\"{t}\"}}");
    let before = scrape(&server).await;
    for t in ["websocket", "sse", "stream"] {
        assert_eq!(metric(&before, &by(t)), 0, "{t} before");
    }
    let ws = server.ws(&format!("/sub/{ch}")).await;
    let sse = server.sse(&format!("/sub/{ch}"), &[]).await;
    let nd = server.ndjson(&format!("/sub/{ch}")).await;
    server.wait_subscribers(&ch, 3, WAIT).await;
    let during = scrape(&server).await;
    for t in ["websocket", "sse", "stream"] {
        assert_eq!(metric(&during, &by(t)), 1, "{t} while open");
    }
    assert_eq!(metric(&during, "herald_subscriptions"), 3);

    drop(sse);
    metric_becomes(&server, &by("sse"), 0).await;
    let after_sse = scrape(&server).await;
    assert_eq!(metric(&after_sse, &by("websocket")), 1);
    drop((ws, nd));
    metric_becomes(&server, &by("websocket"), 0).await;
    metric_becomes(&server, &by("stream"), 0).await;
    metric_becomes(&server, "herald_subscriptions", 0).await;
}

#[tokio::test]
async fn a_disconnect_is_counted_under_its_close_code() {
    let server = Server::start().await;
    let ch = channel("close-code");
    let normal = "herald_disconnects_total{code=\"1000\"}";
    let bad = "herald_disconnects_total{code=\"4400\"}";
    let before = scrape(&server).await;
    let (normal_before, bad_before) = (
        metric_or(&before, normal).unwrap_or(0),
        metric_or(&before, bad).unwrap_or(0),
    );
    // A client's close: 1000.
    let ws = server.ws(&format!("/sub/{ch}")).await;
    server.wait_subscribers(&ch, 1, WAIT).await;
    ws.close().await;
    metric_becomes(&server, normal, normal_before + 1).await;
    // A binary frame on the session protocol: a bad request, 4400 (its
    // `disconnect` frame, then the close).
    let mut session = server.ws("/connection/websocket").await;
    session.send_binary(b"nope").await;
    let frame = session.next_json().await;
    assert_eq!(frame["disconnect"]["code"], 4400, "{frame}");
    let (code, _) = session.expect_close(WAIT).await;
    assert_eq!(code, 4400);
    metric_becomes(&server, bad, bad_before + 1).await;
}

#[tokio::test]
async fn a_slow_consumer_is_counted() {
    let server = Server::builder()
        .set("queue_size", "4")
        .set("write_timeout", "\"1s\"")
        .start()
        .await;
    let ch = channel("slow-metric");
    // Never read: the socket fills, then the queue, then it is cut.
    let slow = server.ws_small_buffer(&format!("/sub/{ch}")).await;
    server.wait_subscribers(&ch, 1, WAIT).await;
    let big = "x".repeat(60_000);
    for _ in 0..400 {
        server.publish_text(&ch, &big).await;
        let text = scrape(&server).await;
        if metric(&text, "herald_slow_consumer_disconnects_total") > 0 {
            break;
        }
    }
    metric_becomes(&server, "herald_slow_consumer_disconnects_total", 1).await;
    metric_becomes(&server, "herald_disconnects_total{code=\"4001\"}", 1).await;
    drop(slow);
}

#[tokio::test]
async fn the_latency_histogram_counts_every_delivery_written() {
    let server = Server::start().await;
    let ch = channel("latency");
    // Three subscribers on three transports, five messages: fifteen
    // deliveries, each observed once.
    let mut ws = server.ws(&format!("/sub/{ch}")).await;
    let mut sse = server.sse(&format!("/sub/{ch}"), &[]).await;
    let mut nd = server.ndjson(&format!("/sub/{ch}")).await;
    server.wait_subscribers(&ch, 3, WAIT).await;
    let before = scrape(&server).await;
    let delivered_before = metric(&before, "herald_deliveries_total");
    for i in 0..5 {
        server.publish_text(&ch, &format!("m{i}")).await;
    }
    for _ in 0..5 {
        ws.next_json().await;
        sse.next_event().await;
        nd.next_json().await;
    }
    let after = scrape(&server).await;
    let delivered = metric(&after, "herald_deliveries_total");
    assert_eq!(delivered - delivered_before, 15, "deliveries written");
    assert_eq!(
        metric(&after, "herald_delivery_latency_seconds_count"),
        delivered,
        "one observation per delivery"
    );
    assert_eq!(
        metric(
            &after,
            "herald_delivery_latency_seconds_bucket{le=\"+Inf\"}"
        ),
        delivered
    );
    // On one machine, a delivery takes well under a second.
    assert_eq!(
        metric(&after, "herald_delivery_latency_seconds_bucket{le=\"1\"}"),
        delivered
    );
}

/// The JSON log lines of `server` so far whose message is `message`.
fn log_lines(server: &Server, message: &str) -> Vec<Value> {
    server
        .process
        .stderr_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

#[tokio::test]
async fn debug_logs_say_each_connection_open_subscribe_and_close() {
    let server = Server::builder()
        .env("HERALD_LOG", "info,herald_server=debug")
        .env("HERALD_LOG_FORMAT", "json")
        .set("log_summary_interval", "\"300ms\"")
        .start()
        .await;
    let ch = channel("logged");
    let ws = server.ws(&format!("/sub/{ch}")).await;
    server.wait_subscribers(&ch, 1, WAIT).await;
    server.publish_text(&ch, "one").await;
    ws.close().await;
    let refused = server.post("/pub/bad%20name").body("x").send().await;
    assert_eq!(refused.status, 400);

    let closed = eventually(WAIT, "the close is logged", || async {
        match log_lines(&server, "connection closed").into_iter().next() {
            Some(v) => Ok(v),
            None => Err(server.process.stderr_text()),
        }
    })
    .await;
    assert_eq!(closed["code"], 1000, "{closed}");
    assert_eq!(closed["transport"], "websocket", "{closed}");
    assert!(closed["reason"].is_string(), "{closed}");
    assert_eq!(closed["level"], "DEBUG");

    let opened = log_lines(&server, "connection opened");
    let opened = opened.first().expect("connection opened logged");
    assert_eq!(opened["transport"], "websocket", "{opened}");
    assert!(
        opened["peer"]
            .as_str()
            .is_some_and(|p| p.contains("127.0.0.1")),
        "{opened}"
    );
    assert!(opened["client"].is_string(), "{opened}");
    assert_eq!(opened["client"], closed["client"], "one client id in both");

    let subscribed = log_lines(&server, "subscribed");
    let subscribed = subscribed.first().expect("subscribe logged");
    assert_eq!(subscribed["channel"], ch.as_str(), "{subscribed}");
    assert_eq!(subscribed["client"], closed["client"]);

    let refusal = eventually(WAIT, "the refusal is logged", || async {
        log_lines(&server, "backend request refused")
            .into_iter()
            .next()
            .ok_or_else(|| server.process.stderr_text())
    })
    .await;
    assert_eq!(refusal["level"], "INFO");
    assert_eq!(refusal["status"], 400, "{refusal}");
    assert!(refusal["code"].is_string(), "{refusal}");

    // The summary, every 300 ms here: one that saw the publish and the close.
    let summary = eventually(WAIT, "a summary with the close", || async {
        log_lines(&server, "summary")
            .into_iter()
            .find(|v| {
                v["disconnects"]
                    .as_str()
                    .is_some_and(|d| d.contains("1000:1"))
            })
            .ok_or_else(|| server.process.stderr_text())
    })
    .await;
    assert_eq!(summary["level"], "INFO");
    for field in ["connections", "subscriptions", "published", "delivered"] {
        assert!(summary[field].is_u64(), "{field} in {summary}");
    }
}
