//! The settler's decisions, without I/O: which channels have unclaimed charges, which are due
//! under the policy, which have a pending withdrawal, what a claim round does with each channel
//! ([`plan_row`]), how claim rows are cut into transactions, and when the run loop starts a round
//! ([`Schedule`]). Time comes in as arguments: the settler's monotonic clock in milliseconds
//! (`now_ms`), or chain time in unix seconds.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use alloy_primitives::{Address, B256, Bytes};
use paychan_core::batch::{
    ClaimRow, ClaimVoucher,
    payee::{ChannelRecord, OnchainState},
};

use crate::policy::{SettleMode, SettlePolicy};

/// Why a round ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The first round of [`Settler::run`](crate::Settler::run): restart reconciliation, store
    /// scan, due claims.
    Startup,
    /// The claim interval elapsed.
    Interval,
    /// A channel reached the threshold.
    Threshold,
    /// A pending withdrawal threatens unclaimed charges (or its last call is due).
    Withdrawal,
    /// The settle interval elapsed.
    SettleInterval,
    /// A retry after a round failed (the chain was unreachable).
    Retry,
    /// [`Settler::claim_now`](crate::Settler::claim_now).
    Manual,
    /// Graceful shutdown.
    Shutdown,
}

/// Which channels a claim round considers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Channels with a pending withdrawal, and channels over the threshold.
    Due,
    /// Every channel with unclaimed charges not waiting out a retry backoff.
    All,
    /// Every channel with unclaimed charges, backoffs ignored (manual rounds, shutdown).
    Everything,
}

/// What the settler knows about a channel with unclaimed charges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Pending {
    /// Charged total, as last seen.
    pub charged: u128,
    /// Claimed on chain, as last seen.
    pub claimed: u128,
    /// Deadline (chain time, unix seconds) of a pending withdrawal.
    pub deadline: Option<u64>,
    /// Consecutive failures of this channel's claim on its own.
    pub failures: u32,
    /// Not before this time (the settler's clock, milliseconds) after a failure.
    pub retry_at: Option<u64>,
}

impl Pending {
    pub(crate) fn unclaimed(&self) -> u128 {
        self.charged.saturating_sub(self.claimed)
    }
}

/// A pending withdrawal being watched for its last call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Withdrawal {
    deadline: u64,
    last_call_done: bool,
}

/// The channels with unclaimed charges, and the pending withdrawals.
#[derive(Debug, Default)]
pub(crate) struct PendingSet {
    map: HashMap<B256, Pending>,
    withdrawals: HashMap<B256, Withdrawal>,
}

