//! The Pusher dialect's webhook hooks: a `client-` event sent and a
//! `pusher:cache_miss` answered become outbox events (`pusher.client_event`,
//! `pusher.cache_miss`; see `access::pusher_webhook`) when the app's
//! `webhook_events` want them. Recorded by the node the client is on, once
//! per event; delivery is the webhook sender's. Kept apart from the
//! dialect's state machine so that the two meet only at two calls.

use herald_core::event::{PUSHER_CACHE_MISS, PUSHER_CLIENT_EVENT};
use herald_core::ChannelName;
use serde_json::{Map, Value};

use crate::access::pusher_webhook::client_data;
use crate::protocol::Session;

impl Session {
    /// Records a published client event: `stored` is its stored form
    /// (`{"event", "data", "socket_id", "user_id"?}`).
    pub(super) async fn webhook_client_event(&self, channel: &ChannelName, stored: &Value) {
        if !self
            .app()
            .is_some_and(|a| a.webhook_wants(PUSHER_CLIENT_EVENT))
        {
            return;
        }
        let mut fields = Map::new();
        fields.insert("channel".into(), channel.as_str().into());
        for (from, to) in [
            ("event", "event_name"),
            ("socket_id", "socket_id"),
            ("user_id", "user_id"),
        ] {
            if let Some(v) = stored.get(from) {
                fields.insert(to.into(), v.clone());
            }
        }
        if let Some(data) = stored.get("data") {
            fields.insert("data".into(), client_data(data));
        }
        self.record_webhook_event(PUSHER_CLIENT_EVENT, fields).await;
    }

    /// Records a `pusher:cache_miss` answered for `channel`.
    pub(super) async fn webhook_cache_miss(&self, channel: &ChannelName) {
        if !self
            .app()
            .is_some_and(|a| a.webhook_wants(PUSHER_CACHE_MISS))
        {
            return;
        }
        let mut fields = Map::new();
        fields.insert("channel".into(), channel.as_str().into());
        self.record_webhook_event(PUSHER_CACHE_MISS, fields).await;
    }

    async fn record_webhook_event(&self, event: &str, fields: Map<String, Value>) {
        if let Err(e) = self.state.node.engine.record_event(event, fields).await {
            tracing::warn!(error = %e, event, "recording a Pusher webhook event failed");
        }
    }
}
