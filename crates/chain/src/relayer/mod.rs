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

use std::{collections::HashSet, sync::Arc};

use alloy::{
    primitives::{Address, B256, Bytes, U256},
    sol_types::{SolCall, SolValue},
};
use paychan_bindings::BatchSettlement;
use paychan_core::{
    batch::{
        ChannelConfig, ClaimPayload, ClaimRow, DepositPayload, RefundPayload, eip712::deposit_nonce,
    },
    ports::Clock,
};
use paychan_store::{JournalEntry, JournalKind, JournalState, Store, SystemClock, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::{
    ChainReader, Error, Result, TxKey,
    rpc::TARGET,
    sender::{Attempt, Fees, InFlight, SentHook, TxCall, TxOutcome, TxSender, WaitEnd},
};

/// Metadata key prefix of the stored actions (`<prefix><journal id>`).
pub const ACTION_KEY_PREFIX: &str = "chain.relayer.action.";
/// Format byte of a stored action.
const ACTION_FORMAT: u8 = 1;
/// How many times an action is sent with a fresh nonce after its nonce went to another
/// transaction.
const MAX_RESENDS: usize = 3;

/// A receiver authorizer's signed refund, for [`Relayer::refund_with_signature`] and
/// [`Relayer::claim_and_refund`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRefund {
    /// The channel.
    pub config: ChannelConfig,
    /// Amount signed for (the escrow caps it to what is unclaimed).
    pub amount: u128,
    /// The channel's current `refundNonce`.
    pub nonce: U256,
    /// The receiver authorizer's `Refund` signature.
    pub signature: Bytes,
}

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

/// What must still be true on chain for re-sending an action to be useful. Every action is
/// replay-safe on chain (claims are cumulative, settle sweeps the difference, refunds carry a
/// nonce, deposits a single-use ERC-3009 authorization); these checks avoid paying for a no-op
/// and decide between "re-send" and "superseded".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum ReplayCheck {
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
struct ClaimTarget {
    channel_id: B256,
    #[serde(with = "paychan_core::amount::u128_dec")]
    total_claimed: u128,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttemptMeta {
    hash: B256,
    #[serde(with = "paychan_core::amount::u128_dec")]
    max_fee: u128,
    #[serde(with = "paychan_core::amount::u128_dec")]
    priority: u128,
}

/// What an action sends, stored next to its journal entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActionRecord {
    /// Label for logs and errors.
    what: String,
    /// The sender that owns the action.
    from: Address,
    /// Journal ids the transaction serves; the first holds this record.
    ids: Vec<u64>,
    to: Address,
    data: Bytes,
    check: ReplayCheck,
    /// The current nonce, once signed.
    #[serde(default)]
    nonce: Option<u64>,
    #[serde(default)]
    gas_limit: u64,
    /// Versions signed at the current nonce, oldest first.
    #[serde(default)]
    attempts: Vec<AttemptMeta>,
    /// Hashes at earlier nonces.
    #[serde(default)]
    prior_hashes: Vec<B256>,
    /// The latest signed transaction, to re-broadcast after a restart.
    #[serde(default)]
    raw: Option<Bytes>,
    #[serde(default)]
    bumps: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "camelCase")]
enum StoredAction {
    Primary(Box<ActionRecord>),
    /// Another entry served by the primary's transaction.
    Companion {
        primary: u64,
    },
    /// Finished; the payload is dropped to keep the store small.
    Done,
}

fn action_key(id: u64) -> String {
    format!("{ACTION_KEY_PREFIX}{id}")
}

fn encode_action(a: &StoredAction) -> Result<Vec<u8>> {
    let mut out = vec![ACTION_FORMAT];
    serde_json::to_writer(&mut out, a).map_err(|e| {
        Error::Store(paychan_store::Error::Io(format!(
            "encoding a relayer action: {e}"
        )))
    })?;
    Ok(out)
}

