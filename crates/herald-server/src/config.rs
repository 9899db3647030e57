//! Server settings: read from a TOML file, overridden by `HERALD_*`
//! environment variables, overridden by the command line, validated as a
//! whole before anything binds. An unknown key, in the file or in the
//! environment, is an error that names it.
//!
//! The environment is an input like the file (the binary collects it;
//! nothing here reads it): each `HERALD_A__B` variable is converted by the
//! type [`ENV_KEYS`] gives its key path `a.b` and merged into the parsed
//! file before the file's shape is deserialized, so one set of rules checks
//! both. Secrets may be given as paths (`api_key_file`,
//! `auth.hmac_secret_file`, `webhooks.secret_file`), read once at load.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::access::hook::{HookEvent, HookSettings, DEFAULT_HOOK_TIMEOUT};
use crate::access::pusher_webhook::{self, PusherWebhook};
use crate::access::webhook::{
    WebhookSettings, DEFAULT_BATCH_SIZE, DEFAULT_MAX_ATTEMPTS, DEFAULT_WEBHOOK_TIMEOUT,
    MAX_BATCH_SIZE,
};
use herald_core::event::{EventOptions, DEFAULT_PRESENCE_GRACE, EVENTS};
use herald_core::namespace::{ChannelOptions, Namespaces};
use serde::Deserialize;
use std::collections::HashSet;

/// Where the server listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Heartbeat interval on streaming transports.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Events a connection may have queued before it counts as a slow consumer.
pub const DEFAULT_QUEUE_SIZE: usize = 256;
/// Largest payload, inclusive.
pub const DEFAULT_MAX_PAYLOAD: usize = 65_536;
/// How long one socket write may take before the connection is dropped.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The summary line's default period.
pub const DEFAULT_LOG_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
/// How long shutdown waits for connections to close after telling them.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long a stopping node serves on with `/ready` at 503.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);
/// Over how long a stopping node spreads its clients' reconnections.
pub const DEFAULT_DRAIN_WINDOW: Duration = Duration::from_secs(10);
/// The longest `drain_window` (the delay fits a `u32` of milliseconds, and
/// a client should not wait longer).
pub const MAX_DRAIN_WINDOW: Duration = Duration::from_secs(600);
/// Long-poll wait when the request names none.
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest long-poll wait a request may ask for (longer asks are clamped).
pub const DEFAULT_POLL_TIMEOUT_MAX: Duration = Duration::from_secs(120);
/// How long a connection may take to send a whole request head (from its
/// accept, or from its first byte after an idle keep-alive pause).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a keep-alive connection may sit idle between requests.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a publish's idempotency key is remembered.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);

/// The file's shape. Every section refuses unknown keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    /// A second listener for the backend API, metrics and admin.
    pub api_listen: Option<String>,
    /// Peers whose `Forwarded` / `X-Forwarded-For` is believed.
    pub trusted_proxies: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    pub api_key: Option<String>,
    /// A file holding `api_key` (a mounted container secret); exclusive
    /// with `api_key`.
    pub api_key_file: Option<std::path::PathBuf>,
    pub engine: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub heartbeat: Option<Duration>,
    pub queue_size: Option<usize>,
    pub max_payload: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub write_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub shutdown_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub drain_delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub drain_window: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub poll_timeout_max: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idempotency_window: Option<Duration>,
    /// How often the one-line summary is logged (info); `0s`: never.
    #[serde(default, with = "humantime_serde")]
    pub log_summary_interval: Option<Duration>,
    /// How long a user or channel may be away and come back without an
    /// offline/online (vacated/occupied) pair of webhooks.
    #[serde(default, with = "humantime_serde")]
    pub presence_grace: Option<Duration>,
    /// Named API keys, in addition to `api_key`.
    #[serde(default)]
    pub api_keys: std::collections::BTreeMap<String, String>,
    /// Origins browsers may connect from; empty = same origin only; "*" = any.
    pub allowed_origins: Option<Vec<String>>,
    #[serde(default)]
    pub history: HistorySection,
    #[serde(default)]
    pub namespace: Vec<NamespaceSection>,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub limits: LimitsSection,
    pub hooks: Option<HooksSection>,
    #[serde(default)]
    pub webhooks: WebhooksSection,
    #[serde(default)]
    pub redis: RedisSection,
    /// The Pusher Channels dialect (docs/pusher.md).
    #[serde(default)]
    pub pusher: PusherSection,
}

/// `[webhooks]`: events posted to the application (nothing is recorded
/// without a `url`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksSection {
    pub url: Option<String>,
    pub secret: Option<String>,
    /// A file holding `secret`; exclusive with `secret`.
    pub secret_file: Option<std::path::PathBuf>,
    pub events: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub max_attempts: Option<u32>,
    pub batch_size: Option<usize>,
}

/// `[pusher]`: the apps whose Pusher clients and server libraries Herald
/// serves (`/app/{key}`, `/apps/{id}/…`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PusherSection {
    #[serde(default)]
    pub apps: Vec<PusherAppSection>,
}

/// One `[[pusher.apps]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PusherAppSection {
    pub id: String,
    pub key: String,
    pub secret: String,
    /// Whether clients may send `client-` events (default false).
    pub client_events: Option<bool>,
    /// Connections the app may hold at once on this node (0: no limit
    /// beyond `limits.max_connections`).
    pub max_connections: Option<usize>,
    /// Largest event data, in bytes, a trigger or a client event may carry
    /// (Pusher's 10 KiB by default; `max_payload` bounds it too).
    pub max_event_size: Option<usize>,
    /// Where the app's webhooks go, in Pusher's format (docs/pusher.md).
    pub webhook_url: Option<String>,
    /// Pusher's names of the webhook events sent (default: all).
    pub webhook_events: Option<Vec<String>>,
}

/// A validated Pusher app. Its channels are Herald channels under
/// [`PusherApp::prefix`].
#[derive(Clone)]
pub struct PusherApp {
    pub id: String,
    pub key: String,
    pub secret: String,
    pub client_events: bool,
    /// 0: no limit of the app's own.
    pub max_connections: usize,
    /// Largest event data in bytes (`max_payload` bounds it too).
    pub max_event_size: usize,
    /// Its webhooks in Pusher's format, with a `webhook_url`.
    pub webhook: Option<PusherWebhook>,
}

/// Pusher's limit on an event's data: 10 KiB.
pub const DEFAULT_PUSHER_EVENT_SIZE: usize = 10 * 1024;
/// The most `max_event_size` may be.
pub const MAX_PUSHER_EVENT_SIZE: usize = 1024 * 1024;

impl PusherApp {
    /// The Herald channel prefix of the app's channels: `pusher:{id}:`.
    pub fn prefix(&self) -> String {
        pusher_prefix(&self.id)
    }
}

/// `pusher:{id}:`, where an app's channels live in the hub.
pub fn pusher_prefix(id: &str) -> String {
    format!("pusher:{id}:")
}

impl std::fmt::Debug for PusherApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PusherApp")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("client_events", &self.client_events)
            .field("max_connections", &self.max_connections)
            .field("webhook", &self.webhook)
            .finish()
    }
}

/// Shortest app secret accepted.
pub const MIN_PUSHER_SECRET: usize = 8;
/// Longest app id (the channel prefix must leave room for Pusher's names).
pub const MAX_PUSHER_APP_ID: usize = 32;

/// `[redis]`: how patient the Redis engine is (unused with `memory`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub ping_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub node_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub refresh_interval: Option<Duration>,
    /// Prefix of every key and pub/sub channel: deployments sharing one
    /// Redis need different ones.
    pub prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    pub hmac_secret: Option<String>,
    /// A file holding `hmac_secret`; exclusive with `hmac_secret`.
    pub hmac_secret_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub public_keys: Vec<std::path::PathBuf>,
    pub jwks_file: Option<std::path::PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub leeway: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub ticket_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_token_ttl: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub max_subscriptions: Option<usize>,
    pub client_publish_rate: Option<u32>,
    pub client_publish_burst: Option<u32>,
    pub max_command_size: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksSection {
    pub url: String,
    pub events: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub on_error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySection {
    pub size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSection {
    pub prefix: String,
    pub history_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub history_ttl: Option<Duration>,
    pub client_publish: Option<bool>,
    pub private: Option<bool>,
    pub presence: Option<bool>,
    pub join_leave: Option<bool>,
    pub max_subscribers: Option<usize>,
    pub ack: Option<bool>,
    pub mailbox_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub mailbox_ttl: Option<Duration>,
    pub latest_on_subscribe: Option<bool>,
}

/// Most pending messages a mailbox may be configured to keep.
pub const MAX_MAILBOX_SIZE: usize = 100_000;

/// With no `[[namespace]]` in the file: a `chat:` prefix where connected
/// clients may publish, so the demo chat works out of the box. A file that
/// lists its own namespaces replaces this.
fn default_namespaces() -> Vec<NamespaceSection> {
    vec![NamespaceSection {
        prefix: "chat:".into(),
        history_size: None,
        history_ttl: None,
        client_publish: Some(true),
        private: None,
        presence: Some(true),
        join_leave: Some(true),
        max_subscribers: None,
        ack: None,
        mailbox_size: None,
        mailbox_ttl: None,
        latest_on_subscribe: None,
    }]
}

/// Settings given on the command line; each wins over the environment and
/// the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub api_listen: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub api_key: Option<String>,
    pub engine: Option<String>,
}

impl Overrides {
    /// Whether a flag sets the key at `path` (then the environment's value
    /// of it is not the one in use).
    fn sets(&self, path: &str) -> bool {
        match path {
            "listen" => self.listen.is_some(),
            "api_listen" => self.api_listen.is_some(),
            "trusted_proxies" => self.trusted_proxies.is_some(),
            "api_key" => self.api_key.is_some(),
            "engine" => self.engine.is_some(),
            _ => false,
        }
    }
}

/// What every configuration variable's name starts with.
pub const ENV_PREFIX: &str = "HERALD_";

/// `HERALD_` variables that are not config keys, and are therefore left
/// alone by the rule that an unknown one is an error: the binary's own
/// (`HERALD_CONFIG`: the file; `HERALD_LOG`: the log filter;
/// `HERALD_LOG_FORMAT`: text or json), and those of Herald's test harnesses
/// and scripts, which the servers they start inherit.
pub const NOT_CONFIG_VARS: &[&str] = &[
    "HERALD_CONFIG",
    "HERALD_LOG",
    "HERALD_LOG_FORMAT",
    "HERALD_BIN",
    "HERALD_TEST_ENGINE",
    "HERALD_CLIENT_FROM_DISK",
    "HERALD_PYTHON",
    "HERALD_PYTHON27",
];

/// How an environment variable's text becomes the key's TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnvKind {
    /// Taken as it is (`HERALD_API_KEY=12345` is the string "12345").
    Text,
    /// A whole number, e.g. `50`.
    Number,
    /// A duration string, checked here: `500ms`, `20s`, `10m`, `1h`.
    Duration,
    /// Comma-separated; spaces around each item are dropped
    /// (`https://a.example,https://b.example`).
    List,
}

