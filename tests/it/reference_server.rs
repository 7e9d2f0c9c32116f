//! Our client pays their server: paychan-client pays a reference x402 resource server
//! (`@x402/express` with the reference batch-settlement server scheme and the reference
//! facilitator, `tests/interop/reference-server.mjs`) on a dev chain. The first call opens the
//! channel with an ERC-3009 deposit, the next ones pay by voucher in one round trip each; then the
//! client's store is deleted and a new one, with the same key, is corrected by the reference
//! server's corrective 402 and goes on; a cooperative refund returns the rest; the reference
//! channel manager claims and settles. The chain is checked to the unit, independently of both.

use std::{process::Stdio, time::Duration};

use alloy::primitives::U256;
use paychan_bindings::BatchSettlement;
use paychan_chain::{ChainConfig, ChainReader};
use paychan_client::{DepositPolicy, Payer, Receipt, SpendPolicy};
use paychan_core::sig::LocalSigner;
use paychan_devchain::{DevChain, ESCROW, Role};
use paychan_store::{SledStore, SledStoreConfig};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout},
};

use crate::node::repo_root;

const PRICE: u128 = 1_000;
const DEPOSIT: u128 = 50_000;
/// Upper bound for one exchange with the script (a settle sends two transactions).
const LINE_TIMEOUT: Duration = Duration::from_secs(90);

/// The reference server, a node child process, spoken to over its stdin and stdout.
struct RefServer {
    _child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    url: String,
}

