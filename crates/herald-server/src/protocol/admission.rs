//! The one admission path of every client connection, whatever its URL,
//! dialect or transport: first the connection limits, then the client's
//! credentials. (The connect and subscribe rules and their hooks follow in
//! the [`Session`](super::Session): at once for a channel URL, at the first
//! command for the session protocol, whose `connect` may carry the token.)
//!
//! What a connection holds against the limits depends on how long it lives
//! ([`Hold`]): an upgraded WebSocket takes over its TCP connection's slot;
//! a streaming or polling request keeps the TCP slot its connection
//! already holds; an HTTP session outlives the requests that opened it, so
//! it takes a slot of its own. Behind a trusted proxy every long-lived
//! request also takes a slot for the client's own address, which the TCP
//! count cannot see.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

use crate::access::limits::{Conn, Slot};
use crate::access::token::Identity;
use crate::error::Refused;
use crate::state::AppState;

/// How long what is admitted outlives its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// A WebSocket: the upgraded socket keeps its TCP connection's slot.
    Upgrade,
    /// A stream or a poll: the response lives on its TCP connection.
    Request,
    /// An HTTP session: it lives on between its requests.
    Session,
}

/// What the opening request says about its client.
pub(crate) struct Opening<'a> {
    /// The client's address (behind a trusted proxy, the one it reported).
    pub(crate) peer: SocketAddr,
    pub(crate) conn: &'a Conn,
    pub(crate) headers: &'a HeaderMap,
    /// `?ticket=`, when the client sent one.
    pub(crate) ticket: Option<&'a str>,
}

/// An admitted client: its slot under the limits and who it is.
pub(crate) struct Admitted {
    pub(crate) slot: Option<Slot>,
    pub(crate) identity: Identity,
    pub(crate) peer: Option<IpAddr>,
}

impl Admitted {
    /// An anonymous client holding no slot: for unit tests of the session.
    #[cfg(test)]
    pub(crate) fn anonymous() -> Self {
        Self {
            slot: None,
            identity: Identity::default(),
            peer: None,
        }
    }
}

/// Counts the connection against the limits, then reads its credentials
/// (`?ticket=`, `Authorization: Bearer`, the token cookie). A connection
/// refused by either holds nothing afterwards.
pub(crate) async fn admit(
    state: &AppState,
    hold: Hold,
    opening: Opening<'_>,
) -> Result<Admitted, Refused> {
    let slot = slot(state, hold, opening.peer, opening.conn)?;
    let identity = crate::access::identify(&state.rules, opening.headers, opening.ticket).await?;
    Ok(Admitted {
        slot: Some(slot),
        identity,
        peer: Some(opening.peer.ip()),
    })
}

fn slot(state: &AppState, hold: Hold, peer: SocketAddr, conn: &Conn) -> Result<Slot, Refused> {
    let ip = peer.ip();
    if hold == Hold::Session {
        let guard = state
            .session_limiter
            .acquire(ip)
            .map_err(crate::access::limits::LimitHit::error)?;
        return Ok(Slot::new(None, Some(guard), &state.clients));
    }
    let client = if conn.proxied {
        Some(
            state
                .limiter
                .acquire_per_ip(ip)
                .map_err(crate::access::limits::LimitHit::error)?,
        )
    } else {
        None
    };
    let tcp = if hold == Hold::Upgrade {
        conn.slot.take()
    } else {
        None
    };
    Ok(Slot::new(tcp, client, &state.clients))
}
