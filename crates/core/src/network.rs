//! CAIP-2 network identifiers (`eip155:8453`), as x402 v2 carries them.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a network identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// Not of the form `namespace:reference` with CAIP-2's character sets and lengths.
    #[error("network {0:?} is not a CAIP-2 chain id (namespace:reference)")]
    NotCaip2(String),
    /// A CAIP-2 id, but not an EVM (`eip155`) chain.
    #[error("network {0:?} is not an EVM chain (eip155:<chain id>)")]
    NotEvm(String),
    /// An `eip155` id whose reference is not a decimal chain id.
    #[error("network {0:?} has an invalid EVM chain id")]
    BadChainId(String),
}

/// A CAIP-2 chain id. paychan's scheme only runs on `eip155` chains, but any well-formed id
/// round-trips so that offers for other chains can be carried and skipped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Network(String);

impl Network {
    /// The `eip155` network of an EVM chain id.
    pub fn eip155(chain_id: u64) -> Self {
        Self(format!("eip155:{chain_id}"))
    }

    /// The identifier as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The CAIP-2 namespace (`eip155`).
    pub fn namespace(&self) -> &str {
        self.0.split_once(':').map_or("", |(ns, _)| ns)
    }

    /// The EVM chain id, if this is an `eip155` network.
    pub fn evm_chain_id(&self) -> Result<u64, NetworkError> {
        let Some(reference) = self.0.strip_prefix("eip155:") else {
            return Err(NetworkError::NotEvm(self.0.clone()));
        };
        crate::amount::parse_u64(reference)
            .ok()
            .filter(|id| *id != 0)
            .ok_or_else(|| NetworkError::BadChainId(self.0.clone()))
    }
}

fn is_caip2(s: &str) -> bool {
    // CAIP-2: namespace [-a-z0-9]{3,8} ':' reference [-_a-zA-Z0-9]{1,32}
    let Some((ns, reference)) = s.split_once(':') else {
        return false;
    };
    (3..=8).contains(&ns.len())
        && ns
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_lowercase() || b.is_ascii_digit())
        && (1..=32).contains(&reference.len())
        && reference
            .bytes()
            .all(|b| b == b'-' || b == b'_' || b.is_ascii_alphanumeric())
}

impl FromStr for Network {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if is_caip2(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(NetworkError::NotCaip2(s.to_owned()))
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Network {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_evm_networks() {
        let n: Network = "eip155:8453".parse().unwrap();
        assert_eq!(n.evm_chain_id(), Ok(8453));
        assert_eq!(n.namespace(), "eip155");
        assert_eq!(Network::eip155(31337).as_str(), "eip155:31337");
    }

    #[test]
    fn refuses_malformed_and_non_evm() {
        for bad in [
            "",
            "eip155",
            "eip155:",
            ":1",
            "EIP155:1",
            "eip155:1:2",
            "ab:1",
            "eip155:1 ",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad:?} accepted");
        }
        let sol: Network = "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp".parse().unwrap();
        assert!(matches!(sol.evm_chain_id(), Err(NetworkError::NotEvm(_))));
        for bad in [
            "eip155:0",
            "eip155:01",
            "eip155:abc",
            "eip155:99999999999999999999",
        ] {
            let n: Network = bad.parse().unwrap();
            assert!(
                matches!(n.evm_chain_id(), Err(NetworkError::BadChainId(_))),
                "{bad}"
            );
        }
    }
}
