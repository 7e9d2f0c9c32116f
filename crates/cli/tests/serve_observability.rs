//! `paychan serve --log-format json`: its operator listener's Prometheus `/metrics` shows the
//! settlement backlog and the relayer's gas balance, and its log lines are JSON objects whose
//! request span carries the channel id, never a payment header, a signature or a key.

#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use paychan_core::{
    batch::BatchPayload,
    codec,
    x402::{PaymentPayload, SettlementResponse, X402_VERSION},
};
use paychan_devchain::{DevChain, ESCROW, Role};

const PRICE: u128 = 10_000;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn secret(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The value of the sample `series` (name and labels exactly as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_shows_backlog_and_relayer_balance_and_logs_json_spans() {
    let chain = DevChain::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relayer = chain.account(Role::Relayer);
    let authorizer = chain.account(Role::ReceiverAuthorizer);
    let relayer_key = dir.path().join("relayer.key");
    let authorizer_key = dir.path().join("authorizer.key");
    secret(&relayer_key, &relayer.key.to_string());
    secret(&authorizer_key, &authorizer.key.to_string());
    let config = dir.path().join("paychan.toml");
    std::fs::write(
        &config,
        format!(
            r#"
data_dir = "store"
upstream = "demo"
operator_listen = "127.0.0.1:0"
demo_price_per_token = "30"

[chain]
rpc_url = "{rpc}"
chain_id = {chain_id}

[payment]
receiver = "{receiver}"
receiver_authorizer = "{authorizer}"
receiver_authorizer_key_file = "{authorizer_key}"
asset = "{token}"
asset_name = "USD Coin"
asset_version = "2"

[settlement]
interval_secs = 0
settle = "manual"
relayer_key_file = "{relayer_key}"

[[route]]
path = "/v1/*"
price = "{PRICE}"
"#,
            rpc = chain.rpc_url(),
            chain_id = chain.chain_id(),
            receiver = chain.account(Role::Receiver).address,
            authorizer = authorizer.address,
            authorizer_key = authorizer_key.display(),
            token = chain.contracts().token,
            relayer_key = relayer_key.display(),
        ),
    )
    .unwrap();
    // The dev chain relays the deposit from the relayer's account: fund first, so that the
    // relayer's balance no longer moves once the server reads it.
    let offer = chain.offer(PRICE);
    let domain = paychan_core::batch::BatchDomain::new(chain.chain_id(), ESCROW);
    let (payer, mut pc) = chain.funded_channel(&offer, 31, 1_000_000).await.unwrap();
    let stderr = dir.path().join("serve.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_paychan"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .env("PAYCHAN_LOG", "info,paychan_server=debug")
        .env_remove("PAYCHAN_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let server = Server(child);
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("no listening line ({e}): {line:?}"));
    let url = format!("http://{}/v1/chat/completions", v["addr"].as_str().unwrap());
    let metrics = format!("http://{}/metrics", v["operator_addr"].as_str().unwrap());

    let http = reqwest::Client::new();
    let mut headers = Vec::new();
    let mut charged = 0u128;
    for _ in 0..2 {
        let v = pc.voucher_payload(&domain, &payer, PRICE).unwrap();
        let h = codec::encode(&PaymentPayload {
            x402_version: X402_VERSION,
            resource: None,
            accepted: offer.to_generic(),
            payload: BatchPayload::Voucher(v),
            extensions: None,
        });
        let r = http
            .post(&url)
            .header("PAYMENT-SIGNATURE", &h)
            .json(&serde_json::json!({"messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let sr: SettlementResponse =
            codec::decode(r.headers()["payment-response"].to_str().unwrap()).unwrap();
        charged += pc.apply_response(&sr, PRICE, None).unwrap();
        headers.push(h);
    }
    assert!(charged > 0);

    // The settler learns of the charges from the engine's events and the balance reader makes
    // its first read at start: wait for both (a scrape itself never waits).
    let deadline = Instant::now() + Duration::from_secs(20);
    let relayer_series = format!(
        "paychan_relayer_balance_wei{{address=\"{}\"}}",
        relayer.address
    );
    let text = loop {
        let text = http
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        #[allow(clippy::cast_precision_loss)]
        let backlog_ok =
            sample(&text, "paychan_settlement_backlog_atomic_units") == Some(charged as f64);
        if backlog_ok && sample(&text, &relayer_series).is_some() {
            break text;
        }
        assert!(Instant::now() < deadline, "metrics never settled:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        sample(&text, "paychan_settlement_backlog_channels"),
        Some(1.0)
    );
    let reader = paychan_chain::ChainReader::connect(paychan_chain::ChainConfig::new(
        chain.rpc_url(),
        chain.chain_id(),
    ))
    .await
    .unwrap();
    let wei = reader.native_balance(relayer.address).await.unwrap();
    assert!(wei > alloy_primitives::U256::ZERO);
    #[allow(clippy::cast_precision_loss)]
    let wei = wei.to::<u128>() as f64;
    assert_eq!(sample(&text, &relayer_series), Some(wei));
    assert_eq!(
        sample(&text, "paychan_requests_total{outcome=\"committed\"}"),
        Some(2.0)
    );
    drop(server);

    let log = std::fs::read_to_string(&stderr).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let channel = pc.channel_id.to_string();
    let done: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "request done")
        .collect();
    assert_eq!(done.len(), 2, "{log}");
    for d in done {
        assert_eq!(d["target"], "paychan_server");
        assert_eq!(d["span"]["channel"], channel.as_str(), "{d}");
        assert_eq!(d["span"]["outcome"], "committed", "{d}");
    }
    for h in &headers {
        assert!(!log.contains(h.as_str()), "a payment header in the log");
        let v: serde_json::Value = codec::decode(h).unwrap();
        let sig = v["payload"]["voucher"]["signature"].as_str().unwrap();
        assert!(
            !log.contains(sig.trim_start_matches("0x")),
            "a signature in the log"
        );
    }
    for key in [relayer.key.to_string(), authorizer.key.to_string()] {
        assert!(
            !log.contains(key.trim_start_matches("0x")),
            "a key in the log"
        );
    }
}
