//! The threshold and interval policies, with the settler running.

use std::time::Duration;

use paychan_settle::{SettleMode, SettlePolicy};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_threshold_claims_a_channel_when_its_unclaimed_charges_reach_it() {
    let env = Env::start().await;
    let engine = env.engine();
    let mut ch = env.open_channels(71, 2, 20_000).await;
    let settler = env.settler(
        &engine,
        env.relayer(env.reader.clone(), engine.store().clone()),
        SettlePolicy {
            threshold: Some(3_000),
            settle: SettleMode::AfterClaims,
            ..policy()
        },
        false,
    );
    let receiver_before = env.balance(env.receiver()).await;
    let (stop, running) = run(&settler);
    for p in ch.iter_mut() {
        env.pay(&engine, p, 1_000).await;
        env.pay(&engine, p, 1_000).await;
    }
    // A reaches the threshold; B (charged before A's third request) stays below it
    env.pay(&engine, &mut ch[0], 1_000).await;
    eventually("A to be claimed", 20, || async {
        (env.claimed(ch[0].id()).await == 3_000).then_some(())
    })
    .await;
    assert_eq!(env.claimed(ch[1].id()).await, 0, "B is below the threshold");
    env.pay(&engine, &mut ch[1], 999).await;
    assert_eq!(ch[1].charged(), 2_999);
    env.pay(&engine, &mut ch[1], 1).await;
    eventually("B to be claimed", 20, || async {
        (env.claimed(ch[1].id()).await == 3_000).then_some(())
    })
    .await;
    stop.send(()).unwrap();
    let report = running.await.unwrap();
    assert_eq!(env.balance(env.receiver()).await - receiver_before, 6_000);
    let gas = report.gas;
    assert_eq!(
        (gas.claim_txs, gas.channels_claimed, gas.paid_requests),
        (2, 2, 7)
    );
    assert!(gas.settle_txs >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interval_claims_every_channel_with_charges_in_one_transaction() {
    let env = Env::start().await;
    let engine = env.engine();
    let mut ch = env.open_channels(81, 3, 20_000).await;
    let settler = env.settler(
        &engine,
        env.relayer(env.reader.clone(), engine.store().clone()),
        SettlePolicy {
            interval: Some(Duration::from_millis(1_500)),
            settle: SettleMode::Every(Duration::from_millis(3_000)),
            ..policy()
        },
        false,
    );
    let receiver_before = env.balance(env.receiver()).await;
    for p in ch.iter_mut() {
        env.pay(&engine, p, 400).await;
    }
    let (stop, running) = run(&settler);
    eventually("the first interval", 20, || async {
        let mut all = true;
        for p in &ch {
            all &= env.claimed(p.id()).await == 400;
        }
        all.then_some(())
    })
    .await;
    eventually("the claim to be recorded", 10, || async {
        (settler.gas_report().channels_claimed == 3).then_some(())
    })
    .await;
    assert_eq!(
        settler.gas_report().claim_txs,
        1,
        "one transaction for the three"
    );
    for p in ch.iter_mut().take(2) {
        env.pay(&engine, p, 600).await;
    }
    eventually("the second interval", 20, || async {
        (env.claimed(ch[0].id()).await == 1_000 && env.claimed(ch[1].id()).await == 1_000)
            .then_some(())
    })
    .await;
    eventually("the second claim to be recorded", 10, || async {
        (settler.gas_report().channels_claimed == 5).then_some(())
    })
    .await;
    eventually("the second claim to be recorded", 10, || async {
        (settler.gas_report().channels_claimed == 5).then_some(())
    })
    .await;
    assert_eq!(settler.gas_report().claim_txs, 2);
    // the settle interval sweeps it
    eventually("the settle interval", 20, || async {
        let s = env
            .reader
            .receiver_state(env.receiver(), env.token())
            .await
            .unwrap();
        (s == (2_400, 2_400)).then_some(())
    })
    .await;
    stop.send(()).unwrap();
    let report = running.await.unwrap();
    assert_eq!(env.balance(env.receiver()).await - receiver_before, 2_400);
    assert_eq!(env.claimed(ch[2].id()).await, 400);
    assert_eq!((report.gas.claim_txs, report.gas.channels_claimed), (2, 5));
}
