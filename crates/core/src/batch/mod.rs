//! The `batch-settlement` scheme on EVM.
//!
//! | module | what |
//! | --- | --- |
//! | [`types`] | channel config, vouchers, client and server payloads, snapshots, `extra` |
//! | [`requirements`] | typed payment requirements, offer matching |
//! | [`eip712`] | domain, channel id, voucher / refund / claim-batch digests, ERC-3009 digest |
//! | [`payee`] | the server's per-channel state machine: check, reserve, commit, refund, corrective 402 |
//! | [`payer`] | the client's side: next voucher, deposit, response checks, recovery |

pub mod eip712;
pub mod payee;
pub mod payer;
pub mod requirements;
pub mod types;

pub use eip712::{BatchDomain, ClaimEntry};
pub use requirements::BatchRequirements;
pub use types::*;

use alloy_primitives::{Address, address};

/// The scheme's name on the wire.
pub const SCHEME: &str = "batch-settlement";

/// Shortest allowed withdraw delay, seconds (15 minutes).
pub const MIN_WITHDRAW_DELAY: u64 = 15 * 60;
/// Longest allowed withdraw delay, seconds (30 days).
pub const MAX_WITHDRAW_DELAY: u64 = 30 * 24 * 60 * 60;

/// Addresses at which the batch-settlement contracts sit on every supported chain. paychan's dev
/// chain places its own contracts there; every address stays configurable.
pub mod canonical {
    use super::*;

    /// The escrow (the EIP-712 verifying contract of vouchers).
    pub const ESCROW: Address = address!("4020074e9dF2ce1deE5A9C1b5c3f541D02a10003");
    /// The ERC-3009 deposit collector.
    pub const ERC3009_COLLECTOR: Address = address!("4020806089470a89826cB9fB1f4059150b550004");
    /// The Permit2 deposit collector.
    pub const PERMIT2_COLLECTOR: Address = address!("4020425FAf3B746C082C2f942b4E5159887B0005");
    /// Multicall3, through which reference clients batch reads.
    pub const MULTICALL3: Address = address!("cA11bde05977b3631167028862bE2a173976CA11");
}