/// Every key path the environment can set, with the type of its value.
/// `*` stands for any name (`[api_keys]` is a map). `[[namespace]]` is
/// absent on purpose: an array of tables has no name to address an entry by.
/// A test checks this table against [`FileConfig`]'s fields.
pub(crate) const ENV_KEYS: &[(&str, EnvKind)] = &[
    ("listen", EnvKind::Text),
    ("api_listen", EnvKind::Text),
    ("trusted_proxies", EnvKind::List),
    ("header_timeout", EnvKind::Duration),
    ("idle_timeout", EnvKind::Duration),
    ("api_key", EnvKind::Text),
    ("api_key_file", EnvKind::Text),
    ("engine", EnvKind::Text),
    ("heartbeat", EnvKind::Duration),
    ("queue_size", EnvKind::Number),
    ("max_payload", EnvKind::Number),
    ("write_timeout", EnvKind::Duration),
    ("shutdown_grace", EnvKind::Duration),
    ("drain_delay", EnvKind::Duration),
    ("drain_window", EnvKind::Duration),
    ("log_summary_interval", EnvKind::Duration),
    ("presence_grace", EnvKind::Duration),
    ("poll_timeout_max", EnvKind::Duration),
    ("idempotency_window", EnvKind::Duration),
    ("api_keys.*", EnvKind::Text),
    ("allowed_origins", EnvKind::List),
    ("history.size", EnvKind::Number),
    ("history.ttl", EnvKind::Duration),
    ("auth.hmac_secret", EnvKind::Text),
    ("auth.hmac_secret_file", EnvKind::Text),
    ("auth.public_keys", EnvKind::List),
    ("auth.jwks_file", EnvKind::Text),
    ("auth.leeway", EnvKind::Duration),
    ("auth.ticket_ttl", EnvKind::Duration),
    ("auth.max_token_ttl", EnvKind::Duration),
    ("limits.max_connections", EnvKind::Number),
    ("limits.max_connections_per_ip", EnvKind::Number),
    ("limits.max_subscriptions", EnvKind::Number),
    ("limits.client_publish_rate", EnvKind::Number),
    ("limits.client_publish_burst", EnvKind::Number),
    ("limits.max_command_size", EnvKind::Number),
    ("hooks.url", EnvKind::Text),
    ("hooks.events", EnvKind::List),
    ("hooks.timeout", EnvKind::Duration),
    ("hooks.on_error", EnvKind::Text),
    ("webhooks.url", EnvKind::Text),
    ("webhooks.secret", EnvKind::Text),
    ("webhooks.secret_file", EnvKind::Text),
    ("webhooks.events", EnvKind::List),
    ("webhooks.timeout", EnvKind::Duration),
    ("webhooks.max_attempts", EnvKind::Number),
    ("webhooks.batch_size", EnvKind::Number),
    ("redis.timeout", EnvKind::Duration),
    ("redis.ping_interval", EnvKind::Duration),
    ("redis.node_ttl", EnvKind::Duration),
    ("redis.refresh_interval", EnvKind::Duration),
    ("redis.prefix", EnvKind::Text),
];

/// The kind of the key at `path` (`["history", "size"]`), if the
/// environment may set it.
fn env_kind(path: &[String]) -> Option<EnvKind> {
    ENV_KEYS.iter().find_map(|(key, kind)| {
        let mut parts = key.split('.');
        let matches = path.iter().all(|segment| {
            parts
                .next()
                .is_some_and(|part| part == "*" || part == segment)
        }) && parts.next().is_none();
        matches.then_some(*kind)
    })
}

/// Merges the `HERALD_*` variables of `env` into the parsed file `doc`.
/// Returns the key paths set, each with the variable that set it. An empty
/// value is a value (`HERALD_API_KEY=` is refused as an empty key, as the
/// file's `api_key = ""` is; an empty list clears the file's). A variable that is neither a key nor in
/// [`NOT_CONFIG_VARS`] is an error naming it.
fn merge_env(
    doc: &mut toml::Table,
    env: &[(String, String)],
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut set = Vec::new();
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(name, _)| {
            name.starts_with(ENV_PREFIX) && !NOT_CONFIG_VARS.contains(&name.as_str())
        })
        .collect();
    // A stable order, so that the first error is the same on every run.
    vars.sort();
    for (var, text) in vars {
        let err = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_lowercase)
            .collect();
        if path[0] == "pusher" {
            return Err(err(
                "pusher apps cannot come from the environment: [[pusher.apps]] is a list of \
                 tables, and a variable has no name to pick an entry by; set them in the file"
                    .into(),
            ));
        }
        if path[0] == "namespace" || path[0] == "namespaces" {
            return Err(err(
                "namespaces cannot come from the environment: [[namespace]] is a list of tables, \
                 and a variable has no name to pick an entry by; set them in the file"
                    .into(),
            ));
        }
        let key = path.join(".");
        let kind = env_kind(&path).ok_or_else(|| {
            err(format!(
                "unknown key {key:?} (a variable is HERALD_ and a key path in upper case, \
                 __ between levels, e.g. HERALD_HISTORY__SIZE: docs/configuration.md)"
            ))
        })?;
        let value = match kind {
            EnvKind::Text => toml::Value::String(text.clone()),
            EnvKind::Number => text
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .map(toml::Value::Integer)
                .ok_or_else(|| err(format!("{key}: {text:?} is not a whole number")))?,
            EnvKind::Duration => {
                humantime::parse_duration(text.trim()).map_err(|_| {
                    err(format!(
                        "{key}: {text:?} is not a duration like 500ms, 20s, 10m or 1h"
                    ))
                })?;
                toml::Value::String(text.trim().to_string())
            }
            EnvKind::List => toml::Value::Array(
                text.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| toml::Value::String(item.to_string()))
                    .collect(),
            ),
        };
        // Walk to the key's table, making the sections the file left out.
        let (last, sections) = path.split_last().ok_or_else(|| err("empty key".into()))?;
        let mut table = &mut *doc;
        for section in sections {
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| err(format!("{section} is not a section in the file")))?;
        }
        // A secret and its file are one setting: the environment's choice
        // replaces the file's, whichever form each used.
        let secret = key.strip_suffix("_file").unwrap_or(&key);
        if let Some(secret) = SECRETS.iter().copied().find(|s| *s == secret) {
            let partner = if key == secret {
                format!("{secret}_file")
            } else {
                secret.to_string()
            };
            if set.iter().any(|(p, _): &(String, String)| *p == partner) {
                return Err(ConfigError::Ambiguous(secret));
            }
            if let Some(name) = partner.rsplit('.').next() {
                table.remove(name);
            }
        }
        table.insert(last.clone(), value);
        set.push((key, var.clone()));
    }
    Ok(set)
}

/// The shape error `error` of the file `doc` merged with `env`, named by
/// the first variable that alone makes the file fail (e.g.
/// `HERALD_HOOKS__TIMEOUT` with no `hooks.url` anywhere).
fn blame_env(doc: &toml::Table, env: &[(String, String)], error: toml::de::Error) -> ConfigError {
    let mut vars: Vec<&(String, String)> = env.iter().collect();
    vars.sort();
    let culprit = vars.into_iter().find(|var| {
        let mut alone = doc.clone();
        merge_env(&mut alone, std::slice::from_ref(*var)).is_ok()
            && toml::Value::Table(alone).try_into::<FileConfig>().is_err()
    });
    ConfigError::Env {
        var: culprit.map_or_else(|| "environment".to_string(), |(var, _)| var.clone()),
        message: error.message().to_string(),
    }
}

/// The secrets that may be given as a file path, `KEY_file`.
const SECRETS: &[&str] = &["api_key", "auth.hmac_secret", "webhooks.secret"];

/// The secret files read at load, for the summary.
#[derive(Debug, Default)]
struct SecretFiles {
    api_key: Option<std::path::PathBuf>,
    hmac_secret: Option<std::path::PathBuf>,
    webhook_secret: Option<std::path::PathBuf>,
}

/// Reads `api_key_file`, `auth.hmac_secret_file` and
/// `webhooks.secret_file` into their secrets (trailing newline dropped). A
/// `--api-key` flag wins over both forms, and the file is then not read.
/// Returns the paths read, for the summary.
fn read_secret_files(
    file: &mut FileConfig,
    overrides: &Overrides,
) -> Result<SecretFiles, ConfigError> {
    fn read(key: &'static str, path: &Path) -> Result<String, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
            key,
            path: shown.clone(),
            source,
        })?;
        let secret = text.trim_end_matches(['\n', '\r']);
        if secret.is_empty() {
            return Err(ConfigError::EmptySecretFile { key, path: shown });
        }
        Ok(secret.to_string())
    }
    if file.api_key.is_some() && file.api_key_file.is_some() {
        return Err(ConfigError::Ambiguous("api_key"));
    }
    if file.auth.hmac_secret.is_some() && file.auth.hmac_secret_file.is_some() {
        return Err(ConfigError::Ambiguous("auth.hmac_secret"));
    }
    if file.webhooks.secret.is_some() && file.webhooks.secret_file.is_some() {
        return Err(ConfigError::Ambiguous("webhooks.secret"));
    }
    let api_key_file = match file.api_key_file.take() {
        Some(_) if overrides.api_key.is_some() => None,
        Some(path) => {
            file.api_key = Some(read("api_key_file", &path)?);
            Some(path)
        }
        None => None,
    };
    let hmac_secret_file = match file.auth.hmac_secret_file.take() {
        Some(path) => {
            file.auth.hmac_secret = Some(read("auth.hmac_secret_file", &path)?);
            Some(path)
        }
        None => None,
    };
    let webhook_secret_file = match file.webhooks.secret_file.take() {
        Some(path) => {
            file.webhooks.secret = Some(read("webhooks.secret_file", &path)?);
            Some(path)
        }
        None => None,
    };
    Ok(SecretFiles {
        api_key: api_key_file,
        hmac_secret: hmac_secret_file,
        webhook_secret: webhook_secret_file,
    })
}

