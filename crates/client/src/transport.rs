//! How a payment attempt leaves: through a plain [`reqwest::Client`], or down the rest of a
//! `reqwest-middleware` chain. The payment logic is written once against [`Transport`].

use std::future::Future;

use reqwest::{Request, Response};

/// Sends one HTTP request.
pub(crate) trait Transport: Send {
    /// Sends `req`.
    fn send(
        &mut self,
        req: Request,
    ) -> impl Future<Output = Result<Response, reqwest_middleware::Error>> + Send;
}

/// A plain client.
pub(crate) struct ClientTransport<'a>(pub(crate) &'a reqwest::Client);

impl Transport for ClientTransport<'_> {
    fn send(
        &mut self,
        req: Request,
    ) -> impl Future<Output = Result<Response, reqwest_middleware::Error>> + Send {
        let fut = self.0.execute(req);
        async move { fut.await.map_err(Into::into) }
    }
}

/// The rest of a middleware chain.
pub(crate) struct NextTransport<'a, 'e> {
    pub(crate) next: reqwest_middleware::Next<'a>,
    pub(crate) extensions: &'e mut http::Extensions,
}

impl Transport for NextTransport<'_, '_> {
    fn send(
        &mut self,
        req: Request,
    ) -> impl Future<Output = Result<Response, reqwest_middleware::Error>> + Send {
        let next = self.next.clone();
        next.run(req, self.extensions)
    }
}
