//! Interop with the x402 reference stack: `tests/interop/reference-stack.mjs` runs the reference
//! client (`@x402/fetch`), resource server (`@x402/express` + batch-settlement server scheme) and
//! facilitator (`@x402/core` + batch-settlement facilitator scheme) against paychan's contracts on
//! a dev chain; this test then checks on chain, independently of the script, that the money moved
//! exactly as the script reports.

use std::str::FromStr;

use alloy::{
    primitives::{Address, B256, U256},
    providers::Provider,
};
use paychan_bindings::BatchSettlement;
use paychan_devchain::{DevChain, ESCROW, Role};
use serde_json::Value;

use crate::node::{NODE_TIMEOUT, amount, field, run_script, tx_hash};

const REQUESTS: u128 = 5;
const PRICE: u128 = 1000;

/// How the script reaches the reference facilitator.
#[derive(Debug, Clone, Copy)]
enum FacilitatorMode {
    /// In the same process, as a `FacilitatorClient` object.
    InProcess,
    /// Served over the facilitator HTTP API and reached through `HTTPFacilitatorClient`.
    Http,
}

/// Runs the script against `chain`; returns its JSON summary line.
async fn run_reference_stack(chain: &DevChain, mode: FacilitatorMode) -> Value {
    let key = |role: Role| chain.account(role).key.to_string();
    let env = [
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
        ("PAYCHAN_RELAYER_KEY", key(Role::Relayer)),
        ("PAYCHAN_REQUESTS", REQUESTS.to_string()),
        ("PAYCHAN_PRICE", PRICE.to_string()),
        (
            "PAYCHAN_TIMEOUT_MS",
            (NODE_TIMEOUT.as_millis() - 10_000).to_string(),
        ),
        (
            "PAYCHAN_FACILITATOR_HTTP",
            match mode {
                FacilitatorMode::InProcess => "0",
                FacilitatorMode::Http => "1",
            }
            .to_owned(),
        ),
    ];
    run_script("reference-stack.mjs", &env, &["PAYCHAN_FACILITATOR_URL"]).await
}

async fn reference_stack_moves_exactly_the_charges(mode: FacilitatorMode) {
    let chain = DevChain::start().await.unwrap();
    let token = chain.contracts().token;
    let payer = chain.account(Role::Payer(0)).address;
    let receiver = chain.account(Role::Receiver).address;
    let payer_before = chain.token_balance(payer).await.unwrap();
    let receiver_before = chain.token_balance(receiver).await.unwrap();
    let escrow_before = chain.token_balance(ESCROW).await.unwrap();

    let summary = run_reference_stack(&chain, mode).await;

    let requests = u128::from(
        field(&summary, &["requests"])
            .as_u64()
            .expect("requests is a number"),
    );
    let charged = amount(&summary, "charged");
    let deposited = amount(&summary, "deposited");
    let refunded = amount(&summary, "refunded");
    assert_eq!(requests, REQUESTS, "{summary}");
    // The reference server charges the full per-request price.
    assert_eq!(charged, requests * PRICE, "{summary}");
    assert!(
        deposited > charged,
        "deposit must leave something to refund: {summary}"
    );
    assert_eq!(deposited - refunded, charged, "{summary}");

    // Balances, read on chain: the payer paid exactly the charges (deposit out, refund back), the
    // receiver got exactly them, and the escrow holds nothing more than before.
    let charged_u = U256::from(charged);
    assert_eq!(
        chain.token_balance(receiver).await.unwrap(),
        receiver_before + charged_u,
        "receiver balance"
    );
    assert_eq!(
        chain.token_balance(payer).await.unwrap(),
        payer_before - charged_u,
        "payer balance"
    );
    assert_eq!(
        chain.token_balance(ESCROW).await.unwrap(),
        escrow_before,
        "escrow balance"
    );

    // The channel: everything charged was claimed, nothing unclaimed is left in it.
    let channel_id = B256::from_str(
        field(&summary, &["channelId"])
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

    // Each reported transaction exists, succeeded, went to the escrow and used the reported gas.
    for which in ["deposit", "claim", "settle", "refund"] {
        let receipt = chain
            .provider()
            .get_transaction_receipt(tx_hash(&summary, which))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{which} transaction not on chain"));
        assert!(receipt.status(), "{which} transaction reverted");
        assert_eq!(receipt.to, Some(ESCROW), "{which} transaction target");
        let gas = field(&summary, &["gas", which])
            .as_str()
            .and_then(|g| g.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("gas.{which} missing: {summary}"));
        assert_eq!(receipt.gas_used, gas, "{which} gasUsed");
        let from: Address = receipt.from;
        assert_eq!(
            from,
            chain.account(Role::Relayer).address,
            "{which} transaction sender is the facilitator's relayer"
        );
    }
}

#[tokio::test]
async fn reference_stack_in_process_facilitator() {
    reference_stack_moves_exactly_the_charges(FacilitatorMode::InProcess).await;
}

#[tokio::test]
async fn reference_stack_http_facilitator() {
    reference_stack_moves_exactly_the_charges(FacilitatorMode::Http).await;
}
