//! The key a relayer or payer sends transactions with. It never appears in `Debug` output, logs
//! or errors.

use alloy::{
    primitives::{Address, B256, Signature},
    signers::{SignerSync, local::PrivateKeySigner},
};
use paychan_core::sig::LocalSigner;

use crate::{Error, Result};

/// A transaction-signing key: an alloy [`PrivateKeySigner`] or paychan-core's [`LocalSigner`]
/// (which signs the transaction's hash with its `sign_digest`).
#[derive(Clone)]
pub struct TxKey(KeyInner);

#[derive(Clone)]
enum KeyInner {
    Alloy(PrivateKeySigner),
    Core(LocalSigner),
}

impl std::fmt::Debug for TxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxKey")
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

impl TxKey {
    /// From 32 secret bytes.
    pub fn from_secret(secret: &B256) -> Result<Self> {
        PrivateKeySigner::from_bytes(secret)
            .map(|k| Self(KeyInner::Alloy(k)))
            .map_err(|_| Error::Signer("the secret is not a valid secp256k1 key".into()))
    }

    /// From `0x`-prefixed (or bare) hex; the error never contains the input.
    pub fn from_hex(s: &str) -> Result<Self> {
        let s = s.trim();
        let s = s.strip_prefix("0x").unwrap_or(s);
        let mut out = [0u8; 32];
        alloy::hex::decode_to_slice(s, &mut out)
            .map_err(|_| Error::Signer("the key is not 64 hex digits".into()))?;
        Self::from_secret(&B256::from(out))
    }

    /// The sender address.
    pub fn address(&self) -> Address {
        match &self.0 {
            KeyInner::Alloy(k) => k.address(),
            KeyInner::Core(k) => k.address(),
        }
    }

    /// Signs a transaction's signing hash.
    pub(crate) fn sign_hash(&self, hash: &B256) -> Result<Signature> {
        match &self.0 {
            KeyInner::Alloy(k) => k
                .sign_hash_sync(hash)
                .map_err(|e| Error::Signer(e.to_string())),
            KeyInner::Core(k) => {
                let sig = k
                    .sign_digest(hash)
                    .map_err(|e| Error::Signer(e.to_string()))?;
                Signature::from_raw_array(&sig.to_bytes()).map_err(|e| Error::Signer(e.to_string()))
            }
        }
    }
}

impl From<PrivateKeySigner> for TxKey {
    fn from(k: PrivateKeySigner) -> Self {
        Self(KeyInner::Alloy(k))
    }
}

impl From<LocalSigner> for TxKey {
    fn from(k: LocalSigner) -> Self {
        Self(KeyInner::Core(k))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use alloy::primitives::b256;

    const SECRET: B256 = b256!("59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d");

    #[test]
    fn both_backends_sign_alike_and_hide_the_key() {
        let a = TxKey::from_secret(&SECRET).unwrap();
        let c = TxKey::from(LocalSigner::from_bytes(&SECRET).unwrap());
        assert_eq!(a.address(), c.address());
        let h = b256!("1111111111111111111111111111111111111111111111111111111111111111");
        let sa = a.sign_hash(&h).unwrap();
        let sc = c.sign_hash(&h).unwrap();
        assert_eq!(sa.recover_address_from_prehash(&h).unwrap(), a.address());
        assert_eq!(sc.recover_address_from_prehash(&h).unwrap(), a.address());
        let dbg = format!("{a:?}{c:?}");
        assert!(!dbg.to_lowercase().contains("59c6995e"));
        let e = TxKey::from_hex("0xzz59c6995e").unwrap_err().to_string();
        assert!(!e.contains("59c6995e"));
    }
}
