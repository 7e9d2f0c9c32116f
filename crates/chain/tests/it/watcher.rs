//! The watcher: events in chain order with fresh state, resume from the stored cursor without
//! gaps, a reorg rewinds and reports the touched channel again.

use std::time::Duration;

use alloy::{
    providers::{Provider, ext::AnvilApi},
    rpc::types::anvil::ReorgOptions,
};
use paychan_chain::{
    ChainWatcher, EventKind, PayerClient, Relayer, StartFrom, WatchEvent, WatchItem, WatcherConfig,
};
use paychan_devchain::Role;
use paychan_store::MemStore;
use tokio::sync::mpsc;

use crate::support::{Env, mem};

fn watcher_config() -> WatcherConfig {
    WatcherConfig {
        start: StartFrom::Head,
        max_range: 3,
        max_rewind: 16,
        poll_interval: Some(Duration::from_millis(20)),
        ..WatcherConfig::default()
    }
}

/// Polls until caught up; returns what was handed over.
async fn drain(w: &mut ChainWatcher<MemStore>) -> Vec<WatchItem> {
    let (tx, mut rx) = mpsc::channel(1024);
    for _ in 0..200 {
        let r = w.poll_once(&tx).await.unwrap();
        if r.caught_up {
            break;
        }
    }
    drop(tx);
    let mut out = Vec::new();
    while let Some(i) = rx.recv().await {
        out.push(i);
    }
    out
}

fn channel_events(items: &[WatchItem]) -> Vec<&WatchEvent> {
    items
        .iter()
        .filter_map(|i| match i {
            WatchItem::Channel(e) => Some(e),
            WatchItem::Settled(_) => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_follows_events_resumes_from_its_cursor_and_survives_a_reorg() {
    let env = Env::start().await;
    let provider = env.chain.provider().clone();
    let reader = env.reader().await;
    let store = mem();
    let p0 = Role::Payer(0);
    let a = env.channel(p0, 1);
    let id = env.domain.channel_id(&a);
    let receiver = env.addr(Role::Receiver);
    let relayer = Relayer::new(reader.clone(), mem(), env.tx_key(Role::Relayer));
    let payer = PayerClient::new(reader.clone(), env.tx_key(p0));

    let mut w = ChainWatcher::new(reader.clone(), store.clone(), watcher_config());
    assert!(drain(&mut w).await.is_empty());
    let start = w.cursor().await.unwrap().unwrap();

    // deposit, claim, withdraw request; a few empty blocks so ranges are split
    relayer
        .deposit(&a, 1_000_000, env.deposit_data(p0, &a, 1_000_000, 1).await)
        .await
        .unwrap();
    provider.anvil_mine(Some(4), None).await.unwrap();
    let (rows, sig) = env.claim_rows(&[(p0, a, 725)]);
    relayer.claim_with_signature(rows, sig).await.unwrap();
    payer.initiate_withdraw(&a, 1_000).await.unwrap();

    let items = drain(&mut w).await;
    let evs = channel_events(&items);
    let kinds: Vec<_> = evs.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::ChannelCreated,
            EventKind::Deposited,
            EventKind::Claimed,
            EventKind::WithdrawInitiated
        ]
    );
    assert!(evs.iter().all(|e| e.channel_id == id && e.block > start.0));
    assert!(
        evs.windows(2)
            .all(|p| (p[0].block, p[0].log_index) < (p[1].block, p[1].log_index))
    );
    let last = evs[3].state;
    assert_eq!((last.balance, last.total_claimed), (1_000_000, 725));
    assert!(last.withdraw_requested_at > 0);
    let cursor = w.cursor().await.unwrap().unwrap();
    assert_eq!(cursor.0, provider.get_block_number().await.unwrap());

    // Restart: a new watcher on the same store resumes after the cursor (nothing again) and
    // then sees only what is new; run it as a task this time.
    drop(w);
    relayer.settle(receiver, env.token).await.unwrap();
    let (rows, sig) = env.claim_rows(&[(p0, a, 800)]);
    relayer.claim_with_signature(rows, sig).await.unwrap();
    let w2 = ChainWatcher::new(reader.clone(), store.clone(), watcher_config());
    let (tx, mut rx) = mpsc::channel(16);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(w2.run(tx, async {
        let _ = stopped.await;
    }));
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let item = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        seen.push(item);
    }
    match &seen[0] {
        WatchItem::Settled(s) => {
            assert_eq!((s.receiver, s.token, s.amount), (receiver, env.token, 725));
            assert_eq!(s.total_claimed, 800, "totals read after the range");
        }
        other => panic!("expected Settled, got {other:?}"),
    }
    match &seen[1] {
        WatchItem::Channel(e) => {
            assert_eq!((e.kind, e.state.total_claimed), (EventKind::Claimed, 800))
        }
        other => panic!("{other:?}"),
    }
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert!(
        rx.try_recv().is_err(),
        "nothing else (no replay of old events)"
    );

    // A reorg drops a claim the watcher has already reported.
    let mut w = ChainWatcher::new(reader.clone(), store.clone(), watcher_config());
    assert!(drain(&mut w).await.is_empty());
    let (rows, sig) = env.claim_rows(&[(p0, a, 900)]);
    relayer.claim_with_signature(rows, sig).await.unwrap();
    let items = drain(&mut w).await;
    let evs = channel_events(&items);
    assert_eq!(evs.len(), 1);
    assert_eq!(
        (evs[0].kind, evs[0].state.total_claimed),
        (EventKind::Claimed, 900)
    );
    let claimed_in = evs[0].block;
    provider
        .anvil_reorg(ReorgOptions {
            depth: 1,
            tx_block_pairs: vec![],
        })
        .await
        .unwrap();
    let onchain = reader.channel_state(id).await.unwrap().total_claimed;
    let items = drain(&mut w).await;
    let evs = channel_events(&items);
    let reorged: Vec<_> = evs
        .iter()
        .filter(|e| e.kind == EventKind::Reorged)
        .collect();
    assert_eq!(reorged.len(), 1, "{items:?}");
    assert_eq!(reorged[0].channel_id, id);
    assert!(reorged[0].block < claimed_in);
    assert_eq!(reorged[0].state.total_claimed, onchain);
    assert_eq!(onchain, 800, "the claim to 900 is gone");
    let (block, hash) = w.cursor().await.unwrap().unwrap();
    assert_eq!(Some(hash), reader.block_hash(block).await.unwrap());
}
