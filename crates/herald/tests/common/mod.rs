//! The black-box harness: starts the real `herald` binary on port 0 and
//! talks to it with real clients: herald-bench's HTTP/1.1 client (the one
//! the load tool uses; it reads streaming bodies piece by piece) and
//! tokio-tungstenite for WebSockets. Deliberately malformed requests are
//! written raw by the tests that send them.
//!
//! Every wait is bounded: a read that does not complete in time fails the
//! test with a message naming what was awaited, and asynchronous server state
//! is checked with [`eventually`], never with a bare sleep.
//!
//! Engine parameterisation: when `HERALD_TEST_ENGINE` is set (for example
//! `redis://127.0.0.1:6390/0`) every server is started with `--engine` and
//! that value, so the same suite runs against every engine. Tests therefore
//! use fresh channel names ([`channel`]) and never rely on an empty store.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use herald_bench::{http, net};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long the binary may take to print its listening line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The default bound on a single read or request in these tests.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Names and small helpers
// ---------------------------------------------------------------------------

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A channel name no other test (or earlier run against a persistent engine)
/// uses: `prefix-PID-NANOS-N`.
pub fn channel(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// The engine URL the suite runs against, if not the default memory engine.
pub fn test_engine() -> Option<String> {
    std::env::var("HERALD_TEST_ENGINE")
        .ok()
        .filter(|s| !s.trim().is_empty())
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("not standard base64 ({e}): {text:?}"))
}

/// Awaits `fut` for at most `limit`, failing the test with `what` otherwise.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `check` every 25 ms until it returns `Ok`, for at most `limit`.
/// On timeout the test fails with `what` and the last `Err` seen.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            panic!("{what}: not true within {limit:?}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Asserts `v` is an envelope `{"channel","id","data"}` for `channel` and
/// returns its id.
pub fn envelope_id(v: &Value, channel: &str) -> String {
    assert_eq!(v["channel"], channel, "envelope channel in {v}");
    let id = v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("envelope without a string id: {v}"));
    assert!(!id.is_empty(), "empty id in {v}");
    assert!(v.get("data").is_some(), "envelope without data: {v}");
    id.to_string()
}

/// Asserts `v` is the envelope of a text message `text` with `id`.
pub fn assert_text_envelope(v: &Value, channel: &str, id: &str, text: &str) {
    assert_eq!(envelope_id(v, channel), id, "envelope id in {v}");
    assert_eq!(
        v["data"],
        Value::String(text.to_string()),
        "envelope data in {v}"
    );
    assert!(
        v.get("encoding").is_none(),
        "text envelope must carry no encoding: {v}"
    );
}

/// Asserts `v` is the gap marker `{"channel": c, "gap": true}`.
pub fn assert_gap_marker(v: &Value, channel: &str) {
    assert_eq!(v["channel"], channel, "gap marker channel in {v}");
    assert_eq!(v["gap"], true, "expected a gap marker, got {v}");
}

// ---------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------

/// How to start one server. The config file is written from `top` (top-level
/// keys, raw TOML values) followed by the standard `[history]` and
/// `[[namespace]] prefix = "short:"` sections the suite relies on.
pub struct ServerBuilder {
    top: Vec<(String, String)>,
    api_key: Option<String>,
    env: Vec<(String, String)>,
    listen_flag: bool,
    extra_config: String,
    stderr_closed: bool,
    args: Vec<String>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self {
            top: Vec::new(),
            api_key: None,
            env: Vec::new(),
            listen_flag: true,
            extra_config: String::new(),
            stderr_closed: false,
            args: Vec::new(),
        }
    }
}

impl ServerBuilder {
    /// A top-level config key with a raw TOML value, e.g. `("heartbeat", "\"1s\"")`.
    pub fn set(mut self, key: &str, toml_value: &str) -> Self {
        self.top.push((key.to_string(), toml_value.to_string()));
        self
    }

