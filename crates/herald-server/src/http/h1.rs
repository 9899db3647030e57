//! Herald's own HTTP/1 path, for the requests that make held connections
//! (SSE, NDJSON, forever-frame, long-polls) and the short ones beside them:
//! GET and HEAD without a body, and POST, PUT, PATCH and DELETE with a
//! `Content-Length` body of at most [`MAX_BODY`] bytes that has arrived with
//! its head (a publish, an API call). Anything else (a larger or chunked
//! body, one still on its way, `Expect`, an upgrade, a head this path does
//! not parse) is handed to hyper with the bytes read so far replayed
//! ([`crate::edge::EdgeIo::rewind`]), so hyper stays the one answer to
//! every request this path does not take, and the body clock of a slow
//! body is the handlers' as before.
//!
//! Why by hand: while a response streams, hyper keeps an 8 KiB read buffer
//! and an 8 KiB write buffer per connection (its smallest), three times
//! what an idle WebSocket costs here in all; and a publish served here
//! skips hyper's dispatcher and body channel (BENCHMARKS.md, unicast).
//! This path reads a head into a
//! buffer freed once the head is parsed (`httparse`), runs the same router
//! as hyper does, writes the response head, and then writes each batch of
//! ready body frames as it comes, holding no buffer while it waits. The
//! framing follows RFC 9112: `Content-Length` when the body's size is
//! known, chunked otherwise (HTTP/1.1), or delimited by the close
//! (HTTP/1.0); a connection stays open unless either side says `close` (or
//! an HTTP/1.0 client does not say `keep-alive`). While a response streams
//! the socket is watched for the client's end (EOF), and bytes it pipelines
//! meanwhile are kept (up to [`MAX_HEAD`]) for the next request.
//!
//! Clocks: the head is read through [`EdgeIo`], whose header and idle
//! clocks run as they do under hyper; a write that makes no progress for
//! `write_timeout` ends the connection.

use std::io;
use std::io::Write as _;
use std::task::{ready, Poll};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use axum::response::Response;
use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::api;
use super::response::take_deferred;
use super::serve::{Ctx, MAX_HEAD};
use crate::edge::EdgeIo;
use crate::ws::handshake::has_token;

/// Most request headers this path parses; a head with more goes to hyper.
const MAX_HEADERS: usize = 64;
/// What one read of a request head asks for at first.
const READ_CHUNK: usize = 1024;
/// Most body bytes gathered into one write.
const MAX_BATCH: usize = 64 * 1024;
/// Largest request body this path takes (a publish, an API call); larger
/// ones go to hyper. Bounded well under [`MAX_HEAD`], so that head and body
/// fit in the read buffer together.
const MAX_BODY: usize = 8 * 1024;

/// How a connection served here ends.
pub(crate) enum Served {
    /// Closed (by either side, a clock, or the end of a response).
    Closed,
    /// A request this path does not take: hyper serves the connection from
    /// here on, the bytes read so far rewound into `EdgeIo`.
    Hyper,
}

/// A parsed request head.
enum Head {
    /// Not complete yet: read more.
    Partial,
    /// Not for this path: hand the connection to hyper.
    Hyper,
    /// A request of `.1` bytes of head and `.2` bytes of body.
    Request(Box<Request<Body>>, usize, usize),
}

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body at all (HEAD, 204, 304).
    None,
    Length,
    Chunked,
    /// Ends with the connection (an HTTP/1.0 client, unknown length).
    Close,
}

