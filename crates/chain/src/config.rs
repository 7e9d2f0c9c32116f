//! Tunables of the chain adapter, with defaults for a public L2 ([`ChainConfig::new`]) and for a
//! local dev chain ([`ChainConfig::dev`]).

use std::time::Duration;

use alloy::primitives::Address;
use paychan_core::batch::canonical;

use crate::{Error, Result};

/// Retries of RPC calls that failed at the transport level (connection refused or reset, timeout,
/// undecodable answer, rate limit). Reverts and other definite answers are never retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait before the first retry; doubled after each attempt.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
    /// Attempts in all (the first call included); at least 1.
    pub attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            attempts: 6,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// How the adapter talks to the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainConfig {
    /// JSON-RPC endpoint (HTTP).
    pub rpc_url: String,
    /// Chain id the node must report; a node on another chain is refused at connect.
    pub chain_id: u64,
    /// The batch-settlement escrow.
    pub escrow: Address,
    /// The ERC-3009 deposit collector.
    pub erc3009_collector: Address,
    /// Multicall3 (reads are batched through it).
    pub multicall3: Address,
    /// Blocks a transaction's block must have on top of it, itself included, before it counts as
    /// confirmed (1 = mined).
    pub confirmations: u64,
    /// How often pending transactions and the watcher poll the node.
    pub poll_interval: Duration,
    /// Ceiling on `maxFeePerGas`, wei. Fees are never raised above it, fee bumps included.
    pub max_fee_per_gas: u128,
    /// Ceiling on `maxPriorityFeePerGas`, wei.
    pub max_priority_fee_per_gas: u128,
    /// Gas ceiling of one transaction: an action whose estimate is above it is refused, not sent.
    pub max_gas_per_tx: u64,
    /// Head-room added to the gas estimate for the gas limit, percent.
    pub gas_margin_percent: u64,
    /// A transaction not mined this long after its last broadcast is fee-bumped.
    pub bump_after: Duration,
    /// Fee increase per bump, percent; at least 12.5 (nodes require ≥ 10 % to replace).
    pub bump_percent: f64,
    /// Fee bumps per transaction; afterwards it is only re-broadcast.
    pub max_bumps: u32,
    /// How long an action waits for confirmation before the call gives up (the journal entry
    /// stays open for [`crate::Relayer::recover`]); `None` waits forever.
    pub confirm_timeout: Option<Duration>,
    /// Timeout of every RPC call.
    pub rpc_timeout: Duration,
    /// Retries of RPC calls on transport errors.
    pub retry: RetryPolicy,
    /// Channels read per `eth_call` in batched reads.
    pub max_channels_per_call: usize,
}

impl ChainConfig {
    /// Defaults for a public chain: canonical addresses, 3 confirmations, 2 s polling, fee bump
    /// after 45 s.
    pub fn new(rpc_url: impl Into<String>, chain_id: u64) -> Self {
        Self {
            rpc_url: rpc_url.into(),
            chain_id,
            escrow: canonical::ESCROW,
            erc3009_collector: canonical::ERC3009_COLLECTOR,
            multicall3: canonical::MULTICALL3,
            confirmations: 3,
            poll_interval: Duration::from_secs(2),
            max_fee_per_gas: 200_000_000_000,
            max_priority_fee_per_gas: 5_000_000_000,
            max_gas_per_tx: 8_000_000,
            gas_margin_percent: 20,
            bump_after: Duration::from_secs(45),
            bump_percent: 12.5,
            max_bumps: 6,
            confirm_timeout: Some(Duration::from_secs(15 * 60)),
            rpc_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            max_channels_per_call: 200,
        }
    }

    /// Defaults for a local dev chain (anvil, chain 31337): 1 confirmation, 50 ms polling,
    /// short timeouts.
    pub fn dev(rpc_url: impl Into<String>) -> Self {
        Self {
            confirmations: 1,
            poll_interval: Duration::from_millis(50),
            bump_after: Duration::from_secs(3),
            confirm_timeout: Some(Duration::from_secs(60)),
            rpc_timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                initial_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(500),
                attempts: 8,
            },
            ..Self::new(rpc_url, 31337)
        }
    }

    /// Checks the tunables.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_owned()));
        if self.rpc_url.trim().is_empty() {
            return bad("rpc_url is empty");
        }
        if self.confirmations == 0 {
            return bad("confirmations must be at least 1");
        }
        if !(self.bump_percent.is_finite() && (12.5..=1000.0).contains(&self.bump_percent)) {
            return bad("bump_percent must be between 12.5 and 1000");
        }
        if self.retry.attempts == 0 {
            return bad("retry.attempts must be at least 1");
        }
        if self.poll_interval.is_zero() || self.rpc_timeout.is_zero() {
            return bad("poll_interval and rpc_timeout must be positive");
        }
        if self.max_gas_per_tx < 21_000 {
            return bad("max_gas_per_tx must be at least 21000");
        }
        if self.max_fee_per_gas == 0 {
            return bad("max_fee_per_gas must be positive");
        }
        if self.max_channels_per_call == 0 {
            return bad("max_channels_per_call must be positive");
        }
        if self.escrow == Address::ZERO || self.multicall3 == Address::ZERO {
            return bad("escrow and multicall3 addresses must be set");
        }
        Ok(())
    }

    /// `bump_percent` in basis points.
    #[allow(clippy::cast_possible_truncation)] // checked finite and within 1250 ..= 100000
    pub(crate) fn bump_bps(&self) -> u128 {
        // validated to 12.5 ..= 1000 percent, so the product is 1250 ..= 100000
        let bps = (self.bump_percent * 100.0).ceil();
        if bps.is_finite() && bps >= 1250.0 {
            bps as u128
        } else {
            1250
        }
    }
}
