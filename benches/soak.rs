//! Soak test of hostile `PAYMENT-SIGNATURE` headers: structural garbage and mutations of valid
//! vouchers for really funded channels, thrown at the engine in process and at the HTTP server
//! over loopback. Not run in CI: it takes a few minutes.
//!
//! In process, every header goes the server's way: it must be a valid header value
//! (`HeaderValue::from_bytes`, what hyper would have parsed), ASCII (`to_str`, the server's
//! check), then `codec::decode_limited` with the server's default limit (16 KiB), then
//! `Engine::begin`. Over HTTP, every header is sent to a paid route of `paychan_server::app`
//! served by `paychan_server::serve` on `127.0.0.1:0`, in front of an upstream that counts what
//! reaches it.
//!
//! Invariants checked, and the run fails (exit 1) if one breaks:
//! * **0 panics**: every `Engine::begin` runs in its own task and a panicking one is counted;
//!   the HTTP server answers every request (a transport error is counted) and serves a real
//!   payment afterwards.
//! * **0 acceptances**: no hostile header is accepted (a "mutation" that leaves the payment as
//!   the engine reads it — `x402Version`, `accepted`, `payload`, addresses in any case, `v` as
//!   27/28 or 0/1 — is not one and is drawn again); over HTTP every answer is a `4xx` and the
//!   upstream sees nothing.
//! * **0 state changes**: both funded channels' records (engine and store), their on-chain
//!   state, the stored channel count and the engine's committed / deposit / refund counters are
//!   the same after the run as before it.
//!
//! A real dev chain with the real contracts, a real sled store (default durability, fsync) in a
//! temporary directory, the real engine (default config: k256) and server. Deterministic: the
//! generator is a seeded xorshift.
//!
//! ```text
//! cargo bench -p paychan-benches --bench soak -- [--count N] [--http-count N] [--seed S] [--in-flight N]
//! ```
//!
//! Defaults: 1,000,000 headers in process, 100,000 over HTTP, 64 in flight. `--engine` and
//! `--http` are synonyms of `--count` and `--http-count`; `PAYCHAN_SOAK_COUNT` and
//! `PAYCHAN_SOAK_HTTP_COUNT` set them too.

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::too_many_lines
)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use alloy_primitives::{Address, B256, Bytes, U256};
use base64::Engine as _;
use paychan_chain::{ChainConfig, ChainReader};
use paychan_core::{
    batch::{
        BatchDomain, BatchPayload, BatchRequirements, ChannelConfig, VoucherFields, VoucherPayload,
        payee::{ChannelRecord, OnchainState},
        payer::{PayerChannel, channel_config_for},
    },
    codec,
    sig::{LocalSigner, Signature},
    x402::{PaymentPayload, PaymentRequired, X402_VERSION},
};
use paychan_devchain::{DevChain, ESCROW};
use paychan_engine::{Begin, Engine, EngineConfig, NoFacilitator};
use paychan_server::{PaidRoute, PaidState, Upstream};
use paychan_store::{SledStore, SledStoreConfig, Store};
use reqwest::header::HeaderValue;
use serde_json::{Value, json};

const PRICE: u128 = 1_000;
const DEPOSIT: u128 = 1_000_000_000;
/// Real payments made on each funded channel before the soak, so that replays exist.
const HISTORY: usize = 5;
/// secp256k1's group order.
const ORDER: U256 = U256::from_be_slice(&[
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
]);

type Eng = Engine<SledStore, ChainReader, NoFacilitator>;
type Payload = PaymentPayload<BatchPayload>;

/// xorshift64*: a small seeded generator (the soak must be reproducible, not unpredictable).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
    fn address(&mut self) -> Address {
        Address::from_slice(&self.bytes(20))
    }
}

/// The categories, in two families: what a scanner or a broken client sends, and mutations of
/// a payment that would be accepted.
const STRUCTURAL: &[&str] = &[
    "raw bytes",
    "ascii noise",
    "base64 of noise",
    "base64 of non-json",
    "wrong top-level type",
    "truncated json",
    "broken base64",
    "json bit flips",
    "deep nesting",
    "oversized",
    "huge numbers",
    "duplicate keys",
    "hostile leaf",
    "missing field",
];
const MUTATION: &[&str] = &[
    "signature bit flip",
    "signature malformed",
    "channel id changed",
    "amount changed",
    "config field changed",
    "scheme / network",
    "accepted terms",
    "x402 version",
    "payload type",
    "replayed voucher",
    "voucher ahead",
    "voucher below",
    "unknown channel",
    "forged signature",
    "cross-channel splice",
];

/// What the generator knows of the valid payments it mutates.
struct Base {
    /// Channel A's next valid voucher, which the engine would accept (never sent in the soak).
    valid: Payload,
    valid_json: Value,
    valid_text: String,
    /// [`relevant`] of `valid`.
    relevant: Value,
    /// Vouchers already paid on A and B.
    replays: Vec<Vec<u8>>,
    /// A's vouchers validly signed with a ceiling ahead of the next one.
    ahead: Vec<Vec<u8>>,
    /// A's vouchers validly signed with a ceiling below the next one (but above the last).
    below: Vec<Vec<u8>>,
    /// Validly signed first vouchers for channels that are not on chain.
    strangers: Vec<Vec<u8>>,
    /// A's next voucher signed by other keys.
    forged: Vec<Vec<u8>>,
    /// A's config with one field changed, the id recomputed, signed by A's payer: a channel
    /// with nothing on chain, or whose terms are not the offer's.
    rebound: Vec<Vec<u8>>,
    /// Parts of A's and B's vouchers mixed up.
    splices: Vec<Vec<u8>>,
    /// Channel B's id (funded, paid before the soak).
    b_id: B256,
}

