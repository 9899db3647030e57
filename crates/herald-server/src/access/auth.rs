//! Who may use the backend endpoints (`/pub`, `/api`).
//!
//! With API keys configured, a request must carry `Authorization: Bearer
//! KEY` with one of them (compared in constant time). With none configured,
//! a request is let in only when all three hold: its TCP peer is loopback,
//! its `Host` is a loopback address or `localhost` (any port), and it carries
//! no `Forwarded`, `X-Forwarded-For` or `X-Real-IP`. The peer alone is not
//! enough: a reverse proxy on the same host makes every internet client a
//! loopback peer (and adds a forwarding header), and a DNS-rebinding page
//! reaches 127.0.0.1 under its own name (its `Host`). The server warns at
//! start.

use std::net::SocketAddr;

use http::{header, HeaderMap};

use super::client_addr;
use crate::error::Refused;
use herald_core::Refusal;

/// Compares without an early exit, so timing does not reveal how much of a
/// key matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        let y = b.get(i % b.len().max(1)).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Checks a backend request. Returns the name of the key used (`loopback`
/// when no key is configured).
pub(crate) fn check_backend(
    keys: &[(String, String)],
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<String, Refused> {
    if keys.is_empty() {
        if client_addr::canonical(peer.ip()).is_loopback()
            && headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .is_some_and(is_loopback_host)
            && !client_addr::has_forwarding_headers(headers)
        {
            return Ok("loopback".to_string());
        }
        return Err(Refused::new(
            Refusal::Forbidden,
            "no API key is configured, so this endpoint answers only direct loopback requests \
             (loopback peer, Host localhost or a loopback address, no forwarding headers); \
             configure api_key and send it as Authorization: Bearer <key>",
        ));
    }
    let Some(given) = bearer(headers) else {
        return Err(Refused::new(
            Refusal::Unauthorized,
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
    matched.ok_or_else(|| Refused::new(Refusal::Unauthorized, "the API key is not valid"))
}

/// `localhost`, `127.0.0.1`, `[::1]`, with or without a port.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, after))
                if after.is_empty() || after.strip_prefix(':').is_some_and(valid_port) =>
            {
                inside
            }
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if valid_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| client_addr::canonical(ip).is_loopback())
}

/// `8080`: one to five digits.
fn valid_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
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
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "localhost:7070",
            "LOCALHOST.",
            "127.0.0.1",
            "127.0.0.1:1",
            "127.9.9.9:7070",
            "[::1]",
            "[::1]:7070",
            "[::ffff:127.0.0.1]:7070",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:7070",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:7070",
            "[::2]:80",
            "localhost:x",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn keyless_needs_a_direct_local_request() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "localhost:7070".parse().expect("header"));
        assert!(check_backend(&[], &h, peer).is_ok());
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().expect("addr");
        assert!(check_backend(&[], &h, mapped).is_ok());
        let remote: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        assert!(check_backend(&[], &h, remote).is_err());
        h.insert("x-forwarded-for", "203.0.113.1".parse().expect("header"));
        let e = check_backend(&[], &h, peer).expect_err("proxied");
        assert_eq!(e.code, Refusal::Forbidden);
        assert_eq!(Refusal::Forbidden.status(), Some(403));
        let mut rebound = HeaderMap::new();
        rebound.insert(
            header::HOST,
            "attacker.example:7070".parse().expect("header"),
        );
        assert!(check_backend(&[], &rebound, peer).is_err());
        assert!(check_backend(&[], &HeaderMap::new(), peer).is_err());
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
