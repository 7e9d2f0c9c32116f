//! A claim stuck in the pool (no blocks) is fee-bumped: same nonce, higher fees; the bumped
//! version lands, once.

use std::time::Duration;

use alloy::{
    consensus::Transaction as _,
    providers::{Provider, ext::AnvilApi},
};
use paychan_chain::{ChainConfig, ChainReader};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_claim_is_fee_bumped_and_lands_once() {
    let env = Env::start().await;
    let provider = env.chain.provider().clone();
    let engine = env.engine();
    let mut payers = env.open_channels(41, 2, 20_000).await;
    for p in &mut payers {
        env.pay(&engine, p, 900).await;
    }
    let reader = ChainReader::connect(ChainConfig {
        bump_after: Duration::from_millis(300),
        max_bumps: 3,
        ..fast(env.chain.rpc_url())
    })
    .await
    .unwrap();
    let relayer = env.relayer(reader, engine.store().clone());
    let me = relayer.address();
    let settler = env.settler(&engine, relayer, policy(), false);
    let n0 = env.nonce(me).await;
    let receiver_before = env.balance(env.receiver()).await;

    provider.anvil_set_auto_mine(false).await.unwrap();
    let s = settler.clone();
    let task = tokio::spawn(async move { s.claim_now().await });
    let (_, first_hashes) = sent_with(engine.store(), 1).await;
    let h0 = first_hashes[0];
    let first = eventually("the node to have the claim", 10, || async {
        provider.get_transaction_by_hash(h0).await.unwrap()
    })
    .await;
    // two bumps: three versions at one nonce
    let (_, hashes) = sent_with(engine.store(), 3).await;
    eventually("the node to have the third version", 10, || async {
        provider.get_transaction_by_hash(hashes[2]).await.unwrap()
    })
    .await;
    provider.anvil_mine(Some(1), None).await.unwrap();
    provider.anvil_set_auto_mine(true).await.unwrap();

    let round = task.await.unwrap().unwrap();
    assert_eq!(round.claims.len(), 1, "{round:?}");
    let tx = round.claims[0].tx_hash;
    assert_ne!(tx, h0, "a bumped version was mined");
    assert!(
        provider
            .get_transaction_receipt(h0)
            .await
            .unwrap()
            .is_none()
    );
    let mined = provider.get_transaction_by_hash(tx).await.unwrap().unwrap();
    assert!(mined.max_fee_per_gas() * 100 >= first.max_fee_per_gas() * 125);
    let settled = settler.settle_now().await.unwrap();
    assert_eq!(settled.settles.len(), 1);

    for p in &payers {
        assert_eq!(env.claimed(p.id()).await, 900);
    }
    assert_eq!(env.balance(env.receiver()).await - receiver_before, 1_800);
    assert_eq!(
        env.nonce(me).await,
        n0 + 2,
        "one claim (bumped in place), one settle"
    );
    let gas = settler.gas_report();
    assert_eq!((gas.claim_txs, gas.settle_txs), (1, 1));
    assert_eq!(gas.gas_claims, round.claims[0].gas_used);
}
