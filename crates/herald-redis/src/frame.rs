//! The pub/sub frame: what one node tells the others through Redis pub/sub.
//!
//! A frame is one header line of space-separated ASCII fields, a `\n`, and
//! then (for a message) the payload bytes exactly as published:
//!
//! ```text
//! h1 m <channel> <id> <kind> <time_ms>\n<payload bytes>
//! h1 a <channel> <id> <kind> <time_ms>\n<payload bytes>
//! h1 g <channel>\n
//! h1 x <channel>\n
//! h1 j <channel>\n<notice JSON>
//! h1 l <channel>\n<notice JSON>
//! h1 d <personal channel> <code>\n
//! ```
//!
//! `m` is a published message, `a` one to acknowledge (it waits in its
//! user's mailbox, see [`herald_core::mailbox`]), `g` says messages of the
//! channel were lost (a mailbox dropped pending ones), `x` says the channel
//! was removed, `j` and `l`
//! carry a presence join or leave notice exactly as subscribers receive it
//! ([`Notice::json`], encoded once by the node where it happened). These go
//! out on the channel's `live` pub/sub channel, so they reach the nodes that
//! follow it, in the order Redis ran the scripts. `d` goes out on the
//! node-wide control channel: every node closes the user's connections with
//! the disconnect code (a code this node does not know, from a newer node,
//! closes with [`FORCED`]).
//!
//! Channel names, ids, kinds, times and codes never contain a space or a
//! newline (see [`herald_core::channel`]), so the header needs no escaping
//! and the payload needs no encoding at all. The publish script
//! (`crate::script`) builds `m` frames inside Redis; this module builds the
//! others and decodes them all. Bytes from Redis are untrusted here: anything
//! malformed is an error, never a panic.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::disconnect::{Disconnect, ALL, FORCED};
use herald_core::presence::{Notice, NoticeKind};
use herald_core::{ChannelName, Message, MessageId, Payload, PayloadKind};

/// The first field of every frame; a later format would use another.
const VERSION: &str = "h1";

