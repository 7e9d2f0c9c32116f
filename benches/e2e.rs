//! End-to-end benchmark: paychan's server as a child process, paid over loopback HTTP by a Rust
//! load generator built on `paychan-client` (real vouchers, real ERC-3009 deposits, one round
//! trip per call once the terms are known), beside an unpaid pass-through of the same upstream.
//!
//! ```text
//! cargo bench -p paychan-benches --bench e2e -- [--parts load,ref,exact,life,perf,chart,engine]
//!     [--channels 1,16,256,4096] [--ref-channels 1,16,256] [--secs 8] [--warmup-secs 2]
//!     [--life-calls 1000,10000] [--life-channels 16] [--perf-channels 256] [--perf-secs 8]
//!     [--perf-call-graph fp|dwarf] [--half-load-channels 16] [--half-load-rate N]
//!     [--durability fsync|flush|none] [--group-commit-window-us N] [--out DIR] [--engine]
//! ```
//!
//! What runs (all on one dev chain, anvil, with paychan's contracts at the canonical addresses):
//!
//! * **servers**: two `paychan serve` processes (the `paychan` binary, `PAYCHAN_BIN` or
//!   `target/release/paychan`, built first with `cargo build --release -p paychan-cli` unless
//!   `PAYCHAN_BIN` is set), both with the built-in demo upstream in process. The *paid* one
//!   prices `POST /v1/chat/completions` (fsync durability, default group commit, local
//!   facilitator, settlement on request only); the *unpaid* one serves the same path as a free
//!   route: same binary, same HTTP stack and upstream, no payment. That is the ceiling.
//! * **load** (`--parts load`): for each channel count N, N tasks in a closed loop, one request in
//!   flight each. Paid: one `Payer` (store in memory: the payer's own durability is not what is
//!   measured) with `max_channels = N`, so each task holds a channel; the first request of each
//!   channel deposits (not timed: the pass waits until N channels are open, then warms up, then
//!   measures). Then, at 16 channels, *half load*: the same 16 tasks paced to half the paid
//!   throughput just measured, paid and unpaid, for the added p99. After each channel count the
//!   paid server claims every channel and settles (`paychan channel claim --all`, `settle`, over
//!   its gRPC control plane), and the gas per paid call is the gas of those receipts over every
//!   paid call the channels made.
//! * **ref** (`--parts ref`): the x402 reference TypeScript server (`@x402/express` payment
//!   middleware, the reference batch-settlement server scheme and facilitator in process;
//!   `benches/reference-bench.mjs serve`, a node child process) in front of the same demo-like
//!   upstream (an OpenAI-style echo, answered in the same process), paid by the same Rust load
//!   as paychan (`Payer`, one channel per task) at each of `--ref-channels`; then its channel
//!   manager claims and settles, for the gas per paid call. Its transactions go out from a dev
//!   account of their own.
//! * **exact** (`--parts exact`): the reference stack end to end with the `exact` scheme: the
//!   reference client (`@x402/fetch`, `reference-bench.mjs load`, a second node process, N
//!   loops) pays a reference server (`exact` server scheme and facilitator) by EIP-3009
//!   `transferWithAuthorization` on the dev stablecoin, one transfer per call, settled before
//!   the answer. Client CPU is that node process's; gas is each transfer's.
//! * **life** (`--parts life`): K channels (`--life-channels`) make C calls each, then claim,
//!   settle and a cooperative refund of every channel; gas of every transaction from the first
//!   deposit on (receipts, by function) divided by K × C.
//! * **perf** (`--parts perf`): `perf record` (`--perf-call-graph fp|dwarf`) on the paid server during a paid pass; the top
//!   symbols are written to `<out>/perf-report.txt` (flat self time summed by family —
//!   secp256k1, kernel, allocator, HTTP, JSON, … — with µs per call, then by shared object and by
//!   symbol) and printed.
//! * **chart**: SVGs (log scales) of throughput and p99 against channels for the four servers (`<out>/e2e-throughput.svg`,
//!   `<out>/e2e-p99.svg`), and the table as Markdown (`<out>/e2e.md`) and JSON (`<out>/e2e.json`).
//! * **engine** (`--parts engine`, or `--engine` beside another `--parts` list): the in-process
//!   engine benchmarks, `engine_load -- throughput` and `engine_load -- scale` (accept latency
//!   and memory at 10³ / 10⁵ / 10⁶ stored channels), run through cargo after the rest.
//!
//! CPU: server CPU per call is the server process's own accounting (utime + stime of
//! `/proc/<pid>/stat`, every thread, 100 ticks a second) over the measured window divided by the
//! calls completed in it; client CPU per call is the same of this process (which runs nothing
//! but the load generator; anvil is a third process, reported apart).

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    clippy::too_many_lines,
    clippy::too_many_arguments
)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use alloy_sol_types::SolCall;
use paychan_bindings::BatchSettlement;
use paychan_client::{DepositPolicy, Payer, SpendPolicy};
use paychan_core::sig::LocalSigner;
use paychan_devchain::{DevChain, Role};
use paychan_store::MemStore;
use serde_json::{Value, json};

const PAID_PATH: &str = "/v1/chat/completions";
const BODY: &str =
    r#"{"model":"paychan-demo","messages":[{"role":"user","content":"Say hello in one word."}]}"#;
/// The route's maximum per request; the demo upstream charges less (10 a token).
const PRICE: u128 = 1_000;
/// Deposit per channel: room for 100,000 calls at the maximum.
const DEPOSIT: u128 = 100_000_000;
/// Clock ticks a second of `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 on Linux x86-64).
const TICKS: f64 = 100.0;

// ---------------------------------------------------------------- flags

struct Args {
    parts: Vec<String>,
    channels: Vec<usize>,
    secs: f64,
    warmup_secs: f64,
    life_calls: Vec<u64>,
    life_channels: usize,
    perf_channels: usize,
    perf_secs: f64,
    /// `perf record --call-graph` mode: `fp` (frame pointers; the release binary has none, so
    /// shallow) or `dwarf` (unwinds through `.eh_frame`: whole call graphs without a rebuild,
    /// more perf overhead and data).
    perf_call_graph: String,
    ref_channels: Vec<usize>,
    half_load_channels: usize,
    /// The half-load pass's rate, calls/s (default: half the paid closed-loop rate just
    /// measured). Fixed, it makes runs comparable when the VM's speed drifts.
    half_load_rate: Option<f64>,
    out: PathBuf,
    durability: String,
    group_window_us: Option<u64>,
}

