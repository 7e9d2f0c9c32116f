//! `/verify`: every rule refuses with its spec code; valid payloads answer the on-chain snapshot.

use alloy::primitives::{Address, B256, U256, address};
use paychan_core::batch::payer::PayerChannel;
use paychan_core::{
    ErrorCode,
    batch::{
        BatchPayload, ChannelSnapshot, ClaimPayload, RefundPayload, SettleActionPayload,
        VoucherPayload, payer::channel_config_for,
    },
    x402::PaymentRequirements,
};
use paychan_devchain::{ERC3009_COLLECTOR, ESCROW, Role};

use crate::support::*;

fn voucher(pc: &PayerChannel, v: paychan_core::batch::VoucherFields) -> BatchPayload {
    BatchPayload::Voucher(VoucherPayload {
        channel_config: pc.config,
        voucher: v,
    })
}

fn with_extra(req: &PaymentRequirements, key: &str, v: serde_json::Value) -> PaymentRequirements {
    let mut r = req.clone();
    r.extra.as_mut().unwrap().insert(key.into(), v);
    r
}

#[tokio::test]
async fn vouchers_and_refunds_refuse_each_rule_with_its_code() {
    let env = Env::start().await;
    let f = env.facilitator();
    let req = env.requirements();
    let (payer, mut pc) = env.payer(1, 100_000).await;
    env.fund(&payer, &mut pc, 10_000).await;
    let stranger = env.key(Role::Payer(3));

    // valid: the answer is the on-chain snapshot and the payer
    let v = pc.voucher_payload(&env.domain, &payer, PRICE).unwrap();
    let ok = f
        .verify(&env.envelope(BatchPayload::Voucher(v.clone())), &req)
        .await;
    assert!(ok.is_valid, "{ok:?}");
    assert_eq!(
        ok.payer.as_deref(),
        Some(payer.address().to_checksum(None).as_str())
    );
    let snap: ChannelSnapshot =
        serde_json::from_value(serde_json::Value::Object(ok.extra.clone().unwrap())).unwrap();
    assert_eq!(
        (
            snap.channel_id,
            snap.balance,
            snap.total_claimed,
            snap.withdraw_requested_at,
            snap.refund_nonce
        ),
        (pc.channel_id, 10_000, 0, 0, U256::ZERO)
    );
    // the wire form is the spec's: amounts as strings, withdrawRequestedAt a number
    let extra = ok.extra.unwrap();
    assert_eq!(extra["balance"], "10000");
    assert_eq!(extra["withdrawRequestedAt"], 0);
    assert_eq!(extra["refundNonce"], "0");

    let check = async |payload: BatchPayload, req: &PaymentRequirements| {
        refused(&f.verify(&env.envelope(payload), req).await)
    };

    // 1. channel id
    let mut bad = v.clone();
    bad.voucher.channel_id = B256::repeat_byte(0x11);
    assert_eq!(
        check(BatchPayload::Voucher(bad), &req).await,
        ErrorCode::ChannelIdMismatch
    );

    // 2-5. terms: a self-consistent channel (its id is its config's) with one term changed
    let other = address!("00000000000000000000000000000000000000aa");
    let base = pc.config;
    let changed = |f: fn(&mut paychan_core::batch::ChannelConfig, Address)| {
        let mut c = base;
        f(&mut c, other);
        c
    };
    let cases = [
        (changed(|c, a| c.token = a), ErrorCode::TokenMismatch),
        (changed(|c, a| c.receiver = a), ErrorCode::ReceiverMismatch),
        (
            changed(|c, a| c.receiver_authorizer = a),
            ErrorCode::ReceiverAuthorizerMismatch,
        ),
        (
            changed(|c, _| c.withdraw_delay = 3_600),
            ErrorCode::WithdrawDelayMismatch,
        ),
    ];
    for (config, code) in cases {
        let other_pc = env.channel_for(config);
        let v = env.voucher_signed_by(&other_pc, &payer, PRICE);
        assert_eq!(check(voucher(&other_pc, v), &req).await, code);
    }
    // delay out of range in the offer itself
    let v = env.voucher_signed_by(&pc, &payer, PRICE);
    assert_eq!(
        check(
            voucher(&pc, v.clone()),
            &with_extra(&req, "withdrawDelay", 60.into())
        )
        .await,
        ErrorCode::WithdrawDelayOutOfRange
    );

    // 6. signature: another key, a malformed one
    let v = env.voucher_signed_by(&pc, &stranger, PRICE);
    assert_eq!(
        check(voucher(&pc, v.clone()), &req).await,
        ErrorCode::VoucherSignature
    );
    let mut short = env.voucher_signed_by(&pc, &payer, PRICE);
    short.signature = short.signature.slice(..64);
    assert_eq!(
        check(voucher(&pc, short), &req).await,
        ErrorCode::VoucherSignature
    );

    // zero payerAuthorizer: the payer (an EOA: ECDSA, as SignatureChecker) must have signed
    let cfg0 = channel_config_for(
        &env.offer,
        payer.address(),
        Address::ZERO,
        B256::repeat_byte(5),
    );
    let mut pc0 = env.channel_for(cfg0);
    env.fund(&payer, &mut pc0, 5_000).await;
    let ok0 = f
        .verify(
            &env.envelope(voucher(&pc0, env.voucher_signed_by(&pc0, &payer, PRICE))),
            &req,
        )
        .await;
    assert!(ok0.is_valid, "{ok0:?}");
    assert_eq!(
        check(
            voucher(&pc0, env.voucher_signed_by(&pc0, &stranger, PRICE)),
            &req
        )
        .await,
        ErrorCode::VoucherSignature
    );

    // 7. a channel that was never funded
    let (p2, pc2) = env.payer(2, 0).await;
    let v = env.voucher_signed_by(&pc2, &p2, PRICE);
    assert_eq!(
        check(voucher(&pc2, v), &req).await,
        ErrorCode::ChannelNotFound
    );

    // 9. above the balance
    let v = env.voucher_signed_by(&pc, &payer, 10_001);
    assert_eq!(
        check(voucher(&pc, v), &req).await,
        ErrorCode::CumulativeExceedsBalance
    );

    // 10. not above the claimed total (claim 3000 first, through the facilitator)
    let row = paychan_core::batch::ClaimRow {
        voucher: paychan_core::batch::ClaimVoucher {
            channel: pc.config,
            max_claimable_amount: 3_000,
        },
        signature: env.voucher_signed_by(&pc, &payer, 3_000).signature,
        total_claimed: 3_000,
    };
    let claim = f
        .settle(
            &env.envelope(BatchPayload::Claim(ClaimPayload {
                claims: vec![row],
                claim_authorizer_signature: None,
            })),
            &req,
        )
        .await;
    tx_of(&claim);
    assert_eq!(env.state(pc.channel_id).await.total_claimed, 3_000);
    let v = env.voucher_signed_by(&pc, &payer, 3_000);
    assert_eq!(
        check(voucher(&pc, v), &req).await,
        ErrorCode::CumulativeBelowClaimed
    );
    // a refund voucher may equal the claimed total, not be below it
    let refund = |ceiling: u128| {
        BatchPayload::Refund(RefundPayload {
            channel_config: pc.config,
            voucher: env.voucher_signed_by(&pc, &payer, ceiling),
            amount: None,
            refund_nonce: None,
            claims: None,
            refund_authorizer_signature: None,
            claim_authorizer_signature: None,
        })
    };
    let r = f.verify(&env.envelope(refund(3_000)), &req).await;
    assert!(r.is_valid, "{r:?}");
    assert_eq!(r.extra.unwrap()["totalClaimed"], "3000");
    assert_eq!(
        check(refund(2_999), &req).await,
        ErrorCode::CumulativeBelowClaimed
    );
    let BatchPayload::Refund(mut zero) = refund(3_000) else {
        unreachable!()
    };
    zero.amount = Some(0);
    assert_eq!(
        check(BatchPayload::Refund(zero), &req).await,
        ErrorCode::RefundAmountInvalid
    );

    // server-side payload types are settled, not verified
    let settle = BatchPayload::Settle(SettleActionPayload {
        receiver: env.receiver,
        token: env.token,
    });
    assert_eq!(check(settle, &req).await, ErrorCode::PayloadType);

    // the envelope: version, scheme, network
    let good = voucher(&pc, env.voucher_signed_by(&pc, &payer, 4_000));
    let mut p = env.envelope(good.clone());
    p.x402_version = 1;
    assert_eq!(
        refused(&f.verify(&p, &req).await),
        ErrorCode::InvalidX402Version
    );
    let mut p = env.envelope(good.clone());
    p.accepted.scheme = "exact".into();
    assert_eq!(refused(&f.verify(&p, &req).await), ErrorCode::Scheme);
    let mut exact = req.clone();
    exact.scheme = "exact".into();
    assert_eq!(
        refused(&f.verify(&env.envelope(good.clone()), &exact).await),
        ErrorCode::Scheme
    );
    let mut p = env.envelope(good.clone());
    p.accepted.network = "eip155:8453".parse().unwrap();
    assert_eq!(
        refused(&f.verify(&p, &req).await),
        ErrorCode::NetworkMismatch
    );
    let mut base_req = req.clone();
    base_req.network = "eip155:8453".parse().unwrap();
    let mut p = env.envelope(good.clone());
    p.accepted.network = base_req.network.clone();
    assert_eq!(
        refused(&f.verify(&p, &base_req).await),
        ErrorCode::InvalidNetwork
    );
    // and the same voucher is fine
    assert!(f.verify(&env.envelope(good), &req).await.is_valid);
}