/// Serves the connection's requests until it closes or a request needs
/// hyper.
pub(crate) async fn serve(io: &mut EdgeIo, ctx: &Ctx, shutdown: &CancellationToken) -> Served {
    // Bytes read and not yet parsed: a head in the making, or what a client
    // pipelined behind the last one. Empty (no allocation) while a
    // response streams, unless the client pipelines.
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if !buf.is_empty() {
            io.phase().bytes_arrived();
        }
        let (request, len, body) = loop {
            match parse(&buf) {
                // Out of its box here: the box is freed as the arm ends,
                // not with the response.
                Head::Request(request, len, body) if buf.len() >= len + body => {
                    break (*request, len, body)
                }
                Head::Request(_, len, body) => {
                    // The body has not all arrived. What the socket already
                    // holds is taken without waiting; a body still on its
                    // way is hyper's to read, under its body clock.
                    buf.reserve(len + body - buf.len());
                    let mut limited = (&mut *io).take((len + body - buf.len()) as u64);
                    let read = limited.read_buf(&mut buf).now_or_never();
                    drop(limited);
                    if !matches!(read, Some(Ok(n)) if n > 0) {
                        io.rewind(Bytes::from(buf));
                        return Served::Hyper;
                    }
                    continue;
                }
                Head::Hyper => {
                    io.rewind(Bytes::from(buf));
                    return Served::Hyper;
                }
                Head::Partial if buf.len() >= MAX_HEAD => {
                    // hyper answers a head past its buffer with 431.
                    io.rewind(Bytes::from(buf));
                    return Served::Hyper;
                }
                Head::Partial => {}
            }
            let room = MAX_HEAD - buf.len();
            buf.reserve(READ_CHUNK.min(room));
            // At most `room`: `read_buf` fills whatever capacity there is.
            let mut limited = (&mut *io).take(room as u64);
            let read = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Served::Closed,
                read = limited.read_buf(&mut buf) => read,
            };
            drop(limited);
            match read {
                // EOF, the idle clock, or the header clock (which answered).
                Ok(0) | Err(_) => return Served::Closed,
                Ok(_) => {}
            }
        };
        // What follows the head and body stays for the next request; the
        // head's buffer is freed now, and the body gets an allocation of its
        // own (a message kept in history must not keep a read buffer alive).
        let body = Bytes::copy_from_slice(&buf[len..len + body]);
        buf = buf.split_off(len + body.len());
        // Each phase of a request is its own allocation, freed when it
        // ends: the connection's task holds only the socket and a pointer,
        // so what a stream or a long-poll keeps while it waits is its own.
        let Some((out, rest, keep)) =
            Box::pin(answer(io, &mut buf, request, body, ctx, shutdown)).await
        else {
            io.phase().response_done();
            return Served::Closed;
        };
        let mut finished = write(io, &out, ctx).await.is_ok();
        drop(out);
        finished = finished
            && match rest {
                Rest::Done => true,
                Rest::Failed => false,
                Rest::Stream(body, framing) => {
                    Box::pin(stream(io, &mut buf, body, framing, ctx)).await
                }
            };
        io.phase().response_done();
        if !finished || !keep || shutdown.is_cancelled() {
            return Served::Closed;
        }
    }
}

/// Routes `request` and builds the start of its response (see [`start`]);
/// `None` when the client left first.
async fn answer(
    io: &mut EdgeIo,
    buf: &mut Vec<u8>,
    request: Request<Body>,
    body: Bytes,
    ctx: &Ctx,
    shutdown: &CancellationToken,
) -> Option<(Vec<u8>, Rest, bool)> {
    let head_only = request.method() == Method::HEAD;
    let version = request.version();
    let keep = keeps_alive(version, request.headers());
    let (mut request, refusal) = ctx.prepare(request);
    let refused = refusal.is_some();
    let direct = ctx
        .edge
        .publish
        .as_ref()
        .filter(|_| !refused)
        .and_then(|state| Some((state, api::direct_publish(state, &request, &body)?)));
    let response = match (refusal, direct) {
        (Some(refusal), _) => axum::response::IntoResponse::into_response(refusal),
        (None, Some((state, publish))) => match api::publish_directly(state, publish).await {
            Ok(json) => {
                let keep = keep && !shutdown.is_cancelled();
                return Some((created_json(&json, version, keep), Rest::Done, keep));
            }
            Err(response) => response,
        },
        (None, None) => {
            if !body.is_empty() {
                *request.body_mut() = Body::from(body);
            }
            match take_deferred(ctx.route(request).await) {
                Ok(response) => response,
                // A long-poll: it waits on its own future only. A client
                // that leaves meanwhile ends it, as under hyper.
                Err(later) => tokio::select! {
                    biased;
                    response = later.settle() => response,
                    () = client_gone(io, buf) => return None,
                },
            }
        }
    };
    let keep = keep && !refused && leaves_open(&response) && !shutdown.is_cancelled();
    Some(start(response, head_only, version, keep))
}

