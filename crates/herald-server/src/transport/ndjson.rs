//! HTTP streaming: one JSON frame per line (`application/x-ndjson`), so
//! `curl -N` shows messages as they come. Channel dialect: envelopes, and
//! heartbeats are empty lines; session dialect: the session's frames.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{disconnect_json, leave_line, session_frame, Encoder};
use crate::protocol::{Dialect, Push, PING};

pub(crate) struct Ndjson {
    pub(crate) dialect: Dialect,
}

const NEWLINE: Bytes = Bytes::from_static(b"\n");

impl Encoder for Ndjson {
    fn content_type(&self) -> &'static str {
        "application/x-ndjson"
    }

    fn open(&self, out: &mut VecDeque<Bytes>) {
        if let Dialect::Channel(_) = self.dialect {
            out.push_back(NEWLINE);
        }
    }

    fn push(&self, push: &Push, out: &mut VecDeque<Bytes>) {
        match (&self.dialect, push) {
            (Dialect::Channel(_), Push::Message(m)) => out.push_back(m.envelope_line().clone()),
            (Dialect::Channel(channel), Push::End(why)) => {
                out.push_back(disconnect_json(channel, *why));
                out.push_back(NEWLINE);
            }
            (Dialect::Channel(channel), Push::Leave(delay_ms)) => {
                out.push_back(leave_line(channel, *delay_ms));
                out.push_back(NEWLINE);
            }
            (_, push) => {
                out.push_back(session_frame(push).0);
                out.push_back(NEWLINE);
            }
        }
    }

    fn heartbeat(&self, out: &mut VecDeque<Bytes>) {
        if let Dialect::Session = self.dialect {
            out.push_back(PING);
        }
        out.push_back(NEWLINE);
    }
}