impl PendingSet {
    /// Channels with unclaimed charges.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn get(&self, id: &B256) -> Option<&Pending> {
        self.map.get(id)
    }

    /// Total unclaimed over every channel.
    pub(crate) fn unclaimed(&self) -> u128 {
        self.map
            .values()
            .fold(0u128, |a, p| a.saturating_add(p.unclaimed()))
    }

    /// A charge was committed (`unclaimed` relative to the engine's mirrored claimed total).
    /// Returns the channel's unclaimed amount now.
    pub(crate) fn charged(&mut self, id: B256, charged_cumulative: u128, unclaimed: u128) -> u128 {
        let p = self.map.entry(id).or_default();
        p.charged = p.charged.max(charged_cumulative);
        p.claimed = p.claimed.max(charged_cumulative.saturating_sub(unclaimed));
        let u = p.unclaimed();
        if self.withdrawals.contains_key(&id) && p.deadline.is_none() {
            p.deadline = self.withdrawals.get(&id).map(|w| w.deadline);
        }
        u
    }

    /// A record read from the store or the engine: its charged total, mirrored claimed total and
    /// pending withdrawal.
    pub(crate) fn observe(&mut self, r: &ChannelRecord) {
        let deadline = r.withdrawal_deadline();
        match deadline {
            Some(d) => {
                let w = self.withdrawals.entry(r.channel_id).or_insert(Withdrawal {
                    deadline: d,
                    last_call_done: false,
                });
                if w.deadline != d {
                    *w = Withdrawal {
                        deadline: d,
                        last_call_done: false,
                    };
                }
            }
            None => {
                self.withdrawals.remove(&r.channel_id);
            }
        }
        if r.unclaimed() == 0 && !self.map.contains_key(&r.channel_id) {
            return;
        }
        let p = self.map.entry(r.channel_id).or_default();
        p.charged = p.charged.max(r.charged);
        p.claimed = p.claimed.max(r.onchain.total_claimed);
        p.deadline = deadline;
        // claimed up to the charged total, unless we know of later charges
        if p.unclaimed() == 0 {
            self.map.remove(&r.channel_id);
        }
    }

    /// The engine reported a pending withdrawal threatening unclaimed charges.
    pub(crate) fn needs_claim(&mut self, id: B256, deadline: u64, unclaimed: u128) {
        let w = self.withdrawals.entry(id).or_insert(Withdrawal {
            deadline,
            last_call_done: false,
        });
        if w.deadline != deadline {
            *w = Withdrawal {
                deadline,
                last_call_done: false,
            };
        }
        let p = self.map.entry(id).or_default();
        p.deadline = Some(deadline);
        if p.unclaimed() < unclaimed {
            // the event knows more than we do: trust its amount
            p.charged = p.claimed.saturating_add(unclaimed);
        }
        // a withdrawal overrides any backoff
        p.retry_at = None;
    }

    /// The channel is claimed on chain up to `total_claimed` (by us or anyone).
    pub(crate) fn claimed(&mut self, id: B256, total_claimed: u128) {
        if let Some(p) = self.map.get_mut(&id) {
            p.claimed = p.claimed.max(total_claimed);
            p.failures = 0;
            p.retry_at = None;
            if p.unclaimed() == 0 {
                self.map.remove(&id);
            }
        }
    }

    /// Nothing more can be claimed on this channel (its balance is below the charged total).
    pub(crate) fn forget(&mut self, id: &B256) {
        self.map.remove(id);
    }

    /// The channel's claim failed on its own: back off before trying again.
    pub(crate) fn failed(&mut self, id: B256, now_ms: u64, base: Duration, max: Duration) {
        let p = self.map.entry(id).or_default();
        p.failures = p.failures.saturating_add(1);
        let cap = if p.deadline.is_some() {
            base.min(max)
        } else {
            max
        };
        let factor = 1u32
            .checked_shl(p.failures.saturating_sub(1).min(16))
            .unwrap_or(u32::MAX);
        p.retry_at = Some(now_ms.saturating_add(millis(base.saturating_mul(factor).min(cap))));
    }

    /// Whether some channel with a pending withdrawal has unclaimed charges.
    pub(crate) fn has_urgent(&self) -> bool {
        self.map
            .values()
            .any(|p| p.deadline.is_some() && p.unclaimed() > 0)
    }

    /// Whether a pending withdrawal is being watched.
    pub(crate) fn has_withdrawals(&self) -> bool {
        !self.withdrawals.is_empty()
    }

    /// Whether some channel is due under `threshold` or a withdrawal.
    pub(crate) fn any_due(&self, now_ms: u64, threshold: Option<u128>) -> bool {
        self.map
            .values()
            .any(|p| ready(p, now_ms) && is_due(p, threshold))
    }

    /// The channels `scope` selects, the most urgent first: pending withdrawals (earliest
    /// deadline first), then by unclaimed amount, largest first.
    pub(crate) fn select(&self, scope: Scope, now_ms: u64, threshold: Option<u128>) -> Vec<B256> {
        let mut out: Vec<(&B256, &Pending)> = self
            .map
            .iter()
            .filter(|(_, p)| p.unclaimed() > 0)
            .filter(|(_, p)| match scope {
                Scope::Due => ready(p, now_ms) && is_due(p, threshold),
                Scope::All => ready(p, now_ms),
                Scope::Everything => true,
            })
            .collect();
        out.sort_by(|(a_id, a), (b_id, b)| {
            let ka = (a.deadline.is_none(), a.deadline.unwrap_or(0));
            let kb = (b.deadline.is_none(), b.deadline.unwrap_or(0));
            ka.cmp(&kb)
                .then(b.unclaimed().cmp(&a.unclaimed()))
                .then(a_id.cmp(b_id))
        });
        out.into_iter().map(|(id, _)| *id).collect()
    }

    /// Withdrawals whose last call is due at chain time `chain_now` (`deadline − margin` reached,
    /// not yet called). Withdrawals past their deadline are dropped.
    pub(crate) fn last_calls(&mut self, chain_now: u64, margin: Duration) -> Vec<B256> {
        let margin = margin.as_secs();
        let mut out = Vec::new();
        self.withdrawals.retain(|id, w| {
            if chain_now > w.deadline {
                return false;
            }
            if !w.last_call_done && chain_now.saturating_add(margin) >= w.deadline {
                w.last_call_done = true;
                out.push(*id);
            }
            true
        });
        out.sort_unstable();
        out
    }
}

fn ready(p: &Pending, now_ms: u64) -> bool {
    p.retry_at.is_none_or(|t| now_ms >= t)
}

/// `d` in whole milliseconds, rounded up (a backoff never ends early).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

fn is_due(p: &Pending, threshold: Option<u128>) -> bool {
    p.deadline.is_some() || threshold.is_some_and(|t| p.unclaimed() >= t)
}

