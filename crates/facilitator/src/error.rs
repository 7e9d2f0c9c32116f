//! The facilitator crate's errors: building a facilitator, and talking to a remote one.
//!
//! Payment problems are not errors: `verify` and `settle` always answer, with `isValid: false` /
//! `success: false` and the scheme's error code (see [`crate::Facilitator`]).

use std::time::Duration;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The facilitator cannot be built as configured.
    #[error("invalid facilitator configuration: {0}")]
    Config(String),

    /// A remote facilitator could not be reached, or the connection broke.
    #[error("facilitator {op} at {url}: request failed: {message}")]
    Transport {
        /// `verify`, `settle` or `supported`.
        op: &'static str,
        /// The endpoint (without credentials).
        url: String,
        /// What failed.
        message: String,
    },

    /// A remote facilitator did not answer in time.
    #[error("facilitator {op} at {url}: no answer within {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The endpoint.
        url: String,
        /// The configured timeout.
        after: Duration,
    },

    /// A remote facilitator answered with an HTTP error and no verdict.
    #[error("facilitator {op} at {url}: HTTP {status}: {body}")]
    Status {
        /// The operation.
        op: &'static str,
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },

    /// A remote facilitator's answer could not be read.
    #[error("facilitator {op} at {url}: unreadable answer: {message}")]
    Decode {
        /// The operation.
        op: &'static str,
        /// The endpoint.
        url: String,
        /// Why.
        message: String,
    },
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
