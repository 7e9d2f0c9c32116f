//! What the engine needs from the outside world. The ports themselves (on-chain state, a
//! facilitator, a clock) live in the core ([`paychan_core::ports`]) and are re-exported here;
//! this module adds the null facilitator.

pub use paychan_core::ports::{Clock, OnchainSource, PaymentFacilitator, SourceError};
pub use paychan_store::SystemClock;

use paychan_core::{
    batch::BatchPayload,
    x402::{PaymentPayload, PaymentRequirements, SettlementResponse, VerifyResponse},
};

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
