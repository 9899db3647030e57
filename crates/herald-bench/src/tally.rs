//! Delivery accounting: per-subscriber sequence tracking and the latency
//! histogram, both mergeable across tasks and processes.
//!
//! A subscriber expects sequence numbers `0..limit` on its channel. Each
//! mark is classified once: new, duplicate (already seen), out of order (new
//! but below the highest seen) or unexpected (outside `0..limit`, e.g. a
//! stray message from another run). Lost is derived at the end as
//! `expected - unique`, with `expected` taken from what the publisher
//! actually got accepted.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Tracks which sequence numbers one subscriber has seen.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    /// Bit `s` set once `s` has been delivered; grown lazily up to `limit`.
    seen: Vec<u64>,
    limit: u64,
    max_seen: Option<u64>,
    pub counts: Counts,
}

/// How one received mark was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    New,
    /// New, but a higher sequence number arrived first.
    OutOfOrder,
    Duplicate,
    /// Outside `0..limit`.
    Unexpected,
}

/// Delivery counters; summed across subscribers, tasks and processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Every mark received, duplicates included.
    pub received: u64,
    /// Distinct sequence numbers received in range.
    pub unique: u64,
    pub duplicated: u64,
    /// Distinct marks that arrived after a higher sequence number.
    pub out_of_order: u64,
    pub unexpected: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.received += other.received;
        self.unique += other.unique;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.unexpected += other.unexpected;
    }

    /// Expected deliveries that never arrived (never negative).
    pub fn lost(&self, expected: u64) -> u64 {
        expected.saturating_sub(self.unique)
    }
}

impl SeqTracker {
    /// A tracker for sequence numbers `0..limit`.
    pub fn new(limit: u64) -> Self {
        Self {
            seen: Vec::new(),
            limit,
            max_seen: None,
            counts: Counts::default(),
        }
    }

    /// Classifies and counts one received sequence number.
    pub fn record(&mut self, seq: u64) -> Outcome {
        self.counts.received += 1;
        if seq >= self.limit {
            self.counts.unexpected += 1;
            return Outcome::Unexpected;
        }
        // `seq < limit`, and `limit` came from a `u64` message count that
        // the caller bounded, so the index fits in memory.
        let word = (seq / 64) as usize;
        let bit = 1u64 << (seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.counts.duplicated += 1;
            return Outcome::Duplicate;
        }
        self.seen[word] |= bit;
        self.counts.unique += 1;
        match self.max_seen {
            Some(max) if seq < max => {
                self.counts.out_of_order += 1;
                Outcome::OutOfOrder
            }
            _ => {
                self.max_seen = Some(seq);
                Outcome::New
            }
        }
    }

    /// True once every sequence number in `0..limit` has arrived.
    #[cfg(test)]
    pub fn complete(&self) -> bool {
        self.counts.unique >= self.limit
    }
}

/// Highest latency the histogram holds: one hour in microseconds; larger
/// values are clamped (they only happen with a skewed clock).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Publish-to-delivery latency in microseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

