//! paychan-client against paychan's own server on loopback, a real dev chain and real sled.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod flow;
mod limits;
mod manage;
mod recovery;
mod settle;
mod streams;
mod support;
