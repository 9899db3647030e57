//! Who may use the backend endpoints (`/pub`, `/api`).
//!
//! With API keys configured, a request must carry `Authorization: Bearer
//! KEY` with one of them (compared in constant time). With none configured,
//! only loopback peers may call them, and the server warns at start.

use std::net::SocketAddr;

use axum::http::{header, HeaderMap, StatusCode};

use crate::error::ApiError;

/// Compares without an early exit, so timing does not reveal how much of a
/// key matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        let y = b.get(i % b.len().max(1)).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Checks a backend request. Returns the name of the key used (`loopback`
/// when no key is configured).
pub fn check_backend(
    keys: &[(String, String)],
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<String, ApiError> {
    if keys.is_empty() {
        if peer.ip().is_loopback() {
            return Ok("loopback".to_string());
        }
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "no API key is configured, so only loopback clients may use this endpoint",
        ));
    }
    let Some(given) = bearer(headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing Authorization: Bearer <API key>",
        ));
    };
    // Check every key (no early exit) so timing does not tell which matched.
    let mut matched = None;
    for (name, key) in keys {
        if constant_time_eq(given.as_bytes(), key.as_bytes()) {
            matched = Some(name.clone());
        }
    }
    matched.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the API key is not valid",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().expect("header"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().expect("header"));
        assert_eq!(bearer(&h), None);
    }
}
