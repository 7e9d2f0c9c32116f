//! `paychan pay-proxy`: a local HTTP proxy that pays. An agent in any language points its base
//! URL (an OpenAI SDK's `base_url`, say) at it; each request is forwarded to the one configured
//! upstream and paid with `paychan-client` (x402 `batch-settlement`), and the upstream's answer is
//! streamed back unchanged.
//!
//! It is not an open proxy, and it spends money for whoever reaches it, so:
//!
//! - it listens on loopback only, unless `--allow-non-loopback` says otherwise;
//! - the upstream URL of a request is the configured base with the request's normalised path
//!   appended, by the paid server's own rules ([`paychan_server::proxy::Proxy::url_for`]):
//!   absolute-form and authority-form targets, `//`, dot segments (raw or encoded), encoded
//!   separators and the like are refused with `400`, and nothing can leave the base's origin;
//! - on loopback, a `Host` that is not a loopback name is refused (DNS rebinding), and so are
//!   requests from web pages (an `Origin` not allowed by `--allow-origin`, or a cross-site
//!   `Sec-Fetch-Site`): a page in the user's browser must not spend the user's money;
//! - hop-by-hop headers (and those named in `Connection`) and payment headers from the agent are
//!   not forwarded; redirects are not followed.
//!
//! Request bodies are read into memory (up to `--max-body-bytes`) so that a request can be sent
//! again to pay for it; response bodies are streamed.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, FromRequest, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use paychan_client::Payer;
use paychan_server::proxy::{Proxy, ProxyTimeouts, not_forwarded};
use paychan_store::SledStore;

use super::PayerArgs;

/// `paychan pay-proxy` flags.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ProxyArgs {
    /// The real upstream's base URL (http:// or https://, no query or user info). Every request
    /// goes there with its path appended; nothing else can be reached through the proxy.
    #[arg(long, env = "PAYCHAN_UPSTREAM", value_name = "URL")]
    pub(crate) upstream: String,
    /// Address to listen on (`127.0.0.1:0` picks a free port). Must be a loopback address unless
    /// --allow-non-loopback is given.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8410")]
    pub(crate) listen: SocketAddr,
    /// Listen on a non-loopback address anyway. Whoever reaches the port spends this payer's
    /// money (within the spend limits): firewall it. The Host check is off then.
    #[arg(long)]
    pub(crate) allow_non_loopback: bool,
    /// A web origin (e.g. `http://localhost:3000`) whose pages may call the proxy; repeat for
    /// several. By default every request from a web page is refused.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub(crate) allow_origins: Vec<String>,
    /// Largest request body accepted, in bytes (bodies are held in memory so that a request can
    /// be sent again to pay for it); larger ones get 413.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    pub(crate) max_body_bytes: usize,
    /// Seconds to wait for a connection to the upstream.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub(crate) connect_timeout_secs: u64,
    /// Seconds without a byte from the upstream before a request fails or a streamed answer
    /// ends (there is no total limit: a long streamed answer is never cut for being long).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub(crate) read_idle_timeout_secs: u64,
    #[command(flatten)]
    pub(crate) payer: PayerArgs,
}

struct ProxyState {
    payer: Payer<SledStore>,
    http: reqwest::Client,
    target: Proxy,
    /// The port we listen on, when the Host check applies (loopback).
    host_check: Option<u16>,
    allow_origins: Vec<String>,
}

/// Refuses a listen address that is not loopback, unless allowed.
pub(crate) fn check_listen(addr: SocketAddr, allow_non_loopback: bool) -> Result<()> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if allow_non_loopback {
        tracing::warn!(target: "paychan", %addr, "pay-proxy listens on a non-loopback address: whoever reaches it spends this payer's money");
        return Ok(());
    }
    anyhow::bail!(
        "--listen {addr} is not a loopback address: the pay-proxy spends this payer's money for whoever reaches it. Listen on 127.0.0.1 or [::1], or pass --allow-non-loopback (and firewall the port)"
    )
}

