//! A reorg drops a mined claim before it has its confirmations: the relayer notices, sends it
//! again, and the channel ends up claimed exactly once.

use alloy::{
    providers::{Provider, ext::AnvilApi},
    rpc::types::anvil::ReorgOptions,
};
use paychan_chain::{ChainConfig, ChainReader, Relayer};
use paychan_devchain::Role;
use paychan_store::Store;

use crate::support::{Env, confirmed, eventually, mem, sent_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_dropped_by_a_reorg_is_sent_again_and_lands_once() {
    let env = Env::start().await;
    let provider = env.chain.provider().clone();
    let p0 = Role::Payer(0);
    let a = env.channel(p0, 1);
    let id = env.domain.channel_id(&a);
    let setup = Relayer::new(env.reader().await, mem(), env.tx_key(Role::Deployer));
    setup
        .deposit(&a, 1_000_000, env.deposit_data(p0, &a, 1_000_000, 1).await)
        .await
        .unwrap();

    let reader = ChainReader::connect(ChainConfig {
        confirmations: 2,
        ..env.config()
    })
    .await
    .unwrap();
    let store = mem();
    let relayer = Relayer::new(reader.clone(), store.clone(), env.tx_key(Role::Relayer));
    let n0 = env.nonce(relayer.address()).await;
    let (rows, sig) = env.claim_rows(&[(p0, a, 725)]);
    let r = relayer.clone();
    let task = tokio::spawn(async move { r.claim_with_signature(rows, sig).await });

    // Mined at once (automine), so one confirmation of the two needed.
    let (hash, _, _) = sent_with(&store, 1, 1).await;
    let first = eventually("the claim to be mined", 10, || async {
        provider.get_transaction_receipt(hash).await.unwrap()
    })
    .await;
    assert_eq!(
        provider.get_block_number().await.unwrap(),
        first.block_number.unwrap()
    );
    assert_eq!(reader.channel_state(id).await.unwrap().total_claimed, 725);
    // Let the relayer see its receipt (10 poll intervals; there is nothing outside to poll).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    // Replace that block by an empty one.
    provider
        .anvil_reorg(ReorgOptions {
            depth: 1,
            tx_block_pairs: vec![],
        })
        .await
        .unwrap();
    println!(
        "after reorg: receipt {:?}, total claimed {}",
        provider
            .get_transaction_receipt(hash)
            .await
            .unwrap()
            .map(|r| r.block_number),
        reader.channel_state(id).await.unwrap().total_claimed
    );

    // Blocks keep coming, so the re-sent claim can collect its confirmations.
    let p = provider.clone();
    let miner = tokio::spawn(async move {
        loop {
            let _ = p.anvil_mine(Some(1), None).await;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    let e = task.await.unwrap().unwrap();
    miner.abort();
    let (tx, block, _) = confirmed(&e);
    assert_eq!(tx, hash, "the same signed transaction, re-broadcast");
    let receipt = provider.get_transaction_receipt(tx).await.unwrap().unwrap();
    assert_ne!(
        receipt.block_hash, first.block_hash,
        "confirmed in the new branch"
    );
    assert_eq!(receipt.block_number, Some(block));
    assert_eq!(
        provider
            .get_block_by_number(block.into())
            .await
            .unwrap()
            .unwrap()
            .header
            .hash,
        receipt.block_hash.unwrap()
    );
    // Claimed exactly once, by one nonce.
    let s = reader.channel_state(id).await.unwrap();
    assert_eq!((s.balance, s.total_claimed), (1_000_000, 725));
    assert_eq!(
        reader
            .receiver_state(env.addr(Role::Receiver), env.token)
            .await
            .unwrap(),
        (725, 0)
    );
    assert_eq!(env.nonce(relayer.address()).await, n0 + 1);
    assert!(store.open_journal().await.unwrap().is_empty());
}
