//! The client's errors: policy refusals (nothing signed), server misbehaviour (the server is no
//! longer paid), refusals by the server, and failures of the transport, the store or the chain.

use alloy_primitives::{Address, B256};
use paychan_core::{ErrorCode, batch::payer::PayerError, sig::SigError};

/// Which budget a per-period limit belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Everything this payer spends.
    Overall,
    /// What this payer spends at one server (its origin, `scheme://host[:port]`).
    Server(String),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Overall => f.write_str("overall"),
            Scope::Server(o) => write!(f, "server {o}"),
        }
    }
}

/// Why an offer or a payment falls outside the [`SpendPolicy`](crate::SpendPolicy) or the
/// [`DepositPolicy`](crate::DepositPolicy). When one of these is returned, nothing was signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The 402 offers no `batch-settlement` payment (only other schemes).
    #[error("the server offers no batch-settlement payment (schemes offered: {offered:?})")]
    UnsupportedScheme {
        /// The schemes it offered.
        offered: Vec<String>,
    },
    /// A `batch-settlement` offer that does not parse.
    #[error("malformed batch-settlement offer: {0}")]
    MalformedOffer(String),
    /// The offer's network is not the one this payer's chain reader is on.
    #[error("network eip155:{chain_id} is not allowed")]
    NetworkNotAllowed {
        /// The offer's chain id.
        chain_id: u64,
    },
    /// The offer's token is not in the allowed list.
    #[error("asset {asset} on chain {chain_id} is not allowed")]
    AssetNotAllowed {
        /// The offer's chain id.
        chain_id: u64,
        /// The offer's token.
        asset: Address,
    },
    /// The offer wants a deposit method this client does not implement (only `eip3009`).
    #[error("asset transfer method {0:?} is not supported (only eip3009)")]
    TransferMethodUnsupported(String),
    /// The per-request maximum is above the policy's.
    #[error("price {amount} per request is above the maximum {max}")]
    AmountAboveMax {
        /// The offer's per-request maximum.
        amount: u128,
        /// The policy's maximum per request.
        max: u128,
    },
    /// The deposit needed (or the server's minimum deposit) is above the policy's maximum.
    #[error("a deposit of {deposit} is above the maximum deposit {max}")]
    DepositAboveMax {
        /// The deposit the payment would need.
        deposit: u128,
        /// The policy's maximum per deposit.
        max: u128,
    },
    /// Paying this request could exceed a per-period budget.
    #[error(
        "{scope} budget exhausted: {spent} of {limit} used this period, this request may cost {amount}"
    )]
    PeriodBudgetExhausted {
        /// The budget.
        scope: Scope,
        /// Its limit per period.
        limit: u128,
        /// Spent or reserved in the current period.
        spent: u128,
        /// This request's maximum.
        amount: u128,
    },
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Refused by the spend or deposit policy; nothing was signed.
    #[error("refused by the spend policy: {0}")]
    Policy(#[from] PolicyError),
    /// The server's answer broke the scheme's client rules (it over-reported or over-charged):
    /// the channel is halted and the server is no longer paid.
    #[error("server {origin} misbehaved on channel {channel}: {reason}; it is no longer paid")]
    ServerMisbehaved {
        /// The server.
        origin: String,
        /// The channel.
        channel: B256,
        /// The rule it broke.
        reason: PayerError,
    },
    /// This server misbehaved before; it is not paid until [`Payer::trust_again`](crate::Payer::trust_again).
    #[error("server {origin} is not trusted (it misbehaved before); nothing was signed")]
    Untrusted {
        /// The server.
        origin: String,
    },
    /// The server refused the payment (a 402 that is neither a correction this client could
    /// apply nor a changed offer).
    #[error("the server refused the payment: {code}{}", message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Refused {
        /// The x402 error code.
        code: ErrorCode,
        /// The server's human message (`x-paychan-error`), if any.
        message: Option<String>,
    },
    /// The server broke the x402 protocol (a 402 without a readable `PAYMENT-REQUIRED`, a
    /// malformed `PAYMENT-RESPONSE`).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The request must be sent again (to pay after a 402, or after a correction) but its body
    /// is a stream that cannot be replayed.
    #[error("the request body is a stream and cannot be sent again to pay for it")]
    BodyNotReplayable,
    /// No such channel, or it cannot do what was asked.
    #[error("channel {channel}: {reason}")]
    Channel {
        /// The channel.
        channel: B256,
        /// Why.
        reason: &'static str,
    },
    /// The payer is misconfigured.
    #[error("configuration: {0}")]
    Config(&'static str),
    /// HTTP transport failure.
    #[error("HTTP: {0}")]
    Http(#[from] reqwest_middleware::Error),
    /// The payer's store failed.
    #[error("store: {0}")]
    Store(#[from] paychan_store::Error),
    /// A chain read or transaction failed (URLs removed from the text).
    #[error("chain: {0}")]
    Chain(String),
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(#[from] SigError),
    /// The local payer state machine refused (arithmetic overflow, for instance).
    #[error("payer state: {0}")]
    State(PayerError),
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        Self::Http(e.into())
    }
}

impl From<paychan_chain::Error> for Error {
    fn from(e: paychan_chain::Error) -> Self {
        Self::Chain(paychan_core::redact::redact_urls(&e.to_string()))
    }
}

/// `Result` with the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
