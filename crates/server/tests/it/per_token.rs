//! Per-token pricing through the real proxy, in front of an OpenAI-compatible stand-in that
//! speaks the real wire format: JSON answers with `usage`, and SSE streams that send the usage
//! chunk only when asked with `stream_options.include_usage` (as vLLM and OpenAI do).

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use http_body_util::BodyExt;
use paychan_core::{batch::payer::PayerChannel, codec, sig::LocalSigner, x402::SettlementResponse};
use paychan_server::{Fallback, Pricing, TokenPrices, Upstream, proxy::Proxy};
use paychan_store::Store;
use serde_json::{Value, json};

use crate::support::*;

const PRICES: TokenPrices = TokenPrices {
    input: 3,
    output: 7,
    fixed: 100,
    fallback: Fallback::Fixed(1_234),
};

/// What the stand-in saw.
#[derive(Default)]
struct Seen {
    streams: AtomicU64,
    streams_asking_usage: AtomicU64,
}

fn words(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(a) => a.iter().map(words).sum(),
        Value::Object(o) => o.get("content").map_or(0, words),
        _ => 0,
    }
}

/// The stand-in's token counts for a request: input = words of the prompt, output = twice that
/// (it ignores `max_tokens`, so the gateway's cap is what holds the charge).
fn counts(req: &Value) -> (u64, u64) {
    let input = words(&req["messages"]) + words(&req["prompt"]) + words(&req["input"]);
    (input, 2 * input)
}

fn sse(events: Vec<Result<String, std::io::Error>>) -> Response {
    let stream = futures_util::stream::iter(
        events
            .into_iter()
            .map(|e| e.map(|s| Bytes::from(format!("data: {s}\n\n")))),
    );
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn chunk(text: &str) -> String {
    json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}], "usage": null}).to_string()
}

async fn chat(seen: Arc<Seen>, Json(req): Json<Value>) -> Response {
    let (input, output) = counts(&req);
    let usage = json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output});
    if req["stream"] == true {
        seen.streams.fetch_add(1, Relaxed);
        let mut events: Vec<Result<String, std::io::Error>> =
            (0..output).map(|i| Ok(chunk(&format!("w{i} ")))).collect();
        if req["stream_options"]["include_usage"] == true {
            seen.streams_asking_usage.fetch_add(1, Relaxed);
            events.push(Ok(
                json!({"object": "chat.completion.chunk", "choices": [], "usage": usage})
                    .to_string(),
            ));
        }
        events.push(Ok("[DONE]".into()));
        return sse(events);
    }
    Json(json!({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}], "usage": usage})).into_response()
}

async fn embeddings(Json(req): Json<Value>) -> Json<Value> {
    let (input, _) = counts(&req);
    Json(
        json!({"object": "list", "data": [{"embedding": [0.5, 0.25]}], "usage": {"prompt_tokens": input, "total_tokens": input}}),
    )
}

/// A stream the upstream breaks off after three content chunks (sent apart, so that they leave
/// before the break).
async fn broken() -> Response {
    let stream = futures_util::stream::unfold(0u64, |i| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let item = match i {
            0..3 => Ok(Bytes::from(format!(
                "data: {}\n\n",
                chunk(&format!("b{i}"))
            ))),
            3 => Err(std::io::Error::other("upstream crashed")),
            _ => return None,
        };
        Some((item, i + 1))
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A stream that sends a content chunk every 20 ms until its reader goes away.
async fn endless() -> Response {
    let stream = futures_util::stream::unfold(0u64, |i| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some((
            Ok::<_, Infallible>(Bytes::from(format!("data: {}\n\n", chunk("e")))),
            i + 1,
        ))
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn stand_in(seen: Arc<Seen>) -> String {
    let app = Router::new()
        .route(
            "/v1/chat/completions",
            post(move |body| chat(seen.clone(), body)),
        )
        .route("/v1/embeddings", post(embeddings))
        .route(
            "/v1/not-json",
            post(|| async { ([(header::CONTENT_TYPE, "text/html")], "<html>oops</html>") }),
        )
        .route(
            "/v1/no-usage",
            post(|| async { Json(json!({"object": "chat.completion", "choices": []})) }),
        )
        .route(
            "/v1/fails",
            post(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"error": "boom"})),
                )
            }),
        )
        .route("/v1/broken", post(broken))
        .route(
            "/v1/whoami",
            post(|h: HeaderMap| async move {
                let auth = h.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned());
                Json(json!({"authorization": auth, "usage": {"prompt_tokens": 1, "completion_tokens": 1}}))
            }),
        )
        .route("/v1/endless", post(endless));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn server() -> (Server, Arc<Seen>) {
    server_with(None).await
}

