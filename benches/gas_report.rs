//! Gas of settlement, measured on a dev chain (anvil with paychan's contracts) through the real
//! settler (`paychan-settle`) and relayer:
//!
//! * `claimWithSignature` batches of 1, 10, 50 and 100 channels, for first claims (a channel's
//!   claimed total goes from zero to non-zero) and subsequent claims;
//! * `settle` of one (receiver, token);
//! * the **amortized gas per paid request** with 100 channels, one claim round and one settle,
//!   at 100, 1,000 and 10,000 requests per channel.
//!
//! A channel's claim costs the same whatever number of requests its voucher covers (the voucher
//! is cumulative: one signature check and one storage write per channel), so the channels'
//! records are written as the engine leaves them after `R` requests charged at the full price:
//! charged total `R × price`, the latest voucher signed by the payer for that ceiling. The
//! claims themselves are real transactions, mined and confirmed.
//!
//! A warm-up claim and settle run first, so the receiver's totals are non-zero (as on any
//! running server) and do not inflate the first batch.
//!
//! ```text
//! cargo bench -p paychan-benches --bench gas_report
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

use std::time::{Duration, Instant};

use alloy_primitives::{B256, U256};
use paychan_chain::{ChainConfig, ChainReader, Relayer, TxKey};
use paychan_core::{
    batch::{
        BatchDomain, BatchRequirements, ChannelConfig,
        eip712::Eip712Domain,
        payee::{ChannelRecord, OnchainState},
        payer::{Erc3009Terms, channel_config_for, sign_erc3009_authorization},
    },
    sig::LocalSigner,
};
use paychan_devchain::{DevChain, ERC3009_COLLECTOR, ESCROW, Role};
use paychan_engine::{Engine, EngineConfig, NoFacilitator};
use paychan_settle::{SettlePolicy, Settler, SettlerConfig};
use paychan_store::{MemStore, Store, WriteBatch};

/// Price of a request, atomic units (0.001 of a 6-decimal token).
const PRICE: u128 = 1_000;

type Bench = Settler<MemStore, ChainReader, NoFacilitator, paychan_engine::SystemClock>;

struct Env {
    chain: DevChain,
    domain: BatchDomain,
    offer: BatchRequirements,
    reader: ChainReader,
    payer: LocalSigner,
    store: MemStore,
    settler: Bench,
    funder: Relayer<MemStore>,
    next_salt: u64,
}

/// A channel the bench charges.
struct Channel {
    config: ChannelConfig,
    id: B256,
    balance: u128,
    charged: u128,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

impl Env {
    async fn start() -> Env {
        let chain = DevChain::start().await.unwrap();
        let domain = BatchDomain::new(chain.chain_id(), ESCROW);
        let offer = chain.offer(PRICE);
        let reader = ChainReader::connect(ChainConfig {
            poll_interval: Duration::from_millis(10),
            ..ChainConfig::dev(chain.rpc_url())
        })
        .await
        .unwrap();
        // enough for 461 channels of up to 2 × 10,000 requests
        let payer = chain.funded_payer(1, 500 * 21_000_000).await.unwrap();
        let store = MemStore::new();
        let engine = Engine::new(
            EngineConfig::new(domain),
            store.clone(),
            reader.clone(),
            NoFacilitator,
        );
        let key = |r: Role| TxKey::from_secret(&chain.account(r).key).unwrap();
        let relayer = Relayer::new(reader.clone(), store.clone(), key(Role::Relayer));
        let authorizer =
            LocalSigner::from_bytes(&chain.account(Role::ReceiverAuthorizer).key).unwrap();
        let settler = Settler::new(
            engine,
            relayer,
            SettlerConfig {
                policy: SettlePolicy {
                    max_rows_per_tx: 200,
                    max_gas_per_tx: 8_000_000,
                    ..SettlePolicy::manual()
                },
                authorizers: vec![authorizer],
                watcher: None,
            },
        )
        .unwrap();
        let funder = Relayer::new(reader.clone(), MemStore::new(), key(Role::Payer(5)));
        Env {
            chain,
            domain,
            offer,
            reader,
            payer,
            store,
            settler,
            funder,
            next_salt: 1,
        }
    }

