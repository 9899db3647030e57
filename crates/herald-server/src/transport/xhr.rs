//! pusher-js's HTTP fallbacks, `xhr_streaming` and `xhr_polling`
//! (docs/pusher.md): a Pusher session like a WebSocket's, whose frames go
//! out as lines of a SockJS-like framing ([`encode::xhr_line`]).
//!
//! pusher-js names an HTTP socket session itself, in the path
//! (`…/app/{key}/{server}/{session}/…`); the first receive request for a
//! name opens the session. A task ([`drive`]) runs it and puts its lines
//! in the session's bounded [`Mailbox`]: `o`, then
//! `pusher:connection_established`, then every reply, event and presence
//! change, and at the end the `pusher:error` frame and the close
//! `c[code,"reason"]`. Receive requests only read the mailbox:
//!
//! - streaming ([`stream`]): the response body is the mailbox, read until
//!   the session ends or a newer receive request takes over, with a
//!   heartbeat line `h` at least every `heartbeat`, which pusher-js answers
//!   with an empty send. pusher-js drops its stream and opens a new one
//!   once it holds more than 256 Ki characters ([`STREAM_LIMIT`]), at once,
//!   whatever is in flight: so a stream stops reading the mailbox as soon
//!   as it has written that much, and what follows waits there for the new
//!   one (nothing is written into a response the client dropped);
//! - polling ([`poll`]): what is queued, or the first line within one
//!   `heartbeat`, else `h`; then the response ends and pusher-js polls
//!   again.
//!
//! Sends (`xhr_send`) feed the session's command queue in the registry.
//! Every wait is bounded: a session that has no receive request waiting
//! for [`POLL_LINGER`] is abandoned, and one whose client made no request
//! for two heartbeats ends with 4201, as a silent WebSocket does; a
//! mailbox over `queue_size` lines ends it as a slow consumer (4100).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use herald_core::disconnect::{Disconnect, HEARTBEAT_TIMEOUT, SHUTDOWN};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::heartbeat_interval;
use super::poll::{Mailbox, POLL_LINGER};
use super::registry::{Entry, Registry};
use super::stream::no_buffering;
use crate::protocol::pusher::{self, encode, Wire};
use crate::protocol::{Push, Session};

/// Most queue items turned into lines per wake-up.
const BATCH: usize = 64;

/// The characters (UTF-16 units, as `responseText.length` counts them)
/// past which pusher-js drops a stream and opens another
/// (`MAX_BUFFER_LENGTH` in its `http_request.ts`).
pub(crate) const STREAM_LIMIT: usize = 256 * 1024;

/// How often a stream past [`STREAM_LIMIT`] looks whether its client took
/// over (it takes no more lines meanwhile).
const PARKED_CHECK: Duration = Duration::from_millis(50);

/// The content type of every answer (SockJS's, which Pusher's servers use).
const CONTENT_TYPE: &str = "application/javascript; charset=UTF-8";

/// How a receive request answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Receive {
    /// `…/xhr_streaming`: lines as they come, for as long as it lasts.
    Streaming,
    /// `…/xhr`: what is there (or the first line, or `h`), then the end.
    Polling,
}

/// `a[pusher:error]` and `c[code,"reason"]`: how a session ends.
fn closing_lines(code: pusher::Code, message: &str) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(&encode::xhr_line(&encode::error(code, message)));
    out.extend_from_slice(&encode::xhr_close(code));
    out.freeze()
}

/// The answer to a receive request refused before it has a session (an
/// unknown app key, an app at its quota, a bad protocol version): the
/// session opens and closes at once, with the code a WebSocket would get,
/// so that pusher-js acts on it as it does there.
pub(crate) fn refused(code: pusher::Code, message: &str) -> Response {
    let mut out = BytesMut::from(&encode::XHR_OPEN[..]);
    out.extend_from_slice(&closing_lines(code, message));
    response(Body::from(out.freeze()))
}

fn response(body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    no_buffering(&mut response);
    response
}

/// Runs a Pusher HTTP session until it ends: its lines go to `mailbox`.
/// A session that ended with something to say keeps its entry one more
/// linger, for the receive request that takes the last lines.
pub(crate) async fn drive(mut session: Session, entry: Entry, mailbox: Arc<Mailbox>) {
    let Entry {
        mut commands,
        registered,
        ..
    } = entry;
    let end = run(&mut session, &mut commands, &mailbox).await;
    let said = end.is_some();
    mailbox.end(end);
    // The session ends now (its slots, the disconnect hook, presence).
    drop(session);
    drop(commands);
    if said && !mailbox.abandoned() {
        tokio::time::sleep(POLL_LINGER).await;
    }
    drop(registered);
}

