//! Command line and the validated run configuration.
//!
//! Everything is checked here, before a socket opens: templates parse and
//! point at loopback, sizes are within the named limits, and the file
//! descriptors one process needs fit under its limit (otherwise the message
//! says how many `--procs` to use).

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};

use crate::net::Sources;
use crate::template::{loopback_ip, BodyTemplate, Scheme, UrlTemplate};

/// Most subscriber connections one run may ask for (across all processes).
pub const MAX_CONNECTIONS: u64 = 10_000_000;
/// Most messages per channel.
pub const MAX_MESSAGES: u64 = 1_000_000;
/// Most publishes in one run (messages x channels).
pub const MAX_PUBLISHES: u64 = 100_000_000;
/// Most memory the per-subscriber sequence bitsets of one process may take.
pub const MAX_BITSET_BYTES: u64 = 2 << 30;
/// File descriptors a process keeps for itself beside subscriber sockets.
pub const FD_RESERVE: u64 = 64;
/// Most worker processes.
pub const MAX_PROCS: u32 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Hold N connections for --duration, then measure server memory.
    Idle,
    /// N subscribers on --channels (default 1) channels; M messages each.
    Fanout,
    /// Each subscriber on its own channel; M messages per channel.
    Unicast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// One WebSocket per subscriber at the channel URL.
    Ws,
    /// Session WebSocket: connect, then send a subscribe command.
    SessionWs,
    /// Server-sent events (`Accept: text/event-stream`).
    Sse,
    /// Newline-delimited JSON (`Accept: application/x-ndjson`).
    Ndjson,
    /// The forever-frame (`?transport=iframe&callback=cb`): script tags in
    /// an HTML body that never ends.
    Iframe,
    /// Repeated long-poll GETs carrying `since` / `If-Modified-Since`.
    LongPoll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human table then the JSON line, on stdout.
    Both,
    Json,
    Table,
}

