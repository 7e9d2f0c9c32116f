//! The request span over HTTP, in a test binary of its own: it sets the process's global
//! `tracing` subscriber, which a thread-local one in a binary whose other tests run at the same
//! time cannot stand in for (callsite interest is shared by the whole process).

#![allow(clippy::unwrap_used, unreachable_pub)]

#[allow(dead_code)]
#[path = "it/support.rs"]
mod support;

use std::sync::{Arc, Mutex};

use paychan_core::{
    codec,
    x402::{PaymentRequired, SettlementResponse},
};

use crate::support::*;

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Self;
    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

#[tokio::test]
async fn the_request_span_carries_the_channel_id_but_never_the_signature() {
    let logs = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_env_filter("paychan_server=debug,paychan_engine=debug")
        .with_writer(logs.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let s = Server::start(demo).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.url);
    let (payer, mut pc) = s.funded_channel(12, 1_000_000).await;
    let good = s.voucher_header(&mut pc, &payer);
    let r = http
        .post(&url)
        .header("PAYMENT-SIGNATURE", &good)
        .json(&chat("hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sr: SettlementResponse =
        codec::decode(r.headers()["payment-response"].to_str().unwrap()).unwrap();
    let charge = pc.apply_response(&sr, PRICE, None).unwrap();
    let next = s.voucher_header(&mut pc, &payer);
    let bad = bad_signature(&next);
    let r = http
        .post(&url)
        .header("PAYMENT-SIGNATURE", &bad)
        .json(&chat("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    let pr: PaymentRequired =
        codec::decode(r.headers()["payment-required"].to_str().unwrap()).unwrap();
    let code = pr.error.unwrap();
    s.stop().await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let done: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["fields"]["message"] == "request done")
        .collect();
    assert_eq!(done.len(), 2, "{text}");
    let channel = pc.channel_id.to_string();
    let (paid, refused) = (&done[0]["span"], &done[1]["span"]);
    assert_eq!(paid["name"], "paid_request");
    assert_eq!(paid["method"], "POST");
    assert_eq!(paid["path"], "/v1/chat/completions");
    assert_eq!(paid["route"], "/v1/*");
    assert_eq!(paid["channel"], channel.as_str());
    assert_eq!(paid["outcome"], "committed");
    assert_eq!(paid["charge"].as_u64().map(u128::from), Some(charge));
    assert_eq!(paid["status"], 200);
    assert_eq!(refused["channel"], channel.as_str());
    assert_eq!(refused["outcome"], "declined");
    assert_eq!(refused["code"], code.as_str());
    assert_eq!(refused["status"], 402);
    for secret in [&good, &next, &bad] {
        assert!(
            !text.contains(secret.as_str()),
            "a payment header in the logs"
        );
        let v: serde_json::Value = codec::decode(secret).unwrap();
        let sig = v["payload"]["voucher"]["signature"].as_str().unwrap();
        assert!(
            !text.contains(sig.trim_start_matches("0x")),
            "a signature in the logs"
        );
    }
}
