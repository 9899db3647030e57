//! `GET /metrics`: what an operator watches, in the Prometheus text format
//! (0.0.4; every family with its `# HELP` and `# TYPE`, checked by
//! `promtool check metrics` in the tests). Counters come from
//! [`crate::metrics::Counters`], the hooks and the hub (deliveries and their
//! latency, counted where this node writes them); gauges are read from the
//! hub, the limiters, the session registry, the engine and `/proc/self`
//! when scraped. docs/deployment.md lists every metric.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use herald_core::histogram::Histogram;

use crate::access::auth::check_backend;
use crate::access::hook::HookEvent;
use crate::error::ApiError;
use crate::metrics::HOOK_OUTCOMES;
use crate::protocol::Transport;
use crate::state::AppState;
use crate::transport::registry::Registry;

/// How long a scrape waits for the engine's readiness check.
const ENGINE_CHECK: Duration = Duration::from_secs(1);

/// The text of one scrape.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }

    /// One histogram's samples (its family written by the caller), in
    /// seconds; `labels` are put before `le`.
    fn histogram(&mut self, name: &str, labels: &str, h: &Histogram) {
        let sep = if labels.is_empty() { "" } else { "," };
        let counts = h.cumulative();
        for (bound, count) in h.bounds_us().iter().zip(&counts) {
            let le = *bound as f64 / 1e6;
            self.sample(
                &format!("{name}_bucket"),
                &format!("{labels}{sep}le=\"{le}\""),
                count,
            );
        }
        let total = counts.last().copied().unwrap_or(0);
        self.sample(
            &format!("{name}_bucket"),
            &format!("{labels}{sep}le=\"+Inf\""),
            total,
        );
        self.sample(&format!("{name}_sum"), labels, h.sum_us() as f64 / 1e6);
        self.sample(&format!("{name}_count"), labels, total);
    }
}

