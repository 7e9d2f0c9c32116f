//! `paychan`: pay-per-call billing of AI inference over HTTP 402 (x402 v2, batch-settlement).

mod config;
mod control;
mod pay;
mod wiring;

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use paychan_chain::{ChainConfig, ChainReader};
use paychan_core::{batch::BatchDomain, sig::Backend};
use paychan_engine::{Engine, EngineConfig, NoFacilitator};
use paychan_server::{
    Limits, PaidOptions, PaidRoute, PaidState, Upstream, app, demo::DemoConfig, proxy::Proxy,
    serve_with,
};
use paychan_store::{SledStore, SledStoreConfig};

use crate::config::Config;

/// See the workspace `Cargo.toml` for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "paychan",
    version,
    about = "Pay-per-call billing of AI inference over HTTP 402 (x402 v2, batch-settlement payment channels)"
)]
struct Cli {
    /// Log filter (e.g. `info`, `paychan_engine=debug`); also `RUST_LOG`.
    #[arg(long, global = true, env = "PAYCHAN_LOG", default_value = "info")]
    log: String,
    /// Log line format on stderr: `text` (for people) or `json` (one object a line, for log
    /// pipelines).
    #[arg(long, global = true, env = "PAYCHAN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve paid inference: x402 payments in front of an upstream, per a config file.
    Serve {
        /// The configuration file (TOML); see paychan.example.toml.
        #[arg(long, short, env = "PAYCHAN_CONFIG")]
        config: PathBuf,
        /// Override the listen address (`127.0.0.1:0` picks a free port).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Serve paychan's x402 facilitator over HTTP (POST /verify, POST /settle, GET /supported) for
    /// other x402 servers. Keys: PAYCHAN_RELAYER_KEY (required; pays gas), and optionally
    /// PAYCHAN_RECEIVER_AUTHORIZER_KEY (to sign claims and refunds for servers that delegate).
    /// /verify and /settle need `Authorization: Bearer <token>`, the token being the contents of
    /// --token-file (created, owner-only, on first start); /supported is open.
    Facilitator {
        /// JSON-RPC URL of the chain.
        #[arg(long, env = "PAYCHAN_RPC_URL")]
        rpc_url: String,
        /// Chain id (checked against the node).
        #[arg(long, env = "PAYCHAN_CHAIN_ID")]
        chain_id: u64,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8403")]
        listen: std::net::SocketAddr,
        /// Directory of the facilitator's journal (sled).
        #[arg(long, default_value = "paychan-facilitator-data")]
        data_dir: PathBuf,
        /// File holding the relayer's key (instead of PAYCHAN_RELAYER_KEY).
        #[arg(long)]
        relayer_key_file: Option<PathBuf>,
        /// File holding the receiver authorizer's key (instead of PAYCHAN_RECEIVER_AUTHORIZER_KEY).
        #[arg(long)]
        authorizer_key_file: Option<PathBuf>,
        /// Confirmations before a transaction counts (default 3; 1 on chain 31337).
        #[arg(long)]
        confirmations: Option<u64>,
        /// The bearer token file callers must present (default: <data-dir>/facilitator.token,
        /// created with a fresh random token and mode 0600 if missing).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// A receiver (payTo) whose deposits are relayed; repeat for several. Without any, only
        /// deposits into channels whose receiverAuthorizer is the held key are relayed.
        #[arg(long = "deposit-receiver", value_name = "ADDRESS")]
        deposit_receivers: Vec<alloy_primitives::Address>,
        /// The smallest deposit relayed, in the token's atomic units.
        #[arg(long, default_value_t = paychan_facilitator::DEFAULT_MIN_DEPOSIT)]
        min_deposit: u128,
        #[command(flatten)]
        tls: Box<TlsFiles>,
    },
    /// A local HTTP proxy that pays: point an agent's base URL at it; each request goes to the
    /// one --upstream, paid over x402 batch-settlement, and the answer streams back unchanged.
    /// Loopback only by default. Key: --key-file or PAYCHAN_PAYER_KEY (never argv).
    PayProxy(Box<pay::proxy::ProxyArgs>),
    /// Make N paid requests to a URL (C at a time) and print a summary: ok, errors, spent,
    /// deposited, p50/p99 latency. Key: --key-file or PAYCHAN_PAYER_KEY (never argv).
    Call(Box<pay::call::CallArgs>),
    /// Run the whole dev stack: a dev chain with paychan's contracts, the engine and server, and
    /// a demo upstream. Everything is fresh on each start and gone on exit.
    Dev(Box<DevArgs>),
    /// Channels of the server's store, through its gRPC control plane: list, show, watch
    /// events, and claim, settle or refund now.
    Channel(Box<control::ChannelArgs>),
    /// Engine and settlement statistics and health, through the gRPC control plane.
    Stats(Box<control::StatsArgs>),
    /// A payer's own channel at a server, on chain: open, top up, withdraw (timed), finalize,
    /// status. Key: --key-file or PAYCHAN_PAYER_KEY (never argv).
    Payer(Box<control::payer::PayerArgs>),
}

/// `paychan dev`.
#[derive(clap::Args)]
struct DevArgs {
    /// Address of the paid server.
    #[arg(long, default_value = "127.0.0.1:8402")]
    listen: std::net::SocketAddr,
    /// Port of the dev chain's JSON-RPC (0 picks a free one).
    #[arg(long, default_value_t = 8545)]
    chain_port: u16,
    /// Maximum price per request, atomic units of the dev token (6 decimals).
    #[arg(long, default_value_t = 10_000)]
    price: u128,
    /// Demo upstream price per token.
    #[arg(long, default_value_t = 10)]
    price_per_token: u128,
    /// Address of the gRPC control plane (loopback only; 127.0.0.1:0 picks a free port).
    #[arg(long, default_value = config::DEFAULT_CONTROL_LISTEN)]
    grpc_listen: std::net::SocketAddr,
    /// Address of the operator listener (/metrics, /health; 127.0.0.1:0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9402")]
    operator_listen: std::net::SocketAddr,
    /// Once everything serves, write a JSON object describing the stack to this file (mode
    /// 0600: it holds the funded dev payer keys): rpc_url, chain_id, network, token, token_name,
    /// token_version, settlement, collector, gateway_url, paid_path, grpc_addr, grpc_token_file,
    /// receiver, payer_private_keys, data_dir, …
    #[arg(long, value_name = "PATH")]
    info_file: Option<PathBuf>,
    /// Claim every channel with unclaimed charges this often, seconds, and settle after each
    /// claim (0: only when asked, `paychan channel claim`).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    claim_every_secs: u64,
}

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// The relayers' gas balances, read from the chain every [`Self::EVERY`] by a background task
/// and kept for the operator's `/metrics`.
struct RelayerBalances {
    latest: Arc<std::sync::Mutex<Vec<(alloy_primitives::Address, u128)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RelayerBalances {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(30);

    fn start(reader: ChainReader, addresses: Vec<alloy_primitives::Address>) -> Self {
        let latest = Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = latest.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Self::EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let mut read = Vec::with_capacity(addresses.len());
                for a in &addresses {
                    match reader.native_balance(*a).await {
                        Ok(wei) => read.push((*a, u128::try_from(wei).unwrap_or(u128::MAX))),
                        Err(e) => {
                            tracing::debug!(target: "paychan", relayer = %a, error = %e, "reading the relayer's balance")
                        }
                    }
                }
                if let Ok(mut l) = out.lock() {
                    // A relayer whose read failed keeps its last value.
                    for (a, wei) in read {
                        match l.iter_mut().find(|(b, _)| *b == a) {
                            Some(slot) => slot.1 = wei,
                            None => l.push((a, wei)),
                        }
                    }
                }
            }
        });
        Self { latest, task }
    }

    fn reader(&self) -> paychan_server::prom::BalancesFn {
        let l = self.latest.clone();
        Arc::new(move || l.lock().map(|v| v.clone()).unwrap_or_default())
    }

    fn stop(self) {
        self.task.abort();
    }
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Chain settings: anvil's chain id gets dev settings (one confirmation, short polls).
fn chain_config(rpc_url: &str, chain_id: u64) -> ChainConfig {
    if chain_id == 31337 {
        ChainConfig::dev(rpc_url)
    } else {
        ChainConfig::new(rpc_url, chain_id)
    }
}