/// The validated settings the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where the backend endpoints are served, when apart from `listen`.
    pub api_listen: Option<SocketAddr>,
    /// Peers whose forwarding headers name the client.
    pub trusted_proxies: crate::access::client_addr::TrustedProxies,
    /// See [`DEFAULT_HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// See [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// Keys accepted on `/pub` and `/api` (name, key); empty means
    /// "loopback peers only".
    pub api_keys: Vec<(String, String)>,
    /// Where the `default` API key was read from, when from a file (shown
    /// by `check-config` instead of the key).
    pub api_key_file: Option<std::path::PathBuf>,
    /// Where `auth.hmac_secret` was read from, when from a file.
    pub hmac_secret_file: Option<std::path::PathBuf>,
    /// Where `webhooks.secret` was read from, when from a file.
    pub webhook_secret_file: Option<std::path::PathBuf>,
    /// Browser origins allowed; empty = same origin only; `*` = any.
    pub allowed_origins: Vec<String>,
    pub tokens: crate::access::token::TokenSettings,
    /// Longest TTL `/api/tokens` will sign.
    pub max_token_ttl: Duration,
    pub limits: Limits,
    pub hooks: Option<crate::access::hook::HookSettings>,
    /// `[webhooks]`, when it has a `url` (else nothing is recorded).
    pub webhooks: Option<WebhookSettings>,
    /// A user back, or a channel re-occupied, within this makes no event
    /// pair (webhooks).
    pub presence_grace: Duration,
    /// `memory` or a `redis://` URL.
    pub engine: String,
    pub heartbeat: Duration,
    pub queue_size: usize,
    pub max_payload: usize,
    pub write_timeout: Duration,
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long the node goes on serving with `/ready` at
    /// 503, so that load balancers stop sending it new clients.
    pub drain_delay: Duration,
    /// Over how long the clients' reconnections are spread: each
    /// connection is told to wait a random part of it (0: all at once).
    pub drain_window: Duration,
    pub poll_timeout_max: Duration,
    /// How long a publish's idempotency key is remembered per channel.
    pub idempotency_window: Duration,
    /// How often the one-line summary is logged; zero: never.
    pub log_summary_interval: Duration,
    pub namespaces: Namespaces,
    /// Redis engine: bound on connecting and on every command; past it the
    /// engine counts as unavailable (503, and `4005` when pub/sub is lost).
    pub redis_timeout: Duration,
    /// Redis engine: how often the pub/sub connection is pinged.
    pub redis_ping_interval: Duration,
    /// Redis engine: how long a node's presence entries, counts, places and
    /// holdings count without a rewrite (a dead node drops out within it).
    pub redis_node_ttl: Duration,
    /// Redis engine: how often a node rewrites its presence entries and
    /// places (shorter than `redis_node_ttl`).
    pub redis_refresh_interval: Duration,
    /// Redis engine: the prefix of every key and pub/sub channel.
    pub redis_prefix: String,
    /// `[[pusher.apps]]`: the Pusher apps served (docs/pusher.md).
    pub pusher_apps: Vec<PusherApp>,
}

/// Default of `redis.timeout`.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Default of `redis.ping_interval`.
pub const DEFAULT_REDIS_PING_INTERVAL: Duration = Duration::from_secs(5);
/// Default of `redis.node_ttl` (the Redis engine's own default).
pub const DEFAULT_REDIS_NODE_TTL: Duration = Duration::from_secs(15);
/// Default of `redis.prefix` (the Redis engine's own default).
pub const DEFAULT_REDIS_PREFIX: &str = "herald";
/// Default of `redis.refresh_interval` (the Redis engine's own default).
pub const DEFAULT_REDIS_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

impl Default for Config {
    fn default() -> Self {
        Self::resolve(FileConfig::default(), Overrides::default())
            .unwrap_or_else(|_| unreachable_default())
    }
}

#[allow(clippy::panic)]
fn unreachable_default() -> Config {
    panic!("the built-in defaults are valid")
}

