//! paychan-store tests: the same conformance suite against every backend, then sled specifics
//! (reopen, format checks, group commit).

#![allow(clippy::unwrap_used, unreachable_pub)]

mod conformance;
mod sled_specific;
