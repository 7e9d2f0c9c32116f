//! Token amounts on the wire.
//!
//! x402 carries amounts as decimal strings in the token's atomic units. paychan parses them to
//! `u128` (the width of every amount in the batch-settlement contract) with strict rules: ASCII
//! digits only, no sign, no whitespace, no leading zeros (except `"0"` itself), no overflow.
//! Money is never a float.

use alloy_primitives::U256;
use serde::{Deserialize, Deserializer, Serializer, de};

/// Why a decimal amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// The string was empty.
    #[error("amount is empty")]
    Empty,
    /// A character other than an ASCII digit.
    #[error("amount is not a non-negative decimal integer")]
    NotDecimal,
    /// A leading zero in a multi-digit number.
    #[error("amount has a leading zero")]
    LeadingZero,
    /// The value does not fit the integer type.
    #[error("amount overflows {0} bits")]
    Overflow(u32),
}

/// Longest decimal accepted before even trying: 78 digits is the width of `U256::MAX`.
const MAX_DIGITS: usize = 78;

fn check_digits(s: &str) -> Result<&[u8], AmountError> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(AmountError::Empty);
    }
    if b.len() > MAX_DIGITS {
        return Err(AmountError::Overflow(256));
    }
    if !b.iter().all(u8::is_ascii_digit) {
        return Err(AmountError::NotDecimal);
    }
    if b.len() > 1 && b[0] == b'0' {
        return Err(AmountError::LeadingZero);
    }
    Ok(b)
}

/// Parses a decimal string into a `u128`.
pub fn parse_u128(s: &str) -> Result<u128, AmountError> {
    let digits = check_digits(s)?;
    let mut v: u128 = 0;
    for d in digits {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(d - b'0')))
            .ok_or(AmountError::Overflow(128))?;
    }
    Ok(v)
}

/// Parses a decimal string into a `u64`.
pub fn parse_u64(s: &str) -> Result<u64, AmountError> {
    let v = parse_u128(s).map_err(|e| match e {
        AmountError::Overflow(_) => AmountError::Overflow(64),
        e => e,
    })?;
    u64::try_from(v).map_err(|_| AmountError::Overflow(64))
}

/// Parses a decimal string into a `U256`.
pub fn parse_u256(s: &str) -> Result<U256, AmountError> {
    let digits = check_digits(s)?;
    let ten = U256::from(10u8);
    let mut v = U256::ZERO;
    for d in digits {
        v = v
            .checked_mul(ten)
            .and_then(|v| v.checked_add(U256::from(d - b'0')))
            .ok_or(AmountError::Overflow(256))?;
    }
    Ok(v)
}

/// A JSON value that may carry an integer either as a decimal string (the x402 convention) or as
/// a JSON number (what some peers send for small counters such as `refundNonce`).
///
/// Read by a visitor that takes either, not by `#[serde(untagged)]`: that buffered the value and
/// built (and dropped) an error for every number it first tried as a string, a few times per
/// paid request.
enum StrOrNum<'a> {
    Str(std::borrow::Cow<'a, str>),
    Num(u64),
}

impl<'de> Deserialize<'de> for StrOrNum<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = StrOrNum<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a decimal string or a non-negative integer")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(StrOrNum::Str(std::borrow::Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StrOrNum::Str(std::borrow::Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(StrOrNum::Str(std::borrow::Cow::Owned(v)))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(StrOrNum::Num(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(StrOrNum::Num)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// Serde for a `u128` carried as a decimal string. Deserialization also takes a non-negative JSON
/// integer.
pub mod u128_dec {
    use super::*;

    /// Serializes as a decimal string.
    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Deserializes from a decimal string or a JSON integer.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        match StrOrNum::deserialize(d)? {
            StrOrNum::Str(s) => parse_u128(&s).map_err(de::Error::custom),
            StrOrNum::Num(n) => Ok(u128::from(n)),
        }
    }
}

/// Serde for an optional `u128` carried as a decimal string.
pub mod opt_u128_dec {
    use super::*;

    /// Serializes `Some` as a decimal string (use with `skip_serializing_if = "Option::is_none"`).
    pub fn serialize<S: Serializer>(v: &Option<u128>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    /// Deserializes from a decimal string, a JSON integer, or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u128>, D::Error> {
        match Option::<StrOrNum<'de>>::deserialize(d)? {
            None => Ok(None),
            Some(StrOrNum::Str(s)) => parse_u128(&s).map(Some).map_err(de::Error::custom),
            Some(StrOrNum::Num(n)) => Ok(Some(u128::from(n))),
        }
    }
}

/// Serde for a `U256` carried as a decimal string (or a JSON integer on input).
pub mod u256_dec {
    use super::*;

    /// Serializes as a decimal string.
    pub fn serialize<S: Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Deserializes from a decimal string or a JSON integer.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
        match StrOrNum::deserialize(d)? {
            StrOrNum::Str(s) => parse_u256(&s).map_err(de::Error::custom),
            StrOrNum::Num(n) => Ok(U256::from(n)),
        }
    }
}