/// Whether the response leaves the connection open (a handler may say
/// `Connection: close`).
fn leaves_open(response: &Response) -> bool {
    !has_token(response.headers(), header::CONNECTION, "close")
}

/// Parses a head at the start of `buf` into a request for the router, if
/// this path takes it: GET, HEAD, POST, PUT, PATCH or DELETE, HTTP/1.0 or 1.1, no
/// upgrade, no `Expect`, no `Transfer-Encoding`, at most one
/// `Content-Length` (digits only) whose body fits in [`MAX_BODY`]. The body
/// is not looked at here (see [`serve`]).
fn parse(buf: &[u8]) -> Head {
    if buf.is_empty() {
        return Head::Partial;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Hyper,
    };
    let method = match parsed.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        Some("POST") => Method::POST,
        Some("PUT") => Method::PUT,
        Some("PATCH") => Method::PATCH,
        Some("DELETE") => Method::DELETE,
        _ => return Head::Hyper,
    };
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Head::Hyper,
    };
    let Some(Ok(uri)) = parsed.path.map(Uri::try_from) else {
        return Head::Hyper;
    };
    let mut map = HeaderMap::with_capacity(parsed.headers.len());
    let mut body = None;
    for h in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Head::Hyper;
        };
        if name == header::UPGRADE || name == header::TRANSFER_ENCODING || name == header::EXPECT {
            return Head::Hyper;
        }
        if name == header::CONTENT_LENGTH {
            // One, and only digits: a list, a sign or a second header is
            // hyper's to refuse (400), as it does.
            let Some(n) = content_length(h.value) else {
                return Head::Hyper;
            };
            if body.is_some() || n > MAX_BODY {
                return Head::Hyper;
            }
            body = Some(n);
        }
        let Ok(value) = HeaderValue::from_bytes(h.value) else {
            return Head::Hyper;
        };
        map.append(name, value);
    }
    let body = body.unwrap_or(0);
    // A GET or HEAD with a body is rare and odd: hyper's.
    if body > 0 && (method == Method::GET || method == Method::HEAD) {
        return Head::Hyper;
    }
    let mut request = Request::new(Body::empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = map;
    Head::Request(Box::new(request), len, body)
}

/// A `Content-Length` value: ASCII digits (optional surrounding blanks),
/// not absurdly long.
fn content_length(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Whether the client lets the connection persist (RFC 9112 section 9.3).
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    match version {
        Version::HTTP_11 => !has_token(headers, header::CONNECTION, "close"),
        _ => has_token(headers, header::CONNECTION, "keep-alive"),
    }
}

/// What is left of a response once its head (and what of its body was
/// ready) is built.
enum Rest {
    /// Nothing: the response is whole.
    Done,
    /// The body failed: the connection closes after what was built.
    Failed,
    /// The body goes on: [`stream`] writes the rest.
    Stream(Body, Framing),
}

