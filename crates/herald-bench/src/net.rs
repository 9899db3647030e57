//! Outgoing TCP connections spread over loopback source addresses.
//!
//! One source address can hold at most one connection per ephemeral port
//! towards a given server port (about 28k with the default port range), so
//! to pass 64k connections the subscriber `i` binds `source_base + i %
//! source_count` before connecting. 127.0.0.0/8 is all loopback on Linux, so
//! no interface setup is needed.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

/// The pool of source addresses.
#[derive(Debug, Clone, Copy)]
pub struct Sources {
    base: Ipv4Addr,
    /// 0 means "let the kernel choose".
    count: u32,
}

impl Sources {
    pub fn new(base: Ipv4Addr, count: u32) -> Self {
        Self { base, count }
    }

    /// The source for connection number `index`, or `None` when the kernel
    /// should choose (no pool, or an IPv6 target).
    pub fn for_index(&self, index: u64, target: &SocketAddr) -> Option<IpAddr> {
        if self.count == 0 || !target.is_ipv4() {
            return None;
        }
        let offset = u32::try_from(index % u64::from(self.count)).unwrap_or(0);
        let ip = u32::from(self.base).wrapping_add(offset);
        Some(IpAddr::V4(Ipv4Addr::from(ip)))
    }

    /// Every address of the pool, for validation.
    pub fn all(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (0..self.count).map(|i| Ipv4Addr::from(u32::from(self.base).wrapping_add(i)))
    }
}

/// Connects to `target`, first binding `source:0` when given. Nagle is off:
/// publishes and small frames must leave at once.
pub async fn connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(src) = source {
        socket.bind(SocketAddr::new(src, 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_sources() {
        let s = Sources::new(Ipv4Addr::new(127, 0, 0, 2), 3);
        let t: SocketAddr = "127.0.0.1:80".parse().expect("addr");
        let got: Vec<_> = (0..4).map(|i| s.for_index(i, &t)).collect();
        let ip = |d| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, d)));
        assert_eq!(got, vec![ip(2), ip(3), ip(4), ip(2)]);
        let v6: SocketAddr = "[::1]:80".parse().expect("addr");
        assert_eq!(s.for_index(0, &v6), None);
        assert_eq!(
            Sources::new(Ipv4Addr::new(127, 0, 0, 2), 0).for_index(5, &t),
            None
        );
        let wide = Sources::new(Ipv4Addr::new(127, 0, 0, 255), 2);
        assert_eq!(
            wide.all().collect::<Vec<_>>()[1],
            Ipv4Addr::new(127, 0, 1, 0)
        );
    }

    #[tokio::test]
    async fn connects_from_chosen_source() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7));
        let (client, accepted) = tokio::join!(connect(addr, Some(src)), listener.accept());
        let client = client.expect("connect");
        let (_, peer) = accepted.expect("accept");
        assert_eq!(peer.ip(), src);
        assert_eq!(client.local_addr().expect("local").ip(), src);
    }
}
