//! The accept loop: Herald's own HTTP/1 path (`super::h1`) on each TCP
//! connection, hyper's HTTP/1 server for what that path does not take
//! (bodies, upgrades), the client address for handlers, connection limits
//! from accept on, and graceful shutdown.
//!
//! Every accepted socket is counted against `max_connections` and
//! `max_connections_per_ip` before hyper reads a byte of it. One over a
//! limit is read for one request (within the header clock) and closed: a
//! client endpoint answers with the limit's JSON error, a backend endpoint
//! is served as usual (its credentials, not its address, decide: a backend
//! on the same host as its clients must still be able to publish). At most
//! [`MAX_REFUSING`] such connections are read at once; past that, they are
//! closed unanswered.
//! Each connection runs the header and idle clocks of `crate::edge`.
//!
//! The public listener also keeps the process under its open-file limit:
//! at [`FdBudget::limit`] sockets it accepts each newcomer and closes it at
//! once, unanswered, until a connection closes, so the API listener, Redis
//! and hooks always have descriptors left and no connection waits in the
//! kernel's backlog for longer than the budget stays full. An `accept`
//! that fails for lack of descriptors backs off and is logged once per
//! [`LOG_INTERVAL`].
//!
//! Why not `axum::serve`: a WebSocket upgrade must give back the plain
//! `TcpStream` (see [`crate::ws::handshake`]), and the clocks need to sit
//! between hyper and the socket.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::access::client_addr::{canonical_socket, TrustedProxies};
use crate::access::limits::{Conn, ConnectionLimiter, LimitHit, TcpSlot};
use crate::edge::{EdgeIo, Phase, PhaseBody};
use crate::error::ApiError;

/// Connections answered "over the limit" at once; more are closed unanswered.
pub const MAX_REFUSING: usize = 256;
/// Longest request head hyper buffers, and most header bytes a request may
/// carry (431 past it).
pub const MAX_HEAD: usize = 32 * 1024;
/// Longest request target (414 past it).
pub const MAX_URI: usize = 8 * 1024;
/// How often a persisting accept problem is logged.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Longest pause between accept retries when descriptors run out.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Set on a request whose TCP connection is over a connection limit: client
/// endpoints answer with the limit's error (see [`over_limit_guard`]).
#[derive(Clone, Copy)]
pub struct OverLimit(pub LimitHit);

/// Middleware of the client endpoints: refuses a request whose connection
/// is over a limit.
pub async fn over_limit_guard(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match request.extensions().get::<OverLimit>() {
        Some(OverLimit(hit)) => ApiError::from(hit.error()).into_response(),
        None => next.run(request).await,
    }
}

/// How many sockets the public listener may hold, from the process's
/// open-file limit less a reserve.
#[derive(Clone)]
pub struct FdBudget {
    pub limit: usize,
    /// Every limiter whose connections hold a descriptor.
    pub counted: Vec<Arc<ConnectionLimiter>>,
    pub refusing: Arc<AtomicUsize>,
}

impl FdBudget {
    fn open(&self) -> usize {
        self.counted.iter().map(|l| l.total()).sum::<usize>()
            + self.refusing.load(Ordering::Relaxed)
    }
}

/// Everything one listener's connections share.
pub struct Edge {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// A response write that makes no progress for this long ends the
    /// connection (Herald's own HTTP/1 path; WebSockets have their own).
    pub write_timeout: Duration,
    pub trusted: TrustedProxies,
    pub limiter: Arc<ConnectionLimiter>,
    /// Set on the public listener only.
    pub budget: Option<FdBudget>,
    pub refusing: Arc<AtomicUsize>,
    /// Connections accepted and closed unanswered (at the open-file budget,
    /// or past [`MAX_REFUSING`]): `herald_tcp_shed_total`.
    pub shed: Arc<AtomicU64>,
    /// For log lines: "public" or "api".
    pub name: &'static str,
    /// On a listener that serves `POST /pub/{channel}`: the state its
    /// direct path publishes with (`crate::http::api::direct_publish`).
    pub(crate) publish: Option<crate::state::AppState>,
}

impl Edge {
    /// The default clocks and limits, no trusted proxy, no open-file
    /// budget: for a listener outside a configured server (examples, tools).
    pub fn standalone(name: &'static str) -> Self {
        Self {
            header_timeout: crate::config::DEFAULT_HEADER_TIMEOUT,
            idle_timeout: crate::config::DEFAULT_IDLE_TIMEOUT,
            write_timeout: crate::config::DEFAULT_WRITE_TIMEOUT,
            trusted: TrustedProxies::default(),
            limiter: ConnectionLimiter::new(
                crate::config::DEFAULT_MAX_CONNECTIONS,
                crate::config::DEFAULT_MAX_CONNECTIONS_PER_IP,
            ),
            budget: None,
            refusing: Arc::new(AtomicUsize::new(0)),
            shed: Arc::new(AtomicU64::new(0)),
            name,
            publish: None,
        }
    }
}

