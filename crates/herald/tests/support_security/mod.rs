//! Helpers for the access suites (`tests/security.rs`, `users.rs`,
//! `presence.rs`, `hooks.rs`, `connection_limits.rs`), on top of the shared
//! harness in `common`:
//!
//! - tokens: HS256 tokens signed here, `alg: none` and forged ones, and
//!   RS256 / ES256 tokens from key pairs made with `openssl` at test time
//!   (test-only keys in a temporary directory, made once per test process);
//! - a hook backend: a small HTTP server in the test process that records
//!   every call and answers what the test says, plus "down" backends;
//! - a session-protocol client over WebSocket or SSE + POSTs;
//! - WebSocket connections from another loopback source address
//!   (127.0.0.2) and refusal parsing.
//!
//! Every wait is bounded, as in `common`.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::MaybeTlsStream;

use crate::common::{
    eventually, within, Ndjson, Req, Server, Sse, SseEvent, SseItem, Ws, WsEvent, IO_TIMEOUT,
};

// ---------------------------------------------------------------------------
// Settings and small helpers shared by the suites
// ---------------------------------------------------------------------------

/// A private namespace: subscribing needs a token granting the channel.
pub const PRIVATE_NS: &str =
    "\n[[namespace]]\nprefix = \"priv:\"\nprivate = true\npresence = true\n\
     \n[[namespace]]\nprefix = \"privchat:\"\nprivate = true\nclient_publish = true\n";
/// Personal channels with a bounded offline queue.
pub const USER_NS: &str =
    "\n[[namespace]]\nprefix = \"user:\"\nhistory_size = 10\nhistory_ttl = \"10m\"\n";
/// Presence with join/leave notices.
pub const ROOM_NS: &str =
    "\n[[namespace]]\nprefix = \"room:\"\npresence = true\njoin_leave = true\n";
/// Clients may publish through the session.
pub const CHAT_NS: &str = "\n[[namespace]]\nprefix = \"chat:\"\nclient_publish = true\n";

pub const WAIT: Duration = Duration::from_secs(5);

pub fn auth(leeway: &str) -> String {
    format!("\n[auth]\nhmac_secret = \"{SECRET}\"\nleeway = \"{leeway}\"\n")
}

pub fn hooks(url: &str, events: &[&str], on_error: &str, timeout: &str) -> String {
    format!(
        "\n[hooks]\nurl = \"{url}\"\nevents = {}\ntimeout = \"{timeout}\"\non_error = \"{on_error}\"\n",
        json!(events)
    )
}

/// An HMAC token of another algorithm, signed with [`SECRET`].
pub fn hs_alg(claims: &Value, alg: jsonwebtoken::Algorithm) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

pub fn token_with_info(sub: &str, channels: &[&str], info: Value) -> String {
    let mut c = claims(Some(sub), channels, 3600);
    c["info"] = info;
    hs256(&c)
}

pub fn sse_req<'a>(s: &'a Server, path: &str) -> Req<'a> {
    s.get(path).header("Accept", "text/event-stream")
}

pub async fn ndjson_with(s: &Server, path: &str, headers: &[(&str, &str)]) -> Ndjson {
    let mut r = s.get(path).header("Accept", "application/x-ndjson");
    for (k, v) in headers {
        r = r.header(k, v);
    }
    let http = r.stream().await;
    assert_eq!(http.status, 200, "NDJSON {path}");
    Ndjson::new(http)
}