#[tokio::test]
async fn deposits_refuse_each_rule_with_its_code() {
    let env = Env::start().await;
    let f = env.facilitator();
    let req = env.requirements();
    let (payer, mut pc) = env.payer(10, 50_000).await;
    let now = now_secs();

    // valid: the snapshot is the channel before the deposit
    let d = env.deposit(&mut pc.clone(), &payer, 20_000, 1);
    let ok = f
        .verify(&env.envelope(BatchPayload::Deposit(d.clone())), &req)
        .await;
    assert!(ok.is_valid, "{ok:?}");
    let extra = ok.extra.unwrap();
    assert_eq!(
        (extra["balance"].as_str(), extra["totalClaimed"].as_str()),
        (Some("0"), Some("0"))
    );

    let check = async |d: &paychan_core::batch::DepositPayload, req: &PaymentRequirements| {
        refused(
            &f.verify(&env.envelope(BatchPayload::Deposit(d.clone())), req)
                .await,
        )
    };
    let with_auth = |auth| {
        let mut d = d.clone();
        d.deposit.authorization.erc3009_authorization = Some(auth);
        d
    };
    let (from, id) = (payer.address(), pc.channel_id);

    // ERC-3009 validity window (6 s margin on validBefore, as the reference)
    let expired = env.authorization(&payer, from, ERC3009_COLLECTOR, id, 20_000, 2, 0, now + 3);
    assert_eq!(
        check(&with_auth(expired), &req).await,
        ErrorCode::PayloadAuthorizationValidBefore
    );
    let future = env.authorization(
        &payer,
        from,
        ERC3009_COLLECTOR,
        id,
        20_000,
        3,
        now + 600,
        now + 900,
    );
    assert_eq!(
        check(&with_auth(future), &req).await,
        ErrorCode::PayloadAuthorizationValidAfter
    );

    // receiveWithAuthorization signed by someone else, for another recipient, for another amount
    let stranger = env.key(Role::Payer(4));
    let other = env.authorization(
        &stranger,
        from,
        ERC3009_COLLECTOR,
        id,
        20_000,
        4,
        0,
        now + 300,
    );
    assert_eq!(
        check(&with_auth(other), &req).await,
        ErrorCode::ReceiveAuthorizationSignature
    );
    let to_escrow = env.authorization(&payer, from, ESCROW, id, 20_000, 5, 0, now + 300);
    assert_eq!(
        check(&with_auth(to_escrow), &req).await,
        ErrorCode::ReceiveAuthorizationSignature
    );
    let mut more = d.clone();
    more.deposit.amount = 20_001;
    assert_eq!(
        check(&more, &req).await,
        ErrorCode::ReceiveAuthorizationSignature
    );

    // missing authorization, zero amount
    let mut none = d.clone();
    none.deposit.authorization.erc3009_authorization = None;
    assert_eq!(
        check(&none, &req).await,
        ErrorCode::Erc3009AuthorizationRequired
    );
    let mut zero = d.clone();
    zero.deposit.amount = 0;
    assert_eq!(check(&zero, &req).await, ErrorCode::DepositPayload);

    // the token's EIP-712 domain must be in the requirements
    let mut no_domain = req.clone();
    no_domain.extra.as_mut().unwrap().remove("name");
    assert_eq!(check(&d, &no_domain).await, ErrorCode::MissingEip712Domain);

    // the voucher: signed by the payer authorizer, within balance + deposit
    let mut bad_voucher = d.clone();
    bad_voucher.voucher = env.voucher_signed_by(&pc, &stranger, PRICE);
    assert_eq!(check(&bad_voucher, &req).await, ErrorCode::VoucherSignature);
    let mut over = d.clone();
    over.voucher = env.voucher_signed_by(&pc, &payer, 20_001);
    assert_eq!(
        check(&over, &req).await,
        ErrorCode::CumulativeExceedsBalance
    );

    // the payer must hold the deposit
    let (poor, mut poor_pc) = env.payer(11, 5_000).await;
    let d_poor = env.deposit(&mut poor_pc, &poor, 20_000, 6);
    assert_eq!(check(&d_poor, &req).await, ErrorCode::InsufficientBalance);

    // a wrong token domain in the offer passes the local checks (the payer signed what it was
    // offered) and is caught by the simulation, with the token's decoded revert
    let wrong_name = with_extra(&req, "name", "Not The Token".into());
    let mut offer = env.offer.clone();
    offer.extra.name = "Not The Token".into();
    let mut pc_w = pc.clone();
    let d_w = paychan_core::batch::payer::deposit_payload(
        &mut pc_w,
        &env.domain,
        &offer,
        &payer,
        &payer,
        paychan_core::batch::payer::DepositTerms {
            amount: 20_000,
            collector: ERC3009_COLLECTOR,
            salt: U256::from(7),
            now_secs: now,
        },
    )
    .unwrap();
    let r = f
        .verify(
            &env.envelope_with(BatchPayload::Deposit(d_w), &wrong_name),
            &wrong_name,
        )
        .await;
    assert_eq!(refused(&r), ErrorCode::DepositSimulationFailed);
    assert!(r.invalid_message.unwrap().contains("InvalidSignature"));

    // an authorization already used: deposit it, then verify it again
    tx_of(
        &f.settle(&env.envelope(BatchPayload::Deposit(d.clone())), &req)
            .await,
    );
    let r = f
        .verify(&env.envelope(BatchPayload::Deposit(d.clone())), &req)
        .await;
    assert_eq!(refused(&r), ErrorCode::DepositSimulationFailed);
    assert!(r.invalid_message.unwrap().contains("already used"));
    // a top-up of the funded channel: the snapshot shows the balance before it
    pc.balance = 20_000;
    let top_up = env.deposit(&mut pc, &payer, 1_000, 8);
    let r = f
        .verify(&env.envelope(BatchPayload::Deposit(top_up)), &req)
        .await;
    assert!(r.is_valid, "{r:?}");
    assert_eq!(r.extra.unwrap()["balance"], "20000");
}

impl Env {
    pub fn envelope_with(
        &self,
        payload: BatchPayload,
        req: &PaymentRequirements,
    ) -> paychan_core::x402::PaymentPayload<BatchPayload> {
        let mut p = self.envelope(payload);
        p.accepted = req.clone();
        p
    }
}
