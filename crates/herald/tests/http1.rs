//! Herald's own HTTP/1 path (crates/herald-server/src/http/h1.rs), held to
//! RFC 9112 with raw sockets: pipelined requests answered in order (a
//! publish among them, its body taken on this path), the hand-over to hyper
//! of a body still on its way, a chunked body or an upgrade on a connection
//! that began on this path, the direct publish's refusals left to the
//! router, HTTP/1.0 streams delimited by the
//! close, HEAD without a body, a client that leaves freeing its
//! connection, and a client that stops reading closed after
//! `write_timeout`.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// Reads until EOF (bounded by [`WAIT`]).
async fn read_to_eof(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    within(WAIT, "the server to close", tcp.read_to_end(&mut out))
        .await
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until `needle` has arrived; returns everything read.
async fn read_until(tcp: &mut TcpStream, needle: &str) -> String {
    let mut out = Vec::new();
    within(WAIT, &format!("{needle:?} to arrive"), async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&out).contains(needle) {
            let n = tcp.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed before {needle:?}: {}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(server.addr).await.expect("connect")
}

/// A new connection that has sent `requests` (raw bytes).
async fn sent(server: &Server, requests: &str) -> TcpStream {
    let mut tcp = connect(server).await;
    tcp.write_all(requests.as_bytes()).await.expect("write");
    tcp
}

async fn connections(server: &Server) -> Option<u64> {
    let text = server.get("/metrics").bearer("k").send().await.text();
    text.lines()
        .find_map(|l| l.strip_prefix("herald_connections "))
        .and_then(|v| v.trim().parse().ok())
}

async fn connections_become(server: &Server, want: u64) {
    eventually(WAIT, &format!("herald_connections = {want}"), || async {
        match connections(server).await {
            Some(n) if n == want => Ok(()),
            other => Err(format!("herald_connections is {other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_with_a_publish_among_them() {
    let s = Server::builder().api_key("k").start().await;
    let ch = channel("pipe");
    let mut tcp = connect(&s).await;
    // Two GETs, then a POST with its body (the direct publish), then a GET
    // that closes: one write, four answers, in order.
    let body = r#"{"n":1}"#;
    let requests = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\n\r\n\
         HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /pub/{ch} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}\
         GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(requests.as_bytes()).await.expect("write");
    let all = read_to_eof(&mut tcp).await;
    let statuses: Vec<&str> = all
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &all[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "201", "200"], "{all}");
    let health = all.find(r#"{"status":"ok"}"#).expect("health body");
    let published = all
        .find(&format!(r#""channel":"{ch}""#))
        .expect("publish body");
    let ready = all.find(r#""status":"ready""#).expect("ready body");
    assert!(health < published && published < ready, "{all}");
    // The HEAD answer has no body: the next status line follows its head.
    let head_answer = all.match_indices("HTTP/1.1 ").nth(1).expect("HEAD").0;
    let after_head = &all[head_answer..];
    let head_end = after_head.find("\r\n\r\n").expect("head end") + 4;
    assert!(after_head[head_end..].starts_with("HTTP/1.1 201"), "{all}");
    // And it tells the length the GET had.
    let get_length = r#"{"status":"ok"}"#.len();
    assert!(
        after_head[..head_end]
            .to_ascii_lowercase()
            .contains(&format!("content-length: {get_length}\r\n")),
        "{all}"
    );
    // The message was taken once.
    assert_eq!(s.info(&ch).await["messages"], 1);
}

#[tokio::test]
async fn a_body_still_on_its_way_and_a_chunked_body_are_published_once_each_through_hyper() {
    let s = Server::builder().api_key("k").start().await;
    let ch = channel("late-body");
    // The head first, the body 300 ms later: this path does not wait for
    // it, hyper reads it (under the handlers' body clock).
    let mut tcp = sent(
        &s,
        &format!(
            "POST /pub/{ch} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\
             Content-Length: 5\r\n\r\n"
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    tcp.write_all(b"hello").await.expect("write");
    let first = read_until(&mut tcp, "subscribers").await;
    assert!(first.starts_with("HTTP/1.1 201"), "{first}");
    // Then, on the same connection (hyper's now), a chunked body.
    tcp.write_all(
        format!(
            "POST /pub/{ch} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nworld\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let second = read_to_eof(&mut tcp).await;
    assert!(second.starts_with("HTTP/1.1 201"), "{second}");
    assert_eq!(s.info(&ch).await["messages"], 2);
    let history = s
        .get(&format!("/api/history/{ch}"))
        .bearer("k")
        .send()
        .await
        .json();
    let data: Vec<String> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["data"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(data, ["hello", "world"], "{history}");
}

#[tokio::test]
async fn the_direct_publish_leaves_every_refusal_to_the_router() {
    let s = Server::builder().api_key("k").start().await;
    let ch = channel("refused");
    // Each of these has its whole body with its head, as a direct publish
    // would, and is answered as the router answers it.
    let cases = [
        (format!("POST /pub/{ch} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"), "401", "unauthorized"),
        (format!("POST /pub/{ch} HTTP/1.1\r\nHost: x\r\n"), "401", "unauthorized"),
        ("POST /pub/a%20b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n".to_string(), "400", "invalid_channel"),
        (format!("POST /pub/{ch} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\n"), "400", "invalid_json"),
        (format!("POST /pub/{ch} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nOrigin: https://evil.example\r\n"), "403", "origin_not_allowed"),
        (format!("POST /pub/{ch} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nIdempotency-Key: \x7f\r\n"), "400", "invalid_request"),
    ];
    for (head, status, code) in cases {
        let mut tcp = sent(
            &s,
            &format!("{head}Content-Length: 3\r\nConnection: close\r\n\r\n{{x}}"),
        )
        .await;
        let answer = read_to_eof(&mut tcp).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{head}: {answer}"
        );
        assert!(
            answer.contains(&format!(r#""code":"{code}""#)),
            "{head}: {answer}"
        );
    }
    assert_eq!(s.info(&ch).await["messages"], 0);
}

#[tokio::test]
async fn http_1_0_streams_end_with_the_connection_and_1_1_streams_are_chunked() {
    let s = Server::builder().api_key("k").start().await;
    let ch = channel("h10");
    let mut old = sent(
        &s,
        &format!("GET /sub/{ch} HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n"),
    )
    .await;
    let mut new = sent(
        &s,
        &format!("GET /sub/{ch} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"),
    )
    .await;
    s.wait_subscribers(&ch, 2, WAIT).await;
    let id = s.publish_text(&ch, "hello").await;
    let old_text = read_until(&mut old, "hello").await;
    let (head, body) = old_text.split_once("\r\n\r\n").expect("head");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    // Close-delimited: the events are the body itself, no chunk sizes.
    assert!(body.starts_with("retry:"), "{body:?}");
    assert!(
        body.contains(&format!("id: {id}\ndata: hello\n\n")),
        "{body:?}"
    );

    let new_text = read_until(&mut new, "hello").await;
    let (head, body) = new_text.split_once("\r\n\r\n").expect("head");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    // A chunk: its size in hex, CRLF, then the bytes.
    let (size, rest) = body.split_once("\r\n").expect("chunk size");
    let size = usize::from_str_radix(size, 16).expect("hex size");
    assert!(rest.len() >= size && rest.starts_with("retry:"), "{body:?}");
}

#[tokio::test]
async fn a_client_that_leaves_frees_its_stream_and_its_long_poll() {
    let s = Server::builder().api_key("k").start().await;
    let ch = channel("gone");
    connections_become(&s, 0).await;
    let sse = sent(
        &s,
        &format!("GET /sub/{ch} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"),
    )
    .await;
    let poll = sent(
        &s,
        &format!("GET /sub/{ch}?timeout=30 HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    s.wait_subscribers(&ch, 2, WAIT).await;
    connections_become(&s, 2).await;
    drop(sse);
    drop(poll);
    // Long before the poll's 30 s: the server saw both leave.
    connections_become(&s, 0).await;
    assert_eq!(s.info(&ch).await["subscribers"], 0);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_write_timeout() {
    let s = Server::builder()
        .api_key("k")
        .set("write_timeout", "\"1s\"")
        .start()
        .await;
    let ch = channel("stall");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut tcp = socket.connect(s.addr).await.expect("connect");
    tcp.write_all(
        format!("GET /sub/{ch} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    s.wait_subscribers(&ch, 1, WAIT).await;
    // Far more than the socket buffers hold, and never read.
    let big = "x".repeat(60_000);
    for _ in 0..60 {
        s.publish_text(&ch, &big).await;
    }
    connections_become(&s, 0).await;
    // Still serving everyone else.
    assert_eq!(s.get("/health").send().await.status, 200);
}

#[tokio::test]
async fn a_websocket_upgrade_after_a_get_on_the_same_connection() {
    let s = Server::builder().api_key("k").start().await;
    let ch = channel("upg");
    let mut tcp = connect(&s).await;
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    read_until(&mut tcp, r#"{"status":"ok"}"#).await;
    let url = format!("ws://{}/sub/{ch}", s.addr);
    let (mut ws, response) = within(
        WAIT,
        "the upgrade",
        tokio_tungstenite::client_async(url, tcp),
    )
    .await
    .expect("upgrade");
    assert_eq!(response.status(), 101);
    s.wait_subscribers(&ch, 1, WAIT).await;
    let id = s.publish_text(&ch, "after a get").await;
    let frame = within(WAIT, "a frame", ws.next())
        .await
        .expect("a frame")
        .expect("a message");
    let v: serde_json::Value = serde_json::from_str(frame.to_text().expect("text")).expect("json");
    assert_text_envelope(&v, &ch, &id, "after a get");
}

#[tokio::test]
async fn a_session_long_poll_after_a_post_on_the_same_connection_has_its_whole_body() {
    // The POST's chunked body goes to hyper, which then serves the
    // connection: the poll's deferred answer is settled there too, with its
    // own framing.
    let s = Server::builder().api_key("k").start().await;
    let mut tcp = connect(&s).await;
    tcp.write_all(
        b"POST /connection/longpoll HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await
    .expect("write");
    let opened = read_until(&mut tcp, "}}").await;
    let body = opened.split_once("\r\n\r\n").expect("head").1;
    let v: serde_json::Value = serde_json::from_str(body).expect("json");
    let id = v["session"]["id"]
        .as_str()
        .expect("a session id")
        .to_string();
    tcp.write_all(
        format!("GET /connection/longpoll/{id}?timeout=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    let answer = read_to_eof(&mut tcp).await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("head");
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_string)
        })
        .expect("a content-length");
    assert_eq!(
        length.parse::<usize>().expect("a number"),
        body.len(),
        "{answer}"
    );
    let v: serde_json::Value = serde_json::from_str(body).expect("json");
    assert!(v["frames"].is_array(), "{v}");
}

#[tokio::test]
async fn a_request_pipelined_behind_a_long_poll_is_answered_after_it_even_if_the_client_half_closes(
) {
    let s = Server::builder().api_key("k").start().await;
    let ch = channel("behind");
    let mut tcp = sent(
        &s,
        &format!(
            "GET /sub/{ch}?timeout=1 HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        ),
    )
    .await;
    // Nothing more to send: the end of the requests, not of the client.
    tcp.shutdown().await.expect("half-close");
    let all = read_to_eof(&mut tcp).await;
    let statuses: Vec<&str> = all
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &all[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200"], "{all}");
    let poll = all
        .find(&format!(r#""channel":"{ch}""#))
        .expect("the poll's answer");
    let health = all.find(r#"{"status":"ok"}"#).expect("the health answer");
    assert!(poll < health, "{all}");
}
