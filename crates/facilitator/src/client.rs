//! [`HttpFacilitator`]: a client of any x402 facilitator's HTTP API, usable as the core's
//! [`PaymentFacilitator`] port.
//!
//! Every request has a deadline (connect and whole-request timeouts) and a bounded answer size. A
//! non-2xx answer that still carries a verdict (`isValid` / `success`, as facilitators send for
//! refused payments) is returned as that verdict; any other failure is an [`Error`] naming the
//! operation, the endpoint and what went wrong.

use std::time::Duration;

use paychan_core::ports::{PaymentFacilitator, SourceError};
use paychan_core::{
    batch::BatchPayload,
    x402::{
        FacilitatorRequest, PaymentPayload, PaymentRequirements, SettlementResponse,
        SupportedResponse, VerifyResponse,
    },
};
use paychan_service::BearerToken;
use serde::de::DeserializeOwned;

use crate::{Error, Result, TARGET};

/// How to reach a remote facilitator.
#[derive(Debug, Clone)]
pub struct HttpFacilitatorConfig {
    /// Base URL (`https://facilitator.example.com`); `/verify`, `/settle` and `/supported` are
    /// appended.
    pub url: String,
    /// Deadline of `/verify` and `/supported` requests (default 15 s).
    pub timeout: Duration,
    /// Deadline of `/settle` requests, which wait for the transaction (default 120 s).
    pub settle_timeout: Duration,
    /// TCP connect deadline (default 5 s).
    pub connect_timeout: Duration,
    /// Largest answer read (default 1 MiB).
    pub max_response_bytes: usize,
    /// The bearer token sent as `Authorization: Bearer …` on every request (paychan's
    /// facilitator requires it on `/verify` and `/settle`); `None` sends none.
    pub token: Option<BearerToken>,
}

impl HttpFacilitatorConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout: Duration::from_secs(15),
            settle_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(5),
            max_response_bytes: 1024 * 1024,
            token: None,
        }
    }
}

/// A remote x402 facilitator over HTTP.
#[derive(Debug, Clone)]
pub struct HttpFacilitator {
    client: reqwest::Client,
    base: String,
    shown: String,
    config: HttpFacilitatorConfig,
}

/// `scheme://host[:port]` of a URL, for errors and logs (paths and queries may carry API keys).
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    format!("{scheme}://{host}")
}

fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None if s.is_empty() => "<empty>".into(),
        None => s.to_owned(),
    }
}

impl HttpFacilitator {
    /// A client of the facilitator at `url`, with default timeouts.
    pub fn new(url: impl Into<String>) -> Result<Self> {
        Self::with_config(HttpFacilitatorConfig::new(url))
    }

    /// A client of the facilitator at `url` sending `token` (when given), with default timeouts.
    pub fn with_token(url: impl Into<String>, token: Option<BearerToken>) -> Result<Self> {
        Self::with_config(HttpFacilitatorConfig {
            token,
            ..HttpFacilitatorConfig::new(url)
        })
    }

