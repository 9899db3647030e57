//! The socket's seams with a scripted [`RawSocket`]: each write takes what
//! the script allows (all, a few bytes, or `WouldBlock`), so every hand-off
//! between the hub's direct writes, the connection's own writes and the
//! pending bytes can be forced, and what reached the "wire" checked byte for
//! byte. (Real sockets are in the integration tests, e.g.
//! `paused_websocket_reader_gets_every_message_in_order`.)

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::disconnect::NORMAL;
use herald_core::{ChannelName, Message, MessageId, Payload, Written};
use parking_lot::Mutex;

use super::*;

/// How much of the next write the socket takes.
#[derive(Clone, Copy, Debug)]
enum Take {
    All,
    Bytes(usize),
    WouldBlock,
}

#[derive(Default)]
struct Scripted {
    /// Write steps; when empty, every write is taken whole.
    plan: Mutex<VecDeque<Take>>,
    wire: Mutex<Vec<u8>>,
    incoming: Mutex<VecDeque<Vec<u8>>>,
    writes: Mutex<usize>,
    /// Of `writes`, those offered as several slices.
    vectored: Mutex<usize>,
}

impl Scripted {
    fn with(plan: &[Take]) -> Self {
        let s = Scripted::default();
        s.plan.lock().extend(plan.iter().copied());
        s
    }