    /// Passes `--api-key KEY`.
    pub fn api_key(mut self, key: &str) -> Self {
        self.api_key = Some(key.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Extra command-line arguments after `serve` and the harness's own.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Omits `--listen` (for tests that set it through env or config).
    pub fn no_listen_flag(mut self) -> Self {
        self.listen_flag = false;
        self
    }

    /// Keeps the server's stderr unread so a test can close it with
    /// [`Process::close_stderr`], as when a supervisor's log collector goes
    /// away.
    pub fn stderr_closable(mut self) -> Self {
        self.stderr_closed = true;
        self
    }

    /// Raw TOML appended after the standard sections.
    pub fn extra_config(mut self, toml: &str) -> Self {
        self.extra_config.push_str(toml);
        self
    }

    fn config_text(&self) -> String {
        let mut text = String::new();
        for (k, v) in &self.top {
            text.push_str(&format!("{k} = {v}\n"));
        }
        // A stop without the drain (its 5 s + 10 s defaults would make
        // every shutdown test wait), unless a test asks for it:
        // tests/drain.rs does.
        for key in ["drain_delay", "drain_window"] {
            if !self.top.iter().any(|(k, _)| k == key) {
                text.push_str(&format!("{key} = \"0s\"\n"));
            }
        }
        text.push_str(
            "\n[history]\nsize = 100\nttl = \"10m\"\n\n\
             [[namespace]]\nprefix = \"short:\"\nhistory_size = 3\nhistory_ttl = \"10m\"\n\
             client_publish = false\n",
        );
        text.push_str(&self.extra_config);
        text
    }

    /// Spawns the process without waiting for it to listen.
    pub fn spawn(&self) -> Process {
        let dir = std::env::temp_dir();
        let config_path = dir.join(format!("{}.toml", channel("herald-test-config")));
        std::fs::write(&config_path, self.config_text()).expect("write test config");

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg("serve");
        if self.listen_flag {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.arg("--config").arg(&config_path);
        if let Some(key) = &self.api_key {
            cmd.args(["--api-key", key]);
        }
        if let Some(engine) = test_engine() {
            cmd.args(["--engine", &engine]);
        }
        cmd.args(&self.args);
        // The environment of the test run must not leak into the server:
        // every HERALD_ variable is a config key (docs/configuration.md)
        // but the log filter, kept for debugging a test.
        for (var, _) in std::env::vars_os() {
            if var
                .to_str()
                .is_some_and(|v| v.starts_with("HERALD_") && v != "HERALD_LOG")
            {
                cmd.env_remove(var);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the herald binary");

        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            // Nobody listens any more; keep draining the pipe.
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        let stderr_buf = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr_buf.clone();
        let mut stderr = child.stderr.take().expect("piped stderr");
        let mut held_stderr = None;
        let mut stderr_reader = None;
        if self.stderr_closed {
            held_stderr = Some(stderr);
        } else {
            stderr_reader = Some(std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut b) = sink.lock() {
                        b.extend_from_slice(&chunk[..n]);
                    }
                }
            }));
        }
        Process {
            child: Some(child),
            lines: Mutex::new(lines),
            stderr: stderr_buf,
            stderr_reader,
            held_stderr,
            config_path,
        }
    }

    /// Spawns the server and waits for `herald listening on http://ADDR`.
    pub async fn start(self) -> Server {
        let key = self.api_key.clone();
        let process = self.spawn();
        let addr = process.wait_listening();
        Server { process, addr, key }
    }
}

/// A spawned `herald` process. Killed on drop; its stderr is printed when
/// the test failed, to show what the server said.
pub struct Process {
    child: Option<Child>,
    /// Lines the server printed on stdout (a Mutex only to make `Server` Sync).
    lines: Mutex<mpsc::Receiver<String>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The thread copying stderr into `stderr`; joined once the process has
    /// exited, so that what it printed last is there to read.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    /// The unread stderr pipe of a `stderr_closable` server.
    held_stderr: Option<std::process::ChildStderr>,
    config_path: PathBuf,
}

impl Process {
    /// Waits for `herald listening on http://ADDR` and returns ADDR.
    pub fn wait_listening(&self) -> SocketAddr {
        self.wait_address("herald listening on http://")
    }

