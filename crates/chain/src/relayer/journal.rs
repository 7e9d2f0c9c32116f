//! The journal side of an action: what is stored next to its journal entries (what to send, the
//! replay check, the signed attempts), the hook that journals a signed transaction before it is
//! broadcast, and the `Prepared` and closing writes.

use std::sync::Arc;

use alloy::primitives::{Address, B256, Bytes, U256};
use paychan_core::ports::Clock;
use paychan_store::{JournalEntry, JournalKind, JournalState, Store, WriteBatch};
use serde::{Deserialize, Serialize};

use super::{ActiveGuard, Relayer};
use crate::{
    Error, Result,
    rpc::TARGET,
    sender::{InFlight, SentHook, TxCall, TxOutcome},
};

/// Metadata key prefix of the stored actions (`<prefix><journal id>`).
pub const ACTION_KEY_PREFIX: &str = "chain.relayer.action.";
/// Format byte of a stored action.
const ACTION_FORMAT: u8 = 1;

/// What must still be true on chain for re-sending an action to be useful. Every action is
/// replay-safe on chain (claims are cumulative, settle sweeps the difference, refunds carry a
/// nonce, deposits a single-use ERC-3009 authorization); these checks avoid paying for a no-op
/// and decide between "re-send" and "superseded".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub(super) enum ReplayCheck {
    Claim {
        targets: Vec<ClaimTarget>,
    },
    Settle {
        receiver: Address,
        token: Address,
    },
    Refund {
        channel_id: B256,
        nonce: U256,
    },
    Deposit {
        channel_id: B256,
        token: Address,
        payer: Address,
        authorization_nonce: Option<B256>,
    },
    ClaimAndRefund {
        targets: Vec<ClaimTarget>,
        channel_id: B256,
        nonce: U256,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ClaimTarget {
    pub(super) channel_id: B256,
    #[serde(with = "paychan_core::amount::u128_dec")]
    pub(super) total_claimed: u128,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AttemptMeta {
    pub(super) hash: B256,
    #[serde(with = "paychan_core::amount::u128_dec")]
    pub(super) max_fee: u128,
    #[serde(with = "paychan_core::amount::u128_dec")]
    pub(super) priority: u128,
}

/// What an action sends, stored next to its journal entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ActionRecord {
    /// Label for logs and errors.
    pub(super) what: String,
    /// The sender that owns the action.
    pub(super) from: Address,
    /// Journal ids the transaction serves; the first holds this record.
    pub(super) ids: Vec<u64>,
    pub(super) to: Address,
    pub(super) data: Bytes,
    pub(super) check: ReplayCheck,
    /// The current nonce, once signed.
    #[serde(default)]
    pub(super) nonce: Option<u64>,
    #[serde(default)]
    pub(super) gas_limit: u64,
    /// Versions signed at the current nonce, oldest first.
    #[serde(default)]
    pub(super) attempts: Vec<AttemptMeta>,
    /// Hashes at earlier nonces.
    #[serde(default)]
    pub(super) prior_hashes: Vec<B256>,
    /// The latest signed transaction, to re-broadcast after a restart.
    #[serde(default)]
    pub(super) raw: Option<Bytes>,
    #[serde(default)]
    pub(super) bumps: u32,
}

impl ActionRecord {
    /// The record of an action `from` sends in `call`, serving journal entries `ids`, not
    /// signed yet.
    pub(super) fn prepared(
        what: &str,
        from: Address,
        ids: Vec<u64>,
        call: &TxCall,
        check: ReplayCheck,
    ) -> Self {
        Self {
            what: what.to_owned(),
            from,
            ids,
            to: call.to,
            data: call.data.clone(),
            check,
            nonce: None,
            gas_limit: 0,
            attempts: Vec::new(),
            prior_hashes: Vec::new(),
            raw: None,
            bumps: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "camelCase")]
pub(super) enum StoredAction {
    Primary(Box<ActionRecord>),
    /// Another entry served by the primary's transaction.
    Companion {
        primary: u64,
    },
    /// Finished; the payload is dropped to keep the store small.
    Done,
}

pub(super) fn action_key(id: u64) -> String {
    format!("{ACTION_KEY_PREFIX}{id}")
}

pub(super) fn encode_action(a: &StoredAction) -> Result<Vec<u8>> {
    let mut out = vec![ACTION_FORMAT];
    serde_json::to_writer(&mut out, a).map_err(|e| {
        Error::Store(paychan_store::Error::Io(format!(
            "encoding a relayer action: {e}"
        )))
    })?;
    Ok(out)
}

pub(super) fn decode_action(key: &str, bytes: &[u8]) -> Result<StoredAction> {
    match bytes.split_first() {
        Some((&ACTION_FORMAT, json)) => serde_json::from_slice(json).map_err(|e| {
            Error::Store(paychan_store::Error::Corrupt {
                key: key.to_owned(),
                reason: e.to_string(),
            })
        }),
        _ => Err(Error::Store(paychan_store::Error::Corrupt {
            key: key.to_owned(),
            reason: "unknown relayer action format".into(),
        })),
    }
}

/// Journals a signed transaction (all entries of the action + the stored action) before it is
/// broadcast.
pub(super) struct JournalHook<S> {
    pub(super) store: S,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) entries: Vec<JournalEntry>,
    pub(super) record: ActionRecord,
}

impl<S: Store> SentHook for JournalHook<S> {
    async fn on_signed(&self, f: &InFlight) -> Result<()> {
        let latest = f.latest();
        let all_hashes = f.all_hashes();
        let now = self.clock.now_ms();
        let journal = self
            .entries
            .iter()
            .map(|e| JournalEntry {
                state: JournalState::Sent {
                    tx_hash: latest.hash,
                    nonce: f.nonce,
                    all_hashes: all_hashes.clone(),
                },
                updated_at: now,
                ..e.clone()
            })
            .collect();
        let mut record = self.record.clone();
        record.nonce = Some(f.nonce);
        record.gas_limit = f.gas_limit;
        record.attempts = f
            .attempts
            .iter()
            .map(|a| AttemptMeta {
                hash: a.hash,
                max_fee: a.fees.max_fee,
                priority: a.fees.priority,
            })
            .collect();
        record.prior_hashes = f.prior_hashes.clone();
        record.raw = Some(latest.raw.clone());
        record.bumps = f.bumps;
        let meta = vec![(
            action_key(self.record.ids[0]),
            encode_action(&StoredAction::Primary(Box::new(record)))?,
        )];
        self.store
            .commit(WriteBatch {
                journal,
                meta,
                ..WriteBatch::default()
            })
            .await?;
        Ok(())
    }
}

impl<S: Store> Relayer<S> {
    /// Allocates journal ids and writes the entries `Prepared` with the stored action.
    pub(super) async fn prepare(
        &self,
        what: &'static str,
        call: &TxCall,
        kinds: Vec<JournalKind>,
        check: ReplayCheck,
    ) -> Result<(Vec<JournalEntry>, ActionRecord, ActiveGuard<'_>)> {
        let mut next = self.inner.next_id.lock().await;
        let first = (*next)
            .max(self.inner.store.next_journal_id().await?)
            .max(1);
        let ids: Vec<u64> = (first..).take(kinds.len()).collect();
        // fresh ids: nobody else can hold them
        let active =
            ActiveGuard::claim(&self.inner.active, ids.clone()).ok_or_else(|| Error::Journal {
                journal_id: first,
                reason: "journal id already in use".into(),
            })?;
        let now = self.now_ms();
        let entries: Vec<JournalEntry> = kinds
            .into_iter()
            .zip(&ids)
            .map(|(kind, &id)| JournalEntry {
                id,
                kind,
                state: JournalState::Prepared,
                created_at: now,
                updated_at: now,
            })
            .collect();
        let record = ActionRecord::prepared(what, self.address(), ids.clone(), call, check);
        let mut meta = vec![(
            action_key(first),
            encode_action(&StoredAction::Primary(Box::new(record.clone())))?,
        )];
        for &id in &ids[1..] {
            meta.push((
                action_key(id),
                encode_action(&StoredAction::Companion { primary: first })?,
            ));
        }
        self.inner
            .store
            .commit(WriteBatch {
                journal: entries.clone(),
                meta,
                ..WriteBatch::default()
            })
            .await?;
        *next = first.saturating_add(ids.len() as u64);
        tracing::debug!(target: TARGET, what, ?ids, "journaled as prepared");
        Ok((entries, record, active))
    }

    pub(super) async fn finish_confirmed(
        &self,
        entries: &[JournalEntry],
        o: &TxOutcome,
    ) -> Result<Vec<JournalEntry>> {
        let now = self.now_ms();
        let done: Vec<JournalEntry> = entries
            .iter()
            .map(|e| JournalEntry {
                state: JournalState::Confirmed {
                    tx_hash: o.tx_hash,
                    block: o.block,
                    gas_used: o.gas_used,
                },
                updated_at: now,
                ..e.clone()
            })
            .collect();
        self.close(&done).await?;
        tracing::info!(
            target: TARGET,
            ids = ?done.iter().map(|e| e.id).collect::<Vec<_>>(),
            tx = %o.tx_hash,
            block = o.block,
            gas_used = o.gas_used,
            "confirmed"
        );
        Ok(done)
    }

    pub(super) async fn finish_failed(
        &self,
        entries: &[JournalEntry],
        reason: String,
    ) -> Result<Vec<JournalEntry>> {
        let now = self.now_ms();
        tracing::warn!(target: TARGET, ids = ?entries.iter().map(|e| e.id).collect::<Vec<_>>(), %reason, "failed");
        let done: Vec<JournalEntry> = entries
            .iter()
            .map(|e| JournalEntry {
                state: JournalState::Failed {
                    reason: reason.clone(),
                },
                updated_at: now,
                ..e.clone()
            })
            .collect();
        self.close(&done).await?;
        Ok(done)
    }

    pub(super) async fn close(&self, done: &[JournalEntry]) -> Result<()> {
        let mut meta = Vec::with_capacity(done.len());
        for e in done {
            meta.push((action_key(e.id), encode_action(&StoredAction::Done)?));
        }
        self.inner
            .store
            .commit(WriteBatch {
                journal: done.to_vec(),
                meta,
                ..WriteBatch::default()
            })
            .await?;
        Ok(())
    }
}

/// The static label of a stored action (labels are a closed set).
pub(super) fn static_what(what: &str) -> &'static str {
    const KNOWN: [&str; 6] = [
        "claimWithSignature",
        "claim",
        "settle",
        "refundWithSignature",
        "multicall(claimWithSignature, refundWithSignature)",
        "deposit",
    ];
    KNOWN.into_iter().find(|k| *k == what).unwrap_or("action")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stored_actions_round_trip() {
        let rec = ActionRecord {
            what: "settle".into(),
            from: Address::repeat_byte(1),
            ids: vec![7, 8],
            to: Address::repeat_byte(2),
            data: Bytes::from_static(&[1, 2, 3]),
            check: ReplayCheck::ClaimAndRefund {
                targets: vec![ClaimTarget {
                    channel_id: B256::repeat_byte(3),
                    total_claimed: u128::MAX,
                }],
                channel_id: B256::repeat_byte(4),
                nonce: U256::from(5),
            },
            nonce: Some(9),
            gas_limit: 100_000,
            attempts: vec![AttemptMeta {
                hash: B256::repeat_byte(5),
                max_fee: 10,
                priority: 1,
            }],
            prior_hashes: vec![B256::repeat_byte(6)],
            raw: Some(Bytes::from_static(&[9])),
            bumps: 1,
        };
        let a = StoredAction::Primary(Box::new(rec));
        let bytes = encode_action(&a).unwrap();
        assert_eq!(bytes[0], ACTION_FORMAT);
        assert_eq!(decode_action("k", &bytes).unwrap(), a);
        assert!(decode_action("k", &[2, b'{', b'}']).is_err());
        assert!(decode_action("k", &[]).is_err());
    }
}