/// Cuts claim rows into transactions: rows grouped by receiver authorizer (one `ClaimBatch`
/// signature covers one authorizer), in order of first appearance, then chunks of at most
/// `per_tx` rows.
pub(crate) fn batches(rows: Vec<ClaimRow>, per_tx: usize) -> Vec<(Address, Vec<ClaimRow>)> {
    let per_tx = per_tx.max(1);
    let mut order: Vec<Address> = Vec::new();
    let mut groups: BTreeMap<Address, Vec<ClaimRow>> = BTreeMap::new();
    for r in rows {
        let a = r.voucher.channel.receiver_authorizer;
        if !groups.contains_key(&a) {
            order.push(a);
        }
        groups.entry(a).or_default().push(r);
    }
    let mut out = Vec::new();
    for a in order {
        let rows = groups.remove(&a).unwrap_or_default();
        let mut it = rows.into_iter().peekable();
        while it.peek().is_some() {
            out.push((a, it.by_ref().take(per_tx).collect()));
        }
    }
    out
}

/// What a claim round does with one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RowAction {
    /// Claim it: one row of a `claimWithSignature`.
    Claim(ClaimRow),
    /// Nothing to send: the chain has it claimed up to `total_claimed`, at or above what can be
    /// claimed.
    Claimed {
        /// `totalClaimed` on chain.
        total_claimed: u128,
        /// Claimed up to the charged total (by anyone): reported as already claimed.
        fully: bool,
        /// The chain moved since the record was written: mirror it.
        moved: bool,
    },
    /// A claim still open in the journal covers the target: not sent again.
    InFlight,
    /// Unclaimed charges without a voucher signature (cannot happen; dropped to be safe).
    NoVoucher,
    /// Neither a key for the receiver authorizer nor the relayer as receiver or authorizer.
    NoKey,
}

/// [`plan_row`]'s answer for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowPlan {
    /// What to do with the channel.
    pub action: RowAction,
    /// The amount that can no longer be claimed because the channel's balance fell below its
    /// charged total (a withdrawal was finalized first); `None` when nothing is lost.
    pub lost: Option<u128>,
}

/// Decides what a claim round does with a channel, from its stored record and a fresh read of
/// its on-chain state: the target is the charged total capped to the balance; nothing is sent
/// when the chain has that much claimed already or when an open claim (`covered`, its target)
/// reaches it; a row needs the voucher signature and a way to authorize the claim
/// (`can_claim`).
pub(crate) fn plan_row(
    rec: &ChannelRecord,
    chain: &OnchainState,
    covered: Option<u128>,
    can_claim: bool,
) -> RowPlan {
    let target = rec.charged.min(chain.balance);
    let lost = (target < rec.charged && rec.charged > chain.total_claimed)
        .then(|| rec.charged - target.max(chain.total_claimed));
    let action = if target <= chain.total_claimed {
        RowAction::Claimed {
            total_claimed: chain.total_claimed,
            fully: rec.charged <= chain.total_claimed,
            moved: rec.onchain != *chain,
        }
    } else if covered.is_some_and(|t| t >= target) {
        RowAction::InFlight
    } else if let Some(sig) = rec.signature {
        if can_claim {
            RowAction::Claim(ClaimRow {
                voucher: ClaimVoucher {
                    channel: rec.config,
                    max_claimable_amount: rec.signed_max_claimable,
                },
                signature: Bytes::copy_from_slice(&sig.to_bytes()),
                total_claimed: target,
            })
        } else {
            RowAction::NoKey
        }
    } else {
        RowAction::NoVoucher
    };
    RowPlan { action, lost }
}

/// A request for a claim round, as the run loop collects them between rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoundRequest {
    /// Why the round runs (reported, and decides which pairs a settle looks at).
    pub trigger: Trigger,
    /// Which channels the round considers.
    pub scope: Scope,
    /// Settle after the claims whatever the policy's settle mode says.
    pub force_settle: bool,
}

impl RoundRequest {
    /// A round over the due channels, settling as the policy says.
    pub(crate) fn due(trigger: Trigger) -> Self {
        Self {
            trigger,
            scope: Scope::Due,
            force_settle: false,
        }
    }

    /// Keeps the stronger of two requests: the wider scope, a withdrawal (the most telling
    /// reason) or a retry (which must not be skipped as idle) over other triggers, and a forced
    /// settle if either asks for one.
    pub(crate) fn merge(self, other: Self) -> Self {
        let rank = |s: Scope| match s {
            Scope::Due => 0,
            Scope::All => 1,
            Scope::Everything => 2,
        };
        let wider = if rank(other.scope) > rank(self.scope) {
            other
        } else {
            self
        };
        let trigger = [Trigger::Withdrawal, Trigger::Retry]
            .into_iter()
            .find(|x| self.trigger == *x || other.trigger == *x)
            .unwrap_or(wider.trigger);
        Self {
            trigger,
            scope: wider.scope,
            force_settle: self.force_settle || other.force_settle,
        }
    }

