//! The payee engine: one paid request goes `begin` → (handler) → `commit` or `abort`.
//!
//! | step | what happens | a crash here costs |
//! | --- | --- | --- |
//! | verify | offer matched, channel bound, voucher checked against the record (fresh chain state, cached key) | nothing: no state changed |
//! | reserve | the channel's lock is held by the [`Ticket`]; deposits are executed on chain first | nothing charged; a deposit already on chain stays in the payer's channel (the payer's money, refundable) |
//! | handler | the caller runs the paid work | the payee did the work unpaid (at most one request's maximum per channel); the client saw no acknowledgement and may retry the same voucher |
//! | commit | the new charged total is written and made durable (group commit) | if the write reached the disk, the store is one request ahead of what the client saw: the next voucher gets a corrective 402 carrying the client's own signature, which it verifies and adopts; otherwise as above |
//! | respond | `PAYMENT-RESPONSE` returned | nothing: the charge is durable before the response exists |
//!
//! So the worst case per channel is one request's maximum, and nothing acknowledged is lost.

use std::{sync::Arc, time::Duration};

use alloy_primitives::{Address, B256};
use paychan_core::{
    ErrorCode, Network, Rejection,
    batch::{
        BatchDomain, BatchPayload, BatchRequirements, ChannelSnapshot, ResponseExtra,
        payee::{self, ChannelRecord, CheckContext, OnchainState, Refusal, Reservation},
    },
    sig::{Backend, LocalSigner},
    x402::{PaymentPayload, PaymentRequirements, SettlementResponse, X402_VERSION},
};
use paychan_store::{Store, WriteBatch};
use tokio::sync::{OwnedMutexGuard, broadcast};

use crate::{
    events::EngineEvent,
    metrics::Metrics,
    slots::{Slot, Slots},
    traits::{Clock, OnchainSource, PaymentFacilitator, SystemClock},
};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The escrow's domain on this chain.
    pub domain: BatchDomain,
    /// How old mirrored on-chain state may be for a local voucher check (default 30 s).
    pub max_onchain_age: Duration,
    /// How long a request waits for a busy channel before `channel_busy` (default 250 ms: long
    /// enough to ride out a mirror update or a quick retry, short enough not to queue behind a
    /// slow paid request on the same channel).
    pub busy_wait: Duration,
    /// No new charges on a channel whose timed withdrawal can be finalized within this time
    /// (default 6 minutes, just above the settlement side's default last-call margin of 5).
    pub withdrawal_guard: Duration,
    /// Signature backend.
    pub backend: Backend,
    /// Channels kept in memory (default 100,000); the rest are read from the store on demand.
    pub cache_capacity: usize,
    /// The receiver authorizer's key, when this server holds it (signs refunds and claims).
    pub receiver_authorizer: Option<LocalSigner>,
}

impl EngineConfig {
    /// Defaults for the escrow at `domain`.
    pub fn new(domain: BatchDomain) -> Self {
        Self {
            domain,
            max_onchain_age: Duration::from_secs(30),
            busy_wait: Duration::from_millis(250),
            withdrawal_guard: Duration::from_secs(6 * 60),
            backend: Backend::default(),
            cache_capacity: 100_000,
            receiver_authorizer: None,
        }
    }
}

/// Why the engine did not serve or commit a request: the rejection, and the offer to send in the
/// 402 (a corrective offer when the client must resynchronize).
#[derive(Debug, Clone)]
pub struct Decline {
    /// What went wrong, with its x402 code.
    pub rejection: Rejection,
    /// The requirements to put in the 402; `None` means the route's plain offer.
    pub requirements: Option<Box<PaymentRequirements>>,
}

impl Decline {
    fn plain(r: Rejection) -> Self {
        Self {
            rejection: r,
            requirements: None,
        }
    }
    fn code(code: ErrorCode, msg: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self::plain(Rejection::new(code, msg))
    }
}

