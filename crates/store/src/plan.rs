//! Turning a [`WriteBatch`] into key writes, shared by every byte-keyed backend so that they agree
//! on semantics: later writes to a key win. Every write carries a key's whole new value, computed
//! from the batch alone (an aggregate's stored fields are exactly what
//! [`AggregateOp::SetOnchain`] sets; its `charged` is derived on read), so planning never reads
//! the store and a log record replays to the same state however often it is applied.

use std::collections::BTreeMap;

use crate::{Aggregate, AggregateOp, WriteBatch, codec};

/// A batch's writes in order: key → new value, or `None` to delete; a later write of a key wins.
/// A list, not a map: most commits write one key, and a map's node per commit is an allocation
/// (and a free on the log writer's thread) for nothing.
pub(crate) type Plan = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Writes merged by key: each key's newest value (`None`: deleted).
pub(crate) type Merged = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// `batch`'s writes.
pub(crate) fn of(batch: &WriteBatch) -> Plan {
    let mut plan = Plan::with_capacity(
        batch.channels.len()
            + batch.remove_channels.len()
            + batch.aggregates.len()
            + batch.journal.len()
            + batch.payer_channels.len()
            + batch.remove_payer_channels.len()
            + batch.meta.len(),
    );
    for r in &batch.channels {
        plan.push((
            codec::channel_key(&r.channel_id).to_vec(),
            Some(codec::encode_channel(r)),
        ));
    }
    for id in &batch.remove_channels {
        plan.push((codec::channel_key(id).to_vec(), None));
    }
    for (receiver, token, op) in &batch.aggregates {
        let key = codec::aggregate_key(receiver, token).to_vec();
        let AggregateOp::SetOnchain { claimed, settled } = *op;
        let agg = Aggregate {
            charged: 0, // derived on read, never stored
            claimed,
            settled,
        };
        plan.push((key, Some(codec::encode_json(&agg))));
    }
    for e in &batch.journal {
        plan.push((
            codec::journal_key(e.id).to_vec(),
            Some(codec::encode_json(e)),
        ));
    }
    for p in &batch.payer_channels {
        plan.push((
            codec::payer_key(&p.channel_id).to_vec(),
            Some(codec::encode_json(p)),
        ));
    }
    for id in &batch.remove_payer_channels {
        plan.push((codec::payer_key(id).to_vec(), None));
    }
    for (name, value) in &batch.meta {
        plan.push((codec::meta_key(name), Some(value.clone())));
    }
    plan
}
