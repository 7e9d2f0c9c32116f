//! Property tests of the payee state machine: whatever a client sends and whatever the handler
//! does, the charged total never exceeds the signed ceiling or the balance, never decreases, a
//! voucher never pays for two requests, and an aborted request changes nothing.

use std::collections::HashSet;

use paychan_core::{
    batch::payee::{self, ChannelRecord, CheckContext, OnchainState, Refusal},
    sig::{Backend, SignerKey},
};
use proptest::prelude::*;

use crate::support::*;

/// What the client does on one step.
#[derive(Debug, Clone)]
enum Send {
    /// The correct next voucher.
    Honest,
    /// A voucher with this ceiling offset from the correct one.
    Off(i64),
    /// Replays one of the vouchers sent earlier (index modulo their count).
    Replay(usize),
    /// The correct ceiling signed by another key.
    WrongKey,
}

/// What the handler does after a reservation.
#[derive(Debug, Clone)]
enum Outcome {
    /// Succeeds and charges this fraction (per mille) of the maximum.
    Charge(u16),
    /// Fails: abort.
    Fail,
    /// Tries to charge above the maximum.
    Overcharge(u64),
}

fn send_strategy() -> impl Strategy<Value = Send> {
    prop_oneof![
        6 => Just(Send::Honest),
        2 => (-3i64..=3).prop_map(Send::Off),
        2 => any::<usize>().prop_map(Send::Replay),
        1 => Just(Send::WrongKey),
    ]
}

fn outcome_strategy() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        6 => (0u16..=1000).prop_map(Outcome::Charge),
        2 => Just(Outcome::Fail),
        1 => (1u64..100).prop_map(Outcome::Overcharge),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn charged_stays_within_signed_and_balance(
        amount in 1u128..5_000,
        balance in 0u128..60_000,
        claimed_pct in 0u128..=100,
        steps in prop::collection::vec((send_strategy(), outcome_strategy()), 1..60),
    ) {
        let signer = payer();
        let stranger = paychan_core::sig::LocalSigner::from_hex(
            "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a").unwrap();
        let d = domain();
        let req = requirements(amount);
        let cfg = config(signer.address());
        let id = d.channel_id(&cfg);
        let onchain = OnchainState { balance, total_claimed: balance * claimed_pct / 100 / 2, ..Default::default() };
        let mut record = ChannelRecord::from_chain(id, cfg, onchain, 0);
        let mut key: Option<SignerKey> = None;
        let mut sent = Vec::new();
        let mut charged_ceilings = HashSet::new();
        let now = 1_000;
        for (send, outcome) in steps {
            let ceiling = match send {
                Send::Honest => record.charged + amount,
                Send::Off(o) => (record.charged + amount).saturating_add_signed(o as i128),
                Send::Replay(i) if !sent.is_empty() => sent[i % sent.len()],
                Send::Replay(_) => record.charged + amount,
                Send::WrongKey => record.charged + amount,
            };
            let v = if matches!(send, Send::WrongKey) { voucher(&stranger, id, ceiling) } else { voucher(&signer, id, ceiling) };
            sent.push(ceiling);
            let ctx = CheckContext { domain: &d, requirements: &req, now_ms: now, max_onchain_age_ms: u64::MAX, backend: Backend::K256 };
            let before = record.clone();
            match payee::check_paid(&record, key.as_ref(), &v, None, &ctx) {
                Ok(res) => {
                    prop_assert!(!matches!(send, Send::WrongKey), "a stranger's voucher was accepted");
                    prop_assert_eq!(res.ceiling, ceiling);
                    prop_assert!(res.ceiling <= record.onchain.balance);
                    if let Some(k) = res.recovered_key.clone() { key = Some(k); }
                    match outcome {
                        Outcome::Fail => { /* dropped: abort */ }
                        Outcome::Charge(pm) => {
                            let actual = amount * u128::from(pm) / 1000;
                            let c = payee::commit(&mut record, &res, actual, now).unwrap();
                            prop_assert_eq!(c.amount, actual);
                            if actual > 0 {
                                prop_assert!(charged_ceilings.insert(ceiling), "ceiling {} paid for two requests", ceiling);
                            }
                        }
                        Outcome::Overcharge(extra) => {
                            let err = payee::commit(&mut record, &res, amount + u128::from(extra), now).unwrap_err();
                            prop_assert_eq!(err.code, paychan_core::ErrorCode::ChargeExceedsSignedCumulative);
                        }
                    }
                    if !matches!(outcome, Outcome::Charge(pm) if amount * u128::from(pm) / 1000 > 0) {
                        prop_assert_eq!(&record, &before, "an aborted or free request changed the record");
                    }
                }
                Err(refusal) => {
                    prop_assert_eq!(&record, &before);
                    if matches!(send, Send::Honest) {
                        // An honest voucher is only refused for lack of balance.
                        let ok = matches!(&refusal, Refusal::Reject(r) if matches!(r.code,
                            paychan_core::ErrorCode::CumulativeExceedsBalance | paychan_core::ErrorCode::ChannelNotFound));
                        prop_assert!(ok, "honest voucher refused: {:?}", refusal);
                    }
                }
            }
            // invariants
            prop_assert!(record.charged >= before.charged, "charged decreased");
            prop_assert!(record.charged <= record.onchain.balance.max(record.onchain.total_claimed));
            if record.signature.is_some() {
                prop_assert!(record.charged <= record.signed_max_claimable);
            }
        }
    }
}

