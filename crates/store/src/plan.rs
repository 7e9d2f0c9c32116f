//! Turning a [`WriteBatch`] into key writes, shared by every byte-keyed backend so that they agree
//! on semantics: later writes to a key win; aggregate changes read the value as it stands,
//! including earlier writes of the same group.

use std::collections::BTreeMap;

use crate::{Aggregate, AggregateOp, Result, WriteBatch, codec};

/// Pending writes: key → new value, or `None` to delete.
pub(crate) type Plan = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Reads a key's stored value.
pub(crate) type Read<'a> = &'a dyn Fn(&[u8]) -> Result<Option<Vec<u8>>>;

/// Adds `batch`'s writes to `plan`. `read` returns a key's stored value (before the plan).
pub(crate) fn add(plan: &mut Plan, batch: &WriteBatch, read: Read<'_>) -> Result<()> {
    for r in &batch.channels {
        plan.insert(
            codec::channel_key(&r.channel_id).to_vec(),
            Some(codec::encode_channel(r)),
        );
    }
    for id in &batch.remove_channels {
        plan.insert(codec::channel_key(id).to_vec(), None);
    }
    for (receiver, token, op) in &batch.aggregates {
        let key = codec::aggregate_key(receiver, token).to_vec();
        let current = match plan.get(&key) {
            Some(Some(v)) => Some(v.clone()),
            Some(None) => None,
            None => read(&key)?,
        };
        let mut agg: Aggregate = match current {
            Some(v) => codec::decode_json(&key, &v)?,
            None => Aggregate::default(),
        };
        let AggregateOp::SetOnchain { claimed, settled } = *op;
        agg.claimed = claimed;
        agg.settled = settled;
        agg.charged = 0; // derived on read, never stored
        plan.insert(key, Some(codec::encode_json(&agg)));
    }
    for e in &batch.journal {
        plan.insert(
            codec::journal_key(e.id).to_vec(),
            Some(codec::encode_json(e)),
        );
    }
    for p in &batch.payer_channels {
        plan.insert(
            codec::payer_key(&p.channel_id).to_vec(),
            Some(codec::encode_json(p)),
        );
    }
    for id in &batch.remove_payer_channels {
        plan.insert(codec::payer_key(id).to_vec(), None);
    }
    for (name, value) in &batch.meta {
        plan.insert(codec::meta_key(name), Some(value.clone()));
    }
    Ok(())
}
