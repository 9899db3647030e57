//! The node: the one subscription API every transport uses.
//!
//! A transport makes one [`Subscriber`] per connection, subscribes it to
//! channels (with a resume point) and then just writes out whatever
//! [`Subscriber::next`] yields. Resume, gaps, ordering and de-duplication are
//! decided here, once, for every transport:
//!
//! 1. the connection is added to the hub first, so live messages start
//!    queuing;
//! 2. the engine is told to follow the channel, then asked for history after
//!    the resume point;
//! 3. the gap notice (if any) and the history are yielded first, then the
//!    queue, skipping anything at or before the last id already yielded for
//!    that channel. Ids grow per channel, so nothing is lost or repeated at
//!    the seam between history and live messages.
//!
//! A subscribe without a resume point, in a namespace with
//! `latest_on_subscribe`, also opens with the channel's newest retained
//! message ([`Item::Latest`]): it comes in the one read that a live
//! subscribe makes anyway (the channel's newest id, before following), and
//! is yielded like history, before the queue; a resume is answered as
//! above, without it.
//!
//! A connection whose transport installed a [`DirectWriter`] and that
//! follows one channel is armed while it waits in [`Subscriber::next`] with
//! nothing to yield: the hub then writes that channel's messages to its
//! socket itself (see [`crate::hub`]). Leaving `next` (an item, or the
//! future dropped because another `select!` branch won) disarms and takes
//! the channel's position back, so the rules above hold for both paths.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::channel::ChannelName;
use crate::disconnect::{Disconnect, SLOW_CONSUMER, TOKEN_EXPIRED};
use crate::engine::{Engine, EngineError, SubscriberSlot};
use crate::hub::{DirectWriter, Event, Hub, Inbox, Outbox};
use crate::id::{MessageId, Since};
use crate::message::Message;
use crate::namespace::Namespaces;
use crate::presence::{ClientInfo, Notice};
use crate::user::{channel_user, user_channel};

/// The pieces shared by every connection of one server process.
#[derive(Clone)]
pub struct Node {
    pub hub: Arc<Hub>,
    pub engine: Arc<dyn Engine>,
    pub namespaces: Arc<Namespaces>,
}

impl Node {
    pub fn new(hub: Arc<Hub>, engine: Arc<dyn Engine>, namespaces: Arc<Namespaces>) -> Self {
        Self {
            hub,
            engine,
            namespaces,
        }
    }

    /// An in-memory node: the embedded default.
    pub fn memory(namespaces: Namespaces) -> Self {
        Self::memory_with_events(namespaces, None)
    }

    /// An in-memory node recording `events` for webhooks (or none).
    pub fn memory_with_events(
        namespaces: Namespaces,
        events: Option<crate::event::EventOptions>,
    ) -> Self {
        let hub = Arc::new(Hub::new());
        let namespaces = Arc::new(namespaces);
        let engine = Arc::new(crate::engine::MemoryEngine::with_events(
            Arc::clone(&hub),
            Arc::clone(&namespaces),
            events,
        ));
        Self::new(hub, engine, namespaces)
    }

    /// An anonymous connection's subscription state with a queue of
    /// `queue_capacity` events.
    pub fn subscriber(&self, queue_capacity: usize) -> Subscriber {
        self.subscriber_for(queue_capacity, ClientInfo::default())
    }

    /// A connection's subscription state, for a known client.
    pub fn subscriber_for(&self, queue_capacity: usize, client: ClientInfo) -> Subscriber {
        let user = client.user.as_deref().and_then(|u| user_channel(u).ok());
        let (outbox, rx) = self.hub.user_outbox(queue_capacity, user);
        let client = if client.client.is_empty() {
            ClientInfo {
                client: Arc::from(format!("c{}", outbox.id())),
                ..client
            }
        } else {
            client
        };
        Subscriber {
            node: self.clone(),
            outbox,
            rx,
            client,
            channels: HashMap::new(),
            slots: Vec::new(),
            pending: VecDeque::new(),
            deadline: None,
        }
    }
}

/// What a subscriber is given to send to its client.
#[derive(Debug, Clone)]
pub enum Item {
    Message(Arc<Message>),
    /// The channel's newest retained message, which a subscribe without a
    /// resume point opens with where the namespace has
    /// `latest_on_subscribe`: sent before the live messages and marked as
    /// such by every wire format (it was published before the client came).
    /// Its id is the subscription's position, so nothing is sent twice.
    Latest(Arc<Message>),
    /// Messages may be missing before the next message of this channel.
    Gap(ChannelName),
    /// The channel ended for this connection (it is no longer subscribed).
    Closed(ChannelName, Disconnect),
    /// The connection must close.
    Disconnect(Disconnect),
    /// Someone joined or left a channel the connection follows.
    Notice(Arc<Notice>),
}

