//! Paid requests over HTTP.

use paychan_core::{
    ErrorCode,
    batch::BatchRequirements,
    codec,
    x402::{PaymentRequired, SettlementResponse},
};
use paychan_server::{Upstream, demo::DemoConfig, proxy::Proxy};
use paychan_store::Store;

use crate::support::*;

fn chat(prompt: &str) -> serde_json::Value {
    serde_json::json!({"model": "paychan-demo", "messages": [{"role": "user", "content": prompt}]})
}

fn demo() -> Upstream {
    Upstream::Demo(DemoConfig {
        price_per_token: 100,
    })
}

fn required(resp: &reqwest::Response) -> PaymentRequired {
    codec::decode(
        resp.headers()
            .get("payment-required")
            .unwrap()
            .to_str()
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn unpaid_requests_get_the_offer_and_free_routes_stay_free() {
    let s = Server::start(demo).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&chat("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    // a 402 is this request's payment state: never cached
    assert_eq!(r.headers()["cache-control"], "no-store");
    let pr = required(&r);
    assert_eq!(pr.x402_version, 2);
    assert!(pr.error.is_none());
    assert_eq!(
        BatchRequirements::from_generic(&pr.accepts[0]).unwrap(),
        s.offer
    );
    assert_eq!(pr.resource.unwrap().url, "/v1/chat/completions");
    let body: PaymentRequired = r.json().await.unwrap();
    assert_eq!(body.accepts.len(), 1);
    let h = http
        .get(format!("{}/_paychan/health", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn paid_requests_are_charged_what_the_upstream_says_up_to_the_maximum() {
    let s = Server::start(demo).await;
    let http = reqwest::Client::new();
    let (payer, mut pc) = s.funded_channel(1, 1_000_000).await;
    let mut total = 0u128;
    for prompt in [
        "hello",
        "a much longer prompt to cost more tokens than the first one",
        &"x".repeat(4_000),
    ] {
        let h = s.voucher_header(&mut pc, &payer);
        let r = http
            .post(format!("{}/v1/chat/completions", s.url))
            .header("PAYMENT-SIGNATURE", h)
            .json(&chat(prompt))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers().get("x-paychan-charge").is_none(),
            "price header must not leak"
        );
        let sr: SettlementResponse = codec::decode(
            r.headers()
                .get("payment-response")
                .unwrap()
                .to_str()
                .unwrap(),
        )
        .unwrap();
        let charged = pc.apply_response(&sr, PRICE, None).unwrap();
        let body: serde_json::Value = r.json().await.unwrap();
        let tokens = body["usage"]["total_tokens"].as_u64().unwrap();
        assert_eq!(charged, (u128::from(tokens) * 100).min(PRICE));
        total += charged;
    }
    assert_eq!(total, pc.charged);
    assert_eq!(
        s.engine
            .store()
            .channel(pc.channel_id)
            .await
            .unwrap()
            .unwrap()
            .charged,
        total
    );
    assert!(
        total > 0 && total < 3 * PRICE,
        "the long prompt is capped, the short ones are not"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_failed_upstream_charges_nothing_and_the_voucher_stays_good() {
    let s = Server::start(demo).await;
    let http = reqwest::Client::new();
    let (payer, mut pc) = s.funded_channel(2, 1_000_000).await;
    let h = s.voucher_header(&mut pc, &payer);
    let r = http
        .post(format!("{}/v1/fail", s.url))
        .header("PAYMENT-SIGNATURE", &h)
        .json(&chat("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("payment-response").is_none());
    assert!(
        s.engine
            .store()
            .channel(pc.channel_id)
            .await
            .unwrap()
            .is_none()
    );
    let r = http
        .post(format!("{}/v1/chat/completions", s.url))
        .header("PAYMENT-SIGNATURE", &h)
        .json(&chat("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn bad_payment_headers_get_clear_codes() {
    let s = Server::start(demo).await;
    let http = reqwest::Client::new();
    let (payer, mut pc) = s.funded_channel(3, 1_000_000).await;
    let url = format!("{}/v1/chat/completions", s.url);
    let code = |r: &reqwest::Response| required(r).error.unwrap();
    let send = |h: String| {
        http.post(&url)
            .header("PAYMENT-SIGNATURE", h)
            .json(&chat("x"))
            .send()
    };

    let r = send("not base64 !!".into()).await.unwrap();
    assert_eq!(
        (r.status().as_u16(), code(&r)),
        (402, ErrorCode::InvalidPayload.as_str().to_owned())
    );
    let r = send(codec::encode(
        &serde_json::json!({"x402Version": 1, "payload": {}}),
    ))
    .await
    .unwrap();
    assert_eq!(code(&r), ErrorCode::InvalidX402Version.as_str());
    let mut good: serde_json::Value = codec::decode(&s.voucher_header(&mut pc, &payer)).unwrap();
    good["payload"]["voucher"]["maxClaimableAmount"] = "-1".into();
    let r = send(codec::encode(&good)).await.unwrap();
    assert_eq!(code(&r), ErrorCode::VoucherPayload.as_str());
    good["payload"]["type"] = "claim".into();
    let r = send(codec::encode(&good)).await.unwrap();
    assert_eq!(code(&r), ErrorCode::PayloadType.as_str());
    let r = send("A".repeat(20_000)).await.unwrap();
    assert_eq!(code(&r), ErrorCode::InvalidPayload.as_str());
    assert!(
        r.headers()
            .get("x-paychan-error")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("limit")
    );
    let r = http
        .post(&url)
        .header("X-PAYMENT", "e30=")
        .json(&chat("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(code(&r), ErrorCode::InvalidX402Version.as_str());
    // a replayed voucher after a charge: corrective 402 with the state to resume from
    let h = s.voucher_header(&mut pc, &payer);
    assert_eq!(send(h.clone()).await.unwrap().status(), 200);
    let r = send(h).await.unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    let pr = required(&r);
    assert_eq!(
        pr.error.as_deref(),
        Some(ErrorCode::CumulativeAmountMismatch.as_str())
    );
    let corrective = BatchRequirements::from_generic(&pr.accepts[0]).unwrap();
    assert!(corrective.extra.voucher_state.is_some());
    s.stop().await;
}

#[tokio::test]
async fn proxy_mode_forwards_prices_and_an_unreachable_upstream_charges_nothing() {
    // the demo upstream on its own port, paychan proxying to it
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_url = format!("http://{}", up.local_addr().unwrap());
    let up_task = tokio::spawn(async move {
        axum::serve(
            up,
            paychan_server::demo::router(DemoConfig { price_per_token: 7 }),
        )
        .await
        .unwrap();
    });
    let target = up_url.clone();
    let s = Server::start(move || {
        Upstream::Proxy(Proxy::new(&target, std::time::Duration::from_secs(10)).unwrap())
    })
    .await;
    let http = reqwest::Client::new();
    let (payer, mut pc) = s.funded_channel(4, 1_000_000).await;
    let r = http
        .post(format!("{}/v1/chat/completions", s.url))
        .header("PAYMENT-SIGNATURE", s.voucher_header(&mut pc, &payer))
        .json(&chat("via the proxy"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sr: SettlementResponse = codec::decode(
        r.headers()
            .get("payment-response")
            .unwrap()
            .to_str()
            .unwrap(),
    )
    .unwrap();
    let charged = pc.apply_response(&sr, PRICE, None).unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        charged,
        u128::from(body["usage"]["total_tokens"].as_u64().unwrap()) * 7
    );
    up_task.abort();
    let _ = up_task.await;
    let r = http
        .post(format!("{}/v1/chat/completions", s.url))
        .header("PAYMENT-SIGNATURE", s.voucher_header(&mut pc, &payer))
        .json(&chat("nobody home"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        s.engine
            .store()
            .channel(pc.channel_id)
            .await
            .unwrap()
            .unwrap()
            .charged,
        charged
    );
    s.stop().await;
}
