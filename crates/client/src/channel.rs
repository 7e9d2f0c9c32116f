//! One channel as the payer keeps it: the core's [`PayerChannel`] plus what the client adds (the
//! server, its pool index, the offer last paid under, whether it is halted, the highest ceiling
//! ever signed, the voucher in flight, the period's spending), and how it is stored.
//!
//! **Salts are derived, not random** ([`channel_salt`]): the `index`-th channel of a payer at a
//! server for a set of terms always has the same config, hence the same channel id, so a payer
//! that lost its store finds its channels again on chain by recomputing them.
//!
//! **Storage.** The core fields go into the store's [`PayerChannelRecord`]; the client's own
//! fields into a metadata value (`paychan-client/channel/<id>`, a format byte then JSON) written
//! in the same atomic batch.

use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use paychan_core::{
    amount::{opt_u128_dec, u128_dec},
    batch::{ChannelConfig, payer::PayerChannel},
    sig::Signature,
    x402::{PaymentRequirements, ResourceInfo},
};
use paychan_store::PayerChannelRecord;
use serde::{Deserialize, Serialize};

/// Domain tag of [`channel_salt`].
const SALT_TAG: &[u8] = b"paychan-client/channel-salt/v1";
/// Domain tag of deposit authorization salts.
const DEPOSIT_TAG: &[u8] = b"paychan-client/deposit-salt/v1";
/// Metadata key prefix of the client's per-channel fields.
pub(crate) const META_PREFIX: &str = "paychan-client/channel/";
/// Format byte of the stored per-channel fields.
const META_FORMAT: u8 = 1;

/// The salt of the `index`-th channel of `payer` at the server `origin` for the terms
/// (`receiver`, `receiver_authorizer`, `asset`, `withdraw_delay`):
/// `keccak256(tag ‖ payer ‖ keccak256(origin) ‖ receiver ‖ receiverAuthorizer ‖ asset ‖
/// withdrawDelay (8 bytes BE) ‖ index (8 bytes BE))`, tag `paychan-client/channel-salt/v1`.
///
/// The origin is part of it so that two servers that share a receiver never share a channel
/// (each server keeps its own charged totals).
#[must_use]
pub fn channel_salt(
    payer: Address,
    origin: &str,
    receiver: Address,
    receiver_authorizer: Address,
    asset: Address,
    withdraw_delay: u64,
    index: u64,
) -> B256 {
    let mut buf = Vec::with_capacity(SALT_TAG.len() + 20 * 4 + 32 + 16);
    buf.extend_from_slice(SALT_TAG);
    buf.extend_from_slice(payer.as_slice());
    buf.extend_from_slice(keccak256(origin.as_bytes()).as_slice());
    buf.extend_from_slice(receiver.as_slice());
    buf.extend_from_slice(receiver_authorizer.as_slice());
    buf.extend_from_slice(asset.as_slice());
    buf.extend_from_slice(&withdraw_delay.to_be_bytes());
    buf.extend_from_slice(&index.to_be_bytes());
    keccak256(buf)
}

/// The ERC-3009 salt of a deposit: unique per channel, deposit sequence number, balance before
/// the deposit and time, so two deposits never share an authorization nonce (even after the
/// store was lost and the sequence starts again).
pub(crate) fn deposit_salt(channel_id: B256, seq: u64, balance: u128, now_secs: u64) -> U256 {
    let mut buf = Vec::with_capacity(DEPOSIT_TAG.len() + 32 + 8 + 16 + 8);
    buf.extend_from_slice(DEPOSIT_TAG);
    buf.extend_from_slice(channel_id.as_slice());
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&balance.to_be_bytes());
    buf.extend_from_slice(&now_secs.to_be_bytes());
    U256::from_be_bytes(keccak256(buf).0)
}

/// Which channels share a pool: one server, one chain, one set of channel terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The server's origin, `scheme://host[:port]`.
    pub origin: String,
    /// The chain.
    pub chain_id: u64,
    /// The token.
    pub asset: Address,
    /// `payTo`.
    pub receiver: Address,
    /// `extra.receiverAuthorizer`.
    pub receiver_authorizer: Address,
    /// `extra.withdrawDelay`.
    pub withdraw_delay: u64,
}

