//! secp256k1 signatures as Ethereum uses them: parsing, recovery, fast verification against a
//! cached key, and signing.
//!
//! Acceptance matches what the escrow's `ECDSA.recover` accepts on chain, so a voucher paychan
//! accepts is one the contract will accept when it is claimed: exactly 65 bytes `r ‖ s ‖ v`,
//! `v` ∈ {27, 28} (or {0, 1}, which some signers emit), `0 < r, s < n`, and low `s`
//! (`s ≤ n/2`, EIP-2). Anything else is refused.
//!
//! The warm path ([`Backend::verify`]) must check more than plain ECDSA validity: a valid
//! signature with the wrong `v` verifies against the key but recovers a *different* address on
//! chain, which would make the claim revert. So the k256 backend computes `R = u1·G + u2·Q`
//! itself and checks both `R.x == r` and the parity of `R.y` against `v`, at the cost of one
//! ECDSA verification.

use alloy_primitives::{Address, B256, keccak256};
use k256::{
    AffinePoint, ProjectivePoint, Scalar,
    ecdsa::{RecoveryId, Signature as KSig, SigningKey, VerifyingKey},
    elliptic_curve::{
        PrimeField,
        ops::{MulByGeneratorVartime, Reduce},
        point::AffineCoordinates,
        scalar::IsHigh,
    },
};

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// Not 65 bytes.
    #[error("signature must be 65 bytes (r, s, v), got {0}")]
    Length(usize),
    /// `v` not in {0, 1, 27, 28}.
    #[error("signature recovery byte v={0} is not 27 or 28")]
    BadV(u8),
    /// `r` or `s` is zero or not below the curve order.
    #[error("signature r or s is out of range")]
    OutOfRange,
    /// `s` is in the upper half of the order (malleable form).
    #[error("signature s is not in the lower half of the curve order")]
    HighS,
    /// The signature does not match the digest and key.
    #[error("signature does not verify")]
    Mismatch,
    /// A key could not be parsed or created.
    #[error("invalid key")]
    BadKey,
}

/// A parsed, range-checked 65-byte Ethereum signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature {
    r: [u8; 32],
    s: [u8; 32],
    /// y-parity of `R`: 0 or 1.
    parity: u8,
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Signature(0x{})",
            alloy_primitives::hex::encode(self.to_bytes())
        )
    }
}

impl Signature {
    /// Parses `r ‖ s ‖ v`, refusing anything the escrow would refuse.
    pub fn from_bytes(b: &[u8]) -> Result<Self, SigError> {
        if b.len() != 65 {
            return Err(SigError::Length(b.len()));
        }
        let parity = match b[64] {
            0 | 27 => 0,
            1 | 28 => 1,
            v => return Err(SigError::BadV(v)),
        };
        let mut r = [0u8; 32];
        let mut s = [0u8; 32];
        r.copy_from_slice(&b[..32]);
        s.copy_from_slice(&b[32..64]);
        let sig = KSig::from_scalars(r, s).map_err(|_| SigError::OutOfRange)?;
        if bool::from(sig.s().is_high()) {
            return Err(SigError::HighS);
        }
        Ok(Self { r, s, parity })
    }

    /// The canonical bytes, with `v` ∈ {27, 28}.
    pub fn to_bytes(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        out[..32].copy_from_slice(&self.r);
        out[32..64].copy_from_slice(&self.s);
        out[64] = 27 + self.parity;
        out
    }

    /// The y-parity (0 or 1).
    pub fn parity(&self) -> u8 {
        self.parity
    }

    fn k256(&self) -> Result<(KSig, RecoveryId), SigError> {
        let sig = KSig::from_scalars(self.r, self.s).map_err(|_| SigError::OutOfRange)?;
        let rid = RecoveryId::from_byte(self.parity).ok_or(SigError::BadV(self.parity))?;
        Ok((sig, rid))
    }
}

/// Ethereum address of an uncompressed public key `x ‖ y`.
fn address_of_xy(xy: &[u8]) -> Address {
    Address::from_slice(&keccak256(xy)[12..])
}

/// A signer's public key, recovered once and kept for the fast path, with its address.
#[derive(Clone, Debug)]
pub struct SignerKey {
    address: Address,
    inner: KeyInner,
}

#[derive(Clone, Debug)]
enum KeyInner {
    K256(ProjectivePoint),
    #[cfg(feature = "secp256k1")]
    Secp(secp256k1::PublicKey),
}

