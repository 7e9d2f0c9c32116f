//! Cooperative refunds and the settler never claim the same charges twice.
//!
//! * Through the engine and paychan's facilitator (the real refund path): the refund of A claims
//!   A's charges first; the settler then claims only B; B's refund after the settler's claim
//!   refunds only.
//! * At the relayer level, what a facilitator sends (`claim_and_refund`, one `multicall`), with
//!   the claim before and after the settler's: the claim part is a no-op the second time.

use alloy::primitives::{Bytes, U256};
use paychan_chain::{Relayer, SignedRefund, TxKey};
use paychan_core::batch::{ClaimRow, ClaimVoucher, payee};
use paychan_devchain::Role;
use paychan_facilitator::Facilitator;
use paychan_settle::{SettleMode, SettlePolicy};
use paychan_store::MemStore;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_through_the_engine_and_the_facilitator_are_never_claimed_twice() {
    let env = Env::start().await;
    let facilitator = Facilitator::new(
        env.reader.clone(),
        Relayer::new(
            env.reader.clone(),
            MemStore::new(),
            TxKey::from_secret(&env.chain.account(Role::Deployer).key).unwrap(),
        ),
        Some(env.authorizer()),
    )
    .unwrap();
    let engine = env.engine_with(facilitator);
    let (da, db) = (40_000u128, 30_000u128);
    let mut a = env.open_channel(53, da).await;
    let mut b = env.open_channel(54, db).await;
    let settler = env.settler(
        &engine,
        env.relayer(env.reader.clone(), engine.store().clone()),
        SettlePolicy {
            settle: SettleMode::AfterClaims,
            ..policy()
        },
        true,
    );
    let receiver_before = env.balance(env.receiver()).await;
    let (stop, running) = run(&settler);
    for x in [1_000, 250] {
        env.pay(&engine, &mut a, x).await;
        env.pay(&engine, &mut b, x).await;
    }
    // A's refund: the facilitator claims A's 1,250 and refunds the rest in one transaction
    assert_eq!(env.refund(&engine, &mut a).await, da - 1_250);
    assert_eq!(env.claimed(a.id()).await, 1_250);
    // the settler claims B only
    let r = settler.claim_now().await.unwrap();
    assert_eq!(r.claims.len(), 1, "{r:?}");
    assert_eq!(r.claims[0].claims, vec![(b.id(), 1_250)]);
    // B's refund after the settler's claim: nothing left to claim, the rest refunded
    assert_eq!(env.refund(&engine, &mut b).await, db - 1_250);
    assert!(settler.claim_now().await.unwrap().claims.is_empty());
    stop.send(()).unwrap();
    let report = running.await.unwrap();

    assert_eq!(
        env.reader
            .receiver_state(env.receiver(), env.token())
            .await
            .unwrap(),
        (2_500, 2_500)
    );
    assert_eq!(env.balance(env.receiver()).await - receiver_before, 2_500);
    for (p, d) in [(&a, da), (&b, db)] {
        let st = env.chain.onchain_state(p.id()).await.unwrap();
        assert_eq!((st.balance, st.total_claimed), (1_250, 1_250));
        assert_eq!(env.balance(p.key.address()).await, d - 1_250);
        let rec = engine.channel(p.id()).await.unwrap().unwrap();
        assert_eq!((rec.charged, rec.onchain.total_claimed), (1_250, 1_250));
    }
    assert_eq!(report.outstanding, (0, 0));
    assert_eq!(
        (
            report.gas.claim_txs,
            report.gas.channels_claimed,
            report.gas.paid_requests
        ),
        (1, 1, 4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_facilitator_claim_and_refund_and_the_settler_never_claim_twice() {
    let env = Env::start().await;
    let engine = env.engine();
    let (da, db) = (100_000u128, 50_000u128);
    let mut a = env.open_channel(51, da).await;
    let mut b = env.open_channel(52, db).await;
    for x in [1_000, 1_000, 500] {
        env.pay(&engine, &mut a, x).await;
    }
    for _ in 0..3 {
        env.pay(&engine, &mut b, 1_000).await;
    }
    let settler = env.settler(
        &engine,
        env.relayer(env.reader.clone(), engine.store().clone()),
        policy(),
        false,
    );
    let facilitator = Relayer::new(
        env.reader.clone(),
        MemStore::new(),
        TxKey::from_secret(&env.chain.account(Role::Deployer).key).unwrap(),
    );
    let receiver_before = env.balance(env.receiver()).await;

    // A: the refund path claims first, then refunds the rest.
    let (rows, claim_sig) = claim_of(&env, &engine, a.id()).await;
    let refund = signed_refund(&env, &a, da - a.charged());
    facilitator
        .claim_and_refund(rows, claim_sig, refund)
        .await
        .unwrap();
    assert_eq!(env.claimed(a.id()).await, 2_500);
    assert_eq!(env.balance(a.key.address()).await, da - 2_500);

    // The settler claims B only: A is already claimed on chain.
    let r = settler.claim_now().await.unwrap();
    assert_eq!(r.claims.len(), 1, "{r:?}");
    assert_eq!(r.claims[0].claims, vec![(b.id(), 3_000)]);
    assert_eq!(r.already_claimed, vec![a.id()]);

    // B: the refund path runs after the settler's claim, with the claim it would send.
    let (rows, claim_sig) = claim_of(&env, &engine, b.id()).await;
    let refund = signed_refund(&env, &b, db - b.charged());
    facilitator
        .claim_and_refund(rows, claim_sig, refund)
        .await
        .unwrap();
    assert_eq!(env.claimed(b.id()).await, 3_000);
    assert_eq!(env.balance(b.key.address()).await, db - 3_000);

    // Nothing left to claim; one settle sweeps exactly what was charged.
    let r = settler.claim_now().await.unwrap();
    assert!(r.claims.is_empty(), "{r:?}");
    let s = settler.settle_now().await.unwrap();
    assert_eq!(s.settles.len(), 1);
    assert_eq!(s.settles[0].amount, 5_500);
    assert_eq!(
        env.reader
            .receiver_state(env.receiver(), env.token())
            .await
            .unwrap(),
        (5_500, 5_500),
        "each channel's charges counted once in the receiver's claimed total"
    );
    assert_eq!(env.balance(env.receiver()).await - receiver_before, 5_500);
    for (p, d) in [(&a, da), (&b, db)] {
        let st = env.chain.onchain_state(p.id()).await.unwrap();
        assert_eq!((st.balance, st.total_claimed), (p.charged(), p.charged()));
        assert_eq!(env.balance(p.key.address()).await, d - p.charged());
    }
    let gas = settler.gas_report();
    assert_eq!(
        (gas.claim_txs, gas.settle_txs, gas.channels_claimed),
        (1, 1, 1)
    );
}

/// The claim a refund makes first: the engine's latest voucher up to the charged total, signed
/// by the receiver authorizer (what `payee::complete_refund` produces).
async fn claim_of(
    env: &Env,
    engine: &TestEngine,
    id: alloy::primitives::B256,
) -> (Vec<ClaimRow>, Bytes) {
    let rec = engine.channel(id).await.unwrap().unwrap();
    let row = ClaimRow {
        voucher: ClaimVoucher {
            channel: rec.config,
            max_claimable_amount: rec.signed_max_claimable,
        },
        signature: Bytes::copy_from_slice(&rec.signature.unwrap().to_bytes()),
        total_claimed: rec.charged,
    };
    let p = payee::claim_payload(&env.domain, vec![row], Some(&env.authorizer())).unwrap();
    (p.claims, p.claim_authorizer_signature.unwrap())
}

fn signed_refund(env: &Env, p: &Payer, amount: u128) -> SignedRefund {
    let nonce = U256::ZERO;
    let sig = env
        .authorizer()
        .sign_digest(&env.domain.refund_digest(p.id(), nonce, amount))
        .unwrap();
    SignedRefund {
        config: p.pc.config,
        amount,
        nonce,
        signature: Bytes::copy_from_slice(&sig.to_bytes()),
    }
}
