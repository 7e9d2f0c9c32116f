//! A real paychan server on loopback (engine over sled, the in-process facilitator relaying
//! deposits and refunds on a dev chain, the demo upstream priced per token) with a front layer
//! that counts requests and can play a dishonest or changed server; and payers over sled.

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use alloy::primitives::Address;
use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderValue, Uri},
    middleware::{Next, from_fn_with_state},
    response::{IntoResponse, Response},
    routing::post,
};
use paychan_chain::{ChainConfig, ChainReader, Relayer, TxKey};
use paychan_client::{Clock, DepositPolicy, Payer, Receipt, SpendPolicy};
use paychan_core::{
    batch::{BatchDomain, BatchRequirements},
    codec,
    sig::LocalSigner,
    x402::{PaymentRequired, SettlementResponse},
};
use paychan_devchain::{DevChain, ESCROW, Role};
use paychan_engine::{Engine, EngineConfig};
use paychan_facilitator::{Facilitator, FacilitatorConfig};
use paychan_server::{PaidRoute, PaidState, Upstream, app, demo::DemoConfig, serve};
use paychan_store::{SledStore, SledStoreConfig, Store};
use tower::ServiceExt;

/// The per-request maximum of `/v1/*` (per-token prices, below it).
pub const PRICE: u128 = 10_000;
/// The demo upstream's price per token.
pub const PER_TOKEN: u128 = 7;
/// The per-request maximum of `/v2/*`: the "raised" price.
pub const PRICEY: u128 = 50_000;
/// The price of `/fixed/*`: always charged in full.
pub const FIXED: u128 = 3_000;
/// The per-token prices of `/usage/*`, priced by the gateway from the answer's `usage`.
pub const USAGE_PRICES: paychan_server::TokenPrices = paychan_server::TokenPrices {
    input: 3,
    output: 5,
    fixed: 11,
    fallback: paychan_server::Fallback::Max,
};

/// What the front layer saw and what it does.
#[derive(Default)]
pub struct Front {
    /// Every request that reached the server.
    pub requests: AtomicU64,
    /// Those carrying `PAYMENT-SIGNATURE`.
    pub paid: AtomicU64,
    /// Serve `/v1/*` at the `/v2/*` price (a server that raised its price).
    pub pricey: AtomicBool,
    /// Add `extra.minDeposit` to every offer (a server that asks for a bigger deposit).
    pub min_deposit: Mutex<Option<u128>>,
    /// Report one unit more than charged in `PAYMENT-RESPONSE` (a dishonest server).
    pub overreport: AtomicBool,
    /// Lose the answers of this many next paid requests the server served and charged: the
    /// payer gets a 502 with no `PAYMENT-RESPONSE` (an answer lost on the way back).
    pub lose_answers: AtomicU64,
}

impl Front {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn paid(&self) -> u64 {
        self.paid.load(Ordering::SeqCst)
    }
}

fn rewrite_path(req: &mut Request, from: &str, to: &str) {
    if let Some(rest) = req.uri().path().strip_prefix(from) {
        let pq = req
            .uri()
            .query()
            .map_or_else(|| format!("{to}{rest}"), |q| format!("{to}{rest}?{q}"));
        if let Ok(u) = pq.parse::<Uri>() {
            *req.uri_mut() = u;
        }
    }
}

fn reencode<T: serde::Serialize + serde::de::DeserializeOwned>(
    resp: &mut Response,
    header: &'static str,
    f: impl FnOnce(&mut T),
) {
    let Some(v) = resp.headers().get(header).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let Ok(mut value) = codec::decode::<T>(v) else {
        return;
    };
    f(&mut value);
    resp.headers_mut().insert(
        header,
        HeaderValue::from_str(&codec::encode(&value)).unwrap(),
    );
}

