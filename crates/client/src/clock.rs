//! Time as an input: budget periods and deposit authorizations read it through [`Clock`], so
//! tests can move it.

/// A source of unix time.
pub trait Clock: Send + Sync + 'static {
    /// Seconds since the unix epoch.
    fn now_secs(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_secs(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}
