//! The Redis engine against a real `redis-server`, started by each test on a
//! free loopback port (CI installs `redis-server`; without it these tests
//! fail). Several engines on one Redis play the part of several nodes, each
//! with its own hub.
//!
//! What every engine promises is tested once for all of them, in the
//! contract suite (`tests/contract.rs`, from `herald_core::testing`); this
//! file keeps what is Redis' own: pub/sub follows, outages, key expiry,
//! cluster-wide counts, and nodes that die.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::disconnect::{CHANNEL_DELETED, ENGINE_UNAVAILABLE, FORCED};
use herald_core::engine::{now_ms, Broker, Claims, Engine, EngineError, PresenceStore, UserQueues};
use herald_core::hub::Hub;
use herald_core::namespace::{ChannelOptions, Namespaces};
use herald_core::presence::{ClientInfo, NoticeKind, PresenceEntry};
use herald_core::testing::{eventually, WAIT};
use herald_core::user::user_channel;
use herald_core::{ChannelName, Item, MessageId, Node, Payload, PayloadKind, Since, Subscriber};
use herald_redis::{RedisEngine, RedisOptions};
use tokio::time::{sleep, timeout, Instant};

mod support;

use support::RedisServer;

fn options() -> RedisOptions {
    RedisOptions {
        ping_interval: Duration::from_millis(500),
        max_backoff: Duration::from_millis(500),
        ..RedisOptions::default()
    }
}

struct TestNode {
    node: Node,
    engine: Arc<RedisEngine>,
}

async fn node_with(redis: &RedisServer, namespaces: Namespaces) -> TestNode {
    node_with_options(redis, namespaces, options()).await
}

async fn node_with_options(
    redis: &RedisServer,
    namespaces: Namespaces,
    options: RedisOptions,
) -> TestNode {
    let hub = Arc::new(Hub::new());
    let namespaces = Arc::new(namespaces);
    let engine = RedisEngine::connect_with(
        &redis.url(),
        Arc::clone(&hub),
        Arc::clone(&namespaces),
        options,
    )
    .await
    .expect("connect to the test redis");
    let node = Node::new(hub, Arc::clone(&engine) as Arc<dyn Engine>, namespaces);
    TestNode { node, engine }
}

async fn node(redis: &RedisServer) -> TestNode {
    node_with(redis, Namespaces::default()).await
}

fn sized(history_size: usize, ttl: Duration) -> Namespaces {
    Namespaces::new(
        ChannelOptions {
            history_size,
            history_ttl: ttl,
            ..ChannelOptions::default()
        },
        Vec::new(),
    )
}

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).expect("valid channel")
}

fn text(s: &str) -> Payload {
    Payload::from_bytes(Bytes::from(s.to_owned()))
}

async fn publish(node: &TestNode, channel: &ChannelName, body: &str) -> MessageId {
    node.engine
        .publish(channel, text(body))
        .await
        .expect("publish")
        .message
        .id
}

async fn next(sub: &mut Subscriber) -> Item {
    timeout(WAIT, sub.next())
        .await
        .expect("an item within the deadline")
}

