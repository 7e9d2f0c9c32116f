//! `WatchEvents` delivers every event of a run (charges, claims, the settle, a refund) in
//! sequence order without gaps, and a client that disconnects resumes with `after_sequence`
//! exactly where it left off.

use futures_util::StreamExt;
use paychan_control::{
    ControlConfig,
    proto::{ChannelEvent, channel_event::Kind},
};
use tonic::Streaming;

use crate::support::*;

/// The next `n` events of `s` (fails on an error, the end, or after `PATIENCE`).
async fn take(s: &mut Streaming<ChannelEvent>, n: usize) -> Vec<ChannelEvent> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let e = tokio::time::timeout(PATIENCE, s.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events arrived: {out:?}", out.len()))
            .expect("the stream ended")
            .expect("the stream failed");
        out.push(e);
    }
    out
}

/// What an event says, in a form a test can compare: (channel, kind, main amount).
fn gist(e: &ChannelEvent) -> (String, &'static str, String) {
    let (kind, amount) = match e.kind.as_ref().expect("every event has a kind") {
        Kind::Charged(c) => ("charged", format!("{}/{}", c.amount, c.charged)),
        Kind::Claimed(c) => ("claimed", c.claimed.clone()),
        Kind::Settled(s) => ("settled", s.amount.clone()),
        Kind::Refunded(r) => ("refunded", r.amount.clone()),
        Kind::Deposited(d) => ("deposited", d.balance.clone()),
        Kind::ClaimNeeded(c) => ("claim_needed", c.unclaimed.clone()),
        Kind::WithdrawalStarted(w) => ("withdrawal_started", w.balance.clone()),
        Kind::WithdrawalFinalized(w) => ("withdrawal_finalized", w.balance.clone()),
        Kind::Reorged(r) => ("reorged", r.balance.clone()),
        Kind::EventsLost(l) => ("events_lost", l.count.to_string()),
    };
    (e.channel_id.clone(), kind, amount)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_a_run_arrives_in_order_and_a_reconnect_resumes() {
    let env = Env::start().await;
    // Both channels are known to the store before serving starts (their first payment), so
    // every chain event of theirs after that is reported.
    let mut a = env.open_channel(41, 30_000).await;
    env.pay(&mut a, 1_000).await;
    let mut b = env.open_channel(42, 30_000).await;
    env.pay(&mut b, 250).await;
    let served = env
        .serve(Some(env.settler()), ControlConfig::default())
        .await;
    let stream_id = served.plane.stream_id().to_owned();
    let mut c = served.client().await;
    let mut first = c.watch(Some(0), &stream_id).await.unwrap();

    // charges
    env.pay(&mut a, 700).await;
    env.pay(&mut b, 300).await;
    env.pay(&mut a, 1_000).await;
    let mut seen = take(&mut first, 3).await;
    // claim both, one transaction: one `claimed` each
    let report = c.claim(&[]).await.unwrap();
    assert!(report.clean, "{report:?}");
    seen.extend(take(&mut first, 2).await);
    // the client goes away here; the run goes on
    drop(first);
    let report = c.settle().await.unwrap();
    assert_eq!(report.settles.len(), 1, "{report:?}");
    let refund = c.refund(a.id()).await.unwrap();
    assert_eq!(refund.refunded, (30_000 - 2_700).to_string());
    env.pay(&mut b, 100).await;

    // resume after the last event seen
    let last = seen.last().unwrap().sequence;
    let mut resumed = c.watch(Some(last), &stream_id).await.unwrap();
    let rest = take(&mut resumed, 3).await;

    let all: Vec<ChannelEvent> = seen.iter().chain(&rest).cloned().collect();
    let seqs: Vec<u64> = all.iter().map(|e| e.sequence).collect();
    assert_eq!(
        seqs,
        (1..=8).collect::<Vec<u64>>(),
        "gaps or disorder: {all:?}"
    );
    assert!(
        all.iter()
            .all(|e| e.stream_id == stream_id && e.recorded_at_ms > 0)
    );
    let (ah, bh) = (a.hex(), b.hex());
    let gists: Vec<_> = all.iter().map(gist).collect();
    assert_eq!(
        gists[..3],
        [
            (ah.clone(), "charged", "700/1700".to_owned()),
            (bh.clone(), "charged", "300/550".to_owned()),
            (ah.clone(), "charged", "1000/2700".to_owned()),
        ]
    );
    // the two claims of one transaction, in the order of its logs
    let mut claims = gists[3..5].to_vec();
    claims.sort();
    let mut want = vec![
        (ah.clone(), "claimed", "2700".to_owned()),
        (bh.clone(), "claimed", "550".to_owned()),
    ];
    want.sort();
    assert_eq!(claims, want);
    assert_eq!(gists[5], (String::new(), "settled", "3250".to_owned()));
    assert_eq!(gists[6], (ah.clone(), "refunded", "27300".to_owned()));
    assert_eq!(gists[7], (bh.clone(), "charged", "100/650".to_owned()));
    match all[5].kind.as_ref().unwrap() {
        Kind::Settled(s) => {
            assert_eq!(s.receiver, format!("{:#x}", env.receiver()));
            assert_eq!(
                (s.total_claimed.as_str(), s.total_settled.as_str()),
                ("3250", "3250")
            );
            assert!(
                s.tx_hash.starts_with("0x") && s.tx_hash.len() == 66,
                "{s:?}"
            );
        }
        k => panic!("not a settle: {k:?}"),
    }

    // a replay from the start is the same run, event for event
    let mut replay = c.watch(Some(0), &stream_id).await.unwrap();
    assert_eq!(take(&mut replay, 8).await, all);
    // a watcher of one channel sees its events and the settle, numbered as everyone's
    let mut only_b = c
        .raw()
        .watch_events(paychan_control::proto::WatchEventsRequest {
            after_sequence: Some(0),
            stream_id: stream_id.clone(),
            channel_ids: vec![bh.to_uppercase().replacen("0X", "0x", 1)],
        })
        .await
        .unwrap()
        .into_inner();
    let bs: Vec<u64> = take(&mut only_b, 4)
        .await
        .iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(bs.len(), 4);
    let want_b: Vec<u64> = all
        .iter()
        .filter(|e| e.channel_id == bh || e.channel_id.is_empty())
        .map(|e| e.sequence)
        .collect();
    assert_eq!(bs, want_b);

    // the next event reaches a resumed stream too, then shutdown ends it with UNAVAILABLE
    env.pay(&mut b, 50).await;
    let next = take(&mut resumed, 1).await;
    assert_eq!(next[0].sequence, 9);
    let stats = c.stats().await.unwrap();
    assert_eq!(stats.last_sequence, 9);
    served.stop().await;
    let end = tokio::time::timeout(PATIENCE, resumed.next())
        .await
        .expect("the stream ends at shutdown");
    match end {
        Some(Err(s)) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
        None => {}
        Some(Ok(e)) => panic!("an event after shutdown: {e:?}"),
    }
}
