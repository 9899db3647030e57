//! The HTTP connection's clock and its last word: what every accepted TCP
//! connection goes through before (and between) requests.
//!
//! [`EdgeIo`] wraps the socket that Herald's own HTTP/1 path
//! (`crate::http`'s `h1`) reads request heads from and hyper, for what that
//! path hands over, reads and writes (the bytes already read replayed
//! first, [`EdgeIo::rewind`]):
//! - A connection that has not sent a whole request head within
//!   `header_timeout` of its first byte (or of being accepted) is answered
//!   `408 request_timeout` and closed; one that sits idle between requests
//!   for `idle_timeout` is closed. While a request is being served (a
//!   handler runs, a stream or long-poll is open) neither clock runs: those
//!   have their own heartbeats and timeouts. The phase is shared with the
//!   service ([`Phase`]), which marks a request's start and the end of its
//!   response body ([`PhaseBody`]).
//! - hyper answers a request it cannot parse (400, 414 URI too long, 431
//!   headers too large) by itself, with an empty body. Such an answer is
//!   written while no request is being served, which is how it is told
//!   apart; it is replaced by the same status with Herald's JSON error body
//!   and `Connection: close`.
//!
//! Why a wrapper and not hyper's `header_read_timeout`: hyper runs that one
//! clock from the end of one response to the end of the next head, so idle
//! keep-alive time and header time could not be told apart, and hyper's own
//! error answers have no hook for a body.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use herald_core::Refusal;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Where a connection is between its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for (the rest of) a request head; the header clock runs.
    Head,
    /// A request is being served; no clock runs here.
    Busy,
    /// Between requests on a keep-alive connection; the idle clock runs.
    Idle,
}

/// The stage of one connection, shared by its socket wrapper (which reads)
/// and its service (which sees requests start and responses end).
pub(crate) struct Phase {
    /// (stage, deadline of that stage). Locked only for a few instructions
    /// at each change, by the connection's own task or its response body.
    state: Mutex<(Stage, Instant)>,
    /// The reader that found the connection busy, to wake when the
    /// response ends so that it starts the idle clock.
    reader: Mutex<Option<Waker>>,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Phase {
    pub(crate) fn new(header_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new((Stage::Head, Instant::now() + header_timeout)),
            reader: Mutex::new(None),
            header_timeout,
            idle_timeout,
        })
    }

    /// A request head was parsed and handed to the service.
    pub(crate) fn request_started(&self) {
        let mut state = self.state.lock();
        state.0 = Stage::Busy;
    }

    /// The response (body included) is done; idle until the next byte.
    pub(crate) fn response_done(&self) {
        {
            let mut state = self.state.lock();
            if state.0 != Stage::Busy {
                return;
            }
            *state = (Stage::Idle, Instant::now() + self.idle_timeout);
        }
        if let Some(reader) = self.reader.lock().take() {
            reader.wake();
        }
    }

    fn stage(&self) -> (Stage, Instant) {
        *self.state.lock()
    }

    /// Bytes arrived: an idle connection starts a request head.
    pub(crate) fn bytes_arrived(&self) {
        let mut state = self.state.lock();
        if state.0 == Stage::Idle {
            *state = (Stage::Head, Instant::now() + self.header_timeout);
        }
    }
}

/// A response body that tells the [`Phase`] when it is finished (sent whole
/// or dropped).
pub(crate) struct PhaseBody<B> {
    inner: B,
    phase: Arc<Phase>,
}

impl<B> PhaseBody<B> {
    pub(crate) fn new(inner: B, phase: Arc<Phase>) -> Self {
        Self { inner, phase }
    }
}

impl<B> Drop for PhaseBody<B> {
    fn drop(&mut self) {
        self.phase.response_done();
    }
}

impl<B> http_body::Body for PhaseBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket as hyper sees it: reads run the clocks, hyper's own error
/// answers are replaced.
pub(crate) struct EdgeIo {
    tcp: TcpStream,
    phase: Arc<Phase>,
    /// The clock for the current stage, set to the stage's deadline.
    timer: Pin<Box<Sleep>>,
    /// A replacement answer still to be written (before anything else).
    pending: Bytes,
    /// Bytes already read from the socket (by [`crate::http`]'s own HTTP/1
    /// path) that hyper is to read first.
    prefix: Bytes,
}

impl EdgeIo {
    pub(crate) fn new(tcp: TcpStream, phase: Arc<Phase>) -> Self {
        let (_, deadline) = phase.stage();
        Self {
            tcp,
            phase,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            pending: Bytes::new(),
            prefix: Bytes::new(),
        }
    }

    /// The plain socket, for an upgraded (WebSocket) connection, with what
    /// of [`Self::rewind`]'s bytes was not read yet.
    pub(crate) fn into_inner(self) -> (TcpStream, Bytes) {
        (self.tcp, self.prefix)
    }

