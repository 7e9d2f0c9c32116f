//! Many channels: fifty channels' first claims cut into transactions of at most 20 rows, then
//! their next claims in one transaction of 50 rows; one settle.

use paychan_settle::SettlePolicy;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_channels_are_claimed_in_one_transaction() {
    let env = Env::start().await;
    let engine = env.engine();
    let mut payers = env.open_channels(61, 50, 10_000).await;
    for (i, p) in payers.iter_mut().enumerate() {
        env.pay(&engine, p, 100 + i as u128).await;
    }
    let relayer = env.relayer(env.reader.clone(), engine.store().clone());
    let receiver_before = env.balance(env.receiver()).await;

    // at most 20 rows per transaction: 20 + 20 + 10
    let capped = env.settler(
        &engine,
        relayer.clone(),
        SettlePolicy {
            max_rows_per_tx: 20,
            ..policy()
        },
        false,
    );
    let r = capped.claim_now().await.unwrap();
    assert!(r.is_clean(), "{r:?}");
    let sizes: Vec<usize> = r.claims.iter().map(|c| c.claims.len()).collect();
    assert_eq!(sizes, vec![20, 20, 10]);
    for p in &payers {
        assert_eq!(env.claimed(p.id()).await, p.charged());
    }

    // the next charges: all fifty in one transaction (the default bound is 169 rows)
    let settler = env.settler(&engine, relayer, policy(), false);
    for p in payers.iter_mut() {
        env.pay(&engine, p, 1_000).await;
    }
    let r = settler.claim_now().await.unwrap();
    assert_eq!(r.claims.len(), 1, "{r:?}");
    assert_eq!(r.channels_claimed(), 50);
    let s = settler.settle_now().await.unwrap();
    assert_eq!(s.settles.len(), 1);

    let total: u128 = payers.iter().map(Payer::charged).sum();
    assert_eq!(total, 50 * 100 + (0..50).sum::<u128>() + 50 * 1_000);
    for p in &payers {
        assert_eq!(env.claimed(p.id()).await, p.charged());
    }
    assert_eq!(s.settles[0].amount, total);
    assert_eq!(env.balance(env.receiver()).await - receiver_before, total);
    let first = capped.gas_report();
    let next = settler.gas_report();
    println!(
        "50 channels: first claims in 3 txs {} gas; next claims in 1 tx {} gas ({} a channel); settle {} gas",
        first.gas_claims,
        next.gas_claims,
        next.gas_claims / 50,
        next.gas_settles
    );
    assert_eq!(
        (next.claim_txs, next.channels_claimed, next.paid_requests),
        (1, 50, 50)
    );
}
