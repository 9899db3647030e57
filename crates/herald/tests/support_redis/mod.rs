//! A real `redis-server` and a cluster of real `herald` nodes sharing it,
//! for the multi-node tests.
//!
//! Each test starts its own Redis on a free loopback port (no persistence,
//! so a restart loses every key, as the data-loss cases need) and three
//! nodes configured with `engine = "redis://..."`. Every process is killed
//! on drop. `redis-server` must be installed: without it the tests fail,
//! they do not skip.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// How long Redis may take to accept connections after being spawned.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(5);

/// Config shared by every node of a test cluster (appended after the
/// harness' standard sections).
pub const CLUSTER_CONFIG: &str = r#"
[[namespace]]
prefix = "mn:"
history_size = 1000
history_ttl = "10m"

[[namespace]]
prefix = "room:"
presence = true

[auth]
hmac_secret = "multinode-test-secret-at-least-32-bytes-long"
"#;

/// A `redis-server` child on a fixed loopback port, killed on drop. The
/// child sits behind a Mutex so that a test can kill and restart it while
/// other futures use the cluster.
pub struct RedisServer {
    pub port: u16,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let server = Self {
            port,
            child: Mutex::new(None),
        };
        server.spawn();
        server
    }

    /// Starts redis-server on `self.port` and waits (bounded) until it
    /// accepts connections.
    pub fn spawn(&self) {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH (apt-get install redis-server)");
        let deadline = Instant::now() + REDIS_START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-server did not listen on port {} within {REDIS_START_TIMEOUT:?}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut slot = self.child.lock().expect("redis child lock");
        assert!(slot.is_none(), "redis-server started twice");
        *slot = Some(child);
    }

    /// SIGKILLs redis-server and reaps it.
    pub fn kill(&self) {
        let child = self.child.lock().expect("redis child lock").take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

static CLEAR_TEST_ENGINE: Once = Once::new();

/// One Redis and three nodes on it.
pub struct Cluster {
    /// Dropped after the nodes (fields drop in declaration order), so nodes
    /// never log a Redis outage while the test ends.
    pub nodes: Vec<Server>,
    pub redis: RedisServer,
}

impl Cluster {
    pub async fn start() -> Cluster {
        Self::start_with("").await
    }

    /// As [`Cluster::start`], with `extra` TOML appended to every node's
    /// config (after [`CLUSTER_CONFIG`]).
    pub async fn start_with(extra: &str) -> Cluster {
        Self::start_with_env(extra, &[]).await
    }

    /// As [`Cluster::start_with`], with `env` set for every node (for
    /// top-level keys, which `extra`, appended after sections, cannot set:
    /// `HERALD_PRESENCE_GRACE`, ...).
    pub async fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Cluster {
        // The harness adds `--engine $HERALD_TEST_ENGINE` when that is set,
        // which would point these nodes at another Redis than the one this
        // test kills and restarts. Every cluster goes through here before
        // spawning, and the harness reads the variable only when spawning,
        // so clearing it once up front is enough.
        CLEAR_TEST_ENGINE.call_once(|| std::env::remove_var("HERALD_TEST_ENGINE"));
        let redis = RedisServer::start();
        let engine = format!("\"{}\"", redis.url());
        // Spawn all three, then wait: the nodes start side by side.
        let processes: Vec<Process> = (0..3)
            .map(|_| {
                let mut builder = Server::builder()
                    .set("engine", &engine)
                    .extra_config(CLUSTER_CONFIG)
                    .extra_config(extra);
                for (k, v) in env {
                    builder = builder.env(k, v);
                }
                builder.spawn()
            })
            .collect();
        let nodes = processes
            .into_iter()
            .map(|process| {
                let addr: SocketAddr = process.wait_listening();
                Server {
                    process,
                    addr,
                    key: None,
                }
            })
            .collect();
        Cluster { nodes, redis }
    }

    pub fn a(&self) -> &Server {
        &self.nodes[0]
    }

    pub fn b(&self) -> &Server {
        &self.nodes[1]
    }

    pub fn c(&self) -> &Server {
        &self.nodes[2]
    }
}

// ---------------------------------------------------------------------------
// Transport-neutral subscribers
// ---------------------------------------------------------------------------

/// One thing a subscriber saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    Gap,
    Msg {
        id: String,
        text: String,
    },
    /// A close frame or final disconnect notice, with its code.
    Disconnect(u16),
    /// The connection ended without a notice.
    End,
}

