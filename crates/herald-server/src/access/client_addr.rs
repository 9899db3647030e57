//! Who the client is: the TCP peer's address in canonical form, or, when the
//! peer is a configured trusted proxy, the address that proxy reports in
//! `Forwarded` or `X-Forwarded-For`.
//!
//! Nothing in a header is believed unless the TCP peer is in
//! `trusted_proxies` (none by default): any client can write those headers.
//! The chain is read from the right (the hop nearest to us) and trusted
//! proxies are skipped, so a client cannot pick its own address by
//! prepending entries. Addresses are canonicalised everywhere, so an IPv4
//! client on a dual-stack `[::]` listener (`::ffff:127.0.0.1`) is the same
//! client, with the same loopback rule and per-IP count, as on `0.0.0.0`.
//!
//! The same trust covers the host the client asked for ([`forwarded_host`]):
//! a proxy on another port or name rewrites `Host`, and the same-origin check
//! (`http::origin`) needs the one the browser used.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// `::ffff:a.b.c.d` as `a.b.c.d`; every other address unchanged.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// A socket address with its IP canonicalised.
pub(crate) fn canonical_socket(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(addr.ip()), addr.port())
}

/// The headers that say a request came through a proxy.
pub(crate) const FORWARDING_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// Whether any forwarding header is present.
pub(crate) fn has_forwarding_headers(headers: &HeaderMap) -> bool {
    FORWARDING_HEADERS
        .iter()
        .any(|name| headers.contains_key(*name))
}

/// The configured `trusted_proxies`.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

/// A `trusted_proxies` entry that is neither an address nor a CIDR block.
#[derive(Debug, thiserror::Error)]
#[error("trusted_proxies: {0:?} is not an address or CIDR block like 10.0.0.0/8")]
pub struct BadProxy(pub String);

impl TrustedProxies {
    /// Parses `["127.0.0.1/32", "10.0.0.0/8", "::1"]`; a bare address is a
    /// one-address block.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, BadProxy> {
        let mut nets = Vec::with_capacity(entries.len());
        for entry in entries {
            let text = entry.as_ref().trim();
            let net = match text.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match text.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => return Err(BadProxy(text.to_string())),
                },
            };
            nets.push(net);
        }
        Ok(Self { nets })
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The blocks, as configured (canonical CIDR form).
    pub fn entries(&self) -> Vec<String> {
        self.nets.iter().map(|n| n.to_string()).collect()
    }

    /// Whether `ip` (canonical) is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request that arrived from `peer`, and
    /// whether it came through a trusted proxy.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> (SocketAddr, bool) {
        let peer = canonical_socket(peer);
        if !self.contains(peer.ip()) {
            return (peer, false);
        }
        let chain = forwarded_for(headers).or_else(|| x_forwarded_for(headers));
        let Some(chain) = chain else {
            // A trusted proxy that names no client: the proxy is the client.
            return (peer, false);
        };
        // Rightmost first: the last hop appended the address it saw.
        let mut client = None;
        for hop in chain.iter().rev() {
            match hop {
                Some(ip) if self.contains(*ip) => client = Some(*ip),
                Some(ip) => {
                    client = Some(*ip);
                    break;
                }
                // An entry we cannot read (`unknown`, an obfuscated name):
                // nothing to its left can be trusted either.
                None => break,
            }
        }
        match client {
            Some(ip) => (SocketAddr::new(canonical(ip), peer.port()), true),
            None => (peer, true),
        }
    }
}

/// The `for=` addresses of every `Forwarded` header, in order (RFC 7239).
/// `None` if there is no such header; an entry is `None` when unreadable.
fn forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut found = false;
    let mut chain = Vec::new();
    for value in headers.get_all("forwarded") {
        found = true;
        let Ok(text) = value.to_str() else {
            chain.push(None);
            continue;
        };
        for element in text.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| value.trim().trim_matches('"'))
            });
            if let Some(node) = node {
                chain.push(parse_node(node));
            }
        }
    }
    found.then_some(chain)
}

/// Every `X-Forwarded-For` entry, in order.
fn x_forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut found = false;
    let mut chain = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        found = true;
        let Ok(text) = value.to_str() else {
            chain.push(None);
            continue;
        };
        for entry in text.split(',') {
            chain.push(parse_node(entry.trim()));
        }
    }
    found.then_some(chain)
}

/// The host the client asked for, as the proxy nearest to us reports it:
/// the last `host=` of `Forwarded` (RFC 7239), else the last
/// `X-Forwarded-Host` entry. Only for a request whose TCP peer is a trusted
/// proxy: anyone else can write these headers. The last entry is the one
/// our proxy wrote; entries to its left came from further away, possibly
/// from the client itself.
pub(crate) fn forwarded_host(headers: &HeaderMap) -> Option<String> {
    last_entry(headers, "forwarded", |element| {
        element.split(';').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("host")
                .then(|| value.trim().trim_matches('"'))
        })
    })
    .or_else(|| last_entry(headers, "x-forwarded-host", |entry| Some(entry)))
}

