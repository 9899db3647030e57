//! The engine contract: one behavioural suite, run against every engine.
//!
//! Each test is an async function taking a [`Backend`], which makes two
//! nodes on one fresh backing store (as two Herald processes share one
//! Redis). Everything one node stores, the other must see; an engine that
//! keeps everything in its own process answers the same node twice. The
//! tests speak only through [`Engine`] and [`Node`], so a behaviour that
//! differs between engines fails here.
//!
//! [`contract_tests!`](crate::contract_tests) turns the whole list into
//! `#[tokio::test]`s for one backend:
//!
//! ```ignore
//! herald_core::contract_tests!(MemoryBackend);
//! ```
//!
//! What is not here is engine-specific on purpose: how fresh cluster-wide
//! subscriber counts are, expiry of a dead node's presence and places,
//! Redis outages and key expiry (`herald-redis/tests/redis.rs`), and the
//! memory engine's bounds on idempotency keys (its unit tests). Two
//! behaviours differ between the engines today and are therefore left out
//! rather than written to one engine's answer: with `history_size` 0 the
//! Redis engine still knows the newest id for a while (resuming from it is
//! no gap) while the memory engine frees the channel at once (a gap); and
//! with `history_size` 0 the Redis engine queues nothing for an absent user
//! (`queued` is false) while the memory engine answers `queued`.
//!
//! Age limits are tested with short TTLs and [`eventually`]: both engines
//! trim by age against their own clock (the process's, or Redis' `TIME`)
//! whenever history is read, so no test sets the clock or sleeps.
//!
//! [`Engine`]: crate::engine::Engine

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::timeout;

use super::{eventually, WAIT};
use crate::channel::ChannelName;
use crate::disconnect::{CHANNEL_DELETED, FORCED, TOKEN_EXPIRED};
use crate::event::{
    EventOptions, CHANNEL_OCCUPIED, CHANNEL_VACATED, MEMBER_ADDED, MEMBER_REMOVED, USER_OFFLINE,
    USER_ONLINE,
};
use crate::history::HistoryPage;
use crate::id::{MessageId, Since};
use crate::mailbox::{Ack, Acked};
use crate::message::{Message, Payload};
use crate::namespace::{ChannelOptions, Namespaces};
use crate::node::{Item, Node, Subscriber};
use crate::presence::{ClientInfo, NoticeKind, PresenceEntry};
use crate::user::user_channel;

/// What a test needs of an engine: nodes on a fresh store.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Two nodes on one fresh, empty backing store, both configured with
    /// `namespaces`. An engine without a shared store answers one node
    /// twice (same hub, same engine).
    async fn pair(&self, namespaces: Namespaces) -> [Node; 2] {
        self.pair_with_events(namespaces, None).await
    }

    /// As [`Backend::pair`], both nodes recording `events` (webhooks).
    async fn pair_with_events(
        &self,
        namespaces: Namespaces,
        events: Option<EventOptions>,
    ) -> [Node; 2];
}

/// Runs every contract test as a `#[tokio::test]` against `$backend`, an
/// expression making a [`Backend`] (evaluated once per test). The calling
/// crate needs `tokio` with `macros` and `rt` among its dev-dependencies.
#[macro_export]
macro_rules! contract_tests {
    ($backend:expr) => {
        $crate::contract_tests!(@each $backend;
            publish_orders_ids_and_reaches_the_other_node,
            history_is_trimmed_by_count,
            history_is_trimmed_by_age,
            resume_follows_the_gap_rule,
            latest_on_subscribe_opens_with_the_newest_retained_message,
            remove_drops_history_and_closes_subscribers,
            presence_entries_come_and_go_with_notices,
            user_queue_is_bounded_and_reports_its_gap,
            user_queue_drops_aged_messages_as_a_gap,
            user_queue_is_skipped_while_the_user_is_connected,
            disconnect_user_closes_only_that_user,
            claim_once_has_one_winner,
            idempotent_publish_stores_once_per_channel,
            subscriber_slots_honour_max_and_come_back,
            subscriber_count_is_live_for_this_node,
            occupied_channels_are_listed_across_nodes,
            mailbox_keeps_messages_until_acknowledged,
            mailbox_overflow_drops_the_oldest_as_a_gap,
            mailbox_expiry_drops_pending_messages_as_a_gap,
            a_user_goes_online_and_offline_once_across_nodes,
            a_user_back_within_the_grace_makes_no_event_pair,
            channels_are_occupied_and_vacated_once_but_personal_ones_are_not,
            members_are_added_and_removed_once_across_nodes,
            recorded_events_keep_their_order_until_done,
        );
    };
    (@each $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test]
            async fn $name() {
                let backend = $backend;
                $crate::testing::contract::$name(&backend).await;
            }
        )*
    };
}

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).expect("valid channel")
}

