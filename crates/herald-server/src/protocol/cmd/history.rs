//! `history`: what a channel still keeps from a point, without following it.

use bytes::{BufMut, Bytes, BytesMut};
use herald_core::Since;
use serde::Deserialize;

use crate::access;
use crate::error::Refused;
use crate::protocol::{put_json_list, put_json_string, Session};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Args {
    pub(crate) channel: String,
    pub(crate) since: Option<String>,
}

pub(crate) async fn apply(session: &mut Session, id: u64, args: Args) -> Result<Bytes, Refused> {
    let channel = super::channel_name(&args.channel)?;
    let since = super::since(args.since.as_deref(), Since::Earliest)?;
    access::may_read(session.rules(), session.identity(), &channel)?;
    let page = session.state.node.engine.history(&channel, since).await?;
    // The stored envelopes are JSON already: spliced in as they are.
    let mut out = BytesMut::new();
    out.put_slice(format!("{{\"id\":{id},\"history\":{{\"channel\":").as_bytes());
    put_json_string(&mut out, channel.as_str());
    out.put_slice(b",\"messages\":");
    put_json_list(&mut out, page.messages.iter().map(|m| &m.envelope()[..]));
    out.put_slice(format!(",\"gap\":{},\"last_id\":", page.gap).as_bytes());
    match page.last_id {
        Some(last) => out.put_slice(format!("\"{last}\"").as_bytes()),
        None => out.put_slice(b"null"),
    }
    out.put_slice(b"}}");
    Ok(out.freeze())
}
