//! Paying many requests: totals to the unit, one round trip in steady state, top-ups, restarts,
//! the middleware, a changed offer.

use std::collections::HashSet;

use paychan_client::{PayerMiddleware, Receipt};
use paychan_store::{SledStore, Store};

use crate::support::{
    FIXED, PER_TOKEN, PRICE, PRICEY, PayerOpts, Server, chat, fixed, funded, pay, payer,
};

/// Runs `tasks` concurrent loops of `per_task` requests made by `make(n)`.
pub async fn concurrent(
    p: &paychan_client::Payer<SledStore>,
    tasks: usize,
    per_task: usize,
    make: impl Fn(usize) -> reqwest::Request + Clone + Send + 'static,
) -> Vec<Receipt> {
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let (p, make) = (p.clone(), make.clone());
        set.spawn(async move {
            let mut out = Vec::with_capacity(per_task);
            for i in 0..per_task {
                out.push(pay(&p, make(t * per_task + i)).await);
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.unwrap());
    }
    all
}

pub fn sum(receipts: &[Receipt]) -> u128 {
    receipts.iter().map(|r| r.charged).sum()
}

/// Every acknowledged charge is a link of one chain per channel: sorted by the cumulative
/// charge they report, each receipt's cumulative is the one before plus its own charge (no
/// charge acknowledged twice, none missing between two), and its voucher's ceiling covers it.
/// (Ceilings alone may repeat: a voucher for a cheaper route can reach the same cumulative
/// ceiling as an earlier one for a dearer route.)
pub fn assert_charges_chain(receipts: &[Receipt]) {
    let mut by_channel: std::collections::HashMap<_, Vec<&Receipt>> = Default::default();
    for r in receipts {
        assert!(r.ceiling >= r.channel_charged, "{r:?}");
        by_channel.entry(r.channel_id).or_default().push(r);
    }
    for (id, mut rs) in by_channel {
        rs.sort_by_key(|r| r.channel_charged);
        for w in rs.windows(2) {
            assert_eq!(
                w[1].channel_charged - w[1].charged,
                w[0].channel_charged,
                "channel {id}: {:#?}",
                w
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_over_a_pool_match_the_servers_totals_to_the_unit() {
    let server = Server::start().await;
    let key = funded(&server, 1, 100_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let p = payer(&server, &key, dir.path(), PayerOpts::default()).await;
    let before = server.tokens(key.address()).await;

    let (chat_url, fixed_url) = (server.chat_url(), server.fixed_url());
    let (chats, fixeds) = tokio::join!(
        concurrent(&p, 8, 100, move |n| chat(&chat_url, n)),
        concurrent(&p, 4, 50, move |_| fixed(&fixed_url)),
    );
    assert_eq!((chats.len(), fixeds.len()), (800, 200));
    // Per-token prices: below the maximum and varying; fixed prices: the maximum.
    assert!(
        chats
            .iter()
            .all(|r| r.charged > 0 && r.charged < PRICE && r.max_amount == PRICE)
    );
    assert!(chats.iter().all(|r| r.charged % PER_TOKEN == 0));
    assert!(
        chats
            .iter()
            .map(|r| r.charged)
            .collect::<HashSet<_>>()
            .len()
            > 10
    );
    assert!(fixeds.iter().all(|r| r.charged == FIXED));

    let all: Vec<Receipt> = chats.into_iter().chain(fixeds).collect();
    assert_charges_chain(&all);
    let total = sum(&all);
    assert_eq!(server.charged_total().await, total);
    assert_eq!(p.total_charged(), total);

    // The pool stayed within its limit, and each channel agrees with the server's record.
    let channels = p.channels();
    assert!(!channels.is_empty() && channels.len() <= 4, "{channels:?}");
    for c in &channels {
        assert_eq!(server.charged_on(c.channel_id).await, c.charged);
        let on_chain = server.chain.onchain_state(c.channel_id).await.unwrap();
        assert_eq!(on_chain.balance, c.balance);
        assert!(c.max_ceiling <= c.balance);
    }
    // Every deposit the receipts report is on chain, and no other.
    let deposited: u128 = all.iter().filter_map(|r| r.deposited).sum();
    assert_eq!(
        deposited,
        channels.iter().map(|c| c.deposited).sum::<u128>()
    );
    assert_eq!(before - server.tokens(key.address()).await, deposited);
    // The client's store holds what it acknowledged.
    let stored: u128 = p
        .store()
        .payer_channels()
        .await
        .unwrap()
        .iter()
        .map(|r| r.charged)
        .sum();
    assert_eq!(stored, total);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_calls_make_exactly_one_http_request_each() {
    let server = Server::start().await;
    let key = funded(&server, 2, 100_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let p = payer(&server, &key, dir.path(), PayerOpts::default()).await;

    // The first call learns the terms (unpaid probe, then the paid request with the deposit).
    let first = pay(&p, chat(&server.chat_url(), 0)).await;
    assert!(first.deposited.is_some());
    assert_eq!((server.front.requests(), server.front.paid()), (2, 1));

    // From then on: one request per call, the voucher travels with it.
    let mut receipts = vec![first];
    for n in 1..=50 {
        receipts.push(pay(&p, chat(&server.chat_url(), n)).await);
    }
    assert_eq!((server.front.requests(), server.front.paid()), (52, 51));

    // Concurrent calls too, even those that open new channels (their deposit rides along).
    let url = server.chat_url();
    receipts.extend(concurrent(&p, 4, 10, move |n| chat(&url, n)).await);
    assert_eq!((server.front.requests(), server.front.paid()), (92, 91));
    assert_eq!(server.charged_total().await, sum(&receipts));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_ups_come_with_a_request_before_the_balance_runs_out() {
    let server = Server::start().await;
    let key = funded(&server, 3, 10_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let opts = PayerOpts {
        max_channels: 1,
        deposit: paychan_client::DepositPolicy::new(100_000, 60_000),
        ..PayerOpts::default()
    };
    let p = payer(&server, &key, dir.path(), opts).await;
    let mut receipts = Vec::new();
    for _ in 0..20 {
        receipts.push(pay(&p, fixed(&server.fixed_url())).await);
    }
    // Request 1 opens the channel; request 14 would leave 58,000 < 60,000: it tops up.
    let deposits: Vec<(usize, u128)> = receipts
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.deposited.map(|d| (i + 1, d)))
        .collect();
    assert_eq!(deposits, vec![(1, 100_000), (14, 100_000)]);
    assert!(receipts[13].transaction.is_some());
    let id = receipts[0].channel_id;
    assert!(receipts.iter().all(|r| r.channel_id == id));
    assert_eq!(
        server.chain.onchain_state(id).await.unwrap().balance,
        200_000
    );
    assert_eq!(server.charged_total().await, 20 * FIXED);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_client_reuses_its_channels_with_no_new_deposit() {
    let server = Server::start().await;
    let key = funded(&server, 4, 100_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let mut receipts = Vec::new();
    let first_run = {
        let p = payer(&server, &key, dir.path(), PayerOpts::default()).await;
        for n in 0..20 {
            receipts.push(pay(&p, chat(&server.chat_url(), n)).await);
        }
        p.channels()
        // the payer and its sled store are dropped here: the process "exits"
    };
    let tokens = server.tokens(key.address()).await;
    let requests = server.front.requests();

    let p = payer(&server, &key, dir.path(), PayerOpts::default()).await;
    assert_eq!(p.channels(), first_run);
    let mut second = Vec::new();
    for n in 20..40 {
        second.push(pay(&p, chat(&server.chat_url(), n)).await);
    }
    assert!(second.iter().all(|r| r.deposited.is_none()));
    assert!(
        second
            .iter()
            .all(|r| r.channel_id == first_run[0].channel_id)
    );
    // Terms are learned again (one probe), then one request per call.
    assert_eq!(server.front.requests() - requests, 21);
    assert_eq!(server.tokens(key.address()).await, tokens);
    receipts.extend(second);
    assert_charges_chain(&receipts);
    assert_eq!(server.charged_total().await, sum(&receipts));
    assert_eq!(p.total_charged(), sum(&receipts));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_middleware_pays_transparently_and_follows_a_changed_offer() {
    let server = Server::start().await;
    let key = funded(&server, 5, 100_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let opts = PayerOpts {
        max_per_request: PRICEY,
        ..PayerOpts::default()
    };
    let p = payer(&server, &key, dir.path(), opts).await;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(PayerMiddleware::new(p.clone()))
        .build();
    let body = serde_json::json!({"messages": [{"role": "user", "content": "hello there"}]});
    let mut receipts = Vec::new();
    for _ in 0..10 {
        let resp = client
            .post(server.chat_url())
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        receipts.push(resp.extensions().get::<Receipt>().cloned().unwrap());
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "echo: hello there");
    }
    assert!(receipts.iter().all(|r| r.max_amount == PRICE));
    let requests = server.front.requests();

    // The server raises its price (within the policy): the stale voucher gets a 402 with the
    // new offer, which is checked and paid at once; the next call pays the new terms directly.
    server
        .front
        .pricey
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..2 {
        let resp = client
            .post(server.chat_url())
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        receipts.push(resp.extensions().get::<Receipt>().cloned().unwrap());
    }
    assert!(receipts[10..].iter().all(|r| r.max_amount == PRICEY));
    assert_eq!(server.front.requests() - requests, 3);

    // A free resource passes through without a receipt.
    let free = client
        .get(format!("{}/_paychan/health", server.base))
        .send()
        .await
        .unwrap();
    assert!(free.status().is_success() && free.extensions().get::<Receipt>().is_none());

    assert_charges_chain(&receipts);
    assert_eq!(server.charged_total().await, sum(&receipts));
    server.stop().await;
}
