//! Turning a [`WriteBatch`] into key writes, shared by every byte-keyed backend so that they agree
//! on semantics: later writes to a key win. Every write carries a key's whole new value, computed
//! from the batch alone (an aggregate's stored fields are exactly what
//! [`AggregateOp::SetOnchain`] sets; its `charged` is derived on read), so planning never reads
//! the store and a log record replays to the same state however often it is applied.

use std::collections::BTreeMap;

use crate::{Aggregate, AggregateOp, WriteBatch, codec};

/// Pending writes: key → new value, or `None` to delete.
pub(crate) type Plan = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// `batch`'s writes.
pub(crate) fn of(batch: &WriteBatch) -> Plan {
    let mut plan = Plan::new();
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
        let AggregateOp::SetOnchain { claimed, settled } = *op;
        let agg = Aggregate {
            charged: 0, // derived on read, never stored
            claimed,
            settled,
        };
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
    plan
}
