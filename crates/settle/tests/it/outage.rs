//! A dead RPC node in the middle of a settlement: the settler reaches the chain through a TCP
//! proxy that dies right after forwarding the claim (its answer lost) and stays dead longer than
//! `confirm_timeout`, then dies again right before forwarding the settle. Rounds fail and are
//! retried; once the node is back the open journal entries are finished (the same signed
//! transactions, not new ones), and nothing is claimed or settled twice.

use std::time::Duration;

use alloy::{hex, sol_types::SolCall};
use paychan_bindings::BatchSettlement;
use paychan_chain::{ChainConfig, ChainReader};
use paychan_devchain::ESCROW;
use paychan_settle::{SettleMode, SettlePolicy};
use paychan_store::Store;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_rpc_node_delays_settlement_but_nothing_moves_twice() {
    let env = Env::start().await;
    let engine = env.engine();
    let mut payers = env.open_channels(21, 3, 50_000).await;
    for (i, p) in payers.iter_mut().enumerate() {
        env.pay(&engine, p, 1_000).await;
        env.pay(&engine, p, 100 * (i as u128 + 1)).await;
    }
    let total: u128 = payers.iter().map(Payer::charged).sum();
    assert_eq!(total, 3_600);

    let proxy = RpcProxy::start(env.chain.rpc_url()).await.unwrap();
    let reader = ChainReader::connect(ChainConfig {
        confirm_timeout: Some(Duration::from_secs(2)),
        ..fast(&proxy.url())
    })
    .await
    .unwrap();
    let relayer = env.relayer(reader, engine.store().clone());
    let me = relayer.address();
    let settler = env.settler(
        &engine,
        relayer,
        SettlePolicy {
            interval: Some(Duration::from_millis(400)),
            settle: SettleMode::AfterClaims,
            ..policy()
        },
        false,
    );
    let n0 = env.nonce(me).await;
    let receiver_before = env.balance(env.receiver()).await;

    // 1. The node receives the claim, then the proxy dies before the answer comes back, and
    //    stays dead longer than confirm_timeout: the round gives up, later rounds fail.
    proxy.trip_on(&["eth_sendRawTransaction"], true);
    let (stop, running) = run(&settler);
    eventually("the proxy to die on the claim", 20, || async {
        proxy.tripped().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let claimed: Vec<u128> = futures_claimed(&env, &payers).await;
    assert_eq!(claimed, vec![1_100, 1_200, 1_300], "the claim was mined");

    // 2. Back, until the settle is sent: it never reaches the node.
    let settle = hex::encode(BatchSettlement::settleCall::SELECTOR);
    proxy.trip_on(&["eth_sendRawTransaction", &settle], false);
    proxy.revive().unwrap();
    eventually("the proxy to die on the settle", 20, || async {
        proxy.tripped().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.reader
            .receiver_state(env.receiver(), env.token())
            .await
            .unwrap(),
        (total, 0),
        "claimed once, not settled yet"
    );
    proxy.revive().unwrap();
    eventually("the settle", 30, || async {
        let s = env
            .reader
            .receiver_state(env.receiver(), env.token())
            .await
            .unwrap();
        (s == (total, total)).then_some(())
    })
    .await;
    // the journal closes the settle too (the round that re-broadcast it sees it confirmed)
    eventually("the journal to close", 20, || async {
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
    // Exactly once: one claim and one settle transaction, and the money moved once.
    assert_eq!(env.nonce(me).await, n0 + 2);
    assert_eq!(
        futures_claimed(&env, &payers).await,
        vec![1_100, 1_200, 1_300]
    );
    assert_eq!(env.balance(env.receiver()).await - receiver_before, total);
    assert_eq!(env.balance(ESCROW).await, 3 * 50_000 - total);
    assert_eq!(report.outstanding, (0, 0));
    assert_eq!((report.gas.claim_txs, report.gas.settle_txs), (1, 1));
    assert_eq!(report.gas.channels_claimed, 3);
    let last = report.last_round.unwrap();
    assert!(
        last.claims.is_empty() && last.settles.is_empty() && last.is_clean(),
        "{last:?}"
    );
    println!("dead RPC node: {:?}", report.gas);
}

async fn futures_claimed(env: &Env, payers: &[Payer]) -> Vec<u128> {
    let mut out = Vec::new();
    for p in payers {
        out.push(env.claimed(p.id()).await);
    }
    out
}
