//! Restart reconciliation: finishing every open journal entry against the chain, and the replay
//! checks that decide between re-sending an action and calling it superseded.

use alloy::primitives::{Address, B256, Bytes, U256};
use paychan_store::{JournalEntry, JournalState, Store, WriteBatch};

use super::{
    ActiveGuard, Relayer,
    journal::{ActionRecord, ClaimTarget, ReplayCheck, StoredAction, action_key, decode_action},
};
use crate::{
    ChainReader, Error, Result,
    rpc::TARGET,
    sender::{Attempt, Fees, InFlight, TxCall},
};

/// What [`Relayer::recover`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Entries now confirmed (their transaction was mined, or was re-sent and mined).
    pub confirmed: Vec<JournalEntry>,
    /// Entries now failed (reverted, would revert, or superseded).
    pub failed: Vec<JournalEntry>,
    /// Entries re-sent in a new transaction (also listed as confirmed or failed).
    pub resent: Vec<u64>,
    /// Entries still open, with why (RPC down, not confirmed in time, ...).
    pub still_open: Vec<(u64, String)>,
    /// Open entries this relayer does not own (another sender, or no stored action).
    pub skipped: Vec<u64>,
}

impl<S: Store> Relayer<S> {
    /// Reconciles every open journal entry with the chain after a restart; call it once before
    /// sending anything new. For each action of this sender:
    ///
    /// * `Sent`, one of `all_hashes` mined → waits for confirmations → `Confirmed` (or `Failed`
    ///   if it reverted). Nothing is sent again.
    /// * `Sent`, nothing mined, nonce still free → the stored signed transaction is broadcast
    ///   again (same nonce, so it can execute at most once) and driven as usual (fee bumps...).
    /// * `Sent`, nothing mined, nonce used by another transaction, or `Prepared` → the chain is
    ///   checked first: a claim whose channels are all claimed up to the targets, a settle with
    ///   nothing unsettled, a refund whose nonce is used, a deposit whose ERC-3009 authorization is
    ///   used → `Failed("superseded: …")`, not re-sent; otherwise it is sent in a new transaction.
    ///
    /// Actions run concurrently. Entries of other senders, and entries without a stored action,
    /// are left alone (listed in `skipped`) unless one of their hashes is mined and confirmed.
    /// Entries that a task of this relayer is driving are left to it (listed in `still_open`), so
    /// `recover` may also be called later, for example to finish an action whose call returned
    /// [`Error::Unconfirmed`].
    pub async fn recover(&self) -> Result<RecoveryReport> {
        let store = &self.inner.store;
        let open = store.open_journal().await?;
        let mut report = RecoveryReport::default();
        let mut actions: Vec<(Vec<JournalEntry>, ActionRecord)> = Vec::new();
        let mut max_nonce: Option<u64> = None;
        for e in &open {
            let key = action_key(e.id);
            let stored = match store.meta(&key).await? {
                Some(b) => Some(decode_action(&key, &b)?),
                None => None,
            };
            match triage(stored, self.is_active(e.id), self.address(), &open) {
                Triage::Busy => {
                    report
                        .still_open
                        .push((e.id, "in flight in this relayer".to_owned()));
                }
                Triage::Drive { entries, record } => {
                    if let JournalState::Sent { nonce, .. } = e.state {
                        max_nonce = Some(max_nonce.map_or(nonce, |m| m.max(nonce)));
                    }
                    actions.push((entries, *record));
                }
                Triage::Companion => {}
                Triage::Foreign => {
                    if let Some(done) = self.confirm_if_mined(e).await? {
                        report.confirmed.push(done);
                    } else {
                        tracing::warn!(target: TARGET, journal_id = e.id, "open journal entry not owned by this relayer; left alone");
                        report.skipped.push(e.id);
                    }
                }
            }
        }
        if let Some(n) = max_nonce {
            self.inner
                .sender
                .nonce_at_least(n.saturating_add(1))
                .await?;
        }
        // Re-broadcast the stored transactions in nonce order before anything waits.
        actions.sort_by_key(|(_, r)| r.nonce.unwrap_or(u64::MAX));
        let mut tasks = tokio::task::JoinSet::new();
        for (entries, record) in actions {
            let this = self.clone();
            tasks.spawn(async move {
                let ids = record.ids.clone();
                let res = this.recover_one(entries, record).await;
                (ids, res)
            });
            // let each stored transaction reach the node in nonce order
            tokio::task::yield_now().await;
        }
        while let Some(joined) = tasks.join_next().await {
            let (ids, res) = match joined {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(target: TARGET, error = %e, "a recovery task panicked");
                    continue;
                }
            };
            match res {
                Ok((done, resent)) => {
                    if resent {
                        report.resent.extend(&ids);
                    }
                    for e in done {
                        if matches!(e.state, JournalState::Confirmed { .. }) {
                            report.confirmed.push(e);
                        } else {
                            report.failed.push(e);
                        }
                    }
                }
                Err(err) => {
                    let mut open_now = false;
                    for &id in &ids {
                        match store.journal_entry(id).await? {
                            Some(e) if !e.is_open() => report.failed.push(e),
                            Some(_) => open_now = true,
                            None => {}
                        }
                    }
                    if open_now {
                        report
                            .still_open
                            .push((ids.first().copied().unwrap_or(0), err.to_string()));
                    }
                }
            }
        }
        report.confirmed.sort_by_key(|e| e.id);
        report.failed.sort_by_key(|e| e.id);
        report.resent.sort_unstable();
        report.still_open.sort_by_key(|(id, _)| *id);
        tracing::info!(
            target: TARGET,
            confirmed = report.confirmed.len(),
            failed = report.failed.len(),
            resent = report.resent.len(),
            still_open = report.still_open.len(),
            skipped = report.skipped.len(),
            "journal recovered"
        );
        Ok(report)
    }

    fn is_active(&self, id: u64) -> bool {
        self.inner
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    /// Returns the closed entries and whether a new transaction was sent.
    async fn recover_one(
        &self,
        entries: Vec<JournalEntry>,
        record: ActionRecord,
    ) -> Result<(Vec<JournalEntry>, bool)> {
        let Some(first) = entries.first().cloned() else {
            return Ok((Vec::new(), false));
        };
        let Some(_active) = ActiveGuard::claim(&self.inner.active, record.ids.clone()) else {
            return Err(Error::Journal {
                journal_id: first.id,
                reason: "in flight in this relayer".into(),
            });
        };
        let sender = &self.inner.sender;
        if let JournalState::Sent {
            tx_hash,
            nonce,
            all_hashes,
        } = &first.state
        {
            let f = inflight_from(&record, *tx_hash, *nonce, all_hashes);
            let mined = sender.find_receipt(all_hashes).await?.is_some();
            if !mined && let Some(raw) = &record.raw {
                // Same nonce: it executes at most once, whatever happened before the crash.
                let _ = sender.broadcast(raw).await;
            }
            tracing::info!(target: TARGET, journal_id = first.id, %tx_hash, nonce, mined, "recovering a sent action");
            let done = self.drive(entries, record, Some(f), None).await?;
            let resent = confirmed_elsewhere(&done, all_hashes);
            return Ok((done, resent));
        }
        // Prepared: never signed, so never broadcast.
        if let Some(reason) = self.superseded(&record.check).await? {
            let id = first.id;
            self.finish_failed(&entries, format!("superseded: {reason}"))
                .await?;
            return Err(Error::Superseded {
                journal_id: id,
                reason,
            });
        }
        tracing::info!(target: TARGET, journal_id = first.id, what = %record.what, "sending a prepared action");
        let done = self.drive(entries, record, None, None).await?;
        Ok((done, true))
    }

    /// For an entry without a stored action: confirm it if one of its hashes is mined with enough
    /// confirmations in a canonical block.
    async fn confirm_if_mined(&self, e: &JournalEntry) -> Result<Option<JournalEntry>> {
        let JournalState::Sent {
            all_hashes,
            tx_hash,
            ..
        } = &e.state
        else {
            return Ok(None);
        };
        let mut hashes = all_hashes.clone();
        if !hashes.contains(tx_hash) {
            hashes.push(*tx_hash);
        }
        let Some(r) = self.inner.sender.find_receipt(&hashes).await? else {
            return Ok(None);
        };
        let (Some(block), Some(block_hash)) = (r.block_number, r.block_hash) else {
            return Ok(None);
        };
        let head = self.reader().block_number().await?;
        if !deep_enough(head, block, self.reader().config().confirmations)
            || self.reader().block_hash(block).await? != Some(block_hash)
        {
            return Ok(None);
        }
        let state = if r.status() {
            JournalState::Confirmed {
                tx_hash: r.transaction_hash,
                block,
                gas_used: r.gas_used,
            }
        } else {
            JournalState::Failed {
                reason: format!(
                    "reverted on chain: tx {} in block {block} (gas used {})",
                    r.transaction_hash, r.gas_used
                ),
            }
        };
        let done = JournalEntry {
            state,
            updated_at: self.now_ms(),
            ..e.clone()
        };
        self.inner
            .store
            .commit(WriteBatch {
                journal: vec![done.clone()],
                ..WriteBatch::default()
            })
            .await?;
        Ok(Some(done))
    }

    /// `Some(reason)` when the chain shows the action is already done (or pointless), so it must
    /// not be re-sent.
    pub(super) async fn superseded(&self, check: &ReplayCheck) -> Result<Option<String>> {
        let r = self.reader();
        Ok(match check {
            ReplayCheck::Claim { targets } => claimed_all(r, targets).await?,
            ReplayCheck::Settle { receiver, token } => {
                let (claimed, settled) = r.receiver_state(*receiver, *token).await?;
                (claimed == settled).then(|| {
                    format!("nothing left to settle for receiver {receiver} in token {token} (settled {settled})")
                })
            }
            ReplayCheck::Refund { channel_id, nonce } => {
                refund_done(r, *channel_id, *nonce).await?
            }
            ReplayCheck::ClaimAndRefund {
                channel_id, nonce, ..
            } => refund_done(r, *channel_id, *nonce).await?,
            ReplayCheck::Deposit {
                token,
                payer,
                authorization_nonce: Some(n),
                ..
            } => r.authorization_used(*token, *payer, *n).await?.then(|| {
                format!("the deposit's ERC-3009 authorization {n} is already used on chain")
            }),
            // another collector: the pre-flight simulation of the re-send decides
            ReplayCheck::Deposit { .. } => None,
        })
    }
}

