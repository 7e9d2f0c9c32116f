//! The read half of [`Store`](crate::Store), written once over the three primitives each backend
//! provides ([`Kv`]): a point read, an ordered prefix scan and the last key of a prefix. Both
//! backends decode with the same codec, so a record reads the same from either.

use alloy_primitives::{Address, B256};
use paychan_core::batch::payee::ChannelRecord;

use crate::{Aggregate, JournalEntry, PayerChannelRecord, Result, codec};

/// What a backend gives the shared reads.
pub(crate) trait Kv {
    /// A key's current value.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Keys with `prefix`, ascending, after `after` (exclusive), up to `limit`.
    fn prefixed(
        &self,
        prefix: u8,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// The greatest key with `prefix`.
    fn last_key(&self, prefix: u8) -> Result<Option<Vec<u8>>>;
}

pub(crate) fn channel(kv: &impl Kv, id: B256) -> Result<Option<ChannelRecord>> {
    let key = codec::channel_key(&id);
    kv.get(&key)?
        .map(|v| codec::decode_channel(&key, &v))
        .transpose()
}

pub(crate) fn channels_after(
    kv: &impl Kv,
    after: Option<B256>,
    limit: usize,
) -> Result<Vec<ChannelRecord>> {
    let after = after.map(|a| codec::channel_key(&a));
    kv.prefixed(
        codec::CHANNEL_PREFIX,
        after.as_ref().map(|a| a.as_slice()),
        limit,
    )?
    .iter()
    .map(|(k, v)| codec::decode_channel(k, v))
    .collect()
}

/// The stored aggregate with `charged` summed over the channels (it is derived, never stored, so
/// a voucher commit touches one key).
pub(crate) fn aggregate(kv: &impl Kv, receiver: Address, token: Address) -> Result<Aggregate> {
    let key = codec::aggregate_key(&receiver, &token);
    let mut agg: Aggregate = kv
        .get(&key)?
        .map(|v| codec::decode_json(&key, &v))
        .transpose()?
        .unwrap_or_default();
    agg.charged = kv
        .prefixed(codec::CHANNEL_PREFIX, None, usize::MAX)?
        .iter()
        .filter_map(|(_, v)| codec::peek_charged(v, &receiver, &token))
        .fold(0u128, u128::saturating_add);
    Ok(agg)
}

pub(crate) fn journal_entry(kv: &impl Kv, id: u64) -> Result<Option<JournalEntry>> {
    let key = codec::journal_key(id);
    kv.get(&key)?
        .map(|v| codec::decode_json(&key, &v))
        .transpose()
}

pub(crate) fn open_journal(kv: &impl Kv) -> Result<Vec<JournalEntry>> {
    let mut out = Vec::new();
    for (k, v) in kv.prefixed(codec::JOURNAL_PREFIX, None, usize::MAX)? {
        let e: JournalEntry = codec::decode_json(&k, &v)?;
        if e.is_open() {
            out.push(e);
        }
    }
    Ok(out)
}

pub(crate) fn journal_after(kv: &impl Kv, after: u64, limit: usize) -> Result<Vec<JournalEntry>> {
    let key = codec::journal_key(after);
    kv.prefixed(codec::JOURNAL_PREFIX, Some(&key), limit)?
        .iter()
        .map(|(k, v)| codec::decode_json(k, v))
        .collect()
}

/// One past the greatest journal id in use (ids start at 1).
pub(crate) fn next_journal_id(kv: &impl Kv) -> Result<u64> {
    Ok(match kv.last_key(codec::JOURNAL_PREFIX)? {
        Some(k) if k.len() == 9 => u64::from_be_bytes(k[1..].try_into().unwrap_or([0; 8])) + 1,
        _ => 1,
    })
}

pub(crate) fn payer_channel(kv: &impl Kv, id: B256) -> Result<Option<PayerChannelRecord>> {
    let key = codec::payer_key(&id);
    kv.get(&key)?
        .map(|v| codec::decode_json(&key, &v))
        .transpose()
}

pub(crate) fn payer_channels(kv: &impl Kv) -> Result<Vec<PayerChannelRecord>> {
    kv.prefixed(codec::PAYER_PREFIX, None, usize::MAX)?
        .iter()
        .map(|(k, v)| codec::decode_json(k, v))
        .collect()
}

pub(crate) fn meta(kv: &impl Kv, key: &str) -> Result<Option<Vec<u8>>> {
    kv.get(&codec::meta_key(key))
}

/// The [`Store`](crate::Store) read methods of a backend that implements [`Kv`], each a call to
/// the function of the same name above. (`mod reads` comes first in lib.rs so the backends
/// see it.)
macro_rules! shared_reads {
    () => {
        async fn channel(
            &self,
            id: alloy_primitives::B256,
        ) -> $crate::Result<Option<paychan_core::batch::payee::ChannelRecord>> {
            $crate::reads::channel(self, id)
        }

        async fn channels_after(
            &self,
            after: Option<alloy_primitives::B256>,
            limit: usize,
        ) -> $crate::Result<Vec<paychan_core::batch::payee::ChannelRecord>> {
            $crate::reads::channels_after(self, after, limit)
        }

        async fn aggregate(
            &self,
            receiver: alloy_primitives::Address,
            token: alloy_primitives::Address,
        ) -> $crate::Result<$crate::Aggregate> {
            $crate::reads::aggregate(self, receiver, token)
        }

        async fn journal_entry(&self, id: u64) -> $crate::Result<Option<$crate::JournalEntry>> {
            $crate::reads::journal_entry(self, id)
        }

        async fn open_journal(&self) -> $crate::Result<Vec<$crate::JournalEntry>> {
            $crate::reads::open_journal(self)
        }

        async fn journal_after(
            &self,
            after: u64,
            limit: usize,
        ) -> $crate::Result<Vec<$crate::JournalEntry>> {
            $crate::reads::journal_after(self, after, limit)
        }

        async fn next_journal_id(&self) -> $crate::Result<u64> {
            $crate::reads::next_journal_id(self)
        }

        async fn payer_channel(
            &self,
            id: alloy_primitives::B256,
        ) -> $crate::Result<Option<$crate::PayerChannelRecord>> {
            $crate::reads::payer_channel(self, id)
        }

        async fn payer_channels(&self) -> $crate::Result<Vec<$crate::PayerChannelRecord>> {
            $crate::reads::payer_channels(self)
        }

        async fn meta(&self, key: &str) -> $crate::Result<Option<Vec<u8>>> {
            $crate::reads::meta(self, key)
        }
    };
}
