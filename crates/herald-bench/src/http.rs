//! A minimal HTTP/1.1 client: what publishing, SSE and long-poll need, and
//! what Herald's integration tests need of HTTP (they use this module too).
//!
//! Written by hand rather than pulled from a client library so that each
//! connection costs one socket and one 8 KiB buffer (hyper's client keeps a
//! second 8 KiB buffer for request heads, and its connection task costs CPU
//! per request: BENCHMARKS.md, "One HTTP client"), the source address can be
//! chosen before connect, and a streaming body (SSE) can be read chunk by
//! chunk. Everything read from the server is bounded: header lines, header
//! count, and whole bodies when they are collected.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::net;

/// Longest status or header line accepted.
const MAX_LINE: u64 = 16 * 1024;
/// Most header lines accepted in one response.
const MAX_HEADERS: usize = 128;
/// Largest body [`Conn::request`] collects; larger answers are an error.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Status line and headers of a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn wants_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }

    /// How the body is delimited.
    fn framing(&self, method_is_head: bool) -> Result<Framing, io::Error> {
        if method_is_head || self.status == 204 || self.status == 304 || self.status < 200 {
            return Ok(Framing::Length(0));
        }
        if self
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            return Ok(Framing::Chunked);
        }
        match self.header("content-length") {
            Some(v) => v
                .trim()
                .parse()
                .map(Framing::Length)
                .map_err(|_| bad("bad content-length")),
            None => Ok(Framing::Close),
        }
    }
}

/// Parses a status line such as `HTTP/1.1 200 OK`.
pub fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// Parses `Name: value`.
pub fn parse_header_line(line: &str) -> Option<(String, String)> {
    let (k, v) = line.split_once(':')?;
    let k = k.trim();
    if k.is_empty() {
        return None;
    }
    Some((k.to_string(), v.trim().to_string()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    Close,
}

/// Reads one line ending in `\n`, bounded; returns it without CR/LF.
/// `Ok(None)` means the peer closed before any byte.
async fn read_line<R: AsyncBufReadExt + Unpin>(r: &mut R) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = (&mut *r).take(MAX_LINE).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        if n as u64 >= MAX_LINE {
            return Err(bad("line too long"));
        }
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| bad("non-UTF-8 header"))
}

/// Reads a response head.
pub async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> io::Result<Head> {
    let line = read_line(r)
        .await?
        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
    let status = parse_status_line(&line).ok_or_else(|| bad("bad status line"))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)
            .await?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        if line.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(bad("too many headers"));
        }
        headers.push(parse_header_line(&line).ok_or_else(|| bad("bad header line"))?);
    }
    Ok(Head { status, headers })
}

/// Incremental reader for one response body.
#[derive(Debug)]
pub struct Body {
    framing: Framing,
    /// Bytes left in the current chunk (chunked) or body (length).
    left: u64,
    done: bool,
}

impl Body {
    fn new(framing: Framing) -> Self {
        let (left, done) = match framing {
            Framing::Length(n) => (n, n == 0),
            _ => (0, false),
        };
        Self {
            framing,
            left,
            done,
        }
    }

    /// Appends the next piece of body (at most 64 KiB) to `out`. Returns
    /// `Ok(false)` once the body is complete.
    pub async fn next<R: AsyncBufReadExt + Unpin>(
        &mut self,
        r: &mut R,
        out: &mut Vec<u8>,
    ) -> io::Result<bool> {
        const PIECE: u64 = 64 * 1024;
        if self.done {
            return Ok(false);
        }
        match self.framing {
            Framing::Length(_) => {
                let n = read_some(r, self.left.min(PIECE), out).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.left -= n;
                self.done = self.left == 0;
                Ok(true)
            }
            Framing::Close => {
                let n = read_some(r, PIECE, out).await?;
                if n == 0 {
                    self.done = true;
                    return Ok(false);
                }
                Ok(true)
            }
            Framing::Chunked => {
                if self.left == 0 {
                    let line = read_line(r)
                        .await?
                        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
                    if size == 0 {
                        // Trailers up to the empty line.
                        for _ in 0..MAX_HEADERS {
                            match read_line(r).await? {
                                Some(l) if !l.is_empty() => continue,
                                _ => break,
                            }
                        }
                        self.done = true;
                        return Ok(false);
                    }
                    self.left = size;
                }
                let n = read_some(r, self.left.min(PIECE), out).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.left -= n;
                if self.left == 0 {
                    // CRLF after the chunk data.
                    let line = read_line(r)
                        .await?
                        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
                    if !line.is_empty() {
                        return Err(bad("missing CRLF after chunk"));
                    }
                }
                Ok(true)
            }
        }
    }