/// `GET /metrics` (a backend endpoint: API key, or loopback without one).
pub(crate) async fn metrics(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(sessions): Extension<Arc<Registry>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_backend(&state.config.api_keys, &headers, peer).map_err(ApiError::from)?;
    let engine_up = matches!(
        tokio::time::timeout(ENGINE_CHECK, state.node.engine.ready()).await,
        Ok(Ok(()))
    );
    let process = tokio::task::spawn_blocking(process::read)
        .await
        .ok()
        .flatten();
    let c = &state.counters;
    let hub = &state.node.hub;
    let mut out = Text(String::with_capacity(8 * 1024));
    out.single(
        "herald_connections",
        "gauge",
        "Open client connections (all transports).",
        state.clients.load(Ordering::Relaxed),
    );
    out.family(
        "herald_connections_by_transport",
        "gauge",
        "Open client sessions by transport (session: the session protocol, any transport).",
    );
    for t in Transport::ALL {
        let n = c.open[t as usize].load(Ordering::Relaxed);
        out.sample(
            "herald_connections_by_transport",
            &format!("transport=\"{}\"", t.as_str()),
            n,
        );
    }
    out.single(
        "herald_tcp_connections",
        "gauge",
        "Open TCP connections on the public listener, counted from accept (idle keep-alive and half-open ones included).",
        state.limiter.total(),
    );
    out.single(
        "herald_tcp_shed_total",
        "counter",
        "TCP connections the public listener accepted and closed unanswered: at its open-file budget, or past 256 over-limit connections being answered.",
        c.tcp_shed.load(Ordering::Relaxed),
    );
    out.single(
        "herald_subscriptions",
        "gauge",
        "Subscriptions (connection and channel pairs) on this node.",
        hub.subscription_count(),
    );
    out.single(
        "herald_channels_followed",
        "gauge",
        "Channels with at least one subscriber on this node.",
        hub.channel_count(),
    );
    out.single(
        "herald_http_sessions",
        "gauge",
        "Sessions over HTTP (streams and long-polls), Pusher's fallbacks included.",
        sessions.len(),
    );
    out.single(
        "herald_messages_published_total",
        "counter",
        "Messages stored through this node.",
        c.published.load(Ordering::Relaxed),
    );
    out.single(
        "herald_client_messages_published_total",
        "counter",
        "Of those, published by clients (session protocol).",
        c.client_published.load(Ordering::Relaxed),
    );
    out.single(
        "herald_mailbox_messages_published_total",
        "counter",
        "Of those, sent to a user's mailbox, to be acknowledged.",
        c.mailbox_published.load(Ordering::Relaxed),
    );
    out.single(
        "herald_mailbox_messages_acknowledged_total",
        "counter",
        "Pending mailbox messages removed by acknowledgements through this node.",
        c.mailbox_acknowledged.load(Ordering::Relaxed),
    );
    out.single(
        "herald_deliveries_total",
        "counter",
        "Live messages this node wrote to its clients' sockets (each node counts its own; history replays excluded).",
        hub.delivered(),
    );
    out.family(
        "herald_delivery_latency_seconds",
        "histogram",
        "From publish (the engine's timestamp, millisecond resolution) to the write to a client's socket.",
    );
    out.histogram(
        "herald_delivery_latency_seconds",
        "",
        hub.delivery_latency(),
    );
    out.family(
        "herald_disconnects_total",
        "counter",
        "Ended client sessions by the close code sent (code=\"none\": the client went away without one).",
    );
    for (code, n) in c.disconnects() {
        let code = code.map_or_else(|| "none".to_string(), |c| c.to_string());
        out.sample("herald_disconnects_total", &format!("code=\"{code}\""), n);
    }
    out.single(
        "herald_slow_consumer_disconnects_total",
        "counter",
        "Connections closed because their outgoing queue was full (code 4001).",
        c.slow_consumers.load(Ordering::Relaxed),
    );
    if let Some(hooks) = &state.rules.hooks {
        out.family(
            "herald_hook_calls_total",
            "counter",
            "Calls to the application's hooks by event and outcome (failed: unreachable, timed out, not 2xx or unreadable).",
        );
        for event in HookEvent::ALL {
            for (i, outcome) in HOOK_OUTCOMES.iter().enumerate() {
                let n = hooks.calls(event).outcomes[i].load(Ordering::Relaxed);
                let labels = format!("hook=\"{}\",outcome=\"{outcome}\"", event.as_str());
                out.sample("herald_hook_calls_total", &labels, n);
            }
        }
        out.family(
            "herald_hook_duration_seconds",
            "histogram",
            "How long hook calls took, by event.",
        );
        for event in HookEvent::ALL {
            let labels = format!("hook=\"{}\"", event.as_str());
            out.histogram(
                "herald_hook_duration_seconds",
                &labels,
                &hooks.calls(event).latency,
            );
        }
    }
    if state.config.event_options().is_some() {
        webhook_metrics(&state, &mut out).await;
    }
    out.single(
        "herald_engine_up",
        "gauge",
        "1 when the engine answers its readiness check (on Redis a PING), else 0.",
        u8::from(engine_up),
    );
    if let Some(latency) = state.node.engine.command_latency() {
        out.family(
            "herald_redis_command_duration_seconds",
            "histogram",
            "How long the engine's Redis commands took, answered or not.",
        );
        out.histogram("herald_redis_command_duration_seconds", "", latency);
    }
    if let Some(p) = process {
        p.write(&mut out);
    }
    out.family("herald_info", "gauge", "Build and engine.");
    out.sample(
        "herald_info",
        &format!(
            "version=\"{}\",engine=\"{}\"",
            env!("CARGO_PKG_VERSION"),
            state.node.engine.name()
        ),
        1,
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out.0).into_response())
}