impl From<Rejection> for Decline {
    fn from(r: Rejection) -> Self {
        Self::plain(r)
    }
}

/// What `begin` decided.
#[derive(Debug)]
pub enum Begin {
    /// Run the handler, then [`Engine::commit`] or [`Engine::abort`] the ticket.
    Serve(Box<Ticket>),
    /// The payment was a payment operation (refund) and is complete; do not run the handler.
    Done(SettlementResponse),
}

/// A reserved request: holds the channel until committed or dropped (dropping aborts).
#[derive(Debug)]
pub struct Ticket {
    guard: OwnedMutexGuard<Slot>,
    record: ChannelRecord,
    reservation: Reservation,
    network: Network,
    deposit: Option<(B256, u128)>,
}

impl Ticket {
    /// The most the request may be charged.
    pub fn max_charge(&self) -> u128 {
        self.reservation.max_charge
    }

    /// The channel.
    pub fn channel_id(&self) -> B256 {
        self.record.channel_id
    }

    /// The payer.
    pub fn payer(&self) -> Address {
        self.record.config.payer
    }
}

/// The record of `id` with `state` as its mirrored chain state: the slot's record brought up to
/// date, or a new record for a channel the store does not know.
fn with_state(
    slot: &Slot,
    id: B256,
    config: paychan_core::batch::ChannelConfig,
    state: OnchainState,
    now: u64,
) -> ChannelRecord {
    match slot.record.clone() {
        Some(mut r) => {
            r.sync_onchain(state, now);
            r
        }
        None => ChannelRecord::from_chain(id, config, state, now),
    }
}

/// Deposits remembered as `settlement_pending`, at most this many.
const MAX_PENDING_DEPOSITS: usize = 10_000;

/// Identifies one deposit authorization: its channel and ERC-3009 salt (or, for other
/// authorizations, the voucher signature).
fn deposit_key(channel_id: B256, d: &paychan_core::batch::DepositPayload) -> B256 {
    let salt = d
        .deposit
        .authorization
        .erc3009_authorization
        .as_ref()
        .map(|a| B256::from(a.salt));
    let mut buf = channel_id.to_vec();
    match salt {
        Some(s) => buf.extend_from_slice(s.as_slice()),
        None => buf.extend_from_slice(&d.voucher.signature),
    }
    alloy_primitives::keccak256(buf)
}

struct Inner<S, C, F, K> {
    config: EngineConfig,
    pending_deposits: std::sync::Mutex<std::collections::HashSet<B256>>,
    store: S,
    chain: C,
    facilitator: F,
    clock: K,
    slots: Slots,
    metrics: Metrics,
    events: broadcast::Sender<EngineEvent>,
}

/// The payee engine. Cheap to clone.
pub struct Engine<S, C, F, K = SystemClock> {
    inner: Arc<Inner<S, C, F, K>>,
}

impl<S, C, F, K> Clone for Engine<S, C, F, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S, C, F, K> std::fmt::Debug for Engine<S, C, F, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("domain", &self.inner.config.domain)
            .finish_non_exhaustive()
    }
}

fn snapshot_from(
    extra: Option<&paychan_core::x402::JsonObject>,
    nested: bool,
) -> Option<ChannelSnapshot> {
    let m = extra?;
    let v = if nested {
        m.get("channelState")?.clone()
    } else {
        serde_json::Value::Object(m.clone())
    };
    serde_json::from_value(v).ok()
}

impl<S: Store, C: OnchainSource, F: PaymentFacilitator> Engine<S, C, F, SystemClock> {
    /// An engine on the system clock.
    pub fn new(config: EngineConfig, store: S, chain: C, facilitator: F) -> Self {
        Self::with_clock(config, store, chain, facilitator, SystemClock)
    }
}

