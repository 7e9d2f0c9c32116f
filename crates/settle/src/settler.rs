//! The settlement scheduler: which channels to claim when, batched claims signed by the receiver
//! authorizer, settles per (receiver, token), mirroring the results into the engine and the
//! store, and gas accounting.
//!
//! A **claim round** is the unit of work; rounds never overlap (one lock):
//!
//! 1. *Reconcile*: if the journal has open entries (a claim that outlived `confirm_timeout`, a
//!    crash), [`Relayer::recover`] finishes them first; claims still open afterwards "cover"
//!    their channels up to their targets, so nothing is sent twice for them.
//! 2. *Select* channels from the in-memory set (fed by the engine's `Charged` / `NeedsClaim`
//!    events, the chain follower and store scans) by the round's [`Scope`].
//! 3. *Build rows* from the **store's** records (every committed charge is there) against a
//!    fresh batched read of the chain: a channel already claimed up to its charged total (by a
//!    refund's claim, say) is skipped; the target is capped to the channel's balance.
//! 4. *Send* rows grouped by receiver authorizer in chunks ([`SettlePolicy::rows_per_tx`]), each
//!    chunk one `claimWithSignature`. A chunk the node refuses (a revert in simulation, a gas
//!    estimate over the ceiling) is split in halves until the bad row is alone.
//! 5. *Mirror*: re-read the claimed channels and hand their state to
//!    [`Engine::apply_onchain`]; write `receivers(r, t)` into the aggregates.
//! 6. *Settle* every (receiver, token) with claims not yet swept, if the policy says so.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use alloy_primitives::{Address, B256};
use paychan_chain::{RecoveryReport, Relayer, WatcherConfig};
use paychan_core::{
    batch::{
        ClaimRow,
        payee::{self, ChannelRecord},
    },
    ports::{Clock, OnchainSource, PaymentFacilitator},
    sig::LocalSigner,
};
use paychan_engine::{Engine, EngineEvent};
use paychan_store::{AggregateOp, JournalEntry, JournalKind, JournalState, Store, WriteBatch};
use tokio::{
    sync::{broadcast, watch},
    task::JoinHandle,
};

use crate::{
    Error, Result, TARGET,
    follower::{ChainFollower, FollowerUpdate},
    gas::{GasLedger, GasReport},
    plan::{PendingSet, RoundEnd, RoundRequest, RowAction, Schedule, Scope, batches, plan_row},
    policy::{SettleMode, SettlePolicy},
};

pub use crate::plan::Trigger;

/// How a [`Settler`] is set up.
#[derive(Debug, Clone)]
pub struct SettlerConfig {
    /// When to claim and settle.
    pub policy: SettlePolicy,
    /// Receiver-authorizer keys that sign `ClaimBatch`es. A channel whose authorizer key is not
    /// here can still be claimed with `claim` when the relayer's sender is its receiver or
    /// receiver authorizer; otherwise it is reported as failed.
    pub authorizers: Vec<LocalSigner>,
    /// Follow the escrow's events (cursor in the store) and mirror them into the engine;
    /// `None`: no follower.
    pub watcher: Option<WatcherConfig>,
}

impl SettlerConfig {
    /// A configuration with `policy`, one authorizer key, and the chain follower on.
    pub fn new(policy: SettlePolicy, authorizer: LocalSigner) -> Self {
        Self {
            policy,
            authorizers: vec![authorizer],
            watcher: Some(WatcherConfig::default()),
        }
    }
}

/// A confirmed claim transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimTx {
    /// Its journal entry.
    pub journal_id: u64,
    /// The transaction.
    pub tx_hash: B256,
    /// Its block.
    pub block: u64,
    /// Gas used.
    pub gas_used: u64,
    /// (channel, claimed total after it).
    pub claims: Vec<(B256, u128)>,
}

/// A confirmed settle transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleTx {
    /// The receiver paid.
    pub receiver: Address,
    /// The token.
    pub token: Address,
    /// Its journal entry.
    pub journal_id: u64,
    /// The transaction.
    pub tx_hash: B256,
    /// Gas used.
    pub gas_used: u64,
    /// `receivers(r, t).totalSettled` after it minus before it.
    pub amount: u128,
}

/// What a round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundReport {
    /// Why it ran.
    pub trigger: Trigger,
    /// Channels selected.
    pub considered: usize,
    /// Claim transactions confirmed in this round.
    pub claims: Vec<ClaimTx>,
    /// Journal entries left open earlier and confirmed by this round's reconciliation.
    pub recovered: Vec<JournalEntry>,
    /// Channels already claimed on chain up to their charged total (by anyone): not sent.
    pub already_claimed: Vec<B256>,
    /// Channels covered by a claim still open in the journal: not sent again.
    pub in_flight: Vec<B256>,
    /// Channels whose claim failed on its own (reverts in simulation, no key), with why.
    pub failed: Vec<(B256, String)>,
    /// Channels whose balance is below the charged total (a withdrawal was finalized before
    /// they were claimed): (channel, amount that can no longer be claimed).
    pub lost: Vec<(B256, u128)>,
    /// Actions sent but not confirmed in time (they stay open for the next round), with why.
    pub unconfirmed: Vec<String>,
    /// Settles confirmed in this round.
    pub settles: Vec<SettleTx>,
    /// Other problems (chain unreachable part-way, settle failures, mirroring failures).
    pub errors: Vec<String>,
}