    /// After [`Process::wait_listening`]: waits for `herald api listening
    /// on http://ADDR` (printed with `api_listen`) and returns ADDR.
    pub fn wait_api_listening(&self) -> SocketAddr {
        self.wait_address("herald api listening on http://")
    }

    fn wait_address(&self, prefix: &str) -> SocketAddr {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = self
                .lines
                .lock()
                .map_err(|_| ())
                .and_then(|rx| rx.recv_timeout(left).map_err(|_| ()));
            match next {
                Ok(line) => {
                    if let Some(rest) = line.trim().strip_prefix(prefix) {
                        return rest
                            .trim()
                            .trim_end_matches('/')
                            .parse()
                            .unwrap_or_else(|e| panic!("bad listening line {line:?}: {e}"));
                    }
                }
                Err(_) => panic!(
                    "herald did not print '{prefix}ADDR' within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                    self.stderr_text()
                ),
            }
        }
    }

    pub fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Closes the read end of a `stderr_closable` server's stderr pipe.
    pub fn close_stderr(&mut self) {
        drop(
            self.held_stderr
                .take()
                .expect("server started with stderr_closable"),
        );
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .expect("process running")
    }

    /// Sends a signal by name (`TERM`, `INT`) with the system `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Arms a shell that sends `SIG{name}` the moment [`Armed::fire`] is
    /// called: a builtin `kill`, with no process start in between, so the
    /// signal can land microseconds after an event the test saw.
    pub fn arm_signal(&self, name: &str) -> Armed {
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("read _ && kill -{name} {}", self.pid()))
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        Armed { child }
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            let child = self.child.as_mut().expect("process running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                // The pipe is closed now: let the reader take its last bytes
                // (a test reading stderr right after the exit raced it).
                if let Some(reader) = self.stderr_reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "herald did not exit within {limit:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- herald stderr ----\n{}", self.stderr_text());
        }
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// A signal ready to be sent; see [`Process::arm_signal`].
pub struct Armed {
    child: Child,
}

impl Armed {
    pub fn fire(mut self) {
        use std::io::Write;
        let mut stdin = self.child.stdin.take().expect("sh stdin");
        stdin.write_all(b"go\n").expect("write to sh");
        drop(stdin);
        let status = self.child.wait().expect("wait for sh");
        assert!(status.success(), "kill from sh failed: {status:?}");
    }
}

/// A running server and the clients that talk to it.
pub struct Server {
    pub process: Process,
    pub addr: SocketAddr,
    /// The API key given on the command line; added to /pub and /api calls.
    pub key: Option<String>,
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// A server with the standard test config.
    pub async fn start() -> Server {
        ServerBuilder::default().start().await
    }