/// A setting that cannot be used, named.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("listen: {0:?} is not an address like 127.0.0.1:7070")]
    Listen(String),
    #[error("api_listen: {0:?} is not an address like 127.0.0.1:7071")]
    ApiListen(String),
    #[error("allowed_origins: {0:?} is not \"*\" or an origin like https://app.example.com (scheme and host, no path)")]
    Origin(String),
    #[error("api_listen must differ from listen ({0})")]
    SameListen(SocketAddr),
    #[error("{0}")]
    TrustedProxies(#[from] crate::access::client_addr::BadProxy),
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("engine: {0:?} is neither \"memory\" nor a redis:// URL")]
    Engine(String),
    #[error("api_key must not be empty")]
    EmptyKey,
    #[error("namespace prefix {0:?} is not a valid channel-name prefix")]
    Prefix(String),
    #[error("namespace prefix {0:?} is configured twice")]
    DuplicatePrefix(String),
    #[error("auth.hmac_secret must be at least 32 bytes")]
    ShortSecret,
    #[error("hooks.{0}")]
    Hooks(String),
    #[error("webhooks.{0}")]
    Webhooks(String),
    #[error("auth: {0}")]
    Keys(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{key}: cannot read {path}: {source}")]
    SecretFile {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{key}: {path} is empty")]
    EmptySecretFile { key: &'static str, path: String },
    #[error("{0} and {0}_file are both set: give the secret or the file holding it, not both")]
    Ambiguous(&'static str),
    #[error("{var}: {message}")]
    Env { var: String, message: String },
    #[error("{var}: {error}")]
    FromEnv {
        var: String,
        error: Box<ConfigError>,
    },
}

impl ConfigError {
    /// The key path a validation error is about, for naming the
    /// environment variable that set it.
    fn key(&self) -> Option<&'static str> {
        Some(match self {
            Self::Listen(_) => "listen",
            Self::ApiListen(_) | Self::SameListen(_) => "api_listen",
            Self::Origin(_) => "allowed_origins",
            Self::TrustedProxies(_) => "trusted_proxies",
            Self::Zero(name) => name,
            Self::Engine(_) => "engine",
            Self::EmptyKey => "api_key",
            Self::ShortSecret => "auth.hmac_secret",
            _ => return None,
        })
    }
}

/// Protection limits; each violation has its own error or close code.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_subscriptions: usize,
    /// Client publishes per second per connection (0: unlimited).
    pub client_publish_rate: u32,
    pub client_publish_burst: u32,
    pub max_command_size: usize,
}

/// Connections the whole server accepts at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1_000_000;
/// Connections one client IP may hold at once.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 10_000;
/// Channels one session may follow.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 256;
/// Client publishes per second per connection, and the burst above it.
pub const DEFAULT_CLIENT_PUBLISH_RATE: u32 = 10;
pub const DEFAULT_CLIENT_PUBLISH_BURST: u32 = 20;
/// Largest session command frame (a payload plus room for the command).
pub const DEFAULT_MAX_COMMAND_SIZE: usize = DEFAULT_MAX_PAYLOAD + 16 * 1024;
/// Clock skew tolerated on token times.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);
/// How long a URL ticket lives.
pub const DEFAULT_TICKET_TTL: Duration = Duration::from_secs(30);
/// Longest token `/api/tokens` signs.
pub const DEFAULT_MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

impl Config {
    /// Reads the file (if any), merges the `HERALD_*` variables of `env`
    /// over it, reads the secret files and applies the command-line
    /// overrides: file < environment < flags.
    pub fn load(
        path: Option<&Path>,
        env: &[(String, String)],
        overrides: Overrides,
    ) -> Result<Self, ConfigError> {
        let mut doc = toml::Table::new();
        if let Some(path) = path {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: shown.clone(),
                source,
            })?;
            let parse_error = |e: toml::de::Error| ConfigError::Parse {
                path: shown.clone(),
                message: match e.span() {
                    Some(span) => {
                        let (line, column) = line_column(&text, span.start);
                        format!("line {line}, column {column}: {}", e.message())
                    }
                    None => e.message().to_string(),
                },
            };
            // The file alone first, from its text: its errors keep their
            // line and column, and what fails after the merge is the
            // environment's.
            let _: FileConfig = toml::from_str(&text).map_err(parse_error)?;
            doc = toml::from_str(&text).map_err(parse_error)?;
        }
        let file_doc = doc.clone();
        let from_env = merge_env(&mut doc, env)?;
        // The file alone was valid: what fails now is the environment's.
        let mut file: FileConfig = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| blame_env(&file_doc, env, e))?;
        let secret_files = read_secret_files(&mut file, &overrides)?;
        // An error about a key the environment set names its variable
        // (unless a flag set the key after all).
        let flags = overrides.clone();
        let named = |e: ConfigError| match e.key() {
            Some(key) if !flags.sets(key) => match from_env
                .iter()
                .find(|(path, _)| path == key || path.starts_with(&format!("{key}.")))
            {
                Some((_, var)) => ConfigError::FromEnv {
                    var: var.clone(),
                    error: Box::new(e),
                },
                None => e,
            },
            _ => e,
        };
        let mut config = Self::resolve(file, overrides).map_err(named)?;
        config.api_key_file = secret_files.api_key;
        config.hmac_secret_file = secret_files.hmac_secret;
        config.webhook_secret_file = secret_files.webhook_secret;
        // Read the key files now, so a bad one stops the start before binding.
        crate::access::token::Tokens::new(&config.tokens)
            .map_err(|e| ConfigError::Keys(e.to_string()))?;
        Ok(config)
    }

    pub fn resolve(file: FileConfig, overrides: Overrides) -> Result<Self, ConfigError> {
        let listen_text = overrides
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen =
            socket_addr(&listen_text).ok_or_else(|| ConfigError::Listen(listen_text.clone()))?;
        let api_listen = match overrides.api_listen.or(file.api_listen) {
            None => None,
            Some(text) if text.is_empty() => None,
            Some(text) => {
                Some(socket_addr(&text).ok_or_else(|| ConfigError::ApiListen(text.clone()))?)
            }
        };
        if api_listen.is_some_and(|a| a == listen && a.port() != 0) {
            return Err(ConfigError::SameListen(listen));
        }
        let trusted_proxies = crate::access::client_addr::TrustedProxies::parse(
            &overrides
                .trusted_proxies
                .or(file.trusted_proxies)
                .unwrap_or_default(),
        )?;
        let positive = |name, value: usize| {
            if value == 0 {
                Err(ConfigError::Zero(name))
            } else {
                Ok(value)
            }
        };
        let positive_time = |name, value: Duration| {
            if value.is_zero() {
                Err(ConfigError::Zero(name))
            } else {
                Ok(value)
            }
        };
        let mut api_keys = match overrides.api_key.or(file.api_key) {
            Some(key) if key.is_empty() => return Err(ConfigError::EmptyKey),
            Some(key) => vec![("default".to_string(), key)],
            None => Vec::new(),
        };
        for (name, key) in file.api_keys {
            if key.is_empty() {
                return Err(ConfigError::EmptyKey);
            }
            api_keys.push((name, key));
        }
        let limits = Limits {
            max_connections: positive(
                "limits.max_connections",
                file.limits
                    .max_connections
                    .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            )?,
            max_connections_per_ip: positive(
                "limits.max_connections_per_ip",
                file.limits
                    .max_connections_per_ip
                    .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP),
            )?,
            max_subscriptions: positive(
                "limits.max_subscriptions",
                file.limits
                    .max_subscriptions
                    .unwrap_or(DEFAULT_MAX_SUBSCRIPTIONS),
            )?,
            client_publish_rate: file
                .limits
                .client_publish_rate
                .unwrap_or(DEFAULT_CLIENT_PUBLISH_RATE),
            client_publish_burst: file
                .limits
                .client_publish_burst
                .unwrap_or(DEFAULT_CLIENT_PUBLISH_BURST),
            max_command_size: positive(
                "limits.max_command_size",
                file.limits
                    .max_command_size
                    .unwrap_or(DEFAULT_MAX_COMMAND_SIZE),
            )?,
        };
        let hooks = match file.hooks {
            None => None,
            Some(h) => Some(hook_settings(h)?),
        };
        let webhooks = webhook_settings(file.webhooks)?;
        let redis_node_ttl = positive_time(
            "redis.node_ttl",
            file.redis.node_ttl.unwrap_or(DEFAULT_REDIS_NODE_TTL),
        )?;
        let redis_refresh_interval = positive_time(
            "redis.refresh_interval",
            file.redis
                .refresh_interval
                .unwrap_or(DEFAULT_REDIS_REFRESH_INTERVAL),
        )?;
        let redis_prefix = file
            .redis
            .prefix
            .unwrap_or_else(|| DEFAULT_REDIS_PREFIX.to_owned());
        let prefix_ok = (1..=64).contains(&redis_prefix.len())
            && redis_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if !prefix_ok {
            return Err(ConfigError::Invalid(format!(
                "redis.prefix: {redis_prefix:?} must be 1 to 64 letters, digits or _ - . :"
            )));
        }
        if redis_refresh_interval >= redis_node_ttl {
            return Err(ConfigError::Invalid(format!(
                "redis.refresh_interval ({}) must be shorter than redis.node_ttl ({}): a node's entries would expire between its rewrites",
                humantime::format_duration(redis_refresh_interval),
                humantime::format_duration(redis_node_ttl)
            )));
        }
        let tokens = crate::access::token::TokenSettings {
            hmac_secret: file.auth.hmac_secret,
            public_keys: file.auth.public_keys,
            jwks_file: file.auth.jwks_file,
            leeway: file.auth.leeway.unwrap_or(DEFAULT_LEEWAY),
            ticket_ttl: file.auth.ticket_ttl.unwrap_or(DEFAULT_TICKET_TTL),
        };
        if tokens.hmac_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err(ConfigError::ShortSecret);
        }
        let engine = overrides
            .engine
            .or(file.engine)
            .unwrap_or_else(|| "memory".to_string());
        if engine != "memory" && !engine.starts_with("redis://") && !engine.starts_with("rediss://")
        {
            return Err(ConfigError::Engine(engine));
        }
        let defaults = ChannelOptions {
            history_size: file
                .history
                .size
                .unwrap_or(herald_core::namespace::DEFAULT_HISTORY_SIZE),
            history_ttl: file
                .history
                .ttl
                .unwrap_or(herald_core::namespace::DEFAULT_HISTORY_TTL),
            ..ChannelOptions::default()
        };
        let mut prefixes = Vec::new();
        let namespaces = if file.namespace.is_empty() {
            default_namespaces()
        } else {
            file.namespace
        };
        for ns in namespaces {
            let valid = ns.prefix.is_empty() || herald_core::ChannelName::new(&ns.prefix).is_ok();
            if !valid {
                return Err(ConfigError::Prefix(ns.prefix));
            }
            if prefixes.iter().any(|(p, _)| p == &ns.prefix) {
                return Err(ConfigError::DuplicatePrefix(ns.prefix));
            }
            let options = ChannelOptions {
                history_size: ns.history_size.unwrap_or(defaults.history_size),
                history_ttl: ns.history_ttl.unwrap_or(defaults.history_ttl),
                client_publish: ns.client_publish.unwrap_or(false),
                private: ns.private.unwrap_or(false),
                presence: ns.presence.unwrap_or(false) || ns.join_leave.unwrap_or(false),
                join_leave: ns.join_leave.unwrap_or(false),
                max_subscribers: ns.max_subscribers.unwrap_or(0),
                ack: ns.ack.unwrap_or(false),
                mailbox_size: ns
                    .mailbox_size
                    .unwrap_or(herald_core::namespace::DEFAULT_MAILBOX_SIZE),
                mailbox_ttl: ns
                    .mailbox_ttl
                    .unwrap_or(herald_core::namespace::DEFAULT_MAILBOX_TTL),
                latest_on_subscribe: ns.latest_on_subscribe.unwrap_or(false),
            };
            if !(1..=MAX_MAILBOX_SIZE).contains(&options.mailbox_size) {
                return Err(ConfigError::Invalid(format!(
                    "namespace {:?}: mailbox_size must be 1 to {MAX_MAILBOX_SIZE}",
                    ns.prefix
                )));
            }
            if options.mailbox_ttl.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "namespace {:?}: mailbox_ttl must be greater than zero",
                    ns.prefix
                )));
            }
            prefixes.push((ns.prefix, options));
        }
        let pusher_apps = pusher_apps(file.pusher, &mut prefixes, &defaults)?;
        Ok(Self {
            listen,
            api_listen,
            trusted_proxies,
            header_timeout: positive_time(
                "header_timeout",
                file.header_timeout.unwrap_or(DEFAULT_HEADER_TIMEOUT),
            )?,
            idle_timeout: positive_time(
                "idle_timeout",
                file.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
            )?,
            api_keys,
            api_key_file: None,
            hmac_secret_file: None,
            webhook_secret_file: None,
            allowed_origins: {
                let origins = file.allowed_origins.unwrap_or_default();
                if let Some(bad) = origins.iter().find(|o| !valid_origin(o)) {
                    return Err(ConfigError::Origin(bad.clone()));
                }
                origins
            },
            tokens,
            max_token_ttl: file.auth.max_token_ttl.unwrap_or(DEFAULT_MAX_TOKEN_TTL),
            limits,
            hooks,
            webhooks,
            presence_grace: file.presence_grace.unwrap_or(DEFAULT_PRESENCE_GRACE),
            engine,
            heartbeat: positive_time("heartbeat", file.heartbeat.unwrap_or(DEFAULT_HEARTBEAT))?,
            queue_size: positive("queue_size", file.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE))?,
            max_payload: positive(
                "max_payload",
                file.max_payload.unwrap_or(DEFAULT_MAX_PAYLOAD),
            )?,
            write_timeout: positive_time(
                "write_timeout",
                file.write_timeout.unwrap_or(DEFAULT_WRITE_TIMEOUT),
            )?,
            shutdown_grace: file.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            drain_delay: file.drain_delay.unwrap_or(DEFAULT_DRAIN_DELAY),
            drain_window: match file.drain_window {
                Some(w) if w > MAX_DRAIN_WINDOW => {
                    return Err(ConfigError::Invalid(format!(
                        "drain_window: at most {} (it is a delay each client waits)",
                        humantime::format_duration(MAX_DRAIN_WINDOW)
                    )))
                }
                Some(w) => w,
                None => DEFAULT_DRAIN_WINDOW,
            },
            poll_timeout_max: file.poll_timeout_max.unwrap_or(DEFAULT_POLL_TIMEOUT_MAX),
            idempotency_window: positive_time(
                "idempotency_window",
                file.idempotency_window
                    .unwrap_or(DEFAULT_IDEMPOTENCY_WINDOW),
            )?,
            log_summary_interval: file
                .log_summary_interval
                .unwrap_or(DEFAULT_LOG_SUMMARY_INTERVAL),
            namespaces: Namespaces::new(defaults, prefixes),
            redis_timeout: positive_time(
                "redis.timeout",
                file.redis.timeout.unwrap_or(DEFAULT_REDIS_TIMEOUT),
            )?,
            redis_ping_interval: positive_time(
                "redis.ping_interval",
                file.redis
                    .ping_interval
                    .unwrap_or(DEFAULT_REDIS_PING_INTERVAL),
            )?,
            redis_node_ttl,
            redis_refresh_interval,
            redis_prefix,
            pusher_apps,
        })
    }

    /// What the engine records for webhooks: the events `[webhooks]` and
    /// the Pusher apps' webhooks want, with the grace; `None` when neither
    /// has a url.
    pub fn event_options(&self) -> Option<EventOptions> {
        let mut events: std::collections::BTreeSet<String> = self
            .webhooks
            .as_ref()
            .map(|w| w.events.clone())
            .unwrap_or_default();
        let herald = events.clone();
        let mut any = self.webhooks.is_some();
        // An event only apps want is recorded for their channels only.
        let mut scopes: std::collections::BTreeMap<String, Vec<String>> =
            std::collections::BTreeMap::new();
        for app in &self.pusher_apps {
            if let Some(w) = &app.webhook {
                any = true;
                for event in w.events.iter().filter(|e| !herald.contains(*e)) {
                    scopes.entry(event.clone()).or_default().push(app.prefix());
                }
                events.extend(w.events.iter().cloned());
            }
        }
        any.then(|| EventOptions {
            events,
            grace: self.presence_grace,
            scopes,
            ..EventOptions::default()
        })
    }
}