fn b64(bytes: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .encode(bytes)
        .into_bytes()
}

fn header_of<T: serde::Serialize>(v: &T) -> Vec<u8> {
    b64(&serde_json::to_vec(v).unwrap())
}

/// Every path to a leaf of `v`.
fn leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                path.push(k.clone());
                leaves(x, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                path.push(i.to_string());
                leaves(x, path, out);
                path.pop();
            }
        }
        _ => out.push(path.clone()),
    }
}

fn at_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = v;
    for p in path {
        cur = match cur {
            Value::Object(m) => m.get_mut(p)?,
            Value::Array(a) => a.get_mut(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// A hostile value to put where a leaf was: other types, sizes, near misses.
fn hostile_value(rng: &mut Rng, old: &Value) -> Value {
    match rng.below(12) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1),
        3 => json!(1e300),
        4 => {
            json!("115792089237316195423570985008687907853269984665640564039457584007913129639936")
        }
        5 => json!("0x"),
        6 => json!("9".repeat(200)),
        7 => json!([old.clone()]),
        8 => json!({"x": old.clone()}),
        9 => {
            let mut deep = json!(0);
            for _ in 0..64 {
                deep = json!([deep]);
            }
            deep
        }
        10 => json!("\u{0000}\u{202e}ä"),
        _ => match old {
            // one character of a string changed, a number moved by one
            Value::String(s) if !s.is_empty() => {
                let mut b = s.clone().into_bytes();
                let i = rng.below(b.len());
                b[i] = if b[i] == b'0' { b'1' } else { b'0' };
                Value::String(String::from_utf8_lossy(&b).into_owned())
            }
            Value::Number(n) => json!(n.as_u64().map_or(0, |n| n.wrapping_add(1))),
            _ => json!("x"),
        },
    }
}

/// `v` with every hex string (`0x…`) in lower case: addresses are case-insensitive (their case
/// is only a checksum), so a case flip in one is not a mutation.
fn canonical(v: &Value) -> Value {
    match v {
        Value::String(s) if s.starts_with("0x") || s.starts_with("0X") => {
            Value::String(s.to_ascii_lowercase())
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, x)| (k.clone(), canonical(x))).collect())
        }
        other => other.clone(),
    }
}

/// The payment-relevant part of a header as the server reads it (typed, signature in its
/// canonical form, hex in lower case), or `None` if it does not decode as a payment at all.
fn relevant(header: &[u8]) -> Option<Value> {
    let raw = HeaderValue::from_bytes(header).ok()?;
    let mut p = codec::decode::<Payload>(raw.to_str().ok()?).ok()?;
    if let BatchPayload::Voucher(v) = &mut p.payload
        && let Ok(sig) = Signature::from_bytes(&v.voucher.signature)
    {
        v.voucher.signature = Bytes::copy_from_slice(&sig.to_bytes());
    }
    Some(canonical(&json!([p.x402_version, p.accepted, p.payload])))
}

/// `s` with a JSON value inserted as the first member of the top-level object.
fn with_member(valid_text: &str, key: &str, value: &str) -> String {
    format!("{{\"{key}\":{value},{}", &valid_text[1..])
}

impl Base {
    /// A's next voucher envelope with its voucher payload changed by `f`.
    fn voucher_with(&self, f: impl FnOnce(&mut VoucherPayload)) -> Vec<u8> {
        let mut p = self.valid.clone();
        let BatchPayload::Voucher(v) = &mut p.payload else {
            unreachable!()
        };
        f(v);
        header_of(&p)
    }

    fn json_with(&self, f: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut v = self.valid_json.clone();
        f(&mut v);
        header_of(&v)
    }

    fn signature(&self) -> Vec<u8> {
        let BatchPayload::Voucher(v) = &self.valid.payload else {
            unreachable!()
        };
        v.voucher.signature.to_vec()
    }
}