async fn next_message(sub: &mut Subscriber) -> Arc<herald_core::Message> {
    match next(sub).await {
        Item::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn publish_answers_count_subscribers_on_every_node() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let news = ch("news");
    let mut on_b = b.node.subscriber(64);
    on_b.subscribe(news.clone(), Since::Live)
        .await
        .expect("subscribe on b");
    let mut on_a = a.node.subscriber(64);
    on_a.subscribe(news.clone(), Since::Live)
        .await
        .expect("subscribe on a");
    // Subscriber counts reach the other nodes with b's sweeps.
    let b_sweeps = sweeping(&b.engine);
    eventually("b's count to reach a", || async {
        (a.engine.subscriber_count(&news).await.ok() == Some(2)).then_some(())
    })
    .await;
    b_sweeps.abort();
    let payload = Payload::from_bytes(Bytes::from_static(&[0xff, 0x00, b'\n', b' ', 0x80]));
    assert_eq!(payload.kind(), PayloadKind::Binary);
    let done = a.engine.publish(&news, payload).await.expect("publish");
    assert_eq!(done.subscribers, 2, "a subscriber on each node");
    for sub in [&mut on_b, &mut on_a] {
        assert_eq!(next_message(sub).await.id, done.message.id);
    }
    assert!(a.engine.is_healthy() && b.engine.is_healthy());
}

#[tokio::test]
async fn zero_history_keeps_the_newest_id() {
    let redis = RedisServer::start();
    let a = node_with(&redis, sized(0, Duration::from_secs(600))).await;
    let c = ch("volatile");
    let first = publish(&a, &c, "one").await;
    let last = publish(&a, &c, "two").await;
    let stats = a.engine.stats(&c).await.expect("stats");
    assert_eq!((stats.messages, stats.last_id), (0, Some(last)));
    let page = a
        .engine
        .history(&c, Since::After(last))
        .await
        .expect("history");
    assert!(!page.gap && page.messages.is_empty());
    let page = a
        .engine
        .history(&c, Since::After(first))
        .await
        .expect("history");
    assert!(page.gap, "message two is not retained");
}

#[tokio::test]
async fn age_limit_trims_history() {
    let redis = RedisServer::start();
    let a = node_with(&redis, sized(100, Duration::from_millis(300))).await;
    let c = ch("fleeting");
    let id = publish(&a, &c, "soon gone").await;
    // The key itself outlives the messages by a little (at least 1 s after
    // the publish): while it exists, resuming from the newest id is no gap.
    let page = eventually("the message to age out", || async {
        let page = a
            .engine
            .history(&c, Since::After(id))
            .await
            .expect("history");
        let all = a
            .engine
            .history(&c, Since::Earliest)
            .await
            .expect("history");
        all.messages.is_empty().then_some(page)
    })
    .await;
    assert!(page.messages.is_empty());
    assert!(
        !page.gap || page.last_id.is_none(),
        "a gap only once the whole key expired"
    );
    // Then the idle channel vanishes from Redis altogether.
    eventually("the idle channel's key to expire", || async {
        let page = a
            .engine
            .history(&c, Since::After(id))
            .await
            .expect("history");
        (page.gap && page.last_id.is_none()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn data_loss_makes_resume_a_gap() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let c = ch("fragile");
    let mut last = None;
    for n in 0..3 {
        last = Some(publish(&a, &c, &format!("m{n}")).await);
    }
    let last = last.expect("published");
    redis.command(&["FLUSHALL"]).await;

    let page = b
        .engine
        .history(&c, Since::After(last))
        .await
        .expect("history");
    assert!(page.gap, "lost data must not look like silence");
    assert!(page.last_id.is_none());

    let after = publish(&a, &c, "after the loss").await;
    assert!(after > last);
    let mut sub = b.node.subscriber(64);
    let done = sub
        .subscribe(c.clone(), Since::After(last))
        .await
        .expect("subscribe");
    assert!(done.gap);
    assert!(matches!(next(&mut sub).await, Item::Gap(_)));
    assert_eq!(next_message(&mut sub).await.id, after);
}

#[tokio::test]
async fn concurrent_publishers_deliver_in_id_order() {
    let redis = RedisServer::start();
    let ns = || sized(1_000, Duration::from_secs(600));
    let (a, b, c) = (
        node_with(&redis, ns()).await,
        node_with(&redis, ns()).await,
        node_with(&redis, ns()).await,
    );
    let channel = ch("busy");
    let mut sub = c.node.subscriber(1_024);
    sub.subscribe(channel.clone(), Since::Live)
        .await
        .expect("subscribe");
    let burst = |n: &TestNode, tag: &'static str| {
        let engine = Arc::clone(&n.engine);
        let channel = channel.clone();
        tokio::spawn(async move {
            let sends = (0..100).map(|i| engine.publish(&channel, text(&format!("{tag}{i}"))));
            for r in futures_util::future::join_all(sends).await {
                r.expect("publish");
            }
        })
    };
    let (ta, tb) = (burst(&a, "a"), burst(&b, "b"));
    ta.await.expect("task a");
    tb.await.expect("task b");

    let stored = c
        .engine
        .history(&channel, Since::Earliest)
        .await
        .expect("history");
    assert_eq!(stored.messages.len(), 200);
    for want in &stored.messages {
        assert_eq!(
            next_message(&mut sub).await.id,
            want.id,
            "live order is stream order"
        );
    }
}

#[tokio::test]
async fn remove_unsubscribes_every_node() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let c = ch("doomed");
    publish(&a, &c, "last words").await;
    let mut sub = b.node.subscriber(64);
    sub.subscribe(c.clone(), Since::Live)
        .await
        .expect("subscribe");
    assert_eq!(redis.followers("doomed").await, 1);
    // Closing the channel on every node is in the contract suite.
    a.engine.remove(&c).await.expect("remove");
    assert!(
        matches!(next(&mut sub).await, Item::Closed(closed, why) if closed == c && why == CHANNEL_DELETED)
    );
    eventually("node b to unsubscribe", || async {
        (redis.followers("doomed").await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn unfollow_unsubscribes_when_the_last_local_subscriber_leaves() {
    let redis = RedisServer::start();
    let b = node(&redis).await;
    let c = ch("brief");
    let mut first = b.node.subscriber(8);
    let mut second = b.node.subscriber(8);
    first
        .subscribe(c.clone(), Since::Live)
        .await
        .expect("subscribe");
    second
        .subscribe(c.clone(), Since::Live)
        .await
        .expect("subscribe");
    assert_eq!(
        redis.followers("brief").await,
        1,
        "one subscription per node"
    );
    drop(first);
    // A barrier instead of a sleep: the pub/sub task applies commands in
    // order (unsubscribes before subscribes), so once a later follow is
    // confirmed, an unfollow that `first` might have sent has been applied.
    b.engine.follow(&ch("barrier")).await.expect("follow");
    assert_eq!(
        redis.followers("brief").await,
        1,
        "a local subscriber remains"
    );
    drop(second);
    eventually("the node to unsubscribe", || async {
        (redis.followers("brief").await == 0).then_some(())
    })
    .await;
    // Following again works.
    let mut again = b.node.subscriber(8);
    again
        .subscribe(c.clone(), Since::Live)
        .await
        .expect("subscribe again");
    assert_eq!(redis.followers("brief").await, 1);
}

#[tokio::test]
async fn outage_disconnects_then_nodes_recover() {
    let mut redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let c = ch("weather");
    let mut sub = b.node.subscriber(64);
    sub.subscribe(c.clone(), Since::Live)
        .await
        .expect("subscribe");
    let before = publish(&a, &c, "sunny").await;
    assert_eq!(next_message(&mut sub).await.id, before);

    redis.kill();
    assert!(
        matches!(next(&mut sub).await, Item::Disconnect(d) if d == ENGINE_UNAVAILABLE),
        "subscribers are told to reconnect"
    );
    let started = Instant::now();
    let err = a
        .engine
        .publish(&c, text("stormy"))
        .await
        .expect_err("redis is down");
    assert!(matches!(err, EngineError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "fails fast");
    for call in 0..3 {
        let started = Instant::now();
        let err = a
            .engine
            .history(&c, Since::Earliest)
            .await
            .expect_err("redis is down");
        assert!(
            matches!(err, EngineError::Unavailable(_)),
            "call {call}: {err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "call {call} fails fast"
        );
    }
    eventually("nodes to report unhealthy", || async {
        (!a.engine.is_healthy() && !b.engine.is_healthy()).then_some(())
    })
    .await;
    let mut during = b.node.subscriber(64);
    let started = Instant::now();
    assert!(during.subscribe(c.clone(), Since::Live).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "follow fails fast"
    );
    drop(during);

    redis.spawn();
    let after = eventually("publish to work again", || async {
        a.engine.publish(&c, text("clearing")).await.ok()
    })
    .await;
    // The data went with the restart: resuming from before is a gap.
    assert!(after.message.id > before);
    let mut fresh = eventually("subscribe to work again", || async {
        let mut fresh = b.node.subscriber(64);
        let done = fresh.subscribe(c.clone(), Since::Live).await.ok();
        done.map(|_| fresh)
    })
    .await;
    let live = publish(&a, &c, "rainbow").await;
    assert_eq!(
        next_message(&mut fresh).await.id,
        live,
        "live delivery recovered"
    );
    // A subscriber that stayed in the hub through the outage (its transport
    // would have closed it) was subscribed again by the reconnect. Whether
    // that happened before or after the first publish that worked is a race.
    let mut got = next_message(&mut sub).await.id;
    if got == after.message.id {
        got = next_message(&mut sub).await.id;
    }
    assert_eq!(got, live);
    let page = b
        .engine
        .history(&c, Since::After(before))
        .await
        .expect("history");
    assert!(page.gap);
    eventually("nodes to report healthy", || async {
        (a.engine.is_healthy() && b.engine.is_healthy()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn connect_fails_fast() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let hub = Arc::new(Hub::new());
    let ns = Arc::new(Namespaces::default());
    let started = Instant::now();
    let url = format!("redis://127.0.0.1:{port}/0");
    let err = RedisEngine::connect(&url, Arc::clone(&hub), Arc::clone(&ns))
        .await
        .err()
        .expect("nothing listens there");
    assert!(matches!(err, EngineError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = RedisEngine::connect("http://nope", hub, ns).await.err();
    assert!(matches!(err, Some(EngineError::Unavailable(_))));
}

#[tokio::test]
async fn idle_connection_survives_pings() {
    let redis = RedisServer::start();
    let hub = Arc::new(Hub::new());
    let namespaces = Arc::new(Namespaces::default());
    let fast = RedisOptions {
        ping_interval: Duration::from_millis(50),
        ..options()
    };
    let engine = RedisEngine::connect_with(
        &redis.url(),
        Arc::clone(&hub),
        Arc::clone(&namespaces),
        fast,
    )
    .await
    .expect("connect");
    let node = Node::new(hub, Arc::clone(&engine) as Arc<dyn Engine>, namespaces);
    let c = ch("quiet");
    let mut sub = node.subscriber(8);
    sub.subscribe(c.clone(), Since::Live)
        .await
        .expect("subscribe");
    // Several pings on the subscribed connection: each tick pings it, then
    // the command connection, so eight ticks are sixteen PINGs at Redis.
    let before = redis.ping_calls().await;
    eventually("eight ping ticks to be answered", || async {
        (redis.ping_calls().await >= before + 16).then_some(())
    })
    .await;
    assert!(engine.is_healthy());
    let id = engine
        .publish(&c, text("still here"))
        .await
        .expect("publish")
        .message
        .id;
    assert_eq!(next_message(&mut sub).await.id, id);
}

#[tokio::test]
async fn sweep_reconciles_subscriptions_the_hub_no_longer_needs() {
    let redis = RedisServer::start();
    let n = node(&redis).await;
    let c = ch("orphan");
    // A hub entry that vanishes without an unfollow (as when the hub drops
    // a dead connection by itself).
    let (outbox, _rx) = n.node.hub.outbox(4);
    n.node.hub.add(&c, &outbox);
    n.engine.follow(&c).await.expect("follow");
    assert_eq!(redis.followers("orphan").await, 1);
    n.node.hub.remove(&c, outbox.id());
    for _ in 0..10 {
        n.engine.sweep(0);
    }
    eventually("the reconcile pass to unsubscribe", || async {
        (redis.followers("orphan").await == 0).then_some(())
    })
    .await;
}

// Cluster-wide state: presence, subscriber counts, user queues and
// disconnects, single-use claims.

/// Refreshes every 100 ms, expires after 600 ms: a node stops counting
/// within 600 ms of its last refresh.
const TEST_NODE_TTL: Duration = Duration::from_millis(600);

fn fast_refresh() -> RedisOptions {
    RedisOptions {
        refresh_interval: Duration::from_millis(100),
        node_ttl: TEST_NODE_TTL,
        ..options()
    }
}

/// Presence with join/leave notices everywhere, and a subscriber limit.
fn cluster_namespaces() -> Namespaces {
    Namespaces::new(
        ChannelOptions {
            presence: true,
            join_leave: true,
            max_subscribers: 100,
            ..ChannelOptions::default()
        },
        Vec::new(),
    )
}

/// Checks `holds` until every entry of the hash `key` (presence entries or
/// subscriber places, each carrying its expiry) has been rewritten `ttls`
/// node TTLs after the latest expiry it had at the start: that is, until
/// each has outlived its first expiry by `ttls - 1` TTLs while refreshed.
/// `holds` asserts what must stay true meanwhile; it runs once more after
/// the rewrites were seen.
async fn outlive<F, Fut>(redis: &RedisServer, key: &str, ttls: u32, holds: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let first = redis.hash_expiries(key).await;
    assert!(!first.is_empty(), "{key} holds no entry");
    let latest = first.iter().copied().max().unwrap_or(0);
    let ttl_ms = i64::try_from(TEST_NODE_TTL.as_millis()).unwrap_or(i64::MAX);
    let target = latest + i64::from(ttls) * ttl_ms;
    let what = format!("every entry of {key} to be refreshed {ttls} TTLs on");
    let holds = &holds;
    eventually(&what, || async move {
        holds().await;
        let now = redis.hash_expiries(key).await;
        (!now.is_empty() && now.iter().all(|&e| e >= target)).then_some(())
    })
    .await;
    holds().await;
}

/// Calls `sweep` every 50 ms, as a server does every second, until aborted
/// (which is how a test "kills" a node: it stops refreshing).
fn sweeping(engine: &Arc<RedisEngine>) -> tokio::task::JoinHandle<()> {
    let engine = Arc::clone(engine);
    tokio::spawn(async move {
        loop {
            engine.sweep(now_ms());
            sleep(Duration::from_millis(50)).await;
        }
    })
}

fn client(user: &str, info: Option<serde_json::Value>) -> ClientInfo {
    ClientInfo {
        client: Arc::from(""),
        user: Some(Arc::from(user)),
        info: info.map(Arc::new),
    }
}

fn users(entries: &[PresenceEntry]) -> Vec<String> {
    let mut users: Vec<String> = entries
        .iter()
        .map(|e| e.user.as_deref().unwrap_or("-").to_owned())
        .collect();
    users.sort();
    users
}

async fn presence_users(node: &TestNode, channel: &ChannelName) -> Vec<String> {
    users(&node.engine.presence(channel).await.expect("presence"))
}

/// The next item, which must be a notice of `kind` about `user`.
async fn expect_notice(sub: &mut Subscriber, kind: NoticeKind, user: &str) {
    match next(sub).await {
        Item::Notice(n) => {
            assert_eq!(n.kind, kind);
            let v: serde_json::Value = serde_json::from_slice(&n.json).expect("notice json");
            assert_eq!(v[kind.as_str()]["user"], user, "{v}");
        }
        other => panic!("expected a {} notice, got {other:?}", kind.as_str()),
    }
}

#[tokio::test]
async fn presence_and_notices_span_nodes() {
    let redis = RedisServer::start();
    let a = node_with(&redis, cluster_namespaces()).await;
    let b = node_with(&redis, cluster_namespaces()).await;
    let room = ch("room:1");

    let mut bob = b.node.subscriber_for(64, client("bob", None));
    bob.subscribe(room.clone(), Since::Live)
        .await
        .expect("subscribe on b");
    expect_notice(&mut bob, NoticeKind::Join, "bob").await;

    let info = serde_json::json!({"name": "Ann", "id": 12345678901234567_u64});
    let mut ann = a.node.subscriber_for(64, client("ann", Some(info.clone())));
    ann.subscribe(room.clone(), Since::Live)
        .await
        .expect("subscribe on a");
    expect_notice(&mut bob, NoticeKind::Join, "ann").await;
    expect_notice(&mut ann, NoticeKind::Join, "ann").await;

    // Both nodes see both connections, with what their tokens carried.
    for node in [&a, &b] {
        let entries = node.engine.presence(&room).await.expect("presence");
        assert_eq!(users(&entries), ["ann", "bob"]);
        let ann_entry = entries
            .iter()
            .find(|e| e.user.as_deref() == Some("ann"))
            .expect("ann is present");
        assert_eq!(ann_entry.info.as_deref(), Some(&info));
        assert_eq!(ann_entry.client, ann.client().client);
    }

    // Connection ids are unique per node only (both are `c1`), yet each
    // connection has its own entry.
    assert_eq!(bob.client().client, ann.client().client);
    let mut other = b.node.subscriber_for(64, client("cy", None));
    other
        .subscribe(room.clone(), Since::Live)
        .await
        .expect("subscribe");
    expect_notice(&mut bob, NoticeKind::Join, "cy").await;
    assert_eq!(presence_users(&a, &room).await, ["ann", "bob", "cy"]);
    drop(other);
    expect_notice(&mut bob, NoticeKind::Leave, "cy").await;

    drop(ann);
    expect_notice(&mut bob, NoticeKind::Leave, "ann").await;
    eventually("ann to leave presence", || async {
        (presence_users(&a, &room).await == ["bob"]).then_some(())
    })
    .await;

    // A channel without presence keeps none and sends no notices.
    let quiet = Namespaces::default();
    let c = node_with(&redis, quiet).await;
    let mut silent = c.node.subscriber_for(8, client("dee", None));
    silent
        .subscribe(room.clone(), Since::Live)
        .await
        .expect("subscribe on c");
    assert_eq!(presence_users(&a, &room).await, ["bob"]);
    assert!(silent.try_next().is_none());
}

#[tokio::test]
async fn a_node_that_stops_refreshing_leaves_presence_within_node_ttl() {
    let redis = RedisServer::start();
    let a = node_with_options(&redis, cluster_namespaces(), fast_refresh()).await;
    let b = node_with_options(&redis, cluster_namespaces(), fast_refresh()).await;
    let room = ch("room:2");
    let (a_sweeps, b_sweeps) = (sweeping(&a.engine), sweeping(&b.engine));

    let mut ann = a.node.subscriber_for(64, client("ann", None));
    ann.subscribe(room.clone(), Since::Live)
        .await
        .expect("subscribe on a");
    let mut bob = b.node.subscriber_for(64, client("bob", None));
    bob.subscribe(room.clone(), Since::Live)
        .await
        .expect("subscribe on b");
    // Refreshed, the entries outlive several TTLs: both stay present until
    // each has been rewritten three TTLs after the latest first write.
    let key = format!("herald:{{{room}}}:presence");
    outlive(&redis, &key, 3, || async {
        assert_eq!(
            presence_users(&b, &room).await,
            ["ann", "bob"],
            "a refreshed entry dropped out"
        );
    })
    .await;

    // Node a dies: its connections never leave, nothing refreshes them.
    a_sweeps.abort();
    let died = Instant::now();
    eventually("ann to expire", || async {
        (presence_users(&b, &room).await == ["bob"]).then_some(())
    })
    .await;
    let took = died.elapsed();
    assert!(
        took <= TEST_NODE_TTL + Duration::from_millis(300),
        "gone after {took:?}, the bound is {TEST_NODE_TTL:?}"
    );
    // The living node's entry stays, rewritten two TTLs on.
    outlive(&redis, &key, 2, || async {
        assert_eq!(
            presence_users(&a, &room).await,
            ["bob"],
            "the living node's entry dropped out"
        );
    })
    .await;
    b_sweeps.abort();
    drop(ann);
}

#[tokio::test]
async fn subscriber_count_sums_live_nodes() {
    let redis = RedisServer::start();
    let a = node_with_options(&redis, cluster_namespaces(), fast_refresh()).await;
    let b = node_with_options(&redis, cluster_namespaces(), fast_refresh()).await;
    let c = ch("capped");
    let (a_sweeps, b_sweeps) = (sweeping(&a.engine), sweeping(&b.engine));
    let count = |n: &TestNode| {
        let engine = Arc::clone(&n.engine);
        let c = c.clone();
        async move { engine.subscriber_count(&c).await.expect("count") }
    };
    assert_eq!(count(&a).await, 0);

    let mut on_a = Vec::new();
    for _ in 0..2 {
        let mut s = a.node.subscriber(8);
        s.subscribe(c.clone(), Since::Live)
            .await
            .expect("subscribe");
        on_a.push(s);
    }
    let mut on_b = b.node.subscriber(8);
    on_b.subscribe(c.clone(), Since::Live)
        .await
        .expect("subscribe");
    for node in [&a, &b] {
        eventually("both nodes' subscribers to count", || async {
            (count(node).await == 3).then_some(())
        })
        .await;
    }

    on_a.pop();
    assert_eq!(count(&a).await, 2, "this node's own count is live");
    eventually("b to see a's change", || async {
        (count(&b).await == 2).then_some(())
    })
    .await;

    // Node b dies without a word: its count expires.
    b_sweeps.abort();
    let died = Instant::now();
    eventually("b's count to expire", || async {
        (count(&a).await == 1).then_some(())
    })
    .await;
    assert!(died.elapsed() <= TEST_NODE_TTL + Duration::from_millis(300));

    // Back to life, it counts again.
    let b_sweeps = sweeping(&b.engine);
    eventually("b to count again", || async {
        (count(&a).await == 2).then_some(())
    })
    .await;

    // A node that shuts down withdraws its counts at once, before they expire.
    b_sweeps.abort();
    drop(on_b);
    drop(b);
    let stopped = Instant::now();
    eventually("b's count to be withdrawn", || async {
        (count(&a).await == 1).then_some(())
    })
    .await;
    assert!(stopped.elapsed() < TEST_NODE_TTL / 2);
    a_sweeps.abort();
}

/// Bounds and age are in the contract suite; this is Redis' own: the gap
/// marker outlives the queue's key, and a zero history size queues nothing.
#[tokio::test]
async fn user_queue_gap_outlives_its_key_and_zero_size_queues_nothing() {
    let redis = RedisServer::start();
    let a = node_with(&redis, sized(2, Duration::from_millis(300))).await;
    let me = user_channel("7").expect("valid");
    a.engine
        .publish_to_user(&me, text("gone"))
        .await
        .expect("publish to user");
    let queue = format!("herald:{{{me}}}:queue");
    eventually("the queue's key to expire", || async {
        matches!(
            redis.command(&["EXISTS", &queue]).await,
            redis::Value::Int(0)
        )
        .then_some(())
    })
    .await;
    let expired = a.engine.take_user_queue(&me).await.expect("take");
    assert!(
        expired.messages.is_empty() && expired.gap,
        "an expired queue is a gap"
    );

    let none = node_with(&redis, sized(0, Duration::from_secs(60))).await;
    let done = none
        .engine
        .publish_to_user(&me, text("kept nowhere"))
        .await
        .expect("publish to user");
    assert!(!done.queued, "a zero history size queues nothing");
}

#[tokio::test]
async fn remove_drops_presence_and_queue() {
    let redis = RedisServer::start();
    let (a, b) = (
        node_with(&redis, cluster_namespaces()).await,
        node_with(&redis, cluster_namespaces()).await,
    );
    let room = ch("room:3");
    let mut ann = b.node.subscriber_for(8, client("ann", None));
    ann.subscribe(room.clone(), Since::Live)
        .await
        .expect("subscribe");
    expect_notice(&mut ann, NoticeKind::Join, "ann").await;
    let me = user_channel("9").expect("valid");
    a.engine
        .publish_to_user(&me, text("queued"))
        .await
        .expect("publish to user");

    a.engine.remove(&room).await.expect("remove");
    assert!(matches!(next(&mut ann).await, Item::Closed(c, _) if c == room));
    assert!(presence_users(&a, &room).await.is_empty());
    // Node b forgot the entry too: its refreshes do not bring it back. Its
    // first sweep refreshes presence; a leave queued after it runs after it
    // (upkeep jobs run in order), so once that leave is seen, so is the
    // refresh.
    let marker = client("zed", None);
    b.engine
        .presence_join(&room, &marker, false)
        .await
        .expect("join");
    b.engine.sweep(now_ms());
    b.engine.presence_leave(&room, &marker, false);
    eventually("the sweep, then the marker's leave, to run", || async {
        presence_users(&a, &room).await.is_empty().then_some(())
    })
    .await;

    a.engine.remove(&me).await.expect("remove");
    assert!(b
        .engine
        .take_user_queue(&me)
        .await
        .expect("take")
        .messages
        .is_empty());
}

#[tokio::test]
async fn cluster_calls_fail_fast_without_redis() {
    let mut redis = RedisServer::start();
    let a = node_with(&redis, cluster_namespaces()).await;
    let room = ch("room:4");
    let mut ann = a.node.subscriber_for(8, client("ann", None));
    ann.subscribe(room.clone(), Since::Live)
        .await
        .expect("subscribe");
    redis.kill();
    let started = Instant::now();
    let user = user_channel("1").expect("valid");
    let results = [
        a.engine.subscriber_count(&room).await.err(),
        a.engine.presence(&room).await.err(),
        a.engine.publish_to_user(&user, text("x")).await.err(),
        a.engine.take_user_queue(&user).await.err(),
        a.engine.disconnect_user(&user, FORCED).await.err(),
        a.engine.claim_once("k", 1_000).await.err(),
        a.engine
            .presence_join(&room, &client("bob", None), true)
            .await
            .err(),
    ];
    for (n, err) in results.into_iter().enumerate() {
        assert!(
            matches!(err, Some(EngineError::Unavailable(_))),
            "call {n}: {err:?}"
        );
    }
    // Leaving and sweeping never block, even now.
    drop(ann);
    a.engine.sweep(now_ms());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "each call is bounded"
    );
}

#[tokio::test]
async fn subscriber_places_are_exact_refreshed_and_reclaimed_from_dead_nodes() {
    let redis = RedisServer::start();
    let a = node_with_options(&redis, cluster_namespaces(), fast_refresh()).await;
    let b = node_with_options(&redis, cluster_namespaces(), fast_refresh()).await;
    let c = ch("places");
    let (a_sweeps, b_sweeps) = (sweeping(&a.engine), sweeping(&b.engine));

    // Two places, claimed from both nodes at once, many times over: never
    // more than two granted.
    let claims = (0..10).map(|i| {
        let engine = if i % 2 == 0 { &a.engine } else { &b.engine };
        engine.claim_subscriber_slot(&c, 2)
    });
    let granted: Vec<_> = futures_util::future::join_all(claims)
        .await
        .into_iter()
        .filter_map(|r| r.expect("claim"))
        .collect();
    assert_eq!(granted.len(), 2, "exactly the limit");

    // Once they are given back, one place per node.
    drop(granted);
    let on_a = eventually("a's place", || async {
        a.engine.claim_subscriber_slot(&c, 2).await.expect("claim")
    })
    .await;
    let on_b = eventually("b's place", || async {
        b.engine.claim_subscriber_slot(&c, 2).await.expect("claim")
    })
    .await;

    // Held places outlive node_ttl while their node refreshes them: no
    // place is free until both have been rewritten three TTLs on.
    outlive(&redis, &format!("herald:{{{c}}}:slots"), 3, || async {
        assert!(
            a.engine
                .claim_subscriber_slot(&c, 2)
                .await
                .expect("claim")
                .is_none(),
            "a refreshed place was free"
        );
    })
    .await;

    // A dropped slot comes back (the HDEL is queued on the upkeep task).
    drop(on_a);
    let back = eventually("a released place to come back", || async {
        a.engine.claim_subscriber_slot(&c, 2).await.expect("claim")
    })
    .await;

    // b stops refreshing (as if it died, never releasing): its place expires.
    b_sweeps.abort();
    std::mem::forget(on_b);
    let died = Instant::now();
    let reclaimed = eventually("a dead node's place to expire", || async {
        a.engine.claim_subscriber_slot(&c, 2).await.expect("claim")
    })
    .await;
    assert!(
        died.elapsed() <= TEST_NODE_TTL * 2,
        "after {:?}",
        died.elapsed()
    );
    drop((back, reclaimed));
    a_sweeps.abort();
}

// Events for webhooks: what is Redis' own (a dead node, the lease, the
// outbox bound); the rest is in the contract suite.

fn with_events(events: &[&str], grace_ms: u64, capacity: usize) -> RedisOptions {
    RedisOptions {
        events: Some(herald_core::event::EventOptions {
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            grace: Duration::from_millis(grace_ms),
            capacity,
            scopes: Default::default(),
        }),
        ..fast_refresh()
    }
}

/// `(event, user)` of every event in the outbox, oldest first.
async fn outbox_users(engine: &RedisEngine) -> Vec<(String, String)> {
    use herald_core::engine::EventLog;
    engine
        .pending_events(100_000)
        .await
        .expect("pending")
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.json).expect("json");
            (
                v["event"].as_str().unwrap_or("").to_owned(),
                v["user"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

async fn count_of(engine: &RedisEngine, event: &str) -> usize {
    outbox_users(engine)
        .await
        .iter()
        .filter(|(e, _)| e == event)
        .count()
}

/// A node that stops beating is found dead by the two others, which both
/// clean it up at once: each of its users goes offline exactly once, a
/// user also connected elsewhere not at all, and the users of a node that
/// lives on only when they leave.
#[tokio::test]
async fn a_dead_nodes_users_go_offline_once_whoever_cleans_up() {
    let redis = RedisServer::start();
    let events = [
        herald_core::event::USER_ONLINE,
        herald_core::event::USER_OFFLINE,
    ];
    let opts = || with_events(&events, 200, 100_000);
    let a = node_with_options(&redis, Namespaces::default(), opts()).await;
    let b = node_with_options(&redis, Namespaces::default(), opts()).await;
    let c = node_with_options(&redis, Namespaces::default(), opts()).await;
    let sweeps = [sweeping(&a.engine), sweeping(&b.engine)];
    let c_sweeps = sweeping(&c.engine);
    let name = |i: usize| format!("u{i}");
    // u0..u9 on a and b; u10..u49 on a; u50..u99 on c.
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    let mut on_c = Vec::new();
    for i in 0..100 {
        let user = client(&name(i), None);
        if i < 50 {
            on_a.push(a.node.subscriber_for(8, user.clone()));
        } else {
            on_c.push(c.node.subscriber_for(8, user.clone()));
        }
        if i < 10 {
            on_b.push(b.node.subscriber_for(8, user));
        }
    }
    eventually("100 users online", || async {
        (count_of(&a.engine, "user.online").await == 100).then_some(())
    })
    .await;

    // c dies: it stops beating, its connections never leave.
    c_sweeps.abort();
    // a's own users leave, except those also on b.
    on_a.truncate(10);
    eventually("90 users offline", || async {
        let n = count_of(&b.engine, "user.offline").await;
        assert!(n <= 90, "{n} offline events");
        (n == 90).then_some(())
    })
    .await;
    // Several sweeps and cleanups later, still exactly once each.
    sleep(TEST_NODE_TTL * 2).await;
    let got = outbox_users(&a.engine).await;
    let mut offline: Vec<&str> = got
        .iter()
        .filter(|(e, _)| e == "user.offline")
        .map(|(_, u)| u.as_str())
        .collect();
    offline.sort_unstable();
    let mut want: Vec<String> = (10..100).map(name).collect();
    want.sort_unstable();
    assert_eq!(offline, want, "each user of the dead node and of a once");
    assert_eq!(got.len(), 190, "100 online, 90 offline: {got:?}");
    drop((on_a, on_b, on_c, sweeps));
}

/// One node at a time holds the delivery lease; it renews it, and another
/// takes it once it expired.
#[tokio::test]
async fn the_delivery_lease_has_one_holder_and_passes_on_when_it_expires() {
    use herald_core::engine::EventLog;
    let redis = RedisServer::start();
    let a = node_with_options(&redis, Namespaces::default(), with_events(&[], 100, 10)).await;
    let b = node_with_options(&redis, Namespaces::default(), with_events(&[], 100, 10)).await;
    let ttl = Duration::from_millis(300);
    assert!(a.engine.delivery_lease(ttl).await.expect("lease"));
    assert!(!b.engine.delivery_lease(ttl).await.expect("lease"));
    assert!(a.engine.delivery_lease(ttl).await.expect("renewed"));
    eventually("the lease to pass to b", || async {
        b.engine
            .delivery_lease(ttl)
            .await
            .expect("lease")
            .then_some(())
    })
    .await;
    assert!(!a.engine.delivery_lease(ttl).await.expect("lease"));
}

/// A full outbox drops its oldest events, and counts them.
#[tokio::test]
async fn a_full_outbox_drops_the_oldest_and_counts_them() {
    use herald_core::engine::EventLog;
    let redis = RedisServer::start();
    let a = node_with_options(
        &redis,
        Namespaces::default(),
        with_events(&["t.x"], 100, 10),
    )
    .await;
    for n in 0..300_u64 {
        let mut fields = serde_json::Map::new();
        fields.insert("n".into(), n.into());
        a.engine.record_event("t.x", fields).await.expect("record");
    }
    let stats = a.engine.outbox_stats().await.expect("stats");
    assert!(stats.dropped > 0, "{stats:?}");
    // Trimming is approximate (whole stream nodes): about the capacity.
    assert!(stats.len < 300, "{stats:?}");
    assert_eq!(stats.len as u64 + stats.dropped, 300, "{stats:?}");
    let kept = a.engine.pending_events(1_000).await.expect("pending");
    let last: serde_json::Value = serde_json::from_str(&kept[kept.len() - 1].json).expect("json");
    assert_eq!(last["n"], 299, "the newest are kept");
    assert!(a
        .engine
        .recorded_events()
        .contains(&("t.x".to_owned(), 300)));
}
