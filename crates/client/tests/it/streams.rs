//! Paid streams through the payer: a per-token stream charged by its `PAYMENT-RESPONSE`
//! trailer, and a long stream paid chunk by chunk with vouchers the payer posts mid-stream.

use paychan_client::{Error, PolicyError};

use crate::support::*;

fn stream(url: &str, n: u64) -> reqwest::Request {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&serde_json::json!({"messages": [{"role": "user", "content": "x"}], "stream": true, "n": n})).unwrap())
        .build()
        .unwrap()
}

/// Reads a paid stream to its end: the content chunks, and whether it ended in an error.
async fn read(
    p: &paychan_client::Payer<paychan_store::SledStore>,
    req: reqwest::Request,
) -> (u64, bool) {
    let paid = p.execute(req).await.unwrap();
    assert!(paid.response.status().is_success());
    assert!(paid.receipt.is_none(), "a stream's charge comes at its end");
    let mut resp = paid.response;
    let mut text = String::new();
    let mut failed = false;
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => text.push_str(std::str::from_utf8(&c).unwrap()),
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    (text.matches("chat.completion.chunk").count() as u64, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_paid_by_their_trailer_or_chunk_by_chunk_in_one_request_each() {
    let server = Server::start().await;
    let key = funded(&server, 41, 100_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let p = payer(
        &server,
        &key,
        dir.path(),
        PayerOpts {
            max_channels: 1,
            ..PayerOpts::default()
        },
    )
    .await;
    let per_token = format!("{}/stream/chat", server.base);
    let long = format!("{}/long/stream", server.base);
    let price =
        |n: u64| USAGE_PRICES.fixed + USAGE_PRICES.input + USAGE_PRICES.output * u128::from(n);

    // per-token streams: the trailer is adopted, so the next call needs no correction
    let mut want = 0;
    for n in [3, 8, 0, 13] {
        let before = server.front.requests();
        let (chunks, failed) = read(&p, stream(&per_token, n)).await;
        // the usage chunk counts too
        assert_eq!((chunks, failed), (n + 1, false));
        want += price(n);
        assert_eq!(p.total_charged(), want);
        assert_eq!(server.charged_total().await, want);
        // one request (two for the first: the unpaid probe)
        assert!(server.front.requests() - before <= 2);
    }

    // chunked streams: 35 chunks = 3 renewals posted, 3.5 chunks charged; then 12 = 1.2
    for (n, renewals, cost) in [(35, 3, 3 * PRICE + PRICE / 2), (12, 1, PRICE + PRICE / 5)] {
        let before = (server.front.requests(), server.front.paid());
        let (chunks, failed) = read(&p, stream(&long, n)).await;
        assert_eq!((chunks, failed), (n, false));
        want += cost;
        assert_eq!(p.total_charged(), want);
        assert_eq!(server.charged_total().await, want);
        let (requests, paid) = (
            server.front.requests() - before.0,
            server.front.paid() - before.1,
        );
        assert!(requests <= 2 + renewals, "{requests} requests");
        assert_eq!(paid, 1 + renewals, "the request and one post a renewal");
    }

    // a per-token call after all that still needs no correction
    let before = server.front.requests();
    read(&p, stream(&per_token, 2)).await;
    want += price(2);
    assert_eq!(server.front.requests() - before, 1);
    assert_eq!(
        (p.total_charged(), server.charged_total().await),
        (want, want)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_cut_when_the_next_chunk_is_outside_the_budget() {
    let server = Server::start().await;
    let key = funded(&server, 42, 100_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    // room for two chunks this period, not three
    let opts = PayerOpts {
        max_channels: 1,
        per_server_budget: Some(2 * PRICE + PRICE / 2),
        ..PayerOpts::default()
    };
    let p = payer(&server, &key, dir.path(), opts).await;
    let (chunks, failed) = read(&p, stream(&format!("{}/long/stream", server.base), 50)).await;
    assert!(failed, "the caller sees the cut");
    assert_eq!(chunks, 2 * CHUNK_TOKENS);
    assert_eq!(p.total_charged(), 2 * PRICE);
    // the server charged the two chunks it was paid for, nothing of the third
    let mut charged = 0;
    for _ in 0..100 {
        charged = server.charged_total().await;
        if charged >= 2 * PRICE {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(charged, 2 * PRICE);
    // and the budget still says no to a third chunk's worth
    let e = p
        .execute(stream(&format!("{}/long/stream", server.base), 5))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Policy(PolicyError::PeriodBudgetExhausted { .. })),
        "{e:?}"
    );
    server.stop().await;
}
