//! A flood of vouchers for random channel ids running beside real payers, in process.
//!
//! Real payers (funded channels on a real dev chain, a real sled store with fsync durability)
//! pay sequentially, each with its own channel: first alone, then beside flood tasks that send
//! vouchers for fresh random channel ids, in two flavours:
//!
//! * **bad signatures**: a well-formed config whose id is its real hash, the offer's terms, and a
//!   signature that does not recover to its payer authorizer. Refused by the cheap checks (a hash
//!   and one recovery), before any lock, store or chain read.
//! * **valid signatures**: the same, validly signed by a throwaway key. Nothing short of the chain
//!   can tell such a channel from a real new payer's, so each costs one chain read, under the read
//!   cap (16 of 32 reads for unknown channels, waited for at most the busy wait), and then sits in
//!   the negative cache.
//!
//! Reported per phase: the payers' accepts per second and latency (p50 / p99 of begin + durable
//! commit), the flood's refusals per second and their cost, chain reads, and the engine's
//! screening counters. Flood vouchers are signed before timing; so are the payers'.
//!
//! ```text
//! cargo bench -p paychan-benches --bench flood -- [--payers N] [--flooders N] [--secs S]
//! ```
//!
//! Defaults: 8 payers, 8 flood tasks, 5 s per phase.

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::too_many_lines
)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use alloy_primitives::{B256, Bytes};
use paychan_chain::{ChainConfig, ChainReader};
use paychan_core::{
    batch::{
        BatchDomain, BatchPayload, BatchRequirements, VoucherFields, VoucherPayload,
        payer::{PayerChannel, channel_config_for},
    },
    sig::LocalSigner,
    x402::{PaymentPayload, X402_VERSION},
};
use paychan_devchain::{DevChain, ESCROW};
use paychan_engine::{Begin, Engine, EngineConfig, NoFacilitator};
use paychan_store::{SledStore, SledStoreConfig};
use serde_json::json;

const PRICE: u128 = 1_000;
const DEPOSIT: u128 = 1_000_000_000_000;

type Eng = Engine<SledStore, ChainReader, NoFacilitator>;
type Payload = PaymentPayload<BatchPayload>;

fn envelope(offer: &BatchRequirements, v: VoucherPayload) -> Payload {
    PaymentPayload {
        x402_version: X402_VERSION,
        resource: None,
        accepted: offer.to_generic(),
        payload: BatchPayload::Voucher(v),
        extensions: None,
    }
}

fn key(n: u64) -> LocalSigner {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b[31] = 1;
    LocalSigner::from_bytes(&B256::from(b)).unwrap()
}

/// Flood vouchers: fresh random channels, validly signed or not.
fn flood_vouchers(
    domain: &BatchDomain,
    offer: &BatchRequirements,
    n: usize,
    signed: bool,
    tag: u64,
) -> Vec<Payload> {
    (0..n as u64)
        .map(|i| {
            let k = key(tag << 40 | i);
            let config = channel_config_for(
                offer,
                k.address(),
                k.address(),
                B256::from(alloy_primitives::U256::from(i)),
            );
            let mut pc = PayerChannel::from_chain(domain, config, 0, 0);
            let v = if signed {
                pc.voucher_payload(domain, &k, PRICE).unwrap()
            } else {
                VoucherPayload {
                    channel_config: config,
                    voucher: VoucherFields {
                        channel_id: pc.channel_id,
                        max_claimable_amount: PRICE,
                        // a well-formed signature (of another message) by another key
                        signature: Bytes::copy_from_slice(
                            &key(i + 1)
                                .sign_digest(&B256::repeat_byte(7))
                                .unwrap()
                                .to_bytes(),
                        ),
                    },
                }
            };
            envelope(offer, v)
        })
        .collect()
}

struct Phase {
    accepts: u64,
    p50_us: f64,
    p99_us: f64,
    flood: u64,
    flood_nanos: u64,
    chain_reads: u64,
    screened_out: u64,
    negative_hits: u64,
    reads_refused: u64,
    wall: Duration,
}

