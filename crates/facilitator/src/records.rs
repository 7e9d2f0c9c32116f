//! Settlement records: what a `/settle` already did, kept in the store's metadata so that a retry
//! of the same request answers with the same transaction instead of acting again, across restarts.
//!
//! A record is keyed by what makes the action unique on chain:
//!
//! | action | key | why it is unique |
//! | --- | --- | --- |
//! | deposit | the ERC-3009 authorization nonce `keccak256(channelId, salt)` (with payer, token and amount) | the token accepts it once |
//! | claim | the rows' `(channelId, totalClaimed)` targets | cumulative: the same targets cannot move money twice |
//! | refund | `(channelId, refundNonce, amount)` | the escrow accepts a nonce once |
//! | settle | `(receiver, token)`, only while pending | a later settle of new claims is a new action |
//!
//! Values start with a format byte, then JSON.

use alloy::primitives::{Address, B256, U256, keccak256};
use paychan_store::{Store, WriteBatch};
use serde::{Deserialize, Serialize};

/// Metadata key prefix of settlement records.
pub const RECORD_KEY_PREFIX: &str = "facilitator.settle.";
const FORMAT: u8 = 1;

/// What a settlement record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub(crate) enum Record {
    /// Sent; the relayer's journal entry `journal_id` was not confirmed in time.
    Pending {
        /// The relayer's journal entry.
        journal_id: u64,
        /// The latest transaction sent for it.
        tx_hash: B256,
    },
    /// Done on chain.
    Done {
        /// The transaction.
        tx_hash: B256,
        /// The response's `amount`.
        amount: String,
    },
}

/// Which action a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Deposit,
    Claim,
    Refund,
    Settle,
}

impl Action {
    fn prefix(self) -> &'static str {
        match self {
            Action::Deposit => "deposit",
            Action::Claim => "claim",
            Action::Refund => "refund",
            Action::Settle => "settle",
        }
    }
}

/// A record's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) action: Action,
    pub(crate) hash: B256,
}

impl Key {
    pub(crate) fn deposit(
        token: Address,
        payer: Address,
        authorization_nonce: B256,
        amount: u128,
    ) -> Self {
        Self::of(
            Action::Deposit,
            &[
                token.as_slice(),
                payer.as_slice(),
                authorization_nonce.as_slice(),
                &amount.to_be_bytes(),
            ],
        )
    }

    pub(crate) fn claim(targets: &[(B256, u128)]) -> Self {
        let mut buf = Vec::with_capacity(targets.len() * 48);
        for (id, total) in targets {
            buf.extend_from_slice(id.as_slice());
            buf.extend_from_slice(&total.to_be_bytes());
        }
        Self::of(Action::Claim, &[&buf])
    }

    pub(crate) fn refund(channel_id: B256, nonce: U256, amount: u128) -> Self {
        Self::of(
            Action::Refund,
            &[
                channel_id.as_slice(),
                &nonce.to_be_bytes::<32>(),
                &amount.to_be_bytes(),
            ],
        )
    }

    pub(crate) fn settle(receiver: Address, token: Address) -> Self {
        Self::of(Action::Settle, &[receiver.as_slice(), token.as_slice()])
    }

    fn of(action: Action, parts: &[&[u8]]) -> Self {
        Self {
            action,
            hash: keccak256(parts.concat()),
        }
    }

    fn meta_key(&self) -> String {
        format!("{RECORD_KEY_PREFIX}{}.{}", self.action.prefix(), self.hash)
    }

    /// Which of the facilitator's settle locks serializes this key.
    pub(crate) fn shard(&self, shards: usize) -> usize {
        usize::from(self.hash.0[0]) % shards.max(1)
    }
}

/// Reads a record; `None` when there is none (or it was cleared).
pub(crate) async fn load<S: Store>(
    store: &S,
    key: &Key,
) -> Result<Option<Record>, paychan_store::Error> {
    let k = key.meta_key();
    let Some(bytes) = store.meta(&k).await? else {
        return Ok(None);
    };
    match bytes.split_first() {
        None => Ok(None),
        Some((&FORMAT, json)) => {
            serde_json::from_slice(json)
                .map(Some)
                .map_err(|e| paychan_store::Error::Corrupt {
                    key: k,
                    reason: e.to_string(),
                })
        }
        Some((v, _)) => Err(paychan_store::Error::Corrupt {
            key: k,
            reason: format!("unknown record format {v}"),
        }),
    }
}

/// Writes a record durably.
pub(crate) async fn save<S: Store>(
    store: &S,
    key: &Key,
    record: &Record,
) -> Result<(), paychan_store::Error> {
    let mut value = vec![FORMAT];
    value.extend(serde_json::to_vec(record).map_err(|e| paychan_store::Error::Io(e.to_string()))?);
    store
        .commit(WriteBatch {
            meta: vec![(key.meta_key(), value)],
            ..WriteBatch::default()
        })
        .await
}

/// Clears a record.
pub(crate) async fn clear<S: Store>(store: &S, key: &Key) -> Result<(), paychan_store::Error> {
    store
        .commit(WriteBatch {
            meta: vec![(key.meta_key(), Vec::new())],
            ..WriteBatch::default()
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use paychan_store::MemStore;

    #[tokio::test]
    async fn records_round_trip_and_clear() {
        let store = MemStore::new();
        let key = Key::refund(B256::repeat_byte(1), U256::from(3), 10);
        assert_eq!(load(&store, &key).await.unwrap(), None);
        let rec = Record::Done {
            tx_hash: B256::repeat_byte(9),
            amount: "42".into(),
        };
        save(&store, &key, &rec).await.unwrap();
        assert_eq!(load(&store, &key).await.unwrap(), Some(rec));
        // another nonce is another action
        let other = Key::refund(B256::repeat_byte(1), U256::from(4), 10);
        assert_eq!(load(&store, &other).await.unwrap(), None);
        clear(&store, &key).await.unwrap();
        assert_eq!(load(&store, &key).await.unwrap(), None);
    }
}
