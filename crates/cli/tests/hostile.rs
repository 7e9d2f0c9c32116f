//! `paychan serve` in front of a recording upstream, attacked through the request target: every
//! spelling of a paid path, dot segments raw and encoded, encoded separators, absolute-form and
//! authority-form targets, SSRF through the path, the wrong method. No unpaid request may reach
//! a paid upstream path in any spelling the upstream could read as it, and the canary (another
//! server on this machine, standing in for the chain's RPC node or a cloud metadata service)
//! must never see a connection.

#![allow(clippy::unwrap_used, clippy::print_stdout, unreachable_pub)]

mod support;

use support::{canary, raw};

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use alloy_primitives::{B256, U256};
use paychan_core::{
    batch::{
        BatchDomain, BatchPayload,
        payer::{PayerChannel, channel_config_for},
    },
    codec,
};
use paychan_devchain::{DevChain, ESCROW};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const PRICE: u128 = 10_000;

/// What the upstream saw: method and target.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

async fn recording_upstream() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let s = s.clone();
        async move {
            s.lock()
                .unwrap()
                .push((req.method().to_string(), req.uri().to_string()));
            "upstream answer"
        }
    });
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, seen)
}

/// Reads one response (head and a content-length body) off a kept-alive connection.
async fn read_response(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, head))
}

/// Every reading of `target` an upstream might make: percent-decoded (repeatedly), backslashes
/// as slashes, `;` parameters dropped, case folded, slashes merged, dot segments resolved.
fn loosest_reading(target: &str) -> String {
    let mut p = target.split(['?', '#']).next().unwrap_or("").to_owned();
    for _ in 0..3 {
        let mut out = Vec::new();
        let b = p.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && i + 2 < b.len()
                && let Ok(v) = u8::from_str_radix(&p[i + 1..i + 3], 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
            out.push(b[i]);
            i += 1;
        }
        p = String::from_utf8_lossy(&out).into_owned();
    }
    let p = p.replace(['\\', '\u{ff0f}'], "/").to_ascii_lowercase();
    let mut segs: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    format!("/{}", segs.join("/"))
}

