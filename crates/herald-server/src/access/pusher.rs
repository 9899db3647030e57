//! The Pusher dialect's signatures, no HTTP framework (docs/pusher.md):
//! the channel authorisation a private or presence subscription carries
//! (`auth` = `key:hex(HMAC-SHA256(secret, "socket_id:channel[:channel_data]"))`)
//! and the request signature of the HTTP API
//! (`auth_signature` = `hex(HMAC-SHA256(secret, "METHOD\npath\nsorted query"))`,
//! with `auth_timestamp` and `body_md5`), and user authentication
//! (`pusher:signin`: `key:hex(HMAC-SHA256(secret, "socket_id::user::user_data"))`). Signatures are compared in
//! constant time (`Mac::verify_slice`).

use hmac::{Hmac, Mac};
use md5::Digest as _;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far `auth_timestamp` may be from the server's clock, in seconds.
pub(crate) const MAX_CLOCK_SKEW_S: u64 = 600;

/// `hex(HMAC-SHA256(secret, text))`: what an app's backend signs with.
#[cfg(test)]
pub(crate) fn sign(secret: &str, text: &str) -> String {
    let mut mac = mac(secret);
    mac.update(text.as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn mac(secret: &str) -> HmacSha256 {
    // HMAC takes a key of any length: this cannot fail.
    HmacSha256::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable_hmac())
}

#[allow(clippy::panic)]
fn unreachable_hmac() -> HmacSha256 {
    panic!("HMAC accepts keys of every length")
}

/// Whether `signature` (hex) is `text`'s signature under `secret`, in
/// constant time.
fn verify(secret: &str, text: &str, signature: &str) -> bool {
    let Some(expected) = unhex(signature) else {
        return false;
    };
    let mut mac = mac(secret);
    mac.update(text.as_bytes());
    mac.verify_slice(&expected).is_ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether `auth` (`key:signature`) authorises `socket_id` on `channel`
/// (with `channel_data` for a presence channel), for the app `key`/`secret`.
pub(crate) fn channel_auth_ok(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> bool {
    let Some((given_key, signature)) = auth.split_once(':') else {
        return false;
    };
    if given_key != key {
        return false;
    }
    let text = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    verify(secret, &text, signature)
}

/// Whether `auth` (`key:signature`) signs `user_data` in for `socket_id`:
/// user authentication (`pusher:signin`), the signature over
/// `socket_id::user::user_data`.
pub(crate) fn user_auth_ok(
    key: &str,
    secret: &str,
    socket_id: &str,
    user_data: &str,
    auth: &str,
) -> bool {
    let Some((given_key, signature)) = auth.split_once(':') else {
        return false;
    };
    given_key == key
        && verify(
            secret,
            &format!("{socket_id}::user::{user_data}"),
            signature,
        )
}

/// Why a signed request is refused (each a 401 but a missing parameter,
/// which is a 400, as Pusher answers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestRefusal {
    #[error("missing parameter {0}")]
    Missing(&'static str),
    #[error("unknown auth_key")]
    UnknownKey,
    #[error("auth_version must be 1.0")]
    Version,
    #[error("timestamp expired: auth_timestamp is more than {MAX_CLOCK_SKEW_S} s from the server's time")]
    Stale,
    #[error("body_md5 does not match the body")]
    BodyMd5,
    #[error("body_md5 is required with a body")]
    NoBodyMd5,
    #[error("invalid signature: expected HMAC SHA256 hex digest of {0:?}")]
    Signature(String),
}

impl RequestRefusal {
    /// Whether this is a malformed request (400) rather than a bad
    /// credential (401).
    pub(crate) fn is_bad_request(&self) -> bool {
        matches!(self, Self::Missing(_))
    }
}

/// Checks a signed API request: `query` holds the decoded query
/// parameters as sent, `now_s` the server's clock (Unix seconds).
pub(crate) fn check_request(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    query: &[(String, String)],
    body: &[u8],
    now_s: u64,
) -> Result<(), RequestRefusal> {
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let given_key = get("auth_key").ok_or(RequestRefusal::Missing("auth_key"))?;
    let timestamp = get("auth_timestamp").ok_or(RequestRefusal::Missing("auth_timestamp"))?;
    let version = get("auth_version").ok_or(RequestRefusal::Missing("auth_version"))?;
    let signature = get("auth_signature").ok_or(RequestRefusal::Missing("auth_signature"))?;
    if given_key != key {
        return Err(RequestRefusal::UnknownKey);
    }
    if version != "1.0" {
        return Err(RequestRefusal::Version);
    }
    let at: u64 = timestamp.parse().map_err(|_| RequestRefusal::Stale)?;
    if now_s.abs_diff(at) > MAX_CLOCK_SKEW_S {
        return Err(RequestRefusal::Stale);
    }
    match get("body_md5") {
        Some(md5) if !md5.eq_ignore_ascii_case(&hex(&md5::Md5::digest(body))) => {
            return Err(RequestRefusal::BodyMd5)
        }
        None if !body.is_empty() => return Err(RequestRefusal::NoBodyMd5),
        _ => {}
    }
    let text = string_to_sign(method, path, query);
    if !verify(secret, &text, signature) {
        return Err(RequestRefusal::Signature(text));
    }
    Ok(())
}

/// `METHOD\npath\nk=v&…`: every parameter but `auth_signature`, keys in
/// lower case, sorted by key.
pub(crate) fn string_to_sign(method: &str, path: &str, query: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, &str)> = query
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("auth_signature"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    pairs.sort();
    let joined: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{}\n{path}\n{}",
        method.to_ascii_uppercase(),
        joined.join("&")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_auth() {
        // Pusher's documented example: key 278d425bdf160c739803, secret
        // 7ad3773142a6692b25b8, socket 1234.1234, channel private-foobar.
        let sig = sign("7ad3773142a6692b25b8", "1234.1234:private-foobar");
        assert_eq!(
            sig,
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        let auth = format!("278d425bdf160c739803:{sig}");
        let ok = |auth: &str, channel: &str, data: Option<&str>| {
            channel_auth_ok(
                "278d425bdf160c739803",
                "7ad3773142a6692b25b8",
                "1234.1234",
                channel,
                data,
                auth,
            )
        };
        assert!(ok(&auth, "private-foobar", None));
        assert!(!ok(&auth, "private-other", None));
        assert!(!ok(&auth, "private-foobar", Some("{}")));
        assert!(!ok("278d425bdf160c739803", "private-foobar", None));
        assert!(!ok("other:00", "private-foobar", None));
        assert!(!ok("278d425bdf160c739803:zz", "private-foobar", None));
    }

    #[test]
    fn request_signature() {
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let body = br#"{"name":"e","data":"{}","channels":["a"]}"#;
        let md5 = hex(&md5::Md5::digest(body));
        let mut query = q(&[
            ("auth_key", "k"),
            ("auth_timestamp", "1000"),
            ("auth_version", "1.0"),
            ("body_md5", &md5),
        ]);
        let text = string_to_sign("POST", "/apps/1/events", &query);
        assert!(text.starts_with("POST\n/apps/1/events\nauth_key=k&auth_timestamp=1000"));
        query.push(("auth_signature".into(), sign("secret", &text)));
        let check = |query: &[(String, String)], body: &[u8], now| {
            check_request("k", "secret", "POST", "/apps/1/events", query, body, now)
        };
        assert_eq!(check(&query, body, 1000), Ok(()));
        assert_eq!(check(&query, body, 1000 + 601), Err(RequestRefusal::Stale));
        assert_eq!(check(&query, b"{}", 1000), Err(RequestRefusal::BodyMd5));
        let mut forged = query.clone();
        forged.push(("extra".into(), "1".into()));
        assert!(matches!(
            check(&forged, body, 1000),
            Err(RequestRefusal::Signature(_))
        ));
        assert_eq!(
            check(&query[1..], body, 1000),
            Err(RequestRefusal::Missing("auth_key"))
        );
    }
}