    /// Collects the rest of the body, at most `limit` bytes.
    pub async fn collect<R: AsyncBufReadExt + Unpin>(
        &mut self,
        r: &mut R,
        limit: usize,
    ) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while self.next(r, &mut out).await? {
            if out.len() > limit {
                return Err(bad("body too large"));
            }
        }
        Ok(out)
    }
}

/// Reads up to `max` bytes that are already buffered or arrive next.
async fn read_some<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    max: u64,
    out: &mut Vec<u8>,
) -> io::Result<u64> {
    let buf = r.fill_buf().await?;
    let n = buf.len().min(usize::try_from(max).unwrap_or(usize::MAX));
    out.extend_from_slice(&buf[..n]);
    r.consume(n);
    Ok(n as u64)
}

/// Serialises a request head and body.
pub fn encode_request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(k);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A keep-alive HTTP/1.1 connection that reconnects when the server closed
/// it. Requests are sequential (no pipelining).
pub struct Conn {
    addr: SocketAddr,
    host: String,
    source: Option<IpAddr>,
    stream: Option<BufReader<TcpStream>>,
}

/// A collected response.
#[derive(Debug, Clone)]
pub struct Response {
    pub head: Head,
    pub body: Vec<u8>,
}

impl Conn {
    pub fn new(addr: SocketAddr, host: String, source: Option<IpAddr>) -> Self {
        Self {
            addr,
            host,
            source,
            stream: None,
        }
    }

    /// Opens the connection now (a no-op when it is open).
    pub async fn connect(&mut self) -> io::Result<()> {
        if self.stream.is_none() {
            self.stream = Some(BufReader::new(net::connect(self.addr, self.source).await?));
        }
        Ok(())
    }

    /// Sends a request and collects the answer (body bounded by
    /// [`MAX_BODY`]). On any error the connection is dropped; the next call
    /// reconnects. The request is not retried, so a publish is never sent
    /// twice by this layer.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> io::Result<Response> {
        let result = self.request_inner(method, path, headers, body).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn request_inner(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> io::Result<Response> {
        let stream = match self.stream.take() {
            Some(s) => s,
            None => BufReader::new(net::connect(self.addr, self.source).await?),
        };
        let stream = self.stream.insert(stream);
        let req = encode_request(method, &self.host, path, headers, body);
        stream.get_mut().write_all(&req).await?;
        let (resp, framing) = read_framed(stream, method == "HEAD", MAX_BODY).await?;
        if resp.head.wants_close() || framing == Framing::Close {
            self.stream = None;
        }
        Ok(resp)
    }
}

/// Reads one whole response (head and body, the body at most `limit`
/// bytes) from `r`: the answer to a request written by other means, such
/// as the raw, deliberately broken requests of Herald's tests.
pub async fn read_response<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    method_is_head: bool,
    limit: usize,
) -> io::Result<Response> {
    read_framed(r, method_is_head, limit)
        .await
        .map(|(resp, _)| resp)
}

async fn read_framed<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    method_is_head: bool,
    limit: usize,
) -> io::Result<(Response, Framing)> {
    let head = read_head(r).await?;
    let framing = head.framing(method_is_head)?;
    let body = Body::new(framing).collect(r, limit).await?;
    Ok((Response { head, body }, framing))
}