/// One hostile header of category `kind`.
fn make(rng: &mut Rng, base: &Base, kind: &str) -> Vec<u8> {
    let text = &base.valid_text;
    match kind {
        "raw bytes" => {
            let n = rng.below(3000);
            rng.bytes(n)
        }
        "ascii noise" => {
            let n = rng.below(3000);
            (0..n).map(|_| (32 + rng.below(95)) as u8).collect()
        }
        "base64 of noise" => {
            let n = rng.below(3000);
            b64(&rng.bytes(n))
        }
        "base64 of non-json" => {
            let t = [
                "hello",
                "x402Version=2&payload=voucher",
                "<payment version=\"2\"/>",
                "{'x402Version': 2}",
                "{x402Version: 2}",
                "[1,2,",
                "\u{feff}{\"x402Version\":2}",
                "NaN",
                "--- yaml: true",
            ];
            b64(rng.pick(&t).as_bytes())
        }
        "wrong top-level type" => {
            let t = [
                "null".to_owned(),
                "2".to_owned(),
                "\"voucher\"".to_owned(),
                "[]".to_owned(),
                "true".to_owned(),
                "{}".to_owned(),
                format!("[{text}]"),
                format!("\"{}\"", text.replace('"', "\\\"")),
            ];
            b64(rng.pick(&t).as_bytes())
        }
        "truncated json" => {
            let cut = rng.below(text.len());
            b64(&text.as_bytes()[..cut])
        }
        "broken base64" => {
            let mut h = String::from_utf8(b64(text.as_bytes())).unwrap();
            match rng.below(4) {
                0 => {
                    let i = rng.below(h.len());
                    h.insert(
                        i,
                        *rng.pick(&['!', '*', ' ', 'é', '-', '_', '=', '.', '\t']),
                    );
                }
                1 => h.truncate(h.len() - 1 - rng.below(3)),
                2 => h = h.replace('+', "-").replace('/', "_") + "@",
                _ => h.push_str("===="),
            }
            h.into_bytes()
        }
        "json bit flips" => {
            let mut b = text.clone().into_bytes();
            for _ in 0..=rng.below(3) {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            b64(&b)
        }
        "deep nesting" => {
            let depth = *rng.pick(&[129, 1_000, 5_000]);
            let s = match rng.below(4) {
                0 => "[".repeat(depth) + &"]".repeat(depth),
                1 => with_member(
                    text,
                    "extensions",
                    &("{\"a\":".repeat(depth) + "0" + &"}".repeat(depth)),
                ),
                2 => with_member(text, "junk", &("[".repeat(depth) + &"]".repeat(depth))),
                _ => {
                    let mut v = base.valid_json.clone();
                    v["accepted"]["extra"]["name"] = json!(null);
                    let t = v.to_string();
                    t.replace("null", &("[".repeat(depth) + &"]".repeat(depth)))
                }
            };
            b64(s.as_bytes())
        }
        "oversized" => {
            // the server's limit is 16 KiB of header: just under it (decodes, then refused
            // for being an invalid payment) and well over it
            let target: usize = *rng.pick(&[12_000, 16_300, 16_385, 40_000, 100_000]);
            let pad = (target * 3 / 4).saturating_sub(text.len() + 40);
            let mut v = base.valid_json.clone();
            v["extensions"] = json!({ "pad": "a".repeat(pad) });
            v["payload"]["voucher"]["maxClaimableAmount"] = json!("1");
            header_of(&v)
        }
        "huge numbers" => {
            let big = [
                "1e400",
                "18446744073709551616",
                "340282366920938463463374607431768211456",
                "-0",
                "2.0",
                "2e0",
                "99999999999999999999999999999999999999999999999999999999999999999999999999999999",
            ];
            let n = *rng.pick(&big);
            let s = match rng.below(4) {
                0 => {
                    let mut v = base.valid_json.clone();
                    v["x402Version"] = json!("X");
                    v.to_string().replace("\"X\"", n)
                }
                1 => {
                    let mut v = base.valid_json.clone();
                    v["payload"]["voucher"]["maxClaimableAmount"] = json!(if rng.below(2) == 0 {
                        n.to_owned()
                    } else {
                        "9".repeat(80)
                    });
                    v.to_string()
                }
                2 => {
                    let mut v = base.valid_json.clone();
                    v["payload"]["channelConfig"]["withdrawDelay"] = json!("X");
                    v.to_string().replace("\"X\"", n)
                }
                _ => {
                    let mut v = base.valid_json.clone();
                    v["accepted"]["maxTimeoutSeconds"] = json!("X");
                    v.to_string().replace("\"X\"", n)
                }
            };
            b64(s.as_bytes())
        }
        "duplicate keys" => {
            let member = *rng.pick(&[
                ("x402Version", "1"),
                ("x402Version", "2"),
                ("payload", "{}"),
                ("accepted", "null"),
            ]);
            b64(with_member(text, member.0, member.1).as_bytes())
        }
        "hostile leaf" => base.json_with(|v| {
            let mut paths = Vec::new();
            leaves(v, &mut Vec::new(), &mut paths);
            let path = rng.pick(&paths).clone();
            let slot = at_mut(v, &path).unwrap();
            *slot = hostile_value(rng, slot);
        }),
        "missing field" => base.json_with(|v| {
            let paths: [&[&str]; 9] = [
                &["x402Version"],
                &["accepted"],
                &["payload"],
                &["payload", "type"],
                &["payload", "voucher"],
                &["payload", "channelConfig"],
                &["payload", "voucher", "signature"],
                &["payload", "channelConfig", "payer"],
                &["accepted", "extra"],
            ];
            let path = *rng.pick(&paths);
            let (last, parent) = path.split_last().unwrap();
            let parent: Vec<String> = parent.iter().map(|s| (*s).to_owned()).collect();
            if let Some(Value::Object(m)) = at_mut(v, &parent) {
                m.remove(*last);
            }
        }),
        "signature bit flip" => {
            let mut sig = base.signature();
            let i = rng.below(64);
            sig[i] ^= 1 << rng.below(8);
            base.voucher_with(|v| v.voucher.signature = sig.into())
        }
        "signature malformed" => {
            let sig = base.signature();
            let s = U256::from_be_slice(&sig[32..64]);
            let bad: Vec<u8> = match rng.below(10) {
                0 => Vec::new(),
                1 => sig[..64].to_vec(),
                2 => [sig.as_slice(), &[0]].concat(),
                3 => [sig.as_slice(), sig.as_slice()].concat(),
                4 => {
                    // the wrong parity
                    let mut b = sig.clone();
                    b[64] = if b[64] == 27 { 28 } else { 27 };
                    b
                }
                5 => {
                    let mut b = sig.clone();
                    b[64] = *rng.pick(&[2, 26, 29, 255]);
                    b
                }
                6 => {
                    // the malleable twin: (r, n - s), the other parity
                    let mut b = sig.clone();
                    b[32..64].copy_from_slice(&(ORDER - s).to_be_bytes::<32>());
                    b[64] = if b[64] == 27 { 28 } else { 27 };
                    b
                }
                7 => {
                    let mut b = sig.clone();
                    b[..32].fill(0);
                    b
                }
                8 => {
                    let mut b = sig.clone();
                    b[32..64].copy_from_slice(&ORDER.to_be_bytes::<32>());
                    b
                }
                _ => vec![0xff; 65],
            };
            base.voucher_with(|v| v.voucher.signature = bad.into())
        }
        "channel id changed" => {
            let choice = rng.below(4);
            let mut random = [0u8; 32];
            random.copy_from_slice(&rng.bytes(32));
            let (bit, byte) = (rng.below(8), rng.below(32));
            base.voucher_with(|v| {
                v.voucher.channel_id = match choice {
                    0 => {
                        let mut id = v.voucher.channel_id;
                        id.0[byte] ^= 1 << bit;
                        id
                    }
                    1 => B256::ZERO,
                    2 => base.b_id,
                    _ => B256::from(random),
                }
            })
        }
        "amount changed" => {
            let choice = rng.below(7);
            base.voucher_with(|v| {
                let a = v.voucher.max_claimable_amount;
                v.voucher.max_claimable_amount = match choice {
                    0 => a + 1,
                    1 => a - 1,
                    2 => a + PRICE,
                    3 => a - PRICE,
                    4 => 0,
                    5 => u128::MAX,
                    _ => a * 2,
                };
            })
        }
        "config field changed" if rng.below(3) == 0 => rng.pick(&base.rebound).clone(),
        "config field changed" => {
            let field = rng.below(7);
            let addr = if rng.below(2) == 0 {
                rng.address()
            } else {
                Address::ZERO
            };
            let (delay, salt_byte) = (
                *rng.pick(&[0, 1, 899, 901, 1 << 40, u64::MAX]),
                rng.below(32),
            );
            base.voucher_with(|v| {
                let c = &mut v.channel_config;
                match field {
                    0 => c.payer = addr,
                    1 => c.payer_authorizer = addr,
                    2 => c.receiver = addr,
                    3 => c.receiver_authorizer = addr,
                    4 => c.token = addr,
                    5 => c.withdraw_delay = delay,
                    _ => c.salt.0[salt_byte] ^= 1,
                }
            })
        }
        "scheme / network" => {
            let (key, values): (&str, &[&str]) = if rng.below(2) == 0 {
                (
                    "scheme",
                    &[
                        "exact",
                        "batch-settlement ",
                        "BATCH-SETTLEMENT",
                        "",
                        "batch_settlement",
                        "upto",
                    ],
                )
            } else {
                (
                    "network",
                    &[
                        "eip155:1",
                        "eip155:31338",
                        "eip155:031337",
                        "31337",
                        "eip155:",
                        "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp",
                    ],
                )
            };
            let value = *rng.pick(values);
            base.json_with(|v| v["accepted"][key] = json!(value))
        }
        "accepted terms" => {
            let choice = rng.below(12);
            let addr = rng.address().to_string();
            base.json_with(|v| {
                let a = &mut v["accepted"];
                match choice {
                    0 => a["amount"] = json!("999"),
                    1 => a["amount"] = json!("1001"),
                    2 => a["amount"] = json!("0"),
                    3 => a["amount"] = json!("1e3"),
                    4 => a["asset"] = json!(addr),
                    5 => a["payTo"] = json!(addr),
                    6 => a["maxTimeoutSeconds"] = json!(299),
                    7 => a["extra"]["receiverAuthorizer"] = json!(addr),
                    8 => a["extra"]["withdrawDelay"] = json!(901),
                    9 => a["extra"]["name"] = json!("USDC"),
                    10 => a["extra"]["version"] = json!("1"),
                    _ => a["extra"] = json!([]),
                }
            })
        }
        "x402 version" => {
            let version = rng
                .pick(&[
                    json!(1),
                    json!(3),
                    json!(0),
                    json!(255),
                    json!(-2),
                    json!("2"),
                    json!(2.5),
                ])
                .clone();
            base.json_with(|v| v["x402Version"] = version)
        }
        "payload type" => {
            let t = *rng.pick(&[
                "claim", "settle", "refund", "deposit", "Voucher", "", "vouchers",
            ]);
            base.json_with(|v| v["payload"]["type"] = json!(t))
        }
        "replayed voucher" => rng.pick(&base.replays).clone(),
        "voucher ahead" => rng.pick(&base.ahead).clone(),
        "voucher below" => rng.pick(&base.below).clone(),
        "unknown channel" => rng.pick(&base.strangers).clone(),
        "forged signature" => rng.pick(&base.forged).clone(),
        "cross-channel splice" => rng.pick(&base.splices).clone(),
        other => unreachable!("{other}"),
    }
}

/// One hostile header and its category.
fn generate(rng: &mut Rng, base: &Base) -> (&'static str, Vec<u8>) {
    loop {
        let i = rng.below(STRUCTURAL.len() + MUTATION.len());
        let kind = if i < STRUCTURAL.len() {
            STRUCTURAL[i]
        } else {
            MUTATION[i - STRUCTURAL.len()]
        };
        let header = make(rng, base, kind);
        // a "mutation" that left the payment as it was is not one: draw again
        if relevant(&header).is_some_and(|r| r == base.relevant) {
            continue;
        }
        return (kind, header);
    }
}

/// What must not change.
#[derive(Debug, PartialEq)]
struct State {
    records: Vec<Option<ChannelRecord>>,
    stored: Vec<Option<ChannelRecord>>,
    onchain: Vec<OnchainState>,
    channels: u64,
    committed: u64,
    deposits: u64,
    refunds: u64,
}

async fn state(engine: &Eng, store: &SledStore, chain: &DevChain, ids: &[B256]) -> State {
    let m = engine.metrics();
    let mut s = State {
        records: Vec::new(),
        stored: Vec::new(),
        onchain: Vec::new(),
        channels: store.stats().await.unwrap().channels,
        committed: m.committed.load(Relaxed),
        deposits: m.deposits.load(Relaxed),
        refunds: m.refunds.load(Relaxed),
    };
    for &id in ids {
        s.records.push(engine.channel(id).await.unwrap());
        s.stored.push(store.channel(id).await.unwrap());
        s.onchain.push(chain.onchain_state(id).await.unwrap());
    }
    s
}

#[derive(Default)]
struct Tally {
    by_kind: BTreeMap<&'static str, u64>,
    by_code: BTreeMap<String, u64>,
    by_status: BTreeMap<u16, u64>,
    nanos: Vec<u64>,
    panics: u64,
    accepted: u64,
    dropped: u64,
    /// HTTP answers that are not a 4xx.
    not_4xx: u64,
    /// Headers with bytes no HTTP client can send (control characters), sent with those
    /// bytes replaced.
    sanitized: u64,
    chain_reads: u64,
    screened_out: u64,
    negative_hits: u64,
    chain_reads_refused: u64,
    cpu_secs: f64,
}

impl Tally {
    fn summary(&mut self, what: &str, wall: Duration) -> Value {
        self.nanos.sort_unstable();
        let q = |p: f64| {
            self.nanos
                .get(((self.nanos.len() as f64 - 1.0) * p) as usize)
                .copied()
                .unwrap_or(0) as f64
                / 1000.0
        };
        let n = self.nanos.len() as u64 + self.panics + self.dropped;
        let rate = n as f64 / wall.as_secs_f64();
        let cpu_us = self.cpu_secs * 1e6 / n.max(1) as f64;
        let s = json!({
            "target": what,
            "headers": n,
            "seconds": wall.as_secs_f64(),
            "per_second": rate.round(),
            "cpu_us_per_header": cpu_us,
            "p50_us": q(0.5),
            "p90_us": q(0.9),
            "p99_us": q(0.99),
            "max_us": q(1.0),
            "panics": self.panics,
            "accepted": self.accepted,
            "dropped": self.dropped,
            "not_4xx": self.not_4xx,
            "sanitized": self.sanitized,
            "chain_reads": self.chain_reads,
            "screened_out": self.screened_out,
            "negative_hits": self.negative_hits,
            "chain_reads_refused": self.chain_reads_refused,
            "by_kind": self.by_kind,
            "by_code": self.by_code,
            "by_status": self.by_status,
        });
        println!(
            "\n## {what}: {n} headers in {:.1} s = {rate:.0} headers/s; process CPU {cpu_us:.1} µs per header",
            wall.as_secs_f64(),
        );
        println!(
            "per-header latency: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0)
        );
        println!(
            "panics {}, accepted {}, dropped {}, non-4xx {}, sanitized for transport {}",
            self.panics, self.accepted, self.dropped, self.not_4xx, self.sanitized
        );
        println!(
            "engine counters: chain reads {}, screened out {}, negative-cache hits {}, chain reads refused {}",
            self.chain_reads, self.screened_out, self.negative_hits, self.chain_reads_refused
        );
        println!("\n| family | category | headers |\n| --- | --- | ---: |");
        for (k, c) in &self.by_kind {
            let family = if STRUCTURAL.contains(k) {
                "structural"
            } else {
                "mutation"
            };
            println!("| {family} | {k} | {c} |");
        }
        println!("\n| refusal | headers |\n| --- | ---: |");
        for (k, c) in &self.by_code {
            println!("| {k} | {c} |");
        }
        if !self.by_status.is_empty() {
            let st: Vec<String> = self
                .by_status
                .iter()
                .map(|(s, c)| format!("{s}: {c}"))
                .collect();
            println!("\nHTTP statuses: {}", st.join(", "));
        }
        s
    }

    fn counters_since(&mut self, e: &Eng, before: [u64; 4]) {
        let now = counters(e);
        self.chain_reads = now[0] - before[0];
        self.screened_out = now[1] - before[1];
        self.negative_hits = now[2] - before[2];
        self.chain_reads_refused = now[3] - before[3];
    }
}

fn counters(e: &Eng) -> [u64; 4] {
    let m = e.metrics();
    [
        m.chain_reads.load(Relaxed),
        m.screened_out.load(Relaxed),
        m.negative_hits.load(Relaxed),
        m.chain_reads_refused.load(Relaxed),
    ]
}

/// A header the server's way: a header value, ASCII, bounded decode, then the engine.
async fn through_engine(e: &Eng, offer: &BatchRequirements, header: &[u8]) -> Result<(), String> {
    let Ok(value) = HeaderValue::from_bytes(header) else {
        return Err("not a header value (hyper: 400)".into());
    };
    let Ok(raw) = value.to_str() else {
        return Err("invalid_payload (not ASCII)".into());
    };
    let p = codec::decode_limited::<Payload>(raw, codec::DEFAULT_MAX_HEADER_BYTES)
        .map_err(|_| "invalid_payload (undecodable)".to_owned())?;
    match e.begin(&p, offer).await {
        Ok(Begin::Serve(ticket)) => {
            e.abort(ticket);
            Ok(())
        }
        Ok(Begin::Done(_)) => Ok(()),
        Err(d) => Err(d.rejection.code.to_string()),
    }
}

type Outcome = (&'static str, Result<(), String>, u64, Option<Vec<u8>>);

fn record(t: &mut Tally, r: Result<Outcome, tokio::task::JoinError>) {
    match r {
        Err(e) if e.is_panic() => t.panics += 1,
        Err(_) => t.dropped += 1,
        Ok((kind, outcome, nanos, header)) => {
            t.nanos.push(nanos);
            match outcome {
                Ok(()) => {
                    t.accepted += 1;
                    if t.accepted <= 5 {
                        eprintln!(
                            "ACCEPTED ({kind}): {}",
                            String::from_utf8_lossy(&header.unwrap_or_default())
                        );
                    }
                }
                Err(code) => *t.by_code.entry(code).or_default() += 1,
            }
        }
    }
}

async fn soak_engine(
    engine: &Eng,
    offer: &BatchRequirements,
    base: &Base,
    n: usize,
    seed: u64,
    in_flight: usize,
) -> Tally {
    let mut rng = Rng(seed | 1);
    let mut t = Tally::default();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (kind, header) = generate(&mut rng, base);
        *t.by_kind.entry(kind).or_default() += 1;
        let (e, o) = (engine.clone(), offer.clone());
        set.spawn(async move {
            let started = Instant::now();
            let outcome = through_engine(&e, &o, &header).await;
            let nanos = started.elapsed().as_nanos() as u64;
            let keep = outcome.is_ok().then_some(header);
            (kind, outcome, nanos, keep)
        });
        while set.len() >= in_flight {
            record(&mut t, set.join_next().await.unwrap());
        }
    }
    while let Some(r) = set.join_next().await {
        record(&mut t, r);
    }
    t
}

async fn soak_http(url: &str, base: &Base, n: usize, seed: u64, in_flight: usize) -> Tally {
    let mut rng = Rng(seed.rotate_left(17) | 1);
    let mut t = Tally::default();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(in_flight)
        .build()
        .unwrap();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (kind, mut header) = generate(&mut rng, base);
        *t.by_kind.entry(kind).or_default() += 1;
        // bytes no HTTP client can put in a header (control characters) are replaced: hyper
        // would answer 400 before the server's code runs
        if HeaderValue::from_bytes(&header).is_err() {
            for b in &mut header {
                if (*b < 0x20 && *b != b'\t') || *b == 0x7f {
                    *b = b'?';
                }
            }
            t.sanitized += 1;
        }
        let (http, url) = (http.clone(), url.to_owned());
        set.spawn(async move {
            let started = Instant::now();
            let req = http
                .post(&url)
                .header("content-type", "application/json")
                .header(
                    codec::PAYMENT_SIGNATURE,
                    HeaderValue::from_bytes(&header).unwrap(),
                )
                .body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#);
            let outcome = match req.send().await {
                Err(e) => Err(format!("transport error: {e}")),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let code = resp
                        .headers()
                        .get(codec::PAYMENT_REQUIRED)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| codec::decode::<PaymentRequired>(v).ok())
                        .and_then(|pr| pr.error);
                    let _ = resp.bytes().await;
                    if (200..300).contains(&status) {
                        Ok(())
                    } else {
                        Err(format!("{status} {}", code.unwrap_or_default()))
                    }
                }
            };
            let nanos = started.elapsed().as_nanos() as u64;
            let keep = outcome.is_ok().then_some(header);
            (kind, outcome, nanos, keep)
        });
        while set.len() >= in_flight {
            record_http(&mut t, set.join_next().await.unwrap());
        }
    }
    while let Some(r) = set.join_next().await {
        record_http(&mut t, r);
    }
    t
}

