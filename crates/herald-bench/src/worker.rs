//! A worker holds a share of the subscribers and reports on them.
//!
//! With `--procs 1` the worker runs inside the parent; otherwise each worker
//! is a child process of the same binary (`--worker I/K`) that speaks the
//! same protocol as JSON lines: [`Event`]s on stdout, `stop` on stdin. This
//! is how one run passes the per-process open-file limit.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::cli::Config;
use crate::subscriber::{self, Shared, Spec};
use crate::tally::Counts;

/// How often a worker reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How long a worker waits for its subscribers to finish after `stop`.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// Live counters.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    pub connected: u64,
    pub connect_errors: u64,
    #[serde(default)]
    pub connect_retries: u64,
    pub dropped: u64,
    pub received: u64,
    pub unique: u64,
    pub last_delivery_ns: u64,
}

impl Progress {
    pub fn add(&mut self, o: &Progress) {
        self.connected += o.connected;
        self.connect_errors += o.connect_errors;
        self.connect_retries += o.connect_retries;
        self.dropped += o.dropped;
        self.received += o.received;
        self.unique += o.unique;
        self.last_delivery_ns = self.last_delivery_ns.max(o.last_delivery_ns);
    }
}

/// End of the connect phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ready {
    pub connected: u64,
    pub connect_errors: u64,
    pub connect_secs: f64,
    /// Channel of each subscriber that failed to connect.
    pub failed_channels: Vec<u64>,
}

/// Final numbers of one worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub progress: Progress,
    pub counts: Counts,
    pub error_kinds: BTreeMap<String, u64>,
    /// Latency histogram as `[value_us, count]` pairs.
    pub latency: Vec<(u64, u64)>,
    /// Subscribers that did not finish within the stop grace period.
    pub unfinished: u64,
}

/// Worker to parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Progress(Progress),
    Ready(Ready),
    Done(Box<Outcome>),
    /// The worker could not run; the parent reports and stops.
    Failed {
        error: String,
    },
}

fn snapshot(s: &Shared) -> Progress {
    Progress {
        connected: s.connected.load(Ordering::Relaxed),
        connect_errors: s.connect_errors.load(Ordering::Relaxed),
        connect_retries: s.connect_retries.load(Ordering::Relaxed),
        dropped: s.dropped.load(Ordering::Relaxed),
        received: s.received.load(Ordering::Relaxed),
        unique: s.unique.load(Ordering::Relaxed),
        last_delivery_ns: s.last_delivery_ns.load(Ordering::Relaxed),
    }
}

