//! The client's state is lost: a new payer with an empty store and the same key finds its
//! channels again (derived salts, the chain, the server's corrective 402) and goes on; no money
//! is lost or paid twice.

use std::collections::HashSet;

use crate::{
    flow::{assert_charges_chain, sum},
    support::{PayerOpts, Server, chat, funded, pay, payer},
};

async fn run(
    p: &paychan_client::Payer<paychan_store::SledStore>,
    url: &str,
    tasks: usize,
    per_task: usize,
    from: usize,
) -> Vec<paychan_client::Receipt> {
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let (p, url) = (p.clone(), url.to_owned());
        set.spawn(async move {
            let mut out = Vec::new();
            for i in 0..per_task {
                out.push(pay(&p, chat(&url, from + t * per_task + i)).await);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_client_state_is_recovered_from_chain_and_the_servers_signed_state() {
    let server = Server::start().await;
    let key = funded(&server, 20, 100_000_000).await;
    let url = server.chat_url();
    let tokens_before = server.tokens(key.address()).await;
    let opts = PayerOpts {
        max_channels: 3,
        ..PayerOpts::default()
    };

    // Run A, then its data directory is deleted.
    let dir_a = tempfile::tempdir().unwrap();
    let a = payer(&server, &key, dir_a.path(), opts.clone()).await;
    let mut receipts = run(&a, &url, 3, 40, 0).await;
    let channels_a: HashSet<_> = a.channels().iter().map(|c| c.channel_id).collect();
    drop(a);
    drop(dir_a);
    assert_eq!(server.charged_total().await, sum(&receipts));

    // Run B: an empty store, the same key, a chain reader.
    let dir_b = tempfile::tempdir().unwrap();
    let b = payer(&server, &key, dir_b.path(), opts.clone()).await;
    assert!(b.channels().is_empty());
    let corrective = server
        .engine
        .metrics()
        .corrective
        .load(std::sync::atomic::Ordering::SeqCst);
    let after_b = run(&b, &url, 3, 40, 1000).await;
    // It paid on A's channels (found on chain), with no new deposit.
    assert!(after_b.iter().all(|r| channels_a.contains(&r.channel_id)));
    assert!(after_b.iter().all(|r| r.deposited.is_none()));
    // Each channel it used was corrected once by the server's signed state, then in step.
    let used: HashSet<_> = after_b.iter().map(|r| r.channel_id).collect();
    let corrections = server
        .engine
        .metrics()
        .corrective
        .load(std::sync::atomic::Ordering::SeqCst)
        - corrective;
    assert_eq!(corrections, used.len() as u64);
    receipts.extend(after_b);
    for c in b.channels() {
        assert_eq!(server.charged_on(c.channel_id).await, c.charged);
    }
    drop(b);
    drop(dir_b);

    // Run C: an empty store and no chain reader either. Its first payment on channel 0 is a
    // deposit (it thinks the channel new); the server corrects it before moving any money, and
    // the client goes on from the server's proven state.
    let dir_c = tempfile::tempdir().unwrap();
    let c = payer(
        &server,
        &key,
        dir_c.path(),
        PayerOpts {
            chain: false,
            ..opts
        },
    )
    .await;
    let mut after_c = Vec::new();
    for n in 0..20 {
        after_c.push(pay(&c, chat(&url, 2000 + n)).await);
    }
    assert!(after_c.iter().all(|r| channels_a.contains(&r.channel_id)));
    assert!(after_c.iter().all(|r| r.deposited.is_none()));
    receipts.extend(after_c);

    // No money lost or paid twice: the server's total is the sum of acknowledged receipts,
    // no ceiling backs two charges, and only A's deposits moved tokens.
    assert_charges_chain(&receipts);
    assert_eq!(server.charged_total().await, sum(&receipts));
    let deposited: u128 = receipts.iter().filter_map(|r| r.deposited).sum();
    assert_eq!(
        tokens_before - server.tokens(key.address()).await,
        deposited
    );
    server.stop().await;
}
