//! The settler's bookkeeping, without I/O: which channels have unclaimed charges, which are due
//! under the policy, which have a pending withdrawal, and how claim rows are cut into
//! transactions. Time comes in as arguments.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use alloy_primitives::{Address, B256};
use paychan_core::batch::{ClaimRow, payee::ChannelRecord};

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
    /// Not before this instant after a failure.
    pub retry_at: Option<Instant>,
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
    pub(crate) fn failed(&mut self, id: B256, now: Instant, base: Duration, max: Duration) {
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
        p.retry_at = Some(now + base.saturating_mul(factor).min(cap));
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
    pub(crate) fn any_due(&self, now: Instant, threshold: Option<u128>) -> bool {
        self.map
            .values()
            .any(|p| ready(p, now) && is_due(p, threshold))
    }

    /// The channels `scope` selects, the most urgent first: pending withdrawals (earliest
    /// deadline first), then by unclaimed amount, largest first.
    pub(crate) fn select(&self, scope: Scope, now: Instant, threshold: Option<u128>) -> Vec<B256> {
        let mut out: Vec<(&B256, &Pending)> = self
            .map
            .iter()
            .filter(|(_, p)| p.unclaimed() > 0)
            .filter(|(_, p)| match scope {
                Scope::Due => ready(p, now) && is_due(p, threshold),
                Scope::All => ready(p, now),
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

fn ready(p: &Pending, now: Instant) -> bool {
    p.retry_at.is_none_or(|t| now >= t)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use alloy_primitives::{Bytes, U256};
    use paychan_core::batch::{ChannelConfig, ClaimVoucher, payee::OnchainState};

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
        let now = Instant::now();
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
        let now = Instant::now();
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
        assert!(s.get(&id(2)).unwrap().retry_at.unwrap() <= now + Duration::from_secs(5));
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
}
