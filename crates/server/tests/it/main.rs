//! paychan-server over real HTTP on loopback, against a real dev chain and a sled store.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod chunked;
mod http_flow;
mod observability;
mod per_token;
mod support;
