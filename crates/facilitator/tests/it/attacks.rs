//! The facilitator as an attacker meets it: over real HTTP (bearer token, hardened listener)
//! against a real dev chain. Every refused request leaves the chain as it was, to the unit; the
//! legitimate deposit, claim and refund still go through.

use alloy::primitives::{Address, B256, U256};
use paychan_core::{
    ErrorCode,
    batch::{BatchPayload, ClaimPayload, ClaimRow, ClaimVoucher, RefundPayload},
    sig::LocalSigner,
    x402::SettlementResponse,
};
use paychan_devchain::Role;
use paychan_facilitator::{
    BearerToken, Error, Facilitator, FacilitatorConfig, HttpFacilitator, HttpOptions, serve_with,
};
use paychan_store::MemStore;
use serde_json::{Value, json};

use crate::support::*;

/// A facilitator served on loopback with a bearer token created in an owner-only file.
struct Served {
    url: String,
    token: BearerToken,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start(f: Facilitator<MemStore>) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let token = BearerToken::load_or_create(&dir.path().join("facilitator.token")).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_with(
            listener,
            f,
            HttpOptions::new(token.clone()),
            async {
                let _ = stopped.await;
            },
        ));
        Served {
            url,
            token,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    /// The HTTP client holding the token.
    fn client(&self) -> HttpFacilitator {
        HttpFacilitator::with_token(&self.url, Some(self.token.clone())).unwrap()
    }

    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

/// Everything on chain that a refused request must leave alone: the token balances of payer,
/// receiver and escrow, and the channels' (balance, totalClaimed, refundNonce).
async fn chain_view(
    env: &Env,
    payer: Address,
    ids: &[B256],
) -> (Vec<u128>, Vec<(u128, u128, U256)>) {
    let (p, r, e) = env.balances(payer).await;
    let mut states = Vec::new();
    for id in ids {
        let s = env.state(*id).await;
        states.push((s.balance, s.total_claimed, s.refund_nonce));
    }
    (vec![p, r, e], states)
}

fn row(
    env: &Env,
    pc: &paychan_core::batch::payer::PayerChannel,
    signer: &LocalSigner,
    ceiling: u128,
    total: u128,
) -> ClaimRow {
    ClaimRow {
        voucher: ClaimVoucher {
            channel: pc.config,
            max_claimable_amount: ceiling,
        },
        signature: env.voucher_signed_by(pc, signer, ceiling).signature,
        total_claimed: total,
    }
}

fn claim(rows: Vec<ClaimRow>) -> BatchPayload {
    BatchPayload::Claim(ClaimPayload {
        claims: rows,
        claim_authorizer_signature: None,
    })
}

#[track_caller]
fn refused_with(s: &SettlementResponse, code: ErrorCode, needle: &str) {
    assert_eq!(failed(s), code, "{s:?}");
    let m = s.error_message.as_deref().unwrap();
    assert!(m.contains(needle), "{m:?} should contain {needle:?}");
    assert!(s.transaction.is_empty(), "nothing was sent: {s:?}");
}

#[tokio::test]
async fn verify_and_settle_need_the_bearer_token_and_supported_does_not() {
    let env = Env::start().await;
    let served = Served::start(env.facilitator()).await;
    let req = env.requirements();
    let (payer, mut pc) = env.payer(80, 50_000).await;
    let deposit = env.envelope(BatchPayload::Deposit(
        env.deposit(&mut pc, &payer, 10_000, 1),
    ));
    let body = serde_json::to_vec(&json!({
        "x402Version": 2,
        "paymentPayload": deposit,
        "paymentRequirements": req,
    }))
    .unwrap();
    let before = chain_view(&env, payer.address(), &[pc.channel_id]).await;

    // raw HTTP: no header, a wrong token, another scheme, the token with a byte changed
    let good = served.token.secret().to_owned();
    let mut flipped = good.clone().into_bytes();
    flipped[0] = if flipped[0] == b'a' { b'b' } else { b'a' };
    let flipped = String::from_utf8(flipped).unwrap();
    let http = reqwest::Client::new();
    for auth in [
        None,
        Some(format!("Bearer {}", "f".repeat(64))),
        Some(format!("Basic {good}")),
        Some(format!("Bearer {flipped}")),
    ] {
        for op in ["verify", "settle"] {
            let mut r = http
                .post(format!("{}/{op}", served.url))
                .header("content-type", "application/json")
                .body(body.clone());
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            let resp = r.send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 401, "{op} with {auth:?}");
            assert_eq!(
                resp.headers().get("www-authenticate").unwrap(),
                "Bearer",
                "{op}"
            );
            let text = resp.text().await.unwrap();
            assert!(!text.contains(&good), "the answer never shows the token");
            assert!(
                !text.contains("isValid") && !text.contains("success"),
                "{text}"
            );
        }
    }
    // the HTTP client without the token, or with another one: an HTTP 401 error, no verdict
    let wrong = BearerToken::from_secret(&"0".repeat(64)).unwrap();
    for client in [
        HttpFacilitator::new(&served.url).unwrap(),
        HttpFacilitator::with_token(&served.url, Some(wrong)).unwrap(),
    ] {
        let e = client.settle(&deposit, &req).await.unwrap_err();
        assert!(matches!(e, Error::Status { status: 401, .. }), "{e:?}");
        let e = client.verify(&deposit, &req).await.unwrap_err();
        assert!(matches!(e, Error::Status { status: 401, .. }), "{e:?}");
        // /supported is public: it answers without any token
        let s = client.supported().await.unwrap();
        assert_eq!(s.kinds[0].scheme, "batch-settlement");
    }
    let supported = http
        .get(format!("{}/supported", served.url))
        .send()
        .await
        .unwrap();
    assert_eq!(supported.status().as_u16(), 200);
    let supported: Value = supported.json().await.unwrap();
    assert_eq!(
        supported["kinds"][0]["extra"]["receiverAuthorizer"],
        env.authorizer().address().to_checksum(None)
    );
    // nothing happened on chain
    assert_eq!(
        chain_view(&env, payer.address(), &[pc.channel_id]).await,
        before
    );
    assert_eq!(env.state(pc.channel_id).await.balance, 0);

    // an oversized body: 401 without the token (never read), 413 with it
    let huge = vec![b' '; paychan_facilitator::MAX_BODY_BYTES + 1];
    for (auth, status) in [(None, 401), (Some(served.token.header_value()), 413)] {
        let mut r = http
            .post(format!("{}/settle", served.url))
            .header("content-type", "application/json")
            .body(huge.clone());
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        assert_eq!(r.send().await.unwrap().status().as_u16(), status);
    }

    // with the token: the deposit verifies and settles
    let client = served.client();
    assert!(client.verify(&deposit, &req).await.unwrap().is_valid);
    let s = client.settle(&deposit, &req).await.unwrap();
    tx_of(&s);
    assert_eq!(env.state(pc.channel_id).await.balance, 10_000);
    let (p, _, e) = env.balances(payer.address()).await;
    assert_eq!((p, e), (before.0[0] - 10_000, before.0[2] + 10_000));
    served.shutdown().await;
}

