//! `publish`: a client publishes to a channel whose namespace allows it,
//! within its rate, and after the publish hook (which may rewrite it).

use bytes::Bytes;
use herald_core::Refusal;
use serde::Deserialize;
use serde_json::{json, value::RawValue};

use crate::access::{self, hook::HookEvent};
use crate::error::Refused;
use crate::protocol::{reply, Session};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Args {
    pub(crate) channel: String,
    pub(crate) data: Box<RawValue>,
}

pub(crate) async fn apply(session: &mut Session, id: u64, args: Args) -> Result<Bytes, Refused> {
    let channel = super::channel_name(&args.channel)?;
    let state = session.state.clone();
    if !state
        .node
        .namespaces
        .options(channel.as_str())
        .client_publish
    {
        return Err(Refused::new(
            Refusal::Forbidden,
            format!("clients may not publish to {channel}"),
        ));
    }
    access::may_read(&state.rules, session.identity(), &channel)?;
    // Checked before the rate limit and the hook: a refused payload
    // costs neither.
    access::json_payload(&args.data, state.config.max_payload)?;
    if !session.may_publish_now() {
        return Err(Refused::new(
            Refusal::RateLimited,
            format!(
                "at most {} publishes per second per connection",
                state.config.limits.client_publish_rate
            ),
        ));
    }
    let mut data = args.data;
    if let Some(hooks) = &state.rules.hooks {
        let body = json!({
            "event": "publish",
            "client": &**session.client(),
            "user": session.identity().user.as_deref(),
            "channel": channel.as_str(),
            "data": &data,
        });
        if let Some(rewritten) =
            access::hook_verdict(hooks.decide(HookEvent::Publish, &body).await)?
        {
            data = rewritten;
        }
    }
    let payload = access::json_payload(&data, state.config.max_payload)?;
    let published = state.node.engine.publish(&channel, payload).await?;
    state.counters.published(&published, true);
    Ok(reply(
        id,
        "publish",
        json!({"channel": channel.as_str(), "id": published.message.id.to_string()}),
    ))
}
