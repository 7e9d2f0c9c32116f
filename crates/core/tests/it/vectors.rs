//! Golden vectors shared with the x402 reference SDK (`@x402/evm` / `@x402/core` 2.27), checked both ways.
//!
//! * **We verify theirs**: `tests/vectors/reference.json` was written by `tests/vectors/generate.mjs` with the
//!   reference SDK and viem only (see `tests/vectors/README.md`). Every channel id, EIP-712 digest and
//!   ERC-3009 digest must equal ours; every signature must recover to its signer with every compiled
//!   backend, and our signer must reproduce it byte for byte (both sides sign with RFC 6979, low s); every
//!   header must decode into our typed structs and survive re-encoding; the reference client's payments
//!   must pass our payee checks and its server's answers our payer checks; every SDK error code must be
//!   one we know.
//! * **They verify ours**: [`they_verify_ours`] builds a deposit, two vouchers, a refund, a corrective 402
//!   and payment responses with paychan's payer and payee code and has
//!   `tests/vectors/verify-paychan.mjs` check them with the SDK.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    path::{Path, PathBuf},
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use alloy_primitives::{Address, B256, Bytes, U256, b256};
use paychan_core::{
    ErrorCode, Network,
    batch::{
        BatchDomain, BatchPayload, BatchRequirements, ChannelConfig, ClaimEntry, ResponseExtra,
        canonical,
        eip712::{Eip712Domain, ReceiveWithAuthorization, deposit_nonce},
        payee::{self, ChannelRecord, CheckContext, OnchainState},
        payer::{
            DepositTerms, Erc3009Terms, PayerChannel, channel_config_for, deposit_payload,
            sign_erc3009_authorization,
        },
    },
    codec,
    sig::{Backend, LocalSigner, Signature},
    x402::{
        PaymentPayload, PaymentRequired, PaymentRequirements, ResourceInfo, SettlementResponse,
    },
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

const REFERENCE: &str = include_str!("../vectors/reference.json");

/// A fixed "now" for the payee checks (time is an input of paychan-core).
const NOW_MS: u64 = 1_767_225_600_000;

// ---------------------------------------------------------------------------------------------------------
// the fixture

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reference {
    about: About,
    keys: BTreeMap<String, Key>,
    channel_ids: Vec<ChannelIdVector>,
    vouchers: Vec<VoucherVector>,
    refunds: Vec<RefundVector>,
    claim_batches: Vec<ClaimBatchVector>,
    receive_with_authorization: Vec<ReceiveAuthVector>,
    headers: BTreeMap<String, HeaderVector>,
    error_codes: Vec<String>,
    error_codes_source_only: Vec<String>,
    other_error_codes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct About {
    #[serde(with = "paychan_core::hexser::address")]
    escrow: Address,
    #[serde(with = "paychan_core::hexser::address")]
    erc3009_collector: Address,
    header_flow: HeaderFlow,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeaderFlow {
    network: Network,
    channel_config: ChannelConfig,
    #[serde(with = "paychan_core::hexser::b256")]
    channel_id: B256,
    #[serde(with = "paychan_core::amount::u128_dec")]
    amount: u128,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Key {
    private_key: String,
    #[serde(with = "paychan_core::hexser::address")]
    address: Address,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChannelIdVector {
    name: String,
    network: Network,
    chain_id: u64,
    config: ChannelConfig,
    #[serde(with = "paychan_core::hexser::b256")]
    channel_id: B256,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Signed {
    #[serde(with = "paychan_core::hexser::b256")]
    digest: B256,
    #[serde(with = "paychan_core::hexser::address")]
    signer: Address,
    signer_key: String,
    #[serde(with = "paychan_core::hexser::bytes")]
    signature: Bytes,
    source: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VoucherVector {
    name: String,
    chain_id: u64,
    #[serde(with = "paychan_core::hexser::b256")]
    channel_id: B256,
    #[serde(with = "paychan_core::amount::u128_dec")]
    max_claimable_amount: u128,
    #[serde(flatten)]
    signed: Signed,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefundVector {
    name: String,
    chain_id: u64,
    #[serde(with = "paychan_core::hexser::b256")]
    channel_id: B256,
    #[serde(with = "paychan_core::amount::u256_dec")]
    nonce: U256,
    #[serde(with = "paychan_core::amount::u128_dec")]
    amount: u128,
    #[serde(flatten)]
    signed: Signed,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimEntryVector {
    #[serde(with = "paychan_core::hexser::b256")]
    channel_id: B256,
    #[serde(with = "paychan_core::amount::u128_dec")]
    max_claimable_amount: u128,
    #[serde(with = "paychan_core::amount::u128_dec")]
    total_claimed: u128,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimBatchVector {
    name: String,
    chain_id: u64,
    entries: Vec<ClaimEntryVector>,
    #[serde(flatten)]
    signed: Signed,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenVector {
    #[serde(with = "paychan_core::hexser::address")]
    address: Address,
    name: String,
    version: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReceiveAuthVector {
    name: String,
    chain_id: u64,
    token: TokenVector,
    #[serde(with = "paychan_core::hexser::b256")]
    channel_id: B256,
    #[serde(with = "paychan_core::hexser::b256")]
    salt: B256,
    #[serde(with = "paychan_core::hexser::b256")]
    deposit_nonce: B256,
    #[serde(with = "paychan_core::hexser::address")]
    from: Address,
    #[serde(with = "paychan_core::hexser::address")]
    to: Address,
    #[serde(with = "paychan_core::amount::u256_dec")]
    value: U256,
    #[serde(with = "paychan_core::amount::u256_dec")]
    valid_after: U256,
    #[serde(with = "paychan_core::amount::u256_dec")]
    valid_before: U256,
    #[serde(flatten)]
    signed: Signed,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeaderVector {
    header_name: String,
    header: String,
    decoded: Value,
    expect: Value,
}

fn reference() -> Reference {
    serde_json::from_str(REFERENCE)
        .expect("tests/vectors/reference.json parses into the vector types")
}

// ---------------------------------------------------------------------------------------------------------
// helpers

/// Collects every mismatch, so one run lists all disagreements with the SDK.
#[derive(Default)]
struct Report {
    checks: usize,
    failures: Vec<String>,
}

impl Report {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok {
            self.failures.push(what());
        }
    }

    fn eq<T: PartialEq + Debug>(&mut self, got: T, want: T, what: impl FnOnce() -> String) {
        self.checks += 1;
        if got != want {
            self.failures
                .push(format!("{}: paychan {got:?}, reference {want:?}", what()));
        }
    }

    fn finish(self, title: &str) {
        assert!(
            self.failures.is_empty(),
            "{title}: {} of {} checks disagree with the reference SDK:\n  - {}",
            self.failures.len(),
            self.checks,
            self.failures.join("\n  - ")
        );
    }
}

fn signer_for(keys: &BTreeMap<String, Key>, role: &str) -> LocalSigner {
    LocalSigner::from_hex(&keys[role].private_key).unwrap()
}

/// Their signature recovers to the signer on every backend, verifies on the warm path, and our signer with
/// the same key reproduces it byte for byte.
fn check_signature(r: &mut Report, keys: &BTreeMap<String, Key>, what: &str, signed: &Signed) {
    let sig = match Signature::from_bytes(&signed.signature) {
        Ok(s) => s,
        Err(e) => {
            r.check(false, || {
                format!("{what}: signature refused by Signature::from_bytes: {e}")
            });
            return;
        }
    };
    for &backend in Backend::all() {
        match backend.recover(&signed.digest, &sig) {
            Ok(key) => {
                r.eq(key.address(), signed.signer, || {
                    format!("{what}: {} recovers", backend.name())
                });
                r.check(backend.verify(&signed.digest, &sig, &key).is_ok(), || {
                    format!("{what}: {} warm-path verify", backend.name())
                });
            }
            Err(e) => r.check(false, || {
                format!("{what}: {} recover failed: {e}", backend.name())
            }),
        }
    }
    let ours = signer_for(keys, &signed.signer_key);
    r.eq(ours.address(), keys[&signed.signer_key].address, || {
        format!("{what}: key {} address", signed.signer_key)
    });
    r.eq(ours.address(), signed.signer, || format!("{what}: signer"));
    let mine = ours.sign_digest(&signed.digest).unwrap().to_bytes();
    r.eq(
        Bytes::copy_from_slice(&mine),
        signed.signature.clone(),
        || {
            format!(
                "{what}: LocalSigner::sign_digest is byte-identical ({})",
                signed.source
            )
        },
    );
}

/// Lowercases `0x` + 40-hex strings (addresses): EIP-55 case is presentation, not meaning.
fn normalize(v: &Value) -> Value {
    match v {
        Value::String(s)
            if s.len() == 42
                && s.starts_with("0x")
                && s[2..].bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Value::String(s.to_ascii_lowercase())
        }
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), normalize(v))).collect())
        }
        other => other.clone(),
    }
}

/// Decodes a header into `T`, re-encodes it with our codec and decodes the result as JSON: the value must
/// be the same (addresses compared by value). Returns the typed value.
fn round_trip<T: Serialize + DeserializeOwned>(
    r: &mut Report,
    name: &str,
    header: &str,
    decoded: &Value,
) -> Option<T> {
    let raw: Value = match codec::decode(header) {
        Ok(v) => v,
        Err(e) => {
            r.check(false, || format!("{name}: codec::decode as JSON: {e}"));
            return None;
        }
    };
    r.eq(&raw, decoded, || {
        format!("{name}: decoded JSON equals the recorded decoded value")
    });
    let typed: T = match codec::decode(header) {
        Ok(t) => t,
        Err(e) => {
            r.check(false, || {
                format!(
                    "{name}: codec::decode into {}: {e}",
                    std::any::type_name::<T>()
                )
            });
            return None;
        }
    };
    let again: Value = codec::decode(&codec::encode(&typed)).unwrap();
    r.eq(normalize(&again), normalize(&raw), || {
        format!("{name}: re-encoded value (semantic round trip)")
    });
    Some(typed)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("expect.{key} is a string in {v}"))
}

fn u(v: &Value, key: &str) -> u128 {
    s(v, key).parse().unwrap()
}

fn addr(v: &Value, key: &str) -> Address {
    s(v, key).parse().unwrap()
}

fn word(v: &Value, key: &str) -> B256 {
    s(v, key).parse().unwrap()
}

fn sig_of(bytes: &Bytes) -> Signature {
    Signature::from_bytes(bytes).unwrap()
}

fn payload_of(pp: &PaymentPayload<BatchPayload>) -> Value {
    serde_json::to_value(&pp.payload).unwrap()
}

fn extra_of(resp: &SettlementResponse) -> ResponseExtra {
    serde_json::from_value(Value::Object(resp.extra.clone().unwrap_or_default())).unwrap()
}

// ---------------------------------------------------------------------------------------------------------
// we verify theirs: hashes and signatures

#[test]
fn channel_ids_match_the_sdk() {
    let v = reference();
    let mut r = Report::default();
    assert!(v.channel_ids.len() >= 8);
    assert_eq!(v.about.escrow, canonical::ESCROW);
    assert_eq!(v.about.erc3009_collector, canonical::ERC3009_COLLECTOR);
    let raw: Value = serde_json::from_str(REFERENCE).unwrap();
    for (i, c) in v.channel_ids.iter().enumerate() {
        r.eq(c.network.evm_chain_id().unwrap(), c.chain_id, || {
            format!("{}: chain id", c.name)
        });
        let ours = BatchDomain::new(c.chain_id, canonical::ESCROW).channel_id(&c.config);
        r.eq(ours, c.channel_id, || format!("channel id {}", c.name));
        // our serialization of the config is the SDK's JSON, letter for letter
        r.eq(
            serde_json::to_value(c.config).unwrap(),
            raw["channelIds"][i]["config"].clone(),
            || format!("{}: config serializes as the SDK writes it", c.name),
        );
    }
    r.finish("channel ids");
}

#[test]
fn voucher_digests_and_signatures_match_the_sdk() {
    let v = reference();
    let mut r = Report::default();
    assert!(v.vouchers.iter().any(|x| x.max_claimable_amount == 0));
    assert!(v.vouchers.iter().any(|x| x.max_claimable_amount == 1));
    assert!(
        v.vouchers
            .iter()
            .any(|x| x.max_claimable_amount == u128::MAX)
    );
    for x in &v.vouchers {
        let d = BatchDomain::new(x.chain_id, canonical::ESCROW);
        r.eq(
            d.voucher_digest(x.channel_id, x.max_claimable_amount),
            x.signed.digest,
            || format!("voucher digest {}", x.name),
        );
        check_signature(&mut r, &v.keys, &format!("voucher {}", x.name), &x.signed);
    }
    r.finish("vouchers");
}

#[test]
fn refund_digests_and_signatures_match_the_sdk() {
    let v = reference();
    let mut r = Report::default();
    for x in &v.refunds {
        let d = BatchDomain::new(x.chain_id, canonical::ESCROW);
        r.eq(
            d.refund_digest(x.channel_id, x.nonce, x.amount),
            x.signed.digest,
            || format!("refund digest {}", x.name),
        );
        check_signature(&mut r, &v.keys, &format!("refund {}", x.name), &x.signed);
    }
    r.finish("refunds");
}

#[test]
fn claim_batch_digests_and_signatures_match_the_sdk() {
    let v = reference();
    let mut r = Report::default();
    for n in [0, 1, 2, 5] {
        assert!(
            v.claim_batches.iter().any(|b| b.entries.len() == n),
            "a batch of {n}"
        );
    }
    for b in &v.claim_batches {
        let d = BatchDomain::new(b.chain_id, canonical::ESCROW);
        let entries: Vec<ClaimEntry> = b
            .entries
            .iter()
            .map(|e| ClaimEntry {
                channel_id: e.channel_id,
                max_claimable_amount: e.max_claimable_amount,
                total_claimed: e.total_claimed,
            })
            .collect();
        r.eq(d.claim_batch_digest(&entries), b.signed.digest, || {
            format!("claim batch digest {}", b.name)
        });
        check_signature(
            &mut r,
            &v.keys,
            &format!("claim batch {}", b.name),
            &b.signed,
        );
    }
    r.finish("claim batches");
}

#[test]
fn receive_with_authorization_matches_the_sdk() {
    let v = reference();
    let mut r = Report::default();
    for x in &v.receive_with_authorization {
        let salt = U256::from_be_bytes(x.salt.0);
        r.eq(deposit_nonce(x.channel_id, salt), x.deposit_nonce, || {
            format!("{}: depositNonce", x.name)
        });
        r.eq(x.to, canonical::ERC3009_COLLECTOR, || {
            format!("{}: to", x.name)
        });
        let token = Eip712Domain::new(&x.token.name, &x.token.version, x.chain_id, x.token.address);
        let m = ReceiveWithAuthorization {
            from: x.from,
            to: x.to,
            value: x.value,
            valid_after: x.valid_after,
            valid_before: x.valid_before,
            nonce: deposit_nonce(x.channel_id, salt),
        };
        r.eq(m.digest(&token), x.signed.digest, || {
            format!("{}: ReceiveWithAuthorization digest", x.name)
        });
        // The one builder of deposit authorizations signs the same bytes.
        let built = sign_erc3009_authorization(
            &token,
            &Erc3009Terms {
                from: x.from,
                collector: x.to,
                channel_id: x.channel_id,
                amount: x.value.to::<u128>(),
                valid_after: x.valid_after,
                valid_before: x.valid_before,
                salt,
            },
            &signer_for(&v.keys, &x.signed.signer_key),
        )
        .unwrap();
        r.eq(built.signature, x.signed.signature.clone(), || {
            format!("{}: sign_erc3009_authorization", x.name)
        });
        check_signature(
            &mut r,
            &v.keys,
            &format!("receiveWithAuthorization {}", x.name),
            &x.signed,
        );
    }
    r.finish("receiveWithAuthorization");
}

#[test]
fn sdk_error_codes_are_known() {
    let v = reference();
    assert!(
        v.error_codes.len() >= 40,
        "expected the SDK's batch-settlement codes"
    );
    let unknown: Vec<&String> = v
        .error_codes
        .iter()
        .chain(&v.error_codes_source_only)
        .filter(|c| {
            let code: ErrorCode = c.parse().unwrap();
            matches!(code, ErrorCode::Other(_)) || code.as_str() != c.as_str()
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "invalid_batch_settlement_evm_* codes of @x402/evm that paychan-core parses as ErrorCode::Other: {unknown:?}"
    );
    // Non-prefixed codes the batch-settlement bundles can also emit (shared Permit2 / gas-sponsoring /
    // receipt code). Not part of the scheme's table; listed for information.
    let other: Vec<&String> = v
        .other_error_codes
        .iter()
        .filter(|c| matches!(c.parse::<ErrorCode>().unwrap(), ErrorCode::Other(_)))
        .collect();
    eprintln!(
        "note: non-scheme codes the SDK's batch-settlement bundles may emit that paychan keeps as ErrorCode::Other: {other:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// we verify theirs: headers

struct Flow {
    domain: BatchDomain,
    network: Network,
    config: ChannelConfig,
    channel_id: B256,
    amount: u128,
    payer: LocalSigner,
    session: LocalSigner,
}

fn flow(v: &Reference) -> Flow {
    let hf = &v.about.header_flow;
    let chain_id = hf.network.evm_chain_id().unwrap();
    Flow {
        domain: BatchDomain::new(chain_id, canonical::ESCROW),
        network: hf.network.clone(),
        config: hf.channel_config,
        channel_id: hf.channel_id,
        amount: hf.amount,
        payer: signer_for(&v.keys, "payer"),
        session: signer_for(&v.keys, "sessionKey"),
    }
}

fn header<'a>(v: &'a Reference, name: &str) -> &'a HeaderVector {
    v.headers
        .get(name)
        .unwrap_or_else(|| panic!("header vector {name}"))
}

#[test]
fn sdk_headers_decode_and_round_trip() {
    let v = reference();
    let f = flow(&v);
    let mut r = Report::default();
    assert!(v.headers.len() >= 8);
    r.eq(f.domain.channel_id(&f.config), f.channel_id, || {
        "header flow channel id".into()
    });
    for (name, h) in &v.headers {
        let e = &h.expect;
        match h.header_name.as_str() {
            "PAYMENT-REQUIRED" => {
                let Some(pr) = round_trip::<PaymentRequired>(&mut r, name, &h.header, &h.decoded)
                else {
                    continue;
                };
                r.eq(pr.x402_version, 2, || format!("{name}: x402Version"));
                r.eq(pr.error.as_deref(), e["error"].as_str(), || {
                    format!("{name}: error")
                });
                let req = match BatchRequirements::from_generic(&pr.accepts[0]) {
                    Ok(req) => req,
                    Err(err) => {
                        r.check(false, || {
                            format!("{name}: BatchRequirements::from_generic: {err}")
                        });
                        continue;
                    }
                };
                r.eq(req.network.clone(), f.network.clone(), || {
                    format!("{name}: network")
                });
                r.eq(req.pay_to, f.config.receiver, || format!("{name}: payTo"));
                r.eq(req.asset, f.config.token, || format!("{name}: asset"));
                r.eq(req.amount, f.amount, || format!("{name}: amount"));
                r.eq(
                    req.extra.receiver_authorizer,
                    f.config.receiver_authorizer,
                    || format!("{name}: receiverAuthorizer"),
                );
                r.eq(req.extra.withdraw_delay, f.config.withdraw_delay, || {
                    format!("{name}: withdrawDelay")
                });
                r.eq(req.extra.name.as_str(), "USD Coin", || {
                    format!("{name}: token name")
                });
                r.eq(req.extra.version.as_str(), "2", || {
                    format!("{name}: token version")
                });
                // Our typed requirements keep the fields paychan knows; say what they drop.
                let typed = req.without_corrective_state().to_generic();
                let dropped: Vec<&String> = pr.accepts[0]
                    .extra
                    .as_ref()
                    .map(|m| {
                        m.keys()
                            .filter(|k| !typed.extra.as_ref().unwrap().contains_key(*k))
                            .collect()
                    })
                    .unwrap_or_default();
                eprintln!(
                    "note: {name}: BatchRequirements::to_generic() drops extra fields {dropped:?}"
                );
                if name == "corrective402" {
                    r.eq(
                        pr.error_code(),
                        Some(ErrorCode::CumulativeAmountMismatch),
                        || format!("{name}: error code"),
                    );
                    let (Some(cs), Some(vs)) = (&req.extra.channel_state, &req.extra.voucher_state)
                    else {
                        r.check(false, || {
                            format!("{name}: channelState and voucherState present")
                        });
                        continue;
                    };
                    r.eq(cs.channel_id, word(e, "channelId"), || {
                        format!("{name}: channelId")
                    });
                    r.eq(
                        cs.charged_cumulative_amount,
                        Some(u(e, "chargedCumulativeAmount")),
                        || format!("{name}: chargedCumulativeAmount"),
                    );
                    r.eq(cs.balance, u(e, "balance"), || format!("{name}: balance"));
                    r.eq(cs.total_claimed, u(e, "totalClaimed"), || {
                        format!("{name}: totalClaimed")
                    });
                    r.eq(cs.refund_nonce, U256::from(u(e, "refundNonce")), || {
                        format!("{name}: refundNonce")
                    });
                    r.eq(vs.signed_max_claimable, u(e, "signedMaxClaimable"), || {
                        format!("{name}: signedMaxClaimable")
                    });
                    r.eq(
                        vs.signature.to_string(),
                        s(e, "voucherSignature").to_owned(),
                        || format!("{name}: voucherState.signature"),
                    );
                    let digest = f
                        .domain
                        .voucher_digest(cs.channel_id, vs.signed_max_claimable);
                    for &b in Backend::all() {
                        let who = b
                            .recover(&digest, &sig_of(&vs.signature))
                            .map(|k| k.address());
                        r.eq(who.ok(), Some(addr(e, "voucherSigner")), || {
                            format!("{name}: voucherState recovers ({})", b.name())
                        });
                    }
                } else {
                    r.check(
                        req.extra.channel_state.is_none() && req.extra.voucher_state.is_none(),
                        || format!("{name}: a plain 402 has no corrective state"),
                    );
                }
            }
            "PAYMENT-SIGNATURE" => {
                let Some(pp) =
                    round_trip::<PaymentPayload<BatchPayload>>(&mut r, name, &h.header, &h.decoded)
                else {
                    continue;
                };
                r.eq(pp.payload.kind(), s(e, "payloadType"), || {
                    format!("{name}: payload type")
                });
                let (config, voucher) = pp.payload.channel_and_voucher().unwrap();
                r.eq(voucher.channel_id, word(e, "channelId"), || {
                    format!("{name}: channelId")
                });
                r.eq(*config, f.config, || format!("{name}: channelConfig"));
                r.eq(
                    voucher.max_claimable_amount,
                    u(e, "maxClaimableAmount"),
                    || format!("{name}: maxClaimableAmount"),
                );
                r.eq(config.payer, addr(e, "payer"), || format!("{name}: payer"));
                r.eq(config.payer_authorizer, addr(e, "payerAuthorizer"), || {
                    format!("{name}: payerAuthorizer")
                });
                let req = BatchRequirements::from_generic(&pp.accepted).unwrap();
                match payee::check_binding(config, voucher, &f.domain, &req) {
                    Ok(id) => r.eq(id, voucher.channel_id, || {
                        format!("{name}: check_binding id")
                    }),
                    Err(err) => r.check(false, || format!("{name}: check_binding refused: {err}")),
                }
                let digest = f
                    .domain
                    .voucher_digest(voucher.channel_id, voucher.max_claimable_amount);
                for &b in Backend::all() {
                    let who = b
                        .recover(&digest, &sig_of(&voucher.signature))
                        .map(|k| k.address());
                    r.eq(who.ok(), Some(addr(e, "voucherSigner")), || {
                        format!("{name}: voucher recovers ({})", b.name())
                    });
                }
                match &pp.payload {
                    BatchPayload::Deposit(d) => {
                        let a = d
                            .deposit
                            .authorization
                            .erc3009_authorization
                            .as_ref()
                            .unwrap();
                        let x = &e["erc3009"];
                        r.eq(d.deposit.amount, u(e, "depositAmount"), || {
                            format!("{name}: deposit amount")
                        });
                        r.eq(B256::from(a.salt), word(x, "salt"), || {
                            format!("{name}: erc3009 salt")
                        });
                        r.eq(
                            a.valid_before.to_string(),
                            s(x, "validBefore").to_owned(),
                            || format!("{name}: validBefore"),
                        );
                        let nonce = deposit_nonce(voucher.channel_id, a.salt);
                        r.eq(nonce, word(x, "depositNonce"), || {
                            format!("{name}: depositNonce")
                        });
                        let token = Eip712Domain::new(
                            &req.extra.name,
                            &req.extra.version,
                            req.chain_id,
                            req.asset,
                        );
                        let m = ReceiveWithAuthorization {
                            from: config.payer,
                            to: canonical::ERC3009_COLLECTOR,
                            value: U256::from(d.deposit.amount),
                            valid_after: a.valid_after,
                            valid_before: a.valid_before,
                            nonce,
                        };
                        for &b in Backend::all() {
                            let who = b
                                .recover(&m.digest(&token), &sig_of(&a.signature))
                                .map(|k| k.address());
                            r.eq(who.ok(), Some(addr(x, "signer")), || {
                                format!("{name}: ERC-3009 authorization recovers ({})", b.name())
                            });
                        }
                    }
                    BatchPayload::Refund(p) => {
                        r.eq(
                            p.amount,
                            e["amount"].as_str().map(|a| a.parse().unwrap()),
                            || format!("{name}: refund amount"),
                        );
                    }
                    BatchPayload::Voucher(_) => {}
                    other => r.check(false, || {
                        format!("{name}: unexpected client payload {}", other.kind())
                    }),
                }
            }
            "PAYMENT-RESPONSE" => {
                let Some(resp) =
                    round_trip::<SettlementResponse>(&mut r, name, &h.header, &h.decoded)
                else {
                    continue;
                };
                r.check(resp.success, || format!("{name}: success"));
                r.eq(resp.network.clone(), f.network.clone(), || {
                    format!("{name}: network")
                });
                r.eq(resp.transaction.as_str(), s(e, "transaction"), || {
                    format!("{name}: transaction")
                });
                r.eq(resp.amount.as_deref(), Some(s(e, "amount")), || {
                    format!("{name}: amount")
                });
                r.eq(
                    resp.payer.as_deref().map(|p| p.parse::<Address>().unwrap()),
                    Some(addr(e, "payer")),
                    || format!("{name}: payer"),
                );
                let extra: ResponseExtra = match serde_json::from_value(Value::Object(
                    resp.extra.clone().unwrap_or_default(),
                )) {
                    Ok(x) => x,
                    Err(err) => {
                        r.check(false, || format!("{name}: batch::ResponseExtra: {err}"));
                        continue;
                    }
                };
                r.eq(
                    extra.charged_amount,
                    e["chargedAmount"].as_str().map(|a| a.parse().unwrap()),
                    || format!("{name}: chargedAmount"),
                );
                let cs = extra.channel_state.unwrap();
                r.eq(cs.channel_id, word(e, "channelId"), || {
                    format!("{name}: channelState.channelId")
                });
                r.eq(
                    cs.charged_cumulative_amount,
                    Some(u(e, "chargedCumulativeAmount")),
                    || format!("{name}: chargedCumulativeAmount"),
                );
                r.eq(cs.balance, u(e, "balance"), || format!("{name}: balance"));
                r.eq(cs.total_claimed, u(e, "totalClaimed"), || {
                    format!("{name}: totalClaimed")
                });
                r.eq(cs.refund_nonce, U256::from(u(e, "refundNonce")), || {
                    format!("{name}: refundNonce")
                });
            }
            other => r.check(false, || format!("{name}: unknown header kind {other}")),
        }
    }
    r.finish("SDK headers");
}

/// The reference client's payments go through our payee state machine, and our server answers what the
/// reference server answered.
#[test]
fn sdk_payments_pass_our_payee_checks() {
    let v = reference();
    let f = flow(&v);
    let mut r = Report::default();
    let decode = |name: &str| -> PaymentPayload<BatchPayload> {
        codec::decode(&header(&v, name).header).unwrap()
    };
    let response =
        |name: &str| -> SettlementResponse { codec::decode(&header(&v, name).header).unwrap() };
    let offer: PaymentRequired = codec::decode(&header(&v, "paymentRequired").header).unwrap();
    let req = BatchRequirements::from_generic(&offer.accepts[0]).unwrap();
    let deposit = decode("depositPayment");
    // A paychan server making the reference server's offer accepts what the reference client echoes.
    if let Err(err) = req.matches_accepted(&deposit.accepted) {
        r.check(false, || {
            format!("matches_accepted refused the SDK client's accepted: {err}")
        });
    }
    let tx = |name: &str| -> B256 { response(name).transaction.parse().unwrap() };

    for &backend in Backend::all() {
        let ctx = CheckContext {
            domain: &f.domain,
            requirements: &req,
            now_ms: NOW_MS,
            max_onchain_age_ms: 60_000,
            backend,
        };
        let b = backend.name();
        // deposit: a channel the chain does not know yet
        let BatchPayload::Deposit(dp) = &deposit.payload else {
            panic!("depositPayment is a deposit")
        };
        let id = payee::check_binding(&dp.channel_config, &dp.voucher, &f.domain, &req).unwrap();
        let mut rec =
            ChannelRecord::from_chain(id, dp.channel_config, OnchainState::default(), NOW_MS);
        let res = match payee::check_paid(&rec, None, &dp.voucher, Some(dp.deposit.amount), &ctx) {
            Ok(res) => res,
            Err(e) => {
                r.check(false, || format!("{b}: deposit refused: {e:?}"));
                continue;
            }
        };
        r.eq(
            res.recovered_key.as_ref().map(|k| k.address()),
            Some(f.config.payer_authorizer),
            || format!("{b}: deposit voucher key"),
        );
        let charge = payee::commit(&mut rec, &res, f.amount, NOW_MS).unwrap();
        rec.sync_onchain(
            OnchainState {
                balance: dp.deposit.amount,
                ..OnchainState::default()
            },
            NOW_MS,
        );
        let ours = payee::deposit_response(
            &rec,
            &charge,
            &f.network,
            tx("depositResponse"),
            dp.deposit.amount,
        );
        let theirs = response("depositResponse");
        r.eq(extra_of(&ours), extra_of(&theirs), || {
            format!("{b}: deposit response extra")
        });
        r.eq(ours.amount.clone(), theirs.amount.clone(), || {
            format!("{b}: deposit response amount")
        });
        r.eq(ours.transaction.clone(), theirs.transaction.clone(), || {
            format!("{b}: deposit response transaction")
        });

        // voucher 1: cold (recover) then warm (cached key) path
        let vp = decode("voucherPayment");
        let BatchPayload::Voucher(vp) = &vp.payload else {
            panic!("voucherPayment is a voucher")
        };
        let id = payee::check_binding(&vp.channel_config, &vp.voucher, &f.domain, &req).unwrap();
        r.eq(id, rec.channel_id, || format!("{b}: same channel"));
        let cold = match payee::check_paid(&rec, None, &vp.voucher, None, &ctx) {
            Ok(res) => res,
            Err(e) => {
                r.check(false, || format!("{b}: voucher refused: {e:?}"));
                continue;
            }
        };
        let key = cold.recovered_key.clone().unwrap();
        r.eq(key.address(), f.config.payer_authorizer, || {
            format!("{b}: voucher key")
        });
        let warm = payee::check_paid(&rec, Some(&key), &vp.voucher, None, &ctx);
        r.check(warm.is_ok(), || {
            format!("{b}: warm path accepts the SDK voucher: {warm:?}")
        });
        r.eq((cold.base, cold.ceiling), (1000, 2000), || {
            format!("{b}: reservation")
        });
        let charge = payee::commit(&mut rec, &cold, f.amount, NOW_MS).unwrap();
        let ours = payee::voucher_response(&rec, &charge, &f.network);
        let theirs = response("voucherResponse");
        r.eq(extra_of(&ours), extra_of(&theirs), || {
            format!("{b}: voucher response extra")
        });
        r.eq(
            (ours.transaction.as_str(), ours.amount.as_deref()),
            (theirs.transaction.as_str(), theirs.amount.as_deref()),
            || format!("{b}: voucher response transaction/amount"),
        );
        // the SDK voucher replayed: corrective, like the reference server
        r.check(
            matches!(
                payee::check_paid(&rec, Some(&key), &vp.voucher, None, &ctx),
                Err(payee::Refusal::Corrective)
            ),
            || format!("{b}: a replayed voucher asks for a corrective 402"),
        );

        // state as the reference server had it after voucher 2 (from its corrective 402)
        let corrective: PaymentRequired =
            codec::decode(&header(&v, "corrective402").header).unwrap();
        let creq = BatchRequirements::from_generic(&corrective.accepts[0]).unwrap();
        let cs = creq.extra.channel_state.clone().unwrap();
        let vs = creq.extra.voucher_state.clone().unwrap();
        let mut rec = ChannelRecord {
            charged: cs.charged_cumulative_amount.unwrap(),
            signed_max_claimable: vs.signed_max_claimable,
            signature: Some(sig_of(&vs.signature)),
            onchain: OnchainState::from(&cs),
            ..rec
        };
        // our corrective 402 for that state is theirs (the SDK adds minDeposit, which paychan does not offer)
        let ours = payee::corrective_requirements(&req, &rec);
        let mut theirs_extra = corrective.accepts[0].extra.clone().unwrap();
        theirs_extra.remove("minDeposit");
        r.eq(
            normalize(&Value::Object(ours.extra.clone().unwrap())),
            normalize(&Value::Object(theirs_extra)),
            || format!("{b}: corrective 402 extra"),
        );

        // partial refund, then full refund, as the reference client sent them
        for (name, after_name) in [
            ("refundPayment", "refundResponse"),
            ("refundFullPayment", "refundFullResponse"),
        ] {
            let rp = decode(name);
            let BatchPayload::Refund(rp) = &rp.payload else {
                panic!("{name} is a refund")
            };
            let (plan, _) = match payee::check_refund(&rec, None, rp, &ctx) {
                Ok(p) => p,
                Err(e) => {
                    r.check(false, || format!("{b}: {name} refused: {e:?}"));
                    break;
                }
            };
            // what the reference server signed for this refund (its enrichment, recorded as vectors)
            let signed = v.refunds.iter().find(|x| {
                x.signed.source.contains("enrichSettlementPayload")
                    && x.channel_id == rec.channel_id
                    && x.nonce == plan.nonce
            });
            r.eq(signed.map(|x| x.amount), Some(plan.amount), || {
                format!("{b}: {name}: refund amount signed by the SDK server")
            });
            let claim = v.claim_batches.iter().find(|x| {
                x.signed.source.contains("enrichSettlementPayload")
                    && x.name.contains(&format!("nonce={}", plan.nonce))
            });
            let their_row = claim.map(|c| {
                (
                    c.entries[0].max_claimable_amount,
                    c.entries[0].total_claimed,
                )
            });
            match &plan.claim {
                Some(row) => r.eq(
                    Some((row.voucher.max_claimable_amount, row.total_claimed)),
                    their_row,
                    || format!("{b}: {name}: claim before refund"),
                ),
                // Nothing unclaimed: paychan sends no claim row; the SDK server still sends a no-op row.
                None => r.eq(
                    their_row.map(|(_, t)| t),
                    Some(rec.onchain.total_claimed),
                    || format!("{b}: {name}: the SDK's row is a no-op"),
                ),
            }
            let theirs = response(after_name);
            let after = OnchainState::from(&extra_of(&theirs).channel_state.unwrap());
            payee::apply_refund(&mut rec, &plan, after, NOW_MS);
            let ours = payee::refund_response(&rec, &f.network, tx(after_name), plan.amount);
            r.eq(extra_of(&ours), extra_of(&theirs), || {
                format!("{b}: {name}: refund response extra")
            });
            r.eq(ours.amount.clone(), theirs.amount.clone(), || {
                format!("{b}: {name}: refund response amount")
            });
        }
    }
    r.finish("SDK payments through the payee");
}

/// The reference server's answers go through our payer checks, and our payer signs exactly the payloads
/// the reference client signed.
#[test]
fn sdk_answers_pass_our_payer_checks() {
    let v = reference();
    let f = flow(&v);
    let mut r = Report::default();
    let decode = |name: &str| -> PaymentPayload<BatchPayload> {
        codec::decode(&header(&v, name).header).unwrap()
    };
    let response =
        |name: &str| -> SettlementResponse { codec::decode(&header(&v, name).header).unwrap() };
    let offer: PaymentRequired = codec::decode(&header(&v, "paymentRequired").header).unwrap();
    let req = BatchRequirements::from_generic(&offer.accepts[0]).unwrap();
    let config = channel_config_for(&req, f.payer.address(), f.session.address(), f.config.salt);
    r.eq(config, f.config, || "channel_config_for".into());

    // deposit: same salt and clock as the SDK drew → the same payload, byte for byte
    let theirs = decode("depositPayment");
    let BatchPayload::Deposit(td) = &theirs.payload else {
        panic!()
    };
    let auth = td
        .deposit
        .authorization
        .erc3009_authorization
        .as_ref()
        .unwrap();
    let mut ch = PayerChannel::from_chain(&f.domain, config, 0, 0);
    r.check(ch.needs_deposit(f.amount), || {
        "a new channel needs a deposit".into()
    });
    let now_secs = u64::try_from(auth.valid_before).unwrap() - req.max_timeout_seconds;
    let terms = DepositTerms {
        amount: td.deposit.amount,
        collector: canonical::ERC3009_COLLECTOR,
        salt: auth.salt,
        now_secs,
    };
    let ours = deposit_payload(&mut ch, &f.domain, &req, &f.payer, &f.session, terms).unwrap();
    r.eq(
        serde_json::to_value(BatchPayload::Deposit(ours)).unwrap(),
        payload_of(&theirs),
        || "deposit payload".into(),
    );
    let charged = ch.apply_response(
        &response("depositResponse"),
        f.amount,
        Some(td.deposit.amount),
    );
    r.eq(charged, Ok(f.amount), || "apply_response(deposit)".into());

    // voucher 1, and the server's answer to it
    let ours = ch.voucher_payload(&f.domain, &f.session, f.amount).unwrap();
    r.eq(
        serde_json::to_value(BatchPayload::Voucher(ours)).unwrap(),
        payload_of(&decode("voucherPayment")),
        || "voucher payload".into(),
    );
    r.eq(
        ch.apply_response(&response("voucherResponse"), f.amount, None),
        Ok(f.amount),
        || "apply_response(voucher)".into(),
    );
    r.eq(ch.charged, 2000, || "charged after voucher 1".into());

    // A payer that lost its state resynchronizes from the corrective 402 (chain reads: its channelState).
    let corrective: PaymentRequired = codec::decode(&header(&v, "corrective402").header).unwrap();
    let creq = BatchRequirements::from_generic(&corrective.accepts[0]).unwrap();
    let cs = creq.extra.channel_state.clone().unwrap();
    let mut lost = PayerChannel::from_chain(&f.domain, config, cs.balance, cs.total_claimed);
    let applied = lost.apply_corrective(
        &f.domain,
        &creq.extra,
        f.session.address(),
        cs.balance,
        cs.total_claimed,
    );
    r.eq(applied, Ok(()), || "apply_corrective".into());
    r.eq(lost.charged, 3000, || {
        "charged after the corrective 402".into()
    });
    r.check(
        lost.apply_corrective(
            &f.domain,
            &creq.extra,
            f.payer.address(),
            cs.balance,
            cs.total_claimed,
        )
        .is_err(),
        || "apply_corrective refuses a proof signed by someone else".into(),
    );

    // refunds: zero-charge vouchers over the charged total, as the reference client built them
    for (name, amount) in [("refundPayment", Some(2000)), ("refundFullPayment", None)] {
        let ours = lost.refund_payload(&f.domain, &f.session, amount).unwrap();
        r.eq(
            serde_json::to_value(BatchPayload::Refund(ours)).unwrap(),
            payload_of(&decode(name)),
            || format!("{name} payload"),
        );
    }
    r.finish("SDK answers through the payer");
}

// ---------------------------------------------------------------------------------------------------------
// they verify ours

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

fn require_node(root: &Path) {
    let node = Command::new("node").arg("--version").output();
    match node {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "`node` (Node.js >= 20) is needed to run the reference SDK: install it, then run `npm ci` in {}",
            root.display()
        ),
    }
    assert!(
        root.join("node_modules/@x402/evm/package.json").exists()
            && root.join("node_modules/viem/package.json").exists(),
        "the x402 reference SDK is not installed: run `npm ci` in {}",
        root.display()
    );
}

#[test]
fn they_verify_ours() {
    let root = repo_root();
    require_node(&root);

    // anvil's public test keys: payer #1, its voucher (session) key #5
    let payer = LocalSigner::from_hex(crate::support::PAYER_KEY).unwrap();
    let session =
        LocalSigner::from_hex("0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba")
            .unwrap();
    let network = Network::eip155(31337);
    let domain = BatchDomain::new(31337, canonical::ESCROW);
    let amount: u128 = 1000;
    let deposit_amount: u128 = 10_000;
    // The offer as a reference server makes it (it adds minDeposit = 10 × amount); the client echoes it
    // verbatim as `accepted`.
    let offer: PaymentRequirements = serde_json::from_value(json!({
        "scheme": "batch-settlement", "network": network, "amount": amount.to_string(),
        "asset": crate::support::TOKEN.to_checksum(None), "payTo": crate::support::RECEIVER.to_checksum(None),
        "maxTimeoutSeconds": 300,
        "extra": {"receiverAuthorizer": crate::support::RECEIVER_AUTHORIZER.to_checksum(None), "withdrawDelay": 900,
                  "name": "USD Coin", "version": "2", "minDeposit": (10 * amount).to_string()}
    }))
    .unwrap();
    let req = BatchRequirements::from_generic(&offer).unwrap();
    let resource = ResourceInfo {
        url: "https://paychan.example/inference".into(),
        description: Some("paychan vectors".into()),
        mime_type: Some("application/json".into()),
    };
    let envelope = |payload: BatchPayload| PaymentPayload {
        x402_version: 2,
        resource: Some(resource.clone()),
        accepted: offer.clone(),
        payload,
        extensions: None,
    };
    let salt = b256!("00000000000000000000000000000000000000000000000000000000c0ffee01");
    let config = channel_config_for(&req, payer.address(), session.address(), salt);
    let now_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let now_ms = now_secs * 1000;

    // payer and payee side by side
    let mut ch = PayerChannel::from_chain(&domain, config, 0, 0);
    let id = ch.channel_id;
    let mut rec = ChannelRecord::from_chain(id, config, OnchainState::default(), now_ms);
    let ctx = CheckContext {
        domain: &domain,
        requirements: &req,
        now_ms,
        max_onchain_age_ms: 60_000,
        backend: Backend::default(),
    };
    let terms = DepositTerms {
        amount: deposit_amount,
        collector: canonical::ERC3009_COLLECTOR,
        salt: U256::from(0x5eed_u64) << 200,
        now_secs,
    };
    let deposit = deposit_payload(&mut ch, &domain, &req, &payer, &session, terms).unwrap();
    let res = payee::check_paid(&rec, None, &deposit.voucher, Some(deposit_amount), &ctx).unwrap();
    let charge = payee::commit(&mut rec, &res, amount, now_ms).unwrap();
    rec.sync_onchain(
        OnchainState {
            balance: deposit_amount,
            ..OnchainState::default()
        },
        now_ms,
    );
    let deposit_resp = payee::deposit_response(
        &rec,
        &charge,
        &network,
        B256::repeat_byte(0xd1),
        deposit_amount,
    );
    ch.apply_response(&deposit_resp, amount, Some(deposit_amount))
        .unwrap();
    let deposit_header = codec::encode(&envelope(BatchPayload::Deposit(deposit.clone())));

    let mut voucher_headers = Vec::new();
    let mut voucher_resp = None;
    let mut charged_before_last = 0;
    for _ in 0..2 {
        charged_before_last = ch.charged;
        let vp = ch.voucher_payload(&domain, &session, amount).unwrap();
        let res = payee::check_paid(&rec, None, &vp.voucher, None, &ctx).unwrap();
        let charge = payee::commit(&mut rec, &res, amount, now_ms).unwrap();
        let resp = payee::voucher_response(&rec, &charge, &network);
        ch.apply_response(&resp, amount, None).unwrap();
        voucher_headers.push((
            vp.voucher.max_claimable_amount,
            codec::encode(&envelope(BatchPayload::Voucher(vp))),
        ));
        voucher_resp = Some(resp);
    }
    let corrective = PaymentRequired {
        x402_version: 2,
        error: Some(ErrorCode::CumulativeAmountMismatch.as_str().to_owned()),
        resource: Some(resource.clone()),
        accepts: vec![payee::corrective_requirements(&req, &rec)],
        extensions: None,
    };
    let refund = ch.refund_payload(&domain, &session, Some(2000)).unwrap();
    let (refund_plan, _) = payee::check_refund(&rec, None, &refund, &ctx).unwrap();
    assert_eq!(refund_plan.amount, 2000);

    let sig_expect = |kind: &str, max: u128| {
        json!({"payloadType": kind, "channelId": id, "payer": config.payer, "payerAuthorizer": config.payer_authorizer,
               "maxClaimableAmount": max.to_string()})
    };
    let mut deposit_expect = sig_expect("deposit", amount);
    deposit_expect["depositAmount"] = json!(deposit_amount.to_string());
    let mut refund_expect = sig_expect("refund", rec.charged);
    refund_expect["amount"] = json!("2000");
    let doc = json!({
        "network": network,
        "requestAmount": amount.to_string(),
        "headers": {
            "depositPayment": {"headerName": "PAYMENT-SIGNATURE", "header": deposit_header, "expect": deposit_expect},
            "voucherPayment1": {"headerName": "PAYMENT-SIGNATURE", "header": voucher_headers[0].1,
                                "expect": sig_expect("voucher", voucher_headers[0].0)},
            "voucherPayment2": {"headerName": "PAYMENT-SIGNATURE", "header": voucher_headers[1].1,
                                "expect": sig_expect("voucher", voucher_headers[1].0)},
            "refundPayment": {"headerName": "PAYMENT-SIGNATURE", "header": codec::encode(&envelope(BatchPayload::Refund(refund))),
                              "expect": refund_expect},
            "corrective402": {"headerName": "PAYMENT-REQUIRED", "header": codec::encode(&corrective),
                              "expect": {"channelId": id, "payer": config.payer, "payerAuthorizer": config.payer_authorizer,
                                         "salt": salt, "chargedCumulativeAmount": rec.charged.to_string(),
                                         "signedMaxClaimable": rec.signed_max_claimable.to_string()}},
            "depositResponse": {"headerName": "PAYMENT-RESPONSE", "header": codec::encode(&deposit_resp),
                                "expect": {"channelId": id, "chargedBefore": "0", "balanceBefore": "0",
                                           "depositAmount": deposit_amount.to_string()}},
            "voucherResponse": {"headerName": "PAYMENT-RESPONSE", "header": codec::encode(voucher_resp.as_ref().unwrap()),
                                "expect": {"channelId": id, "chargedBefore": charged_before_last.to_string(),
                                           "balanceBefore": deposit_amount.to_string()}},
        }
    });

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let file = std::env::temp_dir().join(format!(
        "paychan-vectors-{}-{nanos}.json",
        std::process::id()
    ));
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = Command::new("node")
        .arg("tests/vectors/verify-paychan.mjs")
        .arg(&file)
        .current_dir(&root)
        .output()
        .expect("run node tests/vectors/verify-paychan.mjs");
    let _ = std::fs::remove_file(&file);
    if let Some(keep) = std::env::var_os("PAYCHAN_VECTORS_OUT") {
        // for debugging: keep what the SDK was asked to check
        std::fs::write(keep, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(2) {
        panic!(
            "verify-paychan.mjs could not run (run `npm ci` in {}):\n{stderr}",
            root.display()
        );
    }
    assert!(
        out.status.success(),
        "the reference SDK refused paychan's headers (exit {:?}):\n{stdout}\n{stderr}",
        out.status.code()
    );
    eprintln!("{stdout}");
}
