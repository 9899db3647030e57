//! herald-floor: the fan-out floor that `bench/compare.sh` measures every
//! server against.
//!
//! A publish is turned into one unmasked WebSocket text frame, built once,
//! and that frame is handed to the kernel with exactly one `write(2)`
//! (`try_write`) per subscriber socket of the channel, in a loop on one
//! thread. That is the least work any push server can do per delivery with
//! the same sockets: whatever a server spends beyond it per delivery is its
//! own cost, so "deliveries per CPU-second as a ratio to the floor's" is a
//! yardstick that the kernel's share (which no server can avoid) does not
//! blur.
//!
//! It speaks just enough for herald-bench's WebSocket channel-URL mode
//! (`--transport ws`):
//!
//! - `GET /sub/{channel}` with `Upgrade: websocket`: the RFC 6455 handshake,
//!   then the socket is registered for the channel. Client frames are read
//!   and thrown away unparsed (herald-bench sends none in this mode, and
//!   pings none, so no pong is needed); EOF or a read error unregisters it.
//! - `POST /pub/{channel}` with a `Content-Length` body (herald-bench's
//!   publisher, keep-alive): the body is the frame's payload; the answer is
//!   `200` with an empty body once every write has been made.
//!
//! What it leaves out, on purpose: no history, no message ids, no auth, no
//! validation of the payload, no per-subscriber queue or buffering, no
//! close handshake, no ping, no metrics endpoint, no backpressure. A
//! delivery that does not fit in the socket's kernel buffer at once is not
//! retried:
//!
//! - `WouldBlock` (nothing written): that subscriber misses this message
//!   (counted; herald-bench then reports it as lost, so a floor run that
//!   lost anything is visibly not a valid floor);
//! - a short write (part of the frame written): the stream is no longer
//!   frame-aligned, so the socket is shut down (counted).
//!
//! With paced fan-out (a few messages per second) neither happens: each
//! write lands in a nearly empty send buffer. The counters are printed to
//! stderr when the process gets SIGINT or SIGTERM.
//!
//! One thread (a current-thread Tokio runtime): the floor is the cost of the
//! writes, not of spreading them over cores; the CPU accounting is per
//! CPU-second, so one thread does not handicap it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;

use base64::Engine as _;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

/// Default listen address (compare.sh's `FLOOR_PORT`).
const DEFAULT_LISTEN: &str = "127.0.0.1:7072";
/// Longest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest publish body accepted.
const MAX_BODY: usize = 1 << 20;
/// Most header lines in a request head.
const MAX_HEADERS: usize = 32;
/// RFC 6455's key suffix for `Sec-WebSocket-Accept`.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const SUB_PREFIX: &str = "/sub/";
const PUB_PREFIX: &str = "/pub/";
const PUB_OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
const NOT_FOUND: &[u8] =
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// What the writes did, printed at exit.
#[derive(Debug, Default)]
struct Counters {
    publishes: u64,
    /// Frames written whole with one write.
    delivered: u64,
    /// Writes that wrote nothing (send buffer full): message skipped.
    would_block: u64,
    /// Writes that wrote part of the frame: socket shut down.
    short: u64,
    /// Writes that failed otherwise: socket shut down.
    errors: u64,
}

/// Channel name to its subscriber sockets. Only touched from the one
/// thread, and never borrowed across an `.await`.
#[derive(Default)]
struct Registry {
    next_id: u64,
    channels: HashMap<String, HashMap<u64, Rc<TcpStream>>>,
    counters: Counters,
}

impl Registry {
    fn add(&mut self, channel: &str, socket: Rc<TcpStream>) -> u64 {
        self.next_id += 1;
        self.channels
            .entry(channel.to_string())
            .or_default()
            .insert(self.next_id, socket);
        self.next_id
    }

    fn remove(&mut self, channel: &str, id: u64) {
        if let Some(subs) = self.channels.get_mut(channel) {
            subs.remove(&id);
            if subs.is_empty() {
                self.channels.remove(channel);
            }
        }
    }

    /// One `try_write` of `frame` per subscriber of `channel`.
    fn fan_out(&mut self, channel: &str, frame: &[u8]) {
        self.counters.publishes += 1;
        let Some(subs) = self.channels.get(channel) else {
            return;
        };
        let c = &mut self.counters;
        for socket in subs.values() {
            match socket.try_write(frame) {
                Ok(n) if n == frame.len() => c.delivered += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.would_block += 1,
                written => {
                    match written {
                        Ok(_) => c.short += 1,
                        Err(_) => c.errors += 1,
                    }
                    // The reader task sees EOF and unregisters the socket.
                    let _ = socket2::SockRef::from(&**socket).shutdown(Shutdown::Both);
                }
            }
        }
    }
}

/// The parts of a request head the floor acts on.
enum Request {
    Subscribe { channel: String, key: String },
    Publish { channel: String, length: usize },
    Other,
}

