//! [`serve`]: the control plane on a listener, through paychan's hardened accept loop
//! ([`paychan_service::serve`]: header and idle timeouts, connection and in-flight caps,
//! graceful shutdown), with
//!
//! * `paychan.control.v1.ChannelControl` and gRPC reflection (`grpc.reflection.v1`) behind the
//!   bearer token ([`RequireBearer`]);
//! * the standard health service (`grpc.health.v1.Health`) open, as load balancers and
//!   `grpc_health_probe` expect: it tells whether the server serves, nothing else.
//!
//! The listener is the caller's: bind it to loopback (`127.0.0.1:9403` in paychan's config)
//! unless it serves TLS (`Limits::tls`) or a proxy in front terminates TLS and restricts who connects; without TLS this server speaks
//! plaintext HTTP/2 (h2c) only. HTTP/2 keep-alive pings keep a quiet `WatchEvents` stream's
//! connection from counting as idle.

use std::future::Future;

use paychan_core::ports::{Clock, OnchainSource, PaymentFacilitator};
use paychan_service::{BearerToken, Limits};
use paychan_store::Store;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::{
    Result, TARGET,
    auth::RequireBearer,
    proto::{self, channel_control_server::ChannelControlServer},
    service::ControlPlane,
};

/// Serves `plane` on `listener` with the default [`Limits`] until `shutdown` resolves. Calls
/// need `Authorization: Bearer <token>`, except the standard health service.
pub async fn serve<S, C, F, K>(
    listener: TcpListener,
    plane: ControlPlane<S, C, F, K>,
    token: BearerToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()>
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    serve_with(listener, plane, token, Limits::default(), shutdown).await
}

/// [`serve`] with explicit listener limits. When `shutdown` resolves the health service turns
/// `NOT_SERVING`, every `WatchEvents` stream ends with `UNAVAILABLE` (clients resume elsewhere
/// or later), the event sources stop, and calls in flight finish within the grace period.
pub async fn serve_with<S, C, F, K>(
    listener: TcpListener,
    plane: ControlPlane<S, C, F, K>,
    token: BearerToken,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()>
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(proto::SERVICE_NAME, ServingStatus::Serving)
        .await;
    health.set_service_status("", ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let routes = Routes::new(health_service)
        .add_service(RequireBearer::new(
            ChannelControlServer::new(plane.clone()),
            token.clone(),
        ))
        .add_service(RequireBearer::new(reflection, token))
        .prepare();
    let addr = listener.local_addr()?;
    tracing::info!(target: TARGET, %addr, stream_id = plane.stream_id(), "control plane listening");
    if !addr.ip().is_loopback() && limits.tls.is_none() {
        tracing::warn!(target: TARGET, %addr, "the control plane is not on loopback and serves plaintext: serve TLS or put a TLS proxy in front");
    }
    let chain_watch = plane.chain_watch().await;
    let stopper = plane.clone();
    let on_shutdown = async move {
        shutdown.await;
        health
            .set_service_status(proto::SERVICE_NAME, ServingStatus::NotServing)
            .await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        stopper.stop();
    };
    let server = paychan_service::serve(listener, routes.into_axum_router(), limits, on_shutdown);
    let (served, ()) = tokio::join!(server, plane.run_feeds(chain_watch));
    // The listener failed on its own: stop the event sources too.
    plane.stop();
    served?;
    tracing::info!(target: TARGET, "control plane stopped");
    Ok(())
}
