//! Hostile input against the real binary (docs/security.md, "The edge"):
//! connections that never finish a request, backend rights without an API
//! key, forged client addresses, and inputs that used to break promises the
//! docs make. The half-open flood itself is in `flood.rs`.

mod common;
mod support_security;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use herald_bench::http;
use serde_json::{json, Value};
use support_security::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads whatever the server sends until it closes (or `limit` passes);
/// returns the bytes and how long it took.
async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration, bool) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (out, started.elapsed(), closed)
}

/// The status and JSON body of a raw HTTP answer, parsed by the shared
/// client's response reader.
async fn parse_answer(bytes: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(bytes);
    let resp = http::read_response(&mut &bytes[..], false, bytes.len())
        .await
        .unwrap_or_else(|e| panic!("not an HTTP answer ({e}): {text:?}"));
    let ct = resp.head.header("content-type").unwrap_or_default();
    assert!(
        ct.to_ascii_lowercase().starts_with("application/json"),
        "error answer without a JSON content type: {text}"
    );
    let body: Value = serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
        panic!(
            "error answer body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&resp.body)
        )
    });
    (resp.head.status, body)
}

async fn raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(bytes).await.expect("write");
    tcp
}

// --- connections that never finish a request ---------------------------------

#[tokio::test]
async fn a_request_head_must_arrive_within_header_timeout() {
    let s = Server::builder()
        .set("header_timeout", "\"1s\"")
        .start()
        .await;
    // Part of a head; nothing at all; part of a WebSocket handshake.
    let partial = b"GET /sub/x HTTP/1.1\r\nHost: 127.0.0.1\r\n".as_slice();
    let handshake =
        b"GET /sub/x HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            .as_slice();
    for (what, bytes) in [
        ("partial head", partial),
        ("nothing", b"".as_slice()),
        ("partial handshake", handshake),
    ] {
        let mut tcp = raw(s.addr, bytes).await;
        let (answer, took, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
        assert!(closed, "{what}: the connection was not closed within 5 s");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(2),
            "{what}: closed after {took:?}, header_timeout is 1 s"
        );
        let (status, body) = parse_answer(&answer).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (408, &json!("request_timeout")),
            "{what}"
        );
    }
    // A slow but steady client that finishes in time is served.
    let mut tcp = raw(s.addr, b"GET /pub/x HTTP/1.1\r\n").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    tcp.write_all(format!("Host: {}\r\nConnection: close\r\n\r\n", s.addr).as_bytes())
        .await
        .expect("write");
    let (answer, _, _) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let s = Server::builder()
        .set("header_timeout", "\"5s\"")
        .set("idle_timeout", "\"1s\"")
        .start()
        .await;
    let mut tcp = raw(
        s.addr,
        format!("GET /pub/x HTTP/1.1\r\nHost: {}\r\n\r\n", s.addr).as_bytes(),
    )
    .await;
    let (answer, took, closed) = read_until_closed(&mut tcp, Duration::from_secs(4)).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(
        closed,
        "an idle keep-alive connection was kept past idle_timeout"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    // A stream is not idle: an SSE subscriber outlives idle_timeout.
    let ch = channel("idle");
    let mut sse = s.sse(&format!("/sub/{ch}"), &[]).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let id = s.publish_text(&ch, "still here").await;
    assert_eq!(sse.next_event().await.id.as_deref(), Some(id.as_str()));
}

