//! EIP-712 hashing for batch-settlement: the escrow's domain, channel ids, and the `Voucher`,
//! `Refund` and `ClaimBatch` digests; plus the token-side ERC-3009 `ReceiveWithAuthorization`
//! digest and deposit nonce.
//!
//! Every struct here has only static fields, so `hashStruct` is the keccak of 32-byte words; the
//! functions build those words directly (no allocation beyond a stack buffer). Tests check each
//! digest against alloy's generic EIP-712 implementation and against the reference SDK.

use alloy_primitives::{Address, B256, U256, b256, keccak256};

use super::types::ChannelConfig;

/// The escrow's EIP-712 domain name.
pub const DOMAIN_NAME: &str = "x402 Batch Settlement";
/// The escrow's EIP-712 domain version.
pub const DOMAIN_VERSION: &str = "1";

/// `keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")`
pub const EIP712_DOMAIN_TYPEHASH: B256 =
    b256!("8b73c3c69bb8fe3d512ecc4cf759cc79239f7b179b0ffacaa9a75d522b39400f");
/// `keccak256("ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)")`
pub const CHANNEL_CONFIG_TYPEHASH: B256 =
    b256!("1c9a06ceab9b0ebbd3301dc56c9111bb6d9af421356dc9ccb3b7084c755db308");
/// `keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)")`
pub const VOUCHER_TYPEHASH: B256 =
    b256!("1e1bd6ff84c3e0d9029a292b212e039c0ca97ec497c55191a4a5874294609a69");
/// `keccak256("Refund(bytes32 channelId,uint256 nonce,uint128 amount)")`
pub const REFUND_TYPEHASH: B256 =
    b256!("be23ad087435072cd69b49cc5b92de10ee610fce7ae0ab428307972d764bb216");
/// `keccak256("ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)")`
pub const CLAIM_ENTRY_TYPEHASH: B256 =
    b256!("30b9a0367528fca13c3e8ec6134c3113f1887ebe7a1ad61de0955aac288b0cf5");
/// `keccak256("ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)")`
pub const CLAIM_BATCH_TYPEHASH: B256 =
    b256!("42bd57c010b870c2e96203c66341f28a6a19b4d56a74533a8eb5f706b9fd6d57");
/// `keccak256("ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)")`
pub const RECEIVE_WITH_AUTHORIZATION_TYPEHASH: B256 =
    b256!("d099cc98ef71107a616c4f0f941f04c322d8e254fe26b3c6668db87aae413de8");

/// Fixed-size ABI encoding of `N` static words, hashed.
fn hash_words<const N: usize>(words: [[u8; 32]; N]) -> B256 {
    let mut buf = [0u8; 320];
    debug_assert!(N * 32 <= buf.len());
    for (i, w) in words.iter().enumerate() {
        buf[i * 32..(i + 1) * 32].copy_from_slice(w);
    }
    keccak256(&buf[..N * 32])
}

fn word_address(a: Address) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[12..].copy_from_slice(a.as_slice());
    w
}

fn word_u128(v: u128) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[16..].copy_from_slice(&v.to_be_bytes());
    w
}

fn word_u64(v: u64) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[24..].copy_from_slice(&v.to_be_bytes());
    w
}

/// The final EIP-712 digest `keccak256(0x1901 ‖ domainSeparator ‖ structHash)`.
pub fn typed_data_digest(domain_separator: B256, struct_hash: B256) -> B256 {
    let mut buf = [0u8; 66];
    buf[0] = 0x19;
    buf[1] = 0x01;
    buf[2..34].copy_from_slice(domain_separator.as_slice());
    buf[34..].copy_from_slice(struct_hash.as_slice());
    keccak256(buf)
}

/// An EIP-712 domain `{name, version, chainId, verifyingContract}`, with its separator computed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Eip712Domain {
    chain_id: u64,
    verifying_contract: Address,
    separator: B256,
}

impl Eip712Domain {
    /// A domain with the given name and version.
    pub fn new(name: &str, version: &str, chain_id: u64, verifying_contract: Address) -> Self {
        let separator = hash_words([
            EIP712_DOMAIN_TYPEHASH.0,
            keccak256(name.as_bytes()).0,
            keccak256(version.as_bytes()).0,
            word_u64(chain_id),
            word_address(verifying_contract),
        ]);
        Self {
            chain_id,
            verifying_contract,
            separator,
        }
    }

    /// The chain id.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The verifying contract.
    pub fn verifying_contract(&self) -> Address {
        self.verifying_contract
    }

    /// The domain separator.
    pub fn separator(&self) -> B256 {
        self.separator
    }
}

/// The batch-settlement escrow's domain on one chain, and the digests signed under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchDomain(Eip712Domain);

/// One row of a `ClaimBatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimEntry {
    /// The channel.
    pub channel_id: B256,
    /// The voucher's ceiling.
    pub max_claimable_amount: u128,
    /// Cumulative claimed total after the row.
    pub total_claimed: u128,
}