async fn server_with(token: Option<paychan_service::BearerToken>) -> (Server, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let up = stand_in(seen.clone()).await;
    let s = Server::start_priced(
        move || {
            let p = Proxy::new(&up, Duration::from_secs(5)).unwrap();
            Upstream::Proxy(match &token {
                Some(t) => p.with_bearer(t),
                None => p,
            })
        },
        Pricing::PerToken(PRICES),
    )
    .await;
    (s, seen)
}

/// What the gateway must charge, computed from the request alone.
fn expected(req: &Value) -> u128 {
    let (input, output) = counts(req);
    let output = ["max_tokens", "max_completion_tokens"]
        .iter()
        .filter_map(|k| req[*k].as_u64())
        .min()
        .map_or(output, |m| output.min(m));
    (PRICES.fixed + PRICES.input * u128::from(input) + PRICES.output * u128::from(output))
        .min(PRICE)
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Answer {
    fn settlement(&self) -> Option<SettlementResponse> {
        let h = self
            .trailers
            .as_ref()
            .and_then(|t| t.get("payment-response"))
            .or_else(|| self.headers.get("payment-response"))?;
        Some(codec::decode(h.to_str().unwrap()).unwrap())
    }
}

async fn paid(
    s: &Server,
    pc: &mut PayerChannel,
    payer: &LocalSigner,
    path: &str,
    req: &Value,
) -> Answer {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", s.url))
        .header("PAYMENT-SIGNATURE", s.voucher_header(pc, payer))
        // trailers are sent only to a client that says it takes them (RFC 9110 §10.1.4)
        .header("TE", "trailers")
        .json(req)
        .send()
        .await
        .unwrap();
    let r: http::Response<reqwest::Body> = r.into();
    let (parts, body) = r.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

async fn stored_charged(s: &Server, pc: &PayerChannel) -> u128 {
    s.engine
        .store()
        .channel(pc.channel_id)
        .await
        .unwrap()
        .map_or(0, |r| r.charged)
}

fn prompt(n: usize) -> String {
    (0..n)
        .map(|i| format!("t{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn json_and_streamed_answers_are_charged_usage_times_prices_to_the_unit() {
    let (s, seen) = server().await;
    let (payer, mut pc) = s.funded_channel(7, 100_000_000).await;
    let mut total = 0u128;
    let calls = 600;
    for i in 0..calls {
        let words = 1 + (i * 7) % 300;
        let mut req = match i % 3 {
            0 | 1 => {
                json!({"model": "m", "messages": [{"role": "user", "content": prompt(words)}]})
            }
            _ => json!({"model": "m", "input": prompt(words)}),
        };
        if i % 5 == 0 {
            req["max_tokens"] = json!(i % 13);
        }
        let stream = i % 3 == 1;
        if stream {
            req["stream"] = json!(true);
        }
        let path = if i % 3 == 2 {
            "/v1/embeddings"
        } else {
            "/v1/chat/completions"
        };
        let a = paid(&s, &mut pc, &payer, path, &req).await;
        assert_eq!(a.status, 200, "call {i}: {:?}", a.body);
        let sr = a.settlement().unwrap_or_else(|| {
            panic!(
                "call {i}: no PAYMENT-RESPONSE: {:?} {:?}",
                a.headers, a.trailers
            )
        });
        if stream {
            assert!(
                a.trailers.is_some() && a.headers.get("payment-response").is_none(),
                "a stream's charge is its trailer"
            );
            // every chunk passed through, the usage chunk included
            let text = String::from_utf8(a.body.to_vec()).unwrap();
            assert_eq!(
                text.matches("\"content\":\"w").count() as u64,
                counts(&req).1
            );
            assert!(text.contains("\"prompt_tokens\"") && text.ends_with("data: [DONE]\n\n"));
        }
        let charged = pc.apply_response(&sr, PRICE, None).unwrap();
        let want = if i % 3 == 2 {
            // embeddings: no output tokens
            (PRICES.fixed + PRICES.input * counts(&req).0 as u128).min(PRICE)
        } else {
            expected(&req)
        };
        assert_eq!(charged, want, "call {i}: {req}");
        total += charged;
    }
    assert_eq!(total, pc.charged);
    assert_eq!(stored_charged(&s, &pc).await, total);
    // some calls were capped by max_tokens or the maximum, some were not
    assert!(total < calls as u128 * PRICE && total > calls as u128 * PRICES.fixed);
    let streams = seen.streams.load(Relaxed);
    assert_eq!(streams, calls as u64 / 3);
    assert_eq!(
        seen.streams_asking_usage.load(Relaxed),
        streams,
        "the gateway asks every stream for usage"
    );
    s.stop().await;
}

#[tokio::test]
async fn failures_are_not_charged_and_broken_streams_pay_only_what_was_delivered() {
    let (s, _) = server().await;
    let (payer, mut pc) = s.funded_channel(8, 100_000_000).await;
    let req = json!({"model": "m", "messages": [{"role": "user", "content": "one two"}]});
    // not JSON, or a failure status: nothing charged, the body withheld or passed on as is
    let a = paid(&s, &mut pc, &payer, "/v1/not-json", &req).await;
    assert_eq!(a.status, 502);
    assert!(
        !String::from_utf8_lossy(&a.body).contains("oops"),
        "an unpriced answer is not handed out"
    );
    assert!(a.settlement().is_none());
    let a = paid(&s, &mut pc, &payer, "/v1/fails", &req).await;
    assert_eq!(a.status, 500);
    assert!(a.settlement().is_none());
    assert_eq!(stored_charged(&s, &pc).await, 0);
    // JSON without usage: the fallback
    let a = paid(&s, &mut pc, &payer, "/v1/no-usage", &req).await;
    assert_eq!(a.status, 200, "{:?} {:?}", a.headers, a.body);
    assert_eq!(
        pc.apply_response(&a.settlement().unwrap(), PRICE, None)
            .unwrap(),
        1_234
    );
    assert_eq!(stored_charged(&s, &pc).await, 1_234);
    // a stream the upstream breaks off after 3 chunks: the fixed part and 3 output tokens
    let r = reqwest::Client::new()
        .post(format!("{}/v1/broken", s.url))
        .header("PAYMENT-SIGNATURE", s.voucher_header(&mut pc, &payer))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "the client sees the stream fail");
    let want = 1_234 + PRICES.fixed + 3 * PRICES.output;
    wait_for_charge(&s, &pc, want).await;
    pc.charged = want;
    // a client that goes away mid-stream pays for the chunks it was sent
    let mut r = reqwest::Client::new()
        .post(format!("{}/v1/endless", s.url))
        .header("PAYMENT-SIGNATURE", s.voucher_header(&mut pc, &payer))
        .json(&json!({"model": "m", "messages": [], "stream": true, "max_tokens": 1000}))
        .send()
        .await
        .unwrap();
    let mut received = 0;
    while received < 5 {
        let c = r.chunk().await.unwrap().unwrap();
        received += String::from_utf8_lossy(&c)
            .matches("\"content\":\"e\"")
            .count() as u128;
    }
    drop(r);
    // the server may have sent a chunk or two more before it saw the disconnect
    let charged = wait_for_change(&s, &pc, want).await - want;
    assert!(
        charged >= PRICES.fixed + received * PRICES.output
            && charged <= PRICES.fixed + (received + 10) * PRICES.output,
        "charged {charged} for {received} chunks received"
    );
    s.stop().await;
}

async fn wait_for_charge(s: &Server, pc: &PayerChannel, want: u128) {
    assert_eq!(wait_for_change(s, pc, want - 1).await, want);
}

/// Waits (up to 10 s) for the stored charge to move past `from`, and returns it.
async fn wait_for_change(s: &Server, pc: &PayerChannel, from: u128) -> u128 {
    for _ in 0..1000 {
        let c = stored_charged(s, pc).await;
        if c > from {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the charge stayed at {from} or below")
}

#[tokio::test]
async fn a_configured_upstream_key_replaces_the_clients_authorization() {
    let key = "sk-provider-0123456789abcdef0123456789abcdef";
    for token in [
        None,
        Some(paychan_service::BearerToken::from_secret(key).unwrap()),
    ] {
        let configured = token.is_some();
        let (s, _) = server_with(token).await;
        let (payer, mut pc) = s.funded_channel(9, 1_000_000).await;
        let r = reqwest::Client::new()
            .post(format!("{}/v1/whoami", s.url))
            .header("PAYMENT-SIGNATURE", s.voucher_header(&mut pc, &payer))
            .header("Authorization", "Bearer client-own-key")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen: Value = r.json().await.unwrap();
        let want = if configured {
            format!("Bearer {key}")
        } else {
            "Bearer client-own-key".into()
        };
        assert_eq!(seen["authorization"], want.as_str());
        s.stop().await;
    }
}
