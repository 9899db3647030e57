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
    /// A Pusher HTTP session's entry, named by its client.
    pusher: bool,
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
        let (handle, entry) = self.entry(id.clone(), mailbox, false);
        self.sessions.lock().insert(id, handle);
        entry
    }

    /// A Pusher HTTP session's new entry under `id` (the name its client
    /// chose), unless one is there already (`None`).
    pub(crate) fn register_as(
        self: &Arc<Self>,
        id: &str,
        mailbox: Option<Arc<Mailbox>>,
    ) -> Option<Entry> {
        let mut sessions = self.sessions.lock();
        if sessions.contains_key(id) {
            return None;
        }
        let (handle, entry) = self.entry(id.to_string(), mailbox, true);
        sessions.insert(id.to_string(), handle);
        Some(entry)
    }

    fn entry(
        self: &Arc<Self>,
        id: String,
        mailbox: Option<Arc<Mailbox>>,
        pusher: bool,
    ) -> (Handle, Entry) {
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let ended = CancellationToken::new();
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        let handle = Handle {
            commands: commands_tx,
            mailbox,
            ended: ended.clone(),
            serial,
            pusher,
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

    /// A session of the session protocol.
    pub(crate) fn get(&self, id: &str) -> Option<Handle> {
        self.sessions.lock().get(id).filter(|h| !h.pusher).cloned()
    }

    /// A Pusher HTTP session.
    pub(crate) fn get_pusher(&self, id: &str) -> Option<Handle> {
        self.sessions.lock().get(id).filter(|h| h.pusher).cloned()
    }

    /// Removes a session of the session protocol.
    pub(crate) fn remove(&self, id: &str) {
        let mut sessions = self.sessions.lock();
        if sessions.get(id).is_some_and(|h| !h.pusher) {
            sessions.remove(id);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_entries_are_apart_and_removed_only_by_their_own() {
        let registry = Arc::new(Registry::default());
        let first = registry.register_as("pusher/k/1/a", None).expect("new");
        assert!(registry.register_as("pusher/k/1/a", None).is_none());
        // Not reachable as a session-protocol session, nor removable as one.
        assert!(registry.get("pusher/k/1/a").is_none());
        registry.remove("pusher/k/1/a");
        let handle = registry.get_pusher("pusher/k/1/a").expect("there");
        // Ended and registered again: the old guard leaves the new entry.
        registry.remove_exact("pusher/k/1/a", handle.serial);
        let second = registry.register_as("pusher/k/1/a", None).expect("again");
        drop(first);
        assert!(registry.get_pusher("pusher/k/1/a").is_some());
        drop(second);
        assert!(registry.get_pusher("pusher/k/1/a").is_none());
        let plain = registry.register(None);
        assert!(registry.get_pusher(plain.registered.id()).is_none());
        assert!(registry.get(plain.registered.id()).is_some());
    }
}
