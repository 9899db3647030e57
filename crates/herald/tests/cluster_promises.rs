//! The cross-node halves of `promises.rs`: several real `herald` nodes on
//! one real Redis ([`support_redis::Cluster`], one Redis and three nodes per
//! test).
//!
//! - two nodes racing one idempotency key store one message;
//! - `subscribers` in a publish answer and in `GET /pub/{channel}` counts
//!   every node's subscribers;
//! - `max_subscribers` holds when subscribers race on several nodes, a
//!   place comes back when its subscriber leaves, and a killed node's
//!   places come back within `node_ttl`;
//! - a user queue filled on one node and overflowed says gap on another;
//! - each node's `/metrics` counts the deliveries it writes itself.

mod common;
mod support_redis;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use support_redis::*;

/// Bound on counts written at each sweep (about a second) to settle.
const WAIT: Duration = Duration::from_secs(5);
/// A killed node's places expire `node_ttl` (15 s) after its last refresh
/// (every 5 s): at most 15 s after the kill, plus slack.
const NODE_GONE: Duration = Duration::from_secs(25);

/// Namespaces with a limit of one and of two subscribers, and personal
/// channels whose queue keeps 3 messages.
const EXTRA: &str = r#"
[[namespace]]
prefix = "one:"
max_subscribers = 1

[[namespace]]
prefix = "two:"
max_subscribers = 2

[[namespace]]
prefix = "user:"
history_size = 3
history_ttl = "10m"
"#;

async fn pub_with_key(node: &Server, ch: &str, key: &str) -> Value {
    let resp = node
        .post(&format!("/pub/{ch}"))
        .header("Idempotency-Key", key)
        .body("once")
        .send()
        .await;
    assert_eq!(resp.status, 201, "publish with a key: {}", resp.text());
    resp.json()
}

#[tokio::test]
async fn two_nodes_racing_one_key_store_one_message() {
    let cluster = Cluster::start_with(EXTRA).await;
    let ch = channel("mn:idem");
    let rounds = 20;
    let mut ids = Vec::new();
    for round in 0..rounds {
        let key = format!("race-{round}");
        let (a, b) = tokio::join!(
            pub_with_key(cluster.a(), &ch, &key),
            pub_with_key(cluster.b(), &ch, &key)
        );
        assert_eq!(a["id"], b["id"], "round {round}: one id for one key");
        let duplicates = [&a, &b]
            .iter()
            .filter(|v| v["duplicate"] == json!(true))
            .count();
        assert_eq!(
            duplicates, 1,
            "round {round}: one store, one repeat: {a} {b}"
        );
        ids.push(a["id"].clone());
    }
    // And a third node sees the key too.
    let c = pub_with_key(cluster.c(), &ch, "race-0").await;
    assert_eq!(
        (c["id"].clone(), c["duplicate"].clone()),
        (ids[0].clone(), json!(true))
    );
    let info = cluster.c().info(&ch).await;
    assert_eq!(info["messages"], rounds, "one message per key: {info}");
}

async fn publish_subscribers(node: &Server, ch: &str) -> Value {
    let resp = node
        .post(&format!("/pub/{ch}"))
        .body("count me")
        .send()
        .await;
    assert_eq!(resp.status, 201, "publish: {}", resp.text());
    resp.json()["subscribers"].clone()
}

#[tokio::test]
async fn subscribers_count_every_node() {
    let cluster = Cluster::start_with(EXTRA).await;
    let ch = channel("mn:count");
    let path = format!("/sub/{ch}");
    let _a1 = Sub::open(cluster.a(), Kind::Ws, &path, &[]).await;
    let a2 = Sub::open(cluster.a(), Kind::Sse, &path, &[]).await;
    let _b1 = Sub::open(cluster.b(), Kind::Ndjson, &path, &[]).await;
    for node in [cluster.a(), cluster.b(), cluster.c()] {
        node.wait_subscribers(&ch, 3, WAIT).await;
    }
    for (name, node) in [("A", cluster.a()), ("B", cluster.b()), ("C", cluster.c())] {
        assert_eq!(publish_subscribers(node, &ch).await, 3, "publish on {name}");
    }
    // /api/publish answers the same.
    let resp = cluster
        .b()
        .post("/api/publish")
        .header("Content-Type", "application/json")
        .body(json!({"channels": [ch], "data": 1}).to_string())
        .send()
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_eq!(resp.json()["results"][0]["subscribers"], 3);

    // One leaves A: every node counts 2.
    drop(a2);
    for node in [cluster.a(), cluster.b(), cluster.c()] {
        node.wait_subscribers(&ch, 2, WAIT).await;
    }
    // B dies without a word: its subscriber drops out of every count.
    cluster.b().process.signal("KILL");
    for node in [cluster.a(), cluster.c()] {
        node.wait_subscribers(&ch, 1, NODE_GONE).await;
    }
    assert_eq!(publish_subscribers(cluster.c(), &ch).await, 1);
}

/// Whether a WebSocket subscribe was admitted; a refusal must be the
/// `max_subscribers` one.
fn admitted(result: Result<Ws, String>, what: &str) -> Option<Ws> {
    match result {
        Ok(ws) => Some(ws),
        Err(e) => {
            assert!(
                e.starts_with("HTTP 429") && e.contains("channel_full"),
                "{what}: refused otherwise: {e}"
            );
            None
        }
    }
}