    /// Whether the round may be skipped when nothing is due and nothing waits to be settled.
    pub(crate) fn skippable(&self) -> bool {
        self.scope == Scope::Due && !self.force_settle && self.trigger != Trigger::Retry
    }

    /// Whether the round settles after its claims.
    pub(crate) fn settles(&self, mode: SettleMode) -> bool {
        self.trigger == Trigger::Shutdown || self.force_settle || mode == SettleMode::AfterClaims
    }

    /// Whether its settle looks at every (receiver, token) seen (rounds that may follow a
    /// restart or a long gap) rather than only at pairs with claims of ours not yet swept.
    pub(crate) fn settles_every_pair(&self) -> bool {
        matches!(
            self.trigger,
            Trigger::Shutdown | Trigger::Startup | Trigger::SettleInterval
        )
    }
}

/// How a round the run loop started ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoundEnd {
    /// Done, nothing left unconfirmed.
    Clean,
    /// Done, but some action was sent and not confirmed in time.
    Unconfirmed,
    /// Failed (the chain was unreachable, say).
    Failed,
}

/// The run loop's scheduling, without timers: the requests collected while a round runs, the
/// retry after a failed or unconfirmed round (with its doubling backoff), and which request
/// starts the next round.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    want: Option<RoundRequest>,
    retry: Option<RoundRequest>,
    retry_wait: Duration,
    last: RoundRequest,
    backoff: Duration,
    max_backoff: Duration,
    urgent_retry: Duration,
}

impl Schedule {
    /// A schedule whose first round, `first`, has been started.
    pub(crate) fn new(policy: &SettlePolicy, first: RoundRequest) -> Self {
        Self {
            want: None,
            retry: None,
            retry_wait: policy.retry_backoff,
            last: first,
            backoff: policy.retry_backoff,
            max_backoff: policy.max_backoff,
            urgent_retry: policy.urgent_retry,
        }
    }

    /// Asks for a round (merged into any request not started yet).
    pub(crate) fn want(&mut self, r: RoundRequest) {
        self.want = Some(match self.want {
            Some(w) => w.merge(r),
            None => r,
        });
    }

    /// The running round ended. Returns the wait before a retry, when one is due: after an
    /// unconfirmed round, a due round (which finishes the open entries); after a failed one,
    /// the failed round again, sooner while a withdrawal is `urgent`.
    pub(crate) fn ended(&mut self, end: RoundEnd, urgent: bool) -> Option<Duration> {
        let (wait, scope, force_settle) = match end {
            RoundEnd::Clean => {
                self.retry_wait = self.backoff;
                return None;
            }
            RoundEnd::Unconfirmed => (self.retry_wait, Scope::Due, false),
            RoundEnd::Failed if urgent => (
                self.retry_wait.min(self.urgent_retry),
                self.last.scope,
                self.last.force_settle,
            ),
            RoundEnd::Failed => (self.retry_wait, self.last.scope, self.last.force_settle),
        };
        self.retry = Some(RoundRequest {
            trigger: Trigger::Retry,
            scope,
            force_settle,
        });
        self.retry_wait = (self.retry_wait * 2).min(self.max_backoff);
        Some(wait)
    }

    /// Whether a retry waits for its timer.
    #[cfg(test)]
    fn retry_pending(&self) -> bool {
        self.retry.is_some()
    }

    /// The retry's wait is over: it becomes a request.
    pub(crate) fn retry_due(&mut self) {
        if let Some(r) = self.retry.take() {
            self.want(r);
        }
    }

