//! The one error type of the HTTP surface: a status, a stable code and a
//! message for the client. Internal details are logged, never sent.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::engine::EngineError;
use herald_core::Refusal;
use serde_json::json;

/// A refusal as an HTTP answer: `{"error": {"code", "message"}}` with the
/// refusal's status (see [`herald_core::refusal`] for the table).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Refusal,
    pub message: String,
}

impl ApiError {
    /// `refusal` with its own status. The session-only refusals have none;
    /// they are never answered over HTTP, and would be a 500 here.
    pub fn new(refusal: Refusal, message: impl Into<String>) -> Self {
        let status = refusal
            .status()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self {
            status,
            code: refusal,
            message: message.into(),
        }
    }

    /// The same refusal under another status: only where the table says
    /// so ([`Refusal::also_status`]: a wrong WebSocket version is 426), and
    /// where the framework chose the status ([`json_errors`]).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn not_found() -> Self {
        Self::new(Refusal::NotFound, Refusal::NotFound.message())
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            Refusal::MethodNotAllowed,
            Refusal::MethodNotAllowed.message(),
        )
    }

    /// A backend endpoint asked on the public listener when `api_listen`
    /// is set.
    pub fn on_api_listener() -> Self {
        Self::new(
            Refusal::NotFound,
            "the backend API is served on the API listener (api_listen), not here",
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            Refusal::PayloadTooLarge,
            format!("payload is larger than {limit} bytes"),
        )
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        tracing::warn!(error = %e, "engine error");
        Self::new(
            Refusal::EngineUnavailable,
            Refusal::EngineUnavailable.message(),
        )
    }
}

impl From<herald_core::channel::InvalidChannel> for ApiError {
    fn from(e: herald_core::channel::InvalidChannel) -> Self {
        Self::new(Refusal::InvalidChannel, e.to_string())
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