/// Rebuilds the in-flight transaction of a `Sent` entry from its stored action.
fn inflight_from(
    record: &ActionRecord,
    tx_hash: B256,
    nonce: u64,
    all_hashes: &[B256],
) -> InFlight {
    let call = TxCall {
        to: record.to,
        data: record.data.clone(),
        value: U256::ZERO,
    };
    let mut attempts: Vec<Attempt> = if record.nonce == Some(nonce) {
        record
            .attempts
            .iter()
            .map(|a| Attempt {
                hash: a.hash,
                raw: Bytes::new(),
                fees: Fees {
                    max_fee: a.max_fee,
                    priority: a.priority,
                },
            })
            .collect()
    } else {
        Vec::new()
    };
    if attempts.last().map(|a| a.hash) != Some(tx_hash) {
        attempts.push(Attempt {
            hash: tx_hash,
            raw: Bytes::new(),
            fees: Fees {
                max_fee: 0,
                priority: 0,
            },
        });
    }
    if let (Some(last), Some(raw)) = (attempts.last_mut(), &record.raw) {
        last.raw = raw.clone();
    }
    let current: Vec<B256> = attempts.iter().map(|a| a.hash).collect();
    InFlight {
        call,
        nonce,
        gas_limit: record.gas_limit.max(21_000),
        attempts,
        bumps: record.bumps,
        prior_hashes: all_hashes
            .iter()
            .copied()
            .filter(|h| !current.contains(h))
            .collect(),
        unsent: false,
        refused: false,
    }
}

