//! The x402 payment middleware: turns a route into a paid route.
//!
//! Without `PAYMENT-SIGNATURE` a paid route answers `402` with `PAYMENT-REQUIRED` (the route's
//! offer). With it: decode (bounded) → [`Engine::begin`] → run the inner service → commit the
//! price on success (status < 400) or abort on failure → answer with `PAYMENT-RESPONSE`. The
//! charge is durable before the response carrying `PAYMENT-RESPONSE` is returned.
//!
//! The price of a request is its route's maximum unless the inner service says less, either with
//! a [`Charge`] response extension (in-process handlers) or an `x-paychan-charge` response header
//! (upstream services behind the proxy; removed before the response leaves). A price above the
//! maximum is capped at the maximum. The price must be known when the response head is ready
//! (streamed bodies are charged as of their head).

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use paychan_core::{
    ErrorCode, Rejection,
    batch::{BatchPayload, BatchRequirements},
    codec,
    x402::{
        PaymentPayload, PaymentRequired, PaymentRequirements, ResourceInfo, VersionProbe,
        X402_VERSION,
    },
};
use paychan_engine::{Begin, Clock, Decline, Engine, OnchainSource, PaymentFacilitator};
use paychan_store::Store;

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
}

impl PaidRoute {
    fn matches(&self, method: &Method, path: &str) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        match self.path.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == self.path,
        }
    }
}

/// Shared state of the middleware.
pub struct PaidState<S, C, F, K> {
    /// The engine.
    pub engine: Engine<S, C, F, K>,
    /// Paid routes, first match wins; unmatched routes are free.
    pub routes: Vec<PaidRoute>,
    /// Largest accepted `PAYMENT-SIGNATURE`, bytes.
    pub max_header_bytes: usize,
}

impl<S, C, F, K> PaidState<S, C, F, K> {
    /// State for `routes` with the default header limit.
    pub fn new(engine: Engine<S, C, F, K>, routes: Vec<PaidRoute>) -> Arc<Self> {
        Arc::new(Self {
            engine,
            routes,
            max_header_bytes: codec::DEFAULT_MAX_HEADER_BYTES,
        })
    }
}

fn header_value(s: &str) -> HeaderValue {
    // base64 and decimal strings are always valid header values.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
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
    h.insert(
        HeaderName::from_static("payment-required"),
        header_value(&codec::encode(&body)),
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
fn classify_decode_error(header: &str, max: usize, err: &codec::CodecError) -> Rejection {
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
        let code = match env.payload.get("type").and_then(serde_json::Value::as_str) {
            Some("voucher") => ErrorCode::VoucherPayload,
            Some("deposit") => ErrorCode::DepositPayload,
            Some("refund") => ErrorCode::RefundPayload,
            _ => ErrorCode::PayloadType,
        };
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

fn decline_response(
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

/// The middleware function (use with `axum::middleware::from_fn_with_state`).
pub async fn paid_middleware<S, C, F, K>(
    State(st): State<Arc<PaidState<S, C, F, K>>>,
    mut req: Request,
    next: Next,
) -> Response
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    let Some(route) = st
        .routes
        .iter()
        .find(|r| r.matches(req.method(), req.uri().path()))
    else {
        return next.run(req).await;
    };
    let offer = &route.offer;
    let resource = ResourceInfo {
        url: req.uri().to_string(),
        description: route.description.clone(),
        mime_type: route.mime_type.clone(),
    };
    let Some(raw) = req.headers().get(codec::PAYMENT_SIGNATURE) else {
        if req.headers().contains_key(codec::X_PAYMENT) {
            let r = Rejection::new(
                ErrorCode::InvalidX402Version,
                "X-PAYMENT is x402 v1; batch-settlement needs x402 v2 (PAYMENT-SIGNATURE)",
            );
            return payment_required(Some(&r), offer.to_generic(), resource);
        }
        return payment_required(None, offer.to_generic(), resource);
    };
    let raw = match raw.to_str() {
        Ok(s) => s.to_owned(),
        Err(_) => {
            let r = Rejection::new(ErrorCode::InvalidPayload, "PAYMENT-SIGNATURE is not ASCII");
            return payment_required(Some(&r), offer.to_generic(), resource);
        }
    };
    let payload: PaymentPayload<BatchPayload> =
        match codec::decode_limited(&raw, st.max_header_bytes) {
            Ok(p) => p,
            Err(e) => {
                let r = classify_decode_error(&raw, st.max_header_bytes, &e);
                return payment_required(Some(&r), offer.to_generic(), resource);
            }
        };
    let ticket = match st.engine.begin(&payload, offer).await {
        Ok(Begin::Serve(t)) => t,
        Ok(Begin::Done(settlement)) => {
            let body = serde_json::json!({"message": "Refund acknowledged", "transaction": settlement.transaction});
            let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
            resp.headers_mut().insert(
                HeaderName::from_static("payment-response"),
                header_value(&codec::encode(&settlement)),
            );
            expose(resp.headers_mut());
            return resp;
        }
        Err(d) => return decline_response(d, offer, resource, StatusCode::PAYMENT_REQUIRED),
    };
    // The payment is ours to check; the upstream never sees it.
    req.headers_mut().remove(codec::PAYMENT_SIGNATURE);
    let mut resp = next.run(req).await;
    if resp.status().as_u16() >= 400 {
        st.engine.abort(ticket);
        return resp;
    }
    let max = ticket.max_charge();
    let asked = resp.extensions().get::<Charge>().map(|c| c.0).or_else(|| {
        resp.headers()
            .get(CHARGE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    });
    resp.headers_mut().remove(CHARGE_HEADER);
    let price = match asked {
        Some(p) if p > max => {
            tracing::warn!(target: "paychan_server", asked = %p, max = %max, "price above the route maximum; charging the maximum");
            max
        }
        Some(p) => p,
        None => max,
    };
    match st.engine.commit(ticket, price).await {
        Ok(settlement) => {
            resp.headers_mut().insert(
                HeaderName::from_static("payment-response"),
                header_value(&codec::encode(&settlement)),
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