fn text(s: &str) -> Payload {
    Payload::from_bytes(Bytes::from(s.to_owned()))
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

fn client(id: &str, user: &str) -> ClientInfo {
    ClientInfo {
        client: Arc::from(id),
        user: Some(Arc::from(user)),
        info: None,
    }
}

fn ids(messages: &[Arc<Message>]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

async fn publish(node: &Node, channel: &ChannelName, body: &str) -> MessageId {
    node.engine
        .publish(channel, text(body))
        .await
        .expect("publish")
        .message
        .id
}

async fn history(node: &Node, channel: &ChannelName, since: Since) -> HistoryPage {
    node.engine.history(channel, since).await.expect("history")
}

async fn next(sub: &mut Subscriber) -> Item {
    timeout(WAIT, sub.next())
        .await
        .expect("an item within the deadline")
}

async fn next_message(sub: &mut Subscriber) -> Arc<Message> {
    match next(sub).await {
        Item::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
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

async fn present(node: &Node, channel: &ChannelName) -> Vec<String> {
    users(&node.engine.presence(channel).await.expect("presence"))
}

/// Ids grow per channel; what one node publishes (payload kind and bytes,
/// time) is what the other node's subscribers receive, in that order, and
/// what its history holds.
pub async fn publish_orders_ids_and_reaches_the_other_node(backend: &dyn Backend) {
    let [a, b] = backend.pair(Namespaces::default()).await;
    let news = ch("news");
    let mut on_b = b.subscriber(64);
    on_b.subscribe(news.clone(), Since::Live)
        .await
        .expect("subscribe on b");
    let payloads = [
        Payload::json(Bytes::from_static(b"{\"n\": [1, 2]}")).expect("json"),
        Payload::from_bytes(Bytes::from_static("héllo\nworld".as_bytes())),
        Payload::from_bytes(Bytes::from_static(&[0xff, 0x00, b'\n', b' ', 0x80])),
        Payload::from_bytes(Bytes::new()),
    ];
    let mut sent = Vec::new();
    for p in &payloads {
        let done = a.engine.publish(&news, p.clone()).await.expect("publish");
        assert!(!done.duplicate);
        assert_eq!(done.message.channel, news);
        assert_eq!(&done.message.payload, p);
        sent.push(done.message);
    }
    assert!(sent.windows(2).all(|w| w[0].id < w[1].id), "ids grow");
    for want in &sent {
        let got = next_message(&mut on_b).await;
        assert_eq!((got.id, got.time_ms), (want.id, want.time_ms));
        assert_eq!(got.payload, want.payload, "kind and bytes travel exactly");
        assert_eq!(got.channel, news);
    }
    let stored = history(&b, &news, Since::Earliest).await;
    assert_eq!(ids(&stored.messages), ids(&sent));
    assert!(!stored.gap);
    assert_eq!(stored.last_id, sent.last().map(|m| m.id));
    let stats = b.engine.stats(&news).await.expect("stats");
    assert_eq!(
        (stats.messages, stats.last_id),
        (4, sent.last().map(|m| m.id))
    );
}

/// Past `history_size` the oldest messages go; the newest id is kept.
pub async fn history_is_trimmed_by_count(backend: &dyn Backend) {
    let [a, b] = backend.pair(sized(3, Duration::from_secs(600))).await;
    let c = ch("small");
    let mut sent = Vec::new();
    for n in 0..5 {
        sent.push(publish(&a, &c, &format!("m{n}")).await);
    }
    let page = history(&b, &c, Since::Earliest).await;
    assert_eq!(ids(&page.messages), sent[2..], "the newest three");
    let stats = b.engine.stats(&c).await.expect("stats");
    assert_eq!((stats.messages, stats.last_id), (3, Some(sent[4])));
}

/// Messages older than `history_ttl` go, by the engine's clock.
pub async fn history_is_trimmed_by_age(backend: &dyn Backend) {
    let [a, b] = backend.pair(sized(100, Duration::from_millis(500))).await;
    let c = ch("fleeting");
    let id = publish(&a, &c, "soon gone").await;
    let young = history(&a, &c, Since::Earliest).await;
    assert_eq!(ids(&young.messages), [id], "kept while young");
    eventually("the message to age out", || async {
        history(&b, &c, Since::Earliest)
            .await
            .messages
            .is_empty()
            .then_some(())
    })
    .await;
    let stats = b.engine.stats(&c).await.expect("stats");
    assert_eq!(stats.messages, 0);
}

/// `latest` answers the newest id and the newest retained message; a live
/// subscribe in a namespace with `latest_on_subscribe` opens with that
/// message ([`Item::Latest`], at its id), then live ones without a
/// duplicate; a resume, a namespace without the option, an empty channel
/// and a message aged out of history open with nothing (and no gap).
pub async fn latest_on_subscribe_opens_with_the_newest_retained_message(backend: &dyn Backend) {
    let latest = |history_ttl| ChannelOptions {
        history_ttl,
        latest_on_subscribe: true,
        ..ChannelOptions::default()
    };
    let namespaces = Namespaces::new(
        ChannelOptions::default(),
        vec![
            ("live:".into(), latest(Duration::from_secs(600))),
            ("live:brief:".into(), latest(Duration::from_millis(500))),
        ],
    );
    let [a, b] = backend.pair(namespaces).await;
    let c = ch("live:price");
    let sent = [
        publish(&a, &c, "1").await,
        publish(&a, &c, "2").await,
        publish(&a, &c, "3").await,
    ];
    let page = b.engine.latest(&c).await.expect("latest");
    assert_eq!(ids(&page.messages), [sent[2]], "the newest only");
    assert_eq!(page.last_id, Some(sent[2]));
    assert!(!page.gap);

    let mut live = b.subscriber(64);
    let done = live
        .subscribe(c.clone(), Since::Live)
        .await
        .expect("subscribe");
    assert_eq!(
        (done.position, done.gap, done.replayed),
        (Some(sent[2]), false, 1)
    );
    match next(&mut live).await {
        Item::Latest(m) => {
            assert_eq!(m.id, sent[2]);
            assert_eq!(m.payload, text("3"));
        }
        other => panic!("expected the latest message, got {other:?}"),
    }
    let fourth = publish(&a, &c, "4").await;
    assert_eq!(next_message(&mut live).await.id, fourth, "then live, once");

    let mut resumed = b.subscriber(64);
    resumed
        .subscribe(c.clone(), Since::After(sent[0]))
        .await
        .expect("resume");
    for want in [sent[1], sent[2], fourth] {
        assert_eq!(
            next_message(&mut resumed).await.id,
            want,
            "a resume as ever"
        );
    }

    let plain = ch("plain");
    publish(&a, &plain, "old").await;
    let mut sub = b.subscriber(64);
    sub.subscribe(plain.clone(), Since::Live)
        .await
        .expect("subscribe");
    let empty = ch("live:empty");
    let page = b.engine.latest(&empty).await.expect("latest");
    assert!(page.messages.is_empty() && page.last_id.is_none());
    let done = sub
        .subscribe(empty.clone(), Since::Live)
        .await
        .expect("subscribe");
    assert_eq!((done.position, done.gap), (None, false));

    let brief = ch("live:brief:status");
    publish(&a, &brief, "soon gone").await;
    eventually("the message to age out", || async {
        let page = b.engine.latest(&brief).await.expect("latest");
        page.messages.is_empty().then_some(())
    })
    .await;
    let done = sub
        .subscribe(brief.clone(), Since::Live)
        .await
        .expect("subscribe");
    assert!(!done.gap, "an aged-out latest is no gap");
    let next_plain = publish(&a, &plain, "new").await;
    assert_eq!(
        next_message(&mut sub).await.id,
        next_plain,
        "nothing came first on any of the three"
    );
}

/// The resume rule of [`crate::history`]: continuous from a retained id,
/// the newest id or the last trimmed id; a gap (then everything retained
/// after it) from anything else, an id newer than the newest included.
pub async fn resume_follows_the_gap_rule(backend: &dyn Backend) {
    let [a, b] = backend.pair(sized(3, Duration::from_secs(600))).await;
    let c = ch("resume");
    let elsewhere = publish(&a, &ch("elsewhere"), "not c's").await;
    let mut sent = Vec::new();
    for n in 0..5 {
        sent.push(publish(&a, &c, &format!("m{n}")).await);
    }
    let kept = &sent[2..];

    let page = history(&b, &c, Since::After(sent[3])).await;
    assert!(!page.gap, "a retained id");
    assert_eq!(ids(&page.messages), [sent[4]]);
    let page = history(&b, &c, Since::After(sent[4])).await;
    assert!(!page.gap && page.messages.is_empty(), "the newest id");
    assert_eq!(page.last_id, Some(sent[4]));
    let page = history(&b, &c, Since::After(sent[1])).await;
    assert!(!page.gap, "the last trimmed id loses nothing");
    assert_eq!(ids(&page.messages), kept);
    let page = history(&b, &c, Since::After(sent[0])).await;
    assert!(page.gap, "message 1 was trimmed away");
    assert_eq!(ids(&page.messages), kept);
    let page = history(&b, &c, Since::After(elsewhere)).await;
    assert!(page.gap, "an id this channel never had");
    assert_eq!(ids(&page.messages), kept);
    let future = MessageId::new(u64::MAX, u64::MAX);
    let page = history(&b, &c, Since::After(future)).await;
    assert!(page.gap, "an id newer than the newest");
    assert_eq!(ids(&page.messages), kept, "then everything retained");
    let page = history(&b, &c, Since::Live).await;
    assert!(page.messages.is_empty() && !page.gap);
    assert_eq!(page.last_id, Some(sent[4]));

    let unknown = ch("never-published");
    let page = history(&b, &unknown, Since::After(sent[0])).await;
    assert!(page.gap && page.messages.is_empty() && page.last_id.is_none());
    assert!(!history(&b, &unknown, Since::Earliest).await.gap);
    assert_eq!(
        b.engine.stats(&unknown).await.expect("stats"),
        Default::default()
    );

    // A subscriber resuming from a retained id on the other node gets
    // exactly the later messages.
    let mut exact = b.subscriber(64);
    let done = exact
        .subscribe(c.clone(), Since::After(sent[2]))
        .await
        .expect("subscribe");
    assert!(!done.gap);
    assert_eq!(done.replayed, 2);
    for id in &sent[3..] {
        assert_eq!(next_message(&mut exact).await.id, *id);
    }
    assert!(exact.try_next().is_none());
    drop(exact);

    // A subscriber resuming across the gap is told, then gets the rest.
    let mut sub = b.subscriber(64);
    let done = sub
        .subscribe(c.clone(), Since::After(sent[0]))
        .await
        .expect("subscribe");
    assert!(done.gap);
    assert_eq!(done.replayed, 3);
    assert!(matches!(next(&mut sub).await, Item::Gap(g) if g == c));
    for id in kept {
        assert_eq!(next_message(&mut sub).await.id, *id);
    }
    let live = publish(&a, &c, "live").await;
    assert_eq!(next_message(&mut sub).await.id, live, "then live, no loss");
}

/// Removing a channel drops its history and closes its subscribers on
/// every node with `CHANNEL_DELETED`.
pub async fn remove_drops_history_and_closes_subscribers(backend: &dyn Backend) {
    let [a, b] = backend.pair(Namespaces::default()).await;
    let c = ch("doomed");
    let id = publish(&a, &c, "last words").await;
    let mut sub = b.subscriber(64);
    sub.subscribe(c.clone(), Since::Live)
        .await
        .expect("subscribe");
    a.engine.remove(&c).await.expect("remove");
    match next(&mut sub).await {
        Item::Closed(closed, why) => assert_eq!((closed, why), (c.clone(), CHANNEL_DELETED)),
        other => panic!("expected the channel to close, got {other:?}"),
    }
    let page = history(&b, &c, Since::After(id)).await;
    assert!(page.gap && page.messages.is_empty());
    assert_eq!(b.engine.stats(&c).await.expect("stats").messages, 0);
}

/// A join is listed on every node (with what the token carried) and
/// announced to subscribers; a leave takes it out again.
pub async fn presence_entries_come_and_go_with_notices(backend: &dyn Backend) {
    let [a, b] = backend.pair(Namespaces::default()).await;
    let room = ch("room");
    let mut watcher = b.subscriber(64);
    watcher
        .subscribe(room.clone(), Since::Live)
        .await
        .expect("subscribe");
    let info = serde_json::json!({"name": "Ann", "id": 12345678901234567_u64});
    let ann = ClientInfo {
        info: Some(Arc::new(info.clone())),
        ..client("ann-1", "ann")
    };
    let bob = client("bob-1", "bob");

    a.engine
        .presence_join(&room, &ann, true)
        .await
        .expect("join");
    expect_notice(&mut watcher, NoticeKind::Join, "ann").await;
    b.engine
        .presence_join(&room, &bob, false)
        .await
        .expect("join");
    for node in [&a, &b] {
        let entries = node.engine.presence(&room).await.expect("presence");
        assert_eq!(users(&entries), ["ann", "bob"]);
        let entry = entries
            .iter()
            .find(|e| e.user.as_deref() == Some("ann"))
            .expect("ann is present");
        assert_eq!(entry.info.as_deref(), Some(&info));
        assert_eq!(entry.client, ann.client);
    }
    // Joining again changes nothing.
    a.engine
        .presence_join(&room, &ann, false)
        .await
        .expect("join");
    assert_eq!(present(&b, &room).await, ["ann", "bob"]);

    a.engine.presence_leave(&room, &ann, true);
    expect_notice(&mut watcher, NoticeKind::Leave, "ann").await;
    eventually("ann to leave presence", || async {
        (present(&b, &room).await == ["bob"]).then_some(())
    })
    .await;
    b.engine.presence_leave(&room, &bob, false);
    eventually("bob to leave presence", || async {
        present(&a, &room).await.is_empty().then_some(())
    })
    .await;
    assert!(watcher.try_next().is_none(), "no notice without `notify`");
    assert!(present(&a, &ch("empty-room")).await.is_empty());
}

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

/// An absent user's queue keeps the newest `history_size` messages, hands
/// them over once, oldest first, on any node, and says when it dropped some.
pub async fn user_queue_is_bounded_and_reports_its_gap(backend: &dyn Backend) {
    let [a, b] = backend.pair(sized(2, Duration::from_secs(600))).await;
    let me = user_channel("7").expect("valid");
    let mut sent = Vec::new();
    for n in 0..3 {
        let done = a
            .engine
            .publish_to_user(&me, text(&format!("m{n}")))
            .await
            .expect("publish to user");
        assert!(done.queued, "nobody follows {me}");
        sent.push(done.published.message);
    }
    let taken = b.engine.take_user_queue(&me).await.expect("take");
    assert!(taken.gap, "the oldest was dropped: a gap");
    assert_eq!(ids(&taken.messages), ids(&sent[1..]), "the newest two");
    for (got, want) in taken.messages.iter().zip(&sent[1..]) {
        assert_eq!((&got.payload, got.time_ms), (&want.payload, want.time_ms));
        assert_eq!(got.channel, me);
    }
    let again = a.engine.take_user_queue(&me).await.expect("take");
    assert!(again.messages.is_empty() && !again.gap, "taken once");

    // Within the bound: no gap.
    let one = a
        .engine
        .publish_to_user(&me, text("one"))
        .await
        .expect("publish to user");
    let taken = b.engine.take_user_queue(&me).await.expect("take");
    assert_eq!(ids(&taken.messages), [one.published.message.id]);
    assert!(!taken.gap);
}

/// Queued messages older than `history_ttl` are dropped, and that is a gap,
/// told once.
pub async fn user_queue_drops_aged_messages_as_a_gap(backend: &dyn Backend) {
    let [a, b] = backend.pair(sized(100, Duration::from_millis(500))).await;
    let me = user_channel("8").expect("valid");
    let done = a
        .engine
        .publish_to_user(&me, text("stale"))
        .await
        .expect("publish to user");
    assert!(done.queued);
    // The queue ages by the same clock and limit as the channel's history.
    eventually("the message to age out", || async {
        history(&b, &me, Since::Earliest)
            .await
            .messages
            .is_empty()
            .then_some(())
    })
    .await;
    let aged = b.engine.take_user_queue(&me).await.expect("take");
    assert!(aged.messages.is_empty(), "older than the history TTL");
    assert!(aged.gap, "messages that aged out are a gap");
    let again = a.engine.take_user_queue(&me).await.expect("take");
    assert!(!again.gap, "the gap is told once");
}

/// A user connected on any node gets the message live; nothing is queued.
pub async fn user_queue_is_skipped_while_the_user_is_connected(backend: &dyn Backend) {
    let [a, b] = backend.pair(Namespaces::default()).await;
    let me = user_channel("42").expect("valid");
    let away = a
        .engine
        .publish_to_user(&me, text("while away"))
        .await
        .expect("publish to user");
    assert!(away.queued);
    let mut sub = b.subscriber_for(8, client("c-42", "42"));
    let done = sub
        .subscribe(me.clone(), Since::Live)
        .await
        .expect("subscribe");
    assert_eq!(done.replayed, 1, "the queue is handed over on subscribe");
    assert_eq!(next_message(&mut sub).await.id, away.published.message.id);

    let live = a
        .engine
        .publish_to_user(&me, text("live"))
        .await
        .expect("publish to user");
    assert!(!live.queued);
    assert_eq!(next_message(&mut sub).await.id, live.published.message.id);
    let left = b.engine.take_user_queue(&me).await.expect("take");
    assert!(left.messages.is_empty() && !left.gap);
}

/// `disconnect_user` closes every connection of that user, on every node,
/// with the code given; other users stay.
pub async fn disconnect_user_closes_only_that_user(backend: &dyn Backend) {
    let [a, b] = backend.pair(Namespaces::default()).await;
    let mut on_b = b.subscriber_for(8, client("c-1", "7"));
    let mut on_a = a.subscriber_for(8, client("c-2", "7"));
    let mut bystander = b.subscriber_for(8, client("c-3", "8"));
    on_b.subscribe(ch("news"), Since::Live)
        .await
        .expect("subscribe");
    bystander
        .subscribe(ch("news"), Since::Live)
        .await
        .expect("subscribe");
    let user = user_channel("7").expect("valid");
    a.engine
        .disconnect_user(&user, TOKEN_EXPIRED)
        .await
        .expect("disconnect");
    for sub in [&mut on_b, &mut on_a] {
        assert!(
            matches!(next(sub).await, Item::Disconnect(d) if d == TOKEN_EXPIRED),
            "the code travels"
        );
    }
    b.engine
        .disconnect_user(&user, FORCED)
        .await
        .expect("disconnect");
    assert!(matches!(next(&mut on_b).await, Item::Disconnect(d) if d == FORCED));
    assert!(bystander.try_next().is_none(), "other users stay");
}

/// One winner per key across nodes, until the key's TTL passes.
pub async fn claim_once_has_one_winner(backend: &dyn Backend) {
    let [a, b] = backend.pair(Namespaces::default()).await;
    let claim = |node: &Node, key: &'static str, ttl_ms: u64| {
        let engine = Arc::clone(&node.engine);
        async move { engine.claim_once(key, ttl_ms).await.expect("claim") }
    };
    assert!(claim(&a, "ticket-1", 60_000).await);
    assert!(
        !claim(&b, "ticket-1", 60_000).await,
        "used on the other node"
    );
    assert!(!claim(&a, "ticket-1", 60_000).await, "used here");
    assert!(claim(&b, "ticket-2", 60_000).await, "another key");

    assert!(claim(&a, "brief", 1_000).await);
    assert!(!claim(&b, "brief", 1_000).await, "not yet expired");
    eventually("the claim to expire", || async {
        claim(&b, "brief", 1_000).await.then_some(())
    })
    .await;
    assert!(claim(&a, "zero", 0).await, "a zero TTL still claims");
}

/// The same key on the same channel within the window is a duplicate with
/// the earlier id and time, stored and delivered once; on another channel
/// it is a new message.
pub async fn idempotent_publish_stores_once_per_channel(backend: &dyn Backend) {
    let [a, b] = backend.pair(Namespaces::default()).await;
    let (c, other) = (ch("orders"), ch("refunds"));
    let mut sub = b.subscriber(8);
    sub.subscribe(c.clone(), Since::Live)
        .await
        .expect("subscribe");
    let first = a
        .engine
        .publish_idempotent(&c, text("pay"), "order-1", 60_000)
        .await
        .expect("publish");
    assert!(!first.duplicate);
    let again = b
        .engine
        .publish_idempotent(&c, text("pay"), "order-1", 60_000)
        .await
        .expect("publish");
    assert!(again.duplicate, "the same key on the same channel");
    assert_eq!(
        (again.message.id, again.message.time_ms),
        (first.message.id, first.message.time_ms)
    );
    let elsewhere = a
        .engine
        .publish_idempotent(&other, text("pay"), "order-1", 60_000)
        .await
        .expect("publish");
    assert!(!elsewhere.duplicate, "another channel, another message");
    let next_key = a
        .engine
        .publish_idempotent(&c, text("pay more"), "order-2", 60_000)
        .await
        .expect("publish");
    assert!(!next_key.duplicate);

    let stored = history(&a, &c, Since::Earliest).await;
    assert_eq!(
        ids(&stored.messages),
        [first.message.id, next_key.message.id]
    );
    assert_eq!(
        ids(&history(&b, &other, Since::Earliest).await.messages),
        [elsewhere.message.id]
    );
    assert_eq!(next_message(&mut sub).await.id, first.message.id);
    assert_eq!(
        next_message(&mut sub).await.id,
        next_key.message.id,
        "the duplicate was not delivered"
    );
}

/// At most `max` places are held at once across nodes; a dropped slot gives
/// its place back.
pub async fn subscriber_slots_honour_max_and_come_back(backend: &dyn Backend) {
    let [a, b] = backend.pair(Namespaces::default()).await;
    let c = ch("places");
    let claim = |node: &Node| {
        let engine = Arc::clone(&node.engine);
        let c = c.clone();
        async move { engine.claim_subscriber_slot(&c, 2).await.expect("claim") }
    };
    let one = claim(&a).await.expect("a first place");
    let two = claim(&b).await.expect("a second place");
    assert!(claim(&a).await.is_none(), "the limit holds on a");
    assert!(claim(&b).await.is_none(), "the limit holds on b");
    drop(one);
    let three = eventually("the released place to come back", || claim(&b)).await;
    assert!(claim(&a).await.is_none(), "full again");
    drop((two, three));
    let (x, y) = (
        eventually("a place", || claim(&a)).await,
        eventually("another place", || claim(&b)).await,
    );
    assert!(claim(&a).await.is_none());
    drop((x, y));
}

/// A node's own subscribers count at once, in `subscriber_count` and in a
/// publish's answer (how fresh other nodes' counts are is engine-specific).
pub async fn subscriber_count_is_live_for_this_node(backend: &dyn Backend) {
    let [a, _] = backend.pair(Namespaces::default()).await;
    let c = ch("counted");
    let count = || async { a.engine.subscriber_count(&c).await.expect("count") };
    assert_eq!(count().await, 0);
    let mut subs = Vec::new();
    for _ in 0..2 {
        let mut s = a.subscriber(8);
        s.subscribe(c.clone(), Since::Live)
            .await
            .expect("subscribe");
        subs.push(s);
    }
    assert_eq!(count().await, 2);
    let done = a.engine.publish(&c, text("hi")).await.expect("publish");
    assert_eq!(done.subscribers, 2, "the publish answer counts them");
    subs.pop();
    assert_eq!(count().await, 1, "an unsubscribe counts at once");
}

/// Every node's occupied channels are listed by prefix (another node's
/// within a few seconds: as fresh as its counts), and a channel that lost
/// its last subscriber leaves the list.
pub async fn occupied_channels_are_listed_across_nodes(backend: &dyn Backend) {
    let [a, b] = backend.pair(Namespaces::default()).await;
    let _sweeps = sweeping(&[a.clone(), b.clone()]);
    let list = |prefix: &'static str| {
        let a = a.clone();
        async move {
            a.engine
                .occupied_channels(prefix, 100)
                .await
                .expect("list")
                .iter()
                .map(|c| c.as_str().to_string())
                .collect::<Vec<_>>()
        }
    };
    let mut here = a.subscriber(8);
    here.subscribe(ch("listed:a"), Since::Live)
        .await
        .expect("subscribe");
    let mut there = b.subscriber(8);
    there
        .subscribe(ch("listed:b"), Since::Live)
        .await
        .expect("subscribe");
    let mut other = b.subscriber(8);
    other
        .subscribe(ch("unlisted:c"), Since::Live)
        .await
        .expect("subscribe");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = list("listed:").await;
        if got == ["listed:a", "listed:b"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "listed:a and listed:b, sorted, nothing else; got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        a.engine
            .occupied_channels("listed:", 1)
            .await
            .expect("list")
            .len(),
        1,
        "at most max"
    );
    drop(there);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while list("listed:").await != ["listed:a"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listed:b left the list"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mailbox_sized(size: usize, ttl: Duration) -> Namespaces {
    Namespaces::new(
        ChannelOptions {
            mailbox_size: size,
            mailbox_ttl: ttl,
            ..ChannelOptions::default()
        },
        Vec::new(),
    )
}

async fn to_mailbox(node: &Node, channel: &ChannelName, body: &str) -> Arc<Message> {
    let done = node
        .engine
        .publish_to_mailbox(channel, text(body))
        .await
        .expect("publish to mailbox");
    assert!(done.published.message.ack, "marked as one to acknowledge");
    done.published.message
}

async fn subscribed_user(node: &Node, user: &str, since: Since) -> Subscriber {
    let mut sub = node.subscriber_for(32, client(&format!("c-{user}"), user));
    sub.subscribe(user_channel(user).expect("valid"), since)
        .await
        .expect("subscribe");
    sub
}

/// A message to acknowledge reaches every connection of the user, on every
/// node, and comes again, in order with its id, to every later subscribe,
/// whatever its resume point, until a client on any node acknowledges it.
pub async fn mailbox_keeps_messages_until_acknowledged(backend: &dyn Backend) {
    let [a, b] = backend.pair(Namespaces::default()).await;
    let me = user_channel("mb1").expect("valid");
    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(to_mailbox(&a, &me, &format!("m{n}")).await);
    }
    let state = b.engine.mailbox_state(&me).await.expect("state");
    assert_eq!(state.pending, 3);
    assert_eq!(state.oldest.map(|o| o.0), Some(sent[0].id));
    // Two connections, two nodes: each gets all three, marked.
    let mut on_b = subscribed_user(&b, "mb1", Since::Live).await;
    let mut on_a = subscribed_user(&a, "mb1", Since::After(sent[2].id)).await;
    for sub in [&mut on_b, &mut on_a] {
        for want in &sent {
            let got = next_message(sub).await;
            assert_eq!((got.id, got.ack), (want.id, true));
            assert_eq!(got.payload, want.payload);
        }
    }
    // Live ones reach both, marked.
    let live = to_mailbox(&b, &me, "live").await;
    for sub in [&mut on_b, &mut on_a] {
        let got = next_message(sub).await;
        assert_eq!((got.id, got.ack), (live.id, true));
    }
    // One acknowledgement on a node removes it for everyone.
    let acked = a
        .engine
        .ack(&me, &Ack::Ids(vec![sent[1].id]))
        .await
        .expect("ack");
    assert_eq!(
        acked,
        Acked {
            removed: 1,
            pending: 3
        }
    );
    let mut again = subscribed_user(&b, "mb1", Since::Live).await;
    for want in [&sent[0], &sent[2], &live] {
        assert_eq!(next_message(&mut again).await.id, want.id);
    }
    let acked = b
        .engine
        .ack(&me, &Ack::UpTo(sent[2].id))
        .await
        .expect("ack");
    assert_eq!(
        acked,
        Acked {
            removed: 2,
            pending: 1
        }
    );
    let acked = a.engine.ack(&me, &Ack::UpTo(live.id)).await.expect("ack");
    assert_eq!(
        acked,
        Acked {
            removed: 1,
            pending: 0
        }
    );
    let state = a.engine.mailbox_state(&me).await.expect("state");
    assert_eq!((state.pending, state.oldest, state.gap), (0, None, false));
    let read = b.engine.read_mailbox(&me).await.expect("read");
    assert!(read.messages.is_empty() && !read.gap);
}

/// Past `mailbox_size` the oldest pending message is dropped: a subscriber
/// there hears of the gap before the new message; with no one there the
/// next read of the mailbox carries the gap, once.
pub async fn mailbox_overflow_drops_the_oldest_as_a_gap(backend: &dyn Backend) {
    let [a, b] = backend
        .pair(mailbox_sized(2, Duration::from_secs(600)))
        .await;
    let me = user_channel("mb2").expect("valid");
    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(to_mailbox(&a, &me, &format!("m{n}")).await);
    }
    let read = b.engine.read_mailbox(&me).await.expect("read");
    assert!(read.gap, "the oldest was dropped unheard");
    assert_eq!(ids(&read.messages), ids(&sent[1..]));
    let read = a.engine.read_mailbox(&me).await.expect("read");
    assert!(!read.gap, "the gap is told once");
    assert_eq!(read.messages.len(), 2, "reading removes nothing");

    let mut sub = subscribed_user(&b, "mb2", Since::Live).await;
    for want in &sent[1..] {
        assert_eq!(next_message(&mut sub).await.id, want.id);
    }
    let newest = to_mailbox(&a, &me, "over").await;
    match next(&mut sub).await {
        Item::Gap(channel) => assert_eq!(channel, me),
        other => panic!("expected the gap first, got {other:?}"),
    }
    assert_eq!(next_message(&mut sub).await.id, newest.id);
    let state = a.engine.mailbox_state(&me).await.expect("state");
    assert_eq!(state.pending, 2);
    assert!(!state.gap, "heard live: nothing kept");
}

/// A message pending longer than `mailbox_ttl` is dropped by the sweep and
/// that is a gap for the next read.
pub async fn mailbox_expiry_drops_pending_messages_as_a_gap(backend: &dyn Backend) {
    let [a, b] = backend
        .pair(mailbox_sized(10, Duration::from_millis(300)))
        .await;
    let me = user_channel("mb3").expect("valid");
    to_mailbox(&a, &me, "stale").await;
    eventually("the pending message to expire", || async {
        let now = crate::engine::now_ms();
        a.engine.sweep(now);
        b.engine.sweep(now);
        let state = b.engine.mailbox_state(&me).await.expect("state");
        (state.pending == 0).then_some(())
    })
    .await;
    let read = a.engine.read_mailbox(&me).await.expect("read");
    assert!(read.messages.is_empty());
    assert!(read.gap, "an expired message is a gap");
}

// ---------------------------------------------------------------------------
// Events for webhooks
// ---------------------------------------------------------------------------

/// Calls both nodes' sweep every 50 ms (as the server does once a second)
/// until dropped.
struct Sweeping(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Sweeping {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

fn sweeping(nodes: &[Node]) -> Sweeping {
    Sweeping(
        nodes
            .iter()
            .map(|n| {
                let engine = Arc::clone(&n.engine);
                tokio::spawn(async move {
                    loop {
                        engine.sweep(crate::engine::now_ms());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
            })
            .collect(),
    )
}

fn event_options(events: &[&str], grace_ms: u64) -> EventOptions {
    EventOptions {
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        grace: Duration::from_millis(grace_ms),
        ..EventOptions::default()
    }
}

/// The outbox's events (as JSON), oldest first, each with its id.
async fn outbox(node: &Node) -> Vec<(String, serde_json::Value)> {
    node.engine
        .pending_events(10_000)
        .await
        .expect("pending events")
        .into_iter()
        .map(|e| {
            let v = serde_json::from_str(&e.json)
                .unwrap_or_else(|err| panic!("event {} is not JSON ({err}): {}", e.id, e.json));
            (e.id, v)
        })
        .collect()
}

/// `(event, name)` of each event in the outbox, e.g. `("user.online", "ann")`.
async fn happenings(node: &Node) -> Vec<(String, String)> {
    outbox(node)
        .await
        .into_iter()
        .map(|(_, v)| {
            let name = v["user"].as_str().or(v["channel"].as_str()).unwrap_or("");
            (
                v["event"].as_str().unwrap_or("").to_owned(),
                name.to_owned(),
            )
        })
        .collect()
}

/// Waits until the outbox holds exactly `want` (events and names).
async fn outbox_becomes(node: &Node, want: &[(&str, &str)]) {
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(e, n)| ((*e).to_owned(), (*n).to_owned()))
        .collect();
    eventually(&format!("the outbox to hold {want:?}"), || async {
        let got = happenings(node).await;
        assert!(
            got.len() <= want.len() && got[..] == want[..got.len()],
            "the outbox holds {got:?}, expected (a beginning of) {want:?}"
        );
        (got == want).then_some(())
    })
    .await;
}

/// A user's first connection, on either node, records `user.online` once;
/// the last one's departure records `user.offline` once the grace has
/// passed, dated when it left.
pub async fn a_user_goes_online_and_offline_once_across_nodes(backend: &dyn Backend) {
    let options = event_options(&[USER_ONLINE, USER_OFFLINE], 300);
    let [a, b] = backend
        .pair_with_events(Namespaces::default(), Some(options))
        .await;
    let _sweeps = sweeping(&[a.clone(), b.clone()]);
    let on_a = a.subscriber_for(8, client("c1", "ann"));
    outbox_becomes(&a, &[(USER_ONLINE, "ann")]).await;
    let on_b = b.subscriber_for(8, client("c2", "ann"));
    let also_a = a.subscriber_for(8, client("c3", "ann"));
    drop(on_a);
    drop(also_a);
    // Held on b all along: nothing yet. Then the last one leaves.
    let before = crate::engine::now_ms();
    drop(on_b);
    outbox_becomes(&b, &[(USER_ONLINE, "ann"), (USER_OFFLINE, "ann")]).await;
    let events = outbox(&a).await;
    let left = events[1].1["time_ms"].as_u64().expect("time_ms");
    // Redis' clock may run a little apart from this process's.
    assert!(
        left + 1_000 >= before,
        "offline is dated when the user left: {left} vs {before}"
    );
    let ids: Vec<MessageId> = events
        .iter()
        .map(|(id, _)| id.parse().expect("an id like ms-seq"))
        .collect();
    assert!(ids[0] < ids[1], "ids grow in outbox order: {ids:?}");
}

/// A user who leaves and comes back (on another node) within the grace
/// makes no offline/online pair: the next offline is that of the later
/// departure.
pub async fn a_user_back_within_the_grace_makes_no_event_pair(backend: &dyn Backend) {
    let options = event_options(&[USER_ONLINE, USER_OFFLINE], 1_500);
    let [a, b] = backend
        .pair_with_events(Namespaces::default(), Some(options))
        .await;
    let _sweeps = sweeping(&[a.clone(), b.clone()]);
    let first = a.subscriber_for(8, client("c1", "bob"));
    outbox_becomes(&a, &[(USER_ONLINE, "bob")]).await;
    drop(first);
    let back = b.subscriber_for(8, client("c2", "bob"));
    // Past the grace of the flap, still held: then the real departure.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        happenings(&a).await,
        [(USER_ONLINE.to_owned(), "bob".to_owned())],
        "a flap within the grace is silent"
    );
    drop(back);
    outbox_becomes(&a, &[(USER_ONLINE, "bob"), (USER_OFFLINE, "bob")]).await;
}

/// A user's first presence entry on a channel (either node, any of its
/// connections) records `channel.member_added` once; the last entry's end
/// records `channel.member_removed` after the grace; a flap within the
/// grace, even onto the other node, is silent.
pub async fn members_are_added_and_removed_once_across_nodes(backend: &dyn Backend) {
    let options = event_options(&[MEMBER_ADDED, MEMBER_REMOVED], 1_000);
    let [a, b] = backend
        .pair_with_events(Namespaces::default(), Some(options))
        .await;
    let _sweeps = sweeping(&[a.clone(), b.clone()]);
    let room = ch("presence-room");
    let members = |node: Node| async move {
        outbox(&node)
            .await
            .into_iter()
            .map(|(_, v)| {
                (
                    v["event"].as_str().unwrap_or("").to_owned(),
                    v["channel"].as_str().unwrap_or("").to_owned(),
                    v["user"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    let added = (
        MEMBER_ADDED.to_owned(),
        "presence-room".to_owned(),
        "d \"1\"".to_owned(),
    );
    // A user id from a Pusher app's channel_data may be any string.
    let one = client("c1", "d \"1\"");
    let two = client("c2", "d \"1\"");
    a.engine
        .presence_join(&room, &one, false)
        .await
        .expect("join");
    eventually("member_added", || async {
        (members(a.clone()).await == [added.clone()]).then_some(())
    })
    .await;
    b.engine
        .presence_join(&room, &two, false)
        .await
        .expect("join");
    a.engine.presence_leave(&room, &one, false);
    // Back on a within the grace, then the b entry goes: still held.
    let three = client("c3", "d \"1\"");
    a.engine
        .presence_join(&room, &three, false)
        .await
        .expect("join");
    b.engine.presence_leave(&room, &two, false);
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    assert_eq!(
        members(b.clone()).await,
        std::slice::from_ref(&added),
        "no event for a flap"
    );
    a.engine.presence_leave(&room, &three, false);
    let removed = (
        MEMBER_REMOVED.to_owned(),
        "presence-room".to_owned(),
        "d \"1\"".to_owned(),
    );
    eventually("member_removed", || async {
        let got = members(b.clone()).await;
        assert!(got.len() <= 2, "{got:?}");
        (got == [added.clone(), removed.clone()]).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(members(a.clone()).await.len(), 2, "removed once");
}

/// A channel's first subscriber (either node) records `channel.occupied`,
/// its last one's departure `channel.vacated` after the grace; a personal
/// channel is a user, never a channel.
pub async fn channels_are_occupied_and_vacated_once_but_personal_ones_are_not(
    backend: &dyn Backend,
) {
    let options = event_options(&[CHANNEL_OCCUPIED, CHANNEL_VACATED], 200);
    let [a, b] = backend
        .pair_with_events(Namespaces::default(), Some(options))
        .await;
    let _sweeps = sweeping(&[a.clone(), b.clone()]);
    let room = ch("room");
    let mine = user_channel("cy").expect("valid");
    let mut on_a = a.subscriber_for(8, client("c1", "cy"));
    on_a.subscribe(room.clone(), Since::Live)
        .await
        .expect("subscribe on a");
    on_a.subscribe(mine.clone(), Since::Live)
        .await
        .expect("subscribe to the personal channel");
    outbox_becomes(&a, &[(CHANNEL_OCCUPIED, "room")]).await;
    let mut on_b = b.subscriber(8);
    on_b.subscribe(room.clone(), Since::Live)
        .await
        .expect("subscribe on b");
    assert!(on_a.unsubscribe(&room));
    drop(on_a);
    drop(on_b);
    outbox_becomes(&b, &[(CHANNEL_OCCUPIED, "room"), (CHANNEL_VACATED, "room")]).await;
}

/// Any engine code may append an event; events keep the order they were
/// recorded in (ids grow), from both nodes, stay until done, and an event
/// not configured is not recorded.
pub async fn recorded_events_keep_their_order_until_done(backend: &dyn Backend) {
    let options = event_options(&["test.one", "test.two"], 100);
    let [a, b] = backend
        .pair_with_events(Namespaces::default(), Some(options))
        .await;
    for n in 0..6_u64 {
        let node = if n % 2 == 0 { &a } else { &b };
        let mut fields = serde_json::Map::new();
        fields.insert("n".to_owned(), n.into());
        fields.insert("ids".to_owned(), serde_json::json!(["1-1", "1-2"]));
        node.engine
            .record_event("test.one", fields)
            .await
            .expect("record");
        node.engine
            .record_event("test.unlisted", serde_json::Map::new())
            .await
            .expect("record");
    }
    let events = outbox(&a).await;
    let ns: Vec<u64> = events
        .iter()
        .map(|(_, v)| v["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(ns, [0, 1, 2, 3, 4, 5], "{events:?}");
    assert!(events.iter().all(|(_, v)| v["event"] == "test.one"
        && v["ids"] == serde_json::json!(["1-1", "1-2"])
        && v["time_ms"].as_u64().is_some()));
    let ids: Vec<MessageId> = events
        .iter()
        .map(|(id, _)| id.parse().expect("an id like ms-seq"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    let first_three: Vec<String> = events.iter().take(3).map(|(id, _)| id.clone()).collect();
    b.engine.events_done(&first_three).await.expect("done");
    let rest: Vec<u64> = outbox(&a)
        .await
        .iter()
        .map(|(_, v)| v["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(rest, [3, 4, 5]);
    assert_eq!(b.engine.outbox_stats().await.expect("stats").len, 3);
    let counted: u64 = a
        .engine
        .recorded_events()
        .iter()
        .chain(b.engine.recorded_events().iter())
        .filter(|(e, _)| e == "test.one")
        .map(|(_, n)| n)
        .sum();
    // One engine counted twice (memory: both nodes are one) or each its own.
    assert!(counted == 6 || counted == 12, "counted {counted}");
}
