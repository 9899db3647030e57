//! The Pusher dialect's client frames, parsed at the edge into an enum:
//! `{"event": "pusher:…" | "client-…", "channel"?, "data"?}`. Nothing past
//! this module sees raw client JSON.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest event name (Pusher's limit).
pub(crate) const MAX_EVENT_NAME: usize = 200;

/// One frame from a Pusher client.
#[derive(Debug)]
pub(crate) enum Command {
    Ping,
    Pong,
    Subscribe(Subscribe),
    Unsubscribe {
        channel: String,
    },
    /// A `client-` event for the channel's other subscribers; `data` is
    /// the JSON value as sent.
    ClientEvent {
        event: String,
        channel: String,
        data: Box<RawValue>,
    },
    /// `pusher:signin`: user authentication, signed by the app's backend.
    Signin(Signin),
    /// A `pusher:` event this server does not implement: answered with an
    /// error, the connection stays.
    Unsupported(String),
}

/// `pusher:signin`'s data.
#[derive(Debug, Deserialize)]
pub(crate) struct Signin {
    /// `key:hex(HMAC-SHA256(secret, "socket_id::user::user_data"))`.
    pub(crate) auth: String,
    /// The user as the app's backend signed it: JSON text with an `id`,
    /// verified as it is.
    pub(crate) user_data: String,
}

/// `pusher:subscribe`'s data.
#[derive(Debug, Deserialize)]
pub(crate) struct Subscribe {
    pub(crate) channel: String,
    pub(crate) auth: Option<String>,
    /// The presence member as the app's auth endpoint signed it (JSON
    /// text, verified as it is).
    pub(crate) channel_data: Option<String>,
    /// Herald's own addition, sent only by the resume helper
    /// (`/pusher-resume.js`): the id of the last event the client got on
    /// this channel; the subscription starts after it.
    pub(crate) herald_since: Option<String>,
}

#[derive(Deserialize)]
struct Raw {
    event: String,
    channel: Option<String>,
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct ChannelOnly {
    channel: String,
}

/// Why a frame is not a command, said to the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Invalid(pub(crate) String);

/// A frame's `data`: an object, or (as some clients send it) a string
/// holding one.
fn data_as<T: serde::de::DeserializeOwned>(
    data: Option<&RawValue>,
    event: &str,
) -> Result<T, Invalid> {
    let raw = data.ok_or_else(|| Invalid(format!("{event} needs data")))?;
    let text = raw.get();
    let parsed = if text.trim_start().starts_with('"') {
        let inner: String = serde_json::from_str(text).map_err(|e| Invalid(e.to_string()))?;
        serde_json::from_str(&inner)
    } else {
        serde_json::from_str(text)
    };
    parsed.map_err(|e| Invalid(format!("{event}: invalid data: {e}")))
}

pub(crate) fn parse(text: &[u8]) -> Result<Command, Invalid> {
    let raw: Raw =
        serde_json::from_slice(text).map_err(|e| Invalid(format!("not a Pusher event: {e}")))?;
    match raw.event.as_str() {
        "pusher:ping" => Ok(Command::Ping),
        "pusher:pong" => Ok(Command::Pong),
        "pusher:subscribe" => {
            data_as(raw.data.as_deref(), "pusher:subscribe").map(Command::Subscribe)
        }
        "pusher:signin" => data_as(raw.data.as_deref(), "pusher:signin").map(Command::Signin),
        "pusher:unsubscribe" => {
            let ChannelOnly { channel } = data_as(raw.data.as_deref(), "pusher:unsubscribe")?;
            Ok(Command::Unsubscribe { channel })
        }
        event if event.starts_with("client-") => {
            if event.len() > MAX_EVENT_NAME {
                return Err(Invalid(format!(
                    "event names are at most {MAX_EVENT_NAME} bytes"
                )));
            }
            let channel = raw
                .channel
                .ok_or_else(|| Invalid("a client event needs a channel".into()))?;
            let data = raw
                .data
                .ok_or_else(|| Invalid("a client event needs data".into()))?;
            Ok(Command::ClientEvent {
                event: raw.event,
                channel,
                data,
            })
        }
        event if event.starts_with("pusher:") => Ok(Command::Unsupported(raw.event)),
        other => Err(Invalid(format!(
            "unknown event {other:?}: clients send pusher: events or client- events"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert!(matches!(
            parse(br#"{"event":"pusher:ping","data":{}}"#),
            Ok(Command::Ping)
        ));
        let Ok(Command::Subscribe(s)) =
            parse(br#"{"event":"pusher:subscribe","data":{"auth":"k:s","channel":"private-a"}}"#)
        else {
            panic!("a subscribe")
        };
        assert_eq!(
            (s.channel.as_str(), s.auth.as_deref()),
            ("private-a", Some("k:s"))
        );
        // data as a string holding the object
        assert!(matches!(
            parse(br#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#),
            Ok(Command::Subscribe(s)) if s.channel == "a"
        ));
        assert!(matches!(
            parse(br#"{"event":"client-x","channel":"private-a","data":{"n":1}}"#),
            Ok(Command::ClientEvent { ref data, .. }) if data.get() == r#"{"n":1}"#
        ));
        assert!(matches!(
            parse(br#"{"event":"pusher:signin","data":{"auth":"k:s","user_data":"{\"id\":\"u\"}"}}"#),
            Ok(Command::Signin(s)) if s.user_data == r#"{"id":"u"}"#
        ));
        assert!(parse(br#"{"event":"pusher:signin","data":{}}"#).is_err());
        assert!(matches!(
            parse(br#"{"event":"pusher:cache_query","data":{}}"#),
            Ok(Command::Unsupported(_))
        ));
    }

    #[test]
    fn malformed() {
        for bad in [
            &b"nope"[..],
            br#"[1,2]"#,
            br#"{"data":{}}"#,
            br#"{"event":"pusher:subscribe"}"#,
            br#"{"event":"pusher:subscribe","data":{"auth":"x"}}"#,
            br#"{"event":"pusher:subscribe","data":"{oops"}"#,
            br#"{"event":"client-x","data":{}}"#,
            br#"{"event":"other","channel":"a","data":{}}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