impl PoolKey {
    /// The config of this pool's `index`-th channel of `payer` (who also signs its vouchers).
    #[must_use]
    pub fn config(&self, payer: Address, index: u64) -> ChannelConfig {
        ChannelConfig {
            payer,
            payer_authorizer: payer,
            receiver: self.receiver,
            receiver_authorizer: self.receiver_authorizer,
            token: self.asset,
            withdraw_delay: self.withdraw_delay,
            salt: channel_salt(
                payer,
                &self.origin,
                self.receiver,
                self.receiver_authorizer,
                self.asset,
                self.withdraw_delay,
                index,
            ),
        }
    }
}

/// Where a channel stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum ChannelStatus {
    /// Pays requests.
    Open,
    /// The server broke the client rules on it; it signs nothing more.
    Halted {
        /// What the server did.
        reason: String,
    },
    /// A timed withdrawal was started; it signs nothing more.
    Withdrawing,
    /// The timed withdrawal was finalized.
    Closed,
}

impl ChannelStatus {
    /// Whether the channel may sign vouchers.
    #[must_use]
    pub fn is_open(&self) -> bool {
        matches!(self, ChannelStatus::Open)
    }
}

/// A voucher recorded and sent whose answer has not been checked yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Pending {
    /// Its ceiling.
    #[serde(with = "u128_dec")]
    pub ceiling: u128,
    /// The request's maximum.
    #[serde(with = "u128_dec")]
    pub amount: u128,
    /// The deposit sent with it, if any.
    #[serde(default, with = "opt_u128_dec")]
    pub deposit: Option<u128>,
}

/// The client's per-channel fields (stored as metadata beside the [`PayerChannelRecord`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Meta {
    pub origin: String,
    pub chain_id: u64,
    pub index: u64,
    pub status: ChannelStatus,
    /// The highest ceiling this payer has signed on the channel: what the server could claim.
    #[serde(with = "u128_dec")]
    pub max_ceiling: u128,
    pub pending: Option<Pending>,
    /// Deposits signed on this channel.
    pub deposits: u64,
    /// Deposited through this client (all deposits signed and acknowledged).
    #[serde(with = "u128_dec")]
    pub deposited: u128,
    /// The budget window of `window_spent`.
    pub window: u64,
    /// Spent or reserved in that window.
    #[serde(with = "u128_dec")]
    pub window_spent: u128,
    /// The offer last paid under, the resource and the request that paid it: where a refund goes.
    pub accepted: Option<PaymentRequirements>,
    pub resource: Option<ResourceInfo>,
    pub method: Option<String>,
    pub url: Option<String>,
}

/// A channel: core state and client fields.
#[derive(Debug, Clone)]
pub(crate) struct Channel {
    pub pc: PayerChannel,
    pub meta: Meta,
}

/// The metadata key of a channel's client fields.
pub(crate) fn meta_key(id: &B256) -> String {
    format!("{META_PREFIX}{id}")
}

impl Channel {
    /// A channel of `key` at `index` that this payer has not used yet: zero balance unless
    /// `onchain` (balance, claimed) says otherwise.
    pub(crate) fn new(
        key: &PoolKey,
        domain: &paychan_core::batch::BatchDomain,
        payer: Address,
        index: u64,
        onchain: (u128, u128),
    ) -> Self {
        let pc = PayerChannel::from_chain(domain, key.config(payer, index), onchain.0, onchain.1);
        Self {
            pc,
            meta: Meta {
                origin: key.origin.clone(),
                chain_id: key.chain_id,
                index,
                status: ChannelStatus::Open,
                max_ceiling: onchain.1,
                pending: None,
                deposits: 0,
                deposited: 0,
                window: 0,
                window_spent: 0,
                accepted: None,
                resource: None,
                method: None,
                url: None,
            },
        }
    }

    /// The channel id.
    pub(crate) fn id(&self) -> B256 {
        self.pc.channel_id
    }

    /// Its pool.
    pub(crate) fn pool_key(&self) -> PoolKey {
        PoolKey {
            origin: self.meta.origin.clone(),
            chain_id: self.meta.chain_id,
            asset: self.pc.config.token,
            receiver: self.pc.config.receiver,
            receiver_authorizer: self.pc.config.receiver_authorizer,
            withdraw_delay: self.pc.config.withdraw_delay,
        }
    }

