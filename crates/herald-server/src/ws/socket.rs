//! A server WebSocket over a raw `TcpStream`, made for pushing.
//!
//! Why not a general WebSocket crate: an idle push connection should cost
//! next to nothing, and a delivery should cost one system call. Here:
//! - idle, a connection holds no buffer at all: reads go through a stack
//!   buffer; a partly received header or control frame is kept on the heap,
//!   and a data message's payload goes straight into the message;
//! - a batch of messages goes out in one system call of header + shared
//!   envelope pairs, built on the stack: the envelope bytes (encoded once
//!   per publish) are not re-encoded or re-checked per subscriber. Up to
//!   2 KiB the pairs are copied into one stack buffer and sent with one
//!   `send` (cheaper in the kernel than `writev`'s VFS path); past that they
//!   go as they are, in one `writev`;
//! - only what the socket does not take at once is copied, into `pending`,
//!   which the caller flushes with a deadline;
//! - while the connection waits, the hub may write a message to the socket
//!   itself ([`WsSocket::writer`], see `herald_core::hub`): the socket and
//!   `pending` are shared with it for that, and the connection's own writes
//!   and the hub's never overlap (the hub writes only while the connection is
//!   armed, which it is only while parked, and never ahead of `pending`).

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use herald_core::disconnect::{Disconnect, WRITE_TIMEOUT};
use herald_core::{DirectWriter, Message, Written};
use parking_lot::Mutex;
use tokio::net::TcpStream;

use super::frame::{self, FrameError, Incoming, Reader, MAX_HEADER};

/// What the WebSocket needs of its socket: non-blocking reads and writes
/// and readiness. `TcpStream` is the one Herald runs on; unit tests use a
/// scripted socket to force short writes and `WouldBlock` at each hand-off
/// between the hub's direct writes and the connection's queue.
pub trait RawSocket: Send + Sync + 'static {
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Ends the sending side (after the close frame).
    fn shutdown_write(&self) -> io::Result<()>;
}

impl RawSocket for TcpStream {
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::try_read(self, buf)
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        TcpStream::try_write_vectored(self, bufs)
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_write_ready(self, cx)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        socket2::SockRef::from(self).shutdown(std::net::Shutdown::Write)
    }
}

/// Most frames written with one system call.
pub const BATCH: usize = 64;
/// Bytes read per system call (on the stack, not kept).
const READ_CHUNK: usize = 4096;
/// How long a closing connection waits for the client's own close.
const LINGER: Duration = Duration::from_secs(2);

/// What the connection's queue gives the writer.
pub enum Out {
    /// A text frame with these (shared) bytes.
    Text(Bytes),
    /// The end: close with this code, after this last text frame, if any.
    End(Disconnect, Option<Bytes>),
}

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed the TCP connection, or it broke.
    Gone,
    /// The client broke the framing rules.
    Frame(FrameError),
}

pub struct WsSocket<S: RawSocket = TcpStream> {
    shared: Arc<Shared<S>>,
    reader: Reader,
    /// Received bytes the reader has not taken yet (part of a header or a
    /// control frame). Empty, with no allocation, between frames.
    rbuf: Vec<u8>,
    /// `rbuf` may hold a whole frame not yet taken, so [`WsSocket::readable`]
    /// must not wait for the socket. (Once `read` has seen the socket run
    /// dry, only new bytes can complete a frame.)
    ready: bool,
}

/// What the connection shares with the hub's direct delivery.
struct Shared<S> {
    tcp: S,
    /// Frames the socket has not taken yet, in order; empty (no allocation)
    /// unless the client reads slowly. Everything written goes behind it.
    /// Locked only around a non-blocking write or a copy, never across an await.
    pending: Mutex<Vec<u8>>,
}

/// Writes of at most this many bytes are gathered on the stack and go out
/// in one `send` rather than one `writev`: `writev` takes the VFS path
/// (`vfs_writev`, `fdget_pos`, `sock_write_iter`), which costs more in the
/// kernel than copying a small frame (BENCHMARKS.md, "2026-12-03, later").
const GATHER: usize = 2048;

