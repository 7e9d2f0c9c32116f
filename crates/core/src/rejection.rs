//! [`Rejection`]: a refusal with the x402 error code it goes on the wire as.

use std::borrow::Cow;

use crate::ErrorCode;

/// A refused payment or request: the wire code plus a human message for logs and clients.
/// Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    /// The x402 error code.
    pub code: ErrorCode,
    /// What went wrong, for humans.
    pub message: Cow<'static, str>,
}

impl Rejection {
    /// A rejection with a message.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A rejection whose message is the code's description.
    pub fn code(code: ErrorCode) -> Self {
        let message = Cow::Owned(code.description().to_owned());
        Self { code, message }
    }
}

impl From<ErrorCode> for Rejection {
    fn from(code: ErrorCode) -> Self {
        Self::code(code)
    }
}