impl<S: Store, C: OnchainSource, F: PaymentFacilitator, K: Clock> Engine<S, C, F, K> {
    /// An engine with an explicit clock.
    pub fn with_clock(config: EngineConfig, store: S, chain: C, facilitator: F, clock: K) -> Self {
        let (events, _) = broadcast::channel(4096);
        let slots = Slots::new(config.cache_capacity);
        Self {
            inner: Arc::new(Inner {
                config,
                pending_deposits: Default::default(),
                store,
                chain,
                facilitator,
                clock,
                slots,
                metrics: Metrics::default(),
                events,
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Channels currently held in memory.
    pub fn cached_channels(&self) -> usize {
        self.inner.slots.len()
    }

    /// Events for the settlement side. A receiver that falls behind loses the oldest events
    /// (`RecvError::Lagged`); the settlement side also scans the store, so nothing is lost for good.
    pub fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
        self.inner.events.subscribe()
    }

    fn now(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    fn ctx<'a>(&'a self, req: &'a BatchRequirements, now_ms: u64) -> CheckContext<'a> {
        CheckContext {
            domain: &self.inner.config.domain,
            requirements: req,
            now_ms,
            max_onchain_age_ms: u64::try_from(self.inner.config.max_onchain_age.as_millis())
                .unwrap_or(u64::MAX),
            backend: self.inner.config.backend,
        }
    }

    fn guard_ms(&self) -> u64 {
        u64::try_from(self.inner.config.withdrawal_guard.as_millis()).unwrap_or(u64::MAX)
    }

    fn decline(&self, d: Decline) -> Decline {
        self.inner.metrics.reject(d.rejection.code.as_str());
        d
    }

    async fn lock(&self, id: B256) -> Result<OwnedMutexGuard<Slot>, Decline> {
        let slot = self.inner.slots.get(id);
        let wait = self.inner.config.busy_wait;
        let guard = if wait.is_zero() {
            slot.try_lock_owned().ok()
        } else {
            tokio::time::timeout(wait, slot.lock_owned()).await.ok()
        };
        guard.ok_or_else(|| {
            Metrics::inc(&self.inner.metrics.busy);
            Decline::code(
                ErrorCode::ChannelBusy,
                "another request holds this channel; retry shortly",
            )
        })
    }

    async fn load(&self, guard: &mut Slot, id: B256) -> Result<(), Decline> {
        if !guard.loaded {
            guard.record = self.inner.store.channel(id).await.map_err(|e| {
                Decline::code(
                    ErrorCode::VerificationStateUnavailable,
                    format!("store read failed: {e}"),
                )
            })?;
            guard.loaded = true;
        }
        Ok(())
    }

    async fn read_chain(&self, id: B256) -> Result<OnchainState, Decline> {
        Metrics::inc(&self.inner.metrics.chain_reads);
        self.inner
            .chain
            .channel_state(id)
            .await
            .map_err(|e| Decline::code(ErrorCode::ChannelStateReadFailed, e.to_string()))
    }

    /// A record for `id`, refreshed from chain if it is missing or stale.
    async fn fresh_record(
        &self,
        guard: &mut Slot,
        id: B256,
        config: &paychan_core::batch::ChannelConfig,
        now: u64,
    ) -> Result<ChannelRecord, Decline> {
        let max_age =
            u64::try_from(self.inner.config.max_onchain_age.as_millis()).unwrap_or(u64::MAX);
        match guard.record.clone() {
            Some(r) if r.is_fresh(now, max_age) => Ok(r),
            Some(mut r) => {
                r.sync_onchain(self.read_chain(id).await?, now);
                Ok(r)
            }
            None => Ok(ChannelRecord::from_chain(
                id,
                *config,
                self.read_chain(id).await?,
                now,
            )),
        }
    }

    /// Starts a paid request: checks the payment against `offer` and reserves the channel, or
    /// completes a payment operation (refund) at once.
    pub async fn begin(
        &self,
        p: &PaymentPayload<BatchPayload>,
        offer: &BatchRequirements,
    ) -> Result<Begin, Decline> {
        Metrics::inc(&self.inner.metrics.requests);
        let r = self.begin_inner(p, offer).await;
        r.map_err(|d| self.decline(d))
    }

    /// A reservation made: caches the signer key it recovered, counts it, and hands out the
    /// ticket that holds the channel until commit or abort.
    fn reserved(
        &self,
        mut guard: OwnedMutexGuard<Slot>,
        record: ChannelRecord,
        reservation: Reservation,
        offer: &BatchRequirements,
        deposit: Option<(B256, u128)>,
    ) -> Begin {
        if let Some(k) = &reservation.recovered_key {
            guard.key = Some(k.clone());
        }
        Metrics::inc(&self.inner.metrics.reserved);
        Begin::Serve(Box::new(Ticket {
            guard,
            record,
            reservation,
            network: offer.network.clone(),
            deposit,
        }))
    }

    async fn begin_inner(
        &self,
        p: &PaymentPayload<BatchPayload>,
        offer: &BatchRequirements,
    ) -> Result<Begin, Decline> {
        if p.x402_version != X402_VERSION {
            return Err(Decline::code(
                ErrorCode::InvalidX402Version,
                format!("x402Version {} is not 2", p.x402_version),
            ));
        }
        offer.matches_accepted(&p.accepted)?;
        let domain = self.inner.config.domain;
        match &p.payload {
            BatchPayload::Voucher(v) => {
                let id = v.voucher.channel_id;
                let mut guard = self.lock(id).await?;
                self.load(&mut guard, id).await?;
                // A stored record was bound when it was created: the same config under the same
                // id needs no re-hashing, only the offer's terms. Anything else is hashed first
                // (channel id before terms, as the reference facilitator orders them).
                if guard
                    .record
                    .as_ref()
                    .is_some_and(|r| r.channel_id == id && r.config == v.channel_config)
                {
                    payee::check_offer_terms(&v.channel_config, offer)?;
                } else {
                    payee::check_binding(&v.channel_config, &v.voucher, &domain, offer)?;
                }
                let now = self.now();
                let mut record = self
                    .fresh_record(&mut guard, id, &v.channel_config, now)
                    .await?;
                let res = match payee::check_paid(
                    &record,
                    guard.key.as_ref(),
                    &v.voucher,
                    None,
                    &self.ctx(offer, now),
                ) {
                    Err(Refusal::NeedsOnchainState) => {
                        // The clock moved past the freshness bound between reads: refresh once.
                        record.sync_onchain(self.read_chain(id).await?, now);
                        payee::check_paid(
                            &record,
                            guard.key.as_ref(),
                            &v.voucher,
                            None,
                            &self.ctx(offer, now),
                        )
                    }
                    other => other,
                };
                let res = self.refusal_to_decline(res, offer, &record)?;
                payee::check_withdrawal_window(&record, now, self.guard_ms())?;
                Ok(self.reserved(guard, record, res, offer, None))
            }
            BatchPayload::Deposit(d) => {
                let id = payee::check_binding(&d.channel_config, &d.voucher, &domain, offer)?;
                let mut guard = self.lock(id).await?;
                self.load(&mut guard, id).await?;
                let generic = offer.to_generic();
                // A deposit whose settlement answered `settlement_pending` may already be on
                // chain; verifying it again would refuse its (now used) authorization. Its retry
                // goes straight to settle, which reconciles with the earlier transaction.
                let pending_key = deposit_key(id, d);
                let was_pending = self
                    .inner
                    .pending_deposits
                    .lock()
                    .is_ok_and(|p| p.contains(&pending_key));
                let mut checked = None;
                if !was_pending {
                    let verify = self
                        .inner
                        .facilitator
                        .verify(p, &generic)
                        .await
                        .map_err(|e| {
                            Decline::code(ErrorCode::DepositSimulationFailed, e.to_string())
                        })?;
                    if !verify.is_valid {
                        let code = verify.invalid_reason.unwrap_or(ErrorCode::DepositPayload);
                        let msg = verify
                            .invalid_message
                            .unwrap_or_else(|| code.description().to_owned());
                        return Err(Decline::code(code, msg));
                    }
                    let now = self.now();
                    let state = match snapshot_from(verify.extra.as_ref(), false) {
                        Some(s) => OnchainState::from(&s),
                        None => self.read_chain(id).await?,
                    };
                    let record = with_state(&guard, id, d.channel_config, state, now);
                    // The voucher is checked against the balance the deposit will make, before
                    // the deposit is executed: a wrong voucher never moves the payer's money.
                    let res = payee::check_paid(
                        &record,
                        guard.key.as_ref(),
                        &d.voucher,
                        Some(d.deposit.amount),
                        &self.ctx(offer, now),
                    );
                    let res = self.refusal_to_decline(res, offer, &record)?;
                    // A deposit into a channel that is being withdrawn would be served too late to claim.
                    payee::check_withdrawal_window(&record, now, self.guard_ms())?;
                    checked = Some((record.clone(), res));
                }
                // Execute the deposit before serving: the handler never runs against money that
                // is not in the channel yet.
                let settled = self
                    .inner
                    .facilitator
                    .settle(p, &generic)
                    .await
                    .map_err(|e| {
                        Decline::code(ErrorCode::DepositTransactionFailed, e.to_string())
                    })?;
                if !settled.success {
                    let code = settled
                        .error_reason
                        .unwrap_or(ErrorCode::DepositTransactionFailed);
                    if code == ErrorCode::SettlementPending
                        && let Ok(mut pending) = self.inner.pending_deposits.lock()
                        && pending.len() < MAX_PENDING_DEPOSITS
                    {
                        pending.insert(pending_key);
                    }
                    let msg = settled
                        .error_message
                        .unwrap_or_else(|| code.description().to_owned());
                    return Err(Decline::code(code, msg));
                }
                if let Ok(mut pending) = self.inner.pending_deposits.lock() {
                    pending.remove(&pending_key);
                }
                Metrics::inc(&self.inner.metrics.deposits);
                let tx: B256 = settled.transaction.parse().unwrap_or_default();
                let after = match snapshot_from(settled.extra.as_ref(), true) {
                    Some(s) => OnchainState::from(&s),
                    None => self.read_chain(id).await?,
                };
                let now = self.now();
                let (record, res) = match checked {
                    Some((mut record, res)) => {
                        record.sync_onchain(after, now);
                        (record, res)
                    }
                    None => {
                        // The deposit is on chain now: check the voucher against that state (its
                        // amount is already in the balance).
                        let record = with_state(&guard, id, d.channel_config, after, now);
                        let res = payee::check_paid(
                            &record,
                            guard.key.as_ref(),
                            &d.voucher,
                            Some(0),
                            &self.ctx(offer, now),
                        );
                        let res = self.refusal_to_decline(res, offer, &record)?;
                        (record, res)
                    }
                };
                Ok(self.reserved(guard, record, res, offer, Some((tx, d.deposit.amount))))
            }
            BatchPayload::Refund(r) => self.refund(p, r, offer).await.map(Begin::Done),
            BatchPayload::Claim(_) | BatchPayload::Settle(_) => Err(Decline::code(
                ErrorCode::PayloadType,
                format!("a client cannot send a {} payload", p.payload.kind()),
            )),
        }
    }

    fn refusal_to_decline<T>(
        &self,
        r: Result<T, Refusal>,
        offer: &BatchRequirements,
        record: &ChannelRecord,
    ) -> Result<T, Decline> {
        match r {
            Ok(t) => Ok(t),
            Err(Refusal::Reject(r)) => Err(r.into()),
            Err(Refusal::Corrective) => {
                Metrics::inc(&self.inner.metrics.corrective);
                Err(Decline {
                    rejection: Rejection::new(
                        ErrorCode::CumulativeAmountMismatch,
                        format!(
                            "voucher must be for charged {} plus this request",
                            record.charged
                        ),
                    ),
                    requirements: Some(Box::new(payee::corrective_requirements(offer, record))),
                })
            }
            Err(Refusal::NeedsOnchainState) => Err(Decline::code(
                ErrorCode::ChannelStateReadFailed,
                "channel state could not be refreshed",
            )),
            Err(Refusal::NeedsFacilitator) => Err(Decline::code(
                ErrorCode::VoucherSignature,
                "vouchers of smart-contract payers (payerAuthorizer zero, EIP-1271) are not supported by this server; use an EOA payerAuthorizer",
            )),
        }
    }

    async fn refund(
        &self,
        p: &PaymentPayload<BatchPayload>,
        r: &paychan_core::batch::RefundPayload,
        offer: &BatchRequirements,
    ) -> Result<SettlementResponse, Decline> {
        let domain = self.inner.config.domain;
        let id = payee::check_binding(&r.channel_config, &r.voucher, &domain, offer)?;
        let mut guard = self.lock(id).await?;
        self.load(&mut guard, id).await?;
        let now = self.now();
        // A refund moves money: always decide on freshly read chain state.
        let state = self.read_chain(id).await?;
        let mut record = with_state(&guard, id, r.channel_config, state, now);
        let (plan, key) = self.refusal_to_decline(
            payee::check_refund(&record, guard.key.as_ref(), r, &self.ctx(offer, now)),
            offer,
            &record,
        )?;
        if let Some(k) = key {
            guard.key = Some(k);
        }
        let completed = payee::complete_refund(
            &domain,
            r,
            &plan,
            self.inner.config.receiver_authorizer.as_ref(),
        )?;
        let enriched = PaymentPayload {
            x402_version: p.x402_version,
            resource: p.resource.clone(),
            accepted: p.accepted.clone(),
            payload: BatchPayload::Refund(completed),
            extensions: p.extensions.clone(),
        };
        let settled = self
            .inner
            .facilitator
            .settle(&enriched, &offer.to_generic())
            .await
            .map_err(|e| Decline::code(ErrorCode::RefundTransactionFailed, e.to_string()))?;
        if !settled.success {
            let code = settled
                .error_reason
                .unwrap_or(ErrorCode::RefundTransactionFailed);
            let msg = settled
                .error_message
                .unwrap_or_else(|| code.description().to_owned());
            return Err(Decline::code(code, msg));
        }
        let after = match snapshot_from(settled.extra.as_ref(), true) {
            Some(s) => OnchainState::from(&s),
            None => self.read_chain(id).await?,
        };
        let refunded = settled
            .amount
            .as_deref()
            .and_then(|a| a.parse::<u128>().ok())
            .unwrap_or(plan.amount);
        payee::apply_refund(&mut record, &plan, after, self.now());
        self.inner
            .store
            .commit(WriteBatch::channel(record.clone()))
            .await
            .map_err(|e| {
                Decline::code(
                    ErrorCode::UnexpectedSettleError,
                    format!("refund done on chain, record not saved: {e}"),
                )
            })?;
        guard.record = Some(record.clone());
        Metrics::inc(&self.inner.metrics.refunds);
        let _ = self.inner.events.send(EngineEvent::Refunded {
            channel_id: id,
            amount: refunded,
        });
        let tx: B256 = settled.transaction.parse().unwrap_or_default();
        Ok(payee::refund_response(
            &record,
            &offer.network,
            tx,
            refunded,
        ))
    }

    /// Commits the handler's actual price (≤ the ticket's maximum) durably and returns the
    /// `PAYMENT-RESPONSE`. On error nothing is charged and the client may retry the same voucher.
    pub async fn commit(
        &self,
        ticket: Box<Ticket>,
        actual: u128,
    ) -> Result<SettlementResponse, Decline> {
        let Ticket {
            mut guard,
            mut record,
            reservation,
            network,
            deposit,
        } = *ticket;
        let now = self.now();
        let charge = payee::commit(&mut record, &reservation, actual, now)
            .map_err(|r| self.decline(r.into()))?;
        if charge.amount > 0 || deposit.is_some() {
            let batch = WriteBatch::channel(record.clone());
            let started = std::time::Instant::now();
            self.inner.store.commit(batch).await.map_err(|e| {
                Metrics::inc(&self.inner.metrics.aborted);
                tracing::error!(target: "paychan_engine", channel = %record.channel_id, error = %e, "charge not saved");
                self.decline(Decline::code(ErrorCode::UnexpectedSettleError, format!("charge could not be saved: {e}")))
            })?;
            self.inner.metrics.commit_nanos.fetch_add(
                u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        guard.record = Some(record.clone());
        guard.loaded = true;
        drop(guard);
        Metrics::inc(&self.inner.metrics.committed);
        self.inner.metrics.add_charged(charge.amount);
        if charge.amount > 0 {
            let _ = self.inner.events.send(EngineEvent::Charged {
                channel_id: charge.channel_id,
                amount: charge.amount,
                charged_cumulative: charge.charged_cumulative,
                unclaimed: record.unclaimed(),
            });
        }
        if record.needs_claim_now() {
            let _ = self.inner.events.send(EngineEvent::NeedsClaim {
                channel_id: record.channel_id,
                deadline: record.withdrawal_deadline().unwrap_or(0),
                unclaimed: record.unclaimed(),
            });
        }
        Ok(match deposit {
            Some((tx, amount)) => payee::deposit_response(&record, &charge, &network, tx, amount),
            None => payee::voucher_response(&record, &charge, &network),
        })
    }

    /// Abandons a reserved request: nothing is charged.
    pub fn abort(&self, ticket: Box<Ticket>) {
        Metrics::inc(&self.inner.metrics.aborted);
        drop(ticket);
    }

    /// The channel's record, from memory or the store.
    pub async fn channel(&self, id: B256) -> Result<Option<ChannelRecord>, paychan_store::Error> {
        let slot = self.inner.slots.get(id);
        let guard = slot.lock().await;
        if guard.loaded {
            return Ok(guard.record.clone());
        }
        drop(guard);
        self.inner.store.channel(id).await
    }

    /// Mirrors new on-chain state of a channel (from the chain watcher or after a claim) into its
    /// record, and raises `NeedsClaim` if a withdrawal now threatens unclaimed charges. Channels
    /// the store does not know are ignored (their state is read when first paid).
    pub async fn apply_onchain(
        &self,
        id: B256,
        state: OnchainState,
    ) -> Result<(), paychan_store::Error> {
        let slot = self.inner.slots.get(id);
        let mut guard = slot.lock().await;
        if !guard.loaded {
            guard.record = self.inner.store.channel(id).await?;
            guard.loaded = true;
        }
        let Some(mut record) = guard.record.clone() else {
            return Ok(());
        };
        record.sync_onchain(state, self.now());
        self.inner
            .store
            .commit(WriteBatch::channel(record.clone()))
            .await?;
        guard.record = Some(record.clone());
        if record.needs_claim_now() {
            let _ = self.inner.events.send(EngineEvent::NeedsClaim {
                channel_id: id,
                deadline: record.withdrawal_deadline().unwrap_or(0),
                unclaimed: record.unclaimed(),
            });
        }
        Ok(())
    }
}

/// The charge recorded in a `PAYMENT-RESPONSE`, for clients and tests.
pub fn charged_amount(resp: &SettlementResponse) -> Option<u128> {
    let extra: ResponseExtra =
        serde_json::from_value(serde_json::Value::Object(resp.extra.clone()?)).ok()?;
    extra.charged_amount
}
