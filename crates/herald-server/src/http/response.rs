//! Error answers of the HTTP surface that handlers did not write
//! themselves: the middleware that gives every error answer the JSON body.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use herald_core::Refusal;

use crate::error::{Answered, ApiError};

/// Most bytes of a non-JSON error body kept as the message.
const MAX_ERROR_TEXT: usize = 1024;

/// Middleware: every error answer has the JSON error body. Handlers answer
/// with [`ApiError`] already; this catches what axum's extractors (query,
/// path, body rejections) and defaults answer in plain text.
pub(crate) async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text =
        match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, MAX_ERROR_TEXT))
            .await
        {
            Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
            Err(_) => String::new(),
        };
    let message = if text.trim().is_empty() {
        status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_string()
    } else {
        text.trim().to_string()
    };
    let mut fixed = ApiError::new(Refusal::for_status(status.as_u16()), message)
        .with_status(status)
        .into_response();
    // Keep what the original answer said beyond its body (Allow, Retry-After,
    // Sec-WebSocket-Version, CORS).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fixed
}

/// Middleware: every refusal of a backend request (`/pub/…`, `/api/…`,
/// `/metrics`: an error status) is logged at info, with the error code and
/// message the backend was given. Client endpoints are not logged here: a
/// flood of refused clients must not flood the log.
pub(crate) async fn log_refusals(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    let backend = path.starts_with("/pub/") || path.starts_with("/api/") || path == "/metrics";
    if !backend {
        return next.run(request).await;
    }
    let (method, path) = (request.method().clone(), path.to_string());
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let response = next.run(request).await;
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let answered = response.extensions().get::<Answered>();
        tracing::info!(
            method = %method,
            path,
            status = status.as_u16(),
            code = answered.map(|a| a.code.code()),
            detail = answered.map(|a| a.message.as_str()),
            peer = peer.map(tracing::field::display),
            "backend request refused"
        );
    }
    response
}