#[test]
fn a_stale_mirror_asks_for_chain_state() {
    let signer = payer();
    let d = domain();
    let req = requirements(10);
    let cfg = config(signer.address());
    let id = d.channel_id(&cfg);
    let record = ChannelRecord::from_chain(
        id,
        cfg,
        OnchainState {
            balance: 100,
            ..Default::default()
        },
        1_000,
    );
    let v = voucher(&signer, id, 10);
    let ctx = CheckContext {
        domain: &d,
        requirements: &req,
        now_ms: 62_000,
        max_onchain_age_ms: 60_000,
        backend: Backend::K256,
    };
    assert_eq!(
        payee::check_paid(&record, None, &v, None, &ctx).unwrap_err(),
        Refusal::NeedsOnchainState
    );
    let ctx = CheckContext {
        now_ms: 61_000,
        ..ctx
    };
    assert!(payee::check_paid(&record, None, &v, None, &ctx).is_ok());
}

#[test]
fn a_new_channel_adopts_a_higher_client_base_but_never_a_lower_one() {
    let signer = payer();
    let d = domain();
    let req = requirements(10);
    let cfg = config(signer.address());
    let id = d.channel_id(&cfg);
    let record = ChannelRecord::from_chain(
        id,
        cfg,
        OnchainState {
            balance: 1_000,
            total_claimed: 100,
            ..Default::default()
        },
        0,
    );
    let ctx = CheckContext {
        domain: &d,
        requirements: &req,
        now_ms: 0,
        max_onchain_age_ms: u64::MAX,
        backend: Backend::K256,
    };
    let res = payee::check_paid(&record, None, &voucher(&signer, id, 250), None, &ctx).unwrap();
    assert_eq!((res.base, res.ceiling), (240, 250));
    assert_eq!(
        payee::check_paid(&record, None, &voucher(&signer, id, 105), None, &ctx).unwrap_err(),
        Refusal::Corrective
    );
    // once a voucher is on record, only the exact next ceiling is accepted
    let mut record = record;
    payee::commit(&mut record, &res, 7, 0).unwrap();
    assert_eq!(record.charged, 247);
    assert_eq!(
        payee::check_paid(&record, None, &voucher(&signer, id, 300), None, &ctx).unwrap_err(),
        Refusal::Corrective
    );
    assert!(payee::check_paid(&record, None, &voucher(&signer, id, 257), None, &ctx).is_ok());
}

