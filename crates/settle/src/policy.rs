//! What a provider decides about settlement: when to claim, how to batch, when to settle.

use std::time::Duration;

use crate::{Error, Result};

/// When claimed funds are swept to the receiver (`settle(receiver, token)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleMode {
    /// After every claim round that raised a claimed total (and at shutdown).
    AfterClaims,
    /// On its own interval (and at shutdown).
    Every(Duration),
    /// Only when asked ([`crate::Settler::settle_now`]) and at shutdown.
    Manual,
}

/// A provider's settlement policy. Every trigger is optional except the withdrawal guard, which
/// is always on: a channel with a pending timed withdrawal and unclaimed charges is claimed at
/// once.
#[derive(Debug, Clone, PartialEq)]
pub struct SettlePolicy {
    /// Claim every channel with unclaimed charges this often (`None`: no periodic claims).
    pub interval: Option<Duration>,
    /// Claim a channel as soon as its unclaimed charges reach this many atomic units (`None`: no
    /// threshold).
    pub threshold: Option<u128>,
    /// A channel with a pending withdrawal is claimed at once when the withdrawal is seen, after
    /// every new charge, and once more (a "last call" that re-reads the store) when the chain's
    /// clock reaches `deadline − withdrawal_margin`. The margin must cover the time a claim needs
    /// to be mined and confirmed, fee bumps included.
    pub withdrawal_margin: Duration,
    /// While a withdrawal is pending: how often failed claims are retried and the chain's clock is
    /// read for the last call.
    pub urgent_retry: Duration,
    /// When to settle.
    pub settle: SettleMode,
    /// Rows (channels) per claim transaction at most.
    pub max_rows_per_tx: usize,
    /// Gas per claim transaction at most, by the estimate `claim_gas_base + rows ×
    /// claim_gas_per_row`; a batch the node estimates above the chain's `max_gas_per_tx` is split
    /// too.
    pub max_gas_per_tx: u64,
    /// Estimated fixed gas of a claim transaction (batch sizing only).
    pub claim_gas_base: u64,
    /// Estimated gas per claimed channel (batch sizing only; a first claim of a channel costs
    /// more than later ones).
    pub claim_gas_per_row: u64,
    /// Re-scan the store for channels with unclaimed charges this often (`None`: only at start,
    /// at shutdown and after the engine's event stream lagged).
    pub scan_interval: Option<Duration>,
    /// Channels read per store page during a scan.
    pub scan_page: usize,
    /// First wait before a channel whose claim failed on its own is tried again; doubled per
    /// failure up to `max_backoff` (`urgent_retry` for channels with a pending withdrawal).
    pub retry_backoff: Duration,
    /// Longest wait between retries of a failing channel.
    pub max_backoff: Duration,
    /// On graceful shutdown, claim everything outstanding and settle.
    pub claim_on_shutdown: bool,
}

impl Default for SettlePolicy {
    fn default() -> Self {
        Self {
            interval: Some(Duration::from_secs(15 * 60)),
            threshold: None,
            withdrawal_margin: Duration::from_secs(5 * 60),
            urgent_retry: Duration::from_secs(5),
            settle: SettleMode::AfterClaims,
            max_rows_per_tx: 200,
            max_gas_per_tx: 6_000_000,
            claim_gas_base: 60_000,
            claim_gas_per_row: 35_000,
            scan_interval: Some(Duration::from_secs(10 * 60)),
            scan_page: 1_000,
            retry_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5 * 60),
            claim_on_shutdown: true,
        }
    }
}

impl SettlePolicy {
    /// Only the withdrawal guard and shutdown: claims happen when a withdrawal threatens
    /// charges, when asked, and at shutdown.
    pub fn manual() -> Self {
        Self {
            interval: None,
            threshold: None,
            settle: SettleMode::Manual,
            scan_interval: None,
            ..Self::default()
        }
    }

    /// Checks the policy.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Policy(m.to_owned()));
        if self.max_rows_per_tx == 0 {
            return bad("max_rows_per_tx must be at least 1");
        }
        if self.max_gas_per_tx < self.claim_gas_base.saturating_add(self.claim_gas_per_row) {
            return bad("max_gas_per_tx must fit at least one claim row");
        }
        if self.claim_gas_per_row == 0 {
            return bad("claim_gas_per_row must be positive");
        }
        if self.threshold == Some(0) {
            return bad("threshold must be positive (use None for no threshold)");
        }
        let zero = |d: Option<Duration>| d.is_some_and(|d| d.is_zero());
        if zero(self.interval) || zero(self.scan_interval) {
            return bad("interval and scan_interval must be positive");
        }
        if let SettleMode::Every(d) = self.settle
            && d.is_zero()
        {
            return bad("the settle interval must be positive");
        }
        if self.urgent_retry.is_zero() || self.retry_backoff.is_zero() {
            return bad("urgent_retry and retry_backoff must be positive");
        }
        if self.scan_page == 0 {
            return bad("scan_page must be positive");
        }
        // the shortest withdraw delay the scheme allows
        if self.withdrawal_margin.as_secs() >= paychan_core::batch::MIN_WITHDRAW_DELAY {
            return bad(
                "withdrawal_margin must be shorter than the minimum withdraw delay (900 s)",
            );
        }
        Ok(())
    }

    /// Rows per claim transaction: `max_rows_per_tx`, lowered to what fits `max_gas_per_tx`.
    pub fn rows_per_tx(&self) -> usize {
        let by_gas =
            self.max_gas_per_tx.saturating_sub(self.claim_gas_base) / self.claim_gas_per_row.max(1);
        usize::try_from(by_gas)
            .unwrap_or(usize::MAX)
            .clamp(1, self.max_rows_per_tx.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_per_tx_honours_both_bounds() {
        let p = SettlePolicy::default();
        assert!(p.validate().is_ok());
        // (6,000,000 − 60,000) / 35,000 = 169 < 200
        assert_eq!(p.rows_per_tx(), 169);
        let p = SettlePolicy {
            max_rows_per_tx: 20,
            ..SettlePolicy::default()
        };
        assert_eq!(p.rows_per_tx(), 20);
        let p = SettlePolicy {
            max_gas_per_tx: 100_000,
            ..SettlePolicy::default()
        };
        assert_eq!(p.rows_per_tx(), 1);
    }

    #[test]
    fn bad_policies_are_refused() {
        for p in [
            SettlePolicy {
                max_rows_per_tx: 0,
                ..SettlePolicy::default()
            },
            SettlePolicy {
                max_gas_per_tx: 1,
                ..SettlePolicy::default()
            },
            SettlePolicy {
                threshold: Some(0),
                ..SettlePolicy::default()
            },
            SettlePolicy {
                interval: Some(Duration::ZERO),
                ..SettlePolicy::default()
            },
            SettlePolicy {
                withdrawal_margin: Duration::from_secs(900),
                ..SettlePolicy::default()
            },
            SettlePolicy {
                settle: SettleMode::Every(Duration::ZERO),
                ..SettlePolicy::default()
            },
        ] {
            assert!(p.validate().is_err(), "{p:?}");
        }
        assert!(SettlePolicy::manual().validate().is_ok());
    }
}
