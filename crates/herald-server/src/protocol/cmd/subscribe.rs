//! `subscribe`: follow a channel, live or from a resume point, under every
//! rule ([`Session::subscribe`], which a channel URL's implied
//! subscription goes through too).

use bytes::Bytes;
use herald_core::Since;
use serde::Deserialize;
use serde_json::json;

use crate::error::Refused;
use crate::protocol::{reply, Session};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Args {
    pub(crate) channel: String,
    pub(crate) since: Option<String>,
}

pub(crate) async fn apply(session: &mut Session, id: u64, args: Args) -> Result<Bytes, Refused> {
    let channel = super::channel_name(&args.channel)?;
    let since = super::since(args.since.as_deref(), Since::Live)?;
    let done = session.subscribe(channel.clone(), since).await?;
    Ok(reply(
        id,
        "subscribe",
        json!({
            "channel": channel.as_str(),
            "position": done.position.map(|p| p.to_string()),
            "gap": done.gap,
            "replayed": done.replayed,
        }),
    ))
}
