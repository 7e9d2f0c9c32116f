//! A client written to the reference implementation's batch-settlement streaming protocol
//! (`tests/interop/reference-streaming-client.mjs`, on the reference packages) pays long streams
//! on a paychan route priced by chunks: a deposit opens the channel, vouchers posted mid-stream
//! to `/x402/voucher/{channelId}` renew it, the last chunk of each stream is prorated. Then this
//! test checks paychan's store and the client's figures agree to the unit.

use axum::{Json, Router, body::Body, http::header, response::IntoResponse, routing::post};
use paychan_devchain::Role;
use paychan_server::{ChunkTerms, Pricing, Upstream};
use paychan_store::Store;
use serde_json::{Value, json};

use crate::{
    node::{amount, field, run_script},
    paid_server::PaidServer,
};

const PRICE: u128 = 10_000;
const TOKENS: u64 = 10;

/// An OpenAI-style stream of `n` content chunks, then `[DONE]`.
async fn stream(Json(req): Json<Value>) -> axum::response::Response {
    let n = req["n"].as_u64().unwrap_or(0);
    let events = (0..n)
        .map(|i| {
            format!(
                "data: {}\n\n",
                json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": format!("t{i} ")}}]})
            )
        })
        .chain(std::iter::once("data: [DONE]\n\n".to_owned()))
        .map(|s| Ok::<_, std::io::Error>(bytes::Bytes::from(s)));
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(futures_util::stream::iter(events)),
    )
        .into_response()
}

#[tokio::test]
async fn a_client_of_the_reference_streaming_protocol_pays_long_streams_chunk_by_chunk() {
    let s = PaidServer::start(
        PRICE,
        "/llm/stream",
        Pricing::Chunked(ChunkTerms {
            tokens: TOKENS,
            voucher_wait_secs: 30,
        }),
        Upstream::Router(Router::new().route("/llm/stream", post(stream))),
    )
    .await;
    let (chain, store, url) = (&s.chain, &s.store, s.url.clone());
    let env = [
        ("PAYCHAN_URL", url),
        ("PAYCHAN_RPC_URL", chain.rpc_url().to_owned()),
        ("PAYCHAN_CHAIN_ID", chain.chain_id().to_string()),
        (
            "PAYCHAN_PAYER_KEY",
            chain.account(Role::Payer(2)).key.to_string(),
        ),
        ("PAYCHAN_STREAMS", "35,22".into()),
    ];
    let summary = run_script("reference-streaming-client.mjs", &env, &[]).await;
    let streams = field(&summary, &["streams"]).as_array().unwrap();
    // 35 chunks: vouchers for chunks 1–4, charged 3 chunks and a half; 22: 3 vouchers, 2.2 chunks
    let expected = [
        (35, 4, 3 * PRICE + PRICE / 2),
        (22, 3, 2 * PRICE + PRICE / 5),
    ];
    for (s, (content, vouchers, charged)) in streams.iter().zip(expected) {
        assert_eq!(s["content"], content);
        assert_eq!(s["vouchers"], vouchers);
        assert_eq!(amount(s, "charged"), charged);
    }
    let total = expected.iter().map(|e| e.2).sum::<u128>();
    assert_eq!(amount(&streams[1], "cumulative"), total);
    let channel_id: alloy::primitives::B256 = field(&summary, &["channelId"])
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let rec = store.channel(channel_id).await.unwrap().unwrap();
    assert_eq!(rec.charged, total);
    assert_eq!(rec.onchain.balance, amount(&summary, "deposited"));
    s.stop().await;
}
