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

//!
//! The durable part of a commit (and everything after a refund's checks) runs in its own task,
//! which owns the channel's lock: a caller that goes away mid-commit (a client disconnecting)
//! cannot leave the in-memory record behind what the write-ahead log holds.
//!
//! Cheap checks come first. A voucher for a channel not held in memory is bound (its config
//! hashes to its id and carries the offer's terms) and its signature checked before the
//! channel's lock is taken, its record read or the chain asked; channels found absent or empty
//! on chain are remembered for a short while (negative cache); chain reads are capped, and
//! channels the store does not know only get a share of the cap, waited for a bounded time. Deposits and
//! refunds relayed for a payer spend the relayer's gas: they are rate-limited per channel and
//! have minimum sizes, checked before the facilitator is called.

use std::{sync::Arc, time::Duration};

use alloy_primitives::{Address, B256};
use paychan_core::{
    ErrorCode, Network, Rejection,
    batch::{
        BatchDomain, BatchPayload, BatchRequirements, ChannelConfig, ChannelSnapshot,
        DepositPayload, RefundPayload, ResponseExtra, VoucherFields, VoucherPayload,
        payee::{
            self, ChannelRecord, Charge, CheckContext, OnchainState, RefundPlan, Refusal,
            Reservation,
        },
    },
    ports::{Clock, OnchainSource, PaymentFacilitator, SourceError},
    redact::redact_urls,
    sig::{Backend, LocalSigner, Signature, SignerKey},
    x402::{PaymentPayload, PaymentRequirements, SettlementResponse, VerifyResponse, X402_VERSION},
};
use paychan_store::{Store, SystemClock, WriteBatch};
use tokio::sync::{OwnedMutexGuard, broadcast};

use crate::{
    events::EngineEvent,
    limits::{NegativeCache, RateLimit, RateLimiter, ReadGate},
    metrics::{CheckKind, Metrics},
    slots::{Slot, Slots},
};

/// The `tracing` target of the engine's log lines.
const TARGET: &str = "paychan_engine";

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
    /// How long a channel found absent or empty (balance 0) on chain is refused with
    /// `channel_not_found` without another chain read (default 2 s: a flood of vouchers for one
    /// empty channel costs one read per 2 s, and a payer whose deposit just landed waits at most
    /// that long). Zero disables the negative cache.
    pub negative_cache_ttl: Duration,
    /// Channels the negative cache remembers at most (default 100,000; about 5 MiB). When it
    /// is full, further empty channels are not remembered and their vouchers read the chain,
    /// under [`chain_read_limit`](Self::chain_read_limit).
    pub negative_cache_capacity: usize,
    /// Chain reads in flight at most (default 32). Reads for channels the store knows wait for
    /// a turn (they are paying channels, serialized per channel).
    pub chain_read_limit: usize,
    /// Of [`chain_read_limit`](Self::chain_read_limit), how many reads may be for channels the
    /// store does not know (default 16: half, so paying channels always keep the other half).
    /// Such a read waits at most [`busy_wait`](Self::busy_wait) for a turn of that share, then
    /// the voucher is refused with `channel_state_read_failed`, which is retryable.
    pub unknown_chain_read_limit: usize,
    /// Deposits relayed per channel (default 3 per 60 s: a payer opening a channel and topping
    /// it up twice in a minute is served; a loop of deposits is not). A deposit retried after
    /// `settlement_pending` is not counted again. Refused with `channel_busy` (retryable) and
    /// the wait in the message.
    pub deposit_rate: RateLimit,
    /// Refunds relayed per channel (default 1 per 60 s: a refund costs the relayer a
    /// transaction, usually with a claim). Refused with `channel_busy` (retryable) and the wait
    /// in the message.
    pub refund_rate: RateLimit,
    /// The smallest deposit relayed (default `None`: 10 × the offer's per-request amount, the
    /// reference implementation's `minDeposit` default). It applies to every deposit: one the
    /// request needs (the channel cannot cover its voucher) and a top-up alike, so no payer can
    /// make the relayer pay a deposit's gas for less. `Some(0)` disables it. Refused with
    /// `deposit_below_min_deposit` before the facilitator is called.
    pub min_deposit: Option<u128>,
    /// The smallest partial refund relayed (default `None`: 10 × the offer's per-request
    /// amount). A refund of everything refundable is always allowed (it empties the channel,
    /// so it cannot be repeated). `Some(0)` disables it. Refused with `refund_amount_invalid`
    /// before the facilitator is called.
    pub min_refund: Option<u128>,
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
            negative_cache_ttl: Duration::from_secs(2),
            negative_cache_capacity: 100_000,
            chain_read_limit: 32,
            unknown_chain_read_limit: 16,
            deposit_rate: RateLimit::new(3, Duration::from_secs(60)),
            refund_rate: RateLimit::new(1, Duration::from_secs(60)),
            min_deposit: None,
            min_refund: None,
        }
    }
}

