//! No anvil outlives its owner, even when the owner is killed with SIGKILL (no unwinding, no Drop).

#![allow(clippy::unwrap_used, unreachable_pub)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

#[test]
fn anvil_dies_with_a_sigkilled_owner() {
    let mut owner = Command::new(env!("CARGO_BIN_EXE_paychan-devchain"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(owner.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let desc: serde_json::Value = serde_json::from_str(&line).unwrap();
    let pid = desc["anvilPid"].as_u64().unwrap();
    let proc_dir = format!("/proc/{pid}");
    assert!(
        Path::new(&proc_dir).exists(),
        "anvil {pid} should be running"
    );
    owner.kill().unwrap(); // SIGKILL
    owner.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&proc_dir).exists() && !is_zombie(&proc_dir) {
        assert!(
            Instant::now() < deadline,
            "anvil {pid} outlived its SIGKILLed owner"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_zombie(proc_dir: &str) -> bool {
    std::fs::read_to_string(format!("{proc_dir}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}
