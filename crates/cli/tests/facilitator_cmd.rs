//! `paychan facilitator` as an attacker meets it: a real process on loopback in front of a real
//! dev chain. The bearer token file is created owner-only on first start; `/verify` and `/settle`
//! without the token (or with a wrong one) are `401` and act on nothing; `/supported` is open; a
//! token file others can read is refused at start, as ssh refuses such key files.

#![allow(clippy::unwrap_used, unreachable_pub)]

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    process::{Child, Command, Stdio},
};

use paychan_devchain::{DevChain, Role};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn command(chain: &DevChain, dir: &std::path::Path) -> Command {
    let key_file = dir.join("relayer.key");
    std::fs::write(&key_file, chain.account(Role::Relayer).key.to_string()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_paychan"));
    c.args(["facilitator", "--rpc-url", chain.rpc_url()])
        .args(["--chain-id", &chain.chain_id().to_string()])
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--relayer-key-file")
        .arg(&key_file)
        .args([
            "--deposit-receiver",
            &chain.account(Role::Receiver).address.to_string(),
        ])
        .env_remove("PAYCHAN_RELAYER_KEY")
        .env_remove("PAYCHAN_RECEIVER_AUTHORIZER_KEY")
        .env("PAYCHAN_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Starts the facilitator; its `listening` line.
fn start(mut c: Command) -> (Proc, serde_json::Value) {
    let mut child = c.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("facilitator did not start ({e}): {line:?}"));
    (Proc(child), v)
}

#[tokio::test]
async fn the_facilitator_command_requires_its_token_on_verify_and_settle() {
    let chain = DevChain::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (proc, listening) = start(command(&chain, dir.path()));
    let url = format!("http://{}", listening["addr"].as_str().unwrap());
    let token_file = std::path::PathBuf::from(listening["token_file"].as_str().unwrap());
    assert_eq!(
        token_file,
        dir.path().join("data").join("facilitator.token")
    );
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "token file mode {mode:o}");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim();
    assert_eq!(token.len(), 64);

    let http = reqwest::Client::new();
    let body =
        serde_json::json!({"x402Version": 2, "paymentPayload": {}, "paymentRequirements": {}});
    for path in ["/verify", "/settle"] {
        for auth in [None, Some("Bearer wrong"), Some("Basic Zm9vOmJhcg==")] {
            let mut req = http.post(format!("{url}{path}")).json(&body);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{path} with {auth:?}");
            assert_eq!(
                resp.headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok()),
                Some("Bearer")
            );
        }
        // with the token the request gets through to the facilitator, which judges it (an empty
        // payment is refused, with a verdict)
        let resp = http
            .post(format!("{url}{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path} with the token");
        let verdict: serde_json::Value = resp.json().await.unwrap();
        let ok = if path == "/verify" {
            "isValid"
        } else {
            "success"
        };
        assert_eq!(verdict[ok], false, "{verdict}");
    }
    let resp = http.get(format!("{url}/supported")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let supported: serde_json::Value = resp.json().await.unwrap();
    assert!(
        supported["kinds"].as_array().is_some_and(|k| !k.is_empty()),
        "{supported}"
    );

    // A restart keeps the token: callers configured with it keep working.
    drop(proc);
    let (_proc, listening) = start(command(&chain, dir.path()));
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap().trim(),
        token,
        "the token changed on restart"
    );
    let url = format!("http://{}", listening["addr"].as_str().unwrap());
    let resp = http
        .post(format!("{url}/verify"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_token_file_others_can_read_is_refused_at_start() {
    let chain = DevChain::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("open.token");
    std::fs::write(&token_file, "a".repeat(64)).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = command(&chain, dir.path());
    c.arg("--token-file").arg(&token_file);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "it must not start listening");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(&"a".repeat(64)), "the token leaked: {err}");
}