/// paychan's facilitator on `store`, sending with `relayer`; first reconciles the relayer's
/// journal with the chain (a restart never sends twice).
async fn local_facilitator(
    reader: &ChainReader,
    relayer: paychan_chain::Relayer<SledStore>,
    authorizer: Option<paychan_core::sig::LocalSigner>,
    config: paychan_facilitator::FacilitatorConfig,
) -> Result<paychan_facilitator::Facilitator<SledStore>> {
    let report = relayer
        .recover()
        .await
        .context("reconciling the relayer's journal with the chain")?;
    tracing::info!(target: "paychan", ?report, address = %relayer_address(&relayer), "relayer ready");
    paychan_facilitator::Facilitator::with_config(reader.clone(), relayer, authorizer, config)
        .context("starting the facilitator")
}

fn relayer_address(r: &paychan_chain::Relayer<SledStore>) -> alloy_primitives::Address {
    r.address()
}

/// Builds the engine and server for `cfg` and serves until `shutdown`. Prints one JSON line
/// `{"event":"listening","addr":…}` on stdout once accepting connections.
async fn run_server(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&control::serve::Serving) -> Result<()>,
) -> Result<()> {
    let mut store_cfg = SledStoreConfig::new(&cfg.data_dir);
    store_cfg.durability = cfg.durability;
    store_cfg.group_window = cfg.group_commit_window;
    store_cfg.checkpoint_every = cfg.checkpoint_interval;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let store = SledStore::open(store_cfg)
        .with_context(|| format!("opening the store at {}", cfg.data_dir.display()))?;
    let mut chain_cfg = chain_config(&cfg.rpc_url, cfg.chain_id);
    if let config::FacilitatorChoice::Local {
        confirmations: Some(n),
        ..
    } = &cfg.facilitator
    {
        chain_cfg.confirmations = *n;
    }
    chain_cfg.escrow = cfg.escrow;
    let reader = ChainReader::connect(chain_cfg).await.with_context(|| {
        format!(
            "connecting to the chain at {}",
            paychan_core::redact::redact_urls(&cfg.rpc_url)
        )
    })?;
    // One relayer per sending key: a local facilitator and the settler share it when they use
    // the same key, so their transactions never compete for a nonce.
    let mut relayers: Vec<paychan_chain::Relayer<SledStore>> = Vec::new();
    let mut relayer_for = |key: &paychan_core::sig::LocalSigner| {
        if let Some(r) = relayers.iter().find(|r| r.address() == key.address()) {
            return r.clone();
        }
        let r = paychan_chain::Relayer::new(reader.clone(), store.clone(), key.clone());
        relayers.push(r.clone());
        r
    };
    let facilitator = match &cfg.facilitator {
        config::FacilitatorChoice::None => wiring::AnyFacilitator::None(NoFacilitator),
        config::FacilitatorChoice::Remote { url, token } => wiring::AnyFacilitator::Remote(
            paychan_facilitator::HttpFacilitator::with_token(url.clone(), token.clone())
                .with_context(|| {
                    format!("facilitator at {}", paychan_core::redact::redact_urls(url))
                })?,
        ),
        config::FacilitatorChoice::Local { relayer, .. } => {
            wiring::AnyFacilitator::Local(Box::new(
                local_facilitator(
                    &reader,
                    relayer_for(relayer),
                    cfg.receiver_authorizer.clone(),
                    paychan_facilitator::FacilitatorConfig {
                        // In process it relays only what this server's engine asks for: deposits
                        // into this server's channels, which the engine has already held to its
                        // per-offer minimum and rate limit.
                        deposit_receivers: cfg.routes.iter().map(|r| r.2.pay_to).collect(),
                        min_deposit: cfg.min_deposit.unwrap_or(0),
                        backend: Backend::fastest(),
                        ..Default::default()
                    },
                )
                .await?,
            ))
        }
    };
    let settle_relayer = cfg.settlement.as_ref().map(|s| relayer_for(&s.relayer));
    let mut ecfg = EngineConfig::new(BatchDomain::new(cfg.chain_id, cfg.escrow));
    ecfg.max_onchain_age = cfg.max_onchain_age;
    ecfg.busy_wait = cfg.busy_wait;
    ecfg.withdrawal_guard = cfg.withdrawal_guard;
    ecfg.receiver_authorizer = cfg.receiver_authorizer.clone();
    ecfg.min_deposit = cfg.min_deposit;
    ecfg.min_refund = cfg.min_refund;
    ecfg.backend = Backend::fastest();
    let minute = std::time::Duration::from_secs(60);
    ecfg.deposit_rate = paychan_engine::RateLimit::new(cfg.deposits_per_minute, minute);
    ecfg.refund_rate = paychan_engine::RateLimit::new(cfg.refunds_per_minute, minute);
    // The relayers' gas balances for the operator's `/metrics`: read in the background, so a
    // scrape never waits for the chain.
    let relayer_balances = (!relayers.is_empty()).then(|| {
        let addresses: Vec<_> = relayers.iter().map(|r| r.address()).collect();
        RelayerBalances::start(reader.clone(), addresses)
    });
    let engine = Engine::new(ecfg, store, reader, facilitator);
    let settler = match (cfg.settlement, settle_relayer, &cfg.receiver_authorizer) {
        (Some(s), Some(relayer), Some(authorizer)) => Some(
            paychan_settle::Settler::new(
                engine.clone(),
                relayer,
                paychan_settle::SettlerConfig::new(s.policy, authorizer.clone()),
            )
            .context("starting the settlement scheduler")?,
        ),
        _ => None,
    };
    // The gRPC control plane (loopback by default) over the same engine and scheduler.
    let receivers = cfg.routes.iter().map(|r| r.2.pay_to).collect();
    let control = match &cfg.control {
        Some(c) => {
            Some(control::serve::start(c, engine.clone(), settler.clone(), receivers).await?)
        }
        None => None,
    };
    let mut routes = Vec::new();
    for (method, path, offer, description, pricing) in cfg.routes {
        let method = match method {
            Some(m) => Some(
                m.parse()
                    .with_context(|| format!("route {path}: method {m:?}"))?,
            ),
            None => None,
        };
        routes.push(PaidRoute {
            method,
            path,
            offer,
            description,
            mime_type: None,
            pricing,
        });
    }
    let upstream = match &cfg.upstream {
        Some(url) => {
            let proxy = Proxy::with_timeouts(url, cfg.upstream_timeouts)?;
            Upstream::Proxy(match &cfg.upstream_token {
                Some(t) => proxy.with_bearer(t),
                None => proxy,
            })
        }
        None => Upstream::Demo(DemoConfig {
            price_per_token: cfg.demo_price_per_token,
        }),
    };
    let state = PaidState::with_options(
        engine,
        routes,
        PaidOptions {
            free_routes: cfg.free_routes,
            max_body_bytes: cfg.max_body_bytes,
            max_response_bytes: cfg.max_response_bytes,
            ..PaidOptions::default()
        },
    );
    let router = app(state.clone(), upstream);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    // Operational data (revenue, traffic) has its own listener, loopback by default, never the
    // paid port.
    let (stop_operator, operator_stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = match cfg.operator_listen {
        Some(a) => {
            if !a.ip().is_loopback() {
                tracing::warn!(target: "paychan", addr = %a, "operator listener (metrics) is not on loopback: anyone who reaches it sees revenue and traffic");
            }
            let l = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding the operator listener {a}"))?;
            let op_addr = l.local_addr()?;
            let sources = paychan_server::OperatorSources {
                settlement_backlog: settler.clone().map(|s| {
                    let f: paychan_server::prom::BacklogFn = Arc::new(move || s.outstanding());
                    f
                }),
                relayer_balances: relayer_balances.as_ref().map(RelayerBalances::reader),
            };
            let op_app = paychan_server::operator_app_with(state, sources);
            let task = tokio::spawn(serve_with(l, op_app, Limits::default(), async move {
                let _ = operator_stopped.await;
            }));
            Some((op_addr, task))
        }
        None => None,
    };
    let operator_addr = operator.as_ref().map(|(a, _)| a.to_string());
    let serving = control::serve::Serving {
        addr,
        operator_addr: operator.as_ref().map(|(a, _)| *a),
        grpc_addr: control.as_ref().map(|c| c.addr),
        grpc_token_file: control.as_ref().map(|c| c.token_file.clone()),
    };
    tracing::info!(target: "paychan", %addr, operator = ?operator_addr, grpc = ?serving.grpc_addr, signatures = Backend::fastest().name(), "listening");
    // Before the `listening` line, so that whoever waits for it finds what `on_ready` wrote.
    on_ready(&serving)?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "{}",
            serde_json::json!({
                "event": "listening",
                "addr": addr.to_string(),
                "operator_addr": operator_addr,
                "grpc_addr": serving.grpc_addr.map(|a| a.to_string()),
                "grpc_token_file": serving.grpc_token_file.as_ref().map(|p| p.display().to_string()),
            })
        );
    }
    // The settler runs beside the server. At shutdown the server stops first (no new charges),
    // then the settler claims everything outstanding and settles.
    let (stop_settler, settler_stopped) = tokio::sync::oneshot::channel::<()>();
    let settler_task = settler.map(|s| {
        tokio::spawn(s.run(async move {
            let _ = settler_stopped.await;
        }))
    });
    serve_with(listener, router, cfg.limits, shutdown).await?;
    tracing::info!(target: "paychan", "server stopped");
    let _ = stop_operator.send(());
    if let Some((_, t)) = operator {
        let _ = t.await;
    }
    if let Some(c) = control {
        c.stop().await;
    }
    if let Some(b) = relayer_balances {
        b.stop();
    }
    let _ = stop_settler.send(());
    if let Some(t) = settler_task {
        match t.await {
            Ok(Ok(report)) => tracing::info!(target: "paychan", ?report, "settlement stopped"),
            Ok(Err(e)) => {
                tracing::error!(target: "paychan", error = %e, "settlement stopped with an error")
            }
            Err(e) => tracing::error!(target: "paychan", error = %e, "settlement task failed"),
        }
    }
    Ok(())
}

