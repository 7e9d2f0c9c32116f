//! A running paychan server on port 0 with the demo upstream or a proxy.

use std::sync::Arc;

use paychan_chain::{ChainConfig, ChainReader};
use paychan_core::{
    batch::{BatchDomain, BatchPayload, BatchRequirements, payer::PayerChannel},
    codec,
    sig::LocalSigner,
    x402::{PaymentPayload, X402_VERSION},
};
use paychan_devchain::{DevChain, ESCROW};
use paychan_engine::{Engine, EngineConfig, NoFacilitator};
use paychan_server::{PaidRoute, PaidState, Upstream, app, demo::DemoConfig, operator_app, serve};
use paychan_store::{SledStore, SledStoreConfig};

pub const PRICE: u128 = 5_000;

pub struct Server {
    pub url: String,
    /// The operator listener (`/metrics`, `/health`).
    pub operator_url: String,
    pub chain: Arc<DevChain>,
    pub domain: BatchDomain,
    pub offer: BatchRequirements,
    pub engine: Engine<SledStore, ChainReader, NoFacilitator>,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    operator_stop: Option<tokio::sync::oneshot::Sender<()>>,
    operator_task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn start(upstream: impl FnOnce() -> Upstream) -> Self {
        Self::start_priced(upstream, paychan_server::Pricing::Fixed).await
    }

    /// A server whose `/v1/*` route is priced by `pricing`.
    pub async fn start_priced(
        upstream: impl FnOnce() -> Upstream,
        pricing: paychan_server::Pricing,
    ) -> Self {
        let chain = Arc::new(DevChain::start().await.unwrap());
        let domain = BatchDomain::new(chain.chain_id(), ESCROW);
        let offer = chain.offer(PRICE);
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(SledStoreConfig::new(dir.path().join("store"))).unwrap();
        let reader = ChainReader::connect(ChainConfig::new(chain.rpc_url(), chain.chain_id()))
            .await
            .unwrap();
        let engine = Engine::new(EngineConfig::new(domain), store, reader, NoFacilitator);
        let routes = vec![PaidRoute {
            method: None,
            path: "/v1/*".into(),
            offer: offer.clone(),
            description: Some("demo inference".into()),
            mime_type: Some("application/json".into()),
            pricing,
        }];
        let state = PaidState::new(engine.clone(), routes);
        let router = app(state.clone(), upstream());
        let op_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let operator_url = format!("http://{}", op_listener.local_addr().unwrap());
        let (operator_stop, operator_stopped) = tokio::sync::oneshot::channel::<()>();
        let operator_task = tokio::spawn(async move {
            serve(op_listener, operator_app(state), async {
                let _ = operator_stopped.await;
            })
            .await
            .unwrap();
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(listener, router, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self {
            url,
            operator_url,
            chain,
            domain,
            offer,
            engine,
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
            operator_stop: Some(operator_stop),
            operator_task: Some(operator_task),
        }
    }

    pub async fn funded_channel(&self, seed: u64, deposit: u128) -> (LocalSigner, PayerChannel) {
        self.chain
            .funded_channel(&self.offer, seed, deposit)
            .await
            .unwrap()
    }

    pub fn voucher_header(&self, pc: &mut PayerChannel, payer: &LocalSigner) -> String {
        let v = pc
            .voucher_payload(&self.domain, payer, self.offer.amount)
            .unwrap();
        codec::encode(&PaymentPayload {
            x402_version: X402_VERSION,
            resource: None,
            accepted: self.offer.to_generic(),
            payload: BatchPayload::Voucher(v),
            extensions: None,
        })
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
        if let Some(s) = self.operator_stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.operator_task.take() {
            t.await.unwrap();
        }
    }
}

/// Sends `request` as raw bytes to the server at `url` and returns what it answers first.
pub async fn raw(url: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// An OpenAI-style chat request body.
pub fn chat(prompt: &str) -> serde_json::Value {
    serde_json::json!({"model": "paychan-demo", "messages": [{"role": "user", "content": prompt}]})
}

pub fn demo() -> Upstream {
    Upstream::Demo(DemoConfig {
        price_per_token: 100,
    })
}

/// A voucher header for the next charge with its signature altered.
pub fn bad_signature(good: &str) -> String {
    let mut v: serde_json::Value = codec::decode(good).unwrap();
    let sig = v["payload"]["voucher"]["signature"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut bytes = sig.into_bytes();
    bytes[10] = if bytes[10] == b'1' { b'2' } else { b'1' };
    v["payload"]["voucher"]["signature"] = String::from_utf8(bytes).unwrap().into();
    codec::encode(&v)
}