/// The default minimum deposit and partial refund, in multiples of the offer's amount.
const DEFAULT_MIN_MULTIPLE: u128 = 10;

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
    /// An outside failure (chain, facilitator, store): the client gets the code and a generic
    /// message; the detail, which may quote an RPC URL with its API key, goes to the log only
    /// and redacted.
    fn outside(
        code: ErrorCode,
        generic: &'static str,
        channel: B256,
        detail: &dyn std::fmt::Display,
    ) -> Self {
        tracing::warn!(target: TARGET, channel = %channel, code = %code, error = %redact_urls(&detail.to_string()), "{generic}");
        Self::code(code, generic)
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

    /// The charged total this request builds on (its voucher's ceiling less the maximum).
    pub fn charged(&self) -> u128 {
        self.reservation.base
    }

    /// The voucher's ceiling (its signed `maxClaimableAmount`).
    pub fn ceiling(&self) -> u128 {
        self.reservation.ceiling
    }

    /// The channel's balance on chain as of the check (after the deposit the request carried,
    /// if any).
    pub fn balance(&self) -> u128 {
        self.record.onchain.balance
    }

    /// Whether the request carried a deposit.
    pub fn deposited(&self) -> bool {
        self.deposit.is_some()
    }
}

/// The record of `id` with `state` as its mirrored chain state: the slot's record brought up to
/// date, or a new record for a channel the store does not know.
fn with_state(
    slot: &Slot,
    id: B256,
    config: ChannelConfig,
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
fn deposit_key(channel_id: B256, d: &DepositPayload) -> B256 {
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

/// What the cheap checks learned about a voucher's channel before its lock was taken.
struct Screened {
    /// The payer authorizer's key, recovered from the voucher.
    key: Option<SignerKey>,
    /// On-chain state read for a channel the store does not know.
    state: Option<OnchainState>,
}

struct Inner<S, C, F, K> {
    config: EngineConfig,
    pending_deposits: std::sync::Mutex<std::collections::HashSet<B256>>,
    store: S,
    chain: C,
    facilitator: F,
    clock: K,
    slots: Slots,
    negative: NegativeCache,
    deposits: RateLimiter,
    refunds: RateLimiter,
    reads: ReadGate,
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

/// The channel snapshot of a facilitator's `verify` answer: its `extra` is the snapshot.
fn verify_snapshot(resp: &VerifyResponse) -> Option<ChannelSnapshot> {
    let extra = resp.extra.as_ref()?;
    serde_json::from_value(serde_json::Value::Object(extra.clone())).ok()
}

/// The channel snapshot of a facilitator's `settle` answer: `extra.channelState`.
fn settle_snapshot(resp: &SettlementResponse) -> Option<ChannelSnapshot> {
    let state = resp.extra.as_ref()?.get("channelState")?;
    serde_json::from_value(state.clone()).ok()
}

/// How the failures of one facilitator call read in a 402.
struct FacilitatorCall {
    /// The code when the call itself fails (the facilitator unreachable, say).
    failed: ErrorCode,
    /// The client's message then (the detail goes to the log).
    generic: &'static str,
    /// The code of a refusal that names none.
    refused: ErrorCode,
}

const VERIFY_DEPOSIT: FacilitatorCall = FacilitatorCall {
    failed: ErrorCode::DepositSimulationFailed,
    generic: "the deposit could not be verified",
    refused: ErrorCode::DepositPayload,
};

const SETTLE_DEPOSIT: FacilitatorCall = FacilitatorCall {
    failed: ErrorCode::DepositTransactionFailed,
    generic: "the deposit could not be executed",
    refused: ErrorCode::DepositTransactionFailed,
};

const SETTLE_REFUND: FacilitatorCall = FacilitatorCall {
    failed: ErrorCode::RefundTransactionFailed,
    generic: "the refund could not be executed",
    refused: ErrorCode::RefundTransactionFailed,
};

/// A facilitator's answer: accepted, or refused with its code and message.
trait Verdict: Sized {
    /// `Err((code, message))` when the facilitator refused.
    fn accepted(self) -> Result<Self, (Option<ErrorCode>, Option<String>)>;
}

impl Verdict for VerifyResponse {
    fn accepted(self) -> Result<Self, (Option<ErrorCode>, Option<String>)> {
        if self.is_valid {
            Ok(self)
        } else {
            Err((self.invalid_reason, self.invalid_message))
        }
    }
}

impl Verdict for SettlementResponse {
    fn accepted(self) -> Result<Self, (Option<ErrorCode>, Option<String>)> {
        if self.success {
            Ok(self)
        } else {
            Err((self.error_reason, self.error_message))
        }
    }
}

/// A facilitator call's answer, or the [`Decline`] for it. A failed call is an outside failure
/// (`call.failed`, generic message). A refusal carries the facilitator's code (`call.refused`
/// if it named none) and the code's description, not its message (a remote facilitator's
/// message may quote its own RPC errors): the message goes to the log.
fn facilitator_answer<T: Verdict>(
    answer: Result<T, SourceError>,
    call: &FacilitatorCall,
    channel: B256,
) -> Result<T, Decline> {
    let answer =
        answer.map_err(|e| Decline::outside(call.failed.clone(), call.generic, channel, &e))?;
    answer.accepted().map_err(|(code, message)| {
        let code = code.unwrap_or_else(|| call.refused.clone());
        if let Some(m) = message {
            tracing::info!(target: TARGET, channel = %channel, code = %code, message = %redact_urls(&m), "facilitator refused");
        }
        let description = code.description().to_owned();
        Decline::code(code, description)
    })
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
        let negative =
            NegativeCache::new(config.negative_cache_ttl, config.negative_cache_capacity);
        let deposits = RateLimiter::new(config.deposit_rate);
        let refunds = RateLimiter::new(config.refund_rate);
        let reads = ReadGate::new(config.chain_read_limit, config.unknown_chain_read_limit);
        Self {
            inner: Arc::new(Inner {
                config,
                pending_deposits: Default::default(),
                store,
                chain,
                facilitator,
                clock,
                slots,
                negative,
                deposits,
                refunds,
                reads,
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
            max_onchain_age_ms: self.max_age_ms(),
            backend: self.inner.config.backend,
        }
    }

    fn max_age_ms(&self) -> u64 {
        u64::try_from(self.inner.config.max_onchain_age.as_millis()).unwrap_or(u64::MAX)
    }

    fn guard_ms(&self) -> u64 {
        u64::try_from(self.inner.config.withdrawal_guard.as_millis()).unwrap_or(u64::MAX)
    }

    fn decline(&self, d: Decline) -> Decline {
        self.inner.metrics.reject(&d.rejection.code);
        // The caller's request span, when it has the field (the HTTP server's has).
        tracing::Span::current().record("code", d.rejection.code.as_str());
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
            guard.record = self.read_store(id).await?;
            guard.loaded = true;
        }
        Ok(())
    }

    async fn read_store(&self, id: B256) -> Result<Option<ChannelRecord>, Decline> {
        self.inner.store.channel(id).await.map_err(|e| {
            Decline::outside(
                ErrorCode::VerificationStateUnavailable,
                "the channel's record could not be read; retry shortly",
                id,
                &e,
            )
        })
    }

    /// Reads a channel's on-chain state under the read cap. `known`: the store has a record of
    /// the channel (it waits for a turn); otherwise it waits at most the busy wait for one.
    /// A channel found empty goes into the negative cache.
    async fn read_chain(&self, id: B256, known: bool) -> Result<OnchainState, Decline> {
        let turn = if known {
            self.inner.reads.known().await
        } else {
            self.inner.reads.unknown(self.inner.config.busy_wait).await
        };
        let Some(_turn) = turn else {
            Metrics::inc(&self.inner.metrics.chain_reads_refused);
            return Err(Decline::code(
                ErrorCode::ChannelStateReadFailed,
                "too many channel-state reads in flight; retry shortly",
            ));
        };
        Metrics::inc(&self.inner.metrics.chain_reads);
        let state = self.inner.chain.channel_state(id).await.map_err(|e| {
            Decline::outside(
                ErrorCode::ChannelStateReadFailed,
                "the channel's on-chain state could not be read; retry shortly",
                id,
                &e,
            )
        })?;
        if state.balance == 0 {
            self.inner.negative.insert(id, self.now());
        }
        Ok(state)
    }

    /// The channel's on-chain state from a facilitator's snapshot, or else read from chain.
    async fn snapshot_or_read(
        &self,
        snapshot: Option<ChannelSnapshot>,
        id: B256,
    ) -> Result<OnchainState, Decline> {
        match snapshot {
            Some(s) => Ok(OnchainState::from(&s)),
            None => self.read_chain(id, true).await,
        }
    }

    /// A record for `id`, refreshed from chain if it is missing or stale.
    async fn fresh_record(
        &self,
        guard: &mut Slot,
        id: B256,
        config: &ChannelConfig,
        now: u64,
    ) -> Result<ChannelRecord, Decline> {
        match guard.record.clone() {
            Some(r) if r.is_fresh(now, self.max_age_ms()) => Ok(r),
            Some(mut r) => {
                r.sync_onchain(self.read_chain(id, true).await?, now);
                Ok(r)
            }
            None => Ok(ChannelRecord::from_chain(
                id,
                *config,
                self.read_chain(id, false).await?,
                now,
            )),
        }
    }

    /// The voucher's signature recovers to the config's payer authorizer: the check that needs
    /// no channel state, done before any lock, store read or chain read on a channel not held
    /// in memory. Returns the recovered key for the slot's cache.
    fn precheck_signature(
        &self,
        config: &ChannelConfig,
        voucher: &VoucherFields,
    ) -> Result<SignerKey, Decline> {
        if config.payer_authorizer == Address::ZERO {
            return Err(eip1271_unsupported());
        }
        let sig = Signature::from_bytes(&voucher.signature)
            .map_err(|e| Decline::code(ErrorCode::VoucherSignature, e.to_string()))?;
        let digest = self
            .inner
            .config
            .domain
            .voucher_digest(voucher.channel_id, voucher.max_claimable_amount);
        self.inner
            .config
            .backend
            .recover_expecting(&digest, &sig, config.payer_authorizer)
            .map_err(|e| Decline::code(ErrorCode::VoucherSignature, e.to_string()))
    }

    /// A refusal by a per-channel rate limit, `wait_ms` before the next operation is allowed.
    fn rate_limited(&self, what: &str, limit: RateLimit, wait_ms: u64) -> Decline {
        Metrics::inc(&self.inner.metrics.rate_limited);
        // No spec code says "rate limited"; channel_busy is the retryable code closest to it.
        Decline::code(
            ErrorCode::ChannelBusy,
            format!(
                "at most {} {what} per channel every {} s; retry in {} s",
                limit.count,
                limit.window.as_secs(),
                wait_ms.div_ceil(1000)
            ),
        )
    }

    /// The smallest deposit relayed for `offer`.
    fn min_deposit(&self, offer: &BatchRequirements) -> u128 {
        self.inner
            .config
            .min_deposit
            .unwrap_or_else(|| offer.amount.saturating_mul(DEFAULT_MIN_MULTIPLE))
    }

    /// The smallest partial refund relayed for `offer`.
    fn min_refund(&self, offer: &BatchRequirements) -> u128 {
        self.inner
            .config
            .min_refund
            .unwrap_or_else(|| offer.amount.saturating_mul(DEFAULT_MIN_MULTIPLE))
    }

    /// Starts a paid request: checks the payment against `offer` and reserves the channel, or
    /// completes a payment operation (refund) at once.
    pub async fn begin(
        &self,
        p: &PaymentPayload<BatchPayload>,
        offer: &BatchRequirements,
    ) -> Result<Begin, Decline> {
        Metrics::inc(&self.inner.metrics.requests);
        let started = std::time::Instant::now();
        let r = self.begin_inner(p, offer).await;
        let kind = match &p.payload {
            BatchPayload::Voucher(_) => CheckKind::Voucher,
            BatchPayload::Deposit(_) => CheckKind::Deposit,
            BatchPayload::Refund(_) => CheckKind::Refund,
            BatchPayload::Claim(_) | BatchPayload::Settle(_) => CheckKind::Other,
        };
        self.inner.metrics.check(kind).observe(started.elapsed());
        r.map_err(|d| self.decline(d))
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
        match &p.payload {
            BatchPayload::Voucher(v) => self.begin_voucher(v, offer).await,
            BatchPayload::Deposit(d) => self.begin_deposit(p, d, offer).await,
            BatchPayload::Refund(r) => self.refund(p, r, offer).await.map(Begin::Done),
            BatchPayload::Claim(_) | BatchPayload::Settle(_) => Err(Decline::code(
                ErrorCode::PayloadType,
                format!("a client cannot send a {} payload", p.payload.kind()),
            )),
        }
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

    /// A `voucher` payload: pay for this request from the channel's balance.
    async fn begin_voucher(
        &self,
        v: &VoucherPayload,
        offer: &BatchRequirements,
    ) -> Result<Begin, Decline> {
        let id = v.voucher.channel_id;
        let screened = if self.inner.slots.peek(&id).is_some() {
            None
        } else {
            let s = self.screen(v, offer).await;
            if s.is_err() {
                Metrics::inc(&self.inner.metrics.screened_out);
            }
            Some(s?)
        };
        let mut guard = self.lock(id).await?;
        self.load(&mut guard, id).await?;
        let mut prefetched = None;
        if let Some(s) = screened {
            if guard.key.is_none() {
                guard.key = s.key;
            }
            prefetched = s.state;
        } else if guard
            .record
            .as_ref()
            .is_some_and(|r| r.channel_id == id && r.config == v.channel_config)
        {
            // A stored record was bound when it was created: the same config under the same
            // id needs no re-hashing, only the offer's terms.
            payee::check_offer_terms(&v.channel_config, offer)?;
        } else {
            // Anything else is hashed first (channel id before terms, as the reference
            // facilitator orders them).
            payee::check_binding(
                &v.channel_config,
                &v.voucher,
                &self.inner.config.domain,
                offer,
            )?;
        }
        let now = self.now();
        let mut record = match (&guard.record, prefetched) {
            (None, Some(state)) => ChannelRecord::from_chain(id, v.channel_config, state, now),
            _ => {
                self.fresh_record(&mut guard, id, &v.channel_config, now)
                    .await?
            }
        };
        let check = |record: &ChannelRecord, key: Option<&SignerKey>| {
            payee::check_paid(record, key, &v.voucher, None, &self.ctx(offer, now))
        };
        let res = match check(&record, guard.key.as_ref()) {
            Err(Refusal::NeedsOnchainState) => {
                // The clock moved past the freshness bound between reads: refresh once.
                let known = guard.record.is_some();
                record.sync_onchain(self.read_chain(id, known).await?, now);
                check(&record, guard.key.as_ref())
            }
            other => other,
        };
        let res = self.refusal_to_decline(res, offer, &record)?;
        payee::check_withdrawal_window(&record, now, self.guard_ms())?;
        Ok(self.reserved(guard, record, res, offer, None))
    }

    /// The cheap checks on a voucher for a channel not held in memory, in order of cost:
    /// binding (a hash), the negative cache, the signature (one recovery), the store (is the
    /// channel known?) and, for a channel the store does not know, one capped chain read. Only
    /// a channel with money on chain goes on to take a slot in memory.
    async fn screen(
        &self,
        v: &VoucherPayload,
        offer: &BatchRequirements,
    ) -> Result<Screened, Decline> {
        let id = payee::check_binding(
            &v.channel_config,
            &v.voucher,
            &self.inner.config.domain,
            offer,
        )?;
        if self.inner.negative.contains(&id, self.now()) {
            Metrics::inc(&self.inner.metrics.negative_hits);
            return Err(Decline::code(
                ErrorCode::ChannelNotFound,
                "channel has no balance",
            ));
        }
        let key = self.precheck_signature(&v.channel_config, &v.voucher)?;
        if self.read_store(id).await?.is_some() {
            return Ok(Screened {
                key: Some(key),
                state: None,
            });
        }
        let state = self.read_chain(id, false).await?;
        if state.balance == 0 {
            return Err(Decline::code(
                ErrorCode::ChannelNotFound,
                "channel has no balance",
            ));
        }
        Ok(Screened {
            key: Some(key),
            state: Some(state),
        })
    }

    /// A `deposit` payload: open or top up the channel through the facilitator, then pay for
    /// this request.
    async fn begin_deposit(
        &self,
        p: &PaymentPayload<BatchPayload>,
        d: &DepositPayload,
        offer: &BatchRequirements,
    ) -> Result<Begin, Decline> {
        let id = payee::check_binding(
            &d.channel_config,
            &d.voucher,
            &self.inner.config.domain,
            offer,
        )?;
        // A deposit spends the relayer's gas: its size, signature and rate are checked before
        // the channel's lock, the chain or the facilitator.
        let min = self.min_deposit(offer);
        if d.deposit.amount < min {
            return Err(Decline::code(
                ErrorCode::DepositBelowMinDeposit,
                format!(
                    "deposit {} is below this server's minimum deposit {min}",
                    d.deposit.amount
                ),
            ));
        }
        let key = self.precheck_signature(&d.channel_config, &d.voucher)?;
        // A deposit whose settlement answered `settlement_pending` may already be on chain;
        // verifying it again would refuse its (now used) authorization. Its retry goes straight
        // to settle, which reconciles with the earlier transaction, and is not counted again.
        let pending_key = deposit_key(id, d);
        let was_pending = self
            .inner
            .pending_deposits
            .lock()
            .is_ok_and(|p| p.contains(&pending_key));
        let limit = self.inner.config.deposit_rate;
        if !was_pending && let Err(wait) = self.inner.deposits.check(&id, self.now()) {
            return Err(self.rate_limited("deposits", limit, wait));
        }
        let mut guard = self.lock(id).await?;
        self.load(&mut guard, id).await?;
        if guard.key.is_none() {
            guard.key = Some(key);
        }
        let generic = offer.to_generic();
        let checked = if was_pending {
            None
        } else {
            let checked = self
                .verify_deposit(p, d, &guard, id, offer, &generic)
                .await?;
            if let Err(wait) = self.inner.deposits.acquire(id, self.now()) {
                return Err(self.rate_limited("deposits", limit, wait));
            }
            Some(checked)
        };
        // Whatever happens to the deposit from here (even this request going away while it is
        // relayed), the next check on this channel re-reads its balance.
        if let Some(r) = guard.record.as_mut() {
            r.onchain_synced_at = 0;
        }
        // Execute the deposit before serving: the handler never runs against money that is not
        // in the channel yet.
        let answer = self.inner.facilitator.settle(p, &generic).await;
        let settled = facilitator_answer(answer, &SETTLE_DEPOSIT, id).inspect_err(|d| {
            if d.rejection.code == ErrorCode::SettlementPending
                && let Ok(mut pending) = self.inner.pending_deposits.lock()
                && pending.len() < MAX_PENDING_DEPOSITS
            {
                pending.insert(pending_key);
            }
        })?;
        if let Ok(mut pending) = self.inner.pending_deposits.lock() {
            pending.remove(&pending_key);
        }
        self.inner.negative.remove(&id);
        Metrics::inc(&self.inner.metrics.deposits);
        let tx: B256 = settled.transaction.parse().unwrap_or_default();
        let after = self.snapshot_or_read(settle_snapshot(&settled), id).await?;
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

    /// The facilitator's verify of a deposit, then the voucher checked against the balance the
    /// deposit will make, before the deposit is executed: a wrong voucher never moves the
    /// payer's money.
    async fn verify_deposit(
        &self,
        p: &PaymentPayload<BatchPayload>,
        d: &DepositPayload,
        guard: &Slot,
        id: B256,
        offer: &BatchRequirements,
        generic: &PaymentRequirements,
    ) -> Result<(ChannelRecord, Reservation), Decline> {
        let answer = self.inner.facilitator.verify(p, generic).await;
        let verify = facilitator_answer(answer, &VERIFY_DEPOSIT, id)?;
        let now = self.now();
        let state = self.snapshot_or_read(verify_snapshot(&verify), id).await?;
        let record = with_state(guard, id, d.channel_config, state, now);
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
        Ok((record, res))
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
            Err(Refusal::NeedsFacilitator) => Err(eip1271_unsupported()),
        }
    }

    /// A `refund` payload: claim what was charged and return (part of) the rest on chain.
    async fn refund(
        &self,
        p: &PaymentPayload<BatchPayload>,
        r: &RefundPayload,
        offer: &BatchRequirements,
    ) -> Result<SettlementResponse, Decline> {
        let domain = self.inner.config.domain;
        let id = payee::check_binding(&r.channel_config, &r.voucher, &domain, offer)?;
        // A refund spends the relayer's gas: the cheap refusals come before the channel's lock
        // and the chain.
        if self.inner.negative.contains(&id, self.now()) {
            Metrics::inc(&self.inner.metrics.negative_hits);
            return Err(Decline::code(
                ErrorCode::RefundNoBalance,
                "nothing left to refund",
            ));
        }
        let key = self.precheck_signature(&r.channel_config, &r.voucher)?;
        let limit = self.inner.config.refund_rate;
        if let Err(wait) = self.inner.refunds.check(&id, self.now()) {
            return Err(self.rate_limited("refunds", limit, wait));
        }
        let mut guard = self.lock(id).await?;
        self.load(&mut guard, id).await?;
        if guard.key.is_none() {
            guard.key = Some(key);
        }
        let now = self.now();
        // A refund moves money: always decide on freshly read chain state.
        let state = self.read_chain(id, true).await?;
        let record = with_state(&guard, id, r.channel_config, state, now);
        let (plan, key) = self.refusal_to_decline(
            payee::check_refund(&record, guard.key.as_ref(), r, &self.ctx(offer, now)),
            offer,
            &record,
        )?;
        if let Some(k) = key {
            guard.key = Some(k);
        }
        let min = self.min_refund(offer);
        if !plan.full && plan.amount < min {
            return Err(Decline::code(
                ErrorCode::RefundAmountInvalid,
                format!(
                    "a partial refund must be at least {min}; ask for everything refundable (no amount) instead"
                ),
            ));
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
        if let Err(wait) = self.inner.refunds.acquire(id, self.now()) {
            return Err(self.rate_limited("refunds", limit, wait));
        }
        // From the relay on, the refund runs in its own task holding the channel's lock: if
        // this request goes away, the refund still completes and its record is saved, so no
        // later request is judged against the balance from before it.
        let engine = self.clone();
        let network = offer.network.clone();
        let generic = offer.to_generic();
        let task = tokio::spawn(async move {
            engine
                .relay_refund(guard, record, plan, enriched, generic, network)
                .await
        });
        task.await.unwrap_or_else(|e| {
            Err(Decline::outside(
                ErrorCode::UnexpectedSettleError,
                "the refund did not complete",
                id,
                &e,
            ))
        })
    }

    /// The refund's relay and the record after it; owns the channel's lock until both are done.
    async fn relay_refund(
        self,
        mut guard: OwnedMutexGuard<Slot>,
        mut record: ChannelRecord,
        plan: RefundPlan,
        enriched: PaymentPayload<BatchPayload>,
        generic: PaymentRequirements,
        network: Network,
    ) -> Result<SettlementResponse, Decline> {
        let id = record.channel_id;
        // Whatever happens from here, the next check on this channel re-reads its balance.
        if let Some(r) = guard.record.as_mut() {
            r.onchain_synced_at = 0;
        }
        let answer = self.inner.facilitator.settle(&enriched, &generic).await;
        let settled = facilitator_answer(answer, &SETTLE_REFUND, id)?;
        let after = self.snapshot_or_read(settle_snapshot(&settled), id).await?;
        let refunded = settled
            .amount
            .as_deref()
            .and_then(|a| a.parse::<u128>().ok())
            .unwrap_or(plan.amount);
        payee::apply_refund(&mut record, &plan, after, self.now());
        if let Err(e) = self
            .inner
            .store
            .commit(WriteBatch::channel(record.clone()))
            .await
        {
            // The log may or may not hold the write: read the record again on next use.
            guard.loaded = false;
            guard.record = None;
            return Err(Decline::outside(
                ErrorCode::UnexpectedSettleError,
                "refund done on chain, record not saved",
                id,
                &e,
            ));
        }
        guard.record = Some(record.clone());
        guard.loaded = true;
        Metrics::inc(&self.inner.metrics.refunds);
        let _ = self.inner.events.send(EngineEvent::Refunded {
            channel_id: id,
            amount: refunded,
        });
        drop(self);
        drop(guard);
        let tx: B256 = settled.transaction.parse().unwrap_or_default();
        Ok(payee::refund_response(&record, &network, tx, refunded))
    }

    /// Commits the handler's actual price (≤ the ticket's maximum) durably and returns the
    /// `PAYMENT-RESPONSE`. On error nothing is charged and the client may retry the same voucher.
    ///
    /// Once the write has started it finishes even if this future is dropped: the write and the
    /// in-memory record are updated together by a task that owns the channel's lock.
    ///
    /// The charge is recorded as `charge` on the caller's tracing span if it has that field (the
    /// HTTP server's request span does), and a refusal's x402 code as `code` (also for
    /// [`Self::begin`]).
    pub async fn commit(
        &self,
        ticket: Box<Ticket>,
        actual: u128,
    ) -> Result<SettlementResponse, Decline> {
        let started = std::time::Instant::now();
        let r = self.commit_inner(ticket, actual).await;
        self.inner.metrics.commit.observe(started.elapsed());
        if r.is_ok() {
            // A number in log lines (a string only above u64).
            let span = tracing::Span::current();
            match u64::try_from(actual) {
                Ok(n) => span.record("charge", n),
                Err(_) => span.record("charge", tracing::field::display(actual)),
            };
        }
        r
    }

    async fn commit_inner(
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
        let record = if charge.amount > 0 || deposit.is_some() {
            let engine = self.clone();
            let id = record.channel_id;
            let task =
                tokio::spawn(async move { engine.persist_charge(guard, record, charge).await });
            task.await
                .unwrap_or_else(|e| {
                    Err(Decline::outside(
                        ErrorCode::UnexpectedSettleError,
                        "the charge could not be saved",
                        id,
                        &e,
                    ))
                })
                .map_err(|d| self.decline(d))?
        } else {
            // Nothing to write (a free request changes nothing).
            guard.record = Some(record.clone());
            guard.loaded = true;
            drop(guard);
            self.committed(&record, &charge);
            record
        };
        Ok(match deposit {
            Some((tx, amount)) => payee::deposit_response(&record, &charge, &network, tx, amount),
            None => payee::voucher_response(&record, &charge, &network),
        })
    }

    /// The durable part of a commit: writes the record, then makes it the slot's. Runs in its
    /// own task and owns the channel's lock until both are done.
    async fn persist_charge(
        self,
        mut guard: OwnedMutexGuard<Slot>,
        record: ChannelRecord,
        charge: Charge,
    ) -> Result<ChannelRecord, Decline> {
        let started = std::time::Instant::now();
        if let Err(e) = self
            .inner
            .store
            .commit(WriteBatch::channel(record.clone()))
            .await
        {
            Metrics::inc(&self.inner.metrics.aborted);
            // The log may or may not hold the write: read the record again on next use.
            guard.loaded = false;
            guard.record = None;
            return Err(Decline::outside(
                ErrorCode::UnexpectedSettleError,
                "the charge could not be saved",
                record.channel_id,
                &e,
            ));
        }
        self.inner.metrics.commit_nanos.fetch_add(
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        guard.record = Some(record.clone());
        guard.loaded = true;
        self.committed(&record, &charge);
        // The engine handle goes before the lock: whoever takes the channel next sees an engine
        // this task no longer holds (a test may then reopen the store).
        drop(self);
        drop(guard);
        Ok(record)
    }

    /// Counts a committed charge and tells the settlement side.
    fn committed(&self, record: &ChannelRecord, charge: &Charge) {
        Metrics::inc(&self.inner.metrics.committed);
        self.inner.metrics.add_charged(charge.amount);
        if charge.amount > 0 {
            Metrics::inc(&self.inner.metrics.charges);
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
    }

    /// Abandons a reserved request: nothing is charged.
    pub fn abort(&self, ticket: Box<Ticket>) {
        Metrics::inc(&self.inner.metrics.aborted);
        drop(ticket);
    }

    /// The channel's record, from memory or the store. Does not bring the channel into memory.
    pub async fn channel(&self, id: B256) -> Result<Option<ChannelRecord>, paychan_store::Error> {
        if let Some(slot) = self.inner.slots.peek(&id) {
            let guard = slot.lock().await;
            if guard.loaded {
                return Ok(guard.record.clone());
            }
        }
        self.inner.store.channel(id).await
    }

    /// Mirrors new on-chain state of a channel (from the chain watcher or after a claim) into its
    /// record, and raises `NeedsClaim` if a withdrawal now threatens unclaimed charges. Channels
    /// the store does not know are ignored (their state is read when first paid) and not
    /// brought into memory.
    pub async fn apply_onchain(
        &self,
        id: B256,
        state: OnchainState,
    ) -> Result<(), paychan_store::Error> {
        if state.balance > 0 {
            self.inner.negative.remove(&id);
        }
        if self.inner.slots.peek(&id).is_none() && self.inner.store.channel(id).await?.is_none() {
            return Ok(());
        }
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

/// The refusal of a voucher that only a smart-contract wallet could check (EIP-1271).
fn eip1271_unsupported() -> Decline {
    Decline::code(
        ErrorCode::VoucherSignature,
        "vouchers of smart-contract payers (payerAuthorizer zero, EIP-1271) are not supported by this server; use an EOA payerAuthorizer",
    )
}

/// The charge recorded in a `PAYMENT-RESPONSE`, for clients and tests.
pub fn charged_amount(resp: &SettlementResponse) -> Option<u128> {
    let extra: ResponseExtra =
        serde_json::from_value(serde_json::Value::Object(resp.extra.clone()?)).ok()?;
    extra.charged_amount
}
