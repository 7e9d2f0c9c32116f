//! [`PayerMiddleware`]: a `reqwest-middleware` middleware that pays x402 `batch-settlement`
//! servers with a [`Payer`], so a `ClientWithMiddleware` pays transparently.
//!
//! The payment attempts go down the rest of the middleware chain (so a retry or tracing
//! middleware placed after this one sees each of them). A paid response carries its
//! [`Receipt`](crate::Receipt) in its extensions (`resp.extensions().get::<Receipt>()`). Payment
//! errors come back as `reqwest_middleware::Error::Middleware` wrapping the client's
//! [`Error`] (downcast it to match); transport errors of the chain below come back
//! as they were.

use paychan_store::Store;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::{Error, Payer, transport::NextTransport};

/// Pays for requests sent through a `reqwest_middleware::ClientWithMiddleware`.
#[derive(Debug, Clone)]
pub struct PayerMiddleware<S> {
    payer: Payer<S>,
}

impl<S: Store> PayerMiddleware<S> {
    /// A middleware paying with `payer`.
    #[must_use]
    pub fn new(payer: Payer<S>) -> Self {
        Self { payer }
    }

    /// The payer.
    #[must_use]
    pub fn payer(&self) -> &Payer<S> {
        &self.payer
    }
}

#[async_trait::async_trait]
impl<S: Store> Middleware for PayerMiddleware<S> {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let mut t = NextTransport { next, extensions };
        match self.payer.execute_via(req, &mut t).await {
            Ok(paid) => {
                let mut response = paid.response;
                if let Some(r) = paid.receipt {
                    response.extensions_mut().insert(r);
                }
                Ok(response)
            }
            Err(Error::Http(e)) => Err(e),
            Err(e) => Err(reqwest_middleware::Error::middleware(e)),
        }
    }
}
