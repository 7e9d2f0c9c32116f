//! paychan-chain against a real dev chain (anvil with paychan's contracts). No mock of the chain;
//! a TCP proxy in `support` plays a dead RPC node.

#![allow(clippy::unwrap_used, unreachable_pub, clippy::print_stdout)]

mod bump;
mod nonces;
mod ops;
mod outage;
mod reorg;
mod restart;
mod support;
mod watcher;
