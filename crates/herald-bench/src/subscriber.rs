//! One subscriber: connect over the chosen transport, then count marks
//! until told to stop.
//!
//! The transports differ only in how bytes arrive (WebSocket frames, an SSE
//! body, repeated long-poll answers); every piece of received text goes
//! through the same tolerant [`payload::scan`](crate::payload::scan) and the
//! subscriber's own [`SeqTracker`]. Shared counters are atomics read by the
//! worker's progress ticker; the latency histogram is sharded behind short
//! mutexes that are never held across an `.await`.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig, Message};
use tokio_tungstenite::WebSocketStream;

use crate::cli::{Config, Transport};
use crate::http::{self, Body, Conn};
use crate::payload::{self, Mark};
use crate::tally::{Counts, Latency, SeqTracker};
use crate::template::{acked_message_id, render_command, user_token, UrlTemplate};

/// WebSocket read buffer per connection: frames here are small.
const WS_READ_BUFFER: usize = 4 * 1024;
/// Latency histogram shards; subscriber `i` uses shard `i % LATENCY_SHARDS`.
pub const LATENCY_SHARDS: usize = 16;
/// Pause before connect retry `k` is `k` times this.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// Pause before a long-poll subscriber retries after an error.
const POLL_RETRY: Duration = Duration::from_millis(200);
/// Most bytes an SSE subscriber buffers without seeing a newline.
const MAX_SSE_LINE: usize = 1 << 20;

/// State shared by all subscribers of one worker.
pub struct Shared {
    pub connected: AtomicU64,
    pub connect_errors: AtomicU64,
    /// Failed connect attempts that were retried.
    pub connect_retries: AtomicU64,
    /// Subscribers whose connection ended before the stop signal.
    pub dropped: AtomicU64,
    pub received: AtomicU64,
    pub unique: AtomicU64,
    /// Wall clock (ns) of the latest first-time delivery.
    pub last_delivery_ns: AtomicU64,
    /// Microseconds from `started` to the latest connect success or failure.
    pub connects_done_us: AtomicU64,
    pub started: std::time::Instant,
    /// Connect error kinds and counts. Locked briefly, never across await.
    pub error_kinds: Mutex<BTreeMap<String, u64>>,
    /// Channels whose subscriber failed to connect (one entry per failure).
    pub failed_channels: Mutex<Vec<u64>>,
    pub latency: Vec<Mutex<Latency>>,
    /// Flips to true when the worker is told to stop.
    pub stop: watch::Receiver<bool>,
    /// Limits connects in flight.
    pub connect_slots: Semaphore,
}

impl Shared {
    pub fn new(stop: watch::Receiver<bool>, connect_concurrency: usize) -> Self {
        Self {
            connected: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            connect_retries: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            received: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            connects_done_us: AtomicU64::new(0),
            started: std::time::Instant::now(),
            error_kinds: Mutex::new(BTreeMap::new()),
            failed_channels: Mutex::new(Vec::new()),
            latency: (0..LATENCY_SHARDS)
                .map(|_| Mutex::new(Latency::new()))
                .collect(),
            stop,
            connect_slots: Semaphore::new(connect_concurrency),
        }
    }

    fn connect_finished(&self) {
        let us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.connects_done_us.fetch_max(us, Ordering::Relaxed);
    }

    fn connect_failed(&self, channel: u64, kind: String) {
        self.connect_finished();
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.error_kinds.lock() {
            *m.entry(kind).or_insert(0) += 1;
        }
        if let Ok(mut v) = self.failed_channels.lock() {
            v.push(channel);
        }
    }

    /// Merged latency of all shards.
    pub fn latency(&self) -> Latency {
        let mut all = Latency::new();
        for shard in &self.latency {
            if let Ok(l) = shard.lock() {
                all.merge(&l);
            }
        }
        all
    }
}

/// What one subscriber needs to know.
pub struct Spec {
    pub index: u64,
    pub channel: u64,
    pub source: Option<IpAddr>,
}

/// Per-subscriber receive state.
struct Receiver<'a> {
    shared: &'a Shared,
    tracker: SeqTracker,
    shard: usize,
    marks: Vec<Mark>,
}

