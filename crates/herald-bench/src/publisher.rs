//! The publisher: `messages` per channel, at `--rate` or flat out.
//!
//! Publishes are spread over `--pub-concurrency` keep-alive connections
//! ("lanes"); channel `c` always goes through lane `c % lanes`, and a lane
//! sends one request at a time, so each channel's sequence numbers leave in
//! order and any reordering seen by subscribers is the server's. The send
//! timestamp is taken by the lane right before writing, so time spent
//! queued in the bench is not charged to the server.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::cli::Config;
use crate::http::Conn;
use crate::payload;

/// Jobs queued per lane before the dispatcher waits (back-pressure).
const LANE_QUEUE: usize = 256;

/// Live publish counters, read by the progress line.
#[derive(Debug, Default)]
pub struct Live {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
}

/// What the publisher did.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Accepted publishes per channel.
    pub per_channel: Vec<u64>,
    pub ok: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub secs: f64,
    /// Wall clock of the first send, ns since epoch.
    pub first_send_ns: u64,
    /// True when the deadline cut publishing short.
    pub cut_short: bool,
}

struct LaneResult {
    per_channel: Vec<(u64, u64)>,
    errors: BTreeMap<String, u64>,
}

/// Publishes every message, stopping early at `deadline`.
pub async fn run(cfg: Arc<Config>, live: Arc<Live>, deadline: Instant) -> Published {
    let lanes = u64::from(cfg.args.pub_concurrency).min(cfg.channels);
    let started = Instant::now();
    let first_send_ns = payload::now_ns();
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for lane in 0..lanes {
        let (tx, rx) = mpsc::channel::<(u64, u64)>(LANE_QUEUE);
        senders.push(tx);
        handles.push(tokio::spawn(lane_loop(cfg.clone(), live.clone(), rx, lane)));
    }

    // Dispatch: message k of every channel before message k + 1 of any.
    let total = cfg.args.messages.saturating_mul(cfg.channels);
    let interval = (cfg.args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / cfg.args.rate));
    let t0 = tokio::time::Instant::now();
    let mut cut_short = false;
    'dispatch: for n in 0..total {
        if Instant::now() >= deadline {
            cut_short = true;
            break;
        }
        if let Some(iv) = interval {
            // n < 100M, so the multiplication stays in range.
            let due = t0 + iv.mul_f64(n as f64);
            tokio::time::sleep_until(due).await;
        }
        let (seq, channel) = (n / cfg.channels, n % cfg.channels);
        let lane = (channel % lanes) as usize;
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, senders[lane].send((channel, seq))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break 'dispatch,
            Err(_) => {
                cut_short = true;
                break 'dispatch;
            }
        }
    }
    drop(senders);

    let mut out = Published {
        per_channel: vec![0; usize::try_from(cfg.channels).unwrap_or(0)],
        first_send_ns,
        cut_short,
        ..Published::default()
    };
    for h in handles {
        let remaining = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
        let Ok(Ok(r)) = tokio::time::timeout(remaining, h).await else {
            out.cut_short = true;
            continue;
        };
        for (c, n) in r.per_channel {
            if let Some(slot) = out.per_channel.get_mut(c as usize) {
                *slot += n;
            }
        }
        for (k, v) in r.errors {
            *out.error_kinds.entry(k).or_insert(0) += v;
        }
    }
    out.ok = out.per_channel.iter().sum();
    out.errors = live.errors.load(Ordering::Relaxed);
    out.secs = started.elapsed().as_secs_f64();
    out
}

async fn lane_loop(
    cfg: Arc<Config>,
    live: Arc<Live>,
    mut rx: mpsc::Receiver<(u64, u64)>,
    lane: u64,
) -> LaneResult {
    let url = &cfg.pub_url;
    let source = cfg.sources.for_index(lane, &url.addr);
    let mut conn = Conn::new(url.addr, url.host.clone(), source);
    let mut ok: BTreeMap<u64, u64> = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let timeout = Duration::from_secs_f64(cfg.args.connect_timeout);
    while let Some((channel, seq)) = rx.recv().await {
        let name = cfg.channel_name(channel);
        let path = url.path_for(&name);
        let body = {
            let p = payload::make(seq, payload::now_ns(), cfg.args.payload_size);
            cfg.pub_body.render(&name, &p)
        };
        let path = match cfg.args.pusher_app.split_once(':') {
            Some((key, secret)) => crate::pusher::signed_path(
                "POST",
                &path,
                body.as_bytes(),
                key,
                secret,
                payload::now_ns() / 1_000_000_000,
            ),
            None => path,
        };
        let result = tokio::time::timeout(
            timeout,
            conn.request("POST", &path, &cfg.pub_headers, body.as_bytes()),
        )
        .await;
        let kind = match result {
            Ok(Ok(r)) if (200..300).contains(&r.head.status) => {
                *ok.entry(channel).or_insert(0) += 1;
                live.ok.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Ok(Ok(r)) => format!("http-{}", r.head.status),
            Ok(Err(e)) => format!("{:?}", e.kind()).to_lowercase(),
            Err(_) => {
                conn = Conn::new(url.addr, url.host.clone(), source);
                "timeout".to_string()
            }
        };
        live.errors.fetch_add(1, Ordering::Relaxed);
        *errors.entry(kind).or_insert(0) += 1;
    }
    LaneResult {
        per_channel: ok.into_iter().collect(),
        errors,
    }
}
