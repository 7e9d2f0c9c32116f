//! paychan-core integration tests: property tests of the payee state machine and of decoding,
//! and the golden vectors shared with the x402 reference SDK.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod decode_props;
mod payee_props;
mod support;
mod vectors;
