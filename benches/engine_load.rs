//! Load benchmark of the payee engine, in process (no HTTP):
//!
//! * **throughput**: paid accepts per second (voucher check + reserve + durable commit) with 1,
//!   64 and 10,000 channels served concurrently, on sled with durability on (`fsync`) and off
//!   (`none`), and on the in-memory store (`memory`: the engine's own ceiling); next to each row,
//!   the bare warm signature-check rate on all cores over distinct vouchers, measured just before
//!   and just after it in the same run (see [`DISTINCT`]);
//! * **scale**: accept latency (p50/p99) and resident memory with 1,000, 100,000 and 1,000,000
//!   channels stored.
//!
//! Vouchers are signed before timing. Channels are created in the store directly with fresh
//! mirrored chain state; the chain (a real dev chain) is never read on the timed path.
//!
//! ```text
//! cargo bench -p paychan-benches --bench engine_load -- [throughput|scale|all] [--backend k256|libsecp256k1] [--quick]
//!     [--channels N] [--durability fsync|flush|none|memory]
//! ```
//!
//! The backend is k256, the server's, unless `--backend` says otherwise.
//! `--channels` and `--durability` run one row of the throughput table; `N` may be any count.
//! `PAYCHAN_BENCH_REQUESTS` sets the requests per row (default 300,000; 20,000 with `--quick`),
//! `PAYCHAN_BENCH_GROUP_WINDOW_US` overrides the store's group-commit window, and
//! `PAYCHAN_BENCH_YIELD=1` makes every task yield after each request (what parking a request
//! until later costs at that channel count, without any store). The timed window
//! is announced on stderr (`TIMED START pid=…`) so that a profiler can attach to just that part.

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    missing_docs,
    clippy::cast_possible_truncation
)]

/// The allocator the `paychan` binary uses (see the workspace `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use alloy_primitives::{B256, U256};
use paychan_chain::{ChainConfig, ChainReader};
use paychan_core::{
    batch::{
        BatchDomain, BatchPayload, BatchRequirements, ChannelConfig,
        payee::{ChannelRecord, OnchainState},
        payer::channel_config_for,
    },
    sig::{Backend, LocalSigner, Signature},
    x402::{PaymentPayload, X402_VERSION},
};
use paychan_devchain::{DevChain, ESCROW};
use paychan_engine::{Begin, Engine, EngineConfig, NoFacilitator};
use paychan_store::{Durability, MemStore, SledStore, SledStoreConfig, Store, WriteBatch};

const PRICE: u128 = 1_000;
const BALANCE: u128 = u128::MAX / 4;

struct Setup {
    /// The dev chain, owned by the parent process and kept alive by this field (children
    /// reach it by URL).
    _chain: Option<Arc<DevChain>>,
    rpc_url: String,
    reader: ChainReader,
    domain: BatchDomain,
    offer: BatchRequirements,
    payers: Vec<LocalSigner>,
}

fn offer_for(chain: &DevChain) -> BatchRequirements {
    chain.offer(PRICE)
}

fn config(s: &Setup, n: u64) -> ChannelConfig {
    let payer = &s.payers[(n % s.payers.len() as u64) as usize];
    channel_config_for(
        &s.offer,
        payer.address(),
        payer.address(),
        B256::from(U256::from(n)),
    )
}

fn record(s: &Setup, n: u64, now: u64) -> ChannelRecord {
    let cfg = config(s, n);
    let id = s.domain.channel_id(&cfg);
    ChannelRecord::from_chain(
        id,
        cfg,
        OnchainState {
            balance: BALANCE,
            ..Default::default()
        },
        now,
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Stores `n` channel records in batches.
async fn seed<S: Store>(store: &S, s: &Setup, n: u64) {
    let now = now_ms();
    let mut i = 0;
    while i < n {
        let end = (i + 20_000).min(n);
        let batch = WriteBatch {
            channels: (i..end).map(|k| record(s, k, now)).collect(),
            ..Default::default()
        };
        store.commit(batch).await.unwrap();
        i = end;
    }
}

/// `per_channel` consecutive vouchers for each of `channels`, signed on all cores.
fn vouchers(s: &Setup, channels: u64, per_channel: u64) -> Vec<Vec<PaymentPayload<BatchPayload>>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2) as u64;
    let offer = s.offer.to_generic();
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let offer = offer.clone();
                sc.spawn(move || {
                    let mut out = Vec::new();
                    for ch in (t..channels).step_by(threads as usize) {
                        let cfg = config(s, ch);
                        let payer = &s.payers[(ch % s.payers.len() as u64) as usize];
                        let mut pc = paychan_core::batch::payer::PayerChannel::from_chain(
                            &s.domain, cfg, BALANCE, 0,
                        );
                        let mut v = Vec::with_capacity(per_channel as usize);
                        for _ in 0..per_channel {
                            let p = pc.voucher_payload(&s.domain, payer, PRICE).unwrap();
                            pc.charged += PRICE; // the engine will charge the full price
                            v.push(PaymentPayload {
                                x402_version: X402_VERSION,
                                resource: None,
                                accepted: offer.clone(),
                                payload: BatchPayload::Voucher(p),
                                extensions: None,
                            });
                        }
                        out.push((ch, v));
                    }
                    out
                })
            })
            .collect();
        let mut all: Vec<(u64, Vec<_>)> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_by_key(|(ch, _)| *ch);
        all.into_iter().map(|(_, v)| v).collect()
    })
}

