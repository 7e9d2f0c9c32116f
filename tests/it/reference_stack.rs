//! What the interop tests that run `tests/interop/reference-stack.mjs` share: the script's
//! environment for a dev chain, and the on-chain check, independent of the script, that a run
//! moved exactly the money it reports.

use std::str::FromStr;

use alloy::{
    primitives::{B256, U256},
    providers::Provider,
};
use paychan_bindings::BatchSettlement;
use paychan_devchain::{DevChain, ESCROW, Role};
use serde_json::Value;

use crate::node::{NODE_TIMEOUT, amount, field, tx_hash};

/// Paid requests each run makes.
pub const REQUESTS: u128 = 5;
/// Price per request, in token base units.
pub const PRICE: u128 = 1000;

/// The script's environment for `chain`: network, token, payer and receiver(-authorizer) keys,
/// request count and price. Callers add how the facilitator is reached.
pub fn base_env(chain: &DevChain) -> Vec<(&'static str, String)> {
    let key = |role: Role| chain.account(role).key.to_string();
    vec![
        ("PAYCHAN_RPC_URL", chain.rpc_url().to_owned()),
        ("PAYCHAN_CHAIN_ID", chain.chain_id().to_string()),
        ("PAYCHAN_TOKEN", chain.contracts().token.to_checksum(None)),
        ("PAYCHAN_TOKEN_NAME", chain.config().token_name.clone()),
        (
            "PAYCHAN_TOKEN_VERSION",
            chain.config().token_version.clone(),
        ),
        ("PAYCHAN_PAYER_KEY", key(Role::Payer(0))),
        (
            "PAYCHAN_RECEIVER_ADDRESS",
            chain.account(Role::Receiver).address.to_checksum(None),
        ),
        (
            "PAYCHAN_RECEIVER_AUTHORIZER_KEY",
            key(Role::ReceiverAuthorizer),
        ),
        ("PAYCHAN_REQUESTS", REQUESTS.to_string()),
        ("PAYCHAN_PRICE", PRICE.to_string()),
        (
            "PAYCHAN_TIMEOUT_MS",
            (NODE_TIMEOUT.as_millis() - 10_000).to_string(),
        ),
    ]
}

/// Token balances of the payer, the receiver and the escrow, read before a run.
#[derive(Debug, Clone, Copy)]
pub struct Balances {
    payer: U256,
    receiver: U256,
    escrow: U256,
}

impl Balances {
    pub async fn read(chain: &DevChain) -> Self {
        Self {
            payer: chain
                .token_balance(chain.account(Role::Payer(0)).address)
                .await
                .unwrap(),
            receiver: chain
                .token_balance(chain.account(Role::Receiver).address)
                .await
                .unwrap(),
            escrow: chain.token_balance(ESCROW).await.unwrap(),
        }
    }
}

/// Checks on chain that the run reported by `summary` moved exactly its charges: the reported
/// amounts add up; the payer lost and the receiver gained exactly the charges since `before`, the
/// escrow holds nothing more; the channel was claimed in full and refunded once; the receiver
/// claimed and settled exactly the charges; and the deposit, claim, settle and refund transactions
/// exist, succeeded, went to the escrow, used the reported gas and were sent by the dev relayer
/// account.
pub async fn assert_moved_exactly_the_charges(chain: &DevChain, summary: &Value, before: Balances) {
    let token = chain.contracts().token;
    let payer = chain.account(Role::Payer(0)).address;
    let receiver = chain.account(Role::Receiver).address;

    let requests = u128::from(
        field(summary, &["requests"])
            .as_u64()
            .expect("requests is a number"),
    );
    let charged = amount(summary, "charged");
    let deposited = amount(summary, "deposited");
    let refunded = amount(summary, "refunded");
    assert_eq!(requests, REQUESTS, "{summary}");
    // The reference server charges the full per-request price.
    assert_eq!(charged, requests * PRICE, "{summary}");
    assert!(
        deposited > charged,
        "deposit must leave something to refund: {summary}"
    );
    assert_eq!(deposited - refunded, charged, "{summary}");

    // Balances: the payer paid exactly the charges (deposit out, refund back), the receiver got
    // exactly them, and the escrow holds nothing more than before.
    let charged_u = U256::from(charged);
    assert_eq!(
        chain.token_balance(receiver).await.unwrap(),
        before.receiver + charged_u,
        "receiver balance"
    );
    assert_eq!(
        chain.token_balance(payer).await.unwrap(),
        before.payer - charged_u,
        "payer balance"
    );
    assert_eq!(
        chain.token_balance(ESCROW).await.unwrap(),
        before.escrow,
        "escrow balance"
    );

    // The channel: everything charged was claimed, nothing unclaimed is left in it.
    let channel_id = B256::from_str(
        field(summary, &["channelId"])
            .as_str()
            .expect("channelId is a string"),
    )
    .expect("channelId is bytes32");
    let escrow = BatchSettlement::new(ESCROW, chain.provider());
    let state = escrow.channels(channel_id).call().await.unwrap();
    assert_eq!(state.totalClaimed, charged, "channel totalClaimed");
    assert_eq!(
        state.balance, state.totalClaimed,
        "channel keeps unclaimed funds"
    );
    assert_eq!(
        escrow.refundNonce(channel_id).call().await.unwrap(),
        U256::from(1),
        "one cooperative refund"
    );
    let rs = escrow.receivers(receiver, token).call().await.unwrap();
    assert_eq!(
        (rs.totalClaimed, rs.totalSettled),
        (charged, charged),
        "receiver claimed and settled exactly the charges"
    );

    // Each reported transaction.
    let relayer = chain.account(Role::Relayer).address;
    for which in ["deposit", "claim", "settle", "refund"] {
        let receipt = chain
            .provider()
            .get_transaction_receipt(tx_hash(summary, which))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{which} transaction not on chain"));
        assert!(receipt.status(), "{which} transaction reverted");
        assert_eq!(receipt.to, Some(ESCROW), "{which} transaction target");
        let gas = field(summary, &["gas", which])
            .as_str()
            .and_then(|g| g.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("gas.{which} missing: {summary}"));
        assert_eq!(receipt.gas_used, gas, "{which} gasUsed");
        assert_eq!(receipt.from, relayer, "{which} transaction sender");
    }
}
