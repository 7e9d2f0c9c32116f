//! paychan's engine with this facilitator in-process: a deposit opens the channel through the
//! facilitator and the request is charged; a refund claims and refunds on chain.

use alloy::providers::Provider;
use paychan_bindings::BatchSettlement;
use paychan_core::batch::BatchPayload;
use paychan_engine::{Begin, Engine, EngineConfig, charged_amount};
use paychan_store::MemStore;

use crate::support::*;

#[tokio::test]
async fn engine_serves_a_deposit_and_a_refund_through_the_facilitator() {
    let env = Env::start().await;
    // the server holds no receiver-authorizer key: the facilitator signs claim and refund
    let facilitator = env.facilitator();
    let engine = Engine::new(
        EngineConfig::new(env.domain),
        MemStore::new(),
        env.reader.clone(),
        facilitator,
    );
    let (payer, mut pc) = env.payer(50, 50_000).await;
    let me = payer.address();
    let (p0, r0, e0) = env.balances(me).await;

    // a deposit payload: the channel is opened on chain, then the request is served and charged
    let d = env.deposit(&mut pc, &payer, 10_000, 1);
    let Begin::Serve(ticket) = engine
        .begin(&env.envelope(BatchPayload::Deposit(d)), &env.offer)
        .await
        .unwrap()
    else {
        panic!("a deposit pays for a request")
    };
    assert_eq!(env.state(pc.channel_id).await.balance, 10_000);
    let resp = engine.commit(ticket, PRICE).await.unwrap();
    assert!(
        resp.transaction.starts_with("0x") && resp.transaction.len() == 66,
        "{resp:?}"
    );
    assert_eq!(resp.amount.as_deref(), Some("10000"));
    assert_eq!(charged_amount(&resp), Some(PRICE));
    assert_eq!(
        pc.apply_response(&resp, PRICE, Some(10_000)).unwrap(),
        PRICE
    );
    assert_eq!(env.balances(me).await, (p0 - 10_000, r0, e0 + 10_000));

    // two more requests by voucher (local checks, nothing on chain)
    for _ in 0..2 {
        let v = pc.voucher_payload(&env.domain, &payer, PRICE).unwrap();
        let Begin::Serve(t) = engine
            .begin(&env.envelope(BatchPayload::Voucher(v)), &env.offer)
            .await
            .unwrap()
        else {
            panic!("a voucher pays for a request")
        };
        let resp = engine.commit(t, PRICE).await.unwrap();
        pc.apply_response(&resp, PRICE, None).unwrap();
    }
    assert_eq!(pc.charged, 3_000);
    assert_eq!(env.state(pc.channel_id).await.total_claimed, 0);

    // a refund payload: the 3000 charged are claimed and the 7000 left refunded, in one tx
    let r = pc.refund_payload(&env.domain, &payer, None).unwrap();
    let Begin::Done(resp) = engine
        .begin(&env.envelope(BatchPayload::Refund(r)), &env.offer)
        .await
        .unwrap()
    else {
        panic!("a refund is a payment operation")
    };
    assert!(resp.success, "{resp:?}");
    assert_eq!(resp.amount.as_deref(), Some("7000"));
    let tx = tx_of(&resp);
    let receipt = env
        .chain
        .provider()
        .get_transaction_receipt(tx)
        .await
        .unwrap()
        .unwrap();
    let claimed = receipt
        .logs()
        .iter()
        .filter_map(|l| l.log_decode::<BatchSettlement::Claimed>().ok())
        .map(|l| l.inner.data.newTotalClaimed)
        .collect::<Vec<_>>();
    assert_eq!(claimed, vec![3_000]);
    let s = env.state(pc.channel_id).await;
    assert_eq!(
        (s.balance, s.total_claimed, s.refund_nonce.to::<u64>()),
        (3_000, 3_000, 1)
    );
    // the payer paid exactly the charges; the escrow keeps them, claimed for the receiver
    assert_eq!(env.balances(me).await, (p0 - 3_000, r0, e0 + 3_000));
    assert_eq!(
        env.reader
            .receiver_state(env.receiver, env.token)
            .await
            .unwrap(),
        (3_000, 0)
    );
    let rec = engine.channel(pc.channel_id).await.unwrap().unwrap();
    assert_eq!((rec.charged, rec.onchain.balance), (3_000, 3_000));
}

#[tokio::test]
async fn a_deposit_left_pending_is_served_when_retried_after_it_is_mined() {
    use alloy::providers::ext::AnvilApi;
    use paychan_chain::{ChainConfig, ChainReader, Relayer, TxKey};
    use paychan_core::ErrorCode;
    let env = Env::start().await;
    let config = ChainConfig {
        confirm_timeout: Some(std::time::Duration::from_millis(500)),
        ..Env::config_for(env.chain.rpc_url())
    };
    let reader = ChainReader::connect(config).await.unwrap();
    let relayer = Relayer::new(
        reader.clone(),
        MemStore::new(),
        TxKey::from_secret(&env.chain.account(paychan_devchain::Role::Relayer).key).unwrap(),
    );
    let facilitator = paychan_facilitator::Facilitator::with_config(
        reader.clone(),
        relayer,
        None,
        paychan_facilitator::FacilitatorConfig {
            deposit_receivers: vec![env.receiver],
            ..Default::default()
        },
    )
    .unwrap();
    let engine = Engine::new(
        EngineConfig::new(env.domain),
        MemStore::new(),
        reader,
        facilitator,
    );
    let (payer, mut pc) = env.payer(71, 50_000).await;
    let me = payer.address();
    let (p0, r0, e0) = env.balances(me).await;
    let dep = env.envelope(BatchPayload::Deposit(
        env.deposit(&mut pc, &payer, 20_000, 1),
    ));

    // the chain stops mining: the engine answers settlement_pending and serves nothing
    let provider = env.chain.provider();
    provider.anvil_set_auto_mine(false).await.unwrap();
    let d = engine.begin(&dep, &env.offer).await.unwrap_err();
    assert_eq!(d.rejection.code, ErrorCode::SettlementPending);
    assert!(d.rejection.code.is_retryable());

    // mined: the same payment, retried, is reconciled and served (the deposit counted once)
    provider.anvil_mine(Some(1), None).await.unwrap();
    provider.anvil_set_auto_mine(true).await.unwrap();
    let Begin::Serve(ticket) = engine.begin(&dep, &env.offer).await.unwrap() else {
        panic!("the reconciled deposit pays for the request")
    };
    let resp = engine.commit(ticket, PRICE).await.unwrap();
    assert_eq!(resp.amount.as_deref(), Some("20000"));
    assert_eq!(
        pc.apply_response(&resp, PRICE, Some(20_000)).unwrap(),
        PRICE
    );
    assert_eq!(env.balances(me).await, (p0 - 20_000, r0, e0 + 20_000));
    assert_eq!(env.state(pc.channel_id).await.balance, 20_000);
}