    fn take(&self, offered: usize) -> io::Result<usize> {
        *self.writes.lock() += 1;
        match self.plan.lock().pop_front().unwrap_or(Take::All) {
            Take::All => Ok(offered),
            Take::Bytes(n) => Ok(n.min(offered)),
            Take::WouldBlock => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl RawSocket for Arc<Scripted> {
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.incoming.lock().pop_front() {
            Some(bytes) => {
                buf[..bytes.len()].copy_from_slice(&bytes);
                Ok(bytes.len())
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        let n = self.take(buf.len())?;
        self.wire.lock().extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        *self.vectored.lock() += 1;
        let flat: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        self.try_write(&flat)
    }

    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.incoming.lock().is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn poll_write_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn shutdown_write(&self) -> io::Result<()> {
        Ok(())
    }
}

fn message(seq: u64, text: &str) -> Message {
    Message::new(
        ChannelName::new("c").expect("valid"),
        MessageId::new(1, seq),
        Payload::from_bytes(Bytes::from(text.to_string())),
        0,
    )
}

/// A text frame as the server sends it.
fn text_frame(body: &[u8]) -> Vec<u8> {
    let mut head = [0u8; MAX_HEADER];
    let n = frame::header(frame::TEXT, body.len(), &mut head);
    let mut out = head[..n].to_vec();
    out.extend_from_slice(body);
    out
}

fn socket(plan: &[Take]) -> (WsSocket<Arc<Scripted>>, Arc<Scripted>) {
    let raw = Arc::new(Scripted::with(plan));
    (WsSocket::new(Arc::clone(&raw), Vec::new(), 1024), raw)
}

const T: Duration = Duration::from_secs(1);

#[test]
fn a_direct_write_that_fits_goes_out_whole_in_one_call() {
    let (ws, raw) = socket(&[]);
    let m = message(1, "hello");
    assert!(matches!(ws.writer().try_write(&m), Written::All));
    assert_eq!(*raw.wire.lock(), text_frame(m.envelope()));
    assert_eq!(*raw.writes.lock(), 1);
    // A small frame is gathered into one contiguous write.
    assert_eq!(*raw.vectored.lock(), 0);
    assert!(ws.shared.pending.lock().is_empty());
}

#[test]
fn a_full_socket_takes_nothing_and_keeps_nothing() {
    let (ws, raw) = socket(&[Take::WouldBlock]);
    let m = message(1, "hello");
    assert!(matches!(ws.writer().try_write(&m), Written::Nothing));
    assert!(raw.wire.lock().is_empty());
    // The message is the queue's now: nothing of it waits in `pending`.
    assert!(ws.shared.pending.lock().is_empty());
}

#[tokio::test]
async fn a_part_written_frame_is_finished_by_the_connection_before_anything_else() {
    // The socket takes 3 bytes, then is full.
    let (mut ws, raw) = socket(&[Take::Bytes(3), Take::WouldBlock]);
    let first = message(1, "first message");
    assert!(matches!(ws.writer().try_write(&first), Written::Spilled));
    assert_eq!(raw.wire.lock().len(), 3);
    // The connection is woken: readable() is ready while bytes wait.
    tokio::time::timeout(T, ws.readable())
        .await
        .expect("readable while pending")
        .expect("ok");
    // The hub never writes ahead of the unfinished frame.
    let second = message(2, "second");
    assert!(matches!(ws.writer().try_write(&second), Written::Nothing));
    // The connection's own write goes behind it, then the flush sends all.
    let third = message(3, "third");
    let end = ws
        .write_batch(Out::Text(third.envelope().clone()), || None)
        .expect("write");
    assert!(end.is_none());
    ws.flush(T).await.expect("flush");
    let mut want = text_frame(first.envelope());
    want.extend(text_frame(third.envelope()));
    assert_eq!(*raw.wire.lock(), want, "frames interleaved or lost");
}

#[test]
fn the_hub_does_not_write_while_the_connection_holds_pending() {
    let (ws, raw) = socket(&[]);
    let guard = ws.shared.pending.lock();
    assert!(matches!(
        ws.writer().try_write(&message(1, "x")),
        Written::Nothing
    ));
    drop(guard);
    assert!(raw.wire.lock().is_empty());
}

#[tokio::test]
async fn a_batch_cut_short_is_kept_in_order_and_flushed() {
    // The batch's writev takes 5 bytes, the next finds the socket full;
    // the flush then finishes it.
    let (mut ws, raw) = socket(&[Take::Bytes(5), Take::WouldBlock, Take::WouldBlock]);
    let bodies: Vec<Bytes> = (0..4)
        .map(|i| Bytes::from(format!("message {i}")))
        .collect();
    let mut rest = bodies[1..].iter().cloned();
    let end = ws
        .write_batch(Out::Text(bodies[0].clone()), || rest.next().map(Out::Text))
        .expect("write");
    assert!(end.is_none());
    // One writev for the whole batch, one more that found the socket full.
    assert_eq!(*raw.writes.lock(), 2);
    ws.flush(T).await.expect("flush");
    let want: Vec<u8> = bodies.iter().flat_map(|b| text_frame(b)).collect();
    assert_eq!(*raw.wire.lock(), want);
    // Flushed whole: the hub may write directly again.
    assert!(matches!(
        ws.writer().try_write(&message(9, "after")),
        Written::All
    ));
}

#[tokio::test]
async fn a_batch_too_big_to_gather_is_written_vectored_and_kept_in_order_when_cut_short() {
    let (mut ws, raw) = socket(&[Take::Bytes(700), Take::Bytes(1), Take::WouldBlock]);
    let bodies: Vec<Bytes> = (0..4u8)
        .map(|i| Bytes::from(vec![b'a' + i; 1000]))
        .collect();
    let mut rest = bodies[1..].iter().cloned();
    ws.write_batch(Out::Text(bodies[0].clone()), || rest.next().map(Out::Text))
        .expect("write");
    assert_eq!(
        *raw.vectored.lock(),
        3,
        "past GATHER the slices go as they are"
    );
    ws.flush(T).await.expect("flush");
    let want: Vec<u8> = bodies.iter().flat_map(|b| text_frame(b)).collect();
    assert_eq!(*raw.wire.lock(), want);
}

#[tokio::test]
async fn a_batch_refused_whole_waits_whole() {
    let (mut ws, raw) = socket(&[Take::WouldBlock]);
    let body = Bytes::from_static(b"queued");
    ws.write_batch(Out::Text(body.clone()), || None)
        .expect("write");
    assert!(raw.wire.lock().is_empty());
    assert_eq!(*ws.shared.pending.lock(), text_frame(&body));
    ws.flush(T).await.expect("flush");
    assert_eq!(*raw.wire.lock(), text_frame(&body));
}

#[tokio::test]
async fn a_batch_that_is_only_its_end_writes_nothing_and_is_not_an_error() {
    let (mut ws, raw) = socket(&[]);
    let end = ws
        .write_batch(Out::End(NORMAL, None), || None)
        .expect("an empty write is not a broken connection");
    assert_eq!(end.map(|(why, _)| why.code), Some(NORMAL.code));
    assert_eq!(*raw.writes.lock(), 0);
}

#[tokio::test]
async fn an_end_in_a_batch_stops_it_and_is_returned() {
    let (mut ws, raw) = socket(&[]);
    let mut items = vec![
        Out::End(NORMAL, None),
        Out::Text(Bytes::from_static(b"never")),
    ]
    .into_iter();
    let end = ws
        .write_batch(Out::Text(Bytes::from_static(b"last")), || items.next())
        .expect("write");
    assert_eq!(end.map(|(why, _)| why.code), Some(NORMAL.code));
    assert_eq!(*raw.wire.lock(), text_frame(b"last"));
}

#[tokio::test]
async fn control_frames_queue_behind_pending_bytes() {
    let (mut ws, raw) = socket(&[Take::Bytes(2), Take::WouldBlock]);
    let m = message(1, "spilled");
    assert!(matches!(ws.writer().try_write(&m), Written::Spilled));
    ws.queue_control(frame::PONG, b"p");
    ws.flush(T).await.expect("flush");
    let mut want = text_frame(m.envelope());
    let mut head = [0u8; MAX_HEADER];
    let n = frame::header(frame::PONG, 1, &mut head);
    want.extend_from_slice(&head[..n]);
    want.push(b'p');
    assert_eq!(*raw.wire.lock(), want);
}

#[test]
fn reads_take_frames_from_what_arrived() {
    let (mut ws, raw) = socket(&[]);
    // A masked client text frame "hi".
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | 2];
    f.extend_from_slice(&mask);
    f.extend(b"hi".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    raw.incoming.lock().push_back(f);
    assert!(matches!(ws.read(), Ok(Some(Incoming::Text(t))) if t == b"hi"));
    assert!(matches!(ws.read(), Ok(None)));
}
