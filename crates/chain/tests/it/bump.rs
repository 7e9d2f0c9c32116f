//! A transaction stuck in the pool is fee-bumped (same nonce, higher fees) until one version is
//! mined; the journal lists every version.

use std::time::Duration;

use alloy::{
    consensus::Transaction as _,
    providers::{Provider, ext::AnvilApi},
};
use paychan_chain::{ChainConfig, ChainReader, Relayer};
use paychan_devchain::Role;

use crate::support::{Env, confirmed, eventually, mem, sent_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_settle_is_fee_bumped_and_the_bumped_version_confirms() {
    let env = Env::start().await;
    let provider = env.chain.provider().clone();
    let p0 = Role::Payer(0);
    let a = env.channel(p0, 1);
    let receiver = env.addr(Role::Receiver);
    let setup = Relayer::new(env.reader().await, mem(), env.tx_key(Role::Deployer));
    setup
        .deposit(&a, 1_000_000, env.deposit_data(p0, &a, 1_000_000, 1).await)
        .await
        .unwrap();
    let (rows, sig) = env.claim_rows(&[(p0, a, 725)]);
    setup.claim_with_signature(rows, sig).await.unwrap();
    let receiver_before = env.balance(receiver).await;

    let reader = ChainReader::connect(ChainConfig {
        bump_after: Duration::from_millis(300),
        max_bumps: 3,
        ..env.config()
    })
    .await
    .unwrap();
    let store = mem();
    let relayer = Relayer::new(reader.clone(), store.clone(), env.tx_key(Role::Relayer));
    let n0 = env.nonce(relayer.address()).await;

    // No block is produced: the settle stays pending.
    provider.anvil_set_auto_mine(false).await.unwrap();
    let r = relayer.clone();
    let token = env.token;
    let task = tokio::spawn(async move { r.settle(receiver, token).await });
    let (h0, nonce, _) = sent_with(&store, 1, 1).await;
    // journaled before it is broadcast: wait until the node has it
    let first = eventually("the node to have the transaction", 10, || async {
        provider.get_transaction_by_hash(h0).await.unwrap()
    })
    .await;
    // Two bumps (three versions), all at the same nonce.
    let (_, nonce2, hashes) = sent_with(&store, 1, 3).await;
    assert_eq!(nonce, nonce2);
    assert_eq!(hashes[0], h0);
    eventually("the node to have the third version", 10, || async {
        provider.get_transaction_by_hash(hashes[2]).await.unwrap()
    })
    .await;
    provider.anvil_mine(Some(1), None).await.unwrap();
    provider.anvil_set_auto_mine(true).await.unwrap();

    let e = task.await.unwrap().unwrap();
    let (tx, _, gas) = confirmed(&e);
    assert_ne!(tx, h0, "a bumped version was mined");
    assert!(
        provider
            .get_transaction_receipt(h0)
            .await
            .unwrap()
            .is_none(),
        "the first one was replaced"
    );
    let mined = provider.get_transaction_by_hash(tx).await.unwrap().unwrap();
    assert_eq!(mined.nonce(), nonce);
    assert!(
        mined.max_fee_per_gas() * 100 >= first.max_fee_per_gas() * 125,
        "fees rose by at least two bumps of 12.5 %: {} -> {}",
        first.max_fee_per_gas(),
        mined.max_fee_per_gas()
    );
    assert_eq!(env.nonce(relayer.address()).await, n0 + 1);
    assert_eq!(env.balance(receiver).await, receiver_before + 725);
    assert_eq!(
        reader.receiver_state(receiver, env.token).await.unwrap(),
        (725, 725)
    );
    println!(
        "bump: {} versions, max fee {} -> {} wei, settle gas {gas}",
        hashes.len(),
        first.max_fee_per_gas(),
        mined.max_fee_per_gas()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_under_a_jump_of_the_base_fee_is_bumped_over_it() {
    let env = Env::start().await;
    let provider = env.chain.provider().clone();
    let p0 = Role::Payer(0);
    let a = env.channel(p0, 1);
    let setup = Relayer::new(env.reader().await, mem(), env.tx_key(Role::Deployer));
    setup
        .deposit(&a, 1_000_000, env.deposit_data(p0, &a, 1_000_000, 1).await)
        .await
        .unwrap();
    let reader = ChainReader::connect(ChainConfig {
        bump_after: Duration::from_millis(300),
        ..env.config()
    })
    .await
    .unwrap();
    let store = mem();
    let relayer = Relayer::new(reader.clone(), store.clone(), env.tx_key(Role::Relayer));
    let n0 = env.nonce(relayer.address()).await;

    // Priced for today's base fee; then a block with a base fee of 50 gwei leaves it out.
    provider.anvil_set_auto_mine(false).await.unwrap();
    let (rows, sig) = env.claim_rows(&[(p0, a, 725)]);
    let r = relayer.clone();
    let task = tokio::spawn(async move { r.claim_with_signature(rows, sig).await });
    let (h0, _, _) = sent_with(&store, 1, 1).await;
    // journaled before it is broadcast: wait until the node has it
    let first = eventually("the node to have the transaction", 10, || async {
        provider.get_transaction_by_hash(h0).await.unwrap()
    })
    .await;
    assert!(first.max_fee_per_gas() < 50_000_000_000);
    provider
        .anvil_set_next_block_base_fee_per_gas(50_000_000_000)
        .await
        .unwrap();
    provider.anvil_mine(Some(1), None).await.unwrap();
    assert!(
        provider
            .get_transaction_receipt(h0)
            .await
            .unwrap()
            .is_none(),
        "left out"
    );
    // The relayer bumps to the market (twice the new base fee plus the tip) and it gets in.
    sent_with(&store, 1, 2).await;
    provider.anvil_mine(Some(1), None).await.unwrap();
    provider.anvil_set_auto_mine(true).await.unwrap();
    let e = task.await.unwrap().unwrap();
    let (tx, _, _) = confirmed(&e);
    assert_ne!(tx, h0);
    let mined = provider.get_transaction_by_hash(tx).await.unwrap().unwrap();
    assert!(
        mined.max_fee_per_gas() >= 50_000_000_000,
        "bumped over the new base fee: {} -> {}",
        first.max_fee_per_gas(),
        mined.max_fee_per_gas()
    );
    assert_eq!(env.nonce(relayer.address()).await, n0 + 1);
    assert_eq!(
        reader
            .channel_state(env.domain.channel_id(&a))
            .await
            .unwrap()
            .total_claimed,
        725
    );
}
