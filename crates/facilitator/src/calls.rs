//! The few reads the chain adapter does not offer: simulations (`eth_call` of a write, to learn
//! whether it would revert and why), EIP-1271 signature checks, account code, and transaction
//! receipts (for the amounts in `Settled` / `Refunded` events). Every call has the chain
//! configuration's timeout and is retried on transport failures; reverts are final and decoded.

use std::{future::Future, time::Duration};

use alloy::{
    primitives::{Address, B256, Bytes, FixedBytes},
    providers::{Provider, RootProvider},
    rpc::types::{TransactionReceipt, TransactionRequest},
    sol,
    sol_types::{Revert, SolCall, SolError, SolInterface},
    transports::{RpcError, TransportErrorKind},
};
use paychan_bindings::{BatchSettlement, DevStablecoin, ERC3009DepositCollector};
use paychan_chain::{ChainConfig, RetryPolicy};

use crate::{Error, TARGET};

sol! {
    /// EIP-1271: signature validation by a contract account.
    interface IERC1271 {
        function isValidSignature(bytes32 hash, bytes signature) external view returns (bytes4 magicValue);
    }
}

/// `bytes4(keccak256("isValidSignature(bytes32,bytes)"))`: what a contract returns for a valid
/// signature.
const ERC1271_MAGIC: [u8; 4] = [0x16, 0x26, 0xba, 0x7e];

/// Why a read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallError {
    /// The call reverted (a definite answer, never retried).
    #[error("{call} reverted: {reason}")]
    Reverted {
        /// The call.
        call: &'static str,
        /// The decoded revert reason.
        reason: String,
    },
    /// The node could not be asked (transport failures, time-outs, refusals).
    #[error("{call} failed: {message}")]
    Failed {
        /// The call.
        call: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// A provider on the chain adapter's RPC endpoint, with its timeout and retry policy.
#[derive(Clone, Debug)]
pub(crate) struct Calls {
    provider: RootProvider,
    timeout: Duration,
    retry: RetryPolicy,
}

impl Calls {
    pub(crate) fn new(cfg: &ChainConfig) -> Result<Self, Error> {
        let url = cfg
            .rpc_url
            .trim()
            .parse()
            .map_err(|e| Error::Config(format!("rpc_url is not a URL: {e}")))?;
        Ok(Self {
            provider: RootProvider::new_http(url),
            timeout: cfg.rpc_timeout,
            retry: cfg.retry,
        })
    }

    async fn run<T, F, Fut>(&self, call: &'static str, f: F) -> Result<T, CallError>
    where
        F: Fn(RootProvider) -> Fut,
        Fut: Future<Output = Result<T, RpcError<TransportErrorKind>>>,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let err = match tokio::time::timeout(self.timeout, f(self.provider.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(RpcError::ErrorResp(p))) => {
                    if p.code == 3 || p.message.to_ascii_lowercase().contains("revert") {
                        let data = p.as_revert_data();
                        return Err(CallError::Reverted {
                            call,
                            reason: revert_reason(&p.message, data.as_ref()),
                        });
                    }
                    if !p.is_retry_err() {
                        return Err(CallError::Failed {
                            call,
                            message: format!("node refused (code {}): {}", p.code, p.message),
                        });
                    }
                    format!("node error (code {}): {}", p.code, p.message)
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("timed out after {:?}", self.timeout),
            };
            if attempt >= self.retry.attempts.max(1) {
                return Err(CallError::Failed {
                    call,
                    message: format!("{err} (after {attempt} attempt(s))"),
                });
            }
            tracing::debug!(target: TARGET, call, attempt, error = %err, "retrying RPC call");
            tokio::time::sleep(self.retry.backoff(attempt)).await;
        }
    }

    /// The code deployed at `who` (empty for an EOA).
    pub(crate) async fn code(&self, who: Address) -> Result<Bytes, CallError> {
        self.run("eth_getCode", |p| async move { p.get_code_at(who).await })
            .await
    }

    /// `eth_call` of `data` on `to` from `from` at the latest block.
    pub(crate) async fn call(
        &self,
        what: &'static str,
        from: Address,
        to: Address,
        data: Bytes,
    ) -> Result<Bytes, CallError> {
        let tx = TransactionRequest::default()
            .from(from)
            .to(to)
            .input(data.into());
        self.run(what, |p| {
            let tx = tx.clone();
            async move { p.call(tx).await }
        })
        .await
    }

    /// A transaction's receipt, `None` if the node does not know it.
    pub(crate) async fn receipt(
        &self,
        hash: B256,
    ) -> Result<Option<TransactionReceipt>, CallError> {
        self.run("eth_getTransactionReceipt", |p| async move {
            p.get_transaction_receipt(hash).await
        })
        .await
    }

    /// Whether `signature` over `digest` is valid for the contract account `who` (EIP-1271).
    /// A revert or a wrong magic value is `false`; only transport failures are errors.
    pub(crate) async fn erc1271_valid(
        &self,
        who: Address,
        digest: B256,
        signature: &Bytes,
    ) -> Result<bool, CallError> {
        const CALL: &str = "eth_call isValidSignature";
        let data = IERC1271::isValidSignatureCall {
            hash: digest,
            signature: signature.clone(),
        }
        .abi_encode();
        match self.call(CALL, Address::ZERO, who, data.into()).await {
            Ok(ret) => Ok(IERC1271::isValidSignatureCall::abi_decode_returns(&ret)
                .is_ok_and(|m: FixedBytes<4>| m.0 == ERC1271_MAGIC)),
            Err(CallError::Reverted { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A readable revert reason: the escrow's, the collector's or the token's custom error,
/// `Error(string)`, or the raw data.
pub(crate) fn revert_reason(message: &str, data: Option<&Bytes>) -> String {
    let Some(data) = data.filter(|d| !d.is_empty()) else {
        return message.to_owned();
    };
    if let Ok(e) = BatchSettlement::BatchSettlementErrors::abi_decode(data) {
        return variant_name(&format!("{e:?}"));
    }
    if let Ok(e) = ERC3009DepositCollector::ERC3009DepositCollectorErrors::abi_decode(data) {
        return format!("collector: {}", variant_name(&format!("{e:?}")));
    }
    if let Ok(e) = DevStablecoin::DevStablecoinErrors::abi_decode(data) {
        return format!("token: {}", variant_name(&format!("{e:?}")));
    }
    if let Ok(r) = Revert::abi_decode(data) {
        return format!("Error({:?})", r.reason);
    }
    format!("{message} (data {data})")
}

/// `Variant(Inner { .. })` → `Inner { .. }`.
fn variant_name(s: &str) -> String {
    match (s.find('('), s.ends_with(')')) {
        (Some(i), true) => s[i + 1..s.len() - 1].to_owned(),
        _ => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_reverts() {
        let data: Bytes = BatchSettlement::InvalidRefundNonce {}.abi_encode().into();
        assert_eq!(
            revert_reason("execution reverted", Some(&data)),
            "InvalidRefundNonce"
        );
        let data: Bytes = Revert::from("nope").abi_encode().into();
        assert_eq!(revert_reason("x", Some(&data)), "Error(\"nope\")");
        assert_eq!(
            revert_reason("execution reverted", None),
            "execution reverted"
        );
    }
}
