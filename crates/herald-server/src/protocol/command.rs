//! Session commands, parsed at the edge into an enum. Nothing past this
//! module sees raw client JSON.

use serde::Deserialize;

use super::cmd;

/// One frame from a client.
#[derive(Debug)]
pub(crate) enum Frame {
    Command {
        id: u64,
        command: Command,
    },
    /// The answer to a server ping.
    Pong,
}

/// A command and its arguments, as each command's file in [`super::cmd`]
/// reads them.
#[derive(Debug)]
pub(crate) enum Command {
    Connect(cmd::connect::Args),
    Subscribe(cmd::subscribe::Args),
    Unsubscribe(cmd::unsubscribe::Args),
    Publish(cmd::publish::Args),
    History(cmd::history::Args),
    Ping(Empty),
    Refresh(cmd::refresh::Args),
    Presence(cmd::presence::Args),
    Rpc(cmd::rpc::Args),
    Ack(cmd::ack::Args),
}

/// Why a frame is not a command. `id` is set when the frame had a usable one.
#[derive(Debug)]
pub(crate) struct Invalid {
    pub(crate) id: Option<u64>,
    pub(crate) message: String,
}

/// `{}`: the arguments of `ping` and `pong`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Empty {}

/// A frame as JSON: at most one command key is expected; [`parse`] checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrame {
    id: Option<serde_json::Value>,
    connect: Option<cmd::connect::Args>,
    subscribe: Option<cmd::subscribe::Args>,
    unsubscribe: Option<cmd::unsubscribe::Args>,
    publish: Option<cmd::publish::Args>,
    history: Option<cmd::history::Args>,
    ping: Option<Empty>,
    pong: Option<Empty>,
    refresh: Option<cmd::refresh::Args>,
    presence: Option<cmd::presence::Args>,
    rpc: Option<cmd::rpc::Args>,
    ack: Option<cmd::ack::Args>,
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

pub(crate) fn parse(text: &[u8]) -> Result<Frame, Invalid> {
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
    found.extend(raw.connect.map(Command::Connect));
    found.extend(raw.subscribe.map(Command::Subscribe));
    found.extend(raw.unsubscribe.map(Command::Unsubscribe));
    found.extend(raw.publish.map(Command::Publish));
    found.extend(raw.history.map(Command::History));
    found.extend(raw.ping.map(Command::Ping));
    found.extend(raw.refresh.map(Command::Refresh));
    found.extend(raw.presence.map(Command::Presence));
    found.extend(raw.rpc.map(Command::Rpc));
    found.extend(raw.ack.map(Command::Ack));
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
            Ok(Frame::Command { id: 3, command: Command::Subscribe(ref a) }) if a.channel == "a" && a.since.as_deref() == Some("1-2")
        ));
        assert!(matches!(parse(br#"{"pong":{}}"#), Ok(Frame::Pong)));
        assert!(matches!(
            parse(br#"{"id":1,"publish":{"channel":"c","data":{"x":[1]}}}"#),
            Ok(Frame::Command {
                command: Command::Publish(_),
                ..
            })
        ));
        assert!(matches!(
            parse(br#"{"id":9,"ping":{}}"#),
            Ok(Frame::Command {
                id: 9,
                command: Command::Ping(_)
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
