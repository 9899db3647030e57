//! The hub: which local connections follow which channel, and fan-out to them.
//!
//! No I/O happens here. Each connection owns one bounded queue (an
//! [`Outbox`]); the hub only `try_send`s into it, so a publisher never waits
//! for a subscriber. When a queue is full the connection is marked as
//! overflowed and dropped from every channel it follows in the hub: its
//! transport then closes it with [`crate::disconnect::SLOW_CONSUMER`] and the
//! client resumes from history. Memory per connection is therefore bounded by
//! the queue capacity.
//!
//! The channel map is sharded so that subscribes and publishes on different
//! channels rarely touch the same lock.
//!
//! Direct delivery: a connection whose transport can write a message without
//! waiting (a [`DirectWriter`], e.g. a WebSocket) and whose task is parked
//! with nothing queued may be *armed* (see [`crate::Subscriber::next`]). A
//! message for its one channel is then written by the publishing thread
//! straight to the socket, under the queue's lock, instead of being queued
//! and the task woken: no task wake-up and poll per subscriber per message.
//! Anything the socket does not take at once, and every other event, falls
//! back to the queue and wakes the task, which disarms before it writes
//! anything itself. Order and de-duplication stay those of the queue: the
//! armed state carries the channel's position and the same `id <= position`
//! rule drops what was already sent.
//!
//! Exactly what direct delivery does, and under which locks. The thread
//! that calls [`Hub::deliver`] is the publishing one: with the memory engine
//! the task that published (an HTTP handler), with the Redis engine the
//! node's pub/sub task, which decodes each frame and delivers it. For each
//! local subscriber of the channel it calls [`Outbox::push_message`], which
//! checks the connection is armed for this channel with nothing queued and
//! the message newer than the armed position, then calls the connection's
//! [`DirectWriter::try_write`]. The server's WebSocket writer (the only one
//! today) `try_lock`s the connection's own `pending` buffer (held: the
//! connection is writing, so queue), refuses if bytes are pending, and does
//! one non-blocking `writev` of the frame header and the message's shared
//! envelope on the socket; what the socket does not take of a begun frame
//! is copied to `pending` and the connection's task woken to flush it.
//! Nothing in this call waits or awaits. Held while `try_write` runs, from
//! the outside in:
//!
//! 1. with the memory engine only, the engine's mutex of that channel (the
//!    one that orders ids, history and delivery; see
//!    [`MemoryEngine`](crate::engine::MemoryEngine)); the Redis engine's
//!    pub/sub task holds no engine lock;
//! 2. the read half of the channel's `RwLock` of subscribers, for the whole
//!    round over them (a subscribe or unsubscribe on that channel waits for
//!    the round; the hub shard's mutex is only held to find the channel and
//!    is released before the round);
//! 3. the connection's queue mutex ([`Outbox`]), for that connection only;
//! 4. inside the writer, the connection's `pending` mutex, taken only with
//!    `try_lock`.
//!
//! Direct delivery writes one message per system call, and the publisher
//! waits for the whole round. A round over `SPLIT_ROUND` subscribers or
//! more is split in two, the second half written by a scoped thread of its
//! own while the publishing thread writes the first, and joined before the
//! next message of the channel is delivered (so each connection still gets
//! its messages in order): on two cores the last subscriber is written
//! about twice as soon (measured: paced fan-out p99 0.84-0.88x, deliveries
//! per CPU-second 1.04-1.05x, BENCHMARKS.md). A thread per large round,
//! not a pool: its start is microseconds against a round of milliseconds,
//! and rounds that large come at most a few times a second (a burst goes
//! through the queues instead). When a channel's messages come in a burst,
//! they go through the queues instead, where each connection's task writes
//! all that has piled up with one system call: measured, flat-out fan-out is
//! 2-3x cheaper per delivery that way, paced fan-out about a third cheaper
//! the direct way (BENCHMARKS.md). A burst: the message arrives sooner after
//! the end of the previous delivery than a quarter of the last direct
//! round's duration (at least [`BURST_GAP`]), i.e. direct rounds would keep
//! the channel's publisher busy most of the time; it lasts while the gaps
//! stay shorter than a whole round (a publisher held up by direct rounds
//! looks paced, so leaving the burst must take a clearly longer pause).
//!
//! Occupancy: when a user's entry in the user index or a channel's entry in
//! the channel map is created or removed, the hub tells its
//! [`Occupancy`] watcher, if the engine installed one ([`Hub::watch`];
//! only when webhooks are configured), after releasing its locks. The
//! watcher reads what the hub holds with [`Hub::holds`]; see
//! [`crate::occupancy`]. With a watcher the hub also keeps a **member
//! index** (channel → user → this node's presence entries of the user
//! there), fed by the engines' presence join and leave
//! ([`Hub::member_joined`], [`Hub::member_left`]), and tells the watcher
//! when a (channel, user) pair's first local entry comes or its last goes.
//!
//! Deliveries are counted where this node hands a message to a socket: a
//! direct write (counted once per round, not per subscriber) or a live
//! message taken from a queue by its connection's task
//! ([`Hub::count_written`]). Each is observed in one latency histogram,
//! from the message's publish time; on the Redis engine every node counts
//! its own subscribers.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard, RwLock};

