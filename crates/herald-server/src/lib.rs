//! Herald's server: one protocol core under every wire format.
//!
//! Layers, each a folder, with imports only going down (a test,
//! `tests/layers.rs`, fails on an upward one):
//!
//! - `http`: the accept loop, the router and the handlers (top).
//! - `transport`: the wire formats: one WebSocket loop, one loop of the
//!   HTTP downstreams, an encoder per format with the dialect as a
//!   parameter.
//! - `protocol`: the session state machine (both dialects), admission,
//!   one file per command.
//! - `state`, `config`: what every connection shares; the settings.
//! - `access`: the rules (tokens, backend keys, limits, hooks), no HTTP.
//! - `ws`: WebSocket framing and the socket, under Autobahn.
//! - `edge`, `error`, `metrics`: the socket's clocks, refusals as values,
//!   the counters (bottom).
//!
//! See docs/architecture.md for what each may import and one message
//! followed from `POST /pub` to a socket write.

#![warn(unreachable_pub)]

pub mod access;
pub mod config;
pub(crate) mod edge;
pub mod error;
pub mod http;
pub(crate) mod metrics;
pub(crate) mod protocol;
pub(crate) mod state;
pub(crate) mod transport;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use herald_core::engine::now_ms;
use herald_core::Node;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use http::{routes, serve, Serves};
use state::AppState;
use transport::registry::Registry;

/// A node for the configured engine. The memory engine needs nothing; other
/// engines are built by the caller and passed to [`run_with_listeners`]
/// (with [`Config::event_options`] when webhooks are configured).
pub fn memory_node(config: &Config) -> Node {
    Node::memory_with_events(config.namespaces.clone(), config.event_options())
}

/// Serves the client endpoints on `listener` and the backend endpoints on
/// `api_listener` (or everything on `listener` without one) until
/// `shutdown` resolves, then: stops accepting, tells every connection to
/// reconnect, and waits up to the grace period for them to finish.
pub async fn run_with_listeners(
    listener: TcpListener,
    api_listener: Option<TcpListener>,
    config: Config,
    node: Node,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = CancellationToken::new();
    let grace = config.shutdown_grace;
    let state = AppState::new(node.clone(), config, token.clone())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;

    // Housekeeping: expire history about once a second.
    let sweeper = {
        let engine = Arc::clone(&node.engine);
        let token = token.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    _ = tick.tick() => engine.sweep(now_ms()),
                }
            }
        })
    };

    let signal = {
        let token = token.clone();
        let draining = state.draining.clone();
        let delay = state.config.drain_delay;
        async move {
            shutdown.await;
            // Drain: `/ready` turns 503 at once, and the node goes on
            // serving for `drain_delay` so that load balancers stop sending
            // it new clients.
            draining.cancel();
            if !delay.is_zero() {
                tracing::info!(
                    drain_delay = %humantime::format_duration(delay),
                    "draining: /ready answers 503; serving on until the delay ends"
                );
                tokio::time::sleep(delay).await;
            }
            // Cancel first: nothing (not even a failing log write) may stand
            // between the end of the drain and the shutdown.
            token.cancel();
            tracing::info!("shutting down: telling connections to reconnect");
        }
    };
    tokio::spawn(signal);
    // Webhooks: this node delivers the outbox while it holds the lease, to
    // `[webhooks]` and to every Pusher app with a `webhook_url`.
    let apps = state
        .pusher
        .iter()
        .filter_map(|app| Some((app.webhook_target()?, Arc::clone(&app.webhooks))))
        .collect();
    let webhooks = access::webhook::Targets::new(state.config.webhooks.clone(), apps).map(|targets| {
        if node.engine.event_options().is_none() {
            tracing::warn!(
                "webhooks are configured but the engine records no events (it was built without the config's event options)"
            );
        }
        tokio::spawn(access::webhook::run(
            Arc::clone(&node.engine),
            targets,
            Arc::clone(&state.counters.webhooks),
            token.clone(),
        ))
    });
    tokio::spawn(http::metrics::log_summary(
        state.clone(),
        state.config.log_summary_interval,
    ));

    let refusing = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let budget = serve::open_file_budget().map(|(soft, limit)| {
        tracing::debug!(
            open_file_limit = soft,
            budget = limit,
            "public listener socket budget"
        );
        serve::FdBudget {
            limit,
            counted: vec![state.limiter.clone(), state.api_limiter.clone()],
            refusing: refusing.clone(),
        }
    });
    let edge = |limiter: &Arc<access::limits::ConnectionLimiter>,
                budget,
                refusing,
                shed,
                name,
                publishes: bool| {
        serve::Edge {
            header_timeout: state.config.header_timeout,
            idle_timeout: state.config.idle_timeout,
            write_timeout: state.config.write_timeout,
            trusted: state.config.trusted_proxies.clone(),
            limiter: limiter.clone(),
            budget,
            refusing,
            shed,
            name,
            publish: publishes.then(|| state.clone()),
        }
    };
    let public_serves = if api_listener.is_some() {
        Serves::Public
    } else {
        Serves::All
    };
    let sessions = Arc::new(Registry::default());
    let api_serving = api_listener.map(|api| {
        tokio::spawn(serve::serve(
            api,
            routes(state.clone(), sessions.clone(), Serves::Api),
            token.clone(),
            edge(
                &state.api_limiter,
                None,
                Arc::new(std::sync::atomic::AtomicUsize::new(0)),
                Arc::new(std::sync::atomic::AtomicU64::new(0)),
                "api",
                true,
            ),
        ))
    });
    let serving = tokio::spawn(serve::serve(
        listener,
        routes(state.clone(), sessions, public_serves),
        token.clone(),
        edge(
            &state.limiter,
            budget,
            refusing,
            state.counters.tcp_shed.clone(),
            "public",
            public_serves != Serves::Public,
        ),
    ));
    let mut handles = vec![serving];
    handles.extend(api_serving);
    let aborts: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
    let serving = async move {
        for handle in handles {
            let _ = handle.await;
        }
    };

    token.cancelled().await;
    // Connections were told (each watches the token). Give them the grace
    // period to flush their last frame, then stop regardless.
    state.connections.close();
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    tokio::pin!(serving);
    tokio::select! {
        () = &mut serving => {}
        () = &mut deadline => {
            tracing::warn!("HTTP connections still open after the grace period; closing them");
            for abort in &aborts {
                abort.abort();
            }
        }
    }
    tokio::select! {
        () = state.connections.wait() => {}
        () = &mut deadline => {
            tracing::warn!(
                open = state.connections.len(),
                "websocket connections still open after the grace period"
            );
        }
    }
    sweeper.abort();
    if let Some(webhooks) = webhooks {
        webhooks.abort();
    }
    Ok(())
}
