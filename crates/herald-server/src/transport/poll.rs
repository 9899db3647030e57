//! Long-polling in both dialects, over the one [`Downstream`] loop.
//!
//! - Channel dialect (`GET /sub/{channel}`, also short-polling with
//!   `timeout=0` and JSONP with `callback=NAME`): one request, one answer:
//!   every message ready after the resume point at once, or else the first
//!   one published within the timeout, or an empty list; `last_id` tells
//!   the client where to poll from next. The request drives its session
//!   itself, for as long as it waits.
//! - Session dialect (`/connection/longpoll`): the session lives on between
//!   polls, driven by a task ([`drive`]) that puts its frames in the
//!   session's [`Mailbox`]; each `GET /connection/longpoll/{id}` takes what
//!   is there, or waits for it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use herald_core::disconnect::{Disconnect, SLOW_CONSUMER};
use herald_core::node::Subscribed;
use herald_core::{ChannelName, Message, MessageId, Refusal};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::downstream::{ends, Downstream, Step};
use super::session_frame;
use crate::config::{Config, DEFAULT_POLL_TIMEOUT};
use crate::error::Refused;
use crate::protocol::{disconnect_frame, leave_json, put_json_list, put_json_string, Push, PING};

/// A long-poll session with no poll waiting for this long is abandoned and
/// ends, so it lives at most its last poll's timeout plus this.
pub(crate) const POLL_LINGER: Duration = Duration::from_secs(10);

/// Parses `?timeout=` (whole seconds); longer than the configured maximum is clamped.
pub(crate) fn timeout(text: Option<&str>, config: &Config) -> Result<Duration, Refused> {
    let Some(text) = text else {
        return Ok(DEFAULT_POLL_TIMEOUT.min(config.poll_timeout_max));
    };
    let secs: u64 = text.parse().map_err(|_| {
        Refused::new(
            Refusal::InvalidTimeout,
            "timeout must be a whole number of seconds (0 for a short poll)",
        )
    })?;
    Ok(Duration::from_secs(secs).min(config.poll_timeout_max))
}

// ---- channel dialect: one request, one answer ----

/// What a channel poll answers with.
#[derive(Default)]
struct Answer {
    messages: Vec<Arc<Message>>,
    /// The id of the latest message the subscription opened with, if it is
    /// among `messages`.
    latest: Option<MessageId>,
    gap: bool,
    /// The `disconnect` member, when the subscription ended.
    ended: Option<serde_json::Value>,
}

