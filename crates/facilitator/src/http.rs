//! The facilitator HTTP API: `POST /verify`, `POST /settle` (body `{x402Version, paymentPayload,
//! paymentRequirements}`), `GET /supported`.
//!
//! | request | answer |
//! | --- | --- |
//! | well-formed, payment valid / settled | `200`, `isValid: true` / `success: true` |
//! | well-formed, payment refused (any verification rule, a malformed *scheme* payload, another x402 version) | `200`, `isValid: false` / `success: false` with the code and `invalidMessage` / `errorMessage`, as the reference facilitator answers |
//! | body not JSON, or not `{x402Version, paymentPayload, paymentRequirements}` of x402 v2 shape | `400`, `{"error": "invalid_request", "message": …}` naming the problem |
//! | body above [`MAX_BODY_BYTES`] | `413`, `{"error": "payload_too_large", …}` |
//! | `/verify` or `/settle` without `Authorization: Bearer <token>` ([`router_with`], [`serve_with`]) | `401` + `WWW-Authenticate: Bearer`; the body is not read and nothing is done |
//! | the listener saturated ([`serve_with`]: connection or in-flight cap) | `503` + `Retry-After` |
//!
//! `/supported` is always open: it is public information that reference clients and servers
//! fetch before they hold any credential. `/verify` and `/settle` are not: `/settle` spends the
//! relayer's gas and may sign with the receiver-authorizer key.

use std::future::Future;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use paychan_core::{
    ErrorCode, Network, Rejection,
    x402::{PaymentPayload, PaymentRequirements, SettlementResponse, X402_VERSION},
};
use paychan_service::{BearerToken, Limits};
use paychan_store::Store;
use serde_json::Value;

use crate::{Facilitator, TARGET, facilitator::invalid};

/// Largest request body accepted (a claim of a few hundred channels fits).
pub const MAX_BODY_BYTES: usize = 512 * 1024;

/// The facilitator's router **without authentication**: every route is open. For embedding
/// behind another authenticating layer, or in tests; a listener reachable by others should use
/// [`router_with`] / [`serve_with`].
pub fn router<S: Store>(facilitator: Facilitator<S>) -> Router {
    paid_routes(facilitator.clone()).merge(open_routes(facilitator))
}

/// The facilitator's router with `/verify` and `/settle` behind `token` (`401` without it, before
/// the body is read); `/supported` stays open.
pub fn router_with<S: Store>(facilitator: Facilitator<S>, token: BearerToken) -> Router {
    paychan_service::auth::require_bearer(paid_routes(facilitator.clone()), token)
        .merge(open_routes(facilitator))
}

fn paid_routes<S: Store>(facilitator: Facilitator<S>) -> Router {
    Router::new()
        .route("/verify", post(verify::<S>))
        .route("/settle", post(settle::<S>))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(facilitator)
}

fn open_routes<S: Store>(facilitator: Facilitator<S>) -> Router {
    Router::new()
        .route("/supported", get(supported::<S>))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(facilitator)
}

/// How [`serve_with`] serves the API.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The bearer token `/verify` and `/settle` require (typically
    /// [`BearerToken::load_or_create`] on an owner-only file the servers are given too).
    pub token: BearerToken,
    /// Listener limits: header-read and idle timeouts, connection and in-flight caps (defaults of
    /// [`Limits::default`]).
    pub limits: Limits,
}

impl HttpOptions {
    /// `token` with the default listener limits.
    pub fn new(token: BearerToken) -> Self {
        Self {
            token,
            limits: Limits::default(),
        }
    }
}

/// Serves the facilitator on `listener` until `shutdown` resolves, then finishes in-flight
/// requests: `/verify` and `/settle` behind `options.token`, through paychan's hardened listener
/// within `options.limits`.
pub async fn serve_with<S: Store>(
    listener: tokio::net::TcpListener,
    facilitator: Facilitator<S>,
    options: HttpOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(target: TARGET, %addr, token_file = ?options.token.path(), "facilitator HTTP API listening (/verify and /settle need the bearer token)");
    }
    paychan_service::serve(
        listener,
        router_with(facilitator, options.token),
        options.limits,
        shutdown,
    )
    .await
}