/// The `[webhooks]` section, validated whole (also without a `url`, so a
/// typo waiting there is caught); `None` without a `url`.
fn webhook_settings(section: WebhooksSection) -> Result<Option<WebhookSettings>, ConfigError> {
    let err = |m: String| ConfigError::Webhooks(m);
    let events = match section.events {
        None => EVENTS.iter().map(|e| (*e).to_owned()).collect(),
        Some(names) => {
            let mut events = std::collections::BTreeSet::new();
            for name in names {
                if !EVENTS.contains(&name.as_str()) {
                    return Err(err(format!(
                        "events: unknown event {name:?} ({})",
                        EVENTS.join(", ")
                    )));
                }
                events.insert(name);
            }
            events
        }
    };
    let timeout = section.timeout.unwrap_or(DEFAULT_WEBHOOK_TIMEOUT);
    if timeout.is_zero() {
        return Err(err("timeout must be greater than zero".into()));
    }
    let max_attempts = section.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if max_attempts == 0 {
        return Err(err("max_attempts must be at least 1".into()));
    }
    let batch_size = section.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
    if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
        return Err(err(format!(
            "batch_size must be between 1 and {MAX_BATCH_SIZE}"
        )));
    }
    if section.secret.as_deref() == Some("") {
        return Err(err("secret must not be empty".into()));
    }
    let Some(url_text) = section.url.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let url: hyper::Uri = url_text
        .parse()
        .map_err(|_| err(format!("url: {url_text:?} is not a URL")))?;
    if url.scheme_str() != Some("http") || url.host().is_none() {
        return Err(err(
            "url: only http:// URLs are supported (run the receiver on a private network or loopback, or behind a proxy that adds TLS)".into(),
        ));
    }
    let secret = section.secret.ok_or_else(|| {
        err(
            "secret (or secret_file) is required with a url: every request is signed with it"
                .into(),
        )
    })?;
    Ok(Some(WebhookSettings {
        url,
        secret,
        events,
        timeout,
        max_attempts,
        batch_size,
    }))
}

/// The `[[pusher.apps]]`, validated; adds the namespaces their channels
/// need (docs/pusher.md): `pusher:{id}:private-` is private (only the
/// Pusher dialect, after the app's signature, or a Herald token granting
/// it may follow it) and `pusher:{id}:presence-` private with presence
/// and join/leave notices. History settings come from the longest
/// configured prefix of `pusher:{id}:` (or the defaults).
fn pusher_apps(
    section: PusherSection,
    prefixes: &mut Vec<(String, ChannelOptions)>,
    defaults: &ChannelOptions,
) -> Result<Vec<PusherApp>, ConfigError> {
    let mut apps: Vec<PusherApp> = Vec::new();
    for app in section.apps {
        let bad = |message: String| ConfigError::Invalid(format!("pusher.apps: {message}"));
        let id_ok = !app.id.is_empty()
            && app.id.len() <= MAX_PUSHER_APP_ID
            && app
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        if !id_ok {
            return Err(bad(format!(
                "id {:?} must be 1 to {MAX_PUSHER_APP_ID} letters, digits, - or _",
                app.id
            )));
        }
        let key_ok = !app.key.is_empty()
            && app.key.len() <= 128
            && app
                .key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !key_ok {
            return Err(bad(format!(
                "app {:?}: key must be 1 to 128 letters, digits, - _ or .",
                app.id
            )));
        }
        if app.secret.len() < MIN_PUSHER_SECRET {
            return Err(bad(format!(
                "app {:?}: secret must be at least {MIN_PUSHER_SECRET} bytes",
                app.id
            )));
        }
        if apps.iter().any(|a| a.id == app.id) {
            return Err(bad(format!("id {:?} is configured twice", app.id)));
        }
        if apps.iter().any(|a| a.key == app.key) {
            return Err(bad(format!("key {:?} is configured twice", app.key)));
        }
        let prefix = pusher_prefix(&app.id);
        let base = prefixes
            .iter()
            .filter(|(p, _)| prefix.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map_or_else(|| defaults.clone(), |(_, o)| o.clone());
        for (kind, presence) in [("private-", false), ("presence-", true)] {
            let name = format!("{prefix}{kind}");
            let mut options = prefixes
                .iter()
                .find(|(p, _)| *p == name)
                .map_or_else(|| base.clone(), |(_, o)| o.clone());
            options.private = true;
            options.client_publish = false;
            if presence {
                options.presence = true;
                options.join_leave = true;
            }
            prefixes.retain(|(p, _)| *p != name);
            prefixes.push((name, options));
        }
        let max_event_size = app.max_event_size.unwrap_or(DEFAULT_PUSHER_EVENT_SIZE);
        if !(1..=MAX_PUSHER_EVENT_SIZE).contains(&max_event_size) {
            return Err(bad(format!(
                "app {:?}: max_event_size must be 1 to {MAX_PUSHER_EVENT_SIZE} bytes",
                app.id
            )));
        }
        let webhook = pusher_webhook(&app.id, app.webhook_url, app.webhook_events)?;
        apps.push(PusherApp {
            max_event_size,
            id: app.id,
            key: app.key,
            secret: app.secret,
            client_events: app.client_events.unwrap_or(false),
            max_connections: app.max_connections.unwrap_or(0),
            webhook,
        });
    }
    Ok(apps)
}

/// An app's `webhook_url` and `webhook_events`, validated (the events
/// also without a url, so a typo waiting there is caught); `None` without
/// a url.
fn pusher_webhook(
    id: &str,
    url: Option<String>,
    events: Option<Vec<String>>,
) -> Result<Option<PusherWebhook>, ConfigError> {
    let bad = |message: String| ConfigError::Invalid(format!("pusher.apps: app {id:?}: {message}"));
    let names: Vec<&str> = pusher_webhook::EVENTS.iter().map(|(p, _)| *p).collect();
    let events = match events {
        None => pusher_webhook::EVENTS
            .iter()
            .map(|(_, e)| (*e).to_owned())
            .collect(),
        Some(list) => {
            let mut events = std::collections::BTreeSet::new();
            for name in list {
                let Some(event) = pusher_webhook::outbox_event(&name) else {
                    return Err(bad(format!(
                        "webhook_events: unknown event {name:?} ({})",
                        names.join(", ")
                    )));
                };
                events.insert(event.to_owned());
            }
            events
        }
    };
    let Some(url_text) = url.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let url: hyper::Uri = url_text
        .parse()
        .map_err(|_| bad(format!("webhook_url: {url_text:?} is not a URL")))?;
    if url.scheme_str() != Some("http") || url.host().is_none() {
        return Err(bad(
            "webhook_url: only http:// URLs are supported (run the receiver on a private network or loopback, or behind a proxy that adds TLS)".into(),
        ));
    }
    Ok(Some(PusherWebhook { url, events }))
}

/// `127.0.0.1:7070`, `[::1]:7070`, or a name with a port (`localhost:7070`),
/// resolved now (the first address).
/// The `[hooks]` section, validated.
fn hook_settings(section: HooksSection) -> Result<HookSettings, ConfigError> {
    let url: hyper::Uri = section
        .url
        .parse()
        .map_err(|_| ConfigError::Hooks(format!("url: {:?} is not a URL", section.url)))?;
    if url.scheme_str() != Some("http") {
        return Err(ConfigError::Hooks(
            "url: only http:// URLs are supported (run the hook endpoint on a private network or loopback)".into(),
        ));
    }
    let mut events = HashSet::new();
    for name in &section.events {
        let event = HookEvent::parse(name).ok_or_else(|| {
            ConfigError::Hooks(format!(
                "events: unknown event {name:?} (connect, subscribe, publish, disconnect, rpc)"
            ))
        })?;
        events.insert(event);
    }
    let allow_on_error = match section.on_error.as_deref() {
        None | Some("deny") => false,
        Some("allow") => true,
        Some(other) => {
            return Err(ConfigError::Hooks(format!(
                "on_error: {other:?} is neither \"deny\" nor \"allow\""
            )))
        }
    };
    Ok(HookSettings {
        url,
        events,
        timeout: section.timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT),
        allow_on_error,
    })
}

fn socket_addr(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Some(addr);
    }
    use std::net::ToSocketAddrs;
    text.to_socket_addrs().ok()?.next()
}

/// `*`, or `scheme://host[:port]` with an http(s) scheme and nothing after.
fn valid_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && !rest.contains('/')
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// `redis://user:secret@host/0` as `redis://user:<redacted>@host/0`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:<redacted>@{host}")
        }
        None => url.to_string(),
    }
}

