//! Restart reconciliation: a settler sends a claim that is not mined before it gives up, and
//! goes away; the transaction is mined while nobody watches. A new settler (new relayer, same key
//! and store) finishes the journal entry at start instead of claiming again, and settles at
//! shutdown.

use std::time::Duration;

use alloy::providers::ext::AnvilApi;
use paychan_chain::{ChainConfig, ChainReader};
use paychan_store::Store;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_sent_before_a_restart_is_finished_not_sent_again() {
    let env = Env::start().await;
    let provider = env.chain.provider().clone();
    let engine = env.engine();
    let mut ch = env.open_channels(101, 2, 20_000).await;
    env.pay(&engine, &mut ch[0], 800).await;
    env.pay(&engine, &mut ch[1], 1_000).await;
    let receiver_before = env.balance(env.receiver()).await;
    let me = env
        .relayer(env.reader.clone(), engine.store().clone())
        .address();
    let n0 = env.nonce(me).await;

    // The first settler sends the claim; no block comes before its confirm timeout.
    {
        let reader = ChainReader::connect(ChainConfig {
            confirm_timeout: Some(Duration::from_secs(1)),
            ..fast(env.chain.rpc_url())
        })
        .await
        .unwrap();
        let first = env.settler(
            &engine,
            env.relayer(reader, engine.store().clone()),
            policy(),
            false,
        );
        provider.anvil_set_auto_mine(false).await.unwrap();
        let r = first.claim_now().await.unwrap();
        assert!(r.claims.is_empty() && r.unconfirmed.len() == 1, "{r:?}");
        assert_eq!(engine.store().open_journal().await.unwrap().len(), 1);
    }
    // mined while no settler runs
    provider.anvil_mine(Some(1), None).await.unwrap();
    provider.anvil_set_auto_mine(true).await.unwrap();
    assert_eq!(env.claimed(ch[0].id()).await, 800);

    let second = env.settler(
        &engine,
        env.relayer(env.reader.clone(), engine.store().clone()),
        policy(),
        false,
    );
    let (stop, running) = run(&second);
    eventually("the open claim to be finished", 20, || async {
        engine
            .store()
            .open_journal()
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    stop.send(()).unwrap();
    let report = running.await.unwrap();
    let last = report.last_round.unwrap();
    assert!(last.claims.is_empty(), "nothing claimed again: {last:?}");
    assert_eq!(last.settles.len(), 1);
    assert_eq!(env.nonce(me).await, n0 + 2, "one claim, one settle");
    for p in &ch {
        assert_eq!(env.claimed(p.id()).await, p.charged());
        let rec = engine.channel(p.id()).await.unwrap().unwrap();
        assert_eq!(
            rec.onchain.total_claimed,
            p.charged(),
            "mirrored after recovery"
        );
    }
    assert_eq!(env.balance(env.receiver()).await - receiver_before, 1_800);
    // the recovered claim's gas is accounted once
    assert_eq!(
        (
            report.gas.claim_txs,
            report.gas.channels_claimed,
            report.gas.settle_txs
        ),
        (1, 2, 1)
    );
}
