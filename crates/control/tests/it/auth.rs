//! Without the token, or with a wrong one, every call is UNAUTHENTICATED and nothing changes;
//! the standard health service is open; reflection needs the token and lists the service.

use futures_util::StreamExt;
use paychan_control::{
    ControlClient, ControlConfig,
    proto::{self, channel_control_client::ChannelControlClient},
};
use paychan_devchain::Role;
use paychan_service::BearerToken;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::support::*;

/// Every call of the control service through `c`, each expected UNAUTHENTICATED.
async fn every_call_refused<T>(c: &mut ChannelControlClient<T>, id: &str)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let id = id.to_owned();
    let codes = vec![
        (
            "ListChannels",
            c.list_channels(list_all(0, String::new()))
                .await
                .map(|_| ()),
        ),
        (
            "GetChannel",
            c.get_channel(proto::GetChannelRequest {
                channel_id: id.clone(),
            })
            .await
            .map(|_| ()),
        ),
        (
            "WatchEvents",
            c.watch_events(proto::WatchEventsRequest {
                after_sequence: Some(0),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        ),
        (
            "ClaimNow",
            c.claim_now(proto::ClaimNowRequest {
                channel_ids: vec![],
                all: true,
            })
            .await
            .map(|_| ()),
        ),
        (
            "SettleNow",
            c.settle_now(proto::SettleNowRequest {}).await.map(|_| ()),
        ),
        (
            "RefundChannel",
            c.refund_channel(proto::RefundChannelRequest {
                channel_id: id.clone(),
            })
            .await
            .map(|_| ()),
        ),
        (
            "GetStats",
            c.get_stats(proto::GetStatsRequest {}).await.map(|_| ()),
        ),
        (
            "Health",
            c.health(proto::HealthRequest {}).await.map(|_| ()),
        ),
    ];
    for (call, r) in codes {
        let s = status(r);
        assert_eq!(s.code(), Code::Unauthenticated, "{call}: {s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_right_token_are_unauthenticated_and_change_nothing() {
    let env = Env::start().await;
    let mut a = env.open_channel(11, 20_000).await;
    env.pay(&mut a, 1_000).await;
    env.pay(&mut a, 400).await;
    let served = env
        .serve(Some(env.settler()), ControlConfig::default())
        .await;
    let relayer = env.chain.account(Role::Relayer).address;
    let before = (
        env.onchain(a.id()).await,
        env.balance(env.receiver()).await,
        env.balance(a.key.address()).await,
        env.nonce(relayer).await,
        env.engine.channel(a.id()).await.unwrap(),
    );

    // no token at all
    let mut bare = ChannelControlClient::new(served.channel().await);
    every_call_refused(&mut bare, &a.hex()).await;
    // a wrong token of the right shape
    let wrong = BearerToken::from_secret(&"ab".repeat(32)).unwrap();
    let mut c = ControlClient::with_channel(served.channel().await, &wrong);
    every_call_refused(c.raw(), &a.hex()).await;
    // the right token in the wrong scheme
    let secret = served.token.secret().to_owned();
    let mut basic = ChannelControlClient::with_interceptor(
        served.channel().await,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("authorization", format!("Basic {secret}").parse().unwrap());
            Ok(r)
        },
    );
    every_call_refused(&mut basic, &a.hex()).await;

    // nothing changed: on chain, in the relayer's nonce, in the store
    let after = (
        env.onchain(a.id()).await,
        env.balance(env.receiver()).await,
        env.balance(a.key.address()).await,
        env.nonce(relayer).await,
        env.engine.channel(a.id()).await.unwrap(),
    );
    assert_eq!(before, after);
    assert_eq!(after.0, (20_000, 0));

    // the right token works
    let ch = served.client().await.channel(a.id()).await.unwrap();
    assert_eq!(ch.charged, "1400");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_open_and_reflection_needs_the_token() {
    let env = Env::start().await;
    let served = env.serve(None, ControlConfig::default()).await;

    let mut health = HealthClient::new(served.channel().await);
    for service in ["", proto::SERVICE_NAME] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            i32::from(tonic_health::pb::health_check_response::ServingStatus::Serving),
            "{service:?}"
        );
    }

    let list = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut bare = ServerReflectionClient::new(served.channel().await);
    let s = status(
        bare.server_reflection_info(futures_util::stream::iter([list()]))
            .await,
    );
    assert_eq!(s.code(), Code::Unauthenticated);

    let token = served.token.clone();
    let value: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", token.secret()).parse().unwrap();
    let mut authed = ServerReflectionClient::with_interceptor(
        served.channel().await,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", value.clone());
            Ok(r)
        },
    );
    let mut answers = authed
        .server_reflection_info(futures_util::stream::iter([list()]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(services)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = services.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == proto::SERVICE_NAME), "{names:?}");
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
    served.stop().await;
}
