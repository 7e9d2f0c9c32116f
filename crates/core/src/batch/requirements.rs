//! Typed batch-settlement payment requirements, and matching a client's `accepted` against the
//! server's offer.

use alloy_primitives::Address;

use super::{BatchExtra, MAX_WITHDRAW_DELAY, MIN_WITHDRAW_DELAY, SCHEME};
use crate::{
    ErrorCode, Network, Rejection, amount,
    hexser::{parse_address, parse_address_bytes},
    x402::{JsonObject, PaymentRequirements},
};

/// batch-settlement requirements with every field parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRequirements {
    /// CAIP-2 network.
    pub network: Network,
    /// Its EVM chain id.
    pub chain_id: u64,
    /// Per-request maximum, atomic units.
    pub amount: u128,
    /// Token.
    pub asset: Address,
    /// Receiver.
    pub pay_to: Address,
    /// How long the server holds a payment open.
    pub max_timeout_seconds: u64,
    /// Scheme `extra`.
    pub extra: BatchExtra,
}

fn to_object(extra: &BatchExtra) -> JsonObject {
    match serde_json::to_value(extra) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => JsonObject::new(),
    }
}

impl BatchRequirements {
    /// Parses generic requirements, refusing with the scheme's codes.
    pub fn from_generic(r: &PaymentRequirements) -> Result<Self, Rejection> {
        if r.scheme != SCHEME {
            return Err(Rejection::new(
                ErrorCode::Scheme,
                format!("scheme {:?} is not {SCHEME}", r.scheme),
            ));
        }
        let chain_id = r
            .network
            .evm_chain_id()
            .map_err(|e| Rejection::new(ErrorCode::InvalidNetwork, e.to_string()))?;
        let amount = amount::parse_u128(&r.amount).map_err(|e| {
            Rejection::new(
                ErrorCode::InvalidPaymentRequirements,
                format!("amount: {e}"),
            )
        })?;
        let asset = parse_address(&r.asset).map_err(|e| {
            Rejection::new(ErrorCode::InvalidPaymentRequirements, format!("asset: {e}"))
        })?;
        let pay_to = parse_address(&r.pay_to).map_err(|e| {
            Rejection::new(ErrorCode::InvalidPaymentRequirements, format!("payTo: {e}"))
        })?;
        let Some(extra) = r.extra.as_ref() else {
            return Err(Rejection::new(
                ErrorCode::MissingEip712Domain,
                "requirements have no extra",
            ));
        };
        for key in ["name", "version"] {
            if !extra.get(key).is_some_and(serde_json::Value::is_string) {
                return Err(Rejection::new(
                    ErrorCode::MissingEip712Domain,
                    format!("extra.{key} is missing"),
                ));
            }
        }
        let extra: BatchExtra = serde_json::from_value(serde_json::Value::Object(extra.clone()))
            .map_err(|e| {
                Rejection::new(ErrorCode::InvalidPaymentRequirements, format!("extra: {e}"))
            })?;
        if extra.receiver_authorizer == Address::ZERO {
            return Err(Rejection::new(
                ErrorCode::ReceiverAuthorizerMismatch,
                "extra.receiverAuthorizer is zero",
            ));
        }
        if !(MIN_WITHDRAW_DELAY..=MAX_WITHDRAW_DELAY).contains(&extra.withdraw_delay) {
            return Err(Rejection::code(ErrorCode::WithdrawDelayOutOfRange));
        }
        Ok(Self {
            network: r.network.clone(),
            chain_id,
            amount,
            asset,
            pay_to,
            max_timeout_seconds: r.max_timeout_seconds,
            extra,
        })
    }

    /// The wire form.
    pub fn to_generic(&self) -> PaymentRequirements {
        PaymentRequirements {
            scheme: SCHEME.to_owned(),
            network: self.network.clone(),
            amount: self.amount.to_string(),
            asset: self.asset.to_checksum(None),
            pay_to: self.pay_to.to_checksum(None),
            max_timeout_seconds: self.max_timeout_seconds,
            extra: Some(to_object(&self.extra)),
        }
    }

    /// This offer without corrective-only fields.
    pub fn without_corrective_state(&self) -> Self {
        let mut s = self.clone();
        s.extra.channel_state = None;
        s.extra.voucher_state = None;
        s
    }

