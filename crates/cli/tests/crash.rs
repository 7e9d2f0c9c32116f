//! Crash test: `paychan serve` in a child process under load from many channels, killed with
//! SIGKILL at random moments, restarted, many rounds. Checks that every charge the client saw
//! acknowledged is in the store, that the store and the client agree to the unit, that they
//! differ only through a request whose outcome the client never saw (at most one request's
//! maximum per channel and crash, resolved by a corrective 402 carrying the client's own
//! signature), and that no voucher is charged twice.
//!
//! Rounds: `PAYCHAN_CRASH_ROUNDS` (default 20).

#![allow(clippy::unwrap_used, clippy::print_stdout, unreachable_pub)]

mod support;

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use alloy_primitives::{B256, U256};
use paychan_core::{
    ErrorCode,
    batch::{
        BatchDomain, BatchPayload, BatchRequirements,
        payer::{PayerChannel, channel_config_for},
    },
    codec,
    sig::LocalSigner,
    x402::{PaymentRequired, SettlementResponse},
};
use paychan_devchain::{DevChain, ESCROW};
use paychan_store::{SledStore, SledStoreConfig, Store};
use support::start_server;

const CHANNELS: u64 = 24;
const MAX_PRICE: u128 = 10_000;
const DEPOSIT: u128 = 1_000_000_000;

