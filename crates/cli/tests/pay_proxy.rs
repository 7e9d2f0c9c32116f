//! `paychan pay-proxy` end to end: an agent's requests go through the proxy to a paychan server
//! (`paychan serve`, a real dev chain, real sled) in front of a mock inference upstream; the agent
//! gets the upstream's answers, a streamed body passes through as it streams, and every request
//! was paid, to the unit. And attacked: absolute-form targets, `//`, dot segments, encoded
//! separators, foreign Host and web-page origins, hop-by-hop and payment headers, a non-loopback
//! bind: nothing reaches the upstream (or anything else) that should not.

#![allow(clippy::unwrap_used, clippy::print_stdout, unreachable_pub)]

mod pay_support;
mod support;

use support::{canary, raw};

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use pay_support::{PRICE, Stack, start_pay_proxy, write_secret};
use tokio::{net::TcpListener, sync::Notify};

/// What the mock upstream saw: method, target, headers.
type Seen = Arc<Mutex<Vec<(String, String, HeaderMap)>>>;

/// The upstream's charge for a chat body: 3 a byte (below the route's maximum for these bodies).
fn charge_for(body: &[u8]) -> u128 {
    3 * body.len() as u128
}

/// The mock inference upstream. `POST /v1/chat/completions` echoes the body and prices it with
/// `x-paychan-charge`; `POST /v1/stream` sends one event, waits for `go`, then sends the second
/// (so a proxy that buffered the body would never deliver the first before the second); anything
/// else is 200 `upstream answer`.
async fn mock_upstream(go: Arc<Notify>) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let (s, go) = (s.clone(), go.clone());
        async move {
            let (parts, body) = req.into_parts();
            s.lock().unwrap().push((
                parts.method.to_string(),
                parts.uri.to_string(),
                parts.headers.clone(),
            ));
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            match parts.uri.path() {
                "/v1/chat/completions" => {
                    let charge = charge_for(&body);
                    let mut r = Response::new(Body::from(
                        serde_json::json!({
                            "object": "chat.completion",
                            "echo": String::from_utf8_lossy(&body),
                        })
                        .to_string(),
                    ));
                    r.headers_mut()
                        .insert("x-paychan-charge", charge.to_string().parse().unwrap());
                    r.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    r
                }
                "/v1/stream" => {
                    let chunks = futures_util::stream::unfold(0u8, move |step| {
                        let go = go.clone();
                        async move {
                            match step {
                                0 => Some((Ok::<_, std::io::Error>("data: one\n\n"), 1)),
                                1 => {
                                    go.notified().await;
                                    Some((Ok("data: two\n\n"), 2))
                                }
                                _ => None,
                            }
                        }
                    });
                    let mut r = Response::new(Body::from_stream(chunks));
                    r.headers_mut()
                        .insert("x-paychan-charge", "500".parse().unwrap());
                    r.headers_mut()
                        .insert("content-type", "text/event-stream".parse().unwrap());
                    r
                }
                _ => (StatusCode::OK, "upstream answer").into_response(),
            }
        }
    });
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_through_the_pay_proxy_gets_the_upstreams_streamed_answers_and_each_was_paid() {
    let go = Arc::new(Notify::new());
    let (upstream, seen) = mock_upstream(go.clone()).await;
    let stack = Stack::start(&upstream).await;
    let key = stack.payer_key(1);
    let key_file = stack.dir.path().join("payer.key");
    write_secret(&key_file, &key);
    let payer_before = stack.tokens_of_payer(1).await;
    let mut args = vec![
        "--upstream".to_owned(),
        stack.server.url.clone(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--key-file".into(),
        key_file.display().to_string(),
    ];
    args.extend(stack.payer_args(&stack.dir.path().join("payer"), PRICE));
    let proxy = start_pay_proxy(&args, &[], &stack.dir.path().join("proxy.log"));
    let agent = reqwest::Client::new();

    // Chat completions, as an OpenAI SDK with base_url = the proxy would send them.
    let mut expected = 0u128;
    for n in 0..12 {
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
            "x".repeat(n * 7)
        );
        let resp = agent
            .post(format!("{}/v1/chat/completions", proxy.base()))
            .header("content-type", "application/json")
            .header("authorization", "Bearer agent-upstream-key")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // The paid server's receipt comes back with the answer.
        assert!(resp.headers().contains_key("payment-response"));
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["echo"], body);
        expected += charge_for(body.as_bytes());
    }
    assert_eq!(stack.charged_total().await, expected);

    // A streamed answer arrives as it is produced: the first event before the upstream sends
    // the second.
    let mut resp = agent
        .post(format!("{}/v1/stream", proxy.base()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let guard = Duration::from_secs(30);
    let first = tokio::time::timeout(guard, resp.chunk())
        .await
        .expect("the first event came through before the stream ended")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: one\n\n");
    go.notify_one();
    let mut rest = Vec::new();
    while let Some(c) = tokio::time::timeout(guard, resp.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"data: two\n\n");
    expected += 500;
    assert_eq!(stack.charged_total().await, expected);

    // The upstream got every request once, with the agent's headers, never a payment header.
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 13);
        for (_, _, h) in seen.iter() {
            assert!(!h.contains_key("payment-signature") && !h.contains_key("x-payment"));
        }
        assert!(seen[..12].iter().all(|(m, t, h)| m == "POST"
            && t == "/v1/chat/completions"
            && h["authorization"] == "Bearer agent-upstream-key"));
    }
    // What the payer spent is what the server charged, plus what is still deposited.
    let m = stack.metrics().await;
    assert_eq!(m["committed"].as_u64(), Some(13), "{m}");
    assert!(m["deposits"].as_u64().unwrap() >= 1, "{m}");
    assert!(payer_before - stack.tokens_of_payer(1).await >= expected);
    // A proxy whose limit is below the server's price refuses, with a clear error, before
    // anything is signed: nothing more reaches the upstream, nothing more is charged.
    let mut args = vec![
        "--upstream".to_owned(),
        stack.server.url.clone(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--key-file".into(),
        key_file.display().to_string(),
    ];
    args.extend(stack.payer_args(&stack.dir.path().join("payer2"), PRICE - 1));
    let strict = start_pay_proxy(&args, &[], &stack.dir.path().join("strict.log"));
    let resp = agent
        .post(format!("{}/v1/chat/completions", strict.base()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "spend_policy", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "price {PRICE} per request is above the maximum {}",
            PRICE - 1
        )),
        "{message}"
    );
    assert_eq!(seen.lock().unwrap().len(), 13);
    assert_eq!(stack.charged_total().await, expected);

    // The key never shows in the proxy's logs (debug level).
    let log = proxy.stderr_text();
    assert!(log.contains("forwarded"), "{log}");
    assert!(
        !log.contains(key.trim_start_matches("0x")),
        "the key leaked into the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pay_proxy_is_not_an_open_proxy() {
    let (upstream, seen) = mock_upstream(Arc::new(Notify::new())).await;
    let (canary_addr, canary_hits) = canary().await;
    let dir = tempfile::tempdir().unwrap();
    // No chain is needed: nothing here is paid (the mock upstream answers unpaid requests).
    let key = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
    let payer = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "--upstream",
            upstream.as_str(),
            "--chain-id",
            "31337",
            "--asset",
            "0x0000000000000000000000000000000000000001",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    let data = dir.path().join("payer").display().to_string();

    // A non-loopback bind is refused, before any key is looked at.
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_paychan"))
            .arg("pay-proxy")
            .args(payer(&["--listen", listen, "--data-dir", &data]))
            .env_remove("PAYCHAN_PAYER_KEY")
            .env_remove("PAYCHAN_PAYER_KEY_FILE")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not a loopback address"), "{err}");
        assert!(out.stdout.is_empty());
    }
    // Without a key it says how to give one (never on the command line).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paychan"))
        .arg("pay-proxy")
        .args(payer(&["--listen", "127.0.0.1:0", "--data-dir", &data]))
        .env_remove("PAYCHAN_PAYER_KEY")
        .env_remove("PAYCHAN_PAYER_KEY_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--key-file") && err.contains("PAYCHAN_PAYER_KEY"),
        "{err}"
    );

    let proxy = start_pay_proxy(
        &payer(&[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--max-body-bytes",
            "1024",
        ]),
        &[("PAYCHAN_PAYER_KEY", key)],
        &dir.path().join("proxy.log"),
    );
    let p = proxy.addr.as_str();
    let up = upstream.trim_start_matches("http://");
    let c = canary_addr.as_str();
    let host = format!("Host: {p}\r\n");

    // The control: a plain path reaches the upstream.
    let (status, text) = raw(
        p,
        &format!("GET /v1/ok HTTP/1.1\r\n{host}Connection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("upstream answer"), "{text}");
    assert_eq!(seen.lock().unwrap().len(), 1);

    let bad_targets = [
        format!("GET http://{c}/v1/ok HTTP/1.1"),
        format!("GET http://{up}/v1/ok HTTP/1.1"),
        format!("POST https://{c}/v1/chat/completions HTTP/1.1"),
        format!("CONNECT {c} HTTP/1.1"),
        "OPTIONS * HTTP/1.1".to_owned(),
        format!("GET //{c}/v1/ok HTTP/1.1"),
        "GET /v1//ok HTTP/1.1".to_owned(),
        "GET /v1/../ok HTTP/1.1".to_owned(),
        "GET /v1/./ok HTTP/1.1".to_owned(),
        "GET /v1/%2e%2e/ok HTTP/1.1".to_owned(),
        "GET /v1/.%2E/ok HTTP/1.1".to_owned(),
        "GET /v1%2fok HTTP/1.1".to_owned(),
        "GET /v1%5cok HTTP/1.1".to_owned(),
        "GET /v1/ok%00 HTTP/1.1".to_owned(),
        "GET /v1/%252e%252e/ok HTTP/1.1".to_owned(),
        "GET /v1/ok;x=1 HTTP/1.1".to_owned(),
        format!("GET @{c}/v1/ok HTTP/1.1"),
    ];
    for line in &bad_targets {
        let (status, text) = raw(p, &format!("{line}\r\n{host}Connection: close\r\n\r\n")).await;
        assert_eq!(status, 400, "{line}: {text}");
    }

    // A foreign Host (DNS rebinding) and requests from web pages are refused.
    let refused_heads = [
        "GET /v1/ok HTTP/1.1\r\nHost: evil.example\r\n".to_owned(),
        format!(
            "GET /v1/ok HTTP/1.1\r\nHost: evil.example:{}\r\n",
            p.rsplit(':').next().unwrap()
        ),
        format!(
            "POST /v1/ok HTTP/1.1\r\n{host}Origin: https://evil.example\r\nContent-Length: 0\r\n"
        ),
        format!("GET /v1/ok HTTP/1.1\r\n{host}Sec-Fetch-Site: cross-site\r\n"),
    ];
    for head in &refused_heads {
        let (status, text) = raw(p, &format!("{head}Connection: close\r\n\r\n")).await;
        assert_eq!(status, 403, "{head}: {text}");
    }

    // Hop-by-hop headers, those named in Connection and payment headers do not cross.
    let (status, _) = raw(
        p,
        &format!(
            "GET /v1/hop HTTP/1.1\r\n{host}Connection: close, x-hop\r\nx-hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nPAYMENT-SIGNATURE: forged\r\nX-Payment: forged\r\nX-Kept: yes\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200);

    // A body above --max-body-bytes is refused, announced or chunked.
    let big = "x".repeat(2048);
    let (status, _) = raw(
        p,
        &format!(
            "POST /v1/big HTTP/1.1\r\n{host}Content-Length: 2048\r\nConnection: close\r\n\r\n{big}"
        ),
    )
    .await;
    assert_eq!(status, 413);
    let (status, _) = raw(
        p,
        &format!("POST /v1/big HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n800\r\n{big}\r\n0\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 413);

    // Nothing else reached the upstream, nothing at all reached the canary.
    let seen = seen.lock().unwrap();
    let targets: Vec<&str> = seen.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(targets, ["/v1/ok", "/v1/hop"]);
    let h = &seen[1].2;
    for gone in [
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "payment-signature",
        "x-payment",
    ] {
        assert!(!h.contains_key(gone), "{gone} was forwarded: {h:?}");
    }
    assert_eq!(h["x-kept"], "yes");
    // The host the upstream sees is its own, not the agent's.
    assert_eq!(h["host"], up);
    assert_eq!(*canary_hits.lock().unwrap(), 0);
    assert!(!proxy.stderr_text().contains(key.trim_start_matches("0x")));
}
