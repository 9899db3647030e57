//! `refresh`: a new token for the same user on the open connection, which
//! moves the connection's deadline.

use bytes::Bytes;
use herald_core::Refusal;
use serde::Deserialize;
use serde_json::json;

use crate::access::token::Identity;
use crate::error::Refused;
use crate::protocol::{reply, Session};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Args {
    pub(crate) token: String,
}

/// The identity a token carries.
pub(super) fn verify(session: &Session, token: &str) -> Result<Identity, Refused> {
    session
        .rules()
        .tokens
        .verify(token)
        .map_err(|e| crate::access::token_error(&e))
}

pub(crate) fn apply(session: &mut Session, id: u64, args: Args) -> Result<Bytes, Refused> {
    let fresh = verify(session, &args.token)?;
    if fresh.user != session.identity().user {
        return Err(Refused::new(
            Refusal::Forbidden,
            "a refreshed token must be for the same user",
        ));
    }
    let expires_at = fresh.expires_at_ms.map(|ms| ms / 1000);
    session.set_identity(fresh, false);
    Ok(reply(id, "refresh", json!({ "expires_at": expires_at })))
}
