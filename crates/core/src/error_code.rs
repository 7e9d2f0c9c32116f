//! The error codes x402 puts on the wire (`error`, `invalidReason`, `errorReason`).
//!
//! [`ErrorCode`] covers the core x402 v2 codes and every `invalid_batch_settlement_evm_*` code of
//! the batch-settlement EVM scheme (the spec's table, plus the few the reference SDK also emits),
//! and renders each as its exact string. Unknown codes from peers are kept verbatim in
//! [`ErrorCode::Other`] so that nothing a peer says is lost.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! codes {
    (
        core { $($cv:ident => $cs:literal, $cd:literal;)* }
        batch { $($bv:ident => $bs:literal, $bd:literal;)* }
    ) => {
        /// An x402 error code.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $(#[doc = $cd] $cv,)*
            $(#[doc = $bd] $bv,)*
            /// A code paychan does not know, kept as received.
            Other(String),
        }

        impl ErrorCode {
            /// Every known code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$cv,)* $(ErrorCode::$bv,)*];

            /// The exact wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $(ErrorCode::$cv => $cs,)*
                    $(ErrorCode::$bv => concat!("invalid_batch_settlement_evm_", $bs),)*
                    ErrorCode::Other(s) => s,
                }
            }

            /// A one-line human description.
            pub fn description(&self) -> &str {
                match self {
                    $(ErrorCode::$cv => $cd,)*
                    $(ErrorCode::$bv => $bd,)*
                    ErrorCode::Other(_) => "error reported by a peer",
                }
            }

            fn from_known(s: &str) -> Option<Self> {
                match s {
                    $($cs => Some(ErrorCode::$cv),)*
                    $(concat!("invalid_batch_settlement_evm_", $bs) => Some(ErrorCode::$bv),)*
                    _ => None,
                }
            }
        }
    };
}

