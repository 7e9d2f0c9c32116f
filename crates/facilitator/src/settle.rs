//! `/settle`: executes `deposit`, `claim`, `settle` and `refund` payloads on chain through the
//! journaled relayer, at most once per action (see [`crate::records`]).

use alloy::{
    primitives::{Address, B256, Bytes, U256},
    sol_types::SolEvent,
};
use paychan_bindings::BatchSettlement;
use paychan_chain::SignedRefund;
use paychan_core::{
    ErrorCode, Rejection,
    batch::{
        BatchPayload, BatchRequirements, ChannelConfig, ChannelSnapshot, ClaimPayload, ClaimRow,
        ClaimVoucher, DepositPayload, RefundPayload, SettleActionPayload, VoucherFields, payee,
    },
    hexser::parse_address_bytes,
    redact::redact_urls,
    x402::{PaymentPayload, PaymentRequirements, SettlementResponse},
};
use paychan_store::{JournalEntry, JournalState, Store};
use serde_json::Value;

use crate::{
    Facilitator, TARGET,
    facilitator::{chain_read_failed, snapshot, to_object, truncate},
    records::{self, Action, Key, Record},
    verify::{payer_of, typed_payload},
};

/// A settle that went through.
#[derive(Debug, Clone)]
struct Settled {
    /// The transaction; `None` when nothing had to be sent.
    tx: Option<B256>,
    /// The response's `amount` (`""` for claims).
    amount: String,
    payer: Option<Address>,
    channel_state: Option<ChannelSnapshot>,
}

/// A settle that did not.
#[derive(Debug, Clone)]
struct Failure {
    code: ErrorCode,
    message: String,
    payer: Option<Address>,
    tx: Option<B256>,
}

impl From<Rejection> for Failure {
    fn from(r: Rejection) -> Self {
        Self {
            code: r.code,
            message: r.message.into_owned(),
            payer: None,
            tx: None,
        }
    }
}

impl Failure {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            payer: None,
            tx: None,
        }
    }

    fn payer(mut self, payer: Address) -> Self {
        self.payer.get_or_insert(payer);
        self
    }
}

type Outcome = Result<Settled, Failure>;

impl Action {
    /// The codes of a failed simulation and of a failed transaction of this action.
    fn codes(self) -> (ErrorCode, ErrorCode) {
        match self {
            Action::Deposit => (
                ErrorCode::DepositSimulationFailed,
                ErrorCode::DepositTransactionFailed,
            ),
            Action::Claim => (
                ErrorCode::ClaimSimulationFailed,
                ErrorCode::ClaimTransactionFailed,
            ),
            Action::Refund => (
                ErrorCode::RefundSimulationFailed,
                ErrorCode::RefundTransactionFailed,
            ),
            Action::Settle => (
                ErrorCode::SettleSimulationFailed,
                ErrorCode::SettleTransactionFailed,
            ),
        }
    }
}

/// Maps a relayer error to the action's code. A client sees the code and a short, generic
/// message (plus the transaction, when one exists); what the node or the RPC client said can quote
/// the RPC URL, so it goes to the log only, with URLs cut out.
fn chain_failure(action: Action, e: paychan_chain::Error) -> Failure {
    use paychan_chain::Error as E;
    let (simulation, transaction) = action.codes();
    let detail = redact_urls(&e.to_string());
    match e {
        // the escrow's decoded revert: contract data, and what the caller needs to fix the payload
        E::Reverted { reason, .. } => {
            Failure::new(simulation, format!("simulation reverted: {reason}"))
        }
        E::TxReverted { tx_hash, .. } => {
            tracing::warn!(target: TARGET, ?action, error = %detail, "transaction reverted");
            Failure {
                code: ErrorCode::TransactionReverted,
                message: format!("transaction {tx_hash} reverted on chain"),
                payer: None,
                tx: Some(tx_hash),
            }
        }
        E::Unconfirmed { tx_hash, .. } => Failure {
            code: ErrorCode::SettlementPending,
            message: format!(
                "transaction {tx_hash} is not confirmed yet; retry the same request to reconcile"
            ),
            payer: None,
            tx: Some(tx_hash),
        },
        E::Store(_) => {
            tracing::error!(target: TARGET, ?action, error = %detail, "relayer journal failed");
            Failure::new(
                ErrorCode::UnexpectedSettleError,
                "internal error of the facilitator's journal",
            )
        }
        _ => {
            tracing::warn!(target: TARGET, ?action, error = %detail, "sending failed");
            Failure::new(
                transaction,
                "the transaction could not be sent (chain or RPC failure); retry later",
            )
        }
    }
}