/// Percentile summary of a [`Latency`], in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        // Bounds are constants that satisfy hdrhistogram's rules
        // (low >= 1, high >= 2 * low, sigfig <= 5), so this cannot fail.
        let hist = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"));
        Self { hist }
    }

    /// Records one delivery from send and receive wall-clock times in ns.
    pub fn record_ns(&mut self, sent_ns: u64, recv_ns: u64) {
        let us = recv_ns.saturating_sub(sent_ns) / 1_000;
        self.hist.saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so `add` cannot fail; ignore to stay total.
        let _ = self.hist.add(&other.hist);
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn summary(&self) -> LatencySummary {
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.hist.len(),
            p50_us: self.hist.value_at_quantile(0.50),
            p99_us: self.hist.value_at_quantile(0.99),
            p999_us: self.hist.value_at_quantile(0.999),
            max_us: self.hist.max(),
            mean_us: self.hist.mean(),
        }
    }

    /// Compact `[value, count]` pairs for shipping between processes.
    pub fn to_buckets(&self) -> Vec<(u64, u64)> {
        self.hist
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    /// Rebuilds from [`Latency::to_buckets`] output (values are clamped).
    pub fn from_buckets(buckets: &[(u64, u64)]) -> Self {
        let mut l = Self::new();
        for &(value, count) in buckets {
            let _ = l.hist.record_n(value.clamp(1, MAX_LATENCY_US), count);
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_is_clean() {
        let mut t = SeqTracker::new(5);
        for s in 0..5 {
            assert_eq!(t.record(s), Outcome::New);
        }
        assert!(t.complete());
        assert_eq!(
            t.counts,
            Counts {
                received: 5,
                unique: 5,
                duplicated: 0,
                out_of_order: 0,
                unexpected: 0
            }
        );
        assert_eq!(t.counts.lost(5), 0);
    }

    #[test]
    fn loss_duplicates_reorder_and_strays() {
        let mut t = SeqTracker::new(10);
        let got: Vec<Outcome> = [0, 2, 1, 2, 5, 3, 12, 5]
            .iter()
            .map(|&s| t.record(s))
            .collect();
        use Outcome::*;
        assert_eq!(
            got,
            vec![New, New, OutOfOrder, Duplicate, New, OutOfOrder, Unexpected, Duplicate]
        );
        assert_eq!(t.counts.received, 8);
        assert_eq!(t.counts.unique, 5);
        assert_eq!(t.counts.duplicated, 2);
        assert_eq!(t.counts.out_of_order, 2);
        assert_eq!(t.counts.unexpected, 1);
        // 0,1,2,3,5 arrived; 4,6,7,8,9 lost.
        assert_eq!(t.counts.lost(10), 5);
        assert!(!t.complete());
    }

    #[test]
    fn lost_never_negative_and_counts_add() {
        let mut a = Counts {
            received: 3,
            unique: 3,
            ..Counts::default()
        };
        let b = Counts {
            received: 2,
            unique: 1,
            duplicated: 1,
            out_of_order: 1,
            unexpected: 0,
        };
        a.add(&b);
        assert_eq!(
            a,
            Counts {
                received: 5,
                unique: 4,
                duplicated: 1,
                out_of_order: 1,
                unexpected: 0
            }
        );
        assert_eq!(a.lost(3), 0);
        assert_eq!(a.lost(10), 6);
    }

    #[test]
    fn large_sequence_numbers_grow_bitset() {
        let mut t = SeqTracker::new(1_000_000);
        assert_eq!(t.record(999_999), Outcome::New);
        assert_eq!(t.record(0), Outcome::OutOfOrder);
        assert_eq!(t.record(999_999), Outcome::Duplicate);
        assert_eq!(t.record(1_000_000), Outcome::Unexpected);
    }

    #[test]
    fn percentiles_of_uniform_latencies() {
        let mut l = Latency::new();
        // 1..=1000 ms in microseconds.
        for i in 1..=1000u64 {
            l.record_ns(0, i * 1_000_000);
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        let close = |got: u64, want: u64| (got as f64 - want as f64).abs() / want as f64 <= 0.001;
        assert!(close(s.p50_us, 500_000), "p50 {}", s.p50_us);
        assert!(close(s.p99_us, 990_000), "p99 {}", s.p99_us);
        assert!(close(s.p999_us, 999_000), "p999 {}", s.p999_us);
        assert!(close(s.max_us, 1_000_000), "max {}", s.max_us);
        assert!((s.mean_us - 500_500.0).abs() / 500_500.0 < 0.001);
    }

    #[test]
    fn tail_percentiles_see_outliers() {
        let mut l = Latency::new();
        for _ in 0..9_980 {
            l.record_ns(1_000, 101_000); // 100 us
        }
        for _ in 0..20 {
            l.record_ns(0, 50_000_000); // 50 ms
        }
        let s = l.summary();
        assert_eq!(s.p50_us, 100);
        assert_eq!(s.p99_us, 100);
        assert!(s.p999_us >= 49_950, "p99.9 {}", s.p999_us);
        assert!(s.max_us >= 49_950);
    }

    #[test]
    fn clock_skew_and_empty() {
        let mut l = Latency::new();
        assert_eq!(l.summary(), LatencySummary::default());
        l.record_ns(10_000, 5_000); // receive before send: clamps to 1 us
        assert_eq!(l.summary().max_us, 1);
    }

    #[test]
    fn buckets_roundtrip_and_merge() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for i in 0..100u64 {
            a.record_ns(0, i * 7_000);
            b.record_ns(0, i * 90_000);
        }
        let a2 = Latency::from_buckets(&a.to_buckets());
        assert_eq!(a2.summary(), a.summary());
        let mut m = a2;
        m.merge(&Latency::from_buckets(&b.to_buckets()));
        assert_eq!(m.count(), 200);
        assert_eq!(m.summary().max_us, b.summary().max_us);
    }
}
