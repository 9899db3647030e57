//! Herald's server: the HTTP surface, the transports, config and shutdown.
//!
//! Layout:
//! - [`config`]: settings, validated before anything binds.
//! - [`api`]: the backend's endpoints (`/pub/{channel}`, `/api/publish`).
//! - [`subscribe`]: `GET /sub/{channel}`, choosing a transport per request.
//! - [`transport`]: one thin adapter per transport over `herald_core::Subscriber`.
//! - [`error`]: the one API error type (status + JSON body).
//! - [`run`]: serve a bound listener until a shutdown future resolves.

pub mod access;
pub mod api;
pub mod auth;
pub mod client_addr;
pub mod config;
pub mod edge;
pub mod error;
pub mod health;
pub mod hook;
pub mod limits;
pub mod metrics;
pub mod origin;
pub mod serve;
pub mod session;
pub mod state;
pub mod statics;
pub mod subscribe;
pub mod token;
#[cfg(test)]
mod token_props;
pub mod transport;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use herald_core::engine::now_ms;
use herald_core::Node;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use error::ApiError;
use state::AppState;

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serves {
    /// Everything (one listener, no `api_listen`).
    All,
    /// The client endpoints only (`listen` when `api_listen` is set).
    Public,
    /// The backend endpoints only (`api_listen`).
    Api,
}

/// The routes, for a given state: every endpoint on one listener.
pub fn router(state: AppState) -> Router {
    routes(state, Serves::All)
}

fn routes(state: AppState, serves: Serves) -> Router {
    let mut router = Router::new();
    if serves != Serves::Api {
        router = router
            .route("/auth/ticket", post(api::create_ticket))
            .route("/sub/{channel}", get(subscribe::subscribe))
            .route("/connection/websocket", get(session_websocket))
            .route("/connection/sse", get(session::http::sse))
            .route("/connection/stream", get(session::http::stream))
            .route("/connection/iframe", get(session::http::iframe))
            .route("/connection/longpoll", post(session::http::longpoll_open))
            .route(
                "/connection/longpoll/{id}",
                get(session::http::longpoll_poll),
            )
            .route(
                "/connection/{id}",
                post(session::http::send).delete(session::http::end),
            )
            .route("/", get(statics::demo))
            .route("/herald.js", get(statics::client))
            .route("/herald.d.ts", get(statics::types))
            .route_layer(axum::middleware::from_fn(serve::over_limit_guard));
    }
    if serves == Serves::Public {
        // Backend endpoints live on the API listener: say so, not just 404.
        for path in ["/pub/{channel}", "/api/{*rest}", "/metrics"] {
            router = router.route(
                path,
                axum::routing::any(|| async { ApiError::on_api_listener() }),
            );
        }
    } else {
        router = router
            .route(
                "/pub/{channel}",
                post(api::publish)
                    .get(api::channel_info)
                    .delete(api::delete_channel),
            )
            .route("/api/publish", post(api::api_publish))
            .route("/api/tokens", post(api::create_token))
            .route("/api/users/{id}/publish", post(api::user_publish))
            .route("/api/users/{id}/disconnect", post(api::user_disconnect))
            .route("/api/presence/{channel}", get(api::presence))
            .route("/metrics", get(metrics::metrics));
    }
    // On every listener, outside the over-limit guard: probes are served
    // even when clients fill the connection quota.
    router = router
        .route("/health", get(health::health))
        .route("/ready", get(health::ready));
    router
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            origin::guard,
        ))
        .with_state(state)
}

#[derive(serde::Deserialize)]
struct TicketQuery {
    ticket: Option<String>,
}

async fn session_websocket(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    axum::extract::Extension(tcp): axum::extract::Extension<serve::Conn>,
    axum::extract::Query(query): axum::extract::Query<TicketQuery>,
    request: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    let (mut parts, _body) = request.into_parts();
    let accept = match ws::Accept::check(&mut parts) {
        Ok(accept) => accept,
        Err(refusal) => return Ok(*refusal),
    };
    let slot = state.admit(peer, &tcp, true)?;
    let identity = access::identify(&state, &parts.headers, query.ticket.as_deref()).await?;
    Ok(session::ws::upgrade(
        state,
        accept,
        identity,
        slot,
        peer.ip(),
    ))
}

/// A node for the configured engine. The memory engine needs nothing; other
/// engines are built by the caller and passed to [`run_with_node`].
pub fn memory_node(config: &Config) -> Node {
    Node::memory(config.namespaces.clone())
}

/// Serves on `listener` with an in-memory node until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let node = memory_node(&config);
    run_with_node(listener, config, node, shutdown).await
}

/// Serves on `listener` until `shutdown` resolves (see [`run_with_listeners`]).
pub async fn run_with_node(
    listener: TcpListener,
    config: Config,
    node: Node,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with_listeners(listener, None, config, node, shutdown).await
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
        async move {
            shutdown.await;
            // Cancel first: nothing (not even a failing log write) may stand
            // between the signal and the shutdown.
            token.cancel();
            tracing::info!("shutting down: telling connections to reconnect");
        }
    };
    tokio::spawn(signal);

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
    let edge = |limiter: &Arc<limits::ConnectionLimiter>, budget, refusing, name| serve::Edge {
        header_timeout: state.config.header_timeout,
        idle_timeout: state.config.idle_timeout,
        trusted: state.config.trusted_proxies.clone(),
        limiter: limiter.clone(),
        budget,
        refusing,
        name,
    };
    let public_serves = if api_listener.is_some() {
        Serves::Public
    } else {
        Serves::All
    };
    let api_serving = api_listener.map(|api| {
        tokio::spawn(serve::serve(
            api,
            routes(state.clone(), Serves::Api),
            token.clone(),
            edge(
                &state.api_limiter,
                None,
                Arc::new(std::sync::atomic::AtomicUsize::new(0)),
                "api",
            ),
        ))
    });
    let serving = tokio::spawn(serve::serve(
        listener,
        routes(state.clone(), public_serves),
        token.clone(),
        edge(&state.limiter, budget, refusing, "public"),
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
    Ok(())
}
