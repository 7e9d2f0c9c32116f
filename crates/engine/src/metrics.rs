//! Counters for metrics endpoints and the control plane.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// Engine counters. All monotonic.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Paid requests that reached the engine.
    pub requests: AtomicU64,
    /// Reservations granted (handler allowed to run).
    pub reserved: AtomicU64,
    /// Charges committed durably.
    pub committed: AtomicU64,
    /// Reservations aborted (handler failed or gave up).
    pub aborted: AtomicU64,
    /// Corrective 402s sent.
    pub corrective: AtomicU64,
    /// Requests refused because the channel was busy.
    pub busy: AtomicU64,
    /// On-chain state reads.
    pub chain_reads: AtomicU64,
    /// Chain reads refused because the cap on concurrent reads was reached.
    pub chain_reads_refused: AtomicU64,
    /// Vouchers for channels not held in memory refused by the cheap checks (binding,
    /// signature), before any lock, store read or chain read.
    pub screened_out: AtomicU64,
    /// Vouchers refused from the negative cache (channel recently found absent or empty).
    pub negative_hits: AtomicU64,
    /// Deposits and refunds refused by their per-channel rate limit.
    pub rate_limited: AtomicU64,
    /// Refunds executed.
    pub refunds: AtomicU64,
    /// Deposits executed.
    pub deposits: AtomicU64,
    /// Atomic units charged, low 64 bits (see `charged_hi`).
    charged_lo: AtomicU64,
    /// Atomic units charged, high 64 bits.
    charged_hi: AtomicU64,
    /// Store commit time, total nanoseconds.
    pub commit_nanos: AtomicU64,
    rejections: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_charged(&self, amount: u128) {
        // Two-word accumulator; carries are rare and approximate ordering is fine for metrics.
        let lo = u64::try_from(amount & u128::from(u64::MAX)).unwrap_or(u64::MAX);
        let hi = u64::try_from(amount >> 64).unwrap_or(u64::MAX);
        let prev = self.charged_lo.fetch_add(lo, Ordering::Relaxed);
        let carry = u64::from(prev.checked_add(lo).is_none());
        self.charged_hi.fetch_add(hi + carry, Ordering::Relaxed);
    }

    pub(crate) fn reject(&self, code: &str) {
        if let Ok(mut m) = self.rejections.lock() {
            *m.entry(code.to_owned()).or_default() += 1;
        }
    }

    /// Total atomic units charged.
    pub fn charged_total(&self) -> u128 {
        (u128::from(self.charged_hi.load(Ordering::Relaxed)) << 64)
            | u128::from(self.charged_lo.load(Ordering::Relaxed))
    }

    /// Refusals by error code.
    pub fn rejections(&self) -> BTreeMap<String, u64> {
        self.rejections
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// A counter's value.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
