//! Shared setup: a dev chain, an engine over a sled store in a temporary directory, funded
//! channels paid through the engine, a settler, and the control plane served over loopback.

use std::{net::SocketAddr, time::Duration};

use alloy::primitives::{Address, B256};
use paychan_chain::{ChainConfig, ChainReader, Relayer, RetryPolicy, TxKey};
use paychan_control::{ControlClient, ControlConfig, ControlPlane, proto};
use paychan_core::{
    batch::{
        BatchDomain, BatchPayload, BatchRequirements,
        payer::{PayerChannel, channel_config_for},
    },
    sig::LocalSigner,
};
use paychan_devchain::{DevChain, ESCROW, Role};
use paychan_engine::{Begin, Decline, Engine, EngineConfig, NoFacilitator};
use paychan_service::BearerToken;
use paychan_settle::{SettlePolicy, Settler, SettlerConfig};
use paychan_store::{SledStore, SledStoreConfig};
use tokio::{sync::oneshot, task::JoinHandle};

pub type TestEngine = Engine<SledStore, ChainReader, NoFacilitator>;
pub type TestSettler = Settler<SledStore, ChainReader, NoFacilitator, paychan_engine::SystemClock>;
pub type TestPlane =
    ControlPlane<SledStore, ChainReader, NoFacilitator, paychan_engine::SystemClock>;

/// The most a request may cost.
pub const PRICE: u128 = 1_000;

/// How long a test waits for something that must happen before it fails (a hang guard, not
/// a timing assertion).
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Env {
    pub chain: DevChain,
    pub domain: BatchDomain,
    pub offer: BatchRequirements,
    pub dir: tempfile::TempDir,
    pub reader: ChainReader,
    pub engine: TestEngine,
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
    pub fn hex(&self) -> String {
        format!("{:#x}", self.id())
    }
    pub fn charged(&self) -> u128 {
        self.pc.charged
    }
}

/// A served control plane.
pub struct Served {
    pub addr: SocketAddr,
    pub token: BearerToken,
    pub plane: TestPlane,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<paychan_control::Result<()>>>,
}

impl Served {
    pub async fn client(&self) -> ControlClient {
        ControlClient::connect(&self.addr.to_string(), &self.token)
            .await
            .unwrap()
    }

    /// A channel to the server without any token.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

impl Env {
    pub async fn start() -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let chain = DevChain::start().await.unwrap();
        let domain = BatchDomain::new(chain.chain_id(), ESCROW);
        let offer = chain.offer(PRICE);
        let reader = ChainReader::connect(fast(chain.rpc_url())).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = EngineConfig::new(domain);
        cfg.receiver_authorizer = Some(chain.account(Role::ReceiverAuthorizer).local_signer());
        // A mirror (`apply_onchain`) holds a channel's lock for a moment; a request arriving
        // then waits instead of being refused `channel_busy`.
        cfg.busy_wait = Duration::from_secs(2);
        let store = SledStore::open(SledStoreConfig::new(dir.path().join("store"))).unwrap();
        let engine = Engine::new(cfg, store, reader.clone(), NoFacilitator);
        Env {
            chain,
            domain,
            offer,
            dir,
            reader,
            engine,
        }
    }

    pub fn key(&self, role: Role) -> LocalSigner {
        self.chain.account(role).local_signer()
    }

    pub fn receiver(&self) -> Address {
        self.offer.pay_to
    }

    /// A settler sending from the `Relayer` dev account, with manual settles and no follower.
    pub fn settler(&self) -> TestSettler {
        let relayer = Relayer::new(
            self.reader.clone(),
            self.engine.store().clone(),
            TxKey::from_secret(&self.chain.account(Role::Relayer).key).unwrap(),
        );
        let policy = SettlePolicy {
            retry_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(1),
            ..SettlePolicy::manual()
        };
        Settler::new(
            self.engine.clone(),
            relayer,
            SettlerConfig {
                policy,
                authorizers: vec![self.key(Role::ReceiverAuthorizer)],
                watcher: None,
            },
        )
        .unwrap()
    }

    /// The control plane of the engine (and `settler`), served on a loopback port.
    pub async fn serve(&self, settler: Option<TestSettler>, config: ControlConfig) -> Served {
        let token = BearerToken::load_or_create(&self.dir.path().join("control.token")).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let plane = ControlPlane::new(self.engine.clone(), settler, config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(paychan_control::serve(
            listener,
            plane.clone(),
            token.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Served {
            addr,
            token,
            plane,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A channel of `payer` funded with `deposit` (relayed by the `Relayer` account).
    pub async fn open(&self, payer: LocalSigner, salt: u64, deposit: u128) -> Payer {
        let config = channel_config_for(
            &self.offer,
            payer.address(),
            payer.address(),
            paychan_devchain::salt(salt),
        );
        self.chain.deposit(&payer, &config, deposit).await.unwrap();
        Payer {
            key: payer,
            pc: PayerChannel::from_chain(&self.domain, config, deposit, 0),
        }
    }

    /// A channel of a fresh payer (`seed`) funded with `deposit`.
    pub async fn open_channel(&self, seed: u64, deposit: u128) -> Payer {
        let payer = self.chain.funded_payer(seed, deposit).await.unwrap();
        self.open(payer, seed, deposit).await
    }

    /// One paid request of maximum `PRICE` charged `actual` through the engine.
    pub async fn pay(&self, p: &mut Payer, actual: u128) -> u128 {
        self.try_pay(p, actual).await.unwrap()
    }

    /// [`Self::pay`], or the engine's refusal.
    pub async fn try_pay(&self, p: &mut Payer, actual: u128) -> Result<u128, Decline> {
        let v =
            p.pc.voucher_payload(&self.domain, &p.key, self.offer.amount)
                .unwrap();
        let payload = paychan_devchain::payment(&self.offer, BatchPayload::Voucher(v));
        let ticket = match self.engine.begin(&payload, &self.offer).await? {
            Begin::Serve(t) => t,
            Begin::Done(_) => panic!("expected a reservation"),
        };
        let resp = self.engine.commit(ticket, actual).await?;
        Ok(p.pc.apply_response(&resp, PRICE, None).unwrap())
    }

    pub async fn balance(&self, who: Address) -> u128 {
        self.chain.token_balance(who).await.unwrap().to::<u128>()
    }

    /// Transactions mined from `who` (its nonce).
    pub async fn nonce(&self, who: Address) -> u64 {
        self.chain.nonce(who).await.unwrap()
    }

    /// (balance, claimed) on chain.
    pub async fn onchain(&self, id: B256) -> (u128, u128) {
        let st = self.chain.onchain_state(id).await.unwrap();
        (st.balance, st.total_claimed)
    }
}

/// Fast adapter settings against `url`.
pub fn fast(url: &str) -> ChainConfig {
    ChainConfig {
        poll_interval: Duration::from_millis(20),
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

/// The status of a call that must fail.
pub fn status<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Status {
    r.expect_err("the call must fail")
}

/// Asserts `s` is INVALID_ARGUMENT about `field`.
pub fn invalid(s: &tonic::Status, field: &str) {
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().starts_with(&format!("{field}: ")),
        "expected a message about {field}, got {:?}",
        s.message()
    );
}

/// A `ListChannels` request of everything, `page_size` at a time.
pub fn list_all(page_size: u32, page_token: String) -> proto::ListChannelsRequest {
    proto::ListChannelsRequest {
        page_size,
        page_token,
        ..Default::default()
    }
}
