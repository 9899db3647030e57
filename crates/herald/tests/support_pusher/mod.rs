//! A Pusher protocol 7 client for the tests of Pusher-format webhooks:
//! connect to `/app/{key}`, subscribe to public, private and presence
//! channels (signing as the app's auth endpoint would), send client
//! events.

#![allow(dead_code)]

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Server, Ws};
use crate::support_webhook::hex_hmac;

/// A Pusher connection and its socket id.
pub struct Pusher {
    pub ws: Ws,
    pub socket: String,
}

/// A frame's `data`, parsed when it is a JSON string.
pub fn data(frame: &Value) -> Value {
    match &frame["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}

impl Pusher {
    pub async fn connect(server: &Server, key: &str) -> Self {
        let mut ws = server
            .ws(&format!("/app/{key}?protocol=7&client=js&version=8"))
            .await;
        let hello = ws.next_json().await;
        assert_eq!(hello["event"], "pusher:connection_established", "{hello}");
        let socket = data(&hello)["socket_id"]
            .as_str()
            .expect("socket_id")
            .to_string();
        Self { ws, socket }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .stream
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("sent");
    }

    /// Subscribes (signed with `secret` for private and presence channels;
    /// `user` for presence) and waits for `subscription_succeeded`; returns
    /// the frames after it that came with it (a `pusher:cache_miss`).
    pub async fn subscribe(&mut self, key: &str, secret: &str, channel: &str, user: Option<&str>) {
        let mut d = json!({ "channel": channel });
        if let Some(user) = user {
            let member = json!({"user_id": user, "user_info": {"name": user}}).to_string();
            let sig = hex_hmac(
                secret,
                format!("{}:{channel}:{member}", self.socket).as_bytes(),
            );
            d["auth"] = format!("{key}:{sig}").into();
            d["channel_data"] = member.into();
        } else if channel.starts_with("private-") {
            let sig = hex_hmac(secret, format!("{}:{channel}", self.socket).as_bytes());
            d["auth"] = format!("{key}:{sig}").into();
        }
        self.send(json!({"event": "pusher:subscribe", "data": d}))
            .await;
        loop {
            let frame = self.ws.next_json().await;
            if frame["event"] == "pusher_internal:subscription_succeeded"
                && frame["channel"] == channel
            {
                return;
            }
            assert_ne!(frame["event"], "pusher:error", "{frame}");
        }
    }

    pub async fn close(self) {
        self.ws.close().await;
    }
}

/// `(name, channel, user_id)` of each event, for comparing.
pub fn summary(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or("").to_owned(),
                e["channel"].as_str().unwrap_or("").to_owned(),
                e["user_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// The events of `channel`, summarised.
pub fn of(events: &[Value], channel: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["channel"] == channel)
        .map(|e| {
            (
                e["name"].as_str().unwrap_or("").to_owned(),
                e["user_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

pub fn pair(name: &str, user: &str) -> (String, String) {
    (name.to_owned(), user.to_owned())
}