async fn phase(
    engine: &Eng,
    offer: &BatchRequirements,
    payers: &mut [(Vec<Payload>, usize)],
    flood: Option<Arc<Vec<Payload>>>,
    flooders: usize,
    secs: u64,
) -> Phase {
    let m = engine.metrics();
    let (reads0, screened0, neg0, refused0) = (
        m.chain_reads.load(Relaxed),
        m.screened_out.load(Relaxed),
        m.negative_hits.load(Relaxed),
        m.chain_reads_refused.load(Relaxed),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flood_count = Arc::new(AtomicU64::new(0));
    let flood_nanos = Arc::new(AtomicU64::new(0));
    let mut flood_tasks = Vec::new();
    if let Some(f) = &flood {
        for t in 0..flooders {
            let (e, o, f, stop, count, nanos) = (
                engine.clone(),
                offer.clone(),
                f.clone(),
                stop.clone(),
                flood_count.clone(),
                flood_nanos.clone(),
            );
            flood_tasks.push(tokio::spawn(async move {
                let mut i = t;
                while !stop.load(Relaxed) {
                    let p = &f[i % f.len()];
                    i += flooders;
                    let started = Instant::now();
                    match e.begin(p, &o).await {
                        Ok(Begin::Serve(ticket)) => {
                            e.abort(ticket);
                            panic!("a flood voucher was accepted");
                        }
                        Ok(Begin::Done(_)) => panic!("a flood voucher completed"),
                        Err(_) => {}
                    }
                    nanos.fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
                    count.fetch_add(1, Relaxed);
                    // A refusal by the cheap checks awaits nothing: without a yield the flood
                    // would hold both worker threads and starve the payers (a server's
                    // connection tasks yield on their sockets).
                    tokio::task::yield_now().await;
                }
            }));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (vouchers, next) in payers.iter_mut() {
        let (e, o) = (engine.clone(), offer.clone());
        let mine = std::mem::take(vouchers);
        let from = *next;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = from;
            while Instant::now() < deadline && i < mine.len() {
                let t0 = Instant::now();
                let Begin::Serve(ticket) = e.begin(&mine[i], &o).await.unwrap() else {
                    panic!("a payer's voucher was not served")
                };
                e.commit(ticket, PRICE).await.unwrap();
                lat.push(t0.elapsed().as_nanos() as u64);
                i += 1;
            }
            (mine, i, lat)
        }));
    }
    let mut lat = Vec::new();
    for (slot, t) in payers.iter_mut().zip(tasks) {
        let (mine, i, l) = t.await.unwrap();
        *slot = (mine, i);
        lat.extend(l);
    }
    let wall = started.elapsed();
    stop.store(true, Relaxed);
    for t in flood_tasks {
        t.await.unwrap();
    }
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Phase {
        accepts: lat.len() as u64,
        p50_us: q(0.5),
        p99_us: q(0.99),
        flood: flood_count.load(Relaxed),
        flood_nanos: flood_nanos.load(Relaxed),
        chain_reads: m.chain_reads.load(Relaxed) - reads0,
        screened_out: m.screened_out.load(Relaxed) - screened0,
        negative_hits: m.negative_hits.load(Relaxed) - neg0,
        reads_refused: m.chain_reads_refused.load(Relaxed) - refused0,
        wall,
    }
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n_payers = arg(&args, "--payers", 8) as usize;
    let flooders = arg(&args, "--flooders", 8) as usize;
    let secs = arg(&args, "--secs", 5);

    let chain = DevChain::start().await.unwrap();
    let domain = BatchDomain::new(chain.chain_id(), ESCROW);
    let offer = chain.offer(PRICE);
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(SledStoreConfig::new(dir.path().join("store"))).unwrap();
    let reader = ChainReader::connect(ChainConfig::dev(chain.rpc_url()))
        .await
        .unwrap();
    let engine: Eng = Engine::new(EngineConfig::new(domain), store, reader, NoFacilitator);

    // Funded channels, and every voucher a payer may send, signed ahead (3 phases).
    let per_payer = 3 * (secs as usize) * 4_000;
    let mut payers = Vec::new();
    for p in 0..n_payers as u64 {
        let payer = chain.funded_payer(100 + p, DEPOSIT).await.unwrap();
        let config = channel_config_for(
            &offer,
            payer.address(),
            payer.address(),
            B256::repeat_byte(p as u8 + 1),
        );
        chain.deposit(&payer, &config, DEPOSIT).await.unwrap();
        let mut pc = PayerChannel::from_chain(&domain, config, DEPOSIT, 0);
        let vouchers: Vec<Payload> = (0..per_payer)
            .map(|_| {
                let v = pc.voucher_payload(&domain, &payer, PRICE).unwrap();
                pc.charged += PRICE;
                envelope(&offer, v)
            })
            .collect();
        payers.push((vouchers, 0usize));
    }
    // warm: each payer's channel read from chain and held in memory
    for (v, next) in &mut payers {
        let Begin::Serve(t) = engine.begin(&v[0], &offer).await.unwrap() else {
            panic!()
        };
        engine.commit(t, PRICE).await.unwrap();
        *next = 1;
    }
    let bad = Arc::new(flood_vouchers(&domain, &offer, 200_000, false, 1));
    let good = Arc::new(flood_vouchers(&domain, &offer, 50_000, true, 2));

    let mut rows = Vec::new();
    for (name, flood) in [
        ("payers alone", None),
        ("+ flood, bad signatures", Some(bad)),
        ("+ flood, valid signatures", Some(good)),
    ] {
        let r = phase(&engine, &offer, &mut payers, flood.clone(), flooders, secs).await;
        let secs = r.wall.as_secs_f64();
        println!(
            "{name:<28} payers {:>7.0} accepts/s  p50 {:>7.1} µs  p99 {:>8.1} µs | flood {:>8.0} refusals/s, {:>7.1} µs each (latency in {flooders} tasks) | chain reads {:>6}  screened out {:>7}  negative hits {:>7}  reads refused {:>6}",
            r.accepts as f64 / secs,
            r.p50_us,
            r.p99_us,
            r.flood as f64 / secs,
            if r.flood > 0 {
                r.flood_nanos as f64 / r.flood as f64 / 1000.0
            } else {
                0.0
            },
            r.chain_reads,
            r.screened_out,
            r.negative_hits,
            r.reads_refused,
        );
        rows.push(json!({
            "phase": name,
            "payer_accepts_per_s": (r.accepts as f64 / secs).round(),
            "payer_p50_us": r.p50_us,
            "payer_p99_us": r.p99_us,
            "flood_refusals_per_s": (r.flood as f64 / secs).round(),
            "flood_mean_latency_us": if r.flood > 0 { r.flood_nanos as f64 / r.flood as f64 / 1000.0 } else { 0.0 },
            "chain_reads": r.chain_reads,
            "screened_out": r.screened_out,
            "negative_hits": r.negative_hits,
            "chain_reads_refused": r.reads_refused,
        }));
    }
    println!(
        "{}",
        json!({"event": "flood", "payers": n_payers, "flooders": flooders, "secs": secs, "rows": rows})
    );
}
