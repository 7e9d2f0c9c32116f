//! Bearer-token authentication of every gRPC service but the standard health service.
//!
//! [`RequireBearer`] wraps a tonic service: a request whose `authorization` metadata is not
//! `Bearer <token>` (compared in constant time by [`BearerToken::allows`]) is answered
//! `UNAUTHENTICATED` before its body is read or its handler runs, so nothing is read or changed.

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use futures_util::future::{Either, Ready, ready};
use paychan_service::BearerToken;
use tonic::{Status, body::Body, server::NamedService};
use tower::Service;

use crate::TARGET;

/// `inner` behind the bearer token. Keeps `inner`'s gRPC service name, so it routes as `inner`.
#[derive(Debug, Clone)]
pub struct RequireBearer<S> {
    inner: S,
    token: BearerToken,
}

impl<S> RequireBearer<S> {
    /// `inner`, answering only requests that carry `token`.
    pub fn new(inner: S, token: BearerToken) -> Self {
        Self { inner, token }
    }
}

impl<S: NamedService> NamedService for RequireBearer<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for RequireBearer<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<http::Response<Body>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if self.token.allows(req.headers()) {
            Either::Left(self.inner.call(req))
        } else {
            tracing::info!(target: TARGET, path = %req.uri().path(), "control call without a valid bearer token refused");
            Either::Right(ready(Ok(Status::unauthenticated(
                "this call needs the metadata authorization: Bearer <token from the server's control token file>",
            )
            .into_http())))
        }
    }
}