/// Load generator for Herald and comparable push servers (loopback only).
///
/// Opens N subscribers over a transport, publishes sequence-numbered,
/// timestamped payloads, and reports connects, deliveries (lost, duplicated,
/// out of order), publish-to-delivery latency and the server's memory and
/// CPU read from /proc. Placeholders: {channel} in URLs; {channel},
/// {payload}, {payload_str} (JSON-string-escaped) in --pub-body; {channel},
/// {id} in session commands.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald-bench", version, args_override_self = true)]
pub struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value = "fanout")]
    pub scenario: Scenario,
    /// How subscribers connect.
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: Transport,
    /// Subscriber URL template (ws:// or http://). Repeat it to spread the
    /// subscribers over several servers, e.g. the nodes of a cluster:
    /// subscriber i uses the (i % count)-th.
    #[arg(long, default_value = "ws://127.0.0.1:7070/sub/{channel}", action = clap::ArgAction::Append)]
    pub sub_url: Vec<String>,
    /// Publish URL template.
    #[arg(long, default_value = "http://127.0.0.1:7070/pub/{channel}")]
    pub pub_url: String,
    /// Publish body template.
    #[arg(long, default_value = "{payload}")]
    pub pub_body: String,
    /// Extra publish header "Name: value" (repeatable), e.g. "Authorization: Bearer KEY".
    #[arg(long = "pub-header")]
    pub pub_headers: Vec<String>,
    /// Content-Type of publishes.
    #[arg(long, default_value = "application/json")]
    pub pub_content_type: String,
    /// Subscriber connections (N).
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: u64,
    /// Channels; subscriber i uses channel i % C. Default: 1 for fanout, N otherwise.
    #[arg(long)]
    pub channels: Option<u64>,
    /// Messages per channel (M).
    #[arg(short = 'm', long, default_value_t = 100)]
    pub messages: u64,
    /// Publishes per second over all channels; 0 = flat out.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Concurrent publisher connections (a channel always uses the same one, so its order holds).
    #[arg(long, default_value_t = 4)]
    pub pub_concurrency: u32,
    /// Minimum payload size in bytes (padded).
    #[arg(long, default_value_t = 0)]
    pub payload_size: usize,
    /// Idle: how long to hold the connections, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Hard stop for the whole run, in seconds.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// After publishing, stop once no delivery arrived for this many seconds.
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,
    /// Pause after connecting before measuring (servers register subscriptions).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Per-connection connect + handshake timeout, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Connections being opened at once (per process).
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: u32,
    /// Retries of a failed connect (with 200 ms x attempt backoff); counted in the report.
    #[arg(long, default_value_t = 0)]
    pub connect_retries: u32,
    /// New connections per second (per process); 0 = unlimited.
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// First loopback source address.
    #[arg(long, default_value = "127.0.0.2")]
    pub source_base: Ipv4Addr,
    /// Number of loopback source addresses to rotate over; 0 = kernel's choice.
    #[arg(long, default_value_t = 16)]
    pub source_addrs: u32,
    /// Server PID to read memory and CPU from (repeatable; descendants included).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Do not include descendants of --server-pid.
    #[arg(long)]
    pub no_descendants: bool,
    /// Worker processes, each holding a share of the subscribers.
    #[arg(long, default_value_t = 1)]
    pub procs: u32,
    /// Channel name prefix; default is unique per run.
    #[arg(long)]
    pub channel_prefix: Option<String>,
    /// session-ws: command sent first after the upgrade (empty = none).
    #[arg(long, default_value = "")]
    pub session_connect: String,
    /// session-ws: subscribe command template.
    #[arg(
        long,
        default_value = r#"{"id":{id},"subscribe":{"channel":"{channel}"}}"#
    )]
    pub session_subscribe: String,
    /// session-ws: substring that marks the subscribe reply (empty = don't wait).
    #[arg(long, default_value = r#""id":{id}"#)]
    pub session_ack: String,
    /// session-ws: answer sent to a server ping push (a frame starting `{"ping"`); empty = none.
    #[arg(long, default_value = r#"{"pong":{}}"#)]
    pub session_pong: String,
    /// session-ws: substring that marks a server ping push (answered with
    /// --session-pong); empty = a frame starting `{"ping"` (Herald's). For
    /// the Pusher dialect: `"event":"pusher:ping"`.
    #[arg(long, default_value = "")]
    pub session_ping: String,
    /// session-ws: command sent for every received message marked `"ack":true`
    /// ({id}: a fresh command id, {msgid}: the message's id), e.g.
    /// `{"id":{id},"ack":{"ids":["{msgid}"]}}`; empty = none.
    #[arg(long, default_value = "")]
    pub session_ack_each: String,
    /// `KEY:SECRET` of a Pusher app: every publish is signed as Pusher's
    /// server libraries sign it (`auth_key`, `auth_timestamp`,
    /// `auth_version`, `body_md5`, `auth_signature` added to the URL), for
    /// `POST /apps/{id}/events` of any Pusher-protocol server.
    #[arg(long, default_value = "")]
    pub pusher_app: String,
    /// HS256 secret: {token} in session commands becomes a token for the user
    /// named like the subscriber's channel (valid one hour).
    #[arg(long, default_value = "")]
    pub hmac_secret: String,
    /// long-poll: timeout query parameter, in seconds.
    #[arg(long, default_value_t = 30)]
    pub poll_timeout: u32,
    /// Name of the server under test, copied into the report.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "both")]
    pub output: Output,
    /// Seconds between progress lines on stderr; 0 = none.
    #[arg(long, default_value_t = 1.0)]
    pub progress_every: f64,
    /// Internal: run as worker I of K (set by the parent).
    #[arg(long, hide = true)]
    pub worker: Option<String>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub args: Args,
    /// Subscriber URL templates; subscriber i uses `sub_urls[i % len]`.
    pub sub_urls: Vec<UrlTemplate>,
    pub pub_url: UrlTemplate,
    pub pub_body: BodyTemplate,
    /// Publish headers including Content-Type.
    pub pub_headers: Vec<(String, String)>,
    pub channels: u64,
    pub channel_prefix: String,
    pub sources: Sources,
    /// `(index, count)` when running as a worker process.
    pub worker: Option<(u32, u32)>,
}