/// The outcome of a subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// Whether the resume point could not be honoured without loss.
    pub gap: bool,
    /// History messages queued for delivery.
    pub replayed: usize,
    /// The subscription's position: the last id it has yielded or skipped.
    /// A client that resumes from here later loses nothing.
    pub position: Option<MessageId>,
}

/// Why a subscribe failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubscribeError {
    #[error("already subscribed to {0}")]
    AlreadySubscribed(ChannelName),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// One connection's subscriptions and queue.
pub struct Subscriber {
    node: Node,
    outbox: Arc<Outbox>,
    rx: Inbox,
    /// Per channel, the newest id yielded (or skipped as already seen).
    channels: HashMap<ChannelName, Option<MessageId>>,
    /// The `max_subscribers` places this connection holds, one per channel
    /// that has a limit; dropped (given back) when its subscription ends.
    /// A list, not a map: most subscribers hold no place at all, and an
    /// empty Vec costs 24 bytes in every connection where a map costs 48.
    slots: Vec<(ChannelName, SubscriberSlot)>,
    /// Gap notices and history waiting to be yielded before the queue.
    pending: VecDeque<Item>,
    client: ClientInfo,
    /// When the connection's token expires; `next` yields
    /// [`TOKEN_EXPIRED`] then.
    /// (Boxed: most connections have none, and a timer inline would make
    /// every connection's future larger.)
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Subscriber {
    pub fn client(&self) -> &ClientInfo {
        &self.client
    }

    /// Changes who the connection is (a refreshed token). The user must stay
    /// the same; the caller checks.
    pub fn set_client(&mut self, client: ClientInfo) {
        let id = Arc::clone(&self.client.client);
        self.client = ClientInfo {
            client: id,
            ..client
        };
    }

    /// Makes this connection, which opened without a user, one of
    /// `user`'s from now on (Pusher's sign-in): it counts as the user's
    /// connection (online state, [`crate::engine::Engine::disconnect_user`]).
    /// Its presence entries keep the [`ClientInfo`] they were made with.
    /// False if the connection already belongs to a user or the id makes
    /// no personal channel.
    pub fn attach_user(&mut self, user: &str) -> bool {
        match user_channel(user) {
            Ok(channel) => self.node.hub.attach_user(&self.outbox, channel),
            Err(_) => false,
        }
    }

    /// Ends the connection with [`TOKEN_EXPIRED`] at `deadline` (None: never).
    pub fn set_deadline(&mut self, deadline: Option<tokio::time::Instant>) {
        self.deadline = deadline.map(|at| Box::pin(tokio::time::sleep_until(at)));
    }

    pub fn is_subscribed(&self, channel: &ChannelName) -> bool {
        self.channels.contains_key(channel)
    }

    /// Whether the hub found this connection's queue full: it must close
    /// as a slow consumer (whichever way its transport then ends).
    pub fn overflowed(&self) -> bool {
        self.outbox.overflowed()
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Lets the hub write this connection's messages straight to its socket
    /// while [`Subscriber::next`] waits (see the module docs). The transport
    /// promises that, whenever it polls `next`, it has no unflushed bytes of
    /// its own, and that it writes nothing while `next` is pending.
    pub fn set_writer(&self, writer: Arc<dyn DirectWriter>) {
        self.outbox.set_writer(writer);
    }

    /// Follows `channel` from `since`. See the module docs for the order.
    pub async fn subscribe(
        &mut self,
        channel: ChannelName,
        since: Since,
    ) -> Result<Subscribed, SubscribeError> {
        self.subscribe_holding(channel, since, None).await
    }

    /// As [`Subscriber::subscribe`], keeping `slot` (a `max_subscribers`
    /// place) for as long as the subscription lasts: it is given back when
    /// the channel is unsubscribed or closed, the subscribe fails, or the
    /// connection ends.
    pub async fn subscribe_holding(
        &mut self,
        channel: ChannelName,
        since: Since,
        slot: Option<SubscriberSlot>,
    ) -> Result<Subscribed, SubscribeError> {
        if self.channels.contains_key(&channel) {
            return Err(SubscribeError::AlreadySubscribed(channel));
        }
        // "Only what comes next" is "everything after the newest id now",
        // read before following: with an engine whose follow takes a round
        // trip (Redis), a message published while the follow was under way
        // would otherwise reach neither the history read nor the queue.
        let (start, latest) = match since {
            Since::Live => self.live_start(&channel).await?,
            _ => (None, None),
        };
        self.node.hub.add(&channel, &self.outbox);
        // Registered at once, so that a subscribe cancelled half-way (its
        // connection went away) is still cleaned up by `Drop`; the slot goes
        // with it (and with `unsubscribe`, a close or a failure below).
        self.channels.insert(channel.clone(), None);
        if let Some(slot) = slot {
            self.slots.retain(|(c, _)| c != &channel);
            self.slots.push((channel.clone(), slot));
        }
        let joined_from = self.pending.len();
        match self.join(&channel, since, start).await {
            Ok(done) => Ok(match latest {
                Some(message) => self.open_with_latest(joined_from, message, done),
                None => done,
            }),
            Err(e) => {
                self.channels.remove(&channel);
                self.slots.retain(|(c, _)| c != &channel);
                self.leave_hub(&channel);
                Err(e.into())
            }
        }
    }

    /// Where a subscribe without a resume point starts: after the channel's
    /// newest id now. Where the namespace has `latest_on_subscribe`, the
    /// same one read also brings that newest message, if it is still
    /// retained, for the subscription to open with.
    async fn live_start(
        &self,
        channel: &ChannelName,
    ) -> Result<(Option<Since>, Option<Arc<Message>>), EngineError> {
        let options = self.node.namespaces.options(channel.as_str());
        let now = if options.latest_on_subscribe {
            self.node.engine.latest(channel).await?
        } else {
            self.node.engine.history(channel, Since::Live).await?
        };
        let start = now.last_id.map_or(Since::Earliest, Since::After);
        // Only the newest id itself: a retained message older than it is
        // not the channel's current state.
        let latest = now
            .messages
            .into_iter()
            .last()
            .filter(|m| Some(m.id) == now.last_id);
        Ok((Some(start), latest))
    }

    /// Opens the subscription `join` just made with `latest` (see
    /// [`Item::Latest`]): placed in id order among what `join` queued for
    /// the channel (`pending` from `joined_from` on: a gap notice first, a
    /// personal channel's offline queue, messages published while
    /// following), and the position moved to it, so that the queue skips
    /// it. When the offline queue holds that very message, it goes out
    /// there, unmarked: the user never received it.
    fn open_with_latest(
        &mut self,
        joined_from: usize,
        latest: Arc<Message>,
        mut done: Subscribed,
    ) -> Subscribed {
        let mut at = self.pending.len();
        for (i, item) in self.pending.iter().enumerate().skip(joined_from) {
            match item {
                Item::Message(m) if m.id == latest.id => return done,
                Item::Message(m) if m.id > latest.id => {
                    at = i;
                    break;
                }
                _ => {}
            }
        }
        done.position = done.position.max(Some(latest.id));
        // Counted as one queued for delivery: a client that loses its
        // connection before the latest message arrives must not resume
        // from `position` (it would never see the value), and `replayed`
        // says so (the JavaScript client then resumes from "earliest").
        done.replayed += 1;
        if let Some(position) = self.channels.get_mut(&latest.channel) {
            *position = done.position;
        }
        self.pending.insert(at, Item::Latest(latest));
        done
    }

    /// The part of `subscribe` that waits on the engine.
    async fn join(
        &mut self,
        channel: &ChannelName,
        since: Since,
        start: Option<Since>,
    ) -> Result<Subscribed, EngineError> {
        let mut page = self
            .follow_and_read(channel, start.unwrap_or(since))
            .await?;
        if start.is_some() {
            // The internal start point is ours: a trimmed one is no gap the
            // client needs to hear about.
            page.gap = false;
        }
        // A personal channel hands over what was queued while the user was
        // away. Those messages are in history too, so a resume from an id
        // covers them; the queue is emptied either way.
        let personal = channel_user(channel).is_some();
        let queued = if personal {
            self.node.engine.take_user_queue(channel).await?
        } else {
            crate::engine::UserQueue::default()
        };
        // Its mailbox too: every message still waiting for an
        // acknowledgement comes again, whatever the resume point (a client
        // that got one but crashed before acknowledging resumes after it).
        let mailbox = if personal {
            self.node.engine.read_mailbox(channel).await?
        } else {
            crate::mailbox::MailboxRead::default()
        };
        // A queue that dropped messages is a gap, said as a channel resume
        // says it: only where the queue is what the client gets (a resume
        // from an id is answered from history, with its own gap rule).
        let queue_gap = since == Since::Live && queued.gap;
        let options = self.node.namespaces.options(channel.as_str()).clone();
        if options.presence {
            self.node
                .engine
                .presence_join(channel, &self.client, options.join_leave)
                .await?;
        }
        let mut position = match (since, start) {
            (_, Some(Since::After(id))) => Some(id),
            (_, Some(_)) => None,
            // After a gap the resume id is lost or not ours: the position is
            // what the channel holds now, never the id we could not honour.
            (Since::After(_), None) if page.gap => page.last_id,
            (Since::After(id), None) => Some(id),
            (_, None) => None,
        };
        let gap = page.gap || queue_gap || mailbox.gap;
        if gap {
            self.pending.push_back(Item::Gap(channel.clone()));
        }
        let mut replay = page.messages;
        let queued = if since == Since::Live {
            queued.messages
        } else {
            Vec::new()
        };
        if !queued.is_empty() || !mailbox.messages.is_empty() {
            // A pending message may also be in history: once, marked as
            // one to acknowledge.
            replay.extend(mailbox.messages);
            replay.extend(queued);
            replay.sort_by_key(|m| (m.id, !m.ack));
            replay.dedup_by_key(|m| m.id);
        }
        let replayed = replay.len();
        for message in replay {
            position = position.max(Some(message.id));
            self.pending.push_back(Item::Message(message));
        }
        // Messages queued meanwhile at or before `position` are skipped.
        if position.is_none() {
            position = page.last_id;
        }
        self.channels.insert(channel.clone(), position);
        Ok(Subscribed {
            gap,
            replayed,
            position,
        })
    }

    async fn follow_and_read(
        &self,
        channel: &ChannelName,
        since: Since,
    ) -> Result<crate::history::HistoryPage, EngineError> {
        self.node.engine.follow(channel).await?;
        self.node.engine.history(channel, since).await
    }

    /// Stops following `channel`. Returns false if it was not followed.
    pub fn unsubscribe(&mut self, channel: &ChannelName) -> bool {
        if self.channels.remove(channel).is_none() {
            return false;
        }
        self.slots.retain(|(c, _)| c != channel);
        self.pending.retain(|item| match item {
            Item::Message(m) | Item::Latest(m) => &m.channel != channel,
            Item::Gap(c) | Item::Closed(c, _) => c != channel,
            Item::Notice(n) => &n.channel != channel,
            Item::Disconnect(_) => true,
        });
        self.leave_hub(channel);
        self.leave_presence(channel);
        true
    }

    fn leave_presence(&self, channel: &ChannelName) {
        let options = self.node.namespaces.options(channel.as_str());
        if options.presence {
            self.node
                .engine
                .presence_leave(channel, &self.client, options.join_leave);
        }
    }

    fn leave_hub(&self, channel: &ChannelName) {
        if self.node.hub.remove(channel, self.outbox.id()) {
            self.node.engine.unfollow(channel);
        }
    }

    /// The next thing to send. Cancel-safe (for `select!`). Never ends on its
    /// own: a connection with nothing to send waits.
    pub async fn next(&mut self) -> Item {
        loop {
            if let Some(item) = self.take_ready() {
                return item;
            }
            // Disarmed (before the event is looked at) however this ends.
            let parked = Parked::new(&self.outbox, &mut self.channels);
            let event = match self.deadline.as_mut() {
                None => self.rx.recv().await,
                Some(deadline) => tokio::select! {
                    event = self.rx.recv() => event,
                    () = deadline.as_mut() => {
                        self.deadline = None;
                        return Item::Disconnect(TOKEN_EXPIRED);
                    }
                },
            };
            drop(parked);
            // `None`: the queue overflowed, which `take_ready` says next.
            if let Some(item) = event.and_then(|event| self.accept(event)) {
                return item;
            }
        }
    }

    /// The next thing to send if one is ready now (to batch writes).
    pub fn try_next(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.take_ready() {
                return Some(item);
            }
            let event = self.rx.try_recv()?;
            if let Some(item) = self.accept(event) {
                return Some(item);
            }
        }
    }

    fn take_ready(&mut self) -> Option<Item> {
        if self.outbox.overflowed() {
            return Some(Item::Disconnect(SLOW_CONSUMER));
        }
        self.pending.pop_front()
    }

    /// Turns a queued event into an item, or drops it (stale or duplicate).
    fn accept(&mut self, event: Event) -> Option<Item> {
        match event {
            Event::Message(message) => {
                let position = self.channels.get_mut(&message.channel)?;
                if position.is_some_and(|p| message.id <= p) {
                    return None;
                }
                *position = Some(message.id);
                self.node.hub.count_written(&message, 1);
                Some(Item::Message(message))
            }
            Event::ChannelClosed(closed) => {
                let (channel, why) = *closed;
                self.channels.remove(&channel)?;
                self.slots.retain(|(c, _)| c != &channel);
                self.leave_presence(&channel);
                Some(Item::Closed(channel, why))
            }
            Event::Disconnect(why) => Some(Item::Disconnect(*why)),
            Event::Notice(notice) => self
                .channels
                .contains_key(&notice.channel)
                .then_some(Item::Notice(notice)),
            Event::Gap(channel) => self
                .channels
                .contains_key(&*channel)
                .then(|| Item::Gap(*channel)),
        }
    }
}

/// Direct delivery armed for the one channel of a waiting subscriber; the
/// channel's position comes back on drop.
struct Parked<'a> {
    outbox: &'a Outbox,
    channels: &'a mut HashMap<ChannelName, Option<MessageId>>,
    on: bool,
}

