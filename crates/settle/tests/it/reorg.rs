//! A reorg drops the settler's claim before its second confirmation: the relayer re-broadcasts
//! the same signed transaction, and the channels end up claimed exactly once.

use std::time::Duration;

use alloy::{
    providers::{Provider, ext::AnvilApi},
    rpc::types::anvil::ReorgOptions,
};
use paychan_chain::{ChainConfig, ChainReader};
use paychan_store::{JournalState, Store};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_dropped_by_a_reorg_is_claimed_exactly_once() {
    let env = Env::start().await;
    let provider = env.chain.provider().clone();
    let engine = env.engine();
    let mut payers = env.open_channels(31, 2, 20_000).await;
    for p in &mut payers {
        env.pay(&engine, p, 1_000).await;
        env.pay(&engine, p, 250).await;
    }
    let reader = ChainReader::connect(ChainConfig {
        confirmations: 2,
        ..fast(env.chain.rpc_url())
    })
    .await
    .unwrap();
    let relayer = env.relayer(reader, engine.store().clone());
    let me = relayer.address();
    let settler = env.settler(&engine, relayer, policy(), false);
    let n0 = env.nonce(me).await;
    let receiver_before = env.balance(env.receiver()).await;

    let s = settler.clone();
    let task = tokio::spawn(async move { s.claim_now().await });
    // mined at once (automine): one confirmation of the two needed
    let (entry, _) = sent_with(engine.store(), 1).await;
    let JournalState::Sent { tx_hash: hash, .. } = entry.state else {
        unreachable!()
    };
    let first = eventually("the claim to be mined", 10, || async {
        provider.get_transaction_receipt(hash).await.unwrap()
    })
    .await;
    assert_eq!(env.claimed(payers[0].id()).await, 1_250);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // replace that block by an empty one
    provider
        .anvil_reorg(ReorgOptions {
            depth: 1,
            tx_block_pairs: vec![],
        })
        .await
        .unwrap();
    let p = provider.clone();
    let miner = tokio::spawn(async move {
        loop {
            let _ = p.anvil_mine(Some(1), None).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let round = task.await.unwrap().unwrap();
    assert_eq!(round.claims.len(), 1, "{round:?}");
    assert_eq!(round.claims[0].tx_hash, hash, "the same signed transaction");
    assert_eq!(round.channels_claimed(), 2);
    let receipt = provider
        .get_transaction_receipt(hash)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(
        receipt.block_hash, first.block_hash,
        "confirmed in the new branch"
    );
    let settled = settler.settle_now().await.unwrap();
    miner.abort();
    assert_eq!(settled.settles.len(), 1);
    assert_eq!(settled.settles[0].amount, 2_500);

    for p in &payers {
        assert_eq!(env.claimed(p.id()).await, p.charged());
    }
    assert_eq!(
        env.reader
            .receiver_state(env.receiver(), env.token())
            .await
            .unwrap(),
        (2_500, 2_500)
    );
    assert_eq!(env.balance(env.receiver()).await - receiver_before, 2_500);
    assert_eq!(env.nonce(me).await, n0 + 2, "one claim, one settle");
    assert!(engine.store().open_journal().await.unwrap().is_empty());
    let gas = settler.gas_report();
    assert_eq!(
        (gas.claim_txs, gas.settle_txs, gas.channels_claimed),
        (1, 1, 2)
    );
}
