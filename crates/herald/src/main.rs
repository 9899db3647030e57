//! The `herald` binary: command line, logging, config, signals. Wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald_server::config::{Config, Overrides};

#[derive(Parser)]
#[command(name = "herald", version, about = "A real-time push server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        // Every config key can also come from the environment (HERALD_LISTEN,
        // HERALD_HISTORY__SIZE, ...: docs/configuration.md); the config
        // layer reads those, below the flags and above the file.
        /// Address to listen on (default 127.0.0.1:7070; port 0 picks a free
        /// one). Environment: HERALD_LISTEN.
        #[arg(long)]
        listen: Option<String>,
        /// A separate address for the backend API, metrics and admin
        /// (e.g. 127.0.0.1:7071); the public address then serves clients only.
        /// Environment: HERALD_API_LISTEN.
        #[arg(long)]
        api_listen: Option<String>,
        /// Proxies whose Forwarded / X-Forwarded-For is believed (comma-separated
        /// addresses or CIDR blocks, e.g. 127.0.0.1/32,10.0.0.0/8).
        /// Environment: HERALD_TRUSTED_PROXIES.
        #[arg(long, value_delimiter = ',')]
        trusted_proxies: Option<Vec<String>>,
        /// API key the backend must send as `Authorization: Bearer KEY`.
        /// Environment: HERALD_API_KEY, or HERALD_API_KEY_FILE for a file holding it.
        #[arg(long)]
        api_key: Option<String>,
        /// TOML config file (see docs/configuration.md).
        #[arg(long, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
        /// `memory` (default) or `redis://host:port/db`. Environment: HERALD_ENGINE.
        #[arg(long)]
        engine: Option<String>,
        /// Log lines as `text` (for people) or `json` (one object a line:
        /// time, level, target, message, fields).
        #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate a configuration and print the effective settings, secrets
    /// redacted (exit 0, or 2 with a message naming the bad key).
    CheckConfig {
        /// TOML config file (default: $HERALD_CONFIG, or the built-in defaults).
        #[arg(env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print a commented configuration with a fresh random api_key and
    /// auth.hmac_secret.
    GenConfig,
    /// Mint a connection token signed with the configured auth.hmac_secret.
    Token {
        /// The user id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// A channel or pattern to grant (`news`, `team:*`, `*`); repeatable.
        #[arg(long = "channel")]
        channels: Vec<String>,
        /// Lifetime, e.g. `1h`, `30m` (at most auth.max_token_ttl).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// TOML config file holding auth.hmac_secret.
        #[arg(long, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Installs the log writer: stderr, the `HERALD_LOG` filter (`info` when
/// unset; a filter that does not parse is refused), colours only on a
/// terminal.
fn init_logging(format: LogFormat) -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = match std::env::var("HERALD_LOG") {
        Err(_) => tracing_subscriber::EnvFilter::new("info"),
        Ok(text) => tracing_subscriber::EnvFilter::builder()
            .parse(&text)
            .map_err(|e| {
                format!("HERALD_LOG={text:?} is not a log filter (e.g. info, herald=debug): {e}")
            })?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A closed stderr (a dead log collector) must not take the server down.
        .log_internal_errors(false);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| format!("cannot install the log writer: {e}"))
}

/// The `HERALD_*` variables, for the config layer (which reads none
/// itself). A value that is not UTF-8 is refused, naming the variable.
fn herald_env() -> anyhow::Result<Vec<(String, String)>> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(herald_server::config::ENV_PREFIX) {
            continue;
        }
        match value.into_string() {
            Ok(value) => vars.push((name.to_string(), value)),
            Err(_) => anyhow::bail!("{name} is not valid UTF-8"),
        }
    }
    Ok(vars)
}

/// The configuration: the file, the environment over it, `overrides` (the
/// flags) over both.
fn load_config(path: Option<&std::path::Path>, overrides: Overrides) -> anyhow::Result<Config> {
    let env = herald_env().context("configuration error")?;
    // The message alone: a ConfigError already says all its sources say.
    Config::load(path, &env, overrides).map_err(|e| anyhow::anyhow!("configuration error: {e}"))
}

/// Writes to stdout, ignoring a closed stdout.
fn say_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}", text.trim_end());
    let _ = out.flush();
}

/// A token for `user` granting `channels`, signed with the configured
/// secret (a random per-process one would verify nowhere).
fn mint_token(
    config: Option<&std::path::Path>,
    user: String,
    channels: Vec<String>,
    ttl: &str,
) -> anyhow::Result<String> {
    let config = load_config(config, Overrides::default())?;
    if config.tokens.hmac_secret.is_none() {
        anyhow::bail!(
            "auth.hmac_secret is not configured: a token needs the secret the servers verify with (herald gen-config makes one)"
        );
    }
    let ttl = humantime::parse_duration(ttl).with_context(|| format!("--ttl {ttl:?}"))?;
    if ttl.is_zero() || ttl > config.max_token_ttl {
        anyhow::bail!(
            "--ttl must be between 1s and auth.max_token_ttl ({})",
            humantime::format_duration(config.max_token_ttl)
        );
    }
    herald_core::user::user_channel(&user).map_err(|e| anyhow::anyhow!("--user: {e}"))?;
    let tokens = herald_server::access::token::Tokens::new(&config.tokens)?;
    let now = herald_core::engine::now_ms() / 1000;
    let claims = herald_server::access::token::Claims {
        sub: Some(user),
        exp: now + ttl.as_secs().max(1),
        iat: Some(now),
        channels,
        ..herald_server::access::token::Claims::default()
    };
    Ok(tokens.sign(&claims))
}

