//! The engine under hostile or unlucky traffic: callers that go away mid-commit, floods of
//! vouchers for channels that do not exist, and payers who would make the relayer pay gas for
//! dust.

use std::sync::atomic::Ordering::Relaxed;

use alloy_primitives::{B256, U256, keccak256};
use paychan_core::{
    ErrorCode,
    batch::{BatchPayload, BatchRequirements, payer::PayerChannel},
};
use paychan_engine::{Begin, Decline, RateLimit, Ticket};
use paychan_store::Store;

use crate::support::*;

fn serve(b: Begin) -> Box<Ticket> {
    match b {
        Begin::Serve(t) => t,
        Begin::Done(_) => panic!("expected a reservation"),
    }
}

fn done(b: Begin) -> paychan_core::x402::SettlementResponse {
    match b {
        Begin::Done(r) => r,
        Begin::Serve(_) => panic!("expected a completed payment operation"),
    }
}

fn corrective_charged(d: &Decline) -> Option<u128> {
    assert_eq!(
        d.rejection.code,
        ErrorCode::CumulativeAmountMismatch,
        "{d:?}"
    );
    let req = BatchRequirements::from_generic(d.requirements.as_ref()?).ok()?;
    req.extra.channel_state?.charged_cumulative_amount
}

#[tokio::test]
async fn a_commit_whose_caller_goes_away_lands_in_memory_and_on_disk_alike() {
    let h = Harness::new().await;
    let (payer, mut pc) = h.funded_channel(20, 100_000).await;
    let engine = h.engine();
    let t = serve(
        engine
            .begin(&h.voucher(&mut pc, &payer), &h.offer)
            .await
            .unwrap(),
    );
    pc.apply_response(&engine.commit(t, PRICE).await.unwrap(), PRICE, None)
        .unwrap();

    // the second request's commit is dropped while it waits for the disk (the client hung up)
    let p = h.voucher(&mut pc, &payer);
    let t = serve(engine.begin(&p, &h.offer).await.unwrap());
    let finished = tokio::select! {
        biased;
        r = engine.commit(t, PRICE) => Some(r),
        () = std::future::ready(()) => None,
    };
    assert!(
        finished.is_none(),
        "the commit should still have been waiting for its write"
    );

    // memory, the store and a reopened store agree: the charge landed
    let in_memory = engine.channel(pc.channel_id).await.unwrap().unwrap();
    assert_eq!(in_memory.charged, 2 * PRICE);
    // the client never saw the answer and sends the same voucher again: it is judged against
    // that record (a corrective 402), never served twice
    let d = engine.begin(&p, &h.offer).await.unwrap_err();
    assert_eq!(corrective_charged(&d), Some(2 * PRICE));
    drop(engine);
    let store = h.open_store();
    assert_eq!(
        store.channel(pc.channel_id).await.unwrap().as_ref(),
        Some(&in_memory)
    );
    drop(store);
    let engine = h.engine();
    let d = engine.begin(&p, &h.offer).await.unwrap_err();
    assert_eq!(corrective_charged(&d), Some(2 * PRICE));
    // the client adopts the correction and carries on
    pc.charged = 2 * PRICE;
    let t = serve(
        engine
            .begin(&h.voucher(&mut pc, &payer), &h.offer)
            .await
            .unwrap(),
    );
    engine.commit(t, PRICE).await.unwrap();
    assert_eq!(
        engine
            .channel(pc.channel_id)
            .await
            .unwrap()
            .unwrap()
            .charged,
        3 * PRICE
    );
}

