//! Getting money back: the cooperative refund and the timed withdrawal.

use paychan_client::{ChannelStatus, Error};
use paychan_core::sig::LocalSigner;
use paychan_devchain::Role;

use crate::{
    flow::sum,
    support::{PayerOpts, Server, chat, funded, pay, payer},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooperative_refund_returns_exactly_balance_minus_charged() {
    let server = Server::start().await;
    let key = funded(&server, 30, 100_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let p = payer(&server, &key, dir.path(), PayerOpts::default()).await;
    let mut receipts = Vec::new();
    for n in 0..30 {
        receipts.push(pay(&p, chat(&server.chat_url(), n)).await);
    }
    let charged = sum(&receipts);
    let before = server.tokens(key.address()).await;
    let channels = p.channels();
    assert_eq!(channels.len(), 1);
    let c = &channels[0];
    let onchain = server.chain.onchain_state(c.channel_id).await.unwrap();
    assert_eq!((c.balance, c.charged), (onchain.balance, charged));

    let refunds = p.refund_server(&server.base).await.unwrap();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].refunded, c.balance - charged);
    assert_eq!(refunds[0].charged, charged);
    assert_eq!(
        server.tokens(key.address()).await - before,
        c.balance - charged
    );
    // The receiver's charges were claimed first; what is left in the channel is exactly them.
    let after = server.chain.onchain_state(c.channel_id).await.unwrap();
    assert_eq!((after.balance, after.total_claimed), (charged, charged));
    assert_eq!(p.channels()[0].balance, charged);

    // Nothing left to refund; the channel still pays (with a new deposit).
    assert!(matches!(
        p.refund(c.channel_id).await,
        Err(Error::Refused { .. })
    ));
    let r = pay(&p, chat(&server.chat_url(), 99)).await;
    assert_eq!(r.channel_id, c.channel_id);
    assert!(r.deposited.is_some());
    assert_eq!(server.charged_total().await, charged + r.charged);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_withdrawal_returns_the_unclaimed_balance_and_closes_the_channel() {
    let server = Server::start().await;
    // A dev account: it holds ETH for the withdrawal's gas.
    let key = LocalSigner::from_bytes(&server.chain.account(Role::Payer(2)).key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = payer(&server, &key, dir.path(), PayerOpts::default()).await;
    let mut receipts = Vec::new();
    for n in 0..5 {
        receipts.push(pay(&p, chat(&server.chat_url(), n)).await);
    }
    let id = receipts[0].channel_id;
    let balance = server.chain.onchain_state(id).await.unwrap().balance;
    let before = server.tokens(key.address()).await;

    // Nothing was claimed: the whole balance is withdrawable, and no voucher is signed on the
    // channel from now on.
    assert_eq!(p.initiate_withdraw(id).await.unwrap(), balance);
    assert_eq!(p.channels()[0].status, ChannelStatus::Withdrawing);
    assert!(
        p.finalize_withdraw(id).await.is_err(),
        "the delay has not passed"
    );
    server.chain.increase_time(901).await.unwrap();
    assert_eq!(p.finalize_withdraw(id).await.unwrap(), balance);
    assert_eq!(server.tokens(key.address()).await - before, balance);
    assert_eq!(server.chain.onchain_state(id).await.unwrap().balance, 0);

    // Paying goes on through a new channel.
    let r = pay(&p, chat(&server.chat_url(), 9)).await;
    assert_ne!(r.channel_id, id);
    assert!(r.deposited.is_some());
    let statuses: Vec<_> = p
        .channels()
        .into_iter()
        .map(|c| (c.channel_id, c.status))
        .collect();
    assert!(statuses.contains(&(id, ChannelStatus::Closed)));
    server.stop().await;
}