/// The head of `response`, with the body frames ready now behind it, to go
/// out in one write; `keep` becomes false when the body's end is the
/// connection's.
fn start(
    response: Response,
    head_only: bool,
    version: Version,
    keep: bool,
) -> (Vec<u8>, Rest, bool) {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let no_body = head_only
        || status.is_informational()
        || status == axum::http::StatusCode::NO_CONTENT
        || status == axum::http::StatusCode::NOT_MODIFIED;
    let exact = http_body::Body::size_hint(&body).exact();
    let framing = match (no_body, exact) {
        (true, _) => Framing::None,
        (false, Some(_)) => Framing::Length,
        (false, None) if version == Version::HTTP_11 => Framing::Chunked,
        (false, None) => Framing::Close,
    };
    let keep = keep && framing != Framing::Close;
    let mut out = Vec::with_capacity(512);
    write_head(&mut out, &parts, version, keep, framing, exact, head_only);
    drop(parts);
    if framing == Framing::None {
        return (out, Rest::Done, keep);
    }
    let rest = match gather(&mut body, &mut out, framing, None) {
        Some(true) => Rest::Done,
        Some(false) => Rest::Failed,
        None => Rest::Stream(body, framing),
    };
    (out, rest, keep)
}

/// Takes the body frames ready now into `out`, framed, after `first`
/// (a frame already taken). `Some(true)` when the body ended (its end
/// written), `Some(false)` when it failed, `None` when it continues.
fn gather(
    body: &mut Body,
    out: &mut Vec<u8>,
    framing: Framing,
    first: Option<Bytes>,
) -> Option<bool> {
    let mut data: Vec<Bytes> = first.into_iter().filter(|c| !c.is_empty()).collect();
    let mut size: usize = data.iter().map(Bytes::len).sum();
    let ended = loop {
        if size >= MAX_BATCH {
            break None;
        }
        match body.frame().now_or_never() {
            None => break None,
            Some(None) => break Some(true),
            Some(Some(Err(_))) => break Some(false),
            Some(Some(Ok(frame))) => {
                if let Ok(chunk) = frame.into_data() {
                    if !chunk.is_empty() {
                        size += chunk.len();
                        data.push(chunk);
                    }
                }
            }
        }
    };
    frame(out, &data, size, framing);
    if ended == Some(true) && framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    ended
}

/// Appends `data` (of `size` bytes) to `out`, as one chunk when chunked.
fn frame(out: &mut Vec<u8>, data: &[Bytes], size: usize, framing: Framing) {
    if size == 0 || framing == Framing::None {
        return;
    }
    if framing == Framing::Chunked {
        let _ = write!(out, "{size:x}\r\n");
    }
    for chunk in data {
        out.extend_from_slice(chunk);
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"\r\n");
    }
}

/// The status line and headers, with the framing's own header, `Date`
/// and, when the connection ends with this response, `Connection: close`.
fn write_head(
    out: &mut Vec<u8>,
    parts: &axum::http::response::Parts,
    version: Version,
    keep: bool,
    framing: Framing,
    exact: Option<u64>,
    head_only: bool,
) {
    let status = parts.status;
    // A HEAD answer tells the length a GET would have: axum sets it from
    // the GET's body, then empties the body.
    let head_length = head_only
        .then(|| parts.headers.get(header::CONTENT_LENGTH))
        .flatten()
        .filter(|_| exact.unwrap_or(0) == 0);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        let ours = name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || name == header::DATE;
        if ours {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match (framing, exact) {
        (Framing::Chunked, _) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ if head_length.is_some() => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(head_length.map_or(&b"0"[..], HeaderValue::as_bytes));
            out.extend_from_slice(b"\r\n");
        }
        (Framing::Length | Framing::None, Some(n)) if n > 0 || framing == Framing::Length => {
            // (`write!` into the Vec cannot fail.)
            let _ = write!(out, "content-length: {n}\r\n");
        }
        _ => {}
    }
    end_head(out, version, keep);
}

