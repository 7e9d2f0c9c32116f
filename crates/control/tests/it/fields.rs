//! Garbage in any field is refused with INVALID_ARGUMENT naming the field, an unknown channel
//! with NOT_FOUND, an action this server is not set up for with FAILED_PRECONDITION, a resume
//! point outside the ring with OUT_OF_RANGE; none of them reads the chain for a send or
//! changes anything.

use paychan_control::{ControlConfig, proto};
use paychan_devchain::Role;
use tonic::Code;

use crate::support::*;

fn junk_ids() -> Vec<String> {
    vec![
        String::new(),
        "0x12".into(),
        "ab".repeat(32),
        format!("0x{}", "zz".repeat(32)),
        format!("0x{}00", "ab".repeat(32)),
        "0x".into(),
        "\u{0}".repeat(66),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_fields_are_refused_naming_the_field_and_change_nothing() {
    let env = Env::start().await;
    let mut a = env.open_channel(31, 20_000).await;
    env.pay(&mut a, 900).await;
    let served = env
        .serve(Some(env.settler()), ControlConfig::default())
        .await;
    let relayer = env.chain.account(Role::Relayer).address;
    let snapshot = || async {
        (
            env.onchain(a.id()).await,
            env.balance(env.receiver()).await,
            env.balance(a.key.address()).await,
            env.nonce(relayer).await,
            env.engine.channel(a.id()).await.unwrap(),
        )
    };
    let before = snapshot().await;
    let mut c = served.client().await;
    let raw = c.raw();

    for bad in junk_ids() {
        let s = status(
            raw.get_channel(proto::GetChannelRequest {
                channel_id: bad.clone(),
            })
            .await,
        );
        invalid(&s, "channel_id");
        let s = status(
            raw.refund_channel(proto::RefundChannelRequest {
                channel_id: bad.clone(),
            })
            .await,
        );
        invalid(&s, "channel_id");
        let s = status(
            raw.claim_now(proto::ClaimNowRequest {
                channel_ids: vec![a.hex(), bad.clone()],
                all: false,
            })
            .await,
        );
        invalid(&s, "channel_ids[1]");
        let s = status(
            raw.watch_events(proto::WatchEventsRequest {
                channel_ids: vec![bad.clone()],
                ..Default::default()
            })
            .await,
        );
        invalid(&s, "channel_ids[0]");
    }

    // ListChannels: every filter and the paging fields
    let list = |f: fn(&mut proto::ListChannelsRequest)| {
        let mut r = list_all(0, String::new());
        f(&mut r);
        r
    };
    let cases: Vec<(&str, proto::ListChannelsRequest)> = vec![
        ("payer", list(|r| r.payer = "0x1234".into())),
        ("payer", list(|r| r.payer = "not an address".into())),
        ("state", list(|r| r.state = 99)),
        ("state", list(|r| r.state = -1)),
        ("unclaimed_above", list(|r| r.unclaimed_above = "-1".into())),
        (
            "unclaimed_above",
            list(|r| r.unclaimed_above = "1.5".into()),
        ),
        (
            "unclaimed_above",
            list(|r| r.unclaimed_above = "007".into()),
        ),
        (
            "unclaimed_above",
            list(|r| r.unclaimed_above = "340282366920938463463374607431768211456".into()),
        ),
        ("page_size", list(|r| r.page_size = 1_001)),
        ("page_size", list(|r| r.page_size = u32::MAX)),
        ("page_token", list(|r| r.page_token = "next".into())),
    ];
    for (field, req) in cases {
        let s = status(raw.list_channels(req).await);
        invalid(&s, field);
    }

    // ClaimNow: the `all` / `channel_ids` combinations, and too many ids
    let s = status(
        raw.claim_now(proto::ClaimNowRequest {
            channel_ids: vec![a.hex()],
            all: true,
        })
        .await,
    );
    invalid(&s, "channel_ids");
    let s = status(raw.claim_now(proto::ClaimNowRequest::default()).await);
    invalid(&s, "channel_ids");
    let s = status(
        raw.claim_now(proto::ClaimNowRequest {
            channel_ids: vec![a.hex(); 10_001],
            all: false,
        })
        .await,
    );
    invalid(&s, "channel_ids");

    // well-formed but unknown channels
    let unknown = format!("0x{}", "42".repeat(32));
    let s = status(
        raw.get_channel(proto::GetChannelRequest {
            channel_id: unknown.clone(),
        })
        .await,
    );
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    assert!(s.message().starts_with("channel_id: "), "{s:?}");
    let s = status(
        raw.refund_channel(proto::RefundChannelRequest {
            channel_id: unknown.clone(),
        })
        .await,
    );
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    let s = status(
        raw.claim_now(proto::ClaimNowRequest {
            channel_ids: vec![a.hex(), unknown.clone()],
            all: false,
        })
        .await,
    );
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    assert!(s.message().starts_with("channel_ids[1]: "), "{s:?}");

    // resume points outside the ring, or of another process
    let stream_id = served.plane.stream_id().to_owned();
    for (after, sid) in [
        (Some(1_000), stream_id.clone()),
        (Some(u64::MAX), String::new()),
        (Some(0), "0123456789abcdef".to_owned()),
    ] {
        let s = status(
            raw.watch_events(proto::WatchEventsRequest {
                after_sequence: after,
                stream_id: sid,
                channel_ids: Vec::new(),
            })
            .await,
        );
        assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    }

    assert_eq!(before, snapshot().await, "a refused call changed something");
    // the record is as paid, and good fields still work
    let ch = c.channel(a.id()).await.unwrap();
    assert_eq!((ch.charged.as_str(), ch.balance.as_str()), ("900", "20000"));
    let page = c
        .list_channels(proto::ListChannelsRequest {
            unclaimed_above: "899".into(),
            payer: format!("{:#X}", a.key.address()).replacen("0X", "0x", 1),
            state: proto::ChannelState::Open.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.channels.len(), 1);
    let page = c
        .list_channels(proto::ListChannelsRequest {
            unclaimed_above: "900".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(page.channels.is_empty());
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_scheduler_actions_are_a_failed_precondition() {
    let env = Env::start().await;
    let mut a = env.open_channel(32, 20_000).await;
    env.pay(&mut a, 600).await;
    let served = env.serve(None, ControlConfig::default()).await;
    let mut c = served.client().await;
    for s in [
        status(c.claim(&[a.id()]).await),
        status(c.claim(&[]).await),
        status(c.settle().await),
        status(c.refund(a.id()).await),
    ] {
        assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    }
    // a malformed field is still INVALID_ARGUMENT first
    let s = status(
        c.raw()
            .refund_channel(proto::RefundChannelRequest {
                channel_id: "0x".into(),
            })
            .await,
    );
    invalid(&s, "channel_id");
    assert_eq!(env.onchain(a.id()).await, (20_000, 0));
    let h = c.health().await.unwrap();
    assert!(h.serving && !h.settlement);
    let stats = c.stats().await.unwrap();
    assert!(stats.settlement.is_none());
    assert_eq!(stats.engine.unwrap().charged_total, "600");
    served.stop().await;
}
