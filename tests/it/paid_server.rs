//! A paychan payee server in process for the interop tests: the engine on a sled store, paychan's
//! facilitator relaying deposits into this server's channels only, one paid route in front of
//! an upstream, on a loopback port.

use std::sync::Arc;

use paychan_chain::{ChainConfig, ChainReader, Relayer, TxKey};
use paychan_core::{batch::BatchDomain, sig::LocalSigner};
use paychan_devchain::{DevChain, ESCROW, Role};
use paychan_engine::{Engine, EngineConfig};
use paychan_facilitator::{Facilitator, FacilitatorConfig};
use paychan_server::{PaidRoute, PaidState, Pricing, Upstream, app, serve};
use paychan_store::{SledStore, SledStoreConfig};

pub type PaidEngine = Engine<SledStore, ChainReader, Facilitator<SledStore>>;

pub struct PaidServer {
    pub chain: Arc<DevChain>,
    pub store: SledStore,
    pub engine: PaidEngine,
    /// The paid route's URL.
    pub url: String,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl PaidServer {
    /// A server whose one paid route, `path`, costs at most `price` priced by `pricing`.
    pub async fn start(price: u128, path: &str, pricing: Pricing, upstream: Upstream) -> Self {
        let chain = Arc::new(DevChain::start().await.unwrap());
        let domain = BatchDomain::new(chain.chain_id(), ESCROW);
        let offer = chain.offer(price);
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(SledStoreConfig::new(dir.path().join("store"))).unwrap();
        let reader = ChainReader::connect(ChainConfig::dev(chain.rpc_url()))
            .await
            .unwrap();
        let relayer = Relayer::new(
            reader.clone(),
            store.clone(),
            TxKey::from_secret(&chain.account(Role::Relayer).key).unwrap(),
        );
        let facilitator = Facilitator::with_config(
            reader.clone(),
            relayer,
            None,
            FacilitatorConfig {
                deposit_receivers: vec![offer.pay_to],
                ..FacilitatorConfig::default()
            },
        )
        .unwrap();
        let mut ecfg = EngineConfig::new(domain);
        ecfg.receiver_authorizer =
            Some(LocalSigner::from_bytes(&chain.account(Role::ReceiverAuthorizer).key).unwrap());
        let engine = Engine::new(ecfg, store.clone(), reader, facilitator);
        let routes = vec![PaidRoute {
            method: None,
            path: path.into(),
            offer: offer.clone(),
            description: Some("paid".into()),
            mime_type: None,
            pricing,
        }];
        let router = app(PaidState::new(engine.clone(), routes), upstream);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, router, async {
            let _ = stopped.await;
        }));
        Self {
            chain,
            store,
            engine,
            url,
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}
