//! Error answers of the HTTP surface that handlers did not write
//! themselves: the middleware that gives every error answer the JSON body;
//! and answers given later ([`deferred`]), so that a waiting long-poll holds
//! only its own future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use herald_core::Refusal;
use parking_lot::Mutex;

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
    log_refused(method.as_str(), &path, peer, &response);
    response
}

/// The log line of a backend request refused (4xx or 5xx); nothing for
/// any other answer.
pub(crate) fn log_refused(
    method: &str,
    path: &str,
    peer: Option<std::net::SocketAddr>,
    response: &Response,
) {
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let answered = response.extensions().get::<Answered>();
        tracing::info!(
            method,
            path,
            status = status.as_u16(),
            code = answered.map(|a| a.code.code()),
            detail = answered.map(|a| a.message.as_str()),
            peer = peer.map(tracing::field::display),
            "backend request refused"
        );
    }
}

/// The answer a handler gives later, once the router is done with the
/// request: a long-poll waits on this alone, not inside every middleware's
/// future (which held about 9 KB per waiting poll).
type Later = Pin<Box<dyn Future<Output = Response> + Send>>;

/// Marks a placeholder response whose real answer is still to come (see
/// [`deferred`], [`settle`]). Shared so that it can be an extension.
#[derive(Clone)]
struct Deferred(Arc<Mutex<Option<Later>>>);

/// A `200` placeholder that carries `answer`: the middlewares pass it (and
/// may add headers), then the connection awaits the answer by itself
/// ([`settle`]).
pub(crate) fn deferred(answer: impl Future<Output = Response> + Send + 'static) -> Response {
    let mut placeholder = Response::new(axum::body::Body::empty());
    placeholder
        .extensions_mut()
        .insert(Deferred(Arc::new(Mutex::new(Some(Box::pin(answer))))));
    placeholder
}

/// A deferred answer taken out of its placeholder: the answer's future
/// and the headers the middlewares put on the placeholder.
pub(crate) struct Pending {
    answer: Later,
    /// (None, value) is a further value of the name before it. Compact
    /// while the answer waits: a HeaderMap holds room for many.
    added: Vec<(Option<HeaderName>, HeaderValue)>,
}

/// `Ok(response)` when it is final, or what a [`deferred`] placeholder
/// carries; the placeholder is freed either way.
pub(crate) fn take_deferred(response: Response) -> Result<Response, Pending> {
    let Some(Deferred(later)) = response.extensions().get::<Deferred>().cloned() else {
        return Ok(response);
    };
    let Some(answer) = later.lock().take() else {
        return Ok(response);
    };
    let (parts, _) = response.into_parts();
    let mut added: Vec<_> = parts.headers.into_iter().collect();
    added.shrink_to_fit();
    Err(Pending { answer, added })
}

impl Pending {
    /// The answer, with the placeholder's headers it does not set itself.
    pub(crate) async fn settle(self) -> Response {
        let Pending { answer, added } = self;
        let mut answer = answer.await;
        let headers = answer.headers_mut();
        let mut current: Option<HeaderName> = None;
        for (name, value) in added {
            if let Some(name) = name {
                // The placeholder's framing (axum gives its empty body a
                // `content-length: 0`) is not the answer's.
                let framing = name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING;
                current = (!framing && !headers.contains_key(&name)).then_some(name);
            }
            if let Some(name) = &current {
                headers.append(name.clone(), value);
            }
        }
        answer
    }
}

/// The final response: `response` itself, or the answer a [`deferred`]
/// placeholder carries (see [`Pending::settle`]).
pub(crate) async fn settle(response: Response) -> Response {
    match take_deferred(response) {
        Ok(response) => response,
        Err(pending) => pending.settle().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deferred_answer_keeps_the_placeholders_headers_but_not_its_framing() {
        let mut placeholder = deferred(async {
            let mut answer = Response::new(axum::body::Body::from("{\"frames\":[]}"));
            answer.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            answer
        });
        let h = placeholder.headers_mut();
        // What axum and the middlewares put on the placeholder.
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        h.append(header::VARY, HeaderValue::from_static("Accept"));
        let answer = settle(placeholder).await;
        let h = answer.headers();
        assert!(h.get(header::CONTENT_LENGTH).is_none(), "{h:?}");
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        let vary: Vec<_> = h.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Origin", "Accept"]);
        let body = http_body_util::BodyExt::collect(answer.into_body())
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"{\"frames\":[]}");
    }

    #[tokio::test]
    async fn a_final_response_is_settled_as_it_is() {
        let response = Response::new(axum::body::Body::from("ok"));
        let settled = settle(response).await;
        assert!(take_deferred(settled).is_ok());
    }
}
