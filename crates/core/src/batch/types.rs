//! batch-settlement wire types: channel config, vouchers, the `deposit` / `voucher` / `refund`
//! client payloads, the server-authored `claim` / `settle` payloads, the 402 `extra`, and the
//! channel snapshots carried in corrective 402s and payment responses.

use alloy_primitives::{Address, B256, Bytes, U256};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::amount::{opt_u128_dec, u64_num, u128_dec, u256_dec};
use crate::hexser;

/// The immutable parameters of a channel; their EIP-712 hash is the channel id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelConfig {
    /// Who deposits and gets refunds.
    #[serde(with = "hexser::address")]
    pub payer: Address,
    /// EOA that signs vouchers, or zero for EIP-1271 verification against `payer`.
    #[serde(with = "hexser::address")]
    pub payer_authorizer: Address,
    /// Who is paid.
    #[serde(with = "hexser::address")]
    pub receiver: Address,
    /// Who authorizes claims and refunds.
    #[serde(with = "hexser::address")]
    pub receiver_authorizer: Address,
    /// The ERC-20 token.
    #[serde(with = "hexser::address")]
    pub token: Address,
    /// Seconds a timed withdrawal waits (a `uint40` on chain).
    #[serde(with = "u64_num")]
    pub withdraw_delay: u64,
    /// Distinguishes otherwise identical channels.
    #[serde(with = "hexser::b256")]
    pub salt: B256,
}

/// A signed cumulative voucher as carried in client payloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoucherFields {
    /// The channel.
    #[serde(with = "hexser::b256")]
    pub channel_id: B256,
    /// Cumulative ceiling the receiver may claim.
    #[serde(with = "u128_dec")]
    pub max_claimable_amount: u128,
    /// EIP-712 signature of `Voucher(channelId, maxClaimableAmount)`.
    #[serde(with = "hexser::bytes")]
    pub signature: Bytes,
}

/// An ERC-3009 `receiveWithAuthorization` signed by the payer for the deposit collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Erc3009Authorization {
    /// Not valid before this unix time.
    #[serde(with = "u256_dec")]
    pub valid_after: U256,
    /// Not valid at or after this unix time.
    #[serde(with = "u256_dec")]
    pub valid_before: U256,
    /// Salt hashed with the channel id into the ERC-3009 nonce.
    #[serde(with = "salt_word")]
    pub salt: U256,
    /// The payer's signature (65 bytes, or EIP-1271 / ERC-6492 bytes).
    #[serde(with = "hexser::bytes")]
    pub signature: Bytes,
}

/// How the deposit's tokens are authorized; exactly one of the two is present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DepositAuthorization {
    /// ERC-3009 path (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erc3009_authorization: Option<Erc3009Authorization>,
    /// Permit2 path; carried but not executed by paychan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permit2_authorization: Option<serde_json::Value>,
}

/// The deposit part of a `deposit` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deposit {
    /// Tokens to move into the channel.
    #[serde(with = "u128_dec")]
    pub amount: u128,
    /// Their authorization.
    pub authorization: DepositAuthorization,
}

/// `type: "deposit"`: open or top up a channel and pay for this request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DepositPayload {
    /// The channel.
    pub channel_config: ChannelConfig,
    /// The voucher paying for this request.
    pub voucher: VoucherFields,
    /// The deposit.
    pub deposit: Deposit,
}

/// `type: "voucher"`: pay for this request from the channel's balance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoucherPayload {
    /// The channel.
    pub channel_config: ChannelConfig,
    /// The voucher.
    pub voucher: VoucherFields,
}

/// One claim row sent to the escrow (`VoucherClaim` on chain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRow {
    /// The voucher being claimed.
    pub voucher: ClaimVoucher,
    /// The payer's voucher signature.
    #[serde(with = "hexser::bytes")]
    pub signature: Bytes,
    /// Cumulative amount claimed after this row.
    #[serde(with = "u128_dec")]
    pub total_claimed: u128,
}

/// The voucher part of a claim row (`Voucher{channel, maxClaimableAmount}` on chain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimVoucher {
    /// The channel's full config.
    pub channel: ChannelConfig,
    /// The voucher's ceiling.
    #[serde(with = "u128_dec")]
    pub max_claimable_amount: u128,
}

