//! An in-memory [`Store`] for tests: the same key layout and batch semantics as the sled store,
//! without a disk.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use crate::{Error, Result, Store, StoreStats, WriteBatch, codec, plan, reads::Kv};

#[derive(Default)]
struct Inner {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    commits: u64,
}

/// An in-memory store.
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStore").finish_non_exhaustive()
    }
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| Error::Io("memory store lock poisoned".into()))
    }
}

impl Kv for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock()?.map.get(key).cloned())
    }

    fn prefixed(
        &self,
        prefix: u8,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let g = self.lock()?;
        let start = after.map_or_else(|| vec![prefix], <[u8]>::to_vec);
        Ok(g.map
            .range(start..)
            .filter(|(k, _)| Some(k.as_slice()) != after)
            .take_while(|(k, _)| k.first() == Some(&prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last_key(&self, prefix: u8) -> Result<Option<Vec<u8>>> {
        Ok(self
            .lock()?
            .map
            .range(vec![prefix]..vec![prefix + 1])
            .next_back()
            .map(|(k, _)| k.clone()))
    }
}

impl Store for MemStore {
    shared_reads!();

    async fn commit(&self, batch: WriteBatch) -> Result<()> {
        let p = plan::of(&batch);
        let mut g = self.lock()?;
        for (k, v) in p {
            match v {
                Some(v) => g.map.insert(k, v),
                None => g.map.remove(&k),
            };
        }
        g.commits += 1;
        Ok(())
    }

    async fn stats(&self) -> Result<StoreStats> {
        let g = self.lock()?;
        let channels = g
            .map
            .range(vec![codec::CHANNEL_PREFIX]..vec![codec::CHANNEL_PREFIX + 1])
            .count() as u64;
        Ok(StoreStats {
            channels,
            disk_bytes: 0,
            commits: g.commits,
            batches: g.commits,
        })
    }
}
