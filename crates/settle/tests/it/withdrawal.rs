//! The withdrawal race: a payer with charged vouchers starts a timed withdrawal; the settler
//! claims everything charged before the delay ends (including a request charged close to the
//! deadline), the payer finalizes and gets exactly `deposit − charged`, the receiver exactly
//! `charged`.

use std::time::Duration;

use paychan_chain::PayerClient;
use paychan_devchain::ESCROW;
use paychan_settle::{SettleMode, SettlePolicy};
use paychan_store::Store;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_withdrawal_is_claimed_before_its_deadline() {
    let env = Env::start().await;
    let engine = env.engine();
    let deposit = 100_000;
    let mut p = env.open_channel(11, deposit).await;
    let id = p.id();
    // no interval, no threshold: only the withdrawal guard claims
    let settler = env.settler(
        &engine,
        env.relayer(env.reader.clone(), engine.store().clone()),
        SettlePolicy {
            settle: SettleMode::AfterClaims,
            withdrawal_margin: Duration::from_secs(120),
            ..policy()
        },
        true,
    );
    let receiver_before = env.balance(env.receiver()).await;
    for actual in [1_000, 700, 1_000] {
        env.pay(&engine, &mut p, actual).await;
    }
    let (stop, running) = run(&settler);
    // the follower has its cursor (so it sees what happens from now on)
    eventually("the watcher's cursor", 10, || async {
        engine.store().meta("watcher.cursor").await.unwrap()
    })
    .await;
    assert_eq!(
        env.claimed(id).await,
        0,
        "nothing claims before the withdrawal"
    );

    // The payer (its own key, ETH from a dev account) starts a timed withdrawal of everything.
    env.fund_eth(p.key.address()).await;
    let payer = PayerClient::new(env.reader.clone(), p.key.clone());
    payer
        .initiate_withdraw(&p.pc.config, deposit)
        .await
        .unwrap();
    eventually("the charges to be claimed", 20, || async {
        (env.claimed(id).await == 2_700).then_some(())
    })
    .await;
    let rec = eventually("the claim to be mirrored into the engine", 10, || async {
        engine
            .channel(id)
            .await
            .unwrap()
            .filter(|r| r.onchain.total_claimed == 2_700)
    })
    .await;
    assert_ne!(rec.onchain.withdraw_requested_at, 0);

    // Close to the deadline (900 s): a request is still served and claimed at once.
    env.chain.increase_time(840).await.unwrap();
    env.pay(&engine, &mut p, 300).await;
    eventually("the late charge to be claimed", 20, || async {
        (env.claimed(id).await == 3_000).then_some(())
    })
    .await;

    // Past the delay: the payer takes back exactly what was not charged.
    env.chain.increase_time(120).await.unwrap();
    let payer_before = env.balance(p.key.address()).await;
    payer.finalize_withdraw(&p.pc.config).await.unwrap();
    assert_eq!(p.charged(), 3_000);
    assert_eq!(
        env.balance(p.key.address()).await - payer_before,
        deposit - p.charged()
    );

    stop.send(()).unwrap();
    let report = running.await.unwrap();
    // settled after each claim round: the receiver has exactly what was charged
    assert_eq!(
        env.balance(env.receiver()).await - receiver_before,
        p.charged()
    );
    assert_eq!(env.balance(ESCROW).await, 0);
    let s = env.chain.onchain_state(id).await.unwrap();
    assert_eq!((s.balance, s.total_claimed), (3_000, 3_000));
    assert_eq!(report.outstanding, (0, 0));
    let gas = report.gas;
    assert_eq!(gas.claim_txs, 2);
    assert!(gas.settle_txs >= 1);
    assert_eq!(gas.paid_requests, 4);
    println!("withdrawal race: {gas:?}");
}
