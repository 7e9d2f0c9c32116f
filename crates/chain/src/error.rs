//! The chain adapter's errors. Every variant names the call or the journal entry it concerns.

use std::time::Duration;

use alloy::{
    primitives::{Address, B256, Bytes},
    transports::{RpcError, TransportErrorKind},
};

/// An alloy RPC error.
pub type RpcErr = RpcError<TransportErrorKind>;

/// Errors of the chain adapter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid chain configuration: {0}")]
    Config(String),

    /// The node serves another chain than the configured one.
    #[error("the node at {rpc_url} is on chain {actual}, but chain {expected} is configured")]
    WrongChain {
        /// Configured chain id.
        expected: u64,
        /// What the node reports.
        actual: u64,
        /// The node.
        rpc_url: String,
    },

    /// A configured contract has no code on the node's chain.
    #[error(
        "no contract code at the configured {what} address {address} (wrong chain or address?)"
    )]
    NoCode {
        /// Which contract.
        what: &'static str,
        /// Where.
        address: Address,
    },

    /// An RPC call kept failing with transport errors (or bad answers) until the retries ran out.
    #[error("RPC call {call} failed after {attempts} attempt(s): {source}")]
    Rpc {
        /// The call (`eth_call channels`, `eth_getTransactionReceipt`, ...).
        call: &'static str,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: RpcErr,
    },

    /// An RPC call kept timing out until the retries ran out.
    #[error("RPC call {call} timed out after {timeout:?} ({attempts} attempt(s))")]
    Timeout {
        /// The call.
        call: &'static str,
        /// The per-call timeout.
        timeout: Duration,
        /// Attempts made.
        attempts: u32,
    },

    /// The node refused a call with a JSON-RPC error that is not a revert and not worth retrying.
    #[error("RPC call {call} was refused by the node (code {code}): {message}")]
    Node {
        /// The call.
        call: &'static str,
        /// JSON-RPC error code.
        code: i64,
        /// The node's message.
        message: String,
    },

    /// A call or a gas estimate reverted: the action would fail on chain. Never retried.
    #[error("{call} reverted: {reason}")]
    Reverted {
        /// The call.
        call: &'static str,
        /// The decoded revert reason (`ClaimExceedsBalance`, `Error("...")`, or raw hex).
        reason: String,
        /// Raw revert data, if the node returned it.
        data: Option<Bytes>,
    },

    /// The node answered something that cannot be decoded.
    #[error("bad answer from the node to {call}: {detail}")]
    BadResponse {
        /// The call.
        call: &'static str,
        /// What was wrong.
        detail: String,
    },

    /// The transaction would need more gas than the configured ceiling; nothing was sent.
    #[error("{what} needs an estimated {estimate} gas, above the ceiling of {ceiling}; not sent")]
    GasCeiling {
        /// The action.
        what: &'static str,
        /// The node's estimate.
        estimate: u64,
        /// `ChainConfig::max_gas_per_tx`.
        ceiling: u64,
    },

    /// The action is refused before anything is sent (bad input, wrong sender, ...).
    #[error("{what} refused: {reason}")]
    Refused {
        /// The action.
        what: &'static str,
        /// Why.
        reason: String,
    },

    /// The node refused the signed transaction for good (for example: insufficient funds for gas).
    #[error("the node rejected transaction {tx_hash} (nonce {nonce}): {message}")]
    Rejected {
        /// The transaction.
        tx_hash: B256,
        /// Its nonce.
        nonce: u64,
        /// The node's message.
        message: String,
    },

    /// The transaction was mined but reverted; its journal entry is `Failed`.
    #[error(
        "transaction {tx_hash} of journal entry {journal_id} reverted on chain in block {block} (gas used {gas_used})"
    )]
    TxReverted {
        /// The journal entry (0 for unjournaled payer-side transactions).
        journal_id: u64,
        /// The transaction.
        tx_hash: B256,
        /// Its block.
        block: u64,
        /// Gas it burnt.
        gas_used: u64,
    },

    /// The action was already carried out on chain by another transaction; its journal entry is
    /// `Failed` with a `superseded:` reason and nothing was re-sent.
    #[error("journal entry {journal_id} superseded: {reason}")]
    Superseded {
        /// The journal entry.
        journal_id: u64,
        /// What the chain shows.
        reason: String,
    },

    /// The transaction's nonce was used by a transaction this adapter did not send.
    #[error("nonce {nonce} of {sender} was used by another transaction")]
    NonceTaken {
        /// The sender.
        sender: Address,
        /// The nonce.
        nonce: u64,
    },

    /// The transaction was not confirmed within `ChainConfig::confirm_timeout`. Its journal entry
    /// stays `Sent`: `Relayer::recover` (or a later call) finishes it.
    #[error(
        "journal entry {journal_id} (last transaction {tx_hash}) not confirmed within {waited:?}; it stays open for Relayer::recover"
    )]
    Unconfirmed {
        /// The journal entry (0 for unjournaled payer-side transactions).
        journal_id: u64,
        /// The latest transaction sent for it.
        tx_hash: B256,
        /// How long it was waited for.
        waited: Duration,
    },

    /// A journal entry the relayer was asked about is missing or not its own.
    #[error("journal entry {journal_id}: {reason}")]
    Journal {
        /// The entry.
        journal_id: u64,
        /// What is wrong.
        reason: String,
    },

    /// Signing failed (never contains key material).
    #[error("signing failed: {0}")]
    Signer(String),

    /// The store failed.
    #[error(transparent)]
    Store(#[from] paychan_store::Error),
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether this is a transport-level failure (node unreachable, timing out, answering garbage)
    /// rather than a decision of the chain.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            Error::Rpc { .. } | Error::Timeout { .. } | Error::BadResponse { .. }
        )
    }
}
