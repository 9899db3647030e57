//! HTTP streaming: one envelope per line (`application/x-ndjson`), so
//! `curl -N` shows messages as they come. Heartbeats are empty lines.

use std::collections::VecDeque;

use bytes::Bytes;
use herald_core::disconnect::Disconnect;
use herald_core::{ChannelName, Message};

use super::stream::Framing;
use super::{disconnect_json, gap_json};

pub struct Ndjson;

const NEWLINE: Bytes = Bytes::from_static(b"\n");

impl Framing for Ndjson {
    fn content_type(&self) -> &'static str {
        "application/x-ndjson"
    }

    fn open(&self, out: &mut VecDeque<Bytes>) {
        out.push_back(NEWLINE);
    }

    fn message(&self, message: &Message, out: &mut VecDeque<Bytes>) {
        out.push_back(message.envelope_line().clone());
    }

    fn gap(&self, channel: &ChannelName, out: &mut VecDeque<Bytes>) {
        out.push_back(gap_json(channel));
        out.push_back(NEWLINE);
    }

    fn heartbeat(&self, _channel: &ChannelName, out: &mut VecDeque<Bytes>) {
        out.push_back(NEWLINE);
    }

    fn close(&self, channel: &ChannelName, why: Disconnect, out: &mut VecDeque<Bytes>) {
        out.push_back(disconnect_json(channel, why));
        out.push_back(NEWLINE);
    }

    fn notice(&self, notice: &herald_core::presence::Notice, out: &mut VecDeque<Bytes>) {
        out.push_back(notice.json.clone());
        out.push_back(NEWLINE);
    }
}
