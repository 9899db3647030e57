//! Webhooks in Pusher's format, for each `[[pusher.apps]]` app with a
//! `webhook_url` (docs/pusher.md, "Webhooks"): which outbox events an app
//! gets, and how each becomes a Pusher event.
//!
//! There is no second pipeline: the app's events are recorded in the
//! engine's one outbox like Herald's own (occupancy, members, and the
//! Pusher dialect's `client_event` and `cache_miss` hooks), and the one
//! webhook sender (`access/webhook.rs`) posts each batch to every
//! destination that wants some of it. This module only decides, per app,
//! what of an outbox event it gets: an event of a channel under the app's
//! prefix (`pusher:{id}:`), named in its `webhook_events`, renamed to
//! Pusher's name with the app's channel name. The body is Pusher's
//! `{"time_ms", "events": [...]}`, signed `X-Pusher-Signature: hex
//! HMAC-SHA256(secret, body)` with `X-Pusher-Key`.

use std::collections::BTreeSet;

use herald_core::event::{
    CHANNEL_OCCUPIED, CHANNEL_VACATED, MEMBER_ADDED, MEMBER_REMOVED, PUSHER_CACHE_MISS,
    PUSHER_CLIENT_EVENT,
};
use serde_json::{json, Map, Value};

/// Pusher's webhook event names and the outbox events they come from, in
/// the order the docs list them.
pub(crate) const EVENTS: &[(&str, &str)] = &[
    ("channel_occupied", CHANNEL_OCCUPIED),
    ("channel_vacated", CHANNEL_VACATED),
    ("member_added", MEMBER_ADDED),
    ("member_removed", MEMBER_REMOVED),
    ("client_event", PUSHER_CLIENT_EVENT),
    ("cache_miss", PUSHER_CACHE_MISS),
];

/// The key header (lower case, as hyper writes it).
pub(crate) const KEY_HEADER: &str = "x-pusher-key";
/// The signature header.
pub(crate) const SIGNATURE_HEADER: &str = "x-pusher-signature";

/// The outbox event a Pusher webhook event name comes from.
pub(crate) fn outbox_event(pusher_name: &str) -> Option<&'static str> {
    EVENTS
        .iter()
        .find(|(p, _)| *p == pusher_name)
        .map(|(_, e)| *e)
}

/// One app's webhook, validated (`webhook_url`, `webhook_events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PusherWebhook {
    pub url: hyper::Uri,
    /// The outbox events it gets (Herald's names, see [`EVENTS`]).
    pub events: BTreeSet<String>,
}

/// What one app's receiver is sent: its webhook, key, secret and channel
/// prefix.
#[derive(Clone)]
pub(crate) struct AppTarget {
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) secret: String,
    pub(crate) prefix: String,
    pub(crate) webhook: PusherWebhook,
}

impl AppTarget {
    /// Whether this app records `event` at all (the dialect's hooks ask
    /// before recording a client event or a cache miss).
    pub(crate) fn wants(&self, event: &str) -> bool {
        self.webhook.events.contains(event)
    }

    /// The Pusher form of an outbox event, if it is this app's and wanted.
    pub(crate) fn convert(&self, fields: &Map<String, Value>) -> Option<Value> {
        let event = fields.get("event")?.as_str()?;
        if !self.wants(event) {
            return None;
        }
        let channel = fields
            .get("channel")?
            .as_str()?
            .strip_prefix(self.prefix.as_str())?;
        let name = EVENTS.iter().find(|(_, e)| *e == event)?.0;
        let mut out = json!({"name": name, "channel": channel});
        match event {
            MEMBER_ADDED | MEMBER_REMOVED => {
                out["user_id"] = fields.get("user")?.clone();
            }
            PUSHER_CLIENT_EVENT => {
                // `event` names the outbox event: the client's is `event_name`.
                out["event"] = fields.get("event_name")?.clone();
                for key in ["data", "socket_id", "user_id"] {
                    if let Some(v) = fields.get(key) {
                        out[key] = v.clone();
                    }
                }
            }
            _ => {}
        }
        Some(out)
    }
}

/// The `data` of a `client_event` as Pusher's webhook carries it: a
/// string, the client's data as JSON text unless it is itself a string.
pub(crate) fn client_data(data: &Value) -> Value {
    match data {
        Value::String(s) => Value::String(s.clone()),
        other => Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(events: &[&str]) -> AppTarget {
        AppTarget {
            id: "1".into(),
            key: "k".into(),
            secret: "s".into(),
            prefix: "pusher:1:".into(),
            webhook: PusherWebhook {
                url: hyper::Uri::from_static("http://127.0.0.1:9/"),
                events: events.iter().map(|e| (*e).to_owned()).collect(),
            },
        }
    }

    fn fields(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn an_apps_events_become_pushers_with_its_channel_names() {
        let a = app(&[CHANNEL_OCCUPIED, MEMBER_ADDED, PUSHER_CLIENT_EVENT]);
        let occupied = fields(
            json!({"event": CHANNEL_OCCUPIED, "time_ms": 1, "channel": "pusher:1:presence-r"}),
        );
        assert_eq!(
            a.convert(&occupied),
            Some(json!({"name": "channel_occupied", "channel": "presence-r"}))
        );
        let added =
            fields(json!({"event": MEMBER_ADDED, "channel": "pusher:1:presence-r", "user": "7"}));
        assert_eq!(
            a.convert(&added),
            Some(json!({"name": "member_added", "channel": "presence-r", "user_id": "7"}))
        );
        let client = fields(
            json!({"event": PUSHER_CLIENT_EVENT, "channel": "pusher:1:private-x",
            "event_name": "client-x", "socket_id": "1.2", "data": "{}"}),
        );
        assert_eq!(
            a.convert(&client),
            Some(
                json!({"name": "client_event", "channel": "private-x", "event": "client-x",
                "socket_id": "1.2", "data": "{}"})
            )
        );
        // Another app's channel, a Herald channel, an event not wanted.
        for other in [
            json!({"event": CHANNEL_OCCUPIED, "channel": "pusher:2:x"}),
            json!({"event": CHANNEL_OCCUPIED, "channel": "room"}),
            json!({"event": CHANNEL_VACATED, "channel": "pusher:1:x"}),
        ] {
            assert_eq!(a.convert(&fields(other)), None);
        }
    }

    #[test]
    fn client_data_is_a_string() {
        assert_eq!(client_data(&json!({"a": 1})), json!(r#"{"a":1}"#));
        assert_eq!(client_data(&json!("hi")), json!("hi"));
    }
}
