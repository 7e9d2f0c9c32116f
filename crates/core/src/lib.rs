//! paychan's protocol core: everything about a payment that can be decided without a socket, a
//! disk or a clock. Time, randomness and mirrored on-chain state are inputs; decisions are
//! outputs. No runtime, store, HTTP or chain client is linked.
//!
//! | module | what |
//! | --- | --- |
//! | [`x402`] | x402 v2 wire types, scheme-independent |
//! | [`codec`] | the `PAYMENT-*` header codec (`base64(JSON)`), bounded |
//! | [`error_code`] | every x402 and batch-settlement error code as an enum |
//! | [`amount`] | strict decimal amounts (`u128` / `U256`) |
//! | [`network`] | CAIP-2 networks |
//! | [`redact`] | URLs (which may embed API keys) cut out of error text before it is logged |
//! | [`sig`] | secp256k1 signatures: parse, recover, verify against a cached key, sign |
//! | [`batch`] | the `batch-settlement` EVM scheme: types, EIP-712, payee and payer state machines |
//! | [`ports`] | what its users need from outside, as traits: on-chain state, a facilitator, a clock |

pub mod amount;
pub mod batch;
pub mod codec;
pub mod error_code;
pub mod hexser;
pub mod network;
pub mod ports;
pub mod redact;
pub mod rejection;
pub mod sig;
pub mod x402;

pub use error_code::ErrorCode;
pub use network::Network;
pub use rejection::Rejection;
