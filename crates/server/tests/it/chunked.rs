//! Long streams paid chunk by chunk (`Pricing::Chunked`): vouchers posted mid-stream to
//! `/x402/voucher/{channelId}`, as the scheme's streaming examples do, against an in-process
//! OpenAI-style streaming stand-in that counts what it produced.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    http::header,
    response::{IntoResponse, Response},
    routing::post,
};
use http_body_util::BodyExt;
use paychan_core::{
    batch::{BatchPayload, ResponseExtra, payer::PayerChannel},
    codec,
    sig::LocalSigner,
    x402::{PaymentPayload, SettlementResponse, X402_VERSION},
};
use paychan_server::{ChunkTerms, PaymentLayer, Pricing, Upstream};
use paychan_store::Store;
use serde_json::{Value, json};

use crate::support::*;

const TOKENS: u64 = 10;

/// How many events the stand-in has produced (polled out of it) in all.
#[derive(Default)]
struct Produced(AtomicU64);

fn chunk(i: u64) -> String {
    format!(
        "data: {}\n\n",
        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": format!("w{i} ")}}]})
    )
}

/// `{"n": N, "delay_ms": D, "break_at": B}`: N content chunks (then `[DONE]`), D ms apart, or
/// an error in place of chunk B.
async fn stream(produced: Arc<Produced>, Json(req): Json<Value>) -> Response {
    let n = req["n"].as_u64().unwrap();
    let delay = req["delay_ms"].as_u64().unwrap_or(0);
    let break_at = req["break_at"].as_u64();
    if req["stream"] != true {
        return Json(json!({"object": "chat.completion", "choices": []})).into_response();
    }
    let body = futures_util::stream::unfold(0u64, move |i| {
        let produced = produced.clone();
        async move {
            if i > n {
                return None;
            }
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if break_at == Some(i) {
                return Some((Err(std::io::Error::other("upstream crashed")), n + 1));
            }
            produced.0.fetch_add(1, Relaxed);
            let item = if i == n {
                "data: [DONE]\n\n".to_owned()
            } else {
                chunk(i)
            };
            Some((Ok::<_, std::io::Error>(Bytes::from(item)), i + 1))
        }
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

async fn server(wait_secs: u64) -> (Server, Arc<Produced>) {
    let produced = Arc::new(Produced::default());
    let p = produced.clone();
    let router = Router::new().route("/v1/stream", post(move |body| stream(p.clone(), body)));
    let s = Server::start_priced(
        move || Upstream::Router(router),
        Pricing::Chunked(ChunkTerms {
            tokens: TOKENS,
            voucher_wait_secs: wait_secs,
        }),
    )
    .await;
    (s, produced)
}

/// One server-sent event.
#[derive(Debug)]
struct Event {
    name: String,
    data: String,
}

/// Reads a streamed answer event by event, keeping its trailers.
struct Reader {
    body: reqwest::Body,
    buf: Vec<u8>,
    trailers: Option<http::HeaderMap>,
    error: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..i + 2).collect();
                let text = String::from_utf8(raw).unwrap();
                let mut e = Event {
                    name: "message".into(),
                    data: String::new(),
                };
                for line in text.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        e.name = n.into();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        e.data = d.into();
                    }
                }
                return Some(e);
            }
            match self.body.frame().await {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => self.buf.extend_from_slice(&d),
                    Err(f) => self.trailers = f.into_trailers().ok(),
                },
                Some(Err(_)) => {
                    self.error = true;
                    return None;
                }
                None => return None,
            }
        }
    }
}

fn voucher(s: &Server, pc: &mut PayerChannel, payer: &LocalSigner, ceiling: u128) -> String {
    let v = pc.sign_voucher(&s.domain, payer, ceiling).unwrap();
    codec::encode(&PaymentPayload {
        x402_version: X402_VERSION,
        resource: None,
        accepted: s.offer.to_generic(),
        payload: BatchPayload::Voucher(paychan_core::batch::VoucherPayload {
            channel_config: pc.config,
            voucher: v,
        }),
        extensions: None,
    })
}

async fn open(s: &Server, pc: &mut PayerChannel, payer: &LocalSigner, req: Value) -> Reader {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/stream", s.url))
        .header("PAYMENT-SIGNATURE", s.voucher_header(pc, payer))
        .header("TE", "trailers")
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let r: http::Response<reqwest::Body> = r.into();
    Reader {
        body: r.into_body(),
        buf: Vec::new(),
        trailers: None,
        error: false,
    }
}