#[tokio::test]
async fn refunds_need_the_payers_own_voucher_and_never_return_what_it_owes() {
    let env = Env::start().await;
    let served = Served::start(env.facilitator()).await;
    let client = served.client();
    let req = env.requirements();
    let (payer, mut pc) = env.payer(81, 50_000).await;
    env.fund(&payer, &mut pc, 10_000).await;
    let (other_payer, mut other) = env.payer(82, 50_000).await;
    env.fund(&other_payer, &mut other, 5_000).await;
    let attacker = env.key(Role::Payer(9));
    let me = payer.address();
    // the server charged 3,000 by voucher; nothing is claimed yet
    pc.charged = 3_000;
    let ids = [pc.channel_id, other.channel_id];
    let before = chain_view(&env, me, &ids).await;
    let settle = async |p: RefundPayload| {
        client
            .settle(&env.envelope(BatchPayload::Refund(p)), &req)
            .await
            .unwrap()
    };
    let completed = |p: RefundPayload, amount: u128| RefundPayload {
        amount: Some(amount),
        refund_nonce: Some(U256::ZERO),
        ..p
    };

    // someone else's channel: a zero-charge voucher signed by a key that is not its payer
    // authorizer, refused by /verify and by /settle
    let forged = RefundPayload {
        voucher: env.voucher_signed_by(&pc, &attacker, 0),
        ..pc.refund_payload(&env.domain, &payer, None).unwrap()
    };
    let v = client
        .verify(&env.envelope(BatchPayload::Refund(forged.clone())), &req)
        .await
        .unwrap();
    assert_eq!(refused(&v), ErrorCode::VoucherSignature);
    refused_with(
        &settle(completed(forged, 10_000)).await,
        ErrorCode::VoucherSignature,
        "refund's voucher",
    );
    // no voucher signature at all
    let mut blank = pc.refund_payload(&env.domain, &payer, None).unwrap();
    blank.voucher.signature = Default::default();
    refused_with(
        &settle(completed(blank, 10_000)).await,
        ErrorCode::VoucherSignature,
        "refund's voucher",
    );

    let genuine = pc.refund_payload(&env.domain, &payer, None).unwrap();
    // claims that take less than the payer's voucher signs over (1,000 of 3,000): the refund
    // would hand back 2,000 owed to the receiver
    let short = RefundPayload {
        claims: Some(vec![row(&env, &pc, &payer, 1_000, 1_000)]),
        ..completed(genuine.clone(), 10_000)
    };
    refused_with(
        &settle(short).await,
        ErrorCode::RefundPayload,
        "cover 1000 of the 3000",
    );
    // a claim row the payer did not sign
    let forged_row = RefundPayload {
        claims: Some(vec![row(&env, &pc, &attacker, 3_000, 3_000)]),
        ..completed(genuine.clone(), 7_000)
    };
    refused_with(
        &settle(forged_row).await,
        ErrorCode::VoucherSignature,
        "claim row 0",
    );
    // a claim row asserting more than its voucher's ceiling
    let asserted = RefundPayload {
        claims: Some(vec![row(&env, &pc, &payer, 3_000, 9_000)]),
        ..completed(genuine.clone(), 1_000)
    };
    refused_with(
        &settle(asserted).await,
        ErrorCode::RefundPayload,
        "exceeds the voucher's maxClaimableAmount",
    );
    // a claim row of another channel smuggled into this refund
    let smuggled = RefundPayload {
        claims: Some(vec![
            row(&env, &pc, &payer, 3_000, 3_000),
            row(&env, &other, &other_payer, 5_000, 5_000),
        ]),
        ..completed(genuine.clone(), 7_000)
    };
    refused_with(
        &settle(smuggled).await,
        ErrorCode::RefundPayload,
        "not the refunded channel",
    );
    assert_eq!(
        chain_view(&env, me, &ids).await,
        before,
        "refusals moved nothing"
    );

    // the genuine refund asserting everything (10,000) with no claims: the facilitator claims
    // the 3,000 the voucher signs over first and refunds only the 7,000 left
    let s = settle(completed(genuine, 10_000)).await;
    tx_of(&s);
    assert_eq!(s.amount.as_deref(), Some("7000"));
    let cs = channel_state(&s);
    assert_eq!(
        (cs.balance, cs.total_claimed, cs.refund_nonce),
        (3_000, 3_000, U256::from(1))
    );
    let [p0, r0, e0] = before.0[..] else {
        unreachable!()
    };
    assert_eq!(env.balances(me).await, (p0 + 7_000, r0, e0 - 7_000));
    assert_eq!(
        env.reader
            .receiver_state(env.receiver, env.token)
            .await
            .unwrap()
            .0,
        3_000,
        "the charged 3,000 are the receiver's"
    );
    // the other channel was never touched
    assert_eq!(chain_view(&env, me, &ids).await.1[1], before.1[1]);
    served.shutdown().await;
}