impl Receiver<'_> {
    /// Scans one piece of received text and accounts for its marks.
    fn on_bytes(&mut self, bytes: &[u8]) {
        self.marks.clear();
        payload::scan_into(bytes, &mut self.marks);
        if self.marks.is_empty() {
            return;
        }
        let now = payload::now_ns();
        let mut fresh = 0;
        // Lock held only for the loop below; no await inside.
        let mut hist = self.shared.latency[self.shard].lock().ok();
        for m in &self.marks {
            use crate::tally::Outcome;
            match self.tracker.record(m.seq) {
                Outcome::New | Outcome::OutOfOrder => {
                    fresh += 1;
                    if let Some(h) = hist.as_mut() {
                        h.record_ns(m.sent_ns, now);
                    }
                }
                Outcome::Duplicate | Outcome::Unexpected => {}
            }
        }
        drop(hist);
        self.shared
            .received
            .fetch_add(self.marks.len() as u64, Ordering::Relaxed);
        if fresh > 0 {
            self.shared.unique.fetch_add(fresh, Ordering::Relaxed);
            self.shared
                .last_delivery_ns
                .fetch_max(now, Ordering::Relaxed);
        }
    }
}

/// Runs one subscriber to completion and returns its counts.
pub async fn run(spec: Spec, cfg: Arc<Config>, shared: Arc<Shared>) -> Counts {
    let mut stop = shared.stop.clone();
    let mut rx = Receiver {
        shared: &shared,
        tracker: SeqTracker::new(cfg.args.messages),
        shard: (spec.index % LATENCY_SHARDS as u64) as usize,
        marks: Vec::new(),
    };
    let channel = cfg.channel_name(spec.channel);
    let timeout = Duration::from_secs_f64(cfg.args.connect_timeout);

    let mut attempt = 0;
    let conn = loop {
        let opened = {
            let Ok(_permit) = shared.connect_slots.acquire().await else {
                return rx.tracker.counts;
            };
            tokio::select! {
                r = tokio::time::timeout(timeout, open(&cfg, cfg.sub_url(spec.index), &channel, spec.source, &mut rx)) => match r {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("timeout".to_string()),
                },
                _ = stop.wait_for(|s| *s) => return rx.tracker.counts,
            }
        };
        match opened {
            Ok(c) => break c,
            Err(kind) if attempt >= cfg.args.connect_retries => {
                shared.connect_failed(spec.channel, kind);
                return rx.tracker.counts;
            }
            Err(_) => {
                // Bounded by --connect-retries; the slot is released while waiting.
                attempt += 1;
                shared.connect_retries.fetch_add(1, Ordering::Relaxed);
                let backoff = RETRY_BACKOFF * attempt;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return rx.tracker.counts,
                }
            }
        }
    };
    shared.connect_finished();
    shared.connected.fetch_add(1, Ordering::Relaxed);

    let ended = tokio::select! {
        r = receive(conn, &mut rx) => Some(r),
        _ = stop.wait_for(|s| *s) => None,
    };
    if ended.is_some() {
        shared.dropped.fetch_add(1, Ordering::Relaxed);
    }
    rx.tracker.counts
}

/// An open subscription.
enum Open {
    /// A WebSocket, and for sessions the answer to the server's ping push
    /// and the command acknowledging a marked message.
    Ws(
        Box<WebSocketStream<TcpStream>>,
        Option<Pong>,
        Option<String>,
    ),
    Sse {
        stream: BufReader<TcpStream>,
        body: Body,
    },
    LongPoll(Box<LongPoll>),
}

struct LongPoll {
    conn: Conn,
    path: String,
    timeout: u32,
    since: Option<String>,
    last_modified: Option<String>,
    etag: Option<String>,
}

fn io_kind(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(99) => "addr-not-available".into(),
        Some(24) => "too-many-open-files".into(),
        _ => format!("{:?}", e.kind()).to_lowercase(),
    }
}

fn ws_kind(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(r) => format!("http-{}", r.status().as_u16()),
        tungstenite::Error::Io(e) => io_kind(e),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed".into(),
        other => format!(
            "ws-{}",
            other.to_string().split(':').next().unwrap_or("error")
        ),
    }
    .replace(' ', "-")
}

async fn open_ws(
    addr: std::net::SocketAddr,
    url: String,
    source: Option<IpAddr>,
) -> Result<WebSocketStream<TcpStream>, String> {
    let tcp = crate::net::connect(addr, source)
        .await
        .map_err(|e| io_kind(&e))?;
    let config = WebSocketConfig::default().read_buffer_size(WS_READ_BUFFER);
    let (ws, _resp) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .map_err(|e| ws_kind(&e))?;
    Ok(ws)
}

