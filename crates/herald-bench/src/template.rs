//! URL and body templates, and the loopback-only target rule.
//!
//! Every server under test is addressed through a template with `{channel}`
//! (and for bodies `{payload}` / `{payload_str}`) placeholders, so the same
//! scenario can drive Herald, Nchan and Pushpin without code changes. A
//! template is parsed once, before anything connects; a target whose host is
//! not a loopback address is refused here, so no traffic can leave the box.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// The scheme is not one of the accepted ones for this use.
    Scheme(String),
    /// The URL has no `//host` part.
    MissingHost,
    /// The port is not a number in 1..=65535.
    BadPort(String),
    /// The host is neither `localhost` nor a literal loopback address.
    NotLoopback(String),
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Scheme(s) => write!(f, "unsupported URL scheme {s:?}"),
            Self::MissingHost => write!(f, "URL has no host"),
            Self::BadPort(p) => write!(f, "bad port {p:?}"),
            Self::NotLoopback(h) => write!(
                f,
                "host {h:?} is not loopback: herald-bench only targets 127.0.0.0/8, ::1 or localhost"
            ),
        }
    }
}

impl std::error::Error for TemplateError {}

/// URL scheme of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Ws,
}

/// A parsed `scheme://host:port/path?query` template; the path may hold
/// `{channel}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    pub scheme: Scheme,
    /// Host as written (for the `Host` header).
    pub host: String,
    /// Resolved loopback socket address.
    pub addr: SocketAddr,
    /// Path and query, with placeholders still in place.
    pub path: String,
}

impl UrlTemplate {
    /// Parses `template`, accepting `http`/`ws` (TLS schemes are refused: the
    /// bench measures the server, not a TLS stack).
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let (scheme, rest) = template
            .split_once("://")
            .ok_or_else(|| TemplateError::Scheme(String::new()))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "ws" => Scheme::Ws,
            other => return Err(TemplateError::Scheme(other.to_string())),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(TemplateError::MissingHost);
        }
        let (host, port) = split_host_port(authority)?;
        let ip = loopback_ip(host)?;
        Ok(Self {
            scheme,
            host: authority.to_string(),
            addr: SocketAddr::new(ip, port),
            path: path.to_string(),
        })
    }

    /// The request target (path and query) for `channel`.
    pub fn path_for(&self, channel: &str) -> String {
        self.path.replace("{channel}", channel)
    }

    /// The WebSocket handshake URL for `channel`: always `ws://`, whichever
    /// scheme the template used.
    pub fn ws_url_for(&self, channel: &str) -> String {
        format!("ws://{}{}", self.host, self.path_for(channel))
    }
}

fn split_host_port(authority: &str) -> Result<(&str, u16), TemplateError> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        // [::1]:port
        let end = rest.find(']').ok_or(TemplateError::MissingHost)?;
        let host = &rest[..end];
        let port = rest[end + 1..].strip_prefix(':').unwrap_or("80");
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (authority, "80"),
        }
    };
    if host.is_empty() {
        return Err(TemplateError::MissingHost);
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| TemplateError::BadPort(port.to_string()))?;
    Ok((host, port))
}

/// Resolves `host` to a loopback address without DNS: only `localhost` and
/// literal loopback addresses are accepted.
pub fn loopback_ip(host: &str) -> Result<IpAddr, TemplateError> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(ip),
        _ => Err(TemplateError::NotLoopback(host.to_string())),
    }
}

/// A publish body template with `{channel}`, `{payload}` (raw) and
/// `{payload_str}` (escaped for the inside of a JSON string) placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyTemplate {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Channel,
    Payload,
    PayloadStr,
}

impl BodyTemplate {
    /// Splits the template once so rendering is a plain concatenation.
    pub fn parse(template: &str) -> Self {
        const KEYS: [(&str, Piece); 3] = [
            ("{channel}", Piece::Channel),
            ("{payload}", Piece::Payload),
            ("{payload_str}", Piece::PayloadStr),
        ];
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = template;
        'outer: while !rest.is_empty() {
            for (key, piece) in &KEYS {
                if let Some(after) = rest.strip_prefix(key) {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(piece.clone());
                    rest = after;
                    continue 'outer;
                }
            }
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                text.push(c);
            }
            rest = chars.as_str();
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Self { pieces }
    }

    /// Renders the body for one publish.
    pub fn render(&self, channel: &str, payload: &str) -> String {
        let mut out = String::with_capacity(payload.len() * 2 + 64);
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Channel => out.push_str(channel),
                Piece::Payload => out.push_str(payload),
                Piece::PayloadStr => escape_json_str(payload, &mut out),
            }
        }
        out
    }
}

