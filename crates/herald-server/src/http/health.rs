//! `GET /health` and `GET /ready`, for supervisors and load balancers.
//!
//! Neither needs a key (they tell nothing but "up"), neither takes a client
//! slot, and both are answered even on a connection over a connection limit
//! (a probe must not be refused because clients filled the quota). Both
//! listeners serve them.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::Refusal;
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

/// `GET /health`: the process serves.
pub(crate) async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /ready`: 200 while the engine is reachable and the node is not
/// shutting down; else 503 with the reason.
pub(crate) async fn ready(State(state): State<AppState>) -> Result<Response, ApiError> {
    if state.shutdown.is_cancelled() || state.draining.is_cancelled() {
        return Err(ApiError::new(
            Refusal::Unavailable,
            "this node is shutting down; send new clients elsewhere",
        ));
    }
    if let Err(e) = state.node.engine.ready().await {
        return Err(ApiError::new(
            Refusal::EngineUnavailable,
            format!("the engine is not reachable: {e}"),
        ));
    }
    Ok(Json(json!({"status": "ready", "engine": state.node.engine.name()})).into_response())
}
