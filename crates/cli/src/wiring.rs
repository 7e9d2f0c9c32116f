//! Choosing a facilitator at run time.

use paychan_core::{
    batch::BatchPayload,
    x402::{PaymentPayload, PaymentRequirements, SettlementResponse, VerifyResponse},
};
use paychan_engine::{NoFacilitator, PaymentFacilitator, SourceError};
use paychan_facilitator::{Facilitator, HttpFacilitator};
use paychan_store::SledStore;

/// The facilitator a server uses for deposits and refunds.
pub(crate) enum AnyFacilitator {
    /// None: deposits and refunds are declined.
    None(NoFacilitator),
    /// paychan's facilitator, in-process.
    Local(Box<Facilitator<SledStore>>),
    /// Any x402 facilitator over HTTP.
    Remote(HttpFacilitator),
}

impl PaymentFacilitator for AnyFacilitator {
    async fn verify(
        &self,
        payload: &PaymentPayload<BatchPayload>,
        requirements: &PaymentRequirements,
    ) -> Result<VerifyResponse, SourceError> {
        match self {
            Self::None(f) => f.verify(payload, requirements).await,
            Self::Local(f) => PaymentFacilitator::verify(f.as_ref(), payload, requirements).await,
            Self::Remote(f) => PaymentFacilitator::verify(f, payload, requirements).await,
        }
    }

    async fn settle(
        &self,
        payload: &PaymentPayload<BatchPayload>,
        requirements: &PaymentRequirements,
    ) -> Result<SettlementResponse, SourceError> {
        match self {
            Self::None(f) => f.settle(payload, requirements).await,
            Self::Local(f) => PaymentFacilitator::settle(f.as_ref(), payload, requirements).await,
            Self::Remote(f) => PaymentFacilitator::settle(f, payload, requirements).await,
        }
    }
}
