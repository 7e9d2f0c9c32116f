//! A demo inference upstream: an OpenAI-style chat completion endpoint that answers with an echo
//! and prices each request by its tokens (through [`crate::paid::CHARGE_HEADER`]). For the dev
//! stack and tests; not a model.

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;

/// Demo pricing.
#[derive(Debug, Clone, Copy)]
pub struct DemoConfig {
    /// Atomic units per token (prompt + completion, a token being 4 bytes of text).
    pub price_per_token: u128,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            price_per_token: 10,
        }
    }
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: String,
}

#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    model: Option<String>,
}

fn tokens(s: &str) -> u64 {
    (s.len() as u64).div_ceil(4).max(1)
}

async fn chat(
    State(cfg): State<DemoConfig>,
    body: Result<Json<ChatRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(req)) = body else {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "expected an OpenAI-style chat request"})),
        )
            .into_response();
    };
    let prompt: String = req
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let answer = format!(
        "echo: {}",
        req.messages.last().map_or("", |m| m.content.as_str())
    );
    let (pt, ct) = (tokens(&prompt), tokens(&answer));
    let charge = u128::from(pt + ct).saturating_mul(cfg.price_per_token);
    let body = serde_json::json!({
        "id": "chatcmpl-paychan-demo",
        "object": "chat.completion",
        "model": req.model.unwrap_or_else(|| "paychan-demo".into()),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
    });
    let mut resp = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&charge.to_string()) {
        resp.headers_mut()
            .insert(HeaderName::from_static(crate::paid::CHARGE_HEADER), v);
    }
    resp
}

async fn models() -> Json<serde_json::Value> {
    Json(serde_json::json!({"object": "list", "data": [{"id": "paychan-demo", "object": "model"}]}))
}

async fn fail() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"error": "the demo upstream failed on purpose"})),
    )
        .into_response()
}

/// The demo upstream's routes: `POST /v1/chat/completions`, `GET /v1/models`, and
/// `POST /v1/fail` (always 503, to see that failed requests are not charged).
pub fn router(cfg: DemoConfig) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/v1/fail", post(fail))
        .with_state(cfg)
}