pub async fn sse_message(sse: &mut Sse, id: &str) -> SseEvent {
    let want = id.to_string();
    sse_until(sse, &format!("SSE message {id}"), move |e| {
        e.event == "message" && e.id.as_deref() == Some(want.as_str())
    })
    .await
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

/// The HS256 secret configured in `[auth] hmac_secret` by these tests.
pub const SECRET: &str = "herald-security-suite-secret-0123456789";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Claims for a token of `sub` (None: no user) granting `channels`,
/// expiring `ttl` seconds from now.
pub fn claims(sub: Option<&str>, channels: &[&str], ttl: i64) -> Value {
    let mut c = json!({
        "exp": (now() as i64 + ttl).max(0),
        "channels": channels,
    });
    if let Some(sub) = sub {
        c["sub"] = json!(sub);
    }
    c
}

/// An HS256 token over `claims` with `secret`.
pub fn hs256_with(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign HS256")
}

/// An HS256 token signed with [`SECRET`].
pub fn hs256(claims: &Value) -> String {
    hs256_with(claims, SECRET.as_bytes())
}

/// A valid HS256 token for `sub` granting `channels`, one hour long.
pub fn token(sub: &str, channels: &[&str]) -> String {
    hs256(&claims(Some(sub), channels, 3600))
}

/// `{"alg":"none"}` with the claims and an empty signature.
pub fn alg_none(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    )
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

pub fn cookie(token: &str) -> String {
    format!("herald_token={token}")
}

/// Test-only key pairs, made with `openssl` once per test process.
pub struct Keys {
    pub dir: PathBuf,
    /// RSA key whose public half is listed in `public_keys`.
    pub rsa_private: Vec<u8>,
    pub rsa_public_path: PathBuf,
    pub rsa_public_pem: Vec<u8>,
    /// P-256 key whose public half is listed in `public_keys`.
    pub ec_private: Vec<u8>,
    pub ec_public_path: PathBuf,
    /// An RSA key configured nowhere.
    pub rsa_stranger_private: Vec<u8>,
    /// The JWKS file: RSA key "rsa-k1", RSA key "rsa-k0" and P-256 key "ec-e1".
    pub jwks_path: PathBuf,
    pub jwks_rsa_k1_private: Vec<u8>,
    pub jwks_ec_e1_private: Vec<u8>,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (the security suite makes its test keys with it)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

fn rsa_pair(dir: &Path, name: &str) -> (Vec<u8>, PathBuf) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub.pem"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        path_str(&private),
    ]);
    openssl(&[
        "pkey",
        "-in",
        path_str(&private),
        "-pubout",
        "-out",
        path_str(&public),
    ]);
    (std::fs::read(&private).expect("read key"), public)
}

fn ec_pair(dir: &Path, name: &str) -> (Vec<u8>, PathBuf) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub.pem"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path_str(&private),
    ]);
    openssl(&[
        "pkey",
        "-in",
        path_str(&private),
        "-pubout",
        "-out",
        path_str(&public),
    ]);
    (std::fs::read(&private).expect("read key"), public)
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    let clean: String = hex.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..clean.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&clean[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The JWK of an RSA public key (modulus read with openssl, e = 65537).
fn rsa_jwk(public: &Path, kid: &str) -> Value {
    let out = String::from_utf8(openssl(&[
        "rsa",
        "-pubin",
        "-in",
        path_str(public),
        "-noout",
        "-modulus",
    ]))
    .expect("utf-8");
    let hex = out.trim().strip_prefix("Modulus=").expect("Modulus= line");
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
           "n": b64url(&hex_bytes(hex)), "e": "AQAB"})
}

/// The JWK of a P-256 public key (the uncompressed point from openssl's text).
fn ec_jwk(public: &Path, kid: &str) -> Value {
    let text = String::from_utf8(openssl(&[
        "pkey",
        "-pubin",
        "-in",
        path_str(public),
        "-noout",
        "-text",
    ]))
    .expect("utf-8");
    let after = text.split("pub:").nth(1).expect("pub: section");
    let hex: String = after
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .collect();
    let point = hex_bytes(&hex);
    assert_eq!(point.len(), 65, "uncompressed P-256 point: {text}");
    assert_eq!(point[0], 4);
    json!({"kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256",
           "x": b64url(&point[1..33]), "y": b64url(&point[33..])})
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("herald-security-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("key dir");
        let (rsa_private, rsa_public_path) = rsa_pair(&dir, "rsa-listed");
        let (ec_private, ec_public_path) = ec_pair(&dir, "ec-listed");
        let (rsa_stranger_private, _) = rsa_pair(&dir, "rsa-stranger");
        let (jwks_rsa_k1_private, k1_public) = rsa_pair(&dir, "rsa-k1");
        let (_, k0_public) = rsa_pair(&dir, "rsa-k0");
        let (jwks_ec_e1_private, e1_public) = ec_pair(&dir, "ec-e1");
        let jwks = json!({"keys": [
            rsa_jwk(&k0_public, "rsa-k0"),
            rsa_jwk(&k1_public, "rsa-k1"),
            ec_jwk(&e1_public, "ec-e1"),
        ]});
        let jwks_path = dir.join("jwks.json");
        std::fs::write(&jwks_path, jwks.to_string()).expect("write jwks");
        let rsa_public_pem = std::fs::read(&rsa_public_path).expect("read pem");
        Keys {
            dir,
            rsa_private,
            rsa_public_path,
            rsa_public_pem,
            ec_private,
            ec_public_path,
            rsa_stranger_private,
            jwks_path,
            jwks_rsa_k1_private,
            jwks_ec_e1_private,
        }
    })
}

