//! Webhooks: the events in the engine's outbox (`user.online`,
//! `channel.vacated`, ...; see `herald_core::event`) posted to the
//! application, signed, retried, in order. docs/webhooks.md is the
//! receiver's guide.
//!
//! One [`Sender`] per node, and only the node holding the engine's
//! delivery lease sends (every node on a memory engine of its own; one
//! node of a Redis cluster, another taking over within the lease's TTL
//! when it dies). It loops: renew the lease, read the oldest
//! `batch_size` events, `POST` them as one JSON body signed with an HMAC of
//! the body (`X-Herald-Signature: sha256=<hex>`), and mark them done. One
//! delivery is in flight at a time, so events arrive in outbox order.
//!
//! A 2xx answer is success; anything else, or no answer within the
//! timeout, is retried: the whole batch with the same ids (the body's
//! `time_ms`, and so the signature, are those of each attempt), after
//! 0.5 s, 1 s, 2 s ... at most 30 s, renewing the lease while it waits.
//! After `max_attempts` the batch is given up: logged (warn), counted
//! (`herald_webhook_given_up_total`), marked done, and delivery goes on
//! with the next events. A node that loses its lease while waiting drops
//! the batch (the new holder delivers it again, same ids). Delivery is
//! therefore at least once: a receiver de-duplicates by id.
//!
//! The lease's TTL is twice the timeout plus a second, and it is renewed
//! before every attempt: a `POST` (bounded by the timeout) always ends
//! before the lease it was sent under could pass to another node, so two
//! nodes never have a delivery in flight at once unless a node stalls
//! longer than that mid-request.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::engine::{now_ms, Engine};
use herald_core::event::RecordedEvent;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::metrics::WebhookCounters;

/// How long one delivery may take unless configured otherwise.
pub(crate) const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per batch unless configured otherwise.
pub(crate) const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// Events per request unless configured otherwise.
pub(crate) const DEFAULT_BATCH_SIZE: usize = 100;
/// The largest `batch_size` accepted.
pub(crate) const MAX_BATCH_SIZE: usize = 10_000;
/// The wait before the first retry; each retry waits twice the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a node without the lease waits before asking again (also
/// after an engine error).
const LEASE_WAIT: Duration = Duration::from_secs(1);
/// How long the holder waits for new events before looking again.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// The signature header (lower case, as HTTP/2 and hyper write it).
pub(crate) const SIGNATURE_HEADER: &str = "x-herald-signature";

/// `[webhooks]`, validated.
#[derive(Clone)]
pub struct WebhookSettings {
    pub url: hyper::Uri,
    /// Signs every body (HMAC-SHA256).
    pub secret: String,
    /// Events recorded (and so sent).
    pub events: BTreeSet<String>,
    /// Bound on one request, answer included.
    pub timeout: Duration,
    /// Attempts per batch before it is given up (at least 1).
    pub max_attempts: u32,
    /// Events per request (at least 1).
    pub batch_size: usize,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

/// `sha256=` and the lowercase hex HMAC-SHA256 of `body` under `secret`.
pub(crate) fn signature(secret: &[u8], body: &[u8]) -> String {
    // An HMAC takes a key of any length: `new_from_slice` cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The wait before retry `n` (1 for the second attempt): 0.5 s, doubling,
/// at most 30 s.
pub(crate) fn backoff(n: u32) -> Duration {
    let factor = 2u32.saturating_pow(n.saturating_sub(1).min(16));
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

#[derive(Serialize)]
struct Body<'a> {
    time_ms: u64,
    events: Vec<Out<'a>>,
}

#[derive(Serialize)]
struct Out<'a> {
    id: &'a str,
    #[serde(flatten)]
    fields: &'a serde_json::Map<String, serde_json::Value>,
}

/// One request's body: `{"time_ms": <now>, "events": [{"id", ...}, ...]}`.
fn encode(time_ms: u64, events: &[(String, serde_json::Map<String, serde_json::Value>)]) -> Bytes {
    let body = Body {
        time_ms,
        events: events
            .iter()
            .map(|(id, fields)| Out { id, fields })
            .collect(),
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// How a signed body reaches the receiver: true for a 2xx answer within
/// the timeout. The real one is [`HttpPost`]; the tests' answer as told.
pub(crate) trait Post: Send + Sync + 'static {
    fn post(&self, body: Bytes, signature: String) -> impl Future<Output = bool> + Send;
}

/// `POST url` over HTTP/1.1 (hyper's pooled client).
pub(crate) struct HttpPost {
    url: hyper::Uri,
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpPost {
    pub(crate) fn new(settings: &WebhookSettings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.timeout));
        connector.set_nodelay(true);
        Self {
            url: settings.url.clone(),
            timeout: settings.timeout,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl Post for HttpPost {
    async fn post(&self, body: Bytes, signature: String) -> bool {
        let Ok(request) = hyper::Request::post(self.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(body))
        else {
            return false;
        };
        let exchange = async {
            let response = self.client.request(request).await.ok()?;
            let ok = response.status().is_success();
            // Read (and drop) the answer, so the connection can be reused.
            let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await;
            Some(ok)
        };
        matches!(
            tokio::time::timeout(self.timeout, exchange).await,
            Ok(Some(true))
        )
    }
}

/// This node's webhook sender (see the module docs).
pub(crate) struct Sender<P> {
    engine: Arc<dyn Engine>,
    settings: WebhookSettings,
    post: P,
    counters: Arc<WebhookCounters>,
}

/// Runs the sender with the real HTTP client until `shutdown`.
pub(crate) async fn run(
    engine: Arc<dyn Engine>,
    settings: WebhookSettings,
    counters: Arc<WebhookCounters>,
    shutdown: CancellationToken,
) {
    let post = HttpPost::new(&settings);
    Sender::new(engine, settings, post, counters)
        .run(shutdown)
        .await;
}

impl<P: Post> Sender<P> {
    pub(crate) fn new(
        engine: Arc<dyn Engine>,
        settings: WebhookSettings,
        post: P,
        counters: Arc<WebhookCounters>,
    ) -> Self {
        Self {
            engine,
            settings,
            post,
            counters,
        }
    }

    /// Delivers until `shutdown`; a delivery in flight then is dropped
    /// (its events stay in the outbox).
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = self.deliver_forever() => {}
        }
    }

    fn lease_ttl(&self) -> Duration {
        self.settings.timeout.saturating_mul(2) + Duration::from_secs(1)
    }

    async fn holds_lease(&self) -> bool {
        match self.engine.delivery_lease(self.lease_ttl()).await {
            Ok(held) => held,
            Err(e) => {
                tracing::debug!(error = %e, "webhook lease check failed");
                false
            }
        }
    }

    async fn deliver_forever(&self) {
        loop {
            if !self.holds_lease().await {
                tokio::time::sleep(LEASE_WAIT).await;
                continue;
            }
            let batch = match self.engine.pending_events(self.settings.batch_size).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::debug!(error = %e, "reading the webhook outbox failed");
                    tokio::time::sleep(LEASE_WAIT).await;
                    continue;
                }
            };
            if batch.is_empty() {
                self.engine.wait_for_events(IDLE_WAIT).await;
                continue;
            }
            self.deliver(batch).await;
        }
    }