async fn dev(a: DevArgs) -> Result<()> {
    let DevArgs {
        listen,
        chain_port,
        price,
        price_per_token,
        grpc_listen,
        operator_listen,
        info_file,
        claim_every_secs,
    } = a;
    use paychan_devchain::{DevChain, DevChainConfig, Role};
    let chain = Arc::new(
        DevChain::start_with(DevChainConfig {
            port: chain_port,
            ..DevChainConfig::default()
        })
        .await
        .context("starting the dev chain (did you run `npm ci`?)")?,
    );
    let payers = control::dev::fund_payers(&chain).await?;
    let data = tempfile_dir()?;
    let c = chain.contracts();
    let authorizer = chain.account(Role::ReceiverAuthorizer);
    let file = config::File {
        listen: Some(listen.to_string()),
        data_dir: data.clone(),
        durability: None,
        group_commit_window_us: None,
        checkpoint_interval_ms: None,
        upstream: "demo".into(),
        upstream_token_file: None,
        tls_cert_file: None,
        tls_key_file: None,
        upstream_timeout_secs: None,
        upstream_connect_timeout_secs: None,
        operator_listen: Some(operator_listen.to_string()),
        limits: None,
        free_routes: Vec::new(),
        max_onchain_age_secs: Some(5),
        busy_wait_ms: None,
        withdrawal_guard_secs: None,
        demo_price_per_token: Some(price_per_token.to_string()),
        chain: config::ChainSection {
            rpc_url: chain.rpc_url().to_owned(),
            chain_id: chain.chain_id(),
            escrow: None,
        },
        payment: config::PaymentSection {
            receiver: chain.account(Role::Receiver).address.to_string(),
            receiver_authorizer: authorizer.address.to_string(),
            receiver_authorizer_key_file: None,
            asset: c.token.to_string(),
            asset_name: chain.config().token_name.clone(),
            asset_version: chain.config().token_version.clone(),
            withdraw_delay_secs: None,
            max_timeout_secs: None,
        },
        routes: vec![config::RouteSection {
            path: "/v1/*".into(),
            method: None,
            price: toml::Value::String(price.to_string()),
            description: Some("demo inference".into()),
            per_token: None,
            per_chunk: None,
        }],
        facilitator: None,
        relay: config::RelaySection::default(),
        settlement: None,
        control: config::ControlSection {
            listen: Some(grpc_listen.to_string()),
            token_file: None,
            allow_non_loopback: None,
            tls_cert_file: None,
            tls_key_file: None,
        },
    };
    let mut cfg = Config::from_file(file, std::path::Path::new("/"))?;
    cfg.receiver_authorizer = Some(paychan_core::sig::LocalSigner::from_bytes(&authorizer.key)?);
    // paychan's own facilitator, sending with the dev relayer account: clients open channels
    // with an ERC-3009 deposit in their first paid request.
    let relayer = paychan_core::sig::LocalSigner::from_bytes(&chain.account(Role::Relayer).key)?;
    cfg.facilitator = config::FacilitatorChoice::Local {
        relayer: relayer.clone(),
        confirmations: Some(1),
    };
    // Claim every minute and settle after each claim, so the flow is visible on the dev chain.
    let policy = paychan_settle::SettlePolicy {
        interval: (claim_every_secs > 0).then(|| std::time::Duration::from_secs(claim_every_secs)),
        ..Default::default()
    };
    cfg.settlement = Some(config::Settlement { policy, relayer });
    let payer = chain.account(Role::Payer(0));
    eprintln!(
        "paychan dev stack\n  chain      {} (chain id {})\n  escrow     {}\n  collector  {}\n  token      {} (USD Coin v2, 6 decimals)\n  receiver   {}\n  server     http://{}/v1/chat/completions  (max {} per request, demo upstream at {} per token)\n  store      {}\n  test payer {} (anvil test key #1; holds dev tokens)\nCtrl-C stops everything.",
        chain.rpc_url(),
        chain.chain_id(),
        c.escrow,
        c.erc3009_collector,
        c.token,
        chain.account(Role::Receiver).address,
        listen,
        price,
        price_per_token,
        data.display(),
        payer.address,
    );
    let result = run_server(cfg, shutdown_signal(), |serving| {
        control::dev::announce(&chain, serving, &data, price, &payers, info_file.as_deref())
    })
    .await;
    if let Some(p) = &info_file {
        // it names keys of a chain that is gone now
        let _ = std::fs::remove_file(p);
    }
    drop(chain);
    let _ = std::fs::remove_dir_all(&data);
    result
}

