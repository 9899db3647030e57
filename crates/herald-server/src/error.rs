//! The one error type of the HTTP surface: a status, a stable code and a
//! message for the client. Internal details are logged, never sent.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::engine::EngineError;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not accept that method",
        )
    }

    /// A backend endpoint asked on the public listener when `api_listen`
    /// is set.
    pub fn on_api_listener() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the backend API is served on the API listener (api_listen), not here",
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("payload is larger than {limit} bytes"),
        )
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        tracing::warn!(error = %e, "engine error");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "engine_unavailable",
            "the message store is unavailable; retry later",
        )
    }
}

impl From<herald_core::channel::InvalidChannel> for ApiError {
    fn from(e: herald_core::channel::InvalidChannel) -> Self {
        Self::bad_request("invalid_channel", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

/// The code an error status gets when something other than a handler (an
/// extractor's rejection, a framework default) answered it.
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        429 => "limit_exceeded",
        431 => "headers_too_large",
        503 => "unavailable",
        500..=599 => "internal_error",
        _ => "invalid_request",
    }
}

/// Most bytes of a non-JSON error body kept as the message.
const MAX_ERROR_TEXT: usize = 1024;

/// Middleware: every error answer has the JSON error body. Handlers answer
/// with [`ApiError`] already; this catches what axum's extractors (query,
/// path, body rejections) and defaults answer in plain text.
pub async fn json_errors(
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
    let mut fixed = ApiError::new(status, code_for_status(status), message).into_response();
    // Keep what the original answer said beyond its body (Allow, Retry-After,
    // Sec-WebSocket-Version, CORS).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fixed
}
