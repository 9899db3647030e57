//! The WebSocket wire rules (RFC 6455) on both WebSocket endpoints, checked
//! byte by byte with a raw TCP client: the handshake's answers, masking,
//! fragments, ping/pong, the close handshake, and the close codes for
//! frames the server must refuse.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(5);
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A client frame: masked, as RFC 6455 requires of clients.
fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0xa1, 0x07, 0x3c, 0x55];
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug, PartialEq)]
enum Frame {
    Text(String),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(u16, String),
}

impl Raw {
    /// Sends the handshake request with `headers` (and `early` bytes in the
    /// same write); returns the response head.
    async fn open(server: &Server, path: &str, headers: &str, early: &[u8]) -> (Raw, String) {
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n").into_bytes();
        request.extend_from_slice(early);
        tcp.write_all(&request).await.expect("write");
        let mut raw = Raw {
            tcp,
            buf: Vec::new(),
        };
        let head = within(LIMIT, "response head", async {
            loop {
                if let Some(end) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
                    raw.buf.drain(..end + 4);
                    return head;
                }
                raw.fill().await;
            }
        })
        .await;
        (raw, head)
    }

    async fn upgrade(server: &Server, path: &str, early: &[u8]) -> Raw {
        let headers = format!(
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n"
        );
        let (raw, head) = Raw::open(server, path, &headers, early).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let head = head.to_ascii_lowercase();
        // RFC 6455 section 1.3's example key and answer.
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        raw
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.tcp.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed; unread: {:?}", self.buf);
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("write");
    }

    /// The next server frame (server frames are never masked).
    async fn frame(&mut self) -> Frame {
        within(LIMIT, "a frame", async {
            loop {
                if let Some(frame) = self.parse() {
                    return frame;
                }
                self.fill().await;
            }
        })
        .await
    }

    fn parse(&mut self) -> Option<Frame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[0] & 0x80, 0x80, "server frames are final");
        assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
        let (len, at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            126 => return None,
            127 => panic!("no test frame is that long"),
            n => (n as usize, 2),
        };
        if b.len() < at + len {
            return None;
        }
        let payload = b[at..at + len].to_vec();
        let opcode = b[0] & 0x0f;
        self.buf.drain(..at + len);
        Some(match opcode {
            0x1 => Frame::Text(String::from_utf8(payload).expect("utf-8")),
            0x8 => Frame::Close(
                u16::from_be_bytes([payload[0], payload[1]]),
                String::from_utf8(payload[2..].to_vec()).expect("utf-8 reason"),
            ),
            0x9 => Frame::Ping(payload),
            0xA => Frame::Pong(payload),
            other => panic!("unexpected opcode {other}"),
        })
    }

    /// Skips text and pings until a close frame; returns its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            if let Frame::Close(code, _) = self.frame().await {
                return code;
            }
        }
    }

    /// The server ends the TCP connection (after its close frame).
    async fn assert_eof(&mut self) {
        within(LIMIT, "the server to close the TCP connection", async {
            let mut chunk = [0u8; 512];
            loop {
                match self.tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

#[tokio::test]
async fn handshake_errors_are_http_answers() {
    let server = Server::start().await;
    let ch = channel("hs");
    for path in [format!("/sub/{ch}"), "/connection/websocket".to_string()] {
        // Version 8: 426 with the version we speak.
        let (_raw, head) = Raw::open(
            &server,
            &path,
            &format!("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: {KEY}\r\n"),
            b"",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 426"), "{path}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-version: 13"),
            "{head}"
        );
        // No key, then a key that is not 16 bytes: 400 invalid_upgrade.
        for key_header in ["", "Sec-WebSocket-Key: c2hvcnQ=\r\n"] {
            let (mut raw, head) = Raw::open(
                &server,
                &path,
                &format!("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n{key_header}Connection: close\r\n"),
                b"",
            )
            .await;
            assert!(head.starts_with("HTTP/1.1 400"), "{path}: {head}");
            let body = within(LIMIT, "error body", async {
                let mut rest = Vec::new();
                let _ = raw.tcp.read_to_end(&mut rest).await;
                raw.buf.extend_from_slice(&rest);
                String::from_utf8_lossy(&raw.buf).to_string()
            })
            .await;
            assert!(body.contains("\"invalid_upgrade\""), "{body}");
            assert!(body.contains("Sec-WebSocket-Key"), "{body}");
        }
    }
}

#[tokio::test]
async fn a_channel_websocket_answers_pings_and_ends_with_the_close_handshake() {
    let server = Server::start().await;
    let ch = channel("wsraw");
    let mut raw = Raw::upgrade(&server, &format!("/sub/{ch}"), b"").await;
    server.wait_subscribers(&ch, 1, LIMIT).await;

    raw.send(&masked(true, 0x9, b"hi")).await;
    assert_eq!(raw.frame().await, Frame::Pong(b"hi".to_vec()));

    let id = server.publish_text(&ch, "one").await;
    let Frame::Text(text) = raw.frame().await else {
        panic!("expected the message")
    };
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_text_envelope(&v, &ch, &id, "one");

    // Our close: the server answers with its own and ends the connection.
    raw.send(&masked(true, 0x8, &[0x03, 0xe8])).await;
    assert_eq!(raw.close_code().await, 1000);
    raw.assert_eof().await;
    server.wait_subscribers(&ch, 0, LIMIT).await;
}

#[tokio::test]
async fn broken_frames_close_with_the_rfc_codes_and_others_go_on() {
    let server = Server::start().await;
    let ch = channel("wsbad");
    let mut bystander = server.ws(&format!("/sub/{ch}")).await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", vec![0x81, 0x01, b'x'], 1002),
        (
            "reserved bit",
            {
                let mut f = masked(true, 0x1, b"x");
                f[0] |= 0x40;
                f
            },
            1002,
        ),
        ("unknown opcode", masked(true, 0x3, b""), 1002),
        ("fragmented ping", masked(false, 0x9, b""), 1002),
        (
            "text that is not UTF-8",
            masked(true, 0x1, &[0xc3, 0x28]),
            1007,
        ),
        (
            "frame over 16 KiB",
            masked(true, 0x2, &vec![0u8; 20_000]),
            1009,
        ),
    ];
    for (what, frame, code) in cases {
        let mut raw = Raw::upgrade(&server, &format!("/sub/{ch}"), b"").await;
        raw.send(&frame).await;
        assert_eq!(raw.close_code().await, code, "{what}");
        raw.assert_eof().await;
    }
    let id = server.publish_text(&ch, "still here").await;
    let v = bystander.next_json().await;
    assert_text_envelope(&v, &ch, &id, "still here");
}

#[tokio::test]
async fn session_commands_may_be_fragmented_or_sent_with_the_handshake() {
    let server = Server::start().await;
    let ch = channel("wsfrag");
    // The connect command rides in the same TCP write as the handshake.
    let connect = masked(true, 0x1, br#"{"id":1,"connect":{}}"#);
    let mut raw = Raw::upgrade(&server, "/connection/websocket", &connect).await;
    let Frame::Text(reply) = raw.frame().await else {
        panic!("expected the connect reply")
    };
    assert!(reply.contains("\"id\":1"), "{reply}");
    assert!(reply.contains("\"connect\""), "{reply}");

    // A subscribe command in three fragments, with a ping between them.
    let command = format!(r#"{{"id":2,"subscribe":{{"channel":"{ch}"}}}}"#);
    let bytes = command.as_bytes();
    let mut wire = masked(false, 0x1, &bytes[..5]);
    wire.extend(masked(true, 0x9, b"p"));
    wire.extend(masked(false, 0x0, &bytes[5..12]));
    wire.extend(masked(true, 0x0, &bytes[12..]));
    raw.send(&wire).await;
    let mut got_pong = false;
    let mut got_reply = false;
    while !(got_pong && got_reply) {
        match raw.frame().await {
            Frame::Pong(p) => {
                assert_eq!(p, b"p");
                got_pong = true;
            }
            Frame::Text(t) if t.contains("\"id\":2") => {
                assert!(!t.contains("error"), "{t}");
                got_reply = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let id = server.publish_text(&ch, "fragments").await;
    let Frame::Text(push) = raw.frame().await else {
        panic!("expected the push")
    };
    assert!(push.contains(&id) && push.contains("fragments"), "{push}");

    // Invalid UTF-8 split across fragments is still caught.
    let mut wire = masked(false, 0x1, &[b'{', 0xe2]);
    wire.extend(masked(true, 0x0, &[0x28, b'}']));
    raw.send(&wire).await;
    assert_eq!(raw.close_code().await, 1007);
    raw.assert_eof().await;
}

#[tokio::test]
async fn graceful_shutdown_sends_1001_on_a_raw_websocket() {
    let mut server = Server::start().await;
    let ch = channel("wsbye");
    let mut raw = Raw::upgrade(&server, &format!("/sub/{ch}"), b"").await;
    server.wait_subscribers(&ch, 1, LIMIT).await;
    server.process.signal("TERM");
    let (code, reason) = loop {
        if let Frame::Close(code, reason) = raw.frame().await {
            break (code, reason);
        }
    };
    assert_eq!(code, 1001);
    assert_eq!(reason, "server shutting down");
    // We answer the close like a browser; the server then exits cleanly.
    raw.send(&masked(true, 0x8, &[0x03, 0xe9])).await;
    raw.assert_eof().await;
    let status = server.process.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
}