use crate::channel::ChannelName;
use crate::disconnect::Disconnect;
use crate::histogram::Histogram;
use crate::id::MessageId;
use crate::message::Message;
use crate::occupancy::{Held, Occupancy};
use crate::presence::{Notice, PresenceEntry};
use crate::sharded::{Shard, Sharded};

/// What the hub puts into a connection's queue.
#[derive(Debug, Clone)]
pub enum Event {
    /// A published message on a channel the connection follows.
    Message(Arc<Message>),
    /// The channel ended for this connection (e.g. deleted); it is unsubscribed.
    /// (Boxed, like `Disconnect`: rare events stay out of the way of the
    /// queue's slot size, which every idle connection pays for.)
    ChannelClosed(Box<(ChannelName, Disconnect)>),
    /// The whole connection must close.
    Disconnect(Box<Disconnect>),
    /// A join or leave on a channel the connection follows.
    Notice(Arc<Notice>),
    /// Messages of the channel were lost (a user's mailbox dropped pending
    /// ones, see [`crate::mailbox`]): the connection must hear of the gap.
    Gap(Box<ChannelName>),
}

/// What a [`DirectWriter`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The whole message went out.
    All,
    /// Part of it went out; the writer kept the rest and its connection
    /// must be woken to flush it.
    Spilled,
    /// Nothing went out (the socket is full, broken, or has bytes waiting):
    /// the message goes through the queue.
    Nothing,
}

/// A connection's socket as the publishing thread may write to it.
///
/// `try_write` is called under the connection's queue lock, never waits, and
/// must not write anything ahead of bytes the connection has not flushed.
pub trait DirectWriter: Send + Sync {
    fn try_write(&self, message: &Message) -> Written;
}

/// The direct-delivery state of a connection that has a writer.
struct Direct {
    writer: Arc<dyn DirectWriter>,
    /// Set while armed (and kept after a fallback until the task disarms):
    /// the one channel followed and its position, the newest id sent.
    armed: Option<Armed>,
}

struct Armed {
    channel: ChannelName,
    position: Option<MessageId>,
    /// False once a message fell back to the queue: from then on everything
    /// queues until the task has caught up and arms again.
    live: bool,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("armed", &self.armed.as_ref().map(|a| a.live))
            .finish()
    }
}

/// One connection's bounded queue, shared by every channel the connection
/// follows (they push) and the connection itself (it takes, through its
/// [`Inbox`]).
///
/// Not a general channel: one `VecDeque` and the waiting task's waker behind
/// one short lock. An idle connection's queue is a few words with no buffer
/// (a tokio mpsc channel preallocates a block of slots and cache-padded
/// state, about a kilobyte per connection).
/// Overflow policy: a push into a full queue is refused and marks the
/// connection as overflowed; the connection then closes with
/// [`crate::disconnect::SLOW_CONSUMER`]. The publisher never waits.
#[derive(Debug)]
pub struct Outbox {
    id: u64,
    /// The personal channel of the connection's user, if it has one: set
    /// when the queue is made, or once later ([`Hub::attach_user`]: a Pusher
    /// connection signs in after it opened), never changed after.
    user: std::sync::OnceLock<ChannelName>,
    capacity: usize,
    /// Held only to push, take or swap the waker: never across an await or
    /// a wake-up.
    queue: Mutex<Queue>,
    /// Set (once) by a publisher that found the queue full. The connection's
    /// transport checks it before each write and closes.
    overflowed: AtomicBool,
    /// Set when the connection's [`Inbox`] is dropped: pushes are refused.
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Event>,
    /// The connection's task, waiting in [`Inbox::recv`].
    waiter: Option<Waker>,
    /// Only for connections that installed a [`DirectWriter`] (boxed: the
    /// others pay one word).
    direct: Option<Box<Direct>>,
}