    /// Sends one batch until it is answered with a 2xx or given up.
    async fn deliver(&self, batch: Vec<RecordedEvent>) {
        let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
        let events: Vec<(String, serde_json::Map<String, serde_json::Value>)> = batch
            .into_iter()
            .filter_map(|e| match serde_json::from_str(&e.json) {
                Ok(serde_json::Value::Object(fields)) => Some((e.id, fields)),
                _ => {
                    tracing::warn!(id = %e.id, "skipping an outbox entry that is not a JSON object");
                    None
                }
            })
            .collect();
        if events.is_empty() {
            self.done(&ids).await;
            return;
        }
        let attempts = self.settings.max_attempts.max(1);
        for attempt in 1..=attempts {
            if attempt > 1 && !self.wait_holding(backoff(attempt - 1)).await {
                // Another node holds the lease now and delivers the batch.
                return;
            }
            if !self.holds_lease().await {
                return;
            }
            let body = encode(now_ms(), &events);
            let signature = signature(self.settings.secret.as_bytes(), &body);
            if self.post.post(body, signature).await {
                self.counters.ok.fetch_add(1, Ordering::Relaxed);
                self.done(&ids).await;
                return;
            }
            self.counters.error.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(attempt, events = events.len(), "webhook delivery failed");
        }
        self.counters
            .given_up
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        tracing::warn!(
            url = %self.settings.url,
            events = events.len(),
            first = %events[0].0,
            last = %events[events.len() - 1].0,
            attempts,
            "webhook delivery given up"
        );
        self.done(&ids).await;
    }

    /// Waits `d`, renewing the lease every third of its TTL. False if the
    /// lease was lost meanwhile.
    async fn wait_holding(&self, d: Duration) -> bool {
        let step = self.lease_ttl() / 3;
        let mut left = d;
        while !left.is_zero() {
            let nap = left.min(step);
            tokio::time::sleep(nap).await;
            left -= nap;
            if !left.is_zero() && !self.holds_lease().await {
                return false;
            }
        }
        true
    }

