//! Shared setup: a dev chain, an engine over a sled store, funded channels paid through the
//! engine, a settler, polling helpers; `RpcProxy` (from
//! paychan-devchain) plays a dead RPC node.

use std::time::Duration;

use alloy::{
    network::TransactionBuilder,
    primitives::{Address, B256, Bytes, U256},
    providers::Provider,
    rpc::types::TransactionRequest,
};
use paychan_chain::{
    ChainConfig, ChainReader, Relayer, RetryPolicy, StartFrom, TxKey, WatcherConfig,
};
use paychan_core::{
    batch::{
        BatchDomain, BatchPayload, BatchRequirements, ChannelConfig,
        payer::{PayerChannel, channel_config_for},
    },
    sig::LocalSigner,
};
use paychan_devchain::{DevChain, ESCROW, Role};
pub use paychan_devchain::{RpcProxy, eventually};
use paychan_engine::{Begin, Engine, EngineConfig, NoFacilitator, PaymentFacilitator};
use paychan_settle::{SettlePolicy, Settler, SettlerConfig, ShutdownReport};
use paychan_store::{JournalEntry, JournalState, MemStore, SledStore, SledStoreConfig, Store};
use tokio::{sync::oneshot, task::JoinHandle};

pub type TestEngine<F = NoFacilitator> = Engine<SledStore, ChainReader, F>;
pub type TestSettler<F = NoFacilitator> =
    Settler<SledStore, ChainReader, F, paychan_engine::SystemClock>;

/// The most a request may cost.
pub const PRICE: u128 = 1_000;

pub struct Env {
    pub chain: DevChain,
    pub domain: BatchDomain,
    pub offer: BatchRequirements,
    pub dir: tempfile::TempDir,
    /// Direct (no proxy), fast settings.
    pub reader: ChainReader,
}

/// A payer's channel, paid through the engine.
pub struct Payer {
    pub key: LocalSigner,
    pub pc: PayerChannel,
}

impl Payer {
    pub fn id(&self) -> B256 {
        self.pc.channel_id
    }
    pub fn charged(&self) -> u128 {
        self.pc.charged
    }
}

impl Env {
    pub async fn start() -> Env {
        // RUST_LOG=paychan_settle=debug,paychan::chain=info shows what the settler does
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let chain = DevChain::start().await.unwrap();
        let domain = BatchDomain::new(chain.chain_id(), ESCROW);
        let offer = chain.offer(PRICE);
        let reader = ChainReader::connect(fast(chain.rpc_url())).await.unwrap();
        Env {
            chain,
            domain,
            offer,
            dir: tempfile::tempdir().unwrap(),
            reader,
        }
    }

    /// An engine over the sled store in `dir` (reopening it after a drop is a restart).
    pub fn engine(&self) -> TestEngine {
        self.engine_with(NoFacilitator)
    }

    /// [`Self::engine`] with a facilitator for deposits and refunds.
    pub fn engine_with<F: PaymentFacilitator>(&self, facilitator: F) -> TestEngine<F> {
        let mut cfg = EngineConfig::new(self.domain);
        cfg.receiver_authorizer = Some(self.authorizer());
        // The settler's mirror (`apply_onchain`) holds a channel's lock for a moment; a request
        // arriving then waits instead of being refused `channel_busy`.
        cfg.busy_wait = Duration::from_secs(2);
        let store = SledStore::open(SledStoreConfig::new(self.dir.path().join("store"))).unwrap();
        Engine::new(cfg, store, self.reader.clone(), facilitator)
    }

    pub fn key(&self, role: Role) -> LocalSigner {
        self.chain.account(role).local_signer()
    }

    pub fn authorizer(&self) -> LocalSigner {
        self.key(Role::ReceiverAuthorizer)
    }

    pub fn receiver(&self) -> Address {
        self.offer.pay_to
    }

    pub fn token(&self) -> Address {
        self.offer.asset
    }

    /// A relayer sending from the `Relayer` dev account, journaling in `store`.
    pub fn relayer<S: Store>(&self, reader: ChainReader, store: S) -> Relayer<S> {
        Relayer::new(
            reader,
            store,
            TxKey::from_secret(&self.chain.account(Role::Relayer).key).unwrap(),
        )
    }

    pub fn settler<F: PaymentFacilitator>(
        &self,
        engine: &TestEngine<F>,
        relayer: Relayer<SledStore>,
        policy: SettlePolicy,
        follow: bool,
    ) -> TestSettler<F> {
        Settler::new(
            engine.clone(),
            relayer,
            SettlerConfig {
                policy,
                authorizers: vec![self.authorizer()],
                watcher: follow.then(|| WatcherConfig {
                    start: StartFrom::Head,
                    poll_interval: Some(Duration::from_millis(100)),
                    ..WatcherConfig::default()
                }),
            },
        )
        .unwrap()
    }