fn record_http(t: &mut Tally, r: Result<Outcome, tokio::task::JoinError>) {
    if let Ok((_, outcome, _, _)) = &r {
        match outcome {
            Err(code) if code.starts_with("transport error") => {
                t.dropped += 1;
                if t.dropped <= 5 {
                    eprintln!("{code}");
                }
                return;
            }
            Err(code) => {
                let status: u16 = code[..3].parse().unwrap();
                *t.by_status.entry(status).or_default() += 1;
                if !(400..500).contains(&status) {
                    t.not_4xx += 1;
                }
            }
            Ok(()) => *t.by_status.entry(200).or_default() += 1,
        }
    }
    record(t, r);
}

fn arg(args: &[String], names: &[&str], env: &str) -> Option<u64> {
    let parse = |v: &str| {
        v.replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{} takes a number", names[0]))
    };
    args.iter()
        .position(|a| names.contains(&a.as_str()))
        .and_then(|i| args.get(i + 1))
        .map(|v| parse(v))
        .or_else(|| std::env::var(env).ok().map(|v| parse(&v)))
}

fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn envelope(offer: &BatchRequirements, v: VoucherPayload) -> Payload {
    PaymentPayload {
        x402_version: X402_VERSION,
        resource: None,
        accepted: offer.to_generic(),
        payload: BatchPayload::Voucher(v),
        extensions: None,
    }
}