impl RoundReport {
    fn new(trigger: Trigger) -> Self {
        Self {
            trigger,
            considered: 0,
            claims: Vec::new(),
            recovered: Vec::new(),
            already_claimed: Vec::new(),
            in_flight: Vec::new(),
            failed: Vec::new(),
            lost: Vec::new(),
            unconfirmed: Vec::new(),
            settles: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Channel rows claimed by this round's transactions.
    pub fn channels_claimed(&self) -> usize {
        self.claims.iter().map(|c| c.claims.len()).sum()
    }

    /// Nothing failed, nothing left open.
    pub fn is_clean(&self) -> bool {
        self.failed.is_empty()
            && self.unconfirmed.is_empty()
            && self.errors.is_empty()
            && self.in_flight.is_empty()
    }
}

/// What [`Settler::run`] returns after a graceful shutdown.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    /// The final round (claim everything outstanding, settle); `None` when
    /// `claim_on_shutdown` is off.
    pub last_round: Option<RoundReport>,
    /// Gas since the settler was created.
    pub gas: GasReport,
    /// Channels still holding unclaimed charges, and how much (0 after a clean last round).
    pub outstanding: (usize, u128),
}

#[derive(Debug, Default)]
struct State {
    pending: PendingSet,
    /// Every (receiver, token) seen.
    pairs: BTreeSet<(Address, Address)>,
    /// Pairs with claims not yet swept by a settle of ours.
    unsettled: BTreeSet<(Address, Address)>,
    /// channel → (receiver, token)
    channel_pairs: HashMap<B256, (Address, Address)>,
    gas: GasLedger,
    paid_requests: u64,
    rescan: bool,
    /// Channels whose balance fell below their charged total (the charged total then): not
    /// tried again unless charged further.
    lost: HashMap<B256, u128>,
}

struct Inner<S: Store, C, F, K> {
    engine: Engine<S, C, F, K>,
    relayer: Relayer<S>,
    authorizers: HashMap<Address, LocalSigner>,
    policy: SettlePolicy,
    watcher: Option<WatcherConfig>,
    state: Mutex<State>,
    round: tokio::sync::Mutex<()>,
    events: Mutex<Option<broadcast::Receiver<EngineEvent>>>,
    wake: tokio::sync::Notify,
    /// The origin of the settler's clock ([`Settler::now_ms`]).
    epoch: Instant,
}

/// The settlement scheduler and chain follower. Cheap to clone (clones share everything); see
/// the module documentation for what a round does and [`Settler::run`] for the loop.
pub struct Settler<S: Store, C, F, K> {
    inner: Arc<Inner<S, C, F, K>>,
}

impl<S: Store, C, F, K> Clone for Settler<S, C, F, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: Store, C, F, K> std::fmt::Debug for Settler<S, C, F, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settler")
            .field("relayer", &self.inner.relayer.address())
            .field(
                "authorizers",
                &self.inner.authorizers.keys().collect::<Vec<_>>(),
            )
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

/// Outcome of one claim chunk.
enum ChunkEnd {
    Done(JournalEntry),
    Split(String),
    RowFailed(String),
    Superseded,
    Unconfirmed(String),
    Stop(String),
}

impl<S, C, F, K> Settler<S, C, F, K>
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    /// A settler for `engine`'s channels, sending through `relayer`. Subscribes to the engine's
    /// events at once, so charges committed from now on are counted even before [`Self::run`].
    pub fn new(
        engine: Engine<S, C, F, K>,
        relayer: Relayer<S>,
        config: SettlerConfig,
    ) -> Result<Self> {
        config.policy.validate()?;
        if engine.config().domain != *relayer.reader().domain() {
            return Err(Error::Policy(
                "the engine and the relayer's chain reader disagree on the escrow domain".into(),
            ));
        }
        let events = engine.subscribe();
        let authorizers = config
            .authorizers
            .into_iter()
            .map(|k| (k.address(), k))
            .collect::<HashMap<_, _>>();
        tracing::info!(
            target: TARGET,
            relayer = %relayer.address(),
            authorizers = ?authorizers.keys().collect::<Vec<_>>(),
            policy = ?config.policy,
            "settler ready"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                relayer,
                authorizers,
                policy: config.policy,
                watcher: config.watcher,
                state: Mutex::new(State::default()),
                round: tokio::sync::Mutex::new(()),
                events: Mutex::new(Some(events)),
                wake: tokio::sync::Notify::new(),
                epoch: Instant::now(),
            }),
        })
    }

    /// The policy.
    pub fn policy(&self) -> &SettlePolicy {
        &self.inner.policy
    }

    /// The relayer.
    pub fn relayer(&self) -> &Relayer<S> {
        &self.inner.relayer
    }

    /// The engine.
    pub fn engine(&self) -> &Engine<S, C, F, K> {
        &self.inner.engine
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settler's monotonic clock: milliseconds since it was created (retry backoffs).
    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Gas spent since this settler was created (claims and settles it confirmed, including
    /// journal entries it recovered), over the paid requests counted from the engine's events
    /// over the same period.
    pub fn gas_report(&self) -> GasReport {
        let st = self.state();
        st.gas.report().with_paid_requests(st.paid_requests)
    }

    /// Channels known to hold unclaimed charges, and their total (as last seen; call
    /// [`Self::scan`] first for a complete answer).
    pub fn outstanding(&self) -> (usize, u128) {
        let st = self.state();
        (st.pending.len(), st.pending.unclaimed())
    }

    /// Claims every channel with unclaimed charges now (after a store scan, ignoring retry
    /// backoffs), and settles afterwards if the policy settles after claims.
    pub async fn claim_now(&self) -> Result<RoundReport> {
        self.state().rescan = true;
        self.round(RoundRequest {
            trigger: Trigger::Manual,
            scope: Scope::Everything,
            force_settle: false,
        })
        .await
    }

    /// Claims the channels `ids` now (after finishing open journal entries, ignoring retry
    /// backoffs), and settles afterwards if the policy settles after claims. A channel with
    /// nothing left to claim is reported in `already_claimed`; one the store does not know is
    /// skipped.
    pub async fn claim_channels(&self, ids: &[B256]) -> Result<RoundReport> {
        let _g = self.inner.round.lock().await;
        self.drain_events();
        let mut report = RoundReport::new(Trigger::Manual);
        let covered = self.reconcile(&mut report).await?;
        report.considered = ids.len();
        if !ids.is_empty() {
            self.claim(ids, &covered, &mut report).await?;
        }
        if self.inner.policy.settle == SettleMode::AfterClaims {
            let pairs: Vec<_> = self.state().unsettled.iter().copied().collect();
            self.settle_pairs(pairs, &mut report).await;
        }
        log_round(&report);
        Ok(report)
    }

    /// Settles every (receiver, token) whose claimed total is above its settled total on chain.
    pub async fn settle_now(&self) -> Result<RoundReport> {
        let _g = self.inner.round.lock().await;
        let mut report = RoundReport::new(Trigger::Manual);
        self.reconcile(&mut report).await?;
        let pairs: Vec<_> = {
            let st = self.state();
            st.pairs.union(&st.unsettled).copied().collect()
        };
        self.settle_pairs(pairs, &mut report).await;
        Ok(report)
    }

    /// Restart reconciliation: finishes every open journal entry ([`Relayer::recover`]) and
    /// mirrors what it confirmed. [`Self::run`] does this first; rounds do it whenever the
    /// journal has open entries.
    pub async fn recover(&self) -> Result<RoundReport> {
        let _g = self.inner.round.lock().await;
        let mut report = RoundReport::new(Trigger::Manual);
        let rec = self.inner.relayer.recover().await?;
        self.absorb_recovery(rec, &mut report).await;
        Ok(report)
    }

    /// Reads every channel record in the store (in pages) into the set of channels with
    /// unclaimed charges. Returns how many records were read.
    pub async fn scan(&self) -> Result<usize> {
        let store = self.inner.engine.store();
        let page = self.inner.policy.scan_page;
        let mut after = None;
        let mut n = 0;
        loop {
            let records = store.channels_after(after, page).await?;
            let Some(last) = records.last() else { break };
            after = Some(last.channel_id);
            n += records.len();
            let mut st = self.state();
            for r in &records {
                observe(&mut st, r);
            }
            drop(st);
            if records.len() < page {
                break;
            }
        }
        let st = self.state();
        tracing::debug!(target: TARGET, records = n, pending = st.pending.len(), unclaimed = %st.pending.unclaimed(), "store scanned");
        Ok(n)
    }

    // ---- events --------------------------------------------------------------------------------

    /// Applies an engine event; returns the trigger it calls for, if any.
    fn on_event(&self, st: &mut State, ev: EngineEvent) -> Option<Trigger> {
        match ev {
            EngineEvent::Charged {
                channel_id,
                charged_cumulative,
                unclaimed,
                ..
            } => {
                st.paid_requests += 1;
                let u = st
                    .pending
                    .charged(channel_id, charged_cumulative, unclaimed);
                if st
                    .pending
                    .get(&channel_id)
                    .is_some_and(|p| p.deadline.is_some())
                {
                    Some(Trigger::Withdrawal)
                } else if self.inner.policy.threshold.is_some_and(|t| u >= t) {
                    Some(Trigger::Threshold)
                } else {
                    None
                }
            }
            EngineEvent::NeedsClaim {
                channel_id,
                deadline,
                unclaimed,
            } => {
                tracing::info!(target: TARGET, channel = %channel_id, deadline, %unclaimed, "withdrawal pending on a channel with unclaimed charges: claiming now");
                st.pending.needs_claim(channel_id, deadline, unclaimed);
                Some(Trigger::Withdrawal)
            }
            // A refund claims the channel first; the next round reads the chain and skips it.
            EngineEvent::Refunded { .. } => None,
        }
    }

    fn on_lagged(&self, st: &mut State, missed: u64) {
        tracing::warn!(target: TARGET, missed, "engine events lagged; rescanning the store");
        // Every event the engine sends for a paid request is a `Charged` or follows one; count
        // the missed ones as paid requests (NeedsClaim / Refunded are rare next to charges).
        st.paid_requests += missed;
        st.rescan = true;
    }

    /// Drains buffered engine events when [`Self::run`] is not consuming them.
    fn drain_events(&self) {
        let mut guard = self.inner.events.lock().unwrap_or_else(|p| p.into_inner());
        let Some(rx) = guard.as_mut() else { return };
        let mut st = self.state();
        loop {
            match rx.try_recv() {
                Ok(ev) => {
                    self.on_event(&mut st, ev);
                }
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.on_lagged(&mut st, n),
                Err(_) => break,
            }
        }
    }

    fn on_follower(&self, u: FollowerUpdate) {
        match u {
            FollowerUpdate::Channel { event, record } => {
                let mut st = self.state();
                observe(&mut st, &record);
                let urgent = event.kind == paychan_chain::EventKind::WithdrawInitiated
                    && record.unclaimed() > 0;
                if urgent && let Some(deadline) = record.withdrawal_deadline() {
                    tracing::info!(target: TARGET, channel = %record.channel_id, deadline, unclaimed = %record.unclaimed(), "withdrawal initiated on chain: claiming now");
                    st.pending
                        .needs_claim(record.channel_id, deadline, record.unclaimed());
                    drop(st);
                    self.inner.wake.notify_one();
                }
            }
            FollowerUpdate::Settled(_) => {}
        }
    }

    // ---- rounds --------------------------------------------------------------------------------

    async fn round(&self, req: RoundRequest) -> Result<RoundReport> {
        let _g = self.inner.round.lock().await;
        self.drain_events();
        let mut report = RoundReport::new(req.trigger);
        let covered = self.reconcile(&mut report).await?;
        let rescan = std::mem::take(&mut self.state().rescan);
        if rescan && let Err(e) = self.scan().await {
            self.state().rescan = true;
            return Err(e);
        }
        self.last_calls().await;
        let ids = {
            let st = self.state();
            st.pending
                .select(req.scope, self.now_ms(), self.inner.policy.threshold)
        };
        report.considered = ids.len();
        if !ids.is_empty() {
            self.claim(&ids, &covered, &mut report).await?;
        }
        if req.settles(self.inner.policy.settle) {
            let pairs: Vec<_> = {
                let st = self.state();
                if req.settles_every_pair() {
                    st.pairs.union(&st.unsettled).copied().collect()
                } else {
                    st.unsettled.iter().copied().collect()
                }
            };
            self.settle_pairs(pairs, &mut report).await;
        }
        log_round(&report);
        Ok(report)
    }

    /// Finishes open journal entries; returns the channels covered by claims still open, with
    /// their targets.
    async fn reconcile(&self, report: &mut RoundReport) -> Result<HashMap<B256, u128>> {
        let store = self.inner.relayer.store();
        if store.open_journal().await?.is_empty() {
            return Ok(HashMap::new());
        }
        let rec = self.inner.relayer.recover().await?;
        self.absorb_recovery(rec, report).await;
        let mut covered: HashMap<B256, u128> = HashMap::new();
        for e in store.open_journal().await? {
            if let JournalKind::Claim { claims } = e.kind {
                for (id, target) in claims {
                    let t = covered.entry(id).or_default();
                    *t = (*t).max(target);
                }
            }
        }
        Ok(covered)
    }

    async fn absorb_recovery(&self, rec: RecoveryReport, report: &mut RoundReport) {
        for (id, why) in &rec.still_open {
            report
                .unconfirmed
                .push(format!("journal entry {id} still open: {why}"));
        }
        if rec.confirmed.is_empty() {
            return;
        }
        self.state().gas.record(&rec.confirmed);
        let mut channels = Vec::new();
        let mut pairs = Vec::new();
        for e in &rec.confirmed {
            match &e.kind {
                JournalKind::Claim { claims } => {
                    let mut st = self.state();
                    for &(id, target) in claims {
                        st.pending.claimed(id, target);
                        if let Some(p) = st.channel_pairs.get(&id).copied() {
                            st.unsettled.insert(p);
                        }
                        channels.push(id);
                    }
                }
                JournalKind::Settle { receiver, token } => pairs.push((*receiver, *token)),
                JournalKind::Refund { .. } | JournalKind::Deposit { .. } => {}
            }
        }
        tracing::info!(target: TARGET, entries = rec.confirmed.len(), channels = channels.len(), "open journal entries confirmed by recovery");
        // channels of recovered claims that the settler had not seen yet (restart)
        for id in &channels {
            if self.state().channel_pairs.contains_key(id) {
                continue;
            }
            if let Ok(Some(r)) = self.inner.engine.store().channel(*id).await {
                let mut st = self.state();
                observe(&mut st, &r);
                st.unsettled.insert((r.config.receiver, r.config.token));
            }
        }
        if let Err(e) = self.mirror_channels(&channels).await {
            report
                .errors
                .push(format!("mirroring recovered claims: {e}"));
        }
        for (r, t) in pairs {
            if let Err(e) = self.mirror_aggregate(r, t).await {
                report.errors.push(format!("mirroring receiver {r}: {e}"));
            }
        }
        report.recovered = rec.confirmed;
    }

    /// Last calls of pending withdrawals: at `deadline − margin` (chain time), re-read the record
    /// and claim whatever it holds.
    async fn last_calls(&self) {
        if !self.state().pending.has_withdrawals() {
            return;
        }
        let now = match self.inner.relayer.reader().block_timestamp().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(target: TARGET, error = %e, "reading the chain's clock for withdrawal last calls failed");
                return;
            }
        };
        let due = self
            .state()
            .pending
            .last_calls(now, self.inner.policy.withdrawal_margin);
        for id in due {
            match self.inner.engine.store().channel(id).await {
                Ok(Some(r)) => {
                    let mut st = self.state();
                    observe(&mut st, &r);
                    if let (Some(d), true) = (r.withdrawal_deadline(), r.unclaimed() > 0) {
                        tracing::warn!(target: TARGET, channel = %id, deadline = d, chain_time = now, unclaimed = %r.unclaimed(), "withdrawal last call: claiming");
                        st.pending.needs_claim(id, d, r.unclaimed());
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(target: TARGET, channel = %id, error = %e, "withdrawal last call: store read failed")
                }
            }
        }
    }

    fn can_claim(&self, authorizer: Address, receiver: Address) -> bool {
        let me = self.inner.relayer.address();
        self.inner.authorizers.contains_key(&authorizer) || me == authorizer || me == receiver
    }

    /// Claims the channels `ids`: plans each against a fresh read of the chain ([`plan_row`]),
    /// sends the rows, and mirrors what moved.
    async fn claim(
        &self,
        ids: &[B256],
        covered: &HashMap<B256, u128>,
        report: &mut RoundReport,
    ) -> Result<()> {
        let records = self.stored_records(ids).await?;
        if records.is_empty() {
            return Ok(());
        }
        let ids: Vec<B256> = records.iter().map(|r| r.channel_id).collect();
        let states = self.inner.relayer.reader().channel_states(&ids).await?;
        let now_ms = self.now_ms();
        let (rows, moved) = self.plan_rows(&records, &states, covered, now_ms, report);
        if !moved.is_empty()
            && let Err(e) = self.mirror_channels(&moved).await
        {
            report.errors.push(format!("mirroring channels: {e}"));
        }
        let claimed = self.send_rows(rows, now_ms, report).await;
        self.mirror_claimed(&claimed, report).await;
        Ok(())
    }

    /// The store's records of `ids`; channels the store does not know are forgotten.
    async fn stored_records(&self, ids: &[B256]) -> Result<Vec<ChannelRecord>> {
        let store = self.inner.engine.store();
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            match store.channel(*id).await? {
                Some(r) => records.push(r),
                None => self.state().pending.forget(id),
            }
        }
        Ok(records)
    }

    /// Carries out [`plan_row`]'s answer for each channel in the in-memory state and the report.
    /// Returns the rows to send, and the channels whose on-chain state moved.
    fn plan_rows(
        &self,
        records: &[ChannelRecord],
        states: &[payee::OnchainState],
        covered: &HashMap<B256, u128>,
        now_ms: u64,
        report: &mut RoundReport,
    ) -> (Vec<ClaimRow>, Vec<B256>) {
        let mut rows = Vec::new();
        let mut moved = Vec::new();
        for (rec, chain) in records.iter().zip(states) {
            let id = rec.channel_id;
            observe(&mut self.state(), rec);
            let can_claim = self.can_claim(rec.config.receiver_authorizer, rec.config.receiver);
            let plan = plan_row(rec, chain, covered.get(&id).copied(), can_claim);
            if let Some(lost) = plan.lost {
                tracing::error!(target: TARGET, channel = %id, charged = %rec.charged, balance = %chain.balance, %lost, "channel balance is below its charged total: a withdrawal was finalized before it was claimed");
                report.lost.push((id, lost));
                self.state().lost.insert(id, rec.charged);
            }
            match plan.action {
                RowAction::Claim(row) => rows.push(row),
                RowAction::Claimed {
                    total_claimed,
                    fully,
                    moved: chain_moved,
                } => {
                    let mut s = self.state();
                    s.pending.claimed(id, total_claimed);
                    s.pending.forget(&id);
                    drop(s);
                    if fully {
                        report.already_claimed.push(id);
                    }
                    if chain_moved {
                        moved.push(id);
                    }
                }
                RowAction::InFlight => report.in_flight.push(id),
                RowAction::NoVoucher => {
                    // charged above the claimed total without a voucher cannot happen; be safe
                    tracing::error!(target: TARGET, channel = %id, "unclaimed charges without a voucher signature");
                    self.state().pending.forget(&id);
                }
                RowAction::NoKey => {
                    let why = format!(
                        "no key for receiver authorizer {} and the relayer {} is neither receiver nor authorizer",
                        rec.config.receiver_authorizer,
                        self.inner.relayer.address()
                    );
                    self.backoff(id, now_ms);
                    report.failed.push((id, why));
                }
            }
        }
        (rows, moved)
    }

    /// Sends `rows` in transactions ([`batches`]), splitting a refused one in halves until the
    /// bad row is alone. Returns the channels claimed (or found claimed by another transaction).
    async fn send_rows(
        &self,
        rows: Vec<ClaimRow>,
        now_ms: u64,
        report: &mut RoundReport,
    ) -> Vec<B256> {
        let domain = self.inner.relayer.reader().domain();
        let mut queue: VecDeque<(Address, Vec<ClaimRow>)> =
            batches(rows, self.inner.policy.rows_per_tx()).into();
        let mut claimed_ids = Vec::new();
        while let Some((authorizer, chunk)) = queue.pop_front() {
            let ids: Vec<B256> = chunk
                .iter()
                .map(|r| domain.channel_id(&r.voucher.channel))
                .collect();
            match self.send_chunk(authorizer, &chunk).await {
                ChunkEnd::Done(entry) => {
                    if self.confirmed_claim(entry, report) {
                        claimed_ids.extend(ids);
                    }
                }
                ChunkEnd::Split(why) if chunk.len() > 1 => {
                    tracing::warn!(target: TARGET, rows = chunk.len(), reason = %why, "claim batch refused; splitting it");
                    let mut first = chunk;
                    let second = first.split_off(first.len() / 2);
                    queue.push_front((authorizer, second));
                    queue.push_front((authorizer, first));
                }
                ChunkEnd::Split(why) | ChunkEnd::RowFailed(why) => {
                    tracing::warn!(target: TARGET, channels = ?ids, reason = %why, "claim failed");
                    for id in ids {
                        self.backoff(id, now_ms);
                        report.failed.push((id, why.clone()));
                    }
                }
                ChunkEnd::Superseded => claimed_ids.extend(ids),
                ChunkEnd::Unconfirmed(why) => {
                    tracing::warn!(target: TARGET, channels = ids.len(), reason = %why, "claim not confirmed yet; it stays open in the journal");
                    report.in_flight.extend(ids);
                    report.unconfirmed.push(why);
                }
                ChunkEnd::Stop(why) => {
                    tracing::warn!(target: TARGET, reason = %why, "claim round interrupted");
                    report.errors.push(why);
                    break;
                }
            }
        }
        claimed_ids
    }

    /// Records a claim the relayer finished: gas, claimed totals, pairs to settle, the report.
    /// Returns whether it was confirmed.
    fn confirmed_claim(&self, entry: JournalEntry, report: &mut RoundReport) -> bool {
        let JournalState::Confirmed {
            tx_hash,
            block,
            gas_used,
        } = entry.state
        else {
            return false;
        };
        let claims = match &entry.kind {
            JournalKind::Claim { claims } => claims.clone(),
            _ => Vec::new(),
        };
        {
            let mut st = self.state();
            st.gas.record(std::slice::from_ref(&entry));
            for &(id, target) in &claims {
                st.pending.claimed(id, target);
                if let Some(p) = st.channel_pairs.get(&id).copied() {
                    st.unsettled.insert(p);
                }
            }
        }
        tracing::info!(target: TARGET, tx = %tx_hash, block, gas_used, channels = claims.len(), "claim confirmed");
        report.claims.push(ClaimTx {
            journal_id: entry.id,
            tx_hash,
            block,
            gas_used,
            claims,
        });
        true
    }

    /// Mirrors the claimed channels and their (receiver, token) aggregates.
    async fn mirror_claimed(&self, claimed: &[B256], report: &mut RoundReport) {
        if !claimed.is_empty()
            && let Err(e) = self.mirror_channels(claimed).await
        {
            report
                .errors
                .push(format!("mirroring claimed channels: {e}"));
        }
        let pairs: BTreeSet<(Address, Address)> = {
            let st = self.state();
            claimed
                .iter()
                .filter_map(|id| st.channel_pairs.get(id).copied())
                .collect()
        };
        for (r, t) in pairs {
            if let Err(e) = self.mirror_aggregate(r, t).await {
                report.errors.push(format!("mirroring receiver {r}: {e}"));
            }
        }
    }

    fn backoff(&self, id: B256, now_ms: u64) {
        let p = &self.inner.policy;
        let base = p.retry_backoff;
        let mut st = self.state();
        let urgent = st.pending.get(&id).is_some_and(|x| x.deadline.is_some());
        let max = if urgent {
            p.urgent_retry
        } else {
            p.max_backoff
        };
        st.pending.failed(id, now_ms, base.min(max), max);
    }

    async fn send_chunk(&self, authorizer: Address, rows: &[ClaimRow]) -> ChunkEnd {
        use paychan_chain::Error as E;
        let relayer = &self.inner.relayer;
        let sent = match self.inner.authorizers.get(&authorizer) {
            Some(signer) => {
                let payload = match payee::claim_payload(
                    relayer.reader().domain(),
                    rows.to_vec(),
                    Some(signer),
                ) {
                    Ok(p) => p,
                    Err(r) => return ChunkEnd::RowFailed(format!("signing the claim batch: {r}")),
                };
                let Some(sig) = payload.claim_authorizer_signature else {
                    return ChunkEnd::RowFailed("the claim batch was not signed".into());
                };
                relayer.claim_with_signature(payload.claims, sig).await
            }
            None => relayer.claim(rows.to_vec()).await,
        };
        match sent {
            Ok(entry) => ChunkEnd::Done(entry),
            Err(e @ (E::Reverted { .. } | E::GasCeiling { .. } | E::Refused { .. })) => {
                ChunkEnd::Split(e.to_string())
            }
            Err(
                e @ E::TxReverted {
                    tx_hash, gas_used, ..
                },
            ) => {
                // mined and reverted (the chain moved between simulation and inclusion): the
                // gas is spent; split to find the row
                self.state().gas.record_reverted_claim(tx_hash, gas_used);
                ChunkEnd::Split(e.to_string())
            }
            Err(E::Superseded { .. }) => ChunkEnd::Superseded,
            Err(e @ (E::Unconfirmed { .. } | E::NonceTaken { .. })) => {
                ChunkEnd::Unconfirmed(e.to_string())
            }
            Err(e) => ChunkEnd::Stop(e.to_string()),
        }
    }

    /// Re-reads `ids` on chain and hands each state to the engine (concurrently: a channel busy
    /// with a request delays only itself).
    async fn mirror_channels(&self, ids: &[B256]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let states = self.inner.relayer.reader().channel_states(ids).await?;
        {
            let mut st = self.state();
            for (id, s) in ids.iter().zip(&states) {
                st.pending.claimed(*id, s.total_claimed);
            }
        }
        let engine = &self.inner.engine;
        let results = futures_util::future::join_all(
            ids.iter()
                .zip(states)
                .map(|(id, s)| async move { (*id, engine.apply_onchain(*id, s).await) }),
        )
        .await;
        for (id, r) in results {
            if let Err(e) = r {
                tracing::warn!(target: TARGET, channel = %id, error = %e, "mirroring on-chain state into the engine failed");
            }
        }
        Ok(())
    }

    async fn mirror_aggregate(&self, receiver: Address, token: Address) -> Result<(u128, u128)> {
        let (claimed, settled) = self
            .inner
            .relayer
            .reader()
            .receiver_state(receiver, token)
            .await?;
        self.inner
            .engine
            .store()
            .commit(WriteBatch {
                aggregates: vec![(
                    receiver,
                    token,
                    AggregateOp::SetOnchain { claimed, settled },
                )],
                ..WriteBatch::default()
            })
            .await?;
        Ok((claimed, settled))
    }

    async fn settle_pairs(&self, pairs: Vec<(Address, Address)>, report: &mut RoundReport) {
        for (r, t) in pairs {
            match self.settle_pair(r, t).await {
                Ok(tx) => {
                    self.state().unsettled.remove(&(r, t));
                    if let Some(tx) = tx {
                        report.settles.push(tx);
                    }
                }
                Err(Error::Chain(e @ paychan_chain::Error::Unconfirmed { .. })) => {
                    report.unconfirmed.push(e.to_string());
                }
                Err(e) => {
                    tracing::warn!(target: TARGET, receiver = %r, token = %t, error = %e, "settle failed");
                    report
                        .errors
                        .push(format!("settle of receiver {r} in token {t}: {e}"));
                }
            }
        }
    }

    async fn settle_pair(&self, receiver: Address, token: Address) -> Result<Option<SettleTx>> {
        let reader = self.inner.relayer.reader();
        let (claimed, settled) = reader.receiver_state(receiver, token).await?;
        if claimed <= settled {
            self.mirror_aggregate(receiver, token).await?;
            return Ok(None);
        }
        let entry = match self.inner.relayer.settle(receiver, token).await {
            Ok(e) => e,
            Err(paychan_chain::Error::Superseded { .. }) => {
                self.mirror_aggregate(receiver, token).await?;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        self.state().gas.record(std::slice::from_ref(&entry));
        let (_, settled_after) = self.mirror_aggregate(receiver, token).await?;
        let JournalState::Confirmed {
            tx_hash, gas_used, ..
        } = entry.state
        else {
            return Ok(None);
        };
        let amount = settled_after.saturating_sub(settled);
        tracing::info!(target: TARGET, %receiver, %token, tx = %tx_hash, gas_used, %amount, "settled");
        Ok(Some(SettleTx {
            receiver,
            token,
            journal_id: entry.id,
            tx_hash,
            gas_used,
            amount,
        }))
    }

    // ---- the loop ------------------------------------------------------------------------------

    /// Runs the scheduler (and the chain follower, if configured) until `shutdown` resolves;
    /// then, if `claim_on_shutdown`, claims everything outstanding and settles. Start-up:
    /// restart reconciliation ([`Relayer::recover`]), a store scan, and a round for what is due.
    /// Rounds that fail because the chain is unreachable are retried after `retry_backoff`
    /// (doubling up to `max_backoff`; `urgent_retry` while a withdrawal is pending).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<ShutdownReport> {
        let mut events = self.take_events()?;
        let policy = self.inner.policy.clone();
        self.state().rescan = true;
        let (stop_tx, follower) = self.start_follower();
        let mut timers = Timers::new(&policy);
        let first = RoundRequest::due(Trigger::Startup);
        let mut running = Some(self.spawn_round(first));
        let mut schedule = Schedule::new(&policy, first);
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut events_open = true;
        tokio::pin!(shutdown);

        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                joined = join(&mut running), if running.is_some() => {
                    running = None;
                    if let Some(wait) = self.round_ended(joined, &mut schedule) {
                        retry_at = Some(tokio::time::Instant::now() + wait);
                    }
                }
                ev = events.recv(), if events_open => {
                    if let Some(t) = self.on_recv(ev, &mut events_open) {
                        schedule.want(RoundRequest::due(t));
                    }
                }
                () = self.inner.wake.notified() => schedule.want(RoundRequest::due(Trigger::Withdrawal)),
                _ = tick(&mut timers.claim), if timers.claim.is_some() => {
                    schedule.want(RoundRequest { scope: Scope::All, ..RoundRequest::due(Trigger::Interval) });
                }
                _ = tick(&mut timers.scan), if timers.scan.is_some() => {
                    self.state().rescan = true;
                    schedule.want(RoundRequest::due(Trigger::Interval));
                }
                _ = tick(&mut timers.settle), if timers.settle.is_some() => {
                    schedule.want(RoundRequest { force_settle: true, ..RoundRequest::due(Trigger::SettleInterval) });
                }
                _ = tick(&mut timers.urgent) => {
                    let st = self.state();
                    if st.pending.has_urgent() || st.pending.has_withdrawals() {
                        drop(st);
                        schedule.want(RoundRequest::due(Trigger::Withdrawal));
                    }
                }
                () = sleep_until(retry_at), if retry_at.is_some() => {
                    retry_at = None;
                    schedule.retry_due();
                }
            }
            if running.is_none()
                && let Some(req) = schedule.next(|| self.has_work())
            {
                retry_at = None;
                running = Some(self.spawn_round(req));
            }
        }

        tracing::info!(target: TARGET, "shutting down: stopping the follower and the current round");
        self.stop_follower(stop_tx, follower).await;
        if let Some(h) = running.take() {
            let _ = h.await;
        }
        *self.inner.events.lock().unwrap_or_else(|p| p.into_inner()) = Some(events);
        let last_round = if policy.claim_on_shutdown {
            Some(self.final_round().await)
        } else {
            None
        };
        let report = ShutdownReport {
            last_round,
            gas: self.gas_report(),
            outstanding: self.outstanding(),
        };
        tracing::info!(target: TARGET, outstanding_channels = report.outstanding.0, outstanding = %report.outstanding.1, gas = ?report.gas, "settler stopped");
        Ok(report)
    }

    /// The engine's events, for [`Self::run`] alone.
    fn take_events(&self) -> Result<broadcast::Receiver<EngineEvent>> {
        self.inner
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| Error::Policy("Settler::run is already running".into()))
    }

    /// Starts the chain follower, if configured; it stops when the sender sends `true`.
    fn start_follower(&self) -> (watch::Sender<bool>, Option<JoinHandle<Result<()>>>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let follower = self.inner.watcher.clone().map(|cfg| {
            let f = ChainFollower::new(
                self.inner.engine.clone(),
                self.inner.relayer.reader().clone(),
                cfg,
            );
            let this = self.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let stopped = async move {
                    let _ = stop.wait_for(|v| *v).await;
                };
                f.run(stopped, move |u| this.on_follower(u)).await
            })
        });
        (stop_tx, follower)
    }

    async fn stop_follower(
        &self,
        stop_tx: watch::Sender<bool>,
        follower: Option<JoinHandle<Result<()>>>,
    ) {
        let _ = stop_tx.send(true);
        if let Some(h) = follower {
            match h.await {
                Ok(Err(e)) => {
                    tracing::warn!(target: TARGET, error = %e, "chain follower ended with an error")
                }
                Err(e) => tracing::warn!(target: TARGET, error = %e, "chain follower task failed"),
                Ok(Ok(())) => {}
            }
        }
    }

    /// An engine event received by [`Self::run`]; returns the trigger it calls for, if any.
    fn on_recv(
        &self,
        ev: std::result::Result<EngineEvent, broadcast::error::RecvError>,
        open: &mut bool,
    ) -> Option<Trigger> {
        let mut st = self.state();
        match ev {
            Ok(ev) => self.on_event(&mut st, ev),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                self.on_lagged(&mut st, n);
                Some(Trigger::Threshold)
            }
            Err(broadcast::error::RecvError::Closed) => {
                *open = false;
                None
            }
        }
    }

    /// A round started by [`Self::run`] ended; returns the wait before its retry, if one is due.
    fn round_ended(
        &self,
        joined: std::result::Result<Result<RoundReport>, tokio::task::JoinError>,
        schedule: &mut Schedule,
    ) -> Option<Duration> {
        match joined {
            Ok(Ok(r)) if r.unconfirmed.is_empty() => schedule.ended(RoundEnd::Clean, false),
            // sent but not confirmed in time: finish it (recover) after a while
            Ok(Ok(_)) => schedule.ended(RoundEnd::Unconfirmed, false),
            Ok(Err(e)) => {
                let urgent = self.state().pending.has_urgent();
                let wait = schedule.ended(RoundEnd::Failed, urgent);
                if let Some(wait) = wait {
                    tracing::warn!(target: TARGET, error = %e, retry_in = ?wait, "settlement round failed");
                }
                wait
            }
            Err(e) => {
                tracing::error!(target: TARGET, error = %e, "settlement round task failed");
                None
            }
        }
    }

    /// Whether a due round has something to do: a rescan, a due channel, a pending withdrawal,
    /// or (settling after claims) a pair not yet settled.
    fn has_work(&self) -> bool {
        let policy = &self.inner.policy;
        let st = self.state();
        st.rescan
            || st.pending.any_due(self.now_ms(), policy.threshold)
            || st.pending.has_withdrawals()
            || (policy.settle == SettleMode::AfterClaims && !st.unsettled.is_empty())
    }

    /// The shutdown round: claims everything outstanding and settles.
    async fn final_round(&self) -> RoundReport {
        self.state().rescan = true;
        let req = RoundRequest {
            trigger: Trigger::Shutdown,
            scope: Scope::Everything,
            force_settle: true,
        };
        match self.round(req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(target: TARGET, error = %e, "final claim round failed; open journal entries are finished by the next start");
                let mut r = RoundReport::new(Trigger::Shutdown);
                r.errors.push(e.to_string());
                r
            }
        }
    }

    fn spawn_round(&self, req: RoundRequest) -> JoinHandle<Result<RoundReport>> {
        let this = self.clone();
        tokio::spawn(async move { this.round(req).await })
    }
}

