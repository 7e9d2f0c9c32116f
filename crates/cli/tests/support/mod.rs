//! `paychan serve` as a child process, and the raw-socket helpers the attack tests share, for
//! the binary's tests.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

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