#[tokio::test]
async fn claims_are_refused_whole_unless_every_row_is_a_valid_payer_voucher() {
    let env = Env::start().await;
    let served = Served::start(env.facilitator()).await;
    let client = served.client();
    let req = env.requirements();
    let (pa, mut a) = env.payer(83, 50_000).await;
    env.fund(&pa, &mut a, 8_000).await;
    let (pb, mut b) = env.payer(84, 50_000).await;
    env.fund(&pb, &mut b, 6_000).await;
    let attacker = env.key(Role::Payer(9));
    let ids = [a.channel_id, b.channel_id];
    let before = chain_view(&env, pa.address(), &ids).await;
    let settle = async |p: BatchPayload| client.settle(&env.envelope(p), &req).await.unwrap();

    // one forged row (B's voucher signed by the attacker): the whole batch is refused, naming it
    let s = settle(claim(vec![
        row(&env, &a, &pa, 2_000, 2_000),
        row(&env, &b, &attacker, 6_000, 6_000),
    ]))
    .await;
    refused_with(&s, ErrorCode::VoucherSignature, "claim row 1");
    assert!(s.error_message.unwrap().contains(&b.channel_id.to_string()));
    // a row claiming more than its voucher's ceiling (signed 1,000, claims 6,000)
    refused_with(
        &settle(claim(vec![
            row(&env, &a, &pa, 2_000, 2_000),
            row(&env, &b, &pb, 1_000, 6_000),
        ]))
        .await,
        ErrorCode::ClaimPayload,
        "claim row 1",
    );
    // a row whose ceiling was raised after the payer signed it (signed 1,000, says 6,000)
    let mut raised = row(&env, &b, &pb, 1_000, 1_000);
    raised.voucher.max_claimable_amount = 6_000;
    raised.total_claimed = 6_000;
    refused_with(
        &settle(claim(vec![raised])).await,
        ErrorCode::VoucherSignature,
        "claim row 0",
    );
    // a row with a garbage signature
    let mut garbage = row(&env, &a, &pa, 2_000, 2_000);
    garbage.signature = alloy::primitives::Bytes::from_static(&[1, 2, 3]);
    refused_with(
        &settle(claim(vec![garbage])).await,
        ErrorCode::VoucherSignature,
        "claim row 0",
    );
    assert_eq!(
        chain_view(&env, pa.address(), &ids).await,
        before,
        "refusals moved nothing"
    );

    // the genuine batch: both rows claimed in one transaction
    let s = settle(claim(vec![
        row(&env, &a, &pa, 2_000, 2_000),
        row(&env, &b, &pb, 1_500, 1_500),
    ]))
    .await;
    tx_of(&s);
    assert_eq!(env.state(a.channel_id).await.total_claimed, 2_000);
    assert_eq!(env.state(b.channel_id).await.total_claimed, 1_500);
    assert_eq!(
        env.reader
            .receiver_state(env.receiver, env.token)
            .await
            .unwrap(),
        (3_500, 0)
    );
    served.shutdown().await;
}