/// Seconds given on the command line as a `Duration`, refusing negatives
/// and non-finite values.
pub fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    if !v.is_finite() || !(0.0..=30.0 * 86_400.0).contains(&v) {
        bail!("--{name} must be between 0 and 30 days, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

impl Config {
    pub fn from_args(args: Args) -> anyhow::Result<Self> {
        let sub_urls = args
            .sub_url
            .iter()
            .map(|u| UrlTemplate::parse(u).with_context(|| format!("--sub-url {u}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if sub_urls.is_empty() {
            bail!("--sub-url is required");
        }
        let pub_url = UrlTemplate::parse(&args.pub_url).context("--pub-url")?;
        if pub_url.scheme != Scheme::Http {
            bail!("--pub-url must be an http:// URL");
        }
        if args.connections == 0 || args.connections > MAX_CONNECTIONS {
            bail!("--connections must be 1..={MAX_CONNECTIONS}");
        }
        let channels = args.channels.unwrap_or(match args.scenario {
            Scenario::Fanout => 1,
            Scenario::Idle | Scenario::Unicast => args.connections,
        });
        if channels == 0 || channels > args.connections {
            bail!("--channels must be 1..=connections");
        }
        if args.scenario == Scenario::Unicast && channels != args.connections {
            bail!("unicast means one channel per subscriber: drop --channels or use fanout");
        }
        if args.messages > MAX_MESSAGES {
            bail!("--messages must be at most {MAX_MESSAGES}");
        }
        if args.scenario != Scenario::Idle && args.messages == 0 {
            bail!("--messages must be at least 1 for {:?}", args.scenario);
        }
        if args.messages.saturating_mul(channels) > MAX_PUBLISHES {
            bail!("messages x channels must be at most {MAX_PUBLISHES}");
        }
        if !args.rate.is_finite() || args.rate < 0.0 {
            bail!("--rate must be >= 0");
        }
        if !args.connect_rate.is_finite() || args.connect_rate < 0.0 {
            bail!("--connect-rate must be >= 0");
        }
        if args.pub_concurrency == 0 || args.pub_concurrency > 1024 {
            bail!("--pub-concurrency must be 1..=1024");
        }
        if args.connect_concurrency == 0 || args.connect_concurrency > 100_000 {
            bail!("--connect-concurrency must be 1..=100000");
        }
        if args.connect_retries > 100 {
            bail!("--connect-retries must be at most 100");
        }
        if args.payload_size > 1 << 20 {
            bail!("--payload-size must be at most 1 MiB");
        }
        if args.procs == 0 || args.procs > MAX_PROCS {
            bail!("--procs must be 1..={MAX_PROCS}");
        }
        for (name, v) in [
            ("duration", args.duration),
            ("timeout", args.timeout),
            ("settle", args.settle),
            ("warmup", args.warmup),
            ("connect-timeout", args.connect_timeout),
            ("progress-every", args.progress_every),
        ] {
            secs(name, v)?;
        }
        if args.timeout <= 0.0 {
            bail!("--timeout must be positive");
        }
        let sources = Sources::new(args.source_base, args.source_addrs);
        for ip in sources.all() {
            loopback_ip(&ip.to_string()).context("--source-base/--source-addrs")?;
        }
        let mut pub_headers = vec![("Content-Type".to_string(), args.pub_content_type.clone())];
        for h in &args.pub_headers {
            let (k, v) = h
                .split_once(':')
                .with_context(|| format!("--pub-header {h:?} is not \"Name: value\""))?;
            if k.trim().is_empty() || k.contains(['\r', '\n']) || v.contains(['\r', '\n']) {
                bail!("--pub-header {h:?} is not a valid header");
            }
            pub_headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let channel_prefix = match &args.channel_prefix {
            Some(p) => p.clone(),
            None => default_prefix(),
        };
        if channel_prefix.is_empty()
            || !channel_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("--channel-prefix must be non-empty [A-Za-z0-9_-]");
        }
        let worker = match &args.worker {
            None => None,
            Some(w) => {
                let (i, k) = w.split_once('/').context("--worker I/K")?;
                let (i, k): (u32, u32) = (i.parse()?, k.parse()?);
                if k == 0 || i >= k {
                    bail!("--worker index out of range");
                }
                Some((i, k))
            }
        };
        let config = Self {
            pub_body: BodyTemplate::parse(&args.pub_body),
            args,
            sub_urls,
            pub_url,
            pub_headers,
            channels,
            channel_prefix,
            sources,
            worker,
        };
        config.check_memory()?;
        Ok(config)
    }

    fn check_memory(&self) -> anyhow::Result<()> {
        let per_proc = self.args.connections.div_ceil(u64::from(self.args.procs));
        let bitset = per_proc.saturating_mul(self.args.messages.div_ceil(8));
        if self.args.scenario != Scenario::Idle && bitset > MAX_BITSET_BYTES {
            bail!("connections x messages too large for one process: use more --procs or fewer --messages");
        }
        Ok(())
    }

    /// Subscribers held by a process with `procs` workers, worker `index`.
    pub fn share(&self, index: u32, procs: u32) -> u64 {
        let n = self.args.connections;
        let (i, k) = (u64::from(index), u64::from(procs));
        n / k + u64::from(i < n % k)
    }

    /// The global subscriber indices of worker `index` of `procs`.
    pub fn indices(&self, index: u32, procs: u32) -> impl Iterator<Item = u64> {
        let step = u64::from(procs);
        (u64::from(index)..self.args.connections).step_by(usize::try_from(step).unwrap_or(1))
    }

    /// The subscriber URL template of subscriber `subscriber`.
    pub fn sub_url(&self, subscriber: u64) -> &UrlTemplate {
        let k = self.sub_urls.len() as u64;
        &self.sub_urls[usize::try_from(subscriber % k).unwrap_or(0)]
    }

    pub fn channel_of(&self, subscriber: u64) -> u64 {
        subscriber % self.channels
    }

    pub fn channel_name(&self, channel: u64) -> String {
        format!("{}-{channel}", self.channel_prefix)
    }

    /// The hard deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.args.timeout)
    }
}

/// A prefix unlikely to collide with a previous run's history.
fn default_prefix() -> String {
    let t = crate::payload::now_ns() / 1_000_000 % 100_000_000;
    format!("hb{}x{t}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &[&str]) -> anyhow::Result<Config> {
        let mut argv = vec!["herald-bench"];
        argv.extend_from_slice(extra);
        Config::from_args(Args::try_parse_from(argv)?)
    }

    #[test]
    fn defaults_are_valid() {
        let c = cfg(&[]).expect("defaults");
        assert_eq!(c.channels, 1);
        assert_eq!(c.pub_url.path_for("x"), "/pub/x");
        assert!(c.channel_prefix.starts_with("hb"));
    }

    #[test]
    fn unicast_gets_one_channel_each() {
        let c = cfg(&["--scenario", "unicast", "-n", "50", "--channel-prefix", "u"]).expect("cfg");
        assert_eq!(c.channels, 50);
        assert_eq!(c.channel_name(c.channel_of(7)), "u-7");
        assert!(cfg(&["--scenario", "unicast", "-n", "50", "--channels", "2"]).is_err());
    }

    #[test]
    fn refuses_remote_targets_and_bad_values() {
        assert!(cfg(&["--sub-url", "ws://192.168.1.1/sub/{channel}"]).is_err());
        assert!(cfg(&["--pub-url", "http://example.org/pub/{channel}"]).is_err());
        assert!(cfg(&["--pub-url", "ws://127.0.0.1/pub/{channel}"]).is_err());
        assert!(cfg(&["--source-base", "10.0.0.1"]).is_err());
        assert!(cfg(&["--source-base", "127.255.255.255", "--source-addrs", "2"]).is_err());
        assert!(cfg(&["-n", "0"]).is_err());
        assert!(cfg(&["--rate", "-1"]).is_err());
        assert!(cfg(&["--timeout", "0"]).is_err());
        assert!(cfg(&["--pub-header", "nocolon"]).is_err());
        assert!(cfg(&["--channel-prefix", "a/b"]).is_err());
        assert!(cfg(&["--worker", "3/3"]).is_err());
    }

    #[test]
    fn shares_cover_everyone_once() {
        let c = cfg(&["-n", "10"]).expect("cfg");
        let mut all: Vec<u64> = (0..3).flat_map(|i| c.indices(i, 3)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(
            (0..3).map(|i| c.share(i, 3)).collect::<Vec<_>>(),
            vec![4, 3, 3]
        );
        for i in 0..3 {
            assert_eq!(c.indices(i, 3).count() as u64, c.share(i, 3));
        }
    }

    #[test]
    fn sub_urls_repeat_and_rotate() {
        let c = cfg(&[]).expect("cfg");
        assert_eq!(c.sub_urls.len(), 1);
        let c = cfg(&[
            "--sub-url",
            "ws://127.0.0.1:7001/sub/{channel}",
            "--sub-url",
            "ws://127.0.0.1:7002/sub/{channel}",
            "--sub-url",
            "ws://127.0.0.1:7003/sub/{channel}",
        ])
        .expect("cfg");
        let ports: Vec<u16> = (0..4).map(|i| c.sub_url(i).addr.port()).collect();
        assert_eq!(ports, vec![7001, 7002, 7003, 7001]);
        assert!(cfg(&[
            "--sub-url",
            "ws://127.0.0.1:1/x",
            "--sub-url",
            "ws://10.0.0.1/x"
        ])
        .is_err());
    }

    #[test]
    fn headers_parsed() {
        let c = cfg(&["--pub-header", "Authorization: Bearer k:1"]).expect("cfg");
        assert_eq!(
            c.pub_headers[1],
            ("Authorization".into(), "Bearer k:1".into())
        );
    }
}
