//! `paychan serve` starts the control plane from `[control]`: on loopback, with an owner-only
//! token file in the data directory by default, and refuses an exposed address; its clients
//! take their settings from the config file, then the environment, then flags.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod support;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Output, Stdio},
};

use paychan_devchain::DevChain;
use serde_json::Value;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(chain: &DevChain, control: &str) -> String {
    support::ServeConfig::new(chain)
        .top("upstream = \"demo\"\noperator_listen = \"off\"")
        .route("/v1/*", 1000)
        .table(&format!("[control]\n{control}"))
        .text()
}

fn serve(config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_paychan"));
    c.args(["serve", "--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0"])
        .env("PAYCHAN_LOG", "warn")
        .stdin(Stdio::null());
    c
}

fn paychan(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_paychan"));
    c.args(args).env("PAYCHAN_LOG", "warn");
    for v in [
        "PAYCHAN_CONFIG",
        "PAYCHAN_GRPC_ADDR",
        "PAYCHAN_GRPC_TOKEN_FILE",
    ] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null()).output().unwrap()
}

fn code(o: &Output) -> Option<i32> {
    if o.status.code() != Some(0) {
        eprintln!("stderr: {}", String::from_utf8_lossy(&o.stderr));
    }
    o.status.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_the_control_plane_and_its_clients_find_it() {
    let chain = DevChain::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("paychan.toml");
    std::fs::write(&file, config(&chain, "listen = \"127.0.0.1:0\"")).unwrap();
    let mut child = serve(&file).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Server(child);
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let grpc = v["grpc_addr"].as_str().unwrap().to_owned();
    let token_file = dir.path().join("store").join("control.token");
    assert_eq!(v["grpc_token_file"], token_file.display().to_string());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let cfg = file.to_str().unwrap();

    // the token file comes from the config file; the address from a flag
    let o = paychan(
        &["stats", "--config", cfg, "--grpc-addr", &grpc, "--json"],
        &[],
    );
    assert_eq!(code(&o), Some(0));
    let stats: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stats["health"]["settlement"], false, "{stats}");
    assert!(
        stats["stats"].get("settlement").is_none_or(Value::is_null),
        "{stats}"
    );
    // the environment overrides the file (whose address, port 0, reaches nothing)…
    let o = paychan(
        &["stats", "--json"],
        &[("PAYCHAN_CONFIG", cfg), ("PAYCHAN_GRPC_ADDR", &grpc)],
    );
    assert_eq!(code(&o), Some(0));
    let o = paychan(&["stats"], &[("PAYCHAN_CONFIG", cfg)]);
    assert_eq!(
        code(&o),
        Some(3),
        "the file's own address is used without the others"
    );
    // …and a flag overrides the environment
    let o = paychan(
        &["channel", "list", "--grpc-addr", &grpc],
        &[
            ("PAYCHAN_CONFIG", cfg),
            ("PAYCHAN_GRPC_ADDR", "127.0.0.1:1"),
        ],
    );
    assert_eq!(code(&o), Some(0));
    // without a scheduler, claims are refused: exit 7
    let o = paychan(
        &[
            "channel",
            "claim",
            "--all",
            "--config",
            cfg,
            "--grpc-addr",
            &grpc,
        ],
        &[],
    );
    assert_eq!(code(&o), Some(7));
    // a token of another server: exit 4
    let other = dir.path().join("other.token");
    let o = paychan(
        &[
            "stats",
            "--grpc-addr",
            &grpc,
            "--token-file",
            other.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code(&o), Some(4), "a missing token file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_an_exposed_control_plane_without_the_override() {
    let chain = DevChain::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("paychan.toml");
    std::fs::write(&file, config(&chain, "listen = \"0.0.0.0:0\"")).unwrap();
    let o = serve(&file).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(o.stdout.is_empty(), "it never listened");
    assert!(!dir.path().join("store").join("control.token").exists());
}
