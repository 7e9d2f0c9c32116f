//! paychan's HTTP payee server: x402 payment middleware in front of an inference upstream.
//!
//! [`app`] builds the router: paid routes go through [`paid::paid_middleware`] (the engine
//! decides), then to the upstream ([`proxy`], or the in-process [`demo`] upstream). Free admin
//! endpoints live under `/_paychan/`. [`serve`] runs it on a listener until a shutdown future
//! resolves, so tests bind port 0 and pass their own shutdown.
//!
//! | module | what |
//! | --- | --- |
//! | [`paid`] | the payment middleware, paid routes, 402 responses |
//! | [`proxy`] | streaming reverse proxy to the upstream |
//! | [`demo`] | a demo upstream (echo chat completions priced per token) |

pub mod demo;
pub mod paid;
pub mod proxy;

use std::{future::Future, sync::Arc};

use axum::{Json, Router, extract::State, middleware::from_fn_with_state, routing::get};
use paychan_engine::{Clock, OnchainSource, PaymentFacilitator};
use paychan_store::Store;

pub use paid::{Charge, PaidRoute, PaidState};

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

async fn metrics<S: Store, C: OnchainSource, F: PaymentFacilitator, K: Clock>(
    State(st): State<Arc<PaidState<S, C, F, K>>>,
) -> Json<serde_json::Value> {
    use paychan_engine::Metrics as M;
    let m = st.engine.metrics();
    Json(serde_json::json!({
        "requests": M::get(&m.requests),
        "reserved": M::get(&m.reserved),
        "committed": M::get(&m.committed),
        "aborted": M::get(&m.aborted),
        "corrective": M::get(&m.corrective),
        "busy": M::get(&m.busy),
        "chainReads": M::get(&m.chain_reads),
        "deposits": M::get(&m.deposits),
        "refunds": M::get(&m.refunds),
        "chargedTotal": m.charged_total().to_string(),
        "commitNanosTotal": M::get(&m.commit_nanos),
        "cachedChannels": st.engine.cached_channels(),
        "rejections": m.rejections(),
    }))
}

/// The server's router: paid routes in front of `upstream`, plus `/_paychan/health` and
/// `/_paychan/metrics`.
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
    let admin = Router::new()
        .route("/_paychan/health", get(health))
        .route("/_paychan/metrics", get(metrics::<S, C, F, K>))
        .with_state(state.clone());
    admin.merge(inner.layer(from_fn_with_state(
        state,
        paid::paid_middleware::<S, C, F, K>,
    )))
}

/// Serves `app` on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
