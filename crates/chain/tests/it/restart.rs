//! Idempotency across restarts through the journal: a relayer dies with actions `Sent`; a new
//! relayer on the same store reconciles them with the chain in `recover()`.

use alloy::{
    network::TransactionBuilder,
    primitives::{Bytes, U256},
    providers::{Provider, ext::AnvilApi},
    rpc::types::TransactionRequest,
    sol_types::SolCall,
};
use paychan_bindings::BatchSettlement;
use paychan_chain::{ChainReader, Relayer};
use paychan_devchain::{ESCROW, Role};
use paychan_store::{Durability, JournalState, SledStore, SledStoreConfig, Store};

use crate::support::{Env, RpcProxy, confirmed, eventually, mem, sent_with};

fn open(dir: &std::path::Path) -> SledStore {
    SledStore::open(SledStoreConfig {
        durability: Durability::Fsync,
        ..SledStoreConfig::new(dir)
    })
    .unwrap()
}

async fn funded(env: &Env) -> paychan_core::batch::ChannelConfig {
    let p0 = Role::Payer(0);
    let a = env.channel(p0, 1);
    let setup = Relayer::new(env.reader().await, mem(), env.tx_key(Role::Deployer));
    setup
        .deposit(&a, 1_000_000, env.deposit_data(p0, &a, 1_000_000, 1).await)
        .await
        .unwrap();
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_claim_is_confirmed_after_a_restart_without_a_second_send() {
    let env = Env::start().await;
    let provider = env.chain.provider().clone();
    let a = funded(&env).await;
    let id = env.domain.channel_id(&a);
    let dir = tempfile::tempdir().unwrap();
    let key = env.addr(Role::Relayer);
    let n0 = env.nonce(key).await;

    provider.anvil_set_auto_mine(false).await.unwrap();
    let hash = {
        let store = open(dir.path());
        let relayer = env.relayer(store.clone()).await;
        let (rows, sig) = env.claim_rows(&[(Role::Payer(0), a, 725)]);
        let r = relayer.clone();
        let task = tokio::spawn(async move { r.claim_with_signature(rows, sig).await });
        let (hash, _, _) = sent_with(&store, 1, 1).await;
        eventually("the node to have the claim", 10, || async {
            provider.get_transaction_by_hash(hash).await.unwrap()
        })
        .await;
        // recovery leaves an action its own relayer is driving alone
        let live = relayer.recover().await.unwrap();
        assert_eq!(live.still_open.len(), 1, "{live:?}");
        assert!(live.confirmed.is_empty() && live.resent.is_empty());
        // the process dies before the claim is mined
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        hash
    };
    provider.anvil_mine(Some(1), None).await.unwrap();
    provider.anvil_set_auto_mine(true).await.unwrap();

    let store = open(dir.path());
    assert_eq!(store.open_journal().await.unwrap().len(), 1);
    let relayer = env.relayer(store.clone()).await;
    let report = relayer.recover().await.unwrap();
    assert_eq!(report.confirmed.len(), 1, "{report:?}");
    assert_eq!(confirmed(&report.confirmed[0]).0, hash);
    assert!(report.resent.is_empty() && report.failed.is_empty() && report.still_open.is_empty());
    assert!(store.open_journal().await.unwrap().is_empty());
    assert_eq!(env.nonce(key).await, n0 + 1, "no second transaction");
    assert_eq!(
        relayer
            .reader()
            .channel_state(id)
            .await
            .unwrap()
            .total_claimed,
        725
    );
    // a second recovery has nothing to do
    assert_eq!(relayer.recover().await.unwrap(), Default::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_journaled_but_never_broadcast_is_broadcast_by_recovery() {
    let env = Env::start().await;
    let a = funded(&env).await;
    let id = env.domain.channel_id(&a);
    let key = env.addr(Role::Relayer);
    let n0 = env.nonce(key).await;
    let store = mem();

    let proxy = RpcProxy::start(env.chain.rpc_url()).await.unwrap();
    let reader = ChainReader::connect(env.config_for(&proxy.url()))
        .await
        .unwrap();
    let dying = Relayer::new(reader, store.clone(), env.tx_key(Role::Relayer));
    proxy.trip_on(&["eth_sendRawTransaction"], false);
    let (rows, sig) = env.claim_rows(&[(Role::Payer(0), a, 725)]);
    let task = tokio::spawn(async move { dying.claim_with_signature(rows, sig).await });
    let (hash, _, _) = sent_with(&store, 1, 1).await;
    eventually("the proxy to die", 10, || async {
        proxy.tripped().then_some(())
    })
    .await;
    task.abort();
    let _ = task.await;
    assert_eq!(env.nonce(key).await, n0, "the node never saw it");

    let relayer = env.relayer(store.clone()).await;
    let report = relayer.recover().await.unwrap();
    assert_eq!(report.confirmed.len(), 1, "{report:?}");
    assert_eq!(
        confirmed(&report.confirmed[0]).0,
        hash,
        "the stored transaction itself"
    );
    assert!(report.resent.is_empty());
    assert_eq!(env.nonce(key).await, n0 + 1);
    assert_eq!(
        relayer
            .reader()
            .channel_state(id)
            .await
            .unwrap()
            .total_claimed,
        725
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_resends_a_needed_claim_and_supersedes_a_refund_done_by_another_transaction() {
    let env = Env::start().await;
    let provider = env.chain.provider().clone();
    let a = funded(&env).await;
    let id = env.domain.channel_id(&a);
    let key = env.addr(Role::Relayer);
    let payer_before = env.balance(a.payer).await;
    let store = mem();

    provider.anvil_set_auto_mine(false).await.unwrap();
    let dying = env.relayer(store.clone()).await;
    let (rows, sig) = env.claim_rows(&[(Role::Payer(0), a, 725)]);
    let d = dying.clone();
    let claim = tokio::spawn(async move { d.claim_with_signature(rows, sig).await });
    let (claim_hash, claim_nonce, _) = sent_with(&store, 1, 1).await;
    let refund_sig = env.refund_sig(&a, U256::ZERO, 100_000);
    let d = dying.clone();
    let rs = refund_sig.clone();
    let refund =
        tokio::spawn(async move { d.refund_with_signature(&a, 100_000, U256::ZERO, rs).await });
    let (refund_hash, refund_nonce, _) = sent_with(&store, 2, 1).await;
    assert_eq!(refund_nonce, claim_nonce + 1);
    for h in [claim_hash, refund_hash] {
        eventually("the node to have our transactions", 10, || async {
            provider.get_transaction_by_hash(h).await.unwrap()
        })
        .await;
    }
    claim.abort();
    refund.abort();
    let _ = (claim.await, refund.await);
    drop(dying);

    // Another process with the same key takes both nonces: a no-op at the claim's, and the same
    // refund (signed by the receiver authorizer) at the refund's.
    let other = env.chain.provider_as(Role::Relayer).unwrap();
    let fees = |tx: TransactionRequest| {
        tx.with_max_fee_per_gas(50_000_000_000)
            .with_max_priority_fee_per_gas(5_000_000_000)
            .with_gas_limit(200_000)
    };
    let noop = fees(
        TransactionRequest::default()
            .with_to(key)
            .with_nonce(claim_nonce),
    );
    let same_refund = fees(
        TransactionRequest::default()
            .with_to(ESCROW)
            .with_nonce(refund_nonce)
            .with_input(Bytes::from(
                BatchSettlement::refundWithSignatureCall {
                    config: (&a).into(),
                    amount: 100_000,
                    nonce: U256::ZERO,
                    receiverAuthorizerSignature: refund_sig,
                }
                .abi_encode(),
            )),
    );
    let h1 = *other.send_transaction(noop).await.unwrap().tx_hash();
    let h2 = *other.send_transaction(same_refund).await.unwrap().tx_hash();
    provider.anvil_mine(Some(1), None).await.unwrap();
    provider.anvil_set_auto_mine(true).await.unwrap();
    assert!(
        provider
            .get_transaction_receipt(h1)
            .await
            .unwrap()
            .unwrap()
            .status()
    );
    assert!(
        provider
            .get_transaction_receipt(h2)
            .await
            .unwrap()
            .unwrap()
            .status()
    );
    let n_after_others = env.nonce(key).await;
    assert_eq!(n_after_others, refund_nonce + 1);

    let relayer = env.relayer(store.clone()).await;
    let report = relayer.recover().await.unwrap();
    assert_eq!(report.resent, vec![1], "{report:?}");
    assert_eq!(report.confirmed.len(), 1);
    assert_eq!(report.confirmed[0].id, 1);
    assert_eq!(report.failed.len(), 1);
    match &report.failed[0].state {
        JournalState::Failed { reason } => {
            assert!(reason.starts_with("superseded: refund nonce 0"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(store.open_journal().await.unwrap().is_empty());
    // the claim went out once more (one new nonce); the refund was not re-sent
    assert_eq!(env.nonce(key).await, n_after_others + 1);
    let s = relayer.reader().channel_state(id).await.unwrap();
    assert_eq!(
        (s.balance, s.total_claimed, s.refund_nonce),
        (900_000, 725, U256::from(1))
    );
    assert_eq!(env.balance(a.payer).await, payer_before + 100_000);
}
