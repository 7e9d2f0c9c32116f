//! The x402 HTTP header codec: `base64(JSON)`.
//!
//! Headers are untrusted. Decoding is bounded (a size cap checked before any allocation that
//! depends on the input) and never panics: every failure is a [`CodecError`].

use base64::{
    Engine,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use serde::{Serialize, de::DeserializeOwned};

/// `PAYMENT-REQUIRED`: a server's 402 offer.
pub const PAYMENT_REQUIRED: &str = "PAYMENT-REQUIRED";
/// `PAYMENT-SIGNATURE`: a client's payment (x402 v2).
pub const PAYMENT_SIGNATURE: &str = "PAYMENT-SIGNATURE";
/// `PAYMENT-RESPONSE`: the outcome of a paid request.
pub const PAYMENT_RESPONSE: &str = "PAYMENT-RESPONSE";
/// `X-PAYMENT`: a client's payment in x402 v1.
pub const X_PAYMENT: &str = "X-PAYMENT";
/// `X-PAYMENT-RESPONSE`: the outcome in x402 v1.
pub const X_PAYMENT_RESPONSE: &str = "X-PAYMENT-RESPONSE";

/// Default cap on an encoded header, in bytes. A deposit payload with an ERC-6492 wrapped
/// signature is well under 8 KiB; 16 KiB leaves room and still bounds work per request.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;

/// Standard alphabet; padding optional on input (browsers' `atob` accepts both), written on output.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a header could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Larger than the cap.
    #[error("header is {len} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Empty header.
    #[error("header is empty")]
    Empty,
    /// Not base64.
    #[error("header is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// Not the expected JSON.
    #[error("header is not a valid x402 object: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes a value as `base64(JSON)`.
pub fn encode<T: Serialize>(value: &T) -> String {
    // Serializing our own types to a Vec cannot fail: no map has non-string keys. Sized for a
    // payment response (~400 bytes), so the hot path does not grow the buffer twice.
    let mut json = Vec::with_capacity(512);
    if serde_json::to_writer(&mut json, value).is_err() {
        json.clear();
    }
    B64.encode(json)
}

/// Decodes the base64 layer only, with the default cap.
pub fn decode_bytes(header: &str) -> Result<Vec<u8>, CodecError> {
    decode_bytes_limited(header, DEFAULT_MAX_HEADER_BYTES)
}

/// Decodes the base64 layer only, refusing headers over `max` bytes.
pub fn decode_bytes_limited(header: &str, max: usize) -> Result<Vec<u8>, CodecError> {
    let header = header.trim_matches(|c| c == ' ' || c == '\t');
    if header.is_empty() {
        return Err(CodecError::Empty);
    }
    if header.len() > max {
        return Err(CodecError::TooLarge {
            len: header.len(),
            max,
        });
    }
    Ok(B64.decode(header)?)
}

/// Decodes `base64(JSON)` into `T`, with the default cap.
pub fn decode<T: DeserializeOwned>(header: &str) -> Result<T, CodecError> {
    decode_limited(header, DEFAULT_MAX_HEADER_BYTES)
}

/// Decodes `base64(JSON)` into `T`, refusing headers over `max` bytes.
pub fn decode_limited<T: DeserializeOwned>(header: &str, max: usize) -> Result<T, CodecError> {
    let bytes = decode_bytes_limited(header, max)?;
    Ok(serde_json::from_slice(&bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x402::VersionProbe;

    #[test]
    fn round_trips_and_accepts_missing_padding() {
        let v = serde_json::json!({"x402Version": 2, "a": "é"});
        let h = encode(&v);
        assert!(h.ends_with('='), "padding written: {h}");
        assert_eq!(decode::<serde_json::Value>(&h).unwrap(), v);
        assert_eq!(
            decode::<serde_json::Value>(h.trim_end_matches('=')).unwrap(),
            v
        );
    }

    #[test]
    fn refuses_oversize_garbage_and_wrong_alphabet() {
        let big = "A".repeat(DEFAULT_MAX_HEADER_BYTES + 4);
        assert!(matches!(
            decode::<VersionProbe>(&big),
            Err(CodecError::TooLarge { .. })
        ));
        assert!(matches!(decode::<VersionProbe>(""), Err(CodecError::Empty)));
        assert!(matches!(
            decode::<VersionProbe>("!!!!"),
            Err(CodecError::Base64(_))
        ));
        // URL-safe alphabet is not what x402 uses.
        assert!(matches!(
            decode::<VersionProbe>("eyJ4-_"),
            Err(CodecError::Base64(_))
        ));
        assert!(matches!(
            decode::<VersionProbe>(&B64.encode("[1,2]")),
            Err(CodecError::Json(_))
        ));
    }
}
