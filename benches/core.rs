//! Criterion benchmarks of paychan-core's hot path: the voucher signature check (cold: recover;
//! warm: against the cached key) per backend, signing a voucher (the payer), header decoding,
//! and the whole accept decision (decode → bind → check → commit) with the warm key. Figures go
//! to BENCHMARKS.md.
//!
//! Run: `cargo bench -p paychan-benches --bench core`

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use paychan_benches::{Scenario, voucher_header};
use paychan_core::{
    batch::{BatchPayload, payee},
    codec,
    sig::{Backend, Signature},
    x402::PaymentPayload,
};

fn signatures(c: &mut Criterion) {
    let mut s = Scenario::new(u128::MAX / 2, 1_000, 1);
    let v = s.next_voucher().voucher;
    let digest = s
        .domain
        .voucher_digest(v.channel_id, v.max_claimable_amount);
    let sig = Signature::from_bytes(&v.signature).unwrap();
    let mut g = c.benchmark_group("voucher_signature");
    for &b in Backend::all() {
        let key = b.recover(&digest, &sig).unwrap();
        g.bench_function(format!("cold_recover/{}", b.name()), |bch| {
            bch.iter(|| b.recover(black_box(&digest), black_box(&sig)).unwrap())
        });
        g.bench_function(format!("warm_verify/{}", b.name()), |bch| {
            bch.iter(|| {
                b.verify(black_box(&digest), black_box(&sig), black_box(&key))
                    .unwrap()
            })
        });
    }
    // The payer's side: signing the next voucher (k256, constant time, RFC 6979).
    g.bench_function("sign_voucher", |bch| {
        bch.iter(|| s.payer.sign_digest(black_box(&digest)).unwrap())
    });
    g.bench_function("parse_65_bytes", |bch| {
        bch.iter(|| Signature::from_bytes(black_box(&v.signature)).unwrap())
    });
    g.bench_function("voucher_digest", |bch| {
        bch.iter(|| {
            s.domain
                .voucher_digest(black_box(v.channel_id), black_box(v.max_claimable_amount))
        })
    });
    let cfg = s.record.config;
    g.bench_function("channel_id", |bch| {
        bch.iter(|| s.domain.channel_id(black_box(&cfg)))
    });
    g.finish();
}

fn decoding(c: &mut Criterion) {
    let mut s = Scenario::new(u128::MAX / 2, 1_000, 2);
    let header = s.next_header();
    let mut g = c.benchmark_group("header");
    g.throughput(criterion::Throughput::Bytes(header.len() as u64));
    g.bench_function("decode_voucher_payment_signature", |bch| {
        bch.iter(|| codec::decode::<PaymentPayload<BatchPayload>>(black_box(&header)).unwrap())
    });
    let decoded = codec::decode::<PaymentPayload<BatchPayload>>(&header).unwrap();
    g.bench_function("encode_voucher_payment_signature", |bch| {
        bch.iter(|| codec::encode(black_box(&decoded)))
    });
    g.finish();
}

/// decode → match offer → bind → check (warm key) → commit, as the payee does per request.
fn accept(c: &mut Criterion) {
    let mut g = c.benchmark_group("accept");
    for &b in Backend::all() {
        let mut s = Scenario::new(u128::MAX / 2, 1_000, 3);
        // warm the key cache with a first voucher
        let first = s.next_voucher();
        let ctx = payee::CheckContext {
            domain: &s.domain.clone(),
            requirements: &s.requirements.clone(),
            now_ms: 0,
            max_onchain_age_ms: u64::MAX,
            backend: b,
        };
        let res = payee::check_paid(&s.record, None, &first.voucher, None, &ctx).unwrap();
        let key = res.recovered_key.clone().unwrap();
        payee::commit(&mut s.record, &res, 1_000, 0).unwrap();
        let Scenario {
            domain,
            requirements,
            payer,
            mut payer_channel,
            mut record,
        } = s;
        let amount = requirements.amount;
        let mut next_charged = record.charged;
        g.bench_function(format!("decode_check_commit_warm/{}", b.name()), |bch| {
            bch.iter_batched(
                || {
                    // The payer builds on what the payee will have committed by then.
                    payer_channel.charged = next_charged;
                    next_charged += amount;
                    voucher_header(&mut payer_channel, &domain, &payer, &requirements)
                },
                |header| {
                    let p: PaymentPayload<BatchPayload> = codec::decode(&header).unwrap();
                    requirements.matches_accepted(&p.accepted).unwrap();
                    let BatchPayload::Voucher(v) = p.payload else {
                        unreachable!()
                    };
                    payee::check_binding(&v.channel_config, &v.voucher, &domain, &requirements)
                        .unwrap();
                    let ctx = payee::CheckContext {
                        domain: &domain,
                        requirements: &requirements,
                        now_ms: 0,
                        max_onchain_age_ms: u64::MAX,
                        backend: b,
                    };
                    let res =
                        payee::check_paid(&record, Some(&key), &v.voucher, None, &ctx).unwrap();
                    payee::commit(&mut record, &res, amount, 0).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, signatures, decoding, accept);
criterion_main!(benches);
