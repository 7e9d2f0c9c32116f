//! Graceful shutdown claims and settles everything outstanding, including charges committed
//! before a restart (found by the start-up store scan, not by events).

use paychan_settle::Trigger;
use paychan_store::Store;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_claims_and_settles_everything() {
    let env = Env::start().await;
    let mut ch = env.open_channels(91, 4, 20_000).await;
    {
        // before the restart: two channels charged, no settler running
        let engine = env.engine();
        env.pay(&engine, &mut ch[0], 1_000).await;
        env.pay(&engine, &mut ch[1], 700).await;
    }
    // restart: reopen the store
    let engine = env.engine();
    let settler = env.settler(
        &engine,
        env.relayer(env.reader.clone(), engine.store().clone()),
        policy(),
        true,
    );
    let receiver_before = env.balance(env.receiver()).await;
    let (stop, running) = run(&settler);
    env.pay(&engine, &mut ch[0], 300).await;
    env.pay(&engine, &mut ch[2], 1_000).await;
    env.pay(&engine, &mut ch[3], 5).await;
    for p in &ch {
        assert_eq!(
            env.claimed(p.id()).await,
            0,
            "nothing claimed while running"
        );
    }
    stop.send(()).unwrap();
    let report = running.await.unwrap();
    let last = report.last_round.unwrap();
    assert_eq!(last.trigger, Trigger::Shutdown);
    assert!(last.is_clean(), "{last:?}");
    assert_eq!(last.claims.len(), 1, "one transaction");
    assert_eq!(last.channels_claimed(), 4);
    assert_eq!(last.settles.len(), 1);
    let total: u128 = ch.iter().map(Payer::charged).sum();
    assert_eq!(total, 3_005);
    assert_eq!(last.settles[0].amount, total);
    for p in &ch {
        assert_eq!(env.claimed(p.id()).await, p.charged());
        let rec = engine.channel(p.id()).await.unwrap().unwrap();
        assert_eq!(
            rec.onchain.total_claimed,
            p.charged(),
            "mirrored into the engine"
        );
    }
    assert_eq!(env.balance(env.receiver()).await - receiver_before, total);
    let agg = engine
        .store()
        .aggregate(env.receiver(), env.token())
        .await
        .unwrap();
    assert_eq!(
        (agg.charged, agg.claimed, agg.settled),
        (total, total, total)
    );
    assert_eq!(report.outstanding, (0, 0));
    let gas = report.gas;
    assert_eq!(
        (gas.claim_txs, gas.settle_txs, gas.paid_requests),
        (1, 1, 3)
    );
    println!("shutdown: {gas:?}");
}