    pub fn req(&self, method: &str, path: &str) -> Req<'_> {
        let mut r = Req {
            server: self,
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        };
        if let Some(k) = &self.key {
            if path.starts_with("/pub") || path.starts_with("/api") {
                r.headers
                    .push(("Authorization".into(), format!("Bearer {k}")));
            }
        }
        r
    }

    pub fn get(&self, path: &str) -> Req<'_> {
        self.req("GET", path)
    }

    pub fn post(&self, path: &str) -> Req<'_> {
        self.req("POST", path)
    }

    pub fn delete(&self, path: &str) -> Req<'_> {
        self.req("DELETE", path)
    }

    /// POST /pub/{channel} with a content type; asserts 201 and returns the id.
    pub async fn publish(&self, channel: &str, content_type: &str, body: &[u8]) -> String {
        let resp = self
            .post(&format!("/pub/{channel}"))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await;
        assert_eq!(resp.status, 201, "publish to {channel}: {}", resp.text());
        let v = resp.json();
        assert_eq!(v["channel"], channel, "publish answer {v}");
        v["id"]
            .as_str()
            .unwrap_or_else(|| panic!("publish answer without id: {v}"))
            .to_string()
    }

    pub async fn publish_text(&self, channel: &str, text: &str) -> String {
        self.publish(channel, "text/plain; charset=utf-8", text.as_bytes())
            .await
    }

    pub async fn publish_json(&self, channel: &str, json: &str) -> String {
        self.publish(channel, "application/json", json.as_bytes())
            .await
    }

    /// Publishes `n` text messages `{prefix}{i}` (i from 1) and returns ids.
    pub async fn publish_many(&self, channel: &str, prefix: &str, n: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 1..=n {
            ids.push(self.publish_text(channel, &format!("{prefix}{i}")).await);
        }
        ids
    }

    /// GET /pub/{channel}, asserting 200.
    pub async fn info(&self, channel: &str) -> Value {
        let resp = self.get(&format!("/pub/{channel}")).send().await;
        assert_eq!(resp.status, 200, "GET /pub/{channel}: {}", resp.text());
        resp.json()
    }

    /// Waits (bounded) until GET /pub/{channel} reports `n` subscribers.
    pub async fn wait_subscribers(&self, channel: &str, n: u64, limit: Duration) {
        eventually(limit, &format!("{channel} has {n} subscribers"), || async {
            let v = self.info(channel).await;
            if v["subscribers"] == n {
                Ok(())
            } else {
                Err(v.to_string())
            }
        })
        .await
    }

    /// A long-poll GET (no Accept header) of `path`, asserting 200 and JSON.
    pub async fn poll(&self, path: &str) -> Value {
        let resp = self.get(path).send().await;
        assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
        resp.json()
    }

    pub async fn ws(&self, path: &str) -> Ws {
        self.ws_with(path, &[]).await
    }

    /// Opens a WebSocket on `path` with extra request headers.
    pub async fn ws_with(&self, path: &str, headers: &[(&str, &str)]) -> Ws {
        match self.try_ws(path, headers).await {
            Ok(ws) => ws,
            Err(e) => panic!("WebSocket upgrade of {path} failed: {e}"),
        }
    }

    /// Tries a WebSocket upgrade; on an HTTP refusal returns (status, body).
    pub async fn try_ws(&self, path: &str, headers: &[(&str, &str)]) -> Result<Ws, String> {
        let mut request = format!("ws://{}{}", self.addr, path)
            .into_client_request()
            .map_err(|e| e.to_string())?;
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_str(v).map_err(|e| e.to_string())?;
            request.headers_mut().insert(name, value);
        }
        let fut = tokio_tungstenite::connect_async(request);
        match within(IO_TIMEOUT, "WebSocket handshake", fut).await {
            Ok((stream, _)) => Ok(Ws { stream }),
            Err(e) => Err(ws_error_text(e)),
        }
    }

    /// A WebSocket whose TCP receive buffer is small, for slow-consumer tests.
    pub async fn ws_small_buffer(&self, path: &str) -> Ws {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let tcp = within(IO_TIMEOUT, "TCP connect", socket.connect(self.addr))
            .await
            .expect("connect");
        let url = format!("ws://{}{}", self.addr, path);
        let (stream, _) = within(
            IO_TIMEOUT,
            "WebSocket handshake",
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)),
        )
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade of {path} failed: {e}"));
        Ws { stream }
    }

    /// Opens an SSE stream (`Accept: text/event-stream`) and checks it is one.
    pub async fn sse(&self, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut r = self.get(path).header("Accept", "text/event-stream");
        for (k, v) in headers {
            r = r.header(k, v);
        }
        let http = r.stream().await;
        assert_eq!(http.status, 200, "SSE {path}: status {}", http.status);
        let ct = http.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("text/event-stream"),
            "SSE {path}: content-type {ct:?}"
        );
        Sse {
            http,
            buf: Vec::new(),
            items: VecDeque::new(),
            block: SseBlock::default(),
            ended: false,
        }
    }

    /// Opens an NDJSON stream (`Accept: application/x-ndjson`).
    pub async fn ndjson(&self, path: &str) -> Ndjson {
        let http = self
            .get(path)
            .header("Accept", "application/x-ndjson")
            .stream()
            .await;
        assert_eq!(http.status, 200, "NDJSON {path}: status {}", http.status);
        let ct = http.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("application/x-ndjson"),
            "NDJSON {path}: content-type {ct:?}"
        );
        Ndjson {
            http,
            buf: Vec::new(),
        }
    }

    /// Opens an iframe stream; `path` must carry `transport=iframe&callback=NAME`.
    pub async fn iframe(&self, path: &str, callback: &str) -> Iframe {
        let http = self.get(path).stream().await;
        assert_eq!(http.status, 200, "iframe {path}: status {}", http.status);
        let ct = http.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("text/html"),
            "iframe {path}: content-type {ct:?}"
        );
        Iframe {
            http,
            text: String::new(),
            pos: 0,
            callback: callback.to_string(),
        }
    }
}