#[tokio::test]
async fn max_subscribers_holds_when_nodes_race() {
    let cluster = Cluster::start_with(EXTRA).await;
    // One place, two nodes subscribing at the same moment: exactly one in.
    for round in 0..10 {
        let path = format!("/sub/{}", channel("one:race"));
        let (a, b) = tokio::join!(
            cluster.a().try_ws(&path, &[]),
            cluster.b().try_ws(&path, &[])
        );
        let (a, b) = (admitted(a, "A"), admitted(b, "B"));
        assert_eq!(
            usize::from(a.is_some()) + usize::from(b.is_some()),
            1,
            "round {round}: exactly one admitted"
        );
    }
    // Two places, six subscribers on three nodes at once: exactly two in.
    for round in 0..5 {
        let path = format!("/sub/{}", channel("two:race"));
        let tries = cluster
            .nodes
            .iter()
            .flat_map(|n| [n, n])
            .map(|n| n.try_ws(&path, &[]));
        let results = futures_util::future::join_all(tries).await;
        let ins: Vec<Ws> = results
            .into_iter()
            .filter_map(|r| admitted(r, "six at once"))
            .collect();
        assert_eq!(ins.len(), 2, "round {round}: exactly two admitted");
    }
}

#[tokio::test]
async fn a_place_comes_back_when_its_subscriber_leaves_or_its_node_dies() {
    let cluster = Cluster::start_with(EXTRA).await;
    let ch = channel("one:back");
    let path = format!("/sub/{ch}");
    let first = cluster.a().ws(&path).await;
    assert!(admitted(cluster.b().try_ws(&path, &[]).await, "B while A holds").is_none());

    // The holder leaves: another node admits a new subscriber.
    first.close().await;
    let second = eventually(
        WAIT,
        "B to be admitted after A's subscriber left",
        || async {
            admitted(cluster.b().try_ws(&path, &[]).await, "B")
                .ok_or_else(|| "still full".to_string())
        },
    )
    .await;
    assert!(admitted(cluster.c().try_ws(&path, &[]).await, "C while B holds").is_none());

    // The holder's node dies without a word: its place expires.
    cluster.b().process.signal("KILL");
    drop(second);
    let died = Instant::now();
    let _third = eventually(NODE_GONE, "C to be admitted after B died", || async {
        admitted(cluster.c().try_ws(&path, &[]).await, "C").ok_or_else(|| "still full".to_string())
    })
    .await;
    assert!(
        died.elapsed() <= NODE_GONE,
        "reclaimed after {:?}",
        died.elapsed()
    );
}

#[tokio::test]
async fn an_overflowed_user_queue_says_gap_on_another_node() {
    let cluster = Cluster::start_with(EXTRA).await;
    let user = channel("u");
    let uch = format!("user:{user}");
    let mut ids = Vec::new();
    for n in 1..=5 {
        let resp = cluster
            .a()
            .post(&format!("/api/users/{user}/publish"))
            .header("Content-Type", "application/json")
            .body(json!({"data": {"n": n}}).to_string())
            .send()
            .await;
        assert_eq!(resp.status, 201, "{}", resp.text());
        let v = resp.json();
        assert_eq!(v["queued"], true, "the user is offline: {v}");
        ids.push(v["id"].clone());
    }
    let t = token(cluster.b(), json!({"user": user})).await;
    let auth = format!("Bearer {t}");
    let mut ws = cluster
        .b()
        .ws_with(&format!("/sub/{uch}"), &[("Authorization", auth.as_str())])
        .await;
    assert_gap_marker(&ws.next_json().await, &uch);
    let mut got = Vec::new();
    for _ in 0..3 {
        let v = ws.next_json().await;
        got.push((v["id"].clone(), v["data"]["n"].clone()));
    }
    let want: Vec<(Value, Value)> = ids[2..]
        .iter()
        .cloned()
        .zip([json!(3), json!(4), json!(5)])
        .collect();
    assert_eq!(got, want, "the newest three, oldest first");
}

fn deliveries(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("herald_deliveries_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("herald_deliveries_total missing in:\n{text}"))
}

async fn scraped_deliveries(node: &Server) -> u64 {
    let resp = node.get("/metrics").send().await;
    assert_eq!(resp.status, 200);
    deliveries(&resp.text())
}

#[tokio::test]
async fn each_node_counts_the_deliveries_it_writes() {
    let cluster = Cluster::start().await;
    let ch = channel("mn:deliveries");
    // Two subscribers on a, one on b, none on c; five messages from c:
    // a writes ten, b five, c none (each node counts its own sockets, not
    // every node's subscribers at publish time).
    let mut subs = Vec::new();
    for node in [cluster.a(), cluster.a(), cluster.b()] {
        subs.push(Sub::open(node, Kind::Ws, &format!("/sub/{ch}"), &[]).await);
    }
    eventually(WAIT, "three subscribers seen", || async {
        match cluster.c().info(&ch).await["subscribers"].as_u64() {
            Some(3) => Ok(()),
            n => Err(format!("{n:?} subscribers")),
        }
    })
    .await;
    let before = [
        scraped_deliveries(cluster.a()).await,
        scraped_deliveries(cluster.b()).await,
        scraped_deliveries(cluster.c()).await,
    ];
    for i in 0..5 {
        cluster.c().publish_text(&ch, &format!("m{i}")).await;
    }
    for sub in &mut subs {
        assert_eq!(sub.messages(&ch, 5).await.len(), 5);
    }
    let after = [
        scraped_deliveries(cluster.a()).await,
        scraped_deliveries(cluster.b()).await,
        scraped_deliveries(cluster.c()).await,
    ];
    let written: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(written, vec![10, 5, 0], "deliveries by node a, b, c");
}
