//! `GET /metrics`: the operator's view moves with what happens.

mod common;

use common::*;
use std::time::Duration;

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
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