    /// What is left to pay with: balance minus charged.
    pub(crate) fn remaining(&self) -> u128 {
        self.pc.balance.saturating_sub(self.pc.charged)
    }

    /// The store record.
    pub(crate) fn record(&self, now_ms: u64) -> PayerChannelRecord {
        PayerChannelRecord {
            channel_id: self.pc.channel_id,
            config: self.pc.config,
            charged: self.pc.charged,
            balance: self.pc.balance,
            total_claimed: self.pc.total_claimed,
            last_ceiling: self.pc.last_voucher.map(|(c, _)| c),
            last_signature: self
                .pc
                .last_voucher
                .map(|(_, s)| Bytes::copy_from_slice(&s.to_bytes())),
            server: Some(self.meta.origin.clone()),
            updated_at: now_ms,
        }
    }

    /// The stored client fields.
    pub(crate) fn meta_bytes(&self) -> Vec<u8> {
        let mut out = vec![META_FORMAT];
        // Serializing plain structs with string keys cannot fail.
        out.extend(serde_json::to_vec(&self.meta).unwrap_or_default());
        out
    }

    /// A channel from its store record and client fields; `None` when the fields are missing or
    /// of an unknown format (a record this client did not write).
    pub(crate) fn from_stored(rec: &PayerChannelRecord, meta: Option<&[u8]>) -> Option<Self> {
        let (&format, json) = meta?.split_first()?;
        if format != META_FORMAT {
            return None;
        }
        let meta: Meta = serde_json::from_slice(json).ok()?;
        let last_voucher = match (rec.last_ceiling, rec.last_signature.as_ref()) {
            (Some(c), Some(s)) => Some((c, Signature::from_bytes(s).ok()?)),
            _ => None,
        };
        Some(Self {
            pc: PayerChannel {
                channel_id: rec.channel_id,
                config: rec.config,
                charged: rec.charged,
                balance: rec.balance,
                total_claimed: rec.total_claimed,
                last_voucher,
            },
            meta,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::address;
    use paychan_core::{batch::BatchDomain, sig::LocalSigner};

    fn key(origin: &str) -> PoolKey {
        PoolKey {
            origin: origin.into(),
            chain_id: 31337,
            asset: address!("833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"),
            receiver: address!("3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"),
            receiver_authorizer: address!("90F79bf6EB2c4f870365E785982E1f101E93b906"),
            withdraw_delay: 900,
        }
    }

    #[test]
    fn salts_are_deterministic_and_distinct() {
        let payer = address!("70997970C51812dc3A010C7d01b50e0d17dc79C8");
        let k = key("http://127.0.0.1:8402");
        assert_eq!(k.config(payer, 0), k.config(payer, 0));
        assert_ne!(k.config(payer, 0).salt, k.config(payer, 1).salt);
        assert_ne!(
            k.config(payer, 0).salt,
            key("http://127.0.0.1:8403").config(payer, 0).salt
        );
        assert_ne!(k.config(payer, 0).salt, k.config(Address::ZERO, 0).salt);
        assert_ne!(
            deposit_salt(B256::ZERO, 0, 0, 1),
            deposit_salt(B256::ZERO, 1, 0, 1)
        );
    }

    #[test]
    fn stored_form_round_trips() {
        let domain = BatchDomain::new(31337, paychan_core::batch::canonical::ESCROW);
        let signer = LocalSigner::from_bytes(&B256::repeat_byte(7)).unwrap();
        let mut ch = Channel::new(&key("http://a"), &domain, signer.address(), 3, (500, 0));
        ch.pc.sign_voucher(&domain, &signer, 40).unwrap();
        ch.meta.pending = Some(Pending {
            ceiling: 40,
            amount: 40,
            deposit: Some(500),
        });
        ch.meta.max_ceiling = 40;
        let back = Channel::from_stored(&ch.record(1), Some(&ch.meta_bytes())).unwrap();
        assert_eq!(back.pc, ch.pc);
        assert_eq!(back.meta, ch.meta);
        assert_eq!(back.pool_key(), key("http://a"));
        assert!(Channel::from_stored(&ch.record(1), None).is_none());
        let mut bad = ch.meta_bytes();
        bad[0] = 9;
        assert!(Channel::from_stored(&ch.record(1), Some(&bad)).is_none());
    }
}
