//! The engine's table of channels: a sharded map of per-channel async locks, so requests on one
//! channel are serialized while different channels never contend beyond a short shard lock.
//!
//! The table is a bounded cache over the store: every change is written through to the store
//! before it is acknowledged, so an idle entry can be dropped at any time and reloaded later.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use alloy_primitives::B256;
use paychan_core::{batch::payee::ChannelRecord, sig::SignerKey};
use tokio::sync::Mutex as AsyncMutex;

/// What the engine keeps about a channel in memory.
#[derive(Debug, Default)]
pub struct Slot {
    /// Whether `record` reflects the store (false until first loaded).
    pub loaded: bool,
    /// The channel's record; `None` if the store has none yet.
    pub record: Option<ChannelRecord>,
    /// The payer authorizer's public key, once recovered.
    pub key: Option<SignerKey>,
}

/// A shared handle on one channel's slot.
pub type SlotRef = Arc<AsyncMutex<Slot>>;

const SHARDS: usize = 64;

/// The sharded table.
#[derive(Debug)]
pub struct Slots {
    shards: Vec<Mutex<HashMap<B256, SlotRef>>>,
    per_shard_cap: usize,
}

impl Slots {
    /// A table keeping about `capacity` channels in memory.
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard_cap: (capacity / SHARDS).max(16),
        }
    }

    fn shard(&self, id: &B256) -> &Mutex<HashMap<B256, SlotRef>> {
        // Channel ids are keccak outputs: any byte is uniformly distributed.
        &self.shards[usize::from(id[0]) % SHARDS]
    }

    /// The slot of `id`, created empty if absent. Evicts idle entries when the shard is full.
    pub fn get(&self, id: B256) -> SlotRef {
        let Ok(mut shard) = self.shard(&id).lock() else {
            // A poisoned shard only means another thread panicked while holding it; the map
            // itself is still consistent (inserts and removes are single operations).
            return self
                .shard(&id)
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(id)
                .or_default()
                .clone();
        };
        if let Some(s) = shard.get(&id) {
            return s.clone();
        }
        if shard.len() >= self.per_shard_cap {
            // Drop an eighth of the shard's idle entries (held only by the map).
            let target = self.per_shard_cap / 8 + 1;
            let idle: Vec<B256> = shard
                .iter()
                .filter(|(_, s)| Arc::strong_count(s) == 1)
                .map(|(k, _)| *k)
                .take(target)
                .collect();
            for k in idle {
                shard.remove(&k);
            }
        }
        shard.entry(id).or_default().clone()
    }

    /// The slot of `id` if it is held in memory; never creates one (so a look-up for an unknown
    /// channel cannot evict a paying one).
    pub fn peek(&self, id: &B256) -> Option<SlotRef> {
        self.shard(id)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Channels currently held in memory.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Whether no channel is held in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the in-memory copy of `id` if nobody is using it (after an outside change).
    pub fn forget(&self, id: &B256) {
        if let Ok(mut shard) = self.shard(id).lock()
            && shard.get(id).is_some_and(|s| Arc::strong_count(s) == 1)
        {
            shard.remove(id);
        }
    }
}
