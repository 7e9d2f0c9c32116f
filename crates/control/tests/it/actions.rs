//! `ClaimNow`, `SettleNow` and `RefundChannel` through gRPC move exactly the right amounts on
//! chain: claims raise each channel's claimed total to its charged total, a settle pays the
//! receiver what was claimed, a refund returns the rest of the balance to the payer.

use paychan_control::{ControlConfig, proto};
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_settle_and_refund_move_the_right_amounts() {
    let env = Env::start().await;
    let mut a = env.open_channel(51, 40_000).await;
    let mut b = env.open_channel(52, 25_000).await;
    let mut d = env.open_channel(53, 10_000).await;
    env.pay(&mut a, 1_000).await;
    env.pay(&mut a, 400).await;
    env.pay(&mut b, 999).await;
    env.pay(&mut d, 10).await;
    let served = env
        .serve(Some(env.settler()), ControlConfig::default())
        .await;
    let mut c = served.client().await;
    let receiver0 = env.balance(env.receiver()).await;
    let payer_b0 = env.balance(b.key.address()).await;

    // claim one channel by id: only it moves
    let r = c.claim(&[a.id()]).await.unwrap();
    assert!(r.clean, "{r:?}");
    assert_eq!(r.claims.len(), 1);
    assert_eq!(
        r.claims[0].claims,
        vec![proto::ChannelClaim {
            channel_id: a.hex(),
            claimed: "1400".into()
        }]
    );
    assert_eq!(env.onchain(a.id()).await, (40_000, a.charged()));
    assert_eq!(env.onchain(b.id()).await, (25_000, 0));
    assert_eq!(env.onchain(d.id()).await, (10_000, 0));
    assert_eq!(
        env.balance(env.receiver()).await,
        receiver0,
        "claims do not pay out"
    );
    // claiming it again sends nothing
    let r = c.claim(&[a.id()]).await.unwrap();
    assert!(r.claims.is_empty(), "{r:?}");
    assert_eq!(r.already_claimed, vec![a.hex()]);

    // settle: the receiver gets what was claimed
    let r = c.settle().await.unwrap();
    assert_eq!(r.settles.len(), 1, "{r:?}");
    assert_eq!(r.settles[0].amount, "1400");
    assert_eq!(env.balance(env.receiver()).await, receiver0 + 1_400);

    // cooperative close of b, never claimed: claim and refund in one transaction
    let r = c.refund(b.id()).await.unwrap();
    assert_eq!((r.refunded.as_str(), r.claimed.as_str()), ("24001", "999"));
    assert_eq!(r.unclaimable, "0");
    assert_eq!(env.onchain(b.id()).await, (999, 999));
    assert_eq!(env.balance(b.key.address()).await, payer_b0 + 24_001);
    let ch = r.channel.unwrap();
    assert_eq!((ch.balance.as_str(), ch.refundable.as_str()), ("999", "0"));
    assert_eq!(ch.unclaimed, "0");
    // the paid port no longer accepts a voucher the balance does not cover
    assert!(env.try_pay(&mut b, 1).await.is_err());
    // nothing left to refund
    let s = status(c.refund(b.id()).await);
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert_eq!(env.balance(b.key.address()).await, payer_b0 + 24_001);

    // claim everything left (d), settle: the receiver has every charge, exactly
    let r = c.claim(&[]).await.unwrap();
    assert!(r.clean, "{r:?}");
    let claimed: Vec<_> = r.claims.iter().flat_map(|t| t.claims.clone()).collect();
    assert_eq!(
        claimed,
        vec![proto::ChannelClaim {
            channel_id: d.hex(),
            claimed: "10".into()
        }]
    );
    let r = c.settle().await.unwrap();
    let settled: u128 = r
        .settles
        .iter()
        .map(|s| s.amount.parse::<u128>().unwrap())
        .sum();
    assert_eq!(settled, 999 + 10);
    assert_eq!(
        env.balance(env.receiver()).await,
        receiver0 + 1_400 + 999 + 10
    );
    assert_eq!(env.onchain(d.id()).await, (10_000, 10));
    let (claimed, settled) = env
        .reader
        .receiver_state(env.receiver(), env.offer.asset)
        .await
        .unwrap();
    assert_eq!((claimed, settled), (2_409, 2_409));

    // the stats agree
    let stats = c.stats().await.unwrap();
    let s = stats.settlement.unwrap();
    assert_eq!(s.outstanding_amount, "0");
    assert!(s.claim_txs >= 2 && s.settle_txs >= 2, "{s:?}");
    assert_eq!(stats.engine.unwrap().charged_total, "2409");
    served.stop().await;
}
