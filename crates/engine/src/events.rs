//! Events for the settlement side.

use alloy_primitives::B256;

/// Something the settlement side may want to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// A request was charged.
    Charged {
        /// The channel.
        channel_id: B256,
        /// This charge.
        amount: u128,
        /// The channel's charged total after it.
        charged_cumulative: u128,
        /// Charged but not yet claimed on chain.
        unclaimed: u128,
    },
    /// A timed withdrawal is pending on a channel with unclaimed charges: claim before the
    /// deadline or lose them.
    NeedsClaim {
        /// The channel.
        channel_id: B256,
        /// Unix seconds after which the payer can finalize.
        deadline: u64,
        /// What is at stake.
        unclaimed: u128,
    },
    /// A cooperative refund was executed.
    Refunded {
        /// The channel.
        channel_id: B256,
        /// Refunded amount.
        amount: u128,
    },
}
