//! `ack`: acknowledges messages of the client's own mailbox (see
//! `herald_core::mailbox`), by id or cumulatively up to an id, for every
//! connection of the user on every node. The same arguments are the body
//! of `POST /ack`, for transports that have no way up.

use bytes::Bytes;
use herald_core::mailbox::{Ack, Acked, MAX_ACK_IDS};
use herald_core::{MessageId, Refusal};
use serde::Deserialize;
use serde_json::json;

use crate::error::Refused;
use crate::protocol::{reply, Session};
use crate::state::AppState;

/// `{"ids": ["…", …]}` or `{"upto": "…"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Args {
    pub(crate) ids: Option<Vec<String>>,
    pub(crate) upto: Option<String>,
}

impl Args {
    /// What the arguments acknowledge; exactly one of `ids` (1 to
    /// [`MAX_ACK_IDS`] ids) and `upto`. `invalid` is the refusal of a
    /// malformed acknowledgement where it is read.
    pub(crate) fn ack(&self, invalid: Refusal) -> Result<Ack, Refused> {
        let id = |text: &str| {
            text.parse::<MessageId>()
                .map_err(|_| Refused::new(invalid, format!("{text:?} is not a message id")))
        };
        match (&self.ids, &self.upto) {
            (Some(ids), None) if (1..=MAX_ACK_IDS).contains(&ids.len()) => ids
                .iter()
                .map(|t| id(t))
                .collect::<Result<_, _>>()
                .map(Ack::Ids),
            (Some(_), None) => Err(Refused::new(
                invalid,
                format!("\"ids\" lists 1 to {MAX_ACK_IDS} message ids"),
            )),
            (None, Some(upto)) => id(upto).map(Ack::UpTo),
            _ => Err(Refused::new(
                invalid,
                "an acknowledgement has either \"ids\" or \"upto\"",
            )),
        }
    }
}

/// Acknowledges for `user` (the connection's own user; anonymous clients
/// have no mailbox).
pub(crate) async fn acknowledge(
    state: &AppState,
    user: Option<&str>,
    ack: &Ack,
) -> Result<Acked, Refused> {
    let Some(user) = user else {
        return Err(Refused::new(
            Refusal::Forbidden,
            "only a client with a token naming a user has a mailbox to acknowledge",
        ));
    };
    let channel = herald_core::user::user_channel(user)
        .map_err(|e| Refused::new(Refusal::InvalidUser, format!("user id: {e}")))?;
    let done = state.node.engine.ack(&channel, ack).await?;
    state.counters.mailbox_acknowledged.fetch_add(
        u64::try_from(done.removed).unwrap_or(u64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
    Ok(done)
}

pub(crate) async fn apply(session: &mut Session, id: u64, args: Args) -> Result<Bytes, Refused> {
    let ack = args.ack(Refusal::InvalidCommand)?;
    let user = session.identity().user.clone();
    let done = acknowledge(&session.state, user.as_deref(), &ack).await?;
    Ok(reply(
        id,
        "ack",
        json!({"removed": done.removed, "pending": done.pending}),
    ))
}