pub fn rs256(claims: &Value, private_pem: &[u8], kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_string);
    let key = EncodingKey::from_rsa_pem(private_pem).expect("RSA private key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign RS256")
}

pub fn es256(claims: &Value, private_pem: &[u8], kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_string);
    let key = EncodingKey::from_ec_pem(private_pem).expect("EC private key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign ES256")
}

/// A TOML string literal for a path.
pub fn toml_path(p: &Path) -> String {
    Value::String(path_str(p).to_string()).to_string()
}

// ---------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------

/// Parses the `Err` of `Server::try_ws` (`"HTTP 403 {body}"`) into the status
/// and the JSON body (Null when there is none).
pub fn ws_refusal(result: Result<Ws, String>, what: &str) -> (u16, Value) {
    let err = match result {
        Ok(_) => panic!("{what}: the WebSocket upgrade was accepted, expected a refusal"),
        Err(e) => e,
    };
    let rest = err
        .strip_prefix("HTTP ")
        .unwrap_or_else(|| panic!("{what}: not an HTTP refusal: {err}"));
    let (status, body) = rest.split_once(' ').unwrap_or((rest, ""));
    let status = status.parse().unwrap_or_else(|_| panic!("{what}: {err}"));
    (
        status,
        serde_json::from_str(body.trim()).unwrap_or(Value::Null),
    )
}

/// Asserts a refused WebSocket upgrade: HTTP `status` with `code`.
pub fn assert_ws_refused(result: Result<Ws, String>, status: u16, code: &str, what: &str) -> Value {
    let (got, body) = ws_refusal(result, what);
    assert_eq!(got, status, "{what}: upgrade status (body {body})");
    assert_eq!(body["error"]["code"], code, "{what}: refusal body {body}");
    body
}

