//! `paychan serve` killed with SIGKILL in the middle of paid streams, then restarted on the same
//! store: every chunk charged before the kill is still charged, the stream in flight costs
//! nothing more, and the payer goes on with its next voucher without any correction.
//! Streams of both modes: a per-token stream (charged at its end) and a chunked one (a voucher a
//! chunk, each chunk committed as it ends).

#![allow(clippy::unwrap_used, clippy::print_stdout, unreachable_pub)]

mod support;

use std::time::Duration;

use alloy_primitives::{B256, U256};
use axum::{Json, Router, body::Body, http::header, response::IntoResponse, routing::post};
use http_body_util::BodyExt;
use paychan_core::{
    batch::{
        BatchDomain, BatchPayload, BatchRequirements,
        payer::{PayerChannel, channel_config_for},
    },
    codec,
    sig::LocalSigner,
    x402::{PaymentPayload, X402_VERSION},
};
use paychan_devchain::{DevChain, ESCROW};
use paychan_store::{SledStore, SledStoreConfig, Store};
use serde_json::{Value, json};
use support::start_server;

const PRICE: u128 = 10_000;
const DEPOSIT: u128 = 1_000_000;

/// An OpenAI-style stream of `n` content chunks, 30 ms apart, with usage when asked.
async fn slow_stream(Json(req): Json<Value>) -> axum::response::Response {
    let n = req["n"].as_u64().unwrap();
    let usage = req["stream_options"]["include_usage"] == true;
    let body = futures_util::stream::unfold(0u64, move |i| async move {
        if i > n + 1 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        let e = if i < n {
            json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "w "}}]}).to_string()
        } else if i == n && usage {
            json!({"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": n}}).to_string()
        } else {
            "[DONE]".to_owned()
        };
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from(format!("data: {e}\n\n"))),
            i + 1,
        ))
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

fn header_for(
    domain: &BatchDomain,
    offer: &BatchRequirements,
    pc: &mut PayerChannel,
    payer: &LocalSigner,
) -> String {
    let v = pc.voucher_payload(domain, payer, offer.amount).unwrap();
    codec::encode(&PaymentPayload {
        x402_version: X402_VERSION,
        resource: None,
        accepted: offer.to_generic(),
        payload: BatchPayload::Voucher(v),
        extensions: None,
    })
}

/// Reads `body` until `needle` has been seen `times` times.
async fn read_until(body: &mut reqwest::Body, needle: &str, times: usize) -> String {
    let mut text = String::new();
    while text.matches(needle).count() < times {
        let f = body.frame().await.unwrap().unwrap();
        if let Ok(d) = f.into_data() {
            text.push_str(std::str::from_utf8(&d).unwrap());
        }
    }
    text
}

async fn open(url: &str, header: String, body: Value) -> reqwest::Body {
    let r = reqwest::Client::new()
        .post(url)
        .header("PAYMENT-SIGNATURE", header)
        .header("TE", "trailers")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r: http::Response<reqwest::Body> = r.into();
    r.into_body()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_stream_keeps_every_charged_chunk_and_charges_nothing_more() {
    let chain = DevChain::start().await.unwrap();
    let domain = BatchDomain::new(chain.chain_id(), ESCROW);
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", upstream.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/chat/completions", post(slow_stream))
        .route("/v1/long", post(slow_stream));
    tokio::spawn(async move { axum::serve(upstream, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("paychan.toml");
    support::ServeConfig::new(&chain)
        .top(&format!(
            "upstream = \"{upstream_url}\"\noperator_listen = \"off\""
        ))
        .table(&format!(
            r#"[[route]]
path = "/v1/chat/completions"
method = "POST"
price = "{PRICE}"
per_token = {{ input = "1", output = "100" }}"#
        ))
        .table(&format!(
            r#"[[route]]
path = "/v1/long"
method = "POST"
price = "{PRICE}"
per_chunk = {{ tokens = 5, voucher_wait_secs = 30 }}"#
        ))
        .write(&config);
    let offer = chain.offer(PRICE);
    let mut channels = Vec::new();
    for i in 0..2u64 {
        let payer = chain.funded_payer(4_000 + i, DEPOSIT).await.unwrap();
        let cfg = channel_config_for(
            &offer,
            payer.address(),
            payer.address(),
            B256::from(U256::from(i)),
        );
        chain.deposit(&payer, &cfg, DEPOSIT).await.unwrap();
        channels.push((payer, PayerChannel::from_chain(&domain, cfg, DEPOSIT, 0)));
    }
    let [(p1, mut c1), (p2, mut c2)] = <[_; 2]>::try_from(channels).ok().unwrap();

    let mut server = start_server(&config);
    // a per-token stream, half delivered
    let mut tok = open(
        &format!("{}/v1/chat/completions", server.url),
        header_for(&domain, &offer, &mut c1, &p1),
        json!({"messages": [{"role": "user", "content": "hi"}], "stream": true, "n": 40}),
    )
    .await;
    read_until(&mut tok, "\"content\"", 10).await;
    // a chunked stream: one chunk paid and renewed, then killed inside the second
    let mut long = open(
        &format!("{}/v1/long", server.url),
        header_for(&domain, &offer, &mut c2, &p2),
        json!({"stream": true, "n": 40}),
    )
    .await;
    let text = read_until(&mut long, "x402-voucher-needed", 1).await;
    assert_eq!(text.matches("\"content\"").count(), 5);
    let r = reqwest::Client::new()
        .post(format!("{}/x402/voucher/{}", server.url, c2.channel_id))
        .header("PAYMENT-SIGNATURE", {
            // the first chunk is charged in full: the next ceiling is two chunks
            c2.charged = PRICE;
            header_for(&domain, &offer, &mut c2, &p2)
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    read_until(&mut long, "x402-voucher-accepted", 1).await;
    read_until(&mut long, "\"content\"", 2).await;

    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    // both streams end with an error for their clients
    assert!(
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match tok.frame().await {
                    Some(Ok(_)) => {}
                    Some(Err(_)) => return true,
                    None => return false,
                }
            }
        })
        .await
        .unwrap()
    );

    {
        let store = SledStore::open(SledStoreConfig::new(dir.path().join("store"))).unwrap();
        let charged = |id| {
            let store = store.clone();
            async move { store.channel(id).await.unwrap().map_or(0, |r| r.charged) }
        };
        // the per-token stream never ended: nothing charged; the chunked one: its first chunk
        assert_eq!(charged(c1.channel_id).await, 0);
        assert_eq!(charged(c2.channel_id).await, PRICE);
    }

    // after a restart both payers go on from there with no correction
    let server = start_server(&config);
    c1.charged = 0;
    c2.charged = PRICE;
    for (path, c, p) in [
        ("/v1/chat/completions", &mut c1, &p1),
        ("/v1/long", &mut c2, &p2),
    ] {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", server.url))
            .header("PAYMENT-SIGNATURE", header_for(&domain, &offer, c, p))
            .header("TE", "trailers")
            .json(&json!({"messages": [{"role": "user", "content": "hi"}], "stream": true, "n": 3}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.bytes().await.unwrap();
    }
    drop(server);
    let store = SledStore::open(SledStoreConfig::new(dir.path().join("store"))).unwrap();
    // per token: 1 input + 3 output × 100; chunked: 3 of 5 units of a chunk
    assert_eq!(
        store.channel(c1.channel_id).await.unwrap().unwrap().charged,
        301
    );
    assert_eq!(
        store.channel(c2.channel_id).await.unwrap().unwrap().charged,
        PRICE + 3 * PRICE / 5
    );
}
