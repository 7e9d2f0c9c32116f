//! One JSON-RPC endpoint: a timeout on every call, retries with exponential backoff on transport
//! errors (never on reverts or other definite answers), and errors that name the call.

use std::{future::Future, time::Duration};

use alloy::{
    primitives::Bytes,
    providers::RootProvider,
    rpc::json_rpc::ErrorPayload,
    sol_types::{Revert, SolError, SolInterface},
    transports::{RpcError, TransportErrorKind},
};
use paychan_bindings::{BatchSettlement, DevStablecoin, ERC3009DepositCollector};

use crate::{ChainConfig, Error, Result, config::RetryPolicy, error::RpcErr};

/// Tracing target of this crate.
pub(crate) const TARGET: &str = "paychan::chain";

/// A provider with timeouts and retries.
#[derive(Clone, Debug)]
pub(crate) struct Rpc {
    provider: RootProvider,
    timeout: Duration,
    retry: RetryPolicy,
    url: String,
}

enum Classified {
    Retry(Error),
    Final(Error),
}

impl Rpc {
    pub(crate) fn connect(cfg: &ChainConfig) -> Result<Self> {
        let url = cfg
            .rpc_url
            .trim()
            .parse()
            .map_err(|e| Error::Config(format!("rpc_url is not a URL: {e}")))?;
        Ok(Self {
            provider: RootProvider::new_http(url),
            timeout: cfg.rpc_timeout,
            retry: cfg.retry,
            url: redact_url(&cfg.rpc_url),
        })
    }

    /// The endpoint without path, query or credentials (safe to log).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Runs `f` against the provider with the timeout, retrying transport failures.
    pub(crate) async fn run<T, F, Fut>(&self, call: &'static str, mut f: F) -> Result<T>
    where
        F: FnMut(RootProvider) -> Fut,
        Fut: Future<Output = Result<T, RpcErr>>,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let err = match tokio::time::timeout(self.timeout, f(self.provider.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => match classify(call, e) {
                    Classified::Final(err) => return Err(err),
                    Classified::Retry(err) => err,
                },
                Err(_) => Error::Timeout {
                    call,
                    timeout: self.timeout,
                    attempts: attempt,
                },
            };
            if attempt >= self.retry.attempts {
                return Err(with_attempts(err, attempt));
            }
            tracing::debug!(target: TARGET, call, attempt, error = %err, "retrying RPC call");
            tokio::time::sleep(self.retry.backoff(attempt)).await;
        }
    }
}

fn with_attempts(err: Error, n: u32) -> Error {
    match err {
        Error::Rpc { call, source, .. } => Error::Rpc {
            call,
            attempts: n,
            source,
        },
        Error::Timeout { call, timeout, .. } => Error::Timeout {
            call,
            timeout,
            attempts: n,
        },
        other => other,
    }
}

fn classify(call: &'static str, e: RpcErr) -> Classified {
    match e {
        RpcError::ErrorResp(p) => {
            if is_revert(&p) {
                let data = p.as_revert_data();
                Classified::Final(Error::Reverted {
                    call,
                    reason: revert_reason(&p.message, data.as_ref()),
                    data,
                })
            } else if p.is_retry_err() {
                Classified::Retry(Error::Rpc {
                    call,
                    attempts: 0,
                    source: RpcError::ErrorResp(p),
                })
            } else {
                Classified::Final(Error::Node {
                    call,
                    code: p.code,
                    message: p.message.to_string(),
                })
            }
        }
        RpcError::Transport(TransportErrorKind::NonRetryable(_))
        | RpcError::SerError(_)
        | RpcError::LocalUsageError(_)
        | RpcError::UnsupportedFeature(_) => Classified::Final(Error::Rpc {
            call,
            attempts: 0,
            source: e,
        }),
        RpcError::DeserError { err, text } => Classified::Retry(Error::BadResponse {
            call,
            detail: format!("{err} (answer: {})", truncate(&text, 200)),
        }),
        RpcError::NullResp => Classified::Retry(Error::BadResponse {
            call,
            detail: "null answer".into(),
        }),
        RpcError::Transport(_) => Classified::Retry(Error::Rpc {
            call,
            attempts: 0,
            source: e,
        }),
    }
}

fn is_revert(p: &ErrorPayload) -> bool {
    p.code == 3 || p.message.to_ascii_lowercase().contains("revert")
}

/// A readable revert reason: the escrow's, the collector's or the token's custom error,
/// `Error(string)`, or the raw data.
pub(crate) fn revert_reason(message: &str, data: Option<&Bytes>) -> String {
    let Some(data) = data.filter(|d| !d.is_empty()) else {
        return message.to_owned();
    };
    if let Ok(e) = BatchSettlement::BatchSettlementErrors::abi_decode(data) {
        return inner_debug(&format!("{e:?}"));
    }
    if let Ok(e) = ERC3009DepositCollector::ERC3009DepositCollectorErrors::abi_decode(data) {
        return inner_debug(&format!("{e:?}"));
    }
    if let Ok(e) = DevStablecoin::DevStablecoinErrors::abi_decode(data) {
        return format!("token: {}", inner_debug(&format!("{e:?}")));
    }
    if let Ok(r) = Revert::abi_decode(data) {
        return format!("Error({:?})", r.reason);
    }
    format!("{message} (data {data})")
}

/// `Variant(Inner { .. })` → `Inner { .. }`.
fn inner_debug(s: &str) -> String {
    match (s.find('('), s.ends_with(')')) {
        (Some(i), true) => s[i + 1..s.len() - 1].to_owned(),
        _ => s.to_owned(),
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `scheme://host:port` of a URL: RPC URLs often carry API keys in their path or query.
pub(crate) fn redact_url(url: &str) -> String {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    if scheme.is_empty() {
        host.to_owned()
    } else {
        format!("{scheme}://{host}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials_and_paths() {
        assert_eq!(
            redact_url("https://user:pw@base.example.com/v2/SECRET?x=1"),
            "https://base.example.com"
        );
        assert_eq!(redact_url("http://127.0.0.1:8545"), "http://127.0.0.1:8545");
    }

    #[test]
    fn decodes_escrow_errors() {
        let data: Bytes = BatchSettlement::ClaimExceedsBalance {}.abi_encode().into();
        assert_eq!(
            revert_reason("execution reverted", Some(&data)),
            "ClaimExceedsBalance"
        );
        let data: Bytes = Revert::from("nope").abi_encode().into();
        assert_eq!(revert_reason("x", Some(&data)), "Error(\"nope\")");
        assert_eq!(
            revert_reason("execution reverted", None),
            "execution reverted"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let r = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            attempts: 5,
        };
        assert_eq!(r.backoff(1), Duration::from_millis(100));
        assert_eq!(r.backoff(2), Duration::from_millis(200));
        assert_eq!(r.backoff(3), Duration::from_millis(350));
        assert_eq!(r.backoff(40), Duration::from_millis(350));
    }
}