impl Config {
    /// The effective settings as TOML, secrets redacted (`herald
    /// check-config`): what the server would run with.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let d = |d: Duration| format!("\"{}\"", humantime::format_duration(d));
        let mut out = String::new();
        let _ = writeln!(out, "listen = \"{}\"", self.listen);
        if let Some(api) = self.api_listen {
            let _ = writeln!(out, "api_listen = \"{api}\"");
        }
        let keys: Vec<String> = self
            .api_keys
            .iter()
            .map(|(name, _)| format!("\"{name} = <redacted>\""))
            .collect();
        let _ = writeln!(out, "api_keys = [{}]", keys.join(", "));
        if let Some(path) = &self.api_key_file {
            let _ = writeln!(out, "api_key_file = {:?}", path.display().to_string());
        }
        let _ = writeln!(out, "engine = \"{}\"", redact_url(&self.engine));
        let _ = writeln!(
            out,
            "trusted_proxies = {:?}",
            self.trusted_proxies.entries()
        );
        let _ = writeln!(out, "allowed_origins = {:?}", self.allowed_origins);
        let _ = writeln!(out, "heartbeat = {}", d(self.heartbeat));
        let _ = writeln!(out, "header_timeout = {}", d(self.header_timeout));
        let _ = writeln!(out, "idle_timeout = {}", d(self.idle_timeout));
        let _ = writeln!(out, "write_timeout = {}", d(self.write_timeout));
        let _ = writeln!(out, "shutdown_grace = {}", d(self.shutdown_grace));
        let _ = writeln!(out, "drain_delay = {}", d(self.drain_delay));
        let _ = writeln!(out, "drain_window = {}", d(self.drain_window));
        let _ = writeln!(out, "poll_timeout_max = {}", d(self.poll_timeout_max));
        let _ = writeln!(out, "idempotency_window = {}", d(self.idempotency_window));
        let _ = writeln!(out, "presence_grace = {}", d(self.presence_grace));
        let _ = writeln!(
            out,
            "log_summary_interval = {}",
            d(self.log_summary_interval)
        );
        let _ = writeln!(out, "queue_size = {}", self.queue_size);
        let _ = writeln!(out, "max_payload = {}", self.max_payload);
        let l = &self.limits;
        let _ = writeln!(out, "\n[limits]\nmax_connections = {}\nmax_connections_per_ip = {}\nmax_subscriptions = {}\nclient_publish_rate = {}\nclient_publish_burst = {}\nmax_command_size = {}",
            l.max_connections, l.max_connections_per_ip, l.max_subscriptions,
            l.client_publish_rate, l.client_publish_burst, l.max_command_size);
        let t = &self.tokens;
        let secret = if t.hmac_secret.is_some() {
            "\"<redacted>\""
        } else {
            "\"(none: a random one per process)\""
        };
        let _ = writeln!(out, "\n[auth]\nhmac_secret = {secret}");
        if let Some(path) = &self.hmac_secret_file {
            let _ = writeln!(out, "hmac_secret_file = {:?}", path.display().to_string());
        }
        let _ = writeln!(out, "public_keys = {:?}\njwks_file = {:?}\nleeway = {}\nticket_ttl = {}\nmax_token_ttl = {}",
            t.public_keys, t.jwks_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            d(t.leeway), d(t.ticket_ttl), d(self.max_token_ttl));
        let _ = writeln!(
            out,
            "\n[redis]\nprefix = {:?}\ntimeout = {}\nping_interval = {}\nnode_ttl = {}\nrefresh_interval = {}",
            self.redis_prefix,
            d(self.redis_timeout),
            d(self.redis_ping_interval),
            d(self.redis_node_ttl),
            d(self.redis_refresh_interval)
        );
        match &self.webhooks {
            None => {
                let _ = writeln!(
                    out,
                    "\n[webhooks]\n# no url: no events are recorded or sent"
                );
            }
            Some(w) => {
                let events: Vec<&String> = w.events.iter().collect();
                let _ = writeln!(
                    out,
                    "\n[webhooks]\nurl = \"{}\"\nsecret = \"<redacted>\"",
                    redact_url(&w.url.to_string())
                );
                if let Some(path) = &self.webhook_secret_file {
                    let _ = writeln!(out, "secret_file = {:?}", path.display().to_string());
                }
                let _ = writeln!(
                    out,
                    "events = {events:?}\ntimeout = {}\nmax_attempts = {}\nbatch_size = {}",
                    d(w.timeout),
                    w.max_attempts,
                    w.batch_size
                );
            }
        }
        if let Some(h) = &self.hooks {
            let mut events: Vec<String> = h
                .events
                .iter()
                .map(|e| format!("{e:?}").to_lowercase())
                .collect();
            events.sort();
            let _ = writeln!(
                out,
                "\n[hooks]\nurl = \"{}\"\nevents = {:?}\ntimeout = {}\non_error = \"{}\"",
                redact_url(&h.url.to_string()),
                events,
                d(h.timeout),
                if h.allow_on_error { "allow" } else { "deny" }
            );
        }
        for app in &self.pusher_apps {
            let _ = writeln!(
                out,
                "\n[[pusher.apps]]\nid = {:?}\nkey = {:?}\nsecret = \"<redacted>\"\nclient_events = {}\nmax_connections = {}\nmax_event_size = {}",
                app.id, app.key, app.client_events, app.max_connections, app.max_event_size
            );
            if let Some(w) = &app.webhook {
                let events: Vec<&str> = pusher_webhook::EVENTS
                    .iter()
                    .filter(|(_, e)| w.events.contains(*e))
                    .map(|(p, _)| *p)
                    .collect();
                let _ = writeln!(
                    out,
                    "webhook_url = \"{}\"\nwebhook_events = {:?}",
                    redact_url(&w.url.to_string()),
                    events
                );
            }
        }
        let (default, prefixes) = self.namespaces.entries();
        let _ = writeln!(
            out,
            "\n[history]\nsize = {}\nttl = {}",
            default.history_size,
            d(default.history_ttl)
        );
        for (prefix, o) in prefixes {
            let _ = writeln!(out, "\n[[namespace]]\nprefix = \"{prefix}\"\nhistory_size = {}\nhistory_ttl = {}\nclient_publish = {}\nprivate = {}\npresence = {}\njoin_leave = {}\nmax_subscribers = {}\nack = {}\nmailbox_size = {}\nmailbox_ttl = {}\nlatest_on_subscribe = {}",
                o.history_size, d(o.history_ttl), o.client_publish, o.private, o.presence, o.join_leave, o.max_subscribers, o.ack, o.mailbox_size, d(o.mailbox_ttl), o.latest_on_subscribe);
        }
        out
    }
}

