//! `paychan`: pay-per-call billing of AI inference over HTTP 402 (x402 v2, batch-settlement).

mod config;

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use paychan_chain::{ChainConfig, ChainReader};
use paychan_core::batch::BatchDomain;
use paychan_engine::{Engine, EngineConfig, NoFacilitator};
use paychan_server::{PaidRoute, PaidState, Upstream, app, demo::DemoConfig, proxy::Proxy, serve};
use paychan_store::{SledStore, SledStoreConfig};

use crate::config::Config;

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
    /// Run the whole dev stack: a dev chain with paychan's contracts, the engine and server, and
    /// a demo upstream. Everything is fresh on each start and gone on exit.
    Dev {
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
    },
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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

/// Builds the engine and server for `cfg` and serves until `shutdown`. Prints one JSON line
/// `{"event":"listening","addr":…}` on stdout once accepting connections.
async fn run_server(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let mut store_cfg = SledStoreConfig::new(&cfg.data_dir);
    store_cfg.durability = cfg.durability;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let store = SledStore::open(store_cfg)
        .with_context(|| format!("opening the store at {}", cfg.data_dir.display()))?;
    let reader = ChainReader::connect(ChainConfig::new(&cfg.rpc_url, cfg.chain_id))
        .await
        .with_context(|| format!("connecting to the chain at {}", cfg.rpc_url))?;
    let mut ecfg = EngineConfig::new(BatchDomain::new(cfg.chain_id, cfg.escrow));
    ecfg.max_onchain_age = cfg.max_onchain_age;
    ecfg.busy_wait = cfg.busy_wait;
    ecfg.receiver_authorizer = cfg.receiver_authorizer.clone();
    let engine = Engine::new(ecfg, store, reader, NoFacilitator);
    let mut routes = Vec::new();
    for (method, path, offer, description) in cfg.routes {
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
        });
    }
    let upstream = match &cfg.upstream {
        Some(url) => Upstream::Proxy(Proxy::new(url, cfg.upstream_timeout)?),
        None => Upstream::Demo(DemoConfig {
            price_per_token: cfg.demo_price_per_token,
        }),
    };
    let router = app(PaidState::new(engine, routes), upstream);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(target: "paychan", %addr, "listening");
    #[allow(clippy::print_stdout)]
    {
        println!(
            "{}",
            serde_json::json!({"event": "listening", "addr": addr.to_string()})
        );
    }
    serve(listener, router, shutdown).await?;
    tracing::info!(target: "paychan", "stopped");
    Ok(())
}

async fn dev(
    listen: std::net::SocketAddr,
    chain_port: u16,
    price: u128,
    price_per_token: u128,
) -> Result<()> {
    use paychan_devchain::{DevChain, DevChainConfig, Role};
    let chain = Arc::new(
        DevChain::start_with(DevChainConfig {
            port: chain_port,
            ..DevChainConfig::default()
        })
        .await
        .context("starting the dev chain (did you run `npm ci`?)")?,
    );
    let data = tempfile_dir()?;
    let c = chain.contracts();
    let authorizer = chain.account(Role::ReceiverAuthorizer);
    let file = config::File {
        listen: Some(listen.to_string()),
        data_dir: data.clone(),
        durability: None,
        upstream: "demo".into(),
        upstream_timeout_secs: None,
        max_onchain_age_secs: Some(5),
        busy_wait_ms: None,
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
        }],
    };
    let mut cfg = Config::from_file(file, std::path::Path::new("/"))?;
    cfg.receiver_authorizer = Some(paychan_core::sig::LocalSigner::from_bytes(&authorizer.key)?);
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
    let result = run_server(cfg, shutdown_signal()).await;
    drop(chain);
    let _ = std::fs::remove_dir_all(&data);
    result
}

fn tempfile_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir().join(format!("paychan-dev-{}", std::process::id()));
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    Ok(base)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let result = match cli.command {
        Command::Serve { config, listen } => match Config::load(&config) {
            Ok(mut cfg) => {
                if let Some(l) = listen {
                    cfg.listen = l;
                }
                run_server(cfg, shutdown_signal()).await
            }
            Err(e) => Err(e),
        },
        Command::Dev {
            listen,
            chain_port,
            price,
            price_per_token,
        } => dev(listen, chain_port, price, price_per_token).await,
    };
    if let Err(e) = result {
        eprintln!("paychan: {e:#}");
        std::process::exit(1);
    }
}