/// A WebSocket to `path` whose TCP connection comes from `source` (another
/// loopback address such as 127.0.0.2), with extra headers.
pub async fn ws_from(
    s: &Server,
    source: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    let bind: std::net::SocketAddr = format!("{source}:0").parse().map_err(|e| format!("{e}"))?;
    socket.bind(bind).map_err(|e| e.to_string())?;
    let tcp = within(IO_TIMEOUT, "TCP connect", socket.connect(s.addr))
        .await
        .map_err(|e| e.to_string())?;
    let mut request = format!("ws://{}{}", s.addr, path)
        .into_client_request()
        .map_err(|e| e.to_string())?;
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
        request
            .headers_mut()
            .insert(name, HeaderValue::from_str(v).map_err(|e| e.to_string())?);
    }
    let fut = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp));
    match within(IO_TIMEOUT, "WebSocket handshake", fut).await {
        Ok((stream, _)) => Ok(Ws { stream }),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err(format!("HTTP {} {}", resp.status().as_u16(), body))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Reads WebSocket frames until a JSON frame satisfying `pred` arrives
/// (skipping others, e.g. join notices), within [`IO_TIMEOUT`].
pub async fn ws_until(ws: &mut Ws, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    within(IO_TIMEOUT, what, async {
        loop {
            match ws.next_event(IO_TIMEOUT).await {
                WsEvent::Json(v) if pred(&v) => return v,
                WsEvent::Json(_) | WsEvent::Ping => continue,
                other => panic!("{what}: got {other:?} first"),
            }
        }
    })
    .await
}

/// Reads WebSocket frames until the envelope with data `data` arrives.
pub async fn ws_until_data(ws: &mut Ws, data: &Value) -> Value {
    let d = data.clone();
    ws_until(ws, &format!("a message with data {data}"), move |v| {
        v["data"] == d
    })
    .await
}

/// Reads SSE events until one satisfying `pred` arrives.
pub async fn sse_until(
    sse: &mut Sse,
    what: &str,
    pred: impl Fn(&crate::common::SseEvent) -> bool,
) -> crate::common::SseEvent {
    within(IO_TIMEOUT, what, async {
        loop {
            match sse.next_item(IO_TIMEOUT).await {
                Some(SseItem::Event(e)) if pred(&e) => return e,
                Some(_) => continue,
                None => panic!("{what}: the SSE stream ended first"),
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// Hook backend
// ---------------------------------------------------------------------------

/// How the test backend answers one hook call.
#[derive(Clone, Debug)]
pub enum HookAnswer {
    /// 200 with this JSON body.
    Json(Value),
    /// 200 with an empty body (means allow).
    Empty,
    /// This status with an empty body.
    Status(u16),
    /// Never answers (the connection is held open).
    Silent,
}

/// One call Herald made.
#[derive(Clone, Debug)]
pub struct HookCall {
    /// The `X-Herald-Event` header.
    pub event_header: Option<String>,
    pub body: Value,
}

type Answerer = Arc<dyn Fn(&Value) -> HookAnswer + Send + Sync>;

/// A hook endpoint in the test process, on 127.0.0.1:0.
pub struct HookBackend {
    pub url: String,
    calls: Arc<Mutex<Vec<HookCall>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HookBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HookBackend {
    pub async fn start(answer: impl Fn(&Value) -> HookAnswer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hook backend");
        let url = format!("http://{}/herald", listener.local_addr().expect("addr"));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let answer: Answerer = Arc::new(answer);
        let record = Arc::clone(&calls);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_hook_connection(
                    tcp,
                    Arc::clone(&answer),
                    Arc::clone(&record),
                ));
            }
        });
        Self { url, calls, task }
    }

    pub fn calls(&self) -> Vec<HookCall> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The calls for `event` so far.
    pub fn calls_for(&self, event: &str) -> Vec<HookCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.body["event"] == event)
            .collect()
    }

    /// Waits (bounded) for a call satisfying `pred`.
    pub async fn wait_call(&self, what: &str, pred: impl Fn(&HookCall) -> bool) -> HookCall {
        eventually(Duration::from_secs(5), what, || {
            let found = self.calls().into_iter().find(|c| pred(c));
            let seen = self
                .calls()
                .iter()
                .map(|c| c.body.to_string())
                .collect::<Vec<_>>();
            async move { found.ok_or_else(|| format!("calls so far: {seen:?}")) }
        })
        .await
    }
}

async fn serve_hook_connection(
    mut tcp: TcpStream,
    answer: Answerer,
    calls: Arc<Mutex<Vec<HookCall>>>,
) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Headers.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let reply = answer(&body);
        if let Ok(mut c) = calls.lock() {
            c.push(HookCall {
                event_header: header("x-herald-event"),
                body,
            });
        }
        let (status, text) = match reply {
            HookAnswer::Json(v) => (200, v.to_string()),
            HookAnswer::Empty => (200, String::new()),
            HookAnswer::Status(s) => (s, String::new()),
            HookAnswer::Silent => {
                std::future::pending::<()>().await;
                return;
            }
        };
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if tcp.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A URL where nothing listens (a port bound and released at once).
pub fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}/herald")
}

// ---------------------------------------------------------------------------
// Session-protocol client
// ---------------------------------------------------------------------------

/// Which session transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `GET /connection/websocket`.
    Ws,
    /// `GET /connection/sse` down, `POST /connection/{id}` up.
    Sse,
}

impl Via {
    pub fn path(self) -> &'static str {
        match self {
            Via::Ws => "/connection/websocket",
            Via::Sse => "/connection/sse",
        }
    }
}

enum Link {
    Ws(Ws),
    Sse { sse: Sse, id: String },
}

/// What a session read produced.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    /// WebSocket close frame (code).
    Closed(Option<u16>),
    /// The stream or socket ended without a close frame.
    Ended,
}

/// A session-protocol client: commands with ids, replies matched by id,
/// pushes kept in order.
pub struct Session<'a> {
    server: &'a Server,
    link: Link,
    pending: VecDeque<Value>,
    next_id: u64,
    pub via: Via,
}