/// Opens a streaming GET: returns the reader positioned at the body, the
/// head, and the body reader.
pub async fn open_stream(
    addr: SocketAddr,
    source: Option<IpAddr>,
    host: &str,
    path: &str,
    headers: &[(String, String)],
) -> io::Result<(BufReader<TcpStream>, Head, Body)> {
    open_request(addr, source, host, "GET", path, headers, &[]).await
}

/// Opens a connection of its own for one request and reads the answer's
/// head; the body is left to read incrementally with the returned reader
/// (a stream, or an answer whose pieces matter, as in the tests).
pub async fn open_request(
    addr: SocketAddr,
    source: Option<IpAddr>,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> io::Result<(BufReader<TcpStream>, Head, Body)> {
    let mut stream = BufReader::new(net::connect(addr, source).await?);
    let req = encode_request(method, host, path, headers, body);
    stream.get_mut().write_all(&req).await?;
    let head = read_head(&mut stream).await?;
    let body = Body::new(head.framing(method == "HEAD")?);
    Ok((stream, head, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse_all(raw: &[u8]) -> io::Result<(Head, Vec<u8>)> {
        let mut r = BufReader::new(raw);
        let head = read_head(&mut r).await?;
        let mut body = Body::new(head.framing(false)?);
        let b = body.collect(&mut r, 1024).await?;
        Ok((head, b))
    }

    #[tokio::test]
    async fn content_length_body() {
        let (h, b) = parse_all(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello")
            .await
            .expect("parse");
        assert_eq!(h.status, 201);
        assert_eq!(h.header("x-a"), Some("b"));
        assert_eq!(b, b"hello");
    }

    #[tokio::test]
    async fn chunked_body_with_extension_and_trailer() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nT: 1\r\n\r\n";
        let (_, b) = parse_all(raw).await.expect("parse");
        assert_eq!(b, b"Wikipedia");
    }

    #[tokio::test]
    async fn read_to_close_body() {
        let (_, b) = parse_all(b"HTTP/1.0 200 OK\r\n\r\nabc")
            .await
            .expect("parse");
        assert_eq!(b, b"abc");
    }

    #[tokio::test]
    async fn malformed_answers_are_errors() {
        assert!(parse_all(b"garbage\r\n\r\n").await.is_err());
        assert!(parse_all(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
            .await
            .is_err());
        assert!(
            parse_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                .await
                .is_err()
        );
        assert!(
            parse_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
                .await
                .is_err()
        );
        assert!(
            parse_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n")
                .await
                .is_err()
        );
        let big = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert!(parse_all(big.as_bytes()).await.is_err());
    }

    #[tokio::test]
    async fn whole_response_from_bytes() {
        let raw = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        let resp = read_response(&mut raw.as_slice(), false, 1024)
            .await
            .expect("parse");
        assert_eq!(resp.head.status, 408);
        assert_eq!(resp.head.header("content-type"), Some("application/json"));
        assert_eq!(resp.body, b"{}");
        let head_only = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        let resp = read_response(&mut head_only.as_slice(), true, 1024)
            .await
            .expect("parse");
        assert!(resp.body.is_empty());
        assert!(read_response(&mut raw.as_slice(), false, 1).await.is_err());
    }

    #[test]
    fn status_and_header_lines() {
        assert_eq!(parse_status_line("HTTP/1.1 404 Not Found"), Some(404));
        assert_eq!(parse_status_line("HTTP/2 200"), None);
        assert_eq!(parse_status_line("HTTP/1.1 2000 x"), None);
        assert_eq!(
            parse_header_line("A:  b c "),
            Some(("A".into(), "b c".into()))
        );
        assert_eq!(parse_header_line(": x"), None);
    }

    #[test]
    fn encodes_post() {
        let r = encode_request(
            "POST",
            "127.0.0.1:80",
            "/pub/c",
            &[("Content-Type".into(), "application/json".into())],
            b"{}",
        );
        assert_eq!(
            r,
            b"POST /pub/c HTTP/1.1\r\nHost: 127.0.0.1:80\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
    }
}
