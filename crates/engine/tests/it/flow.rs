//! The paid-request flow through the engine.

use std::time::Duration;

use paychan_core::{
    ErrorCode,
    batch::{BatchRequirements, payer::PayerChannel},
};
use paychan_engine::{Begin, EngineEvent, charged_amount};
use paychan_store::Store;

use crate::support::*;

fn serve(b: Begin) -> Box<paychan_engine::Ticket> {
    match b {
        Begin::Serve(t) => t,
        Begin::Done(_) => panic!("expected a reservation"),
    }
}

#[tokio::test]
async fn vouchers_are_charged_durably_and_survive_a_restart() {
    let h = Harness::new().await;
    let (payer, mut pc) = h.funded_channel(1, 100_000).await;
    let engine = h.engine();
    let mut events = engine.subscribe();
    // dynamic prices: 1000, 400, 0 (free), 1000
    for actual in [1_000u128, 400, 0, 1_000] {
        let p = h.voucher(&mut pc, &payer);
        let t = serve(engine.begin(&p, &h.offer).await.unwrap());
        assert_eq!(t.max_charge(), PRICE);
        let resp = engine.commit(t, actual).await.unwrap();
        assert_eq!(charged_amount(&resp), Some(actual));
        assert_eq!(pc.apply_response(&resp, PRICE, None).unwrap(), actual);
    }
    assert_eq!(pc.charged, 2_400);
    let charged: Vec<u128> = std::iter::from_fn(|| events.try_recv().ok())
        .filter_map(|e| match e {
            EngineEvent::Charged { amount, .. } => Some(amount),
            _ => None,
        })
        .collect();
    assert_eq!(charged, vec![1_000, 400, 1_000]);
    assert_eq!(
        engine
            .store()
            .aggregate(h.offer.pay_to, h.offer.asset)
            .await
            .unwrap()
            .charged,
        2_400
    );
    drop(engine);

    // restart: reopen the store and carry on
    let engine = h.engine();
    let rec = engine.channel(pc.channel_id).await.unwrap().unwrap();
    assert_eq!(rec.charged, 2_400);
    let p = h.voucher(&mut pc, &payer);
    let t = serve(engine.begin(&p, &h.offer).await.unwrap());
    let resp = engine.commit(t, 10).await.unwrap();
    assert_eq!(pc.apply_response(&resp, PRICE, None).unwrap(), 10);
    assert_eq!(
        engine
            .channel(pc.channel_id)
            .await
            .unwrap()
            .unwrap()
            .charged,
        2_410
    );
}

#[tokio::test]
async fn an_aborted_request_changes_nothing_and_the_voucher_can_be_retried() {
    let h = Harness::new().await;
    let (payer, mut pc) = h.funded_channel(2, 100_000).await;
    let engine = h.engine();
    let p = h.voucher(&mut pc, &payer);
    let t = serve(engine.begin(&p, &h.offer).await.unwrap());
    engine.abort(t);
    assert!(
        engine
            .store()
            .channel(pc.channel_id)
            .await
            .unwrap()
            .is_none()
    );
    let t = serve(engine.begin(&p, &h.offer).await.unwrap());
    let resp = engine.commit(t, PRICE).await.unwrap();
    pc.apply_response(&resp, PRICE, None).unwrap();
    // the same voucher cannot pay twice
    let err = engine.begin(&p, &h.offer).await.unwrap_err();
    assert_eq!(err.rejection.code, ErrorCode::CumulativeAmountMismatch);
}