async fn post_voucher(s: &Server, channel: &str, header: Option<String>) -> reqwest::Response {
    let mut r = reqwest::Client::new().post(format!("{}/x402/voucher/{channel}", s.url));
    if let Some(h) = header {
        r = r.header("PAYMENT-SIGNATURE", h);
    }
    r.send().await.unwrap()
}

async fn stored(s: &Server, pc: &PayerChannel) -> u128 {
    s.engine
        .channel(pc.channel_id)
        .await
        .unwrap()
        .map_or(0, |r| r.charged)
}

fn json(e: &Event) -> Value {
    serde_json::from_str(&e.data).unwrap()
}

fn dec(v: &Value) -> u128 {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_long_stream_pauses_at_each_chunk_until_its_voucher_and_prorates_the_last() {
    let (s, produced) = server(10).await;
    let (payer, mut pc) = s.funded_channel(31, 100 * PRICE).await;
    let (other, _) = s.funded_channel(32, 100 * PRICE).await;
    let mut rd = open(&s, &mut pc, &payer, json!({"stream": true, "n": 35})).await;
    let (mut content, mut needed, mut accepted, mut settlement) = (0u64, 0u128, 0, None);
    while let Some(e) = rd.next().await {
        match e.name.as_str() {
            "message" if e.data.contains("chat.completion.chunk") => content += 1,
            "x402-voucher-needed" => {
                needed += 1;
                let v = json(&e);
                // the chunk went out whole, and the upstream was read no further
                assert_eq!(u128::from(content), needed * u128::from(TOKENS));
                assert_eq!(produced.0.load(Relaxed), content);
                let charged = dec(&v["chargedCumulativeAmount"]);
                assert_eq!(charged, needed * PRICE);
                assert_eq!(dec(&v["nextMaxClaimableAmount"]), charged + PRICE);
                assert_eq!(dec(&v["balance"]), 100 * PRICE);
                let id = v["channelId"].as_str().unwrap().to_owned();
                assert_eq!(id, pc.channel_id.to_string());
                assert_eq!(v["voucherEndpoint"], format!("/x402/voucher/{id}"));
                // paused: nothing more is produced while no voucher comes
                tokio::time::sleep(Duration::from_millis(150)).await;
                assert_eq!(produced.0.load(Relaxed), content);
                // a voucher above the next ceiling, and one signed by someone else, are refused
                // and the stream keeps waiting
                let r = post_voucher(
                    &s,
                    &id,
                    Some(voucher(&s, &mut pc, &payer, charged + 2 * PRICE)),
                )
                .await;
                assert_eq!(r.status(), 402);
                let r = post_voucher(&s, &id, Some(voucher(&s, &mut pc, &other, charged + PRICE)))
                    .await;
                assert_eq!(r.status(), 402);
                let r = post_voucher(&s, &id, Some(voucher(&s, &mut pc, &payer, charged + PRICE)))
                    .await;
                assert_eq!(r.status(), 200);
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["ok"], true);
                assert_eq!(dec(&body["signedMaxClaimable"]), charged + PRICE);
            }
            "x402-voucher-accepted" => {
                accepted += 1;
                let v = json(&e);
                assert_eq!(dec(&v["newChargedCumulativeAmount"]), needed * PRICE);
                assert_eq!(dec(&v["signedMaxClaimable"]), (needed + 1) * PRICE);
                assert_eq!(v["toppedUp"], false);
            }
            "x402-settlement" => settlement = Some(json(&e)),
            "x402-error" => panic!("stream error: {}", e.data),
            _ => {}
        }
    }
    assert!(!rd.error);
    assert_eq!((content, needed, accepted), (35, 3, 3));
    // three whole chunks and half of one
    let total = 3 * PRICE + PRICE / 2;
    let st = settlement.unwrap();
    assert_eq!(dec(&st["chargedCumulativeAmount"]), total);
    assert_eq!(dec(&st["signedMaxClaimable"]), 4 * PRICE);
    let trailer = rd.trailers.unwrap();
    let sr: SettlementResponse =
        codec::decode(trailer["payment-response"].to_str().unwrap()).unwrap();
    let extra: ResponseExtra = serde_json::from_value(Value::Object(sr.extra.unwrap())).unwrap();
    assert_eq!(extra.charged_amount, Some(total));
    assert_eq!(
        extra.channel_state.unwrap().charged_cumulative_amount,
        Some(total)
    );
    assert_eq!(stored(&s, &pc).await, total);
    assert_eq!(
        s.engine
            .store()
            .channel(pc.channel_id)
            .await
            .unwrap()
            .unwrap()
            .charged,
        total,
        "durable"
    );
    // the next request builds on the prorated total
    pc.charged = total;
    let rd = open(&s, &mut pc, &payer, json!({"stream": true, "n": 3})).await;
    drop(rd);
    s.stop().await;
}