#[tokio::test]
async fn half_open_connections_count_against_the_per_ip_limit_from_accept() {
    let s = Server::builder()
        .set("header_timeout", "\"2s\"")
        .extra_config("\n[limits]\nmax_connections = 100\nmax_connections_per_ip = 2\n")
        .start()
        .await;
    let ch = channel("accept");
    // Two connections that never send a byte fill 127.0.0.1's quota.
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(s.addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_ws_refused(
        s.try_ws(&format!("/sub/{ch}"), &[]).await,
        429,
        "too_many_connections_from_ip",
        "a WebSocket past two half-open connections",
    );
    // The backend on the same host still publishes: its request is a
    // backend one, served even on a connection over the limit.
    s.publish_text(&ch, "backend still served").await;
    // Another address is not affected.
    let mut other = ws_from(&s, "127.0.0.3", &format!("/sub/{ch}"), &[])
        .await
        .unwrap_or_else(|e| panic!("another address must be admitted: {e}"));
    // Once the header clock closed the silent ones, 127.0.0.1 is admitted again.
    for tcp in &mut idle {
        let (_, _, closed) = read_until_closed(tcp, Duration::from_secs(4)).await;
        assert!(closed, "a silent connection outlived header_timeout");
    }
    drop(idle);
    let mut ws = eventually(
        Duration::from_secs(3),
        "127.0.0.1 admitted again",
        || async { s.try_ws(&format!("/sub/{ch}"), &[]).await },
    )
    .await;
    let id = s.publish_text(&ch, "after").await;
    assert_eq!(ws.next_json().await["id"], id.as_str());
    assert_eq!(other.next_json().await["id"], id.as_str());
}

#[tokio::test]
async fn the_api_listener_serves_the_backend_and_only_the_backend() {
    let s = Server::builder()
        .set("api_listen", "\"127.0.0.1:0\"")
        .start()
        .await;
    let api = s.process.wait_api_listening();
    assert_ne!(api, s.addr);
    let ch = channel("apil");
    let mut ws = s.ws(&format!("/sub/{ch}")).await;
    let published = request_at(
        api,
        "POST",
        &format!("/pub/{ch}"),
        &[],
        b"via api",
        IO_TIMEOUT,
    )
    .await
    .expect("publish on the API listener");
    assert_eq!(published.status, 201, "{}", published.text());
    assert_eq!(ws.next_json().await["id"], published.json()["id"]);
    for (method, path) in [
        ("GET", "/metrics".to_string()),
        ("GET", format!("/pub/{ch}")),
        ("GET", "/api/stats".to_string()),
        ("GET", format!("/api/history/{ch}")),
        ("GET", "/api/openapi.json".to_string()),
        ("GET", "/admin".to_string()),
    ] {
        let on_api = request_at(api, method, &path, &[], b"", IO_TIMEOUT)
            .await
            .expect("api answer");
        assert_eq!(on_api.status, 200, "{method} {path} on the API listener");
    }
    let body = json!({"channel": ch, "data": {"n": 1}}).to_string();
    let api_publish = request_at(
        api,
        "POST",
        "/api/publish",
        &[],
        body.as_bytes(),
        IO_TIMEOUT,
    )
    .await
    .expect("api publish");
    assert_eq!(api_publish.status, 201);
    // The public listener no longer answers backend endpoints...
    for (method, path) in [
        ("POST", format!("/pub/{ch}")),
        ("GET", "/metrics".to_string()),
        ("POST", "/api/publish".to_string()),
        ("POST", "/api/tokens".to_string()),
        ("GET", "/api/stats".to_string()),
        ("GET", "/api/openapi.json".to_string()),
        ("GET", "/admin".to_string()),
    ] {
        let r = s.req(method, &path).body("{}").send().await;
        r.assert_error(404, "not_found");
        assert!(r.text().contains("api_listen"), "{}", r.text());
    }
    // ... and the API listener answers no client endpoint.
    let sub = request_at(
        api,
        "GET",
        &format!("/sub/{ch}?timeout=0"),
        &[],
        b"",
        IO_TIMEOUT,
    )
    .await
    .expect("answer");
    assert_eq!(sub.status, 404);
}

// --- backend rights without an API key -----------------------------------------

#[tokio::test]
async fn without_a_key_only_direct_local_requests_get_backend_rights() {
    let s = Server::start().await;
    let ch = channel("keyless");
    let attempts: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "a reverse proxy (X-Forwarded-For)",
            vec![("X-Forwarded-For", "203.0.113.5".into())],
        ),
        (
            "a reverse proxy (Forwarded)",
            vec![("Forwarded", "for=203.0.113.5".into())],
        ),
        (
            "a reverse proxy (X-Real-IP)",
            vec![("X-Real-IP", "203.0.113.5".into())],
        ),
        (
            "DNS rebinding (Host is the attacker's name)",
            vec![("Host", "attacker.example:7070".into())],
        ),
        (
            "DNS rebinding with a matching Origin",
            vec![
                ("Host", "attacker.example".into()),
                ("Origin", "http://attacker.example".into()),
            ],
        ),
    ];
    for (what, headers) in &attempts {
        for (method, path, body) in [
            ("POST", format!("/pub/{ch}"), "hi".to_string()),
            (
                "POST",
                "/api/tokens".to_string(),
                json!({"user": "*", "channels": ["*"]}).to_string(),
            ),
            (
                "POST",
                "/api/users/u1/disconnect".to_string(),
                String::new(),
            ),
            ("GET", "/metrics".to_string(), String::new()),
        ] {
            let hs: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            let r = request_at(s.addr, method, &path, &hs, body.as_bytes(), IO_TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("{what} {method} {path}: {e}"));
            assert_eq!(
                r.status,
                403,
                "{what}: {method} {path} answered {}",
                r.text()
            );
            assert_eq!(r.json()["error"]["code"], "forbidden", "{what}");
            assert!(
                r.text().contains("api_key"),
                "the refusal must say a key is needed: {}",
                r.text()
            );
        }
    }
    // Direct local requests, to localhost or a loopback address, still work.
    for host in [
        "localhost",
        &format!("localhost:{}", s.addr.port()),
        "127.0.0.1",
        "[::1]:7070",
    ] {
        let r = request_at(
            s.addr,
            "POST",
            &format!("/pub/{ch}"),
            &[("Host".into(), host.to_string())],
            b"local",
            IO_TIMEOUT,
        )
        .await
        .expect("answer");
        assert_eq!(r.status, 201, "Host {host}: {}", r.text());
    }
    assert_eq!(
        s.info(&ch).await["messages"],
        4,
        "only the local publishes were stored"
    );
    assert!(
        s.process.stderr_text().contains("no API key configured"),
        "the start-up warning is missing"
    );
}

