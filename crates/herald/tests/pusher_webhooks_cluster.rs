//! Pusher-format webhooks across three real nodes on one real Redis
//! ([`support_redis::Cluster`], its own `redis-server` per test): one user
//! on a presence channel from two nodes is one member, added once; a
//! reconnect to a third node within the grace sends nothing; the last
//! socket's departure sends member_removed and channel_vacated once
//! (whichever node sweeps); a node SIGKILLed with a member connected has
//! it removed once, after `node_ttl`.

mod common;
mod support_pusher;
mod support_redis;
mod support_webhook;

use std::time::Duration;

use support_pusher::*;
use support_redis::Cluster;
use support_webhook::*;

const KEY: &str = "ckey";
const APP_SECRET: &str = "secret-of-capp";
/// Longer than the grace (1.5 s) plus a sweep.
const QUIET: Duration = Duration::from_millis(3_500);

fn extra(url: &str) -> String {
    format!(
        "\n[redis]\nnode_ttl = \"4s\"\nrefresh_interval = \"1s\"\n\
         \n[[pusher.apps]]\nid = \"capp\"\nkey = \"{KEY}\"\nsecret = \"{APP_SECRET}\"\nwebhook_url = \"{url}\"\n"
    )
}

async fn cluster(rx: &Receiver) -> Cluster {
    Cluster::start_with_env(&extra(&rx.url), &[("HERALD_PRESENCE_GRACE", "1500ms")]).await
}

#[tokio::test]
async fn one_user_on_two_nodes_is_one_member_added_and_removed_once() {
    let rx = Receiver::start_pusher(KEY, APP_SECRET, |_| 200).await;
    let cluster = cluster(&rx).await;
    let room = "presence-lobby";
    let mut on_a = Pusher::connect(cluster.a(), KEY).await;
    on_a.subscribe(KEY, APP_SECRET, room, Some("u1")).await;
    let mut on_b = Pusher::connect(cluster.b(), KEY).await;
    on_b.subscribe(KEY, APP_SECRET, room, Some("u1")).await;
    rx.wait_pusher("occupied and u1", |e| of(e, room).len() >= 2)
        .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        of(&rx.pusher_events(), room),
        [pair("channel_occupied", ""), pair("member_added", "u1")],
        "once, from two nodes (waited {QUIET:?})"
    );
    // u1 moves: A's socket goes, one on C comes within the grace, B's goes.
    on_a.close().await;
    let mut on_c = Pusher::connect(cluster.c(), KEY).await;
    on_c.subscribe(KEY, APP_SECRET, room, Some("u1")).await;
    on_b.close().await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        of(&rx.pusher_events(), room).len(),
        2,
        "a move is silent (waited {QUIET:?})"
    );
    on_c.close().await;
    rx.wait_pusher("u1 removed, vacated", |e| of(e, room).len() >= 4)
        .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        of(&rx.pusher_events(), room),
        [
            pair("channel_occupied", ""),
            pair("member_added", "u1"),
            pair("member_removed", "u1"),
            pair("channel_vacated", "")
        ],
        "each once (waited {QUIET:?})"
    );
}

#[tokio::test]
async fn a_killed_nodes_member_is_removed_once() {
    let rx = Receiver::start_pusher(KEY, APP_SECRET, |_| 200).await;
    let cluster = cluster(&rx).await;
    let room = "presence-crash";
    let mut stays = Pusher::connect(cluster.a(), KEY).await;
    stays.subscribe(KEY, APP_SECRET, room, Some("u1")).await;
    let mut dies = Pusher::connect(cluster.c(), KEY).await;
    dies.subscribe(KEY, APP_SECRET, room, Some("u2")).await;
    rx.wait_pusher("both members", |e| of(e, room).len() >= 3)
        .await;
    cluster.c().process.signal("KILL");
    rx.wait_pusher("u2 removed", |e| {
        of(e, room).contains(&pair("member_removed", "u2"))
    })
    .await;
    tokio::time::sleep(QUIET).await;
    let got = of(&rx.pusher_events(), room);
    assert_eq!(
        got.iter().filter(|e| e.0 == "member_removed").count(),
        1,
        "u2 once, u1 stays: {got:?}"
    );
    assert!(!got.iter().any(|e| e.0 == "channel_vacated"), "{got:?}");
    drop((stays, dies));
}
