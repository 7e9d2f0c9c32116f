//! A streaming reverse proxy to the inference upstream.

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
    base: reqwest::Url,
}

/// Errors configuring the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Not an http(s) URL.
    #[error("upstream {0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

impl Proxy {
    /// A proxy to `upstream` (a base URL; request paths are appended to it), with a per-request
    /// timeout.
    pub fn new(upstream: &str, timeout: std::time::Duration) -> Result<Self, ProxyError> {
        let mut base: reqwest::Url = upstream
            .parse()
            .map_err(|_| ProxyError::BadUrl(upstream.to_owned()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ProxyError::BadUrl(upstream.to_owned()));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProxyError::Client(e.to_string()))?;
        Ok(Self { client, base })
    }
}

/// Headers that belong to one connection, plus the payment headers the upstream must not see.
fn skip(name: &HeaderName) -> bool {
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
        if !skip(k) {
            to.append(k.clone(), v.clone());
        }
    }
}

/// The proxy handler (use as a router fallback with the [`Proxy`] as state).
pub async fn proxy_handler(State(p): State<Proxy>, req: Request) -> Response {
    let pq = req.uri().path_and_query().map_or("/", |x| x.as_str());
    let Ok(url) = p.base.join(pq.trim_start_matches('/')) else {
        return (StatusCode::BAD_REQUEST, "bad request path").into_response();
    };
    let (parts, body) = req.into_parts();
    let mut headers = HeaderMap::new();
    copy_headers(&parts.headers, &mut headers);
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
            tracing::warn!(target: "paychan_server", error = %e, "upstream request failed");
            (
                StatusCode::BAD_GATEWAY,
                [(header::CONTENT_TYPE, "text/plain")],
                format!("upstream unavailable: {e}"),
            )
                .into_response()
        }
    }
}
