//! x402 v2 wire types, scheme-independent.
//!
//! These mirror the JSON objects of the x402 v2 specification. Fields a peer may send that paychan
//! does not use are ignored on input (the specification's rule for unknown fields); fields a
//! scheme defines (`extra`, `payload`) stay generic JSON here and are typed by the scheme module
//! ([`crate::batch`]). Amounts stay strings at this layer because other schemes may use other
//! widths; the scheme layer parses them strictly.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};

use crate::{ErrorCode, Network};

/// The protocol version paychan speaks.
pub const X402_VERSION: u32 = 2;

/// A JSON object (`extra`, `extensions`).
pub type JsonObject = Map<String, Value>;

/// What the paid resource is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceInfo {
    /// The resource URL.
    pub url: String,
    /// A human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// MIME type of the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// One way to pay for a resource, as offered in a 402.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements {
    /// Payment scheme (`batch-settlement`).
    pub scheme: String,
    /// CAIP-2 network.
    pub network: Network,
    /// Amount in atomic units, a decimal string; for batch-settlement the per-request maximum.
    pub amount: String,
    /// Token contract.
    pub asset: String,
    /// Receiver.
    pub pay_to: String,
    /// How long the server keeps a payment open.
    pub max_timeout_seconds: u64,
    /// Scheme-specific fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<JsonObject>,
}

/// The body of a 402, carried base64-encoded in `PAYMENT-REQUIRED`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequired {
    /// Always 2.
    pub x402_version: u32,
    /// Why the payment was refused, if a payment was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceInfo>,
    /// The accepted ways to pay.
    pub accepts: Vec<PaymentRequirements>,
    /// Protocol extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<JsonObject>,
}

impl PaymentRequired {
    /// The error as a typed code, if any.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.error
            .as_deref()
            .map(|e| e.parse().unwrap_or_else(|never| match never {}))
    }
}

/// A payment, carried base64-encoded in `PAYMENT-SIGNATURE`. `P` is the scheme payload; it
/// defaults to untyped JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(bound(serialize = "P: Serialize", deserialize = "P: DeserializeOwned"))]
pub struct PaymentPayload<P = Value> {
    /// Always 2.
    pub x402_version: u32,
    /// The resource paid for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceInfo>,
    /// The requirements the client chose from the 402.
    pub accepted: PaymentRequirements,
    /// The scheme payload.
    pub payload: P,
    /// Protocol extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<JsonObject>,
}

/// The outcome of a payment, carried base64-encoded in `PAYMENT-RESPONSE` and returned by a
/// facilitator's `/settle`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementResponse {
    /// Whether the payment went through.
    pub success: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<ErrorCode>,
    /// A human message about the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The payer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Transaction hash, or `""` when nothing went on chain.
    #[serde(default)]
    pub transaction: String,
    /// CAIP-2 network.
    pub network: Network,
    /// Amount moved on chain, or `""`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// Scheme-specific details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<JsonObject>,
}

/// A facilitator's `/verify` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    /// Whether the payload is valid.
    pub is_valid: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<ErrorCode>,
    /// A human message about the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_message: Option<String>,
    /// The payer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Scheme-specific details (the channel snapshot for batch-settlement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<JsonObject>,
}

/// Body of `POST /verify` and `POST /settle`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(bound(serialize = "P: Serialize", deserialize = "P: DeserializeOwned"))]
pub struct FacilitatorRequest<P = Value> {
    /// Always 2.
    pub x402_version: u32,
    /// The payment.
    pub payment_payload: PaymentPayload<P>,
    /// The requirements it pays against.
    pub payment_requirements: PaymentRequirements,
}

/// One scheme/network pair a facilitator supports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedKind {
    /// Protocol version.
    pub x402_version: u32,
    /// Scheme.
    pub scheme: String,
    /// CAIP-2 network.
    pub network: Network,
    /// Scheme-specific details (`receiverAuthorizer` for batch-settlement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<JsonObject>,
}

/// A facilitator's `GET /supported` answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedResponse {
    /// Supported kinds.
    pub kinds: Vec<SupportedKind>,
    /// Supported extensions.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Signer addresses by CAIP-2 pattern (`eip155:*`).
    #[serde(default)]
    pub signers: std::collections::BTreeMap<String, Vec<String>>,
}

/// x402 version 1 (legacy) requirements, only so that a v1 peer gets a clear
/// `invalid_x402_version` rather than a parse error: batch-settlement exists only in v2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirementsV1 {
    /// Scheme.
    pub scheme: String,
    /// Network name.
    pub network: String,
    /// Maximum amount.
    pub max_amount_required: String,
    /// Resource URL.
    pub resource: String,
    /// Pay-to address.
    pub pay_to: String,
    /// Token.
    pub asset: String,
}

/// The version-only view of any x402 object, used to route or refuse by version before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionProbe {
    /// The object's `x402Version`.
    pub x402_version: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_ignored_and_optional_ones_omitted() {
        let json = r#"{"x402Version":2,"accepts":[{"scheme":"batch-settlement","network":"eip155:8453",
            "amount":"100","asset":"0xa","payTo":"0xb","maxTimeoutSeconds":60,"future":1}],"later":true}"#;
        let pr: PaymentRequired = serde_json::from_str(json).unwrap();
        assert_eq!(pr.accepts[0].amount, "100");
        let out = serde_json::to_string(&pr).unwrap();
        assert!(!out.contains("future") && !out.contains("error") && !out.contains("extra"));
    }

    #[test]
    fn missing_required_fields_fail() {
        let json = r#"{"x402Version":2,"accepts":[{"scheme":"s","network":"eip155:1","amount":"1","asset":"a","payTo":"b"}]}"#;
        assert!(serde_json::from_str::<PaymentRequired>(json).is_err());
    }

    #[test]
    fn settlement_response_reads_error_codes() {
        let json = r#"{"success":false,"errorReason":"invalid_batch_settlement_evm_channel_busy","transaction":"","network":"eip155:1"}"#;
        let r: SettlementResponse = serde_json::from_str(json).unwrap();
        assert_eq!(r.error_reason, Some(ErrorCode::ChannelBusy));
    }
}