#[tokio::test]
async fn a_payer_that_lost_its_state_recovers_through_a_corrective_402() {
    let h = Harness::new().await;
    let (payer, mut pc) = h.funded_channel(3, 100_000).await;
    let engine = h.engine();
    for _ in 0..3 {
        let p = h.voucher(&mut pc, &payer);
        let t = serve(engine.begin(&p, &h.offer).await.unwrap());
        pc.apply_response(&engine.commit(t, PRICE).await.unwrap(), PRICE, None)
            .unwrap();
    }
    // the payer forgets everything and starts from chain (nothing claimed yet)
    let mut fresh = PayerChannel::from_chain(&h.domain, pc.config, 100_000, 0);
    let d = engine
        .begin(&h.voucher(&mut fresh, &payer), &h.offer)
        .await
        .unwrap_err();
    assert_eq!(d.rejection.code, ErrorCode::CumulativeAmountMismatch);
    let corrective = BatchRequirements::from_generic(&d.requirements.unwrap()).unwrap();
    assert_eq!(
        corrective
            .extra
            .channel_state
            .as_ref()
            .unwrap()
            .charged_cumulative_amount,
        Some(3_000)
    );
    fresh
        .apply_corrective(&h.domain, &corrective.extra, payer.address(), 100_000, 0)
        .unwrap();
    assert_eq!(fresh.charged, 3_000);
    let t = serve(
        engine
            .begin(&h.voucher(&mut fresh, &payer), &h.offer)
            .await
            .unwrap(),
    );
    fresh
        .apply_response(&engine.commit(t, PRICE).await.unwrap(), PRICE, None)
        .unwrap();
    assert_eq!(fresh.charged, 4_000);
}

