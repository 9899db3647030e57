//! The webhook receiver the webhook tests share: a plain HTTP/1.1 server
//! on a tokio listener that checks the `X-Herald-Signature` of every
//! request against the HMAC-SHA256 of its body (or, for a Pusher app's
//! webhooks, `X-Pusher-Key` and `X-Pusher-Signature`, the bare hex HMAC
//! under the app's secret), answers as the test says, and keeps what it
//! got.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::eventually;

/// What the servers sign with.
pub const SECRET: &str = "webhook-test-secret";
/// Bound on events arriving.
pub const WAIT: Duration = Duration::from_secs(15);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub at: Instant,
    /// What the receiver answered.
    pub status: u16,
    pub body: Value,
}

impl Delivery {
    pub fn ids(&self) -> Vec<String> {
        events_of(&self.body)
            .iter()
            .map(|e| e["id"].as_str().expect("an event id").to_owned())
            .collect()
    }
}

pub fn events_of(body: &Value) -> Vec<Value> {
    body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("a body without events: {body}"))
        .clone()
}

#[derive(Default)]
struct Log {
    deliveries: Vec<Delivery>,
    /// Requests refused for their signature, content type or method.
    bad: Vec<String>,
}

/// An HTTP receiver on a loopback port that checks each request's
/// `X-Herald-Signature` against the HMAC-SHA256 of its body and answers
/// with the status `answer` gives for the request's number (0 first).
pub struct Receiver {
    pub url: String,
    /// Pusher's format: the app key and secret it checks.
    pusher: Option<(String, String)>,
    log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Answer = Arc<dyn Fn(usize) -> u16 + Send + Sync>;

impl Receiver {
    pub async fn start(answer: impl Fn(usize) -> u16 + Send + Sync + 'static) -> Self {
        Self::start_as(None, answer).await
    }

    /// A receiver of a Pusher app's webhooks (`key`, `secret`), at
    /// `/pusher/webhook`.
    pub async fn start_pusher(
        key: &str,
        secret: &str,
        answer: impl Fn(usize) -> u16 + Send + Sync + 'static,
    ) -> Self {
        Self::start_as(Some((key.to_owned(), secret.to_owned())), answer).await
    }

    async fn start_as(
        pusher: Option<(String, String)>,
        answer: impl Fn(usize) -> u16 + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let path = if pusher.is_some() {
            "/pusher/webhook"
        } else {
            "/herald/events"
        };
        let url = format!("http://{}{path}", listener.local_addr().expect("addr"));
        let log = Arc::new(Mutex::new(Log::default()));
        let answer: Answer = Arc::new(answer);
        let shared = Arc::clone(&log);
        let check = pusher.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(
                    tcp,
                    check.clone(),
                    Arc::clone(&answer),
                    Arc::clone(&shared),
                ));
            }
        });
        Self {
            url,
            pusher,
            log,
            task,
        }
    }

    /// A Pusher receiver's events of the requests answered 2xx, in the
    /// order delivered (Pusher's events have no ids).
    pub fn pusher_events(&self) -> Vec<Value> {
        assert!(self.pusher.is_some(), "a Pusher receiver");
        self.deliveries()
            .iter()
            .filter(|d| (200..300).contains(&d.status))
            .flat_map(|d| events_of(&d.body))
            .collect()
    }

    /// Waits until `done` holds of [`Receiver::pusher_events`].
    pub async fn wait_pusher(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        eventually(WAIT, what, || {
            let events = self.pusher_events();
            let ok = done(&events);
            async move {
                if ok {
                    Ok(events)
                } else {
                    Err(format!("{} events: {events:?}", events.len()))
                }
            }
        })
        .await
    }

    /// Every request so far; fails the test if any was badly signed.
    pub fn deliveries(&self) -> Vec<Delivery> {
        let log = lock(&self.log);
        assert!(log.bad.is_empty(), "badly signed requests: {:?}", log.bad);
        log.deliveries.clone()
    }

    /// The events of the requests answered 2xx, each id once (a receiver
    /// de-duplicates), in the order first delivered; also checks that ids
    /// first seen grow.
    pub fn events(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut last: Option<(u64, u64)> = None;
        for d in self
            .deliveries()
            .iter()
            .filter(|d| (200..300).contains(&d.status))
        {
            for e in events_of(&d.body) {
                let id = e["id"].as_str().expect("id").to_owned();
                if seen.insert(id.clone()) {
                    let parsed = parse_id(&id);
                    assert!(
                        last.is_none_or(|l| l < parsed),
                        "event ids first delivered grow: {id} after {last:?}"
                    );
                    last = Some(parsed);
                    out.push(e);
                }
            }
        }
        out
    }

    /// Waits until `done` holds of the events (see [`Receiver::events`]).
    pub async fn wait(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        eventually(WAIT, what, || {
            let events = self.events();
            let ok = done(&events);
            async move {
                if ok {
                    Ok(events)
                } else {
                    Err(format!("{} events: {events:?}", events.len()))
                }
            }
        })
        .await
    }
}

fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("an id like ms-seq: {id}"));
    (ms.parse().expect("id ms"), seq.parse().expect("id seq"))
}

/// The lowercase hex HMAC-SHA256 of `body` under `secret`.
pub fn hex_hmac(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn sign(body: &[u8]) -> String {
    format!("sha256={}", hex_hmac(SECRET, body))
}

/// Serves one keep-alive connection: requests with a `Content-Length` body.
async fn serve(
    mut tcp: TcpStream,
    pusher: Option<(String, String)>,
    answer: Answer,
    log: Arc<Mutex<Log>>,
) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < length {
            let mut chunk = [0u8; 8192];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let line = if pusher.is_some() {
            "POST /pusher/webhook "
        } else {
            "POST /herald/events "
        };
        let problem = if !head.starts_with(line) {
            Some(format!("request line {:?}", head.lines().next()))
        } else if header("content-type").as_deref() != Some("application/json") {
            Some(format!("content-type {:?}", header("content-type")))
        } else if let Some((key, secret)) = &pusher {
            if header("x-pusher-key").as_deref() != Some(key.as_str()) {
                Some(format!("x-pusher-key {:?}", header("x-pusher-key")))
            } else if header("x-pusher-signature") != Some(hex_hmac(secret, &body)) {
                Some(format!(
                    "x-pusher-signature {:?} for {:?}",
                    header("x-pusher-signature"),
                    String::from_utf8_lossy(&body)
                ))
            } else {
                None
            }
        } else if header("x-herald-signature") != Some(sign(&body)) {
            Some(format!(
                "signature {:?} for {:?}",
                header("x-herald-signature"),
                String::from_utf8_lossy(&body)
            ))
        } else {
            None
        };
        let status = {
            let mut log = lock(&log);
            match problem {
                Some(p) => {
                    log.bad.push(p);
                    401
                }
                None => {
                    let body: Value = serde_json::from_slice(&body)
                        .unwrap_or_else(|e| panic!("a body that is not JSON ({e}): {body:?}"));
                    assert!(body["time_ms"].as_u64().is_some(), "time_ms in {body}");
                    let status = answer(log.deliveries.len());
                    log.deliveries.push(Delivery {
                        at: Instant::now(),
                        status,
                        body,
                    });
                    status
                }
            }
        };
        let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
        if tcp.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The event names about one user or channel, in order:
/// `names(&events, "user", "ann")`.
pub fn names(events: &[Value], field: &str, name: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e[field] == name)
        .map(|e| e["event"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Per user, the ids of its events of `kind`.
pub fn by_user(events: &[Value], kind: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for e in events.iter().filter(|e| e["event"] == kind) {
        out.entry(e["user"].as_str().unwrap_or("").to_owned())
            .or_default()
            .push(e["id"].as_str().unwrap_or("").to_owned());
    }
    out
}
