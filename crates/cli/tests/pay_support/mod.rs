//! What the `paychan pay-proxy` and `paychan call` tests share: a dev chain, `paychan serve` as a
//! child (paychan's facilitator in-process, relaying deposits and refunds), its `/metrics`, the
//! payer's flags, and `paychan pay-proxy` as a child.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use paychan_devchain::{DevChain, Role};

use crate::support;

/// The route's per-request maximum.
pub const PRICE: u128 = 10_000;

/// A dev chain and a paid server in front of `upstream` (`"demo"` or a URL).
pub struct Stack {
    pub chain: DevChain,
    pub dir: tempfile::TempDir,
    pub server: support::Server,
}

/// Writes `text` to `path`, owner-only (key files must be).
pub fn write_secret(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl Stack {
    pub async fn start(upstream: &str) -> Self {
        let chain = DevChain::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let relayer_key = dir.path().join("relayer.key");
        write_secret(&relayer_key, &chain.account(Role::Relayer).key.to_string());
        let config = dir.path().join("paychan.toml");
        support::ServeConfig::new(&chain)
            .top(&format!(
                r#"
upstream = "{upstream}"
operator_listen = "127.0.0.1:0"
demo_price_per_token = "30"
"#
            ))
            .table(&format!(
                r#"
[facilitator]
use = "local"
relayer_key_file = "{relayer_key}"
"#,
                relayer_key = relayer_key.display(),
            ))
            .route("/v1/*", PRICE)
            .write(&config);
        let server = support::start_server(&config);
        Self { chain, dir, server }
    }

    /// The server's `/metrics.json` (operator port).
    pub async fn metrics(&self) -> serde_json::Value {
        let op = self.server.operator_addr.as_deref().unwrap();
        reqwest::get(format!("http://{op}/metrics.json"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Everything the server has charged, from `/metrics.json`.
    pub async fn charged_total(&self) -> u128 {
        let m = self.metrics().await;
        m["chargedTotal"].as_str().unwrap().parse().unwrap()
    }

    /// The payer's key (a dev account holding dev tokens), as hex.
    pub fn payer_key(&self, n: u8) -> String {
        self.chain.account(Role::Payer(n)).key.to_string()
    }

    pub async fn tokens_of_payer(&self, n: u8) -> u128 {
        self.chain
            .token_balance(self.chain.account(Role::Payer(n)).address)
            .await
            .unwrap()
            .to::<u128>()
    }

    /// The payer flags for this chain, its store in `data_dir`, paying at most `max_per_request`.
    pub fn payer_args(&self, data_dir: &Path, max_per_request: u128) -> Vec<String> {
        vec![
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--chain-id".into(),
            self.chain.chain_id().to_string(),
            "--asset".into(),
            self.chain.contracts().token.to_string(),
            "--rpc-url".into(),
            self.chain.rpc_url().to_owned(),
            "--max-per-request".into(),
            max_per_request.to_string(),
        ]
    }
}

/// `paychan pay-proxy` as a child; its stderr goes to a file the test can read.
pub struct PayProxy {
    pub child: Child,
    pub addr: String,
    pub stderr: PathBuf,
}

impl Drop for PayProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PayProxy {
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// `paychan pay-proxy <args>` with `env`; its stderr is written to `stderr`. Waits for its
/// `{"event":"listening"}` line.
pub fn start_pay_proxy(args: &[String], env: &[(&str, &str)], stderr: &Path) -> PayProxy {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paychan"));
    cmd.arg("pay-proxy")
        .args(args)
        .env_remove("PAYCHAN_PAYER_KEY")
        .env_remove("PAYCHAN_PAYER_KEY_FILE")
        .env("PAYCHAN_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        panic!(
            "pay-proxy did not start ({e}): {line:?}\n{}",
            std::fs::read_to_string(stderr).unwrap_or_default()
        )
    });
    PayProxy {
        child,
        addr: v["addr"].as_str().unwrap().to_owned(),
        stderr: stderr.to_owned(),
    }
}