#[tokio::test]
async fn a_flood_of_random_ids_and_bad_signatures_reads_nothing_and_caches_nothing() {
    let h = Harness::new().await;
    let (payer, mut pc) = h.funded_channel(21, 100_000).await;
    let engine = h.engine();
    let t = serve(
        engine
            .begin(&h.voucher(&mut pc, &payer), &h.offer)
            .await
            .unwrap(),
    );
    pc.apply_response(&engine.commit(t, PRICE).await.unwrap(), PRICE, None)
        .unwrap();
    let reads = engine.metrics().chain_reads.load(Relaxed);
    let cached = engine.cached_channels();
    let stranger = h.chain.funded_payer(999, 0).await.unwrap();

    let mut refused = std::collections::BTreeMap::<String, u64>::new();
    let mut ids = Vec::new();
    for i in 0..300u64 {
        let payload = match i % 3 {
            // a random channel id under a real channel's config
            0 => {
                let mut v = pc
                    .clone()
                    .voucher_payload(&h.domain, &payer, PRICE)
                    .unwrap();
                v.voucher.channel_id = keccak256(i.to_be_bytes());
                BatchPayload::Voucher(v)
            }
            // a well-formed new channel (it hashes to its id) signed by the wrong key
            1 => {
                let mut other = PayerChannel::from_chain(
                    &h.domain,
                    paychan_core::batch::ChannelConfig {
                        salt: B256::from(U256::from(1_000_000 + i)),
                        ..pc.config
                    },
                    100_000,
                    0,
                );
                BatchPayload::Voucher(other.voucher_payload(&h.domain, &stranger, PRICE).unwrap())
            }
            // a new channel whose signature is not even a signature
            _ => {
                let mut other = PayerChannel::from_chain(
                    &h.domain,
                    paychan_core::batch::ChannelConfig {
                        salt: B256::from(U256::from(2_000_000 + i)),
                        ..pc.config
                    },
                    100_000,
                    0,
                );
                let mut v = other.voucher_payload(&h.domain, &payer, PRICE).unwrap();
                v.voucher.signature = vec![0xAB; 65].into();
                BatchPayload::Voucher(v)
            }
        };
        if let BatchPayload::Voucher(v) = &payload {
            ids.push(v.voucher.channel_id);
        }
        let d = engine
            .begin(&h.envelope(payload), &h.offer)
            .await
            .unwrap_err();
        *refused
            .entry(d.rejection.code.as_str().to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        refused,
        [
            (ErrorCode::ChannelIdMismatch.as_str().to_owned(), 100),
            (ErrorCode::VoucherSignature.as_str().to_owned(), 200),
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(engine.metrics().chain_reads.load(Relaxed), reads);
    assert_eq!(engine.cached_channels(), cached);
    assert_eq!(engine.metrics().screened_out.load(Relaxed), 300);
    for id in ids {
        assert!(engine.store().channel(id).await.unwrap().is_none());
    }
    // the paying channel is served as before, without a chain read
    let t = serve(
        engine
            .begin(&h.voucher(&mut pc, &payer), &h.offer)
            .await
            .unwrap(),
    );
    pc.apply_response(&engine.commit(t, PRICE).await.unwrap(), PRICE, None)
        .unwrap();
    assert_eq!(engine.metrics().chain_reads.load(Relaxed), reads);
}

#[tokio::test]
async fn an_empty_channel_is_refused_from_the_negative_cache_until_it_expires() {
    let h = Harness::new().await;
    let (payer, pc) = h.unfunded_channel(22, 100_000).await;
    // the payer believes its deposit is there already
    let mut pc = PayerChannel {
        balance: 100_000,
        ..pc
    };
    let engine = h.engine();
    let m = engine.metrics();
    let cached = engine.cached_channels();
    let p = h.voucher(&mut pc, &payer);

    // first voucher: one chain read finds nothing; the channel takes no slot in memory
    let d = engine.begin(&p, &h.offer).await.unwrap_err();
    assert_eq!(d.rejection.code, ErrorCode::ChannelNotFound);
    assert_eq!(m.chain_reads.load(Relaxed), 1);
    assert_eq!(engine.cached_channels(), cached);
    // again, and after the deposit lands on chain: refused from the cache, no read
    for deposit_first in [false, true] {
        if deposit_first {
            h.chain.deposit(&payer, &pc.config, 100_000).await.unwrap();
        }
        let d = engine.begin(&p, &h.offer).await.unwrap_err();
        assert_eq!(d.rejection.code, ErrorCode::ChannelNotFound);
        assert_eq!(m.chain_reads.load(Relaxed), 1);
    }
    assert_eq!(m.negative_hits.load(Relaxed), 2);
    assert_eq!(engine.cached_channels(), cached);
    // once the entry expires the chain is read again and the voucher is served
    h.clock.advance(2_000);
    let t = serve(engine.begin(&p, &h.offer).await.unwrap());
    assert_eq!(m.chain_reads.load(Relaxed), 2);
    pc.apply_response(&engine.commit(t, PRICE).await.unwrap(), PRICE, None)
        .unwrap();
    assert_eq!(pc.charged, PRICE);
}

#[tokio::test]
async fn reads_for_unknown_channels_past_their_share_are_refused_after_the_busy_wait() {
    let h = Harness::new().await;
    let (payer, mut known) = h.funded_channel(23, 100_000).await;
    let (payer2, mut unknown) = h.funded_channel(24, 100_000).await;
    // a channel the store knows, paid once
    let engine = h.engine();
    let t = serve(
        engine
            .begin(&h.voucher(&mut known, &payer), &h.offer)
            .await
            .unwrap(),
    );
    known
        .apply_response(&engine.commit(t, PRICE).await.unwrap(), PRICE, None)
        .unwrap();
    drop(engine);

    // no share for unknown channels at all: a funded channel the store has never seen is
    // refused after the busy wait, retryably, without reading the chain
    let engine = h.engine_with(|c| c.unknown_chain_read_limit = 0);
    let d = engine
        .begin(&h.voucher(&mut unknown, &payer2), &h.offer)
        .await
        .unwrap_err();
    assert_eq!(d.rejection.code, ErrorCode::ChannelStateReadFailed);
    assert!(d.rejection.code.is_retryable());
    assert!(
        !d.rejection.message.contains("http"),
        "{}",
        d.rejection.message
    );
    assert_eq!(engine.metrics().chain_reads.load(Relaxed), 0);
    assert_eq!(engine.metrics().chain_reads_refused.load(Relaxed), 1);
    // the known channel still gets its (stale, so re-read) state and is served
    h.clock.advance(31_000);
    let t = serve(
        engine
            .begin(&h.voucher(&mut known, &payer), &h.offer)
            .await
            .unwrap(),
    );
    engine.commit(t, PRICE).await.unwrap();
    assert_eq!(engine.metrics().chain_reads.load(Relaxed), 1);
}

#[tokio::test]
async fn a_dust_deposit_is_refused_before_anything_is_relayed() {
    let h = Harness::new().await;
    let fac = h.relaying_facilitator().await;
    let engine = h.engine_on(fac.clone(), |_| {});
    let (payer, mut pc) = h.unfunded_channel(25, 1_000_000).await;
    let tokens = h.tokens(payer.address()).await;

    // a first deposit below the minimum (10 × the price by default), and one a bit above it
    // whose voucher is signed by someone else: neither reaches the facilitator
    let dust = h.deposit(&mut pc.clone(), &payer, 9_999, 1).await;
    let d = engine.begin(&dust, &h.offer).await.unwrap_err();
    assert_eq!(d.rejection.code, ErrorCode::DepositBelowMinDeposit);
    let stranger = h.chain.funded_payer(998, 0).await.unwrap();
    let mut forged = h.deposit(&mut pc.clone(), &payer, 50_000, 2).await;
    if let BatchPayload::Deposit(dp) = &mut forged.payload {
        dp.voucher = pc
            .clone()
            .sign_voucher(&h.domain, &stranger, PRICE)
            .unwrap();
    }
    let d = engine.begin(&forged, &h.offer).await.unwrap_err();
    assert_eq!(d.rejection.code, ErrorCode::VoucherSignature);
    assert_eq!((fac.verifies(), fac.settles()), (0, 0));
    assert_eq!(h.balance(pc.channel_id).await, 0);
    assert_eq!(h.tokens(payer.address()).await, tokens);

    // a deposit at the minimum opens the channel; a dust top-up on it is refused too
    let open = h.deposit(&mut pc, &payer, 10_000, 3).await;
    let t = serve(engine.begin(&open, &h.offer).await.unwrap());
    pc.apply_response(&engine.commit(t, PRICE).await.unwrap(), PRICE, Some(10_000))
        .unwrap();
    assert_eq!((fac.verifies(), fac.settles()), (1, 1));
    let top_up = h.deposit(&mut pc.clone(), &payer, 500, 4).await;
    let d = engine.begin(&top_up, &h.offer).await.unwrap_err();
    assert_eq!(d.rejection.code, ErrorCode::DepositBelowMinDeposit);
    assert_eq!((fac.verifies(), fac.settles()), (1, 1));
    assert_eq!(h.balance(pc.channel_id).await, 10_000);
    assert_eq!(h.tokens(payer.address()).await, tokens - 10_000);
}

#[tokio::test]
async fn top_ups_at_the_minimum_are_relayed_and_deposits_are_rate_limited() {
    let h = Harness::new().await;
    let fac = h.relaying_facilitator().await;
    let engine = h.engine_on(fac.clone(), |c| {
        c.min_deposit = Some(5_000);
        c.deposit_rate = RateLimit::new(2, std::time::Duration::from_secs(60));
    });
    let (payer, mut pc) = h.funded_channel(26, 100_000).await;
    h.chain.mint(payer.address(), 100_000).await.unwrap();
    let id = pc.channel_id;
    let base = h.balance(id).await;
    // the channel can pay, so this is a top-up: relayed because it is at the minimum
    for (n, salt) in [(1u128, 1u64), (2, 2)] {
        let p = h.deposit(&mut pc, &payer, 5_000, salt).await;
        let t = serve(engine.begin(&p, &h.offer).await.unwrap());
        pc.apply_response(&engine.commit(t, PRICE).await.unwrap(), PRICE, Some(5_000))
            .unwrap();
        assert_eq!(h.balance(id).await, base + n * 5_000);
    }
    assert_eq!(fac.settles(), 2);
    // a third within the minute is refused before the facilitator, retryably
    let third = h.deposit(&mut pc.clone(), &payer, 5_000, 3).await;
    let d = engine.begin(&third, &h.offer).await.unwrap_err();
    assert_eq!(d.rejection.code, ErrorCode::ChannelBusy);
    assert!(
        d.rejection.message.contains("retry in 60 s"),
        "{}",
        d.rejection.message
    );
    assert_eq!((fac.verifies(), fac.settles()), (2, 2));
    assert_eq!(h.balance(id).await, base + 10_000);
    assert_eq!(engine.metrics().rate_limited.load(Relaxed), 1);
    // a minute later it is relayed
    h.clock.advance(60_000);
    let t = serve(engine.begin(&third, &h.offer).await.unwrap());
    engine.commit(t, PRICE).await.unwrap();
    assert_eq!(h.balance(id).await, base + 15_000);
    assert_eq!(fac.settles(), 3);
}

#[tokio::test]
async fn refunds_are_rate_limited_and_partial_refunds_have_a_minimum() {
    let h = Harness::new().await;
    let fac = h.relaying_facilitator().await;
    let authorizer = h.receiver_authorizer();
    let engine = h.engine_on(fac.clone(), |c| c.receiver_authorizer = Some(authorizer));
    let (payer, mut pc) = h.funded_channel(27, 100_000).await;
    let id = pc.channel_id;
    let tokens = h.tokens(payer.address()).await;

    // below the minimum partial refund (10 × the price): refused, nothing relayed
    let d = engine
        .begin(&h.refund(&mut pc, &payer, Some(9_999)), &h.offer)
        .await
        .unwrap_err();
    assert_eq!(d.rejection.code, ErrorCode::RefundAmountInvalid);
    assert_eq!(fac.settles(), 0);
    // at the minimum: relayed
    let resp = done(
        engine
            .begin(&h.refund(&mut pc, &payer, Some(10_000)), &h.offer)
            .await
            .unwrap(),
    );
    assert!(resp.success);
    assert_eq!(h.balance(id).await, 90_000);
    assert_eq!(h.tokens(payer.address()).await, tokens + 10_000);
    // a second refund within the minute is refused before the chain or the facilitator
    let reads = engine.metrics().chain_reads.load(Relaxed);
    let d = engine
        .begin(&h.refund(&mut pc, &payer, None), &h.offer)
        .await
        .unwrap_err();
    assert_eq!(d.rejection.code, ErrorCode::ChannelBusy);
    assert!(d.rejection.code.is_retryable());
    assert_eq!(fac.settles(), 1);
    assert_eq!(engine.metrics().chain_reads.load(Relaxed), reads);
    assert_eq!(h.balance(id).await, 90_000);
    // a minute later the rest comes back (a full refund needs no minimum)
    h.clock.advance(60_000);
    let resp = done(
        engine
            .begin(&h.refund(&mut pc, &payer, None), &h.offer)
            .await
            .unwrap(),
    );
    assert_eq!(resp.amount.as_deref(), Some("90000"));
    assert_eq!(h.balance(id).await, 0);
    assert_eq!(h.tokens(payer.address()).await, tokens + 100_000);
    let rec = engine.channel(id).await.unwrap().unwrap();
    assert_eq!(rec.onchain.balance, 0);
}

#[tokio::test]
async fn a_refund_whose_caller_goes_away_still_completes_and_is_recorded() {
    let h = Harness::new().await;
    let fac = h.relaying_facilitator().await;
    let authorizer = h.receiver_authorizer();
    let engine = h.engine_on(fac.clone(), |c| c.receiver_authorizer = Some(authorizer));
    let (payer, mut pc) = h.funded_channel(28, 100_000).await;
    let id = pc.channel_id;
    let t = serve(
        engine
            .begin(&h.voucher(&mut pc, &payer), &h.offer)
            .await
            .unwrap(),
    );
    pc.apply_response(&engine.commit(t, PRICE).await.unwrap(), PRICE, None)
        .unwrap();

    // the refund request is dropped while it is relayed
    let refund = h.refund(&mut pc, &payer, Some(50_000));
    {
        let begin = engine.begin(&refund, &h.offer);
        tokio::pin!(begin);
        // drive it until its relay has started (in its own task), then drop it
        let mut polls = 0;
        while fac.settles() == 0 {
            tokio::select! {
                biased;
                r = &mut begin => panic!("the refund finished before it could be dropped: {r:?}"),
                () = tokio::time::sleep(std::time::Duration::from_millis(1)) => {}
            }
            polls += 1;
            assert!(polls < 100_000, "the refund never reached the facilitator");
        }
    }
    // the channel's next reader waits for the refund to finish, and sees it recorded
    let rec = engine.channel(id).await.unwrap().unwrap();
    assert_eq!(fac.settles(), 1);
    assert_eq!(h.balance(id).await, 50_000);
    assert_eq!(rec.onchain.balance, 50_000);
    assert_eq!((rec.onchain.total_claimed, rec.charged), (PRICE, PRICE));
    drop(engine);
    assert_eq!(
        h.open_store().channel(id).await.unwrap().as_ref(),
        Some(&rec)
    );
}