/// Serves the facilitator **without authentication** on `listener` (through the hardened
/// listener, default limits) until `shutdown` resolves. Anyone who reaches the port can make the
/// relayer spend gas and, when the facilitator holds the key, have it sign claims and refunds:
/// use [`serve_with`] unless the port is reachable only by trusted callers.
pub async fn serve<S: Store>(
    listener: tokio::net::TcpListener,
    facilitator: Facilitator<S>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::warn!(target: TARGET, %addr, "facilitator HTTP API listening WITHOUT authentication (use serve_with and a bearer token)");
    }
    paychan_service::serve(listener, router(facilitator), Limits::default(), shutdown).await
}

/// A request refused before it reached the facilitator.
struct BadRequest {
    status: StatusCode,
    error: &'static str,
    message: String,
}

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        let BadRequest {
            status,
            error,
            message,
        } = self;
        tracing::info!(target: TARGET, %status, error, %message, "request refused");
        (
            status,
            Json(serde_json::json!({ "error": error, "message": message })),
        )
            .into_response()
    }
}

/// A request that parsed.
enum Parsed {
    /// x402 v2: the payload (scheme part still JSON) and the requirements.
    V2(Box<PaymentPayload<Value>>, Box<PaymentRequirements>),
    /// Another version: refused with `invalid_x402_version`; the requirements' network if
    /// readable.
    OtherVersion(u64, Option<Network>),
}

fn parse(body: Result<Bytes, BytesRejection>) -> Result<Parsed, BadRequest> {
    let body = body.map_err(|r| {
        let status = r.status();
        BadRequest {
            status,
            error: if status == StatusCode::PAYLOAD_TOO_LARGE {
                "payload_too_large"
            } else {
                "invalid_request"
            },
            message: r.body_text(),
        }
    })?;
    let bad = |message: String| BadRequest {
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        message,
    };
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
    let Value::Object(mut m) = v else {
        return Err(bad(
            "body must be a JSON object {x402Version, paymentPayload, paymentRequirements}".into(),
        ));
    };
    let version = m
        .get("x402Version")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("x402Version is missing or not an integer".into()))?;
    let payload = m
        .remove("paymentPayload")
        .filter(Value::is_object)
        .ok_or_else(|| bad("paymentPayload is missing or not an object".into()))?;
    let requirements = m
        .remove("paymentRequirements")
        .filter(Value::is_object)
        .ok_or_else(|| bad("paymentRequirements is missing or not an object".into()))?;
    let payload_version = payload.get("x402Version").and_then(Value::as_u64);
    if version != u64::from(X402_VERSION) || payload_version != Some(u64::from(X402_VERSION)) {
        let network = requirements
            .get("network")
            .and_then(Value::as_str)
            .and_then(|n| n.parse().ok());
        return Ok(Parsed::OtherVersion(
            if version != u64::from(X402_VERSION) {
                version
            } else {
                payload_version.unwrap_or(0)
            },
            network,
        ));
    }
    let requirements: PaymentRequirements = serde_json::from_value(requirements)
        .map_err(|e| bad(format!("paymentRequirements: {e}")))?;
    let payload: PaymentPayload<Value> =
        serde_json::from_value(payload).map_err(|e| bad(format!("paymentPayload: {e}")))?;
    Ok(Parsed::V2(Box::new(payload), Box::new(requirements)))
}

fn version_rejection(v: u64) -> Rejection {
    Rejection::new(
        ErrorCode::InvalidX402Version,
        format!("x402Version {v} is not supported (only {X402_VERSION})"),
    )
}

async fn verify<S: Store>(
    State(f): State<Facilitator<S>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match parse(body) {
        Err(r) => r.into_response(),
        Ok(Parsed::OtherVersion(v, _)) => Json(invalid(version_rejection(v), None)).into_response(),
        Ok(Parsed::V2(p, req)) => Json(f.verify_untyped(&p, &req).await).into_response(),
    }
}

async fn settle<S: Store>(
    State(f): State<Facilitator<S>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match parse(body) {
        Err(r) => r.into_response(),
        Ok(Parsed::OtherVersion(v, network)) => {
            let r = version_rejection(v);
            Json(SettlementResponse {
                success: false,
                error_reason: Some(r.code),
                error_message: Some(r.message.into_owned()),
                payer: None,
                transaction: String::new(),
                network: network.unwrap_or_else(|| f.network().clone()),
                amount: None,
                extra: None,
            })
            .into_response()
        }
        Ok(Parsed::V2(p, req)) => Json(f.settle_untyped(&p, &req).await).into_response(),
    }
}

async fn supported<S: Store>(State(f): State<Facilitator<S>>) -> Response {
    Json(f.supported()).into_response()
}