/// The session ends with `why`: its last lines.
fn ending(session: &mut Session, why: Disconnect) -> Option<Bytes> {
    session.ended(why);
    Some(closing_lines(pusher::close_for(why), why.reason))
}

/// Serves the session; returns its last lines, if it has any to say.
async fn run(
    session: &mut Session,
    commands: &mut mpsc::Receiver<Bytes>,
    mailbox: &Mailbox,
) -> Option<Bytes> {
    let state = session.state().clone();
    let period = state.config.heartbeat;
    if let Err(why) = mailbox.put(encode::XHR_OPEN) {
        return ending(session, why);
    }
    let hello = Box::pin(session.pusher_open()).await;
    if let Some(why) = session.closing() {
        // The refusal is the hello itself.
        session.ended(why);
        let mut out = BytesMut::from(&encode::xhr_line(&hello)[..]);
        out.extend_from_slice(&encode::xhr_close(pusher::close_for(why)));
        return Some(out.freeze());
    }
    if let Err(why) = mailbox.put(Wire::Xhr.frame(hello)) {
        return ending(session, why);
    }
    let mut heartbeat = heartbeat_interval(period);
    let shutdown = state.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            // Pusher has no reconnect delay: 4200, reconnect at once.
            () = &mut shutdown => return ending(session, SHUTDOWN),
            command = commands.recv() => {
                // `None`: the entry is gone, and so is the client.
                let command = command?;
                // Boxed: a command's future (hooks, the engine) is large.
                for reply in Box::pin(session.handle_pusher(&command)).await {
                    if let Err(why) = mailbox.put(Wire::Xhr.frame(reply)) {
                        return ending(session, why);
                    }
                }
                if let Some(why) = session.closing() {
                    return ending(session, why);
                }
            }
            item = session.subscriber().next() => {
                let mut next = Some(item);
                let mut taken = 0;
                while let Some(item) = next {
                    let (pusher, _) = session.pusher_parts()?;
                    match pusher.push_on(Wire::Xhr, item) {
                        Some(Push::Frame(line)) => {
                            if let Err(why) = mailbox.put(line) {
                                return ending(session, why);
                            }
                        }
                        Some(Push::End(why)) => return ending(session, why),
                        // Nothing for this connection (its own event, a gap).
                        _ => {}
                    }
                    taken += 1;
                    next = if taken < BATCH { session.subscriber().try_next() } else { None };
                }
            }
            _ = heartbeat.tick() => {
                if mailbox.silent_for() >= 2 * period {
                    return ending(session, HEARTBEAT_TIMEOUT);
                }
            }
            () = mailbox.until_abandoned() => return None,
        }
    }
}

/// Removes a session's entry once a receive request took its last lines.
pub(crate) struct Finish {
    pub(crate) registry: Arc<Registry>,
    pub(crate) id: String,
    pub(crate) serial: u64,
}

impl Finish {
    fn done(&self) {
        self.registry.remove_exact(&self.id, self.serial);
    }
}

/// What a read of the mailbox answers: its lines, and whether they are
/// the last (the session ended; a session that ended without a word gets
/// the close "reconnect immediately").
fn lines(frames: Vec<Bytes>, ended: bool, finish: &Finish) -> (Bytes, bool) {
    if ended {
        finish.done();
    }
    if frames.is_empty() && ended {
        return (encode::xhr_close(pusher::RECONNECT), true);
    }
    let mut out = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
    for frame in &frames {
        out.extend_from_slice(frame);
    }
    (out.freeze(), ended)
}

/// A polling receive: what is queued, or the first line within `wait`,
/// else a heartbeat; a receive that a newer one replaced answers a
/// heartbeat too.
pub(crate) async fn poll(
    mailbox: Arc<Mailbox>,
    ticket: u64,
    finish: Finish,
    wait: Duration,
    shutdown: CancellationToken,
) -> Response {
    let body = match mailbox.take_as(ticket, wait, &shutdown).await {
        Some((frames, ended)) if !frames.is_empty() || ended => lines(frames, ended, &finish).0,
        _ => encode::XHR_HEARTBEAT,
    };
    response(Body::from(body))
}

