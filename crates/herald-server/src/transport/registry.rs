//! Live HTTP sessions by their secret id: how `POST /connection/{id}`
//! reaches a session's command queue, `GET /connection/longpoll/{id}` its
//! mailbox and `DELETE /connection/{id}` its end. An entry lives as long as
//! its session's [`Registered`] guard (plus, for a long-poll, one linger
//! for the last frames).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::poll::Mailbox;

/// Commands waiting for a session; more are refused with 429.
pub(crate) const COMMAND_QUEUE: usize = 64;

#[derive(Default)]
pub(crate) struct Registry {
    // Short critical sections only (a lookup, an insert, a removal); never
    // held across an await.
    sessions: Mutex<HashMap<String, Handle>>,
    /// The serial of the next entry.
    next: AtomicU64,
}

/// What the HTTP surface may do to a live session.
#[derive(Clone)]
pub(crate) struct Handle {
    pub(crate) commands: mpsc::Sender<Bytes>,
    pub(crate) mailbox: Option<Arc<Mailbox>>,
    /// Cancelled by `DELETE /connection/{id}`: the client ends the session.
    pub(crate) ended: CancellationToken,
    /// Which entry this is (an id may be registered again after it ended).
    pub(crate) serial: u64,
}

/// A session's side of its entry: its commands and end signal.
pub(crate) struct Entry {
    pub(crate) commands: mpsc::Receiver<Bytes>,
    pub(crate) ended: CancellationToken,
    pub(crate) registered: Registered,
}

/// Removes the entry when the session is over.
pub(crate) struct Registered {
    registry: Arc<Registry>,
    id: String,
    serial: u64,
}

impl Registered {
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn serial(&self) -> u64 {
        self.serial
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.remove_exact(&self.id, self.serial);
    }
}

impl Registry {
    /// A new entry under a fresh secret id.
    pub(crate) fn register(self: &Arc<Self>, mailbox: Option<Arc<Mailbox>>) -> Entry {
        let id = crate::access::random_id();
        let (handle, entry) = self.entry(id.clone(), mailbox);
        self.sessions.lock().insert(id, handle);
        entry
    }

    /// A new entry under `id`, unless one is there already (`None`).
    pub(crate) fn register_as(
        self: &Arc<Self>,
        id: &str,
        mailbox: Option<Arc<Mailbox>>,
    ) -> Option<Entry> {
        let mut sessions = self.sessions.lock();
        if sessions.contains_key(id) {
            return None;
        }
        let (handle, entry) = self.entry(id.to_string(), mailbox);
        sessions.insert(id.to_string(), handle);
        Some(entry)
    }

    fn entry(self: &Arc<Self>, id: String, mailbox: Option<Arc<Mailbox>>) -> (Handle, Entry) {
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let ended = CancellationToken::new();
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        let handle = Handle {
            commands: commands_tx,
            mailbox,
            ended: ended.clone(),
            serial,
        };
        let entry = Entry {
            commands,
            ended,
            registered: Registered {
                registry: Arc::clone(self),
                id,
                serial,
            },
        };
        (handle, entry)
    }

    /// Removes the entry `id` if it is still the one with this serial.
    pub(crate) fn remove_exact(&self, id: &str, serial: u64) {
        let mut sessions = self.sessions.lock();
        if sessions.get(id).is_some_and(|h| h.serial == serial) {
            sessions.remove(id);
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<Handle> {
        self.sessions.lock().get(id).cloned()
    }

    pub(crate) fn remove(&self, id: &str) {
        self.sessions.lock().remove(id);
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.lock().len()
    }
}
