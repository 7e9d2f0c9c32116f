//! Request fields in, typed values out: every refusal is `INVALID_ARGUMENT` with the field's name
//! first (see [`crate::error`]). Amounts are decimal strings, ids and addresses `0x` hex.

use alloy_primitives::{Address, B256};
use tonic::Status;

use crate::{error::invalid, proto::ChannelState};

/// Characters of a refused value quoted back in a message at most.
const QUOTE_MAX: usize = 80;

/// `s` quoted for a message: escaped, and cut after [`QUOTE_MAX`] characters.
fn quoted(s: &str) -> String {
    if s.chars().count() <= QUOTE_MAX {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(QUOTE_MAX).collect();
        format!("{cut:?}…")
    }
}

/// `0x` and exactly `2 * N` hex digits.
fn hex_bytes<const N: usize>(field: &str, s: &str, what: &str) -> Result<[u8; N], Status> {
    let refuse = || {
        invalid(
            field,
            format!(
                "expected {what}: 0x and {} hex digits, got {}",
                2 * N,
                quoted(s)
            ),
        )
    };
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or_else(refuse)?;
    if digits.len() != 2 * N || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refuse());
    }
    let mut out = [0u8; N];
    alloy_primitives::hex::decode_to_slice(digits, &mut out).map_err(|_| refuse())?;
    Ok(out)
}

/// A 32-byte channel id.
pub(crate) fn channel_id(field: &str, s: &str) -> Result<B256, Status> {
    if s.is_empty() {
        return Err(invalid(
            field,
            "required (a channel id: 0x and 64 hex digits)",
        ));
    }
    hex_bytes::<32>(field, s, "a channel id").map(B256::from)
}

/// An address; empty means none.
pub(crate) fn optional_address(field: &str, s: &str) -> Result<Option<Address>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    hex_bytes::<20>(field, s, "an address").map(|b| Some(Address::from(b)))
}

/// An amount of atomic units: decimal digits, no sign, no leading zero, at most `u128::MAX`.
pub(crate) fn amount(field: &str, s: &str) -> Result<u128, Status> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            field,
            format!(
                "expected an amount in atomic units as decimal digits, got {}",
                quoted(s)
            ),
        ));
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(invalid(
            field,
            format!("an amount has no leading zeros, got {}", quoted(s)),
        ));
    }
    s.parse::<u128>().map_err(|_| {
        invalid(
            field,
            format!(
                "amount {} is above the largest supported, 2^128 - 1",
                quoted(s)
            ),
        )
    })
}

/// An amount; empty means none.
pub(crate) fn optional_amount(field: &str, s: &str) -> Result<Option<u128>, Status> {
    if s.is_empty() {
        Ok(None)
    } else {
        amount(field, s).map(Some)
    }
}

/// A page size: 0 means `default`, above `max` is refused.
pub(crate) fn page_size(field: &str, n: u32, default: u32, max: u32) -> Result<usize, Status> {
    let n = if n == 0 { default } else { n };
    if n > max {
        return Err(invalid(field, format!("at most {max}, got {n}")));
    }
    usize::try_from(n).map_err(|_| invalid(field, "too large"))
}

/// A page token: empty (the first page) or one this server handed out.
pub(crate) fn page_token(field: &str, s: &str) -> Result<Option<B256>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    hex_bytes::<32>(field, s, "a page token from a previous response").map(|b| Some(B256::from(b)))
}

/// A channel state filter.
pub(crate) fn state(field: &str, v: i32) -> Result<ChannelState, Status> {
    ChannelState::try_from(v).map_err(|_| invalid(field, format!("unknown channel state {v}")))
}

/// Channel ids, deduplicated in first-seen order, at most `max`; `field[i]` names a bad one.
pub(crate) fn channel_ids(field: &str, ids: &[String], max: usize) -> Result<Vec<B256>, Status> {
    if ids.len() > max {
        return Err(invalid(
            field,
            format!("at most {max} channel ids, got {}", ids.len()),
        ));
    }
    let mut out: Vec<B256> = Vec::with_capacity(ids.len());
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    for (i, s) in ids.iter().enumerate() {
        let id = channel_id(&format!("{field}[{i}]"), s)?;
        if seen.insert(id) {
            out.push(id);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tonic::Code;

    use super::*;

    fn refused<T: std::fmt::Debug>(r: Result<T, Status>, field: &str) {
        let e = r.expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().starts_with(&format!("{field}: ")),
            "{}",
            e.message()
        );
    }

    #[test]
    fn ids_need_the_prefix_and_exact_length() {
        let id = format!("0x{}", "ab".repeat(32));
        assert_eq!(channel_id("f", &id).unwrap(), B256::repeat_byte(0xab));
        assert_eq!(
            channel_id("f", &id.to_uppercase().replacen("0X", "0x", 1)).unwrap(),
            B256::repeat_byte(0xab)
        );
        for bad in [
            "",
            "ab",
            &"ab".repeat(32),
            &format!("0x{}", "ab".repeat(31)),
            &format!("0x{}a", "ab".repeat(32)),
            &format!("0x{}zz", "ab".repeat(31)),
            &format!("0x{}é", "ab".repeat(31)),
        ] {
            refused(channel_id("channel_id", bad), "channel_id");
        }
        assert_eq!(optional_address("payer", "").unwrap(), None);
        refused(optional_address("payer", "0x1234"), "payer");
    }

    #[test]
    fn amounts_are_plain_decimals_within_u128() {
        assert_eq!(amount("a", "0").unwrap(), 0);
        assert_eq!(amount("a", "1250").unwrap(), 1250);
        assert_eq!(amount("a", &u128::MAX.to_string()).unwrap(), u128::MAX);
        for bad in [
            "",
            "-1",
            "+1",
            "01",
            "1.5",
            "1e6",
            " 1",
            "0x10",
            "١",
            "340282366920938463463374607431768211456",
        ] {
            refused(amount("unclaimed_above", bad), "unclaimed_above");
        }
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size("page_size", 0, 100, 1000).unwrap(), 100);
        assert_eq!(page_size("page_size", 1000, 100, 1000).unwrap(), 1000);
        refused(page_size("page_size", 1001, 100, 1000), "page_size");
        refused(state("state", 99), "state");
        refused(page_token("page_token", "next"), "page_token");
    }

    #[test]
    fn id_lists_are_deduplicated_and_name_the_bad_index() {
        let a = format!("0x{}", "01".repeat(32));
        let b = format!("0x{}", "02".repeat(32));
        let ids = channel_ids("channel_ids", &[a.clone(), b, a], 10).unwrap();
        assert_eq!(ids.len(), 2);
        refused(
            channel_ids("channel_ids", &["0x01".into()], 10),
            "channel_ids[0]",
        );
        refused(
            channel_ids("channel_ids", &vec![String::new(); 11], 10),
            "channel_ids",
        );
    }

    proptest! {
        #[test]
        fn any_text_is_parsed_or_refused_without_panicking(s in "\\PC{0,100}") {
            let _ = channel_id("f", &s);
            let _ = optional_address("f", &s);
            let _ = amount("f", &s);
            let _ = page_token("f", &s);
        }

        #[test]
        fn every_amount_round_trips(n in any::<u128>()) {
            prop_assert_eq!(amount("f", &n.to_string()).unwrap(), n);
        }

        #[test]
        fn every_id_round_trips(b in any::<[u8; 32]>()) {
            let id = B256::from(b);
            prop_assert_eq!(channel_id("f", &format!("{id:#x}")).unwrap(), id);
        }
    }
}
