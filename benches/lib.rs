//! Fixtures shared by paychan's benchmarks.

use alloy_primitives::{Address, B256, address};
use paychan_core::{
    batch::{
        BatchDomain, BatchRequirements, ChannelConfig, VoucherPayload,
        payee::{ChannelRecord, OnchainState},
        payer::PayerChannel,
    },
    sig::LocalSigner,
    x402::{PaymentPayload, X402_VERSION},
};

/// A payee-side scenario: one channel with a large balance, and its payer.
pub struct Scenario {
    /// The escrow domain.
    pub domain: BatchDomain,
    /// The offer.
    pub requirements: BatchRequirements,
    /// The payer's key.
    pub payer: LocalSigner,
    /// The payer's view of the channel.
    pub payer_channel: PayerChannel,
    /// The payee's record of it.
    pub record: ChannelRecord,
}

const RECEIVER: Address = address!("3C44CdDdB6a900fa2b585dd299e03d12FA4293BC");
const AUTHORIZER: Address = address!("90F79bf6EB2c4f870365E785982E1f101E93b906");
const TOKEN: Address = address!("5FbDB2315678afecb367f032d93F642f64180aa3");

impl Scenario {
    /// A channel with `balance` deposited, priced `amount` per request; `salt` picks the channel.
    pub fn new(balance: u128, amount: u128, salt: u64) -> Self {
        let domain = BatchDomain::new(31337, paychan_core::batch::canonical::ESCROW);
        let json = serde_json::json!({
            "scheme": "batch-settlement", "network": "eip155:31337", "amount": amount.to_string(),
            "asset": TOKEN.to_string(), "payTo": RECEIVER.to_string(), "maxTimeoutSeconds": 300,
            "extra": {"receiverAuthorizer": AUTHORIZER.to_string(), "withdrawDelay": 900,
                      "name": "USD Coin", "version": "2"}
        });
        let requirements = serde_json::from_value(json)
            .ok()
            .and_then(|g| BatchRequirements::from_generic(&g).ok())
            .unwrap_or_else(|| unreachable!("fixture requirements are valid"));
        let payer = LocalSigner::from_hex(
            "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
        )
        .unwrap_or_else(|_| unreachable!("fixture key is valid"));
        let config = ChannelConfig {
            payer: payer.address(),
            payer_authorizer: payer.address(),
            receiver: RECEIVER,
            receiver_authorizer: AUTHORIZER,
            token: TOKEN,
            withdraw_delay: 900,
            salt: B256::from(alloy_primitives::U256::from(salt)),
        };
        let payer_channel = PayerChannel::from_chain(&domain, config, balance, 0);
        let record = ChannelRecord::from_chain(
            payer_channel.channel_id,
            config,
            OnchainState {
                balance,
                ..Default::default()
            },
            0,
        );
        Self {
            domain,
            requirements,
            payer,
            payer_channel,
            record,
        }
    }

    /// The next voucher payload as a `PAYMENT-SIGNATURE` header value.
    pub fn next_header(&mut self) -> String {
        voucher_header(
            &mut self.payer_channel,
            &self.domain,
            &self.payer,
            &self.requirements,
        )
    }

    /// The next voucher payload, typed.
    pub fn next_voucher(&mut self) -> VoucherPayload {
        self.payer_channel
            .voucher_payload(&self.domain, &self.payer, self.requirements.amount)
            .unwrap_or_else(|_| unreachable!("signing a fixture voucher cannot fail"))
    }
}

/// The payer's next voucher payload for `req`, as a `PAYMENT-SIGNATURE` header value.
pub fn voucher_header(
    pc: &mut PayerChannel,
    domain: &BatchDomain,
    payer: &LocalSigner,
    req: &BatchRequirements,
) -> String {
    let payload = pc
        .voucher_payload(domain, payer, req.amount)
        .unwrap_or_else(|_| unreachable!("signing a fixture voucher cannot fail"));
    let envelope = PaymentPayload {
        x402_version: X402_VERSION,
        resource: None,
        accepted: req.to_generic(),
        payload: paychan_core::batch::BatchPayload::Voucher(payload),
        extensions: None,
    };
    paychan_core::codec::encode(&envelope)
}
