//! An in-memory [`Store`] for tests: the same key layout and batch semantics as the sled store,
//! without a disk.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use alloy_primitives::{Address, B256};
use paychan_core::batch::payee::ChannelRecord;

use crate::{
    Aggregate, Error, JournalEntry, PayerChannelRecord, Result, Store, StoreStats, WriteBatch,
    codec, plan,
};

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
}

impl Store for MemStore {
    async fn channel(&self, id: B256) -> Result<Option<ChannelRecord>> {
        let key = codec::channel_key(&id);
        self.get(&key)?
            .map(|v| codec::decode_channel(&key, &v))
            .transpose()
    }

    async fn channels_after(
        &self,
        after: Option<B256>,
        limit: usize,
    ) -> Result<Vec<ChannelRecord>> {
        let after = after.map(|a| codec::channel_key(&a));
        self.prefixed(
            codec::CHANNEL_PREFIX,
            after.as_ref().map(|a| a.as_slice()),
            limit,
        )?
        .iter()
        .map(|(k, v)| codec::decode_channel(k, v))
        .collect()
    }

    async fn commit(&self, batch: WriteBatch) -> Result<()> {
        let mut g = self.lock()?;
        let mut p = plan::Plan::new();
        {
            let map = &g.map;
            plan::add(&mut p, &batch, &|k| Ok(map.get(k).cloned()))?;
        }
        for (k, v) in p {
            match v {
                Some(v) => g.map.insert(k, v),
                None => g.map.remove(&k),
            };
        }
        g.commits += 1;
        Ok(())
    }

    async fn aggregate(&self, receiver: Address, token: Address) -> Result<Aggregate> {
        let key = codec::aggregate_key(&receiver, &token);
        let mut agg: Aggregate = self
            .get(&key)?
            .map(|v| codec::decode_json(&key, &v))
            .transpose()?
            .unwrap_or_default();
        let g = self.lock()?;
        agg.charged = g
            .map
            .range(vec![codec::CHANNEL_PREFIX]..vec![codec::CHANNEL_PREFIX + 1])
            .filter_map(|(_, v)| codec::peek_charged(v, &receiver, &token))
            .fold(0u128, u128::saturating_add);
        Ok(agg)
    }

    async fn journal_entry(&self, id: u64) -> Result<Option<JournalEntry>> {
        let key = codec::journal_key(id);
        self.get(&key)?
            .map(|v| codec::decode_json(&key, &v))
            .transpose()
    }

    async fn open_journal(&self) -> Result<Vec<JournalEntry>> {
        let all = self.prefixed(codec::JOURNAL_PREFIX, None, usize::MAX)?;
        let mut out = Vec::new();
        for (k, v) in all {
            let e: JournalEntry = codec::decode_json(&k, &v)?;
            if e.is_open() {
                out.push(e);
            }
        }
        Ok(out)
    }

    async fn journal_after(&self, after: u64, limit: usize) -> Result<Vec<JournalEntry>> {
        let key = codec::journal_key(after);
        self.prefixed(codec::JOURNAL_PREFIX, Some(&key), limit)?
            .iter()
            .map(|(k, v)| codec::decode_json(k, v))
            .collect()
    }

    async fn next_journal_id(&self) -> Result<u64> {
        let g = self.lock()?;
        let last = g
            .map
            .range(vec![codec::JOURNAL_PREFIX]..vec![codec::JOURNAL_PREFIX + 1])
            .next_back()
            .map(|(k, _)| k.clone());
        drop(g);
        Ok(match last {
            Some(k) if k.len() == 9 => u64::from_be_bytes(k[1..].try_into().unwrap_or([0; 8])) + 1,
            _ => 1,
        })
    }

    async fn payer_channel(&self, id: B256) -> Result<Option<PayerChannelRecord>> {
        let key = codec::payer_key(&id);
        self.get(&key)?
            .map(|v| codec::decode_json(&key, &v))
            .transpose()
    }

    async fn payer_channels(&self) -> Result<Vec<PayerChannelRecord>> {
        self.prefixed(codec::PAYER_PREFIX, None, usize::MAX)?
            .iter()
            .map(|(k, v)| codec::decode_json(k, v))
            .collect()
    }

    async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.get(&codec::meta_key(key))
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