    /// `n` fresh channels with `deposit` each (deposits relayed ten at a time).
    async fn channels(&mut self, n: usize, deposit: u128) -> Vec<Channel> {
        let mut out = Vec::with_capacity(n);
        let valid_before = U256::from(self.chain.block_timestamp().await.unwrap() + 86_400);
        let token_domain = Eip712Domain::new(
            "USD Coin",
            "2",
            self.chain.chain_id(),
            self.chain.contracts().token,
        );
        for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
            let mut tasks = Vec::new();
            for _ in chunk {
                let salt = self.next_salt;
                self.next_salt += 1;
                let config = channel_config_for(
                    &self.offer,
                    self.payer.address(),
                    self.payer.address(),
                    B256::from(U256::from(salt)),
                );
                let id = self.domain.channel_id(&config);
                let terms = Erc3009Terms {
                    from: config.payer,
                    collector: ERC3009_COLLECTOR,
                    channel_id: id,
                    amount: deposit,
                    valid_after: U256::ZERO,
                    valid_before,
                    salt: U256::from(salt),
                };
                let auth = sign_erc3009_authorization(&token_domain, &terms, &self.payer).unwrap();
                let data = paychan_bindings::convert::erc3009_collector_data(
                    auth.valid_after,
                    auth.valid_before,
                    auth.salt,
                    &auth.signature,
                );
                let f = self.funder.clone();
                tasks.push(tokio::spawn(async move {
                    match f.deposit(&config, deposit, data).await {
                        // the authorization is used: the deposit is on chain (checked below)
                        Ok(_) | Err(paychan_chain::Error::Superseded { .. }) => {}
                        Err(e) => panic!("deposit failed: {e}"),
                    }
                }));
                out.push(Channel {
                    config,
                    id,
                    balance: deposit,
                    charged: 0,
                });
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
        for c in &out {
            assert_eq!(
                self.reader.channel_state(c.id).await.unwrap().balance,
                deposit
            );
        }
        out
    }

    /// Charges `requests` more requests at the full price on each channel: the record the engine
    /// would hold afterwards (charged total, latest voucher for that ceiling).
    async fn charge(&self, channels: &mut [Channel], requests: u128) {
        let now = now_ms();
        let mut batch = WriteBatch::default();
        for c in channels.iter_mut() {
            let before = self.store.channel(c.id).await.unwrap();
            c.charged += requests * PRICE;
            assert!(c.charged <= c.balance);
            let sig = self
                .payer
                .sign_digest(&self.domain.voucher_digest(c.id, c.charged))
                .unwrap();
            let onchain = before.map(|r| r.onchain).unwrap_or(OnchainState {
                balance: c.balance,
                ..OnchainState::default()
            });
            let mut r = ChannelRecord::from_chain(c.id, c.config, onchain, now);
            r.charged = c.charged;
            r.signed_max_claimable = c.charged;
            r.signature = Some(sig);
            r.last_request_at = now;
            batch.channels.push(r);
        }
        self.store.commit(batch).await.unwrap();
    }

    /// One claim round: (claim transactions, their gas, channels claimed).
    async fn claim(&self, channels: &[Channel]) -> (usize, u64, usize) {
        let r = self.settler.claim_now().await.unwrap();
        assert!(r.is_clean(), "{r:?}");
        for c in channels {
            let s = self.reader.channel_state(c.id).await.unwrap();
            assert_eq!(s.total_claimed, c.charged, "claimed to the unit");
        }
        (
            r.claims.len(),
            r.claims.iter().map(|c| c.gas_used).sum(),
            r.channels_claimed(),
        )
    }

    /// One settle: its gas and the amount swept.
    async fn settle(&self) -> (u64, u128) {
        let r = self.settler.settle_now().await.unwrap();
        assert_eq!(r.settles.len(), 1, "{r:?}");
        (r.settles[0].gas_used, r.settles[0].amount)
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let started = Instant::now();
        let mut env = Env::start().await;
        let receiver = env.offer.pay_to;
        let receiver_before = env.chain.token_balance(receiver).await.unwrap();

        // warm-up: the receiver's claimed and settled totals become non-zero
        let mut warm = env.channels(1, 1_000_000).await;
        env.charge(&mut warm, 1).await;
        env.claim(&warm).await;
        env.settle().await;
        let mut swept: u128 = warm.iter().map(|c| c.charged).sum();

        // claim batches: first and subsequent claims
        let mut batch_rows = Vec::new();
        let mut settle_gas = Vec::new();
        for n in [1usize, 10, 50, 100] {
            let mut ch = env.channels(n, 1_000_000).await;
            env.charge(&mut ch, 100).await;
            let (txs, first, rows) = env.claim(&ch).await;
            assert_eq!((txs, rows), (1, n));
            env.charge(&mut ch, 100).await;
            let (txs, next, rows) = env.claim(&ch).await;
            assert_eq!((txs, rows), (1, n));
            let (gas, amount) = env.settle().await;
            settle_gas.push(gas);
            swept += amount;
            batch_rows.push((n, first, next));
        }

        // amortized per paid request: 100 channels, one claim round and one settle
        let mut amortized = Vec::new();
        for requests in [100u128, 1_000, 10_000] {
            let deposit = 2 * requests * PRICE;
            let mut ch = env.channels(100, deposit).await;
            env.charge(&mut ch, requests).await;
            let (_, first, _) = env.claim(&ch).await;
            let (s1, a1) = env.settle().await;
            env.charge(&mut ch, requests).await;
            let (_, next, _) = env.claim(&ch).await;
            let (s2, a2) = env.settle().await;
            swept += a1 + a2;
            amortized.push((requests, first, s1, next, s2));
        }

        // every unit claimed was swept to the receiver
        let receiver_after = env.chain.token_balance(receiver).await.unwrap();
        assert_eq!(receiver_after - receiver_before, U256::from(swept));
        let gas = env.settler.gas_report();

        println!();
        println!("## Settlement gas (dev chain, paychan's contracts)");
        println!();
        println!("`claimWithSignature`, one transaction per batch:");
        println!();
        println!("| channels | first claims: gas | per channel | subsequent claims: gas | per channel |");
        println!("| ---: | ---: | ---: | ---: | ---: |");
        for (n, first, next) in &batch_rows {
            println!(
                "| {n} | {} | {} | {} | {} |",
                thousands(*first),
                thousands(first / *n as u64),
                thousands(*next),
                thousands(next / *n as u64)
            );
        }
        let (_, f1, n1) = batch_rows[0];
        let (_, f100, n100) = batch_rows[3];
        println!();
        println!(
            "Marginal gas of one more channel in a batch (1 → 100): first claim {}, subsequent claim {}.",
            thousands((f100 - f1) / 99),
            thousands((n100 - n1) / 99)
        );
        println!();
        println!(
            "`settle` (one receiver and token, sweeping any number of claims): {} gas.",
            settle_gas
                .iter()
                .map(|g| thousands(*g))
                .collect::<Vec<_>>()
                .join(" / ")
        );
        println!();
        println!("Amortized per paid request, 100 channels, one claim round + one settle:");
        println!();
        println!("| requests per channel | paid requests | claim + settle gas (first claims) | gas per request | claim + settle gas (subsequent) | gas per request |");
        println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
        for (r, first, s1, next, s2) in &amortized {
            let total = 100 * *r as u64;
            let a = first + s1;
            let b = next + s2;
            println!(
                "| {} | {} | {} | {:.2} | {} | {:.2} |",
                thousands(*r as u64),
                thousands(total),
                thousands(a),
                a as f64 / total as f64,
                thousands(b),
                b as f64 / total as f64
            );
        }
        println!();
        println!(
            "Settler totals: {} claim txs ({} gas), {} settle txs ({} gas), {} channel rows. \
             Receiver received exactly the {} units claimed. Run time {:.1} s.",
            gas.claim_txs,
            thousands(gas.gas_claims),
            gas.settle_txs,
            thousands(gas.gas_settles),
            gas.channels_claimed,
            swept,
            started.elapsed().as_secs_f64()
        );
        println!();
        println!("Command: `cargo bench -p paychan-benches --bench gas_report`");
    });
}
