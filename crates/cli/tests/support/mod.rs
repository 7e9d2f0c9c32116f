//! `paychan serve` as a child process, for the binary's tests.

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