    /// Marks events done; a failure leaves them in the outbox, to be sent
    /// again (a receiver de-duplicates by id).
    async fn done(&self, ids: &[String]) {
        if let Err(e) = self.engine.events_done(ids).await {
            tracing::warn!(error = %e, "marking webhook events done failed; they will be sent again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::event::EventOptions;
    use herald_core::namespace::Namespaces;
    use herald_core::Node;
    use parking_lot::Mutex;
    use tokio::time::Instant;

    #[test]
    fn signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231-style check against a well-known vector.
        assert_eq!(
            signature(b"key", b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn backoff_doubles_from_half_a_second_up_to_thirty() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(
            waits,
            [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    /// Answers each post as told (then 2xx), recording when and what.
    struct Script {
        answers: Mutex<Vec<bool>>,
        seen: Arc<Mutex<Vec<(Instant, serde_json::Value, String)>>>,
    }

    impl Post for Script {
        async fn post(&self, body: Bytes, signature: String) -> bool {
            let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
            assert_eq!(signature, super::signature(b"s3cret", &body), "signed");
            self.seen.lock().push((Instant::now(), v, signature));
            let mut answers = self.answers.lock();
            if answers.is_empty() {
                true
            } else {
                answers.remove(0)
            }
        }
    }

    fn settings(max_attempts: u32, batch_size: usize) -> WebhookSettings {
        WebhookSettings {
            url: hyper::Uri::from_static("http://127.0.0.1:9/hook"),
            secret: "s3cret".into(),
            events: ["t.e".to_owned()].into(),
            timeout: Duration::from_secs(1),
            max_attempts,
            batch_size,
        }
    }

    struct Run {
        node: Node,
        seen: Arc<Mutex<Vec<(Instant, serde_json::Value, String)>>>,
        counters: Arc<WebhookCounters>,
        stop: CancellationToken,
    }

    async fn start(answers: Vec<bool>, max_attempts: u32, batch_size: usize) -> Run {
        let options = EventOptions {
            events: ["t.e".to_owned()].into(),
            ..EventOptions::default()
        };
        let node = Node::memory_with_events(Namespaces::default(), Some(options));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let counters = Arc::new(WebhookCounters::default());
        let stop = CancellationToken::new();
        let sender = Sender::new(
            Arc::clone(&node.engine),
            settings(max_attempts, batch_size),
            Script {
                answers: Mutex::new(answers),
                seen: Arc::clone(&seen),
            },
            Arc::clone(&counters),
        );
        tokio::spawn(sender.run(stop.clone()));
        Run {
            node,
            seen,
            counters,
            stop,
        }
    }

    async fn record(node: &Node, n: u64) {
        let mut fields = serde_json::Map::new();
        fields.insert("n".into(), n.into());
        node.engine
            .record_event("t.e", fields)
            .await
            .expect("record");
    }

    /// Lets the paused clock run until `done` holds (bounded).
    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: {what}");
    }

    fn ns(v: &serde_json::Value) -> Vec<u64> {
        v["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["n"].as_u64().expect("n"))
            .collect()
    }

    fn ids(v: &serde_json::Value) -> Vec<String> {
        v["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["id"].as_str().expect("id").to_owned())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_batch_is_retried_whole_after_the_backoff_then_done() {
        let run = start(vec![false, false], 8, 100).await;
        for n in 1..=3 {
            record(&run.node, n).await;
        }
        until("the third attempt", || run.seen.lock().len() == 3).await;
        let seen = run.seen.lock().clone();
        assert!(seen.iter().all(|(_, v, _)| ns(v) == [1, 2, 3]));
        assert!(
            seen.iter().all(|(_, v, _)| ids(v) == ids(&seen[0].1)),
            "same ids"
        );
        assert_eq!(seen[1].0 - seen[0].0, Duration::from_millis(500));
        assert_eq!(seen[2].0 - seen[1].0, Duration::from_millis(1_000));
        until("the success counted", || {
            run.counters.ok.load(Ordering::Relaxed) == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let left = run.node.engine.pending_events(10).await.expect("pending");
        assert!(left.is_empty(), "done: {left:?}");
        assert_eq!(run.counters.error.load(Ordering::Relaxed), 2);
        assert_eq!(run.counters.given_up.load(Ordering::Relaxed), 0);
        run.stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_given_up_after_max_attempts_and_delivery_goes_on() {
        let run = start(vec![false, false, false], 3, 2).await;
        for n in 1..=3 {
            record(&run.node, n).await;
        }
        until("the next batch", || run.seen.lock().len() == 4).await;
        let seen = run.seen.lock().clone();
        let batches: Vec<Vec<u64>> = seen.iter().map(|(_, v, _)| ns(v)).collect();
        assert_eq!(batches, [vec![1, 2], vec![1, 2], vec![1, 2], vec![3]]);
        assert_eq!(run.counters.given_up.load(Ordering::Relaxed), 2);
        assert_eq!(run.counters.error.load(Ordering::Relaxed), 3);
        until("the last one done", || {
            run.counters.ok.load(Ordering::Relaxed) == 1
        })
        .await;
        run.stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn batches_go_in_outbox_order_one_at_a_time() {
        let run = start(Vec::new(), 8, 2).await;
        for n in 1..=5 {
            record(&run.node, n).await;
        }
        until("three batches", || run.seen.lock().len() == 3).await;
        let seen = run.seen.lock().clone();
        let all: Vec<u64> = seen.iter().flat_map(|(_, v, _)| ns(v)).collect();
        assert_eq!(all, [1, 2, 3, 4, 5]);
        let every: Vec<String> = seen.iter().flat_map(|(_, v, _)| ids(v)).collect();
        let parsed: Vec<herald_core::MessageId> =
            every.iter().map(|id| id.parse().expect("id")).collect();
        assert!(parsed.windows(2).all(|w| w[0] < w[1]), "{every:?}");
        assert!(seen.iter().all(|(_, v, _)| v["time_ms"].as_u64().is_some()));
        run.stop.cancel();
    }
}