fn confirmed_tx(entry: &JournalEntry) -> Result<B256, Failure> {
    match &entry.state {
        JournalState::Confirmed { tx_hash, .. } => Ok(*tx_hash),
        other => {
            tracing::warn!(target: TARGET, journal_id = entry.id, state = ?other, "journal entry did not end confirmed");
            Err(Failure::new(
                ErrorCode::WaitForReceiptFailed,
                format!("journal entry {} did not end confirmed", entry.id),
            ))
        }
    }
}

fn store_failure(e: paychan_store::Error) -> Failure {
    tracing::error!(target: TARGET, error = %redact_urls(&e.to_string()), "settlement record failed");
    Failure::new(
        ErrorCode::UnexpectedSettleError,
        "internal error of the facilitator's settlement records",
    )
}

/// What a stored record means for a retry.
enum Prior {
    /// Nothing done yet (or a failed attempt): go ahead.
    None,
    /// Done in `tx`; the record's amount.
    Done(B256, String),
}

impl<S: Store> Facilitator<S> {
    /// `POST /settle`: executes the payload on chain.
    ///
    /// | `type` | on chain | `amount` | `extra` |
    /// | --- | --- | --- | --- |
    /// | `deposit` | verified (as [`verify`](Self::verify)), then `deposit(config, amount, collector, data)` through the ERC-3009 collector | deposited | `channelState` after |
    /// | `claim` | every row's payer voucher checked (signature, `totalClaimed ≤ maxClaimableAmount`), the whole batch refused at the first bad row; then `claimWithSignature(rows, sig)` (signed here when the key is held); nothing when every row is already claimed | `""` | — |
    /// | `settle` | `settle(receiver, token)`; nothing when nothing is unsettled | transferred (`"0"` for a no-op) | — |
    /// | `refund` | the payer's voucher and every claim row checked, what the voucher signs over claimed first (see `settle_refund`); `multicall(claimWithSignature, refundWithSignature)` when there are claims, else `refundWithSignature` | refunded | `channelState` after |
    ///
    /// A retry of a request that already went through answers with the same transaction and
    /// moves nothing; one whose transaction is still unconfirmed answers `settlement_pending`.
    pub async fn settle(
        &self,
        payload: &PaymentPayload<BatchPayload>,
        requirements: &PaymentRequirements,
    ) -> SettlementResponse {
        let r = match self.check_envelope(payload.x402_version, &payload.accepted, requirements) {
            Ok(()) => self.settle_payload(&payload.payload, requirements).await,
            Err(e) => Err(Failure::from(e)),
        };
        let r = r.map_err(|f| match payer_of(&payload.payload) {
            Some(p) => f.payer(p),
            None => f,
        });
        self.settle_answer(payload.payload.kind(), r, requirements)
    }

    /// [`settle`](Self::settle) of a payload whose scheme part is still JSON (the HTTP API).
    pub async fn settle_untyped(
        &self,
        payload: &PaymentPayload<Value>,
        requirements: &PaymentRequirements,
    ) -> SettlementResponse {
        if let Err(e) = self.check_envelope(payload.x402_version, &payload.accepted, requirements) {
            return self.settle_answer("?", Err(e.into()), requirements);
        }
        match typed_payload(&payload.payload) {
            Ok(p) => {
                let r = self.settle_payload(&p, requirements).await;
                let r = r.map_err(|f| match payer_of(&p) {
                    Some(payer) => f.payer(payer),
                    None => f,
                });
                self.settle_answer(p.kind(), r, requirements)
            }
            Err(e) => self.settle_answer("?", Err(e.into()), requirements),
        }
    }

