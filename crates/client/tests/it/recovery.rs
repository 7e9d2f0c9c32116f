//! The client's state is lost: a new payer with an empty store and the same key finds its
//! channels again (derived salts, the chain, the server's corrective 402) and goes on; no money
//! is lost or paid twice.

use std::collections::HashSet;

use crate::{
    flow::{assert_charges_chain, sum},
    support::{PRICE, PayerOpts, Server, chat, funded, pay, payer},
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

/// A deposit's answer is lost on the way back after the server relayed it. The payer finds the
/// deposit on chain instead of signing a second one, and pays on by voucher. Later its wallet
/// runs dry: the deposit it then needs is refused with `insufficient_balance`, which is the
/// payer's own shortfall, not the server's fault, so the server stays trusted and, once the
/// wallet is refilled, is paid again on the same channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_deposit_answer_is_found_on_chain_and_an_empty_wallet_leaves_the_server_trusted() {
    use std::sync::atomic::Ordering;

    use paychan_client::{ChannelStatus, Error};
    use paychan_core::ErrorCode;

    use crate::support::{FIXED, fixed};

    // The fixed route's minimum deposit (ten of its price): ten calls a deposit.
    const DEPOSIT: u128 = 10 * FIXED;
    let server = Server::start().await;
    // One and a half deposits.
    let key = funded(&server, 21, DEPOSIT + DEPOSIT / 2).await;
    let me = key.address();
    let dir = tempfile::tempdir().unwrap();
    let opts = PayerOpts {
        max_channels: 1,
        deposit: paychan_client::DepositPolicy::new(DEPOSIT, 0),
        ..PayerOpts::default()
    };
    let p = payer(&server, &key, dir.path(), opts).await;

    // The first call deposits; the server relays and charges it, and its answer is lost.
    server.front.lose_answers.store(1, Ordering::SeqCst);
    let lost = p.execute(fixed(&server.fixed_url())).await.unwrap();
    assert_eq!(lost.response.status(), http::StatusCode::BAD_GATEWAY);
    assert!(lost.receipt.is_none());
    assert_eq!(server.tokens(me).await, DEPOSIT / 2);
    let charged_lost = server.charged_total().await;
    assert_eq!(charged_lost, FIXED);

    // The next call pays from the deposit found on chain: no second deposit is signed.
    let r = pay(&p, fixed(&server.fixed_url())).await;
    assert_eq!(r.deposited, None, "a second deposit for one lost answer");
    assert_eq!(server.tokens(me).await, DEPOSIT / 2);
    assert_eq!(r.channel_balance, DEPOSIT);
    assert_eq!(r.channel_charged, charged_lost + r.charged);

    // Pay until the channel needs another deposit, which the wallet cannot cover.
    let mut n = 3;
    let err = loop {
        match p.execute(fixed(&server.fixed_url())).await {
            Ok(paid) => {
                assert!(paid.response.status().is_success());
                assert_eq!(paid.receipt.unwrap().deposited, None);
            }
            Err(e) => break e,
        }
        n += 1;
        assert!(n < 20, "the channel never needed a deposit");
    };
    assert!(
        matches!(
            &err,
            Error::Refused {
                code: ErrorCode::InsufficientBalance,
                ..
            }
        ),
        "{err}"
    );
    assert!(p.untrusted_servers().is_empty(), "{err}");
    assert!(
        p.channels()
            .iter()
            .all(|c| !matches!(c.status, ChannelStatus::Halted { .. }))
    );
    let charged_before = server.charged_total().await;

    // Refilled, the payer tops up the same channel and pays on.
    server.chain.mint(me, DEPOSIT).await.unwrap();
    let r = pay(&p, fixed(&server.fixed_url())).await;
    assert_eq!(r.deposited, Some(DEPOSIT));
    assert_eq!(r.channel_charged, charged_before + r.charged);
    assert_eq!(server.charged_total().await, charged_before + r.charged);
    server.stop().await;
}

/// A voucher's answer is lost after the server charged it (per-token, well under the request's
/// maximum). The next voucher's ceiling still covers both charges, so the server takes it and
/// reports a charged total that includes the lost one. That is the server being right, not
/// lying: the payer adopts the total (the difference is at most the lost request's maximum),
/// and pays on with the server still trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_voucher_answer_is_settled_by_the_next_charged_total() {
    use std::sync::atomic::Ordering;

    let server = Server::start().await;
    let key = funded(&server, 22, 100_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let opts = PayerOpts {
        max_channels: 1,
        ..PayerOpts::default()
    };
    let p = payer(&server, &key, dir.path(), opts).await;
    let first = pay(&p, chat(&server.chat_url(), 1)).await;

    server.front.lose_answers.store(1, Ordering::SeqCst);
    let lost = p.execute(chat(&server.chat_url(), 2)).await.unwrap();
    assert_eq!(lost.response.status(), http::StatusCode::BAD_GATEWAY);
    let after_lost = server.charged_on(first.channel_id).await;
    let lost_charge = after_lost - first.channel_charged;
    assert!(lost_charge > 0 && lost_charge < PRICE / 2, "{lost_charge}");

    for n in 3..8 {
        let r = pay(&p, chat(&server.chat_url(), n)).await;
        assert_eq!(r.channel_id, first.channel_id);
        assert_eq!(r.channel_charged, server.charged_on(r.channel_id).await);
    }
    assert!(p.untrusted_servers().is_empty());
    server.stop().await;
}
