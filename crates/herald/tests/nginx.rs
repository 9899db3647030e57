//! Herald behind a real nginx running the shipped configuration,
//! `deploy/nginx/herald.conf` (docs/deployment.md, "nginx"): every
//! transport through the proxy, the client's address through
//! `trusted_proxies`, and the same-origin check with the host the browser
//! used, not the one nginx sends.
//!
//! Each test starts its own nginx (Debian's `nginx`; `scripts/test.sh`
//! installs it) on a free loopback port in front of its own `herald`. The
//! shipped file is used as it is, with two lines replaced: its `listen` and
//! its upstream `server`. The surrounding `nginx.conf` keeps what Debian's
//! default one sets that could hold a stream back (`gzip on` for every
//! type), so the snippet must undo it by itself. Set `HERALD_NGINX` to use
//! another nginx binary.

mod common;
mod support_security;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;
use support_security::*;

/// The shipped snippet, and the two lines the tests replace.
const SNIPPET: &str = include_str!("../../../deploy/nginx/herald.conf");
const LISTEN_LINE: &str = "    listen 80;";
const UPSTREAM_LINE: &str = "    server 127.0.0.1:7070;";

/// A running nginx, killed (and its directory removed) on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

fn nginx_binary() -> PathBuf {
    if let Ok(path) = std::env::var("HERALD_NGINX") {
        return PathBuf::from(path);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "these tests need nginx (Debian: apt-get install nginx; \
                 scripts/test.sh installs it) or HERALD_NGINX=/path/to/nginx"
            )
        })
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl Nginx {
    /// nginx on a free loopback port in front of Herald at `upstream`.
    async fn start(upstream: SocketAddr) -> Nginx {
        let dir = std::env::temp_dir().join(channel("herald-nginx"));
        std::fs::create_dir_all(&dir).expect("nginx directory");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        for line in [LISTEN_LINE, UPSTREAM_LINE] {
            assert_eq!(
                SNIPPET.matches(line).count(),
                1,
                "deploy/nginx/herald.conf must have the line {line:?} once"
            );
        }
        let snippet = SNIPPET
            .replace(LISTEN_LINE, &format!("    listen {addr};"))
            .replace(UPSTREAM_LINE, &format!("    server {upstream};"));
        std::fs::write(dir.join("herald.conf"), snippet).expect("write the snippet");
        let d = dir.display();
        let main = format!(
            "daemon off;\n\
             worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n\
             \x20   access_log {d}/access.log;\n\
             \x20   client_body_temp_path {d}/body;\n\
             \x20   proxy_temp_path {d}/proxy;\n\
             \x20   fastcgi_temp_path {d}/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/uwsgi;\n\
             \x20   scgi_temp_path {d}/scgi;\n\
             \x20   default_type application/octet-stream;\n\
             \x20   # As in Debian's nginx.conf, and worse: compress everything.\n\
             \x20   sendfile on;\n\
             \x20   tcp_nopush on;\n\
             \x20   keepalive_timeout 65;\n\
             \x20   gzip on;\n\
             \x20   gzip_min_length 1;\n\
             \x20   gzip_types *;\n\
             \x20   include {d}/herald.conf;\n\
             }}\n"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, main).expect("write nginx.conf");
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx { child, dir, addr };
        eventually(Duration::from_secs(10), "nginx accepts connections", || {
            let exited = nginx.child.try_wait().ok().flatten();
            let log = nginx.error_log();
            async move {
                if let Some(status) = exited {
                    panic!("nginx exited ({status}) at start:\n{log}");
                }
                tokio::net::TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        nginx
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker and exits. A SIGKILL would
        // leave the worker running with the listening socket.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if std::thread::panicking() {
            eprintln!(
                "nginx error.log:\n{}\nnginx access.log:\n{}",
                self.error_log(),
                self.access_log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const KEY: &str = "nginx-suite-api-key";

/// Herald trusting the local nginx, with nginx in front of it. The returned
/// `Server`'s address is nginx's, so every client helper goes through the
/// proxy; `direct` is Herald's own address, the backend's way in.
async fn proxied(extra: &str) -> (Server, Nginx, SocketAddr) {
    let mut server = Server::builder()
        .api_key(KEY)
        .set("trusted_proxies", "[\"127.0.0.1\"]")
        .extra_config(extra)
        .start()
        .await;
    let nginx = Nginx::start(server.addr).await;
    let direct = server.addr;
    server.addr = nginx.addr;
    (server, nginx, direct)
}

/// A request straight to Herald (not through nginx).
async fn direct_request(
    direct: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut all: Vec<(String, String)> = vec![("Authorization".into(), format!("Bearer {KEY}"))];
    all.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    request_at(direct, method, path, &all, body, IO_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} straight to Herald: {e}"))
}

/// Publishes `text` to Herald's backend API directly; returns the id.
async fn publish_direct(direct: SocketAddr, channel: &str, text: &str) -> String {
    let path = format!("/pub/{channel}");
    let headers = [("Content-Type", "text/plain; charset=utf-8")];
    let r = direct_request(direct, "POST", &path, &headers, text.as_bytes()).await;
    assert_eq!(r.status, 201, "publish to {channel}: {}", r.text());
    r.json()["id"].as_str().expect("publish id").to_string()
}

#[tokio::test]
async fn every_transport_works_through_nginx() {
    let (s, _nginx, direct) = proxied("").await;
    let ch = channel("nginx");
    let sub = format!("/sub/{ch}");

    let mut ws = s.ws(&sub).await;
    let mut session_ws = Session::open(&s, Via::Ws, "", &[]).await;
    session_ws.ok("connect", json!({})).await;
    session_ws.ok("subscribe", json!({ "channel": ch })).await;
    // Each stream asks for gzip, which the surrounding nginx.conf applies
    // to every type: the snippet must keep streams uncompressed (the test
    // client would not understand a compressed body).
    let gzip = [("Accept-Encoding", "gzip")];
    let mut sse = s.sse(&sub, &gzip).await;
    let mut session_sse = Session::open(&s, Via::Sse, "", &gzip).await;
    session_sse.ok("connect", json!({})).await;
    session_sse.ok("subscribe", json!({ "channel": ch })).await;
    let mut nd = ndjson_with(&s, &sub, &gzip).await;
    let iframe = format!("{sub}?transport=iframe&callback=cb");
    let http = s
        .get(&iframe)
        .header("Accept-Encoding", "gzip")
        .stream()
        .await;
    assert_eq!(http.status, 200, "iframe through nginx");
    assert_eq!(http.header("content-encoding"), None, "a compressed iframe");
    let mut ifr = Iframe::new(http, "cb");
    // The forever-frame's padding comes through at once: nothing buffers.
    ifr.read_at_least(1024, IO_TIMEOUT).await;
    s.wait_subscribers(&ch, 6, IO_TIMEOUT).await;

    // A long-poll waiting through nginx, answered by the next publish.
    let poll = s.get(&format!("{sub}?timeout=20")).send();
    let publish = async {
        s.wait_subscribers(&ch, 7, IO_TIMEOUT).await;
        publish_direct(direct, &ch, "through nginx").await
    };
    let (polled, id) = within(IO_TIMEOUT * 2, "long-poll through nginx", async {
        tokio::join!(poll, publish)
    })
    .await;
    assert_eq!(polled.status, 200, "long-poll: {}", polled.text());
    let v = polled.json();
    assert_text_envelope(&v["messages"][0], &ch, &id, "through nginx");

    assert_text_envelope(&ws.next_json().await, &ch, &id, "through nginx");
    let data = json!("through nginx");
    session_ws
        .push_until("session WS message", |v| is_message(v, &ch, &data))
        .await;
    session_sse
        .push_until("session SSE message", |v| is_message(v, &ch, &data))
        .await;
    assert_sse_message(&sse_message(&mut sse, &id).await, &id, "through nginx");
    assert_text_envelope(&nd.next_json().await, &ch, &id, "through nginx");
    assert_text_envelope(&ifr.next_call().await, &ch, &id, "through nginx");

    // JSONP: a poll from history, wrapped in the callback.
    let second = publish_direct(direct, &ch, "second").await;
    let r = s
        .get(&format!("{sub}?since={id}&callback=got"))
        .header("Accept-Encoding", "gzip")
        .send()
        .await;
    assert_eq!(r.status, 200, "JSONP: {}", r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/javascript"), "{ct:?}");
    let v = jsonp_arg(&r.text(), "got");
    assert_text_envelope(&v["messages"][0], &ch, &second, "second");
    // Not compressed either (the snippet turns gzip off everywhere).
    assert_eq!(r.header("content-encoding"), None);
}

#[tokio::test]
async fn herald_sees_the_client_address_nginx_saw() {
    let backend = HookBackend::start(|_| HookAnswer::Empty).await;
    let hooks = hooks(&backend.url, &["connect"], "allow", "2s");
    let (s, _nginx, _direct) = proxied(&hooks).await;
    let ch = channel("nginx-ip");
    // From 127.0.0.2, with headers a client could forge: nginx overwrites
    // Forwarded and appends to X-Forwarded-For, and Herald reads from the
    // right, so neither forged address is believed.
    let forged = [
        ("X-Forwarded-For", "198.51.100.9"),
        ("Forwarded", "for=198.51.100.7"),
    ];
    let _ws = ws_from(&s, "127.0.0.2", &format!("/sub/{ch}"), &forged)
        .await
        .unwrap_or_else(|e| panic!("WebSocket through nginx from 127.0.0.2: {e}"));
    let call = backend
        .wait_call("a connect hook for the client behind nginx", |c| {
            c.body["event"] == "connect"
        })
        .await;
    assert_eq!(call.body["ip"], "127.0.0.2", "{:?}", call.body);
}

#[tokio::test]
async fn the_browsers_origin_is_same_origin_through_nginx() {
    let (s, nginx, direct) = proxied("").await;
    let ch = channel("nginx-origin");
    let sub = format!("/sub/{ch}");
    // What a page served from http://127.0.0.1:<nginx port> sends. nginx
    // passes `Host: 127.0.0.1` (no port) and the Host the browser sent as
    // X-Forwarded-Host.
    let page = format!("http://{}", nginx.addr);
    let o = [("Origin", page.as_str())];
    let mut ws = s
        .try_ws(&sub, &o)
        .await
        .unwrap_or_else(|e| panic!("WebSocket with Origin {page} through nginx: {e}"));
    let mut session = Session::open(&s, Via::Ws, "", &o).await;
    session.ok("connect", json!({})).await;
    let _sse = s.sse(&sub, &o).await;
    let r = s
        .get(&format!("{sub}?timeout=0"))
        .header("Origin", &page)
        .send()
        .await;
    assert_eq!(r.status, 200, "long-poll with Origin {page}: {}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some(page.as_str())
    );
    let id = publish_direct(direct, &ch, "same origin").await;
    assert_text_envelope(&ws.next_json().await, &ch, &id, "same origin");

    // The same Origin straight to Herald, whose Host is its own address:
    // another origin, refused.
    let path = format!("{sub}?timeout=0");
    let r = direct_request(direct, "GET", &path, &o, b"").await;
    r.assert_error(403, "origin_not_allowed");

    // A client cannot name the host itself: nginx replaces X-Forwarded-Host
    // and drops Forwarded, so a foreign page stays foreign.
    let evil = [
        ("Origin", "http://evil.example"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "for=127.0.0.1;host=evil.example"),
    ];
    let (status, body) = ws_refusal(s.try_ws(&sub, &evil).await, "evil through nginx");
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "origin_not_allowed", "{body}");
}

fn with_headers<'a>(mut r: Req<'a>, headers: &[(&str, &str)]) -> Req<'a> {
    for (k, v) in headers {
        r = r.header(k, v);
    }
    r
}

#[tokio::test]
async fn forwarded_host_counts_only_from_a_trusted_proxy() {
    // No nginx here: the test plays the proxy, and then a client.
    let origin = [
        ("Origin", "https://push.example"),
        ("X-Forwarded-For", "198.51.100.1"),
        ("X-Forwarded-Host", "push.example"),
    ];
    let trusting = Server::builder()
        .set("trusted_proxies", "[\"127.0.0.1\"]")
        .start()
        .await;
    let untrusting = Server::start().await;
    let ch = channel("xfh");
    let path = format!("/sub/{ch}?timeout=0");
    let r = answer(
        with_headers(trusting.get(&path), &origin),
        "from a trusted proxy",
    )
    .await;
    assert_eq!(r.status, 200, "from a trusted proxy: {}", r.text());
    answer(
        with_headers(untrusting.get(&path), &origin),
        "from a client",
    )
    .await
    .assert_error(403, "origin_not_allowed");
    // A trusted peer that names no client is no proxy: its X-Forwarded-Host
    // is not believed either.
    let r = answer(
        trusting
            .get(&path)
            .header("Origin", "https://push.example")
            .header("X-Forwarded-Host", "push.example"),
        "X-Forwarded-Host alone",
    )
    .await;
    r.assert_error(403, "origin_not_allowed");
}
