//! paychan-engine tests against a real dev chain and a real sled store on disk.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod flow;
mod hardening;
mod support;
