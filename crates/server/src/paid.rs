//! The x402 payment middleware: turns a route into a paid route.
//!
//! Without `PAYMENT-SIGNATURE` a paid route answers `402` with `PAYMENT-REQUIRED` (the route's
//! offer). With it: decode (bounded) → [`Engine::begin`] → run the inner service → commit the
//! price on success (status < 400) or abort on failure → answer with `PAYMENT-RESPONSE`. The
//! charge is durable before the response carrying `PAYMENT-RESPONSE` is returned.
//!
//! The price of a request is set, in this order, by the inner service — a [`Charge`] response
//! extension (in-process handlers) or an `x-paychan-charge` response header (upstream services
//! behind the proxy; removed before the response leaves) — or by the route's [`Pricing`]:
//! fixed (the route's maximum, known at the response head; streamed bodies are charged as of
//! their head), or per token, from the answer's `usage` ([`crate::pricing`]): a JSON answer is
//! read whole (up to [`PaidOptions::max_response_bytes`]) and charged before it is returned, a
//! streamed one (`text/event-stream`) is passed through as it comes and charged when it ends
//! ([`crate::metered`]). A price above the maximum is capped at the maximum.
//!
//! Nothing is charged for a failure: an upstream status of 400 or more (the proxy answers 502
//! or 504 when it cannot reach the upstream or times out), and, on per-token routes, an answer
//! that is not JSON, is cut off, or is larger than the limit (answered `502`, the body withheld).

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Request, State},
    http::{self, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use paychan_core::{
    ErrorCode, Rejection,
    batch::{BatchPayload, BatchRequirements, PayloadReceiver, malformed_payload_code},
    codec,
    x402::{
        PaymentPayload, PaymentRequired, PaymentRequirements, ResourceInfo, VersionProbe,
        X402_VERSION,
    },
};
use paychan_engine::{Begin, Clock, Decline, Engine, OnchainSource, PaymentFacilitator};
use paychan_store::Store;

use crate::{
    metered::{Metered, Terms},
    pricing::{Pricing, RequestTerms, request_terms, usage_of},
    renew::{self, Renewals},
    route::{self, Decision, RoutePattern},
};

/// A price set by an in-process handler (a response extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge(pub u128);

/// The response header an upstream uses to set the price (atomic units).
pub const CHARGE_HEADER: &str = "x-paychan-charge";

/// One paid route.
#[derive(Debug, Clone)]
pub struct PaidRoute {
    /// Method, or any method when `None`.
    pub method: Option<Method>,
    /// Path; a trailing `*` makes it a prefix.
    pub path: String,
    /// What one request costs at most, and how to pay.
    pub offer: BatchRequirements,
    /// Shown to clients in `resource.description`.
    pub description: Option<String>,
    /// Shown to clients in `resource.mimeType`.
    pub mime_type: Option<String>,
    /// How a request is priced (within the offer's `amount`).
    pub pricing: Pricing,
}

impl PaidRoute {
    fn pattern(&self) -> RoutePattern {
        RoutePattern {
            method: self.method.clone(),
            path: self.path.clone(),
        }
    }
}

/// Settings of the paid port beyond its paid routes.
#[derive(Debug, Clone)]
pub struct PaidOptions {
    /// Routes proxied without payment. Everything that is neither paid nor free gets `404`.
    pub free_routes: Vec<RoutePattern>,
    /// Largest accepted `PAYMENT-SIGNATURE`, bytes.
    pub max_header_bytes: usize,
    /// Largest request body, bytes (default 1 MiB): a larger declared body gets `413`, a longer
    /// streamed one is cut (the upstream sees an error, nothing is charged).
    pub max_body_bytes: usize,
    /// Unread request bodies up to this size are read and dropped before a `4xx` answer, so the
    /// connection stays usable (default 64 KiB); a larger one closes the connection.
    pub drain_bytes: usize,
    /// Largest JSON answer read to price a per-token route (default 64 MiB); a larger one is
    /// not charged and answered `502`. Streamed answers are not held and have no limit.
    pub max_response_bytes: usize,
}

impl Default for PaidOptions {
    fn default() -> Self {
        Self {
            free_routes: Vec::new(),
            max_header_bytes: codec::DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: 1024 * 1024,
            drain_bytes: 64 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Shared state of the middleware.
pub struct PaidState<S, C, F, K> {
    /// The engine.
    pub engine: Engine<S, C, F, K>,
    /// Paid routes, first match wins.
    pub routes: Vec<PaidRoute>,
    patterns: Vec<RoutePattern>,
    /// Free routes, limits.
    pub options: PaidOptions,
    /// Chunked streams paused for a voucher (when a route is [`Pricing::Chunked`]).
    renewals: Option<Arc<Renewals>>,
}

impl<S, C, F, K> PaidState<S, C, F, K> {
    /// State for `routes` with default options: no free route, default limits.
    pub fn new(engine: Engine<S, C, F, K>, routes: Vec<PaidRoute>) -> Arc<Self> {
        Self::with_options(engine, routes, PaidOptions::default())
    }

    /// State for `routes` with `options`.
    pub fn with_options(
        engine: Engine<S, C, F, K>,
        routes: Vec<PaidRoute>,
        options: PaidOptions,
    ) -> Arc<Self> {
        let patterns = routes.iter().map(PaidRoute::pattern).collect();
        let renewals = routes
            .iter()
            .any(|r| matches!(r.pricing, Pricing::Chunked(_)))
            .then(|| Arc::new(Renewals::default()));
        Arc::new(Self {
            engine,
            routes,
            patterns,
            options,
            renewals,
        })
    }
}

fn header_value(s: String) -> HeaderValue {
    // base64 and decimal strings are always valid header values; the string's buffer becomes
    // the header's, with no copy.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A `402 Payment Required` carrying `PAYMENT-REQUIRED` (and the same JSON in the body).
pub fn payment_required(
    error: Option<&Rejection>,
    accepts: PaymentRequirements,
    resource: ResourceInfo,
) -> Response {
    let body = PaymentRequired {
        x402_version: X402_VERSION,
        error: error.map(|e| e.code.as_str().to_owned()),
        resource: Some(resource),
        accepts: vec![accepts],
        extensions: None,
    };
    let mut resp = (StatusCode::PAYMENT_REQUIRED, axum::Json(&body)).into_response();
    let h = resp.headers_mut();
    // A 402 is about this request's payment state (a corrective one carries the channel's
    // state): no cache may keep it or answer another request with it.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        HeaderName::from_static("payment-required"),
        header_value(codec::encode(&body)),
    );
    if let Some(e) = error {
        // The human message, for logs and people; clients act on the code.
        if let Ok(v) = HeaderValue::from_str(&e.message.replace(['\r', '\n'], " ")) {
            h.insert(HeaderName::from_static("x-paychan-error"), v);
        }
    }
    expose(h);
    resp
}

fn expose(h: &mut HeaderMap) {
    h.insert(
        HeaderName::from_static("access-control-expose-headers"),
        HeaderValue::from_static("PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-Paychan-Error"),
    );
}

/// Classifies an undecodable `PAYMENT-SIGNATURE` with the most specific code.
pub(crate) fn classify_decode_error(
    header: &str,
    max: usize,
    err: &codec::CodecError,
) -> Rejection {
    if let Ok(probe) = codec::decode_limited::<VersionProbe>(header, max)
        && probe.x402_version != X402_VERSION
    {
        return Rejection::new(
            ErrorCode::InvalidX402Version,
            format!(
                "x402Version {} is not supported; this server speaks x402 v2",
                probe.x402_version
            ),
        );
    }
    if let Ok(env) = codec::decode_limited::<PaymentPayload<serde_json::Value>>(header, max) {
        let code = malformed_payload_code(&env.payload, PayloadReceiver::Server);
        let detail = match serde_json::from_value::<BatchPayload>(env.payload) {
            Err(e) => e.to_string(),
            Ok(_) => err.to_string(),
        };
        return Rejection::new(code, format!("malformed payload: {detail}"));
    }
    Rejection::new(
        ErrorCode::InvalidPayload,
        format!("PAYMENT-SIGNATURE: {err}"),
    )
}

pub(crate) fn decline_response(
    d: Decline,
    offer: &BatchRequirements,
    resource: ResourceInfo,
    status: StatusCode,
) -> Response {
    let accepts = d.requirements.map_or_else(|| offer.to_generic(), |b| *b);
    let mut r = payment_required(Some(&d.rejection), accepts, resource);
    *r.status_mut() = status;
    r
}

/// A plain JSON error answer (not a payment matter).
pub(crate) fn plain_error(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": error, "message": message})),
    )
        .into_response()
}

/// Reads and drops what is left of an unread request body (up to `limit` bytes, for at most a
/// second), so that the connection can carry the next request; a larger or slower body closes it.
async fn drain(body: Body, limit: usize, mut resp: Response) -> Response {
    use http_body_util::BodyExt;
    let mut body = http_body_util::Limited::new(body, limit);
    let done = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        loop {
            match body.frame().await {
                None => return true,
                Some(Ok(_)) => {}
                Some(Err(_)) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    if !done {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// What the paid flow decided before the upstream.
enum Paid {
    /// Serve the request, then commit or abort the ticket.
    Serve(Box<paychan_engine::Ticket>),
    /// Answer at once (a 402, a completed refund).
    Answer(Response),
}

/// The gate in front of everything on the paid port (use with
/// `axum::middleware::from_fn_with_state`, or as [`crate::PaymentLayer`]): normalises the
/// request target ([`crate::route`]), routes it fail-closed, and runs the payment flow for paid
/// routes.
pub async fn paid_middleware<S, C, F, K>(
    State(st): State<Arc<PaidState<S, C, F, K>>>,
    req: Request,
    next: Next,
) -> Response
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    gate(&st, req, |r| next.run(r)).await
}

/// [`paid_middleware`] with the inner service as a function: `inner` runs at most once, on the
/// normalised request of a free route or of a paid request whose payment was accepted.
///
/// Each request runs in a `paid_request` span (target `paychan_server`, level info) that every
/// log line of the request carries: `method`, then as they become known the normalised `path`,
/// the paid `route`, the `channel` id, the `outcome` (`unpaid`, `declined`, `refunded`,
/// `committed`, `streaming`: charged as the stream goes, `aborted`), the x402 `code` of a
/// refusal, the `charge` (atomic units) and the response `status`; a debug line ends it. Never a
/// payment header, a signature or a key.
pub(crate) async fn gate<S, C, F, K, Fut>(
    st: &Arc<PaidState<S, C, F, K>>,
    req: Request,
    inner: impl FnOnce(Request) -> Fut,
) -> Response
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
    Fut: std::future::Future<Output = Response>,
{
    use tracing::{Instrument, field::Empty};
    let span = tracing::info_span!(target: "paychan_server", "paid_request", method = %req.method(),
        path = Empty, route = Empty, channel = Empty, outcome = Empty, code = Empty, charge = Empty,
        status = Empty);
    let resp = gate_inner(st, req, inner).instrument(span.clone()).await;
    span.record("status", resp.status().as_u16());
    span.in_scope(|| tracing::debug!(target: "paychan_server", "request done"));
    resp
}

/// What became of a served paid request, from its answer (for the request span).
fn served_outcome(resp: &Response) -> &'static str {
    let h = resp.headers();
    if h.contains_key("payment-response") {
        "committed"
    } else if h
        .get(header::TRAILER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"payment-response"))
    {
        "streaming"
    } else if h.contains_key("payment-required") {
        "declined"
    } else {
        "aborted"
    }
}

async fn gate_inner<S, C, F, K, Fut>(
    st: &Arc<PaidState<S, C, F, K>>,
    req: Request,
    inner: impl FnOnce(Request) -> Fut,
) -> Response
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
    Fut: std::future::Future<Output = Response>,
{
    let (mut parts, body) = req.into_parts();
    let drain_limit = st.options.drain_bytes;
    let target = match route::normalize(&parts.method, parts.version, &parts.uri) {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(target: "paychan_server", reason = %e, "request target refused");
            let r = plain_error(
                StatusCode::BAD_REQUEST,
                "bad_request_target",
                &e.to_string(),
            );
            return drain(body, drain_limit, r).await;
        }
    };
    // From here on, everyone (routing, the payment flow, the upstream) sees the one normalised
    // target.
    match target.parse::<http::Uri>() {
        Ok(u) => parts.uri = u,
        Err(_) => {
            let r = plain_error(
                StatusCode::BAD_REQUEST,
                "bad_request_target",
                "unparsable target",
            );
            return drain(body, drain_limit, r).await;
        }
    }
    if let Some(renewals) = &st.renewals
        && let Some(id) = parts.uri.path().strip_prefix(renew::VOUCHER_PATH)
    {
        let r = if parts.method == Method::POST {
            renew::post(st, renewals, id, &parts.headers).await
        } else {
            let mut r = plain_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "vouchers are posted",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            r
        };
        return drain(body, drain_limit, r).await;
    }
    tracing::Span::current().record("path", parts.uri.path());
    let decision = route::decide(
        st.patterns.iter(),
        &st.options.free_routes,
        &parts.method,
        parts.uri.path(),
    );
    let route = match decision {
        Decision::Paid(i) => {
            tracing::Span::current().record("route", st.routes[i].path.as_str());
            &st.routes[i]
        }
        Decision::Free => {
            return match limit_body(&parts.headers, body, st.options.max_body_bytes) {
                Ok(body) => inner(Request::from_parts(parts, body)).await,
                Err(r) => r,
            };
        }
        Decision::WrongMethod(allowed) => {
            let allow = allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let mut r = plain_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &format!("this paid route takes {allow}"),
            );
            if let Ok(v) = HeaderValue::from_str(&allow) {
                r.headers_mut().insert(header::ALLOW, v);
            }
            return drain(body, drain_limit, r).await;
        }
        Decision::NotFound => {
            let r = plain_error(StatusCode::NOT_FOUND, "not_found", "no such route");
            return drain(body, drain_limit, r).await;
        }
    };
    let body = match limit_body(&parts.headers, body, st.options.max_body_bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let resource = ResourceInfo {
        url: parts.uri.to_string(),
        description: route.description.clone(),
        mime_type: route.mime_type.clone(),
    };
    let ticket = match pay(st, route, &parts.headers, resource.clone()).await {
        Paid::Serve(t) => t,
        Paid::Answer(r) => return drain(body, drain_limit, r).await,
    };
    // The payment is ours to check; the upstream never sees it.
    parts.headers.remove(codec::PAYMENT_SIGNATURE);
    parts.headers.remove(codec::X_PAYMENT);
    let (body, terms) = match &route.pricing {
        Pricing::Fixed | Pricing::Chunked(_) => (body, RequestTerms::default()),
        Pricing::PerToken(_) => match read_request(&mut parts.headers, body).await {
            Ok(b) => b,
            Err(r) => {
                st.engine.abort(ticket);
                tracing::Span::current().record("outcome", "aborted");
                return r;
            }
        },
    };
    let upstream_started = std::time::Instant::now();
    let resp = inner(Request::from_parts(parts, body)).await;
    st.engine
        .metrics()
        .upstream
        .observe(upstream_started.elapsed());
    let resp = settle_response(st, route, resource, ticket, terms, resp).await;
    tracing::Span::current().record("outcome", served_outcome(&resp));
    resp
}

/// A per-token route's request body, read whole (it is already under the body cap): its terms,
/// and the body to send on — asking a streamed chat or completions request's upstream for
/// usage in the stream.
#[allow(clippy::result_large_err)]
async fn read_request(
    headers: &mut HeaderMap,
    body: Body,
) -> Result<(Body, RequestTerms), Response> {
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        let mut r = plain_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is over the limit or could not be read",
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Err(r);
    };
    let (terms, rewritten) = request_terms(&bytes);
    let body = match rewritten {
        Some(b) => {
            headers.remove(header::CONTENT_LENGTH);
            Body::from(b)
        }
        None => Body::from(bytes),
    };
    Ok((body, terms))
}

/// `502` for an upstream answer that cannot be priced (nothing is charged for it).
fn bad_upstream(message: &str) -> Response {
    plain_error(StatusCode::BAD_GATEWAY, "bad_upstream_answer", message)
}

fn is_event_stream(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// The request body under the size cap: `413` when its declared length is above it, else the
/// body cut off at the cap.
#[allow(clippy::result_large_err)]
fn limit_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Body, Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        let mut r = plain_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("request bodies are limited to {max} bytes"),
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Err(r);
    }
    Ok(Body::new(http_body_util::Limited::new(body, max)))
}

/// The payment flow up to the upstream: a 402 without payment, else the engine's decision.
async fn pay<S, C, F, K>(
    st: &PaidState<S, C, F, K>,
    route: &PaidRoute,
    headers: &HeaderMap,
    resource: ResourceInfo,
) -> Paid
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    let offer = &route.offer;
    let span = tracing::Span::current();
    // A refusal before the engine: counted and logged like the engine's own.
    let refuse = |r: Rejection, resource| {
        st.engine.metrics().reject(&r.code);
        span.record("outcome", "declined");
        span.record("code", r.code.as_str());
        Paid::Answer(payment_required(Some(&r), offer.to_generic(), resource))
    };
    let Some(raw) = headers.get(codec::PAYMENT_SIGNATURE) else {
        if headers.contains_key(codec::X_PAYMENT) {
            let r = Rejection::new(
                ErrorCode::InvalidX402Version,
                "X-PAYMENT is x402 v1; batch-settlement needs x402 v2 (PAYMENT-SIGNATURE)",
            );
            return refuse(r, resource);
        }
        paychan_engine::Metrics::inc(&st.engine.metrics().unpaid);
        span.record("outcome", "unpaid");
        return Paid::Answer(payment_required(None, offer.to_generic(), resource));
    };
    let Ok(raw) = raw.to_str() else {
        let r = Rejection::new(ErrorCode::InvalidPayload, "PAYMENT-SIGNATURE is not ASCII");
        return refuse(r, resource);
    };
    let max = st.options.max_header_bytes;
    let payload: PaymentPayload<BatchPayload> = match codec::decode_limited(raw, max) {
        Ok(p) => p,
        Err(e) => return refuse(classify_decode_error(raw, max, &e), resource),
    };
    if let Some((_, v)) = payload.payload.channel_and_voucher() {
        span.record("channel", tracing::field::display(v.channel_id));
    }
    match st.engine.begin(&payload, offer).await {
        Ok(Begin::Serve(t)) => Paid::Serve(t),
        Ok(Begin::Done(settlement)) => {
            span.record("outcome", "refunded");
            let body = serde_json::json!({"message": "Refund acknowledged", "transaction": settlement.transaction});
            let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
            resp.headers_mut().insert(
                HeaderName::from_static("payment-response"),
                header_value(codec::encode(&settlement)),
            );
            expose(resp.headers_mut());
            Paid::Answer(resp)
        }
        Err(d) => {
            span.record("outcome", "declined");
            Paid::Answer(decline_response(
                d,
                offer,
                resource,
                StatusCode::PAYMENT_REQUIRED,
            ))
        }
    }
}

