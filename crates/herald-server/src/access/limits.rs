//! Connection limits: in total and per client IP. A connection holds a
//! [`ConnectionGuard`] for its whole life, from accept on; dropping it gives
//! the slot back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::Refused;
use herald_core::Refusal;

/// Counts open connections in total and per client IP, and refuses past
/// the configured maxima. The server keeps one for its public listener's TCP
/// connections (taken at accept), one for HTTP sessions (which outlive the
/// request that opened them) and one for the API listener.
pub struct ConnectionLimiter {
    total: AtomicUsize,
    /// Connections per client IP; an IP with none is removed.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_total: usize,
    max_per_ip: usize,
}

/// One counted connection; dropping it gives the slot back.
pub struct ConnectionGuard {
    limiter: Arc<ConnectionLimiter>,
    /// The IP counted against the per-IP limit, if any.
    ip: Option<IpAddr>,
    /// Whether this guard counts against the total.
    counted: bool,
}

impl std::fmt::Debug for ConnectionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionGuard")
            .field("ip", &self.ip)
            .field("counted", &self.counted)
            .finish()
    }
}

/// Which limit a connection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    Total(usize),
    PerIp(usize),
}

impl LimitHit {
    pub fn error(self) -> Refused {
        match self {
            LimitHit::Total(max) => Refused::new(
                Refusal::TooManyConnections,
                format!("the server holds its maximum of {max} connections; retry later"),
            ),
            LimitHit::PerIp(max) => Refused::new(
                Refusal::TooManyConnectionsFromIp,
                format!("at most {max} connections per client address"),
            ),
        }
    }
}

impl ConnectionLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            max_total,
            max_per_ip,
        })
    }

    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Takes a slot counted in the total and against `ip`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionGuard, LimitHit> {
        self.take(Some(ip), true)
    }

    /// Takes a slot counted in the total only (a trusted proxy's TCP
    /// connection: its clients are counted per request, by their address).
    pub fn acquire_total(self: &Arc<Self>) -> Result<ConnectionGuard, LimitHit> {
        self.take(None, true)
    }

    /// Takes a slot counted against `ip` only (a client behind a trusted
    /// proxy, whose TCP connection is already in the total).
    pub fn acquire_per_ip(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionGuard, LimitHit> {
        self.take(Some(ip), false)
    }

    fn take(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        counted: bool,
    ) -> Result<ConnectionGuard, LimitHit> {
        // One lock for both checks, so two racing connections cannot both
        // take the last slot.
        let mut per_ip = self.per_ip.lock();
        if counted && self.total.load(Ordering::Relaxed) >= self.max_total {
            return Err(LimitHit::Total(self.max_total));
        }
        if let Some(ip) = ip {
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                if *count == 0 {
                    per_ip.remove(&ip);
                }
                return Err(LimitHit::PerIp(self.max_per_ip));
            }
            *count += 1;
        }
        if counted {
            self.total.fetch_add(1, Ordering::Relaxed);
        }
        Ok(ConnectionGuard {
            limiter: Arc::clone(self),
            ip,
            counted,
        })
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut per_ip = self.limiter.per_ip.lock();
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        if self.counted {
            self.limiter.total.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The TCP connection's slot, shared with the requests on it: a WebSocket
/// upgrade takes it, so that the upgraded socket keeps its count.
#[derive(Clone, Default)]
pub(crate) struct TcpSlot(Arc<Mutex<Option<ConnectionGuard>>>);

impl TcpSlot {
    pub(crate) fn new(guard: Option<ConnectionGuard>) -> Self {
        Self(Arc::new(Mutex::new(guard)))
    }

    pub(crate) fn take(&self) -> Option<ConnectionGuard> {
        self.0.lock().take()
    }
}

/// The request extension every handler can read: the TCP connection's slot
/// and whether the request came through a trusted proxy.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) slot: TcpSlot,
    /// The client address (`ConnectInfo`) was taken from a trusted proxy's
    /// forwarding header.
    pub(crate) proxied: bool,
}

/// What a long-lived request holds: the TCP slot it took over (upgrades)
/// and, behind a trusted proxy, the slot of the client's own address. Each
/// one is a client connection in the `herald_connections` gauge.
#[derive(Debug)]
pub(crate) struct Slot {
    _tcp: Option<ConnectionGuard>,
    /// Boxed: only clients behind a trusted proxy have one, and every idle
    /// connection carries a `Slot`.
    _client: Option<Box<ConnectionGuard>>,
    live: Arc<AtomicUsize>,
}

impl Slot {
    pub(crate) fn new(
        tcp: Option<ConnectionGuard>,
        client: Option<ConnectionGuard>,
        live: &Arc<AtomicUsize>,
    ) -> Self {
        live.fetch_add(1, Ordering::Relaxed);
        Self {
            _tcp: tcp,
            _client: client.map(Box::new),
            live: Arc::clone(live),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A token bucket: `rate` per second, up to `burst` at once.
pub(crate) struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: tokio::time::Instant,
}

impl RateLimit {
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: tokio::time::Instant::now(),
        }
    }

    /// Takes one token if there is one. A rate of 0 means unlimited.
    pub(crate) fn try_take(&mut self) -> bool {
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
        let l = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let b: IpAddr = "127.0.0.2".parse().expect("ip");
        let g1 = l.acquire(a).expect("first");
        let _g2 = l.acquire(a).expect("second");
        assert_eq!(l.acquire(a).err(), Some(LimitHit::PerIp(2)));
        let _g3 = l.acquire(b).expect("other ip");
        assert_eq!(l.acquire(b).err(), Some(LimitHit::Total(3)));
        assert_eq!(LimitHit::Total(3).error().code, Refusal::TooManyConnections);
        drop(g1);
        assert!(l.acquire(b).is_ok());
    }

    #[test]
    fn per_ip_and_total_only_slots() {
        let l = ConnectionLimiter::new(2, 1);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let proxy = l.acquire_total().expect("proxy connection");
        let client = l.acquire_per_ip(a).expect("client behind it");
        assert_eq!(l.total(), 1);
        assert_eq!(l.acquire_per_ip(a).err(), Some(LimitHit::PerIp(1)));
        drop(client);
        assert!(l.acquire_per_ip(a).is_ok());
        drop(proxy);
        assert_eq!(l.total(), 0);
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