    /// A client with explicit settings.
    pub fn with_config(config: HttpFacilitatorConfig) -> Result<Self> {
        let base = config.url.trim().trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config(format!(
                "facilitator URL {:?} is not an http(s) URL",
                redact(&base)
            )));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            shown: redact(&base),
            base,
            config,
        })
    }

    /// `POST /verify`.
    pub async fn verify(
        &self,
        payload: &PaymentPayload<BatchPayload>,
        requirements: &PaymentRequirements,
    ) -> Result<VerifyResponse> {
        self.post(
            "verify",
            "isValid",
            payload,
            requirements,
            self.config.timeout,
        )
        .await
    }

    /// `POST /settle`.
    pub async fn settle(
        &self,
        payload: &PaymentPayload<BatchPayload>,
        requirements: &PaymentRequirements,
    ) -> Result<SettlementResponse> {
        self.post(
            "settle",
            "success",
            payload,
            requirements,
            self.config.settle_timeout,
        )
        .await
    }

    /// `GET /supported`.
    pub async fn supported(&self) -> Result<SupportedResponse> {
        const OP: &str = "supported";
        let req = self
            .client
            .get(format!("{}/{OP}", self.base))
            .timeout(self.config.timeout);
        let (status, body) = self.send(OP, req).await?;
        if !status.is_success() {
            return Err(self.status(OP, status, &body));
        }
        self.decode(OP, &body)
    }

    async fn post<T: DeserializeOwned>(
        &self,
        op: &'static str,
        verdict: &str,
        payload: &PaymentPayload<BatchPayload>,
        requirements: &PaymentRequirements,
        timeout: Duration,
    ) -> Result<T> {
        let body = serde_json::to_vec(&FacilitatorRequest {
            x402_version: payload.x402_version,
            payment_payload: payload.clone(),
            payment_requirements: requirements.clone(),
        })
        .map_err(|e| Error::Decode {
            op,
            url: self.shown.clone(),
            message: format!("request not serializable: {e}"),
        })?;
        let req = self
            .client
            .post(format!("{}/{op}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(body);
        let (status, body) = self.send(op, req).await?;
        if status.is_success() {
            return self.decode(op, &body);
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            tracing::warn!(target: TARGET, op, url = %self.shown, with_token = self.config.token.is_some(), "the facilitator refused our credentials");
        }
        // A refused payment may come with an error status and still a verdict.
        let has_verdict = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .is_some_and(|v| v.get(verdict).is_some_and(serde_json::Value::is_boolean));
        if has_verdict {
            tracing::debug!(target: TARGET, op, %status, "facilitator answered a verdict with an error status");
            return self.decode(op, &body);
        }
        Err(self.status(op, status, &body))
    }

    async fn send(
        &self,
        op: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Vec<u8>)> {
        let timeout = if op == "settle" {
            self.config.settle_timeout
        } else {
            self.config.timeout
        };
        let err = |e: reqwest::Error| {
            if e.is_timeout() {
                Error::Timeout {
                    op,
                    url: self.shown.clone(),
                    after: timeout,
                }
            } else {
                Error::Transport {
                    op,
                    url: self.shown.clone(),
                    message: e.without_url().to_string(),
                }
            }
        };
        let req = match &self.config.token {
            Some(t) => req.header(reqwest::header::AUTHORIZATION, t.header_value()),
            None => req,
        };
        let mut resp = req.send().await.map_err(err)?;
        let status = resp.status();
        let max = self.config.max_response_bytes;
        let too_big = || Error::Decode {
            op,
            url: self.shown.clone(),
            message: format!("answer larger than {max} bytes"),
        };
        if resp
            .content_length()
            .is_some_and(|l| l > u64::try_from(max).unwrap_or(u64::MAX))
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(err)? {
            if body.len() + chunk.len() > max {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }

    fn decode<T: DeserializeOwned>(&self, op: &'static str, body: &[u8]) -> Result<T> {
        serde_json::from_slice(body).map_err(|e| Error::Decode {
            op,
            url: self.shown.clone(),
            message: format!("{e} (answer: {})", excerpt(body)),
        })
    }

    fn status(&self, op: &'static str, status: reqwest::StatusCode, body: &[u8]) -> Error {
        Error::Status {
            op,
            url: self.shown.clone(),
            status: status.as_u16(),
            body: excerpt(body),
        }
    }
}

impl PaymentFacilitator for HttpFacilitator {
    async fn verify(
        &self,
        payload: &PaymentPayload<BatchPayload>,
        requirements: &PaymentRequirements,
    ) -> Result<VerifyResponse, SourceError> {
        HttpFacilitator::verify(self, payload, requirements)
            .await
            .map_err(|e| SourceError::new("facilitator verify", e))
    }

    async fn settle(
        &self,
        payload: &PaymentPayload<BatchPayload>,
        requirements: &PaymentRequirements,
    ) -> Result<SettlementResponse, SourceError> {
        HttpFacilitator::settle(self, payload, requirements)
            .await
            .map_err(|e| SourceError::new("facilitator settle", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_and_checked() {
        assert_eq!(
            redact("https://user:pw@f.example.com/v1?key=SECRET"),
            "https://f.example.com"
        );
        assert!(HttpFacilitator::new("ftp://x").is_err());
        let f = HttpFacilitator::new("http://127.0.0.1:1/").unwrap();
        assert_eq!(f.base, "http://127.0.0.1:1");
    }
}
