//! The HTTP API over loopback, and `HttpFacilitator` against it.

use paychan_core::{
    ErrorCode,
    batch::BatchPayload,
    x402::{SettlementResponse, VerifyResponse},
};
use paychan_devchain::Role;
use paychan_facilitator::{Error, HttpFacilitator, HttpFacilitatorConfig, MAX_BODY_BYTES, serve};
use serde_json::{Value, json};

use crate::support::*;

struct Served {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

async fn serve_on_loopback(f: paychan_facilitator::Facilitator<paychan_store::MemStore>) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, f, async {
        let _ = stopped.await;
    }));
    Served {
        url,
        stop: Some(stop),
        task,
    }
}

async fn post(url: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")),
    )
}

#[tokio::test]
async fn http_api_answers_verdicts_and_refuses_malformed_bodies() {
    let env = Env::start().await;
    let f = env.facilitator_without_key();
    let served = serve_on_loopback(f.clone()).await;
    let base = served.url.clone();
    let req = env.requirements();
    let (payer, mut pc) = env.payer(40, 50_000).await;
    let deposit = env.envelope(BatchPayload::Deposit(
        env.deposit(&mut pc, &payer, 10_000, 1),
    ));
    let body = |payload: &Value, requirements: &Value| {
        serde_json::to_vec(&json!({
            "x402Version": 2, "paymentPayload": payload, "paymentRequirements": requirements
        }))
        .unwrap()
    };
    let deposit_json = serde_json::to_value(&deposit).unwrap();
    let req_json = serde_json::to_value(&req).unwrap();

    // GET /supported: the spec's shape; no receiverAuthorizer without the key
    let supported: Value = reqwest::get(format!("{base}/supported"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        supported,
        json!({
            "kinds": [{"x402Version": 2, "scheme": "batch-settlement",
                       "network": format!("eip155:{}", env.chain.chain_id())}],
            "extensions": [],
            "signers": {"eip155:*": [env.chain.account(Role::Relayer).address.to_checksum(None)]}
        })
    );

    // a valid deposit verifies over HTTP, with the snapshot
    let (status, v) = post(&format!("{base}/verify"), body(&deposit_json, &req_json)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["isValid"], true, "{v}");
    assert_eq!(v["extra"]["channelId"], pc.channel_id.to_string());

    // malformed bodies: 400 naming the problem
    for (raw, needle) in [
        (b"{not json".to_vec(), "not JSON"),
        (b"[1,2]".to_vec(), "JSON object"),
        (
            serde_json::to_vec(
                &json!({"paymentPayload": deposit_json, "paymentRequirements": req_json}),
            )
            .unwrap(),
            "x402Version",
        ),
        (
            serde_json::to_vec(&json!({"x402Version": 2, "paymentRequirements": req_json}))
                .unwrap(),
            "paymentPayload",
        ),
        (
            body(&deposit_json, &json!({"scheme": "batch-settlement"})),
            "paymentRequirements",
        ),
        (
            body(&json!({"x402Version": 2, "payload": {}}), &req_json),
            "paymentPayload",
        ),
    ] {
        for op in ["verify", "settle"] {
            let (status, v) = post(&format!("{base}/{op}"), raw.clone()).await;
            assert_eq!(status, 400, "{op} {v}");
            assert_eq!(v["error"], "invalid_request", "{v}");
            let message = v["message"].as_str().unwrap();
            assert!(
                message.contains(needle),
                "{op}: {message:?} should name {needle}"
            );
        }
    }
    // too large: 413
    let huge = vec![b' '; MAX_BODY_BYTES + 1];
    let (status, v) = post(&format!("{base}/verify"), huge).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (413, Some("payload_too_large"))
    );

    // well-formed requests with bad payments: 200 and the code
    let mut bad_deposit = deposit_json.clone();
    bad_deposit["payload"]["deposit"]
        .as_object_mut()
        .unwrap()
        .remove("amount");
    let mut unknown_type = deposit_json.clone();
    unknown_type["payload"]["type"] = "teleport".into();
    let mut v1 = deposit_json.clone();
    v1["x402Version"] = 1.into();
    let mut expired = deposit_json.clone();
    expired["payload"]["deposit"]["authorization"]["erc3009Authorization"]["validBefore"] =
        "1".into();
    for (payload, code) in [
        (bad_deposit, ErrorCode::DepositPayload),
        (unknown_type, ErrorCode::PayloadType),
        (v1, ErrorCode::InvalidX402Version),
        (expired, ErrorCode::PayloadAuthorizationValidBefore),
    ] {
        let (status, v) = post(&format!("{base}/verify"), body(&payload, &req_json)).await;
        assert_eq!(status, 200, "{v}");
        let v: VerifyResponse = serde_json::from_value(v).unwrap();
        assert_eq!(refused(&v), code);
        let (status, s) = post(&format!("{base}/settle"), body(&payload, &req_json)).await;
        assert_eq!(status, 200, "{s}");
        let s: SettlementResponse = serde_json::from_value(s).unwrap();
        assert_eq!(failed(&s), code);
        assert_eq!(s.network, req.network);
    }
    let mut old = json!({"x402Version": 1, "paymentPayload": {"x402Version": 1, "scheme": "exact"},
                         "paymentRequirements": {"scheme": "exact", "network": "base-sepolia",
                                                 "maxAmountRequired": "1"}});
    let (status, v) = post(&format!("{base}/verify"), serde_json::to_vec(&old).unwrap()).await;
    assert_eq!(
        (status, v["invalidReason"].as_str()),
        (200, Some("invalid_x402_version"))
    );
    old["x402Version"] = 2.into();
    let (status, v) = post(&format!("{base}/settle"), serde_json::to_vec(&old).unwrap()).await;
    assert_eq!(
        (status, v["errorReason"].as_str()),
        (200, Some("invalid_x402_version"))
    );

    // HttpFacilitator: the client side of the same API
    let client = HttpFacilitator::new(&base).unwrap();
    let s = client.supported().await.unwrap();
    assert_eq!(s.kinds[0].scheme, "batch-settlement");
    let v = client.verify(&deposit, &req).await.unwrap();
    assert!(v.is_valid, "{v:?}");
    let (p0, _, e0) = env.balances(payer.address()).await;
    let s = client.settle(&deposit, &req).await.unwrap();
    let tx = tx_of(&s);
    assert_eq!(channel_state(&s).balance, 10_000);
    assert_eq!(env.balances(payer.address()).await.0, p0 - 10_000);
    assert_eq!(env.balances(payer.address()).await.2, e0 + 10_000);
    // the engine's trait, as paychan's server uses it: a retry answers the same transaction
    let s = paychan_core::ports::PaymentFacilitator::settle(&client, &deposit, &req)
        .await
        .unwrap();
    assert_eq!(tx_of(&s), tx);
    // a refused payment is a verdict, not an error
    let mut stale = deposit.clone();
    stale.x402_version = 1;
    let v = client.verify(&stale, &req).await.unwrap();
    assert_eq!(refused(&v), ErrorCode::InvalidX402Version);

    served.shutdown().await;

    // nobody there: a clear transport error naming the operation and the endpoint
    let dead = HttpFacilitator::with_config(HttpFacilitatorConfig {
        connect_timeout: std::time::Duration::from_secs(2),
        ..HttpFacilitatorConfig::new(&base)
    })
    .unwrap();
    let e = dead.verify(&deposit, &req).await.unwrap_err();
    assert!(matches!(e, Error::Transport { op: "verify", .. }), "{e:?}");
    assert!(e.to_string().contains(&base), "{e}");
    let e = paychan_core::ports::PaymentFacilitator::verify(&dead, &deposit, &req)
        .await
        .unwrap_err();
    assert_eq!(e.what, "facilitator verify");
}

