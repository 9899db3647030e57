//! Webhooks across three real nodes on one real Redis
//! ([`support_redis::Cluster`], its own `redis-server` per test), a receiver
//! in the test checking every signature (`support_webhook`): 100 users
//! flapping (disconnect and reconnect on another node within the grace)
//! send nothing; 100 users leaving send exactly 100 `user.offline`,
//! whichever node each was on, one node SIGKILLed with its users connected;
//! a channel followed only on a killed node is vacated exactly once.
//!
//! Short clocks keep them fast: `presence_grace` 1.5-3 s, `[redis]
//! node_ttl` 4 s with a refresh every second.

mod common;
mod support_redis;
mod support_webhook;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use support_redis::Cluster;
use support_webhook::*;

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

#[tokio::test]
async fn a_channel_only_on_a_killed_node_is_vacated_exactly_once() {
    let rx = Receiver::start(|_| 200).await;
    let cluster = Cluster::start_with_env(
        &cluster_extra(&rx.url),
        &[("HERALD_PRESENCE_GRACE", "1500ms")],
    )
    .await;
    // `lone` has its subscribers on C only; `shared` on C and on A.
    let lone = channel("lone");
    let shared = channel("shared");
    let on_c = vec![
        cluster.c().ws(&format!("/sub/{lone}")).await,
        cluster.c().ws(&format!("/sub/{lone}")).await,
        cluster.c().ws(&format!("/sub/{shared}")).await,
    ];
    let _on_a = cluster.a().ws(&format!("/sub/{shared}")).await;
    rx.wait("both channels occupied", |e| {
        names(e, "channel", &lone) == ["channel.occupied"]
            && names(e, "channel", &shared) == ["channel.occupied"]
    })
    .await;

    cluster.c().process.signal("KILL");
    drop(on_c);
    rx.wait("lone vacated", |e| {
        names(e, "channel", &lone) == ["channel.occupied", "channel.vacated"]
    })
    .await;
    // Absence: more sweeps and cleanups later, still exactly once; the
    // channel A still holds is not vacated.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let events = rx.events();
    assert_eq!(
        names(&events, "channel", &lone),
        ["channel.occupied", "channel.vacated"],
        "the dead node's channel vacated exactly once: {events:?}"
    );
    assert_eq!(
        names(&events, "channel", &shared),
        ["channel.occupied"],
        "a channel still followed on a live node is not vacated: {events:?}"
    );
}
