//! Our client against our server, 3,400 calls over a pool of channels (2,000 of them priced per
//! token from the answer's `usage`), through a server restart (engine and sled store closed and
//! reopened), then the money on chain: the settler claims and settles, the client refunds, and
//! every token is where the acknowledged charges say, to the unit.

use std::sync::atomic::Ordering;

use paychan_chain::{Relayer, TxKey};
use paychan_core::sig::LocalSigner;
use paychan_devchain::Role;
use paychan_settle::{SettlePolicy, Settler, SettlerConfig};

use crate::{
    flow::{assert_charges_chain, concurrent, sum},
    support::{FIXED, PRICE, PayerOpts, Server, chat, fixed, funded, payer, usage},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_run_then_claim_settle_and_refund_move_exactly_the_acknowledged_charges()
 {
    let server = Server::start().await;
    let key = funded(&server, 40, 100_000_000).await;
    let receiver = server.offer.pay_to;
    let dir = tempfile::tempdir().unwrap();
    let p = payer(&server, &key, dir.path(), PayerOpts::default()).await;
    let payer_before = server.tokens(key.address()).await;
    let receiver_before = server.tokens(receiver).await;

    // Before the restart: charges set per call by the upstream (`x-paychan-charge`, per token),
    // fixed ones (the route's maximum), and per-token ones the gateway computes from the
    // answer's `usage`, concurrently over a pool of channels.
    let (chat_url, fixed_url, usage_url) =
        (server.chat_url(), server.fixed_url(), server.usage_url());
    let (u1, u2, u3) = (chat_url.clone(), fixed_url.clone(), usage_url.clone());
    let (chats, fixeds, usages) = tokio::join!(
        concurrent(&p, 6, 100, move |n| chat(&u1, n)),
        concurrent(&p, 2, 50, move |_| fixed(&u2)),
        // thousands of per-token calls: the gateway's price of each, then the chain's sum
        concurrent(&p, 4, 500, move |n| usage(&u3, n).0),
    );
    assert!(chats.iter().all(|r| r.charged > 0 && r.charged < PRICE));
    assert!(fixeds.iter().all(|r| r.charged == FIXED));
    // each per-token receipt is the gateway's price for its usage, to the unit
    let mut wanted: Vec<u128> = (0..2000).map(|n| usage(&usage_url, n).1).collect();
    let mut got: Vec<u128> = usages.iter().map(|r| r.charged).collect();
    wanted.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, wanted);
    assert!(wanted.contains(&PRICE) && wanted.iter().any(|&w| w < PRICE));
    let mut receipts: Vec<_> = chats.into_iter().chain(fixeds).chain(usages).collect();
    assert_eq!(server.charged_total().await, sum(&receipts));

    // The server goes down and comes back from its store.
    let server = server.restart().await;
    assert_eq!(server.charged_total().await, sum(&receipts));
    let requests = server.front.requests();

    // After it the same channels go on where they were: one request per call (the terms are
    // known), no correction, every charge acknowledged once.
    let (u1, u2) = (chat_url.clone(), fixed_url.clone());
    let (chats, fixeds) = tokio::join!(
        concurrent(&p, 6, 100, move |n| chat(&u1, 1000 + n)),
        concurrent(&p, 2, 50, move |_| fixed(&u2)),
    );
    let after: Vec<_> = chats.into_iter().chain(fixeds).collect();
    assert_eq!(server.front.requests() - requests, after.len() as u64);
    assert_eq!(server.engine.metrics().corrective.load(Ordering::SeqCst), 0);
    receipts.extend(after);
    assert_charges_chain(&receipts);
    let total = sum(&receipts);
    assert_eq!(server.charged_total().await, total);
    assert_eq!(p.total_charged(), total);
    let channels = p.channels();
    assert!(channels.len() > 1, "{channels:?}");
    for c in &channels {
        assert_eq!(server.charged_on(c.channel_id).await, c.charged);
    }

    // Claim and settle, by the settler over the restarted engine.
    let settler = Settler::new(
        server.engine.clone(),
        Relayer::new(
            server.reader().await,
            server.store.clone(),
            TxKey::from_secret(&server.chain.account(Role::Payer(4)).key).unwrap(),
        ),
        SettlerConfig::new(
            SettlePolicy::manual(),
            LocalSigner::from_bytes(&server.chain.account(Role::ReceiverAuthorizer).key).unwrap(),
        ),
    )
    .unwrap();
    let round = settler.claim_now().await.unwrap();
    assert!(round.is_clean(), "{round:?}");
    assert_eq!(round.channels_claimed(), channels.len(), "{round:?}");
    let round = settler.settle_now().await.unwrap();
    assert!(round.is_clean() && round.settles.len() == 1, "{round:?}");
    assert_eq!(server.tokens(receiver).await - receiver_before, total);
    for c in &channels {
        let st = server.chain.onchain_state(c.channel_id).await.unwrap();
        assert_eq!(st.total_claimed, c.charged);
    }

    // The client takes back the rest of every channel.
    let refunds = p.refund_server(&server.base).await.unwrap();
    assert_eq!(refunds.len(), channels.len());
    for r in &refunds {
        let c = channels
            .iter()
            .find(|c| c.channel_id == r.channel_id)
            .unwrap();
        assert_eq!((r.refunded, r.charged), (c.balance - c.charged, c.charged));
        let st = server.chain.onchain_state(c.channel_id).await.unwrap();
        assert_eq!((st.balance, st.total_claimed), (c.charged, c.charged));
    }
    let deposited: u128 = receipts.iter().filter_map(|r| r.deposited).sum();
    let refunded: u128 = refunds.iter().map(|r| r.refunded).sum();
    assert_eq!(deposited - refunded, total);
    // The payer is out exactly the acknowledged charges; the receiver got exactly them.
    assert_eq!(payer_before - server.tokens(key.address()).await, total);
    assert_eq!(server.tokens(receiver).await - receiver_before, total);
    server.stop().await;
}