/// A voucher for `id` under `config` with ceiling `amount`, signed by `key`.
fn signed(
    domain: &BatchDomain,
    offer: &BatchRequirements,
    config: ChannelConfig,
    id: B256,
    amount: u128,
    key: &LocalSigner,
) -> Payload {
    let sig = key.sign_digest(&domain.voucher_digest(id, amount)).unwrap();
    envelope(
        offer,
        VoucherPayload {
            channel_config: config,
            voucher: VoucherFields {
                channel_id: id,
                max_claimable_amount: amount,
                signature: Bytes::copy_from_slice(&sig.to_bytes()),
            },
        },
    )
}

/// A funded channel paid `HISTORY` times: its payer view, its key and the headers paid.
async fn funded_channel(
    chain: &DevChain,
    engine: &Eng,
    domain: &BatchDomain,
    offer: &BatchRequirements,
    seed: u64,
) -> (PayerChannel, LocalSigner, Vec<Vec<u8>>) {
    let payer = chain.funded_payer(seed, DEPOSIT).await.unwrap();
    let config = channel_config_for(
        offer,
        payer.address(),
        payer.address(),
        B256::repeat_byte(seed as u8),
    );
    chain.deposit(&payer, &config, DEPOSIT).await.unwrap();
    let mut pc = PayerChannel::from_chain(domain, config, DEPOSIT, 0);
    let mut history = Vec::new();
    for _ in 0..HISTORY {
        let p = envelope(offer, pc.voucher_payload(domain, &payer, PRICE).unwrap());
        let Begin::Serve(t) = engine.begin(&p, offer).await.unwrap() else {
            panic!("a real voucher was not served")
        };
        let resp = engine.commit(t, PRICE).await.unwrap();
        pc.apply_response(&resp, PRICE, None).unwrap();
        history.push(header_of(&p));
    }
    (pc, payer, history)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let engine_n =
        arg(&args, &["--count", "--engine"], "PAYCHAN_SOAK_COUNT").unwrap_or(1_000_000) as usize;
    let http_n = arg(
        &args,
        &["--http-count", "--http"],
        "PAYCHAN_SOAK_HTTP_COUNT",
    )
    .unwrap_or(100_000) as usize;
    let seed = arg(&args, &["--seed"], "PAYCHAN_SOAK_SEED").unwrap_or(0x5eed);
    let in_flight = arg(&args, &["--in-flight"], "PAYCHAN_SOAK_IN_FLIGHT").unwrap_or(64) as usize;

    let chain = DevChain::start().await.unwrap();
    let domain = BatchDomain::new(chain.chain_id(), ESCROW);
    let offer = chain.offer(PRICE);
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(SledStoreConfig::new(dir.path().join("store"))).unwrap();
    let reader = ChainReader::connect(ChainConfig::dev(chain.rpc_url()))
        .await
        .unwrap();
    let engine: Eng = Engine::new(
        EngineConfig::new(domain),
        store.clone(),
        reader,
        NoFacilitator,
    );

    // Two funded channels with a few real payments behind them.
    let (pc, payer, mut replays) = funded_channel(&chain, &engine, &domain, &offer, 7).await;
    let (pc_b, payer_b, replays_b) = funded_channel(&chain, &engine, &domain, &offer, 8).await;
    replays.extend(replays_b);
    let (cfg, id, next) = (pc.config, pc.channel_id, pc.charged + PRICE);
    let (cfg_b, id_b, next_b) = (pc_b.config, pc_b.channel_id, pc_b.charged + PRICE);
    let valid = signed(&domain, &offer, cfg, id, next, &payer);
    let valid_b = signed(&domain, &offer, cfg_b, id_b, next_b, &payer_b);
    let voucher_of = |p: &Payload| match &p.payload {
        BatchPayload::Voucher(v) => v.voucher.clone(),
        _ => unreachable!(),
    };
    let (va, vb) = (voucher_of(&valid), voucher_of(&valid_b));
    let splice = |config: ChannelConfig, voucher: VoucherFields| {
        header_of(&envelope(
            &offer,
            VoucherPayload {
                channel_config: config,
                voucher,
            },
        ))
    };
    let others: Vec<LocalSigner> = (1..=8u8)
        .map(|i| LocalSigner::from_bytes(&B256::repeat_byte(0x40 + i)).unwrap())
        .collect();
    let mut rng = Rng(seed.rotate_left(33) | 1);
    let rebound = (0..64)
        .map(|i| {
            let mut c = cfg;
            match i % 4 {
                0 => c.salt = B256::from(U256::from(1_000 + i)),
                1 => c.receiver = rng.address(),
                2 => c.token = rng.address(),
                _ => c.withdraw_delay += 1 + i as u64,
            }
            header_of(&signed(
                &domain,
                &offer,
                c,
                domain.channel_id(&c),
                PRICE,
                &payer,
            ))
        })
        .collect();
    let base = Base {
        relevant: relevant(&header_of(&valid)).unwrap(),
        valid_json: serde_json::to_value(&valid).unwrap(),
        valid_text: serde_json::to_string(&valid).unwrap(),
        valid: valid.clone(),
        replays,
        ahead: (2..=6u128)
            .map(|k| {
                header_of(&signed(
                    &domain,
                    &offer,
                    cfg,
                    id,
                    pc.charged + k * PRICE,
                    &payer,
                ))
            })
            .collect(),
        below: [1, PRICE / 2, PRICE - 1]
            .iter()
            .map(|d| header_of(&signed(&domain, &offer, cfg, id, pc.charged + d, &payer)))
            .collect(),
        strangers: (0..256u64)
            .map(|i| {
                let k = &others[i as usize % others.len()];
                let c =
                    channel_config_for(&offer, k.address(), k.address(), B256::from(U256::from(i)));
                header_of(&signed(&domain, &offer, c, domain.channel_id(&c), PRICE, k))
            })
            .collect(),
        forged: others
            .iter()
            .map(|k| header_of(&signed(&domain, &offer, cfg, id, next, k)))
            .collect(),
        rebound,
        splices: vec![
            // A's config, B's whole voucher
            splice(cfg, vb.clone()),
            // B's config, A's whole voucher
            splice(cfg_b, va.clone()),
            // A's config, B's id with A's amount and signature
            splice(
                cfg,
                VoucherFields {
                    channel_id: id_b,
                    ..va.clone()
                },
            ),
            // B's config and id, A's signature
            splice(
                cfg_b,
                VoucherFields {
                    signature: va.signature.clone(),
                    ..vb.clone()
                },
            ),
            // A's config and id, B's signature
            splice(
                cfg,
                VoucherFields {
                    signature: vb.signature.clone(),
                    ..va.clone()
                },
            ),
            // B's next voucher signed by A's payer
            header_of(&signed(&domain, &offer, cfg_b, id_b, next_b, &payer)),
        ],
        b_id: id_b,
    };
    let ids = [id, id_b];
    let before = state(&engine, &store, &chain, &ids).await;
    let mut failed = false;
    let mut summaries = Vec::new();
    println!(
        "soak: {} cores, seed {seed:#x}, {engine_n} headers in process + {http_n} over HTTP, {in_flight} in flight; {} categories",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        STRUCTURAL.len() + MUTATION.len()
    );

    let (c0, cpu0, started) = (counters(&engine), cpu_secs(), Instant::now());
    let mut t = soak_engine(&engine, &offer, &base, engine_n, seed, in_flight).await;
    t.cpu_secs = cpu_secs() - cpu0;
    t.counters_since(&engine, c0);
    summaries.push(t.summary("engine (in process)", started.elapsed()));
    failed |= t.panics > 0 || t.accepted > 0 || t.dropped > 0;

    // The HTTP server in front of an upstream that counts what reaches it.
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let upstream = axum::Router::new().fallback(move || {
        let hits = counted.clone();
        async move {
            hits.fetch_add(1, Relaxed);
            "served"
        }
    });
    let routes = vec![PaidRoute {
        method: None,
        path: "/v1/*".into(),
        offer: offer.clone(),
        description: None,
        mime_type: None,
        pricing: Default::default(),
    }];
    let app = paychan_server::app(
        PaidState::new(engine.clone(), routes),
        Upstream::Router(upstream),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(paychan_server::serve(listener, app, async {
        let _ = stopped.await;
    }));
    let (c0, cpu0, started) = (counters(&engine), cpu_secs(), Instant::now());
    let mut t = soak_http(&url, &base, http_n, seed, in_flight.min(32)).await;
    t.cpu_secs = cpu_secs() - cpu0;
    t.counters_since(&engine, c0);
    summaries.push(t.summary("HTTP server (loopback)", started.elapsed()));
    failed |= t.panics > 0 || t.accepted > 0 || t.dropped > 0 || t.not_4xx > 0;
    let upstream_hits = hits.load(Relaxed);

    let after = state(&engine, &store, &chain, &ids).await;
    let unchanged = after == before;
    if !unchanged {
        eprintln!("STATE CHANGED\nbefore: {before:?}\nafter:  {after:?}");
    }

    // The server still serves a real payment afterwards, and charges it.
    let resp = reqwest::Client::new()
        .post(&url)
        .header(codec::PAYMENT_SIGNATURE, codec::encode(&valid))
        .body("{}")
        .send()
        .await
        .unwrap();
    let served = resp.status().is_success() && hits.load(Relaxed) == upstream_hits + 1;
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let last = state(&engine, &store, &chain, &ids).await;
    let charged = |r: &Option<ChannelRecord>| r.as_ref().map(|r| r.charged);
    let paid_once = last.committed == after.committed + 1
        && charged(&last.records[0]) == charged(&after.records[0]).map(|c| c + PRICE)
        && charged(&last.stored[0]) == charged(&after.stored[0]).map(|c| c + PRICE);
    let alive = served && paid_once;
    println!(
        "\nupstream hits from hostile requests: {upstream_hits}; state unchanged: {unchanged}; \
         server alive and charging a real payment after the soak: {alive}"
    );
    failed |= upstream_hits > 0 || !unchanged || !alive;
    println!(
        "{}",
        json!({
            "event": "soak",
            "seed": seed,
            "runs": summaries,
            "upstream_hits": upstream_hits,
            "state_unchanged": unchanged,
            "alive_after": alive,
            "ok": !failed,
        })
    );
    if failed {
        eprintln!("soak: an invariant broke (see above)");
        std::process::exit(1);
    }
}