/// The streaming transports the failover tests drive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Ws,
    Sse,
    Ndjson,
}

/// An open streaming subscription on one node.
pub enum Sub {
    Ws(Ws),
    Sse(SseLines),
    Ndjson(Ndjson),
}

impl Sub {
    /// Opens `path` with `kind`; an HTTP refusal is returned as
    /// `Err("HTTP <status> <body>")`.
    pub async fn try_open(
        server: &Server,
        kind: Kind,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Sub, String> {
        let accept = match kind {
            Kind::Ws => return server.try_ws(path, headers).await.map(Sub::Ws),
            Kind::Sse => "text/event-stream",
            Kind::Ndjson => "application/x-ndjson",
        };
        let mut req = server.get(path).header("Accept", accept);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let mut http = req.stream().await;
        if http.status != 200 {
            let body = within(IO_TIMEOUT, "a refusal body", http.read_to_end()).await;
            return Err(format!(
                "HTTP {} {}",
                http.status,
                String::from_utf8_lossy(&body)
            ));
        }
        let ct = http.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with(accept),
            "{kind:?} {path}: content-type {ct:?}"
        );
        let lines = Ndjson::new(http);
        Ok(match kind {
            Kind::Sse => Sub::Sse(SseLines::new(lines)),
            _ => Sub::Ndjson(lines),
        })
    }

    pub async fn open(server: &Server, kind: Kind, path: &str, headers: &[(&str, &str)]) -> Sub {
        Self::try_open(server, kind, path, headers)
            .await
            .unwrap_or_else(|e| panic!("{kind:?} {path}: {e}"))
    }

    /// The next message, gap, disconnect or end, within `limit`.
    pub async fn next(&mut self, channel: &str, limit: Duration) -> Got {
        match self {
            Sub::Ws(ws) => loop {
                match ws.next_event(limit).await {
                    WsEvent::Ping => continue,
                    WsEvent::Json(v) => return json_got(&v, channel),
                    WsEvent::Close(Some((code, _))) => return Got::Disconnect(code),
                    WsEvent::Close(None) | WsEvent::End(_) => return Got::End,
                }
            },
            Sub::Sse(sse) => sse.next(channel, limit).await,
            Sub::Ndjson(nd) => loop {
                match nd.next_line(limit).await {
                    None => return Got::End,
                    Some(l) if l.trim().is_empty() => continue,
                    Some(l) => {
                        let v: Value = serde_json::from_str(&l)
                            .unwrap_or_else(|e| panic!("NDJSON line is not JSON ({e}): {l:?}"));
                        return json_got(&v, channel);
                    }
                }
            },
        }
    }

    /// Reads `n` messages, failing on anything else.
    pub async fn messages(&mut self, channel: &str, n: usize) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next(channel, IO_TIMEOUT).await {
                Got::Msg { id, text } => out.push((id, text)),
                other => panic!(
                    "expected message {} of {n} on {channel}, got {other:?}",
                    out.len() + 1
                ),
            }
        }
        out
    }

    /// Asserts nothing arrives for `quiet` (WebSocket pings aside).
    pub async fn expect_silence(&mut self, channel: &str, quiet: Duration) {
        if let Ok(got) = tokio::time::timeout(quiet, self.next(channel, quiet * 2)).await {
            panic!("expected nothing more on {channel}, got {got:?}");
        }
    }
}

/// Server-Sent Events parsed from lines, as an EventSource would.
pub struct SseLines {
    lines: Ndjson,
    event: Option<String>,
    id: Option<String>,
    data: Vec<String>,
}

impl SseLines {
    fn new(lines: Ndjson) -> Self {
        Self {
            lines,
            event: None,
            id: None,
            data: Vec::new(),
        }
    }

    async fn next(&mut self, channel: &str, limit: Duration) -> Got {
        loop {
            let Some(line) = self.lines.next_line(limit).await else {
                return Got::End;
            };
            if line.is_empty() {
                let event = self.event.take().unwrap_or_else(|| "message".into());
                let id = self.id.take();
                let data = std::mem::take(&mut self.data).join("\n");
                if data.is_empty() {
                    continue;
                }
                return sse_got(&event, id, &data, channel);
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => self.event = Some(value.to_string()),
                "id" => self.id = Some(value.to_string()),
                "data" => self.data.push(value.to_string()),
                _ => {}
            }
        }
    }
}