#[tokio::test]
async fn a_dual_stack_listener_sees_ipv4_clients_as_ipv4() {
    // IPv6 may be off on a host; then there is nothing to test.
    if std::net::TcpListener::bind("[::]:0").is_err() {
        eprintln!("no IPv6 on this host: skipped");
        return;
    }
    let s = Server::builder()
        .no_listen_flag()
        .env("HERALD_LISTEN", "[::]:0")
        .extra_config("\n[limits]\nmax_connections_per_ip = 1\n")
        .start()
        .await;
    let v4: SocketAddr = format!("127.0.0.1:{}", s.addr.port())
        .parse()
        .expect("addr");
    // Keyless backend calls from 127.0.0.1 arrive as ::ffff:127.0.0.1.
    let r = request_at(
        v4,
        "POST",
        "/pub/dual",
        &[("Host".into(), "127.0.0.1".into())],
        b"v4",
        IO_TIMEOUT,
    )
    .await
    .expect("answer");
    assert_eq!(
        r.status,
        201,
        "a local IPv4 caller on [::] was refused: {}",
        r.text()
    );
}

#[tokio::test]
async fn trusted_proxies_name_the_client_and_nothing_else_does() {
    let backend = HookBackend::start(|_| HookAnswer::Empty).await;
    let hooks = format!(
        "\n[hooks]\nurl = \"{}\"\nevents = [\"connect\"]\ntimeout = \"2s\"\non_error = \"allow\"\n",
        backend.url
    );
    let proxied = Server::builder()
        .set("trusted_proxies", "[\"127.0.0.1/32\"]")
        .extra_config(&format!("\n[limits]\nmax_connections_per_ip = 1\n{hooks}"))
        .start()
        .await;
    let ch = channel("proxy");
    let path = format!("/sub/{ch}");
    let a = [("X-Forwarded-For", "198.51.100.1")];
    let b = [("X-Forwarded-For", "198.51.100.2")];
    let mut first = proxied.ws_with(&path, &a).await;
    // The limit is per client address, not per proxy.
    assert_ws_refused(
        proxied.try_ws(&path, &a).await,
        429,
        "too_many_connections_from_ip",
        "second from .1",
    );
    let mut second = proxied.ws_with(&path, &b).await;
    let call = backend
        .wait_call("a connect hook naming the forwarded client", |c| {
            c.body["ip"] == "198.51.100.2"
        })
        .await;
    assert_eq!(call.body["event"], "connect");
    // A client cannot choose its address by prepending entries.
    let spoof = [("X-Forwarded-For", "198.51.100.1, 198.51.100.9")];
    let mut third = proxied.ws_with(&path, &spoof).await;
    let id = proxied.publish_text(&ch, "through the proxy").await;
    for ws in [&mut first, &mut second, &mut third] {
        assert_eq!(ws.next_json().await["id"], id.as_str());
    }
    // Keyless backend rights never come through a proxy.
    let r = proxied
        .post(&format!("/pub/{ch}"))
        .header("X-Forwarded-For", "127.0.0.1")
        .body("x")
        .send()
        .await;
    r.assert_error(403, "forbidden");

    // Without trusted_proxies the header is ignored: the TCP peer counts.
    let direct = Server::builder()
        .extra_config(&format!("\n[limits]\nmax_connections_per_ip = 1\n{hooks}"))
        .start()
        .await;
    let _one = direct.ws_with(&path, &a).await;
    assert_ws_refused(
        direct.try_ws(&path, &b).await,
        429,
        "too_many_connections_from_ip",
        "forged XFF",
    );
    let calls = backend.calls_for("connect");
    assert!(
        calls.iter().any(|c| c.body["ip"] == "127.0.0.1"),
        "{calls:?}"
    );
}