impl Answer {
    fn take(&mut self, pushes: &mut Vec<Push>) {
        for push in pushes.drain(..) {
            match push {
                Push::Message(m) => self.messages.push(m),
                Push::Latest(m) => {
                    self.latest = Some(m.id);
                    self.messages.push(m);
                }
                Push::Gap(_) => self.gap = true,
                Push::End(why) => self.ended = Some(serde_json::to_value(why).unwrap_or_default()),
                Push::Leave(delay_ms) => self.ended = Some(leave_json(delay_ms)),
                // Join/leave notices are for streams; a poll answer lists messages.
                Push::Notice(_) | Push::Frame(_) => {}
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.messages.is_empty() && !self.gap && self.ended.is_none()
    }
}

/// Serves one channel poll: what is ready, else the first thing within
/// `wait`. Returns the answer's body.
pub(crate) async fn answer(
    mut down: Downstream,
    channel: &ChannelName,
    subscribed: Subscribed,
    wait: Duration,
    callback: Option<&str>,
) -> Bytes {
    let mut pushes = Vec::new();
    let mut answer = Answer::default();
    down.ready(&mut pushes);
    answer.take(&mut pushes);
    if answer.is_empty() && !wait.is_zero() {
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        while answer.is_empty() {
            tokio::select! {
                () = &mut deadline => break,
                step = down.step(&mut pushes) => {
                    if step == Step::Ended {
                        break;
                    }
                    if !ends(&pushes) {
                        down.ready(&mut pushes);
                    }
                    answer.take(&mut pushes);
                }
            }
        }
    }
    // The session ends here, before the answer is written.
    drop(down);
    let last_id = answer.messages.last().map(|m| m.id).or(subscribed.position);
    body(
        channel,
        &answer.messages,
        answer.latest,
        last_id,
        answer.gap,
        answer.ended,
        callback,
    )
}

/// The answer's body: `{"channel","messages","last_id","gap"}` (and
/// `"disconnect"` when the subscription ended), or with a callback the JSONP
/// call `NAME({...});`, whose envelopes are script-safe. The message whose
/// id is `latest` (the one a subscription opened with) is written with its
/// marked envelope, built for this answer; the others' are shared.
pub(crate) fn body(
    channel: &ChannelName,
    messages: &[Arc<Message>],
    latest: Option<MessageId>,
    last_id: Option<MessageId>,
    gap: bool,
    ended: Option<serde_json::Value>,
    callback: Option<&str>,
) -> Bytes {
    let jsonp = callback.is_some();
    let marked = latest
        .and_then(|id| messages.iter().find(|m| m.id == id))
        .map(|m| {
            if jsonp {
                m.latest_script_envelope()
            } else {
                m.latest_envelope()
            }
        });
    let mut body = BytesMut::new();
    if let Some(name) = callback {
        body.put_slice(name.as_bytes());
        body.put_u8(b'(');
    }
    body.put_slice(b"{\"channel\":");
    put_json_string(&mut body, channel.as_str());
    body.put_slice(b",\"messages\":");
    put_json_list(
        &mut body,
        messages.iter().map(|m| match &marked {
            Some(marked) if Some(m.id) == latest => &marked[..],
            _ if jsonp => &m.script_envelope()[..],
            _ => &m.envelope()[..],
        }),
    );
    body.put_slice(b",\"last_id\":");
    match last_id {
        Some(id) => body.put_slice(format!("\"{id}\"").as_bytes()),
        None => body.put_slice(b"null"),
    }
    body.put_slice(if gap {
        b",\"gap\":true"
    } else {
        b",\"gap\":false"
    });
    if let Some(why) = ended {
        body.put_slice(b",\"disconnect\":");
        body.put_slice(why.to_string().as_bytes());
    }
    body.put_u8(b'}');
    if jsonp {
        body.put_slice(b");");
    }
    body.freeze()
}

// ---- session dialect: a mailbox between polls ----

/// Frames waiting for the next long-poll of a session, at most `cap`
/// (beyond that the session ends as a slow consumer).
pub(crate) struct Mailbox {
    frames: Mutex<VecDeque<Bytes>>,
    cap: usize,
    notify: Notify,
    ended: AtomicBool,
    /// When a poll last started or ended.
    last_poll: Mutex<Instant>,
    /// Polls waiting now (a session with one waiting is not abandoned).
    waiting: AtomicUsize,
    /// When the client last made a request for this session (a poll, a
    /// send): a Pusher HTTP session's liveness ([`super::xhr`]).
    heard: Mutex<Instant>,
    /// The newest reader ([`Mailbox::attach`]): an older one still
    /// waiting leaves without taking anything (its client moved on).
    reader: AtomicU64,
}

impl Mailbox {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            frames: Mutex::new(VecDeque::new()),
            cap,
            notify: Notify::new(),
            ended: AtomicBool::new(false),
            last_poll: Mutex::new(Instant::now()),
            waiting: AtomicUsize::new(0),
            heard: Mutex::new(Instant::now()),
            reader: AtomicU64::new(0),
        })
    }

    /// The client made a request for this session.
    pub(crate) fn heard(&self) {
        *self.heard.lock() = Instant::now();
    }

    /// How long since the client made a request for this session.
    pub(crate) fn silent_for(&self) -> Duration {
        self.heard.lock().elapsed()
    }

    /// A new reader takes over: the one before it, if still waiting,
    /// leaves ([`Mailbox::take_as`] answers `None`). Returns its ticket.
    pub(crate) fn attach(&self) -> u64 {
        self.heard();
        let ticket = self.reader.fetch_add(1, Ordering::AcqRel) + 1;
        // Wakes every waiting take (each made its `Notified` before it
        // looked, so none misses this).
        self.notify.notify_waiters();
        ticket
    }

    pub(crate) fn put(&self, frame: Bytes) -> Result<(), Disconnect> {
        let mut frames = self.frames.lock();
        if frames.len() >= self.cap {
            return Err(SLOW_CONSUMER);
        }
        frames.push_back(frame);
        drop(frames);
        self.notify.notify_one();
        Ok(())
    }

    /// Frames taken but not sent go back to the front, in order (a
    /// Pusher stream at its size limit leaves them for the next one).
    pub(crate) fn put_back(&self, frames: Vec<Bytes>) {
        let mut queued = self.frames.lock();
        for frame in frames.into_iter().rev() {
            queued.push_front(frame);
        }
        drop(queued);
        self.notify.notify_one();
    }

    pub(crate) fn abandoned(&self) -> bool {
        self.waiting.load(Ordering::Acquire) == 0 && self.last_poll.lock().elapsed() >= POLL_LINGER
    }

    /// Resolves once the client is gone: it wakes when the linger since the
    /// last poll would end, not on a fixed tick.
    pub(crate) async fn until_abandoned(&self) {
        loop {
            let due = *self.last_poll.lock() + POLL_LINGER;
            tokio::time::sleep_until(due).await;
            if self.abandoned() {
                return;
            }
            if self.waiting.load(Ordering::Acquire) > 0 {
                // A poll is waiting: look again once it could have ended.
                tokio::time::sleep(POLL_LINGER).await;
            }
        }
    }

    /// The session ended: its last frames wait for one more poll.
    pub(crate) fn end(&self, last: Option<Bytes>) {
        if let Some(frame) = last {
            self.frames.lock().push_back(frame);
        }
        self.ended.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Waits up to `wait` for frames; returns them (maybe none) and whether
    /// the session has ended.
    pub(crate) async fn take(
        &self,
        wait: Duration,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> (Vec<Bytes>, bool) {
        self.take_inner(None, wait, shutdown)
            .await
            .unwrap_or((Vec::new(), false))
    }

    /// Whether the reader with this ticket is the newest.
    pub(crate) fn is_current(&self, ticket: u64) -> bool {
        self.reader.load(Ordering::Acquire) == ticket
    }

    /// [`Mailbox::take`] for the reader with this ticket; `None` once a
    /// newer reader attached (nothing was taken).
    pub(crate) async fn take_as(
        &self,
        ticket: u64,
        wait: Duration,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Option<(Vec<Bytes>, bool)> {
        self.take_inner(Some(ticket), wait, shutdown).await
    }

    async fn take_inner(
        &self,
        ticket: Option<u64>,
        wait: Duration,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Option<(Vec<Bytes>, bool)> {
        let _waiting = Waiting::new(self);
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            if ticket.is_some_and(|t| t != self.reader.load(Ordering::Acquire)) {
                // Pass on a wake-up this stale reader may have taken.
                self.notify.notify_one();
                return None;
            }
            let taken: Vec<Bytes> = self.frames.lock().drain(..).collect();
            let ended = self.ended.load(Ordering::Acquire);
            if !taken.is_empty() || ended || Instant::now() >= deadline {
                return Some((taken, ended));
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
            }
        }
    }
}

/// Counts a waiting poll for as long as it lives.
struct Waiting<'a>(&'a Mailbox);

impl<'a> Waiting<'a> {
    fn new(mailbox: &'a Mailbox) -> Self {
        *mailbox.last_poll.lock() = Instant::now();
        mailbox.waiting.fetch_add(1, Ordering::AcqRel);
        Self(mailbox)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        *self.0.last_poll.lock() = Instant::now();
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `{"frames":[...]}`: a session poll's answer.
pub(crate) fn frames_body(frames: &[Bytes]) -> Bytes {
    let mut body = BytesMut::from(&b"{\"frames\":"[..]);
    put_json_list(&mut body, frames.iter().map(|f| &f[..]));
    body.put_u8(b'}');
    body.freeze()
}

/// Drives a long-poll session until it ends: its pushes go to `mailbox`
/// as session frames. A client that stops polling for [`POLL_LINGER`] is
/// gone; a session that ended with something to say keeps its entry one
/// more linger, for the poll that takes the last frames.
pub(crate) async fn drive(mut down: Downstream, mailbox: Arc<Mailbox>) {
    let mut pushes = Vec::new();
    // The last frame, when the session ends with something to say.
    let end: Option<Bytes> = loop {
        tokio::select! {
            step = down.step(&mut pushes) => match step {
                Step::Ended => break None,
                Step::Heartbeat => {
                    if mailbox.abandoned() {
                        break None;
                    }
                    if let Err(why) = mailbox.put(PING) {
                        down.ended(why);
                        break Some(disconnect_frame(why));
                    }
                }
                Step::Pushed => {
                    let mut end = None;
                    for push in pushes.drain(..) {
                        if push.is_end() {
                            end = Some(session_frame(&push).0);
                            break;
                        }
                        if let Err(why) = mailbox.put(session_frame(&push).0) {
                            down.ended(why);
                            end = Some(disconnect_frame(why));
                            break;
                        }
                    }
                    pushes.clear();
                    if end.is_some() {
                        break end;
                    }
                }
            },
            () = mailbox.until_abandoned() => break None,
        }
    };
    let registered = down.take_registration();
    let said = end.is_some();
    mailbox.end(end);
    // The session ends now (its slot and the disconnect hook); the entry
    // waits for the last poll unless the client is already gone.
    drop(down);
    if said && !mailbox.abandoned() {
        tokio::time::sleep(POLL_LINGER).await;
    }
    drop(registered);
}