impl<S: RawSocket> Shared<S> {
    /// Writes `slices` (with `pending` empty) as far as the socket takes them
    /// now. Once part went out, the rest goes to `pending` (a frame begun
    /// must be finished); when nothing went out, nothing is kept and the
    /// caller decides. Returns the bytes written; an error means the
    /// connection is broken.
    fn write_vectored_now(
        &self,
        pending: &mut Vec<u8>,
        slices: &mut [IoSlice<'_>],
    ) -> io::Result<usize> {
        let total: usize = slices.iter().map(|s| s.len()).sum();
        if total == 0 {
            // (A batch that is only its end: nothing to write, and an empty
            // write would read as `WriteZero`.)
            return Ok(0);
        }
        if total > GATHER {
            return self.write_slices_now(pending, slices);
        }
        let mut gathered = [0u8; GATHER];
        let mut at = 0;
        for s in slices.iter() {
            gathered[at..at + s.len()].copy_from_slice(s);
            at += s.len();
        }
        self.write_slices_now(pending, &mut [IoSlice::new(&gathered[..total])])
    }

    /// The write loop of [`Shared::write_vectored_now`]: one `send` while a
    /// single slice is left, one `writev` otherwise.
    fn write_slices_now(
        &self,
        pending: &mut Vec<u8>,
        mut slices: &mut [IoSlice<'_>],
    ) -> io::Result<usize> {
        let mut written = 0;
        while !slices.is_empty() {
            // (sendmsg instead of writev measured the same: the fd lookup
            // and the TCP path dominate either way.)
            let wrote = match slices {
                [one] => self.tcp.try_write(one),
                _ => self.tcp.try_write_vectored(slices),
            };
            match wrote {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    written += n;
                    IoSlice::advance_slices(&mut slices, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if written > 0 {
                        for s in slices.iter() {
                            pending.extend_from_slice(s);
                        }
                    }
                    return Ok(written);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }
}

impl<S: RawSocket> DirectWriter for Shared<S> {
    /// One text frame with the message's shared envelope, in one system call.
    fn try_write(&self, message: &Message) -> Written {
        // Held by the connection itself: it is busy writing, so queue.
        let Some(mut pending) = self.pending.try_lock() else {
            return Written::Nothing;
        };
        if !pending.is_empty() {
            return Written::Nothing;
        }
        let body = message.envelope();
        let mut head = [0u8; MAX_HEADER];
        let n = frame::header(frame::TEXT, body.len(), &mut head);
        let total = n + body.len();
        let mut slices = [IoSlice::new(&head[..n]), IoSlice::new(body)];
        match self.write_vectored_now(&mut pending, &mut slices) {
            Ok(written) if written == total => Written::All,
            Ok(written) if written > 0 => Written::Spilled,
            // Full or broken: queued; the connection finds out on its own write.
            _ => Written::Nothing,
        }
    }
}

impl<S: RawSocket> WsSocket<S> {
    /// `early` holds bytes the client sent right after its handshake.
    pub fn new(tcp: S, early: Vec<u8>, max_message: usize) -> Self {
        WsSocket {
            shared: Arc::new(Shared {
                tcp,
                pending: Mutex::new(Vec::new()),
            }),
            reader: Reader::new(max_message),
            ready: !early.is_empty(),
            rbuf: early,
        }
    }

    /// The handle through which the hub writes messages while the connection
    /// waits (give it to `Subscriber::set_writer`).
    pub fn writer(&self) -> Arc<dyn DirectWriter> {
        Arc::clone(&self.shared) as Arc<dyn DirectWriter>
    }

    /// Waits until there may be something to read, or bytes the hub could
    /// not write at once wait to be flushed. Cancel-safe: made for
    /// `select!`. Follow it with [`WsSocket::read`] until that gives `None`,
    /// then [`WsSocket::flush`].
    pub async fn readable(&self) -> io::Result<()> {
        if self.ready {
            return Ok(());
        }
        // The socket's own reader slot, not `TcpStream::readable`: that
        // future carries a waiter node (168 bytes) in every idle
        // connection's task; only this task reads, so one slot is enough.
        std::future::poll_fn(|cx| {
            if !self.shared.pending.lock().is_empty() {
                return std::task::Poll::Ready(Ok(()));
            }
            self.shared.tcp.poll_read_ready(cx)
        })
        .await
    }

    /// The next message or control frame, reading what has arrived without
    /// waiting. `Ok(None)`: nothing whole has arrived yet.
    pub fn read(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            if !self.rbuf.is_empty() {
                let parsed = self.reader.next(&mut self.rbuf).map_err(ReadError::Frame)?;
                if self.rbuf.is_empty() {
                    // Give the memory back while the client is quiet.
                    self.rbuf = Vec::new();
                }
                if let Some(message) = parsed {
                    self.ready = !self.rbuf.is_empty();
                    return Ok(Some(message));
                }
            }
            let mut chunk = [0u8; READ_CHUNK];
            match self.shared.tcp.try_read(&mut chunk) {
                Ok(0) => return Err(ReadError::Gone),
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.ready = false;
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(ReadError::Gone),
            }
        }
    }

    /// Writes `first` and what `next` gives after it (up to [`BATCH`]
    /// frames, stopping at an [`Out::End`], which is returned) with one
    /// system call, without waiting. Whatever the socket does not take is
    /// kept for [`WsSocket::flush`], which the caller must await next.
    pub fn write_batch(
        &mut self,
        first: Out,
        mut next: impl FnMut() -> Option<Out>,
    ) -> Result<Option<(Disconnect, Option<Bytes>)>, Disconnect> {
        let mut heads = [[0u8; MAX_HEADER]; BATCH];
        let mut head_lens = [0usize; BATCH];
        let mut bodies: [Bytes; BATCH] = [const { Bytes::new() }; BATCH];
        let mut count = 0;
        let mut end = None;
        let mut item = Some(first);
        while let Some(current) = item.take() {
            match current {
                Out::Text(body) => {
                    head_lens[count] = frame::header(frame::TEXT, body.len(), &mut heads[count]);
                    bodies[count] = body;
                    count += 1;
                }
                Out::End(why, last) => {
                    end = Some((why, last));
                    break;
                }
            }
            if count < BATCH {
                item = next();
            }
        }
        let mut slices = [IoSlice::new(&[]); 2 * BATCH];
        for i in 0..count {
            slices[2 * i] = IoSlice::new(&heads[i][..head_lens[i]]);
            slices[2 * i + 1] = IoSlice::new(&bodies[i]);
        }
        self.write_now(&mut slices[..2 * count])?;
        Ok(end)
    }

    /// Queues a control frame (ping, pong) for the next flush.
    pub fn queue_control(&mut self, opcode: u8, payload: &[u8]) {
        let mut head = [0u8; MAX_HEADER];
        let n = frame::header(opcode, payload.len(), &mut head);
        let mut pending = self.shared.pending.lock();
        pending.extend_from_slice(&head[..n]);
        pending.extend_from_slice(payload);
    }

    /// Queues a text frame for the next flush (replies, rare frames).
    pub fn queue_text(&mut self, payload: &[u8]) {
        self.queue_control(frame::TEXT, payload);
    }

    /// Queues a binary frame for the next flush (the echo example's; Herald
    /// itself sends only text).
    pub fn queue_binary(&mut self, payload: &[u8]) {
        self.queue_control(frame::BINARY, payload);
    }

    /// Writes what is pending, waiting for the socket at most `timeout`.
    pub async fn flush(&mut self, timeout: Duration) -> Result<(), Disconnect> {
        if self.shared.pending.lock().is_empty() {
            return Ok(());
        }
        // Most flushes finish at once; the timer is armed, on the heap, only
        // for one that has to wait (no timer in every connection's future).
        match self.try_flush() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(_) => return Err(WRITE_TIMEOUT),
        }
        let wait = async {
            loop {
                std::future::poll_fn(|cx| self.shared.tcp.poll_write_ready(cx)).await?;
                if self.try_flush()? {
                    return Ok::<(), io::Error>(());
                }
            }
        };
        match Box::pin(tokio::time::timeout(timeout, wait)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(WRITE_TIMEOUT),
        }
    }

    /// Ends the connection: `last` (if any), a close frame with the code
    /// and reason, then a bounded wait for the client's own close so that
    /// the TCP connection ends cleanly rather than with a reset.
    pub async fn close(&mut self, timeout: Duration, why: Disconnect, last: Option<Bytes>) {
        self.close_saying(timeout, why.code, why.reason, last).await;
    }

    /// [`close`](Self::close) with a reason of the caller's (at most 123
    /// bytes; longer is cut at a character boundary).
    pub async fn close_saying(
        &mut self,
        timeout: Duration,
        code: u16,
        reason: &str,
        last: Option<Bytes>,
    ) {
        if let Some(last) = last {
            self.queue_text(&last);
        }
        let payload = frame::close_payload(code, reason);
        self.queue_control(frame::CLOSE, &payload);
        if self.flush(timeout).await.is_err() {
            return;
        }
        let tcp = &self.shared.tcp;
        let _ = tcp.shutdown_write();
        let drain = async {
            let mut sink = [0u8; 512];
            loop {
                if std::future::poll_fn(|cx| tcp.poll_read_ready(cx))
                    .await
                    .is_err()
                {
                    return;
                }
                match tcp.try_read(&mut sink) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        };
        let _ = Box::pin(tokio::time::timeout(LINGER, drain)).await;
    }

    /// Writes `slices` now, as far as the socket takes them; the rest goes
    /// to `pending`.
    fn write_now(&mut self, slices: &mut [IoSlice<'_>]) -> Result<(), Disconnect> {
        let mut pending = self.shared.pending.lock();
        if !pending.is_empty() {
            // Keep the order: behind what is already waiting.
            for s in slices.iter() {
                pending.extend_from_slice(s);
            }
            return Ok(());
        }
        match self.shared.write_vectored_now(&mut pending, slices) {
            Ok(0) => {
                // Nothing went out: all of it waits.
                for s in slices.iter() {
                    pending.extend_from_slice(s);
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(_) => Err(WRITE_TIMEOUT),
        }
    }

    /// Writes pending bytes without waiting; `Ok(true)` when none are left.
    fn try_flush(&mut self) -> io::Result<bool> {
        let mut pending = self.shared.pending.lock();
        while !pending.is_empty() {
            match self.shared.tcp.try_write(&pending) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        *pending = Vec::new();
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
