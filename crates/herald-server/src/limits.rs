//! Connection limits: in total and per client IP. A connection holds a
//! [`ConnectionGuard`] for its whole life; dropping it gives the slot back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use parking_lot::Mutex;

use crate::error::ApiError;

#[derive(Default)]
pub struct ConnectionLimiter {
    total: AtomicUsize,
    /// Connections per client IP; an IP with none is removed.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

pub struct ConnectionGuard {
    limiter: Arc<ConnectionLimiter>,
    ip: IpAddr,
}

impl ConnectionLimiter {
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Takes a slot for a connection from `ip`, or says which limit is hit.
    pub fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<ConnectionGuard, ApiError> {
        let mut per_ip = self.per_ip.lock();
        if self.total.load(Ordering::Relaxed) >= max_total {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!("the server holds its maximum of {max_total} connections; retry later"),
            ));
        }
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= max_per_ip {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections_from_ip",
                format!("at most {max_per_ip} connections per client address"),
            ));
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionGuard {
            limiter: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut per_ip = self.limiter.per_ip.lock();
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.limiter.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A token bucket: `rate` per second, up to `burst` at once.
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: tokio::time::Instant,
}

impl RateLimit {
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: tokio::time::Instant::now(),
        }
    }

    /// Takes one token if there is one. A rate of 0 means unlimited.
    pub fn try_take(&mut self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_enforced_and_released() {
        let l = Arc::new(ConnectionLimiter::default());
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let b: IpAddr = "127.0.0.2".parse().expect("ip");
        let g1 = l.acquire(a, 3, 2).expect("first");
        let _g2 = l.acquire(a, 3, 2).expect("second");
        assert_eq!(
            l.acquire(a, 3, 2).err().map(|e| e.code),
            Some("too_many_connections_from_ip")
        );
        let _g3 = l.acquire(b, 3, 2).expect("other ip");
        assert_eq!(
            l.acquire(b, 3, 2).err().map(|e| e.code),
            Some("too_many_connections")
        );
        drop(g1);
        assert!(l.acquire(b, 3, 2).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_refills() {
        let mut r = RateLimit::new(2, 2);
        assert!(r.try_take() && r.try_take());
        assert!(!r.try_take());
        tokio::time::advance(std::time::Duration::from_millis(600)).await;
        assert!(r.try_take());
        assert!(!r.try_take());
    }
}