fn list<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn args() -> Args {
    let mut a = Args {
        parts: list("load,ref,exact,life,perf,chart,engine"),
        channels: vec![1, 16, 256, 4096],
        secs: 8.0,
        warmup_secs: 2.0,
        life_calls: vec![1_000, 10_000],
        life_channels: 16,
        perf_channels: 256,
        perf_secs: 8.0,
        perf_call_graph: "fp".into(),
        ref_channels: vec![1, 16, 256],
        half_load_channels: 16,
        half_load_rate: None,
        out: workspace().join("benches/results"),
        durability: "fsync".into(),
        group_window_us: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(f) = it.next() {
        let mut v = || it.next().unwrap_or_default();
        match f.as_str() {
            "--parts" => a.parts = list(&v()),
            "--channels" => a.channels = list(&v()),
            "--secs" => a.secs = v().parse().unwrap_or(a.secs),
            "--warmup-secs" => a.warmup_secs = v().parse().unwrap_or(a.warmup_secs),
            "--life-calls" => a.life_calls = list(&v()),
            "--life-channels" => a.life_channels = v().parse().unwrap_or(a.life_channels),
            "--perf-channels" => a.perf_channels = v().parse().unwrap_or(a.perf_channels),
            "--perf-secs" => a.perf_secs = v().parse().unwrap_or(a.perf_secs),
            "--ref-channels" => a.ref_channels = list(&v()),
            "--perf-call-graph" => a.perf_call_graph = v(),
            "--half-load-rate" => a.half_load_rate = v().parse().ok(),
            "--half-load-channels" => {
                a.half_load_channels = v().parse().unwrap_or(a.half_load_channels);
            }
            "--out" => a.out = PathBuf::from(v()),
            // The engine rows are a part of the default run; the old flag adds them to a
            // `--parts` list that left them out.
            "--engine" => a.parts.push("engine".into()),
            "--durability" => a.durability = v(),
            "--group-commit-window-us" => a.group_window_us = v().parse().ok(),
            "--bench" => {}
            other => eprintln!("e2e: ignoring unknown flag {other}"),
        }
    }
    a
}

// ---------------------------------------------------------------- process accounting

/// utime + stime of a process, seconds (every thread, live and exited).
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the command name, which is in parentheses and may hold spaces
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15
    let tick = |i: usize| {
        f.get(i - 3)
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (tick(14) + tick(15)) as f64 / TICKS
}

/// Time the live threads of a process spent runnable but waiting for a core, seconds (field 2
/// of `/proc/<pid>/task/<tid>/schedstat`, nanoseconds). Over a window, divided by the calls in
/// it, it says how much of a call's latency was queueing for the CPU rather than work or I/O.
fn run_delay_secs(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// Busy time of the whole machine (every core), seconds: /proc/stat minus idle and iowait.
fn machine_busy_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle) as f64 / TICKS
}

/// What the processes of a pass had used at one moment: CPU of the server, the load and the
/// chain, the whole machine's busy time, and how long the server's and the load's threads
/// waited for a core. Two readings, one either side of a measured window, give the window's
/// figures per call (`pass` and `exact_pass` read it the same way).
#[derive(Debug, Clone, Copy)]
struct Usage {
    server: f64,
    load: f64,
    chain: f64,
    machine: f64,
    server_wait: f64,
    load_wait: f64,
}

impl Usage {
    fn read(server: u32, load: u32, chain: u32) -> Self {
        Self {
            server: cpu_secs(server),
            load: cpu_secs(load),
            chain: cpu_secs(chain),
            machine: machine_busy_secs(),
            server_wait: run_delay_secs(server),
            load_wait: run_delay_secs(load),
        }
    }

    /// What was used between `before` and this reading.
    fn since(self, before: Self) -> Self {
        Self {
            server: self.server - before.server,
            load: self.load - before.load,
            chain: self.chain - before.chain,
            machine: self.machine - before.machine,
            server_wait: self.server_wait - before.server_wait,
            load_wait: self.load_wait - before.load_wait,
        }
    }

    /// Writes a window's use into `p`, per call of its `calls`, over `secs` of wall time.
    fn fill(self, p: &mut Pass, secs: f64) {
        let per = |d: f64| {
            if p.calls == 0 {
                0.0
            } else {
                d * 1e6 / p.calls as f64
            }
        };
        p.server_cpu_us_per_call = per(self.server);
        p.client_cpu_us_per_call = per(self.load);
        p.chain_cpu_us_per_call = per(self.chain);
        p.server_wait_us_per_call = per(self.server_wait);
        p.client_wait_us_per_call = per(self.load_wait);
        p.other_cores =
            (self.machine - self.server - self.load - self.chain).max(0.0) / secs.max(1e-9);
    }
}

fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The busiest other processes right now (name and %CPU), to say how quiet the machine was.
fn busy_processes() -> String {
    let out = Command::new("ps")
        .args(["-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .take(4)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------- servers

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn paychan_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PAYCHAN_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from);
    let bin = target.join("release/paychan");
    eprintln!("e2e: cargo build --release -p paychan-cli (PAYCHAN_BIN skips this)");
    let ok = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "-p",
            "paychan-cli",
            "--bin",
            "paychan",
        ])
        .current_dir(workspace())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "e2e: the build failed; using the existing {}",
            bin.display()
        );
    }
    assert!(bin.exists(), "no paychan binary at {}", bin.display());
    bin
}