async fn claimed_all(r: &ChainReader, targets: &[ClaimTarget]) -> Result<Option<String>> {
    let ids: Vec<B256> = targets.iter().map(|t| t.channel_id).collect();
    let states = r.channel_states(&ids).await?;
    let claimed: Vec<u128> = states.iter().map(|s| s.total_claimed).collect();
    Ok(reached(targets, &claimed).then(|| {
        format!(
            "all {} channel(s) are already claimed up to their targets on chain",
            targets.len()
        )
    }))
}

async fn refund_done(r: &ChainReader, channel_id: B256, nonce: U256) -> Result<Option<String>> {
    let current = r.refund_nonce(channel_id).await?;
    Ok((current > nonce).then(|| {
        format!(
            "refund nonce {nonce} of channel {channel_id} is already used on chain (now {current})"
        )
    }))
}

/// What recovery does with an open journal entry.
#[derive(Debug, PartialEq, Eq)]
enum Triage {
    /// A task of this relayer drives it: left to it.
    Busy,
    /// This sender's action: driven to its end, with the open entries its transaction serves.
    Drive {
        entries: Vec<JournalEntry>,
        record: Box<ActionRecord>,
    },
    /// Served by an open primary entry, which is driven instead.
    Companion,
    /// Not this relayer's (another sender, no stored action, or its primary is closed): only
    /// confirmed if one of its hashes is mined.
    Foreign,
}