    /// `n` channels of one fresh payer (`seed`), each funded with `deposit`; the deposits are
    /// relayed concurrently by a setup relayer (not the settler's key).
    pub async fn open_channels(&self, seed: u64, n: usize, deposit: u128) -> Vec<Payer> {
        let key = self
            .chain
            .funded_payer(seed, deposit * n as u128)
            .await
            .unwrap();
        let setup = Relayer::new(
            self.reader.clone(),
            MemStore::new(),
            TxKey::from_secret(&self.chain.account(Role::Payer(5)).key).unwrap(),
        );
        let mut payers = Vec::new();
        for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
            let mut tasks = Vec::new();
            for &i in chunk {
                let salt = seed * 10_000 + i as u64;
                let config = channel_config_for(
                    &self.offer,
                    key.address(),
                    key.address(),
                    paychan_devchain::salt(salt),
                );
                let data = self.deposit_data(&key, &config, deposit, salt).await;
                let r = setup.clone();
                tasks.push(tokio::spawn(async move {
                    r.deposit(&config, deposit, data).await.unwrap();
                }));
                payers.push(Payer {
                    key: key.clone(),
                    pc: PayerChannel::from_chain(&self.domain, config, deposit, 0),
                });
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
        payers
    }

    pub async fn open_channel(&self, seed: u64, deposit: u128) -> Payer {
        self.open_channels(seed, 1, deposit).await.pop().unwrap()
    }

    async fn deposit_data(
        &self,
        payer: &LocalSigner,
        config: &ChannelConfig,
        amount: u128,
        salt: u64,
    ) -> Bytes {
        self.chain
            .deposit_data(payer, config, amount, U256::from(salt), 86_400)
            .await
            .unwrap()
    }

    /// One paid request of maximum `PRICE` charged `actual` through the engine; returns the
    /// charge.
    pub async fn pay<F: PaymentFacilitator>(
        &self,
        engine: &TestEngine<F>,
        p: &mut Payer,
        actual: u128,
    ) -> u128 {
        let v =
            p.pc.voucher_payload(&self.domain, &p.key, self.offer.amount)
                .unwrap();
        let payload = paychan_devchain::payment(&self.offer, BatchPayload::Voucher(v));
        let ticket = match engine.begin(&payload, &self.offer).await.unwrap() {
            Begin::Serve(t) => t,
            Begin::Done(_) => panic!("expected a reservation"),
        };
        let resp = engine.commit(ticket, actual).await.unwrap();
        p.pc.apply_response(&resp, PRICE, None).unwrap()
    }

    /// A full cooperative refund through the engine (and its facilitator); returns the amount
    /// refunded.
    pub async fn refund<F: PaymentFacilitator>(
        &self,
        engine: &TestEngine<F>,
        p: &mut Payer,
    ) -> u128 {
        let r = p.pc.refund_payload(&self.domain, &p.key, None).unwrap();
        let payload = paychan_devchain::payment(&self.offer, BatchPayload::Refund(r));
        let resp = match engine.begin(&payload, &self.offer).await.unwrap() {
            Begin::Done(resp) => resp,
            Begin::Serve(_) => panic!("a refund is a payment operation"),
        };
        assert!(resp.success, "{resp:?}");
        let refunded: u128 = resp.amount.as_deref().unwrap().parse().unwrap();
        p.pc.apply_refund(refunded);
        refunded
    }

    pub async fn balance(&self, who: Address) -> u128 {
        self.chain.token_balance(who).await.unwrap().to::<u128>()
    }

    pub async fn claimed(&self, id: B256) -> u128 {
        self.chain.onchain_state(id).await.unwrap().total_claimed
    }

    /// Transactions mined from `who` (its nonce).
    pub async fn nonce(&self, who: Address) -> u64 {
        self.chain.nonce(who).await.unwrap()
    }

    /// Sends `who` 1 ETH from the deployer (payers hold none).
    pub async fn fund_eth(&self, who: Address) {
        let tx = TransactionRequest::default()
            .with_to(who)
            .with_value(U256::from(10u128.pow(18)));
        self.chain
            .provider()
            .send_transaction(tx)
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
    }
}

/// Fast adapter settings against `url`.
pub fn fast(url: &str) -> ChainConfig {
    ChainConfig {
        poll_interval: Duration::from_millis(20),
        bump_after: Duration::from_secs(2),
        rpc_timeout: Duration::from_secs(2),
        confirm_timeout: Some(Duration::from_secs(30)),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(200),
            attempts: 6,
        },
        ..ChainConfig::dev(url)
    }
}

/// A policy with no periodic triggers and short retries.
pub fn policy() -> SettlePolicy {
    SettlePolicy {
        urgent_retry: Duration::from_millis(200),
        retry_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(1),
        ..SettlePolicy::manual()
    }
}

/// Runs the settler until the returned sender fires.
pub fn run<F: PaymentFacilitator>(
    settler: &TestSettler<F>,
) -> (oneshot::Sender<()>, JoinHandle<ShutdownReport>) {
    let (tx, rx) = oneshot::channel::<()>();
    let s = settler.clone();
    let h = tokio::spawn(async move {
        s.run(async move {
            let _ = rx.await;
        })
        .await
        .unwrap()
    });
    (tx, h)
}

/// The first open journal entry `Sent` with at least `hashes` hashes.
pub async fn sent_with<S: Store>(store: &S, hashes: usize) -> (JournalEntry, Vec<B256>) {
    eventually("a sent journal entry", 20, || async {
        store
            .open_journal()
            .await
            .unwrap()
            .into_iter()
            .find_map(|e| match &e.state {
                JournalState::Sent { all_hashes, .. } if all_hashes.len() >= hashes => {
                    let h = all_hashes.clone();
                    Some((e, h))
                }
                _ => None,
            })
    })
    .await
}