impl SignerKey {
    /// The signer's address.
    pub fn address(&self) -> Address {
        self.address
    }
}

/// Which secp256k1 implementation checks signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// RustCrypto `k256` (pure Rust; the default).
    #[default]
    K256,
    /// `libsecp256k1` through the `secp256k1` crate (the `secp256k1` feature).
    #[cfg(feature = "secp256k1")]
    Libsecp256k1,
}

impl Backend {
    /// Every backend compiled in.
    pub fn all() -> &'static [Backend] {
        &[
            Backend::K256,
            #[cfg(feature = "secp256k1")]
            Backend::Libsecp256k1,
        ]
    }

    /// The fastest backend compiled in: libsecp256k1 with the `secp256k1` feature (its warm
    /// check takes ~0.6× k256's, BENCHMARKS.md §1), else k256. What a server should run;
    /// [`Backend::default`] stays k256 whatever the features.
    pub fn fastest() -> Backend {
        #[cfg(feature = "secp256k1")]
        return Backend::Libsecp256k1;
        #[cfg(not(feature = "secp256k1"))]
        Backend::K256
    }

    /// A short name for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Backend::K256 => "k256",
            #[cfg(feature = "secp256k1")]
            Backend::Libsecp256k1 => "libsecp256k1",
        }
    }

    /// Recovers the signer of `digest` (the cold path).
    pub fn recover(self, digest: &B256, sig: &Signature) -> Result<SignerKey, SigError> {
        match self {
            Backend::K256 => {
                let (ks, rid) = sig.k256()?;
                let vk = VerifyingKey::recover_from_prehash(digest.as_slice(), &ks, rid)
                    .map_err(|_| SigError::Mismatch)?;
                let point = vk.to_sec1_point(false);
                let address = address_of_xy(&point.as_bytes()[1..]);
                Ok(SignerKey {
                    address,
                    inner: KeyInner::K256(ProjectivePoint::from(*vk.as_affine())),
                })
            }
            #[cfg(feature = "secp256k1")]
            Backend::Libsecp256k1 => {
                let pk = secp_recover(digest, sig)?;
                let address = address_of_xy(&pk.serialize_uncompressed()[1..]);
                Ok(SignerKey {
                    address,
                    inner: KeyInner::Secp(pk),
                })
            }
        }
    }

    /// Checks that `sig` over `digest` was made by `key`, including its recovery byte, so that
    /// on-chain recovery yields the same address (the warm path).
    pub fn verify(self, digest: &B256, sig: &Signature, key: &SignerKey) -> Result<(), SigError> {
        match (&key.inner, self) {
            (KeyInner::K256(q), Backend::K256) => k256_verify_with_parity(digest, sig, q),
            #[cfg(feature = "secp256k1")]
            (KeyInner::Secp(pk), Backend::Libsecp256k1) => {
                // libsecp256k1 recovery is about as fast as its verification and settles `v` too.
                if secp_recover(digest, sig)? == *pk {
                    Ok(())
                } else {
                    Err(SigError::Mismatch)
                }
            }
            // A key cached by another backend: fall back to recovery.
            #[cfg(feature = "secp256k1")]
            _ => {
                if self.recover(digest, sig)?.address == key.address {
                    Ok(())
                } else {
                    Err(SigError::Mismatch)
                }
            }
        }
    }

    /// Recovers and compares to an expected address; returns the key for caching.
    pub fn recover_expecting(
        self,
        digest: &B256,
        sig: &Signature,
        expected: Address,
    ) -> Result<SignerKey, SigError> {
        let key = self.recover(digest, sig)?;
        if key.address == expected {
            Ok(key)
        } else {
            Err(SigError::Mismatch)
        }
    }
}

fn k256_verify_with_parity(
    digest: &B256,
    sig: &Signature,
    q: &ProjectivePoint,
) -> Result<(), SigError> {
    let r: Option<Scalar> = Scalar::from_repr(sig.r.into()).into();
    let s: Option<Scalar> = Scalar::from_repr(sig.s.into()).into();
    let (r, s) = r.zip(s).ok_or(SigError::OutOfRange)?;
    let s_inv: Option<Scalar> = s.invert_vartime().into();
    let s_inv = s_inv.ok_or(SigError::OutOfRange)?;
    if bool::from(r.is_zero()) {
        return Err(SigError::OutOfRange);
    }
    let z = <Scalar as Reduce<k256::FieldBytes>>::reduce(&digest.0.into());
    let u1 = z * s_inv;
    let u2 = r * s_inv;
    // Variable time is fine here: every input (digest, signature, public key) is public.
    let big_r: AffinePoint =
        ProjectivePoint::mul_by_generator_and_mul_add_vartime(&u1, &u2, q).to_affine();
    if big_r == AffinePoint::IDENTITY {
        return Err(SigError::Mismatch);
    }
    // R.x must equal r exactly (not merely mod n): Ethereum's v encodes only the y-parity, so a
    // signature whose R.x ≥ n cannot be recovered on chain.
    let x: [u8; 32] = big_r.x().into();
    if x != sig.r {
        return Err(SigError::Mismatch);
    }
    if u8::from(bool::from(big_r.y_is_odd())) != sig.parity {
        return Err(SigError::Mismatch);
    }
    Ok(())
}

