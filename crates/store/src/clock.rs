//! The system clock: the adapter of the core's [`Clock`] port. It lives here because every crate
//! that needs wall-clock time (engine, relayer, facilitator) already depends on the store, while
//! the core itself never reads a clock.

use paychan_core::ports::Clock;

/// The system clock, in unix milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}
