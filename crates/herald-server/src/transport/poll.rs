//! Long-polling, short-polling (`timeout=0`) and JSONP (`callback=NAME`).
//!
//! One request, one answer: every message ready after the resume point at
//! once, or else the first one published within the timeout, or an empty
//! list. `last_id` tells the client where to poll from next.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use herald_core::disconnect::{Disconnect, SHUTDOWN};
use herald_core::{ChannelName, Item, Message, MessageId, Subscriber};
use std::sync::Arc;

use crate::config::{Config, DEFAULT_POLL_TIMEOUT};
use crate::error::ApiError;
use crate::state::AppState;
use crate::subscribe::{no_buffering, Connection};
use herald_core::Refusal;

/// Parses `?timeout=` (whole seconds); longer than the configured maximum is clamped.
pub fn timeout(text: Option<&str>, config: &Config) -> Result<Duration, ApiError> {
    let Some(text) = text else {
        return Ok(DEFAULT_POLL_TIMEOUT.min(config.poll_timeout_max));
    };
    let secs: u64 = text.parse().map_err(|_| {
        ApiError::new(
            Refusal::InvalidTimeout,
            "timeout must be a whole number of seconds (0 for a short poll)",
        )
    })?;
    Ok(Duration::from_secs(secs).min(config.poll_timeout_max))
}

#[derive(Default)]
struct Answer {
    messages: Vec<Arc<Message>>,
    gap: bool,
    ended: Option<Disconnect>,
}

impl Answer {
    /// Takes one item; returns false when nothing more should be taken.
    fn take(&mut self, item: Item) -> bool {
        match item {
            Item::Message(m) => self.messages.push(m),
            Item::Gap(_) => self.gap = true,
            Item::Closed(_, why) | Item::Disconnect(why) => {
                self.ended = Some(why);
                return false;
            }
            // Join/leave notices are for streams; a poll answer lists messages.
            Item::Notice(_) => {}
        }
        true
    }

    fn drain(&mut self, sub: &mut Subscriber) {
        while let Some(item) = sub.try_next() {
            if !self.take(item) {
                break;
            }
        }
    }
}

pub async fn serve(
    state: &AppState,
    mut conn: Connection,
    wait: Duration,
    callback: Option<String>,
) -> Response {
    let sub = &mut conn.sub;
    let subscribed = conn.subscribed;
    let mut answer = Answer::default();
    answer.drain(sub);
    if answer.messages.is_empty() && !answer.gap && answer.ended.is_none() && !wait.is_zero() {
        tokio::select! {
            () = state.shutdown.cancelled() => answer.ended = Some(SHUTDOWN),
            () = tokio::time::sleep(wait) => {}
            item = sub.next() => {
                if answer.take(item) {
                    answer.drain(sub);
                }
            }
        }
    }
    let channel = conn.channel.clone();
    drop(conn);
    let last_id = answer.messages.last().map(|m| m.id).or(subscribed.position);

    let jsonp = callback.is_some();
    let body = body(
        &channel,
        &answer.messages,
        last_id,
        answer.gap,
        answer.ended,
        callback.as_deref(),
    );
    let content_type = if jsonp {
        "application/javascript; charset=utf-8"
    } else {
        "application/json"
    };
    let mut response = Response::new(axum::body::Body::from(body));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    no_buffering(&mut response);
    response
}

/// The answer's body: `{"channel","messages","last_id","gap"}` (and
/// `"disconnect"` when the subscription ended), or with a callback the JSONP
/// call `NAME({...});`, whose envelopes are script-safe.
pub(crate) fn body(
    channel: &ChannelName,
    messages: &[Arc<Message>],
    last_id: Option<MessageId>,
    gap: bool,
    ended: Option<Disconnect>,
    callback: Option<&str>,
) -> Bytes {
    let jsonp = callback.is_some();
    let mut body = BytesMut::new();
    if let Some(name) = callback {
        body.put_slice(name.as_bytes());
        body.put_u8(b'(');
    }
    body.put_slice(b"{\"channel\":");
    let mut name = Vec::new();
    herald_core::message::write_json_string(&mut name, channel.as_str());
    body.put_slice(&name);
    body.put_slice(b",\"messages\":[");
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(if jsonp {
            m.script_envelope()
        } else {
            m.envelope()
        });
    }
    body.put_slice(b"],\"last_id\":");
    match last_id {
        Some(id) => body.put_slice(format!("\"{id}\"").as_bytes()),
        None => body.put_slice(b"null"),
    }
    body.put_slice(if gap {
        b",\"gap\":true"
    } else {
        b",\"gap\":false"
    });
    if let Some(why) = ended {
        body.put_slice(b",\"disconnect\":");
        body.put_slice(&serde_json::to_vec(&why).unwrap_or_default());
    }
    body.put_u8(b'}');
    if jsonp {
        body.put_slice(b");");
    }
    body.freeze()
}
