//! What the engine needs from the outside world, as small traits: the mirrored on-chain state of
//! a channel, a facilitator for what needs the chain (deposits, refunds), and a clock.

use std::future::Future;

use alloy_primitives::B256;
use paychan_core::{
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

impl OnchainSource for paychan_chain::ChainReader {
    async fn channel_state(&self, id: B256) -> Result<OnchainState, SourceError> {
        paychan_chain::ChainReader::channel_state(self, id)
            .await
            .map_err(|e| SourceError::new("channel state", e))
    }
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

/// No facilitator: deposits and refunds are declined with a clear error. For servers whose
/// clients open channels elsewhere, and for tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFacilitator;

impl PaymentFacilitator for NoFacilitator {
    async fn verify(
        &self,
        _: &PaymentPayload<BatchPayload>,
        _: &PaymentRequirements,
    ) -> Result<VerifyResponse, SourceError> {
        Err(SourceError::new(
            "facilitator verify",
            "this server has no facilitator configured",
        ))
    }

    async fn settle(
        &self,
        _: &PaymentPayload<BatchPayload>,
        _: &PaymentRequirements,
    ) -> Result<SettlementResponse, SourceError> {
        Err(SourceError::new(
            "facilitator settle",
            "this server has no facilitator configured",
        ))
    }
}

/// Wall-clock time in unix milliseconds. Tests substitute their own.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}