/// Connects and subscribes. Frames that arrive while waiting for a session
/// acknowledgement are accounted for.
async fn open(
    cfg: &Config,
    sub_url: &UrlTemplate,
    channel: &str,
    source: Option<IpAddr>,
    rx: &mut Receiver<'_>,
) -> Result<Open, String> {
    let a = &cfg.args;
    match a.transport {
        Transport::Ws => {
            let url = sub_url.ws_url_for(channel);
            Ok(Open::Ws(
                Box::new(open_ws(sub_url.addr, url, source).await?),
                None,
                None,
            ))
        }
        Transport::SessionWs => {
            let url = sub_url.ws_url_for(channel);
            let mut ws = open_ws(sub_url.addr, url, source).await?;
            if !a.session_connect.is_empty() {
                let mut cmd = render_command(&a.session_connect, channel, 0);
                if !a.hmac_secret.is_empty() {
                    cmd = cmd.replace("{token}", &user_token(&a.hmac_secret, channel));
                }
                ws.send(Message::text(cmd)).await.map_err(|e| ws_kind(&e))?;
            }
            let cmd = render_command(&a.session_subscribe, channel, 1);
            ws.send(Message::text(cmd)).await.map_err(|e| ws_kind(&e))?;
            if !a.session_ack.is_empty() {
                let ack = render_command(&a.session_ack, channel, 1);
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => {
                            rx.on_bytes(t.as_bytes());
                            if contains(t.as_bytes(), ack.as_bytes()) {
                                break;
                            }
                        }
                        Some(Ok(Message::Binary(b))) => rx.on_bytes(&b),
                        Some(Ok(Message::Close(_))) | None => {
                            return Err("closed-before-ack".into())
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(ws_kind(&e)),
                    }
                }
            }
            let pong = (!a.session_pong.is_empty()).then(|| Pong {
                reply: a.session_pong.clone(),
                marker: a.session_ping.clone(),
            });
            let ack = (!a.session_ack_each.is_empty()).then(|| a.session_ack_each.clone());
            Ok(Open::Ws(Box::new(ws), pong, ack))
        }
        // The three streaming bodies are read alike: marks are scanned in
        // whole lines, whatever wraps them.
        Transport::Sse | Transport::Ndjson | Transport::Iframe => {
            let accept = match a.transport {
                Transport::Ndjson => "application/x-ndjson",
                Transport::Iframe => "text/html",
                _ => "text/event-stream",
            };
            let headers = vec![
                ("Accept".to_string(), accept.to_string()),
                ("Cache-Control".to_string(), "no-cache".to_string()),
            ];
            let mut path = sub_url.path_for(channel);
            if a.transport == Transport::Iframe {
                path.push(if path.contains('?') { '&' } else { '?' });
                path.push_str("transport=iframe&callback=cb");
            }
            let (stream, head, body) =
                http::open_stream(sub_url.addr, source, &sub_url.host, &path, &headers)
                    .await
                    .map_err(|e| io_kind(&e))?;
            if head.status != 200 {
                return Err(format!("http-{}", head.status));
            }
            Ok(Open::Sse { stream, body })
        }
        Transport::LongPoll => {
            let mut conn = Conn::new(sub_url.addr, sub_url.host.clone(), source);
            conn.connect().await.map_err(|e| io_kind(&e))?;
            Ok(Open::LongPoll(Box::new(LongPoll {
                conn,
                path: sub_url.path_for(channel),
                timeout: a.poll_timeout,
                since: None,
                last_modified: None,
                etag: None,
            })))
        }
    }
}

/// The answer to a server's ping push, and what marks one (empty: Herald's
/// `{"ping"`, [`is_ping_push`]).
struct Pong {
    reply: String,
    marker: String,
}

impl Pong {
    fn is_ping(&self, frame: &[u8]) -> bool {
        if self.marker.is_empty() {
            is_ping_push(frame)
        } else {
            contains(frame, self.marker.as_bytes())
        }
    }
}

