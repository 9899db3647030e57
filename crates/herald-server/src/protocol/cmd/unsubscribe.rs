//! `unsubscribe`: stop following a channel.

use bytes::Bytes;
use herald_core::Refusal;
use serde::Deserialize;
use serde_json::json;

use crate::error::Refused;
use crate::protocol::{reply, Session};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Args {
    pub(crate) channel: String,
}

pub(crate) fn apply(session: &mut Session, id: u64, args: Args) -> Result<Bytes, Refused> {
    let channel = super::channel_name(&args.channel)?;
    if !session.sub.unsubscribe(&channel) {
        return Err(Refused::new(
            Refusal::NotSubscribed,
            format!("not subscribed to {channel}"),
        ));
    }
    Ok(reply(
        id,
        "unsubscribe",
        json!({"channel": channel.as_str()}),
    ))
}