/// Runs the proxy until `shutdown`. Prints one JSON line `{"event":"listening","addr":…}` on
/// stdout once accepting connections.
pub(crate) async fn run(
    a: ProxyArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    // Every check that needs no key comes first.
    check_listen(a.listen, a.allow_non_loopback)?;
    let timeouts = ProxyTimeouts {
        connect: Duration::from_secs(a.connect_timeout_secs.max(1)),
        read_idle: Duration::from_secs(a.read_idle_timeout_secs.max(1)),
    };
    let target = Proxy::with_timeouts(&a.upstream, timeouts).context("--upstream")?;
    let http = super::http_client(timeouts.connect, timeouts.read_idle)?;
    let payer = a.payer.build(http.clone()).await?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(ProxyState {
        payer,
        http,
        target,
        host_check: addr.ip().is_loopback().then_some(addr.port()),
        allow_origins: a.allow_origins,
    });
    let app = Router::new()
        .fallback(handle)
        .with_state(state)
        .layer(DefaultBodyLimit::max(a.max_body_bytes));
    tracing::info!(target: "paychan", %addr, upstream = %paychan_core::redact::redact_urls(&a.upstream), "pay-proxy listening");
    #[allow(clippy::print_stdout)]
    {
        println!(
            "{}",
            serde_json::json!({"event": "listening", "addr": addr.to_string()})
        );
    }
    paychan_server::serve_with(listener, app, paychan_server::Limits::default(), shutdown).await?;
    tracing::info!(target: "paychan", "pay-proxy stopped");
    Ok(())
}