struct Client {
    payer: LocalSigner,
    pc: PayerChannel,
    /// A request was sent whose answer never came (the server died): its charge may or may not
    /// have been committed.
    unknown_in_flight: bool,
    /// Ceilings of vouchers that were acknowledged with a non-zero charge.
    charged_ceilings: std::collections::HashSet<u128>,
    acked: u64,
    corrections: u64,
    rng: u64,
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// One request for a channel. Returns false when the server is gone.
async fn one_request(
    http: &reqwest::Client,
    url: &str,
    domain: &BatchDomain,
    offer: &BatchRequirements,
    c: &mut Client,
) -> bool {
    let len = 1 + (xorshift(&mut c.rng) % 900) as usize;
    let prompt = "p".repeat(len);
    let v =
        c.pc.voucher_payload(domain, &c.payer, offer.amount)
            .unwrap();
    let ceiling = v.voucher.max_claimable_amount;
    let header = codec::encode(&paychan_devchain::payment(offer, BatchPayload::Voucher(v)));
    let sent = http
        .post(format!("{url}/v1/chat/completions"))
        .header("PAYMENT-SIGNATURE", header)
        .json(&serde_json::json!({"messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(_) => {
            c.unknown_in_flight = true;
            return false;
        }
    };
    let status = resp.status().as_u16();
    let payment_response = resp
        .headers()
        .get("payment-response")
        .map(|h| h.to_str().unwrap().to_owned());
    let payment_required = resp
        .headers()
        .get("payment-required")
        .map(|h| h.to_str().unwrap().to_owned());
    // The body must arrive too; a connection cut now leaves the outcome unknown.
    if resp.bytes().await.is_err() {
        c.unknown_in_flight = true;
        return false;
    }
    match status {
        200 => {
            let sr: SettlementResponse = codec::decode(&payment_response.unwrap()).unwrap();
            let charged =
                c.pc.apply_response(&sr, offer.amount, None)
                    .unwrap_or_else(|e| {
                        panic!("client verification failed on an acknowledged response: {e}");
                    });
            if charged > 0 {
                assert!(
                    c.charged_ceilings.insert(ceiling),
                    "voucher with ceiling {ceiling} charged twice"
                );
            }
            c.acked += 1;
            c.unknown_in_flight = false;
            true
        }
        402 => {
            let pr: PaymentRequired = codec::decode(&payment_required.unwrap()).unwrap();
            match pr.error_code() {
                Some(ErrorCode::CumulativeAmountMismatch) => {
                    assert!(
                        c.unknown_in_flight,
                        "corrective 402 although every request's outcome was seen (server ahead of the client by an acknowledged charge?)"
                    );
                    let before = c.pc.charged;
                    let extra = BatchRequirements::from_generic(&pr.accepts[0])
                        .unwrap()
                        .extra;
                    let signed = extra.voucher_state.as_ref().unwrap().signed_max_claimable;
                    c.pc.apply_corrective(domain, &extra, c.payer.address(), DEPOSIT, 0)
                        .unwrap_or_else(|e| panic!("corrective state refused: {e}"));
                    let delta = c.pc.charged.checked_sub(before).unwrap_or_else(|| {
                        panic!("server lost acknowledged charges: it has {} charged, the client saw {before} acknowledged", c.pc.charged)
                    });
                    assert!(
                        delta > 0 && delta <= offer.amount,
                        "server ahead by {delta}, more than one request"
                    );
                    assert!(
                        c.charged_ceilings.insert(signed),
                        "the in-flight voucher {signed} was charged twice"
                    );
                    c.corrections += 1;
                    c.unknown_in_flight = false;
                    true
                }
                Some(ErrorCode::ChannelBusy) => true,
                other => panic!("unexpected 402 {other:?}: {pr:?}"),
            }
        }
        s => {
            // 503: the charge could not be made durable; nothing was acknowledged.
            c.unknown_in_flight = true;
            assert!(s == 503 || s == 502, "unexpected status {s}");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_charges_survive_sigkill() {
    let rounds: u64 = std::env::var("PAYCHAN_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let chain = DevChain::start().await.unwrap();
    let domain = BatchDomain::new(chain.chain_id(), ESCROW);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("paychan.toml");
    support::ServeConfig::new(&chain)
        .top(
            r#"
upstream = "demo"
operator_listen = "off"
control = { listen = "127.0.0.1:0" }
# checkpoints all the time, so that kills land during them too
checkpoint_interval_ms = 20
demo_price_per_token = "40"
"#,
        )
        .route("/v1/*", MAX_PRICE)
        .write(&config);
    let offer = chain.offer(MAX_PRICE);

    let mut clients = Vec::new();
    for i in 0..CHANNELS {
        let payer = chain.funded_payer(1_000 + i, DEPOSIT).await.unwrap();
        let cfg = channel_config_for(
            &offer,
            payer.address(),
            payer.address(),
            B256::from(U256::from(i)),
        );
        chain.deposit(&payer, &cfg, DEPOSIT).await.unwrap();
        clients.push(Arc::new(tokio::sync::Mutex::new(Client {
            payer,
            pc: PayerChannel::from_chain(&domain, cfg, DEPOSIT, 0),
            unknown_in_flight: false,
            charged_ceilings: Default::default(),
            acked: 0,
            corrections: 0,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (i + 1),
        })));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut rng = 0xC0FF_EE00_u64;
    // `rounds` killed runs, then one last run that every channel uses once, so that requests left
    // in flight by the last kill are reconciled; then a clean stop.
    for round in 0..=rounds {
        let mut server = start_server(&config);
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for c in &clients {
            let (c, http, url, stop, offer) = (
                c.clone(),
                http.clone(),
                server.url.clone(),
                stop.clone(),
                offer.clone(),
            );
            let last = round == rounds;
            tasks.push(tokio::spawn(async move {
                let mut c = c.lock().await;
                loop {
                    let alive = one_request(&http, &url, &domain, &offer, &mut c).await;
                    if !alive || stop.load(Ordering::SeqCst) || (last && !c.unknown_in_flight) {
                        break;
                    }
                }
            }));
        }
        if round < rounds {
            let delay = 150 + xorshift(&mut rng) % 500;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            server.child.kill().unwrap(); // SIGKILL
            server.child.wait().unwrap();
            stop.store(true, Ordering::SeqCst);
            for t in tasks {
                t.await.unwrap();
            }
        } else {
            for t in tasks {
                t.await.unwrap();
            }
            // clean stop
            let pid = server.child.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            server.child.wait().unwrap();
        }
    }

    let store = SledStore::open(SledStoreConfig::new(dir.path().join("store"))).unwrap();
    let (mut acked, mut corrections, mut total) = (0, 0, 0u128);
    for c in &clients {
        let c = c.lock().await;
        let rec = store
            .channel(c.pc.channel_id)
            .await
            .unwrap()
            .expect("channel in the store");
        assert!(!c.unknown_in_flight);
        assert_eq!(
            rec.charged, c.pc.charged,
            "store and client disagree on channel {}",
            c.pc.channel_id
        );
        assert!(c.corrections <= rounds, "more corrections than crashes");
        acked += c.acked;
        corrections += c.corrections;
        total += rec.charged;
    }
    let agg = store.aggregate(offer.pay_to, offer.asset).await.unwrap();
    assert_eq!(
        agg.charged, total,
        "aggregate charged equals the sum of channels"
    );
    println!(
        "crash test: {rounds} SIGKILLs, {CHANNELS} channels, {acked} acknowledged requests, {corrections} in-flight charges reconciled by corrective 402, {total} charged"
    );
    assert!(
        acked > rounds * CHANNELS / 2,
        "too little load reached the server: {acked} requests"
    );
}
