//! The relayer: sends the escrow's receiver-side transactions (claims, settles, refunds) and
//! relays deposits, journaling every action in the store so that it is carried out at most once
//! across crashes and restarts.
//!
//! Each action is journaled `Prepared` (with what to send, kept under a metadata key), then
//! `Sent { tx_hash, nonce, all_hashes }` as soon as a transaction is signed and *before* it is
//! broadcast (again for every fee bump), then `Confirmed { tx_hash, block, gas_used }` once mined
//! with enough confirmations in a canonical block, or `Failed { reason }` when it reverts, would
//! revert, or turns out to be done already by another transaction (`superseded: …`).
//! [`Relayer::recover`] finishes every open entry after a restart.
//!
//! | module | what |
//! | --- | --- |
//! | this file | [`Relayer`]: construction, and the pipeline every action goes through (pre-flight, send, wait, re-send) |
//! | `actions` | the operations: claims, settles, refunds, deposits and their payloads |
//! | `journal` | the stored action next to the journal entries, the `Prepared`, `Sent` and closing writes |
//! | `recovery` | [`Relayer::recover`] and the replay checks |

mod actions;
mod journal;
mod recovery;

use std::{collections::HashSet, sync::Arc};

use alloy::primitives::{Address, Bytes, U256};
use paychan_core::ports::Clock;
use paychan_store::{JournalEntry, JournalKind, Store, SystemClock};

use self::journal::{ActionRecord, JournalHook, ReplayCheck, static_what};
pub use self::{actions::SignedRefund, journal::ACTION_KEY_PREFIX, recovery::RecoveryReport};
use crate::{
    ChainReader, Error, Result, TxKey,
    rpc::TARGET,
    sender::{InFlight, TxCall, TxSender, WaitEnd},
};

/// How many times an action is sent with a fresh nonce after its nonce went to another
/// transaction.
const MAX_RESENDS: usize = 3;

/// The transaction manager of a paychan receiver or facilitator: one sender key, journaled
/// actions, nonces, gas, fees, bumps, confirmations, reorgs and restarts. Cheap to clone; clones
/// share nonces. Call [`Relayer::recover`] once at start, before sending anything new.
pub struct Relayer<S: Store> {
    inner: Arc<Inner<S>>,
}

impl<S: Store> Clone for Relayer<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: Store> std::fmt::Debug for Relayer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relayer")
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

struct Inner<S> {
    sender: TxSender,
    store: S,
    /// Wall-clock time for the journal's `updated_at`.
    clock: Arc<dyn Clock>,
    /// Next journal id to hand out (guards id allocation + the `Prepared` write).
    next_id: tokio::sync::Mutex<u64>,
    /// Journal ids being driven by a task of this relayer (recovery leaves them alone).
    active: std::sync::Mutex<HashSet<u64>>,
}

/// Marks journal ids as driven by this process until dropped.
struct ActiveGuard<'a> {
    set: &'a std::sync::Mutex<HashSet<u64>>,
    ids: Vec<u64>,
}

impl<'a> ActiveGuard<'a> {
    /// `None` if one of `ids` is already being driven.
    fn claim(set: &'a std::sync::Mutex<HashSet<u64>>, ids: Vec<u64>) -> Option<Self> {
        let mut s = set.lock().unwrap_or_else(|p| p.into_inner());
        if ids.iter().any(|id| s.contains(id)) {
            return None;
        }
        s.extend(ids.iter().copied());
        Some(Self { set, ids })
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        let mut s = self.set.lock().unwrap_or_else(|p| p.into_inner());
        for id in &self.ids {
            s.remove(id);
        }
    }
}

impl<S: Store> Relayer<S> {
    /// A relayer sending from `key`, journaling in `store`, on the system clock.
    pub fn new(reader: ChainReader, store: S, key: impl Into<TxKey>) -> Self {
        Self::with_clock(reader, store, key, SystemClock)
    }

