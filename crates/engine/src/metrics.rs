//! Counters and latency histograms for metrics endpoints and the control plane.
//!
//! Everything here is updated on the request path with relaxed atomic adds only: no lock, no
//! allocation (a declined request's code is an index into a fixed table; only a code paychan
//! does not know, [`ErrorCode::Other`], goes to a locked map, and the engine never makes one).

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use paychan_core::ErrorCode;

/// Upper bounds of the latency histograms' buckets, seconds (a last `+Inf` bucket follows). From
/// a warm voucher check (tens of µs) to a long inference answer (minutes).
pub const LATENCY_BUCKETS: [f64; 20] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

const BUCKET_NANOS: [u64; LATENCY_BUCKETS.len()] = {
    let mut out = [0u64; LATENCY_BUCKETS.len()];
    let mut i = 0;
    while i < out.len() {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        {
            out[i] = (LATENCY_BUCKETS[i] * 1e9) as u64;
        }
        i += 1;
    }
    out
};

/// A latency histogram over [`LATENCY_BUCKETS`]: one atomic per bucket and one for the sum.
#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

/// A [`Histogram`]'s values at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts: `cumulative[i]` observations took at most `LATENCY_BUCKETS[i]`
    /// seconds; the last entry (`+Inf`) equals `count`.
    pub cumulative: [u64; LATENCY_BUCKETS.len() + 1],
    /// Observations.
    pub count: u64,
    /// Sum of the observations, seconds.
    pub sum_seconds: f64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKET_NANOS.partition_point(|&b| b < nanos);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts so far. The count is the sum of the buckets, so `+Inf` always equals it.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0u64; LATENCY_BUCKETS.len() + 1];
        let mut acc = 0u64;
        for (c, b) in cumulative.iter_mut().zip(&self.buckets) {
            acc = acc.saturating_add(b.load(Ordering::Relaxed));
            *c = acc;
        }
        #[allow(clippy::cast_precision_loss)]
        let sum_seconds = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        HistogramSnapshot {
            cumulative,
            count: acc,
            sum_seconds,
        }
    }
}

/// What a payment check ([`crate::Engine::begin`]) was for: the check histogram has one series
/// each, since a voucher is checked in memory while a deposit or a refund waits for the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// A voucher on a funded channel.
    Voucher,
    /// A deposit (executed on chain before the request is served).
    Deposit,
    /// A cooperative refund.
    Refund,
    /// Anything else (refused at once).
    Other,
}

impl CheckKind {
    /// Every kind, in [`Self::index`] order.
    pub const ALL: [CheckKind; 4] = [Self::Voucher, Self::Deposit, Self::Refund, Self::Other];

    /// Its name in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Voucher => "voucher",
            Self::Deposit => "deposit",
            Self::Refund => "refund",
            Self::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Engine counters (all monotonic) and latency histograms.
#[derive(Debug)]
pub struct Metrics {
    /// Paid requests that reached the engine.
    pub requests: AtomicU64,
    /// Reservations granted (handler allowed to run).
    pub reserved: AtomicU64,
    /// Commits done (charges of any amount, including zero).
    pub committed: AtomicU64,
    /// Charges of more than zero committed durably.
    pub charges: AtomicU64,
    /// Reservations aborted (handler failed or gave up, or the charge could not be saved).
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
    /// Paid requests answered with the offer because they carried no payment (counted by the
    /// HTTP server; they never reach the engine).
    pub unpaid: AtomicU64,
    /// Atomic units charged, low 64 bits (see `charged_hi`).
    charged_lo: AtomicU64,
    /// Atomic units charged, high 64 bits.
    charged_hi: AtomicU64,
    /// Store commit time, total nanoseconds.
    pub commit_nanos: AtomicU64,
    /// Payment checks ([`crate::Engine::begin`]) by [`CheckKind`].
    check: [Histogram; CheckKind::ALL.len()],
    /// Commits ([`crate::Engine::commit`], including the durable write).
    pub commit: Histogram,
    /// The upstream: from handing a paid request to it until its response head (observed by
    /// the HTTP server).
    pub upstream: Histogram,
    /// Refusals by known code, indexed as [`ErrorCode::ALL`].
    rejections_known: Box<[AtomicU64]>,
    /// Refusals by codes paychan does not know.
    rejections_other: Mutex<BTreeMap<String, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let z = || AtomicU64::new(0);
        Self {
            requests: z(),
            reserved: z(),
            committed: z(),
            charges: z(),
            aborted: z(),
            corrective: z(),
            busy: z(),
            chain_reads: z(),
            chain_reads_refused: z(),
            screened_out: z(),
            negative_hits: z(),
            rate_limited: z(),
            refunds: z(),
            deposits: z(),
            unpaid: z(),
            charged_lo: z(),
            charged_hi: z(),
            commit_nanos: z(),
            check: Default::default(),
            commit: Histogram::default(),
            upstream: Histogram::default(),
            rejections_known: ErrorCode::ALL.iter().map(|_| z()).collect(),
            rejections_other: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(c: &AtomicU64) {
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

    /// Counts a refusal with `code`. The engine counts its own; the HTTP server counts the
    /// payment headers it refuses before the engine (undecodable ones).
    pub fn reject(&self, code: &ErrorCode) {
        match ErrorCode::ALL.iter().position(|c| c == code) {
            Some(i) => Self::inc(&self.rejections_known[i]),
            None => {
                if let Ok(mut m) = self.rejections_other.lock() {
                    *m.entry(code.as_str().to_owned()).or_default() += 1;
                }
            }
        }
    }

    /// The payment-check histogram of `kind`.
    pub fn check(&self, kind: CheckKind) -> &Histogram {
        &self.check[kind.index()]
    }

    /// Total atomic units charged.
    pub fn charged_total(&self) -> u128 {
        (u128::from(self.charged_hi.load(Ordering::Relaxed)) << 64)
            | u128::from(self.charged_lo.load(Ordering::Relaxed))
    }

    /// Refusals by error code (codes never seen are left out).
    pub fn rejections(&self) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = ErrorCode::ALL
            .iter()
            .zip(self.rejections_known.iter())
            .map(|(c, n)| (c.as_str().to_owned(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        if let Ok(m) = self.rejections_other.lock() {
            for (k, v) in m.iter() {
                *out.entry(k.clone()).or_default() += v;
            }
        }
        out
    }

    /// All refusals.
    pub fn rejected_total(&self) -> u64 {
        self.rejections().values().sum()
    }

    /// A counter's value.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50)); // exactly the first bound
        h.observe(Duration::from_micros(51));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(1_000));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[1], 2);
        let i = LATENCY_BUCKETS.iter().position(|&b| b == 0.005).unwrap();
        assert_eq!(s.cumulative[i - 1], 2);
        assert_eq!(s.cumulative[i], 3);
        assert_eq!(s.cumulative[LATENCY_BUCKETS.len() - 1], 3);
        assert_eq!(s.cumulative[LATENCY_BUCKETS.len()], 4);
        assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]));
        assert!((s.sum_seconds - 1_000.003_101).abs() < 1e-9);
    }

    #[test]
    fn rejections_count_known_and_unknown_codes() {
        let m = Metrics::default();
        m.reject(&ErrorCode::InvalidPayload);
        m.reject(&ErrorCode::InvalidPayload);
        m.reject(&ErrorCode::Other("peer_said_so".into()));
        let r = m.rejections();
        assert_eq!(r.len(), 2);
        assert_eq!(r[ErrorCode::InvalidPayload.as_str()], 2);
        assert_eq!(r["peer_said_so"], 1);
        assert_eq!(m.rejected_total(), 3);
    }
}
