//! Spend limits refuse before anything is signed; a dishonest server is caught and no longer
//! paid.

use std::sync::atomic::Ordering;

use paychan_client::{ChannelStatus, Error, PolicyError, Scope};
use paychan_store::Store;

use crate::support::{
    FIXED, PRICE, PRICEY, PayerOpts, Server, TestClock, chat, fixed, funded, pay, payer,
};

/// Nothing was signed: the payer's store holds no channel, and no paid request reached the
/// server.
async fn assert_nothing_signed(
    p: &paychan_client::Payer<paychan_store::SledStore>,
    server: &Server,
) {
    assert!(p.store().payer_channels().await.unwrap().is_empty());
    assert!(p.channels().is_empty());
    assert_eq!(server.front.paid(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_price_or_a_bigger_deposit_is_refused_before_anything_is_signed() {
    let server = Server::start().await;
    let key = funded(&server, 10, 100_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let opts = PayerOpts {
        max_per_deposit: 1_000_000,
        deposit: paychan_client::DepositPolicy::new(500_000, 0),
        ..PayerOpts::default()
    };
    let p = payer(&server, &key, dir.path(), opts).await;

    // The server now asks more per request than the policy's maximum.
    server.front.pricey.store(true, Ordering::SeqCst);
    let err = p.execute(chat(&server.chat_url(), 1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Policy(PolicyError::AmountAboveMax {
                amount: PRICEY,
                max: PRICE
            })
        ),
        "{err}"
    );
    assert_nothing_signed(&p, &server).await;
    server.front.pricey.store(false, Ordering::SeqCst);

    // The server asks for a deposit above the policy's maximum.
    *server.front.min_deposit.lock().unwrap() = Some(1_000_001);
    let err = p.execute(chat(&server.chat_url(), 1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Policy(PolicyError::DepositAboveMax {
                deposit: 1_000_001,
                max: 1_000_000
            })
        ),
        "{err}"
    );
    assert_nothing_signed(&p, &server).await;
    assert_eq!(server.engine.metrics().requests.load(Ordering::SeqCst), 0);
    *server.front.min_deposit.lock().unwrap() = None;

    // Within the limits, it pays.
    let r = pay(&p, chat(&server.chat_url(), 1)).await;
    assert_eq!(server.front.paid(), 1);

    // Terms known, then the price goes up past the limit: the voucher for the old terms is
    // refused by the server (nothing charged), and nothing is signed for the new terms.
    server.front.pricey.store(true, Ordering::SeqCst);
    let err = p.execute(chat(&server.chat_url(), 2)).await.unwrap_err();
    assert!(
        matches!(err, Error::Policy(PolicyError::AmountAboveMax { .. })),
        "{err}"
    );
    let stored = p.store().payer_channels().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].charged, r.charged);
    // The last voucher recorded is the one for the old terms; none for the raised price.
    assert_eq!(stored[0].last_ceiling, Some(r.charged + PRICE));
    assert_eq!(server.charged_total().await, r.charged);
    // Asked again, it probes (the refused terms were forgotten) and refuses again: no paid
    // request.
    let paid = server.front.paid();
    assert!(p.execute(chat(&server.chat_url(), 3)).await.is_err());
    assert_eq!(server.front.paid(), paid);

    // Back to the old price: paying resumes on the same channel.
    server.front.pricey.store(false, Ordering::SeqCst);
    let r2 = pay(&p, chat(&server.chat_url(), 4)).await;
    assert_eq!(r2.channel_id, r.channel_id);
    assert_eq!(server.charged_total().await, r.charged + r2.charged);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_period_budget_stops_payments_until_the_next_period() {
    let server = Server::start().await;
    let key = funded(&server, 11, 100_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::default();
    clock.0.store(10 * 3600, Ordering::SeqCst);
    let opts = PayerOpts {
        per_server_budget: Some(3 * FIXED),
        clock: Some(clock.clone()),
        ..PayerOpts::default()
    };
    let p = payer(&server, &key, dir.path(), opts).await;
    for _ in 0..3 {
        pay(&p, fixed(&server.fixed_url())).await;
    }
    let paid = server.front.paid();
    let err = p.execute(fixed(&server.fixed_url())).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Policy(PolicyError::PeriodBudgetExhausted { scope: Scope::Server(o), limit, spent, amount: FIXED })
                if *o == server.base && *limit == 3 * FIXED && *spent == 3 * FIXED
        ),
        "{err}"
    );
    assert_eq!(server.front.paid(), paid);
    assert_eq!(p.period_spent(Some(&server.base)), 3 * FIXED);

    // Restarting does not reset the period's spending.
    drop(p);
    let opts = PayerOpts {
        per_server_budget: Some(3 * FIXED),
        clock: Some(clock.clone()),
        ..PayerOpts::default()
    };
    let p = payer(&server, &key, dir.path(), opts.clone()).await;
    assert!(matches!(
        p.execute(fixed(&server.fixed_url())).await,
        Err(Error::Policy(PolicyError::PeriodBudgetExhausted { .. }))
    ));

    // The next hour has a fresh budget.
    clock.0.fetch_add(3600, Ordering::SeqCst);
    pay(&p, fixed(&server.fixed_url())).await;
    assert_eq!(server.charged_total().await, 4 * FIXED);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_over_reports_is_caught_and_no_longer_paid() {
    let server = Server::start().await;
    let key = funded(&server, 12, 100_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let p = payer(&server, &key, dir.path(), PayerOpts::default()).await;
    let r = pay(&p, chat(&server.chat_url(), 1)).await;

    // The server reports a charged total one unit above what it charged.
    server.front.overreport.store(true, Ordering::SeqCst);
    let err = p.execute(chat(&server.chat_url(), 2)).await.unwrap_err();
    let Error::ServerMisbehaved {
        origin, channel, ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(
        (origin.as_str(), *channel),
        (server.base.as_str(), r.channel_id)
    );
    assert!(matches!(
        p.channels()[0].status,
        ChannelStatus::Halted { .. }
    ));
    assert_eq!(p.untrusted_servers(), vec![server.base.clone()]);

    // Nothing more is signed for it, even once it behaves; also after a restart.
    server.front.overreport.store(false, Ordering::SeqCst);
    let paid = server.front.paid();
    assert!(matches!(
        p.execute(chat(&server.chat_url(), 3)).await,
        Err(Error::Untrusted { .. })
    ));
    drop(p);
    let p = payer(&server, &key, dir.path(), PayerOpts::default()).await;
    assert!(matches!(
        p.execute(chat(&server.chat_url(), 4)).await,
        Err(Error::Untrusted { .. })
    ));
    assert!(matches!(
        p.channels()[0].status,
        ChannelStatus::Halted { .. }
    ));
    assert_eq!(server.front.paid(), paid);

    // Trusted again by decision: a new channel is opened (the halted one stays halted).
    p.trust_again(&server.base).await.unwrap();
    let r2 = pay(&p, chat(&server.chat_url(), 5)).await;
    assert_ne!(r2.channel_id, r.channel_id);
    assert!(r2.deposited.is_some());
    server.stop().await;
}
