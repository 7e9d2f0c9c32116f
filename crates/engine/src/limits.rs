//! The engine's defences against requests that cost the server more than the attacker: a
//! negative cache of channels found absent or empty on chain, per-channel rate limits on
//! gas-costing operations (deposits and refunds relayed for a payer), and a cap on concurrent
//! chain reads.
//!
//! Every table here is bounded: a flood of distinct channel ids can fill one, never grow it.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use alloy_primitives::B256;
use tokio::sync::{Semaphore, SemaphorePermit};

/// At most `count` operations per channel in any sliding `window`. A zero `window` disables the
/// limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Operations allowed per window (0 allows none).
    pub count: u32,
    /// The window.
    pub window: Duration,
}

impl RateLimit {
    /// `count` operations per `window`.
    pub const fn new(count: u32, window: Duration) -> Self {
        Self { count, window }
    }

    /// No limit.
    pub const UNLIMITED: Self = Self::new(u32::MAX, Duration::ZERO);

    fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }

    fn is_unlimited(&self) -> bool {
        self.window.is_zero()
    }
}

/// Channels tracked by one rate limiter at most. Filling it takes this many funded channels
/// acting within one window; past it, new channels are refused until entries expire (failing
/// closed: the limiter exists to protect the relayer's gas).
const MAX_RATE_ENTRIES: usize = 100_000;

/// A per-channel sliding-window limiter, on the engine's clock.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limit: RateLimit,
    /// Per channel: the times (unix ms) of its operations within the window, oldest first.
    entries: Mutex<HashMap<B256, Vec<u64>>>,
}