/// Appends `s` escaped for use between JSON double quotes.
fn escape_json_str(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

/// Renders a command template holding `{channel}` and `{id}` (session
/// WebSocket subscribe commands).
pub fn render_command(template: &str, channel: &str, id: u64) -> String {
    template
        .replace("{channel}", channel)
        .replace("{id}", &id.to_string())
}

/// An HS256 connection token for user `user`, valid for an hour (what
/// `{token}` in a session command becomes with `--hmac-secret`).
pub fn user_token(secret: &str, user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// The id of a message envelope marked `"ack":true`, if `frame` is one.
pub fn acked_message_id(frame: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(frame).ok()?;
    if !text.contains("\"ack\":true") || !text.starts_with("{\"channel\"") {
        return None;
    }
    let rest = &text[text.find("\"id\":\"")? + 6..];
    Some(&rest[..rest.find('"')?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_id_of_a_message_to_acknowledge() {
        let m = br#"{"channel":"user:b-1","id":"17-3","data":{"x":1},"ack":true}"#;
        assert_eq!(acked_message_id(m), Some("17-3"));
        assert_eq!(
            acked_message_id(br#"{"channel":"c","id":"1-1","data":1}"#),
            None
        );
        assert_eq!(acked_message_id(br#"{"id":4,"ack":{"removed":1}}"#), None);
        assert!(!user_token("secret", "u").is_empty());
    }

    #[test]
    fn parses_ws_template_and_substitutes_channel() {
        let t = UrlTemplate::parse("ws://127.0.0.1:7070/sub/{channel}").expect("parse");
        assert_eq!(t.scheme, Scheme::Ws);
        assert_eq!(t.addr, "127.0.0.1:7070".parse().expect("addr"));
        assert_eq!(t.path_for("b-3"), "/sub/b-3");
        assert_eq!(t.ws_url_for("b-3"), "ws://127.0.0.1:7070/sub/b-3");
    }

    #[test]
    fn default_port_and_path() {
        let t = UrlTemplate::parse("http://localhost").expect("parse");
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.path_for("x"), "/");
        let t = UrlTemplate::parse("http://[::1]:5561/publish/").expect("parse");
        assert_eq!(t.addr, "[::1]:5561".parse().expect("addr"));
        assert_eq!(t.host, "[::1]:5561");
    }

    #[test]
    fn query_placeholder_kept() {
        let t = UrlTemplate::parse("http://127.0.0.9:80/lp?ch={channel}&x=1").expect("parse");
        assert_eq!(t.path_for("c1"), "/lp?ch=c1&x=1");
    }

    #[test]
    fn refuses_non_loopback_and_bad_input() {
        assert_eq!(
            UrlTemplate::parse("ws://10.0.0.1:80/sub/{channel}"),
            Err(TemplateError::NotLoopback("10.0.0.1".into()))
        );
        assert!(matches!(
            UrlTemplate::parse("http://example.com/"),
            Err(TemplateError::NotLoopback(_))
        ));
        assert!(matches!(
            UrlTemplate::parse("wss://127.0.0.1/"),
            Err(TemplateError::Scheme(_))
        ));
        assert!(matches!(
            UrlTemplate::parse("127.0.0.1:80/"),
            Err(TemplateError::Scheme(_))
        ));
        assert!(matches!(
            UrlTemplate::parse("http://127.0.0.1:0/"),
            Err(TemplateError::BadPort(_))
        ));
        assert!(matches!(
            UrlTemplate::parse("http://127.0.0.1:http/"),
            Err(TemplateError::BadPort(_))
        ));
        assert!(matches!(
            UrlTemplate::parse("http:///x"),
            Err(TemplateError::MissingHost)
        ));
    }

    #[test]
    fn body_template_placeholders() {
        let t = BodyTemplate::parse("{payload}");
        assert_eq!(t.render("c", r#"{"seq":1,"t":2}"#), r#"{"seq":1,"t":2}"#);

        let pushpin = BodyTemplate::parse(
            r#"{"items":[{"channel":"{channel}","formats":{"ws-message":{"content":"{payload_str}"}}}]}"#,
        );
        let body = pushpin.render("room-1", r#"{"seq":7,"t":9}"#);
        assert_eq!(
            body,
            r#"{"items":[{"channel":"room-1","formats":{"ws-message":{"content":"{\"seq\":7,\"t\":9}"}}}]}"#
        );
        let v: serde_json::Value = serde_json::from_str(&body).expect("valid json");
        assert_eq!(
            v["items"][0]["formats"]["ws-message"]["content"],
            r#"{"seq":7,"t":9}"#
        );
    }

    #[test]
    fn body_template_keeps_unknown_braces_and_unicode() {
        let t = BodyTemplate::parse("é{x}{channel}\\n{payload_str}");
        assert_eq!(t.render("c", "a\"\n"), "é{x}c\\na\\\"\\n");
    }

    #[test]
    fn command_template() {
        assert_eq!(
            render_command(
                r#"{"id":{id},"subscribe":{"channel":"{channel}"}}"#,
                "c9",
                4
            ),
            r#"{"id":4,"subscribe":{"channel":"c9"}}"#
        );
    }
}
