//! A real `redis-server` for the tests of this crate, started on a free
//! loopback port (CI installs `redis-server`; without it these tests fail)
//! and killed on drop.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald_core::testing::WAIT;

/// A `redis-server` child process on a loopback port, killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = Self { port, child: None };
        server.spawn();
        server
    }

    pub fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not listen on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs one command on a fresh connection.
    pub async fn command(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("test connection");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await.expect("test command")
    }

    /// How many pub/sub connections follow a Herald channel.
    pub async fn followers(&self, channel: &str) -> i64 {
        let live = format!("herald:{{{channel}}}:live");
        match self.command(&["PUBSUB", "NUMSUB", &live]).await {
            redis::Value::Array(v) => match v.get(1) {
                Some(redis::Value::Int(n)) => *n,
                other => panic!("unexpected NUMSUB count {other:?}"),
            },
            other => panic!("unexpected NUMSUB reply {other:?}"),
        }
    }

    /// How many `PING` commands Redis has answered since it started, from
    /// `INFO commandstats`.
    pub async fn ping_calls(&self) -> u64 {
        let info = match self.command(&["INFO", "commandstats"]).await {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::VerbatimString { text, .. } => text,
            other => panic!("unexpected INFO reply {other:?}"),
        };
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_ping:calls="))
            .map(|rest| {
                let calls = rest.split(',').next().unwrap_or("");
                calls
                    .parse()
                    .unwrap_or_else(|_| panic!("bad cmdstat_ping line {l:?}", l = rest))
            })
            .unwrap_or(0)
    }

    /// The expiry (ms, Redis time) of every field of a hash whose values are
    /// either an expiry (`slots`) or JSON with `expires_ms` (`presence`).
    pub async fn hash_expiries(&self, key: &str) -> Vec<i64> {
        let fields = match self.command(&["HGETALL", key]).await {
            redis::Value::Array(v) => v,
            redis::Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            other => panic!("unexpected HGETALL reply {other:?}"),
        };
        fields
            .chunks(2)
            .map(|pair| {
                let value = match pair.get(1) {
                    Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    other => panic!("unexpected hash value {other:?} in {key}"),
                };
                value.parse().unwrap_or_else(|_| {
                    let v: serde_json::Value = serde_json::from_str(&value)
                        .unwrap_or_else(|e| panic!("{key} value {value:?}: {e}"));
                    v["expires_ms"]
                        .as_i64()
                        .unwrap_or_else(|| panic!("{key} value without expires_ms: {value}"))
                })
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
