//! One file per command of the session protocol: its arguments (read by
//! [`super::command::parse`], nothing past that sees raw JSON) and how it
//! is applied to a [`Session`](super::Session). Each `apply` answers the
//! reply frame, or the [`Refused`] that becomes the error reply.

pub(crate) mod ack;
pub(crate) mod connect;
pub(crate) mod history;
pub(crate) mod presence;
pub(crate) mod publish;
pub(crate) mod refresh;
pub(crate) mod rpc;
pub(crate) mod subscribe;
pub(crate) mod unsubscribe;

use herald_core::{ChannelName, Refusal, Since};

use crate::error::Refused;

/// A channel name from a command.
fn channel_name(name: &str) -> Result<ChannelName, Refused> {
    ChannelName::new(name).map_err(Refused::from)
}

/// A resume point from a command, or `default` when none was given.
fn since(text: Option<&str>, default: Since) -> Result<Since, Refused> {
    match text {
        None => Ok(default),
        Some(t) => Since::parse(t).map_err(|e| Refused::new(Refusal::InvalidSince, e.to_string())),
    }
}