/// True for a session ping push such as `{"ping":{}}` or `{"ping": {}}`.
fn is_ping_push(frame: &[u8]) -> bool {
    let t = frame.trim_ascii_start();
    t.starts_with(b"{") && t[1..].trim_ascii_start().starts_with(b"\"ping\"")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Receives until the connection ends (the caller also races the stop
/// signal). Returns why it ended.
async fn receive(conn: Open, rx: &mut Receiver<'_>) -> String {
    match conn {
        Open::Ws(mut ws, pong, ack) => {
            let mut next_id = 2u64;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        if let Some(p) = &pong {
                            if p.is_ping(t.as_bytes()) {
                                if let Err(e) = ws.send(Message::text(p.reply.clone())).await {
                                    return ws_kind(&e);
                                }
                                continue;
                            }
                        }
                        rx.on_bytes(t.as_bytes());
                        if let Some(template) = &ack {
                            if let Some(id) = acked_message_id(t.as_bytes()) {
                                let cmd = template
                                    .replace("{id}", &next_id.to_string())
                                    .replace("{msgid}", id);
                                next_id += 1;
                                if let Err(e) = ws.send(Message::text(cmd)).await {
                                    return ws_kind(&e);
                                }
                            }
                        }
                    }
                    Some(Ok(Message::Binary(b))) => rx.on_bytes(&b),
                    Some(Ok(Message::Close(_))) | None => return "closed".into(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return ws_kind(&e),
                }
            }
        }
        Open::Sse {
            mut stream,
            mut body,
        } => {
            let mut buf = Vec::new();
            loop {
                match body.next(&mut stream, &mut buf).await {
                    Ok(true) => {}
                    Ok(false) => return "closed".into(),
                    Err(e) => return io_kind(&e),
                }
                // Scan complete lines only; a mark never spans a line.
                if let Some(end) = buf.iter().rposition(|&b| b == b'\n') {
                    rx.on_bytes(&buf[..end]);
                    buf.drain(..=end);
                } else if buf.len() > MAX_SSE_LINE {
                    return "sse-line-too-long".into();
                }
            }
        }
        Open::LongPoll(mut lp) => {
            let mut failures = 0u32;
            loop {
                match lp.poll_once(rx).await {
                    Ok(()) => failures = 0,
                    Err(_) => {
                        failures += 1;
                        // Bounded: a subscriber gives up after repeated
                        // failures in a row.
                        if failures > 50 {
                            return "long-poll-failing".into();
                        }
                        tokio::time::sleep(POLL_RETRY).await;
                    }
                }
            }
        }
    }
}

/// The `last_id` of a Herald long-poll answer.
#[derive(serde::Deserialize)]
struct PollAnswer {
    last_id: Option<String>,
}

impl LongPoll {
    async fn poll_once(&mut self, rx: &mut Receiver<'_>) -> io::Result<()> {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        let mut path = format!("{}{sep}timeout={}", self.path, self.timeout);
        if let Some(since) = &self.since {
            path.push_str("&since=");
            path.push_str(since);
        }
        let mut headers = Vec::new();
        if let Some(v) = &self.last_modified {
            headers.push(("If-Modified-Since".to_string(), v.clone()));
        }
        if let Some(v) = &self.etag {
            headers.push(("If-None-Match".to_string(), v.clone()));
        }
        let resp = self.conn.request("GET", &path, &headers, &[]).await?;
        // Nchan-style cursors.
        if let Some(v) = resp.head.header("last-modified") {
            self.last_modified = Some(v.to_string());
        }
        if let Some(v) = resp.head.header("etag") {
            self.etag = Some(v.to_string());
        }
        match resp.head.status {
            200 => {
                rx.on_bytes(&resp.body);
                // Herald-style cursor; ids are opaque but must be URL-safe.
                if let Ok(a) = serde_json::from_slice::<PollAnswer>(&resp.body) {
                    if let Some(id) = a.last_id.filter(|id| {
                        id.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.~:".contains(c))
                    }) {
                        self.since = Some(id);
                    }
                }
                Ok(())
            }
            // Timed out with nothing new.
            204 | 304 | 408 => Ok(()),
            s => Err(io::Error::other(format!("http-{s}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_push_detection() {
        assert!(is_ping_push(br#"{"ping":{}}"#));
        assert!(is_ping_push(br#" { "ping": {}}"#));
        assert!(!is_ping_push(br#"{"id":3,"pong":{}}"#));
        assert!(!is_ping_push(
            br#"{"channel":"ping","data":{"seq":1,"t":2}}"#
        ));
        assert!(!is_ping_push(b""));
    }

    #[test]
    fn contains_substring() {
        assert!(contains(br#"{"id":1,"subscribe":{}}"#, br#""id":1"#));
        assert!(!contains(br#"{"id":12}"#, br#""id":1,"#));
        assert!(contains(b"x", b""));
    }
}
