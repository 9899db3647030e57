//! The WebSocket opening handshake (RFC 6455 section 4.2): check the
//! request, answer `101 Switching Protocols`, and hand over the raw TCP
//! socket once hyper has written that answer.

use axum::http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::net::TcpStream;

use crate::error::ApiError;
use herald_core::Refusal;

/// The GUID every server appends to the client's key (RFC 6455 section 1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A checked upgrade request: the `101` response to return and the hook
/// that yields the connection afterwards.
pub struct Accept {
    response: Response,
    on_upgrade: OnUpgrade,
}

impl Accept {
    /// Checks a WebSocket upgrade request. A request that is not one gets
    /// `400 invalid_upgrade` with the rule it broke; a version other than 13
    /// gets `426` with `Sec-WebSocket-Version: 13`, as the RFC asks.
    pub fn check(parts: &mut Parts) -> Result<Accept, Box<Response>> {
        let bad = |why: &str| Box::new(ApiError::new(Refusal::InvalidUpgrade, why).into_response());
        if parts.method != Method::GET {
            return Err(bad("a WebSocket handshake must be a GET"));
        }
        if parts.version != Version::HTTP_11 {
            return Err(bad("a WebSocket handshake needs HTTP/1.1"));
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(bad("the Connection header must contain \"upgrade\""));
        }
        if !has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(bad("the Upgrade header must be \"websocket\""));
        }
        let version = parts.headers.get(header::SEC_WEBSOCKET_VERSION);
        if version.map(HeaderValue::as_bytes) != Some(b"13") {
            // The one place invalid_upgrade is not 400 (Refusal::also_status).
            let mut response = ApiError::new(
                Refusal::InvalidUpgrade,
                "only WebSocket version 13 is supported",
            )
            .with_status(StatusCode::UPGRADE_REQUIRED)
            .into_response();
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return Err(Box::new(response));
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(bad("missing Sec-WebSocket-Key"));
        };
        let key_ok = base64::engine::general_purpose::STANDARD
            .decode(key.as_bytes())
            .is_ok_and(|k| k.len() == 16);
        if !key_ok {
            return Err(bad("Sec-WebSocket-Key must be 16 bytes in base64"));
        }
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(bad("this connection cannot be upgraded"));
        };
        let accept = accept_key(key.as_bytes());
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(axum::body::Body::empty())
            .map_err(|_| bad("could not build the handshake response"))?;
        Ok(Accept {
            response,
            on_upgrade,
        })
    }

    /// Splits into the response to return now and the hook for later.
    pub fn into_parts(self) -> (Response, OnUpgrade) {
        (self.response, self.on_upgrade)
    }
}

/// Waits for hyper to finish the handshake and takes back the TCP socket
/// with any bytes the client sent right after its request. `None` if the
/// client left first.
pub async fn upgraded(on_upgrade: OnUpgrade) -> Option<(TcpStream, Vec<u8>)> {
    let upgraded = on_upgrade.await.ok()?;
    match upgraded.downcast::<TokioIo<crate::edge::EdgeIo>>() {
        Ok(parts) => {
            // hyper read the rewound bytes first: what it holds comes
            // before what it left of them.
            let (tcp, unread) = parts.io.into_inner().into_inner();
            let mut leftover = parts.read_buf.to_vec();
            leftover.extend_from_slice(&unread);
            Some((tcp, leftover))
        }
        Err(_) => {
            // Only if the server loop stops handing hyper a plain TcpStream.
            tracing::error!("upgraded connection is not a TcpStream; closing it");
            None
        }
    }
}

/// `Sec-WebSocket-Accept` for a client's key.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Whether a comma-separated header has `token` (case-insensitive).
pub fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_the_rfc_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
