//! paychan's HTTP payee server: x402 payment middleware in front of an inference upstream.
//!
//! [`app`] builds the paid port's router: every request passes the gate
//! ([`paid::paid_middleware`], as [`PaymentLayer`]), in a request span: its target is normalised
//! once and routed fail-closed ([`route`]); paid routes go through the engine, then to the
//! upstream ([`proxy`], or the in-process [`demo`] upstream). The paid port serves nothing else
//! but `/_paychan/health` ("ok"); metrics are on the operator listener ([`operator_app_with`],
//! loopback by default), in the Prometheus text format ([`prom`]) and as JSON. [`serve`] runs a
//! router on a listener within [`Limits`] until a shutdown future resolves, so tests bind port 0
//! and pass their own shutdown.
//!
//! | module | what |
//! | --- | --- |
//! | [`route`] | the request target, normalised once; fail-closed routing |
//! | [`paid`] | the payment middleware, paid routes, 402 responses, the request span |
//! | [`pricing`] | fixed and per-token prices, usage read from OpenAI-style answers and streams |
//! | `metered` | a streamed answer passed through and charged when it ends |
//! | [`renew`] | long streams paid chunk by chunk, vouchers posted mid-stream |
//! | [`PaymentLayer`] | the gate as a tower layer for a provider's own axum app |
//! | [`prom`] | the operator's `/metrics` in the Prometheus text format |
//! | [`proxy`] | streaming reverse proxy to the upstream |
//! | [`demo`] | a demo upstream (echo chat completions priced per token) |

pub mod demo;
mod layer;
mod metered;
pub mod paid;
pub mod pricing;
pub mod prom;
pub mod proxy;
pub mod renew;
pub mod route;

use std::{future::Future, sync::Arc};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};
use paychan_engine::{Clock, OnchainSource, PaymentFacilitator};
use paychan_store::Store;
use tower::Layer;

pub use layer::{PaymentLayer, PaymentService};
pub use paid::{Charge, PaidOptions, PaidRoute, PaidState};
pub use paychan_service::Limits;
pub use pricing::{ChunkTerms, Fallback, Pricing, TokenPrices};
pub use prom::OperatorSources;
pub use route::RoutePattern;

/// What serves paid requests after payment.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// Proxy to an HTTP service.
    Proxy(proxy::Proxy),
    /// The in-process demo upstream.
    Demo(demo::DemoConfig),
    /// Any axum router (in-process handlers).
    Router(Router),
}

async fn health() -> &'static str {
    "ok"
}

/// The operator listener's state.
struct Operator<S, C, F, K> {
    paid: Arc<PaidState<S, C, F, K>>,
    sources: OperatorSources,
    /// `network` and `asset` of every paid route, when they all take the same.
    asset: Option<(String, String)>,
}

async fn metrics_text<S: Store, C: OnchainSource, F: PaymentFacilitator, K: Clock>(
    State(op): State<Arc<Operator<S, C, F, K>>>,
) -> Response {
    let body = prom::render(&prom::Scrape {
        metrics: op.paid.engine.metrics(),
        cached_channels: op.paid.engine.cached_channels(),
        asset: op.asset.as_ref().map(|(n, a)| (n.as_str(), a.as_str())),
        sources: &op.sources,
    });
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(prom::CONTENT_TYPE),
    );
    r
}

async fn metrics_json<S: Store, C: OnchainSource, F: PaymentFacilitator, K: Clock>(
    State(op): State<Arc<Operator<S, C, F, K>>>,
) -> Json<serde_json::Value> {
    use paychan_engine::Metrics as M;
    let st = &op.paid;
    let m = st.engine.metrics();
    Json(serde_json::json!({
        "requests": M::get(&m.requests),
        "reserved": M::get(&m.reserved),
        "committed": M::get(&m.committed),
        "charges": M::get(&m.charges),
        "unpaid": M::get(&m.unpaid),
        "aborted": M::get(&m.aborted),
        "corrective": M::get(&m.corrective),
        "busy": M::get(&m.busy),
        "chainReads": M::get(&m.chain_reads),
        "chainReadsRefused": M::get(&m.chain_reads_refused),
        "screenedOut": M::get(&m.screened_out),
        "negativeHits": M::get(&m.negative_hits),
        "rateLimited": M::get(&m.rate_limited),
        "deposits": M::get(&m.deposits),
        "refunds": M::get(&m.refunds),
        "chargedTotal": m.charged_total().to_string(),
        "commitNanosTotal": M::get(&m.commit_nanos),
        "cachedChannels": st.engine.cached_channels(),
        "rejections": m.rejections(),
    }))
}

/// The paid port's router: the gate (target normalised, fail-closed routing, payments) in front
/// of `upstream`, plus `/_paychan/health`. Operational data is never served here: see
/// [`operator_app`].
pub fn app<S, C, F, K>(state: Arc<PaidState<S, C, F, K>>, upstream: Upstream) -> Router
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    let inner = match upstream {
        Upstream::Proxy(p) => Router::new().fallback(proxy::proxy_handler).with_state(p),
        Upstream::Demo(cfg) => demo::router(cfg),
        Upstream::Router(r) => r,
    };
    // The gate wraps the inner router as a service, so it runs before the inner router routes:
    // the inner router matches the normalised path, never the raw one.
    let gated = PaymentLayer::new(state).layer(inner);
    Router::new()
        .route("/_paychan/health", get(health))
        .fallback_service(gated)
}

/// [`operator_app_with`] without settlement or relayer figures.
pub fn operator_app<S, C, F, K>(state: Arc<PaidState<S, C, F, K>>) -> Router
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    operator_app_with(state, OperatorSources::default())
}

/// The operator listener's router: `/health`, `/metrics` (the Prometheus text format: requests
/// by outcome and refusal code, charges, latency histograms, channels, and what `sources`
/// supplies: the settlement backlog, relayer balances) and `/metrics.json` (the engine's
/// counters as JSON). Serve it on loopback (the default) or behind authentication: it shows
/// revenue and traffic.
pub fn operator_app_with<S, C, F, K>(
    state: Arc<PaidState<S, C, F, K>>,
    sources: OperatorSources,
) -> Router
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    let mut assets = state.routes.iter().map(|r| {
        (
            r.offer.network.as_str().to_owned(),
            r.offer.asset.to_string(),
        )
    });
    let asset = assets
        .next()
        .filter(|first| assets.all(|other| other == *first));
    let op = Arc::new(Operator {
        paid: state,
        sources,
        asset,
    });
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text::<S, C, F, K>))
        .route("/metrics.json", get(metrics_json::<S, C, F, K>))
        .with_state(op)
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves, then finishes requests
/// in flight.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    paychan_service::serve(listener, app, limits, shutdown).await
}

/// [`serve_with`] the default [`Limits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, app, Limits::default(), shutdown).await
}