    fn settle_answer(
        &self,
        kind: &str,
        r: Outcome,
        requirements: &PaymentRequirements,
    ) -> SettlementResponse {
        match r {
            Ok(s) => {
                tracing::info!(
                    target: TARGET,
                    kind,
                    tx = ?s.tx,
                    amount = %s.amount,
                    channel = ?s.channel_state.as_ref().map(|c| c.channel_id),
                    "settled"
                );
                SettlementResponse {
                    success: true,
                    error_reason: None,
                    error_message: None,
                    payer: s.payer.map(|p| p.to_checksum(None)),
                    transaction: s.tx.map(|t| t.to_string()).unwrap_or_default(),
                    network: requirements.network.clone(),
                    amount: Some(s.amount),
                    extra: s
                        .channel_state
                        .and_then(|c| to_object(&serde_json::json!({ "channelState": c }))),
                }
            }
            Err(f) => {
                tracing::warn!(
                    target: TARGET,
                    kind,
                    code = %f.code,
                    tx = ?f.tx,
                    message = %f.message,
                    "settle failed"
                );
                SettlementResponse {
                    success: false,
                    error_reason: Some(f.code),
                    error_message: Some(truncate(f.message)),
                    payer: f.payer.map(|p| p.to_checksum(None)),
                    transaction: f.tx.map(|t| t.to_string()).unwrap_or_default(),
                    network: requirements.network.clone(),
                    amount: None,
                    extra: None,
                }
            }
        }
    }

    async fn settle_payload(&self, p: &BatchPayload, req: &PaymentRequirements) -> Outcome {
        match p {
            BatchPayload::Deposit(d) => self.settle_deposit(d, req).await,
            BatchPayload::Claim(c) => self.settle_claim(c).await,
            BatchPayload::Settle(s) => self.settle_sweep(s).await,
            BatchPayload::Refund(r) => self.settle_refund(r, req).await,
            BatchPayload::Voucher(_) => Err(Failure::new(
                ErrorCode::PayloadType,
                "a voucher payload has nothing to settle on chain (the server claims vouchers with a claim payload)",
            )),
        }
    }

    // ---- records ------------------------------------------------------------------------------

    /// Runs a relayer action, recording it as pending if it is not confirmed in time.
    async fn journaled<F>(&self, key: &Key, action: Action, fut: F) -> Result<B256, Failure>
    where
        F: Future<Output = paychan_chain::Result<JournalEntry>>,
    {
        match fut.await {
            Ok(entry) => confirmed_tx(&entry),
            Err(e) => {
                if let paychan_chain::Error::Unconfirmed {
                    journal_id,
                    tx_hash,
                    ..
                } = &e
                {
                    records::save(
                        self.inner.relayer.store(),
                        key,
                        &Record::Pending {
                            journal_id: *journal_id,
                            tx_hash: *tx_hash,
                        },
                    )
                    .await
                    .map_err(store_failure)?;
                }
                Err(chain_failure(action, e))
            }
        }
    }

