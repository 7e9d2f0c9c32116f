//! paychan-control against a real dev chain: an engine over sled, a settler, the control plane
//! served on a loopback port, and the generated client. No mock of the chain.

#![allow(clippy::unwrap_used, unreachable_pub, clippy::print_stdout)]

mod actions;
mod auth;
mod fields;
mod support;
mod tls;
mod watch;