struct Reader {
    mailbox: Arc<Mailbox>,
    ticket: u64,
    finish: Finish,
    period: Duration,
    /// When the next heartbeat line is due (one per period at least, busy
    /// or not: pusher-js's answer to it is the session's sign of life).
    next_heartbeat: Instant,
    /// What this response has written, in UTF-16 units.
    written: usize,
    shutdown: CancellationToken,
    done: bool,
}

impl Reader {
    /// The next chunk, or `None` when the response ends.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if self.done {
                return None;
            }
            if self.written > STREAM_LIMIT {
                // pusher-js is opening a new stream: wait for it, taking
                // nothing (what comes meanwhile is the new one's). Bounded:
                // a client that never comes leaves the session to be
                // abandoned (no `Waiting` here), and this response ends.
                let parked = Instant::now();
                while self.mailbox.is_current(self.ticket) && parked.elapsed() < POLL_LINGER {
                    tokio::time::sleep(PARKED_CHECK).await;
                }
                return None;
            }
            let wait = self
                .next_heartbeat
                .saturating_duration_since(Instant::now());
            let (mut frames, mut ended) = self
                .mailbox
                .take_as(self.ticket, wait, &self.shutdown)
                .await?;
            // Up to the first line past the limit; the rest goes back.
            let mut written = self.written;
            let keep = frames
                .iter()
                .position(|f| {
                    written += utf16_len(f);
                    written > STREAM_LIMIT
                })
                .map_or(frames.len(), |i| i + 1);
            if keep < frames.len() {
                self.mailbox.put_back(frames.split_off(keep));
                // The session's last lines are among those put back.
                ended = false;
            }
            let (mut chunk, last) = match (frames.is_empty(), ended) {
                (true, false) => (Bytes::new(), false),
                _ => lines(frames, ended, &self.finish),
            };
            self.done = last;
            if !last && written <= STREAM_LIMIT && Instant::now() >= self.next_heartbeat {
                let mut with = BytesMut::from(&chunk[..]);
                with.extend_from_slice(&encode::XHR_HEARTBEAT);
                chunk = with.freeze();
                self.next_heartbeat = Instant::now() + self.period;
                written += utf16_len(&encode::XHR_HEARTBEAT);
            }
            self.written = written;
            if !chunk.is_empty() {
                return Some(chunk);
            }
        }
    }
}

/// How many UTF-16 units `bytes` (UTF-8) are: one per character, two for
/// one outside the Basic Multilingual Plane.
fn utf16_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0xBF => 0,
            0xF0..=0xFF => 2,
            _ => 1,
        })
        .sum()
}

