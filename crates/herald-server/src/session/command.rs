//! Session commands, parsed at the edge into an enum. Nothing past this
//! module sees raw client JSON.

use serde::Deserialize;
use serde_json::value::RawValue;

/// One frame from a client.
#[derive(Debug)]
pub enum Frame {
    Command {
        id: u64,
        command: Command,
    },
    /// The answer to a server ping.
    Pong,
}

#[derive(Debug)]
pub enum Command {
    Connect {
        token: Option<String>,
    },
    Subscribe {
        channel: String,
        since: Option<String>,
    },
    Unsubscribe {
        channel: String,
    },
    Publish {
        channel: String,
        data: Box<RawValue>,
    },
    History {
        channel: String,
        since: Option<String>,
    },
    Ping,
    Refresh {
        token: String,
    },
    Presence {
        channel: String,
    },
    Rpc {
        method: String,
        params: Option<Box<RawValue>>,
    },
}

/// Why a frame is not a command. `id` is set when the frame had a usable one.
#[derive(Debug)]
pub struct Invalid {
    pub id: Option<u64>,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectBody {
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelSince {
    channel: String,
    since: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelOnly {
    channel: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    channel: String,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RpcBody {
    method: String,
    params: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrame {
    id: Option<serde_json::Value>,
    connect: Option<ConnectBody>,
    subscribe: Option<ChannelSince>,
    unsubscribe: Option<ChannelOnly>,
    publish: Option<PublishBody>,
    history: Option<ChannelSince>,
    ping: Option<Empty>,
    pong: Option<Empty>,
    refresh: Option<RefreshBody>,
    presence: Option<ChannelOnly>,
    rpc: Option<RpcBody>,
}

/// Reads the `id` alone, so that even a malformed command can be answered
/// with its id.
fn salvage_id(text: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<u64>,
    }
    if !is_object(text) {
        return None;
    }
    serde_json::from_slice::<IdOnly>(text)
        .ok()?
        .id
        .filter(|n| *n > 0)
}

/// Whether `text` starts like a JSON object: serde also reads a struct
/// from an array of its fields in order, which is not a frame.
fn is_object(text: &[u8]) -> bool {
    text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

pub fn parse(text: &[u8]) -> Result<Frame, Invalid> {
    if !is_object(text) {
        return Err(Invalid {
            id: None,
            message: "not a valid command: a frame is a JSON object".into(),
        });
    }
    let raw: RawFrame = serde_json::from_slice(text).map_err(|e| Invalid {
        id: salvage_id(text),
        message: format!("not a valid command: {e}"),
    })?;
    let id = match &raw.id {
        None => None,
        Some(v) => Some(v.as_u64().filter(|n| *n > 0).ok_or(Invalid {
            id: None,
            message: "id must be a positive integer".into(),
        })?),
    };
    let mut found = Vec::with_capacity(1);
    if let Some(b) = raw.connect {
        found.push(Command::Connect { token: b.token });
    }
    if let Some(b) = raw.subscribe {
        found.push(Command::Subscribe {
            channel: b.channel,
            since: b.since,
        });
    }
    if let Some(b) = raw.unsubscribe {
        found.push(Command::Unsubscribe { channel: b.channel });
    }
    if let Some(b) = raw.publish {
        found.push(Command::Publish {
            channel: b.channel,
            data: b.data,
        });
    }
    if let Some(b) = raw.history {
        found.push(Command::History {
            channel: b.channel,
            since: b.since,
        });
    }
    if raw.ping.is_some() {
        found.push(Command::Ping);
    }
    if let Some(b) = raw.refresh {
        found.push(Command::Refresh { token: b.token });
    }
    if let Some(b) = raw.presence {
        found.push(Command::Presence { channel: b.channel });
    }
    if let Some(b) = raw.rpc {
        found.push(Command::Rpc {
            method: b.method,
            params: b.params,
        });
    }
    let pong = raw.pong.is_some();
    match (found.len(), pong, id) {
        (0, true, _) => Ok(Frame::Pong),
        (1, false, Some(id)) => Ok(Frame::Command {
            id,
            command: found.remove(0),
        }),
        (1, false, None) => Err(Invalid {
            id: None,
            message: "a command needs an \"id\"".into(),
        }),
        _ => Err(Invalid {
            id,
            message: "a frame holds exactly one command".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert!(matches!(
            parse(br#"{"id":3,"subscribe":{"channel":"a","since":"1-2"}}"#),
            Ok(Frame::Command { id: 3, command: Command::Subscribe { ref channel, since: Some(ref s) } }) if channel == "a" && s == "1-2"
        ));
        assert!(matches!(parse(br#"{"pong":{}}"#), Ok(Frame::Pong)));
        assert!(matches!(
            parse(br#"{"id":1,"publish":{"channel":"c","data":{"x":[1]}}}"#),
            Ok(Frame::Command {
                command: Command::Publish { .. },
                ..
            })
        ));
        assert!(matches!(
            parse(br#"{"id":9,"ping":{}}"#),
            Ok(Frame::Command {
                id: 9,
                command: Command::Ping
            })
        ));
    }

    #[test]
    fn invalid_frames_keep_their_id_when_they_can() {
        let e = parse(br#"{"id":7,"subscribe":{}}"#).expect_err("missing channel");
        assert_eq!(e.id, Some(7));
        let e = parse(b"not json").expect_err("not json");
        assert_eq!(e.id, None);
        let e = parse(br#"{"id":2,"ping":{},"connect":{}}"#).expect_err("two commands");
        assert_eq!(e.id, Some(2));
        assert!(parse(br#"{"subscribe":{"channel":"a"}}"#).is_err());
        assert!(parse(br#"{"id":-1,"ping":{}}"#).is_err());
        assert!(parse(br#"{"id":1,"frobnicate":{}}"#).is_err());
    }
}