impl<'a> Session<'a> {
    /// Opens a session (`query` like `"?ticket=..."` or `""`), panicking on a refusal.
    pub async fn open(
        s: &'a Server,
        via: Via,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Session<'a> {
        let path = format!("{}{query}", via.path());
        let link = match via {
            Via::Ws => Link::Ws(s.ws_with(&path, headers).await),
            Via::Sse => {
                let mut sse = s.sse(&path, headers).await;
                let first = sse_until(&mut sse, "the session frame", |_| true).await;
                let v: Value = serde_json::from_str(&first.data).expect("session frame JSON");
                let id = v["session"]["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("first SSE session frame: {v}"))
                    .to_string();
                Link::Sse { sse, id }
            }
        };
        Session {
            server: s,
            link,
            pending: VecDeque::new(),
            next_id: 1,
            via,
        }
    }

    /// Opens a plain session and sends `connect` with `token`; returns the reply body.
    pub async fn connected(s: &'a Server, via: Via, token: Option<&str>) -> (Session<'a>, Value) {
        let mut sess = Session::open(s, via, "", &[]).await;
        let body = match token {
            Some(t) => json!({ "token": t }),
            None => json!({}),
        };
        let reply = sess.ok("connect", body).await;
        (sess, reply)
    }

    /// The HTTP refusal of a session open: (status, JSON body).
    pub async fn refused(
        s: &Server,
        via: Via,
        query: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let path = format!("{}{query}", via.path());
        match via {
            Via::Ws => ws_refusal(s.try_ws(&path, headers).await, &path),
            Via::Sse => {
                let mut r = s.get(&path).header("Accept", "text/event-stream");
                for (k, v) in headers {
                    r = r.header(k, v);
                }
                let resp = r.try_send(IO_TIMEOUT).await.unwrap_or_else(|e| {
                    panic!("{path}: expected a refusal, got no whole answer: {e}")
                });
                let body = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
                (resp.status, body)
            }
        }
    }

    /// The session id of an HTTP session.
    pub fn http_id(&self) -> Option<&str> {
        match &self.link {
            Link::Sse { id, .. } => Some(id),
            Link::Ws(_) => None,
        }
    }

    /// Sends one raw frame (a WebSocket text frame, or the body of a POST).
    pub async fn send_raw(&mut self, text: &str) {
        match &mut self.link {
            Link::Ws(ws) => ws.send_text(text).await,
            Link::Sse { id, .. } => {
                let resp = self
                    .server
                    .post(&format!("/connection/{id}"))
                    .header("Content-Type", "application/json")
                    .body(text)
                    .send()
                    .await;
                assert_eq!(resp.status, 202, "POST /connection/{{id}}: {}", resp.text());
            }
        }
    }

    /// The next frame, skipping server pings.
    pub async fn frame(&mut self, limit: Duration) -> Frame {
        loop {
            let f = match &mut self.link {
                Link::Ws(ws) => match ws.next_event(limit).await {
                    WsEvent::Json(v) => Frame::Json(v),
                    WsEvent::Ping => continue,
                    WsEvent::Close(c) => Frame::Closed(c.map(|(code, _)| code)),
                    WsEvent::End(_) => Frame::Ended,
                },
                Link::Sse { sse, .. } => match sse.next_item(limit).await {
                    Some(SseItem::Event(e)) => {
                        Frame::Json(serde_json::from_str(&e.data).unwrap_or_else(|err| {
                            panic!("session SSE data not JSON ({err}): {e:?}")
                        }))
                    }
                    Some(_) => continue,
                    None => Frame::Ended,
                },
            };
            if let Frame::Json(v) = &f {
                if v.get("ping").is_some() && v.get("id").is_none() {
                    continue;
                }
            }
            return f;
        }
    }

    /// Sends `{"id": N, key: body}` and returns the whole reply frame.
    pub async fn call(&mut self, key: &str, body: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = serde_json::Map::new();
        command.insert("id".into(), json!(id));
        command.insert(key.into(), body);
        self.send_raw(&Value::Object(command).to_string()).await;
        self.reply(id).await
    }

    /// Reads until the reply with `id` arrives (pushes read meanwhile are kept).
    pub async fn reply(&mut self, id: u64) -> Value {
        let what = format!("the reply with id {id}");
        within(IO_TIMEOUT, &what, async {
            loop {
                match self.frame(IO_TIMEOUT).await {
                    Frame::Json(v) if v["id"] == json!(id) && v.get("channel").is_none() => {
                        return v
                    }
                    Frame::Json(v) => self.pending.push_back(v),
                    other => panic!("{what}: got {other:?}"),
                }
            }
        })
        .await
    }

    /// A command that must succeed; returns the reply body.
    pub async fn ok(&mut self, key: &str, body: Value) -> Value {
        let reply = self.call(key, body.clone()).await;
        assert!(
            reply.get("error").is_none(),
            "{key} {body} refused: {reply}"
        );
        let reply_key = if key == "ping" { "pong" } else { key };
        reply
            .get(reply_key)
            .cloned()
            .unwrap_or_else(|| panic!("reply to {key} without {reply_key:?}: {reply}"))
    }

    /// A command that must be refused; returns the error code.
    pub async fn refused_code(&mut self, key: &str, body: Value) -> String {
        let reply = self.call(key, body.clone()).await;
        let code = reply["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{key} {body} must be refused, got {reply}"))
            .to_string();
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error without message: {reply}"
        );
        code
    }

    /// The next push (not a reply), from what was read already or the wire.
    pub async fn push(&mut self) -> Value {
        if let Some(v) = self.pending.pop_front() {
            return v;
        }
        match self.frame(IO_TIMEOUT).await {
            Frame::Json(v) => v,
            other => panic!("expected a push, got {other:?}"),
        }
    }

    /// Pushes until one satisfies `pred` (others are dropped).
    pub async fn push_until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        within(IO_TIMEOUT, what, async {
            loop {
                let v = self.push().await;
                if pred(&v) {
                    return v;
                }
            }
        })
        .await
    }

    /// Expects the session to end with `code`: a `disconnect` push with that
    /// code, then (WebSocket) a close frame with it, or (SSE) the end of the
    /// stream. Frames before the disconnect push are skipped.
    pub async fn expect_end(&mut self, code: u16, limit: Duration) {
        let what = format!("the session to end with {code}");
        within(limit, &what, async {
            loop {
                let v = if let Some(v) = self.pending.pop_front() {
                    v
                } else {
                    match self.frame(limit).await {
                        Frame::Json(v) => v,
                        other => panic!("{what}: got {other:?} before a disconnect push"),
                    }
                };
                if v.get("disconnect").is_some() {
                    assert_eq!(v["disconnect"]["code"], code, "{what}: {v}");
                    break;
                }
            }
            match self.frame(limit).await {
                Frame::Closed(c) if self.via == Via::Ws => {
                    assert_eq!(c, Some(code), "{what}: WebSocket close code")
                }
                Frame::Ended if self.via == Via::Sse => {}
                other => panic!("{what}: after the disconnect push got {other:?}"),
            }
        })
        .await
    }

    /// Asserts nothing but pings arrives for `quiet` (nothing was pending).
    pub async fn expect_silence(&mut self, quiet: Duration) {
        assert!(
            self.pending.is_empty(),
            "pending pushes: {:?}",
            self.pending
        );
        match tokio::time::timeout(quiet, self.frame(quiet + IO_TIMEOUT)).await {
            Err(_) => {}
            Ok(f) => panic!("expected silence for {quiet:?}, got {f:?}"),
        }
    }
}

/// An envelope's data matches.
pub fn is_message(v: &Value, channel: &str, data: &Value) -> bool {
    v["channel"] == channel && v.get("id").is_some() && v["data"] == *data
}

/// Reads NDJSON lines until a JSON one satisfies `pred`.
pub async fn nd_until(
    nd: &mut crate::common::Ndjson,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    within(IO_TIMEOUT, what, async {
        loop {
            let v = nd.next_json().await;
            if pred(&v) {
                return v;
            }
        }
    })
    .await
}

/// Sends a request that must be answered at once (a refusal, or a short
/// poll) and returns the whole answer.
pub async fn answer(req: crate::common::Req<'_>, what: &str) -> crate::common::Resp {
    req.try_send(IO_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{what}: expected an immediate answer: {e}"))
}