/// A streaming receive: the response body reads the mailbox until the
/// session ends or a newer receive request takes over.
pub(crate) fn stream(
    mailbox: Arc<Mailbox>,
    ticket: u64,
    finish: Finish,
    period: Duration,
    shutdown: CancellationToken,
) -> Response {
    let reader = Reader {
        mailbox,
        ticket,
        finish,
        period,
        next_heartbeat: Instant::now() + period,
        written: 0,
        shutdown,
        done: false,
    };
    let body = futures_util::stream::unfold(reader, |mut r| async move {
        let chunk = r.next().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), r))
    });
    response(Body::from_stream(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, FileConfig, Overrides};
    use crate::protocol::admission;
    use crate::state::AppState;

    fn state() -> AppState {
        let file: FileConfig = toml::from_str(
            "[[pusher.apps]]\nid = \"1\"\nkey = \"key\"\nsecret = \"secret-secret\"",
        )
        .expect("toml");
        let config = Config::resolve(file, Overrides::default()).expect("config");
        let node = herald_core::Node::memory(config.namespaces.clone());
        AppState::new(node, config, CancellationToken::new()).expect("state")
    }

    fn session(state: &AppState) -> Session {
        let slot = state
            .pusher_by_key("key")
            .and_then(|app| app.take_slot())
            .expect("slot");
        Session::pusher(state.clone(), slot, admission::Admitted::anonymous())
    }

    #[test]
    fn utf16_lengths() {
        assert_eq!(utf16_len(b"a[\"x\"]\n"), 7);
        assert_eq!(utf16_len("é€😀".as_bytes()), 1 + 1 + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_past_the_limit_leaves_the_rest_for_the_next() {
        let mailbox = Mailbox::new(1024);
        let registry = Arc::new(Registry::default());
        let finish = || Finish {
            registry: Arc::clone(&registry),
            id: "x".into(),
            serial: 0,
        };
        let line = Bytes::from(format!("a[\"{}\"]\n", "x".repeat(1000)));
        for _ in 0..400 {
            mailbox.put(line.clone()).expect("room");
        }
        let period = Duration::from_secs(15);
        let mut old = Reader {
            mailbox: Arc::clone(&mailbox),
            ticket: mailbox.attach(),
            finish: finish(),
            period,
            next_heartbeat: Instant::now() + period,
            written: 0,
            shutdown: CancellationToken::new(),
            done: false,
        };
        let first = old.next().await.expect("a chunk");
        // Up to the first line past the limit, and not one more.
        let per_line = utf16_len(&line);
        assert_eq!(utf16_len(&first), (STREAM_LIMIT / per_line + 1) * per_line);
        // Past the limit: nothing more is taken, until the new one comes.
        mailbox.put(line.clone()).expect("room");
        let parked = tokio::spawn(async move { old.next().await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!parked.is_finished());
        let ticket = mailbox.attach();
        assert!(parked.await.expect("joined").is_none(), "the old one ends");
        let taken = mailbox
            .take_as(ticket, Duration::ZERO, &CancellationToken::new())
            .await;
        let expected = 400 - (STREAM_LIMIT / per_line + 1) + 1;
        assert_eq!(
            taken.map(|(f, _)| f.len()),
            Some(expected),
            "the rest waited, in order"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_reader_takes_over() {
        let mailbox = Mailbox::new(8);
        let shutdown = CancellationToken::new();
        let old = mailbox.attach();
        let (m, s) = (Arc::clone(&mailbox), shutdown.clone());
        let waiting =
            tokio::spawn(async move { m.take_as(old, Duration::from_secs(30), &s).await });
        tokio::task::yield_now().await;
        let new = mailbox.attach();
        assert!(
            waiting.await.expect("joined").is_none(),
            "the old reader left"
        );
        mailbox.put(Bytes::from_static(b"h\n")).expect("room");
        let taken = mailbox
            .take_as(new, Duration::from_secs(1), &shutdown)
            .await;
        assert_eq!(taken.map(|(f, e)| (f.len(), e)), Some((1, false)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_closed_with_4201() {
        let state = state();
        let registry = Arc::new(Registry::default());
        let mailbox = Mailbox::new(16);
        let entry = registry
            .register_as("pusher/key/1/a", Some(Arc::clone(&mailbox)))
            .expect("new");
        let started = Instant::now();
        let driver = tokio::spawn(drive(session(&state), entry, Arc::clone(&mailbox)));
        // A stream stays open, but the client never sends (no `[]` to the
        // heartbeats): two heartbeats of silence end it.
        let ticket = mailbox.attach();
        let shutdown = CancellationToken::new();
        let mut got = Vec::new();
        loop {
            let (frames, ended) = mailbox
                .take_as(ticket, Duration::from_secs(60), &shutdown)
                .await
                .expect("the only reader");
            got.extend(frames.iter().flat_map(|f| f.to_vec()));
            if ended {
                break;
            }
        }
        let text = String::from_utf8(got).expect("utf-8");
        assert!(text.starts_with("o\na["), "{text}");
        assert!(text.contains("pusher:connection_established"), "{text}");
        assert!(
            text.ends_with("c[4201,\"pong reply not received\"]\n"),
            "{text}"
        );
        let heartbeat = state.config.heartbeat;
        let took = started.elapsed();
        assert!(took >= 2 * heartbeat && took <= 3 * heartbeat, "{took:?}");
        // Its entry waits one linger for the last receive, then goes.
        driver.await.expect("driver");
        assert!(registry.get_pusher("pusher/key/1/a").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_without_a_receive_is_let_go() {
        let state = state();
        let registry = Arc::new(Registry::default());
        let mailbox = Mailbox::new(16);
        let entry = registry
            .register_as("pusher/key/1/b", Some(Arc::clone(&mailbox)))
            .expect("new");
        let started = Instant::now();
        drive(session(&state), entry, Arc::clone(&mailbox)).await;
        assert!(started.elapsed() <= POLL_LINGER + Duration::from_secs(1));
        assert!(registry.get_pusher("pusher/key/1/b").is_none());
        assert_eq!(state.counters.open_total(), 0);
    }
}