codes! {
    core {
        InsufficientFunds => "insufficient_funds", "The payer does not have enough tokens.";
        InvalidNetwork => "invalid_network", "The network is not supported.";
        InvalidPayload => "invalid_payload", "The payment payload is malformed.";
        InvalidPaymentRequirements => "invalid_payment_requirements", "The payment requirements are invalid or were not offered.";
        InvalidScheme => "invalid_scheme", "The payment scheme is not supported.";
        UnsupportedScheme => "unsupported_scheme", "The facilitator does not support this scheme.";
        InvalidX402Version => "invalid_x402_version", "The x402 protocol version is not supported.";
        InvalidTransactionState => "invalid_transaction_state", "The on-chain transaction failed or was rejected.";
        UnexpectedVerifyError => "unexpected_verify_error", "Unexpected error during verification.";
        UnexpectedSettleError => "unexpected_settle_error", "Unexpected error during settlement.";
        SettlementPending => "settlement_pending", "The settlement transaction was sent but its receipt is not in yet; retry to reconcile.";
        WithdrawalPending => "paychan_withdrawal_pending", "A timed withdrawal on this channel ends soon; it takes no new charges (paychan extension: the scheme defines no code for this).";
    }
    batch {
        AuthorizerAddressMismatch => "authorizer_address_mismatch", "Authorizer address does not match the expected receiver authorizer.";
        AuthorizerNotConfigured => "authorizer_not_configured", "No receiver-authorizer key is configured to sign this operation.";
        ChannelBusy => "channel_busy", "Another request holds the channel; retry shortly.";
        ChannelIdInvalid => "channel_id_invalid", "The channel id is not a 32-byte hex string.";
        ChannelIdMismatch => "channel_id_mismatch", "Channel config does not hash to the claimed channel id.";
        ChannelNotFound => "channel_not_found", "No channel with a positive balance for this channel id.";
        ChannelStateReadFailed => "channel_state_read_failed", "Failed to read on-chain channel state.";
        ChargeExceedsSignedCumulative => "charge_exceeds_signed_cumulative", "Committing the charge would exceed the voucher's signed maximum.";
        ClaimPayload => "claim_payload", "Claim payload is malformed.";
        ClaimSimulationFailed => "claim_simulation_failed", "Claim simulation failed.";
        ClaimTransactionFailed => "claim_transaction_failed", "On-chain claim transaction failed.";
        CumulativeAmountMismatch => "cumulative_amount_mismatch", "The voucher's cumulative ceiling does not match the server's charged total plus this request's price.";
        CumulativeBelowClaimed => "cumulative_below_claimed", "The voucher's ceiling is not above the on-chain claimed total.";
        CumulativeExceedsBalance => "cumulative_exceeds_balance", "The voucher's ceiling exceeds the channel balance.";
        DepositBelowMinDeposit => "deposit_below_min_deposit", "The deposit is below the server's minimum.";
        DepositPayload => "deposit_payload", "Deposit payload is malformed.";
        DepositSimulationFailed => "deposit_simulation_failed", "Deposit simulation failed.";
        DepositTransactionFailed => "deposit_transaction_failed", "On-chain deposit transaction failed.";
        Eip2612AmountMismatch => "eip2612_amount_mismatch", "EIP-2612 permit amount does not match the authorization.";
        Eip2612AssetMismatch => "eip2612_asset_mismatch", "EIP-2612 permit asset does not match the payment asset.";
        Eip2612DeadlineExpired => "eip2612_deadline_expired", "EIP-2612 permit deadline has expired.";
        Eip2612InvalidFormat => "eip2612_invalid_format", "EIP-2612 permit segment is malformed.";
        Eip2612InvalidSignature => "eip2612_invalid_signature", "EIP-2612 permit signature is invalid.";
        Eip2612OwnerMismatch => "eip2612_owner_mismatch", "EIP-2612 permit owner does not match the payer.";
        Eip2612SpenderMismatch => "eip2612_spender_mismatch", "EIP-2612 permit spender is not the expected spender.";
        Eip6492FactoryNotAllowed => "eip6492_factory_not_allowed", "The ERC-6492 wallet factory is not allowed.";
        Erc20ApprovalAssetMismatch => "erc20_approval_asset_mismatch", "ERC-20 approval asset does not match the payment asset.";
        Erc20ApprovalBroadcastFailed => "erc20_approval_broadcast_failed", "Failed to broadcast the pre-signed ERC-20 approval.";
        Erc20ApprovalFromMismatch => "erc20_approval_from_mismatch", "ERC-20 approval signer does not match the payer.";
        Erc20ApprovalInvalidFormat => "erc20_approval_invalid_format", "ERC-20 approval segment is malformed.";
        Erc20ApprovalUnavailable => "erc20_approval_unavailable", "ERC-20 approval gas sponsorship is unavailable.";
        Erc20ApprovalWrongSpender => "erc20_approval_wrong_spender", "ERC-20 approval spender is not Permit2.";
        Erc3009AuthorizationRequired => "erc3009_authorization_required", "Deposit payload lacks the required erc3009Authorization.";
        InsufficientBalance => "insufficient_balance", "The payer's token balance is too low for the deposit.";
        MissingChannel => "missing_channel", "The server has no record of this channel.";
        MissingEip712Domain => "missing_eip712_domain", "The token's EIP-712 name/version is missing from the requirements.";
        NetworkMismatch => "network_mismatch", "The payload's network does not match the requirements' network.";
        PayloadAuthorizationValidAfter => "payload_authorization_valid_after", "ERC-3009 validAfter is still in the future.";
        PayloadAuthorizationValidBefore => "payload_authorization_valid_before", "ERC-3009 validBefore has passed.";
        PayloadType => "payload_type", "Payload type is not valid for this operation.";
        Permit2AllowanceRequired => "permit2_allowance_required", "A Permit2 allowance is required before deposit.";
        Permit2AmountMismatch => "permit2_amount_mismatch", "Permit2 amount does not match the deposit amount.";
        Permit2AuthorizationRequired => "permit2_authorization_required", "Deposit payload lacks the required Permit2 authorization.";
        Permit2DeadlineExpired => "permit2_deadline_expired", "Permit2 deadline has expired.";
        Permit2InvalidSignature => "permit2_invalid_signature", "Permit2 signature is invalid.";
        Permit2InvalidSpender => "permit2_invalid_spender", "Permit2 spender is not the expected spender.";
        ReceiveAuthorizationSignature => "receive_authorization_signature", "ERC-3009 receiveWithAuthorization signature is invalid.";
        ReceiverAuthorizerMismatch => "receiver_authorizer_mismatch", "Channel receiver authorizer does not match extra.receiverAuthorizer.";
        ReceiverMismatch => "receiver_mismatch", "Channel receiver does not match payTo.";
        RefundAmountInvalid => "refund_amount_invalid", "Refund amount is non-numeric or not positive.";
        RefundNoBalance => "refund_no_balance", "No refundable balance remains.";
        RefundPayload => "refund_payload", "Refund payload is malformed.";
        RefundSimulationFailed => "refund_simulation_failed", "Refund simulation failed.";
        RefundTransactionFailed => "refund_transaction_failed", "On-chain refund transaction failed.";
        RpcReadFailed => "rpc_read_failed", "Failed to read required on-chain data.";
        Scheme => "scheme", "Scheme is not batch-settlement.";
        SettlePayload => "settle_payload", "Settle payload is malformed.";
        NothingToSettle => "nothing_to_settle", "The receiver/token pair has nothing claimed and unsettled.";
        SettleSimulationFailed => "settle_simulation_failed", "Settle simulation failed.";
        SettleTransactionFailed => "settle_transaction_failed", "On-chain settle transaction failed.";
        SmartWalletDeploymentFailed => "smart_wallet_deployment_failed", "Counterfactual smart-wallet deployment failed.";
        TokenMismatch => "token_mismatch", "Channel token does not match the payment asset.";
        TransactionReverted => "transaction_reverted", "The submitted transaction reverted.";
        UnknownSettleAction => "unknown_settle_action", "The settle payload asks for an unknown action.";
        VerificationStateUnavailable => "verification_state_unavailable", "The server could not establish the channel's verification state.";
        VoucherPayload => "voucher_payload", "Voucher payload is malformed.";
        VoucherSignature => "voucher_signature", "The voucher signature does not recover to the expected signer.";
        WaitForReceiptFailed => "wait_for_receipt_failed", "Failed while waiting for the transaction receipt.";
        WithdrawDelayMismatch => "withdraw_delay_mismatch", "Channel withdraw delay does not match extra.withdrawDelay.";
        WithdrawDelayOutOfRange => "withdraw_delay_out_of_range", "Withdraw delay is outside 15 minutes .. 30 days.";
    }
}