/// `--tls-cert-file` and `--tls-key-file`.
#[derive(clap::Args, Debug)]
struct TlsFiles {
    /// Serve TLS with this PEM certificate chain (with --tls-key-file). Default: plaintext,
    /// for loopback or a TLS proxy in front.
    #[arg(long, value_name = "PATH", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The PEM private key of --tls-cert-file (an owner-only file).
    #[arg(long, value_name = "PATH", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
}

struct FacilitatorArgs {
    rpc_url: String,
    chain_id: u64,
    listen: std::net::SocketAddr,
    data_dir: PathBuf,
    relayer_key_file: Option<PathBuf>,
    authorizer_key_file: Option<PathBuf>,
    confirmations: Option<u64>,
    token_file: Option<PathBuf>,
    deposit_receivers: Vec<alloy_primitives::Address>,
    min_deposit: u128,
    tls: Option<(PathBuf, PathBuf)>,
}

async fn facilitator(a: FacilitatorArgs) -> Result<()> {
    let relayer = config::load_key(a.relayer_key_file.as_deref(), config::RELAYER_KEY_ENV)?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the relayer's key is needed: set {} or pass --relayer-key-file",
                config::RELAYER_KEY_ENV
            )
        })?;
    let authorizer = config::load_key(
        a.authorizer_key_file.as_deref(),
        config::RECEIVER_AUTHORIZER_KEY_ENV,
    )?;
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("creating {}", a.data_dir.display()))?;
    let store = SledStore::open(SledStoreConfig::new(&a.data_dir))
        .with_context(|| format!("opening the journal at {}", a.data_dir.display()))?;
    let mut chain_cfg = chain_config(&a.rpc_url, a.chain_id);
    if let Some(n) = a.confirmations {
        chain_cfg.confirmations = n;
    }
    let reader = ChainReader::connect(chain_cfg).await.with_context(|| {
        format!(
            "connecting to the chain at {}",
            paychan_core::redact::redact_urls(&a.rpc_url)
        )
    })?;
    let relayer = paychan_chain::Relayer::new(reader.clone(), store.clone(), relayer);
    if a.deposit_receivers.is_empty() && authorizer.is_none() {
        tracing::warn!(target: "paychan", "no --deposit-receiver and no receiver-authorizer key: no deposit will be relayed");
    }
    let token_file = a
        .token_file
        .unwrap_or_else(|| a.data_dir.join("facilitator.token"));
    let token = paychan_service::BearerToken::load_or_create(&token_file)
        .with_context(|| format!("the bearer token file {}", token_file.display()))?;
    let mut options = paychan_facilitator::HttpOptions::new(token);
    if let Some((cert, key)) = &a.tls {
        options.limits.tls =
            Some(paychan_service::Tls::from_pem_files(cert, key).context("the facilitator's TLS")?);
    }
    let fcfg = paychan_facilitator::FacilitatorConfig {
        deposit_receivers: a.deposit_receivers,
        min_deposit: a.min_deposit,
        backend: Backend::fastest(),
        ..Default::default()
    };
    let f = local_facilitator(&reader, relayer, authorizer, fcfg).await?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let addr = listener.local_addr()?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "{}",
            serde_json::json!({
                "event": "listening",
                "addr": addr.to_string(),
                "token_file": token_file.display().to_string(),
                "tls": a.tls.is_some(),
            })
        );
    }
    paychan_facilitator::serve_with(listener, f, options, shutdown_signal()).await?;
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir().join(format!("paychan-dev-{}", std::process::id()));
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    Ok(base)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format);
    let result = match cli.command {
        Command::Serve { config, listen } => match Config::load(&config) {
            Ok(mut cfg) => {
                if let Some(l) = listen {
                    cfg.listen = l;
                }
                run_server(cfg, shutdown_signal(), |_| Ok(())).await
            }
            Err(e) => Err(e),
        },
        Command::Dev(a) => dev(*a).await,
        Command::Channel(a) => control::exit(control::channel(*a).await),
        Command::Stats(a) => control::exit(control::stats(*a).await),
        Command::Payer(a) => control::exit(control::payer::run(*a).await),
        Command::PayProxy(a) => pay::proxy::run(*a, shutdown_signal()).await,
        Command::Call(a) => pay::call::run(*a).await,
        Command::Facilitator {
            rpc_url,
            chain_id,
            listen,
            data_dir,
            relayer_key_file,
            authorizer_key_file,
            confirmations,
            token_file,
            deposit_receivers,
            min_deposit,
            tls,
        } => {
            facilitator(FacilitatorArgs {
                rpc_url,
                chain_id,
                listen,
                data_dir,
                relayer_key_file,
                authorizer_key_file,
                confirmations,
                token_file,
                deposit_receivers,
                min_deposit,
                tls: tls.tls_cert_file.zip(tls.tls_key_file),
            })
            .await
        }
    };
    if let Err(e) = result {
        eprintln!("paychan: {e:#}");
        std::process::exit(1);
    }
}
