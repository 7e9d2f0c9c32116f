#![doc = include_str!("../README.md")]
//!
//! | module | what |
//! | --- | --- |
//! | [`config`] | [`ChainConfig`]: addresses, confirmations, fee caps, bumping, timeouts, retries |
//! | [`reader`] | [`ChainReader`]: channel state through Multicall3, receiver totals, balances, head; the core's `OnchainSource` |
//! | [`relayer`] | [`Relayer`]: journaled claims, settles, refunds and deposits; restart recovery |
//! | [`payer`] | [`PayerClient`]: the payer's timed withdrawal |
//! | [`watcher`] | [`ChainWatcher`]: escrow events from a stored cursor, reorg-tolerant |
//! | [`key`] | [`TxKey`]: the sending key (never logged) |
//! | [`error`] | [`Error`] |

pub mod config;
pub mod error;
pub mod key;
pub mod payer;
pub mod reader;
pub mod relayer;
mod rpc;
mod sender;
pub mod watcher;

pub use config::{ChainConfig, RetryPolicy};
pub use error::{Error, Result};
pub use key::TxKey;
pub use payer::PayerClient;
pub use reader::{ChainReader, StatesAt};
pub use relayer::{RecoveryReport, Relayer, SignedRefund};
pub use sender::TxOutcome;
pub use watcher::{
    ChainWatcher, EventKind, PollReport, SettledEvent, StartFrom, WatchEvent, WatchItem,
    WatcherConfig,
};
