//! A latency histogram with fixed buckets on atomics, for the operator's
//! metrics: observing is a bucket search over a dozen bounds and two
//! relaxed adds, with no lock and no allocation, so it can sit on the
//! delivery path. Rendering (the Prometheus text) is the server's business;
//! this only counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in microseconds, of the latency buckets every Herald
/// histogram uses: 0.5 ms to 10 s (the Prometheus defaults, and a finer
/// bottom for in-process paths).
pub const LATENCY_BOUNDS_US: &[u64] = &[
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Counts of observations per bucket, and their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds_us: &'static [u64],
    /// One count per bound, plus the overflow (`+Inf`) bucket last; not
    /// cumulative (the reader adds them up).
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(LATENCY_BOUNDS_US)
    }
}

impl Histogram {
    /// A histogram over `bounds_us` (microseconds, ascending).
    pub fn new(bounds_us: &'static [u64]) -> Self {
        Self {
            bounds_us,
            buckets: (0..=bounds_us.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Counts `n` observations of `us` microseconds each.
    pub fn observe_n_us(&self, us: u64, n: u64) {
        let i = self.bounds_us.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        self.sum_us
            .fetch_add(us.saturating_mul(n), Ordering::Relaxed);
    }

    /// Counts one observation.
    pub fn observe(&self, d: Duration) {
        self.observe_n_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), 1);
    }

    /// The bounds, in microseconds.
    pub fn bounds_us(&self) -> &'static [u64] {
        self.bounds_us
    }

    /// Cumulative counts, one per bound and then the total (`+Inf`).
    pub fn cumulative(&self) -> Vec<u64> {
        let mut total = 0;
        self.buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect()
    }

    /// How many observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Their sum, in microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let h = Histogram::new(&[10, 100]);
        h.observe_n_us(10, 2); // on a bound: that bucket (le)
        h.observe_n_us(11, 1);
        h.observe_n_us(1_000, 1);
        assert_eq!(h.cumulative(), vec![2, 3, 4]);
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum_us(), 1_031);
    }
}