// --- promises the docs make ----------------------------------------------------

/// `"a\xFFb"`: a JSON string with invalid UTF-8 inside.
const BAD_UTF8: &[u8] = b"{\"text\": \"a\xff\xfeb\"}";

/// docs/protocol.md: payloads nest at most 64 levels.
const MAX_DEPTH: usize = 64;

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn every_publish_path_checks_the_whole_payload() {
    let s = Server::builder()
        .extra_config("\n[[namespace]]\nprefix = \"talk:\"\nclient_publish = true\n")
        .start()
        .await;
    let ch = channel("talk:utf8");
    let mut ws = s.ws(&format!("/sub/{ch}")).await;
    // POST /pub with a JSON content type.
    for body in [BAD_UTF8.to_vec(), nested(MAX_DEPTH + 1).into_bytes()] {
        s.post(&format!("/pub/{ch}"))
            .header("Content-Type", "application/json")
            .body(&body)
            .send()
            .await
            .assert_error(400, "invalid_json");
    }
    // /api/publish and /api/users/{id}/publish: the body is JSON itself.
    let mut api = b"{\"channel\": \"".to_vec();
    api.extend_from_slice(ch.as_bytes());
    api.extend_from_slice(b"\", \"data\": \"a\xff\"}");
    s.post("/api/publish")
        .body(&api)
        .send()
        .await
        .assert_error(400, "invalid_json");
    let deep = format!(
        "{{\"channel\": \"{ch}\", \"data\": {}}}",
        nested(MAX_DEPTH + 1)
    );
    s.post("/api/publish")
        .body(&deep)
        .send()
        .await
        .assert_error(400, "invalid_json");
    s.post("/api/users/u1/publish")
        .body(b"{\"data\": \"\xc3\"}")
        .send()
        .await
        .assert_error(400, "invalid_json");
    // The session protocol's publish.
    let (mut sess, _) = Session::connected(&s, Via::Ws, None).await;
    sess.send_raw(&format!(
        "{{\"id\": 77, \"publish\": {{\"channel\": \"{ch}\", \"data\": {}}}}}",
        nested(MAX_DEPTH + 1)
    ))
    .await;
    let reply = sess.reply(77).await;
    let code = reply["error"]["code"].as_str().unwrap_or_default();
    assert!(
        code == "invalid_json" || code == "invalid_command",
        "deep session publish: {reply}"
    );
    // At the limit, it is fine; nothing refused reached the subscriber.
    let ok = s.publish_json(&ch, &nested(MAX_DEPTH)).await;
    let got = ws.next_json().await;
    assert_eq!(
        got["id"],
        ok.as_str(),
        "a refused payload was delivered: {got}"
    );
    assert_eq!(s.info(&ch).await["messages"], 1);
}

