//! The reference server settles through paychan's facilitator: `tests/interop/reference-stack.mjs`
//! runs the reference client (`@x402/fetch`) and resource server (`@x402/express` + the
//! batch-settlement server scheme, holding the receiver-authorizer key) with
//! `PAYCHAN_FACILITATOR_URL` pointing at **paychan's facilitator** served over HTTP here, so every
//! `/supported`, `/verify` and `/settle` of the reference server (deposit, vouchers, claim, settle,
//! refund) goes through `paychan-facilitator`, whose relayer sends every transaction. Then this
//! test checks on chain, independently of the script, that the money moved exactly as reported,
//! and that the four transactions are the ones paychan's relayer journaled.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use alloy::primitives::B256;
use paychan_chain::{ChainConfig, ChainReader, Relayer, TxKey};
use paychan_devchain::{DevChain, Role};
use paychan_facilitator::{BearerToken, Facilitator, FacilitatorConfig};
use paychan_store::{JournalKind, JournalState, MemStore, Store};
use serde_json::Value;

use crate::{
    node::{field, run_script, tx_hash},
    reference_stack::{Balances, assert_moved_exactly_the_charges, base_env},
};

/// Requests served, by `METHOD /path`.
type Counts = Arc<Mutex<BTreeMap<String, usize>>>;

/// paychan's facilitator on 127.0.0.1:0 behind its bearer token and hardened listener: relayer =
/// the dev relayer account, no receiver-authorizer key (the reference server signs its own claims
/// and refunds), deposits relayed for the dev receiver only. Requests are counted by endpoint.
struct Served {
    url: String,
    token_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
    store: MemStore,
    counts: Counts,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn count(
    axum::extract::State(counts): axum::extract::State<Counts>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let key = format!("{} {}", req.method(), req.uri().path());
    *counts.lock().unwrap().entry(key).or_default() += 1;
    next.run(req).await
}

async fn serve_facilitator(chain: &DevChain) -> Served {
    let config = ChainConfig {
        chain_id: chain.chain_id(),
        ..ChainConfig::dev(chain.rpc_url())
    };
    let reader = ChainReader::connect(config).await.unwrap();
    let store = MemStore::new();
    let relayer = Relayer::new(
        reader.clone(),
        store.clone(),
        TxKey::from_secret(&chain.account(Role::Relayer).key).unwrap(),
    );
    let facilitator = Facilitator::with_config(
        reader,
        relayer,
        None,
        FacilitatorConfig {
            deposit_receivers: vec![chain.account(Role::Receiver).address],
            ..FacilitatorConfig::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("facilitator.token");
    let token = BearerToken::load_or_create(&token_file).unwrap();
    let counts = Counts::default();
    let app = paychan_facilitator::router_with(facilitator, token)
        .layer(axum::middleware::from_fn_with_state(counts.clone(), count));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(paychan_service::serve(
        listener,
        app,
        paychan_service::Limits::default(),
        async {
            let _ = stopped.await;
        },
    ));
    Served {
        url,
        token_file,
        _dir: dir,
        store,
        counts,
        stop: Some(stop),
        task,
    }
}

/// Runs the script against `chain` and paychan's facilitator at `facilitator_url`; returns its
/// JSON summary line. The script reads the bearer token from the token file.
async fn run_reference_stack(chain: &DevChain, served: &Served) -> Value {
    // No relayer key: the script must not be able to send transactions itself.
    let mut env = base_env(chain);
    env.push(("PAYCHAN_FACILITATOR_URL", served.url.clone()));
    env.push((
        "PAYCHAN_FACILITATOR_TOKEN_FILE",
        served.token_file.display().to_string(),
    ));
    run_script(
        "reference-stack.mjs",
        &env,
        &["PAYCHAN_RELAYER_KEY", "PAYCHAN_FACILITATOR_HTTP"],
    )
    .await
}

#[tokio::test]
async fn reference_server_settles_through_paychans_facilitator() {
    let chain = DevChain::start().await.unwrap();
    let before = Balances::read(&chain).await;

    let mut served = serve_facilitator(&chain).await;
    let summary = run_reference_stack(&chain, &served).await;
    assert_eq!(
        field(&summary, &["facilitator"]).as_str(),
        Some("external"),
        "{summary}"
    );
    // Every transaction was sent by paychan's relayer (the dev relayer account).
    assert_moved_exactly_the_charges(&chain, &summary, before).await;

    // And they are the ones paychan's facilitator journaled: the deposit, the claim, the sweep,
    // and the refund's multicall (a Claim and a Refund entry sharing one transaction), all
    // confirmed, nothing else sent.
    let journal = served.store.journal_after(0, 100).await.unwrap();
    let confirmed = |kind: fn(&JournalKind) -> bool| -> Vec<B256> {
        journal
            .iter()
            .filter(|e| kind(&e.kind))
            .map(|e| match &e.state {
                JournalState::Confirmed { tx_hash, .. } => *tx_hash,
                other => panic!("journal entry {} is {other:?}", e.id),
            })
            .collect()
    };
    assert_eq!(
        confirmed(|k| matches!(k, JournalKind::Deposit { .. })),
        vec![tx_hash(&summary, "deposit")]
    );
    assert_eq!(
        confirmed(|k| matches!(k, JournalKind::Settle { .. })),
        vec![tx_hash(&summary, "settle")]
    );
    assert_eq!(
        confirmed(|k| matches!(k, JournalKind::Refund { .. })),
        vec![tx_hash(&summary, "refund")]
    );
    assert_eq!(
        confirmed(|k| matches!(k, JournalKind::Claim { .. })),
        vec![tx_hash(&summary, "claim"), tx_hash(&summary, "refund")]
    );
    assert_eq!(journal.len(), 5, "{journal:?}");

    // The reference server asked paychan's facilitator for its capabilities at start-up, verified
    // the deposit and the refund through it, and settled the deposit, the claim, the sweep and
    // the refund through it (vouchers are verified and charged locally by the server).
    let counts = served.counts.lock().unwrap().clone();
    eprintln!("paychan facilitator requests: {counts:?}");
    let n = |k: &str| counts.get(k).copied().unwrap_or(0);
    assert!(n("GET /supported") >= 1, "{counts:?}");
    assert!(n("POST /verify") >= 2, "{counts:?}");
    assert_eq!(n("POST /settle"), 4, "{counts:?}");

    if let Some(stop) = served.stop.take() {
        let _ = stop.send(());
    }
    served.task.await.unwrap().unwrap();
}