    /// Makes `bytes`, read from the socket already, the next ones read.
    pub(crate) fn rewind(&mut self, bytes: Bytes) {
        debug_assert!(self.prefix.is_empty());
        self.prefix = bytes;
    }

    /// The socket itself, for writes and readiness while a response is
    /// served (no clock runs then).
    pub(crate) fn tcp(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// The connection's stage, shared with whoever serves its requests.
    pub(crate) fn phase(&self) -> &Arc<Phase> {
        &self.phase
    }

    /// Whether `first` (the start of a write) is hyper's own answer to a
    /// head it could not parse, written while no request is being served;
    /// if so, the JSON answer replaces it in `pending`.
    fn replaces(&mut self, first: &[u8]) -> bool {
        if self.phase.stage().0 != Stage::Head {
            return false;
        }
        let Some(status) = response_status(first) else {
            return false;
        };
        self.pending = hyper_error_answer(status);
        true
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let _ = self.pending.split_to(n);
        }
        Poll::Ready(Ok(()))
    }
}

/// The answer to a connection whose request head did not arrive in time.
fn timeout_answer() -> Bytes {
    let refusal = Refusal::RequestTimeout;
    error_answer(
        refusal.status().unwrap_or(408),
        refusal,
        "the request head did not arrive within header_timeout",
    )
}

/// A whole `Connection: close` answer with the JSON error body.
pub(crate) fn error_answer(status: u16, code: Refusal, message: &str) -> Bytes {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    Bytes::from(format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// The JSON answer for an error hyper produced itself, by its status (the
/// status stays hyper's: 505 is `invalid_request`, see
/// [`Refusal::also_status`]).
fn hyper_error_answer(status: u16) -> Bytes {
    let (code, message) = match status {
        414 => (Refusal::UriTooLong, Refusal::UriTooLong.message()),
        431 => (Refusal::HeadersTooLarge, Refusal::HeadersTooLarge.message()),
        413 => (Refusal::PayloadTooLarge, Refusal::PayloadTooLarge.message()),
        505 => (Refusal::InvalidRequest, "only HTTP/1.x is served here"),
        _ => (
            Refusal::InvalidRequest,
            "the request could not be parsed as HTTP/1.1",
        ),
    };
    error_answer(status, code, message)
}

/// The status of a response head written by hyper, if `buf` starts one.
fn response_status(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.")?;
    let digits = rest.get(2..5)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl AsyncRead for EdgeIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            this.phase.bytes_arrived();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.phase.bytes_arrived();
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        // Nothing to read: is this stage's time up?
        let (stage, deadline) = this.phase.stage();
        if stage == Stage::Busy {
            *this.phase.reader.lock() = Some(cx.waker().clone());
            // The response may have ended in between: look again.
            if this.phase.stage().0 == Stage::Busy {
                return Poll::Pending;
            }
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if this.timer.deadline() != deadline {
            this.timer.as_mut().reset(deadline);
        }
        if this.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if stage == Stage::Head {
            // Best effort, never waiting: the client is slow by definition.
            let _ = this.tcp.try_write(&timeout_answer());
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not received within header_timeout",
            )));
        }
        // Idle past idle_timeout: end of stream, hyper closes quietly.
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for EdgeIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if this.replaces(buf) {
            ready!(this.poll_pending(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        if this.replaces(first) {
            ready!(this.poll_pending(cx))?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_read_from_response_heads() {
        assert_eq!(
            response_status(b"HTTP/1.1 431 Request Header Fields"),
            Some(431)
        );
        assert_eq!(response_status(b"HTTP/1.0 400 Bad Request"), Some(400));
        assert_eq!(response_status(b"{\"data\":1}"), None);
        assert_eq!(response_status(b"HTTP/1.1 4"), None);
    }

    #[test]
    fn answers_carry_a_json_body() {
        let answer = hyper_error_answer(431);
        let text = std::str::from_utf8(&answer).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["error"]["code"], "headers_too_large");
    }

    #[tokio::test(start_paused = true)]
    async fn phases_run_the_right_clock() {
        let phase = Phase::new(Duration::from_secs(10), Duration::from_secs(60));
        let (stage, deadline) = phase.stage();
        assert_eq!(stage, Stage::Head);
        assert_eq!(deadline, Instant::now() + Duration::from_secs(10));
        phase.request_started();
        assert_eq!(phase.stage().0, Stage::Busy);
        // Bytes of a request body while busy change nothing.
        phase.bytes_arrived();
        assert_eq!(phase.stage().0, Stage::Busy);
        tokio::time::advance(Duration::from_secs(5)).await;
        phase.response_done();
        assert_eq!(
            phase.stage(),
            (Stage::Idle, Instant::now() + Duration::from_secs(60))
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        phase.bytes_arrived();
        assert_eq!(
            phase.stage(),
            (Stage::Head, Instant::now() + Duration::from_secs(10))
        );
    }
}