#[test]
fn corrective_402_carries_state_and_the_last_voucher() {
    let signer = payer();
    let d = domain();
    let req = requirements(10);
    let cfg = config(signer.address());
    let id = d.channel_id(&cfg);
    let mut record = ChannelRecord::from_chain(
        id,
        cfg,
        OnchainState {
            balance: 1_000,
            ..Default::default()
        },
        0,
    );
    let ctx = CheckContext {
        domain: &d,
        requirements: &req,
        now_ms: 0,
        max_onchain_age_ms: u64::MAX,
        backend: Backend::K256,
    };
    let res = payee::check_paid(&record, None, &voucher(&signer, id, 10), None, &ctx).unwrap();
    payee::commit(&mut record, &res, 10, 0).unwrap();
    let corr = payee::corrective_requirements(&req, &record);
    let extra = paychan_core::batch::BatchRequirements::from_generic(&corr)
        .unwrap()
        .extra;
    let st = extra.channel_state.unwrap();
    assert_eq!(
        (st.channel_id, st.balance, st.charged_cumulative_amount),
        (id, 1_000, Some(10))
    );
    let vs = extra.voucher_state.unwrap();
    assert_eq!(vs.signed_max_claimable, 10);
    assert_eq!(vs.signature, voucher(&signer, id, 10).signature);
    // and the offer itself still matches what the client accepted
    req.matches_accepted(&corr).unwrap();
}

#[test]
fn vouchers_signed_under_another_domain_are_refused() {
    use alloy_primitives::{Bytes, address};
    use paychan_core::batch::{BatchDomain, VoucherFields};
    let signer = payer();
    let d = domain();
    let req = requirements(10);
    let cfg = config(signer.address());
    let id = d.channel_id(&cfg);
    let record = ChannelRecord::from_chain(
        id,
        cfg,
        OnchainState {
            balance: 100,
            ..Default::default()
        },
        0,
    );
    let ctx = CheckContext {
        domain: &d,
        requirements: &req,
        now_ms: 0,
        max_onchain_age_ms: u64::MAX,
        backend: Backend::K256,
    };
    let forged = |other: BatchDomain| {
        let sig = signer.sign_digest(&other.voucher_digest(id, 10)).unwrap();
        VoucherFields {
            channel_id: id,
            max_claimable_amount: 10,
            signature: Bytes::copy_from_slice(&sig.to_bytes()),
        }
    };
    // another chain, another escrow: same channel id and amount, different domain
    for other in [
        BatchDomain::new(8453, paychan_core::batch::canonical::ESCROW),
        BatchDomain::new(31337, address!("00000000000000000000000000000000000000aa")),
    ] {
        let err = payee::check_paid(&record, None, &forged(other), None, &ctx).unwrap_err();
        assert!(
            matches!(err, Refusal::Reject(r) if r.code == paychan_core::ErrorCode::VoucherSignature)
        );
    }
    // a claim-batch signature is not a voucher signature (distinct type hashes)
    let entry = paychan_core::batch::ClaimEntry {
        channel_id: id,
        max_claimable_amount: 10,
        total_claimed: 10,
    };
    let sig = signer.sign_digest(&d.claim_batch_digest(&[entry])).unwrap();
    let v = VoucherFields {
        channel_id: id,
        max_claimable_amount: 10,
        signature: Bytes::copy_from_slice(&sig.to_bytes()),
    };
    assert!(payee::check_paid(&record, None, &v, None, &ctx).is_err());
    // the genuine voucher passes
    assert!(payee::check_paid(&record, None, &voucher(&signer, id, 10), None, &ctx).is_ok());
}

#[test]
fn no_new_charges_close_to_a_withdrawal_deadline() {
    let signer = payer();
    let cfg = config(signer.address());
    let id = domain().channel_id(&cfg);
    let mut record = ChannelRecord::from_chain(
        id,
        cfg,
        OnchainState {
            balance: 100,
            ..Default::default()
        },
        0,
    );
    assert!(payee::check_withdrawal_window(&record, 1_000_000, 360_000).is_ok());
    record.onchain.withdraw_requested_at = 10_000; // deadline 10_900 s
    assert!(payee::check_withdrawal_window(&record, 10_000_000, 360_000).is_ok()); // 15 min before
    let err = payee::check_withdrawal_window(&record, 10_540_000, 360_000).unwrap_err(); // 6 min before
    assert_eq!(err.code, paychan_core::ErrorCode::WithdrawalPending);
    assert!(payee::check_withdrawal_window(&record, 11_000_000, 360_000).is_err()); // past it
}