/// An error answer in the shape OpenAI-style SDKs read: `{"error":{"message","type","code"}}`.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "error": {"message": message, "type": "paychan_pay_proxy", "code": code}
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Whether `host` (a `Host` header value) names this machine's loopback interface, on `port` if
/// it names a port.
fn is_loopback_host(host: &str, port: u16) -> bool {
    let (name, p) = if let Some(rest) = host.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        (ip, after.strip_prefix(':'))
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        }
    };
    if p.is_some_and(|p| p.parse::<u16>().ok() != Some(port)) {
        return false;
    }
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why a request is refused before anything else, if it is: a Host that is not loopback (DNS
/// rebinding), or a web page that is not allowed.
fn refuse_caller(
    st: &ProxyState,
    headers: &HeaderMap,
    authority: Option<&str>,
) -> Option<Response> {
    // HTTP/1 names the host in `Host`, HTTP/2 in the `:authority` of the target.
    let host = headers
        .get(header::HOST)
        .map(|h| h.to_str().ok())
        .or_else(|| authority.map(Some));
    if let Some(port) = st.host_check
        && let Some(host) = host
        && !host.is_some_and(|h| is_loopback_host(h, port))
    {
        return Some(error(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            "the Host header does not name this machine's loopback interface",
        ));
    }
    let origin = headers.get(header::ORIGIN).map(HeaderValue::to_str);
    let allowed = |o: &str| st.allow_origins.iter().any(|a| a == o);
    let refused = match origin {
        Some(Ok(o)) => !allowed(o),
        Some(Err(_)) => true,
        None => headers
            .get("sec-fetch-site")
            .is_some_and(|v| !matches!(v.as_bytes(), b"same-origin" | b"none")),
    };
    refused.then(|| {
        error(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "requests from web pages are refused (see --allow-origin)",
        )
    })
}

/// The header names listed in `Connection` (hop-by-hop by declaration).
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

/// `from` without what must not cross this hop.
fn forwarded(from: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(from);
    let mut to = HeaderMap::new();
    for (k, v) in from {
        if !not_forwarded(k) && !listed.contains(k) {
            to.append(k.clone(), v.clone());
        }
    }
    to
}

/// The answer for a payment that failed.
fn payment_failed(e: &paychan_client::Error) -> Response {
    use paychan_client::Error as E;
    let status = match e {
        E::Policy(_) | E::Untrusted { .. } => StatusCode::FORBIDDEN,
        E::Http(reqwest_middleware::Error::Reqwest(r)) if r.is_timeout() => {
            StatusCode::GATEWAY_TIMEOUT
        }
        E::Refused { .. } | E::ServerMisbehaved { .. } | E::Protocol(_) | E::Http(_) => {
            StatusCode::BAD_GATEWAY
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, super::kind(e), &super::describe(e))
}

async fn handle(State(st): State<Arc<ProxyState>>, req: Request) -> Response {
    let authority = req.uri().authority().map(|a| a.as_str());
    if let Some(refused) = refuse_caller(&st, req.headers(), authority) {
        return refused;
    }
    let Some(url) = st.target.url_for(req.method(), req.version(), req.uri()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request_target",
            "the request target must be a plain path (no host, no //, no dot segments, no encoded separators)",
        );
    };
    let method = req.method().clone();
    let headers = forwarded(req.headers());
    let body = match Bytes::from_request(req, &()).await {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            return error(status, "bad_request_body", &rejection.body_text());
        }
    };
    let path = url.path().to_owned();
    let out = match st
        .http
        .request(method.clone(), url)
        .headers(headers)
        .body(body)
        .build()
    {
        Ok(r) => r,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request cannot be forwarded",
            );
        }
    };
    match st.payer.execute(out).await {
        Ok(paid) => {
            let resp = paid.response;
            let status = resp.status();
            tracing::info!(
                target: "paychan",
                %method,
                %path,
                status = status.as_u16(),
                charged = paid.receipt.as_ref().map(|r| r.charged),
                deposited = paid.receipt.as_ref().and_then(|r| r.deposited),
                "forwarded"
            );
            let headers = forwarded(resp.headers());
            let mut answer = Response::new(Body::from_stream(resp.bytes_stream()));
            *answer.status_mut() = status;
            *answer.headers_mut() = headers;
            answer
        }
        Err(e) => {
            tracing::warn!(target: "paychan", %method, %path, error = %super::describe(&e), "payment failed");
            payment_failed(&e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_listen_addresses_pass_without_the_flag() {
        for ok in ["127.0.0.1:0", "127.0.0.2:8410", "[::1]:8410"] {
            assert!(check_listen(ok.parse().unwrap(), false).is_ok(), "{ok}");
        }
        for bad in [
            "0.0.0.0:8410",
            "[::]:8410",
            "192.168.1.2:8410",
            "10.0.0.1:1",
        ] {
            let err = check_listen(bad.parse().unwrap(), false).unwrap_err();
            assert!(err.to_string().contains("not a loopback address"), "{err}");
            assert!(check_listen(bad.parse().unwrap(), true).is_ok(), "{bad}");
        }
    }

    #[test]
    fn host_must_name_loopback_and_our_port() {
        for ok in [
            "127.0.0.1:8410",
            "localhost:8410",
            "LOCALHOST",
            "[::1]:8410",
            "127.0.0.1",
        ] {
            assert!(is_loopback_host(ok, 8410), "{ok}");
        }
        for bad in [
            "evil.example:8410",
            "evil.example",
            "127.0.0.1:80",
            "localhost.evil.example:8410",
            "[::1",
            "[::2]:8410",
            "10.0.0.1:8410",
            "127.0.0.1:8410:1",
        ] {
            assert!(!is_loopback_host(bad, 8410), "{bad}");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert("payment-signature", "forged".parse().unwrap());
        h.insert(
            header::AUTHORIZATION,
            "Bearer upstream-key".parse().unwrap(),
        );
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        let out = forwarded(&h);
        let names: Vec<_> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(out.contains_key(header::AUTHORIZATION) && out.contains_key(header::CONTENT_TYPE));
    }
}