/// `201 Created` with a JSON body, the bytes [`start`] makes of
/// `(StatusCode::CREATED, Json(..))` (a direct publish's answer), without
/// building a `Response` first.
fn created_json(json: &[u8], version: Version, keep: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + json.len());
    out.extend_from_slice(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n");
    let _ = write!(out, "content-length: {}\r\n", json.len());
    end_head(&mut out, version, keep);
    out.extend_from_slice(json);
    out
}

/// The end of every head: `Connection` when it differs from the version's
/// default, `Date`, the blank line.
fn end_head(out: &mut Vec<u8>, version: Version, keep: bool) {
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"date: ");
    http_date(out);
    out.extend_from_slice(b"\r\n\r\n");
}

/// Appends the `Date` value of now, formatted once per second per worker
/// thread (as hyper does), not once per response.
fn http_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((u64::MAX, String::new()))
        };
    }
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// The rest of a body that was not ready at once: each batch of ready
/// frames as one write, until the body ends, the client leaves, or a write
/// fails or stalls. `true` when the body was written whole.
async fn stream(
    io: &mut EdgeIo,
    pipelined: &mut Vec<u8>,
    mut body: Body,
    framing: Framing,
    ctx: &Ctx,
) -> bool {
    loop {
        let first = tokio::select! {
            biased;
            frame = body.frame() => frame,
            () = client_gone(io, pipelined) => return false,
        };
        let mut out = Vec::new();
        let ended = match first {
            None => {
                if framing == Framing::Chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                Some(true)
            }
            Some(Err(_)) => return false,
            Some(Ok(frame)) => gather(&mut body, &mut out, framing, frame.into_data().ok()),
        };
        if !out.is_empty() && write(io, &out, ctx).await.is_err() {
            return false;
        }
        if let Some(done) = ended {
            return done && framing != Framing::Close;
        }
    }
}

/// Resolves when the client has closed its end (or reset the
/// connection) while a response is open. Once the client has pipelined
/// anything (kept in `pipelined` for the next request) it is not read
/// further until that request: as hyper does, an end seen after a
/// pipelined request is the end of the requests, not a client gone, and
/// what it pipelines stays within one read.
async fn client_gone(io: &mut EdgeIo, pipelined: &mut Vec<u8>) {
    let tcp = io.tcp();
    std::future::poll_fn(|cx| loop {
        if !pipelined.is_empty() {
            return Poll::Pending;
        }
        if ready!(tcp.poll_read_ready(cx)).is_err() {
            return Poll::Ready(());
        }
        let mut scratch = [0u8; 512];
        match tcp.try_read(&mut scratch) {
            Ok(0) => return Poll::Ready(()),
            Ok(n) => pipelined.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return Poll::Ready(()),
        }
    })
    .await;
}

/// Writes `bytes` whole: at once when the socket takes them, else within
/// `write_timeout` of no progress.
async fn write(io: &mut EdgeIo, bytes: &[u8], ctx: &Ctx) -> io::Result<()> {
    let tcp = io.tcp();
    // The common case, without a timer: the socket has room.
    let rest = match tcp.try_write(bytes) {
        Ok(n) => &bytes[n..],
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => bytes,
        Err(e) => return Err(e),
    };
    if rest.is_empty() {
        return Ok(());
    }
    // Boxed: the timer is room only while a write waits.
    Box::pin(write_slowly(tcp, rest, ctx.edge.write_timeout)).await
}

