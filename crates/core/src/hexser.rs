//! Strict hex serde for addresses, 32-byte words and byte strings.
//!
//! Input must be a JSON string `0x…` of the right length. A mixed-case address must carry a valid
//! EIP-55 checksum (all-lower or all-upper case is accepted), as Ethereum tooling checks it.
//! Addresses are written checksummed, words and bytes in lowercase.

use alloy_primitives::{Address, B256, Bytes, hex};
use serde::{Deserialize, Deserializer, Serializer, de};
use std::borrow::Cow;

fn strip_0x<'a, E: de::Error>(s: &'a str, what: &str) -> Result<&'a str, E> {
    s.strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or_else(|| E::custom(format!("{what} must be a 0x-prefixed hex string")))
}

/// Mixed-case addresses whose EIP-55 checksum passed, per thread (a direct-mapped table
/// indexed by the address's last byte). A payment names the same few addresses on every call
/// (its channel's payer, receiver, authorizers, token, the offer's asset and payTo), and each
/// check hashes the address with keccak: about 2% of the server's CPU per paid call before this
/// table. A hit needs the very characters that passed before, so the outcome never changes.
const CHECKED_SLOTS: usize = 64;

thread_local! {
    static CHECKED: std::cell::RefCell<[Option<[u8; 40]>; CHECKED_SLOTS]> =
        const { std::cell::RefCell::new([None; CHECKED_SLOTS]) };
}

/// Parses an address string with the EIP-55 rule for mixed case.
pub fn parse_address(s: &str) -> Result<Address, String> {
    let body = s
        .strip_prefix("0x")
        .ok_or_else(|| "address must be a 0x-prefixed hex string".to_owned())?;
    if body.len() != 40 || !body.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("address must be 20 bytes of hex".to_owned());
    }
    let mut out = [0u8; 20];
    hex::decode_to_slice(body, &mut out).map_err(|e| e.to_string())?;
    let has_upper = body.bytes().any(|b| b.is_ascii_uppercase());
    let has_lower = body.bytes().any(|b| b.is_ascii_lowercase());
    if has_upper && has_lower {
        let Ok(key) = <[u8; 40]>::try_from(body.as_bytes()) else {
            return Err("address must be 20 bytes of hex".to_owned());
        };
        let slot = usize::from(out[19]) % CHECKED_SLOTS;
        if CHECKED.with_borrow(|c| c[slot] == Some(key)) {
            return Ok(Address::from(out));
        }
        let a = Address::parse_checksummed(s, None)
            .map_err(|_| "address has an invalid EIP-55 checksum".to_owned())?;
        CHECKED.with_borrow_mut(|c| c[slot] = Some(key));
        Ok(a)
    } else {
        Ok(Address::from(out))
    }
}

/// Parses an address string's bytes without checking an EIP-55 checksum: for comparing a value
/// against a known address, where a wrong checksum cannot change the outcome.
pub fn parse_address_bytes(s: &str) -> Option<Address> {
    let body = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    let mut out = [0u8; 20];
    hex::decode_to_slice(body, &mut out).ok()?;
    Some(Address::from(out))
}

/// `Address` as a checksummed `0x…` string.
pub mod address {
    use super::*;

    /// Writes the EIP-55 checksummed form.
    pub fn serialize<S: Serializer>(a: &Address, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&a.to_checksum(None))
    }

    /// Reads a `0x` address, checking the checksum of mixed-case input.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Address, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        parse_address(&s).map_err(de::Error::custom)
    }
}

/// `B256` as a `0x` + 64 hex string.
pub mod b256 {
    use super::*;

    /// Writes lowercase hex.
    pub fn serialize<S: Serializer>(v: &B256, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Reads exactly 32 bytes of `0x` hex.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<B256, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        let body = strip_0x::<D::Error>(&s, "32-byte value")?;
        if body.len() != 64 {
            return Err(de::Error::custom("32-byte value must have 64 hex digits"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(body, &mut out).map_err(de::Error::custom)?;
        Ok(B256::from(out))
    }
}

/// `Bytes` as a `0x` hex string, bounded in length.
pub mod bytes {
    use super::*;

    /// The longest byte string accepted (an ERC-6492-wrapped signature with factory calldata).
    pub const MAX_LEN: usize = 4096;

    /// Writes lowercase hex.
    pub fn serialize<S: Serializer>(v: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Reads `0x` hex of even length, at most [`MAX_LEN`] bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        let body = strip_0x::<D::Error>(&s, "byte string")?;
        if body.len() > MAX_LEN * 2 {
            return Err(de::Error::custom("byte string too long"));
        }
        hex::decode(body)
            .map(Bytes::from)
            .map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_eip55() {
        let good = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
        let a = parse_address(good).unwrap();
        assert_eq!(parse_address(&good.to_lowercase()).unwrap(), a);
        assert_eq!(
            parse_address(&format!("0x{}", good[2..].to_uppercase())).unwrap(),
            a
        );
        // one letter's case flipped
        assert!(parse_address("0x70997970c51812dc3A010C7d01b50e0d17dc79C8").is_err());
        assert!(parse_address("70997970C51812dc3A010C7d01b50e0d17dc79C8").is_err());
        assert!(parse_address("0x70997970C51812dc3A010C7d01b50e0d17dc79").is_err());
        assert!(parse_address("0xg0997970C51812dc3A010C7d01b50e0d17dc79C8").is_err());
    }

    /// The table of checksums that passed changes no outcome: a valid address parses the same
    /// every time, and a wrong checksum is refused however often its valid twin (same bytes,
    /// same slot) passed before, and whatever passed in between.
    #[test]
    fn remembered_checksums_change_no_outcome() {
        let good = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
        let bad = "0x70997970c51812dc3A010C7d01b50e0d17dc79C8";
        let a = parse_address(good).unwrap();
        for _ in 0..3 {
            assert_eq!(parse_address(good).unwrap(), a);
            assert!(parse_address(bad).is_err());
            assert_eq!(parse_address(&good.to_lowercase()).unwrap(), a);
        }
        // many valid addresses through the same table, each read back right, then the first
        // one's wrong twin still refused
        for i in 0u32..500 {
            let x = Address::from_word(alloy_primitives::keccak256(i.to_be_bytes()));
            let text = x.to_checksum(None);
            assert_eq!(parse_address(&text).unwrap(), x, "{text}");
            assert_eq!(parse_address(&text).unwrap(), x, "{text}");
            // flip the case of its first letter: a wrong checksum
            let pos = text[2..].find(|c: char| c.is_ascii_alphabetic()).unwrap() + 2;
            let mut flipped = text.clone().into_bytes();
            flipped[pos] ^= 0x20;
            let flipped = String::from_utf8(flipped).unwrap();
            let mixed = flipped[2..].bytes().any(|b| b.is_ascii_uppercase())
                && flipped[2..].bytes().any(|b| b.is_ascii_lowercase());
            if mixed {
                assert!(parse_address(&flipped).is_err(), "{flipped}");
            }
        }
        assert!(parse_address(bad).is_err());
        assert_eq!(parse_address(good).unwrap(), a);
    }
}
