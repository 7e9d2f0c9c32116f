//! Gas accounting: every confirmed claim and settle transaction's gas, counted once per
//! transaction hash (`claim_and_refund` journals two entries for one transaction), so that the
//! amortized gas per paid request can be reported.

use std::collections::{BTreeMap, HashSet};

use alloy_primitives::B256;
use paychan_store::{JournalEntry, JournalKind, JournalState, Store};

/// Gas spent on settlement, and what it bought.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GasReport {
    /// Claim transactions confirmed (`claimWithSignature` / `claim`).
    pub claim_txs: u64,
    /// Settle transactions confirmed.
    pub settle_txs: u64,
    /// Gas of those claims.
    pub gas_claims: u64,
    /// Gas of those settles.
    pub gas_settles: u64,
    /// Channel rows in those claims (a channel claimed in two rounds counts twice).
    pub channels_claimed: u64,
    /// Other receiver-side transactions seen (refunds, including a claim sent with a refund in
    /// one `multicall`, and relayed deposits): not part of `per_request`.
    pub other_txs: u64,
    /// Their gas.
    pub gas_other: u64,
    /// Paid requests (committed charges above zero) over the same period.
    pub paid_requests: u64,
    /// `(gas_claims + gas_settles) / paid_requests`; `None` before the first paid request.
    pub per_request: Option<f64>,
}

impl GasReport {
    /// Claim and settle gas together.
    pub fn gas_total(&self) -> u64 {
        self.gas_claims.saturating_add(self.gas_settles)
    }

    /// Sets `paid_requests` and the amortized figure.
    pub fn with_paid_requests(mut self, paid_requests: u64) -> Self {
        self.paid_requests = paid_requests;
        #[allow(clippy::cast_precision_loss)] // a ratio for reports
        {
            self.per_request =
                (paid_requests > 0).then(|| self.gas_total() as f64 / paid_requests as f64);
        }
        self
    }

    /// Totals over the whole journal in `store` (every claim and settle ever confirmed there, by
    /// any sender), with `paid_requests` supplied by the caller for the same period.
    pub async fn from_journal<S: Store>(
        store: &S,
        paid_requests: u64,
    ) -> paychan_store::Result<Self> {
        let mut ledger = GasLedger::default();
        let mut after = 0;
        loop {
            let page = store.journal_after(after, 1_000).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            ledger.record(&page);
        }
        Ok(ledger.report().with_paid_requests(paid_requests))
    }
}

/// Accumulates confirmed journal entries into a [`GasReport`], once per transaction hash.
#[derive(Debug, Default, Clone)]
pub struct GasLedger {
    seen: HashSet<B256>,
    report: GasReport,
}

impl GasLedger {
    /// Records confirmed entries; others are ignored, and so is a transaction already recorded.
    /// Entries sharing a transaction (claim + refund in one `multicall`) must come in one call
    /// to be classified together (a transaction carrying a refund counts as "other").
    pub fn record(&mut self, entries: &[JournalEntry]) {
        let mut by_tx: BTreeMap<B256, (u64, Vec<&JournalKind>)> = BTreeMap::new();
        for e in entries {
            if let JournalState::Confirmed {
                tx_hash, gas_used, ..
            } = &e.state
            {
                by_tx
                    .entry(*tx_hash)
                    .or_insert((*gas_used, Vec::new()))
                    .1
                    .push(&e.kind);
            }
        }
        for (tx, (gas, kinds)) in by_tx {
            if !self.seen.insert(tx) {
                continue;
            }
            let r = &mut self.report;
            let refund_or_deposit = kinds
                .iter()
                .any(|k| matches!(k, JournalKind::Refund { .. } | JournalKind::Deposit { .. }));
            if refund_or_deposit {
                r.other_txs += 1;
                r.gas_other = r.gas_other.saturating_add(gas);
                continue;
            }
            for k in kinds {
                match k {
                    JournalKind::Claim { claims } => {
                        r.claim_txs += 1;
                        r.gas_claims = r.gas_claims.saturating_add(gas);
                        r.channels_claimed += claims.len() as u64;
                    }
                    JournalKind::Settle { .. } => {
                        r.settle_txs += 1;
                        r.gas_settles = r.gas_settles.saturating_add(gas);
                    }
                    JournalKind::Refund { .. } | JournalKind::Deposit { .. } => {}
                }
            }
        }
    }

    /// A claim transaction that was mined but reverted: its gas is spent all the same.
    pub fn record_reverted_claim(&mut self, tx_hash: B256, gas_used: u64) {
        if self.seen.insert(tx_hash) {
            self.report.claim_txs += 1;
            self.report.gas_claims = self.report.gas_claims.saturating_add(gas_used);
        }
    }

    /// What was recorded (with no paid requests set).
    pub fn report(&self) -> GasReport {
        self.report
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use alloy_primitives::Address;
    use paychan_store::{MemStore, WriteBatch};

    fn entry(id: u64, kind: JournalKind, tx: u8, gas: u64) -> JournalEntry {
        JournalEntry {
            id,
            kind,
            state: JournalState::Confirmed {
                tx_hash: B256::repeat_byte(tx),
                block: 1,
                gas_used: gas,
            },
            created_at: 0,
            updated_at: 0,
        }
    }

    fn claim(n: u8) -> JournalKind {
        JournalKind::Claim {
            claims: (0..n).map(|i| (B256::repeat_byte(i), 1)).collect(),
        }
    }

    fn entries() -> Vec<JournalEntry> {
        vec![
            entry(1, claim(10), 1, 250_000),
            entry(
                2,
                JournalKind::Settle {
                    receiver: Address::ZERO,
                    token: Address::ZERO,
                },
                2,
                46_000,
            ),
            // claim + refund in one multicall: one transaction, counted once, as "other"
            entry(3, claim(1), 3, 117_000),
            entry(
                4,
                JournalKind::Refund {
                    channel_id: B256::ZERO,
                    amount: 5,
                },
                3,
                117_000,
            ),
            JournalEntry {
                state: JournalState::Failed { reason: "x".into() },
                ..entry(5, claim(3), 5, 1)
            },
        ]
    }

    #[test]
    fn counts_each_transaction_once() {
        let mut l = GasLedger::default();
        l.record(&entries());
        l.record(&entries()[..1]); // again: ignored
        let r = l.report().with_paid_requests(1_000);
        assert_eq!(
            (r.claim_txs, r.gas_claims, r.channels_claimed),
            (1, 250_000, 10)
        );
        assert_eq!((r.settle_txs, r.gas_settles), (1, 46_000));
        assert_eq!((r.other_txs, r.gas_other), (1, 117_000));
        assert_eq!(r.gas_total(), 296_000);
        assert_eq!(r.per_request, Some(296.0));
        assert_eq!(GasReport::default().with_paid_requests(0).per_request, None);
    }

    #[tokio::test]
    async fn from_the_journal() {
        let store = MemStore::new();
        store
            .commit(WriteBatch {
                journal: entries(),
                ..WriteBatch::default()
            })
            .await
            .unwrap();
        let r = GasReport::from_journal(&store, 296).await.unwrap();
        assert_eq!((r.claim_txs, r.settle_txs, r.other_txs), (1, 1, 1));
        assert_eq!(r.per_request, Some(1_000.0));
    }
}
