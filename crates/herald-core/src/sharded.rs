//! A map from channel name to `V`, split into shards with a lock each, so
//! work on different channels rarely meets on one lock.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

use parking_lot::Mutex;

use crate::channel::ChannelName;

const SHARDS: usize = 64;

pub(crate) type Shard<V> = Mutex<HashMap<ChannelName, V>>;

pub(crate) struct Sharded<V> {
    shards: Box<[Shard<V>]>,
    hasher: RandomState,
}

impl<V> Default for Sharded<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> Sharded<V> {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The shard that holds `channel`.
    pub(crate) fn shard(&self, channel: &ChannelName) -> &Shard<V> {
        let i = (self.hasher.hash_one(channel) % SHARDS as u64) as usize;
        &self.shards[i]
    }

    pub(crate) fn shards(&self) -> impl Iterator<Item = &Shard<V>> {
        self.shards.iter()
    }

    /// Entries over all shards (each shard locked in turn).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}