fn ws_error_text(e: tokio_tungstenite::tungstenite::Error) -> String {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            format!("HTTP {} {}", resp.status().as_u16(), body)
        }
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------
// HTTP requests, through herald-bench's client (`herald_bench::http`)
// ---------------------------------------------------------------------------

/// One request being built.
pub struct Req<'a> {
    server: &'a Server,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req<'_> {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Removes any Authorization header the server handle added.
    pub fn no_auth(mut self) -> Self {
        self.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("authorization"));
        self
    }

    /// Replaces the Authorization header.
    pub fn bearer(self, key: &str) -> Self {
        self.no_auth()
            .header("Authorization", &format!("Bearer {key}"))
    }

    pub fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.body = body.as_ref().to_vec();
        self
    }

    /// Sends the request and returns the response headers with the body
    /// still to be read.
    pub async fn stream(self) -> HttpStream {
        let addr = self.server.addr;
        let what = format!("response headers of {} {}", self.method, self.path);
        within(
            IO_TIMEOUT,
            &what,
            send_request(addr, &self.method, &self.path, &self.headers, &self.body),
        )
        .await
        .unwrap_or_else(|e| panic!("{} {} failed: {e}", self.method, self.path))
    }

    /// Sends the request and reads the whole response within `limit`;
    /// connection errors and timeouts are returned, not panicked on.
    pub async fn try_send(self, limit: Duration) -> Result<Resp, String> {
        request_at(
            self.server.addr,
            &self.method,
            &self.path,
            &self.headers,
            &self.body,
            limit,
        )
        .await
    }

    /// Writes the request and returns the connection without reading any
    /// answer (for long-polls whose headers come only with the answer).
    pub async fn send_only(self) -> TcpStream {
        let addr = self.server.addr;
        let mut tcp = within(IO_TIMEOUT, "TCP connect", net::connect(addr, None))
            .await
            .expect("connect");
        let (host, headers) = split_host(addr, &self.headers);
        let wire = http::encode_request(&self.method, &host, &self.path, &headers, &self.body);
        tcp.write_all(&wire).await.expect("write request");
        tcp
    }

    /// Sends the request and reads the whole response.
    pub async fn send(self) -> Resp {
        let what = format!("whole response of {} {}", self.method, self.path);
        let mut http = self.stream().await;
        let body = within(Duration::from_secs(40), &what, http.read_to_end()).await;
        Resp {
            status: http.status,
            headers: http.headers.clone(),
            body,
        }
    }
}

/// One request to any address (e.g. the API listener), read whole within
/// `limit`.
pub async fn request_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
    limit: Duration,
) -> Result<Resp, String> {
    let fut = async {
        let mut http = send_request(addr, method, path, headers, body)
            .await
            .map_err(|e| e.to_string())?;
        let body = http.read_to_end().await;
        Ok(Resp {
            status: http.status,
            headers: http.headers.clone(),
            body,
        })
    };
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}

