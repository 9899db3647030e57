//! `connect`: the first command of a session, optionally carrying the
//! client's token (instead of the opening request's credentials).

use bytes::Bytes;
use herald_core::Refusal;
use serde::Deserialize;
use serde_json::json;

use crate::error::Refused;
use crate::protocol::{reply, Session};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Args {
    pub(crate) token: Option<String>,
}

pub(crate) async fn apply(session: &mut Session, id: u64, args: Args) -> Result<Bytes, Refused> {
    if session.connected {
        return Err(Refused::new(
            Refusal::InvalidCommand,
            "connect must be the first command of a session",
        ));
    }
    if let Some(token) = args.token {
        let identity = super::refresh::verify(session, &token)?;
        session.set_identity(identity, true);
    }
    session.ensure_connected().await?;
    let config = &session.state.config;
    Ok(reply(
        id,
        "connect",
        json!({
            "client": &**session.client(),
            "user": session.identity().user.as_deref(),
            "expires_at": session.identity().expires_at_ms.map(|ms| ms / 1000),
            "ping": config.heartbeat.as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
        }),
    ))
}