/// Runs worker `index` of `procs`: connects its share, reports `Ready`,
/// holds until `stop` resolves (or the hard timeout), then reports `Done`.
pub async fn run(
    cfg: Arc<Config>,
    index: u32,
    procs: u32,
    events: mpsc::Sender<Event>,
    stop: impl std::future::Future<Output = ()>,
) {
    let deadline = Instant::now() + cfg.timeout();
    let share = cfg.share(index, procs);
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared::new(stop_rx, cfg.args.connect_concurrency as usize));

    let mut tasks = JoinSet::new();
    let spawner = {
        let cfg = cfg.clone();
        let shared = shared.clone();
        async move {
            let pace = (cfg.args.connect_rate > 0.0)
                .then(|| Duration::from_secs_f64(1.0 / cfg.args.connect_rate));
            let mut next = tokio::time::Instant::now();
            for i in cfg.indices(index, procs) {
                if let Some(p) = pace {
                    tokio::time::sleep_until(next).await;
                    next += p;
                }
                let spec = Spec {
                    index: i,
                    channel: cfg.channel_of(i),
                    source: cfg.sources.for_index(i, &cfg.sub_url(i).addr),
                };
                tasks.spawn(subscriber::run(spec, cfg.clone(), shared.clone()));
            }
            tasks
        }
    };
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let hard_stop = tokio::time::sleep_until(deadline.into());
    tokio::pin!(hard_stop);

    // Connect phase: spawn everyone, then wait until each has connected or failed.
    tokio::pin!(spawner);
    let mut tasks = None;
    let mut ready_sent = false;
    loop {
        tokio::select! {
            t = &mut spawner, if tasks.is_none() => tasks = Some(t),
            _ = ticker.tick() => {
                let p = snapshot(&shared);
                if events.send(Event::Progress(p)).await.is_err() {
                    break;
                }
                if !ready_sent && tasks.is_some() && p.connected + p.connect_errors >= share {
                    ready_sent = true;
                    let failed = shared.failed_channels.lock().map(|v| v.clone()).unwrap_or_default();
                    let ready = Ready {
                        connected: p.connected,
                        connect_errors: p.connect_errors,
                        connect_secs: shared.connects_done_us.load(Ordering::Relaxed) as f64 / 1e6,
                        failed_channels: failed,
                    };
                    if events.send(Event::Ready(ready)).await.is_err() {
                        break;
                    }
                }
            }
            _ = &mut stop => break,
            _ = &mut hard_stop => break,
        }
    }

    // Stop phase.
    let _ = stop_tx.send(true);
    let mut counts = Counts::default();
    let mut unfinished = 0;
    if let Some(mut tasks) = tasks {
        let grace = tokio::time::sleep(STOP_GRACE);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                r = tasks.join_next() => match r {
                    Some(Ok(c)) => counts.add(&c),
                    Some(Err(_)) => {}
                    None => break,
                },
                _ = &mut grace => {
                    unfinished = tasks.len() as u64;
                    tasks.abort_all();
                    break;
                }
            }
        }
    }
    let outcome = Outcome {
        progress: snapshot(&shared),
        counts,
        error_kinds: shared
            .error_kinds
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default(),
        latency: shared.latency().to_buckets(),
        unfinished,
    };
    let _ = events.send(Event::Done(Box::new(outcome))).await;
}

/// Entry point of a child worker process: events as JSON lines on stdout,
/// `stop` (or end of input) on stdin.
pub async fn run_child(cfg: Arc<Config>, index: u32, procs: u32) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let stop = async {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        // Any line or EOF means stop; the parent only ever sends `stop`.
        let _ = lines.next_line().await;
    };
    let worker = tokio::spawn(run(cfg, index, procs, tx, stop));
    let mut out = tokio::io::stdout();
    while let Some(ev) = rx.recv().await {
        let mut line = serde_json::to_vec(&ev)?;
        line.push(b'\n');
        out.write_all(&line).await?;
        out.flush().await?;
    }
    let _ = worker.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_roundtrip_as_json_lines() {
        let ev = Event::Done(Box::new(Outcome {
            progress: Progress {
                connected: 3,
                unique: 9,
                ..Progress::default()
            },
            counts: Counts {
                received: 10,
                unique: 9,
                duplicated: 1,
                ..Counts::default()
            },
            error_kinds: [("timeout".to_string(), 2)].into_iter().collect(),
            latency: vec![(100, 5), (250, 4)],
            unfinished: 0,
        }));
        let line = serde_json::to_string(&ev).expect("ser");
        assert!(line.starts_with(r#"{"event":"done""#), "{line}");
        let back: Event = serde_json::from_str(&line).expect("de");
        match back {
            Event::Done(o) => {
                assert_eq!(o.counts.duplicated, 1);
                assert_eq!(o.latency, vec![(100, 5), (250, 4)]);
                assert_eq!(o.error_kinds["timeout"], 2);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn progress_adds() {
        let mut a = Progress {
            connected: 1,
            last_delivery_ns: 5,
            ..Progress::default()
        };
        a.add(&Progress {
            connected: 2,
            unique: 4,
            last_delivery_ns: 3,
            ..Progress::default()
        });
        assert_eq!(
            a,
            Progress {
                connected: 3,
                unique: 4,
                last_delivery_ns: 5,
                ..Progress::default()
            }
        );
    }
}