/// Decides what recovery does with an open entry from its stored action, whether a task of
/// this relayer is driving it (`active`), the sender `me`, and every `open` entry.
fn triage(
    stored: Option<StoredAction>,
    active: bool,
    me: Address,
    open: &[JournalEntry],
) -> Triage {
    match stored {
        Some(StoredAction::Primary(_)) if active => Triage::Busy,
        Some(StoredAction::Primary(record)) if record.from == me => Triage::Drive {
            entries: record
                .ids
                .iter()
                .filter_map(|id| open.iter().find(|o| o.id == *id).cloned())
                .collect(),
            record,
        },
        Some(StoredAction::Companion { primary }) if open.iter().any(|o| o.id == primary) => {
            Triage::Companion
        }
        _ => Triage::Foreign,
    }
}

/// Whether a transaction in `block` has the `confirmations` required at chain head `head` (the
/// block itself counts as one).
fn deep_enough(head: u64, block: u64, confirmations: u64) -> bool {
    head.saturating_add(1) >= block.saturating_add(confirmations)
}

/// Whether a recovered action was confirmed by a transaction other than those journaled before
/// (`all_hashes`): it was sent again.
fn confirmed_elsewhere(done: &[JournalEntry], all_hashes: &[B256]) -> bool {
    done.first().is_some_and(|e| match &e.state {
        JournalState::Confirmed { tx_hash, .. } => !all_hashes.contains(tx_hash),
        _ => false,
    })
}

