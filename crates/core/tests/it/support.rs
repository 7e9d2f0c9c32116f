//! Shared fixtures.

use alloy_primitives::{Address, B256, Bytes, U256, address, b256};
use paychan_core::{
    batch::{BatchDomain, BatchRequirements, ChannelConfig, VoucherFields, canonical},
    sig::LocalSigner,
};

pub const PAYER_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
pub const RECEIVER: Address = address!("3C44CdDdB6a900fa2b585dd299e03d12FA4293BC");
pub const RECEIVER_AUTHORIZER: Address = address!("90F79bf6EB2c4f870365E785982E1f101E93b906");
pub const TOKEN: Address = address!("5FbDB2315678afecb367f032d93F642f64180aa3");

pub fn payer() -> LocalSigner {
    LocalSigner::from_hex(PAYER_KEY).unwrap()
}

pub fn domain() -> BatchDomain {
    BatchDomain::new(31337, canonical::ESCROW)
}

pub fn requirements(amount: u128) -> BatchRequirements {
    let json = serde_json::json!({
        "scheme": "batch-settlement", "network": "eip155:31337", "amount": amount.to_string(),
        "asset": TOKEN.to_string(), "payTo": RECEIVER.to_string(), "maxTimeoutSeconds": 300,
        "extra": {"receiverAuthorizer": RECEIVER_AUTHORIZER.to_string(), "withdrawDelay": 900,
                  "name": "USD Coin", "version": "2"}
    });
    BatchRequirements::from_generic(&serde_json::from_value(json).unwrap()).unwrap()
}

pub fn config(payer: Address) -> ChannelConfig {
    ChannelConfig {
        payer,
        payer_authorizer: payer,
        receiver: RECEIVER,
        receiver_authorizer: RECEIVER_AUTHORIZER,
        token: TOKEN,
        withdraw_delay: 900,
        salt: b256!("0000000000000000000000000000000000000000000000000000000000000007"),
    }
}

pub fn voucher(signer: &LocalSigner, channel_id: B256, ceiling: u128) -> VoucherFields {
    let sig = signer
        .sign_digest(&domain().voucher_digest(channel_id, ceiling))
        .unwrap();
    VoucherFields {
        channel_id,
        max_claimable_amount: ceiling,
        signature: Bytes::copy_from_slice(&sig.to_bytes()),
    }
}

#[allow(dead_code)]
pub fn u(n: u64) -> U256 {
    U256::from(n)
}