fn is_paid_path(reading: &str) -> bool {
    reading.starts_with("/v1/chat/completions") || reading.starts_with("/v1/embeddings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_a_paid_path_reaches_the_upstream_unpaid() {
    let chain = DevChain::start().await.unwrap();
    let (upstream, seen) = recording_upstream().await;
    let (canary_addr, canary_hits) = canary().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("paychan.toml");
    support::ServeConfig::new(&chain)
        .top(&format!(
            r#"
upstream = "{upstream}"
operator_listen = "127.0.0.1:0"
control = {{ listen = "127.0.0.1:0" }}
"#
        ))
        .table(&format!(
            r#"
[[route]]
path = "/v1/chat/completions"
method = "POST"
price = "{PRICE}"
"#
        ))
        .route("/v1/embeddings", PRICE)
        .table(
            r#"
[[free_route]]
path = "/v1/models*"
method = "GET"
"#,
        )
        .write(&config);
    let server = support::start_server(&config);
    let rpc_hostport = chain
        .rpc_url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let c = &canary_addr;
    let targets: Vec<(&str, String)> = vec![
        ("POST", "//v1/chat/completions".into()),
        ("POST", "/v1//chat/completions".into()),
        ("POST", "/v1/chat//completions".into()),
        ("POST", "/v1/./chat/completions".into()),
        ("POST", "/./v1/chat/completions".into()),
        ("POST", "/x/../v1/chat/completions".into()),
        ("POST", "/v1/chat/%2e/completions".into()),
        ("POST", "/v1/chat/%2E/completions".into()),
        ("POST", "/v1/%2e%2e/v1/chat/completions".into()),
        ("POST", "/v1/.%2e/v1/chat/completions".into()),
        ("POST", "/v1/%2e./v1/chat/completions".into()),
        ("POST", "/v1/chat/completions/.".into()),
        ("POST", "/v1/chat/completions/..".into()),
        ("POST", "/v1/chat/completions/x/..".into()),
        ("POST", "/v1%2fchat%2fcompletions".into()),
        ("POST", "/v1%2Fchat/completions".into()),
        ("POST", "/v1/chat/completions%2f".into()),
        ("POST", "/v1\\chat\\completions".into()),
        ("POST", "/v1%5cchat%5ccompletions".into()),
        ("POST", "/v1/x%5c..%5cchat/completions".into()),
        ("POST", "/v1/chat/completions%00".into()),
        ("POST", "/v1/chat/completions%00.json".into()),
        ("POST", "/v1/chat/completions%0d%0aX-Injected:%201".into()),
        ("POST", "/v1/chat/completions;.json".into()),
        ("POST", "/v1/chat/completions%3b.json".into()),
        ("POST", "/v1/chat;x=1/completions".into()),
        ("POST", "/v1/%252e%252e/v1/chat/completions".into()),
        ("POST", "/v1/x/%252e%252e/chat/completions".into()),
        ("POST", "/v1/%c0%ae%c0%ae/v1/chat/completions".into()),
        ("POST", "/v1/x/..%ef%bc%8fchat/completions".into()),
        ("POST", "/v1/chat/completions/".into()),
        ("POST", "/V1/CHAT/COMPLETIONS".into()),
        ("POST", "/v1/Chat/Completions".into()),
        ("POST", "/v1/chat/completions%20".into()),
        ("POST", "/v1/chat/completions.json".into()),
        ("POST", "/v1/%".into()),
        ("POST", "/v1/%zz/chat".into()),
        ("POST", "/v1/models/../chat/completions".into()),
        ("GET", "/v1/models/../chat/completions".into()),
        ("GET", "/v1/models/%2e%2e/chat/completions".into()),
        ("GET", "/v1/models/..%2fchat%2fcompletions".into()),
        ("GET", "/v1/models%2f..%2fchat/completions".into()),
        ("GET", "/v1/models/..;/chat/completions".into()),
        ("GET", "/v1/models/..%3b/chat/completions".into()),
        (
            "GET",
            "/v1/models/%2e%2e%2f%2e%2e%2fv1%2fchat%2fcompletions".into(),
        ),
        ("GET", "/v1/models/..\\chat\\completions".into()),
        ("GET", "/v1/models/%252e%252e/chat/completions".into()),
        ("GET", "/v1/models//../chat/completions".into()),
        ("GET", "/v1/models%00/../chat/completions".into()),
        ("POST", "/v1/embeddings/../chat/completions".into()),
        ("GET", "/v1/chat/completions".into()),
        ("HEAD", "/v1/chat/completions".into()),
        ("OPTIONS", "/v1/chat/completions".into()),
        ("DELETE", "/v1/chat/completions".into()),
        ("POST", format!("http://{c}/v1/chat/completions")),
        ("POST", format!("http://{rpc_hostport}/")),
        ("GET", format!("http://{c}/v1/models")),
        ("POST", format!("/http://{c}/")),
        ("POST", format!("/http://{rpc_hostport}/")),
        ("GET", format!("/http:/{c}/")),
        ("GET", format!("//{c}/")),
        ("GET", format!("/v1/models/..//{c}/")),
        ("GET", format!("/v1/models@{c}/")),
        ("CONNECT", c.to_string()),
        ("OPTIONS", "*".into()),
        ("POST", "v1/chat/completions".into()),
        ("POST", "/_paychan/metrics".into()),
        ("GET", "/_paychan/metrics".into()),
        ("GET", "/metrics".into()),
        ("GET", "/".into()),
        ("GET", "/admin".into()),
    ];
    let mut statuses = Vec::new();
    for (method, target) in &targets {
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {c}\r\nX-Forwarded-Host: {c}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let (status, text) = raw(&server.addr, &head).await;
        if status == 200 {
            // Only the free route is served unpaid, and only where no reading makes it paid.
            assert!(
                *method == "GET"
                    && target.starts_with("/v1/models")
                    && !is_paid_path(&loosest_reading(target))
                    && text.contains("upstream answer"),
                "{method} {target} was served free: {text}"
            );
        } else {
            assert!(
                matches!(status, 0 | 400 | 402 | 404 | 405 | 413 | 431),
                "{method} {target}: status {status}: {text}"
            );
        }
        if status == 402 {
            // A 402 means the gate read the target as a paid path: it must be one.
            assert!(
                is_paid_path(&loosest_reading(target)),
                "{method} {target} was charged as a paid path"
            );
        }
        assert!(!text.contains("canary"), "{method} {target}: {text}");
        statuses.push((format!("{method} {target}"), status));
    }
    // The encodings of unreserved characters are normalised and then paid like the plain path.
    for target in [
        "/v1/%63hat/completions",
        "/%76%31/chat/completions",
        "/v1/chat/completions?next=/../x",
    ] {
        let (status, text) = raw(
            &server.addr,
            &format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"),
        )
        .await;
        assert_eq!(status, 402, "{target}: {text}");
    }
    let (status, _) = raw(
        &server.addr,
        "GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405, "a paid path with another method is not free");
    let (status, text) = raw(
        &server.addr,
        "POST /v1/chat/completions/.. HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await;
    assert_eq!(status, 400, "{text}");

    // Positive controls: the free route and a paid request do reach the upstream, so an empty
    // record below means the gate held, not that the recorder was deaf.
    let (status, text) = raw(
        &server.addr,
        &format!("GET /v1/models HTTP/1.1\r\nHost: {c}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("upstream answer"), "{text}");
    let offer = chain.offer(PRICE);
    let domain = BatchDomain::new(chain.chain_id(), ESCROW);
    let payer = chain.funded_payer(77, 1_000_000).await.unwrap();
    let cfg = channel_config_for(
        &offer,
        payer.address(),
        payer.address(),
        B256::from(U256::from(77u64)),
    );
    chain.deposit(&payer, &cfg, 1_000_000).await.unwrap();
    let mut pc = PayerChannel::from_chain(&domain, cfg, 1_000_000, 0);
    let v = pc.voucher_payload(&domain, &payer, PRICE).unwrap();
    let header = codec::encode(&paychan_devchain::payment(&offer, BatchPayload::Voucher(v)));
    let paid = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .header("PAYMENT-SIGNATURE", header)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    assert!(paid.headers().contains_key("payment-response"));

    let seen = seen.lock().unwrap().clone();
    let paid_seen: Vec<_> = seen
        .iter()
        .filter(|(_, t)| is_paid_path(&loosest_reading(t)))
        .collect();
    assert_eq!(
        paid_seen,
        vec![&("POST".to_owned(), "/v1/chat/completions".to_owned())],
        "only the paid request may reach a paid path; the upstream saw {seen:?}"
    );
    assert!(
        seen.iter().all(
            |(m, t)| (m == "GET" && t.starts_with("/v1/models")) || t == "/v1/chat/completions"
        ),
        "the upstream saw something it should not: {seen:?}"
    );
    assert_eq!(*canary_hits.lock().unwrap(), 0, "the canary was reached");

    // Operational data is on the operator listener only.
    let op = server.operator_addr.clone().expect("operator listener");
    let m: serde_json::Value = reqwest::get(format!("http://{op}/metrics.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["committed"], 1);
    assert!(
        statuses
            .iter()
            .any(|(t, s)| t == "GET /_paychan/metrics" && *s == 404)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_requests_on_one_connection_keep_it_alive() {
    let chain = DevChain::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("paychan.toml");
    support::ServeConfig::new(&chain)
        .top(
            r#"
upstream = "demo"
operator_listen = "off"
control = { listen = "127.0.0.1:0" }
"#,
        )
        .route("/v1/*", PRICE)
        .write(&config);
    let server = support::start_server(&config);
    let mut s = TcpStream::connect(&server.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(2_000)
    );
    for i in 0..300 {
        // Unread bodies of several sizes: the server reads them off before answering 402.
        let b = &body[..body.len() - (i % 7) * 100];
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            b.len()
        );
        // Head and body in separate writes, the body a moment later, as HTTP clients often send
        // them: the 402 is ready before the body has arrived.
        s.write_all(head.as_bytes()).await.unwrap();
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        s.write_all(b.as_bytes()).await.unwrap();
        let (status, head) = read_response(&mut s)
            .await
            .unwrap_or_else(|| panic!("the server closed the connection after {i} requests"));
        assert_eq!(status, 402, "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }
}