/// `type: "refund"`: a cooperative refund. Clients send the first three fields; the server
/// completes the rest before handing it to a facilitator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundPayload {
    /// The channel.
    pub channel_config: ChannelConfig,
    /// A zero-charge voucher: its ceiling equals the charged total.
    pub voucher: VoucherFields,
    /// Partial refund amount; absent for a full refund.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_u128_dec"
    )]
    pub amount: Option<u128>,
    /// Server-completed: the on-chain refund nonce to sign for.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_u256_dec"
    )]
    pub refund_nonce: Option<U256>,
    /// Server-completed: claims to make before refunding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<Vec<ClaimRow>>,
    /// Server-completed: the receiver authorizer's `Refund` signature.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes")]
    pub refund_authorizer_signature: Option<Bytes>,
    /// Server-completed: the receiver authorizer's `ClaimBatch` signature.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes")]
    pub claim_authorizer_signature: Option<Bytes>,
}

/// `type: "claim"`: the server asks a facilitator to claim vouchers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimPayload {
    /// The rows, all sharing one receiver authorizer.
    pub claims: Vec<ClaimRow>,
    /// The receiver authorizer's `ClaimBatch` signature, when the server holds that key.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes")]
    pub claim_authorizer_signature: Option<Bytes>,
}

/// `type: "settle"`: the server asks a facilitator to sweep claimed funds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleActionPayload {
    /// Receiver to pay.
    #[serde(with = "hexser::address")]
    pub receiver: Address,
    /// Token to sweep.
    #[serde(with = "hexser::address")]
    pub token: Address,
}

/// Any batch-settlement payload, tagged by `type`.
///
/// Deserialized by hand (see [`PayloadVisitor`]): with `type` first, as paychan's and the
/// reference client write it, the rest of the object is parsed straight into the variant's
/// struct. serde's derived internal tagging buffers every payload into a tree of owned strings
/// first, which cost ~1.6% of a paid request's server CPU and its allocations.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BatchPayload {
    /// Open or top up, and pay.
    Deposit(DepositPayload),
    /// Pay from balance.
    Voucher(VoucherPayload),
    /// Cooperative refund.
    Refund(RefundPayload),
    /// Server → facilitator: claim.
    Claim(ClaimPayload),
    /// Server → facilitator: settle.
    Settle(SettleActionPayload),
}

/// The `type` of a [`BatchPayload`].
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum PayloadKind {
    Deposit,
    Voucher,
    Refund,
    Claim,
    Settle,
}

impl PayloadKind {
    fn parse<'de, D: Deserializer<'de>>(self, d: D) -> Result<BatchPayload, D::Error> {
        Ok(match self {
            PayloadKind::Deposit => BatchPayload::Deposit(DepositPayload::deserialize(d)?),
            PayloadKind::Voucher => BatchPayload::Voucher(VoucherPayload::deserialize(d)?),
            PayloadKind::Refund => BatchPayload::Refund(RefundPayload::deserialize(d)?),
            PayloadKind::Claim => BatchPayload::Claim(ClaimPayload::deserialize(d)?),
            PayloadKind::Settle => BatchPayload::Settle(SettleActionPayload::deserialize(d)?),
        })
    }
}

/// A map key: `type`, or any other (borrowed from the input where it can be).
enum Key<'de> {
    Type,
    Other(std::borrow::Cow<'de, str>),
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(if v == "type" {
                    Key::Type
                } else {
                    Key::Other(v.into())
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(if v == "type" {
                    Key::Type
                } else {
                    Key::Other(v.to_owned().into())
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// The entries after a leading `type`, handed to the variant's struct: a second `type` is
/// refused, as the derived internal tagging refused it (a payload must not name two types).
struct AfterType<A>(A);

impl<'de, A: serde::de::MapAccess<'de>> serde::de::MapAccess<'de> for AfterType<A> {
    type Error = A::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        use serde::de::{Error as _, value};
        match self.0.next_key::<Key<'de>>()? {
            None => Ok(None),
            Some(Key::Type) => Err(A::Error::duplicate_field("type")),
            Some(Key::Other(std::borrow::Cow::Borrowed(k))) => seed
                .deserialize(value::BorrowedStrDeserializer::new(k))
                .map(Some),
            Some(Key::Other(std::borrow::Cow::Owned(k))) => seed
                .deserialize(value::StringDeserializer::new(k))
                .map(Some),
        }
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, A::Error> {
        self.0.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

/// Reads a [`BatchPayload`]: when `type` is the first key, the remaining entries go straight to
/// the variant's struct; otherwise the object is gathered into a JSON map and parsed from it
/// (the same result, slower).
struct PayloadVisitor;

impl<'de> serde::de::Visitor<'de> for PayloadVisitor {
    type Value = BatchPayload;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a batch-settlement payload object with a `type`")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<BatchPayload, A::Error> {
        use serde::de::Error as _;
        let first = match map.next_key::<Key<'de>>()? {
            Some(Key::Type) => {
                let kind: PayloadKind = map.next_value()?;
                return kind.parse(serde::de::value::MapAccessDeserializer::new(AfterType(map)));
            }
            Some(Key::Other(k)) => k.into_owned(),
            None => return Err(A::Error::missing_field("type")),
        };
        let mut rest = serde_json::Map::new();
        rest.insert(first, map.next_value()?);
        let mut kind = None;
        while let Some(k) = map.next_key::<Key<'de>>()? {
            match k {
                Key::Type if kind.is_some() => return Err(A::Error::duplicate_field("type")),
                Key::Type => kind = Some(map.next_value::<PayloadKind>()?),
                Key::Other(k) => {
                    rest.insert(k.into_owned(), map.next_value()?);
                }
            }
        }
        let kind = kind.ok_or_else(|| A::Error::missing_field("type"))?;
        kind.parse(serde_json::Value::Object(rest))
            .map_err(A::Error::custom)
    }
}

impl<'de> Deserialize<'de> for BatchPayload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(PayloadVisitor)
    }
}