/// Serde for a `u64` that peers send either as a JSON number or a decimal string; serialized as a
/// JSON number (timestamps such as `withdrawRequestedAt`, delays such as `withdrawDelay`).
pub mod u64_num {
    use super::*;

    /// Serializes as a JSON number.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }

    /// Deserializes from a JSON integer or a decimal string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match StrOrNum::deserialize(d)? {
            StrOrNum::Str(s) => parse_u64(&s).map_err(de::Error::custom),
            StrOrNum::Num(n) => Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_canonical_decimals() {
        assert_eq!(parse_u128("0"), Ok(0));
        assert_eq!(parse_u128("1000"), Ok(1000));
        assert_eq!(parse_u128(&u128::MAX.to_string()), Ok(u128::MAX));
        assert_eq!(parse_u256(&U256::MAX.to_string()), Ok(U256::MAX));
        assert_eq!(parse_u64("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(parse_u128(""), Err(AmountError::Empty));
        assert_eq!(parse_u128("-1"), Err(AmountError::NotDecimal));
        assert_eq!(parse_u128("+1"), Err(AmountError::NotDecimal));
        assert_eq!(parse_u128("1.5"), Err(AmountError::NotDecimal));
        assert_eq!(parse_u128(" 1"), Err(AmountError::NotDecimal));
        assert_eq!(parse_u128("0x10"), Err(AmountError::NotDecimal));
        assert_eq!(parse_u128("1e3"), Err(AmountError::NotDecimal));
        assert_eq!(parse_u128("٣"), Err(AmountError::NotDecimal));
        assert_eq!(parse_u128("007"), Err(AmountError::LeadingZero));
        assert_eq!(
            parse_u128("340282366920938463463374607431768211456"),
            Err(AmountError::Overflow(128))
        );
        assert_eq!(
            parse_u64("18446744073709551616"),
            Err(AmountError::Overflow(64))
        );
        assert_eq!(parse_u256(&"9".repeat(79)), Err(AmountError::Overflow(256)));
        assert_eq!(parse_u256(&"9".repeat(78)), Err(AmountError::Overflow(256)));
    }

    #[test]
    fn serde_takes_strings_and_numbers() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct T {
            #[serde(with = "u128_dec")]
            a: u128,
            #[serde(with = "u256_dec")]
            n: U256,
            #[serde(with = "u64_num")]
            t: u64,
        }
        let t: T = serde_json::from_str(r#"{"a":"12","n":3,"t":"900"}"#).unwrap();
        assert_eq!((t.a, t.n, t.t), (12, U256::from(3), 900));
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"a":"12","n":"3","t":900}"#
        );
        assert!(serde_json::from_str::<T>(r#"{"a":"-1","n":3,"t":1}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"a":1.5,"n":3,"t":1}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"a":-1,"n":3,"t":1}"#).is_err());
    }

    #[test]
    fn every_reader_of_strings_or_numbers_agrees() {
        #[derive(Debug, PartialEq, serde::Deserialize)]
        struct T {
            #[serde(with = "u128_dec")]
            a: u128,
            #[serde(default, with = "opt_u128_dec")]
            o: Option<u128>,
            #[serde(with = "u64_num")]
            t: u64,
        }
        let want = T {
            a: 10,
            o: Some(7),
            t: 900,
        };
        // borrowed strings, escaped (owned) strings, numbers; from text and from a Value
        for text in [
            r#"{"a":"10","o":"7","t":900}"#,
            r#"{"a":"1\u0030","o":7,"t":"900"}"#,
            r#"{"a":10,"o":"7","t":"9\u00300"}"#,
        ] {
            assert_eq!(serde_json::from_str::<T>(text).unwrap(), want, "{text}");
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::from_value::<T>(v).unwrap(), want, "{text}");
        }
        let t: T = serde_json::from_str(r#"{"a":"0","o":null,"t":0}"#).unwrap();
        assert_eq!((t.a, t.o, t.t), (0, None, 0));
        let t: T = serde_json::from_str(r#"{"a":"0","t":0}"#).unwrap();
        assert_eq!(t.o, None);
        for bad in [
            r#"{"a":-1,"t":0}"#,
            r#"{"a":"0","t":-5}"#,
            r#"{"a":1e3,"t":0}"#,
            r#"{"a":18446744073709551616,"t":0}"#,
            r#"{"a":true,"t":0}"#,
            r#"{"a":["1"],"t":0}"#,
            r#"{"a":"0","o":-1,"t":0}"#,
            r#"{"a":"0","t":"18446744073709551616"}"#,
        ] {
            assert!(serde_json::from_str::<T>(bad).is_err(), "{bad}");
            let v: serde_json::Value = serde_json::from_str(bad).unwrap();
            assert!(serde_json::from_value::<T>(v).is_err(), "{bad}");
        }
    }
}
