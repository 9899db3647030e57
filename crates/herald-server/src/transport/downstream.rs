//! The one loop of the HTTP downstreams, both dialects: it waits for the
//! next thing to send (a queue item, a command's reply, a heartbeat, the
//! shutdown) and hands it on as [`Push`]es; [`super::stream`] encodes them
//! into a streaming body, [`super::poll`] into a mailbox or a poll answer.
//!
//! A session-dialect downstream also has an upstream: the commands that
//! `POST /connection/{id}` queued for it, and the client's end
//! (`DELETE /connection/{id}`), from its [`Entry`] in the registry.

use std::pin::Pin;

use tokio::time::Interval;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::heartbeat_interval;
use super::registry::{Entry, Registered};
use crate::protocol::{Push, Session};

/// Most items taken per wake-up.
const BATCH: usize = 64;

pub(crate) struct Downstream {
    session: Session,
    upstream: Option<Entry>,
    heartbeat: Interval,
    /// Created once per downstream, not on every wake-up.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
}

/// What [`Downstream::step`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Pushes were added; after a [`Push::End`] nothing more comes.
    Pushed,
    /// A heartbeat is due.
    Heartbeat,
    /// The client ended its session: nothing more is sent.
    Ended,
}

/// Whether `pushes` ends the connection.
pub(crate) fn ends(pushes: &[Push]) -> bool {
    pushes.last().is_some_and(Push::is_end)
}

impl Downstream {
    pub(crate) fn new(session: Session, upstream: Option<Entry>) -> Self {
        let state = session.state();
        let heartbeat = heartbeat_interval(state.config.heartbeat);
        let shutdown = Box::pin(state.shutdown.clone().cancelled_owned());
        Self {
            session,
            upstream,
            heartbeat,
            shutdown,
        }
    }

    /// The registry entry, taken out so that it can outlive the session
    /// (a long-poll's last frames wait for one more poll).
    pub(crate) fn take_registration(&mut self) -> Option<Registered> {
        self.upstream.take().map(|e| e.registered)
    }

    /// Adds what is queued now, without waiting, up to an end.
    pub(crate) fn ready(&mut self, out: &mut Vec<Push>) {
        let (dialect, sub) = self.session.parts();
        while !ends(out) {
            let Some(item) = sub.try_next() else { break };
            out.push(dialect.push(item));
        }
        self.note_end(out);
    }

    /// The connection ends with `why` (counted and logged with the session).
    pub(crate) fn ended(&mut self, why: herald_core::disconnect::Disconnect) {
        self.session.ended(why);
    }

    fn note_end(&mut self, out: &[Push]) {
        match out.last() {
            Some(Push::End(why)) => self.session.ended(*why),
            Some(Push::Leave(_)) => self.session.ended(herald_core::disconnect::SHUTDOWN),
            _ => {}
        }
    }

    /// Waits for the next thing to send. Cancel-safe while it waits; a
    /// command taken is applied before it returns.
    pub(crate) async fn step(&mut self, out: &mut Vec<Push>) -> Step {
        let Self {
            session,
            upstream,
            heartbeat,
            shutdown,
        } = self;
        let (commands, ended) = match upstream {
            Some(entry) => (Some(&mut entry.commands), Some(entry.ended.clone())),
            None => (None, None),
        };
        let command = async {
            match commands {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let client_ended = async {
            match ended {
                Some(token) => token.cancelled_owned().await,
                None => std::future::pending().await,
            }
        };
        let step = tokio::select! {
            biased;
            () = shutdown.as_mut() => {
                out.push(super::farewell(session.state()));
                Step::Pushed
            }
            () = client_ended => Step::Ended,
            Some(command) = command => {
                // Boxed: a command's future is large, and would otherwise
                // be room in every idle downstream.
                if let Some(reply) = Box::pin(session.handle(&command)).await {
                    out.push(Push::Frame(reply));
                }
                if let Some(why) = session.closing() {
                    out.push(Push::End(why));
                }
                Step::Pushed
            }
            item = session.subscriber().next() => {
                let (dialect, sub) = session.parts();
                out.push(dialect.push(item));
                let mut taken = 1;
                while !ends(out) && taken < BATCH {
                    let Some(item) = sub.try_next() else { break };
                    out.push(dialect.push(item));
                    taken += 1;
                }
                Step::Pushed
            }
            _ = heartbeat.tick() => Step::Heartbeat,
        };
        self.note_end(out);
        step
    }
}