impl BatchPayload {
    /// The `type` string.
    pub fn kind(&self) -> &'static str {
        match self {
            BatchPayload::Deposit(_) => "deposit",
            BatchPayload::Voucher(_) => "voucher",
            BatchPayload::Refund(_) => "refund",
            BatchPayload::Claim(_) => "claim",
            BatchPayload::Settle(_) => "settle",
        }
    }

    /// The channel config and voucher of a client payload.
    pub fn channel_and_voucher(&self) -> Option<(&ChannelConfig, &VoucherFields)> {
        match self {
            BatchPayload::Deposit(p) => Some((&p.channel_config, &p.voucher)),
            BatchPayload::Voucher(p) => Some((&p.channel_config, &p.voucher)),
            BatchPayload::Refund(p) => Some((&p.channel_config, &p.voucher)),
            BatchPayload::Claim(_) | BatchPayload::Settle(_) => None,
        }
    }
}

/// Who a payload is sent to, which decides the payload `type`s it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadReceiver {
    /// A server (payee): the client payloads `deposit`, `voucher` and `refund`.
    Server,
    /// A facilitator: every payload, including the server-authored `claim` and `settle`.
    Facilitator,
}

impl PayloadReceiver {
    /// Whether it takes payloads of type `kind`.
    pub fn takes(self, kind: &str) -> bool {
        match kind {
            "deposit" | "voucher" | "refund" => true,
            "claim" | "settle" => self == PayloadReceiver::Facilitator,
            _ => false,
        }
    }
}

/// The error code for a scheme payload (the JSON of `PaymentPayload.payload`) that does not
/// parse: the malformed-payload code of its `type` when `receiver` takes that type
/// (`invalid_batch_settlement_evm_voucher_payload`, ...), `payload_type` otherwise (no `type`,
/// an unknown one, or a server-authored one sent to a server). Servers and the facilitator
/// both answer with it.
pub fn malformed_payload_code(
    payload: &serde_json::Value,
    receiver: PayloadReceiver,
) -> crate::ErrorCode {
    use crate::ErrorCode;
    let kind = payload.get("type").and_then(serde_json::Value::as_str);
    match kind {
        Some(k) if !receiver.takes(k) => ErrorCode::PayloadType,
        Some("deposit") => ErrorCode::DepositPayload,
        Some("voucher") => ErrorCode::VoucherPayload,
        Some("refund") => ErrorCode::RefundPayload,
        Some("claim") => ErrorCode::ClaimPayload,
        Some("settle") => ErrorCode::SettlePayload,
        _ => ErrorCode::PayloadType,
    }
}

/// A channel snapshot: the mirrored on-chain state, plus the server's charged total when the
/// server sends it (`extra.channelState` of corrective 402s and payment responses; `extra` of a
/// facilitator's `/verify`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelSnapshot {
    /// The channel.
    #[serde(with = "hexser::b256")]
    pub channel_id: B256,
    /// Balance on chain.
    #[serde(with = "u128_dec")]
    pub balance: u128,
    /// Claimed on chain.
    #[serde(with = "u128_dec")]
    pub total_claimed: u128,
    /// Unix seconds a timed withdrawal started, 0 if none.
    #[serde(with = "u64_num")]
    pub withdraw_requested_at: u64,
    /// Next refund nonce.
    #[serde(with = "u256_dec")]
    pub refund_nonce: U256,
    /// The server's charged cumulative amount.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_u128_dec"
    )]
    pub charged_cumulative_amount: Option<u128>,
}

