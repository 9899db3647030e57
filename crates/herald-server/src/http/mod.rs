//! The HTTP surface, the top layer: the accept loop (`serve`), the
//! router (`routes`) and the handlers, each of which reads its request
//! and hands over to the layers below (the protocol core, the transports,
//! the rules).
//!
//! - `channel`: `GET /sub/{channel}`, the channel URL on every transport.
//! - `connection`: `/connection/*`, the session protocol's endpoints.
//! - `api`: the backend's endpoints (publish, channels, tokens, users).
//! - `admin`: the admin page and its data (`/api/stats`, `/api/history`).
//! - `openapi`: `/api/openapi.json`, the description of all of them.
//! - `health`, `metrics`, `statics`: probes, `/metrics`, the client files.
//! - `pusher`: the Pusher Channels surface: `/app/{key}` (a Pusher
//!   client's WebSocket), pusher-js's HTTP fallbacks
//!   (`/pusher/app/{key}/{server}/{session}/xhr_streaming`, `/xhr`,
//!   `/xhr_send`) and the signed HTTP API `/apps/{id}/…`.
//! - `origin`: the `allowed_origins` check and CORS.
//! - `response`: the JSON body of every error answer.

pub(crate) mod admin;
pub(crate) mod api;
pub(crate) mod channel;
pub(crate) mod connection;
pub(crate) mod h1;
pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod openapi;
pub(crate) mod origin;
pub(crate) mod pusher;
pub(crate) mod response;
pub mod serve;
pub(crate) mod statics;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Extension, Router};

use crate::error::ApiError;
use crate::state::AppState;
use crate::transport::registry::Registry;

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Serves {
    /// Everything (one listener, no `api_listen`).
    All,
    /// The client endpoints only (`listen` when `api_listen` is set).
    Public,
    /// The backend endpoints only (`api_listen`).
    Api,
}

/// The routes of one listener. `sessions` is the registry of HTTP
/// sessions, shared by every listener of the node.
pub(crate) fn routes(state: AppState, sessions: Arc<Registry>, serves: Serves) -> Router {
    let mut router = Router::new();
    if serves != Serves::Api {
        router = router
            .route("/auth/ticket", post(api::create_ticket))
            .route("/ack", post(api::ack))
            .route("/sub/{channel}", get(channel::subscribe))
            .route("/connection/websocket", get(connection::websocket))
            .route("/connection/sse", get(connection::sse))
            .route("/connection/stream", get(connection::stream))
            .route("/connection/iframe", get(connection::iframe))
            .route("/connection/longpoll", post(connection::longpoll_open))
            .route("/connection/longpoll/{id}", get(connection::longpoll_poll))
            .route(
                "/connection/{id}",
                post(connection::send).delete(connection::end),
            )
            .route("/app/{key}", get(pusher::websocket))
            // pusher-js's HTTP fallbacks, under its default `httpPath`.
            .route(
                "/pusher/app/{key}/{server}/{session}/xhr_streaming",
                post(pusher::xhr_streaming),
            )
            .route(
                "/pusher/app/{key}/{server}/{session}/xhr",
                post(pusher::xhr_polling),
            )
            .route(
                "/pusher/app/{key}/{server}/{session}/xhr_send",
                post(pusher::xhr_send),
            )
            .route("/", get(statics::demo))
            .route("/herald.js", get(statics::client))
            .route("/herald.min.js", get(statics::client_min))
            .route("/pusher-resume.js", get(statics::pusher_resume))
            .route("/herald.d.ts", get(statics::types))
            .route_layer(axum::middleware::from_fn(serve::over_limit_guard));
    }
    if serves == Serves::Public {
        // Backend endpoints live on the API listener: say so, not just 404.
        for path in [
            "/pub/{channel}",
            "/api/{*rest}",
            "/apps/{*rest}",
            "/users/{user_id}/terminate_connections",
            "/metrics",
            "/admin",
        ] {
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
            .route("/api/users/{id}/mailbox", get(api::user_mailbox))
            .route("/api/presence/{channel}", get(api::presence))
            .route("/metrics", get(metrics::metrics))
            .route("/api/stats", get(admin::stats))
            .route("/api/history/{channel}", get(admin::history))
            .route("/api/openapi.json", get(openapi::spec))
            .route("/apps/{id}/events", post(pusher::events))
            .route("/apps/{id}/batch_events", post(pusher::batch_events))
            .route("/apps/{id}/channels", get(pusher::channels))
            .route("/apps/{id}/channels/{name}", get(pusher::channel))
            .route(
                "/apps/{id}/users/{user_id}/terminate_connections",
                post(pusher::terminate_connections),
            )
            .route(
                "/users/{user_id}/terminate_connections",
                post(pusher::terminate_connections_keyed),
            )
            .route(
                "/apps/{id}/channels/{name}/users",
                get(pusher::channel_users),
            )
            .route("/admin", get(admin::page));
    }
    // On every listener, outside the over-limit guard: probes are served
    // even when clients fill the connection quota.
    router = router
        .route("/health", get(health::health))
        .route("/ready", get(health::ready));
    router
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(Extension(sessions))
        .layer(axum::middleware::from_fn(response::json_errors))
        .layer(axum::middleware::from_fn(response::log_refusals))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            origin::guard,
        ))
        .with_state(state)
}
