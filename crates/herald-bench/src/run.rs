//! The parent's side of a run: start the workers, drive the phases
//! (connect, warm-up, measure, settle), sample the server, and build the
//! report.
//!
//! Every phase loop ticks at [`TICK`] and ends at the latest at the run's
//! hard deadline (`--timeout`); nothing here waits without a bound.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

use crate::cli::{Config, Scenario};
use crate::publisher::{self, Live, Published};
use crate::report::{expected_deliveries, Raw, Report};
use crate::server_stat::ServerProcs;
use crate::tally::{Counts, Latency};
use crate::worker::{self, Event, Outcome, Progress, Ready};

/// Granularity of the phase loops.
const TICK: Duration = Duration::from_millis(100);
/// How long the parent waits for workers' final reports after `stop`.
const COLLECT_GRACE: Duration = Duration::from_secs(60);

enum Stop {
    InProcess(Option<oneshot::Sender<()>>),
    Child(Option<ChildStdin>),
}

/// The workers, whichever way they run.
struct Fleet {
    rx: mpsc::Receiver<(usize, Event)>,
    stops: Vec<Stop>,
    children: Vec<Child>,
    latest: Vec<Progress>,
    ready: Vec<Option<Ready>>,
    done: Vec<Option<Outcome>>,
    failure: Option<String>,
}