async fn write_slowly(
    tcp: &mut tokio::net::TcpStream,
    mut rest: &[u8],
    timeout: std::time::Duration,
) -> io::Result<()> {
    while !rest.is_empty() {
        let n = tokio::time::timeout(timeout, tcp.write(rest))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        rest = &rest[n..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head and body with its `date` line taken out (the second may turn
    /// between two builds).
    fn undated(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes)
            .split("\r\n")
            .filter(|line| !line.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    #[test]
    fn a_direct_publish_answer_is_the_bytes_the_router_answer_becomes() {
        let json = br#"{"channel":"c","id":"1-2","subscribers":3}"#;
        for (version, keep) in [
            (Version::HTTP_11, true),
            (Version::HTTP_11, false),
            (Version::HTTP_10, true),
            (Version::HTTP_10, false),
        ] {
            let value: serde_json::Value = serde_json::from_slice(json).expect("json");
            let response = axum::response::IntoResponse::into_response((
                axum::http::StatusCode::CREATED,
                axum::Json(value),
            ));
            let (routed, rest, routed_keep) = start(response, false, version, keep);
            assert!(matches!(rest, Rest::Done));
            assert_eq!(routed_keep, keep);
            let direct = created_json(json, version, keep);
            assert_eq!(
                undated(&direct),
                undated(&routed),
                "{version:?} keep={keep}"
            );
            assert!(String::from_utf8_lossy(&direct).contains("\r\ndate: "));
        }
    }

    fn request(head: &str) -> Option<(Request<Body>, usize)> {
        match parse(head.as_bytes()) {
            Head::Request(r, len, 0) => Some((*r, len)),
            _ => None,
        }
    }

    #[test]
    fn body_less_gets_are_taken_the_rest_go_to_hyper() {
        let (r, len) = request(
            "GET /sub/a?since=3 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\nGET",
        )
        .expect("taken");
        assert_eq!(r.method(), Method::GET);
        assert_eq!(r.uri().path(), "/sub/a");
        assert_eq!(r.uri().query(), Some("since=3"));
        assert_eq!(r.headers()["accept"], "text/event-stream");
        assert_eq!(
            len,
            "GET /sub/a?since=3 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".len()
        );
        assert!(request("HEAD / HTTP/1.0\r\n\r\n").is_some());
        assert!(request("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").is_some());
        for hyper in [
            "GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            "POST /pub/a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            "POST /pub/a HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            "POST /pub/a HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\nx",
            "POST /pub/a HTTP/1.1\r\nContent-Length: 99999\r\n\r\n",
            "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /sub/a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "OPTIONS / HTTP/1.1\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "nonsense\r\n\r\n",
        ] {
            assert!(matches!(parse(hyper.as_bytes()), Head::Hyper), "{hyper:?}");
        }
        assert!(matches!(
            parse(b"GET /sub/a HTTP/1.1\r\nHost"),
            Head::Partial
        ));
    }

    #[test]
    fn small_bodies_are_taken_with_their_length() {
        let head = "POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length:  5 \r\n\r\n";
        let Head::Request(r, len, body) = parse(format!("{head}hel").as_bytes()) else {
            panic!("taken");
        };
        assert_eq!((r.method(), len, body), (&Method::POST, head.len(), 5));
        assert!(matches!(
            parse(b"DELETE /pub/a HTTP/1.1\r\n\r\n"),
            Head::Request(_, _, 0)
        ));
        assert_eq!(content_length(b"0012"), Some(12));
        assert_eq!(content_length(b""), None);
        assert_eq!(content_length(b"1e3"), None);
    }

    #[test]
    fn keep_alive_follows_rfc_9112() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONNECTION, HeaderValue::from_str(v).expect("value"));
            m
        };
        assert!(keeps_alive(Version::HTTP_11, &HeaderMap::new()));
        assert!(!keeps_alive(Version::HTTP_11, &h("Close")));
        assert!(!keeps_alive(Version::HTTP_10, &HeaderMap::new()));
        assert!(keeps_alive(Version::HTTP_10, &h("keep-alive")));
    }

    #[test]
    fn chunks_carry_their_size_in_hex() {
        let mut out = Vec::new();
        let data = [Bytes::from_static(b"hello "), Bytes::from_static(b"world!")];
        frame(&mut out, &data, 12, Framing::Chunked);
        assert_eq!(out, b"c\r\nhello world!\r\n");
        out.clear();
        frame(&mut out, &data, 12, Framing::Length);
        assert_eq!(out, b"hello world!");
    }
}