/// A decoded frame.
#[derive(Debug)]
pub enum Frame {
    /// A published message, ready for the hub (shared by its subscribers).
    Message(Arc<Message>),
    /// The channel was removed: close its local subscribers.
    Removed(ChannelName),
    /// Messages of the channel were lost: tell its local subscribers.
    Gap(ChannelName),
    /// A join or leave, for the channel's local subscribers.
    Notice(Arc<Notice>),
    /// Close every local connection of the user whose personal channel this is.
    DisconnectUser(ChannelName, Disconnect),
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame has no header line")]
    NoHeader,
    #[error("frame header is not ASCII text")]
    NotText,
    #[error("frame version is not {VERSION}")]
    Version,
    #[error("frame has an unknown type")]
    UnknownType,
    #[error("frame header has the wrong number of fields")]
    Fields,
    #[error("frame field {0} is invalid")]
    Field(&'static str),
    #[error("frame payload does not match its kind")]
    Payload,
    #[error("frame notice is not JSON")]
    Notice,
}

/// The frame announcing that `channel` was removed.
pub fn removed(channel: &ChannelName) -> Vec<u8> {
    format!("{VERSION} x {channel}\n").into_bytes()
}

/// The frame carrying a join or leave notice to the channel's nodes.
pub fn notice(notice: &Notice) -> Vec<u8> {
    let kind = match notice.kind {
        NoticeKind::Join => "j",
        NoticeKind::Leave => "l",
    };
    let mut frame = format!("{VERSION} {kind} {}\n", notice.channel).into_bytes();
    frame.extend_from_slice(&notice.json);
    frame
}

/// The control frame telling every node to close a user's connections.
pub fn disconnect_user(user: &ChannelName, why: Disconnect) -> Vec<u8> {
    format!("{VERSION} d {user} {}\n", why.code).into_bytes()
}

/// Decodes a frame. The payload is copied once into its own [`Bytes`], which
/// every local subscriber then shares.
pub fn decode(frame: &[u8]) -> Result<Frame, FrameError> {
    let newline = frame
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(FrameError::NoHeader)?;
    let header = std::str::from_utf8(&frame[..newline]).map_err(|_| FrameError::NotText)?;
    let body = &frame[newline + 1..];
    let mut fields = header.split(' ');
    if fields.next() != Some(VERSION) {
        return Err(FrameError::Version);
    }
    let kind = fields.next().ok_or(FrameError::Fields)?;
    let channel = fields
        .next()
        .and_then(|c| ChannelName::new(c).ok())
        .ok_or(FrameError::Field("channel"))?;
    match kind {
        "m" | "a" => {
            let id: MessageId = fields
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(FrameError::Field("id"))?;
            let payload_kind = fields
                .next()
                .and_then(PayloadKind::parse)
                .ok_or(FrameError::Field("kind"))?;
            let time_ms: u64 = fields
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(FrameError::Field("time"))?;
            if fields.next().is_some() {
                return Err(FrameError::Fields);
            }
            let payload = Payload::from_stored(payload_kind, Bytes::copy_from_slice(body))
                .map_err(|_| FrameError::Payload)?;
            Ok(Frame::Message(Arc::new(
                Message::new(channel, id, payload, time_ms).acknowledged(kind == "a"),
            )))
        }
        "g" => {
            if fields.next().is_some() || !body.is_empty() {
                return Err(FrameError::Fields);
            }
            Ok(Frame::Gap(channel))
        }
        "x" => {
            if fields.next().is_some() || !body.is_empty() {
                return Err(FrameError::Fields);
            }
            Ok(Frame::Removed(channel))
        }
        "j" | "l" => {
            if fields.next().is_some() {
                return Err(FrameError::Fields);
            }
            // The JSON goes to clients verbatim: it must at least be JSON.
            serde_json::from_slice::<serde::de::IgnoredAny>(body)
                .map_err(|_| FrameError::Notice)?;
            let kind = if kind == "j" {
                NoticeKind::Join
            } else {
                NoticeKind::Leave
            };
            Ok(Frame::Notice(Arc::new(Notice {
                channel,
                kind,
                json: Bytes::copy_from_slice(body),
            })))
        }
        "d" => {
            let code: u16 = fields
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(FrameError::Field("code"))?;
            if fields.next().is_some() || !body.is_empty() {
                return Err(FrameError::Fields);
            }
            let why = ALL
                .iter()
                .find(|d| d.code == code)
                .copied()
                .unwrap_or(FORCED);
            Ok(Frame::DisconnectUser(channel, why))
        }
        _ => Err(FrameError::UnknownType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the publish script writes, built the same way.
    fn message_frame(channel: &str, id: &str, kind: &str, time: &str, body: &[u8]) -> Vec<u8> {
        let mut f = format!("h1 m {channel} {id} {kind} {time}\n").into_bytes();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn message_round_trip_keeps_bytes_exactly() {
        let body = [0xff, b'\n', 0x00, b' ', b'h', b'1'];
        let f = message_frame(
            "chat:lobby",
            "1700000000000-3",
            "binary",
            "1700000000001",
            &body,
        );
        let Ok(Frame::Message(m)) = decode(&f) else {
            panic!("expected a message");
        };
        assert_eq!(m.channel.as_str(), "chat:lobby");
        assert_eq!(m.id, MessageId::new(1_700_000_000_000, 3));
        assert_eq!(m.payload.kind(), PayloadKind::Binary);
        assert_eq!(&m.payload.raw()[..], &body);
        assert_eq!(m.time_ms, 1_700_000_000_001);

        let f = message_frame("c", "1-0", "json", "5", b"{\"a\":\n1}");
        let Ok(Frame::Message(m)) = decode(&f) else {
            panic!("expected a message");
        };
        assert_eq!(m.payload.kind(), PayloadKind::Json);
        let f = message_frame("c", "1-0", "text", "5", b"");
        assert!(matches!(decode(&f), Ok(Frame::Message(m)) if m.payload.is_empty()));
    }

    #[test]
    fn removed_round_trip() {
        let c = ChannelName::new("news").expect("valid");
        assert!(matches!(decode(&removed(&c)), Ok(Frame::Removed(x)) if x == c));
    }

    #[test]
    fn notice_round_trip_keeps_the_json() {
        let c = ChannelName::new("room").expect("valid");
        let entry = herald_core::presence::PresenceEntry {
            client: "c1".into(),
            user: Some("ann".into()),
            info: Some(Arc::new(serde_json::json!({"n": 12345678901234567_u64}))),
        };
        for kind in [NoticeKind::Join, NoticeKind::Leave] {
            let sent = Notice::new(&c, kind, &entry);
            let Ok(Frame::Notice(got)) = decode(&notice(&sent)) else {
                panic!("expected a notice");
            };
            assert_eq!((&got.channel, got.kind), (&c, kind));
            assert_eq!(got.json, sent.json, "the JSON travels byte for byte");
        }
    }

    #[test]
    fn disconnect_user_round_trip() {
        let user = ChannelName::new("user:7").expect("valid");
        for why in ALL {
            let Ok(Frame::DisconnectUser(got, code)) = decode(&disconnect_user(&user, *why)) else {
                panic!("expected a disconnect");
            };
            assert_eq!((got, code), (user.clone(), *why));
        }
        assert!(matches!(
            decode(b"h1 d user:7 4999\n"),
            Ok(Frame::DisconnectUser(_, d)) if d == FORCED
        ));
    }

    #[test]
    fn malformed_frames_are_errors() {
        let cases: &[(&[u8], FrameError)] = &[
            (b"", FrameError::NoHeader),
            (b"h1 m c 1-0 text 5", FrameError::NoHeader),
            (b"h2 m c 1-0 text 5\n", FrameError::Version),
            (b"h1 q c\n", FrameError::UnknownType),
            (b"h1 m\n", FrameError::Field("channel")),
            (b"h1 m bad/name 1-0 text 5\n", FrameError::Field("channel")),
            (b"h1 m c 1 text 5\n", FrameError::Field("id")),
            (b"h1 m c 1-0 yaml 5\n", FrameError::Field("kind")),
            (b"h1 m c 1-0 text -5\n", FrameError::Field("time")),
            (b"h1 m c 1-0 text 5 extra\n", FrameError::Fields),
            (b"h1 m c 1-0 json 5\n{nope", FrameError::Payload),
            (b"h1 m c 1-0 text 5\n\xff", FrameError::Payload),
            (b"h1 x c\nbody", FrameError::Fields),
            (b"h1 \xff\n", FrameError::NotText),
            (b"h1 j c\n{nope", FrameError::Notice),
            (b"h1 l c x\n{}", FrameError::Fields),
            (b"h1 d user:1\n", FrameError::Field("code")),
            (b"h1 d user:1 99999\n", FrameError::Field("code")),
            (b"h1 d user:1 4006 x\n", FrameError::Fields),
            (b"h1 d user:1 4006\nbody", FrameError::Fields),
        ];
        for (bytes, want) in cases {
            match decode(bytes) {
                Err(e) => assert_eq!(&e, want, "{:?}", String::from_utf8_lossy(bytes)),
                Ok(f) => panic!("{:?} decoded to {f:?}", String::from_utf8_lossy(bytes)),
            }
        }
    }
}