impl ErrorCode {
    /// True for the corrective-402 code, after which a client may resynchronize and retry.
    pub fn is_corrective(&self) -> bool {
        matches!(self, ErrorCode::CumulativeAmountMismatch)
    }

    /// True if the same request may succeed if simply retried later (busy, transient read or
    /// receipt failures).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ErrorCode::ChannelBusy
                | ErrorCode::ChannelStateReadFailed
                | ErrorCode::RpcReadFailed
                | ErrorCode::WaitForReceiptFailed
                | ErrorCode::VerificationStateUnavailable
                | ErrorCode::SettlementPending
        )
    }
}

impl FromStr for ErrorCode {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::from_known(s).unwrap_or_else(|| ErrorCode::Other(s.to_owned())))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(s.parse().unwrap_or_else(|never| match never {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_code_round_trips_and_is_unique() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s.to_owned()), "duplicate {s}");
            assert_eq!(&s.parse::<ErrorCode>().unwrap(), code);
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), *code);
        }
    }

    #[test]
    fn renders_exact_spec_strings() {
        assert_eq!(
            ErrorCode::CumulativeAmountMismatch.as_str(),
            "invalid_batch_settlement_evm_cumulative_amount_mismatch"
        );
        assert_eq!(
            ErrorCode::ChannelBusy.as_str(),
            "invalid_batch_settlement_evm_channel_busy"
        );
        assert_eq!(
            ErrorCode::InvalidX402Version.as_str(),
            "invalid_x402_version"
        );
    }

    #[test]
    fn unknown_codes_are_kept() {
        let c: ErrorCode = "some_future_code".parse().unwrap();
        assert_eq!(c, ErrorCode::Other("some_future_code".into()));
        assert_eq!(c.as_str(), "some_future_code");
    }
}