/// The `Host` to send and the other headers: a test that sets its own Host
/// (e.g. a forged one) sends only that one.
fn split_host(addr: SocketAddr, headers: &[(String, String)]) -> (String, Vec<(String, String)>) {
    let mut host = addr.to_string();
    let mut rest = Vec::with_capacity(headers.len() + 1);
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("host") {
            host = v.clone();
        } else {
            rest.push((k.clone(), v.clone()));
        }
    }
    (host, rest)
}

/// One request on a connection of its own (`Connection: close`), through
/// herald-bench's client; returns once the answer's head has arrived.
async fn send_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<HttpStream> {
    let (host, mut headers) = split_host(addr, headers);
    headers.insert(0, ("Connection".into(), "close".into()));
    let (reader, head, body) =
        http::open_request(addr, None, &host, method, path, &headers, body).await?;
    Ok(HttpStream {
        reader,
        body,
        done: false,
        status: head.status,
        headers: head
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect(),
    })
}

/// A response whose body is read incrementally (chunked, sized or to EOF).
pub struct HttpStream {
    reader: tokio::io::BufReader<TcpStream>,
    body: http::Body,
    done: bool,
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
}

impl HttpStream {
    pub fn header(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }

    /// The next piece of body as soon as any arrives; `None` at the end of
    /// the body, or when the connection ends or breaks first (a test that
    /// cares about a cut body checks what it got).
    pub async fn next_data(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        let mut piece = Vec::new();
        match self.body.next(&mut self.reader, &mut piece).await {
            Ok(true) => Some(piece),
            Ok(false) | Err(_) => {
                self.done = true;
                None
            }
        }
    }

    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        while let Some(d) = self.next_data().await {
            body.extend_from_slice(&d);
        }
        body
    }
}

/// A whole response.
pub struct Resp {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.text()))
    }

    /// Asserts an error answer: `status`, a JSON content type and a body
    /// `{"error":{"code": code, "message": "..."}}`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "expected {status} {code}, got {} {}",
            self.status,
            self.text()
        );
        let ct = self.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("application/json"),
            "error content-type {ct:?} (body {})",
            self.text()
        );
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "error body {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error body without a message: {v}"
        );
    }
}

// ---------------------------------------------------------------------------
// Transport clients
// ---------------------------------------------------------------------------

/// A WebSocket subscriber.
pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What a WebSocket read produced.
#[derive(Debug)]
pub enum WsEvent {
    Json(Value),
    Ping,
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame (EOF or error).
    End(String),
}

impl Ws {
    /// The next frame of interest (pongs and raw frames are skipped).
    pub async fn next_event(&mut self, limit: Duration) -> WsEvent {
        loop {
            let next = within(limit, "a WebSocket frame", self.stream.next()).await;
            match next {
                None => return WsEvent::End("stream ended".into()),
                Some(Err(e)) => return WsEvent::End(e.to_string()),
                Some(Ok(Message::Text(t))) => {
                    let v = serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("WS text frame is not JSON ({e}): {t:?}"));
                    return WsEvent::Json(v);
                }
                Some(Ok(Message::Binary(b))) => {
                    panic!("unexpected binary WS frame ({} bytes)", b.len())
                }
                Some(Ok(Message::Ping(_))) => return WsEvent::Ping,
                Some(Ok(Message::Pong(_))) | Some(Ok(Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => {
                    return WsEvent::Close(
                        frame.map(|f| (u16::from(f.code), f.reason.as_str().to_string())),
                    )
                }
            }
        }
    }

    /// The next JSON text frame, skipping pings; fails on close or end.
    pub async fn next_json(&mut self) -> Value {
        loop {
            match self.next_event(IO_TIMEOUT).await {
                WsEvent::Json(v) => return v,
                WsEvent::Ping => continue,
                other => panic!("expected a WS text frame, got {other:?}"),
            }
        }
    }

    /// Reads until a close frame arrives and returns its (code, reason);
    /// fails if a data frame or the end of the connection comes first.
    pub async fn expect_close(&mut self, limit: Duration) -> (u16, String) {
        loop {
            match self.next_event(limit).await {
                WsEvent::Ping => continue,
                WsEvent::Close(Some(cr)) => return cr,
                other => panic!("expected a WS close frame, got {other:?}"),
            }
        }
    }

    /// Asserts nothing but pings arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_)))) | Ok(Some(Ok(Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected no WS frame, got {other:?}"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        let _ = self.stream.send(Message::binary(bytes.to_vec())).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        let _ = self.stream.send(Message::text(text)).await;
    }
}