type BenchEngine<S = SledStore> = Engine<S, ChainReader, NoFacilitator>;

fn engine<S: Store>(s: &Setup, store: S, backend: Backend) -> BenchEngine<S> {
    let mut cfg = EngineConfig::new(s.domain);
    cfg.backend = backend;
    cfg.max_onchain_age = Duration::from_secs(3600);
    Engine::new(cfg, store, s.reader.clone(), NoFacilitator)
}

async fn accept<S: Store>(
    e: &BenchEngine<S>,
    p: &PaymentPayload<BatchPayload>,
    offer: &BatchRequirements,
) {
    match e.begin(p, offer).await {
        Ok(Begin::Serve(t)) => {
            e.commit(t, PRICE).await.unwrap();
        }
        Ok(Begin::Done(_)) => unreachable!(),
        Err(d) => panic!("declined: {:?}", d.rejection),
    }
}

/// How many different vouchers the bare signature-check rate cycles through. The engine checks
/// a different voucher on every request; checking one signature over and over walks the same
/// entries of libsecp256k1's precomputed tables (about 1 MiB, the size of this machine's L2
/// cache) every time and measures a best case no server sees (5–8% faster here).
const DISTINCT: u64 = 1024;

/// Warm signature checks per second on all cores: one signature checked over and over
/// (`distinct == 1`), or a cycle of `distinct` different vouchers by different payers.
fn bare_signature_rate(s: &Setup, backend: Backend, dur: Duration, distinct: u64) -> f64 {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let checks: Vec<(B256, Signature, paychan_core::sig::SignerKey)> = (0..distinct)
        .map(|i| {
            let payer = &s.payers[(i % s.payers.len() as u64) as usize];
            let digest = s
                .domain
                .voucher_digest(B256::from(U256::from(i + 1)), 12_345 + u128::from(i));
            let sig: Signature = payer.sign_digest(&digest).unwrap();
            let key = backend.recover(&digest, &sig).unwrap();
            (digest, sig, key)
        })
        .collect();
    let total: u64 = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let checks = &checks;
                sc.spawn(move || {
                    let start = Instant::now();
                    let mut n = 0u64;
                    let mut i = t * 7;
                    while start.elapsed() < dur {
                        for _ in 0..100 {
                            let (digest, sig, key) = &checks[i % checks.len()];
                            backend.verify(digest, sig, key).unwrap();
                            i += 1;
                        }
                        n += 100;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total as f64 / dur.as_secs_f64()
}

/// Where the engine under test keeps its channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    /// The sled store with this durability.
    Sled(Durability),
    /// The in-memory store: the engine alone, no log, no committer thread, no disk.
    Memory,
}

impl StoreKind {
    fn parse(s: &str) -> Self {
        match s {
            "memory" | "mem" => Self::Memory,
            d => Self::Sled(d.parse().unwrap()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Sled(Durability::Fsync) => "fsync",
            Self::Sled(Durability::Flush) => "flush",
            Self::Sled(Durability::None) => "none",
            Self::Memory => "memory store",
        }
    }
}

/// One timed run's figures.
struct Run {
    rate: f64,
    busy: f64,
    /// Share of all cores used by the store's own threads (log writer, checkpoints).
    store_busy: f64,
    groups: u64,
    batches: u64,
    commit_us: f64,
}

async fn throughput(
    s: &Setup,
    backend: Backend,
    quick: bool,
    only_channels: Option<u64>,
    only_store: Option<StoreKind>,
) {
    let d = Duration::from_secs(if quick { 1 } else { 3 });
    let bare_one = bare_signature_rate(s, backend, d, 1);
    let mut bare_before = bare_signature_rate(s, backend, d, DISTINCT);
    println!(
        "\n## throughput ({}), bare warm signature checks on all cores: {:.0}/s over {DISTINCT} \
         distinct vouchers ({:.0}/s checking one voucher over and over)",
        backend.name(),
        bare_before,
        bare_one,
    );
    println!(
        "| channels | durability | requests | accepts/s | bare checks/s | vs bare | CPU busy | of it store threads | commit groups | requests/group | avg commit µs |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let total: u64 =
        env_number("PAYCHAN_BENCH_REQUESTS").unwrap_or(if quick { 20_000 } else { 300_000 });
    let counts = only_channels.map_or_else(|| vec![1u64, 64, 10_000], |c| vec![c]);
    for channels in counts {
        let per = (total / channels).max(2);
        // the 1-channel case is latency-bound (one durable commit per request): fewer requests
        let per = if channels == 1 {
            per.min(if quick { 1_000 } else { 4_000 })
        } else {
            per
        };
        let payloads = vouchers(s, channels, per);
        let kinds = only_store.map_or_else(
            || {
                vec![
                    StoreKind::Sled(Durability::Fsync),
                    StoreKind::Sled(Durability::None),
                    StoreKind::Memory,
                ]
            },
            |k| vec![k],
        );
        for kind in kinds {
            let dir = tempfile::tempdir().unwrap();
            let r = match kind {
                StoreKind::Sled(durability) => {
                    let mut sc = SledStoreConfig::new(dir.path().join("db"));
                    sc.durability = durability;
                    if let Some(us) = env_number("PAYCHAN_BENCH_GROUP_WINDOW_US") {
                        sc.group_window = Duration::from_micros(us);
                    }
                    timed_run(s, SledStore::open(sc).unwrap(), &payloads, backend).await
                }
                StoreKind::Memory => timed_run(s, MemStore::new(), &payloads, backend).await,
            };
            let n = channels * (per - 1);
            // the machine's speed drifts (a shared VM): the bare rate of a row is the mean of
            // the checks measured just before and just after it
            let bare_after = bare_signature_rate(s, backend, d / 2, DISTINCT);
            let bare = f64::midpoint(bare_before, bare_after);
            bare_before = bare_after;
            println!(
                "| {channels} | {} | {n} | {:.0} | {bare:.0} | {:.0}% | {:.0}% | {:.1}% | {} | {:.1} | {:.0} |",
                kind.name(),
                r.rate,
                100.0 * r.rate / bare,
                100.0 * r.busy,
                100.0 * r.store_busy,
                r.groups,
                r.batches as f64 / r.groups.max(1) as f64,
                r.commit_us,
            );
        }
    }
}

/// Seeds `store` with the payloads' channels, warms every channel with its first voucher, then
/// times the rest: one task per channel, paying its vouchers in order.
async fn timed_run<S: Store + Clone + 'static>(
    s: &Setup,
    store: S,
    payloads: &[Vec<PaymentPayload<BatchPayload>>],
    backend: Backend,
) -> Run {
    let channels = payloads.len() as u64;
    seed(&store, s, channels).await;
    let e = engine(s, store.clone(), backend);
    // warm: first voucher of each channel (recovers and caches the key), untimed
    let mut warm = Vec::new();
    for (ch, v) in payloads.iter().enumerate() {
        let (e, p, o) = (e.clone(), v[0].clone(), s.offer.clone());
        warm.push(tokio::spawn(async move { accept(&e, &p, &o).await }));
        if warm.len() >= 256 || ch + 1 == payloads.len() {
            for w in warm.drain(..) {
                w.await.unwrap();
            }
        }
    }
    // Each task's vouchers are prepared before the clock starts.
    let work: Vec<Vec<PaymentPayload<BatchPayload>>> =
        payloads.iter().map(|v| v[1..].to_vec()).collect();
    let n: usize = work.iter().map(Vec::len).sum();
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let yield_after_each = std::env::var_os("PAYCHAN_BENCH_YIELD").is_some();
    for v in work {
        let (e, o, mut go) = (e.clone(), s.offer.clone(), go_rx.clone());
        tasks.push(tokio::spawn(async move {
            let _ = go.wait_for(|g| *g).await;
            for p in &v {
                accept(&e, p, &o).await;
                if yield_after_each {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    tokio::task::yield_now().await;
    let before = store.stats().await.unwrap();
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let (c0, n0) = (
        e.metrics().commit_nanos.load(relaxed),
        e.metrics().committed.load(relaxed),
    );
    let cpu0 = cpu_secs();
    let store0 = threads_cpu_secs("paychan-store");
    let start = Instant::now();
    eprintln!("TIMED START pid={}", std::process::id());
    go_tx.send(true).unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let el = start.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2) as f64;
    let busy = (cpu_secs() - cpu0) / el / cores;
    let store_busy = (threads_cpu_secs("paychan-store") - store0) / el / cores;
    eprintln!("TIMED END");
    let after = store.stats().await.unwrap();
    Run {
        rate: n as f64 / el,
        busy,
        store_busy,
        groups: after.commits - before.commits,
        batches: after.batches - before.batches,
        commit_us: (e.metrics().commit_nanos.load(relaxed) - c0) as f64
            / 1e3
            / (e.metrics().committed.load(relaxed) - n0).max(1) as f64,
    }
}

/// A number from the environment variable `name`, if set and valid.
fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// User + system CPU seconds used by this process so far.
fn cpu_secs() -> f64 {
    stat_cpu_secs(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// User + system CPU seconds used so far by this process's threads whose name starts with
/// `prefix` (the store's log writer and checkpoint threads: `paychan-store`).
fn threads_cpu_secs(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .map(|t| stat_cpu_secs(&std::fs::read_to_string(t.path().join("stat")).unwrap_or_default()))
        .sum()
}

/// utime + stime of a `/proc/…/stat` line, in seconds.
fn stat_cpu_secs(stat: &str) -> f64 {
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields 14 (utime) and 15 (stime) of /proc/pid/stat are at 11 and 12 after the comm field
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Bytes of every file below `p` (sled's files and the write-ahead log).
fn dir_bytes(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e6
}

/// One row per stored-channel count. Each store is seeded by one child process and measured by
/// another that reopens it: the measured process is a server that restarted with that many
/// channels stored, not one that carries the seeding's allocations.
async fn scale(s: &Setup, backend: Backend, quick: bool) {
    println!(
        "\n## scale ({}): latency of one accept (durable) and resident memory by stored channels",
        backend.name()
    );
    println!(
        "| stored channels | cold p50 µs | cold p99 µs | warm p50 µs | warm p99 µs | RSS after open MiB | RSS after serving MiB | store on disk MiB |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let samples: u64 = if quick { 300 } else { 2_000 };
    let sizes: &[u64] = if quick {
        &[1_000, 100_000]
    } else {
        &[1_000, 100_000, 1_000_000]
    };
    let exe = std::env::current_exe().unwrap();
    let offer = serde_json::to_string(&s.offer.to_generic()).unwrap();
    for &n in sizes {
        let dir = tempfile::tempdir().unwrap();
        let child = |args: Vec<String>| {
            let out = std::process::Command::new(&exe)
                .args(args)
                .env("PAYCHAN_BENCH_RPC", &s.rpc_url)
                .env("PAYCHAN_BENCH_OFFER", &offer)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let path = dir.path().display().to_string();
        child(vec!["scale-seed".into(), n.to_string(), path.clone()]);
        let row = child(vec![
            "scale-measure".into(),
            n.to_string(),
            path,
            samples.to_string(),
            backend.name().into(),
        ]);
        println!("{row}");
    }
}

/// A setup for a child process: the parent's chain and offer, from the environment.
async fn child_setup() -> Setup {
    let rpc_url = std::env::var("PAYCHAN_BENCH_RPC").unwrap();
    let reader = ChainReader::connect(ChainConfig::dev(&rpc_url))
        .await
        .unwrap();
    let generic = serde_json::from_str(&std::env::var("PAYCHAN_BENCH_OFFER").unwrap()).unwrap();
    let offer = BatchRequirements::from_generic(&generic).unwrap();
    let domain = BatchDomain::new(offer.chain_id, ESCROW);
    Setup {
        _chain: None,
        rpc_url,
        reader,
        domain,
        offer,
        payers: payers(),
    }
}

async fn scale_seed(n: u64, dir: &str) {
    let s = child_setup().await;
    let store =
        SledStore::open(SledStoreConfig::new(std::path::Path::new(dir).join("db"))).unwrap();
    seed(&store, &s, n).await;
}

async fn scale_measure(n: u64, dir: &str, samples: u64, backend: Backend) {
    let s = child_setup().await;
    let store =
        SledStore::open(SledStoreConfig::new(std::path::Path::new(dir).join("db"))).unwrap();
    let rss_open = rss_mib();
    let e = engine(&s, store.clone(), backend);
    let samples = samples.min(n);
    let step = (n / samples).max(1);
    let chosen: Vec<u64> = (0..samples).map(|i| (i * step + 7) % n).collect();
    let mut pcs: Vec<_> = chosen
        .iter()
        .map(|&ch| {
            (
                paychan_core::batch::payer::PayerChannel::from_chain(
                    &s.domain,
                    config(&s, ch),
                    BALANCE,
                    0,
                ),
                ch,
            )
        })
        .collect();
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for round in 0..2 {
        let mut payloads = Vec::new();
        for (pc, ch) in &mut pcs {
            let payer = &s.payers[(*ch % s.payers.len() as u64) as usize];
            let p = pc.voucher_payload(&s.domain, payer, PRICE).unwrap();
            pc.charged += PRICE;
            payloads.push(PaymentPayload {
                x402_version: X402_VERSION,
                resource: None,
                accepted: s.offer.to_generic(),
                payload: BatchPayload::Voucher(p),
                extensions: None,
            });
        }
        for p in &payloads {
            let t = Instant::now();
            accept(&e, p, &s.offer).await;
            if round == 0 {
                cold.push(t.elapsed())
            } else {
                warm.push(t.elapsed())
            }
        }
    }
    println!(
        "| {n} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
        pct(&mut cold, 0.5),
        pct(&mut cold, 0.99),
        pct(&mut warm, 0.5),
        pct(&mut warm, 0.99),
        rss_open,
        rss_mib(),
        dir_bytes(std::path::Path::new(dir)) as f64 / (1024.0 * 1024.0)
    );
}

fn payers() -> Vec<LocalSigner> {
    (0..64u64)
        .map(|i| {
            let mut k = [7u8; 32];
            k[24..].copy_from_slice(&(i + 1).to_be_bytes());
            LocalSigner::from_bytes(&B256::from(k)).unwrap()
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(
        args.first().map(String::as_str),
        Some("scale-seed" | "scale-measure")
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let n: u64 = args[1].parse().unwrap();
        rt.block_on(async {
            if args[0] == "scale-seed" {
                scale_seed(n, &args[2]).await;
            } else {
                let backend = if args[4] == "k256" {
                    Backend::K256
                } else {
                    Backend::Libsecp256k1
                };
                scale_measure(n, &args[2], args[3].parse().unwrap(), backend).await;
            }
        });
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let backend = match args
        .iter()
        .position(|a| a == "--backend")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
    {
        // The server's backend unless told otherwise.
        Some("k256") | None => Backend::K256,
        Some("libsecp256k1") => Backend::Libsecp256k1,
        Some(other) => panic!("unknown backend {other}"),
    };
    let scenario = args
        .iter()
        .find(|a| matches!(a.as_str(), "throughput" | "scale" | "all"))
        .cloned()
        .unwrap_or_else(|| "all".into());
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let only_channels: Option<u64> = arg("--channels").map(|c| c.parse().unwrap());
    let only_store: Option<StoreKind> = arg("--durability").map(|d| StoreKind::parse(&d));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let chain = Arc::new(DevChain::start().await.unwrap());
        let reader = ChainReader::connect(ChainConfig::new(chain.rpc_url(), chain.chain_id()))
            .await
            .unwrap();
        let domain = BatchDomain::new(chain.chain_id(), ESCROW);
        let offer = offer_for(&chain);
        let payers = payers();
        let s = Setup {
            rpc_url: chain.rpc_url().to_owned(),
            _chain: Some(chain),
            reader,
            domain,
            offer,
            payers,
        };
        println!(
            "engine load benchmark: {} cores, backend {}",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            backend.name()
        );
        if scenario == "throughput" || scenario == "all" {
            throughput(&s, backend, quick, only_channels, only_store).await;
        }
        if scenario == "scale" || scenario == "all" {
            scale(&s, backend, quick).await;
        }
    });
}