#[cfg(feature = "secp256k1")]
fn secp_recover(digest: &B256, sig: &Signature) -> Result<secp256k1::PublicKey, SigError> {
    use secp256k1::ecdsa::{RecoverableSignature, RecoveryId as SRid};
    let rid = SRid::try_from(i32::from(sig.parity)).map_err(|_| SigError::BadV(sig.parity))?;
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&sig.r);
    compact[32..].copy_from_slice(&sig.s);
    let rs = RecoverableSignature::from_compact(&compact, rid).map_err(|_| SigError::OutOfRange)?;
    let msg = secp256k1::Message::from_digest(digest.0);
    secp256k1::SECP256K1
        .recover_ecdsa(msg, &rs)
        .map_err(|_| SigError::Mismatch)
}

/// A local secp256k1 key that signs EIP-712 digests (vouchers, claim batches, refunds, ERC-3009
/// authorizations). The key never appears in `Debug` output.
#[derive(Clone)]
pub struct LocalSigner {
    key: SigningKey,
    address: Address,
}

impl std::fmt::Debug for LocalSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSigner")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl LocalSigner {
    /// From 32 secret bytes.
    pub fn from_bytes(secret: &B256) -> Result<Self, SigError> {
        let key = SigningKey::from_bytes(&secret.0.into()).map_err(|_| SigError::BadKey)?;
        let point = key.verifying_key().to_sec1_point(false);
        let address = address_of_xy(&point.as_bytes()[1..]);
        Ok(Self { key, address })
    }

    /// From a `0x`-prefixed (or bare) 64-digit hex string, as found in key files and environment
    /// variables. Surrounding whitespace is ignored. The error never contains the input.
    pub fn from_hex(s: &str) -> Result<Self, SigError> {
        let s = s.trim();
        let s = s.strip_prefix("0x").unwrap_or(s);
        let mut out = [0u8; 32];
        alloy_primitives::hex::decode_to_slice(s, &mut out).map_err(|_| SigError::BadKey)?;
        Self::from_bytes(&B256::from(out))
    }

    /// The signer's address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// Signs a 32-byte digest; the result is low-s with `v` ∈ {27, 28}.
    pub fn sign_digest(&self, digest: &B256) -> Result<Signature, SigError> {
        let (sig, rid) = self.key.sign_prehash_recoverable(digest.as_slice());
        // k256 signs with low s already; normalizing again keeps the invariant explicit.
        let (sig, parity) = if bool::from(sig.s().is_high()) {
            (sig.normalize_s(), rid.to_byte() ^ 1)
        } else {
            (sig, rid.to_byte())
        };
        let (r, s) = sig.split_bytes();
        Ok(Signature {
            r: r.into(),
            s: s.into(),
            parity: parity & 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::b256;

    fn key() -> LocalSigner {
        // anvil account #1
        LocalSigner::from_hex("0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
            .unwrap()
    }

    #[test]
    fn signs_and_recovers() {
        let k = key();
        assert_eq!(
            k.address(),
            alloy_primitives::address!("70997970C51812dc3A010C7d01b50e0d17dc79C8")
        );
        let d = b256!("1111111111111111111111111111111111111111111111111111111111111111");
        let sig = k.sign_digest(&d).unwrap();
        let parsed = Signature::from_bytes(&sig.to_bytes()).unwrap();
        assert_eq!(parsed, sig);
        for &b in Backend::all() {
            let rk = b.recover(&d, &sig).unwrap();
            assert_eq!(rk.address(), k.address());
            b.verify(&d, &sig, &rk).unwrap();
            let other = b256!("2222222222222222222222222222222222222222222222222222222222222222");
            assert_eq!(b.verify(&other, &sig, &rk), Err(SigError::Mismatch));
        }
    }

    #[test]
    fn wrong_v_is_refused_on_the_warm_path() {
        let k = key();
        let d = b256!("3333333333333333333333333333333333333333333333333333333333333333");
        let sig = k.sign_digest(&d).unwrap();
        let mut bytes = sig.to_bytes();
        bytes[64] = if bytes[64] == 27 { 28 } else { 27 };
        let flipped = Signature::from_bytes(&bytes).unwrap();
        for &b in Backend::all() {
            let rk = b.recover(&d, &sig).unwrap();
            assert_eq!(b.verify(&d, &flipped, &rk), Err(SigError::Mismatch));
            // and recovering the flipped one yields someone else
            if let Ok(other) = b.recover(&d, &flipped) {
                assert_ne!(other.address(), k.address());
            }
        }
    }

    #[test]
    fn high_s_and_malformed_are_refused() {
        let k = key();
        let d = b256!("4444444444444444444444444444444444444444444444444444444444444444");
        let sig = k.sign_digest(&d).unwrap().to_bytes();
        // s' = n - s, v flipped: the malleable twin
        let n = k256::U256::from_be_hex(
            "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141",
        );
        let s = k256::U256::from_be_slice(&sig[32..64]);
        let hs = n.wrapping_sub(&s);
        let mut twin = sig;
        twin[32..64].copy_from_slice(&hs.to_be_bytes());
        twin[64] = if sig[64] == 27 { 28 } else { 27 };
        assert_eq!(Signature::from_bytes(&twin), Err(SigError::HighS));
        assert_eq!(Signature::from_bytes(&sig[..64]), Err(SigError::Length(64)));
        let mut bad_v = sig;
        bad_v[64] = 29;
        assert_eq!(Signature::from_bytes(&bad_v), Err(SigError::BadV(29)));
        let mut zero_r = sig;
        zero_r[..32].fill(0);
        assert_eq!(Signature::from_bytes(&zero_r), Err(SigError::OutOfRange));
        let mut big_s = sig;
        big_s[32..64].fill(0xff);
        assert!(Signature::from_bytes(&big_s).is_err());
        // v in {0,1} is read as {27,28}
        let mut v0 = sig;
        v0[64] -= 27;
        assert_eq!(Signature::from_bytes(&v0).unwrap().to_bytes(), sig);
    }

    /// The k256 paths (variable-time recovery and warm check) agree with libsecp256k1 over many
    /// keys and digests, on good signatures and on signatures for another digest.
    #[cfg(feature = "secp256k1")]
    #[test]
    fn backends_agree_over_many_keys() {
        for i in 0u32..300 {
            let secret = keccak256(i.to_be_bytes());
            let Ok(signer) = LocalSigner::from_bytes(&secret) else {
                continue;
            };
            let digest = keccak256(secret);
            let other = keccak256(digest);
            let sig = signer.sign_digest(&digest).unwrap();
            let k = Backend::K256.recover(&digest, &sig).unwrap();
            let l = Backend::Libsecp256k1.recover(&digest, &sig).unwrap();
            assert_eq!(k.address(), signer.address());
            assert_eq!(l.address(), signer.address());
            Backend::K256.verify(&digest, &sig, &k).unwrap();
            Backend::Libsecp256k1.verify(&digest, &sig, &l).unwrap();
            // The same signature over another digest recovers someone else (or nobody) on both.
            let k_other = Backend::K256.recover(&other, &sig).map(|k| k.address());
            let l_other = Backend::Libsecp256k1
                .recover(&other, &sig)
                .map(|k| k.address());
            assert_eq!(k_other, l_other);
            assert_ne!(k_other, Ok(signer.address()));
            assert_eq!(
                Backend::K256.verify(&other, &sig, &k),
                Err(SigError::Mismatch)
            );
        }
    }

    #[test]
    fn the_default_stays_k256_and_the_fastest_follows_the_features() {
        assert_eq!(Backend::default(), Backend::K256);
        let fastest = if cfg!(feature = "secp256k1") {
            "libsecp256k1"
        } else {
            "k256"
        };
        assert_eq!(Backend::fastest().name(), fastest);
        assert!(Backend::all().contains(&Backend::fastest()));
    }

    #[test]
    fn key_parsing_never_echoes_input() {
        let e = LocalSigner::from_hex("0xnot-a-key-but-a-secret").unwrap_err();
        assert!(!format!("{e} {e:?}").contains("secret"));
        assert!(!format!("{:?}", key()).contains("59c6995e"));
    }
}