/// Logs a persisting condition at most once per interval, with a count of
/// what it held back.
struct Throttle {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    fn new() -> Self {
        Self {
            last: None,
            held_back: 0,
        }
    }

    /// Whether to log now; `held_back` tells how many were not logged.
    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < LOG_INTERVAL)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then stops
/// accepting and waits for the HTTP connections to finish their responses
/// (upgraded WebSockets are no longer HTTP connections; they watch the
/// token themselves).
pub async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken, edge: Edge) {
    let edge = Arc::new(edge);
    let tracker = TaskTracker::new();
    let mut accept_errors = Throttle::new();
    let mut at_budget = Throttle::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        // Biased: once shutdown began, a connection waiting in the backlog
        // is not taken (an unbiased select picks one of two ready branches
        // at random, and served a late request now and then).
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(50);
                pair
            }
            // The client gave up before we accepted: nothing to do.
            Err(e) if is_connection_error(&e) => continue,
            // Out of file descriptors, most often: wait for some to close,
            // and keep serving the connections we have meanwhile.
            Err(e) => {
                if let Some(held_back) = accept_errors.ready() {
                    tracing::error!(
                        listener = edge.name,
                        error = %e,
                        held_back,
                        "accept failed; backing off"
                    );
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        // At the open-file budget: close the newcomer at once, unanswered.
        // The reserve below the process's limit leaves room for this one
        // descriptor. Leaving it in the kernel's backlog instead would hold
        // it unserved for as long as the budget stays full, then give it a
        // whole header clock: a half-open flood's newest connections would
        // outlive `header_timeout` (docs/security.md says why this is also
        // the better answer for a legitimate client).
        if edge.budget.as_ref().is_some_and(|b| b.open() >= b.limit) {
            edge.shed.fetch_add(1, Ordering::Relaxed);
            if let Some(held_back) = at_budget.ready() {
                let budget = edge.budget.as_ref().map_or(0, |b| b.limit);
                tracing::warn!(
                    listener = edge.name,
                    budget,
                    held_back,
                    "at the open-file budget: closing new connections unanswered"
                );
            }
            drop(tcp);
            continue;
        }
        let peer = canonical_socket(peer);
        // Pushes are small and latency matters: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let guard = if edge.trusted.contains(peer.ip()) {
            edge.limiter.acquire_total()
        } else {
            edge.limiter.acquire(peer.ip())
        };
        match guard {
            Ok(guard) => {
                let (io, ctx) = prepared(
                    tcp,
                    peer,
                    app.clone(),
                    TcpSlot::new(Some(guard)),
                    None,
                    Arc::clone(&edge),
                );
                tracker.spawn(connection(io, ctx, shutdown.clone()));
            }
            Err(hit) => {
                if edge.refusing.fetch_add(1, Ordering::Relaxed) < MAX_REFUSING {
                    let edge = Arc::clone(&edge);
                    let (app, shutdown) = (app.clone(), shutdown.clone());
                    tracker.spawn(async move {
                        let slot = TcpSlot::new(None);
                        let (io, ctx) =
                            prepared(tcp, peer, app, slot, Some(hit), Arc::clone(&edge));
                        connection(io, ctx, shutdown).await;
                        edge.refusing.fetch_sub(1, Ordering::Relaxed);
                    });
                } else {
                    edge.refusing.fetch_sub(1, Ordering::Relaxed);
                    edge.shed.fetch_add(1, Ordering::Relaxed);
                    drop(tcp);
                }
            }
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// What serving one connection's requests needs, on either HTTP/1 path.
#[derive(Clone)]
pub(crate) struct Ctx {
    peer: SocketAddr,
    app: Router,
    slot: TcpSlot,
    over: Option<LimitHit>,
    pub(crate) edge: Arc<Edge>,
    phase: Arc<Phase>,
}

impl Ctx {
    /// Marks the request's start and gives it what handlers read (client
    /// address, connection slot, over-limit mark); the refusal to answer
    /// instead when it is larger than Herald takes.
    pub(crate) fn prepare<B>(
        &self,
        request: hyper::Request<B>,
    ) -> (hyper::Request<B>, Option<ApiError>) {
        self.phase.request_started();
        let mut request = request;
        let refusal = oversized(&request);
        let (client, proxied) = self.edge.trusted.client(self.peer, request.headers());
        request.extensions_mut().insert(ConnectInfo(client));
        request.extensions_mut().insert(Conn {
            slot: self.slot.clone(),
            proxied,
        });
        if let Some(hit) = self.over {
            request.extensions_mut().insert(OverLimit(hit));
        }
        (request, refusal)
    }

    /// The router's response (a deferred one not settled yet). Boxed: the
    /// router's and middlewares' futures are large and live only as long as
    /// the routing.
    pub(crate) fn route(
        &self,
        request: axum::extract::Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = axum::response::Response> + Send>> {
        // A Router is always ready: no poll_ready needed.
        let routing = self.app.clone().call(request);
        Box::pin(async move {
            match routing.await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        })
    }
}

/// The socket and context of a connection just accepted.
fn prepared(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    slot: TcpSlot,
    over: Option<LimitHit>,
    edge: Arc<Edge>,
) -> (EdgeIo, Ctx) {
    let phase = Phase::new(edge.header_timeout, edge.idle_timeout);
    let io = EdgeIo::new(tcp, Arc::clone(&phase));
    let ctx = Ctx {
        peer,
        app,
        slot,
        over,
        edge,
        phase,
    };
    (io, ctx)
}

/// Serves one connection. Its future is the connection's task for as long
/// as the connection lives, so it holds the socket, the context and little
/// else: each request's phases are allocations of their own.
async fn connection(mut io: EdgeIo, ctx: Ctx, shutdown: CancellationToken) {
    // A connection over a limit is answered once, by hyper; the others
    // start on Herald's own path (`super::h1`), which hands over to hyper
    // what it does not take.
    if ctx.over.is_none() {
        match super::h1::serve(&mut io, &ctx, &shutdown).await {
            super::h1::Served::Closed => return,
            super::h1::Served::Hyper => {}
        }
    }
    with_hyper(io, ctx, shutdown).await;
}

/// hyper serves the connection from here on. Boxed: its buffers and
/// state are only for connections that need it.
fn with_hyper(
    io: EdgeIo,
    ctx: Ctx,
    shutdown: CancellationToken,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async move {
        let over = ctx.over;
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let ctx = ctx.clone();
            async move {
                let (request, refusal) = ctx.prepare(request);
                let close = refusal.is_some() || ctx.over.is_some();
                let mut response = match refusal {
                    Some(refusal) => refusal.into_response(),
                    None => {
                        let response = ctx.route(request.map(axum::body::Body::new)).await;
                        super::response::settle(response).await
                    }
                };
                if close {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                let phase = Arc::clone(&ctx.phase);
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| axum::body::Body::new(PhaseBody::new(body, phase))),
                )
            }
        });
        let conn = http1::Builder::new()
            // hyper's own timers work (it has one), but its header clock is
            // off: ours (crate::edge) tells idle keep-alive time from header
            // time, which hyper's single clock cannot.
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(MAX_HEAD)
            // One request on a connection over a limit.
            .keep_alive(over.is_none())
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            () = shutdown.cancelled() => {}
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    })
}