/// The run loop's timers (`None`: off).
struct Timers {
    claim: Option<tokio::time::Interval>,
    scan: Option<tokio::time::Interval>,
    settle: Option<tokio::time::Interval>,
    urgent: Option<tokio::time::Interval>,
}

impl Timers {
    fn new(policy: &SettlePolicy) -> Self {
        let ticker = |d: Option<Duration>| {
            d.map(|d| {
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            })
        };
        Self {
            claim: ticker(policy.interval),
            scan: ticker(policy.scan_interval),
            settle: ticker(match policy.settle {
                SettleMode::Every(d) => Some(d),
                _ => None,
            }),
            urgent: ticker(Some(policy.urgent_retry)),
        }
    }
}

async fn tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn observe(st: &mut State, r: &ChannelRecord) {
    let pair = (r.config.receiver, r.config.token);
    st.pairs.insert(pair);
    st.channel_pairs.insert(r.channel_id, pair);
    if st.lost.get(&r.channel_id).is_some_and(|c| *c >= r.charged) {
        // reported lost already, nothing charged since
        return;
    }
    st.pending.observe(r);
}

fn log_round(r: &RoundReport) {
    let busy = !r.claims.is_empty()
        || !r.settles.is_empty()
        || !r.recovered.is_empty()
        || !r.is_clean()
        || !r.lost.is_empty();
    if busy {
        tracing::info!(
            target: TARGET,
            trigger = ?r.trigger,
            considered = r.considered,
            claim_txs = r.claims.len(),
            channels_claimed = r.channels_claimed(),
            already_claimed = r.already_claimed.len(),
            in_flight = r.in_flight.len(),
            recovered = r.recovered.len(),
            settles = r.settles.len(),
            unconfirmed = r.unconfirmed.len(),
            failed = r.failed.len(),
            lost = r.lost.len(),
            errors = r.errors.len(),
            "settlement round"
        );
    } else {
        tracing::debug!(target: TARGET, trigger = ?r.trigger, considered = r.considered, "settlement round: nothing to do");
    }
}

async fn join<T>(h: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match h {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}