    /// What an earlier attempt of this action did. A pending one is reconciled with the
    /// relayer's journal (finishing it with [`paychan_chain::Relayer::recover`] if needed).
    async fn prior(&self, key: &Key) -> Result<Prior, Failure> {
        let store = self.inner.relayer.store();
        match records::load(store, key).await.map_err(store_failure)? {
            None => Ok(Prior::None),
            Some(Record::Done { tx_hash, amount }) => Ok(Prior::Done(tx_hash, amount)),
            Some(Record::Pending {
                journal_id,
                tx_hash,
            }) => {
                let mut entry = store
                    .journal_entry(journal_id)
                    .await
                    .map_err(store_failure)?;
                if entry.as_ref().is_some_and(JournalEntry::is_open) {
                    tracing::info!(target: TARGET, journal_id, tx = %tx_hash, "reconciling a pending settlement");
                    if let Err(e) = self.inner.relayer.recover().await {
                        tracing::warn!(target: TARGET, journal_id, error = %redact_urls(&e.to_string()), "recovery failed");
                    }
                    entry = store
                        .journal_entry(journal_id)
                        .await
                        .map_err(store_failure)?;
                }
                match entry.map(|e| e.state) {
                    Some(JournalState::Confirmed { tx_hash, .. }) => {
                        Ok(Prior::Done(tx_hash, String::new()))
                    }
                    Some(JournalState::Prepared | JournalState::Sent { .. }) => Err(Failure {
                        code: ErrorCode::SettlementPending,
                        message: format!(
                            "transaction {tx_hash} (journal entry {journal_id}) is not confirmed yet; retry later"
                        ),
                        payer: None,
                        tx: Some(tx_hash),
                    }),
                    // failed (reverted, superseded) or unknown: nothing happened; start over
                    Some(JournalState::Failed { .. }) | None => {
                        records::clear(store, key).await.map_err(store_failure)?;
                        Ok(Prior::None)
                    }
                }
            }
        }
    }

    async fn done(&self, key: &Key, tx: B256, amount: &str) {
        let rec = Record::Done {
            tx_hash: tx,
            amount: amount.to_owned(),
        };
        if let Err(e) = records::save(self.inner.relayer.store(), key, &rec).await {
            // The action is done on chain; a retry would find it done by the chain's own rules.
            tracing::error!(target: TARGET, tx = %tx, error = %redact_urls(&e.to_string()), "settlement record not saved");
        }
    }

    async fn state_after(&self, id: B256) -> Option<ChannelSnapshot> {
        match self.inner.reader.channel_state(id).await {
            Ok(s) => Some(snapshot(id, &s)),
            Err(e) => {
                tracing::warn!(target: TARGET, channel = %id, error = %redact_urls(&e.to_string()), "channel state after settle not read");
                None
            }
        }
    }