#[tokio::test]
async fn deposits_are_relayed_only_for_allowed_receivers_and_from_the_minimum() {
    let env = Env::start().await;
    let req = env.requirements();
    let (payer, mut pc) = env.payer(85, 50_000).await;
    let me = payer.address();
    let before = chain_view(&env, me, &[pc.channel_id]).await;
    let with = |config: FacilitatorConfig, key: Option<LocalSigner>| {
        env.facilitator_config(MemStore::new(), key, config)
    };

    // a minimum of 5,000: a 1,000 deposit is dust
    let strict = Served::start(with(
        FacilitatorConfig {
            min_deposit: 5_000,
            ..FacilitatorConfig::default()
        },
        Some(env.authorizer()),
    ))
    .await;
    let dust = env.envelope(BatchPayload::Deposit(env.deposit(
        &mut pc.clone(),
        &payer,
        1_000,
        1,
    )));
    let c = strict.client();
    let v = c.verify(&dust, &req).await.unwrap();
    assert_eq!(refused(&v), ErrorCode::DepositBelowMinDeposit);
    refused_with(
        &c.settle(&dust, &req).await.unwrap(),
        ErrorCode::DepositBelowMinDeposit,
        "minimum of 5000",
    );

    // an allow-list without this receiver, and a keyless facilitator with no list
    let listed = Served::start(with(
        FacilitatorConfig {
            deposit_receivers: vec![Address::repeat_byte(0x77)],
            ..FacilitatorConfig::default()
        },
        Some(env.authorizer()),
    ))
    .await;
    let keyless = Served::start(with(FacilitatorConfig::default(), None)).await;
    let deposit = env.envelope(BatchPayload::Deposit(env.deposit(
        &mut pc.clone(),
        &payer,
        10_000,
        2,
    )));
    for (served, needle) in [
        (&listed, "does not relay deposits for the receiver"),
        (&keyless, "receiverAuthorizer is its own key"),
    ] {
        let c = served.client();
        assert_eq!(
            refused(&c.verify(&deposit, &req).await.unwrap()),
            ErrorCode::ReceiverMismatch
        );
        refused_with(
            &c.settle(&deposit, &req).await.unwrap(),
            ErrorCode::ReceiverMismatch,
            needle,
        );
    }
    assert_eq!(
        chain_view(&env, me, &[pc.channel_id]).await,
        before,
        "refusals moved nothing"
    );

    // the same deposit above the minimum, for an allowed receiver (the held key's channels), goes
    // through; so does one through a facilitator that lists this receiver
    let s = c.settle(&deposit, &req).await.unwrap();
    tx_of(&s);
    assert_eq!(env.state(pc.channel_id).await.balance, 10_000);
    let listing = Served::start(with(
        FacilitatorConfig {
            deposit_receivers: vec![env.receiver],
            min_deposit: 5_000,
            ..FacilitatorConfig::default()
        },
        None,
    ))
    .await;
    let top_up = env.envelope(BatchPayload::Deposit(
        env.deposit(&mut pc, &payer, 5_000, 3),
    ));
    tx_of(&listing.client().settle(&top_up, &req).await.unwrap());
    assert_eq!(env.state(pc.channel_id).await.balance, 15_000);
    assert_eq!(env.balances(me).await.0, before.0[0] - 15_000);
    for s in [strict, listed, keyless, listing] {
        s.shutdown().await;
    }
}