/// A commented starting configuration with fresh random secrets (`herald
/// gen-config`). `secret` gives random hex strings.
pub fn generated(mut secret: impl FnMut() -> String) -> String {
    let api_key = secret();
    let hmac = format!("{}{}", secret(), secret());
    let webhook_secret = secret();
    format!(
        "# Herald configuration (docs/configuration.md). Generated by `herald gen-config`.
# Keep this file private: it holds the backend's API key and the token secret.
# Every key can also come from the environment, which wins over this file:
# HERALD_ and the key path in upper case, __ between levels
# (HERALD_HEARTBEAT=20s, HERALD_HISTORY__SIZE=50); flags win over both.

listen = \"127.0.0.1:7070\"          # clients connect here
# api_listen = \"127.0.0.1:7071\"    # the backend API and metrics on their own address
api_key = \"{api_key}\"               # the backend sends Authorization: Bearer <api_key>
# api_key_file = \"/run/secrets/herald_api_key\"  # or read it from a file (instead of api_key)
engine = \"memory\"                  # or redis://host:6379/0 to run many nodes as one
# trusted_proxies = [\"127.0.0.1/32\"] # proxies whose X-Forwarded-For names the client
# allowed_origins = [\"https://app.example.com\"]  # browser origins besides the server's own

heartbeat = \"15s\"
header_timeout = \"10s\"
idle_timeout = \"60s\"
drain_delay = \"5s\"               # on SIGTERM: /ready answers 503, the node serves on this long
drain_window = \"10s\"             # then clients reconnect spread over this

[history]
size = 100
ttl = \"10m\"

[auth]
hmac_secret = \"{hmac}\"   # signs /api/tokens answers and tickets; verifies HS256 tokens
# hmac_secret_file = \"/run/secrets/herald_hmac_secret\"  # or read it from a file (instead of hmac_secret)
max_token_ttl = \"24h\"

[limits]
max_connections = 1000000
max_connections_per_ip = 10000

# Webhooks: user.online/offline and channel.occupied/vacated posted to your
# backend, signed with the secret (docs/webhooks.md). Uncomment to use.
# [webhooks]
# url = \"http://127.0.0.1:9000/herald/events\"
# secret = \"{webhook_secret}\"

[[namespace]]
prefix = \"chat:\"
client_publish = true
presence = true
join_leave = true
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let file: FileConfig = toml::from_str(text).map_err(|e| e.message().to_string())?;
        Config::resolve(file, Overrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn redis_section() {
        let c = parse("[redis]\ntimeout = \"10s\"\nping_interval = \"20s\"").expect("valid");
        assert_eq!(c.redis_timeout, Duration::from_secs(10));
        assert_eq!(c.redis_ping_interval, Duration::from_secs(20));
        let d = Config::default();
        assert_eq!(d.redis_timeout, DEFAULT_REDIS_TIMEOUT);
        let zero = parse("[redis]\ntimeout = \"0s\"").expect_err("zero");
        assert!(zero.contains("redis.timeout"), "{zero}");
        let unknown = parse("[redis]\nurl = \"x\"").expect_err("unknown key");
        assert!(unknown.contains("url"), "{unknown}");
    }

    #[test]
    fn defaults() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.api_keys.is_empty());
        assert_eq!(c.max_payload, 65_536);
        assert_eq!(c.namespaces.options("x").history_size, 100);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("listn = \"1.2.3.4:5\"").expect_err("unknown key");
        assert!(err.contains("listn"), "{err}");
        let err = parse("[[namespace]]\nprefix = \"a:\"\nprivat = true").expect_err("unknown");
        assert!(err.contains("privat"), "{err}");
    }

    #[test]
    fn namespaces_and_durations() {
        let c = parse(
            "heartbeat = \"2s\"\n[history]\nsize = 7\n[[namespace]]\nprefix = \"chat:\"\nhistory_ttl = \"1m\"\nclient_publish = true",
        )
        .expect("valid");
        assert_eq!(c.heartbeat, Duration::from_secs(2));
        let chat = c.namespaces.options("chat:lobby");
        assert_eq!(chat.history_size, 7);
        assert_eq!(chat.history_ttl, Duration::from_secs(60));
        assert!(chat.client_publish);
        assert!(!chat.latest_on_subscribe, "off unless asked for");
    }

    #[test]
    fn latest_on_subscribe_is_per_namespace_and_shown() {
        let c = parse(
            "[[namespace]]\nprefix = \"price:\"\nlatest_on_subscribe = true\n[[namespace]]\nprefix = \"news:\"",
        )
        .expect("valid");
        assert!(c.namespaces.options("price:eur").latest_on_subscribe);
        assert!(!c.namespaces.options("news:x").latest_on_subscribe);
        assert!(!c.namespaces.options("other").latest_on_subscribe);
        let summary = c.summary();
        assert!(
            summary.contains("prefix = \"price:\"\nhistory_size = 100\nhistory_ttl = \"10m\"\nclient_publish = false\nprivate = false\npresence = false\njoin_leave = false\nmax_subscribers = 0\nack = false\nmailbox_size = 100\nmailbox_ttl = \"1day\"\nlatest_on_subscribe = true"),
            "{summary}"
        );
        assert!(summary.contains("prefix = \"news:\""), "{summary}");
        assert!(parse("[[namespace]]\nprefix = \"a:\"\nlatest_on_subscribe = 1").is_err());
    }

    #[test]
    fn edge_settings() {
        let c = parse(
            "api_listen = \"127.0.0.1:7071\"\nheader_timeout = \"3s\"\nidle_timeout = \"20s\"\ntrusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]",
        )
        .expect("valid");
        assert_eq!(c.api_listen.map(|a| a.port()), Some(7071));
        assert_eq!(c.header_timeout, Duration::from_secs(3));
        assert_eq!(c.idle_timeout, Duration::from_secs(20));
        assert!(c.trusted_proxies.contains("10.1.2.3".parse().expect("ip")));
        let d = Config::default();
        assert_eq!(d.header_timeout, DEFAULT_HEADER_TIMEOUT);
        assert_eq!(d.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert!(d.api_listen.is_none() && d.trusted_proxies.is_empty());
        let bad = parse("trusted_proxies = [\"everyone\"]").expect_err("invalid");
        assert!(
            bad.contains("trusted_proxies") && bad.contains("everyone"),
            "{bad}"
        );
        let same = parse("listen = \"127.0.0.1:7070\"\napi_listen = \"127.0.0.1:7070\"");
        assert!(same.expect_err("same").contains("api_listen"));
        assert!(parse("header_timeout = \"0s\"").is_err());
    }

    #[test]
    fn generated_config_is_valid_and_summaries_redact_secrets() {
        let mut n = 0;
        let text = generated(|| {
            n += 1;
            format!("{n:032x}")
        });
        let file: FileConfig = toml::from_str(&text).expect("generated TOML parses");
        let c = Config::resolve(file, Overrides::default()).expect("and is valid");
        assert_eq!(c.api_keys.len(), 1);
        assert!(c.tokens.hmac_secret.as_ref().is_some_and(|s| s.len() >= 32));
        let summary = c.summary();
        assert!(!summary.contains(&c.api_keys[0].1), "{summary}");
        assert!(!summary.contains(c.tokens.hmac_secret.as_deref().unwrap_or("x")));
        assert!(summary.contains("<redacted>"));
        assert_eq!(
            redact_url("redis://u:pw@h:6379/0"),
            "redis://u:<redacted>@h:6379/0"
        );
    }

    #[test]
    fn origins_names_and_positions() {
        assert!(parse(
            "allowed_origins = [\"https://app.example.com\", \"http://localhost:3000\", \"*\"]"
        )
        .is_ok());
        let bad = parse("allowed_origins = [\"not a url\"]").expect_err("refused");
        assert!(bad.contains("not a url"), "{bad}");
        assert!(parse("allowed_origins = [\"https://app.example.com/path\"]").is_err());
        let c = parse("listen = \"localhost:7070\"").expect("a name with a port");
        assert!(c.listen.ip().is_loopback() && c.listen.port() == 7070);
        assert_eq!(line_column("a = 1\nbb = x", 11), (2, 6));
    }

    /// Loads `toml` (as a file) with `env` and `overrides`, as `herald` does.
    fn load_with(toml: &str, env: &[(&str, &str)], overrides: Overrides) -> Result<Config, String> {
        let path = temp_path("config.toml", toml);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let result = Config::load(Some(&path), &env, overrides).map_err(|e| e.to_string());
        let _ = std::fs::remove_file(&path);
        result
    }

    fn load_env(toml: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        load_with(toml, env, Overrides::default())
    }

    fn temp_path(name: &str, text: &str) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "herald-config-test-{}-{n}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, text).expect("write temp file");
        path
    }

    #[test]
    fn the_environment_wins_over_the_file_and_flags_over_both() {
        let file =
            "listen = \"127.0.0.1:1\"\nheartbeat = \"5s\"\n[history]\nsize = 7\nttl = \"1m\"\n";
        let c = load_env(
            file,
            &[
                ("HERALD_HEARTBEAT", "20s"),
                ("HERALD_HISTORY__SIZE", "50"),
                ("HERALD_LIMITS__MAX_CONNECTIONS_PER_IP", "100"),
                ("HERALD_LISTEN", "127.0.0.1:2"),
            ],
        )
        .expect("valid");
        assert_eq!(c.heartbeat, Duration::from_secs(20));
        let history = c.namespaces.options("x");
        assert_eq!(history.history_size, 50);
        // The rest of the file's section stays.
        assert_eq!(history.history_ttl, Duration::from_secs(60));
        assert_eq!(c.limits.max_connections_per_ip, 100);
        assert_eq!(c.listen.port(), 2);
        let flagged = load_with(
            file,
            &[("HERALD_LISTEN", "127.0.0.1:2")],
            Overrides {
                listen: Some("127.0.0.1:3".into()),
                ..Overrides::default()
            },
        )
        .expect("valid");
        assert_eq!(flagged.listen.port(), 3);
    }

    #[test]
    fn environment_values_take_the_keys_types() {
        let c = load_env(
            "",
            &[
                ("HERALD_API_KEY", "12345"),
                ("HERALD_API_KEYS__BILLING", "k-billing"),
                (
                    "HERALD_ALLOWED_ORIGINS",
                    "https://a.example, http://localhost:3000",
                ),
                ("HERALD_TRUSTED_PROXIES", "127.0.0.1/32,10.0.0.0/8"),
                ("HERALD_AUTH__MAX_TOKEN_TTL", "1h"),
                ("HERALD_HOOKS__URL", "http://127.0.0.1:9/h"),
                ("HERALD_HOOKS__EVENTS", "connect,publish"),
                // The binary's own are not keys.
                ("HERALD_LOG", "debug"),
                ("HERALD_TEST_ENGINE", "redis://x"),
                ("OTHER", "x"),
            ],
        )
        .expect("valid");
        assert_eq!(
            c.api_keys,
            vec![
                ("default".to_string(), "12345".to_string()),
                ("billing".to_string(), "k-billing".to_string())
            ]
        );
        assert_eq!(
            c.allowed_origins,
            vec!["https://a.example", "http://localhost:3000"]
        );
        assert!(c.trusted_proxies.contains("10.1.2.3".parse().expect("ip")));
        assert_eq!(c.max_token_ttl, Duration::from_secs(3600));
        assert_eq!(c.hooks.map(|h| h.events.len()), Some(2));
        assert_eq!(c.engine, "memory");
    }

    #[test]
    fn unknown_or_bad_environment_values_name_the_variable() {
        for (var, value, named) in [
            ("HERALD_HISTORY__SIZEE", "5", "history.sizee"),
            ("HERALD_LISTN", "x", "listn"),
            ("HERALD_NAMESPACE__PREFIX", "a:", "namespace"),
            ("HERALD_HISTORY__SIZE", "many", "not a whole number"),
            ("HERALD_HISTORY__SIZE", "-1", "not a whole number"),
            ("HERALD_HEARTBEAT", "soon", "not a duration"),
            (
                "HERALD_HEARTBEAT",
                "0s",
                "heartbeat must be greater than zero",
            ),
            ("HERALD_LISTEN", "nowhere", "listen"),
            ("HERALD_ALLOWED_ORIGINS", "not a url", "not a url"),
            ("HERALD_AUTH__HMAC_SECRET", "short", "32 bytes"),
            ("HERALD_HOOKS__TIMEOUT", "2s", "missing field `url`"),
            ("HERALD_API_KEY", "", "must not be empty"),
            ("HERALD_QUEUE_SIZE", "", "not a whole number"),
            ("HERALD_LIMITS__CLIENT_PUBLISH_RATE", "99999999999", "u32"),
        ] {
            let err = load_env("", &[(var, value)]).expect_err(var);
            assert!(err.starts_with(var), "{var}={value}: {err}");
            assert!(err.contains(named), "{var}={value}: {err}");
        }
        // A flag's bad value is not blamed on the environment.
        let err = load_with(
            "",
            &[("HERALD_LISTEN", "127.0.0.1:0")],
            Overrides {
                listen: Some("nowhere".into()),
                ..Overrides::default()
            },
        )
        .expect_err("bad flag");
        assert!(!err.contains("HERALD_LISTEN"), "{err}");
        // The file's errors still name their line.
        let err = load_env("[history]\nsize = \"x\"\n", &[]).expect_err("bad type");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn an_empty_list_clears_the_files() {
        let file = "allowed_origins = [\"https://a.example\"]\napi_listen = \"127.0.0.1:7071\"";
        let c = load_env(
            file,
            &[("HERALD_ALLOWED_ORIGINS", ""), ("HERALD_API_LISTEN", "")],
        )
        .expect("valid");
        assert!(c.allowed_origins.is_empty());
        assert!(c.api_listen.is_none());
    }

    #[test]
    fn secrets_can_be_read_from_files() {
        let key = temp_path("key", "from-a-file\n");
        let secret = temp_path("secret", &format!("{}\r\n", "s".repeat(32)));
        let file = format!(
            "api_key_file = {:?}\n[auth]\nhmac_secret_file = {:?}\n",
            key.display().to_string(),
            secret.display().to_string()
        );
        let c = load_env(&file, &[]).expect("valid");
        assert_eq!(c.api_keys[0].1, "from-a-file");
        assert_eq!(c.tokens.hmac_secret.as_deref(), Some(&*"s".repeat(32)));
        let summary = c.summary();
        assert!(summary.contains(&format!("api_key_file = {:?}", key.display().to_string())));
        assert!(summary.contains("hmac_secret_file = "), "{summary}");
        assert!(!summary.contains("from-a-file") && !summary.contains(&"s".repeat(32)));
        // From the environment, replacing the file's api_key.
        let key_path = key.display().to_string();
        let c = load_env(
            "api_key = \"in-file\"",
            &[("HERALD_API_KEY_FILE", &key_path)],
        )
        .expect("valid");
        assert_eq!(c.api_keys[0].1, "from-a-file");
        // The flag wins, and the file is not read.
        let c = load_with(
            "api_key_file = \"/nonexistent/key\"",
            &[],
            Overrides {
                api_key: Some("flag".into()),
                ..Overrides::default()
            },
        )
        .expect("valid");
        assert_eq!(c.api_keys[0].1, "flag");
        // Both forms in one place is ambiguous; a missing file is named.
        let both = load_env(&format!("api_key = \"k\"\n{file}"), &[]).expect_err("both");
        assert!(both.contains("api_key and api_key_file"), "{both}");
        let both = load_env(
            "",
            &[
                ("HERALD_AUTH__HMAC_SECRET", "x"),
                ("HERALD_AUTH__HMAC_SECRET_FILE", "/y"),
            ],
        )
        .expect_err("both");
        assert!(
            both.contains("auth.hmac_secret and auth.hmac_secret_file"),
            "{both}"
        );
        let missing =
            load_env("[auth]\nhmac_secret_file = \"/nonexistent/s\"", &[]).expect_err("missing");
        assert!(
            missing.contains("auth.hmac_secret_file") && missing.contains("/nonexistent/s"),
            "{missing}"
        );
        let empty = temp_path("empty", "\n");
        let err = load_env("", &[("HERALD_API_KEY_FILE", &empty.display().to_string())])
            .expect_err("empty");
        assert!(err.contains("empty"), "{err}");
        for p in [key, secret, empty] {
            let _ = std::fs::remove_file(p);
        }
    }

    /// The fields serde expects in a section, from its unknown-field error.
    fn fields_of(section: &str) -> HashSet<String> {
        let text = if section.is_empty() {
            "zz_probe = 1".to_string()
        } else {
            format!("[{section}]\nzz_probe = 1")
        };
        let err = toml::from_str::<FileConfig>(&text)
            .expect_err("unknown field")
            .message()
            .to_string();
        // "unknown field `zz_probe`, expected `a` or `b`" / "expected one of `a`, ..."
        let list = err.split_once("expected").map_or("", |(_, list)| list);
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_environment_table_covers_every_key() {
        let top: HashSet<String> = ENV_KEYS
            .iter()
            .map(|(k, _)| k.split('.').next().unwrap_or(k).to_string())
            .chain(["namespace".to_string(), "pusher".to_string()])
            .collect();
        assert_eq!(top, fields_of(""));
        for section in ["history", "auth", "limits", "hooks", "webhooks", "redis"] {
            let keys: HashSet<String> = ENV_KEYS
                .iter()
                .filter_map(|(k, _)| k.strip_prefix(&format!("{section}.")))
                .map(str::to_string)
                .collect();
            assert_eq!(keys, fields_of(section), "[{section}]");
        }
    }

    #[test]
    fn webhooks_section() {
        let d = Config::default();
        assert!(d.webhooks.is_none() && d.event_options().is_none());
        assert_eq!(d.presence_grace, DEFAULT_PRESENCE_GRACE);
        let c = parse(
            "presence_grace = \"2s\"\n[webhooks]\nurl = \"http://127.0.0.1:9/w\"\nsecret = \"s\"\nevents = [\"user.online\", \"user.offline\"]\ntimeout = \"1s\"\nmax_attempts = 3\nbatch_size = 10",
        )
        .expect("valid");
        let w = c.webhooks.as_ref().expect("webhooks");
        assert_eq!((w.max_attempts, w.batch_size), (3, 10));
        assert_eq!(w.timeout, Duration::from_secs(1));
        let events = c.event_options().expect("events");
        assert_eq!(events.grace, Duration::from_secs(2));
        assert!(events.records("user.online") && !events.records("channel.occupied"));
        assert!(
            !format!("{c:?}").contains("secret: \"s\""),
            "Debug redacts the secret"
        );
        let all = parse("[webhooks]\nurl = \"http://h/w\"\nsecret = \"s\"").expect("valid");
        let w = all.webhooks.expect("webhooks");
        assert_eq!(w.events.len(), EVENTS.len(), "every event by default");
        assert_eq!(
            (w.timeout, w.max_attempts, w.batch_size),
            (DEFAULT_WEBHOOK_TIMEOUT, 8, 100)
        );
        for (text, named) in [
            ("[webhooks]\nurl = \"http://h/w\"", "secret"),
            (
                "[webhooks]\nurl = \"https://h/w\"\nsecret = \"s\"",
                "http://",
            ),
            ("[webhooks]\nurl = \"http://h/w\"\nsecret = \"\"", "empty"),
            ("[webhooks]\nevents = [\"user.onlin\"]", "user.onlin"),
            ("[webhooks]\nmax_attempts = 0", "max_attempts"),
            ("[webhooks]\nbatch_size = 0", "batch_size"),
            ("[webhooks]\ntimeout = \"0s\"", "timeout"),
            ("[webhooks]\nurll = \"x\"", "urll"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(named), "{text}: {err}");
        }
        // No url: nothing recorded, the rest still checked.
        assert!(parse("[webhooks]\nsecret = \"s\"")
            .expect("valid")
            .webhooks
            .is_none());
    }

    #[test]
    fn webhooks_from_the_environment_and_a_secret_file() {
        let secret = temp_path("webhook-secret", "from-a-file\n");
        let path = secret.display().to_string();
        let c = load_env(
            "",
            &[
                ("HERALD_WEBHOOKS__URL", "http://127.0.0.1:9/w"),
                ("HERALD_WEBHOOKS__SECRET_FILE", &path),
                (
                    "HERALD_WEBHOOKS__EVENTS",
                    "channel.occupied, channel.vacated",
                ),
                ("HERALD_WEBHOOKS__MAX_ATTEMPTS", "2"),
                ("HERALD_PRESENCE_GRACE", "500ms"),
                ("HERALD_REDIS__NODE_TTL", "4s"),
                ("HERALD_REDIS__REFRESH_INTERVAL", "1s"),
            ],
        )
        .expect("valid");
        let w = c.webhooks.as_ref().expect("webhooks");
        assert_eq!(w.secret, "from-a-file");
        assert_eq!(w.events.len(), 2);
        assert_eq!(w.max_attempts, 2);
        assert_eq!(c.presence_grace, Duration::from_millis(500));
        assert_eq!(c.redis_node_ttl, Duration::from_secs(4));
        let summary = c.summary();
        assert!(summary.contains("[webhooks]") && summary.contains("max_attempts = 2"));
        assert!(summary.contains("presence_grace = \"500ms\""), "{summary}");
        assert!(summary.contains("node_ttl = \"4s\""), "{summary}");
        assert!(
            summary.contains(&format!("secret_file = {path:?}")),
            "{summary}"
        );
        assert!(!summary.contains("from-a-file"), "{summary}");
        let both = load_env(
            "[webhooks]\nsecret = \"x\"",
            &[
                ("HERALD_WEBHOOKS__SECRET", "y"),
                ("HERALD_WEBHOOKS__SECRET_FILE", &path),
            ],
        )
        .expect_err("both");
        assert!(
            both.contains("webhooks.secret and webhooks.secret_file"),
            "{both}"
        );
        // The environment's form replaces the file's.
        let c = load_env(
            "[webhooks]\nurl = \"http://h/w\"\nsecret = \"in-file\"",
            &[("HERALD_WEBHOOKS__SECRET_FILE", &path)],
        )
        .expect("valid");
        assert_eq!(c.webhooks.expect("webhooks").secret, "from-a-file");
        let _ = std::fs::remove_file(secret);
    }

    #[test]
    fn redis_refresh_must_be_shorter_than_node_ttl() {
        let err =
            parse("[redis]\nnode_ttl = \"2s\"\nrefresh_interval = \"2s\"").expect_err("equal");
        assert!(err.contains("redis.refresh_interval"), "{err}");
        assert!(parse("[redis]\nnode_ttl = \"0s\"")
            .expect_err("zero")
            .contains("redis.node_ttl"));
        let c = parse("[redis]\nnode_ttl = \"3s\"\nrefresh_interval = \"1s\"\nprefix = \"app-1\"")
            .expect("valid");
        assert_eq!(c.redis_refresh_interval, Duration::from_secs(1));
        assert_eq!(c.redis_prefix, "app-1");
        assert_eq!(Config::default().redis_prefix, "herald");
        let bad = parse("[redis]\nprefix = \"a{b}\"").expect_err("braces");
        assert!(bad.contains("redis.prefix"), "{bad}");
    }

    #[test]
    fn pusher_apps() {
        let c = parse(
            "[[pusher.apps]]\nid = \"1\"\nkey = \"k1\"\nsecret = \"s3cr3t-s3cr3t\"\nclient_events = true\nmax_connections = 5",
        )
        .expect("valid");
        let app = &c.pusher_apps[0];
        assert!(app.client_events && app.max_connections == 5);
        assert_eq!(app.prefix(), "pusher:1:");
        assert!(herald_core::ChannelName::new(&app.prefix()).is_ok());
        let presence = c.namespaces.options("pusher:1:presence-room");
        assert!(presence.private && presence.presence && presence.join_leave);
        assert!(c.namespaces.options("pusher:1:private-x").private);
        assert!(!c.namespaces.options("pusher:1:news").private);
        let summary = c.summary();
        assert!(summary.contains("[[pusher.apps]]") && !summary.contains("s3cr3t"));
        assert!(!format!("{app:?}").contains("s3cr3t"));
        for bad in [
            "[[pusher.apps]]\nid = \"a b\"\nkey = \"k\"\nsecret = \"12345678\"",
            "[[pusher.apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"short\"",
            "[[pusher.apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"12345678\"\n[[pusher.apps]]\nid = \"2\"\nkey = \"k\"\nsecret = \"12345678\"",
            "[[pusher.apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"12345678\"\nclient_event = true",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(app.webhook.is_none() && c.event_options().is_none());
        let c = parse(
            "[[pusher.apps]]\nid = \"1\"\nkey = \"k1\"\nsecret = \"s3cr3t-s3cr3t\"\nwebhook_url = \"http://127.0.0.1:9/p\"\nwebhook_events = [\"member_added\", \"client_event\"]",
        )
        .expect("valid");
        let webhook = c.pusher_apps[0].webhook.as_ref().expect("a webhook");
        let want: std::collections::BTreeSet<String> = [
            herald_core::event::MEMBER_ADDED,
            herald_core::event::PUSHER_CLIENT_EVENT,
        ]
        .iter()
        .map(|e| (*e).to_owned())
        .collect();
        assert_eq!(webhook.events, want);
        // The engine records what the apps want, even without [webhooks],
        // for the apps' channels only.
        let options = c.event_options().expect("recording");
        assert_eq!(options.events, want);
        assert!(options.records_for(herald_core::event::MEMBER_ADDED, "pusher:1:presence-x"));
        assert!(!options.records_for(herald_core::event::MEMBER_ADDED, "room"));
        assert!(c
            .summary()
            .contains("webhook_events = [\"member_added\", \"client_event\"]"));
        let env = [("HERALD_PUSHER__APPS".to_string(), "x".to_string())];
        let err = Config::load(None, &env, Overrides::default()).expect_err("refused");
        assert!(err
            .to_string()
            .contains("pusher apps cannot come from the environment"));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse("queue_size = 0").is_err());
        assert!(parse("listen = \"nowhere\"").is_err());
        assert!(parse("engine = \"mysql://x\"").is_err());
        assert!(parse("[[namespace]]\nprefix = \"a b\"").is_err());
    }
}
