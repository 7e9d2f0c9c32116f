//! Their client pays our server: the x402 reference client (`@x402/fetch` + the batch-settlement
//! client scheme, `tests/interop/reference-client.mjs`) pays a paychan server (engine + paychan's
//! facilitator in-process + the demo upstream, whose prices vary per request). Its first request
//! opens the channel with an ERC-3009 deposit, the others pay by voucher, and it ends with a
//! cooperative refund. Then this test checks the engine's records and the chain, to the unit.

use std::sync::Arc;

use alloy::primitives::U256;
use paychan_bindings::BatchSettlement;
use paychan_chain::{ChainConfig, ChainReader, Relayer, TxKey};
use paychan_core::{batch::BatchDomain, sig::LocalSigner};
use paychan_devchain::{DevChain, ESCROW, Role};
use paychan_engine::{Engine, EngineConfig};
use paychan_facilitator::{Facilitator, FacilitatorConfig};
use paychan_server::{PaidRoute, PaidState, Upstream, app, demo::DemoConfig, serve};
use paychan_store::{SledStore, SledStoreConfig, Store};

use crate::node::{amount, field, run_script};

const PRICE: u128 = 10_000;
const REQUESTS: u128 = 6;

#[tokio::test]
async fn the_reference_client_pays_a_paychan_server() {
    let chain = Arc::new(DevChain::start().await.unwrap());
    let domain = BatchDomain::new(chain.chain_id(), ESCROW);
    let offer = chain.offer(PRICE);
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(SledStoreConfig::new(dir.path().join("store"))).unwrap();
    let reader = ChainReader::connect(ChainConfig::dev(chain.rpc_url()))
        .await
        .unwrap();
    let relayer = Relayer::new(
        reader.clone(),
        store.clone(),
        TxKey::from_secret(&chain.account(Role::Relayer).key).unwrap(),
    );
    let authorizer = LocalSigner::from_bytes(&chain.account(Role::ReceiverAuthorizer).key).unwrap();
    // The facilitator relays deposits into this server's channels only.
    let facilitator = Facilitator::with_config(
        reader.clone(),
        relayer,
        None,
        FacilitatorConfig {
            deposit_receivers: vec![offer.pay_to],
            ..FacilitatorConfig::default()
        },
    )
    .unwrap();
    let mut ecfg = EngineConfig::new(domain);
    ecfg.receiver_authorizer = Some(authorizer);
    let engine = Engine::new(ecfg, store.clone(), reader, facilitator);
    let routes = vec![PaidRoute {
        method: None,
        path: "/v1/*".into(),
        offer: offer.clone(),
        description: Some("demo inference".into()),
        mime_type: None,
        pricing: Default::default(),
    }];
    let router = app(
        PaidState::new(engine.clone(), routes),
        Upstream::Demo(DemoConfig {
            price_per_token: 37,
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, router, async {
        let _ = stopped.await;
    }));

    let payer = chain.account(Role::Payer(1));
    let token = chain.contracts().token;
    let payer_before = chain.token_balance(payer.address).await.unwrap();
    let escrow_before = chain.token_balance(ESCROW).await.unwrap();

    let env = [
        ("PAYCHAN_URL", url.clone()),
        ("PAYCHAN_RPC_URL", chain.rpc_url().to_owned()),
        ("PAYCHAN_CHAIN_ID", chain.chain_id().to_string()),
        ("PAYCHAN_TOKEN", token.to_checksum(None)),
        ("PAYCHAN_PAYER_KEY", payer.key.to_string()),
        ("PAYCHAN_REQUESTS", REQUESTS.to_string()),
        ("PAYCHAN_PRICE", PRICE.to_string()),
    ];
    let summary = run_script("reference-client.mjs", &env, &[]).await;
    let charged = amount(&summary, "charged");
    let deposited = amount(&summary, "deposited");
    let refunded = amount(&summary, "refunded");
    assert!(
        charged > 0 && charged < REQUESTS * PRICE,
        "dynamic prices: {charged}"
    );
    assert_eq!(deposited - refunded, charged);
    let channel_id: alloy::primitives::B256 = field(&summary, &["channelId"])
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // The engine recorded exactly what the client was told.
    let rec = store
        .channel(channel_id)
        .await
        .unwrap()
        .expect("the channel is in paychan's store");
    assert_eq!(rec.charged, charged);
    assert_eq!(rec.config.payer, payer.address);
    assert_eq!(
        engine
            .metrics()
            .deposits
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        engine
            .metrics()
            .refunds
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // The chain agrees: the refund claimed the charges first, then returned the rest.
    let escrow = BatchSettlement::new(ESCROW, chain.provider());
    let ch = escrow.channels(channel_id).call().await.unwrap();
    assert_eq!((ch.balance, ch.totalClaimed), (charged, charged));
    assert_eq!(
        escrow.refundNonce(channel_id).call().await.unwrap(),
        U256::from(1)
    );
    assert_eq!(
        chain.token_balance(payer.address).await.unwrap(),
        payer_before - U256::from(charged)
    );
    assert_eq!(
        chain.token_balance(ESCROW).await.unwrap(),
        escrow_before + U256::from(charged)
    );
    assert_eq!(rec.onchain.total_claimed, charged);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