/// After the upstream: commit its price (or abort on failure) and attach `PAYMENT-RESPONSE`.
async fn settle_response<S, C, F, K>(
    st: &PaidState<S, C, F, K>,
    route: &PaidRoute,
    resource: ResourceInfo,
    ticket: Box<paychan_engine::Ticket>,
    terms: RequestTerms,
    mut resp: Response,
) -> Response
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    if resp.status().as_u16() >= 400 {
        st.engine.abort(ticket);
        return resp;
    }
    if let Pricing::Chunked(chunks) = &route.pricing
        && is_event_stream(resp.headers())
        && let Some(renewals) = &st.renewals
    {
        // A chunked stream: the upstream's own price header does not apply (chunks do).
        resp.headers_mut().remove(CHARGE_HEADER);
        let (mut parts, body) = resp.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.insert(
            header::TRAILER,
            HeaderValue::from_static("payment-response"),
        );
        expose(&mut parts.headers);
        let ctx = renew::Ctx {
            engine: st.engine.clone(),
            offer: route.offer.clone(),
            terms: *chunks,
            renewals: renewals.clone(),
        };
        return Response::from_parts(parts, renew::stream(body, ctx, ticket));
    }
    let max = ticket.max_charge();
    let asked = resp.extensions().get::<Charge>().map(|c| c.0).or_else(|| {
        resp.headers()
            .get(CHARGE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    });
    resp.headers_mut().remove(CHARGE_HEADER);
    let offer = &route.offer;
    let price = match (asked, &route.pricing) {
        (Some(p), _) if p > max => {
            tracing::warn!(target: "paychan_server", asked = %p, max = %max, "price above the route maximum; charging the maximum");
            max
        }
        (Some(p), _) => p,
        // A chunked route's answer that is not a stream costs the chunk its voucher paid.
        (None, Pricing::Fixed | Pricing::Chunked(_)) => max,
        (None, Pricing::PerToken(prices)) => {
            if is_event_stream(resp.headers()) {
                let (mut parts, body) = resp.into_parts();
                parts.headers.remove(header::CONTENT_LENGTH);
                parts.headers.insert(
                    header::TRAILER,
                    HeaderValue::from_static("payment-response"),
                );
                expose(&mut parts.headers);
                let terms = Terms {
                    prices: prices.clone(),
                    request: terms,
                    max,
                };
                let body = Metered::new(body, st.engine.clone(), ticket, terms);
                return Response::from_parts(parts, Body::new(body));
            }
            let (parts, body) = resp.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, st.options.max_response_bytes).await else {
                st.engine.abort(ticket);
                tracing::warn!(target: "paychan_server", "the upstream's answer was cut off or over max_response_bytes; not charged");
                return bad_upstream("the upstream's answer was cut off or too large");
            };
            let Ok(usage) = usage_of(&bytes) else {
                st.engine.abort(ticket);
                tracing::warn!(target: "paychan_server", "the upstream's answer is not JSON; not charged");
                return bad_upstream("the upstream's answer is not JSON");
            };
            resp = Response::from_parts(parts, Body::from(bytes));
            prices.charge(usage, &terms, max)
        }
    };
    match st.engine.commit(ticket, price).await {
        Ok(settlement) => {
            resp.headers_mut().insert(
                HeaderName::from_static("payment-response"),
                header_value(codec::encode(&settlement)),
            );
            expose(resp.headers_mut());
            resp
        }
        // The work was done but the charge could not be made durable: withhold the result rather
        // than hand it out unacknowledged; the client may retry the same voucher.
        Err(d) => decline_response(d, offer, resource, StatusCode::SERVICE_UNAVAILABLE),
    }
}

/// A response body's bytes, for tests and the demo upstream.
pub async fn body_bytes(b: Body, limit: usize) -> Result<bytes::Bytes, axum::Error> {
    axum::body::to_bytes(b, limit).await
}
