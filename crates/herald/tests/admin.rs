//! The admin page's data: `GET /api/stats` follows sessions by transport
//! and the busiest channels, `GET /api/history/{channel}` answers what a
//! channel retains. (The page itself is tested in headless Chromium:
//! clients/js/test/e2e/admin.test.js.)

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const KEY: &str = "admin-test-key";

async fn stats(server: &Server) -> Value {
    let r = server.get("/api/stats").bearer(KEY).send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[tokio::test]
async fn stats_count_sessions_by_transport_and_the_busiest_channels() {
    let server = Server::builder().api_key(KEY).start().await;
    server
        .get("/api/stats")
        .no_auth()
        .send()
        .await
        .assert_error(401, "unauthorized");
    let busy = channel("busy");
    let quiet = channel("quiet");
    let before = stats(&server).await;
    assert_eq!(before["connections_by_transport"]["websocket"], 0);
    assert_eq!(before["nodes"][0]["this"], true);

    let _a = server.ws(&format!("/sub/{busy}")).await;
    let _b = server.ws(&format!("/sub/{busy}")).await;
    let _c = server.sse(&format!("/sub/{quiet}"), &[]).await;
    server
        .wait_subscribers(&busy, 2, Duration::from_secs(5))
        .await;
    server
        .wait_subscribers(&quiet, 1, Duration::from_secs(5))
        .await;
    let now = stats(&server).await;
    assert_eq!(now["connections_by_transport"]["websocket"], 2, "{now}");
    assert_eq!(now["connections_by_transport"]["sse"], 1, "{now}");
    assert_eq!(now["connections"], 3, "{now}");
    let top = now["top_channels"].as_array().expect("a list");
    assert_eq!(top[0]["channel"], busy.as_str(), "{now}");
    assert_eq!(top[0]["subscribers"], 2);
    assert_eq!(top[1]["channel"], quiet.as_str());

    drop((_a, _b, _c));
    eventually(Duration::from_secs(5), "the counts fall back", || async {
        let s = stats(&server).await;
        if s["connections"] == 0 && s["connections_by_transport"]["websocket"] == 0 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
}

#[tokio::test]
async fn history_answers_the_retained_messages_after_a_point() {
    let server = Server::builder().api_key(KEY).start().await;
    let ch = channel("hist");
    let r = server
        .get(&format!("/api/history/{ch}"))
        .bearer(KEY)
        .send()
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["messages"].as_array().map(Vec::len), Some(0));
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for text in ["one", "two", "three"] {
            let r = server
                .post(&format!("/pub/{ch}"))
                .bearer(KEY)
                .header("Content-Type", "text/plain")
                .body(text)
                .send()
                .await;
            assert_eq!(r.status, 201, "{}", r.text());
            ids.push(r.json()["id"].as_str().expect("an id").to_string());
        }
        ids
    };
    let all = server
        .get(&format!("/api/history/{ch}"))
        .bearer(KEY)
        .send()
        .await
        .json();
    let texts: Vec<&str> = all["messages"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|m| m["data"].as_str())
        .collect();
    assert_eq!(texts, ["one", "two", "three"]);
    assert_eq!(all["gap"], false);
    assert_eq!(all["last_id"], ids[2].as_str());
    let after = server
        .get(&format!("/api/history/{ch}?since={}", ids[0]))
        .bearer(KEY)
        .send()
        .await
        .json();
    assert_eq!(
        after["messages"].as_array().map(Vec::len),
        Some(2),
        "{after}"
    );
    server
        .get(&format!("/api/history/{ch}?since=nope"))
        .bearer(KEY)
        .send()
        .await
        .assert_error(400, "invalid_since");
    server
        .get("/api/history/bad%20name")
        .bearer(KEY)
        .send()
        .await
        .assert_error(400, "invalid_channel");
}

#[tokio::test]
async fn stats_list_the_nodes_sharing_the_engine() {
    let a = Server::builder().api_key(KEY).start().await;
    if test_engine().is_none() {
        // The memory engine serves one node: it names itself.
        let s = stats(&a).await;
        let nodes = s["nodes"].as_array().expect("a list");
        assert_eq!(nodes.len(), 1, "{s}");
        assert_eq!(nodes[0]["this"], true, "{s}");
        return;
    }
    // On Redis every live node of the registry, this one first and marked:
    // a second node shows up within a sweep.
    let b = Server::builder().api_key(KEY).start().await;
    eventually(Duration::from_secs(10), "both nodes listed", || async {
        let s = stats(&a).await;
        let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
        let mine = nodes.iter().filter(|n| n["this"] == true).count();
        if nodes.len() >= 2 && mine == 1 && nodes[0]["this"] == true {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
    // b names itself at once, even before its first beat is in.
    let seen_by_b = stats(&b).await;
    let mine = seen_by_b["nodes"]
        .as_array()
        .expect("a list")
        .iter()
        .filter(|n| n["this"] == true)
        .count();
    assert_eq!(mine, 1, "{seen_by_b}");
    assert_eq!(seen_by_b["nodes"][0]["this"], true, "{seen_by_b}");
}