/// The webhook families (only with `[webhooks]` or a Pusher app's
/// `webhook_url` configured).
async fn webhook_metrics(state: &AppState, out: &mut Text) {
    let engine = &state.node.engine;
    out.family(
        "herald_webhook_events_total",
        "counter",
        "Events this node recorded into the webhook outbox, by event.",
    );
    for (event, n) in engine.recorded_events() {
        out.sample(
            "herald_webhook_events_total",
            &format!("event=\"{}\"", escape_label(&event)),
            n,
        );
    }
    let w = &state.counters.webhooks;
    out.family(
        "herald_webhook_requests_total",
        "counter",
        "Webhook requests this node sent, by outcome (ok: a 2xx answer; error: anything else or no answer within the timeout).",
    );
    out.sample(
        "herald_webhook_requests_total",
        "outcome=\"ok\"",
        w.ok.load(Ordering::Relaxed),
    );
    out.sample(
        "herald_webhook_requests_total",
        "outcome=\"error\"",
        w.error.load(Ordering::Relaxed),
    );
    out.single(
        "herald_webhook_given_up_total",
        "counter",
        "Events this node gave up delivering after the last attempt.",
        w.given_up.load(Ordering::Relaxed),
    );
    let apps: Vec<_> = state
        .pusher
        .iter()
        .filter(|a| a.app.webhook.is_some())
        .collect();
    if !apps.is_empty() {
        out.family(
            "herald_pusher_webhook_requests_total",
            "counter",
            "Pusher-format webhook requests this node sent, by app and outcome (ok: a 2xx answer; error: anything else or no answer within the timeout).",
        );
        for app in &apps {
            let id = escape_label(&app.app.id);
            for (outcome, n) in [("ok", &app.webhooks.ok), ("error", &app.webhooks.error)] {
                out.sample(
                    "herald_pusher_webhook_requests_total",
                    &format!("app=\"{id}\",outcome=\"{outcome}\""),
                    n.load(Ordering::Relaxed),
                );
            }
        }
        out.family(
            "herald_pusher_webhook_given_up_total",
            "counter",
            "Events of a Pusher app's webhooks this node gave up delivering after the last attempt, by app.",
        );
        for app in &apps {
            out.sample(
                "herald_pusher_webhook_given_up_total",
                &format!("app=\"{}\"", escape_label(&app.app.id)),
                app.webhooks.given_up.load(Ordering::Relaxed),
            );
        }
    }
    if let Ok(Ok(stats)) = tokio::time::timeout(ENGINE_CHECK, engine.outbox_stats()).await {
        out.single(
            "herald_webhook_outbox",
            "gauge",
            "Events waiting in the webhook outbox (on Redis the cluster's: every node reports the same).",
            stats.len,
        );
        out.single(
            "herald_webhook_dropped_total",
            "counter",
            "Events dropped from the full webhook outbox, oldest first (on Redis the cluster's: every node reports the same).",
            stats.dropped,
        );
    }
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The process's own figures, read from `/proc/self` at scrape time (Linux
/// only: elsewhere the `process_*` metrics are left out).
mod process {
    use super::Text;

    /// `USER_HZ`: the unit of the CPU times in `/proc/self/stat`, 100 on
    /// every Linux architecture Herald builds for.
    const TICKS_PER_SECOND: f64 = 100.0;

    pub(super) struct Process {
        resident: u64,
        virtual_size: u64,
        open_fds: usize,
        max_fds: Option<u64>,
        cpu_ticks: u64,
        start_seconds: Option<f64>,
    }

    /// Reads the figures; `None` where `/proc` is missing or unreadable.
    pub(super) fn read() -> Option<Process> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|v| v * 1024)
        };
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may
        // hold spaces: state is field 3, utime 14, stime 15, starttime 22.
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3))
                    .and_then(|v| v.parse::<u64>().ok())
            });
        Some(Process {
            resident: kb("VmRSS:")?,
            virtual_size: kb("VmSize:")?,
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count(),
            max_fds,
            cpu_ticks: field(14)? + field(15)?,
            start_seconds: boot
                .zip(field(22))
                .map(|(boot, ticks)| boot as f64 + ticks as f64 / TICKS_PER_SECOND),
        })
    }

    impl Process {
        pub(super) fn write(&self, out: &mut Text) {
            out.single(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                self.resident,
            );
            out.single(
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                self.virtual_size,
            );
            out.single(
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                self.open_fds,
            );
            if let Some(max) = self.max_fds {
                out.single(
                    "process_max_fds",
                    "gauge",
                    "Maximum number of open file descriptors.",
                    max,
                );
            }
            out.single(
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                self.cpu_ticks as f64 / TICKS_PER_SECOND,
            );
            if let Some(start) = self.start_seconds {
                out.single(
                    "process_start_time_seconds",
                    "gauge",
                    "Start time of the process since unix epoch in seconds.",
                    start,
                );
            }
        }
    }
}

/// Logs one line (info) every `interval` until shutdown: connections and
/// subscriptions now, and what happened since the previous line
/// (publishes, deliveries, disconnects by close code). Nothing when
/// `interval` is zero.
pub(crate) async fn log_summary(state: AppState, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut published, mut delivered) = (0, 0);
    let mut disconnects = std::collections::BTreeMap::new();
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let c = &state.counters;
        let now_published = c.published.load(Ordering::Relaxed);
        let now_delivered = state.node.hub.delivered();
        let mut by_code = String::new();
        for (code, n) in c.disconnects() {
            let before = disconnects.insert(code, n).unwrap_or(0);
            if n > before {
                let code = code.map_or_else(|| "none".to_string(), |c| c.to_string());
                let sep = if by_code.is_empty() { "" } else { " " };
                let _ = write!(by_code, "{sep}{code}:{}", n - before);
            }
        }
        tracing::info!(
            connections = c.open_total(),
            subscriptions = state.node.hub.subscription_count(),
            published = now_published - published,
            delivered = now_delivered - delivered,
            disconnects = by_code.as_str(),
            "summary"
        );
        (published, delivered) = (now_published, now_delivered);
    }
}
