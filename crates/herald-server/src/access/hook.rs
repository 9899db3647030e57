//! Backend hooks: Herald asks the application's backend before letting a
//! client connect, subscribe or publish, tells it of disconnects, and
//! forwards `rpc` commands to it. The backend stays in charge of its rules.
//!
//! Each hook is one `POST` of a JSON object to the configured URL, with the
//! event name in the body and in `X-Herald-Event`. The backend answers
//! `{"allow": true}` / `{"allow": false, "reason": "..."}`; for `publish` it
//! may add `"data"` to replace the message; for `rpc` it answers
//! `{"result": …}` or `{"error": {"code", "message"}}`. A backend that does not
//! answer within the timeout, or answers with a non-2xx status or something
//! that is not such an object, is "down": `on_error = "deny"` (the default)
//! refuses the action with `hook_unavailable`, `"allow"` lets it through.
//! `rpc` always fails with `hook_unavailable` then.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::metrics::HookCalls;

/// Largest hook answer read.
const MAX_ANSWER: usize = 1024 * 1024;
/// Disconnect notifications in flight at once; more are dropped (logged).
const MAX_NOTIFICATIONS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookEvent {
    Connect,
    Subscribe,
    Publish,
    Disconnect,
    Rpc,
}

impl HookEvent {
    /// Every event, in the order of [`Hooks::calls`].
    pub(crate) const ALL: [HookEvent; 5] = [
        Self::Connect,
        Self::Subscribe,
        Self::Publish,
        Self::Disconnect,
        Self::Rpc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Subscribe => "subscribe",
            Self::Publish => "publish",
            Self::Disconnect => "disconnect",
            Self::Rpc => "rpc",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        [
            Self::Connect,
            Self::Subscribe,
            Self::Publish,
            Self::Disconnect,
            Self::Rpc,
        ]
        .into_iter()
        .find(|e| e.as_str() == text)
    }
}

#[derive(Debug, Clone)]
pub struct HookSettings {
    pub url: hyper::Uri,
    pub events: HashSet<HookEvent>,
    pub timeout: Duration,
    /// Whether an action goes through when the backend is down.
    pub allow_on_error: bool,
}

/// How long Herald waits for a hook answer unless configured otherwise.
pub(crate) const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the backend answered.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Answer {
    pub allow: Option<bool>,
    pub reason: Option<String>,
    pub data: Option<Box<RawValue>>,
    pub result: Option<Box<RawValue>>,
    pub error: Option<AnswerError>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct AnswerError {
    pub code: Option<String>,
    pub message: Option<String>,
}

/// The decision on an allow/deny hook.
#[derive(Debug)]
pub(crate) enum Verdict {
    Allow(Option<Box<RawValue>>),
    Deny(String),
    /// The backend is down and the policy is to deny.
    Unavailable,
}

pub(crate) struct Hooks {
    settings: HookSettings,
    client: Client<HttpConnector, Full<Bytes>>,
    notifications: std::sync::Arc<tokio::sync::Semaphore>,
    /// Calls by event (`HookEvent as usize`), for `/metrics`.
    calls: [HookCalls; 5],
}

impl Hooks {
    pub(crate) fn new(settings: HookSettings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.timeout));
        connector.set_nodelay(true);
        Self {
            settings,
            client: Client::builder(TokioExecutor::new()).build(connector),
            notifications: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_NOTIFICATIONS)),
            calls: Default::default(),
        }
    }

    /// The calls of `event` so far.
    pub(crate) fn calls(&self, event: HookEvent) -> &HookCalls {
        &self.calls[event as usize]
    }

    pub(crate) fn wants(&self, event: HookEvent) -> bool {
        self.settings.events.contains(&event)
    }

    /// Posts `body` (which must carry `"event"`) and reads the answer.
    pub(crate) async fn call(&self, event: HookEvent, body: &serde_json::Value) -> Option<Answer> {
        let request = hyper::Request::post(self.settings.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("x-herald-event", event.as_str())
            .body(Full::new(Bytes::from(body.to_string())))
            .ok()?;
        let exchange = async {
            let response = self.client.request(request).await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let bytes = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .ok()?
                .to_bytes();
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Some(Answer::default());
            }
            serde_json::from_slice::<Answer>(&bytes).ok()
        };
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(self.settings.timeout, exchange).await;
        let calls = self.calls(event);
        calls.latency.observe(started.elapsed());
        let outcome = match &answer {
            Ok(Some(a)) if a.allow == Some(false) => 1,
            Ok(Some(_)) => 0,
            _ => 2,
        };
        calls.outcomes[outcome].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match answer {
            Ok(Some(answer)) => Some(answer),
            _ => {
                tracing::warn!(event = event.as_str(), url = %self.settings.url, "hook backend unavailable");
                None
            }
        }
    }

    /// Asks whether an action may go ahead (applies `on_error` when down).
    pub(crate) async fn decide(&self, event: HookEvent, body: &serde_json::Value) -> Verdict {
        if !self.wants(event) {
            return Verdict::Allow(None);
        }
        match self.call(event, body).await {
            Some(answer) if answer.allow == Some(false) => Verdict::Deny(
                answer
                    .reason
                    .unwrap_or_else(|| format!("refused by the application ({})", event.as_str())),
            ),
            Some(answer) => Verdict::Allow(answer.data),
            None if self.settings.allow_on_error => Verdict::Allow(None),
            None => Verdict::Unavailable,
        }
    }

    /// Fire-and-forget notification (disconnects); dropped when too many
    /// are in flight.
    pub(crate) fn notify(self: &std::sync::Arc<Self>, event: HookEvent, body: serde_json::Value) {
        if !self.wants(event) {
            return;
        }
        let Ok(permit) = std::sync::Arc::clone(&self.notifications).try_acquire_owned() else {
            tracing::warn!(
                event = event.as_str(),
                "too many hook notifications in flight; dropped one"
            );
            return;
        };
        let hooks = std::sync::Arc::clone(self);
        tokio::spawn(async move {
            let _ = hooks.call(event, &body).await;
            drop(permit);
        });
    }
}
