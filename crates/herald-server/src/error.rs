//! Refusals as values: [`Refused`] is what a rule answers (a code from the
//! table in [`herald_core::refusal`] and a message), before any wire form is
//! chosen; [`ApiError`] is the same refusal as an HTTP answer (status and
//! JSON body). The session protocol turns a [`Refused`] into a reply frame,
//! the HTTP surface into an [`ApiError`]. Internal details are logged, never
//! sent.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::engine::EngineError;
use herald_core::Refusal;
use serde_json::json;

/// A refusal and its message, as the rules give it.
#[derive(Debug, Clone)]
pub struct Refused {
    pub code: Refusal,
    pub message: String,
}

impl Refused {
    pub fn new(code: Refusal, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The refusal with its table message.
    pub fn plain(code: Refusal) -> Self {
        Self::new(code, code.message())
    }
}

impl From<EngineError> for Refused {
    fn from(e: EngineError) -> Self {
        tracing::warn!(error = %e, "engine error");
        Self::plain(Refusal::EngineUnavailable)
    }
}

impl From<herald_core::channel::InvalidChannel> for Refused {
    fn from(e: herald_core::channel::InvalidChannel) -> Self {
        Self::new(Refusal::InvalidChannel, e.to_string())
    }
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> Self {
        Self::new(r.code, r.message)
    }
}

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
    /// where the framework chose the status (`http::response::json_errors`).
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

/// What an error answer said, kept in its extensions for the log.
#[derive(Debug, Clone)]
pub(crate) struct Answered {
    pub(crate) code: Refusal,
    pub(crate) message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        // For the log of backend refusals (`http::response::log_refusals`).
        response.extensions_mut().insert(Answered {
            code: self.code,
            message: self.message,
        });
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}
