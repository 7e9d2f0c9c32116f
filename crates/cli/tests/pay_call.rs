//! `paychan call` end to end against `paychan serve` (the demo upstream, priced per token, a real
//! dev chain, real sled): the summary's numbers are the server's totals and the chain's, a second
//! run reuses the channels, and a price above the limit is refused before anything is signed.

#![allow(clippy::unwrap_used, clippy::print_stdout, unreachable_pub)]

mod pay_support;
mod support;

use std::{path::Path, process::Output};

use pay_support::{PRICE, Stack};

fn call(stack: &Stack, data_dir: &Path, key: &str, max: u128, extra: &[&str]) -> Output {
    let url = format!("{}/v1/chat/completions", stack.server.url);
    std::process::Command::new(env!("CARGO_BIN_EXE_paychan"))
        .arg("call")
        .arg(&url)
        .args(stack.payer_args(data_dir, max))
        .args([
            "--data",
            r#"{"messages":[{"role":"user","content":"how much is one token?"}]}"#,
        ])
        .args(extra)
        .env_remove("PAYCHAN_PAYER_KEY_FILE")
        .env("PAYCHAN_PAYER_KEY", key)
        .env("PAYCHAN_LOG", "warn")
        .output()
        .unwrap()
}

fn summary(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "not a JSON summary ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn amount(v: &serde_json::Value) -> u128 {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paychan_call_summary_matches_the_servers_totals_and_reuses_channels() {
    let stack = Stack::start("demo").await;
    let key = stack.payer_key(2);
    let data = stack.dir.path().join("payer");
    let tokens_before = stack.tokens_of_payer(2).await;

    // 40 requests, 4 at a time.
    let out = call(
        &stack,
        &data,
        &key,
        PRICE,
        &["-n", "40", "-c", "4", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    assert_eq!(
        (
            s["requests"].as_u64(),
            s["ok"].as_u64(),
            s["errors"].as_u64()
        ),
        (Some(40), Some(40), Some(0)),
        "{s}"
    );
    assert_eq!(s["statuses"]["200"].as_u64(), Some(40), "{s}");
    let spent = amount(&s["spent"]);
    let deposited = amount(&s["deposited"]);
    // The demo upstream charges per token: below the maximum, above zero.
    assert!(spent > 0 && spent < 40 * PRICE, "{s}");
    assert_eq!(stack.charged_total().await, spent);
    let channels = s["channels"].as_u64().unwrap();
    assert!((1..=4).contains(&channels), "{s}");
    // Every deposit the summary reports left the payer's wallet, and no other.
    assert!(deposited > 0);
    assert_eq!(tokens_before - stack.tokens_of_payer(2).await, deposited);
    let lat = &s["latency_us"];
    assert!(
        lat["p50"].as_u64().unwrap() <= lat["p99"].as_u64().unwrap(),
        "{s}"
    );
    assert!(
        lat["p99"].as_u64().unwrap() <= lat["max"].as_u64().unwrap(),
        "{s}"
    );
    let m = stack.metrics().await;
    assert_eq!(m["committed"].as_u64(), Some(40), "{m}");

    // A second run with the same store reuses the channels: no deposit.
    let out = call(
        &stack,
        &data,
        &key,
        PRICE,
        &["-n", "10", "-c", "2", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s2 = summary(&out);
    assert_eq!(
        (s2["ok"].as_u64(), s2["deposited"].as_str()),
        (Some(10), Some("0")),
        "{s2}"
    );
    let spent2 = amount(&s2["spent"]);
    assert_eq!(stack.charged_total().await, spent + spent2);
    assert_eq!(tokens_before - stack.tokens_of_payer(2).await, deposited);

    // Above the spend limit: refused before anything is signed; the text summary says so and
    // the command fails.
    let out = call(&stack, &data, &key, PRICE - 1, &["-n", "3"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok 0") && text.contains("errors 3"), "{text}");
    assert!(text.contains("spend_policy×3"), "{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 of 3 requests failed"), "{err}");
    assert_eq!(stack.charged_total().await, spent + spent2);
    let m = stack.metrics().await;
    assert_eq!(m["committed"].as_u64(), Some(50), "{m}");
    // The key is in no output.
    for out in [&text, &err] {
        assert!(!out.contains(key.trim_start_matches("0x")));
    }
}