impl RateLimiter {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok` if `id` may do one more operation at `now_ms`; otherwise the milliseconds until it
    /// may. Records nothing.
    pub(crate) fn check(&self, id: &B256, now_ms: u64) -> Result<(), u64> {
        if self.limit.is_unlimited() {
            return Ok(());
        }
        let window = self.limit.window_ms();
        let Ok(entries) = self.entries.lock() else {
            return Err(window);
        };
        match entries.get(id) {
            None if entries.len() >= MAX_RATE_ENTRIES => Err(window),
            None => self.admits(&[], now_ms),
            Some(times) => self.admits(times, now_ms),
        }
    }

    /// Like [`check`](Self::check), and records the operation when it is allowed.
    pub(crate) fn acquire(&self, id: B256, now_ms: u64) -> Result<(), u64> {
        if self.limit.is_unlimited() {
            return Ok(());
        }
        let window = self.limit.window_ms();
        let Ok(mut entries) = self.entries.lock() else {
            return Err(window);
        };
        if entries.len() >= MAX_RATE_ENTRIES && !entries.contains_key(&id) {
            entries.retain(|_, times| times.last().is_some_and(|t| now_ms < t + window));
            if entries.len() >= MAX_RATE_ENTRIES {
                return Err(window);
            }
        }
        let times = entries.entry(id).or_default();
        times.retain(|t| now_ms < t.saturating_add(window));
        self.admits(times, now_ms)?;
        times.push(now_ms);
        Ok(())
    }

    fn admits(&self, times: &[u64], now_ms: u64) -> Result<(), u64> {
        let window = self.limit.window_ms();
        let live: Vec<u64> = times
            .iter()
            .copied()
            .filter(|t| now_ms < t.saturating_add(window))
            .collect();
        if live.len() < usize::try_from(self.limit.count).unwrap_or(usize::MAX) {
            return Ok(());
        }
        // The oldest live operation leaves the window first.
        let oldest = live.first().copied().unwrap_or(now_ms);
        Err(oldest.saturating_add(window).saturating_sub(now_ms).max(1))
    }
}

/// Channels found absent or empty (balance 0) on chain, refused without another chain read
/// until their entry expires.
#[derive(Debug)]
pub(crate) struct NegativeCache {
    ttl_ms: u64,
    capacity: usize,
    /// Channel → expiry, unix ms.
    entries: Mutex<HashMap<B256, u64>>,
}

impl NegativeCache {
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `id` was found absent or empty less than the TTL ago.
    pub(crate) fn contains(&self, id: &B256, now_ms: u64) -> bool {
        self.entries
            .lock()
            .is_ok_and(|m| m.get(id).is_some_and(|&until| now_ms < until))
    }

    /// Remembers `id` as absent or empty. When the table is full, expired entries are dropped
    /// first; if it is still full the channel is not remembered (its next voucher reads the
    /// chain again, under the read cap).
    pub(crate) fn insert(&self, id: B256, now_ms: u64) {
        if self.ttl_ms == 0 || self.capacity == 0 {
            return;
        }
        let Ok(mut m) = self.entries.lock() else {
            return;
        };
        if m.len() >= self.capacity && !m.contains_key(&id) {
            m.retain(|_, &mut until| now_ms < until);
            if m.len() >= self.capacity {
                return;
            }
        }
        m.insert(id, now_ms.saturating_add(self.ttl_ms));
    }

    /// Forgets `id` (money arrived in it).
    pub(crate) fn remove(&self, id: &B256) {
        if let Ok(mut m) = self.entries.lock() {
            m.remove(id);
        }
    }
}

/// The cap on concurrent chain reads. Reads for channels the store knows (paying channels)
/// wait for a turn; reads for channels it does not know wait a bounded time (the engine's busy
/// wait) for one of their own, smaller share, so a burst of new payers is served while a flood
/// of new ids can neither queue without bound nor take every turn from paying channels.
#[derive(Debug)]
pub(crate) struct ReadGate {
    all: Semaphore,
    unknown: Semaphore,
}

/// A turn to read the chain; the read ends when it is dropped.
#[derive(Debug)]
pub(crate) struct ReadTurn<'a> {
    _all: SemaphorePermit<'a>,
    _unknown: Option<SemaphorePermit<'a>>,
}

impl ReadGate {
    pub(crate) fn new(all: usize, unknown: usize) -> Self {
        Self {
            all: Semaphore::new(all.min(Semaphore::MAX_PERMITS)),
            unknown: Semaphore::new(unknown.min(all).min(Semaphore::MAX_PERMITS)),
        }
    }

    /// A turn for a channel the store knows: waits for one.
    pub(crate) async fn known(&self) -> Option<ReadTurn<'_>> {
        let all = self.all.acquire().await.ok()?;
        Some(ReadTurn {
            _all: all,
            _unknown: None,
        })
    }

    /// A turn for a channel the store does not know, if one frees up within `wait`.
    pub(crate) async fn unknown(&self, wait: Duration) -> Option<ReadTurn<'_>> {
        tokio::time::timeout(wait, async {
            let unknown = self.unknown.acquire().await.ok()?;
            let all = self.all.acquire().await.ok()?;
            Some(ReadTurn {
                _all: all,
                _unknown: Some(unknown),
            })
        })
        .await
        .ok()
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> B256 {
        B256::repeat_byte(n)
    }

    #[test]
    fn rate_limit_slides_with_the_clock() {
        let l = RateLimiter::new(RateLimit::new(2, Duration::from_secs(60)));
        assert!(l.acquire(id(1), 1_000).is_ok());
        assert!(l.acquire(id(1), 2_000).is_ok());
        assert_eq!(l.check(&id(1), 3_000), Err(58_000));
        assert_eq!(l.acquire(id(1), 3_000), Err(58_000));
        // another channel is not affected
        assert!(l.acquire(id(2), 3_000).is_ok());
        // the first operation leaves the window at 61,000
        assert_eq!(l.acquire(id(1), 60_999), Err(1));
        assert!(l.acquire(id(1), 61_000).is_ok());
        assert!(l.acquire(id(1), 61_500).is_err());
    }

    #[test]
    fn unlimited_and_zero_count() {
        let l = RateLimiter::new(RateLimit::UNLIMITED);
        for t in 0..100 {
            assert!(l.acquire(id(1), t).is_ok());
        }
        let none = RateLimiter::new(RateLimit::new(0, Duration::from_secs(1)));
        assert!(none.acquire(id(1), 0).is_err());
    }

    #[test]
    fn negative_cache_expires_and_is_bounded() {
        let c = NegativeCache::new(Duration::from_secs(2), 2);
        c.insert(id(1), 0);
        assert!(c.contains(&id(1), 1_999));
        assert!(!c.contains(&id(1), 2_000));
        c.insert(id(2), 0);
        c.insert(id(3), 0); // full: not remembered
        assert!(!c.contains(&id(3), 1));
        c.insert(id(3), 2_500); // the two others expired and make room
        assert!(c.contains(&id(3), 2_501));
        c.remove(&id(3));
        assert!(!c.contains(&id(3), 2_502));
    }

    #[tokio::test]
    async fn unknown_reads_get_a_bounded_share() {
        let wait = Duration::from_millis(20);
        let g = ReadGate::new(3, 1);
        let a = g.unknown(wait).await.expect("a free turn");
        assert!(g.unknown(wait).await.is_none(), "the unknown share is one");
        let k1 = g.known().await.expect("known");
        let k2 = g.known().await.expect("known");
        drop(a);
        // all three turns are taken by known reads and the freed unknown one
        let _k3 = g.known().await.expect("known");
        assert!(
            g.unknown(wait).await.is_none(),
            "no turn left for unknown reads"
        );
        drop((k1, k2));
        assert!(g.unknown(wait).await.is_some());
    }
}
