//! paychan-settle against a real dev chain (anvil with paychan's contracts), the real engine and
//! a sled store on disk. No mock of the chain; a TCP proxy in `support` plays a dead RPC node.
//! Every test checks token balances on chain against the charges the engine recorded, to the
//! unit.

#![allow(clippy::unwrap_used, unreachable_pub, clippy::print_stdout)]

mod batch;
mod bump;
mod outage;
mod policies;
mod refund;
mod reorg;
mod restart;
mod shutdown;
mod support;
mod withdrawal;