/// One Server-Sent Events item, as a browser's EventSource parser sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum SseItem {
    Comment(String),
    Retry(String),
    Event(SseEvent),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// `event:` value, or "message".
    pub event: String,
    /// The `id:` line of this event block, if any.
    pub id: Option<String>,
    /// `data:` lines joined with "\n".
    pub data: String,
}

#[derive(Default)]
struct SseBlock {
    event: Option<String>,
    id: Option<String>,
    data: Vec<String>,
}

pub struct Sse {
    pub http: HttpStream,
    buf: Vec<u8>,
    items: VecDeque<SseItem>,
    block: SseBlock,
    ended: bool,
}

impl Sse {
    fn parse_line(&mut self, line: &str) {
        if line.is_empty() {
            let block = std::mem::take(&mut self.block);
            if !block.data.is_empty() {
                self.items.push_back(SseItem::Event(SseEvent {
                    event: block.event.unwrap_or_else(|| "message".into()),
                    id: block.id,
                    data: block.data.join("\n"),
                }));
            }
            return;
        }
        if let Some(c) = line.strip_prefix(':') {
            self.items.push_back(SseItem::Comment(c.to_string()));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.block.event = Some(value.to_string()),
            "id" => self.block.id = Some(value.to_string()),
            "data" => self.block.data.push(value.to_string()),
            "retry" => self.items.push_back(SseItem::Retry(value.to_string())),
            _ => {}
        }
    }

    /// The next item; `None` when the stream has ended.
    pub async fn next_item(&mut self, limit: Duration) -> Option<SseItem> {
        within(limit, "an SSE item", async {
            loop {
                if let Some(item) = self.items.pop_front() {
                    return Some(item);
                }
                if self.ended {
                    return None;
                }
                while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                    let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    let line = String::from_utf8(line).expect("SSE stream is UTF-8");
                    self.parse_line(&line);
                }
                if !self.items.is_empty() {
                    continue;
                }
                match self.http.next_data().await {
                    Some(d) => self.buf.extend_from_slice(&d),
                    None => self.ended = true,
                }
            }
        })
        .await
    }

    /// The next event, skipping comments and retry lines; fails at the end.
    pub async fn next_event(&mut self) -> SseEvent {
        loop {
            match self.next_item(IO_TIMEOUT).await {
                Some(SseItem::Event(e)) => return e,
                Some(_) => continue,
                None => panic!("SSE stream ended while an event was expected"),
            }
        }
    }

    /// Asserts the stream ends (skipping comments) within `limit`.
    pub async fn expect_end(&mut self, limit: Duration) {
        loop {
            match self.next_item(limit).await {
                None => return,
                Some(SseItem::Event(e)) => panic!("expected the SSE stream to end, got {e:?}"),
                Some(_) => continue,
            }
        }
    }
}

/// Asserts an SSE event carries the message `id` with `data`.
pub fn assert_sse_message(e: &SseEvent, id: &str, data: &str) {
    assert_eq!(e.event, "message", "SSE event type of {e:?}");
    assert_eq!(e.id.as_deref(), Some(id), "SSE id of {e:?}");
    assert_eq!(e.data, data, "SSE data of {e:?}");
}

pub struct Ndjson {
    pub http: HttpStream,
    buf: Vec<u8>,
}

impl Ndjson {
    pub fn new(http: HttpStream) -> Self {
        Self {
            http,
            buf: Vec::new(),
        }
    }

