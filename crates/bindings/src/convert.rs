//! Conversions between paychan-core's protocol types and the contract ABI types.

use alloy::primitives::{Bytes, U256, aliases::U40};
use paychan_core::batch::{ChannelConfig, ClaimRow};

use crate::BatchSettlement;

impl From<&ChannelConfig> for BatchSettlement::ChannelConfig {
    fn from(c: &ChannelConfig) -> Self {
        Self {
            payer: c.payer,
            payerAuthorizer: c.payer_authorizer,
            receiver: c.receiver,
            receiverAuthorizer: c.receiver_authorizer,
            token: c.token,
            // Validated configs are within 900 ..= 2,592,000; saturation only guards hostile input,
            // which the escrow then refuses as out of range.
            withdrawDelay: U40::saturating_from(c.withdraw_delay),
            salt: c.salt,
        }
    }
}

impl From<&BatchSettlement::ChannelConfig> for ChannelConfig {
    fn from(c: &BatchSettlement::ChannelConfig) -> Self {
        Self {
            payer: c.payer,
            payer_authorizer: c.payerAuthorizer,
            receiver: c.receiver,
            receiver_authorizer: c.receiverAuthorizer,
            token: c.token,
            withdraw_delay: c.withdrawDelay.to::<u64>(),
            salt: c.salt,
        }
    }
}

impl From<&ClaimRow> for BatchSettlement::VoucherClaim {
    fn from(r: &ClaimRow) -> Self {
        Self {
            voucher: BatchSettlement::Voucher {
                channel: (&r.voucher.channel).into(),
                maxClaimableAmount: r.voucher.max_claimable_amount,
            },
            signature: r.signature.clone(),
            totalClaimed: r.total_claimed,
        }
    }
}

/// `abi.encode(uint256 validAfter, uint256 validBefore, uint256 salt, bytes signature)`: the ERC-3009
/// collector's `collectorData`.
pub fn erc3009_collector_data(
    valid_after: U256,
    valid_before: U256,
    salt: U256,
    signature: &[u8],
) -> Bytes {
    use alloy::sol_types::SolValue;
    (
        valid_after,
        valid_before,
        salt,
        Bytes::copy_from_slice(signature),
    )
        .abi_encode_params()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::{address, b256};

    #[test]
    fn channel_config_round_trips() {
        let c = ChannelConfig {
            payer: address!("70997970C51812dc3A010C7d01b50e0d17dc79C8"),
            payer_authorizer: address!("70997970C51812dc3A010C7d01b50e0d17dc79C8"),
            receiver: address!("3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"),
            receiver_authorizer: address!("90F79bf6EB2c4f870365E785982E1f101E93b906"),
            token: address!("5FbDB2315678afecb367f032d93F642f64180aa3"),
            withdraw_delay: 900,
            salt: b256!("0000000000000000000000000000000000000000000000000000000000000001"),
        };
        let s: BatchSettlement::ChannelConfig = (&c).into();
        assert_eq!(ChannelConfig::from(&s), c);
    }

    #[test]
    fn collector_data_is_abi_encoded_params() {
        let d = erc3009_collector_data(U256::from(1), U256::from(2), U256::from(3), &[0xaa; 65]);
        // 4 head words, then the bytes: length word + 3 words of data
        assert_eq!(d.len(), 32 * 4 + 32 + 96);
        assert_eq!(d[31], 1);
        assert_eq!(d[63], 2);
        assert_eq!(d[95], 3);
        assert_eq!(d[127], 0x80); // offset of the bytes
        assert_eq!(d[159], 65); // its length
    }
}