impl BatchDomain {
    /// The escrow at `escrow` on chain `chain_id`.
    pub fn new(chain_id: u64, escrow: Address) -> Self {
        Self(Eip712Domain::new(
            DOMAIN_NAME,
            DOMAIN_VERSION,
            chain_id,
            escrow,
        ))
    }

    /// The underlying EIP-712 domain.
    pub fn eip712(&self) -> &Eip712Domain {
        &self.0
    }

    /// The chain id.
    pub fn chain_id(&self) -> u64 {
        self.0.chain_id
    }

    /// The escrow contract.
    pub fn escrow(&self) -> Address {
        self.0.verifying_contract
    }

    /// `hashStruct(ChannelConfig)`.
    pub fn channel_config_hash(config: &ChannelConfig) -> B256 {
        hash_words([
            CHANNEL_CONFIG_TYPEHASH.0,
            word_address(config.payer),
            word_address(config.payer_authorizer),
            word_address(config.receiver),
            word_address(config.receiver_authorizer),
            word_address(config.token),
            word_u64(config.withdraw_delay),
            config.salt.0,
        ])
    }

    /// The channel id: the EIP-712 digest of the config under this domain.
    pub fn channel_id(&self, config: &ChannelConfig) -> B256 {
        typed_data_digest(self.0.separator, Self::channel_config_hash(config))
    }

    /// Digest of `Voucher(channelId, maxClaimableAmount)`.
    pub fn voucher_digest(&self, channel_id: B256, max_claimable_amount: u128) -> B256 {
        let h = hash_words([
            VOUCHER_TYPEHASH.0,
            channel_id.0,
            word_u128(max_claimable_amount),
        ]);
        typed_data_digest(self.0.separator, h)
    }

    /// Digest of `Refund(channelId, nonce, amount)`.
    pub fn refund_digest(&self, channel_id: B256, nonce: U256, amount: u128) -> B256 {
        let h = hash_words([
            REFUND_TYPEHASH.0,
            channel_id.0,
            nonce.to_be_bytes::<32>(),
            word_u128(amount),
        ]);
        typed_data_digest(self.0.separator, h)
    }

    /// Digest of `ClaimBatch(ClaimEntry[] claims)`.
    pub fn claim_batch_digest(&self, entries: &[ClaimEntry]) -> B256 {
        let mut hashes = Vec::with_capacity(entries.len() * 32);
        for e in entries {
            let h = hash_words([
                CLAIM_ENTRY_TYPEHASH.0,
                e.channel_id.0,
                word_u128(e.max_claimable_amount),
                word_u128(e.total_claimed),
            ]);
            hashes.extend_from_slice(h.as_slice());
        }
        let root = keccak256(&hashes);
        let h = hash_words([CLAIM_BATCH_TYPEHASH.0, root.0]);
        typed_data_digest(self.0.separator, h)
    }
}

/// The ERC-3009 nonce the deposit collector derives: `keccak256(abi.encode(channelId, salt))`.
pub fn deposit_nonce(channel_id: B256, salt: U256) -> B256 {
    hash_words([channel_id.0, salt.to_be_bytes::<32>()])
}

/// An ERC-3009 `ReceiveWithAuthorization` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveWithAuthorization {
    /// Token owner.
    pub from: Address,
    /// Recipient, which must be the caller (the deposit collector).
    pub to: Address,
    /// Amount.
    pub value: U256,
    /// Not valid before.
    pub valid_after: U256,
    /// Not valid at or after.
    pub valid_before: U256,
    /// Unique nonce.
    pub nonce: B256,
}