impl Fleet {
    fn start(cfg: &Arc<Config>) -> anyhow::Result<Self> {
        let procs = cfg.args.procs;
        let (tx, rx) = mpsc::channel(1024);
        let mut stops = Vec::new();
        let mut children = Vec::new();
        if procs == 1 {
            let (ev_tx, mut ev_rx) = mpsc::channel(64);
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            tokio::spawn(worker::run(cfg.clone(), 0, 1, ev_tx, async move {
                let _ = stop_rx.await;
            }));
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(ev) = ev_rx.recv().await {
                    if tx.send((0, ev)).await.is_err() {
                        break;
                    }
                }
            });
            stops.push(Stop::InProcess(Some(stop_tx)));
        } else {
            let exe = std::env::current_exe().context("locating own executable")?;
            let mut base: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
            base.extend(
                [
                    "--channel-prefix",
                    &cfg.channel_prefix,
                    "--progress-every",
                    "0",
                    "--output",
                    "json",
                ]
                .map(Into::into),
            );
            for i in 0..procs {
                let mut args = base.clone();
                args.push("--worker".into());
                args.push(format!("{i}/{procs}").into());
                let mut child = Command::new(&exe)
                    .args(&args)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| format!("spawning worker {i}"))?;
                let stdout = child.stdout.take().context("worker stdout")?;
                stops.push(Stop::Child(child.stdin.take()));
                children.push(child);
                let tx = tx.clone();
                let idx = i as usize;
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stdout).lines();
                    let mut finished = false;
                    while let Ok(Some(line)) = lines.next_line().await {
                        let ev = match serde_json::from_str::<Event>(&line) {
                            Ok(ev) => ev,
                            Err(e) => Event::Failed {
                                error: format!("worker {idx} sent a bad line: {e}"),
                            },
                        };
                        finished |= matches!(ev, Event::Done(_));
                        if tx.send((idx, ev)).await.is_err() {
                            return;
                        }
                    }
                    if !finished {
                        let error = format!("worker {idx} exited without a report");
                        let _ = tx.send((idx, Event::Failed { error })).await;
                    }
                });
            }
        }
        let n = procs as usize;
        Ok(Self {
            rx,
            stops,
            children,
            latest: vec![Progress::default(); n],
            ready: vec![None; n],
            done: vec![None; n],
            failure: None,
        })
    }

    fn apply(&mut self, idx: usize, ev: Event) {
        let Some(slot) = self.latest.get_mut(idx) else {
            return;
        };
        match ev {
            Event::Progress(p) => *slot = p,
            Event::Ready(r) => self.ready[idx] = Some(r),
            Event::Done(o) => {
                *slot = o.progress;
                self.done[idx] = Some(*o);
            }
            Event::Failed { error } => {
                if self.done[idx].is_none() {
                    self.failure.get_or_insert(error);
                }
            }
        }
    }

    /// Handles events for `dur`.
    async fn pump(&mut self, dur: Duration) {
        let until = tokio::time::Instant::now() + dur;
        loop {
            match tokio::time::timeout_at(until, self.rx.recv()).await {
                Ok(Some((idx, ev))) => self.apply(idx, ev),
                Ok(None) => {
                    tokio::time::sleep_until(until).await;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    fn progress(&self) -> Progress {
        let mut p = Progress::default();
        for l in &self.latest {
            p.add(l);
        }
        p
    }

    fn all_ready(&self) -> bool {
        self.ready.iter().all(Option::is_some)
    }

    async fn stop(&mut self) {
        for s in &mut self.stops {
            match s {
                Stop::InProcess(tx) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                Stop::Child(stdin) => {
                    if let Some(mut stdin) = stdin.take() {
                        let _ = stdin.write_all(b"stop\n").await;
                    }
                }
            }
        }
    }

    async fn kill(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(2), c.wait()).await;
        }
    }
}

/// Prints the progress line every `--progress-every` seconds.
struct Ticker {
    every: Option<Duration>,
    start: Instant,
    last: Instant,
}

impl Ticker {
    fn new(every: f64) -> Self {
        let now = Instant::now();
        Self {
            every: (every > 0.0).then(|| Duration::from_secs_f64(every)),
            start: now,
            last: now,
        }
    }

    fn maybe(&mut self, phase: &str, cfg: &Config, p: &Progress, published: Option<(u64, u64)>) {
        let Some(every) = self.every else { return };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let mut line = format!(
            "[{:>6.1}s] {phase:<8} conn {}/{} err {} drop {}",
            self.start.elapsed().as_secs_f64(),
            p.connected,
            cfg.args.connections,
            p.connect_errors,
            p.dropped
        );
        if let Some((ok, err)) = published {
            line.push_str(&format!(
                " | pub {ok}/{} err {err}",
                cfg.args.messages * cfg.channels
            ));
        }
        if cfg.args.scenario != Scenario::Idle {
            line.push_str(&format!(" | recv {} uniq {}", p.received, p.unique));
        }
        eprintln!("{line}");
    }
}

/// Runs the whole benchmark and returns the report.
pub async fn run(cfg: Arc<Config>) -> anyhow::Result<Report> {
    let args = &cfg.args;
    let deadline = Instant::now() + cfg.timeout();
    let server = ServerProcs::new(args.server_pids.clone(), !args.no_descendants);
    let before = server.sample();
    if !server.is_empty() && before.procs == 0 {
        bail!("none of the --server-pid processes exist");
    }
    let mut ticker = Ticker::new(args.progress_every);
    let mut fleet = Fleet::start(&cfg)?;
    let mut raw = Raw {
        connections_target: args.connections,
        channels: cfg.channels,
        messages_per_channel: args.messages,
        server_procs: before.procs,
        rss_before_kib: before.rss_kib,
        ..Raw::default()
    };

    // Connect.
    while !fleet.all_ready() && fleet.failure.is_none() && Instant::now() < deadline {
        fleet.pump(TICK).await;
        ticker.maybe("connect", &cfg, &fleet.progress(), None);
    }
    if let Some(f) = fleet.failure.clone() {
        fleet.kill().await;
        bail!(f);
    }
    raw.hard_stopped = !fleet.all_ready();
    let mut failed_channels = Vec::new();
    for r in fleet.ready.iter().flatten() {
        raw.connect_secs = raw.connect_secs.max(r.connect_secs);
        failed_channels.extend_from_slice(&r.failed_channels);
    }

    // Warm up: let servers finish registering subscriptions.
    let warm_until = (Instant::now() + Duration::from_secs_f64(args.warmup)).min(deadline);
    while Instant::now() < warm_until {
        fleet.pump(TICK.min(warm_until - Instant::now())).await;
        ticker.maybe("warmup", &cfg, &fleet.progress(), None);
    }
    let connected = server.sample();
    raw.rss_connected_kib = connected.rss_kib;
    let measure_start = Instant::now();

    // Measure.
    let mut published = Published::default();
    let anyone = fleet.ready.iter().flatten().any(|r| r.connected > 0);
    if !anyone {
        eprintln!("herald-bench: no subscriber connected; nothing to measure");
    }
    match args.scenario {
        _ if !anyone => {}
        Scenario::Idle => {
            let hold_until =
                (Instant::now() + Duration::from_secs_f64(args.duration)).min(deadline);
            while Instant::now() < hold_until {
                fleet.pump(TICK.min(hold_until - Instant::now())).await;
                ticker.maybe("hold", &cfg, &fleet.progress(), None);
            }
            raw.hard_stopped |= hold_until == deadline;
        }
        Scenario::Fanout | Scenario::Unicast => {
            let live = Arc::new(Live::default());
            let mut handle = tokio::spawn(publisher::run(cfg.clone(), live.clone(), deadline));
            loop {
                tokio::select! {
                    r = &mut handle => {
                        published = r.context("publisher task")?;
                        break;
                    }
                    _ = fleet.pump(TICK) => {}
                }
                let counts = (
                    live.ok.load(Ordering::Relaxed),
                    live.errors.load(Ordering::Relaxed),
                );
                ticker.maybe("publish", &cfg, &fleet.progress(), Some(counts));
            }
            raw.hard_stopped |= published.cut_short;
            raw.expected =
                expected_deliveries(&published.per_channel, args.connections, &failed_channels);
            // Settle: until everything arrived, or nothing new for --settle seconds.
            let settle = Duration::from_secs_f64(args.settle);
            let mut last_unique = fleet.progress().unique;
            let mut last_change = Instant::now();
            loop {
                let unique = fleet.progress().unique;
                if unique >= raw.expected || fleet.failure.is_some() {
                    break;
                }
                if unique != last_unique {
                    last_unique = unique;
                    last_change = Instant::now();
                }
                if last_change.elapsed() >= settle {
                    break;
                }
                if Instant::now() >= deadline {
                    raw.hard_stopped = true;
                    break;
                }
                fleet.pump(TICK).await;
                ticker.maybe(
                    "settle",
                    &cfg,
                    &fleet.progress(),
                    Some((published.ok, published.errors)),
                );
            }
        }
    }
    let end = server.sample();
    raw.cpu_secs = end.cpu_secs - connected.cpu_secs;
    raw.rss_end_kib = end.rss_kib;
    raw.measured_secs = measure_start.elapsed().as_secs_f64();

    // Collect.
    fleet.stop().await;
    let collect_until = Instant::now() + COLLECT_GRACE;
    while fleet.done.iter().any(Option::is_none) && Instant::now() < collect_until {
        if fleet.failure.is_some() && fleet.done.iter().all(Option::is_none) && fleet.rx.is_empty()
        {
            break;
        }
        fleet.pump(TICK).await;
    }
    fleet.kill().await;
    if let Some(f) = &fleet.failure {
        eprintln!("herald-bench: {f}");
    }
    let missing = fleet.done.iter().filter(|d| d.is_none()).count();
    if missing > 0 {
        eprintln!(
            "herald-bench: {missing} worker(s) sent no final report; their numbers are missing"
        );
    }

    let mut counts = Counts::default();
    let mut latency = Latency::new();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_delivery_ns = 0;
    let (mut live_received, mut live_unique, mut unfinished) = (0, 0, 0);
    for o in fleet.done.iter().flatten() {
        counts.add(&o.counts);
        latency.merge(&Latency::from_buckets(&o.latency));
        for (k, v) in &o.error_kinds {
            *kinds.entry(k.clone()).or_insert(0) += v;
        }
        raw.connected += o.progress.connected;
        raw.connect_errors += o.progress.connect_errors;
        raw.connect_retries += o.progress.connect_retries;
        raw.dropped += o.progress.dropped;
        last_delivery_ns = last_delivery_ns.max(o.progress.last_delivery_ns);
        live_received += o.progress.received;
        live_unique += o.progress.unique;
        unfinished += o.unfinished;
    }
    if unfinished > 0 {
        // Those tasks' own counts are lost, but every delivery also went
        // through the workers' live counters: use those.
        eprintln!(
            "herald-bench: {unfinished} subscriber task(s) did not stop within the grace period; \
             received/unique come from the live counters"
        );
        counts.received = counts.received.max(live_received);
        counts.unique = counts.unique.max(live_unique);
    }
    raw.connect_error_kinds = kinds;
    raw.counts = counts;
    raw.latency = latency.summary();
    raw.published = published.ok;
    raw.publish_errors = published.errors;
    raw.publish_error_kinds = published.error_kinds;
    raw.publish_secs = published.secs;
    if last_delivery_ns > published.first_send_ns && published.first_send_ns > 0 {
        raw.delivery_secs = (last_delivery_ns - published.first_send_ns) as f64 / 1e9;
    }
    Ok(Report::build(
        args.label.clone(),
        args.scenario,
        args.transport,
        args.procs,
        raw,
    ))
}
