//! A provider's own axum app with paychan's payment layer on one route.
//!
//! ```sh
//! paychan dev                      # a dev chain with paychan's contracts, in another terminal
//! PAYCHAN_ASSET=0x… PAYCHAN_PAY_TO=0x… PAYCHAN_RECEIVER_AUTHORIZER=0x… \
//!     cargo run -p paychan-server --example paid_axum
//! curl -i -X POST http://127.0.0.1:4021/v1/answer   # 402 with the offer
//! ```
//!
//! `POST /v1/answer` costs at most `PAYCHAN_PRICE` (default 1000 atomic units) and is charged
//! what the handler says (a [`Charge`] extension); `GET /health` is a free route; anything else
//! is `404`, even if the app had a handler for it. The engine keeps channel state in sled under
//! `PAYCHAN_DATA_DIR` (default `./paid-axum-data`) and reads the chain at `PAYCHAN_RPC_URL`
//! (default `http://127.0.0.1:8545`, chain `PAYCHAN_CHAIN_ID`, default 31337). This example has no
//! facilitator, so payers open their channels on chain themselves; `paychan serve` shows the
//! whole set-up (facilitator, settlement, control plane).

#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use axum::{
    Router,
    response::IntoResponse,
    routing::{get, post},
};
use paychan_chain::{ChainConfig, ChainReader};
use paychan_core::{
    Network,
    batch::{BatchDomain, BatchExtra, BatchRequirements, canonical},
};
use paychan_engine::{Engine, EngineConfig, NoFacilitator};
use paychan_server::{
    Charge, PaidOptions, PaidRoute, PaidState, PaymentLayer, Pricing, RoutePattern,
};
use paychan_store::{SledStore, SledStoreConfig};

fn env(name: &str, default: Option<&str>) -> String {
    std::env::var(name)
        .ok()
        .or_else(|| default.map(str::to_owned))
        .unwrap_or_else(|| panic!("set {name}"))
}

/// The handler prices its own answer: 1 unit a byte, within the route's maximum.
async fn answer() -> impl IntoResponse {
    let text = "forty-two";
    let mut resp = text.into_response();
    resp.extensions_mut().insert(Charge(text.len() as u128));
    resp
}

#[tokio::main]
async fn main() {
    let rpc = env("PAYCHAN_RPC_URL", Some("http://127.0.0.1:8545"));
    let chain_id: u64 = env("PAYCHAN_CHAIN_ID", Some("31337")).parse().unwrap();
    let offer = BatchRequirements {
        network: Network::eip155(chain_id),
        chain_id,
        amount: env("PAYCHAN_PRICE", Some("1000")).parse().unwrap(),
        asset: env("PAYCHAN_ASSET", None).parse().unwrap(),
        pay_to: env("PAYCHAN_PAY_TO", None).parse().unwrap(),
        max_timeout_seconds: 300,
        extra: BatchExtra {
            receiver_authorizer: env("PAYCHAN_RECEIVER_AUTHORIZER", None).parse().unwrap(),
            withdraw_delay: 900,
            name: env("PAYCHAN_ASSET_NAME", Some("USD Coin")),
            version: env("PAYCHAN_ASSET_VERSION", Some("2")),
            asset_transfer_method: None,
            channel_state: None,
            voucher_state: None,
        },
    };
    let store = SledStore::open(SledStoreConfig::new(env(
        "PAYCHAN_DATA_DIR",
        Some("./paid-axum-data"),
    )))
    .unwrap();
    let reader = ChainReader::connect(ChainConfig::new(&rpc, chain_id))
        .await
        .unwrap();
    let domain = BatchDomain::new(chain_id, canonical::ESCROW);
    let engine = Engine::new(EngineConfig::new(domain), store, reader, NoFacilitator);

    let state = PaidState::with_options(
        engine,
        vec![PaidRoute {
            method: Some(http::Method::POST),
            path: "/v1/answer".into(),
            offer,
            description: Some("an answer".into()),
            mime_type: Some("text/plain".into()),
            pricing: Pricing::Fixed,
        }],
        PaidOptions {
            free_routes: vec![RoutePattern {
                method: Some(http::Method::GET),
                path: "/health".into(),
            }],
            ..PaidOptions::default()
        },
    );
    let app = Router::new()
        .route("/v1/answer", post(answer))
        .route("/health", get(|| async { "ok" }))
        .layer(PaymentLayer::new(state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:4021")
        .await
        .unwrap();
    println!("paid app on http://{}", listener.local_addr().unwrap());
    axum::serve(listener, app).await.unwrap();
}