impl Queue {
    /// Writes `message` to the socket if the connection is armed for its
    /// channel and nothing is queued ahead of it. `None`: not written, it must
    /// be queued (and from then on everything queues until the task re-arms).
    /// `Some(Nothing)` for a message already sent, which is dropped.
    fn write_direct(&mut self, message: &Message) -> Option<Written> {
        if !self.events.is_empty() {
            return None;
        }
        let direct = self.direct.as_deref_mut()?;
        let armed = direct
            .armed
            .as_mut()
            .filter(|a| a.live && a.channel == message.channel)?;
        if armed.position.is_some_and(|p| message.id <= p) {
            // Already sent (e.g. replayed from history).
            return Some(Written::Nothing);
        }
        match direct.writer.try_write(message) {
            Written::Nothing => {
                armed.live = false;
                None
            }
            Written::All => {
                armed.position = Some(message.id);
                Some(Written::All)
            }
            Written::Spilled => {
                // Sent as far as ordering goes; its rest is the writer's.
                armed.position = Some(message.id);
                armed.live = false;
                Some(Written::Spilled)
            }
        }
    }
}

impl Outbox {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Queues an event. Returns false when the connection is gone or full
    /// (in which case it is marked as overflowed).
    pub fn push(&self, event: Event) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        self.enqueue(self.queue.lock(), event)
    }

    /// Gives a published message to the connection: straight to its socket
    /// when armed (see the module docs), else through the queue.
    pub fn push_message(&self, message: &Arc<Message>) -> bool {
        self.offer(message) != Offer::Refused
    }

    /// `push_message`, saying whether the message went to the socket.
    fn offer(&self, message: &Arc<Message>) -> Offer {
        if self.closed.load(Ordering::Acquire) {
            return Offer::Refused;
        }
        let mut queue = self.queue.lock();
        match queue.write_direct(message) {
            Some(Written::All) => Offer::Written,
            // Already sent: taken, not written again.
            Some(Written::Nothing) => Offer::Queued,
            Some(Written::Spilled) => {
                // Part written: the task must flush the rest before anything
                // else (and disarm), so wake it.
                let waiter = queue.waiter.take();
                drop(queue);
                if let Some(waker) = waiter {
                    waker.wake();
                }
                Offer::Written
            }
            None if self.enqueue(queue, Event::Message(Arc::clone(message))) => Offer::Queued,
            None => Offer::Refused,
        }
    }

    /// The queue's half of `push`: the overflow policy, then the wake-up
    /// (outside the lock).
    fn enqueue(&self, mut queue: MutexGuard<'_, Queue>, event: Event) -> bool {
        if queue.events.len() >= self.capacity {
            drop(queue);
            self.overflowed.store(true, Ordering::Release);
            self.wake();
            return false;
        }
        queue.events.push_back(event);
        let waiter = queue.waiter.take();
        drop(queue);
        if let Some(waker) = waiter {
            waker.wake();
        }
        true
    }

    fn wake(&self) {
        let waiter = self.queue.lock().waiter.take();
        if let Some(waker) = waiter {
            waker.wake();
        }
    }

    /// Lets the publishing thread write this connection's messages (see the
    /// module docs) from now on.
    pub fn set_writer(&self, writer: Arc<dyn DirectWriter>) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        self.queue.lock().direct = Some(Box::new(Direct {
            writer,
            armed: None,
        }));
    }

    /// Arms direct delivery of `channel` after `position`, if the connection
    /// has a writer and nothing queued. Only the connection's task calls it,
    /// while it has nothing else to send and no unflushed bytes.
    pub(crate) fn arm(&self, channel: &ChannelName, position: Option<MessageId>) -> bool {
        let mut queue = self.queue.lock();
        if !queue.events.is_empty() || self.overflowed() {
            return false;
        }
        let Some(direct) = queue.direct.as_mut() else {
            return false;
        };
        direct.armed = Some(Armed {
            channel: channel.clone(),
            position,
            live: true,
        });
        true
    }

    /// Stops direct delivery; gives back the channel's position, which may
    /// have moved on while armed.
    pub(crate) fn disarm(&self) -> Option<(ChannelName, Option<MessageId>)> {
        let armed = self.queue.lock().direct.as_mut()?.armed.take()?;
        Some((armed.channel, armed.position))
    }
}

/// What [`Outbox::offer`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    /// Written to the socket by the publishing thread.
    Written,
    /// Queued for the connection's task (or dropped as already sent).
    Queued,
    /// Refused: the connection is gone or its queue full.
    Refused,
}

/// The taking side of a connection's queue (one per connection).
#[derive(Debug)]
pub struct Inbox {
    outbox: Arc<Outbox>,
}