#[tokio::test]
async fn without_a_voucher_the_stream_ends_charged_only_what_was_delivered() {
    let (s, produced) = server(1).await;
    let (payer, mut pc) = s.funded_channel(33, 100 * PRICE).await;
    let mut rd = open(&s, &mut pc, &payer, json!({"stream": true, "n": 25})).await;
    let mut names = Vec::new();
    while let Some(e) = rd.next().await {
        if e.name != "message" {
            names.push((e.name.clone(), e.data.clone()));
        }
    }
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names[0].0, "x402-voucher-needed");
    assert_eq!(names[1].0, "x402-error");
    assert!(names[1].1.contains("voucher_timeout"));
    assert_eq!(produced.0.load(Relaxed), TOKENS);
    assert_eq!(stored(&s, &pc).await, PRICE);
    // nobody waits any more: the endpoint says so
    let r = post_voucher(
        &s,
        &pc.channel_id.to_string(),
        Some(voucher(&s, &mut pc, &payer, 2 * PRICE)),
    )
    .await;
    assert_eq!(r.status(), 404);
    s.stop().await;
}

#[tokio::test]
async fn a_stream_broken_off_or_left_is_charged_the_delivered_part_of_its_chunk() {
    let (s, _) = server(10).await;
    // broken off by the upstream at the 14th chunk: one chunk and three tenths
    let (payer, mut pc) = s.funded_channel(34, 100 * PRICE).await;
    let mut rd = open(
        &s,
        &mut pc,
        &payer,
        json!({"stream": true, "n": 30, "break_at": 13}),
    )
    .await;
    let mut content = 0;
    while let Some(e) = rd.next().await {
        match e.name.as_str() {
            "x402-voucher-needed" => {
                let r = post_voucher(
                    &s,
                    &pc.channel_id.to_string(),
                    Some(voucher(&s, &mut pc, &payer, PRICE + PRICE)),
                )
                .await;
                assert_eq!(r.status(), 200);
            }
            "message" => content += 1,
            _ => {}
        }
    }
    assert!(rd.error, "the client sees the break");
    assert_eq!(content, 13);
    let mut charged = 0;
    for _ in 0..100 {
        charged = stored(&s, &pc).await;
        if charged > PRICE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(charged, PRICE + 3 * PRICE / 10);

    // left by the client after 15 chunks of a slow stream
    let (payer, mut pc) = s.funded_channel(35, 100 * PRICE).await;
    let mut rd = open(
        &s,
        &mut pc,
        &payer,
        json!({"stream": true, "n": 30, "delay_ms": 40}),
    )
    .await;
    let mut content = 0;
    while let Some(e) = rd.next().await {
        match e.name.as_str() {
            "x402-voucher-needed" => {
                let r = post_voucher(
                    &s,
                    &pc.channel_id.to_string(),
                    Some(voucher(&s, &mut pc, &payer, 2 * PRICE)),
                )
                .await;
                assert_eq!(r.status(), 200);
            }
            "message" => {
                content += 1;
                if content == 15 {
                    break;
                }
            }
            _ => {}
        }
    }
    drop(rd);
    let mut charged = 0;
    for _ in 0..200 {
        charged = stored(&s, &pc).await;
        if charged > PRICE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // at least the 15 it read; never the whole second chunk it did not
    assert!(
        (PRICE + PRICE / 2..2 * PRICE).contains(&charged),
        "charged {charged}"
    );
    s.stop().await;
}

#[tokio::test]
async fn the_voucher_endpoint_takes_only_the_waiting_streams_own_voucher() {
    let (s, _) = server(10).await;
    let (payer, mut pc) = s.funded_channel(36, 100 * PRICE).await;
    let (payer2, mut pc2) = s.funded_channel(37, 100 * PRICE).await;
    let id = pc.channel_id.to_string();
    // nobody waits
    assert_eq!(
        post_voucher(&s, &id, Some(voucher(&s, &mut pc, &payer, PRICE)))
            .await
            .status(),
        404
    );
    assert_eq!(post_voucher(&s, "0x12", None).await.status(), 400);
    let r = reqwest::get(format!("{}/x402/voucher/{id}", s.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let mut rd = open(&s, &mut pc, &payer, json!({"stream": true, "n": 12})).await;
    let mut content = 0;
    while let Some(e) = rd.next().await {
        match e.name.as_str() {
            "x402-voucher-needed" => {
                // no payment, garbage, another channel's voucher, a refund: refused, no charge
                assert_eq!(post_voucher(&s, &id, None).await.status(), 400);
                assert_eq!(
                    post_voucher(&s, &id, Some("%%%".into())).await.status(),
                    400
                );
                let foreign = voucher(&s, &mut pc2, &payer2, PRICE);
                assert_eq!(
                    post_voucher(&s, &id, Some(foreign.clone())).await.status(),
                    400
                );
                assert_eq!(
                    post_voucher(&s, &pc2.channel_id.to_string(), Some(foreign))
                        .await
                        .status(),
                    404
                );
                let refund = codec::encode(&PaymentPayload {
                    x402_version: X402_VERSION,
                    resource: None,
                    accepted: s.offer.to_generic(),
                    payload: BatchPayload::Refund(
                        pc.refund_payload(&s.domain, &payer, None).unwrap(),
                    ),
                    extensions: None,
                });
                assert_eq!(post_voucher(&s, &id, Some(refund)).await.status(), 400);
                let r = post_voucher(&s, &id, Some(voucher(&s, &mut pc, &payer, 2 * PRICE))).await;
                assert_eq!(r.status(), 200);
            }
            "message" => content += 1,
            "x402-error" => panic!("{}", e.data),
            _ => {}
        }
    }
    assert_eq!(content, 13, "12 chunks and [DONE]");
    assert_eq!(stored(&s, &pc).await, PRICE + 2 * PRICE / 10);
    assert_eq!(stored(&s, &pc2).await, 0);
    s.stop().await;
}

#[tokio::test]
async fn a_chunked_route_charges_an_answer_that_is_not_a_stream_one_chunk() {
    let (s, _) = server(10).await;
    let (payer, mut pc) = s.funded_channel(38, 100 * PRICE).await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/stream", s.url))
        .header("PAYMENT-SIGNATURE", s.voucher_header(&mut pc, &payer))
        .json(&json!({"n": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("payment-response"));
    assert_eq!(stored(&s, &pc).await, PRICE);
    s.stop().await;
}

/// A provider's own axum app with the payment layer on it.
#[tokio::test]
async fn the_payment_layer_gates_a_providers_own_axum_routes() {
    use paychan_server::{PaidRoute, PaidState};
    let s = Server::start(|| Upstream::Demo(paychan_server::demo::DemoConfig::default())).await;
    let ran = Arc::new(AtomicU64::new(0));
    let (r1, r2) = (ran.clone(), ran.clone());
    let state = PaidState::new(
        s.engine.clone(),
        vec![PaidRoute {
            method: Some(http::Method::POST),
            path: "/paid".into(),
            offer: s.offer.clone(),
            description: None,
            mime_type: None,
            pricing: Pricing::Fixed,
        }],
    );
    let app = Router::new()
        .route(
            "/paid",
            post(move || async move {
                r1.fetch_add(1, Relaxed);
                "paid answer"
            }),
        )
        .route(
            "/unlisted",
            post(move || async move {
                r2.fetch_add(1, Relaxed);
                "should not be served"
            }),
        )
        .layer(PaymentLayer::new(state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    let http = reqwest::Client::new();
    let r = http.post(format!("{url}/paid")).send().await.unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(
        http.post(format!("{url}/unlisted"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // a raw socket, so the target reaches the server unnormalised
    let raw = crate::support::raw(
        &url,
        "POST //paid HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert_eq!(ran.load(Relaxed), 0, "nothing ran unpaid");
    let (payer, mut pc) = s.funded_channel(39, 100 * PRICE).await;
    let r = http
        .post(format!("{url}/paid"))
        .header("PAYMENT-SIGNATURE", s.voucher_header(&mut pc, &payer))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("payment-response"));
    assert_eq!(r.text().await.unwrap(), "paid answer");
    assert_eq!(ran.load(Relaxed), 1);
    assert_eq!(stored(&s, &pc).await, PRICE);
    task.abort();
    s.stop().await;
}