/// Parses a complete head in `buf`: `Ok(None)` when more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = req.parse(buf)? else {
        return Ok(None);
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let path = req.path.unwrap_or("/");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let request = match (req.method, header("sec-websocket-key")) {
        (Some("GET"), Some(key)) if path.starts_with(SUB_PREFIX) => Request::Subscribe {
            channel: path[SUB_PREFIX.len()..].to_string(),
            key: key.trim().to_string(),
        },
        (Some("POST"), _) if path.starts_with(PUB_PREFIX) => {
            match header("content-length").and_then(|v| v.trim().parse().ok()) {
                Some(length) if length <= MAX_BODY => Request::Publish {
                    channel: path[PUB_PREFIX.len()..].to_string(),
                    length,
                },
                _ => Request::Other,
            }
        }
        _ => Request::Other,
    };
    Ok(Some((request, len)))
}

/// The one frame every subscriber gets: FIN + text, unmasked.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x81);
    match payload.len() {
        n @ 0..=125 => frame.push(n as u8),
        n @ 126..=0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Serves one connection: publish requests (keep-alive) until it closes, or
/// one upgrade after which it is a subscriber.
async fn serve(mut stream: TcpStream, registry: Rc<RefCell<Registry>>) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let (request, head_len) = loop {
            match parse_head(&buf) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) if buf.len() < MAX_HEAD => {}
                _ => return stream.write_all(NOT_FOUND).await,
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        match request {
            Request::Subscribe { channel, key } => {
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    accept_key(&key)
                );
                stream.write_all(answer.as_bytes()).await?;
                drop(buf);
                return subscriber(stream, &channel, &registry).await;
            }
            Request::Publish { channel, length } => {
                while buf.len() < head_len + length {
                    if stream.read_buf(&mut buf).await? == 0 {
                        return Ok(());
                    }
                }
                let frame = text_frame(&buf[head_len..head_len + length]);
                registry.borrow_mut().fan_out(&channel, &frame);
                buf.drain(..head_len + length);
                stream.write_all(PUB_OK).await?;
            }
            Request::Other => return stream.write_all(NOT_FOUND).await,
        }
    }
}

/// Holds a subscriber socket: registered for `channel` until EOF; whatever
/// the client sends is discarded.
async fn subscriber(
    stream: TcpStream,
    channel: &str,
    registry: &RefCell<Registry>,
) -> io::Result<()> {
    let stream = Rc::new(stream);
    let id = registry.borrow_mut().add(channel, stream.clone());
    let ended = loop {
        if let Err(e) = stream.readable().await {
            break Err(e);
        }
        // Not held across an await, so it costs no memory per idle socket.
        let mut scratch = [0u8; 512];
        match stream.try_read(&mut scratch) {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => break Err(e),
        }
    };
    registry.borrow_mut().remove(channel, id);
    ended
}

fn listen_addr() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let addr = match (args.next().as_deref(), args.next()) {
        (None, _) => DEFAULT_LISTEN.to_string(),
        (Some("--listen"), Some(a)) => a,
        _ => {
            return Err(format!(
                "usage: herald-floor [--listen ADDR] (default {DEFAULT_LISTEN})"
            ))
        }
    };
    addr.parse().map_err(|e| format!("--listen {addr:?}: {e}"))
}

fn main() {
    let addr = match listen_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herald-floor: runtime: {e}");
            std::process::exit(1);
        }
    };
    let local = tokio::task::LocalSet::new();
    if let Err(e) = local.block_on(&runtime, run(addr)) {
        eprintln!("herald-floor: {e}");
        std::process::exit(1);
    }
}

async fn run(addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let mut term = signal(SignalKind::terminate())?;
    let registry = Rc::new(RefCell::new(Registry::default()));
    eprintln!("herald-floor: listening on {addr}");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                tokio::task::spawn_local(serve(stream, registry.clone()));
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let registry = registry.borrow();
    let c = &registry.counters;
    eprintln!(
        "herald-floor: {} publishes, {} frames written whole, {} skipped (would block), \
         {} short writes and {} write errors (sockets shut down)",
        c.publishes, c.delivered, c.would_block, c.short, c.errors
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frame_lengths() {
        assert_eq!(text_frame(b"hi"), b"\x81\x02hi");
        assert_eq!(&text_frame(&[b'x'; 200])[..4], &[0x81, 126, 0, 200]);
        assert_eq!(&text_frame(&[b'x'; 70_000])[..2], &[0x81, 127]);
    }

    #[test]
    fn heads() {
        let sub = b"GET /sub/c-1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n";
        assert!(matches!(
            parse_head(sub),
            Ok(Some((Request::Subscribe { ref channel, .. }, n))) if channel == "c-1" && n == sub.len()
        ));
        let publ = b"POST /pub/c-2 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        assert!(matches!(
            parse_head(publ),
            Ok(Some((Request::Publish { ref channel, length: 5 }, _))) if channel == "c-2"
        ));
        assert!(matches!(parse_head(b"POST /pub/c HTTP/1.1\r\n"), Ok(None)));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\n\r\n"),
            Ok(Some((Request::Other, _)))
        ));
    }
}