async fn front(State(f): State<Arc<Front>>, mut req: Request, next: Next) -> Response {
    f.requests.fetch_add(1, Ordering::SeqCst);
    if req.headers().contains_key(codec::PAYMENT_SIGNATURE) {
        f.paid.fetch_add(1, Ordering::SeqCst);
    }
    if f.pricey.load(Ordering::SeqCst) {
        rewrite_path(&mut req, "/v1/", "/v2/");
    }
    let paid = req.headers().contains_key(codec::PAYMENT_SIGNATURE);
    let mut resp = next.run(req).await;
    if paid
        && resp.status().is_success()
        && f.lose_answers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        return http::StatusCode::BAD_GATEWAY.into_response();
    }
    let min = *f.min_deposit.lock().unwrap();
    if let Some(min) = min {
        reencode::<PaymentRequired>(&mut resp, codec::PAYMENT_REQUIRED, |pr| {
            for a in &mut pr.accepts {
                if let Some(e) = a.extra.as_mut() {
                    e.insert("minDeposit".into(), min.to_string().into());
                }
            }
        });
    }
    if f.overreport.load(Ordering::SeqCst) {
        reencode::<SettlementResponse>(&mut resp, codec::PAYMENT_RESPONSE, |s| {
            if let Some(state) = s
                .extra
                .as_mut()
                .and_then(|e| e.get_mut("channelState"))
                .and_then(|c| c.as_object_mut())
                && let Some(c) = state
                    .get("chargedCumulativeAmount")
                    .and_then(|v| v.as_str())
                    .and_then(|v| v.parse::<u128>().ok())
            {
                state.insert("chargedCumulativeAmount".into(), (c + 1).to_string().into());
            }
        });
    }
    resp
}

/// The upstream: the demo chat completions (priced per token) under `/v1/` and `/v2/`, and a
/// fixed-price echo under `/fixed/` (no price header: charged the route's maximum).
fn upstream() -> Router {
    let demo = paychan_server::demo::router(DemoConfig {
        price_per_token: PER_TOKEN,
    });
    Router::new()
        .route("/fixed/echo", post(|| async { "fixed" }))
        // An OpenAI-style answer with `usage` and no price header: `n` input tokens, `2n` output.
        .route(
            "/usage/chat",
            post(|axum::Json(v): axum::Json<serde_json::Value>| async move {
                let n = v["n"].as_u64().unwrap_or(0);
                axum::Json(serde_json::json!({
                    "object": "chat.completion",
                    "choices": [],
                    "usage": {"prompt_tokens": n, "completion_tokens": 2 * n},
                }))
            }),
        )
        // OpenAI-style streams of `n` content chunks: with usage when asked (per-token route),
        // and plain (chunked route).
        .route("/stream/chat", post(stream_chat))
        .route("/long/stream", post(stream_chat))
        .fallback(move |mut req: Request| {
            let demo = demo.clone();
            async move {
                rewrite_path(&mut req, "/v2/", "/v1/");
                demo.oneshot(req).await.into_response()
            }
        })
}

/// Tokens a chunk of the `/long/*` route.
pub const CHUNK_TOKENS: u64 = 10;

async fn stream_chat(axum::Json(v): axum::Json<serde_json::Value>) -> Response {
    let n = v["n"].as_u64().unwrap_or(0);
    let mut events: Vec<String> = (0..n)
        .map(|i| serde_json::json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": format!("c{i}")}}]}).to_string())
        .collect();
    if v["stream_options"]["include_usage"] == true {
        events.push(serde_json::json!({"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": n}}).to_string());
    }
    events.push("[DONE]".into());
    let body = events
        .into_iter()
        .map(|e| Ok::<_, std::io::Error>(axum::body::Bytes::from(format!("data: {e}\n\n"))));
    (
        [(http::header::CONTENT_TYPE, "text/event-stream")],
        axum::body::Body::from_stream(futures_util::stream::iter(body)),
    )
        .into_response()
}

pub type TestEngine = Engine<SledStore, ChainReader, Facilitator<SledStore>>;

