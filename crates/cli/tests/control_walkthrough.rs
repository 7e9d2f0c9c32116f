//! The README walk-through, end to end, through the `paychan` binary only: `paychan dev
//! --info-file`, 1,000 paid calls (`paychan call`), `channel list`, `channel claim`, `channel
//! settle`, the receiver's balance, `channel refund`; then the payer's own commands (`payer
//! open`, `topup`, `withdraw`, `finalize`, `status`) and the documented exit codes. Every
//! balance is read back from the chain, not from the commands' output.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

use alloy_primitives::{Address, B256};
use paychan_chain::{ChainConfig, ChainReader};
use serde_json::Value;

/// `paychan dev` as a child process, stopped on drop.
struct Dev {
    child: Child,
    info: Value,
    info_file: PathBuf,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dev {
    fn start(dir: &Path) -> Dev {
        let info_file = dir.join("info.json");
        let mut child = Command::new(env!("CARGO_BIN_EXE_paychan"))
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--chain-port",
                "0",
                "--grpc-listen",
                "127.0.0.1:0",
                "--operator-listen",
                "127.0.0.1:0",
                "--claim-every-secs",
                "0",
                "--info-file",
            ])
            .arg(&info_file)
            .env("PAYCHAN_LOG", "warn")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // The info file is written before the `listening` line.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("paychan dev did not start ({e}): {line:?}"));
        assert_eq!(v["event"], "listening", "{v}");
        let info: Value = serde_json::from_slice(&std::fs::read(&info_file).unwrap()).unwrap();
        assert_eq!(info["grpc_addr"], v["grpc_addr"], "{info} vs {v}");
        Dev {
            child,
            info,
            info_file,
        }
    }

    fn s(&self, key: &str) -> String {
        self.info[key]
            .as_str()
            .unwrap_or_else(|| panic!("info file: no string {key:?}: {}", self.info))
            .to_owned()
    }

    fn paid_url(&self) -> String {
        format!("{}{}", self.s("gateway_url"), self.s("paid_path"))
    }

    fn key(&self, i: usize) -> String {
        self.info["payer_private_keys"][i]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `paychan <args>` with the control plane's address and token in the environment.
    fn paychan(&self, args: &[&str]) -> Output {
        paychan(
            args,
            &[
                ("PAYCHAN_GRPC_ADDR", self.s("grpc_addr")),
                ("PAYCHAN_GRPC_TOKEN_FILE", self.s("grpc_token_file")),
            ],
        )
    }

    /// `paychan payer <args>` as payer `i` (key in the environment, never argv).
    fn payer(&self, i: usize, args: &[&str]) -> Output {
        let mut all = vec!["payer"];
        all.extend_from_slice(args);
        paychan(
            &all,
            &[
                ("PAYCHAN_PAYER_KEY", self.key(i)),
                ("PAYCHAN_URL", self.paid_url()),
                ("PAYCHAN_RPC_URL", self.s("rpc_url")),
            ],
        )
    }

    async fn reader(&self) -> ChainReader {
        let url = self.s("rpc_url");
        let mut cfg = ChainConfig::dev(&url);
        cfg.escrow = self.addr("settlement");
        ChainReader::connect(cfg).await.unwrap()
    }

    fn addr(&self, key: &str) -> Address {
        self.s(key).parse().unwrap()
    }

    /// Moves the chain's clock `secs` forward and mines a block.
    async fn warp(&self, secs: u64) {
        let client = reqwest::Client::new();
        for (method, params) in [
            ("evm_increaseTime", serde_json::json!([secs])),
            ("evm_mine", serde_json::json!([])),
        ] {
            let r: Value = client
                .post(self.s("rpc_url"))
                .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(r.get("error").is_none(), "{method}: {r}");
        }
    }
}

fn paychan(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_paychan"));
    c.args(args).env("PAYCHAN_LOG", "warn");
    for v in [
        "PAYCHAN_CONFIG",
        "PAYCHAN_GRPC_ADDR",
        "PAYCHAN_GRPC_TOKEN_FILE",
        "PAYCHAN_PAYER_KEY",
        "PAYCHAN_PAYER_KEY_FILE",
    ] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null()).output().unwrap()
}