#[tokio::test]
async fn a_busy_channel_answers_busy_or_waits_a_bounded_time() {
    let h = Harness::new().await;
    let (payer, mut pc) = h.funded_channel(4, 100_000).await;
    let engine = h.engine();
    let first = h.voucher(&mut pc, &payer);
    let t = serve(engine.begin(&first, &h.offer).await.unwrap());
    let d = engine.begin(&first, &h.offer).await.unwrap_err();
    assert_eq!(d.rejection.code, ErrorCode::ChannelBusy);
    assert_eq!(
        engine
            .metrics()
            .busy
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop(t);
    drop(engine); // one engine per store directory

    // waiting: the second request gets the channel once the first commits, and its (now stale)
    // voucher is answered with a corrective 402 rather than served twice
    let engine = h.engine_with(|c| c.busy_wait = Duration::from_secs(5));
    let t = serve(engine.begin(&first, &h.offer).await.unwrap());
    let e2 = engine.clone();
    let (f2, o2) = (first.clone(), h.offer.clone());
    let waiter = tokio::spawn(async move { e2.begin(&f2, &o2).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !waiter.is_finished(),
        "second request should be waiting for the channel"
    );
    engine.commit(t, PRICE).await.unwrap();
    let d = waiter.await.unwrap().unwrap_err();
    assert_eq!(d.rejection.code, ErrorCode::CumulativeAmountMismatch);
}

#[tokio::test]
async fn refusals_carry_the_spec_codes() {
    let h = Harness::new().await;
    let (payer, mut pc) = h.funded_channel(5, 2_500).await;
    let engine = h.engine();
    // overdrawn: the third voucher exceeds the 2,500 balance
    for _ in 0..2 {
        let t = serve(
            engine
                .begin(&h.voucher(&mut pc, &payer), &h.offer)
                .await
                .unwrap(),
        );
        pc.apply_response(&engine.commit(t, PRICE).await.unwrap(), PRICE, None)
            .unwrap();
    }
    let d = engine
        .begin(&h.voucher(&mut pc, &payer), &h.offer)
        .await
        .unwrap_err();
    assert_eq!(d.rejection.code, ErrorCode::CumulativeExceedsBalance);
    // wrong signer
    let stranger = h.chain.funded_payer(99, 0).await.unwrap();
    let mut forged = PayerChannel {
        last_voucher: None,
        ..pc.clone()
    };
    let d = engine
        .begin(&h.voucher(&mut forged, &stranger), &h.offer)
        .await
        .unwrap_err();
    assert_eq!(d.rejection.code, ErrorCode::VoucherSignature);
    // a voucher for another offer (different price) does not match this route
    let mut other = h.offer.clone();
    other.amount = 5;
    let mut p = h.voucher(&mut pc, &payer);
    p.accepted = other.to_generic();
    assert_eq!(
        engine.begin(&p, &h.offer).await.unwrap_err().rejection.code,
        ErrorCode::InvalidPaymentRequirements
    );
    // a tampered config no longer hashes to the channel id
    let mut p = h.voucher(&mut pc, &payer);
    if let paychan_core::batch::BatchPayload::Voucher(v) = &mut p.payload {
        v.channel_config.withdraw_delay = 901;
    }
    assert_eq!(
        engine.begin(&p, &h.offer).await.unwrap_err().rejection.code,
        ErrorCode::ChannelIdMismatch
    );
    let rejections = engine.metrics().rejections();
    assert_eq!(
        rejections.get(ErrorCode::VoucherSignature.as_str()),
        Some(&1)
    );
}

#[tokio::test]
async fn stale_chain_state_is_refreshed_and_a_withdrawal_raises_needs_claim() {
    let h = Harness::new().await;
    let (payer, mut pc) = h.funded_channel(6, 100_000).await;
    let engine = h.engine();
    let mut events = engine.subscribe();
    let t = serve(
        engine
            .begin(&h.voucher(&mut pc, &payer), &h.offer)
            .await
            .unwrap(),
    );
    pc.apply_response(&engine.commit(t, PRICE).await.unwrap(), PRICE, None)
        .unwrap();
    let reads_before = engine
        .metrics()
        .chain_reads
        .load(std::sync::atomic::Ordering::Relaxed);

    // the payer starts a timed withdrawal on chain
    let escrow = paychan_bindings::BatchSettlement::new(
        paychan_devchain::ESCROW,
        alloy::providers::ProviderBuilder::new()
            .wallet(
                alloy::signers::local::PrivateKeySigner::from_bytes(
                    &paychan_devchain::accounts::account(paychan_devchain::Role::Deployer).key,
                )
                .unwrap(),
            )
            .connect_http(h.chain.rpc_url().parse().unwrap()),
    );
    // the payer key holds no ETH: fund it for this one transaction
    let payer_wallet =
        alloy::signers::local::PrivateKeySigner::from_bytes(&payer_secret(6)).unwrap();
    use alloy::providers::Provider;
    let tx = alloy::rpc::types::TransactionRequest::default()
        .to(payer.address())
        .value(alloy::primitives::U256::from(10u64).pow(alloy::primitives::U256::from(18)));
    h.chain
        .provider()
        .send_transaction(tx)
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let escrow_as_payer = paychan_bindings::BatchSettlement::new(
        paychan_devchain::ESCROW,
        alloy::providers::ProviderBuilder::new()
            .wallet(payer_wallet)
            .connect_http(h.chain.rpc_url().parse().unwrap()),
    );
    escrow_as_payer
        .initiateWithdraw((&pc.config).into(), 50_000)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let _ = escrow;

    // within the freshness bound the engine does not re-read
    let t = serve(
        engine
            .begin(&h.voucher(&mut pc, &payer), &h.offer)
            .await
            .unwrap(),
    );
    pc.apply_response(&engine.commit(t, PRICE).await.unwrap(), PRICE, None)
        .unwrap();
    assert_eq!(
        engine
            .metrics()
            .chain_reads
            .load(std::sync::atomic::Ordering::Relaxed),
        reads_before
    );
    // past it, it does, sees the withdrawal, and asks for a claim
    h.clock.advance(31_000);
    let t = serve(
        engine
            .begin(&h.voucher(&mut pc, &payer), &h.offer)
            .await
            .unwrap(),
    );
    pc.apply_response(&engine.commit(t, PRICE).await.unwrap(), PRICE, None)
        .unwrap();
    assert_eq!(
        engine
            .metrics()
            .chain_reads
            .load(std::sync::atomic::Ordering::Relaxed),
        reads_before + 1
    );
    let needs = std::iter::from_fn(|| events.try_recv().ok()).find_map(|e| match e {
        EngineEvent::NeedsClaim {
            unclaimed,
            deadline,
            ..
        } => Some((unclaimed, deadline)),
        _ => None,
    });
    let (unclaimed, deadline) = needs.expect("NeedsClaim event");
    assert_eq!(unclaimed, 3_000);
    assert!(deadline > 0);
    // five minutes before the payer can finalize, the channel takes no new charges
    h.clock.0.store(
        deadline * 1000 - 5 * 60 * 1000,
        std::sync::atomic::Ordering::SeqCst,
    );
    let d = engine
        .begin(&h.voucher(&mut pc, &payer), &h.offer)
        .await
        .unwrap_err();
    assert_eq!(d.rejection.code, ErrorCode::WithdrawalPending);
}

fn payer_secret(seed: u64) -> alloy_primitives::B256 {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(b"paychan!");
    secret[24..].copy_from_slice(&seed.to_be_bytes());
    alloy_primitives::B256::from(secret)
}