impl ReceiveWithAuthorization {
    /// Digest under the token's domain.
    pub fn digest(&self, token_domain: &Eip712Domain) -> B256 {
        let h = hash_words([
            RECEIVE_WITH_AUTHORIZATION_TYPEHASH.0,
            word_address(self.from),
            word_address(self.to),
            self.value.to_be_bytes::<32>(),
            self.valid_after.to_be_bytes::<32>(),
            self.valid_before.to_be_bytes::<32>(),
            self.nonce.0,
        ]);
        typed_data_digest(token_domain.separator(), h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{address, keccak256};
    use alloy_sol_types::{SolStruct, eip712_domain, sol};

    sol! {
        struct ChannelConfig { address payer; address payerAuthorizer; address receiver; address receiverAuthorizer; address token; uint40 withdrawDelay; bytes32 salt; }
        struct Voucher { bytes32 channelId; uint128 maxClaimableAmount; }
        struct Refund { bytes32 channelId; uint256 nonce; uint128 amount; }
        struct ClaimEntry { bytes32 channelId; uint128 maxClaimableAmount; uint128 totalClaimed; }
        struct ClaimBatch { ClaimEntry[] claims; }
        struct ReceiveWithAuthorization { address from; address to; uint256 value; uint256 validAfter; uint256 validBefore; bytes32 nonce; }
    }

    const ESCROW: Address = address!("4020074e9dF2ce1deE5A9C1b5c3f541D02a10003");

    fn cfg() -> super::ChannelConfig {
        super::ChannelConfig {
            payer: address!("70997970C51812dc3A010C7d01b50e0d17dc79C8"),
            payer_authorizer: address!("70997970C51812dc3A010C7d01b50e0d17dc79C8"),
            receiver: address!("3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"),
            receiver_authorizer: address!("90F79bf6EB2c4f870365E785982E1f101E93b906"),
            token: address!("5FbDB2315678afecb367f032d93F642f64180aa3"),
            withdraw_delay: 900,
            salt: b256!("0000000000000000000000000000000000000000000000000000000000000001"),
        }
    }

    #[test]
    fn typehashes_are_the_type_strings() {
        assert_eq!(
            CHANNEL_CONFIG_TYPEHASH,
            keccak256(ChannelConfig::eip712_encode_type().as_bytes())
        );
        assert_eq!(
            VOUCHER_TYPEHASH,
            keccak256(Voucher::eip712_encode_type().as_bytes())
        );
        assert_eq!(
            REFUND_TYPEHASH,
            keccak256(Refund::eip712_encode_type().as_bytes())
        );
        assert_eq!(
            CLAIM_ENTRY_TYPEHASH,
            keccak256(ClaimEntry::eip712_encode_type().as_bytes())
        );
        assert_eq!(
            CLAIM_BATCH_TYPEHASH,
            keccak256(ClaimBatch::eip712_encode_type().as_bytes())
        );
        assert_eq!(
            RECEIVE_WITH_AUTHORIZATION_TYPEHASH,
            keccak256(ReceiveWithAuthorization::eip712_encode_type().as_bytes())
        );
    }

    #[test]
    fn digests_match_alloys_generic_eip712() {
        let d = BatchDomain::new(31337, ESCROW);
        let ad = eip712_domain! { name: DOMAIN_NAME, version: DOMAIN_VERSION, chain_id: 31337, verifying_contract: ESCROW, };
        assert_eq!(d.eip712().separator(), ad.separator());
        let c = cfg();
        let sc = ChannelConfig {
            payer: c.payer,
            payerAuthorizer: c.payer_authorizer,
            receiver: c.receiver,
            receiverAuthorizer: c.receiver_authorizer,
            token: c.token,
            withdrawDelay: alloy_primitives::aliases::U40::from(c.withdraw_delay),
            salt: c.salt,
        };
        let id = d.channel_id(&c);
        assert_eq!(id, sc.eip712_signing_hash(&ad));
        let v = Voucher {
            channelId: id,
            maxClaimableAmount: 12345,
        };
        assert_eq!(d.voucher_digest(id, 12345), v.eip712_signing_hash(&ad));
        let r = Refund {
            channelId: id,
            nonce: U256::from(7),
            amount: 99,
        };
        assert_eq!(
            d.refund_digest(id, U256::from(7), 99),
            r.eip712_signing_hash(&ad)
        );
        let rows = [
            super::ClaimEntry {
                channel_id: id,
                max_claimable_amount: 10,
                total_claimed: 9,
            },
            super::ClaimEntry {
                channel_id: B256::repeat_byte(7),
                max_claimable_amount: 5,
                total_claimed: 5,
            },
        ];
        let cb = ClaimBatch {
            claims: rows
                .iter()
                .map(|e| ClaimEntry {
                    channelId: e.channel_id,
                    maxClaimableAmount: e.max_claimable_amount,
                    totalClaimed: e.total_claimed,
                })
                .collect(),
        };
        assert_eq!(d.claim_batch_digest(&rows), cb.eip712_signing_hash(&ad));
        assert_eq!(
            d.claim_batch_digest(&[]),
            ClaimBatch { claims: vec![] }.eip712_signing_hash(&ad)
        );

        let token = Eip712Domain::new("USD Coin", "2", 8453, c.token);
        let tad = eip712_domain! { name: "USD Coin", version: "2", chain_id: 8453, verifying_contract: c.token, };
        let m = super::ReceiveWithAuthorization {
            from: c.payer,
            to: ESCROW,
            value: U256::from(1_000_000u64),
            valid_after: U256::ZERO,
            valid_before: U256::from(1_770_000_000u64),
            nonce: deposit_nonce(id, U256::from(42)),
        };
        let sm = ReceiveWithAuthorization {
            from: m.from,
            to: m.to,
            value: m.value,
            validAfter: m.valid_after,
            validBefore: m.valid_before,
            nonce: m.nonce,
        };
        assert_eq!(m.digest(&token), sm.eip712_signing_hash(&tad));
    }

    #[test]
    fn channel_id_matches_the_reference_sdk() {
        // computeChannelId from @x402/evm 2.27 for this config (see tests/vectors for more).
        let c = cfg();
        assert_eq!(
            BatchDomain::new(31337, ESCROW).channel_id(&c),
            b256!("15b5cbc562125867593bcf9ff41e1c440274a725bacd8c1b15b952a4163ae61d")
        );
        assert_eq!(
            BatchDomain::new(8453, ESCROW).channel_id(&c),
            b256!("f55031ffb702eda95242f45f3b2770c149b897441784da40a320f68edad47401")
        );
    }
}
