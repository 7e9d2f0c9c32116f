#![doc = include_str!("../README.md")]
//!
//! | module | what |
//! | --- | --- |
//! | [`policy`] | [`SettlePolicy`]: interval, threshold, withdrawal margin, batching, settle mode |
//! | [`settler`] | [`Settler`]: claim rounds, settles, mirroring, the `run` loop, manual triggers |
//! | [`follower`] | [`ChainFollower`]: escrow events mirrored into the engine |
//! | [`gas`] | [`GasReport`]: gas per claim / settle, amortized per paid request |
//! | [`plan`] | the I/O-free decisions: pending channels, due selection, what to do per channel, batching, the run loop's schedule |
//! | [`error`] | [`Error`] |

pub mod error;
pub mod follower;
pub mod gas;
pub mod plan;
pub mod policy;
pub mod settler;

pub use error::{Error, Result};
pub use follower::{ChainFollower, FollowerUpdate};
pub use gas::{GasLedger, GasReport};
pub use plan::Scope;
pub use policy::{SettleMode, SettlePolicy};
pub use settler::{
    ClaimTx, RoundReport, SettleTx, Settler, SettlerConfig, ShutdownReport, Trigger,
};

/// `tracing` target of this crate.
pub const TARGET: &str = "paychan_settle";