struct Server {
    child: Child,
    port: u16,
    grpc_port: u16,
    token_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}{PAID_PATH}", self.port)
    }

    async fn start(bin: &Path, chain: &DevChain, paid: bool, out: &Path, a: &Args) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (port, grpc_port) = (free_port(), free_port());
        let authorizer = chain.account(Role::ReceiverAuthorizer);
        let relayer = chain.account(Role::Relayer);
        write_secret(&d.join("authorizer.key"), &format!("{:x}", authorizer.key));
        write_secret(&d.join("relayer.key"), &format!("{:x}", relayer.key));
        let c = chain.contracts();
        let (routes, extra) = if paid {
            (
                format!(
                    "[[route]]\npath = \"{PAID_PATH}\"\nmethod = \"POST\"\nprice = \"{PRICE}\"\n"
                ),
                format!(
                    "[facilitator]\nuse = \"local\"\nrelayer_key_file = \"{rk}\"\nconfirmations = 1\n\n\
                     [relay]\ndeposits_per_minute = 10\nrefunds_per_minute = 10\n\n\
                     [settlement]\ninterval_secs = 0\nmax_rows_per_tx = 100\nsettle = \"manual\"\nrelayer_key_file = \"{rk}\"\n\n\
                     [control]\nlisten = \"127.0.0.1:{grpc_port}\"\n",
                    rk = d.join("relayer.key").display()
                ),
            )
        } else {
            (
                "[[route]]\npath = \"/unused-paid\"\nmethod = \"POST\"\nprice = \"1000\"\n\n\
                 [[free_route]]\npath = \"/v1/chat/completions\"\nmethod = \"POST\"\n"
                    .to_string(),
                "[control]\nlisten = \"off\"\n".to_string(),
            )
        };
        // `idle_timeout_secs`: opening 4,096 channels at once queues their deposits at the
        // relayer (~30 a second on this dev chain), so the last first calls wait minutes with no
        // byte moving; the default 60 s idle timeout closes them (as it should for a real
        // client) and their channels deposit again.
        let toml = format!(
            "listen = \"127.0.0.1:{port}\"\noperator_listen = \"off\"\ndata_dir = \"{data}\"\n\
             durability = \"{dur}\"\n{window}upstream = \"demo\"\ndemo_price_per_token = \"10\"\n\
             max_onchain_age_secs = 3600\n\n\
             [chain]\nrpc_url = \"{rpc}\"\nchain_id = {cid}\n\n\
             [payment]\nreceiver = \"{recv}\"\nreceiver_authorizer = \"{auth}\"\n\
             receiver_authorizer_key_file = \"{ak}\"\nasset = \"{token}\"\nasset_name = \"{tn}\"\nasset_version = \"{tv}\"\n\n\
             [limits]\nmax_connections = 16384\nmax_in_flight = 16384\nidle_timeout_secs = 900\n\n{routes}\n{extra}",
            data = d.join("data").display(),
            dur = a.durability,
            window = a
                .group_window_us
                .map_or(String::new(), |w| format!("group_commit_window_us = {w}\n")),
            rpc = chain.rpc_url(),
            cid = chain.chain_id(),
            recv = chain.account(Role::Receiver).address,
            auth = authorizer.address,
            ak = d.join("authorizer.key").display(),
            token = c.token,
            tn = chain.config().token_name,
            tv = chain.config().token_version,
        );
        let cfg = d.join("paychan.toml");
        std::fs::write(&cfg, toml).unwrap();
        let log = std::fs::File::create(out.join(if paid {
            "server-paid.log"
        } else {
            "server-unpaid.log"
        }))
        .unwrap();
        let child = Command::new(bin)
            .args(["--log", "warn", "serve", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let s = Self {
            child,
            port,
            grpc_port,
            token_file: d.join("data").join("control.token"),
            _dir: dir,
        };
        let http = reqwest::Client::new();
        let health = format!("http://127.0.0.1:{port}/_paychan/health");
        let started = Instant::now();
        loop {
            if http
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
                && (!paid || s.token_file.exists())
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the server did not start; see {}",
                out.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        s
    }

    /// `paychan channel <args>` against this server's control plane.
    fn control(&self, bin: &Path, args: &[&str]) -> String {
        let o = Command::new(bin)
            .args(["--log", "warn", "channel"])
            .args(args)
            .args(["--grpc-addr", &format!("127.0.0.1:{}", self.grpc_port)])
            .arg("--token-file")
            .arg(&self.token_file)
            .args(["--json"])
            .output()
            .unwrap();
        if !o.status.success() {
            eprintln!(
                "e2e: paychan channel {args:?} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

// ---------------------------------------------------------------- gas from receipts

async fn rpc(http: &reqwest::Client, url: &str, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let r: Value = http
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["result"].clone()
}

fn hex_u64(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0)
}

async fn block_number(chain: &DevChain) -> u64 {
    hex_u64(
        &rpc(
            &reqwest::Client::new(),
            chain.rpc_url(),
            "eth_blockNumber",
            json!([]),
        )
        .await,
    )
}

fn function_name(input: &str) -> String {
    let sel = input.get(2..10).unwrap_or("");
    let known = [
        (BatchSettlement::depositCall::SELECTOR, "deposit"),
        (
            BatchSettlement::claimWithSignatureCall::SELECTOR,
            "claimWithSignature",
        ),
        (BatchSettlement::claimCall::SELECTOR, "claim"),
        (BatchSettlement::settleCall::SELECTOR, "settle"),
        (
            BatchSettlement::refundWithSignatureCall::SELECTOR,
            "refundWithSignature",
        ),
        (BatchSettlement::multicallCall::SELECTOR, "multicall"),
    ];
    for (s, name) in known {
        if alloy_primitives::hex::encode(s) == sel {
            return name.into();
        }
    }
    // The `exact` scheme's transfer (EIP-3009), in both of its signature encodings.
    for sig in [
        "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)",
        "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)",
    ] {
        if alloy_primitives::hex::encode(&alloy_primitives::keccak256(sig)[..4]) == sel {
            return "transferWithAuthorization".into();
        }
    }
    format!("0x{sel}")
}

/// Gas used by every transaction in blocks `from..=to`, by function called: (count, gas).
async fn gas_by_function(chain: &DevChain, from: u64, to: u64) -> BTreeMap<String, (u64, u64)> {
    let http = reqwest::Client::new();
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for n in from..=to {
        let b = rpc(
            &http,
            chain.rpc_url(),
            "eth_getBlockByNumber",
            json!([format!("0x{n:x}"), true]),
        )
        .await;
        let Some(txs) = b["transactions"].as_array() else {
            continue;
        };
        for tx in txs {
            let r = rpc(
                &http,
                chain.rpc_url(),
                "eth_getTransactionReceipt",
                json!([tx["hash"]]),
            )
            .await;
            let name = function_name(tx["input"].as_str().unwrap_or(""));
            let e = out.entry(name).or_default();
            e.0 += 1;
            e.1 += hex_u64(&r["gasUsed"]);
        }
    }
    out
}

fn gas_sum(g: &BTreeMap<String, (u64, u64)>, names: &[&str]) -> u64 {
    g.iter()
        .filter(|(k, _)| names.contains(&k.as_str()))
        .map(|(_, v)| v.1)
        .sum()
}

fn gas_text(g: &BTreeMap<String, (u64, u64)>) -> String {
    g.iter()
        .map(|(k, (n, gas))| format!("{k} ×{n} {gas}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------- load

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Paid,
    Unpaid,
    /// The reference TypeScript server (`@x402/express`, batch-settlement), paid by the same
    /// Rust load as paychan.
    RefBatch,
    /// The reference stack end to end with the `exact` scheme: one EIP-3009 transfer per call.
    RefExact,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Paid => "paychan paid",
            Kind::Unpaid => "unpaid pass-through",
            Kind::RefBatch => "reference TS server, batch-settlement",
            Kind::RefExact => "reference stack, exact",
        }
    }
}

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    url: reqwest::Url,
    payer: Option<Payer<MemStore>>,
}

/// Prints each kind of failed paid call once (its text up to the first digit: ids and amounts
/// differ), at most 12 kinds.
fn failed(text: String) {
    static SHOWN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let kind: String = text.chars().take_while(|c| !c.is_ascii_digit()).collect();
    let mut shown = SHOWN.lock().unwrap();
    if shown.len() < 12 && !shown.contains(&kind) {
        shown.push(kind);
        eprintln!("e2e: paid call failed: {text}");
    }
}

impl Client {
    /// One call; true when it succeeded (200 and the whole body read).
    async fn call(&self) -> bool {
        let req = self
            .http
            .post(self.url.clone())
            .header("content-type", "application/json")
            .body(BODY);
        match &self.payer {
            Some(p) => match p.send(req).await {
                Ok(r) => {
                    let status = r.response.status();
                    let ok = status.is_success() && r.receipt.is_some();
                    if !ok {
                        failed(format!(
                            "status {status}{}",
                            if r.receipt.is_none() {
                                ", no receipt"
                            } else {
                                ""
                            }
                        ));
                    }
                    r.response.bytes().await.is_ok() && ok
                }
                Err(e) => {
                    failed(e.to_string());
                    // A payer that refuses at once (say, after judging the server untrusted)
                    // must not keep this worker from the timers and sockets of the others.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    false
                }
            },
            None => match req.send().await {
                Ok(r) => {
                    let ok = r.status().is_success();
                    r.bytes().await.is_ok() && ok
                }
                Err(_) => false,
            },
        }
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn payer(
    chain: &DevChain,
    seed: u64,
    channels: usize,
    http: reqwest::Client,
) -> Payer<MemStore> {
    // Twice what the channels need: a deposit relayed but whose answer was lost (a timeout,
    // a dropped connection) is signed again on the next call (this payer has no chain reader
    // to find it with); the opening line counts every deposit.
    let tokens = DEPOSIT * (2 * channels as u128 + 1);
    let key: LocalSigner = chain.funded_payer(seed, tokens).await.unwrap();
    Payer::builder()
        .signer(key)
        .store(MemStore::new())
        .spend_policy(
            SpendPolicy::new(PRICE, DEPOSIT).allow_asset(chain.chain_id(), chain.contracts().token),
        )
        .deposit_policy(DepositPolicy::new(DEPOSIT, 0))
        .max_channels(channels)
        .http_client(http)
        .build()
        .await
        .unwrap()
}

#[derive(Debug, Clone, Default, serde::Serialize)]
struct Pass {
    kind: String,
    channels: usize,
    /// Paced rate (calls/s) for half-load passes, 0 for a closed loop.
    paced: f64,
    calls: u64,
    errors: u64,
    secs: f64,
    throughput: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    server_cpu_us_per_call: f64,
    client_cpu_us_per_call: f64,
    chain_cpu_us_per_call: f64,
    server_rss_mib: f64,
    /// Time the server's and this process's threads waited for a core (runnable, not
    /// running) over the window, per call, µs.
    server_wait_us_per_call: f64,
    client_wait_us_per_call: f64,
    /// CPU used by everything else on the machine during the window (other builds, the idle
    /// second server, the kernel's own threads), in cores.
    other_cores: f64,
    /// Gas of claim + settle receipts per paid call (paid, closed-loop rows).
    gas_per_call: Option<f64>,
    load: String,
}

/// Nearest-rank percentile (per mille) of sorted `v`.
fn pct(v: &[u32], per_mille: usize) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = (per_mille * v.len()).div_ceil(1000).max(1);
    u64::from(v[rank.min(v.len()) - 1])
}

const WARM: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Runs `n` tasks, each calling in a closed loop (or paced at `rate / n` a second each); waits
/// until every task finished its first call (the deposits), warms up, measures for `secs`.
/// Returns the pass and the total of successful calls made (all phases).
async fn pass(
    client: &Client,
    kind: Kind,
    n: usize,
    rate: f64,
    warmup: f64,
    secs: f64,
    server_pid: u32,
    chain_pid: u32,
    during: Option<Box<dyn FnOnce() + Send>>,
) -> (Pass, u64) {
    let phase = Arc::new(AtomicU8::new(WARM));
    let opened = Arc::new(AtomicUsize::new(0));
    let total_ok = Arc::new(AtomicU64::new(0));
    let interval = (rate > 0.0).then(|| Duration::from_secs_f64(n as f64 / rate));
    let (go_tx, go) = tokio::sync::watch::channel(false);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let (c, phase, opened, total_ok, mut go) = (
            client.clone(),
            phase.clone(),
            opened.clone(),
            total_ok.clone(),
            go.clone(),
        );
        set.spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(4096);
            let mut errors = 0u64;
            let ok = c.call().await;
            total_ok.fetch_add(u64::from(ok), Relaxed);
            opened.fetch_add(1, Relaxed);
            // Wait for the others' first calls: a task looping meanwhile would starve the
            // deposits still being relayed (4,096 channels took minutes to open that way).
            let _ = go.wait_for(|g| *g).await;
            // spread paced tasks over one interval
            let mut next = Instant::now()
                + interval.map_or(Duration::ZERO, |iv| iv.mul_f64(i as f64 / n as f64));
            loop {
                if let Some(iv) = interval {
                    let now = Instant::now();
                    if next > now {
                        tokio::time::sleep(next - now).await;
                    }
                    next += iv;
                    if next < Instant::now() {
                        next = Instant::now();
                    }
                }
                let p0 = phase.load(Relaxed);
                if p0 == STOP {
                    break;
                }
                let t = Instant::now();
                let ok = c.call().await;
                let us = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                total_ok.fetch_add(u64::from(ok), Relaxed);
                if p0 == MEASURE && phase.load(Relaxed) == MEASURE {
                    if ok {
                        lat.push(us);
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        });
    }
    let t_open = Instant::now();
    let mut said = Instant::now();
    while opened.load(Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if said.elapsed() > Duration::from_secs(30) {
            said = Instant::now();
            eprintln!(
                "  {} of {n} first calls done after {:.0} s ({} succeeded)",
                opened.load(Relaxed),
                t_open.elapsed().as_secs_f64(),
                total_ok.load(Relaxed)
            );
        }
        if t_open.elapsed() > Duration::from_secs(600) {
            eprintln!(
                "e2e: only {} of {n} channels opened in 600 s",
                opened.load(Relaxed)
            );
            break;
        }
    }
    let _ = go_tx.send(true);
    if n > 1 {
        eprintln!(
            "  {} tasks started ({:.1} s for the first calls)",
            n,
            t_open.elapsed().as_secs_f64()
        );
    }
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    let load = format!("loadavg {} (before)", loadavg());
    let me = std::process::id();
    let before = Usage::read(server_pid, me, chain_pid);
    let t0 = Instant::now();
    phase.store(MEASURE, Relaxed);
    if let Some(f) = during {
        tokio::task::spawn_blocking(f).await.unwrap();
    } else {
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    }
    phase.store(STOP, Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let used = Usage::read(server_pid, me, chain_pid).since(before);
    let rss = rss_mib(server_pid);
    let mut lat = Vec::new();
    let mut errors = 0;
    // A task can still be in its first call when the open timed out (above): it is given a
    // minute more, then abandoned, so the pass ends either way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(r)) => {
                let (l, e) = r.unwrap();
                lat.extend(l);
                errors += e;
            }
            Ok(None) => break,
            Err(_) => {
                eprintln!(
                    "e2e: {} tasks still in a call 60 s after the window; abandoned",
                    set.len()
                );
                set.abort_all();
                while set.join_next().await.is_some() {}
                break;
            }
        }
    }
    lat.sort_unstable();
    let calls = lat.len() as u64;
    let mut p = Pass {
        kind: kind.name().into(),
        channels: n,
        paced: rate,
        calls,
        errors,
        secs: elapsed,
        throughput: calls as f64 / elapsed,
        p50_us: pct(&lat, 500),
        p99_us: pct(&lat, 990),
        p999_us: pct(&lat, 999),
        server_rss_mib: rss,
        load,
        ..Pass::default()
    };
    used.fill(&mut p, elapsed);
    (p, total_ok.load(Relaxed))
}

fn show(p: &Pass) {
    eprintln!(
        "  {:<20} ch {:>5}{} {:>8.0}/s  p50 {:>6} µs  p99 {:>6} µs  p99.9 {:>6} µs  server {:>6.1} µs/call (waited {:.1})  client {:>6.1} µs/call (waited {:.1})  others {:.2} cores  errors {}",
        p.kind,
        p.channels,
        if p.paced > 0.0 {
            format!(" paced {:>6.0}/s", p.paced)
        } else {
            String::new()
        },
        p.throughput,
        p.p50_us,
        p.p99_us,
        p.p999_us,
        p.server_cpu_us_per_call,
        p.server_wait_us_per_call,
        p.client_cpu_us_per_call,
        p.client_wait_us_per_call,
        p.other_cores,
        p.errors
    );
}

/// Sums a `perf report --sort dso,symbol` listing into families of symbols, with each family's
/// share of the server CPU per call.
fn families(report: &str, us_per_call: f64) -> String {
    let rules: [(&str, &[&str]); 11] = [
        (
            "secp256k1 (libsecp256k1, k256, crypto_bigint)",
            &[
                "secp256k1",
                "k256",
                "crypto_bigint",
                "elliptic_curve",
                "wnaf",
                "ecdsa",
                "primeorder",
            ],
        ),
        ("keccak", &["Keccak", "keccak"]),
        ("kernel (TCP loopback, fdatasync, scheduling)", &["[kernel"]),
        ("allocator (mimalloc)", &["mi_", "mimalloc"]),
        (
            "memcpy / memset",
            &["memmove", "memcpy", "memset", "memcmp"],
        ),
        ("JSON (serde)", &["serde", "json"]),
        ("base64", &["base64"]),
        (
            "HTTP (hyper, axum, tower)",
            &["hyper", "h2::", "http::", "httparse", "axum", "tower"],
        ),
        ("tokio", &["tokio"]),
        ("store (sled, WAL)", &["sled", "paychan_store", "crc"]),
        ("paychan (other)", &["paychan"]),
    ];
    let mut sums: BTreeMap<&str, f64> = BTreeMap::new();
    for l in report.lines() {
        let t = l.trim_start();
        let Some((pc, rest)) = t.split_once('%') else {
            continue;
        };
        let Ok(pc) = pc.trim().parse::<f64>() else {
            continue;
        };
        let fam = rules
            .iter()
            .find(|(_, keys)| keys.iter().any(|k| rest.contains(k)))
            .map_or("other", |r| r.0);
        *sums.entry(fam).or_default() += pc;
    }
    let mut v: Vec<_> = sums.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.iter()
        .map(|(f, pc)| format!("{pc:6.2}%  {:6.1} µs/call  {f}", pc / 100.0 * us_per_call))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------- the reference stack (node)

/// A `node benches/reference-bench.mjs <mode>` child: JSON lines on stdout, commands on stdin,
/// diagnostics to a log file in the output directory.
struct Node {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Node {
    fn spawn(mode: &str, env: &[(&str, String)], log: &Path) -> Self {
        for pkg in [
            "@x402/evm",
            "@x402/core",
            "@x402/express",
            "@x402/fetch",
            "express",
            "viem",
        ] {
            let manifest = workspace()
                .join("node_modules")
                .join(pkg)
                .join("package.json");
            assert!(
                manifest.is_file(),
                "{} is missing: run `npm ci` at the repository root",
                manifest.display()
            );
        }
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(workspace().join("benches/reference-bench.mjs"))
            .arg(mode)
            .current_dir(workspace())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn node (>= 20, on PATH)");
        let stdin = child.stdin.take();
        let lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
            child.stdout.take().unwrap(),
        ));
        Self {
            child,
            stdin,
            lines,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The next JSON line; panics on an `error` event, a timeout or an exit.
    async fn line(&mut self, within: Duration, log: &Path) -> Value {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("node did not answer in time; see {}", log.display()))
            .unwrap()
            .unwrap_or_else(|| panic!("node exited; see {}", log.display()));
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_ne!(v["event"], "error", "{v}; see {}", log.display());
        v
    }

    async fn send(&mut self, command: &str) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }
}

/// What every mode of the script needs: the chain, the token, the receiver, the price.
fn node_env(chain: &DevChain) -> Vec<(&'static str, String)> {
    vec![
        ("PAYCHAN_RPC_URL", chain.rpc_url().to_string()),
        ("PAYCHAN_CHAIN_ID", chain.chain_id().to_string()),
        ("PAYCHAN_TOKEN", chain.contracts().token.to_checksum(None)),
        ("PAYCHAN_TOKEN_NAME", chain.config().token_name.clone()),
        (
            "PAYCHAN_TOKEN_VERSION",
            chain.config().token_version.clone(),
        ),
        (
            "PAYCHAN_RECEIVER_ADDRESS",
            chain.account(Role::Receiver).address.to_checksum(None),
        ),
        ("PAYCHAN_PRICE", PRICE.to_string()),
    ]
}

/// A reference server (`serve` mode) for `scheme`. Its transactions go out from a dev account
/// of its own (paychan's servers use the relayer's), so that neither's nonces race the other's.
async fn reference_server(chain: &DevChain, scheme: &str, log: &Path) -> (Node, String) {
    let mut env = node_env(chain);
    env.push(("PAYCHAN_SCHEME", scheme.to_string()));
    env.push((
        "PAYCHAN_RELAYER_KEY",
        chain.account(Role::Payer(5)).key.to_string(),
    ));
    env.push((
        "PAYCHAN_RECEIVER_AUTHORIZER_KEY",
        chain.account(Role::ReceiverAuthorizer).key.to_string(),
    ));
    let mut node = Node::spawn("serve", &env, log);
    let hello = node.line(Duration::from_secs(60), log).await;
    assert_eq!(hello["event"], "listening", "{hello}");
    let url = hello["url"].as_str().unwrap().to_owned();
    (node, url)
}

/// The secret of `DevChain::funded_payer(seed, …)`, for a payer that is not this process.
fn funded_payer_secret(seed: u64) -> alloy_primitives::B256 {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(b"paychan!");
    secret[24..].copy_from_slice(&seed.to_be_bytes());
    alloy_primitives::B256::from(secret)
}

/// One `exact` pass: the reference client (`load` mode, its own node process) with `n` loops
/// against the reference `exact` server; measured like [`pass`], the client CPU being the load
/// process's. Every call is one transfer on chain; the gas column is the gas of each.
async fn exact_pass(
    chain: &DevChain,
    url: &str,
    n: usize,
    seed: u64,
    a: &Args,
    server_pid: u32,
    chain_pid: u32,
) -> Pass {
    // enough for every call the pass can make at the price
    let key = chain.funded_payer(seed, PRICE * 10_000_000).await.unwrap();
    let secret = funded_payer_secret(seed);
    assert_eq!(
        LocalSigner::from_bytes(&secret).unwrap().address(),
        key.address(),
        "the dev chain's payer keys changed"
    );
    let log = a.out.join("reference-exact-load.log");
    let mut env = node_env(chain);
    env.push(("PAYCHAN_URL", url.to_string()));
    env.push(("PAYCHAN_CONCURRENCY", n.to_string()));
    env.push(("PAYCHAN_PAYER_KEY", secret.to_string()));
    let b0 = block_number(chain).await + 1;
    let t_open = Instant::now();
    let mut load = Node::spawn("load", &env, &log);
    let ready = load.line(Duration::from_secs(600), &log).await;
    assert_eq!(ready["event"], "ready", "{ready}");
    eprintln!(
        "  {n} loops started ({:.1} s for the first calls)",
        t_open.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs_f64(a.warmup_secs)).await;
    let lp = load.pid();
    let loadavg_before = format!("loadavg {} (before)", loadavg());
    let before = Usage::read(server_pid, lp, chain_pid);
    let t0 = Instant::now();
    load.send("measure").await;
    let m = load.line(Duration::from_secs(30), &log).await;
    assert_eq!(m["event"], "measuring", "{m}");
    tokio::time::sleep(Duration::from_secs_f64(a.secs)).await;
    let used = Usage::read(server_pid, lp, chain_pid).since(before);
    let elapsed = t0.elapsed().as_secs_f64();
    let rss = rss_mib(server_pid);
    load.send("stop").await;
    let r = load.line(Duration::from_secs(120), &log).await;
    assert_eq!(r["event"], "result", "{r}");
    drop(load);
    let b1 = block_number(chain).await;
    let g = gas_by_function(chain, b0, b1).await;
    let (transfers, transfer_gas) = g
        .get("transferWithAuthorization")
        .copied()
        .unwrap_or_default();
    eprintln!("  on chain: {}", gas_text(&g));
    let calls = r["calls"].as_u64().unwrap_or(0);
    let secs = r["secs"].as_f64().unwrap_or(elapsed).max(1e-9);
    let mut p = Pass {
        kind: Kind::RefExact.name().into(),
        channels: n,
        calls,
        errors: r["errors"].as_u64().unwrap_or(0),
        secs,
        throughput: calls as f64 / secs,
        p50_us: r["p50_us"].as_u64().unwrap_or(0),
        p99_us: r["p99_us"].as_u64().unwrap_or(0),
        p999_us: r["p999_us"].as_u64().unwrap_or(0),
        server_rss_mib: rss,
        gas_per_call: (transfers > 0).then(|| transfer_gas as f64 / transfers as f64),
        load: loadavg_before,
        ..Pass::default()
    };
    // The load process's window is its own `secs`; the machine's is this process's.
    used.fill(&mut p, elapsed);
    p
}

// ---------------------------------------------------------------- charts

fn chart(out: &Path, file: &str, title: &str, y_desc: &str, series: &[(String, Vec<(f64, f64)>)]) {
    use plotters::prelude::*;
    let path = out.join(file);
    let root = SVGBackend::new(&path, (820, 480)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let xmax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(1.0f64, f64::max)
        * 1.5;
    // log scale on both axes: the four servers lie two to three orders of magnitude apart
    let ys = || {
        series
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.1))
            .filter(|y| *y > 0.0)
    };
    let ymax = ys().fold(1e-3f64, f64::max) * 1.5;
    let ymin = ys().fold(ymax, f64::min) / 1.5;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d((0.7f64..xmax).log_scale(), (ymin..ymax).log_scale())
        .unwrap();
    c.configure_mesh()
        .x_desc("channels (concurrent requests, closed loop)")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 10.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .draw()
        .unwrap();
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN];
    for (i, (name, pts)) in series.iter().enumerate() {
        let col = colors[i % colors.len()];
        let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.1 > 0.0).collect();
        if pts.is_empty() {
            continue;
        }
        c.draw_series(LineSeries::new(pts.iter().copied(), col.stroke_width(2)))
            .unwrap()
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        c.draw_series(pts.iter().map(|p| Circle::new(*p, 4, col.filled())))
            .unwrap();
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .unwrap();
    root.present().unwrap();
    eprintln!("  wrote {}", path.display());
}

