//! A dead RPC node in the middle of a settlement: the relayer talks to the node through a TCP
//! proxy that dies right after forwarding the claim (its answer lost), and, for the settle,
//! right before forwarding it (never received). Both complete once the node is back, and
//! nothing is claimed or settled twice.

use std::time::Duration;

use paychan_chain::{ChainReader, Relayer};
use paychan_devchain::{ESCROW, Role};
use paychan_store::Store;

use crate::support::{Env, RpcProxy, confirmed, mem, sent_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_survives_a_dead_rpc_node_without_paying_twice() {
    let env = Env::start().await;
    let proxy = RpcProxy::start(env.chain.rpc_url()).await.unwrap();
    let reader = ChainReader::connect(env.config_for(&proxy.url()))
        .await
        .unwrap();
    let store = mem();
    let relayer = Relayer::new(reader.clone(), store.clone(), env.tx_key(Role::Relayer));
    let p0 = Role::Payer(0);
    let a = env.channel(p0, 1);
    let id = env.domain.channel_id(&a);
    let receiver = env.addr(Role::Receiver);
    let receiver_before = env.balance(receiver).await;
    let n0 = env.nonce(relayer.address()).await;

    relayer
        .deposit(&a, 1_000_000, env.deposit_data(p0, &a, 1_000_000, 1).await)
        .await
        .unwrap();

    // 1. The node receives the claim, then dies before answering.
    proxy.trip_on(&["eth_sendRawTransaction"], true);
    let (rows, sig) = env.claim_rows(&[(p0, a, 725)]);
    let r = relayer.clone();
    let claim = tokio::spawn(async move { r.claim_with_signature(rows, sig).await });
    let (hash, _, _) = sent_with(&store, 2, 1).await;
    crate::support::eventually("the proxy to die", 10, || async {
        proxy.tripped().then_some(())
    })
    .await;
    // The outage outlasts a whole retry budget (6 attempts, ~0.8 s).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    proxy.revive().unwrap();
    let claim = claim.await.unwrap().unwrap();
    assert_eq!(
        confirmed(&claim).0,
        hash,
        "the one broadcast transaction confirmed"
    );

    // 2. The settle never reaches the node; the relayer re-broadcasts once it is back.
    proxy.trip_on(&["eth_sendRawTransaction"], false);
    let r = relayer.clone();
    let settle = tokio::spawn(async move { r.settle(receiver, env_token(&a)).await });
    let (settle_hash, _, _) = sent_with(&store, 3, 1).await;
    crate::support::eventually("the proxy to die", 10, || async {
        proxy.tripped().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    proxy.revive().unwrap();
    let settle = settle.await.unwrap().unwrap();
    assert_eq!(
        confirmed(&settle).0,
        settle_hash,
        "re-broadcast as soon as the node is back, not re-signed"
    );

    // Exactly once: one transaction per action, and the money moved once.
    assert_eq!(env.nonce(relayer.address()).await, n0 + 3);
    let s = reader.channel_state(id).await.unwrap();
    assert_eq!((s.balance, s.total_claimed), (1_000_000, 725));
    assert_eq!(
        reader.receiver_state(receiver, env.token).await.unwrap(),
        (725, 725)
    );
    assert_eq!(env.balance(receiver).await, receiver_before + 725);
    assert_eq!(env.balance(ESCROW).await, 1_000_000 - 725);
    assert!(store.open_journal().await.unwrap().is_empty());
}

fn env_token(c: &paychan_core::batch::ChannelConfig) -> alloy::primitives::Address {
    c.token
}
