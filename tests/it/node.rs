//! Running the interop scripts in `tests/interop/` (node + the pinned x402 reference packages) and
//! reading their one-line JSON summary.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    str::FromStr,
    time::{Duration, Instant},
};

use alloy::primitives::B256;
use serde_json::Value;

/// Upper bound for one run of a script.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(120);

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Fails with a useful message when node or the pinned reference packages are missing.
async fn require_node(root: &Path) {
    let version = tokio::process::Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await;
    match version {
        Ok(out) if out.status.success() => {}
        other => panic!(
            "interop test needs `node` (>= 20) on PATH, then `npm ci` at the repository root ({}): {other:?}",
            root.display()
        ),
    }
    for pkg in [
        "@x402/evm",
        "@x402/core",
        "@x402/express",
        "@x402/fetch",
        "express",
        "viem",
    ] {
        let manifest = root.join("node_modules").join(pkg).join("package.json");
        assert!(
            manifest.is_file(),
            "{} is missing: run `npm ci` at the repository root ({})",
            manifest.display(),
            root.display()
        );
    }
}

/// Runs `tests/interop/<script>` with `env` set (keys go through the environment, never argv) and
/// the variables in `unset` removed; returns its last stdout line, parsed, after checking
/// `"ok": true`. Panics with the script's output on any failure.
pub async fn run_script(script: &str, env: &[(&str, String)], unset: &[&str]) -> Value {
    let root = repo_root();
    require_node(&root).await;
    let path = root.join("tests/interop").join(script);
    assert!(path.is_file(), "{} is missing", path.display());
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(&path).current_dir(&root);
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let child = cmd.spawn().expect("spawn node");
    let out = tokio::time::timeout(NODE_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!("{script} did not finish within {NODE_TIMEOUT:?} (killed; run it by hand, see tests/interop/README.md)")
        })
        .expect("wait for node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed with {}\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}",
        out.status
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("{script} printed nothing\n--- stderr ---\n{stderr}"));
    let summary: Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!("{script} summary is not JSON ({e}): {line}\n--- stderr ---\n{stderr}")
    });
    assert_eq!(
        summary.get("ok"),
        Some(&Value::Bool(true)),
        "summary: {summary}\n--- stderr ---\n{stderr}"
    );
    eprintln!("{script} in {:.1?}: {summary}", started.elapsed());
    summary
}

/// A field of a summary, by path.
pub fn field<'a>(summary: &'a Value, path: &[&str]) -> &'a Value {
    let mut v = summary;
    for key in path {
        v = v
            .get(key)
            .unwrap_or_else(|| panic!("summary lacks {}: {summary}", path.join(".")));
    }
    v
}

/// An amount (decimal string) of a summary.
pub fn amount(summary: &Value, key: &str) -> u128 {
    let s = field(summary, &[key])
        .as_str()
        .unwrap_or_else(|| panic!("summary {key} is not a string: {summary}"));
    s.parse()
        .unwrap_or_else(|e| panic!("summary {key} = {s:?} is not an amount: {e}"))
}

/// A transaction hash of a summary's `transactions`.
pub fn tx_hash(summary: &Value, which: &str) -> B256 {
    let s = field(summary, &["transactions", which])
        .as_str()
        .unwrap_or_else(|| panic!("summary transactions.{which} is not a string: {summary}"));
    B256::from_str(s).unwrap_or_else(|e| panic!("transactions.{which} = {s:?}: {e}"))
}