// ---------------------------------------------------------------- main

#[tokio::main]
async fn main() {
    let a = args();
    std::fs::create_dir_all(&a.out).unwrap();
    let want = |p: &str| a.parts.iter().any(|x| x == p);
    let machine = format!(
        "{} cores, loadavg {} at start; busiest: {}",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        loadavg(),
        busy_processes()
    );
    eprintln!("e2e: {machine}");
    let bin = paychan_bin();
    let chain = DevChain::start().await.unwrap();
    let chain_pid = chain.pid();
    let paid = Server::start(&bin, &chain, true, &a.out, &a).await;
    let unpaid = Server::start(&bin, &chain, false, &a.out, &a).await;
    eprintln!(
        "e2e: paid server pid {} at {}, unpaid pid {} at {}, anvil pid {chain_pid}",
        paid.pid(),
        paid.url(),
        unpaid.pid(),
        unpaid.url()
    );
    let http = http_client();
    let mut passes: Vec<Pass> = Vec::new();
    let mut life: Vec<Value> = Vec::new();
    let mut seed = 1_000u64;

    if want("load") {
        for &n in &a.channels {
            eprintln!("e2e: {n} channels");
            let up = Client {
                http: http.clone(),
                url: unpaid.url().parse().unwrap(),
                payer: None,
            };
            let (p, _) = pass(
                &up,
                Kind::Unpaid,
                n,
                0.0,
                a.warmup_secs,
                a.secs,
                unpaid.pid(),
                chain_pid,
                None,
            )
            .await;
            show(&p);
            passes.push(p);
            seed += 1;
            let pc = Client {
                http: http.clone(),
                url: paid.url().parse().unwrap(),
                payer: Some(payer(&chain, seed, n, http.clone()).await),
            };
            let b0 = block_number(&chain).await + 1;
            let (mut p, mut total) = pass(
                &pc,
                Kind::Paid,
                n,
                0.0,
                a.warmup_secs,
                a.secs,
                paid.pid(),
                chain_pid,
                None,
            )
            .await;
            let mut half = Vec::new();
            if n == a.half_load_channels && p.throughput > 0.0 {
                let rate = a.half_load_rate.unwrap_or(p.throughput / 2.0);
                let (h, t) = pass(
                    &pc,
                    Kind::Paid,
                    n,
                    rate,
                    a.warmup_secs,
                    a.secs,
                    paid.pid(),
                    chain_pid,
                    None,
                )
                .await;
                total += t;
                half.push(h);
                let (h, _) = pass(
                    &up,
                    Kind::Unpaid,
                    n,
                    rate,
                    a.warmup_secs,
                    a.secs,
                    unpaid.pid(),
                    chain_pid,
                    None,
                )
                .await;
                half.push(h);
            }
            let b1 = block_number(&chain).await;
            let opened = gas_by_function(&chain, b0, b1).await;
            paid.control(&bin, &["claim", "--all"]);
            paid.control(&bin, &["settle"]);
            let b2 = block_number(&chain).await;
            let g = gas_by_function(&chain, b1 + 1, b2).await;
            let settle_gas = gas_sum(&g, &["claimWithSignature", "claim", "settle", "multicall"]);
            p.gas_per_call = (total > 0).then(|| settle_gas as f64 / total as f64);
            eprintln!(
                "  opening: {}; claim + settle: {} over {total} paid calls = {:.3} gas/call",
                gas_text(&opened),
                gas_text(&g),
                p.gas_per_call.unwrap_or(0.0)
            );
            show(&p);
            passes.push(p);
            for h in half {
                show(&h);
                passes.push(h);
            }
        }
    }

    if want("ref") {
        let log = a.out.join("reference-batch-server.log");
        let (mut node, url) = reference_server(&chain, "batch-settlement", &log).await;
        eprintln!(
            "e2e: reference batch-settlement server pid {} at {url}",
            node.pid()
        );
        for &n in &a.ref_channels {
            eprintln!("e2e: reference batch-settlement server, {n} channels");
            seed += 1;
            let rc = Client {
                http: http.clone(),
                url: url.parse().unwrap(),
                payer: Some(payer(&chain, seed, n, http.clone()).await),
            };
            let (mut p, total) = pass(
                &rc,
                Kind::RefBatch,
                n,
                0.0,
                a.warmup_secs,
                a.secs,
                node.pid(),
                chain_pid,
                None,
            )
            .await;
            let b1 = block_number(&chain).await;
            node.send("settle").await;
            let settled = node.line(Duration::from_secs(600), &log).await;
            assert_eq!(settled["event"], "settled", "{settled}");
            let b2 = block_number(&chain).await;
            let g = gas_by_function(&chain, b1 + 1, b2).await;
            let settle_gas = gas_sum(&g, &["claimWithSignature", "claim", "settle", "multicall"]);
            p.gas_per_call = (total > 0).then(|| settle_gas as f64 / total as f64);
            eprintln!(
                "  claim + settle: {} over {total} paid calls = {:.3} gas/call",
                gas_text(&g),
                p.gas_per_call.unwrap_or(0.0)
            );
            show(&p);
            passes.push(p);
        }
    }

    if want("exact") {
        let log = a.out.join("reference-exact-server.log");
        let (node, url) = reference_server(&chain, "exact", &log).await;
        eprintln!("e2e: reference exact server pid {} at {url}", node.pid());
        for &n in &a.ref_channels {
            eprintln!("e2e: reference stack, exact, {n} concurrent calls");
            seed += 1;
            let p = exact_pass(&chain, &url, n, seed, &a, node.pid(), chain_pid).await;
            show(&p);
            passes.push(p);
        }
    }

    if want("life") {
        for &calls in &a.life_calls {
            let k = a.life_channels;
            eprintln!("e2e: channel life, {k} channels × {calls} calls");
            seed += 1;
            let p = payer(&chain, seed, k, http.clone()).await;
            let b0 = block_number(&chain).await + 1;
            let t = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..k {
                let c = Client {
                    http: http.clone(),
                    url: paid.url().parse().unwrap(),
                    payer: Some(p.clone()),
                };
                set.spawn(async move {
                    let mut ok = 0u64;
                    for _ in 0..calls {
                        ok += u64::from(c.call().await);
                    }
                    ok
                });
            }
            let mut ok = 0;
            while let Some(r) = set.join_next().await {
                ok += r.unwrap();
            }
            let secs = t.elapsed().as_secs_f64();
            paid.control(&bin, &["claim", "--all"]);
            paid.control(&bin, &["settle"]);
            let mut refunded = 0;
            for ch in p.channels() {
                match p.refund(ch.channel_id).await {
                    Ok(_) => refunded += 1,
                    Err(e) => eprintln!("e2e: refund of {} failed: {e}", ch.channel_id),
                }
            }
            let b1 = block_number(&chain).await;
            let g = gas_by_function(&chain, b0, b1).await;
            let total: u64 = g.values().map(|v| v.1).sum();
            let per = total as f64 / ok.max(1) as f64;
            eprintln!(
                "  {ok} calls in {secs:.1} s on {} channels ({refunded} refunded): {} = {total} gas, {per:.1} gas/call",
                p.channels().len(),
                gas_text(&g)
            );
            life.push(json!({
                "channels": p.channels().len(), "calls_per_channel": calls, "paid_calls": ok,
                "refunded": refunded, "gas_total": total, "gas_per_call": per,
                "by_function": g.iter().map(|(k, v)| (k.clone(), json!({"count": v.0, "gas": v.1}))).collect::<serde_json::Map<_, _>>(),
            }));
        }
    }

    let mut perf_top = String::new();
    if want("perf") {
        let n = a.perf_channels;
        eprintln!("e2e: perf record on the paid server, {n} channels");
        seed += 1;
        let pc = Client {
            http: http.clone(),
            url: paid.url().parse().unwrap(),
            payer: Some(payer(&chain, seed, n, http.clone()).await),
        };
        let data = a.out.join("perf.data");
        let pid = paid.pid();
        let secs = a.perf_secs;
        let data2 = data.clone();
        let (call_graph, hz) = if a.perf_call_graph == "dwarf" {
            ("dwarf,8192", "299")
        } else {
            ("fp", "999")
        };
        let record = move || {
            let st = Command::new("perf")
                .args(["record", "--call-graph", call_graph, "-F", hz, "-o"])
                .arg(&data2)
                .args(["-p", &pid.to_string(), "--", "sleep", &format!("{secs}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !st.is_ok_and(|s| s.success()) {
                eprintln!("e2e: perf record failed");
            }
        };
        let (p, _) = pass(
            &pc,
            Kind::Paid,
            n,
            0.0,
            a.warmup_secs,
            secs,
            pid,
            chain_pid,
            Some(Box::new(record)),
        )
        .await;
        eprint!("  under perf: ");
        show(&p);
        let report = |sort: &str| {
            Command::new("perf")
                .args([
                    "report",
                    "--stdio",
                    "--no-children",
                    "--percent-limit",
                    "0",
                    "--sort",
                    sort,
                    "-g",
                    "none",
                    "-i",
                ])
                .arg(&data)
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(|l| l.trim_end_matches([' ', '-']))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default()
        };
        let by_symbol = report("dso,symbol");
        let text = format!(
            "# perf record --call-graph {call_graph} -F {hz} on the paid server, {n} channels, {:.0} paid calls/s, {:.1} µs of server CPU per call\n\n## by family\n{}\n## by shared object\n{}\n## by symbol\n{}",
            p.throughput,
            p.server_cpu_us_per_call,
            families(&by_symbol, p.server_cpu_us_per_call),
            report("dso"),
            by_symbol
        );
        std::fs::write(a.out.join("perf-report.txt"), &text).unwrap();
        perf_top = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .take(60)
            .collect::<Vec<_>>()
            .join("\n");
        eprintln!("{perf_top}");
    }

    // ------------------------------------------------------------ table, charts
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {machine}. Paid server: durability {}, group commit window {}.\n",
        a.durability,
        a.group_window_us
            .map_or("default".into(), |w| format!("{w} µs"))
    );
    let _ = writeln!(
        md,
        "| server | channels | paced | calls/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/call | client CPU µs/call | waited for a core, server / client µs/call | anvil CPU µs/call | other load, cores | gas/paid call (claim + settle; exact: its transfer) | errors |"
    );
    let _ = writeln!(
        md,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for p in &passes {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {:.1} | {:.1} | {:.1} / {:.1} | {:.1} | {:.2} | {} | {} |",
            p.kind,
            p.channels,
            if p.paced > 0.0 {
                format!("{:.0}/s", p.paced)
            } else {
                "closed loop".into()
            },
            p.throughput,
            p.p50_us,
            p.p99_us,
            p.p999_us,
            p.server_cpu_us_per_call,
            p.client_cpu_us_per_call,
            p.server_wait_us_per_call,
            p.client_wait_us_per_call,
            p.chain_cpu_us_per_call,
            p.other_cores,
            p.gas_per_call.map_or("—".into(), |g| format!("{g:.3}")),
            p.errors
        );
    }
    let find = |kind: Kind, n: usize, paced: bool| {
        passes
            .iter()
            .find(|p| p.kind == kind.name() && p.channels == n && (p.paced > 0.0) == paced)
    };
    let _ = writeln!(md);
    for &n in &a.channels {
        if let (Some(p), Some(u)) = (find(Kind::Paid, n, false), find(Kind::Unpaid, n, false)) {
            let _ = writeln!(
                md,
                "- {n} channels: paid / unpaid throughput {:.2}×; server CPU per paid call {:.1} µs (unpaid {:.1} µs)",
                p.throughput / u.throughput.max(1e-9),
                p.server_cpu_us_per_call,
                u.server_cpu_us_per_call
            );
        }
    }
    // paychan against the reference TypeScript server, both paid by the same Rust load
    // generator (paychan-client) at the same channel counts.
    let mut best = (0.0f64, 0.0f64);
    for &n in &a.ref_channels {
        let (Some(p), Some(r)) = (find(Kind::Paid, n, false), find(Kind::RefBatch, n, false))
        else {
            continue;
        };
        best = (best.0.max(p.throughput), best.1.max(r.throughput));
        let _ = writeln!(
            md,
            "- {n} channels: paychan paid / reference TS server paid throughput {:.1}× (client CPU per call {:.1} µs against {:.1} µs); server CPU per paid call {:.1} µs against the reference's {:.1} µs ({:.1}×)",
            p.throughput / r.throughput.max(1e-9),
            p.client_cpu_us_per_call,
            r.client_cpu_us_per_call,
            p.server_cpu_us_per_call,
            r.server_cpu_us_per_call,
            r.server_cpu_us_per_call / p.server_cpu_us_per_call.max(1e-9)
        );
        if let Some(x) = find(Kind::RefExact, n, false) {
            let _ = writeln!(
                md,
                "- {n} concurrent calls: paychan paid / reference `exact` throughput {:.1}×; `exact` costs {:.0} gas a call (one transfer each)",
                p.throughput / x.throughput.max(1e-9),
                x.gas_per_call.unwrap_or(0.0)
            );
        }
    }
    if best.1 > 0.0 {
        let _ = writeln!(
            md,
            "- best paid throughput, same Rust load generator and channel counts ({:?}): paychan {:.0}/s, reference TS server {:.0}/s: **{:.1}×**",
            a.ref_channels,
            best.0,
            best.1,
            best.0 / best.1
        );
    }
    let h = a.half_load_channels;
    if let (Some(p), Some(u)) = (find(Kind::Paid, h, true), find(Kind::Unpaid, h, true)) {
        let _ = writeln!(
            md,
            "- half load ({h} channels paced at {:.0}/s, half the paid closed-loop rate): added p50 {} µs, added p99 {} µs, added p99.9 {} µs",
            p.paced,
            p.p50_us as i64 - u.p50_us as i64,
            p.p99_us as i64 - u.p99_us as i64,
            p.p999_us as i64 - u.p999_us as i64
        );
    }
    if !life.is_empty() {
        let _ = writeln!(
            md,
            "\n| channels | calls per channel | paid calls | gas by function | total gas | gas per call |"
        );
        let _ = writeln!(md, "| ---: | ---: | ---: | --- | ---: | ---: |");
        for l in &life {
            let by: Vec<String> = l["by_function"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k} ×{} {}", v["count"], v["gas"]))
                        .collect()
                })
                .unwrap_or_default();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {:.1} |",
                l["channels"],
                l["calls_per_channel"],
                l["paid_calls"],
                by.join(", "),
                l["gas_total"],
                l["gas_per_call"].as_f64().unwrap_or(0.0)
            );
        }
    }
    println!("{md}");
    std::fs::write(a.out.join("e2e.md"), &md).unwrap();
    std::fs::write(
        a.out.join("e2e.json"),
        serde_json::to_vec_pretty(
            &json!({"machine": machine, "passes": passes, "life": life, "perf_top": perf_top}),
        )
        .unwrap(),
    )
    .unwrap();
    if want("chart") && !passes.is_empty() {
        let closed = |kind: Kind, f: fn(&Pass) -> f64| {
            (
                kind.name().to_string(),
                passes
                    .iter()
                    .filter(|p| p.kind == kind.name() && p.paced == 0.0)
                    .map(|p| (p.channels as f64, f(p)))
                    .collect::<Vec<_>>(),
            )
        };
        chart(
            &a.out,
            "e2e-throughput.svg",
            "throughput against channels (loopback, 2 cores shared)",
            "calls per second",
            &[
                closed(Kind::Unpaid, |p| p.throughput),
                closed(Kind::Paid, |p| p.throughput),
                closed(Kind::RefBatch, |p| p.throughput),
                closed(Kind::RefExact, |p| p.throughput),
            ],
        );
        chart(
            &a.out,
            "e2e-p99.svg",
            "p99 latency against channels",
            "p99 latency, ms",
            &[
                closed(Kind::Unpaid, |p| p.p99_us as f64 / 1000.0),
                closed(Kind::Paid, |p| p.p99_us as f64 / 1000.0),
                closed(Kind::RefBatch, |p| p.p99_us as f64 / 1000.0),
                closed(Kind::RefExact, |p| p.p99_us as f64 / 1000.0),
            ],
        );
    }
    drop(paid);
    drop(unpaid);

    if a.parts.iter().any(|p| p == "engine") {
        for sub in ["throughput", "scale"] {
            eprintln!("e2e: cargo bench -p paychan-benches --bench engine_load -- {sub}");
            let _ = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "bench",
                    "-p",
                    "paychan-benches",
                    "--bench",
                    "engine_load",
                    "--",
                    sub,
                ])
                .current_dir(workspace())
                .status();
        }
    }
}
