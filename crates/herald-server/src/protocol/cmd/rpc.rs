//! `rpc`: a call the application backend answers (the rpc hook).

use bytes::Bytes;
use herald_core::Refusal;
use serde::Deserialize;
use serde_json::{json, value::RawValue};

use crate::access::hook::HookEvent;
use crate::error::Refused;
use crate::protocol::{reply, Session};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Args {
    pub(crate) method: String,
    pub(crate) params: Option<Box<RawValue>>,
}

pub(crate) async fn apply(session: &mut Session, id: u64, args: Args) -> Result<Bytes, Refused> {
    let Some(hooks) = session
        .rules()
        .hooks
        .clone()
        .filter(|h| h.wants(HookEvent::Rpc))
    else {
        return Err(Refused::new(
            Refusal::NotAvailable,
            "no rpc backend is configured",
        ));
    };
    let body = json!({
        "event": "rpc",
        "client": &**session.client(),
        "user": session.identity().user.as_deref(),
        "method": args.method,
        "params": args.params,
    });
    let Some(answer) = hooks.call(HookEvent::Rpc, &body).await else {
        return Err(Refused::new(
            Refusal::HookUnavailable,
            "the application backend did not answer; retry later",
        ));
    };
    if let Some(error) = answer.error {
        return Err(Refused::new(
            Refusal::RpcError,
            format!(
                "{}: {}",
                error.code.unwrap_or_else(|| "error".into()),
                error.message.unwrap_or_default()
            ),
        ));
    }
    let result: serde_json::Value = answer
        .result
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or(serde_json::Value::Null);
    Ok(reply(id, "rpc", json!({ "result": result })))
}
