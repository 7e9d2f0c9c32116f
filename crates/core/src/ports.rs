//! The ports: what the protocol's users need from the outside world, as small traits that
//! adapters implement in their own crates — the mirrored on-chain state of a channel
//! ([`OnchainSource`], implemented for `paychan-chain`'s reader), a facilitator for what needs
//! the chain ([`PaymentFacilitator`], implemented by `paychan-facilitator`), and wall-clock time
//! ([`Clock`], the system clock lives in `paychan-store`). Nothing here does I/O: these are
//! signatures only, so every dependency arrow points toward the core.

use std::future::Future;

use alloy_primitives::B256;

use crate::{
    batch::{BatchPayload, payee::OnchainState},
    x402::{PaymentPayload, PaymentRequirements, SettlementResponse, VerifyResponse},
};

/// A failure of an outside dependency (RPC node, facilitator), with what was being done.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}: {message}")]
pub struct SourceError {
    /// The operation.
    pub what: &'static str,
    /// What went wrong.
    pub message: String,
}

impl SourceError {
    /// An error for `what`.
    pub fn new(what: &'static str, message: impl std::fmt::Display) -> Self {
        Self {
            what,
            message: message.to_string(),
        }
    }
}

/// Reads a channel's state from chain.
pub trait OnchainSource: Send + Sync + 'static {
    /// The channel's balance, claimed total, pending withdrawal start and refund nonce.
    fn channel_state(
        &self,
        id: B256,
    ) -> impl Future<Output = Result<OnchainState, SourceError>> + Send;
}

/// An x402 facilitator for the operations that touch the chain: verifying and executing
/// deposits, executing refunds. paychan's own facilitator runs in-process; any x402
/// batch-settlement facilitator over HTTP works too.
pub trait PaymentFacilitator: Send + Sync + 'static {
    /// `POST /verify`.
    fn verify(
        &self,
        payload: &PaymentPayload<BatchPayload>,
        requirements: &PaymentRequirements,
    ) -> impl Future<Output = Result<VerifyResponse, SourceError>> + Send;
    /// `POST /settle`.
    fn settle(
        &self,
        payload: &PaymentPayload<BatchPayload>,
        requirements: &PaymentRequirements,
    ) -> impl Future<Output = Result<SettlementResponse, SourceError>> + Send;
}

/// Wall-clock time in unix milliseconds. Tests substitute their own.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now_ms(&self) -> u64;
}

impl<K: Clock + ?Sized> Clock for std::sync::Arc<K> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}
