//! `presence`: who is on a channel whose namespace keeps presence.

use bytes::Bytes;
use herald_core::presence::PresenceSummary;
use herald_core::Refusal;
use serde::Deserialize;
use serde_json::json;

use crate::access;
use crate::error::Refused;
use crate::protocol::{reply, Session};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Args {
    pub(crate) channel: String,
}

pub(crate) async fn apply(session: &mut Session, id: u64, args: Args) -> Result<Bytes, Refused> {
    let channel = super::channel_name(&args.channel)?;
    access::may_read(session.rules(), session.identity(), &channel)?;
    let node = &session.state.node;
    if !node.namespaces.options(channel.as_str()).presence {
        return Err(Refused::new(
            Refusal::NotAvailable,
            format!("presence is not enabled for {channel}"),
        ));
    }
    let entries = node.engine.presence(&channel).await?;
    let summary = PresenceSummary::from_entries(&entries);
    Ok(reply(
        id,
        "presence",
        json!({
            "channel": channel.as_str(),
            "connections": summary.connections,
            "anonymous": summary.anonymous,
            "users": summary.users,
        }),
    ))
}
