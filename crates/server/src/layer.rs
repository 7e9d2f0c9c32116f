//! [`PaymentLayer`]: the payment gate as a tower layer, for a provider's own axum or tower app.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use axum::{Router, routing::post};
//! # use paychan_server::{PaidState, PaymentLayer};
//! # fn demo<S, C, F, K>(state: Arc<PaidState<S, C, F, K>>)
//! # where S: paychan_store::Store, C: paychan_engine::OnchainSource,
//! #       F: paychan_engine::PaymentFacilitator, K: paychan_engine::Clock {
//! let app: Router = Router::new()
//!     .route("/v1/chat/completions", post(|| async { "an answer" }))
//!     .layer(PaymentLayer::new(state));
//! # }
//! ```
//!
//! It is the same gate as the standalone server's ([`crate::paid`]): the request target is
//! normalised once and the inner service sees only the normalised request; a path that is
//! neither a paid route of the state nor one of its free routes gets `404` without reaching
//! the inner service (fail closed: an app route nobody priced is not served free by mistake);
//! payment headers never reach the inner service; bodies are capped. Apply it with
//! `Router::layer` (around the routes, so that it sees every request before the router
//! matches it), not `route_layer`.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{body::Body, extract::Request, response::Response};
use futures_util::future::BoxFuture;
use paychan_engine::{Clock, OnchainSource, PaymentFacilitator};
use paychan_store::Store;
use tower::{Layer, Service, ServiceExt};

use crate::paid::{PaidState, gate};

/// Puts the payment gate in front of a service; see the module documentation.
pub struct PaymentLayer<S, C, F, K> {
    state: Arc<PaidState<S, C, F, K>>,
}

impl<S, C, F, K> PaymentLayer<S, C, F, K> {
    /// A layer charging for `state`'s paid routes.
    pub fn new(state: Arc<PaidState<S, C, F, K>>) -> Self {
        Self { state }
    }
}

impl<S, C, F, K> Clone for PaymentLayer<S, C, F, K> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
        }
    }
}

impl<Svc, S, C, F, K> Layer<Svc> for PaymentLayer<S, C, F, K> {
    type Service = PaymentService<Svc, S, C, F, K>;

    fn layer(&self, inner: Svc) -> Self::Service {
        PaymentService {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service [`PaymentLayer`] makes.
pub struct PaymentService<Svc, S, C, F, K> {
    inner: Svc,
    state: Arc<PaidState<S, C, F, K>>,
}

impl<Svc: Clone, S, C, F, K> Clone for PaymentService<Svc, S, C, F, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            state: self.state.clone(),
        }
    }
}

impl<Svc, B, S, C, F, K> Service<Request> for PaymentService<Svc, S, C, F, K>
where
    Svc:
        Service<Request, Response = http::Response<B>, Error = Infallible> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner service is made ready (`oneshot`) only for requests that reach it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let inner = self.inner.clone();
        let state = self.state.clone();
        Box::pin(async move {
            let run = |r: Request| async move {
                match inner.oneshot(r).await {
                    Ok(resp) => resp.map(Body::new),
                    Err(e) => match e {},
                }
            };
            Ok(gate(&state, req, run).await)
        })
    }
}