    /// The round to start now, if any, when no round runs. While a retry waits, only a
    /// withdrawal jumps the queue. A skippable request is dropped when `has_work` says nothing
    /// is due and nothing waits to be settled. Starting a round cancels the pending retry.
    pub(crate) fn next(&mut self, has_work: impl FnOnce() -> bool) -> Option<RoundRequest> {
        let hold =
            self.retry.is_some() && self.want.is_some_and(|w| w.trigger != Trigger::Withdrawal);
        if hold {
            return None;
        }
        let r = self.want.take()?;
        if r.skippable() && !has_work() {
            return None;
        }
        self.retry = None;
        self.last = r;
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use alloy_primitives::U256;
    use paychan_core::{batch::ChannelConfig, sig::LocalSigner};

    fn id(n: u8) -> B256 {
        B256::repeat_byte(n)
    }

    fn record(n: u8, charged: u128, claimed: u128, requested_at: u64) -> ChannelRecord {
        let config = ChannelConfig {
            payer: Address::repeat_byte(1),
            payer_authorizer: Address::repeat_byte(1),
            receiver: Address::repeat_byte(2),
            receiver_authorizer: Address::repeat_byte(3),
            token: Address::repeat_byte(4),
            withdraw_delay: 900,
            salt: B256::ZERO,
        };
        let mut r = ChannelRecord::from_chain(
            id(n),
            config,
            OnchainState {
                balance: 1_000_000,
                total_claimed: claimed,
                withdraw_requested_at: requested_at,
                refund_nonce: U256::ZERO,
            },
            0,
        );
        r.charged = charged;
        r.signed_max_claimable = charged;
        r
    }

    #[test]
    fn charges_threshold_and_claims() {
        let now = 1_000;
        let mut s = PendingSet::default();
        assert_eq!(s.charged(id(1), 1_000, 1_000), 1_000);
        assert_eq!(s.charged(id(1), 3_000, 3_000), 3_000);
        assert_eq!(s.charged(id(2), 500, 500), 500);
        assert!(!s.any_due(now, Some(5_000)));
        assert!(s.select(Scope::Due, now, Some(5_000)).is_empty());
        assert_eq!(s.select(Scope::Due, now, Some(3_000)), vec![id(1)]);
        assert_eq!(s.select(Scope::All, now, None), vec![id(1), id(2)]);
        assert_eq!(s.unclaimed(), 3_500);
        // claimed up to 2,000 by someone; still 1,000 open
        s.claimed(id(1), 2_000);
        assert_eq!(s.get(&id(1)).unwrap().unclaimed(), 1_000);
        s.claimed(id(1), 3_000);
        assert!(s.get(&id(1)).is_none());
        // a later charge after a claim: the event's unclaimed is relative to the mirror
        assert_eq!(s.charged(id(1), 3_400, 400), 400);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn withdrawals_come_first_and_override_backoff() {
        let now = 1_000;
        let mut s = PendingSet::default();
        s.charged(id(1), 9_000, 9_000);
        s.charged(id(2), 100, 100);
        s.failed(id(2), now, Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!(s.select(Scope::All, now, None), vec![id(1)]);
        assert_eq!(s.select(Scope::Everything, now, None), vec![id(1), id(2)]);
        s.needs_claim(id(2), 5_000, 100);
        assert!(s.has_urgent());
        assert_eq!(s.select(Scope::Due, now, None), vec![id(2)]);
        assert_eq!(s.select(Scope::All, now, None), vec![id(2), id(1)]);
        // backoff of an urgent channel is capped at the base
        s.failed(id(2), now, Duration::from_secs(5), Duration::from_secs(60));
        s.failed(id(2), now, Duration::from_secs(5), Duration::from_secs(60));
        assert!(s.get(&id(2)).unwrap().retry_at.unwrap() <= now + 5_000);
    }

    #[test]
    fn observed_records_track_withdrawals_and_last_calls() {
        let mut s = PendingSet::default();
        s.observe(&record(1, 2_000, 0, 10_000));
        s.observe(&record(2, 500, 500, 20_000)); // nothing unclaimed, but watched
        s.observe(&record(3, 700, 0, 0));
        assert_eq!(s.len(), 2);
        assert!(s.has_withdrawals());
        assert_eq!(s.get(&id(1)).unwrap().deadline, Some(10_900));
        let margin = Duration::from_secs(300);
        assert!(s.last_calls(10_000, margin).is_empty());
        assert_eq!(s.last_calls(10_600, margin), vec![id(1)]);
        // once
        assert!(s.last_calls(10_700, margin).is_empty());
        assert_eq!(s.last_calls(20_700, margin), vec![id(2)]);
        // past its deadline: dropped
        assert!(s.last_calls(30_000, margin).is_empty());
        assert!(!s.has_withdrawals());
        // a record with everything claimed is dropped, unless we know of more charges
        s.charged(id(3), 900, 900);
        s.observe(&record(3, 700, 700, 0));
        assert_eq!(s.get(&id(3)).unwrap().unclaimed(), 200);
        s.observe(&record(3, 900, 900, 0));
        assert!(s.get(&id(3)).is_none());
    }

    fn row(authorizer: u8, n: u8) -> ClaimRow {
        let mut c = record(n, 1, 0, 0).config;
        c.receiver_authorizer = Address::repeat_byte(authorizer);
        c.salt = B256::repeat_byte(n);
        ClaimRow {
            voucher: ClaimVoucher {
                channel: c,
                max_claimable_amount: 1,
            },
            signature: Bytes::new(),
            total_claimed: 1,
        }
    }

    #[test]
    fn rows_are_grouped_by_authorizer_and_chunked() {
        let rows = vec![row(9, 1), row(8, 2), row(9, 3), row(9, 4), row(8, 5)];
        let b = batches(rows, 2);
        let shape: Vec<(u8, Vec<u8>)> = b
            .iter()
            .map(|(a, rows)| {
                (
                    a.0[0],
                    rows.iter().map(|r| r.voucher.channel.salt.0[0]).collect(),
                )
            })
            .collect();
        assert_eq!(shape, vec![(9, vec![1, 3]), (9, vec![4]), (8, vec![2, 5])]);
        assert!(batches(Vec::new(), 10).is_empty());
    }
    #[test]
    fn nothing_due_selects_nothing() {
        let mut s = PendingSet::default();
        assert!(s.select(Scope::Everything, 0, Some(1)).is_empty());
        assert!(!s.any_due(0, Some(1)));
        s.charged(id(1), 10, 10);
        // under the threshold, no withdrawal: not due, but in the wider scopes
        assert!(!s.any_due(0, Some(11)));
        assert!(s.select(Scope::Due, 0, Some(11)).is_empty());
        assert!(s.select(Scope::Due, 0, None).is_empty());
        assert_eq!(s.select(Scope::All, 0, None), vec![id(1)]);
        // claimed meanwhile: gone from every scope
        s.claimed(id(1), 10);
        assert!(s.select(Scope::Everything, 0, None).is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_ends_on_time() {
        let mut s = PendingSet::default();
        s.charged(id(1), 100, 100);
        let (base, max) = (Duration::from_secs(2), Duration::from_secs(5));
        s.failed(id(1), 10_000, base, max);
        assert_eq!(s.get(&id(1)).unwrap().retry_at, Some(12_000));
        assert!(s.select(Scope::All, 11_999, None).is_empty());
        assert_eq!(s.select(Scope::All, 12_000, None), vec![id(1)]);
        s.failed(id(1), 10_000, base, max);
        assert_eq!(s.get(&id(1)).unwrap().retry_at, Some(14_000));
        s.failed(id(1), 10_000, base, max);
        assert_eq!(s.get(&id(1)).unwrap().retry_at, Some(15_000));
        assert_eq!(s.get(&id(1)).unwrap().failures, 3);
        // a threshold-due channel in backoff is not due until the backoff ends
        assert!(!s.any_due(14_999, Some(100)));
        assert!(s.any_due(15_000, Some(100)));
        // a confirmed claim clears the backoff
        s.charged(id(1), 200, 200);
        s.claimed(id(1), 100);
        assert_eq!(s.get(&id(1)).unwrap().retry_at, None);
        // a sub-millisecond backoff still waits a millisecond
        s.failed(id(1), 7, Duration::from_micros(10), max);
        assert_eq!(s.get(&id(1)).unwrap().retry_at, Some(8));
    }

    #[test]
    fn selection_orders_deadlines_then_amounts() {
        let mut s = PendingSet::default();
        s.charged(id(1), 100, 100);
        s.charged(id(2), 900, 900);
        s.charged(id(3), 900, 900);
        s.needs_claim(id(4), 7_000, 5);
        s.needs_claim(id(5), 6_000, 5);
        // earliest deadline first, then the largest amount, then the channel id
        assert_eq!(
            s.select(Scope::All, 0, None),
            vec![id(5), id(4), id(2), id(3), id(1)]
        );
        // withdrawal-driven and amount-driven channels are due; the small one is not
        assert_eq!(
            s.select(Scope::Due, 0, Some(900)),
            vec![id(5), id(4), id(2), id(3)]
        );
        assert_eq!(s.select(Scope::Due, 0, None), vec![id(5), id(4)]);
    }

    fn signed(mut r: ChannelRecord) -> ChannelRecord {
        let key = LocalSigner::from_bytes(&B256::repeat_byte(7)).unwrap();
        r.signature = Some(key.sign_digest(&B256::repeat_byte(9)).unwrap());
        r
    }

    fn chain(balance: u128, total_claimed: u128) -> OnchainState {
        OnchainState {
            balance,
            total_claimed,
            withdraw_requested_at: 0,
            refund_nonce: U256::ZERO,
        }
    }

    #[test]
    fn a_due_row_claims_the_charged_total() {
        let rec = signed(record(1, 2_000, 500, 0));
        let p = plan_row(&rec, &chain(1_000_000, 500), None, true);
        assert_eq!(p.lost, None);
        let RowAction::Claim(row) = p.action else {
            panic!("expected a claim, got {:?}", p.action)
        };
        assert_eq!(row.total_claimed, 2_000);
        assert_eq!(row.voucher.max_claimable_amount, 2_000);
        assert_eq!(row.voucher.channel, rec.config);
        assert_eq!(
            row.signature.as_ref(),
            rec.signature.unwrap().to_bytes().as_slice()
        );
    }

    #[test]
    fn a_row_already_claimed_is_not_sent() {
        let rec = signed(record(1, 2_000, 500, 0));
        // claimed by someone (a refund's claim) up to the charged total: the chain moved
        let p = plan_row(&rec, &chain(1_000_000, 2_000), None, true);
        assert_eq!(
            p.action,
            RowAction::Claimed {
                total_claimed: 2_000,
                fully: true,
                moved: true
            }
        );
        // the record already knows it: nothing moved
        let rec = signed(record(1, 2_000, 2_000, 0));
        let p = plan_row(&rec, &rec.onchain.clone(), None, true);
        assert_eq!(
            p.action,
            RowAction::Claimed {
                total_claimed: 2_000,
                fully: true,
                moved: false
            }
        );
        assert_eq!(p.lost, None);
    }

    #[test]
    fn a_row_is_capped_to_the_balance_and_reports_the_loss() {
        let rec = signed(record(1, 2_000, 500, 0));
        let p = plan_row(&rec, &chain(1_500, 500), None, true);
        assert_eq!(p.lost, Some(500));
        assert!(matches!(
            p.action,
            RowAction::Claim(ClaimRow {
                total_claimed: 1_500,
                ..
            })
        ));
        // the balance is all claimed: nothing to send, and not claimed up to the charges
        let p = plan_row(&rec, &chain(1_500, 1_500), None, true);
        assert_eq!(p.lost, Some(500));
        assert_eq!(
            p.action,
            RowAction::Claimed {
                total_claimed: 1_500,
                fully: false,
                moved: true
            }
        );
        // claimed above the balance by someone: the loss is counted from the claimed total
        let p = plan_row(&rec, &chain(1_500, 1_800), None, true);
        assert_eq!(p.lost, Some(200));
    }

    #[test]
    fn an_open_claim_covers_its_target_only() {
        let rec = signed(record(1, 2_000, 0, 0));
        let c = chain(1_000_000, 0);
        assert_eq!(
            plan_row(&rec, &c, Some(2_000), true).action,
            RowAction::InFlight
        );
        assert_eq!(
            plan_row(&rec, &c, Some(3_000), true).action,
            RowAction::InFlight
        );
        // charged further since that claim was sent: claim again
        assert!(matches!(
            plan_row(&rec, &c, Some(1_999), true).action,
            RowAction::Claim(ClaimRow {
                total_claimed: 2_000,
                ..
            })
        ));
    }

    #[test]
    fn a_row_needs_a_voucher_and_a_key() {
        let c = chain(1_000_000, 0);
        let bare = record(1, 2_000, 0, 0);
        assert_eq!(plan_row(&bare, &c, None, true).action, RowAction::NoVoucher);
        let rec = signed(bare);
        assert_eq!(plan_row(&rec, &c, None, false).action, RowAction::NoKey);
        // the checks before them win: claimed or in flight is not a failure
        assert_eq!(
            plan_row(&rec, &c, Some(2_000), false).action,
            RowAction::InFlight
        );
        assert!(matches!(
            plan_row(&rec, &chain(1_000_000, 2_000), None, false).action,
            RowAction::Claimed { fully: true, .. }
        ));
    }

    #[test]
    fn a_zero_row_limit_still_sends_one_row_per_transaction() {
        let b = batches(vec![row(9, 1), row(9, 2)], 0);
        assert_eq!(b.len(), 2);
        assert!(b.iter().all(|(a, rows)| a.0[0] == 9 && rows.len() == 1));
        // a limit above the row count: one transaction
        assert_eq!(batches(vec![row(9, 1), row(9, 2)], 50).len(), 1);
    }

    fn req(trigger: Trigger, scope: Scope, force_settle: bool) -> RoundRequest {
        RoundRequest {
            trigger,
            scope,
            force_settle,
        }
    }

    #[test]
    fn merged_requests_keep_the_widest_scope_and_the_withdrawal() {
        let m = req(Trigger::Threshold, Scope::Due, false).merge(req(
            Trigger::Interval,
            Scope::All,
            false,
        ));
        assert_eq!(m, req(Trigger::Interval, Scope::All, false));
        let m = m.merge(req(Trigger::Withdrawal, Scope::Due, true));
        assert_eq!(m, req(Trigger::Withdrawal, Scope::All, true));
        let m = RoundRequest::due(Trigger::Threshold).merge(RoundRequest::due(Trigger::Retry));
        assert_eq!(m, req(Trigger::Retry, Scope::Due, false));
        // a withdrawal wins over a retry, whichever came first
        let m = RoundRequest::due(Trigger::Retry).merge(RoundRequest::due(Trigger::Withdrawal));
        assert_eq!(m.trigger, Trigger::Withdrawal);
        // equal scopes: the earlier request's trigger stays
        let m = RoundRequest::due(Trigger::Threshold).merge(RoundRequest::due(Trigger::Interval));
        assert_eq!(m.trigger, Trigger::Threshold);
    }

    #[test]
    fn which_rounds_settle_and_which_may_be_skipped() {
        let due = RoundRequest::due(Trigger::Threshold);
        assert!(due.skippable());
        assert!(!RoundRequest::due(Trigger::Retry).skippable());
        assert!(!req(Trigger::Interval, Scope::All, false).skippable());
        assert!(!req(Trigger::SettleInterval, Scope::Due, true).skippable());
        assert!(!due.settles(SettleMode::Manual));
        assert!(due.settles(SettleMode::AfterClaims));
        assert!(!due.settles(SettleMode::Every(Duration::from_secs(60))));
        assert!(req(Trigger::SettleInterval, Scope::Due, true).settles(SettleMode::Manual));
        assert!(req(Trigger::Shutdown, Scope::Everything, false).settles(SettleMode::Manual));
        assert!(!due.settles_every_pair());
        assert!(RoundRequest::due(Trigger::Startup).settles_every_pair());
        assert!(RoundRequest::due(Trigger::SettleInterval).settles_every_pair());
        assert!(RoundRequest::due(Trigger::Shutdown).settles_every_pair());
    }

    fn policy() -> SettlePolicy {
        SettlePolicy {
            retry_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            urgent_retry: Duration::from_secs(2),
            ..SettlePolicy::default()
        }
    }

    #[test]
    fn failed_rounds_retry_with_a_doubling_backoff() {
        let first = req(Trigger::Manual, Scope::Everything, true);
        let mut s = Schedule::new(&policy(), first);
        let secs = Duration::from_secs;
        assert_eq!(s.ended(RoundEnd::Failed, false), Some(secs(1)));
        assert!(s.retry_pending());
        // the retry repeats the failed round's scope and settle
        s.retry_due();
        assert_eq!(
            s.next(|| false),
            Some(req(Trigger::Retry, Scope::Everything, true))
        );
        assert_eq!(s.ended(RoundEnd::Failed, false), Some(secs(2)));
        s.retry_due();
        s.next(|| false);
        assert_eq!(s.ended(RoundEnd::Failed, false), Some(secs(4)));
        s.retry_due();
        s.next(|| false);
        assert_eq!(s.ended(RoundEnd::Failed, false), Some(secs(5)));
        s.retry_due();
        s.next(|| false);
        // while a withdrawal is pending, no longer than the urgent retry
        assert_eq!(s.ended(RoundEnd::Failed, true), Some(secs(2)));
        s.retry_due();
        s.next(|| false);
        // a clean round resets the backoff
        assert_eq!(s.ended(RoundEnd::Clean, false), None);
        assert!(!s.retry_pending());
        s.want(RoundRequest::due(Trigger::Threshold));
        s.next(|| true);
        assert_eq!(s.ended(RoundEnd::Failed, false), Some(secs(1)));
    }

    #[test]
    fn an_unconfirmed_round_is_finished_by_a_due_retry() {
        let mut s = Schedule::new(&policy(), req(Trigger::Manual, Scope::All, true));
        assert_eq!(
            s.ended(RoundEnd::Unconfirmed, false),
            Some(Duration::from_secs(1))
        );
        s.retry_due();
        assert!(!s.retry_pending());
        // a retry is never skipped as idle
        assert_eq!(
            s.next(|| false),
            Some(req(Trigger::Retry, Scope::Due, false))
        );
        assert_eq!(
            s.ended(RoundEnd::Unconfirmed, false),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn a_waiting_retry_holds_all_but_withdrawals() {
        let mut s = Schedule::new(&policy(), RoundRequest::due(Trigger::Startup));
        s.ended(RoundEnd::Failed, false);
        s.want(req(Trigger::Interval, Scope::All, false));
        assert_eq!(s.next(|| true), None);
        // the held request stays, and a withdrawal takes it along, cancelling the retry
        s.want(RoundRequest::due(Trigger::Withdrawal));
        assert_eq!(
            s.next(|| true),
            Some(req(Trigger::Withdrawal, Scope::All, false))
        );
        assert!(!s.retry_pending());
        assert_eq!(s.next(|| true), None);
    }

    #[test]
    fn idle_due_rounds_are_skipped() {
        let mut s = Schedule::new(&policy(), RoundRequest::due(Trigger::Startup));
        assert_eq!(s.ended(RoundEnd::Clean, false), None);
        assert_eq!(s.next(|| true), None); // nothing asked for
        s.want(RoundRequest::due(Trigger::Threshold));
        assert_eq!(s.next(|| false), None);
        // dropped, not kept for later
        assert_eq!(s.next(|| true), None);
        s.want(RoundRequest::due(Trigger::Threshold));
        assert_eq!(s.next(|| true), Some(RoundRequest::due(Trigger::Threshold)));
        // wider or settling rounds run even with nothing due
        s.want(req(Trigger::Interval, Scope::All, false));
        assert!(s.next(|| false).is_some());
        s.want(req(Trigger::SettleInterval, Scope::Due, true));
        assert!(s.next(|| false).is_some());
    }
}