/// The server's last signed voucher, in a corrective 402 (`extra.voucherState`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoucherState {
    /// Ceiling of that voucher.
    #[serde(with = "u128_dec")]
    pub signed_max_claimable: u128,
    /// Its signature.
    #[serde(with = "hexser::bytes")]
    pub signature: Bytes,
}

/// `extra` of batch-settlement payment requirements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchExtra {
    /// Signs claims and refunds; becomes `ChannelConfig.receiverAuthorizer`.
    #[serde(with = "hexser::address")]
    pub receiver_authorizer: Address,
    /// Becomes `ChannelConfig.withdrawDelay`.
    #[serde(with = "u64_num")]
    pub withdraw_delay: u64,
    /// The token's EIP-712 domain name.
    pub name: String,
    /// The token's EIP-712 domain version.
    pub version: String,
    /// `eip3009` (default) or `permit2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_transfer_method: Option<String>,
    /// Corrective 402 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_state: Option<ChannelSnapshot>,
    /// Corrective 402 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voucher_state: Option<VoucherState>,
}

/// `extra` of a batch-settlement payment response or facilitator settle response.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseExtra {
    /// What this request was charged (absent for refunds).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_u128_dec"
    )]
    pub charged_amount: Option<u128>,
    /// The channel after the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_state: Option<ChannelSnapshot>,
}

mod opt_u256_dec {
    use super::*;
    pub(super) fn serialize<S: Serializer>(v: &Option<U256>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => crate::amount::u256_dec::serialize(v, s),
            None => s.serialize_none(),
        }
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<U256>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "crate::amount::u256_dec")] U256);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

mod opt_bytes {
    use super::*;
    pub(super) fn serialize<S: Serializer>(v: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => hexser::bytes::serialize(v, s),
            None => s.serialize_none(),
        }
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "hexser::bytes")] Bytes);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