    /// The sum of `amount` over the escrow's `E` events in `tx` that `pick` selects.
    async fn event_amount<E: SolEvent>(
        &self,
        tx: B256,
        pick: impl Fn(&E) -> Option<u128>,
    ) -> Option<u128> {
        let receipt = match self.inner.reader.receipt(tx).await {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(target: TARGET, tx = %tx, error = %redact_urls(&e.to_string()), "receipt not read");
                return None;
            }
        };
        let escrow = self.inner.reader.config().escrow;
        let mut found = None;
        for log in receipt.logs().iter().filter(|l| l.address() == escrow) {
            if let Ok(ev) = log.log_decode::<E>()
                && let Some(a) = pick(&ev.inner.data)
            {
                found = Some(found.unwrap_or(0u128).saturating_add(a));
            }
        }
        found
    }

    // ---- deposit ------------------------------------------------------------------------------

    async fn settle_deposit(
        &self,
        d: &DepositPayload,
        requirements: &PaymentRequirements,
    ) -> Outcome {
        let req = BatchRequirements::from_generic(requirements)?;
        let config = &d.channel_config;
        let id = payee::check_binding(config, &d.voucher, &self.inner.domain, &req)?;
        let Some(auth) = &d.deposit.authorization.erc3009_authorization else {
            return Err(Failure::new(
                ErrorCode::Erc3009AuthorizationRequired,
                "deposit.authorization.erc3009Authorization is missing",
            ));
        };
        let nonce = paychan_core::batch::eip712::deposit_nonce(id, auth.salt);
        let key = Key::deposit(config.token, config.payer, nonce, d.deposit.amount);
        let _guard = self.lock(&key).await;
        if let Prior::Done(tx, amount) = self.prior(&key).await? {
            tracing::info!(target: TARGET, channel = %id, tx = %tx, "deposit already settled: answering with its transaction");
            let amount = if amount.is_empty() {
                d.deposit.amount.to_string()
            } else {
                amount
            };
            self.done(&key, tx, &amount).await;
            return Ok(Settled {
                tx: Some(tx),
                amount,
                payer: Some(config.payer),
                channel_state: self.state_after(id).await,
            });
        }
        let check = self.verify_deposit(d, &req).await?;
        let tx = self
            .journaled(&key, Action::Deposit, self.inner.relayer.deposit_payload(d))
            .await?;
        let amount = d.deposit.amount.to_string();
        self.done(&key, tx, &amount).await;
        let after = match self.state_after(id).await {
            Some(s) => s,
            None => ChannelSnapshot {
                balance: check.before.balance.saturating_add(d.deposit.amount),
                ..check.before
            },
        };
        Ok(Settled {
            tx: Some(tx),
            amount,
            payer: Some(config.payer),
            channel_state: Some(after),
        })
    }

    // ---- claim --------------------------------------------------------------------------------

    /// The receiver authorizer's `ClaimBatch` signature over `rows`, signed here when absent.
    fn claim_signature(&self, rows: &[ClaimRow], given: Option<&Bytes>) -> Result<Bytes, Failure> {
        if let Some(sig) = given {
            return Ok(sig.clone());
        }
        let Some(first) = rows.first() else {
            return Err(Failure::new(ErrorCode::ClaimPayload, "no claim rows"));
        };
        let domain = &self.inner.domain;
        let digest = domain.claim_batch_digest(&payee::claim_entries(domain, rows));
        Ok(self.authorize(first.voucher.channel.receiver_authorizer, &digest)?)
    }

    fn check_rows(rows: &[ClaimRow], code: ErrorCode) -> Result<(), Failure> {
        let Some(first) = rows.first() else {
            return Err(Failure::new(code, "no claim rows"));
        };
        let authorizer = first.voucher.channel.receiver_authorizer;
        if rows
            .iter()
            .any(|r| r.voucher.channel.receiver_authorizer != authorizer)
        {
            return Err(Failure::new(
                code,
                "every claim row must share one receiverAuthorizer",
            ));
        }
        Ok(())
    }

    /// Every row is backed by its payer's own signature: the voucher is signed by the row's
    /// channel's payer authorizer (or the payer, as the escrow checks it) and the row claims no
    /// more than the voucher's ceiling. The first row that fails refuses the whole batch, named by
    /// its index and channel, before anything is signed or sent: the receiver-authorizer key must
    /// never vouch for amounts the caller merely asserts.
    async fn check_row_vouchers(&self, rows: &[ClaimRow], code: ErrorCode) -> Result<(), Failure> {
        let domain = &self.inner.domain;
        for (i, row) in rows.iter().enumerate() {
            let config = &row.voucher.channel;
            let id = domain.channel_id(config);
            let ceiling = row.voucher.max_claimable_amount;
            if row.total_claimed > ceiling {
                return Err(Failure::new(
                    code.clone(),
                    format!(
                        "claim row {i} (channel {id}): totalClaimed {} exceeds the voucher's maxClaimableAmount {ceiling}",
                        row.total_claimed
                    ),
                ));
            }
            let voucher = VoucherFields {
                channel_id: id,
                max_claimable_amount: ceiling,
                signature: row.signature.clone(),
            };
            if let Err(e) = self.check_voucher_signature(config, id, &voucher).await {
                return Err(Failure::new(
                    e.code,
                    format!("claim row {i} (channel {id}): {}", e.message),
                ));
            }
        }
        Ok(())
    }

    async fn settle_claim(&self, c: &ClaimPayload) -> Outcome {
        Self::check_rows(&c.claims, ErrorCode::ClaimPayload)?;
        self.check_row_vouchers(&c.claims, ErrorCode::ClaimPayload)
            .await?;
        let sig = self.claim_signature(&c.claims, c.claim_authorizer_signature.as_ref())?;
        let domain = &self.inner.domain;
        let targets: Vec<(B256, u128)> = c
            .claims
            .iter()
            .map(|r| (domain.channel_id(&r.voucher.channel), r.total_claimed))
            .collect();
        let key = Key::claim(&targets);
        let _guard = self.lock(&key).await;
        if let Prior::Done(tx, _) = self.prior(&key).await? {
            tracing::info!(target: TARGET, tx = %tx, "claim already settled: answering with its transaction");
            self.done(&key, tx, "").await;
            return Ok(Settled {
                tx: Some(tx),
                amount: String::new(),
                payer: None,
                channel_state: None,
            });
        }
        // Claims are cumulative: rows at or below what is claimed on chain do nothing. When every
        // row is such a row, nothing is sent (no gas for a no-op).
        let ids: Vec<B256> = targets.iter().map(|(id, _)| *id).collect();
        let states = self.inner.reader.channel_states(&ids).await.map_err(|e| {
            chain_read_failed(ErrorCode::ChannelStateReadFailed, "the channel states", &e)
        })?;
        if targets
            .iter()
            .zip(&states)
            .all(|((_, target), s)| *target <= s.total_claimed)
        {
            tracing::info!(target: TARGET, rows = targets.len(), "claim is already on chain: nothing sent");
            return Ok(Settled {
                tx: None,
                amount: String::new(),
                payer: None,
                channel_state: None,
            });
        }
        let tx = self
            .journaled(
                &key,
                Action::Claim,
                self.inner
                    .relayer
                    .claim_with_signature(c.claims.clone(), sig),
            )
            .await?;
        self.done(&key, tx, "").await;
        Ok(Settled {
            tx: Some(tx),
            amount: String::new(),
            payer: None,
            channel_state: None,
        })
    }

    // ---- settle -------------------------------------------------------------------------------

    async fn settled_amount(&self, tx: B256, receiver: Address, token: Address) -> Option<u128> {
        self.event_amount::<BatchSettlement::Settled>(tx, |e| {
            (e.receiver == receiver && e.token == token).then_some(e.amount)
        })
        .await
    }

    async fn settle_sweep(&self, s: &SettleActionPayload) -> Outcome {
        let (receiver, token) = (s.receiver, s.token);
        if receiver == Address::ZERO || token == Address::ZERO {
            return Err(Failure::new(
                ErrorCode::SettlePayload,
                "receiver and token must be non-zero addresses",
            ));
        }
        let key = Key::settle(receiver, token);
        let _guard = self.lock(&key).await;
        // Only pending sweeps are recorded: a later settle of new claims is a new action.
        if let Prior::Done(tx, _) = self.prior(&key).await? {
            records::clear(self.inner.relayer.store(), &key)
                .await
                .map_err(store_failure)?;
            let amount = self.settled_amount(tx, receiver, token).await.unwrap_or(0);
            return Ok(Settled {
                tx: Some(tx),
                amount: amount.to_string(),
                payer: None,
                channel_state: None,
            });
        }
        let (claimed, settled) = self
            .inner
            .reader
            .receiver_state(receiver, token)
            .await
            .map_err(|e| {
                chain_read_failed(ErrorCode::RpcReadFailed, "the receiver's totals", &e)
            })?;
        if claimed <= settled {
            tracing::info!(target: TARGET, %receiver, %token, "nothing to settle: nothing sent");
            return Ok(Settled {
                tx: None,
                amount: "0".into(),
                payer: None,
                channel_state: None,
            });
        }
        let tx = self
            .journaled(
                &key,
                Action::Settle,
                self.inner.relayer.settle(receiver, token),
            )
            .await?;
        let amount = match self.settled_amount(tx, receiver, token).await {
            Some(a) => a,
            None => claimed - settled,
        };
        Ok(Settled {
            tx: Some(tx),
            amount: amount.to_string(),
            payer: None,
            channel_state: None,
        })
    }

    // ---- refund -------------------------------------------------------------------------------

    /// The channel's terms against the requirements: fully when they are complete
    /// batch-settlement requirements, else (the minimal requirements a server's channel manager
    /// sends) receiver and token only.
    fn check_refund_terms(
        config: &ChannelConfig,
        req: &PaymentRequirements,
    ) -> Result<(), Rejection> {
        match BatchRequirements::from_generic(req) {
            Ok(r) => payee::check_offer_terms(config, &r),
            Err(_) => {
                if parse_address_bytes(&req.pay_to) != Some(config.receiver) {
                    return Err(Rejection::code(ErrorCode::ReceiverMismatch));
                }
                if parse_address_bytes(&req.asset) != Some(config.token) {
                    return Err(Rejection::code(ErrorCode::TokenMismatch));
                }
                Ok(())
            }
        }
    }

    async fn refunded_amount(&self, tx: B256, channel_id: B256) -> Option<u128> {
        self.event_amount::<BatchSettlement::Refunded>(tx, |e| {
            (e.channelId == channel_id).then_some(e.amount)
        })
        .await
    }

    /// A server-completed refund. Nothing in it is taken on the caller's word:
    ///
    /// * the payer asked for it: its zero-charge voucher is signed by this channel's payer
    ///   authorizer (or the payer, as the escrow checks it), else `voucher_signature`; so nobody
    ///   can refund a channel that is not theirs to refund;
    /// * every claim row is this channel's and backed by a valid payer voucher;
    /// * what the payer's voucher signs over (`maxClaimableAmount`) is claimed before anything is
    ///   refunded: a claim row for it is added (and signed here) when the payload has none, and a
    ///   payload whose claims cover less is refused (`refund_payload`), so a refund never returns
    ///   money the payer's own signature owes the receiver;
    /// * the `Refund` signed here is for at most what is refundable after those claims (an
    ///   asserted amount above it is capped, as the escrow caps a server-signed one).
    async fn settle_refund(&self, r: &RefundPayload, req: &PaymentRequirements) -> Outcome {
        let config = &r.channel_config;
        let (Some(amount), Some(nonce)) = (r.amount, r.refund_nonce) else {
            return Err(Failure::new(
                ErrorCode::RefundPayload,
                "a refund to settle needs amount and refundNonce (completed by the server)",
            ));
        };
        if amount == 0 {
            return Err(Failure::new(
                ErrorCode::RefundAmountInvalid,
                "refund amount must be positive",
            ));
        }
        let domain = &self.inner.domain;
        let id = domain.channel_id(config);
        if id != r.voucher.channel_id {
            return Err(Failure::new(
                ErrorCode::ChannelIdMismatch,
                format!(
                    "channelConfig hashes to {id}, not the voucher's {}",
                    r.voucher.channel_id
                ),
            ));
        }
        Self::check_refund_terms(config, req)?;
        // Signed data first (no chain state needed for an ECDSA payer authorizer).
        self.check_voucher_signature(config, id, &r.voucher)
            .await
            .map_err(|e| Failure::new(e.code, format!("the refund's voucher: {}", e.message)))?;
        let mut claims = r.claims.clone().unwrap_or_default();
        if let Some((i, other)) = claims
            .iter()
            .enumerate()
            .map(|(i, c)| (i, domain.channel_id(&c.voucher.channel)))
            .find(|(_, c)| *c != id)
        {
            return Err(Failure::new(
                ErrorCode::RefundPayload,
                format!("claim row {i} is for channel {other}, not the refunded channel {id}"),
            ));
        }
        self.check_row_vouchers(&claims, ErrorCode::RefundPayload)
            .await?;
        let key = Key::refund(id, nonce, amount);
        let _guard = self.lock(&key).await;
        if let Prior::Done(tx, recorded) = self.prior(&key).await? {
            tracing::info!(target: TARGET, channel = %id, tx = %tx, "refund already settled: answering with its transaction");
            let refunded = match recorded.parse::<u128>() {
                Ok(a) => a,
                Err(_) => self.refunded_amount(tx, id).await.unwrap_or(0),
            };
            self.done(&key, tx, &refunded.to_string()).await;
            return Ok(Settled {
                tx: Some(tx),
                amount: refunded.to_string(),
                payer: Some(config.payer),
                channel_state: self.state_after(id).await,
            });
        }
        let before = self.inner.reader.channel_state(id).await.map_err(|e| {
            chain_read_failed(ErrorCode::ChannelStateReadFailed, "the channel state", &e)
        })?;
        // Rule 11: the signature must be for the nonce the escrow expects now.
        if nonce != before.refund_nonce {
            return Err(Failure::new(
                ErrorCode::RefundSimulationFailed,
                format!(
                    "InvalidRefundNonce: the payload's refundNonce {nonce} is not the channel's {}",
                    before.refund_nonce
                ),
            ));
        }
        let owed = r.voucher.max_claimable_amount;
        // Rule 10, relaxed for refunds: a zero-charge voucher may equal the claimed total.
        if owed < before.total_claimed {
            return Err(Failure::new(
                ErrorCode::CumulativeBelowClaimed,
                format!(
                    "the refund's voucher ({owed}) is below the claimed total {}",
                    before.total_claimed
                ),
            ));
        }
        let covered = claims
            .iter()
            .map(|c| c.total_claimed)
            .fold(before.total_claimed, u128::max);
        if owed > covered {
            if !claims.is_empty() || r.claim_authorizer_signature.is_some() {
                return Err(Failure::new(
                    ErrorCode::RefundPayload,
                    format!(
                        "the claims cover {covered} of the {owed} the payer's voucher signs over: claim the voucher before refunding"
                    ),
                ));
            }
            // The payer's voucher is itself the claim (the spec's zero-charge voucher claim).
            claims.push(ClaimRow {
                voucher: ClaimVoucher {
                    channel: *config,
                    max_claimable_amount: owed,
                },
                signature: r.voucher.signature.clone(),
                total_claimed: owed,
            });
        }
        let after_claims = covered.max(owed);
        let available = before.balance.saturating_sub(after_claims);
        if available == 0 {
            return Err(Failure::new(
                ErrorCode::RefundNoBalance,
                format!(
                    "nothing to refund: balance {} with {after_claims} claimed",
                    before.balance
                ),
            ));
        }
        let (signed_amount, refund_sig) = match &r.refund_authorizer_signature {
            // signed by the server for its own amount; the escrow caps it to what is unclaimed
            Some(s) => (amount, s.clone()),
            None => {
                let a = amount.min(available);
                let sig = self.authorize(
                    config.receiver_authorizer,
                    &domain.refund_digest(id, nonce, a),
                )?;
                (a, sig)
            }
        };
        let signed = SignedRefund {
            config: *config,
            amount: signed_amount,
            nonce,
            signature: refund_sig,
        };
        let relayer = &self.inner.relayer;
        let tx = if claims.is_empty() {
            self.journaled(
                &key,
                Action::Refund,
                relayer.refund_with_signature(
                    config,
                    signed_amount,
                    nonce,
                    signed.signature.clone(),
                ),
            )
            .await?
        } else {
            let claim_sig = self.claim_signature(&claims, r.claim_authorizer_signature.as_ref())?;
            self.journaled(&key, Action::Refund, async {
                relayer
                    .claim_and_refund(claims.clone(), claim_sig, signed)
                    .await
                    .map(|(_, refund)| refund)
            })
            .await?
        };
        let refunded = match self.refunded_amount(tx, id).await {
            Some(a) => a,
            None => signed_amount.min(available),
        };
        self.done(&key, tx, &refunded.to_string()).await;
        let after = match self.state_after(id).await {
            Some(s) => s,
            None => ChannelSnapshot {
                balance: before.balance.saturating_sub(refunded),
                total_claimed: after_claims,
                refund_nonce: nonce.saturating_add(U256::from(1)),
                ..snapshot(id, &before)
            },
        };
        Ok(Settled {
            tx: Some(tx),
            amount: refunded.to_string(),
            payer: Some(config.payer),
            channel_state: Some(after),
        })
    }
}