/// Whether every claim target is reached by the matching on-chain claimed total.
fn reached(targets: &[ClaimTarget], claimed: &[u128]) -> bool {
    targets
        .iter()
        .zip(claimed)
        .all(|(t, c)| *c >= t.total_claimed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::relayer::journal::AttemptMeta;

    #[test]
    fn inflight_is_rebuilt_from_the_record() {
        let h1 = B256::repeat_byte(1);
        let h2 = B256::repeat_byte(2);
        let old = B256::repeat_byte(9);
        let rec = ActionRecord {
            what: "claim".into(),
            from: Address::ZERO,
            ids: vec![1],
            to: Address::ZERO,
            data: Bytes::new(),
            check: ReplayCheck::Settle {
                receiver: Address::ZERO,
                token: Address::ZERO,
            },
            nonce: Some(4),
            gas_limit: 50_000,
            attempts: vec![
                AttemptMeta {
                    hash: h1,
                    max_fee: 10,
                    priority: 1,
                },
                AttemptMeta {
                    hash: h2,
                    max_fee: 12,
                    priority: 2,
                },
            ],
            prior_hashes: vec![old],
            raw: Some(Bytes::from_static(&[7])),
            bumps: 1,
        };
        let f = inflight_from(&rec, h2, 4, &[old, h1, h2]);
        assert_eq!(f.attempts.len(), 2);
        assert_eq!(f.latest().hash, h2);
        assert_eq!(f.latest().raw, Bytes::from_static(&[7]));
        assert_eq!(f.latest().fees.max_fee, 12);
        assert_eq!(f.prior_hashes, vec![old]);
        assert_eq!(f.all_hashes(), vec![old, h1, h2]);
    }

    fn entry(id: u64, state: JournalState) -> JournalEntry {
        JournalEntry {
            id,
            kind: paychan_store::JournalKind::Settle {
                receiver: Address::ZERO,
                token: Address::ZERO,
            },
            state,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn record(from: Address, ids: Vec<u64>) -> ActionRecord {
        let call = TxCall {
            to: Address::ZERO,
            data: Bytes::new(),
            value: U256::ZERO,
        };
        let check = ReplayCheck::Settle {
            receiver: Address::ZERO,
            token: Address::ZERO,
        };
        ActionRecord::prepared("settle", from, ids, &call, check)
    }

    #[test]
    fn open_entries_are_triaged_by_their_stored_action() {
        let me = Address::repeat_byte(1);
        let other = Address::repeat_byte(2);
        let open = vec![
            entry(3, JournalState::Prepared),
            entry(4, JournalState::Prepared),
        ];
        let primary = |from, ids| Some(StoredAction::Primary(Box::new(record(from, ids))));
        // ours: driven with its open entries only (5 is closed already)
        assert_eq!(
            triage(primary(me, vec![3, 4, 5]), false, me, &open),
            Triage::Drive {
                entries: open.clone(),
                record: Box::new(record(me, vec![3, 4, 5])),
            }
        );
        // driven by a task of ours right now: left to it, whoever sent it
        assert_eq!(triage(primary(me, vec![3]), true, me, &open), Triage::Busy);
        assert_eq!(
            triage(primary(other, vec![3]), true, me, &open),
            Triage::Busy
        );
        // another sender's, or no stored action, or finished
        assert_eq!(
            triage(primary(other, vec![3]), false, me, &open),
            Triage::Foreign
        );
        assert_eq!(triage(None, false, me, &open), Triage::Foreign);
        assert_eq!(
            triage(Some(StoredAction::Done), false, me, &open),
            Triage::Foreign
        );
        // a companion goes with its primary while that is open
        assert_eq!(
            triage(
                Some(StoredAction::Companion { primary: 3 }),
                false,
                me,
                &open
            ),
            Triage::Companion
        );
        assert_eq!(
            triage(
                Some(StoredAction::Companion { primary: 9 }),
                false,
                me,
                &open
            ),
            Triage::Foreign
        );
    }

    #[test]
    fn confirmations_count_the_block_itself() {
        assert!(deep_enough(10, 10, 1));
        assert!(!deep_enough(10, 10, 2));
        assert!(deep_enough(11, 10, 2));
        assert!(!deep_enough(9, 10, 1)); // a head behind the block (a reorg in between)
        assert!(deep_enough(10, 10, 0));
    }

    #[test]
    fn a_confirmation_by_a_new_hash_is_a_resend() {
        let (h1, h2) = (B256::repeat_byte(1), B256::repeat_byte(2));
        let confirmed = |h| {
            vec![entry(
                1,
                JournalState::Confirmed {
                    tx_hash: h,
                    block: 5,
                    gas_used: 21_000,
                },
            )]
        };
        assert!(!confirmed_elsewhere(&confirmed(h1), &[h1]));
        assert!(confirmed_elsewhere(&confirmed(h2), &[h1]));
        let failed = vec![entry(
            1,
            JournalState::Failed {
                reason: "reverted".into(),
            },
        )];
        assert!(!confirmed_elsewhere(&failed, &[h1]));
        assert!(!confirmed_elsewhere(&[], &[h1]));
    }

    #[test]
    fn claims_are_reached_when_every_target_is() {
        let t = |n: u8, total_claimed| ClaimTarget {
            channel_id: B256::repeat_byte(n),
            total_claimed,
        };
        let targets = [t(1, 100), t(2, 50)];
        assert!(reached(&targets, &[100, 70]));
        assert!(!reached(&targets, &[99, 70]));
        assert!(!reached(&targets, &[100, 49]));
    }
}
