//! This crate's errors, and the one place where failures become a [`tonic::Status`].
//!
//! | what failed | code |
//! | --- | --- |
//! | a request field (malformed id, amount, address, page token, size, state) | `INVALID_ARGUMENT`, the message starting with the field's name |
//! | a channel the store does not know | `NOT_FOUND` |
//! | an action this server is not set up for (no settlement scheduler, no or another receiver-authorizer key), nothing to refund, a transaction the escrow would refuse | `FAILED_PRECONDITION` |
//! | an event resume point outside the ring, or from another server process | `OUT_OF_RANGE` |
//! | the chain cannot be reached | `UNAVAILABLE` |
//! | a transaction sent but not confirmed in time (it is finished in the background) | `DEADLINE_EXCEEDED` |
//! | a transaction that reverted or lost its nonce | `ABORTED` |
//! | the store, signing, anything else | `INTERNAL` (detail in the log, not the message) |
//!
//! Messages never carry an RPC URL or key material: chain errors go through
//! [`paychan_core::redact::redact_urls`], store and signing errors are logged, not returned.

use tonic::Status;

use crate::TARGET;

/// Errors of [`serve`](crate::serve) and [`ControlClient`](crate::ControlClient).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listener failed.
    #[error("control plane listener: {0}")]
    Io(#[from] std::io::Error),
    /// The reflection service could not be built from the descriptor sets.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The address given to the client is not a usable URI.
    #[error("control plane address {addr:?}: {reason}")]
    Address {
        /// What was given.
        addr: String,
        /// Why it is unusable.
        reason: String,
    },
    /// Connecting to the control plane failed.
    #[error("connecting to the control plane: {0}")]
    Connect(#[from] tonic::transport::Error),
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `INVALID_ARGUMENT` for `field`: the message is `"<field>: <why>"`.
pub(crate) fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

/// `NOT_FOUND` for a channel id the store does not know.
pub(crate) fn unknown_channel(field: &str, id: &alloy_primitives::B256) -> Status {
    Status::not_found(format!("{field}: no channel {id} in this server's store"))
}

/// `FAILED_PRECONDITION` when no settlement scheduler is configured.
pub(crate) fn no_settler(action: &str) -> Status {
    Status::failed_precondition(format!(
        "{action} needs the settlement scheduler, which this server does not run (configure [settlement] and a receiver-authorizer key)"
    ))
}

/// A store failure: `INTERNAL` with a generic message; the detail goes to the log.
pub(crate) fn store(e: &paychan_store::Error) -> Status {
    tracing::warn!(target: TARGET, error = %paychan_core::redact::redact_urls(&e.to_string()), "store read failed");
    Status::internal("the store could not be read; see the server's log")
}

/// A chain adapter failure.
pub(crate) fn chain(e: &paychan_chain::Error) -> Status {
    use paychan_chain::Error as E;
    let msg = paychan_core::redact::redact_urls(&e.to_string());
    tracing::warn!(target: TARGET, error = %msg, "chain action failed");
    match e {
        _ if e.is_transport() => {
            Status::unavailable(format!("the chain could not be reached: {msg}"))
        }
        E::Reverted { .. } | E::GasCeiling { .. } | E::Refused { .. } | E::Superseded { .. } => {
            Status::failed_precondition(msg)
        }
        E::Unconfirmed { .. } => Status::deadline_exceeded(msg),
        E::TxReverted { .. } | E::NonceTaken { .. } | E::Rejected { .. } => Status::aborted(msg),
        E::Store(s) => store(s),
        E::Signer(_) => Status::internal("signing failed; see the server's log"),
        _ => Status::internal(msg),
    }
}

/// A settlement scheduler failure.
pub(crate) fn settle(e: &paychan_settle::Error) -> Status {
    use paychan_settle::Error as E;
    match e {
        E::Chain(c) => chain(c),
        E::Store(s) => store(s),
        E::Policy(p) => Status::failed_precondition(p.clone()),
        E::Sign(_) | E::Task(_) => {
            tracing::warn!(target: TARGET, error = %e, "settlement round failed");
            Status::internal("the settlement round failed; see the server's log")
        }
    }
}