    /// [`new`](Self::new) with an explicit clock (journal timestamps; a facilitator built on
    /// this relayer reads the same clock).
    pub fn with_clock(
        reader: ChainReader,
        store: S,
        key: impl Into<TxKey>,
        clock: impl Clock,
    ) -> Self {
        let sender = TxSender::new(reader, key.into());
        tracing::info!(target: TARGET, address = %sender.address(), "relayer ready");
        Self {
            inner: Arc::new(Inner {
                sender,
                store,
                clock: Arc::new(clock),
                next_id: tokio::sync::Mutex::new(0),
                active: std::sync::Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The sender address.
    pub fn address(&self) -> Address {
        self.inner.sender.address()
    }

    /// The reader it uses.
    pub fn reader(&self) -> &ChainReader {
        self.inner.sender.reader()
    }

    /// The store it journals in.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// Its clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    fn escrow(&self) -> Address {
        self.reader().config().escrow
    }

    async fn single(
        &self,
        what: &'static str,
        data: Bytes,
        kind: JournalKind,
        check: ReplayCheck,
    ) -> Result<JournalEntry> {
        self.execute(what, data, vec![kind], check)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Journal {
                journal_id: 0,
                reason: "no journal entry".into(),
            })
    }

    /// Pre-flight (a revert or a gas estimate above the ceiling refuses the action before
    /// anything is journaled), then `Prepared`, then send and drive to the end.
    async fn execute(
        &self,
        what: &'static str,
        data: Bytes,
        kinds: Vec<JournalKind>,
        check: ReplayCheck,
    ) -> Result<Vec<JournalEntry>> {
        let call = TxCall {
            to: self.escrow(),
            data,
            value: U256::ZERO,
        };
        let gas_limit = self.inner.sender.gas_limit(what, &call).await?;
        let (entries, record, _active) = self.prepare(what, &call, kinds, check).await?;
        self.drive(entries, record, None, Some(gas_limit)).await
    }

    /// Sends (unless `inflight` is already out) and waits, re-sending with a fresh nonce when
    /// the nonce went to another transaction and the action is still needed.
    async fn drive(
        &self,
        entries: Vec<JournalEntry>,
        record: ActionRecord,
        mut inflight: Option<InFlight>,
        mut gas_limit: Option<u64>,
    ) -> Result<Vec<JournalEntry>> {
        let sender = &self.inner.sender;
        let what = static_what(&record.what);
        let call = TxCall {
            to: record.to,
            data: record.data.clone(),
            value: U256::ZERO,
        };
        let hook = JournalHook {
            store: self.inner.store.clone(),
            clock: self.inner.clock.clone(),
            entries: entries.clone(),
            record: record.clone(),
        };
        let id = entries.first().map(|e| e.id).unwrap_or(0);
        let mut prior = inflight
            .as_ref()
            .map(|f| f.prior_hashes.clone())
            .unwrap_or_default();
        let mut last_nonce = inflight.as_ref().map_or(0, |f| f.nonce);
        for _ in 0..=MAX_RESENDS {
            let mut f = match inflight.take() {
                Some(f) => f,
                None => {
                    let sent = sender
                        .send_new(what, call.clone(), prior.clone(), &hook, gas_limit.take())
                        .await;
                    match sent {
                        Ok(f) => f,
                        Err(
                            e @ (Error::Reverted { .. }
                            | Error::GasCeiling { .. }
                            | Error::Rejected { .. }),
                        ) => {
                            self.finish_failed(&entries, format!("not sent: {e}"))
                                .await?;
                            return Err(e);
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            match sender.wait(&mut f, &hook).await? {
                WaitEnd::Mined(o) if o.success => return self.finish_confirmed(&entries, &o).await,
                WaitEnd::Mined(o) => {
                    self.finish_failed(
                        &entries,
                        format!(
                            "reverted on chain: tx {} in block {} (gas used {})",
                            o.tx_hash, o.block, o.gas_used
                        ),
                    )
                    .await?;
                    return Err(Error::TxReverted {
                        journal_id: id,
                        tx_hash: o.tx_hash,
                        block: o.block,
                        gas_used: o.gas_used,
                    });
                }
                WaitEnd::NonceTaken => {
                    tracing::warn!(target: TARGET, what, journal_id = id, nonce = f.nonce, "nonce used by another transaction");
                    sender.resync_nonce().await;
                    if let Some(reason) = self.superseded(&record.check).await? {
                        self.finish_failed(&entries, format!("superseded: {reason}"))
                            .await?;
                        return Err(Error::Superseded {
                            journal_id: id,
                            reason,
                        });
                    }
                    tracing::info!(target: TARGET, what, journal_id = id, "still needed on chain: sending again with a fresh nonce");
                    prior = f.all_hashes();
                    last_nonce = f.nonce;
                }
                WaitEnd::TimedOut(waited) => {
                    return Err(Error::Unconfirmed {
                        journal_id: id,
                        tx_hash: f.latest().hash,
                        waited,
                    });
                }
            }
        }
        // every nonce it was given went to someone else: leave the entry open for later
        Err(Error::NonceTaken {
            sender: self.address(),
            nonce: last_nonce,
        })
    }
}