#[tokio::test]
async fn a_session_batch_is_admitted_or_refused_whole() {
    let s = Server::builder()
        .extra_config("\n[[namespace]]\nprefix = \"talk:\"\nclient_publish = true\n\n[limits]\nclient_publish_rate = 1000\nclient_publish_burst = 1000\n")
        .start()
        .await;
    let ch = channel("talk:batch");
    let (sess, _) = Session::connected(&s, Via::Sse, None).await;
    let sid = sess.http_id().expect("an HTTP session").to_string();
    let batch = |n: usize| {
        Value::Array(
            (0..n)
                .map(|i| json!({"id": 100 + i, "publish": {"channel": ch, "data": {"n": i}}}))
                .collect(),
        )
        .to_string()
    };
    let refused = s
        .post(&format!("/connection/{sid}"))
        .header("Content-Type", "application/json")
        .body(batch(200))
        .send()
        .await;
    refused.assert_error(429, "limit_exceeded");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.info(&ch).await["messages"],
        0,
        "a refused batch ran some of its commands"
    );
    let accepted = s
        .post(&format!("/connection/{sid}"))
        .header("Content-Type", "application/json")
        .body(batch(20))
        .send()
        .await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    assert_eq!(accepted.json()["accepted"], 20);
    eventually(
        Duration::from_secs(5),
        "the 20 publishes stored",
        || async {
            match s.info(&ch).await["messages"].as_u64() {
                Some(20) => Ok(()),
                n => Err(format!("{n:?} messages")),
            }
        },
    )
    .await;
}

/// A new long-poll session, as soon as the address has a free session slot.
async fn opened_when_free(s: &Server, limit: Duration, what: &str) -> Resp {
    eventually(limit, what, || async {
        let r = s.post("/connection/longpoll").send().await;
        if r.status == 201 {
            Ok(r)
        } else {
            Err(format!("{} {}", r.status, r.text()))
        }
    })
    .await
}

#[tokio::test]
async fn an_abandoned_long_poll_session_ends_soon_after_its_last_poll() {
    // Two per address: sessions have their own pool of two, and the TCP
    // connection of one request may still be closing when the next opens.
    let s = Server::builder()
        .extra_config("\n[limits]\nmax_connections_per_ip = 2\n")
        .start()
        .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let open = s.post("/connection/longpoll").send().await;
        assert_eq!(open.status, 201, "{}", open.text());
        let sid = open.json()["session"]["id"]
            .as_str()
            .expect("session id")
            .to_string();
        let poll = s
            .get(&format!("/connection/longpoll/{sid}?timeout=1"))
            .send()
            .await;
        assert_eq!(poll.status, 200, "{}", poll.text());
        ids.push(sid);
    }
    let abandoned = Instant::now();
    // While they live they hold 127.0.0.1's two session slots.
    s.post("/connection/longpoll")
        .send()
        .await
        .assert_error(429, "too_many_connections_from_ip");
    // They end within the linger (10 s) plus a check interval, not minutes.
    let next = opened_when_free(&s, Duration::from_secs(14), "the abandoned sessions to end").await;
    let lived = abandoned.elapsed();
    assert!(
        lived >= Duration::from_secs(8),
        "ended after {lived:?}, before the linger"
    );
    // The second one ends a moment later (it was polled a moment later);
    // then both slots are free again. (No poll here: it would revive it.)
    let other = opened_when_free(&s, Duration::from_secs(5), "the second one to end").await;
    drop(other);
    for sid in &ids {
        s.get(&format!("/connection/longpoll/{sid}?timeout=0"))
            .send()
            .await
            .assert_error(404, "session_not_found");
    }
    drop(next);
}

#[tokio::test]
async fn http_sessions_show_one_public_client_id_never_the_secret() {
    let s = Server::builder()
        .extra_config("\n[[namespace]]\nprefix = \"room:\"\npresence = true\njoin_leave = true\n")
        .start()
        .await;
    let ch = channel("room:ids");
    let mut watcher = s.ws(&format!("/sub/{ch}")).await;
    let (mut sess, reply) = Session::connected(&s, Via::Sse, None).await;
    let secret = sess.http_id().expect("session id").to_string();
    let client = reply["client"].as_str().expect("client id").to_string();
    assert_ne!(
        client, secret,
        "the connect reply shows the secret session id"
    );
    sess.ok("subscribe", json!({"channel": ch})).await;
    // The watcher sees join notices (its own may come first): the
    // session's must carry the id its connect reply showed, never the secret.
    let join = ws_until(
        &mut watcher,
        "a join notice with the connect reply's client id",
        |v| {
            assert_ne!(
                v["join"]["client"],
                secret.as_str(),
                "a join notice shows the secret session id"
            );
            v["join"]["client"] == client.as_str()
        },
    )
    .await;
    assert!(join["join"].is_object());
    let presence = s.get(&format!("/api/presence/{ch}")).send().await.text();
    assert!(
        !presence.contains(&secret),
        "presence shows the secret: {presence}"
    );
}