    /// Whether a client's `accepted` is this offer: the same scheme, network, amount, asset,
    /// receiver and timeout, and the same receiver authorizer, withdraw delay, token domain and
    /// transfer method. Corrective-only fields the client echoes back are ignored. Addresses
    /// compare by value, not by letter case. Reads `accepted` in place (this runs per request).
    pub fn matches_accepted(&self, accepted: &PaymentRequirements) -> Result<(), Rejection> {
        use serde_json::Value;
        if accepted.scheme != SCHEME {
            return Err(Rejection::new(
                ErrorCode::Scheme,
                format!("scheme {:?} is not {SCHEME}", accepted.scheme),
            ));
        }
        if accepted.network != self.network {
            return Err(Rejection::new(
                ErrorCode::NetworkMismatch,
                format!("network {} is not {}", accepted.network, self.network),
            ));
        }
        let mismatch = |what: &str| {
            Err(Rejection::new(
                ErrorCode::InvalidPaymentRequirements,
                format!("accepted {what} differs from the offer"),
            ))
        };
        if amount::parse_u128(&accepted.amount).ok() != Some(self.amount) {
            return mismatch("amount");
        }
        // Comparing against our own addresses: the bytes decide, a checksum cannot change that.
        if parse_address_bytes(&accepted.asset) != Some(self.asset) {
            return mismatch("asset");
        }
        if parse_address_bytes(&accepted.pay_to) != Some(self.pay_to) {
            return mismatch("payTo");
        }
        if accepted.max_timeout_seconds != self.max_timeout_seconds {
            return mismatch("maxTimeoutSeconds");
        }
        let Some(extra) = accepted.extra.as_ref() else {
            return Err(Rejection::new(
                ErrorCode::MissingEip712Domain,
                "accepted requirements have no extra",
            ));
        };
        let str_of = |k: &str| extra.get(k).and_then(Value::as_str);
        let (Some(name), Some(version)) = (str_of("name"), str_of("version")) else {
            return Err(Rejection::new(
                ErrorCode::MissingEip712Domain,
                "accepted extra lacks the token's name/version",
            ));
        };
        if name != self.extra.name || version != self.extra.version {
            return mismatch("token EIP-712 domain");
        }
        if str_of("receiverAuthorizer").and_then(parse_address_bytes)
            != Some(self.extra.receiver_authorizer)
        {
            return mismatch("extra.receiverAuthorizer");
        }
        let delay = match extra.get("withdrawDelay") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => amount::parse_u64(s).ok(),
            _ => None,
        };
        if delay != Some(self.extra.withdraw_delay) {
            return mismatch("extra.withdrawDelay");
        }
        let method = str_of("assetTransferMethod").unwrap_or("eip3009");
        if method
            != self
                .extra
                .asset_transfer_method
                .as_deref()
                .unwrap_or("eip3009")
        {
            return mismatch("extra.assetTransferMethod");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> BatchRequirements {
        let json = serde_json::json!({
            "scheme": "batch-settlement", "network": "eip155:8453", "amount": "1000",
            "asset": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
            "payTo": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC", "maxTimeoutSeconds": 3600,
            "extra": {"receiverAuthorizer": "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
                      "withdrawDelay": 900, "name": "USD Coin", "version": "2"}
        });
        BatchRequirements::from_generic(&serde_json::from_value(json).unwrap()).unwrap()
    }

    #[test]
    fn round_trips_and_matches_itself() {
        let o = offer();
        let g = o.to_generic();
        assert_eq!(BatchRequirements::from_generic(&g).unwrap(), o);
        o.matches_accepted(&g).unwrap();
        // lowercase addresses are the same offer
        let mut lower = g.clone();
        lower.asset = lower.asset.to_lowercase();
        o.matches_accepted(&lower).unwrap();
    }

    #[test]
    fn refuses_changed_terms_with_codes() {
        let o = offer();
        let mut g = o.to_generic();
        g.amount = "999".into();
        assert_eq!(
            o.matches_accepted(&g).unwrap_err().code,
            ErrorCode::InvalidPaymentRequirements
        );
        let mut g = o.to_generic();
        g.network = "eip155:1".parse().unwrap();
        assert_eq!(
            o.matches_accepted(&g).unwrap_err().code,
            ErrorCode::NetworkMismatch
        );
        let mut g = o.to_generic();
        g.scheme = "exact".into();
        assert_eq!(o.matches_accepted(&g).unwrap_err().code, ErrorCode::Scheme);
        let mut g = o.to_generic();
        g.extra.as_mut().unwrap().remove("name");
        assert_eq!(
            o.matches_accepted(&g).unwrap_err().code,
            ErrorCode::MissingEip712Domain
        );
        let mut g = o.to_generic();
        g.extra
            .as_mut()
            .unwrap()
            .insert("withdrawDelay".into(), 60.into());
        assert_eq!(
            o.matches_accepted(&g).unwrap_err().code,
            ErrorCode::InvalidPaymentRequirements
        );
        // echoed corrective state does not matter
        let mut g = o.to_generic();
        g.extra
            .as_mut()
            .unwrap()
            .insert("channelState".into(), serde_json::json!({"junk": 1}));
        o.matches_accepted(&g).unwrap();
    }
}