/// The last non-empty value `pick` finds in the comma-separated entries of
/// every `name` header.
fn last_entry(headers: &HeaderMap, name: &str, pick: fn(&str) -> Option<&str>) -> Option<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|text| text.split(','))
        .filter_map(pick)
        .map(str::trim)
        .rfind(|host| !host.is_empty())
        .map(str::to_string)
}

/// `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711`,
/// `2001:db8::1`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let inner = text.strip_prefix('[')?.split(']').next()?;
    inner.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, value.parse().expect("header value"));
        }
        h
    }

    fn peer(text: &str) -> SocketAddr {
        text.parse().expect("socket address")
    }

    #[test]
    fn mapped_ipv4_is_canonical() {
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        assert_eq!(
            canonical(mapped),
            "127.0.0.1".parse::<IpAddr>().expect("ip")
        );
        assert!(canonical(mapped).is_loopback());
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let none = TrustedProxies::default();
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        let (client, proxied) = none.client(peer("127.0.0.1:5000"), &h);
        assert_eq!(client, peer("127.0.0.1:5000"));
        assert!(!proxied);
    }

    #[test]
    fn trusted_proxy_names_the_client() {
        let t = TrustedProxies::parse(&["127.0.0.1/32", "10.0.0.0/8"]).expect("valid");
        let h = headers(&[("x-forwarded-for", "203.0.113.9, 10.1.2.3")]);
        let (client, proxied) = t.client(peer("127.0.0.1:5000"), &h);
        assert_eq!(client.ip(), "203.0.113.9".parse::<IpAddr>().expect("ip"));
        assert!(proxied);
        // A client cannot choose its address by prepending entries.
        let h = headers(&[("x-forwarded-for", "127.0.0.1, 198.51.100.7")]);
        let (client, _) = t.client(peer("127.0.0.1:5000"), &h);
        assert_eq!(client.ip(), "198.51.100.7".parse::<IpAddr>().expect("ip"));
        // Forwarded wins over X-Forwarded-For; quoted IPv6 with a port.
        let h = headers(&[
            ("forwarded", "for=\"[2001:db8::1]:4711\";proto=https"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        let (client, _) = t.client(peer("[::ffff:127.0.0.1]:5000"), &h);
        assert_eq!(client.ip(), "2001:db8::1".parse::<IpAddr>().expect("ip"));
        // An unreadable hop stops the walk at the proxy.
        let h = headers(&[("forwarded", "for=unknown")]);
        let (client, proxied) = t.client(peer("127.0.0.1:5000"), &h);
        assert_eq!(client, peer("127.0.0.1:5000"));
        assert!(proxied);
    }

    #[test]
    fn forwarded_host_is_the_nearest_proxys() {
        assert_eq!(forwarded_host(&headers(&[])), None);
        let h = headers(&[("x-forwarded-host", "push.example:8443")]);
        assert_eq!(forwarded_host(&h).as_deref(), Some("push.example:8443"));
        // The last entry is the one the nearest proxy wrote.
        let h = headers(&[
            ("x-forwarded-host", "evil.example, push.example"),
            ("x-forwarded-host", "push.example:8443"),
        ]);
        assert_eq!(forwarded_host(&h).as_deref(), Some("push.example:8443"));
        // Forwarded wins over X-Forwarded-Host, as it does for `for=`.
        let h = headers(&[
            (
                "forwarded",
                "for=192.0.2.1;host=a.example, for=10.0.0.1;host=\"b.example:81\"",
            ),
            ("x-forwarded-host", "c.example"),
        ]);
        assert_eq!(forwarded_host(&h).as_deref(), Some("b.example:81"));
        // A Forwarded without host= leaves X-Forwarded-Host in charge.
        let h = headers(&[
            ("forwarded", "for=192.0.2.1"),
            ("x-forwarded-host", "c.example"),
        ]);
        assert_eq!(forwarded_host(&h).as_deref(), Some("c.example"));
        assert_eq!(
            forwarded_host(&headers(&[("x-forwarded-host", " , ")])),
            None
        );
    }

    #[test]
    fn bad_entries_are_named() {
        let err = TrustedProxies::parse(&["10.0.0.0/8", "nope"]).expect_err("invalid");
        assert!(err.to_string().contains("nope"));
        assert!(TrustedProxies::parse(&["::1", "192.168.0.0/16"]).is_ok());
    }
}
