//! hyper's HTTP/1.1 client (`hyper::client::conn::http1`) behind the same
//! calls the subscribers and the publisher make of [`crate::http`], so that
//! `--http-client` can measure one against the other in the same tool.
//!
//! Two ways to drive hyper's connection future: `Spawned` (its own task, as
//! hyper's documentation shows) and `Inline` (polled by the subscriber's own
//! task beside the response, so a delivery wakes one task, not two).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::http::{Head, MAX_BODY};
use crate::net;

type Io = TokioIo<TcpStream>;
type Conn = Pin<Box<Connection<Io, Full<Bytes>>>>;

/// How hyper's connection future is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drive {
    Spawned,
    Inline,
}

fn to_io(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn closed() -> io::Error {
    io::Error::from(io::ErrorKind::ConnectionAborted)
}

fn head_of(parts: &hyper::http::response::Parts) -> Head {
    Head {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    }
}

fn build(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> io::Result<hyper::Request<Full<Bytes>>> {
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host);
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(to_io)
}

/// One hyper connection: the request handle and, when inline, the
/// connection future that the caller polls beside each request.
struct Link {
    send: SendRequest<Full<Bytes>>,
    conn: Option<Conn>,
}

async fn link(addr: SocketAddr, source: Option<IpAddr>, drive: Drive) -> io::Result<Link> {
    let tcp = net::connect(addr, source).await?;
    let (send, conn) = http1::handshake(TokioIo::new(tcp)).await.map_err(to_io)?;
    let conn = match drive {
        Drive::Spawned => {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            None
        }
        Drive::Inline => Some(Box::pin(conn)),
    };
    Ok(Link { send, conn })
}

impl Link {
    /// Sends `req` and waits for the response head.
    async fn head(
        &mut self,
        req: hyper::Request<Full<Bytes>>,
    ) -> io::Result<hyper::Response<Incoming>> {
        let fut = self.send.send_request(req);
        match &mut self.conn {
            None => fut.await.map_err(to_io),
            Some(conn) => tokio::select! {
                r = fut => r.map_err(to_io),
                _ = conn.as_mut() => Err(closed()),
            },
        }
    }

    /// Sends `req` and collects the whole answer.
    async fn collect(&mut self, req: hyper::Request<Full<Bytes>>) -> io::Result<(Head, Vec<u8>)> {
        let Link { send, conn } = self;
        let fut = async {
            let resp = send.send_request(req).await.map_err(to_io)?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(to_io)?
                .to_bytes();
            Ok::<_, io::Error>((head_of(&parts), body.to_vec()))
        };
        match conn {
            None => fut.await,
            Some(conn) => tokio::select! {
                r = fut => r,
                _ = conn.as_mut() => Err(closed()),
            },
        }
    }
}

/// A keep-alive connection like [`crate::http::Conn`]: reconnects after an
/// error, never retries a request.
pub struct KeepAlive {
    addr: SocketAddr,
    host: String,
    source: Option<IpAddr>,
    drive: Drive,
    link: Option<Link>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr, host: String, source: Option<IpAddr>, drive: Drive) -> Self {
        Self {
            addr,
            host,
            source,
            drive,
            link: None,
        }
    }

    pub async fn connect(&mut self) -> io::Result<()> {
        if self.link.is_none() {
            self.link = Some(link(self.addr, self.source, self.drive).await?);
        }
        Ok(())
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> io::Result<crate::http::Response> {
        let req = build(method, &self.host, path, headers, body)?;
        let mut l = match self.link.take() {
            Some(l) if !l.send.is_closed() => l,
            _ => link(self.addr, self.source, self.drive).await?,
        };
        let r = l.collect(req).await;
        if r.is_ok() {
            self.link = Some(l);
        }
        r.map(|(head, body)| crate::http::Response { head, body })
    }
}

/// A streaming GET's body, read frame by frame.
pub struct Stream {
    link: Link,
    body: Incoming,
}

/// Opens a streaming GET like [`crate::http::open_stream`].
pub async fn open_stream(
    addr: SocketAddr,
    source: Option<IpAddr>,
    host: &str,
    path: &str,
    headers: &[(String, String)],
    drive: Drive,
) -> io::Result<(Head, Stream)> {
    let mut link = link(addr, source, drive).await?;
    let resp = link.head(build("GET", host, path, headers, &[])?).await?;
    let (parts, body) = resp.into_parts();
    Ok((head_of(&parts), Stream { link, body }))
}

impl Stream {
    /// Appends the next data frame to `out`; `Ok(false)` at the end.
    pub async fn next(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        let Stream { link, body } = self;
        let fut = async {
            loop {
                match body.frame().await {
                    None => return Ok(false),
                    Some(Err(e)) => return Err(to_io(e)),
                    Some(Ok(f)) => {
                        if let Ok(d) = f.into_data() {
                            out.extend_from_slice(&d);
                            return Ok(true);
                        }
                    }
                }
            }
        };
        match &mut link.conn {
            None => fut.await,
            Some(conn) => tokio::select! {
                r = fut => r,
                _ = conn.as_mut() => Err(closed()),
            },
        }
    }
}