fn sse_got(event: &str, id: Option<String>, data: &str, channel: &str) -> Got {
    let notice = || -> Value {
        let v: Value = serde_json::from_str(data)
            .unwrap_or_else(|e| panic!("SSE {event} data is not JSON ({e}): {data:?}"));
        assert_eq!(v["channel"], channel, "SSE {event} event {v}");
        v
    };
    match event {
        "message" => Got::Msg {
            id: id.unwrap_or_else(|| panic!("SSE message without id: {data:?}")),
            text: data.to_string(),
        },
        "gap" => {
            notice();
            Got::Gap
        }
        "disconnect" => {
            let v = notice();
            let code = v["code"]
                .as_u64()
                .unwrap_or_else(|| panic!("SSE disconnect without code: {v}"));
            Got::Disconnect(code as u16)
        }
        other => panic!("unexpected SSE event {other:?} with data {data:?}"),
    }
}

/// Classifies a JSON envelope, gap marker or disconnect object.
pub fn json_got(v: &Value, channel: &str) -> Got {
    assert_eq!(v["channel"], channel, "channel of {v}");
    if v.get("gap").is_some() {
        assert_gap_marker(v, channel);
        return Got::Gap;
    }
    if let Some(d) = v.get("disconnect") {
        let code = d["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("disconnect without code: {v}"));
        return Got::Disconnect(code as u16);
    }
    let id = envelope_id(v, channel);
    let text = v["data"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a text payload: {v}"))
        .to_string();
    Got::Msg { id, text }
}

/// What a client does after `4005`: reopens `path` on `server` until a
/// subscription holds, within `limit`. While its engine reconnects a node may
/// refuse with `503 engine_unavailable` or accept and close at once with
/// `4005`; both are retried, anything else fails. Returns the subscription
/// and the first thing it delivered.
pub async fn resubscribe(
    server: &Server,
    kind: Kind,
    path: &str,
    headers: &[(&str, &str)],
    channel: &str,
    limit: Duration,
) -> (Sub, Got) {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match Sub::try_open(server, kind, path, headers).await {
            Err(e) => {
                assert!(
                    e.starts_with("HTTP 503") && e.contains("engine_unavailable"),
                    "{kind:?} {path}: unexpected refusal {e}"
                );
                last = e;
            }
            Ok(mut sub) => match sub.next(channel, IO_TIMEOUT).await {
                Got::Disconnect(4005) => last = "accepted, then told 4005".into(),
                got => return (sub, got),
            },
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{kind:?} {path}: no subscription within {limit:?}; last: {last}");
}

/// A long-poll GET of `path` retried while the node answers
/// `503 engine_unavailable`, within `limit`; returns the 200 answer.
pub async fn poll_retrying(server: &Server, path: &str, limit: Duration) -> Value {
    eventually(limit, &format!("GET {path} answers 200"), || async {
        let resp = server.get(path).try_send(IO_TIMEOUT).await?;
        match resp.status {
            200 => Ok(resp.json()),
            503 => {
                resp.assert_error(503, "engine_unavailable");
                Err(resp.text())
            }
            other => panic!("GET {path}: {other} {}", resp.text()),
        }
    })
    .await
}

/// Turns a long-poll answer's `messages` into `(id, text)` pairs.
pub fn poll_messages(answer: &Value, channel: &str) -> Vec<(String, String)> {
    answer["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("long-poll answer without messages: {answer}"))
        .iter()
        .map(|m| match json_got(m, channel) {
            Got::Msg { id, text } => (id, text),
            other => panic!("long-poll message {m} read as {other:?}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------

/// POST /api/tokens on `server`; returns the token.
pub async fn token(server: &Server, body: Value) -> String {
    let resp = server
        .post("/api/tokens")
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await;
    assert_eq!(resp.status, 201, "POST /api/tokens {body}: {}", resp.text());
    resp.json()["token"]
        .as_str()
        .unwrap_or_else(|| panic!("token answer without token: {}", resp.text()))
        .to_string()
}

/// POST /auth/ticket on `server` with `token`; returns the ticket.
pub async fn ticket(server: &Server, token: &str) -> String {
    let resp = server
        .post("/auth/ticket")
        .header("Authorization", &format!("Bearer {token}"))
        .send()
        .await;
    assert_eq!(resp.status, 201, "POST /auth/ticket: {}", resp.text());
    resp.json()["ticket"]
        .as_str()
        .unwrap_or_else(|| panic!("ticket answer without ticket: {}", resp.text()))
        .to_string()
}