/// The ERC-3009 salt: a `uint256` that clients write as 32-byte `0x` hex (decimal also read).
mod salt_word {
    use super::*;
    pub(super) fn serialize<S: Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&B256::from(*v))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        if let Some(hex) = s.strip_prefix("0x") {
            if hex.is_empty() || hex.len() > 64 {
                return Err(serde::de::Error::custom(
                    "salt must be at most 32 bytes of hex",
                ));
            }
            U256::from_str_radix(hex, 16).map_err(serde::de::Error::custom)
        } else {
            crate::amount::parse_u256(&s).map_err(serde::de::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn a_malformed_payload_gets_the_code_of_its_type_where_that_type_is_taken() {
        let code =
            |t: serde_json::Value, r| malformed_payload_code(&serde_json::json!({ "type": t }), r);
        for r in [PayloadReceiver::Server, PayloadReceiver::Facilitator] {
            assert_eq!(code("deposit".into(), r), ErrorCode::DepositPayload);
            assert_eq!(code("voucher".into(), r), ErrorCode::VoucherPayload);
            assert_eq!(code("refund".into(), r), ErrorCode::RefundPayload);
            assert_eq!(code("teleport".into(), r), ErrorCode::PayloadType);
            assert_eq!(code(7.into(), r), ErrorCode::PayloadType);
            assert_eq!(
                malformed_payload_code(&serde_json::json!({}), r),
                ErrorCode::PayloadType
            );
        }
        // server-authored payloads: their own codes at a facilitator, a wrong type at a server
        let f = PayloadReceiver::Facilitator;
        assert_eq!(code("claim".into(), f), ErrorCode::ClaimPayload);
        assert_eq!(code("settle".into(), f), ErrorCode::SettlePayload);
        let s = PayloadReceiver::Server;
        assert_eq!(code("claim".into(), s), ErrorCode::PayloadType);
        assert_eq!(code("settle".into(), s), ErrorCode::PayloadType);
    }

    fn sample_payloads() -> Vec<BatchPayload> {
        let config = ChannelConfig {
            payer: Address::repeat_byte(1),
            payer_authorizer: Address::repeat_byte(2),
            receiver: Address::repeat_byte(3),
            receiver_authorizer: Address::repeat_byte(4),
            token: Address::repeat_byte(5),
            withdraw_delay: 900,
            salt: B256::repeat_byte(6),
        };
        let voucher = VoucherFields {
            channel_id: B256::repeat_byte(7),
            max_claimable_amount: u128::MAX,
            signature: Bytes::from(vec![8u8; 65]),
        };
        let deposit = Deposit {
            amount: 1_000_000,
            authorization: DepositAuthorization {
                erc3009_authorization: Some(Erc3009Authorization {
                    valid_after: U256::ZERO,
                    valid_before: U256::from(u64::MAX),
                    salt: U256::from(9),
                    signature: Bytes::from(vec![10u8; 65]),
                }),
                permit2_authorization: None,
            },
        };
        vec![
            BatchPayload::Voucher(VoucherPayload {
                channel_config: config,
                voucher: voucher.clone(),
            }),
            BatchPayload::Deposit(DepositPayload {
                channel_config: config,
                voucher: voucher.clone(),
                deposit,
            }),
            BatchPayload::Refund(RefundPayload {
                channel_config: config,
                voucher,
                amount: Some(5),
                refund_nonce: None,
                claims: None,
                refund_authorizer_signature: None,
                claim_authorizer_signature: None,
            }),
            BatchPayload::Claim(ClaimPayload {
                claims: vec![],
                claim_authorizer_signature: None,
            }),
            BatchPayload::Settle(SettleActionPayload {
                receiver: Address::repeat_byte(3),
                token: Address::repeat_byte(5),
            }),
        ]
    }

    #[test]
    fn a_payload_parses_the_same_with_type_first_last_or_in_the_middle() {
        for p in sample_payloads() {
            let first = serde_json::to_string(&p).unwrap();
            assert!(first.starts_with(r#"{"type":"#), "{first}");
            assert_eq!(serde_json::from_str::<BatchPayload>(&first).unwrap(), p);
            // `type` at every other place: the slow path, the same result.
            let serde_json::Value::Object(mut obj) = serde_json::to_value(&p).unwrap() else {
                panic!("not an object");
            };
            let kind = obj.remove("type").unwrap();
            let entries: Vec<String> = obj
                .iter()
                .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(k.as_str())))
                .collect();
            for at in 1..=entries.len() {
                let mut e = entries.clone();
                e.insert(at, format!(r#""type":{kind}"#));
                let json = format!("{{{}}}", e.join(","));
                assert_eq!(
                    serde_json::from_str::<BatchPayload>(&json).unwrap(),
                    p,
                    "{json}"
                );
            }
        }
    }

    #[test]
    fn a_payload_without_one_known_type_is_refused() {
        let voucher = serde_json::to_value(&sample_payloads()[0]).unwrap();
        let body = |t: &str| {
            let mut v = voucher.clone();
            v.as_object_mut().unwrap().remove("type");
            let rest = serde_json::to_string(&v).unwrap();
            format!("{{{t}{}", &rest[1..])
        };
        let err = |json: String| serde_json::from_str::<BatchPayload>(&json).unwrap_err();
        assert!(err(body("")).to_string().contains("missing field `type`"));
        assert!(
            err(body(r#""type":"teleport","#))
                .to_string()
                .contains("unknown variant `teleport`")
        );
        assert!(serde_json::from_str::<BatchPayload>(&body(r#""type":7,"#)).is_err());
        // a `type` after the first key, twice
        let no_type = body("");
        let twice = format!(
            r#"{},"type":"voucher","type":"voucher"}}"#,
            &no_type[..no_type.len() - 1]
        );
        assert!(err(twice).to_string().contains("duplicate field `type`"));
        // `type` first and again later (the fast path), even naming the same type
        let typed = body(r#""type":"voucher","#);
        for second in ["deposit", "voucher"] {
            let json = format!(r#"{},"type":"{second}"}}"#, &typed[..typed.len() - 1]);
            assert!(json.starts_with(r#"{"type":"voucher","#), "{json}");
            assert!(
                err(json.clone())
                    .to_string()
                    .contains("duplicate field `type`"),
                "{json}"
            );
        }
        // an escaped key is not borrowed from the input; it still names its field
        let escaped =
            body(r#""type":"voucher","#).replacen("\"voucher\":{", "\"vouc\\u0068er\":{", 1);
        assert!(escaped.contains(r#""vouc\u0068er":{"#), "{escaped}");
        assert_eq!(
            serde_json::from_str::<BatchPayload>(&escaped).unwrap(),
            sample_payloads()[0]
        );
        // the fields of another type
        assert!(serde_json::from_str::<BatchPayload>(&body(r#""type":"deposit","#)).is_err());
        assert!(serde_json::from_str::<BatchPayload>("[]").is_err());
        assert!(serde_json::from_str::<BatchPayload>("{}").is_err());
    }
}