pub struct Server {
    pub chain: Arc<DevChain>,
    pub offer: BatchRequirements,
    /// `http://127.0.0.1:port`.
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub store: SledStore,
    pub engine: TestEngine,
    pub front: Arc<Front>,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn route(path: &str, offer: BatchRequirements) -> PaidRoute {
    PaidRoute {
        method: None,
        path: path.into(),
        offer,
        description: Some("test inference".into()),
        mime_type: None,
        pricing: Default::default(),
    }
}

/// The engine over the sled store in `dir` (opened, or reopened after a restart), with the
/// in-process facilitator relaying deposits and refunds.
async fn open_engine(chain: &DevChain, dir: &Path) -> (SledStore, TestEngine) {
    let domain = BatchDomain::new(chain.chain_id(), ESCROW);
    let store = SledStore::open(SledStoreConfig::new(dir.join("store"))).unwrap();
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
            deposit_receivers: vec![chain.offer(PRICE).pay_to],
            ..FacilitatorConfig::default()
        },
    )
    .unwrap();
    let mut ecfg = EngineConfig::new(domain);
    ecfg.receiver_authorizer =
        Some(LocalSigner::from_bytes(&chain.account(Role::ReceiverAuthorizer).key).unwrap());
    let engine = Engine::new(ecfg, store.clone(), reader, facilitator);
    (store, engine)
}

type Serving = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

