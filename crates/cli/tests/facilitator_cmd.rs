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

#[tokio::test]
async fn with_tls_the_facilitator_refuses_plaintext_and_bad_key_files() {
    use std::io::{Read, Write};
    let chain = DevChain::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("tls.pem"), dir.path().join("tls.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();

    // the certificate without its key is a usage error
    let mut c = command(&chain, dir.path());
    c.arg("--tls-cert-file").arg(&cert);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // a key file others may read is refused at start, naming it
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = command(&chain, dir.path());
    c.arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&key.display().to_string()), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "{err}");

    // with TLS it serves, and plaintext HTTP gets no HTTP answer
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = command(&chain, dir.path());
    c.arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key);
    let (_p, listening) = start(c);
    assert_eq!(listening["tls"], true);
    let addr = listening["addr"].as_str().unwrap().to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(b"GET /supported HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert!(!answer.contains("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn log_format_json_writes_one_json_object_a_line() {
    use std::io::Read;
    let chain = DevChain::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&chain, dir.path());
    c.args(["--log-format", "json"]).env("PAYCHAN_LOG", "info");
    let (mut p, _) = start(c);
    let _ = p.0.kill();
    let _ = p.0.wait();
    let mut err = String::new();
    p.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let lines: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("bearer token"))
            && l["level"] == "INFO"),
        "{err}"
    );
}