#[tokio::test]
async fn every_error_answer_has_the_json_body() {
    let s = Server::start().await;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("garbage", b"BLAH\r\n\r\n".to_vec(), 400, "invalid_request"),
        (
            "a URI too long",
            format!(
                "GET /{} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                "a".repeat(70_000)
            )
            .into_bytes(),
            0,
            "",
        ),
        (
            "headers too large",
            format!(
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n",
                "b".repeat(40_000)
            )
            .into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "a bad query string",
            b"GET /connection/longpoll/x?timeout=%ZZ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
            0,
            "",
        ),
    ];
    for (what, bytes, status, code) in cases {
        let mut tcp = raw(s.addr, &bytes).await;
        let (answer, _, _) = read_until_closed(&mut tcp, Duration::from_secs(3)).await;
        let (got, body) = parse_answer(&answer).await;
        assert!(got >= 400, "{what}: {got}");
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{what}: {body}"
        );
        if status != 0 {
            assert_eq!(
                (got, body["error"]["code"].as_str()),
                (status, Some(code)),
                "{what}"
            );
        }
    }
    // One condition, one code: a body that is not JSON at all.
    for path in ["/api/tokens", "/api/publish", "/api/users/u1/publish"] {
        s.post(path)
            .body("not json")
            .send()
            .await
            .assert_error(400, "invalid_json");
    }
    s.post("/pub/x")
        .header("Content-Type", "application/json")
        .body("not json")
        .send()
        .await
        .assert_error(400, "invalid_json");
}

#[tokio::test]
async fn resume_points_are_judged_alike_on_every_transport() {
    let s = Server::start().await;
    let ch = channel("since");
    for path in [
        format!("/sub/{ch}?since="),
        format!("/sub/{ch}?since=&timeout=0"),
        format!("/sub/{ch}?last_event_id="),
    ] {
        s.get(&path).send().await.assert_error(400, "invalid_since");
    }
    let ids = s.publish_many(&ch, "m", 3).await;
    let future = "9999999999999-1";
    // Long-poll: the gap, then everything retained.
    let poll = s.poll(&format!("/sub/{ch}?since={future}&timeout=0")).await;
    assert_eq!(poll["gap"], true, "{poll}");
    let got: Vec<&str> = poll["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(
        got,
        ids.iter().map(String::as_str).collect::<Vec<_>>(),
        "long-poll"
    );
    // WebSocket: the gap marker, then the same messages.
    let mut ws = s.ws(&format!("/sub/{ch}?since={future}")).await;
    assert_gap_marker(&ws.next_json().await, &ch);
    for id in &ids {
        assert_eq!(ws.next_json().await["id"], id.as_str(), "WebSocket");
    }
    // SSE: the gap event, then the same messages.
    let mut sse = s.sse(&format!("/sub/{ch}?since={future}"), &[]).await;
    assert_eq!(sse.next_event().await.event, "gap");
    for id in &ids {
        assert_eq!(
            sse.next_event().await.id.as_deref(),
            Some(id.as_str()),
            "SSE"
        );
    }
}

#[tokio::test]
async fn probes_need_no_key_and_are_answered_over_the_connection_limit() {
    let s = Server::builder()
        .api_key("k-probe")
        .set("header_timeout", "\"2s\"")
        .extra_config("\n[limits]\nmax_connections_per_ip = 1\n")
        .start()
        .await;
    // One silent connection fills 127.0.0.1's quota.
    let _silent = TcpStream::connect(s.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let health = s.get("/health").no_auth().send().await;
    assert_eq!(
        (health.status, health.json()),
        (200, json!({"status": "ok"}))
    );
    let ready = s.get("/ready").no_auth().send().await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["status"], "ready");
    // A client endpoint on the same quota is refused.
    s.get("/sub/probe?timeout=0")
        .send()
        .await
        .assert_error(429, "too_many_connections_from_ip");
}