/// Writes to stderr, ignoring a closed stderr (`eprintln!` would panic).
fn say_err(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// The allocator: jemalloc, with the settings in `.cargo/config.toml` (a
/// background thread gives freed pages back within about a second). With
/// glibc's malloc, the memory of 19,000 connections that came and went
/// stayed resident (+47 MiB five seconds after they closed; jemalloc so
/// set: +6 MiB), see BENCHMARKS.md, "burst memory and allocators".
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.command {
        Command::Serve { log_format, .. } => *log_format,
        _ => LogFormat::Text,
    };
    if let Err(e) = init_logging(format) {
        say_err(&format!("herald: {e}"));
        return ExitCode::from(2);
    }
    match cli.command {
        Command::CheckConfig { config } => {
            match load_config(config.as_deref(), Overrides::default()) {
                Ok(config) => {
                    say_out(&config.summary());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    say_err(&format!("herald: {e:#}"));
                    ExitCode::from(2)
                }
            }
        }
        Command::GenConfig => {
            say_out(&herald_server::config::generated(
                herald_server::access::random_id,
            ));
            ExitCode::SUCCESS
        }
        Command::Token {
            user,
            channels,
            ttl,
            config,
        } => match mint_token(config.as_deref(), user, channels, &ttl) {
            Ok(token) => {
                say_out(&token);
                ExitCode::SUCCESS
            }
            Err(e) => {
                say_err(&format!("herald: {e:#}"));
                ExitCode::from(2)
            }
        },
        Command::Serve {
            listen,
            api_listen,
            trusted_proxies,
            api_key,
            config,
            engine,
            log_format: _,
        } => {
            let overrides = Overrides {
                listen,
                api_listen,
                trusted_proxies,
                api_key,
                engine,
            };
            let config = match load_config(config.as_deref(), overrides) {
                Ok(config) => config,
                Err(e) => {
                    say_err(&format!("herald: {e:#}"));
                    return ExitCode::from(2);
                }
            };
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    say_err(&format!("herald: {e:#}"));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = runtime.block_on(async move {
        let listener = bind(config.listen)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let api_listener = match config.api_listen {
            None => None,
            Some(api) => Some(bind(api).with_context(|| format!("cannot listen on {api}"))?),
        };
        let api_addr = match &api_listener {
            None => None,
            Some(l) => Some(l.local_addr().context("reading the bound API address")?),
        };
        if config.api_keys.is_empty() {
            tracing::warn!(
                "no API key configured: backend endpoints answer only direct loopback requests to a loopback Host with no forwarding headers (set --api-key or HERALD_API_KEY)"
            );
        }
        let node = build_node(&config).await?;
        // Handlers are installed before the listening line: a supervisor may
        // send SIGTERM the moment it sees it.
        let signals = shutdown_signal().context("installing signal handlers")?;
        tracing::info!(%addr, api = ?api_addr, engine = node.engine.name(), "herald listening");
        // Scripts and tests read this line to learn the port.
        {
            use std::io::Write;
            let mut out = std::io::stdout();
            let _ = writeln!(out, "herald listening on http://{addr}");
            if let Some(api) = api_addr {
                let _ = writeln!(out, "herald api listening on http://{api}");
            }
            let _ = out.flush();
        }
        herald_server::run_with_listeners(listener, api_listener, config, node, signals)
            .await
            .context("serving")?;
        tracing::info!("stopped");
        Ok(())
    });
    // Tasks still running (connections past the grace period) are dropped
    // here; never wait on them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// Pending connections the kernel queues before `accept`: connection bursts
/// (a deploy, a reconnect storm) must not be dropped into SYN retries.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The node for the configured engine.
async fn build_node(config: &Config) -> anyhow::Result<herald_core::Node> {
    if config.engine == "memory" {
        return Ok(herald_server::memory_node(config));
    }
    let hub = std::sync::Arc::new(herald_core::hub::Hub::new());
    let namespaces = std::sync::Arc::new(config.namespaces.clone());
    let options = herald_redis::RedisOptions {
        timeout: config.redis_timeout,
        ping_interval: config.redis_ping_interval,
        node_ttl: config.redis_node_ttl,
        refresh_interval: config.redis_refresh_interval,
        events: config.event_options(),
        prefix: config.redis_prefix.clone(),
        ..Default::default()
    };
    let engine = herald_redis::RedisEngine::connect_with(
        &config.engine,
        hub.clone(),
        namespaces.clone(),
        options,
    )
    .await
    .with_context(|| format!("cannot use the engine at {}", config.engine))?;
    Ok(herald_core::Node::new(hub, engine, namespaces))
}

/// Installs the SIGINT and SIGTERM handlers now; the future resolves on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