impl Inbox {
    /// The next event, waiting for one. Cancel-safe. Also returns (with
    /// `None`) when the queue overflowed, so the owner notices at once.
    pub async fn recv(&mut self) -> Option<Event> {
        poll_fn(|cx| {
            let mut queue = self.outbox.queue.lock();
            if let Some(event) = queue.events.pop_front() {
                return Poll::Ready(Some(event));
            }
            if self.outbox.overflowed() {
                return Poll::Ready(None);
            }
            match &mut queue.waiter {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<Event> {
        let mut queue = self.outbox.queue.lock();
        let event = queue.events.pop_front();
        if queue.events.is_empty() && queue.events.capacity() > 4 {
            // A burst is over: give its memory back.
            queue.events = VecDeque::new();
        }
        event
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.outbox.closed.store(true, Ordering::Release);
        let mut queue = self.outbox.queue.lock();
        queue.events = VecDeque::new();
        queue.waiter = None;
        // The writer holds the socket: let it go with the connection.
        queue.direct = None;
    }
}

/// A message arriving sooner than this after the previous delivery to its
/// channel ended always goes through the queues, to be batched (see the
/// module docs).
pub const BURST_GAP: Duration = Duration::from_millis(1);

/// One channel's local subscribers.
#[derive(Default)]
struct Subscribers {
    by_conn: HashMap<u64, Arc<Outbox>>,
    /// When the last delivery to this channel ended, in nanoseconds since
    /// the hub started (written after each delivery, which the engine
    /// serialises per channel).
    last_end: AtomicU64,
    /// How long the last direct round took, in nanoseconds.
    direct_round: AtomicU64,
    /// Whether the last message came in a burst.
    in_burst: AtomicBool,
}

type Entry = Arc<RwLock<Subscribers>>;

/// Subscribers of one channel from which a direct round is split between
/// the publishing thread and a second one.
const SPLIT_ROUND: usize = 2048;

/// What one round over a channel's subscribers did.
#[derive(Default)]
struct Tally {
    delivered: usize,
    written: u64,
    dead: Vec<u64>,
}

impl Tally {
    /// Offers `message` to each outbox (queued only, in a burst).
    fn round<'a>(
        outboxes: impl Iterator<Item = &'a Arc<Outbox>>,
        message: &Arc<Message>,
        burst: bool,
    ) -> Tally {
        let mut tally = Tally::default();
        for outbox in outboxes {
            let offer = if burst {
                match outbox.push(Event::Message(Arc::clone(message))) {
                    true => Offer::Queued,
                    false => Offer::Refused,
                }
            } else {
                outbox.offer(message)
            };
            match offer {
                Offer::Written => {
                    tally.delivered += 1;
                    tally.written += 1;
                }
                Offer::Queued => tally.delivered += 1,
                Offer::Refused => tally.dead.push(outbox.id),
            }
        }
        tally
    }

    fn add(&mut self, other: Tally) {
        self.delivered += other.delivered;
        self.written += other.written;
        self.dead.extend(other.dead);
    }
}

/// Local subscriptions for one node.
pub struct Hub {
    channels: Sharded<Entry>,
    /// Connections by their user's personal channel, to close them all.
    users: Sharded<HashMap<u64, Arc<Outbox>>>,
    next_conn: AtomicU64,
    /// The clock for [`Subscribers::last_end`].
    epoch: Instant,
    /// Whether bursts go through the queues (off only in tests that need
    /// every message of a parked subscriber written directly).
    batch_bursts: AtomicBool,
    /// Publish-to-socket latency of every live message this node handed
    /// to a socket; its count is the node's deliveries.
    written: Histogram,
    /// Told when a user's or channel's entry comes or goes (set once by
    /// the engine, only when it records events).
    watcher: std::sync::OnceLock<Arc<dyn Occupancy>>,
    /// The member index (see the module docs): channel → user → the
    /// connection ids of this node's presence entries. Only kept with a
    /// watcher; a shard's lock is held to change or read one channel's
    /// entry, never across a call to the watcher.
    members: Sharded<HashMap<Arc<str>, std::collections::HashSet<Arc<str>>>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Self {
            channels: Sharded::new(),
            users: Sharded::new(),
            next_conn: AtomicU64::new(1),
            epoch: Instant::now(),
            batch_bursts: AtomicBool::new(true),
            written: Histogram::default(),
            watcher: std::sync::OnceLock::new(),
            members: Sharded::new(),
        }
    }

    /// Installs the occupancy watcher (see the module docs). Only the first
    /// call installs one; false for a later one.
    pub fn watch(&self, watcher: Arc<dyn Occupancy>) -> bool {
        self.watcher.set(watcher).is_ok()
    }

    /// Tells the watcher, if any, that `held` may have changed. Never
    /// called with a hub lock held.
    fn changed(&self, held: Held<'_>) {
        if let Some(watcher) = self.watcher.get() {
            watcher.changed(self, held);
        }
    }

    /// Whether this node has a connection of the user / a subscriber of
    /// the channel now. Takes only the shard's lock (never a channel's).
    pub fn holds(&self, held: Held<'_>) -> bool {
        match held {
            Held::User(user) => self.users.shard(user).lock().contains_key(user),
            Held::Channel(channel) => self.shard(channel).lock().contains_key(channel),
            Held::Member(channel, user) => self
                .members
                .shard(channel)
                .lock()
                .get(channel)
                .is_some_and(|users| users.contains_key(user)),
        }
    }

    /// A presence entry of `channel` was made on this node (the engine's
    /// presence join): counted in the member index, and the watcher told
    /// when it is the user's first there. Entries without a user, and
    /// every entry when no watcher is installed, are not indexed.
    pub fn member_joined(&self, channel: &ChannelName, entry: &PresenceEntry) {
        let Some(user) = &entry.user else { return };
        if self.watcher.get().is_none() {
            return;
        }
        let first = {
            let mut shard = self.members.shard(channel).lock();
            let users = shard.entry(channel.clone()).or_default();
            let clients = users.entry(Arc::clone(user)).or_default();
            let first = clients.is_empty();
            clients.insert(Arc::clone(&entry.client));
            first
        };
        if first {
            self.changed(Held::Member(channel, user));
        }
    }

    /// A presence entry of `channel` ended on this node. Idempotent: an
    /// entry not indexed changes nothing.
    pub fn member_left(&self, channel: &ChannelName, entry: &PresenceEntry) {
        let Some(user) = &entry.user else { return };
        let last = {
            let mut shard = self.members.shard(channel).lock();
            let Some(users) = shard.get_mut(channel) else {
                return;
            };
            let Some(clients) = users.get_mut(user) else {
                return;
            };
            if !clients.remove(&entry.client) || !clients.is_empty() {
                return;
            }
            users.remove(user);
            if users.is_empty() {
                shard.remove(channel);
            }
            true
        };
        if last {
            self.changed(Held::Member(channel, user));
        }
    }

    /// The (channel, user) pairs with a presence entry on this node.
    pub fn members(&self) -> Vec<(ChannelName, Arc<str>)> {
        self.members
            .shards()
            .flat_map(|s| {
                s.lock()
                    .iter()
                    .flat_map(|(c, users)| users.keys().map(|u| (c.clone(), Arc::clone(u))))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The personal channels of the users with a connection on this node.
    pub fn users(&self) -> Vec<ChannelName> {
        self.users
            .shards()
            .flat_map(|s| s.lock().keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Counts `n` deliveries of `message` written (or about to be) to
    /// sockets now, observing their latency since it was published.
    pub fn count_written(&self, message: &Message, n: u64) {
        let waited_ms = crate::engine::now_ms().saturating_sub(message.time_ms);
        self.written
            .observe_n_us(waited_ms.saturating_mul(1_000), n);
    }

    /// Live messages this node has handed to sockets.
    pub fn delivered(&self) -> u64 {
        self.written.count()
    }

    /// How long those took from publish to socket (millisecond resolution:
    /// a message carries its publish time in milliseconds).
    pub fn delivery_latency(&self) -> &Histogram {
        &self.written
    }

    /// Subscriptions (connection and channel pairs) on this node.
    pub fn subscription_count(&self) -> usize {
        self.channels
            .shards()
            .map(|s| {
                s.lock()
                    .values()
                    .map(|subs| subs.read().by_conn.len())
                    .sum::<usize>()
            })
            .sum()
    }

    /// Turns the burst rule (see the module docs) off, so that every
    /// message to a parked subscriber is written directly.
    #[cfg(test)]
    pub(crate) fn set_batch_bursts(&self, on: bool) {
        self.batch_bursts.store(on, Ordering::Relaxed);
    }

    fn nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn shard(&self, channel: &ChannelName) -> &Shard<Entry> {
        self.channels.shard(channel)
    }

    /// A new connection's queue, holding at most `capacity` events.
    pub fn outbox(&self, capacity: usize) -> (Arc<Outbox>, Inbox) {
        self.user_outbox(capacity, None)
    }

    /// A new connection's queue for a user (`user` is the personal channel);
    /// call [`Hub::forget`] when the connection ends.
    pub fn user_outbox(&self, capacity: usize, user: Option<ChannelName>) -> (Arc<Outbox>, Inbox) {
        let outbox = Arc::new(Outbox {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            user: std::sync::OnceLock::new(),
            capacity: capacity.max(1),
            queue: Mutex::new(Queue::default()),
            overflowed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        if let Some(user) = user {
            self.attach_user(&outbox, user);
        }
        let inbox = Inbox {
            outbox: Arc::clone(&outbox),
        };
        (outbox, inbox)
    }

    /// Makes a connection that has no user one of `user`'s (its personal
    /// channel): it is then in the user index, which
    /// [`Hub::disconnect_user`] and the user's online state read. False
    /// (and nothing changes) if the connection already has a user.
    pub fn attach_user(&self, outbox: &Arc<Outbox>, user: ChannelName) -> bool {
        if outbox.user.set(user).is_err() {
            return false;
        }
        let Some(user) = outbox.user.get() else {
            return false;
        };
        let first = {
            let mut shard = self.users.shard(user).lock();
            let first = !shard.contains_key(user);
            shard
                .entry(user.clone())
                .or_default()
                .insert(outbox.id, Arc::clone(outbox));
            first
        };
        if first {
            self.changed(Held::User(user));
        }
        true
    }

    /// Drops a connection from the user index.
    pub fn forget(&self, outbox: &Outbox) {
        let Some(user) = outbox.user.get() else {
            return;
        };
        let mut shard = self.users.shard(user).lock();
        let mut last = false;
        if let Some(conns) = shard.get_mut(user) {
            conns.remove(&outbox.id);
            if conns.is_empty() {
                shard.remove(user);
                last = true;
            }
        }
        drop(shard);
        if last {
            self.changed(Held::User(user));
        }
    }

    /// Tells every connection of a user to close.
    pub fn disconnect_user(&self, user: &ChannelName, why: Disconnect) -> usize {
        let conns: Vec<Arc<Outbox>> = self
            .users
            .shard(user)
            .lock()
            .get(user)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for outbox in &conns {
            outbox.push(Event::Disconnect(Box::new(why)));
        }
        conns.len()
    }

    /// Gives a join/leave notice to every local subscriber of its channel.
    pub fn deliver_notice(&self, notice: &Arc<Notice>) -> usize {
        let Some(subs) = self
            .shard(&notice.channel)
            .lock()
            .get(&notice.channel)
            .cloned()
        else {
            return 0;
        };
        let guard = subs.read();
        guard
            .by_conn
            .values()
            .filter(|o| o.push(Event::Notice(Arc::clone(notice))))
            .count()
    }

    /// Tells every local subscriber of `channel` that messages of it were
    /// lost. Returns how many took it.
    pub fn deliver_gap(&self, channel: &ChannelName) -> usize {
        let Some(subs) = self.shard(channel).lock().get(channel).cloned() else {
            return 0;
        };
        let guard = subs.read();
        guard
            .by_conn
            .values()
            .filter(|o| o.push(Event::Gap(Box::new(channel.clone()))))
            .count()
    }

    /// Adds a connection to a channel. Returns true if it was not there yet.
    pub fn add(&self, channel: &ChannelName, outbox: &Arc<Outbox>) -> bool {
        // Shard lock, then channel lock: the same order as `remove`, so an
        // entry cannot be freed while we insert into it.
        let mut shard = self.shard(channel).lock();
        let (subs, first) = match shard.entry(channel.clone()) {
            MapEntry::Occupied(e) => (e.into_mut(), false),
            MapEntry::Vacant(v) => (v.insert(Entry::default()), true),
        };
        let added = subs
            .write()
            .by_conn
            .insert(outbox.id, Arc::clone(outbox))
            .is_none();
        drop(shard);
        if first {
            self.changed(Held::Channel(channel));
        }
        added
    }

    /// Removes a connection from a channel; frees the channel's entry when it
    /// was the last one. Returns true if the channel has no local subscriber left.
    pub fn remove(&self, channel: &ChannelName, conn: u64) -> bool {
        let mut shard = self.shard(channel).lock();
        let Some(subs) = shard.get(channel) else {
            return true;
        };
        let mut guard = subs.write();
        guard.by_conn.remove(&conn);
        let empty = guard.by_conn.is_empty();
        drop(guard);
        if empty {
            shard.remove(channel);
            drop(shard);
            self.changed(Held::Channel(channel));
        }
        empty
    }

    /// Local subscribers of a channel.
    pub fn count(&self, channel: &ChannelName) -> usize {
        let subs = self.shard(channel).lock().get(channel).cloned();
        subs.map_or(0, |s| s.read().by_conn.len())
    }

    /// Channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Gives a message to every local subscriber of its channel. Returns how
    /// many took it. Subscribers whose queue is full or closed are dropped
    /// from the channel (and, when full, marked overflowed).
    pub fn deliver(&self, message: &Arc<Message>) -> usize {
        let Some(subs) = self
            .shard(&message.channel)
            .lock()
            .get(&message.channel)
            .cloned()
        else {
            return 0;
        };
        let dead;
        let delivered;
        let written;
        {
            // Read lock only: concurrent deliveries to one channel are
            // ordered by the engine, which calls us in id order.
            let guard = subs.read();
            let start = self.nanos();
            let gap = start.saturating_sub(guard.last_end.load(Ordering::Relaxed));
            let round = guard.direct_round.load(Ordering::Relaxed);
            // Hysteresis: a burst starts when the gap is short next to a
            // direct round, and lasts while it stays shorter than one.
            let burst_gap = if guard.in_burst.load(Ordering::Relaxed) {
                round
            } else {
                round / 4
            };
            let burst = gap < burst_gap.max(BURST_GAP.as_nanos() as u64)
                && self.batch_bursts.load(Ordering::Relaxed);
            guard.in_burst.store(burst, Ordering::Relaxed);
            let tally = if !burst && guard.by_conn.len() >= SPLIT_ROUND {
                // A large direct round: half of it on a second thread, so
                // the last subscriber is written about twice as soon.
                let all: Vec<&Arc<Outbox>> = guard.by_conn.values().collect();
                let (first, second) = all.split_at(all.len() / 2);
                std::thread::scope(|scope| {
                    let other =
                        scope.spawn(|| Tally::round(second.iter().copied(), message, false));
                    let mut tally = Tally::round(first.iter().copied(), message, false);
                    match other.join() {
                        Ok(more) => tally.add(more),
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                    tally
                })
            } else {
                Tally::round(guard.by_conn.values(), message, burst)
            };
            delivered = tally.delivered;
            written = tally.written;
            dead = tally.dead;
            let end = self.nanos();
            guard.last_end.store(end, Ordering::Relaxed);
            if !burst {
                guard.direct_round.store(end - start, Ordering::Relaxed);
            }
        }
        if written > 0 {
            self.count_written(message, written);
        }
        for conn in dead {
            self.remove(&message.channel, conn);
        }
        delivered
    }

    /// Names of the channels with at least one local subscriber (for an
    /// engine that must re-follow them after reconnecting to its storage).
    pub fn channels(&self) -> Vec<ChannelName> {
        self.channels
            .shards()
            .flat_map(|s| s.lock().keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Tells every local subscriber of every channel to close (e.g. the
    /// engine lost its storage and live delivery can no longer be trusted).
    /// Returns how many connections were told.
    pub fn disconnect_all(&self, why: Disconnect) -> usize {
        let mut told = std::collections::HashSet::new();
        for shard in self.channels.shards() {
            let subs: Vec<_> = shard.lock().values().cloned().collect();
            for s in subs {
                for outbox in s.read().by_conn.values() {
                    if told.insert(outbox.id) {
                        outbox.push(Event::Disconnect(Box::new(why)));
                    }
                }
            }
        }
        told.len()
    }

    /// Ends a channel for every local subscriber: each gets `why` and is removed.
    pub fn close_channel(&self, channel: &ChannelName, why: Disconnect) -> usize {
        let Some(subs) = self.shard(channel).lock().remove(channel) else {
            return 0;
        };
        let told = {
            let guard = subs.read();
            for outbox in guard.by_conn.values() {
                outbox.push(Event::ChannelClosed(Box::new((channel.clone(), why))));
            }
            guard.by_conn.len()
        };
        self.changed(Held::Channel(channel));
        told
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::MessageId;
    use crate::message::Payload;
    use bytes::Bytes;

    fn msg(channel: &ChannelName, seq: u64) -> Arc<Message> {
        Arc::new(Message::new(
            channel.clone(),
            MessageId::new(1, seq),
            Payload::from_bytes(Bytes::from_static(b"x")),
            0,
        ))
    }

    #[test]
    fn fan_out_and_cleanup() {
        let hub = Hub::new();
        let ch = ChannelName::new("news").expect("valid");
        let (a, mut ra) = hub.outbox(8);
        let (b, mut rb) = hub.outbox(8);
        assert!(hub.add(&ch, &a));
        assert!(!hub.add(&ch, &a), "adding twice is idempotent");
        hub.add(&ch, &b);
        assert_eq!(hub.count(&ch), 2);
        assert_eq!(hub.deliver(&msg(&ch, 1)), 2);
        assert!(matches!(ra.try_recv(), Some(Event::Message(m)) if m.id.seq == 1));
        assert!(matches!(rb.try_recv(), Some(Event::Message(_))));
        assert!(!hub.remove(&ch, a.id()));
        assert!(hub.remove(&ch, b.id()));
        assert_eq!(hub.channel_count(), 0, "an empty channel costs nothing");
    }

    #[test]
    fn a_user_attached_later_is_reached_and_forgotten() {
        let hub = Hub::new();
        let ann = ChannelName::new("user:ann").expect("valid");
        let (conn, mut rx) = hub.outbox(8);
        assert_eq!(hub.disconnect_user(&ann, crate::disconnect::FORCED), 0);
        assert!(hub.attach_user(&conn, ann.clone()));
        let bob = ChannelName::new("user:bob").expect("valid");
        assert!(
            !hub.attach_user(&conn, bob.clone()),
            "a connection has one user"
        );
        assert_eq!(hub.disconnect_user(&bob, crate::disconnect::FORCED), 0);
        assert_eq!(hub.disconnect_user(&ann, crate::disconnect::FORCED), 1);
        assert!(matches!(rx.try_recv(), Some(Event::Disconnect(_))));
        hub.forget(&conn);
        assert_eq!(hub.disconnect_user(&ann, crate::disconnect::FORCED), 0);
    }

    #[test]
    fn full_queue_marks_overflow_and_drops_the_subscriber() {
        let hub = Hub::new();
        let ch = ChannelName::new("news").expect("valid");
        let (slow, _keep_rx) = hub.outbox(2);
        let (fast, mut fast_rx) = hub.outbox(64);
        hub.add(&ch, &slow);
        hub.add(&ch, &fast);
        for seq in 1..=3 {
            hub.deliver(&msg(&ch, seq));
            while fast_rx.try_recv().is_some() {}
        }
        assert!(slow.overflowed());
        assert!(!fast.overflowed());
        assert_eq!(hub.count(&ch), 1, "the slow one is out, the fast one stays");
        assert_eq!(hub.deliver(&msg(&ch, 4)), 1);
    }

    #[test]
    fn a_round_split_over_two_threads_reaches_everyone_once_in_order() {
        let hub = Hub::new();
        // Every round direct (none batched as a burst), and large enough to
        // be split.
        hub.set_batch_bursts(false);
        let ch = ChannelName::new("news").expect("valid");
        let n = SPLIT_ROUND * 2 + 1;
        let mut live = Vec::new();
        for _ in 0..n {
            let (outbox, rx) = hub.outbox(8);
            hub.add(&ch, &outbox);
            live.push((outbox, rx));
        }
        // One whose client is gone, one that cannot keep up.
        let (gone, gone_rx) = hub.outbox(8);
        hub.add(&ch, &gone);
        drop(gone_rx);
        let (slow, _slow_rx) = hub.outbox(1);
        hub.add(&ch, &slow);
        assert_eq!(hub.deliver(&msg(&ch, 1)), n + 1, "all but the gone one");
        assert_eq!(hub.count(&ch), n + 1);
        assert_eq!(hub.deliver(&msg(&ch, 2)), n, "the slow one overflowed");
        assert!(slow.overflowed());
        assert_eq!(hub.count(&ch), n);
        assert_eq!(hub.deliver(&msg(&ch, 3)), n);
        for (_, rx) in &mut live {
            for seq in 1..=3 {
                assert!(
                    matches!(rx.try_recv(), Some(Event::Message(m)) if m.id.seq == seq),
                    "message {seq} once, in order"
                );
            }
            assert!(rx.try_recv().is_none(), "nothing twice");
        }
    }

    #[test]
    fn closed_receiver_is_dropped() {
        let hub = Hub::new();
        let ch = ChannelName::new("news").expect("valid");
        let (gone, rx) = hub.outbox(2);
        hub.add(&ch, &gone);
        drop(rx);
        assert_eq!(hub.deliver(&msg(&ch, 1)), 0);
        assert_eq!(hub.channel_count(), 0);
        assert!(!gone.overflowed());
    }

    #[test]
    fn close_channel_tells_everyone() {
        let hub = Hub::new();
        let ch = ChannelName::new("news").expect("valid");
        let (a, mut ra) = hub.outbox(2);
        hub.add(&ch, &a);
        assert_eq!(
            hub.close_channel(&ch, crate::disconnect::CHANNEL_DELETED),
            1
        );
        assert!(matches!(ra.try_recv(), Some(Event::ChannelClosed(b)) if b.0 == ch));
        assert_eq!(hub.count(&ch), 0);
    }
}

#[cfg(test)]
mod size {
    /// Queued events are stored inline in each connection's queue: keep an
    /// event two words wide.
    #[test]
    fn event_is_two_words() {
        assert!(std::mem::size_of::<super::Event>() <= 16);
    }
}
