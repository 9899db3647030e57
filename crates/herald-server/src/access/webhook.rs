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

use crate::access::pusher_webhook::{self, AppTarget};
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

/// The lowercase hex HMAC-SHA256 of `body` under `secret`.
pub(crate) fn hex_hmac(secret: &[u8], body: &[u8]) -> String {
    // An HMAC takes a key of any length: `new_from_slice` cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// `sha256=` and the lowercase hex HMAC-SHA256 of `body` under `secret`.
pub(crate) fn signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex_hmac(secret, body))
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

type Fields = serde_json::Map<String, serde_json::Value>;

/// One request's body: `{"time_ms": <now>, "events": [{"id", ...}, ...]}`.
fn encode(time_ms: u64, events: &[(String, &Fields)]) -> Bytes {
    let body = Body {
        time_ms,
        events: events
            .iter()
            .map(|(id, fields)| Out { id, fields })
            .collect(),
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// Where the sender posts, and how patiently: Herald's own receiver
/// (`[webhooks]`) and each Pusher app's with a `webhook_url`. The
/// timeout, attempts and batch size are `[webhooks]`' (or their defaults)
/// for every destination.
#[derive(Clone)]
pub(crate) struct Targets {
    pub(crate) herald: Option<WebhookSettings>,
    /// Each app with its own request counters.
    pub(crate) apps: Vec<(AppTarget, Arc<WebhookCounters>)>,
    pub(crate) timeout: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) batch_size: usize,
}

impl Targets {
    /// `[webhooks]` (if any) and the apps; `None` when nobody gets events.
    pub(crate) fn new(
        herald: Option<WebhookSettings>,
        apps: Vec<(AppTarget, Arc<WebhookCounters>)>,
    ) -> Option<Self> {
        if herald.is_none() && apps.is_empty() {
            return None;
        }
        let (timeout, max_attempts, batch_size) = herald.as_ref().map_or(
            (
                DEFAULT_WEBHOOK_TIMEOUT,
                DEFAULT_MAX_ATTEMPTS,
                DEFAULT_BATCH_SIZE,
            ),
            |h| (h.timeout, h.max_attempts, h.batch_size),
        );
        Some(Self {
            herald,
            apps,
            timeout,
            max_attempts,
            batch_size,
        })
    }
}

/// How a body reaches a receiver: true for a 2xx answer within the
/// timeout. The real one is [`HttpPost`]; the tests' answer as told.
pub(crate) trait Post: Send + Sync + 'static {
    fn post(
        &self,
        url: &hyper::Uri,
        body: Bytes,
        headers: Vec<(&'static str, String)>,
    ) -> impl Future<Output = bool> + Send;
}

/// `POST url` over HTTP/1.1 (hyper's pooled client).
pub(crate) struct HttpPost {
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpPost {
    pub(crate) fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        Self {
            timeout,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl Post for HttpPost {
    async fn post(
        &self,
        url: &hyper::Uri,
        body: Bytes,
        headers: Vec<(&'static str, String)>,
    ) -> bool {
        let mut request = hyper::Request::post(url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let Ok(request) = request.body(Full::new(body)) else {
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

/// What one destination gets of a batch.
enum Part<'a> {
    Herald(&'a WebhookSettings, Vec<(String, &'a Fields)>),
    App(&'a AppTarget, &'a WebhookCounters, Vec<serde_json::Value>),
}

impl Part<'_> {
    fn len(&self) -> usize {
        match self {
            Part::Herald(_, events) => events.len(),
            Part::App(_, _, events) => events.len(),
        }
    }

    /// The URL, the body signed now, and its headers.
    fn request(&self, time_ms: u64) -> (&hyper::Uri, Bytes, Vec<(&'static str, String)>) {
        match self {
            Part::Herald(settings, events) => {
                let body = encode(time_ms, events);
                let sig = signature(settings.secret.as_bytes(), &body);
                (&settings.url, body, vec![(SIGNATURE_HEADER, sig)])
            }
            Part::App(app, _, events) => {
                let body = serde_json::json!({"time_ms": time_ms, "events": events});
                let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
                let sig = hex_hmac(app.secret.as_bytes(), &body);
                let headers = vec![
                    (pusher_webhook::KEY_HEADER, app.key.clone()),
                    (pusher_webhook::SIGNATURE_HEADER, sig),
                ];
                (&app.webhook.url, body, headers)
            }
        }
    }
}

/// This node's webhook sender (see the module docs).
pub(crate) struct Sender<P> {
    engine: Arc<dyn Engine>,
    targets: Targets,
    post: P,
    /// Herald's destination's counters (each app has its own).
    counters: Arc<WebhookCounters>,
}

/// Runs the sender with the real HTTP client until `shutdown`.
pub(crate) async fn run(
    engine: Arc<dyn Engine>,
    targets: Targets,
    counters: Arc<WebhookCounters>,
    shutdown: CancellationToken,
) {
    let post = HttpPost::new(targets.timeout);
    Sender::new(engine, targets, post, counters)
        .run(shutdown)
        .await;
}

impl<P: Post> Sender<P> {
    pub(crate) fn new(
        engine: Arc<dyn Engine>,
        targets: Targets,
        post: P,
        counters: Arc<WebhookCounters>,
    ) -> Self {
        Self {
            engine,
            targets,
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
        self.targets.timeout.saturating_mul(2) + Duration::from_secs(1)
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
            let batch = match self.engine.pending_events(self.targets.batch_size).await {
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

    /// Each destination's part of a batch (destinations that get none of
    /// it are left out).
    fn parts<'a>(&'a self, events: &'a [(String, Fields)]) -> Vec<Part<'a>> {
        let mut parts = Vec::new();
        if let Some(settings) = &self.targets.herald {
            let mine: Vec<(String, &Fields)> = events
                .iter()
                .filter(|(_, f)| {
                    f.get("event")
                        .and_then(|e| e.as_str())
                        .is_some_and(|e| settings.events.contains(e))
                })
                .map(|(id, f)| (id.clone(), f))
                .collect();
            if !mine.is_empty() {
                parts.push(Part::Herald(settings, mine));
            }
        }
        for (app, counters) in &self.targets.apps {
            let mine: Vec<serde_json::Value> =
                events.iter().filter_map(|(_, f)| app.convert(f)).collect();
            if !mine.is_empty() {
                parts.push(Part::App(app, counters, mine));
            }
        }
        parts
    }

    fn counters_of<'a>(&'a self, part: &'a Part<'_>) -> &'a WebhookCounters {
        match part {
            Part::Herald(..) => &self.counters,
            Part::App(_, counters, _) => counters,
        }
    }

    /// Sends one batch until every destination answered it with a 2xx or
    /// gave it up. A destination that answered is not sent it again; one
    /// that failed is retried, with the others' answers kept.
    async fn deliver(&self, batch: Vec<RecordedEvent>) {
        let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
        let events: Vec<(String, Fields)> = batch
            .into_iter()
            .filter_map(|e| match serde_json::from_str(&e.json) {
                Ok(serde_json::Value::Object(fields)) => Some((e.id, fields)),
                _ => {
                    tracing::warn!(id = %e.id, "skipping an outbox entry that is not a JSON object");
                    None
                }
            })
            .collect();
        let mut parts = self.parts(&events);
        if parts.is_empty() {
            self.done(&ids).await;
            return;
        }
        let attempts = self.targets.max_attempts.max(1);
        for attempt in 1..=attempts {
            if attempt > 1 && !self.wait_holding(backoff(attempt - 1)).await {
                // Another node holds the lease now and delivers the batch.
                return;
            }
            if !self.holds_lease().await {
                return;
            }
            let mut failed = Vec::new();
            for part in parts {
                let (url, body, headers) = part.request(now_ms());
                let counters = self.counters_of(&part);
                if self.post.post(url, body, headers).await {
                    counters.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.error.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(attempt, %url, events = part.len(), "webhook delivery failed");
                    failed.push(part);
                }
            }
            parts = failed;
            if parts.is_empty() {
                self.done(&ids).await;
                return;
            }
        }
        for part in &parts {
            let counters = self.counters_of(part);
            counters
                .given_up
                .fetch_add(part.len() as u64, Ordering::Relaxed);
            let (url, _, _) = part.request(0);
            let app = match part {
                Part::App(app, ..) => app.id.as_str(),
                Part::Herald(..) => "",
            };
            tracing::warn!(
                %url,
                app,
                events = part.len(),
                first = %ids[0],
                last = %ids[ids.len() - 1],
                attempts,
                "webhook delivery given up"
            );
        }
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
        async fn post(
            &self,
            _url: &hyper::Uri,
            body: Bytes,
            headers: Vec<(&'static str, String)>,
        ) -> bool {
            let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
            let signature = headers
                .iter()
                .find(|(n, _)| *n == SIGNATURE_HEADER)
                .map(|(_, v)| v.clone())
                .expect("a signature");
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
            Targets::new(Some(settings(max_attempts, batch_size)), Vec::new()).expect("targets"),
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

    /// A post as [`ByUrl`] saw it: path, body, headers, raw body.
    type Seen = (
        String,
        serde_json::Value,
        Vec<(&'static str, String)>,
        Bytes,
    );

    /// Records each post by URL; the app's first one fails.
    struct ByUrl {
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Post for ByUrl {
        async fn post(
            &self,
            url: &hyper::Uri,
            body: Bytes,
            headers: Vec<(&'static str, String)>,
        ) -> bool {
            let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
            let mut seen = self.seen.lock();
            let app = url.path() == "/pusher";
            let first_for_app = app && !seen.iter().any(|(u, ..)| u == "/pusher");
            seen.push((url.path().to_owned(), v, headers, body));
            !first_for_app
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_destination_is_retried_alone_in_pushers_format() {
        use herald_core::event::CHANNEL_OCCUPIED;
        let options = EventOptions {
            events: ["t.e".to_owned(), CHANNEL_OCCUPIED.to_owned()].into(),
            ..EventOptions::default()
        };
        let node = Node::memory_with_events(Namespaces::default(), Some(options));
        let app = AppTarget {
            id: "1".into(),
            key: "app-key".into(),
            secret: "app-secret".into(),
            prefix: "pusher:1:".into(),
            webhook: pusher_webhook::PusherWebhook {
                url: hyper::Uri::from_static("http://127.0.0.1:9/pusher"),
                events: [CHANNEL_OCCUPIED.to_owned()].into(),
            },
        };
        let app_counters = Arc::new(WebhookCounters::default());
        let targets = Targets::new(
            Some(settings(8, 100)),
            vec![(app, Arc::clone(&app_counters))],
        )
        .expect("targets");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let counters = Arc::new(WebhookCounters::default());
        let stop = CancellationToken::new();
        let sender = Sender::new(
            Arc::clone(&node.engine),
            targets,
            ByUrl {
                seen: Arc::clone(&seen),
            },
            Arc::clone(&counters),
        );
        tokio::spawn(sender.run(stop.clone()));
        record(&node, 1).await;
        let mut fields = serde_json::Map::new();
        fields.insert("channel".into(), "pusher:1:presence-r".into());
        node.engine
            .record_event(CHANNEL_OCCUPIED, fields)
            .await
            .expect("record");
        until("the app's retry", || seen.lock().len() >= 3).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let seen = seen.lock().clone();
        let paths: Vec<&str> = seen.iter().map(|(p, ..)| p.as_str()).collect();
        assert_eq!(
            paths.iter().filter(|p| **p == "/hook").count(),
            1,
            "{paths:?}"
        );
        assert_eq!(
            paths.iter().filter(|p| **p == "/pusher").count(),
            2,
            "{paths:?}"
        );
        let herald = seen.iter().find(|(p, ..)| p == "/hook").expect("herald");
        assert_eq!(ns(&herald.1), [1], "Herald's events only");
        for (path, v, headers, body) in seen.iter().filter(|(p, ..)| p == "/pusher") {
            assert_eq!(
                v["events"],
                serde_json::json!([{"name": "channel_occupied", "channel": "presence-r"}]),
                "{path}"
            );
            assert!(v["time_ms"].as_u64().is_some());
            let header = |n: &str| {
                headers
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(header("x-pusher-key").as_deref(), Some("app-key"));
            assert_eq!(
                header("x-pusher-signature"),
                Some(hex_hmac(b"app-secret", body))
            );
        }
        assert_eq!(app_counters.error.load(Ordering::Relaxed), 1);
        assert_eq!(app_counters.ok.load(Ordering::Relaxed), 1);
        assert_eq!(counters.ok.load(Ordering::Relaxed), 1);
        assert_eq!(counters.error.load(Ordering::Relaxed), 0);
        assert!(node
            .engine
            .pending_events(10)
            .await
            .expect("pending")
            .is_empty());
        stop.cancel();
    }
}