impl RefServer {
    async fn start(chain: &DevChain) -> Self {
        let root = repo_root();
        for pkg in [
            "@x402/evm",
            "@x402/core",
            "@x402/express",
            "express",
            "viem",
        ] {
            let manifest = root.join("node_modules").join(pkg).join("package.json");
            assert!(
                manifest.is_file(),
                "{} is missing: run `npm ci` at the repository root",
                manifest.display()
            );
        }
        let key = |role: Role| chain.account(role).key.to_string();
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(root.join("tests/interop/reference-server.mjs"))
            .current_dir(&root)
            .env("PAYCHAN_RPC_URL", chain.rpc_url())
            .env("PAYCHAN_CHAIN_ID", chain.chain_id().to_string())
            .env("PAYCHAN_TOKEN", chain.contracts().token.to_checksum(None))
            .env("PAYCHAN_TOKEN_NAME", &chain.config().token_name)
            .env("PAYCHAN_TOKEN_VERSION", &chain.config().token_version)
            .env(
                "PAYCHAN_RECEIVER_ADDRESS",
                chain.account(Role::Receiver).address.to_checksum(None),
            )
            .env(
                "PAYCHAN_RECEIVER_AUTHORIZER_KEY",
                key(Role::ReceiverAuthorizer),
            )
            .env("PAYCHAN_RELAYER_KEY", key(Role::Relayer))
            .env("PAYCHAN_PRICE", PRICE.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .expect("spawn node (the interop tests need node >= 20 on PATH)");
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut s = Self {
            _child: child,
            stdin,
            lines,
            url: String::new(),
        };
        let hello = s.next_line().await;
        assert_eq!(hello["event"], "listening", "{hello}");
        s.url = hello["url"].as_str().unwrap().to_owned();
        s
    }

    async fn next_line(&mut self) -> Value {
        let line = tokio::time::timeout(LINE_TIMEOUT, self.lines.next_line())
            .await
            .expect("the reference server did not answer in time")
            .unwrap()
            .expect("the reference server exited (see its stderr above)");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_ne!(v["event"], "error", "{v}");
        v
    }

    async fn ask(&mut self, command: &str) -> Value {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
        self.next_line().await
    }

    async fn stats(&mut self) -> Value {
        let v = self.ask("stats").await;
        assert_eq!(v["event"], "stats", "{v}");
        v
    }
}

async fn payer(chain: &DevChain, key: &LocalSigner, dir: &std::path::Path) -> Payer<SledStore> {
    let reader = ChainReader::connect(ChainConfig::dev(chain.rpc_url()))
        .await
        .unwrap();
    Payer::builder()
        .signer(key.clone())
        .store(SledStore::open(SledStoreConfig::new(dir)).unwrap())
        .spend_policy(
            SpendPolicy::new(PRICE, 1_000_000)
                .allow_asset(chain.chain_id(), chain.contracts().token),
        )
        .deposit_policy(DepositPolicy::new(DEPOSIT, 0))
        .max_channels(1)
        .chain(reader)
        .build()
        .await
        .unwrap()
}

async fn call(p: &Payer<SledStore>, url: &str, n: usize) -> Receipt {
    let req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(format!(r#"{{"prompt":"call {n}"}}"#))
        .build()
        .unwrap();
    let paid = p.execute(req).await.unwrap();
    assert!(
        paid.response.status().is_success(),
        "{}",
        paid.response.status()
    );
    let receipt = paid.receipt.expect("paid");
    let v: Value = paid.response.json().await.unwrap();
    assert_eq!(v["model"], "mock-llm", "{v}");
    assert_eq!(v["echo"]["prompt"], format!("call {n}"), "{v}");
    receipt
}

fn u(x: u128) -> U256 {
    U256::from(x)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_pays_the_reference_server_deposit_vouchers_correction_refund() {
    let chain = DevChain::start().await.unwrap();
    let mut server = RefServer::start(&chain).await;
    let token = chain.contracts().token;
    let receiver = chain.account(Role::Receiver).address;
    let key = chain.funded_payer(77, 1_000_000).await.unwrap();
    let payer_before = chain.token_balance(key.address()).await.unwrap();
    let receiver_before = chain.token_balance(receiver).await.unwrap();

    // Run A: the first call probes, then deposits; the next ones carry their voucher at once.
    let dir_a = tempfile::tempdir().unwrap();
    let a = payer(&chain, &key, dir_a.path()).await;
    let mut receipts = Vec::new();
    for n in 0..8 {
        receipts.push(call(&a, &server.url, n).await);
    }
    assert_eq!(receipts[0].deposited, Some(DEPOSIT));
    assert!(receipts[0].transaction.is_some());
    assert!(receipts[1..].iter().all(|r| r.deposited.is_none()));
    // The reference server charges the full price.
    assert!(receipts.iter().all(|r| r.charged == PRICE));
    let id = receipts[0].channel_id;
    assert!(receipts.iter().all(|r| r.channel_id == id));
    let s = server.stats().await;
    assert_eq!(
        (s["requests"].as_u64(), s["paid"].as_u64()),
        (Some(9), Some(8)),
        "{s}"
    );
    assert_eq!(
        (
            s["kinds"]["deposit"].as_u64(),
            s["kinds"]["voucher"].as_u64()
        ),
        (Some(1), Some(7)),
        "{s}"
    );
    drop(a);
    drop(dir_a);

    // Run B: the store is gone. The channel is found on chain (derived salt) with nothing
    // claimed, so the client's first voucher is too low: the reference server answers with a
    // corrective 402 carrying its state and the client's own last voucher, which the client
    // checks and adopts; then it pays on, on the same channel, with no new deposit.
    let dir_b = tempfile::tempdir().unwrap();
    let b = payer(&chain, &key, dir_b.path()).await;
    for n in 8..12 {
        receipts.push(call(&b, &server.url, n).await);
    }
    assert!(
        receipts[8..]
            .iter()
            .all(|r| r.channel_id == id && r.deposited.is_none())
    );
    let s = server.stats().await;
    // Probe, the voucher the server corrected, the voucher after it, then one per call.
    assert_eq!(
        (s["requests"].as_u64(), s["paid"].as_u64()),
        (Some(9 + 6), Some(8 + 5)),
        "{s}"
    );
    assert_eq!(s["upstreamCalls"].as_u64(), Some(12), "{s}");
    let total: u128 = receipts.iter().map(|r| r.charged).sum();
    assert_eq!(total, 12 * PRICE);
    assert_eq!(b.total_charged(), total);
    for w in receipts.windows(2) {
        assert!(
            w[1].channel_charged == w[0].channel_charged + PRICE,
            "{w:?}"
        );
    }

    // The cooperative refund goes through the reference server to its facilitator.
    let refunds = b.refund_server(&receipts[0].origin).await.unwrap();
    assert_eq!(refunds.len(), 1);
    assert_eq!(
        (refunds[0].refunded, refunds[0].charged),
        (DEPOSIT - total, total)
    );
    assert!(refunds[0].transaction.starts_with("0x"));

    // The reference channel manager sweeps what was claimed to the receiver.
    let settled = server.ask("settle").await;
    assert!(settled["settle"].is_string(), "{settled}");
    let s = server.stats().await;
    assert_eq!(
        s["upstreamCalls"].as_u64(),
        Some(12),
        "the refund never reached the handler: {s}"
    );

    // On chain, to the unit: the receiver got exactly the charges, the payer paid exactly them,
    // the channel holds exactly what was claimed, one refund was made.
    assert_eq!(
        chain.token_balance(receiver).await.unwrap(),
        receiver_before + u(total)
    );
    assert_eq!(
        chain.token_balance(key.address()).await.unwrap(),
        payer_before - u(total)
    );
    let escrow = BatchSettlement::new(ESCROW, chain.provider());
    let st = escrow.channels(id).call().await.unwrap();
    assert_eq!((st.balance, st.totalClaimed), (total, total));
    assert_eq!(escrow.refundNonce(id).call().await.unwrap(), U256::from(1));
    let rs = escrow.receivers(receiver, token).call().await.unwrap();
    assert_eq!((rs.totalClaimed, rs.totalSettled), (total, total));
    drop(server.stdin.take());
}
