//! Their client pays our server: the x402 reference client (`@x402/fetch` + the batch-settlement
//! client scheme, `tests/interop/reference-client.mjs`) pays a paychan server (engine + paychan's
//! facilitator in-process + the demo upstream, whose prices vary per request). Its first request
//! opens the channel with an ERC-3009 deposit, the others pay by voucher, and it ends with a
//! cooperative refund. Then this test checks the engine's records and the chain, to the unit.
//! A second test has it pay a streamed per-token route, whose charges are HTTP trailers.

use alloy::primitives::U256;
use axum::{Json, Router, body::Body, http::header, response::IntoResponse, routing::post};
use paychan_bindings::BatchSettlement;
use paychan_devchain::{ESCROW, Role};
use paychan_server::{Fallback, Pricing, TokenPrices, Upstream, demo::DemoConfig};
use paychan_store::Store;
use serde_json::{Value, json};

use crate::{
    node::{amount, field, run_script},
    paid_server::PaidServer,
};

const PRICE: u128 = 10_000;
const REQUESTS: u128 = 6;

#[tokio::test]
async fn the_reference_client_pays_a_paychan_server() {
    let s = PaidServer::start(
        PRICE,
        "/v1/chat/completions",
        Pricing::Fixed,
        Upstream::Demo(DemoConfig {
            price_per_token: 37,
        }),
    )
    .await;
    let (chain, store, engine, url) = (&s.chain, &s.store, &s.engine, s.url.clone());

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

    s.stop().await;
}

/// An OpenAI-compatible stand-in: a streamed chat answer of five content chunks, with the usage
/// chunk when asked (`stream_options.include_usage`), as vLLM sends it.
async fn streamed_chat(Json(req): Json<Value>) -> axum::response::Response {
    let input = req["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .split_whitespace()
        .count();
    let mut events: Vec<String> = (0..5)
        .map(|i| json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": format!("w{i} ")}}]}).to_string())
        .collect();
    if req["stream_options"]["include_usage"] == true {
        events.push(json!({"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": input, "completion_tokens": 5, "total_tokens": input + 5}}).to_string());
    }
    events.push("[DONE]".into());
    let body = events
        .into_iter()
        .map(|e| Ok::<_, std::io::Error>(bytes::Bytes::from(format!("data: {e}\n\n"))));
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(futures_util::stream::iter(body)),
    )
        .into_response()
}

#[tokio::test]
async fn the_reference_client_pays_a_streamed_per_token_route() {
    const PRICES: TokenPrices = TokenPrices {
        input: 3,
        output: 11,
        fixed: 50,
        fallback: Fallback::Max,
    };
    let s = PaidServer::start(
        PRICE,
        "/v1/chat/completions",
        Pricing::PerToken(PRICES),
        Upstream::Router(Router::new().route("/v1/chat/completions", post(streamed_chat))),
    )
    .await;
    let env = [
        ("PAYCHAN_URL", s.url.clone()),
        ("PAYCHAN_RPC_URL", s.chain.rpc_url().to_owned()),
        ("PAYCHAN_CHAIN_ID", s.chain.chain_id().to_string()),
        ("PAYCHAN_TOKEN", s.chain.contracts().token.to_checksum(None)),
        (
            "PAYCHAN_PAYER_KEY",
            s.chain.account(Role::Payer(3)).key.to_string(),
        ),
        ("PAYCHAN_REQUESTS", REQUESTS.to_string()),
        ("PAYCHAN_PRICE", PRICE.to_string()),
        ("PAYCHAN_STREAM", "1".into()),
    ];
    let summary = run_script("reference-client.mjs", &env, &[]).await;
    // request i's prompt is "request {i}: " and 7·i words: 2 + 7·i input tokens, 5 output
    let expected: u128 = (0..REQUESTS)
        .map(|i| PRICES.fixed + PRICES.input * (2 + 7 * i) + PRICES.output * 5)
        .sum();
    assert_eq!(amount(&summary, "charged"), expected);
    let channel_id: alloy::primitives::B256 = field(&summary, &["channelId"])
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let rec = s.store.channel(channel_id).await.unwrap().unwrap();
    assert_eq!(rec.charged, expected);
    assert_eq!(rec.onchain.total_claimed, expected, "the refund claimed it");
    s.stop().await;
}