/// The exit code, with the output shown when it is not `want`.
fn code(o: &Output, want: i32) {
    assert_eq!(
        o.status.code(),
        Some(want),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The JSON a successful command printed.
fn json(o: &Output) -> Value {
    code(o, 0);
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn amount(v: &Value) -> u128 {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
        .parse()
        .unwrap()
}

fn id(v: &Value) -> B256 {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_moves_every_amount_on_chain() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    // the info file: what scripts need, owner-only since it holds keys
    for k in [
        "rpc_url",
        "network",
        "token",
        "token_name",
        "token_version",
        "settlement",
        "collector",
        "gateway_url",
        "paid_path",
        "grpc_addr",
        "grpc_token_file",
        "receiver",
        "data_dir",
    ] {
        assert!(!dev.s(k).is_empty(), "{k}");
    }
    assert_eq!(dev.info["chain_id"], 31337);
    assert_eq!(dev.s("network"), "eip155:31337");
    let keys = dev.info["payer_private_keys"].as_array().unwrap();
    assert!(keys.len() >= 32, "{} keys", keys.len());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dev.info_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let mode = std::fs::metadata(dev.s("grpc_token_file"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let r = dev.reader().await;
    let token = dev.addr("token");
    let receiver = dev.addr("receiver");
    let payer0: Address = dev.info["payer_addresses"][0]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let tokens = |who| {
        let r = r.clone();
        async move { r.token_balance(token, who).await.unwrap().to::<u128>() }
    };
    let receiver0 = tokens(receiver).await;
    let payer0_start = tokens(payer0).await;
    assert!(payer0_start > 0, "dev payers are funded");

    // 1,000 paid calls
    let payer_dir = dir.path().join("payer");
    let out = paychan(
        &[
            "call",
            &dev.paid_url(),
            "-n",
            "1000",
            "-c",
            "4",
            "-d",
            r#"{"messages":[{"role":"user","content":"hello"}]}"#,
            "--chain-id",
            "31337",
            "--asset",
            &dev.s("token"),
            "--rpc-url",
            &dev.s("rpc_url"),
            "--data-dir",
            payer_dir.to_str().unwrap(),
            "--json",
        ],
        &[("PAYCHAN_PAYER_KEY", dev.key(0))],
    );
    let summary = json(&out);
    assert_eq!(
        (summary["ok"].as_u64(), summary["errors"].as_u64()),
        (Some(1000), Some(0)),
        "{summary}"
    );
    let spent = amount(&summary["spent"]);
    let deposited = amount(&summary["deposited"]);
    assert!(spent > 0 && deposited >= spent, "{summary}");
    let key_hex = dev.key(0);
    let key_hex = key_hex.trim_start_matches("0x");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(key_hex),
        "the key leaked to stderr"
    );
    assert_eq!(tokens(payer0).await, payer0_start - deposited);

    // channel list: the charges add up to what was spent; balances are the chain's
    let list = json(&dev.paychan(&["channel", "list", "--all-pages", "--json"]));
    let channels = list["channels"].as_array().unwrap().clone();
    assert!(!channels.is_empty());
    let charged: u128 = channels.iter().map(|c| amount(&c["charged"])).sum();
    assert_eq!(charged, spent);
    let mut balances = 0;
    for c in &channels {
        let st = r.channel_state(id(&c["channel_id"])).await.unwrap();
        assert_eq!(
            (st.balance, st.total_claimed),
            (amount(&c["balance"]), 0),
            "{c}"
        );
        assert_eq!(c["state"], "CHANNEL_STATE_OPEN");
        assert_eq!(amount(&c["unclaimed"]), amount(&c["charged"]));
        balances += st.balance;
    }
    assert_eq!(balances, deposited);
    // the human table lists every channel too
    let table = dev.paychan(&["channel", "list"]);
    code(&table, 0);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("CHANNEL"), "{text}");
    for c in &channels {
        assert!(text.contains(c["channel_id"].as_str().unwrap()), "{text}");
    }

    // channel claim: every channel's claimed total is its charged total
    let report = json(&dev.paychan(&["channel", "claim", "--all", "--json"]));
    assert_eq!(report["clean"], true, "{report}");
    for c in &channels {
        let st = r.channel_state(id(&c["channel_id"])).await.unwrap();
        assert_eq!(st.total_claimed, amount(&c["charged"]), "{c}");
    }
    // channel settle (the dev policy settles after each claim; this sweeps anything left)
    let report = json(&dev.paychan(&["channel", "settle", "--json"]));
    assert_eq!(report["clean"], true, "{report}");
    // the receiver's balance: everything spent, exactly
    assert_eq!(tokens(receiver).await, receiver0 + spent);
    assert_eq!(
        r.receiver_state(receiver, token).await.unwrap(),
        (spent, spent)
    );

    // channel refund: the payer gets back the balance minus what was charged
    let first = &channels[0];
    let cid = first["channel_id"].as_str().unwrap().to_owned();
    let before = tokens(payer0).await;
    let refund = json(&dev.paychan(&["channel", "refund", &cid, "--json"]));
    let back = amount(&first["balance"]) - amount(&first["charged"]);
    assert_eq!(amount(&refund["refunded"]), back, "{refund}");
    assert_eq!(tokens(payer0).await, before + back);
    let st = r.channel_state(id(&first["channel_id"])).await.unwrap();
    assert_eq!(
        (st.balance, st.total_claimed),
        (amount(&first["charged"]), amount(&first["charged"]))
    );
    // the receiver kept exactly what was charged
    assert_eq!(tokens(receiver).await, receiver0 + spent);

    // stats agree
    let stats = json(&dev.paychan(&["stats", "--json"]));
    assert_eq!(
        amount(&stats["stats"]["engine"]["charged_total"]),
        spent,
        "{stats}"
    );
    assert_eq!(stats["stats"]["engine"]["committed"], 1000);
    assert_eq!(stats["health"]["chain_reachable"], true);

    // the event stream holds the run in order: 1,000 charges among deposits, claims, the settle
    // and the refund
    let last = stats["stats"]["last_sequence"].as_u64().unwrap();
    let out = dev.paychan(&[
        "channel",
        "watch",
        "--after",
        "0",
        "--count",
        &last.to_string(),
        "--json",
    ]);
    code(&out, 0);
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
    let kinds = |k: &str| events.iter().filter(|e| e["kind"].get(k).is_some()).count();
    assert_eq!(kinds("charged"), 1000);
    assert_eq!(kinds("refunded"), 1);
    assert_eq!(kinds("claimed"), channels.len());
    assert_eq!(kinds("deposited"), channels.len());
    let charged_in_events: u128 = events
        .iter()
        .filter_map(|e| e["kind"].get("charged"))
        .map(|c| amount(&c["amount"]))
        .sum();
    assert_eq!(charged_in_events, spent);

    // exit codes scripts rely on, and nothing moved
    code(&dev.paychan(&["channel", "refund", &cid]), 7);
    code(&dev.paychan(&["channel", "show", "0x1234"]), 5);
    code(
        &dev.paychan(&["channel", "show", &format!("0x{}", "42".repeat(32))]),
        6,
    );
    code(
        &dev.paychan(&["channel", "list", "--unclaimed-above=-5"]),
        5,
    );
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "ab".repeat(32)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let o = paychan(
        &["channel", "list"],
        &[
            ("PAYCHAN_GRPC_ADDR", dev.s("grpc_addr")),
            ("PAYCHAN_GRPC_TOKEN_FILE", wrong.display().to_string()),
        ],
    );
    code(&o, 4);
    let o = paychan(
        &[
            "stats",
            "--grpc-addr",
            "127.0.0.1:1",
            "--token-file",
            &dev.s("grpc_token_file"),
        ],
        &[],
    );
    code(&o, 3);
    code(&dev.paychan(&["channel", "claim"]), 2);
    assert_eq!(tokens(receiver).await, receiver0 + spent);
    assert_eq!(tokens(payer0).await, before + back);

    // the payer's own channel: open, top up, withdraw, finalize
    let payer1: Address = dev.info["payer_addresses"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let p1 = tokens(payer1).await;
    let opened = json(&dev.payer(1, &["open", "--amount", "2000000", "--json"]));
    let ch1 = id(&opened["channel_id"]);
    assert_eq!(r.channel_state(ch1).await.unwrap().balance, 2_000_000);
    code(&dev.payer(1, &["open", "--amount", "1"]), 7);
    json(&dev.payer(1, &["topup", "--amount", "500000", "--json"]));
    assert_eq!(r.channel_state(ch1).await.unwrap().balance, 2_500_000);
    assert_eq!(tokens(payer1).await, p1 - 2_500_000);
    let w = json(&dev.payer(1, &["withdraw", "--json"]));
    assert_eq!(amount(&w["requested"]), 2_500_000);
    assert_eq!(r.pending_withdrawal(ch1).await.unwrap().0, 2_500_000);
    // too early: the escrow refuses
    code(&dev.payer(1, &["finalize"]), 7);
    let status = json(&dev.payer(1, &["status", "--json"]));
    assert_eq!(status["channels"][0]["channel_id"], opened["channel_id"]);
    assert_eq!(
        amount(&status["channels"][0]["withdrawal"]["amount"]),
        2_500_000
    );
    dev.warp(901).await;
    let f = json(&dev.payer(1, &["finalize", "--json"]));
    assert_eq!(amount(&f["withdrawn"]), 2_500_000);
    assert_eq!(r.channel_state(ch1).await.unwrap().balance, 0);
    assert_eq!(tokens(payer1).await, p1);
    // no key on the command line is accepted, and none was printed
    code(&paychan(&["payer", "status", "--key", &dev.key(1)], &[]), 2);
}
