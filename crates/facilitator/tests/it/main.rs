//! paychan-facilitator against a real anvil dev chain with paychan's contracts: no mocks.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod attacks;
mod engine;
mod http;
mod outage;
mod settle;
mod support;
mod verify;