/// A request whose target or headers are larger than Herald takes (hyper's
/// own limit is on its read buffer, which one large read can pass).
fn oversized<B>(request: &hyper::Request<B>) -> Option<crate::error::ApiError> {
    use herald_core::Refusal;
    let uri = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri > MAX_URI {
        return Some(crate::error::ApiError::new(
            Refusal::UriTooLong,
            format!("the request target is longer than {MAX_URI} bytes"),
        ));
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    (headers > MAX_HEAD).then(|| {
        crate::error::ApiError::new(
            Refusal::HeadersTooLarge,
            format!("the request headers are larger than {MAX_HEAD} bytes"),
        )
    })
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Raises the soft open-file limit to the hard one and returns the budget
/// of sockets the public listener may hold: the limit less a reserve of 5 %
/// (at least 64, at most 1,024) for the API listener, the engine, hooks and
/// files. `None` when the limit cannot be read.
pub fn open_file_budget() -> Option<(usize, usize)> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(max)) = (limit.current, limit.maximum) {
        if current < max {
            limit.current = Some(max);
            if setrlimit(Resource::Nofile, limit).is_err() {
                limit.current = Some(current);
            }
        }
    }
    let soft = usize::try_from(limit.current?).ok()?;
    let reserve = (soft / 20).clamp(64, 1024);
    Some((soft, soft.saturating_sub(reserve).max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn throttle_logs_once_per_interval_and_counts_what_it_held_back() {
        let mut throttle = Throttle::new();
        // The first occurrence is logged, with nothing held back.
        assert_eq!(throttle.ready(), Some(0));
        // Within the interval: held back, counted.
        for _ in 0..5 {
            assert_eq!(throttle.ready(), None);
        }
        tokio::time::advance(LOG_INTERVAL - Duration::from_millis(1)).await;
        assert_eq!(throttle.ready(), None);
        // Once the interval has passed: logged, with the six held back.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(throttle.ready(), Some(6));
        // The count starts again, and so does the interval.
        assert_eq!(throttle.ready(), None);
        tokio::time::advance(LOG_INTERVAL).await;
        assert_eq!(throttle.ready(), Some(1));
        // A long quiet spell: the next one is logged at once.
        tokio::time::advance(LOG_INTERVAL * 10).await;
        assert_eq!(throttle.ready(), Some(0));
    }
}