fn decode_action(key: &str, bytes: &[u8]) -> Result<StoredAction> {
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
struct JournalHook<S> {
    store: S,
    clock: Arc<dyn Clock>,
    entries: Vec<JournalEntry>,
    record: ActionRecord,
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

    // ---- operations ---------------------------------------------------------------------------

    /// `claimWithSignature(rows, authorizer_sig)`: anyone may send it; every row must share the
    /// receiver authorizer that signed the batch.
    pub async fn claim_with_signature(
        &self,
        rows: Vec<ClaimRow>,
        authorizer_sig: Bytes,
    ) -> Result<JournalEntry> {
        const WHAT: &str = "claimWithSignature";
        let targets = self.check_rows(WHAT, &rows)?;
        if let Some(first) = rows.first()
            && rows.iter().any(|r| {
                r.voucher.channel.receiver_authorizer != first.voucher.channel.receiver_authorizer
            })
        {
            return refused(WHAT, "every row must share one receiver authorizer");
        }
        let data = BatchSettlement::claimWithSignatureCall {
            voucherClaims: rows.iter().map(Into::into).collect(),
            authorizerSignature: authorizer_sig,
        }
        .abi_encode();
        self.single(
            WHAT,
            data.into(),
            claim_kind(&targets),
            ReplayCheck::Claim { targets },
        )
        .await
    }

    /// `claim(rows)`: the sender must be the receiver or the receiver authorizer of every row.
    pub async fn claim(&self, rows: Vec<ClaimRow>) -> Result<JournalEntry> {
        const WHAT: &str = "claim";
        let targets = self.check_rows(WHAT, &rows)?;
        let me = self.address();
        if rows.iter().any(|r| {
            r.voucher.channel.receiver != me && r.voucher.channel.receiver_authorizer != me
        }) {
            return refused(
                WHAT,
                format!("sender {me} is not the receiver or receiver authorizer of every row"),
            );
        }
        let data = BatchSettlement::claimCall {
            voucherClaims: rows.iter().map(Into::into).collect(),
        }
        .abi_encode();
        self.single(
            WHAT,
            data.into(),
            claim_kind(&targets),
            ReplayCheck::Claim { targets },
        )
        .await
    }

    /// A server's `claim` payload: `claimWithSignature` when it carries the authorizer's
    /// signature, `claim` otherwise.
    pub async fn claim_payload(&self, payload: &ClaimPayload) -> Result<JournalEntry> {
        match &payload.claim_authorizer_signature {
            Some(sig) => {
                self.claim_with_signature(payload.claims.clone(), sig.clone())
                    .await
            }
            None => self.claim(payload.claims.clone()).await,
        }
    }

    /// `settle(receiver, token)`: sweeps everything claimed and not yet transferred. Permissionless
    /// and idempotent on chain (a no-op when nothing is unsettled).
    pub async fn settle(&self, receiver: Address, token: Address) -> Result<JournalEntry> {
        let data = BatchSettlement::settleCall { receiver, token }.abi_encode();
        self.single(
            "settle",
            data.into(),
            JournalKind::Settle { receiver, token },
            ReplayCheck::Settle { receiver, token },
        )
        .await
    }

    /// `refundWithSignature(config, amount, nonce, sig)`.
    pub async fn refund_with_signature(
        &self,
        config: &ChannelConfig,
        amount: u128,
        nonce: U256,
        sig: Bytes,
    ) -> Result<JournalEntry> {
        const WHAT: &str = "refundWithSignature";
        if amount == 0 {
            return refused(WHAT, "zero refund");
        }
        let channel_id = self.reader().domain().channel_id(config);
        let data = refund_call(config, amount, nonce, sig);
        self.single(
            WHAT,
            data,
            JournalKind::Refund { channel_id, amount },
            ReplayCheck::Refund { channel_id, nonce },
        )
        .await
    }

    /// Claims then refunds in one transaction (`multicall`), as the reference facilitator does.
    /// Journals two entries (a `Claim` and a `Refund`) served by the same transaction; both carry
    /// its hash and gas (count gas once per transaction hash). Returns `(claim, refund)`.
    pub async fn claim_and_refund(
        &self,
        rows: Vec<ClaimRow>,
        claim_sig: Bytes,
        refund: SignedRefund,
    ) -> Result<(JournalEntry, JournalEntry)> {
        const WHAT: &str = "multicall(claimWithSignature, refundWithSignature)";
        let targets = self.check_rows(WHAT, &rows)?;
        if refund.amount == 0 {
            return refused(WHAT, "zero refund");
        }
        let channel_id = self.reader().domain().channel_id(&refund.config);
        let claim = BatchSettlement::claimWithSignatureCall {
            voucherClaims: rows.iter().map(Into::into).collect(),
            authorizerSignature: claim_sig,
        }
        .abi_encode();
        let refund_data = refund_call(
            &refund.config,
            refund.amount,
            refund.nonce,
            refund.signature,
        );
        let data = BatchSettlement::multicallCall {
            data: vec![claim.into(), refund_data],
        }
        .abi_encode();
        let kinds = vec![
            claim_kind(&targets),
            JournalKind::Refund {
                channel_id,
                amount: refund.amount,
            },
        ];
        let check = ReplayCheck::ClaimAndRefund {
            targets,
            channel_id,
            nonce: refund.nonce,
        };
        let mut entries = self.execute(WHAT, data.into(), kinds, check).await?;
        match (entries.pop(), entries.pop()) {
            (Some(refund), Some(claim)) => Ok((claim, refund)),
            _ => Err(Error::Journal {
                journal_id: 0,
                reason: "claim_and_refund journaled fewer than two entries".into(),
            }),
        }
    }

    /// A server-completed `refund` payload: `claim_and_refund` when it carries claims, else
    /// `refund_with_signature`. The payload must carry `amount`, `refundNonce` and the
    /// authorizer's signatures.
    pub async fn refund_payload(&self, p: &RefundPayload) -> Result<JournalEntry> {
        const WHAT: &str = "refund payload";
        let (Some(amount), Some(nonce), Some(sig)) = (
            p.amount,
            p.refund_nonce,
            p.refund_authorizer_signature.clone(),
        ) else {
            return refused(
                WHAT,
                "needs amount, refundNonce and refundAuthorizerSignature",
            );
        };
        let refund = SignedRefund {
            config: p.channel_config,
            amount,
            nonce,
            signature: sig,
        };
        match (&p.claims, &p.claim_authorizer_signature) {
            (Some(rows), Some(csig)) if !rows.is_empty() => self
                .claim_and_refund(rows.clone(), csig.clone(), refund)
                .await
                .map(|(_, r)| r),
            (Some(rows), None) if !rows.is_empty() => {
                refused(WHAT, "claims without claimAuthorizerSignature")
            }
            _ => {
                self.refund_with_signature(&refund.config, amount, nonce, refund.signature)
                    .await
            }
        }
    }

    /// `deposit(config, amount, erc3009_collector, collector_data)`: relays a payer's deposit
    /// through the configured ERC-3009 collector.
    pub async fn deposit(
        &self,
        config: &ChannelConfig,
        amount: u128,
        collector_data: Bytes,
    ) -> Result<JournalEntry> {
        let collector = self.reader().config().erc3009_collector;
        self.deposit_via(config, amount, collector, collector_data)
            .await
    }

    /// `deposit` through any collector. For the ERC-3009 collector, the authorization's nonce is
    /// remembered so that recovery can tell whether the deposit already happened.
    pub async fn deposit_via(
        &self,
        config: &ChannelConfig,
        amount: u128,
        collector: Address,
        collector_data: Bytes,
    ) -> Result<JournalEntry> {
        const WHAT: &str = "deposit";
        if amount == 0 {
            return refused(WHAT, "zero deposit");
        }
        let channel_id = self.reader().domain().channel_id(config);
        let authorization_nonce = (collector == self.reader().config().erc3009_collector)
            .then(|| <(U256, U256, U256, Bytes)>::abi_decode_params(&collector_data).ok())
            .flatten()
            .map(|(_, _, salt, _)| deposit_nonce(channel_id, salt));
        let data = BatchSettlement::depositCall {
            config: config.into(),
            amount,
            collector,
            collectorData: collector_data,
        }
        .abi_encode();
        self.single(
            WHAT,
            data.into(),
            JournalKind::Deposit { channel_id, amount },
            ReplayCheck::Deposit {
                channel_id,
                token: config.token,
                payer: config.payer,
                authorization_nonce,
            },
        )
        .await
    }

    /// A client's `deposit` payload (ERC-3009 authorization) relayed through the collector.
    pub async fn deposit_payload(&self, p: &DepositPayload) -> Result<JournalEntry> {
        let Some(auth) = &p.deposit.authorization.erc3009_authorization else {
            return refused(
                "deposit",
                "only ERC-3009 deposit authorizations are supported",
            );
        };
        let data = paychan_bindings::convert::erc3009_collector_data(
            auth.valid_after,
            auth.valid_before,
            auth.salt,
            &auth.signature,
        );
        self.deposit(&p.channel_config, p.deposit.amount, data)
            .await
    }

    fn check_rows(&self, what: &'static str, rows: &[ClaimRow]) -> Result<Vec<ClaimTarget>> {
        if rows.is_empty() {
            return refused(what, "no claim rows");
        }
        let domain = self.reader().domain();
        Ok(rows
            .iter()
            .map(|r| ClaimTarget {
                channel_id: domain.channel_id(&r.voucher.channel),
                total_claimed: r.total_claimed,
            })
            .collect())
    }

    // ---- the journaled pipeline ---------------------------------------------------------------

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

    /// Allocates journal ids and writes the entries `Prepared` with the stored action.
    async fn prepare(
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
        let record = ActionRecord {
            what: what.to_owned(),
            from: self.address(),
            ids: ids.clone(),
            to: call.to,
            data: call.data.clone(),
            check,
            nonce: None,
            gas_limit: 0,
            attempts: Vec::new(),
            prior_hashes: Vec::new(),
            raw: None,
            bumps: 0,
        };
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

    /// `Some(reason)` when the chain shows the action is already done (or pointless), so it must
    /// not be re-sent.
    async fn superseded(&self, check: &ReplayCheck) -> Result<Option<String>> {
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

    async fn finish_confirmed(
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

    async fn finish_failed(
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

    async fn close(&self, done: &[JournalEntry]) -> Result<()> {
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

    // ---- restart reconciliation ---------------------------------------------------------------

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
            match stored {
                Some(StoredAction::Primary(_)) if self.is_active(e.id) => {
                    report
                        .still_open
                        .push((e.id, "in flight in this relayer".to_owned()));
                }
                Some(StoredAction::Primary(rec)) if rec.from == self.address() => {
                    let entries: Vec<JournalEntry> = rec
                        .ids
                        .iter()
                        .filter_map(|id| open.iter().find(|o| o.id == *id).cloned())
                        .collect();
                    if let JournalState::Sent { nonce, .. } = e.state {
                        max_nonce = Some(max_nonce.map_or(nonce, |m| m.max(nonce)));
                    }
                    actions.push((entries, *rec));
                }
                Some(StoredAction::Companion { primary })
                    if open.iter().any(|o| o.id == primary) => {}
                _ => {
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
            let resent = done.first().is_some_and(|e| match &e.state {
                JournalState::Confirmed { tx_hash: h, .. } => !all_hashes.contains(h),
                _ => false,
            });
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
        if head.saturating_add(1) < block.saturating_add(self.reader().config().confirmations)
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
    let done = targets
        .iter()
        .zip(&states)
        .all(|(t, s)| s.total_claimed >= t.total_claimed);
    Ok(done.then(|| {
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

fn claim_kind(targets: &[ClaimTarget]) -> JournalKind {
    JournalKind::Claim {
        claims: targets
            .iter()
            .map(|t| (t.channel_id, t.total_claimed))
            .collect(),
    }
}

fn refund_call(config: &ChannelConfig, amount: u128, nonce: U256, sig: Bytes) -> Bytes {
    BatchSettlement::refundWithSignatureCall {
        config: config.into(),
        amount,
        nonce,
        receiverAuthorizerSignature: sig,
    }
    .abi_encode()
    .into()
}

fn refused<T>(what: &'static str, reason: impl Into<String>) -> Result<T> {
    Err(Error::Refused {
        what,
        reason: reason.into(),
    })
}

/// The static label of a stored action (labels are a closed set).
fn static_what(what: &str) -> &'static str {
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
}
