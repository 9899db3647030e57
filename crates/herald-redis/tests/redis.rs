//! The Redis engine against a real `redis-server`, started by each test on a
//! free loopback port (CI installs `redis-server`; without it these tests
//! fail). Several engines on one Redis play the part of several nodes, each
//! with its own hub.

use std::future::Future;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::disconnect::{CHANNEL_DELETED, ENGINE_UNAVAILABLE};
use herald_core::engine::{Engine, EngineError};
use herald_core::hub::Hub;
use herald_core::namespace::{ChannelOptions, Namespaces};
use herald_core::{ChannelName, Item, MessageId, Node, Payload, PayloadKind, Since, Subscriber};
use herald_redis::{RedisEngine, RedisOptions};
use tokio::time::{sleep, timeout, Instant};

/// How long anything asynchronous may take before a test fails.
const WAIT: Duration = Duration::from_secs(10);

/// A `redis-server` child process on a loopback port, killed on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = Self { port, child: None };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not listen on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs one command on a fresh connection.
    async fn command(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("test connection");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await.expect("test command")
    }

    /// How many pub/sub connections follow a Herald channel.
    async fn followers(&self, channel: &str) -> i64 {
        let live = format!("herald:{{{channel}}}:live");
        match self.command(&["PUBSUB", "NUMSUB", &live]).await {
            redis::Value::Array(v) => match v.get(1) {
                Some(redis::Value::Int(n)) => *n,
                other => panic!("unexpected NUMSUB count {other:?}"),
            },
            other => panic!("unexpected NUMSUB reply {other:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

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
    let hub = Arc::new(Hub::new());
    let namespaces = Arc::new(namespaces);
    let engine = RedisEngine::connect_with(
        &redis.url(),
        Arc::clone(&hub),
        Arc::clone(&namespaces),
        options(),
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
            client_publish: false,
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

/// Retries `check` until it yields a value or `WAIT` has passed.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn publish_on_one_node_reaches_subscribers_on_both() {
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

    let payloads = [
        Payload::json(Bytes::from_static(b"{\"n\": [1, 2]}")).expect("json"),
        Payload::from_bytes(Bytes::from_static("héllo\nworld".as_bytes())),
        Payload::from_bytes(Bytes::from_static(&[0xff, 0x00, b'\n', b' ', 0x80])),
        Payload::from_bytes(Bytes::new()),
    ];
    let mut published = Vec::new();
    for p in &payloads {
        let done = a.engine.publish(&news, p.clone()).await.expect("publish");
        assert_eq!(done.subscribers, 2, "both nodes follow the channel");
        published.push(done.message);
    }
    assert!(published.windows(2).all(|w| w[0].id < w[1].id), "ids grow");
    for sub in [&mut on_b, &mut on_a] {
        for (sent, payload) in published.iter().zip(&payloads) {
            let got = next_message(sub).await;
            assert_eq!(got.id, sent.id);
            assert_eq!(got.time_ms, sent.time_ms);
            assert_eq!(&got.payload, payload, "kind and bytes travel exactly");
            assert_eq!(got.channel, news);
        }
    }
    assert_eq!(payloads[2].kind(), PayloadKind::Binary);
    assert!(a.engine.is_healthy() && b.engine.is_healthy());
}

#[tokio::test]
async fn resume_on_another_node_gives_exactly_the_later_messages() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let c = ch("chat:lobby");
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(publish(&a, &c, &format!("m{n}")).await);
    }

    let mut sub = b.node.subscriber(64);
    let done = sub
        .subscribe(c.clone(), Since::After(ids[1]))
        .await
        .expect("subscribe");
    assert!(!done.gap);
    assert_eq!(done.replayed, 3);
    for id in &ids[2..] {
        assert_eq!(next_message(&mut sub).await.id, *id);
    }
    // History and live join without loss or repetition.
    let live = publish(&a, &c, "m5").await;
    assert_eq!(next_message(&mut sub).await.id, live);
    assert!(sub.try_next().is_none());

    let page = b
        .engine
        .history(&c, Since::Earliest)
        .await
        .expect("history");
    assert_eq!(page.messages.len(), 6);
    assert!(!page.gap);
    let page = b
        .engine
        .history(&c, Since::After(live))
        .await
        .expect("history");
    assert!(page.messages.is_empty() && !page.gap);
    assert_eq!(page.last_id, Some(live));
    let page = b.engine.history(&c, Since::Live).await.expect("history");
    assert!(page.messages.is_empty() && !page.gap && page.last_id == Some(live));
    let stats = b.engine.stats(&c).await.expect("stats");
    assert_eq!((stats.messages, stats.last_id), (6, Some(live)));

    let max = MessageId::new(u64::MAX, u64::MAX);
    let page = b
        .engine
        .history(&c, Since::After(max))
        .await
        .expect("history");
    assert!(
        page.gap && page.messages.is_empty(),
        "an id from the future"
    );

    let unknown = ch("never-published");
    let page = b
        .engine
        .history(&unknown, Since::After(ids[0]))
        .await
        .expect("history");
    assert!(page.gap && page.messages.is_empty() && page.last_id.is_none());
    assert!(
        !b.engine
            .history(&unknown, Since::Earliest)
            .await
            .expect("history")
            .gap
    );
    assert_eq!(
        b.engine.stats(&unknown).await.expect("stats"),
        Default::default()
    );
}

#[tokio::test]
async fn trimmed_resume_is_a_gap_and_the_last_trimmed_id_is_not() {
    let redis = RedisServer::start();
    let a = node_with(&redis, sized(3, Duration::from_secs(600))).await;
    let c = ch("small");
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(publish(&a, &c, &format!("m{n}")).await);
    }
    let page = a
        .engine
        .history(&c, Since::Earliest)
        .await
        .expect("history");
    let kept: Vec<_> = page.messages.iter().map(|m| m.id).collect();
    assert_eq!(kept, ids[2..]);

    let page = a
        .engine
        .history(&c, Since::After(ids[0]))
        .await
        .expect("history");
    assert!(page.gap, "message 1 was trimmed away");
    assert_eq!(page.messages.len(), 3);
    let page = a
        .engine
        .history(&c, Since::After(ids[1]))
        .await
        .expect("history");
    assert!(!page.gap, "the last trimmed id loses nothing");
    assert_eq!(page.messages.len(), 3);

    let mut sub = a.node.subscriber(64);
    let done = sub
        .subscribe(c.clone(), Since::After(ids[0]))
        .await
        .expect("subscribe");
    assert!(done.gap);
    assert!(matches!(next(&mut sub).await, Item::Gap(g) if g == c));
    assert_eq!(next_message(&mut sub).await.id, ids[2]);
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
async fn remove_closes_subscribers_on_every_node() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let c = ch("doomed");
    let id = publish(&a, &c, "last words").await;
    let mut sub = b.node.subscriber(64);
    sub.subscribe(c.clone(), Since::Live)
        .await
        .expect("subscribe");
    assert_eq!(redis.followers("doomed").await, 1);

    a.engine.remove(&c).await.expect("remove");
    match next(&mut sub).await {
        Item::Closed(closed, why) => {
            assert_eq!(closed, c);
            assert_eq!(why, CHANNEL_DELETED);
        }
        other => panic!("expected the channel to close, got {other:?}"),
    }
    let page = a
        .engine
        .history(&c, Since::After(id))
        .await
        .expect("history");
    assert!(page.gap && page.messages.is_empty());
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
    sleep(Duration::from_millis(200)).await;
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
    // would have closed it) was subscribed again by the reconnect.
    assert_eq!(next_message(&mut sub).await.id, live);
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
    // Let several pings pass on a subscribed connection.
    sleep(Duration::from_millis(400)).await;
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