    /// The next line (without "\n"); `None` when the stream has ended.
    pub async fn next_line(&mut self, limit: Duration) -> Option<String> {
        within(limit, "an NDJSON line", async {
            loop {
                if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                    let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    return Some(String::from_utf8(line).expect("NDJSON is UTF-8"));
                }
                match self.http.next_data().await {
                    Some(d) => self.buf.extend_from_slice(&d),
                    None => {
                        assert!(
                            self.buf.iter().all(|b| b.is_ascii_whitespace()),
                            "NDJSON stream ended inside a line: {:?}",
                            String::from_utf8_lossy(&self.buf)
                        );
                        return None;
                    }
                }
            }
        })
        .await
    }

    /// The next non-empty line as JSON; fails at the end.
    pub async fn next_json(&mut self) -> Value {
        loop {
            match self.next_line(IO_TIMEOUT).await {
                Some(l) if l.trim().is_empty() => continue,
                Some(l) => {
                    return serde_json::from_str(&l)
                        .unwrap_or_else(|e| panic!("NDJSON line is not JSON ({e}): {l:?}"))
                }
                None => panic!("NDJSON stream ended while a line was expected"),
            }
        }
    }

    /// Asserts the stream ends (skipping heartbeat lines) within `limit`.
    pub async fn expect_end(&mut self, limit: Duration) {
        loop {
            match self.next_line(limit).await {
                None => return,
                Some(l) if l.trim().is_empty() => continue,
                Some(l) => panic!("expected the NDJSON stream to end, got {l:?}"),
            }
        }
    }
}

pub struct Iframe {
    pub http: HttpStream,
    /// Everything received so far.
    pub text: String,
    pos: usize,
    callback: String,
}

impl Iframe {
    pub fn new(http: HttpStream, callback: &str) -> Self {
        Self {
            http,
            text: String::new(),
            pos: 0,
            callback: callback.to_string(),
        }
    }

    /// Reads until at least `n` bytes of document have arrived.
    pub async fn read_at_least(&mut self, n: usize, limit: Duration) {
        within(limit, &format!("{n} bytes of iframe document"), async {
            while self.text.len() < n {
                match self.http.next_data().await {
                    Some(d) => self
                        .text
                        .push_str(&String::from_utf8(d).expect("UTF-8 html")),
                    None => panic!(
                        "iframe document ended after {} bytes: {:?}",
                        self.text.len(),
                        self.text
                    ),
                }
            }
        })
        .await
    }

    /// The argument of the next `<script>parent.NAME(...);</script>` call.
    pub async fn next_call(&mut self) -> Value {
        let open = format!("<script>parent.{}(", self.callback);
        let close = ");</script>";
        within(IO_TIMEOUT, "an iframe script chunk", async {
            loop {
                if let Some(start) = self.text[self.pos..].find(&open) {
                    let arg_start = self.pos + start + open.len();
                    if let Some(end) = self.text[arg_start..].find(close) {
                        let arg = self.text[arg_start..arg_start + end].to_string();
                        self.pos = arg_start + end + close.len();
                        return serde_json::from_str(&arg).unwrap_or_else(|e| {
                            panic!("iframe call argument is not JSON ({e}): {arg:?}")
                        });
                    }
                }
                match self.http.next_data().await {
                    Some(d) => self
                        .text
                        .push_str(&String::from_utf8(d).expect("UTF-8 html")),
                    None => panic!("iframe document ended; got {:?}", &self.text[self.pos..]),
                }
            }
        })
        .await
    }
}

/// Splits a JSONP body `NAME({...});` into the JSON argument.
pub fn jsonp_arg(body: &str, callback: &str) -> Value {
    let t = body.trim();
    let inner = t
        .strip_prefix(&format!("{callback}("))
        .and_then(|r| r.strip_suffix(");"))
        .unwrap_or_else(|| panic!("not a JSONP call of {callback}: {t:?}"));
    serde_json::from_str(inner)
        .unwrap_or_else(|e| panic!("JSONP argument not JSON ({e}): {inner:?}"))
}