#[tokio::test]
async fn http_client_bounds_answers_and_time() {
    // a server that answers garbage, a huge body, a non-verdict error, or never
    use axum::{Router, routing::post as p};
    let app = Router::new()
        .route("/verify", p(|| async { "not json" }))
        .route(
            "/settle",
            p(|| async { (axum::http::StatusCode::BAD_GATEWAY, "upstream down") }),
        )
        .route(
            "/supported",
            axum::routing::get(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = HttpFacilitator::with_config(HttpFacilitatorConfig {
        timeout: std::time::Duration::from_millis(300),
        ..HttpFacilitatorConfig::new(&base)
    })
    .unwrap();
    let payload = paychan_core::x402::PaymentPayload {
        x402_version: 2,
        resource: None,
        accepted: serde_json::from_value(json!({"scheme": "batch-settlement",
            "network": "eip155:31337", "amount": "1", "asset": "0x0000000000000000000000000000000000000001",
            "payTo": "0x0000000000000000000000000000000000000002", "maxTimeoutSeconds": 1}))
        .unwrap(),
        payload: BatchPayload::Settle(paychan_core::batch::SettleActionPayload {
            receiver: alloy::primitives::Address::repeat_byte(1),
            token: alloy::primitives::Address::repeat_byte(2),
        }),
        extensions: None,
    };
    let req = payload.accepted.clone();
    let e = client.verify(&payload, &req).await.unwrap_err();
    assert!(matches!(e, Error::Decode { op: "verify", .. }), "{e:?}");
    let e = client.settle(&payload, &req).await.unwrap_err();
    assert!(
        matches!(e, Error::Status { op: "settle", status: 502, ref body, .. } if body.contains("upstream down")),
        "{e:?}"
    );
    let e = client.supported().await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Timeout {
                op: "supported",
                ..
            }
        ),
        "{e:?}"
    );
    task.abort();
}
