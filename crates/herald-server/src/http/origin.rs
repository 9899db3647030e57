//! The Origin allow-list and CORS answers, for every endpoint.
//!
//! A request without `Origin` is not from a browser page and passes. One
//! with `Origin` passes when it is the server's own origin (same host), is
//! listed in `allowed_origins`, or the list holds `*`; anything else is
//! `403 origin_not_allowed`. This closes cross-site WebSocket hijacking and
//! keeps pages on other sites from using a browser's cookies or loopback
//! position against Herald. Allowed cross-origin requests get CORS headers,
//! and preflights are answered here.
//!
//! Behind a reverse proxy the `Host` Herald sees is often not the one the
//! browser used (nginx's usual `proxy_set_header Host $host` drops the port),
//! so when the request came through a trusted proxy (`trusted_proxies`) the
//! same-origin check uses the host that proxy reports (`Forwarded: host=` or
//! `X-Forwarded-Host`). From any other peer those headers are ignored.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::access::client_addr::forwarded_host;
use crate::access::limits::Conn;
use crate::error::ApiError;
use crate::state::AppState;
use herald_core::Refusal;

/// Whether a browser page at `origin` may use a server reached as `host`.
pub(crate) fn allowed(list: &[String], origin: &str, host: Option<&str>) -> bool {
    let same_origin = host.is_some_and(|h| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            == Some(h)
    });
    same_origin || list.iter().any(|o| o == "*" || o == origin)
}

pub(crate) async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(origin) = request.headers().get(header::ORIGIN).cloned() else {
        return next.run(request).await;
    };
    // `proxied`: the TCP peer is a trusted proxy and named the client
    // (`Forwarded` / `X-Forwarded-For`); only then is its host believed.
    let proxied = request
        .extensions()
        .get::<Conn>()
        .is_some_and(|c| c.proxied);
    let forwarded = proxied.then(|| forwarded_host(request.headers())).flatten();
    let host = forwarded.as_deref().or_else(|| {
        request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    let origin_text = origin.to_str().unwrap_or("");
    if !allowed(&state.config.allowed_origins, origin_text, host) {
        return ApiError::new(
            Refusal::OriginNotAllowed,
            format!("origin {origin_text:?} is not in allowed_origins"),
        )
        .into_response();
    }
    if request.method() == Method::OPTIONS {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let requested = request
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or(HeaderValue::from_static(
                "authorization, content-type, last-event-id",
            ));
        let h = response.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        cors(&mut response, origin);
        return response;
    }
    let mut response = next.run(request).await;
    cors(&mut response, origin);
    response
}

fn cors(response: &mut Response, origin: HeaderValue) {
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let none: Vec<String> = vec![];
        assert!(allowed(
            &none,
            "http://localhost:7070",
            Some("localhost:7070")
        ));
        assert!(!allowed(
            &none,
            "http://evil.example",
            Some("localhost:7070")
        ));
        assert!(!allowed(&none, "null", Some("localhost:7070")));
        let list = vec!["https://app.example".to_string()];
        assert!(allowed(&list, "https://app.example", Some("push.example")));
        assert!(!allowed(
            &list,
            "https://app.example.evil",
            Some("push.example")
        ));
        assert!(allowed(&["*".to_string()], "http://any", None));
    }
}
