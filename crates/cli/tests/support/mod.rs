//! `paychan serve` as a child process, its config file ([`ServeConfig`]), and the raw-socket
//! helpers the attack tests share, for the binary's tests.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

/// A `paychan.toml` for `paychan serve` against a dev chain: `data_dir = "store"`, `[chain]` and
/// `[payment]` (the dev receiver, receiver authorizer and token) always; each test adds its
/// top-level keys and further tables.
pub struct ServeConfig {
    top: Vec<String>,
    chain: String,
    tables: Vec<String>,
}

impl ServeConfig {
    pub fn new(chain: &paychan_devchain::DevChain) -> Self {
        use paychan_devchain::Role;
        let chain = format!(
            r#"[chain]
rpc_url = "{rpc}"
chain_id = {chain_id}

[payment]
receiver = "{receiver}"
receiver_authorizer = "{authorizer}"
asset = "{token}"
asset_name = "USD Coin"
asset_version = "2"
"#,
            rpc = chain.rpc_url(),
            chain_id = chain.chain_id(),
            receiver = chain.account(Role::Receiver).address,
            authorizer = chain.account(Role::ReceiverAuthorizer).address,
            token = chain.contracts().token,
        );
        Self {
            top: vec![r#"data_dir = "store""#.to_owned()],
            chain,
            tables: Vec::new(),
        }
    }

    /// Top-level keys (before the first table), e.g. `upstream = "demo"`.
    pub fn top(mut self, lines: &str) -> Self {
        self.top.push(lines.trim().to_owned());
        self
    }

    /// A table (or array-of-tables entry) after `[payment]`, e.g. a `[[route]]`.
    pub fn table(mut self, text: &str) -> Self {
        self.tables.push(text.trim().to_owned());
        self
    }

    /// A paid `[[route]]` for `path` at `price` (atomic units).
    pub fn route(self, path: &str, price: u128) -> Self {
        self.table(&format!(
            "[[route]]\npath = \"{path}\"\nprice = \"{price}\""
        ))
    }

    pub fn text(&self) -> String {
        let mut out = self.top.join("\n");
        out.push_str("\n\n");
        out.push_str(&self.chain);
        for t in &self.tables {
            out.push('\n');
            out.push_str(t);
            out.push('\n');
        }
        out
    }

    /// Writes the file.
    pub fn write(&self, path: &std::path::Path) {
        std::fs::write(path, self.text()).unwrap();
    }
}

pub struct Server {
    pub child: Child,
    pub url: String,
    pub addr: String,
    pub operator_addr: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `paychan serve --config <config> --listen 127.0.0.1:0` and waits for its
/// `{"event":"listening"}` line.
pub fn start_server(config: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_paychan"))
        .args(["serve", "--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0"])
        .env("PAYCHAN_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("server did not start ({e}): {line:?}"));
    let addr = v["addr"].as_str().unwrap().to_owned();
    Server {
        child,
        url: format!("http://{addr}"),
        addr,
        operator_addr: v["operator_addr"].as_str().map(str::to_owned),
    }
}

/// A listener that only counts connections (and answers each with a short 200): it stands in
/// for anything on this machine a request must never reach.
pub async fn canary() -> (String, std::sync::Arc<std::sync::Mutex<u32>>) {
    use tokio::io::AsyncWriteExt;
    let hits = std::sync::Arc::new(std::sync::Mutex::new(0u32));
    let h = hits.clone();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            *h.lock().unwrap() += 1;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\ncanary")
                .await;
        }
    });
    (addr, hits)
}

/// One raw HTTP/1.1 exchange on a fresh connection: the status code (0 if none came) and the
/// text, read until the peer closes (at most 10 s).
pub async fn raw(addr: &str, head: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}
