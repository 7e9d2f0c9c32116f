//! paychan end-to-end tests: everything runs against a real anvil dev chain with paychan's
//! contracts, real HTTP and real processes.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod chain_roundtrip;
mod devchain;
mod facilitator_interop;
mod interop;
mod node;
mod paid_server;
mod reference_client;
mod reference_server;
mod reference_stack;
mod reference_streaming;
