//! A streaming reverse proxy to the inference upstream.
//!
//! The upstream URL of a request is the configured base with the request's normalised path and
//! query appended as text ([`crate::route::normalize`]), never resolved as a relative URL, and is
//! checked to keep the base's scheme, host and port before any connection is made. Time limits
//! are a connect timeout and a read-idle timeout (no byte from the upstream for that long), not
//! a total: a long streamed answer that was paid for is never cut for being long.

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, StatusCode, header},
    response::{IntoResponse, Response},
};

/// Where paid requests go.
#[derive(Debug, Clone)]
pub struct Proxy {
    client: reqwest::Client,
    /// The base URL without a trailing `/`; request paths (starting with `/`) are appended.
    base: String,
    origin: (String, Option<String>, Option<u16>),
    /// `Authorization` sent to the upstream in place of the client's (sensitive: never logged).
    auth: Option<axum::http::HeaderValue>,
}

/// Errors configuring the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Not an http(s) URL.
    #[error(
        "upstream {0:?} is not an http:// or https:// URL without user info, query or fragment"
    )]
    BadUrl(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// The proxy's time limits.
#[derive(Debug, Clone, Copy)]
pub struct ProxyTimeouts {
    /// Connecting to the upstream (default 10 s).
    pub connect: std::time::Duration,
    /// No byte from the upstream for this long fails the request or ends the stream (default
    /// 120 s).
    pub read_idle: std::time::Duration,
}

impl Default for ProxyTimeouts {
    fn default() -> Self {
        Self {
            connect: std::time::Duration::from_secs(10),
            read_idle: std::time::Duration::from_secs(120),
        }
    }
}

fn origin(u: &reqwest::Url) -> (String, Option<String>, Option<u16>) {
    (
        u.scheme().to_owned(),
        u.host_str().map(str::to_owned),
        u.port_or_known_default(),
    )
}

impl Proxy {
    /// A proxy to `upstream` (a base URL; request paths are appended to it) with `read_idle` as
    /// the read-idle timeout and the default connect timeout.
    pub fn new(upstream: &str, read_idle: std::time::Duration) -> Result<Self, ProxyError> {
        Self::with_timeouts(
            upstream,
            ProxyTimeouts {
                read_idle,
                ..ProxyTimeouts::default()
            },
        )
    }

    /// A proxy to `upstream` with `timeouts`.
    pub fn with_timeouts(upstream: &str, timeouts: ProxyTimeouts) -> Result<Self, ProxyError> {
        let bad = || ProxyError::BadUrl(paychan_core::redact::redact_urls(upstream));
        let url: reqwest::Url = upstream.parse().map_err(|_| bad())?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none()
            || !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(bad());
        }
        let base = url.as_str().trim_end_matches('/').to_owned();
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.read_idle)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProxyError::Client(e.to_string()))?;
        Ok(Self {
            client,
            origin: origin(&url),
            base,
            auth: None,
        })
    }

    /// Sends `token` to the upstream as `Authorization: Bearer …` on every request, in place of
    /// whatever `Authorization` the client sent (the provider's key for a hosted API such as
    /// OpenAI's; without it, the client's own `Authorization` goes through).
    #[must_use]
    pub fn with_bearer(mut self, token: &paychan_service::BearerToken) -> Self {
        self.auth = Some(token.header_value());
        self
    }

    /// The upstream URL for a request target, or `None` if the target is refused or the result
    /// would leave the base's scheme, host or port.
    pub fn url_for(
        &self,
        method: &axum::http::Method,
        version: axum::http::Version,
        uri: &axum::http::Uri,
    ) -> Option<reqwest::Url> {
        let target = crate::route::normalize(method, version, uri).ok()?;
        let url: reqwest::Url = format!("{}{target}", self.base).parse().ok()?;
        (origin(&url) == self.origin).then_some(url)
    }
}

/// Headers that are not forwarded: those that belong to one connection (hop-by-hop), `host` and
/// `content-length` (set again for the next hop), and the payment headers the upstream must not
/// see. Also used by `paychan pay-proxy`.
pub fn not_forwarded(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | "payment-signature"
            | "x-payment"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !not_forwarded(k) {
            to.append(k.clone(), v.clone());
        }
    }
}

/// The proxy handler (use as a router fallback with the [`Proxy`] as state).
pub async fn proxy_handler(State(p): State<Proxy>, req: Request) -> Response {
    let Some(url) = p.url_for(req.method(), req.version(), req.uri()) else {
        return (StatusCode::BAD_REQUEST, "bad request target").into_response();
    };
    let (parts, body) = req.into_parts();
    let mut headers = HeaderMap::new();
    copy_headers(&parts.headers, &mut headers);
    if let Some(auth) = &p.auth {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    let sent = p
        .client
        .request(parts.method, url)
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await;
    match sent {
        Ok(up) => {
            let status = up.status();
            let mut h = HeaderMap::new();
            copy_headers(up.headers(), &mut h);
            let mut resp = Response::new(Body::from_stream(up.bytes_stream()));
            *resp.status_mut() = status;
            *resp.headers_mut() = h;
            resp
        }
        Err(e) => {
            // The error names the upstream URL: logged redacted, never sent to the client.
            let detail = paychan_core::redact::redact_urls(&e.to_string());
            tracing::warn!(target: "paychan_server", error = %detail, "upstream request failed");
            let status = if e.is_timeout() {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::BAD_GATEWAY
            };
            (
                status,
                [(header::CONTENT_TYPE, "text/plain")],
                "upstream unavailable",
            )
                .into_response()
        }
    }
}