impl<'a> Parked<'a> {
    /// Arms if there is exactly one channel (the hub writes one channel's
    /// messages only) and the outbox has a writer and nothing queued.
    fn new(outbox: &'a Outbox, channels: &'a mut HashMap<ChannelName, Option<MessageId>>) -> Self {
        let on = channels.len() == 1
            && channels
                .iter()
                .next()
                .is_some_and(|(channel, position)| outbox.arm(channel, *position));
        Parked {
            outbox,
            channels,
            on,
        }
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        if !self.on {
            return;
        }
        if let Some((channel, position)) = self.outbox.disarm() {
            if let Some(slot) = self.channels.get_mut(&channel) {
                *slot = position;
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        for channel in self.channels.keys() {
            self.leave_hub(channel);
            self.leave_presence(channel);
        }
        self.node.hub.forget(&self.outbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Payload;
    use bytes::Bytes;

    fn node() -> Node {
        Node::memory(Namespaces::default())
    }

    async fn publish(node: &Node, channel: &ChannelName, text: &'static str) -> MessageId {
        node.engine
            .publish(
                channel,
                Payload::from_bytes(Bytes::from_static(text.as_bytes())),
            )
            .await
            .expect("publish")
            .message
            .id
    }

    fn expect_message(item: Item) -> Arc<Message> {
        match item {
            Item::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn resume_then_live_without_loss_or_duplicates() {
        let node = node();
        let ch = ChannelName::new("news").expect("valid");
        let first = publish(&node, &ch, "1").await;
        let second = publish(&node, &ch, "2").await;
        let mut sub = node.subscriber(16);
        let done = sub
            .subscribe(ch.clone(), Since::After(first))
            .await
            .expect("subscribe");
        assert!(!done.gap);
        assert_eq!(done.replayed, 1);
        assert_eq!(done.position, Some(second));
        let third = publish(&node, &ch, "3").await;
        assert_eq!(expect_message(sub.next().await).id, second);
        assert_eq!(expect_message(sub.next().await).id, third);
        assert!(sub.try_next().is_none(), "nothing twice");
    }

    #[tokio::test]
    async fn a_gap_never_leaves_the_position_on_the_lost_id() {
        let node = node();
        let ch = ChannelName::new("news").expect("valid");
        let mut sub = node.subscriber(16);
        let lost = MessageId::new(1, 1);
        let done = sub
            .subscribe(ch.clone(), Since::After(lost))
            .await
            .expect("subscribe");
        assert!(done.gap);
        assert_eq!(done.position, None, "an empty channel has no position");
        assert!(matches!(sub.next().await, Item::Gap(c) if c == ch));
        // A far-future id must not swallow the live messages that follow.
        let mut other = node.subscriber(16);
        let future = MessageId::new(u64::MAX, 0);
        other
            .subscribe(ch.clone(), Since::After(future))
            .await
            .expect("subscribe");
        let id = publish(&node, &ch, "x").await;
        assert!(matches!(other.next().await, Item::Gap(_)));
        assert_eq!(expect_message(other.next().await).id, id);
    }

    /// A node whose `live:` channels have `latest_on_subscribe` (and
    /// `live:none:` ones keep no history), as do personal channels.
    fn latest_node() -> Node {
        let latest = |history_size| crate::namespace::ChannelOptions {
            history_size,
            latest_on_subscribe: true,
            ..crate::namespace::ChannelOptions::default()
        };
        Node::memory(Namespaces::new(
            crate::namespace::ChannelOptions::default(),
            vec![
                ("live:".into(), latest(100)),
                ("live:none:".into(), latest(0)),
                ("user:".into(), latest(100)),
            ],
        ))
    }

    fn expect_latest(item: Item) -> Arc<Message> {
        match item {
            Item::Latest(m) => m,
            other => panic!("expected the latest message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_live_subscribe_opens_with_the_newest_message_then_live_ones() {
        let node = latest_node();
        let ch = ChannelName::new("live:price").expect("valid");
        publish(&node, &ch, "1").await;
        publish(&node, &ch, "2").await;
        let newest = publish(&node, &ch, "3").await;
        let mut sub = node.subscriber(16);
        let done = sub
            .subscribe(ch.clone(), Since::Live)
            .await
            .expect("subscribe");
        assert_eq!(done.position, Some(newest), "the position is the latest id");
        assert!(!done.gap);
        assert_eq!(
            done.replayed, 1,
            "the latest message is queued for delivery"
        );
        let latest = expect_latest(sub.next().await);
        assert_eq!(
            (latest.id, latest.payload.raw().as_ref()),
            (newest, &b"3"[..])
        );
        assert!(sub.try_next().is_none(), "only the newest one");
        // The same message delivered live again (a late fan-out) is skipped.
        node.hub.deliver(&latest);
        assert!(sub.try_next().is_none(), "never twice");
        let live = publish(&node, &ch, "4").await;
        assert_eq!(expect_message(sub.next().await).id, live);
        assert!(sub.try_next().is_none());
        assert_eq!(node.hub.delivered(), 1, "only the live one is a delivery");
    }

    #[tokio::test]
    async fn a_resume_gets_no_latest_message() {
        let node = latest_node();
        let ch = ChannelName::new("live:score").expect("valid");
        let first = publish(&node, &ch, "1").await;
        let second = publish(&node, &ch, "2").await;
        let mut from_id = node.subscriber(16);
        from_id
            .subscribe(ch.clone(), Since::After(first))
            .await
            .expect("subscribe");
        assert_eq!(expect_message(from_id.next().await).id, second);
        assert!(from_id.try_next().is_none());
        let mut at_newest = node.subscriber(16);
        let done = at_newest
            .subscribe(ch.clone(), Since::After(second))
            .await
            .expect("subscribe");
        assert_eq!(done.position, Some(second));
        assert!(at_newest.try_next().is_none(), "nothing: it has the newest");
        let mut earliest = node.subscriber(16);
        earliest
            .subscribe(ch.clone(), Since::Earliest)
            .await
            .expect("subscribe");
        assert_eq!(expect_message(earliest.next().await).id, first);
        assert_eq!(expect_message(earliest.next().await).id, second);
        assert!(earliest.try_next().is_none());
    }

    #[tokio::test]
    async fn without_the_option_or_a_retained_message_nothing_comes_first() {
        let node = latest_node();
        // Not in a namespace with the option.
        let plain = ChannelName::new("news").expect("valid");
        let old = publish(&node, &plain, "old").await;
        let mut sub = node.subscriber(16);
        let done = sub
            .subscribe(plain.clone(), Since::Live)
            .await
            .expect("subscribe");
        assert_eq!(done.position, Some(old));
        assert!(sub.try_next().is_none());
        // Never published.
        let empty = ChannelName::new("live:empty").expect("valid");
        let mut sub = node.subscriber(16);
        let done = sub
            .subscribe(empty.clone(), Since::Live)
            .await
            .expect("subscribe");
        assert_eq!((done.position, done.gap), (None, false));
        assert!(sub.try_next().is_none());
        let first = publish(&node, &empty, "first").await;
        assert_eq!(expect_message(sub.next().await).id, first);
        // Published, but not retained (aged out: the engine contract's
        // `latest_on_subscribe_opens_with_the_newest_retained_message`):
        // no latest, and no gap notice either.
        let unkept = ChannelName::new("live:none:x").expect("valid");
        publish(&node, &unkept, "gone").await;
        let mut sub = node.subscriber(16);
        let done = sub
            .subscribe(unkept.clone(), Since::Live)
            .await
            .expect("subscribe");
        assert!(!done.gap);
        assert!(sub.try_next().is_none(), "no latest, no gap notice");
    }

    #[tokio::test]
    async fn an_unsubscribe_drops_the_latest_message_not_yet_taken() {
        let node = latest_node();
        let ch = ChannelName::new("live:status").expect("valid");
        publish(&node, &ch, "up").await;
        let mut sub = node.subscriber(16);
        sub.subscribe(ch.clone(), Since::Live)
            .await
            .expect("subscribe");
        assert!(sub.unsubscribe(&ch));
        assert!(sub.try_next().is_none());
    }

    #[tokio::test]
    async fn a_parked_subscriber_gets_the_latest_message_from_next_not_the_hub() {
        let node = latest_node();
        node.hub.set_batch_bursts(false);
        let ch = ChannelName::new("live:direct").expect("valid");
        let newest = publish(&node, &ch, "now").await;
        let mut sub = node.subscriber(16);
        sub.subscribe(ch.clone(), Since::Live)
            .await
            .expect("subscribe");
        let (socket, wakes) = wire(&sub);
        let mut next = Box::pin(sub.next());
        let item = poll_once(&mut next, &wakes).expect("the latest message is ready");
        assert_eq!(expect_latest(item).id, newest);
        drop(next);
        let mut next = Box::pin(sub.next());
        assert!(poll_once(&mut next, &wakes).is_none());
        let live = publish(&node, &ch, "later").await;
        assert_eq!(socket.sent(), vec![live], "live ones go direct, after it");
    }

    #[tokio::test]
    async fn an_offline_queue_holding_the_newest_message_hands_it_over_unmarked() {
        let node = latest_node();
        let me = user_channel("ann").expect("valid");
        let mut queued = Vec::new();
        for text in ["a", "b"] {
            let done = node
                .engine
                .publish_to_user(
                    &me,
                    Payload::from_bytes(Bytes::from_static(text.as_bytes())),
                )
                .await
                .expect("publish to user");
            assert!(done.queued, "the user is away");
            queued.push(done.published.message.id);
        }
        let mut sub = node.subscriber(16);
        let done = sub
            .subscribe(me.clone(), Since::Live)
            .await
            .expect("subscribe");
        assert_eq!(done.position, queued.last().copied());
        assert_eq!(expect_message(sub.next().await).id, queued[0]);
        assert_eq!(expect_message(sub.next().await).id, queued[1]);
        assert!(sub.try_next().is_none(), "the newest one once, as queued");
    }

    #[tokio::test]
    async fn dropping_a_subscriber_frees_its_channels() {
        let node = node();
        let ch = ChannelName::new("news").expect("valid");
        let mut sub = node.subscriber(4);
        sub.subscribe(ch.clone(), Since::Live)
            .await
            .expect("subscribe");
        assert_eq!(node.hub.count(&ch), 1);
        drop(sub);
        assert_eq!(node.hub.count(&ch), 0);
        assert_eq!(node.hub.channel_count(), 0);
    }

    /// Stands in for a socket: records what the hub wrote to it directly and
    /// answers as the test says (the real one is tested with real sockets in
    /// the server's integration tests).
    struct Recorder {
        sent: parking_lot::Mutex<Vec<MessageId>>,
        answer: parking_lot::Mutex<crate::hub::Written>,
    }

    impl Recorder {
        fn new() -> Arc<Self> {
            Arc::new(Recorder {
                sent: parking_lot::Mutex::new(Vec::new()),
                answer: parking_lot::Mutex::new(crate::hub::Written::All),
            })
        }
        fn answer(&self, answer: crate::hub::Written) {
            *self.answer.lock() = answer;
        }
        fn sent(&self) -> Vec<MessageId> {
            self.sent.lock().clone()
        }
    }

    impl DirectWriter for Recorder {
        fn try_write(&self, message: &Message) -> crate::hub::Written {
            let answer = *self.answer.lock();
            if answer != crate::hub::Written::Nothing {
                self.sent.lock().push(message.id);
            }
            answer
        }
    }

    /// Counts wake-ups of the "connection task".
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Polls once, as a connection task parked in `select!` does.
    fn poll_once<F: std::future::Future + Unpin>(
        fut: &mut F,
        wakes: &Arc<Wakes>,
    ) -> Option<F::Output> {
        let waker = std::task::Waker::from(Arc::clone(wakes));
        let mut cx = std::task::Context::from_waker(&waker);
        match std::pin::Pin::new(fut).poll(&mut cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        }
    }

    /// Gives `sub` a recording writer and a wake-up counter.
    fn wire(sub: &Subscriber) -> (Arc<Recorder>, Arc<Wakes>) {
        let socket = Recorder::new();
        sub.set_writer(socket.clone());
        (socket, Arc::new(Wakes::default()))
    }

    fn woken(wakes: &Wakes) -> usize {
        wakes.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn deliveries_are_counted_once_each_direct_or_queued_but_not_replays() {
        let node = node();
        node.hub.set_batch_bursts(false);
        let ch = ChannelName::new("news").expect("valid");
        let old = publish(&node, &ch, "old").await;
        // One parked with a writer (direct), one plain (queued); both
        // replay `old` first, which is no delivery.
        let mut direct = node.subscriber(16);
        direct
            .subscribe(ch.clone(), Since::Earliest)
            .await
            .expect("subscribe");
        let mut queued = node.subscriber(16);
        queued
            .subscribe(ch.clone(), Since::Earliest)
            .await
            .expect("subscribe");
        assert_eq!(expect_message(queued.next().await).id, old);
        let (socket, wakes) = wire(&direct);
        let mut next = Box::pin(direct.next());
        assert_eq!(
            expect_message(poll_once(&mut next, &wakes).expect("replay")).id,
            old
        );
        drop(next);
        let mut next = Box::pin(direct.next());
        assert!(poll_once(&mut next, &wakes).is_none());
        assert_eq!(node.hub.delivered(), 0, "replays are not deliveries");

        let live = publish(&node, &ch, "live").await;
        assert_eq!(socket.sent(), vec![live]);
        assert_eq!(node.hub.delivered(), 1, "the direct write, at once");
        assert_eq!(expect_message(queued.next().await).id, live);
        assert_eq!(node.hub.delivered(), 2, "and the queued one when taken");
        assert_eq!(node.hub.delivery_latency().count(), 2);
        assert_eq!(node.hub.subscription_count(), 2);
    }

    #[tokio::test]
    async fn a_parked_subscriber_is_written_directly_and_keeps_its_position() {
        let node = node();
        node.hub.set_batch_bursts(false);
        let ch = ChannelName::new("news").expect("valid");
        let first = publish(&node, &ch, "1").await;
        let second = publish(&node, &ch, "2").await;
        let mut sub = node.subscriber(16);
        sub.subscribe(ch.clone(), Since::After(first))
            .await
            .expect("subscribe");
        let (socket, wakes) = wire(&sub);

        // History is yielded by `next`, never written by the hub.
        let mut next = Box::pin(sub.next());
        let item = poll_once(&mut next, &wakes).expect("history is ready");
        assert_eq!(expect_message(item).id, second);
        drop(next);

        // Parked: live messages go straight to the socket, nothing is queued
        // and the task is not woken.
        let mut next = Box::pin(sub.next());
        assert!(poll_once(&mut next, &wakes).is_none());
        let third = publish(&node, &ch, "3").await;
        let fourth = publish(&node, &ch, "4").await;
        assert_eq!(socket.sent(), vec![third, fourth]);
        assert_eq!(woken(&wakes), 0, "no wake-up per message");
        assert!(poll_once(&mut next, &wakes).is_none(), "nothing queued");
        // A stale delivery (at or before the position) is not written again.
        let stale = Arc::new(Message::new(
            ch.clone(),
            third,
            Payload::from_bytes(Bytes::from_static(b"3")),
            0,
        ));
        node.hub.deliver(&stale);
        assert_eq!(socket.sent(), vec![third, fourth]);
        drop(next);

        // Disarmed, the position came back: the same stale delivery, now
        // queued, is dropped by `next` rather than yielded.
        node.hub.deliver(&stale);
        assert!(sub.try_next().is_none(), "already sent directly");

        // The socket is full: the message falls back to the queue, wakes
        // the task, and so does everything after it, in order.
        let mut next = Box::pin(sub.next());
        assert!(poll_once(&mut next, &wakes).is_none());
        socket.answer(crate::hub::Written::Nothing);
        let before = woken(&wakes);
        let fifth = publish(&node, &ch, "5").await;
        assert_eq!(woken(&wakes), before + 1);
        socket.answer(crate::hub::Written::All);
        let sixth = publish(&node, &ch, "6").await;
        let item = poll_once(&mut next, &wakes).expect("queued message");
        assert_eq!(expect_message(item).id, fifth);
        drop(next);
        assert_eq!(expect_message(sub.next().await).id, sixth);
        assert_eq!(
            socket.sent(),
            vec![third, fourth],
            "queued ones not written"
        );

        // Part written: the rest is the socket's; the task is woken to flush
        // it, and what follows queues until the task parks again.
        let mut next = Box::pin(sub.next());
        assert!(poll_once(&mut next, &wakes).is_none());
        socket.answer(crate::hub::Written::Spilled);
        let before = woken(&wakes);
        let seventh = publish(&node, &ch, "7").await;
        assert_eq!(woken(&wakes), before + 1, "woken to flush the rest");
        let eighth = publish(&node, &ch, "8").await;
        let item = poll_once(&mut next, &wakes).expect("queued message");
        assert_eq!(
            expect_message(item).id,
            eighth,
            "the spilled one is not yielded again"
        );
        drop(next);
        assert_eq!(socket.sent(), vec![third, fourth, seventh]);

        // Parked again: direct once more.
        socket.answer(crate::hub::Written::All);
        let mut next = Box::pin(sub.next());
        assert!(poll_once(&mut next, &wakes).is_none());
        let ninth = publish(&node, &ch, "9").await;
        assert_eq!(socket.sent(), vec![third, fourth, seventh, ninth]);
        drop(next);
        assert!(sub.try_next().is_none());
    }

    #[tokio::test]
    async fn a_subscriber_of_two_channels_is_not_written_directly() {
        let node = node();
        let a = ChannelName::new("a").expect("valid");
        let b = ChannelName::new("b").expect("valid");
        let mut sub = node.subscriber(16);
        sub.subscribe(a.clone(), Since::Live)
            .await
            .expect("subscribe");
        sub.subscribe(b.clone(), Since::Live)
            .await
            .expect("subscribe");
        let (socket, wakes) = wire(&sub);
        let mut next = Box::pin(sub.next());
        assert!(poll_once(&mut next, &wakes).is_none());
        let id = publish(&node, &a, "x").await;
        let item = poll_once(&mut next, &wakes).expect("queued");
        assert_eq!(expect_message(item).id, id);
        assert!(socket.sent().is_empty());
    }

    #[tokio::test]
    async fn other_events_while_parked_go_through_the_queue() {
        let node = node();
        let ch = ChannelName::new("news").expect("valid");
        let mut sub = node.subscriber(16);
        sub.subscribe(ch.clone(), Since::Live)
            .await
            .expect("subscribe");
        let (socket, wakes) = wire(&sub);
        let mut next = Box::pin(sub.next());
        assert!(poll_once(&mut next, &wakes).is_none());
        node.hub
            .close_channel(&ch, crate::disconnect::CHANNEL_DELETED);
        let item = poll_once(&mut next, &wakes).expect("queued");
        assert!(matches!(item, Item::Closed(c, _) if c == ch));
        assert!(socket.sent().is_empty());
    }
}