/// Serves `engine` behind the front layer on `listener` until told to stop.
fn spawn_server(
    chain: &DevChain,
    engine: &TestEngine,
    front_state: &Arc<Front>,
    listener: tokio::net::TcpListener,
) -> Serving {
    let routes = vec![
        route("/v1/*", chain.offer(PRICE)),
        route("/v2/*", chain.offer(PRICEY)),
        route("/fixed/*", chain.offer(FIXED)),
        PaidRoute {
            pricing: paychan_server::Pricing::PerToken(USAGE_PRICES),
            ..route("/usage/*", chain.offer(PRICE))
        },
        PaidRoute {
            pricing: paychan_server::Pricing::PerToken(USAGE_PRICES),
            ..route("/stream/*", chain.offer(PRICE))
        },
        PaidRoute {
            pricing: paychan_server::Pricing::Chunked(paychan_server::ChunkTerms {
                tokens: CHUNK_TOKENS,
                voucher_wait_secs: 10,
            }),
            ..route("/long/*", chain.offer(PRICE))
        },
    ];
    let router = app(
        PaidState::new(engine.clone(), routes),
        Upstream::Router(upstream()),
    )
    .layer(from_fn_with_state(front_state.clone(), front));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve(listener, router, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (stop, task)
}

impl Server {
    pub async fn start() -> Self {
        let chain = Arc::new(DevChain::start().await.unwrap());
        let offer = chain.offer(PRICE);
        let dir = tempfile::tempdir().unwrap();
        let (store, engine) = open_engine(&chain, dir.path()).await;
        let front_state = Arc::new(Front::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, task) = spawn_server(&chain, &engine, &front_state, listener);
        Self {
            chain,
            offer,
            base: format!("http://{addr}"),
            addr,
            store,
            engine,
            front: front_state,
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server (requests in flight finish), closes its engine and store, reopens both
    /// from disk and serves again on the same address.
    pub async fn restart(mut self) -> Self {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
        let Server {
            chain,
            offer,
            base,
            addr,
            store,
            engine,
            front,
            _dir,
            ..
        } = self;
        drop(engine);
        drop(store);
        let (store, engine) = open_engine(&chain, _dir.path()).await;
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (stop, task) = spawn_server(&chain, &engine, &front, listener);
        Server {
            chain,
            offer,
            base,
            addr,
            store,
            engine,
            front,
            _dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn token(&self) -> Address {
        self.chain.contracts().token
    }

    /// What the server has charged in total (from its channel records).
    pub async fn charged_total(&self) -> u128 {
        self.store
            .aggregate(self.offer.pay_to, self.token())
            .await
            .unwrap()
            .charged
    }

    /// The server's charged total on one channel.
    pub async fn charged_on(&self, id: alloy::primitives::B256) -> u128 {
        self.engine
            .channel(id)
            .await
            .unwrap()
            .map_or(0, |r| r.charged)
    }

    pub async fn tokens(&self, who: Address) -> u128 {
        self.chain.token_balance(who).await.unwrap().to::<u128>()
    }

    pub async fn reader(&self) -> ChainReader {
        ChainReader::connect(ChainConfig::dev(self.chain.rpc_url()))
            .await
            .unwrap()
    }

    pub fn chat_url(&self) -> String {
        format!("{}/v1/chat/completions", self.base)
    }

    pub fn fixed_url(&self) -> String {
        format!("{}/fixed/echo", self.base)
    }

    pub fn usage_url(&self) -> String {
        format!("{}/usage/chat", self.base)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

/// A clock the test moves.
#[derive(Clone, Default)]
pub struct TestClock(pub Arc<AtomicU64>);

impl Clock for TestClock {
    fn now_secs(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How a test payer is set up.
#[derive(Clone)]
pub struct PayerOpts {
    pub max_channels: usize,
    pub max_per_request: u128,
    pub max_per_deposit: u128,
    pub deposit: DepositPolicy,
    pub per_server_budget: Option<u128>,
    pub chain: bool,
    pub clock: Option<TestClock>,
}

impl Default for PayerOpts {
    fn default() -> Self {
        Self {
            max_channels: 4,
            max_per_request: PRICE,
            max_per_deposit: 10_000_000,
            deposit: DepositPolicy::new(2_000_000, 0),
            per_server_budget: None,
            chain: true,
            clock: None,
        }
    }
}

pub async fn payer(
    server: &Server,
    key: &LocalSigner,
    dir: &Path,
    opts: PayerOpts,
) -> Payer<SledStore> {
    let store = SledStore::open(SledStoreConfig::new(dir)).unwrap();
    let mut policy = SpendPolicy::new(opts.max_per_request, opts.max_per_deposit)
        .allow_asset(server.chain.chain_id(), server.token());
    if opts.per_server_budget.is_some() {
        policy = policy.per_period(
            std::time::Duration::from_hours(1),
            opts.per_server_budget,
            None,
        );
    }
    let mut b = Payer::builder()
        .signer(key.clone())
        .store(store)
        .spend_policy(policy)
        .deposit_policy(opts.deposit)
        .max_channels(opts.max_channels);
    if opts.chain {
        b = b.chain(server.reader().await);
    }
    if let Some(c) = opts.clock {
        b = b.clock(c);
    }
    b.build().await.unwrap()
}

/// A chat request whose price depends on `n` (the demo upstream prices by tokens).
pub fn chat(url: &str, n: usize) -> reqwest::Request {
    let content = "x".repeat(1 + n % 97);
    let body = serde_json::json!({"messages": [{"role": "user", "content": content}]});
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .build()
        .unwrap()
}

/// A request to the per-token route, and what the gateway must charge for it.
pub fn usage(url: &str, n: usize) -> (reqwest::Request, u128) {
    let n = ((n * 37) % 1000) as u64;
    let body = serde_json::json!({"n": n});
    let want = (USAGE_PRICES.fixed
        + USAGE_PRICES.input * u128::from(n)
        + USAGE_PRICES.output * u128::from(2 * n))
    .min(PRICE);
    let req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .build()
        .unwrap();
    (req, want)
}

/// A fixed-price request.
pub fn fixed(url: &str) -> reqwest::Request {
    reqwest::Client::new().post(url).body("{}").build().unwrap()
}

/// Pays `req` and returns its receipt, checking the response is a success.
pub async fn pay(payer: &Payer<SledStore>, req: reqwest::Request) -> Receipt {
    let paid = payer.execute(req).await.unwrap();
    assert!(
        paid.response.status().is_success(),
        "status {}",
        paid.response.status()
    );
    let receipt = paid.receipt.expect("a paid request has a receipt");
    // The body is the upstream's, untouched.
    let body = paid.response.bytes().await.unwrap();
    assert!(!body.is_empty());
    receipt
}

/// A payer key holding `tokens` (no ETH: deposits are relayed).
pub async fn funded(server: &Server, seed: u64, tokens: u128) -> LocalSigner {
    server.chain.funded_payer(seed, tokens).await.unwrap()
}
