//! The dev chain harness itself: contracts at the canonical addresses, tokens minted, anvil reaped.

use alloy::providers::Provider;
use paychan_bindings::{BatchSettlement, ERC3009DepositCollector, Multicall3};
use paychan_devchain::{DevChain, ERC3009_COLLECTOR, ESCROW, MULTICALL3, Role};

#[tokio::test]
async fn places_contracts_at_the_canonical_addresses() {
    let chain = DevChain::start().await.unwrap();
    let p = chain.provider();
    assert_eq!(p.get_chain_id().await.unwrap(), 31337);
    for a in [
        ESCROW,
        ERC3009_COLLECTOR,
        MULTICALL3,
        chain.contracts().token,
    ] {
        assert!(
            !p.get_code_at(a).await.unwrap().is_empty(),
            "no code at {a}"
        );
    }
    let escrow = BatchSettlement::new(ESCROW, p);
    assert_eq!(
        escrow
            .MIN_WITHDRAW_DELAY()
            .call()
            .await
            .unwrap()
            .to::<u64>(),
        900
    );
    let domain = escrow.eip712Domain().call().await.unwrap();
    assert_eq!(domain.name, "x402 Batch Settlement");
    assert_eq!(domain.verifyingContract, ESCROW);
    let collector = ERC3009DepositCollector::new(ERC3009_COLLECTOR, p);
    assert_eq!(collector.batchSettlement().call().await.unwrap(), ESCROW);
    let mc = Multicall3::new(MULTICALL3, p);
    assert_eq!(mc.getChainId().call().await.unwrap().to::<u64>(), 31337);
    for role in [Role::Payer(0), Role::Receiver, Role::Payer(5)] {
        let bal = chain
            .token_balance(chain.account(role).address)
            .await
            .unwrap();
        assert_eq!(bal.to::<u128>(), chain.config().mint_per_account);
    }
}

#[tokio::test]
async fn anvil_is_gone_after_drop() {
    let chain = DevChain::start().await.unwrap();
    let pid = chain.pid();
    let url = chain.rpc_url().to_owned();
    drop(chain);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "anvil {pid} outlived its DevChain"
    );
    let p = alloy::providers::ProviderBuilder::new().connect_http(url.parse().unwrap());
    assert!(p.get_chain_id().await.is_err());
}
