//! Versioned encodings of stored records and the key layout.
//!
//! Every value begins with a format byte. Channel records (written on every paid request) use a
//! fixed-size binary layout; the low-volume records (aggregates, journal, payer channels) use JSON
//! after the format byte. A value with an unknown format byte or a wrong length is reported as
//! corrupt, never guessed at.
//!
//! Keys: `c` + channel id (32 bytes); `a` + receiver (20) + token (20); `j` + journal id (u64,
//! big-endian, so ids sort); `p` + payer channel id (32); `m` + metadata name (UTF-8).

use alloy_primitives::{Address, B256, U256};
use paychan_core::{
    batch::{
        ChannelConfig,
        payee::{ChannelRecord, OnchainState},
    },
    sig::Signature,
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Result};

/// The database format this build writes and reads. Format 2 changed only the sled store's
/// write-ahead log (format 1 appended records to files emptied by truncation); opening a
/// format-1 store replays its log and moves it to format 2.
pub const DB_FORMAT: u32 = 2;
/// Format byte of a v1 channel record.
pub const CHANNEL_V1: u8 = 1;
/// Format byte of the JSON-encoded records.
pub const JSON_V1: u8 = 1;
/// Size of a v1 channel record.
pub const CHANNEL_V1_LEN: usize = 359;

/// Key prefix of channels.
pub const CHANNEL_PREFIX: u8 = b'c';
/// Key prefix of aggregates.
pub const AGGREGATE_PREFIX: u8 = b'a';
/// Key prefix of journal entries.
pub const JOURNAL_PREFIX: u8 = b'j';
/// Key prefix of payer channels.
pub const PAYER_PREFIX: u8 = b'p';
/// Key prefix of metadata.
pub const META_PREFIX: u8 = b'm';
/// Metadata key holding [`DB_FORMAT`].
pub const FORMAT_KEY: &str = "format";

/// Key of a channel.
pub fn channel_key(id: &B256) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = CHANNEL_PREFIX;
    k[1..].copy_from_slice(id.as_slice());
    k
}

/// Key of an aggregate.
pub fn aggregate_key(receiver: &Address, token: &Address) -> [u8; 41] {
    let mut k = [0u8; 41];
    k[0] = AGGREGATE_PREFIX;
    k[1..21].copy_from_slice(receiver.as_slice());
    k[21..].copy_from_slice(token.as_slice());
    k
}

/// Key of a journal entry.
pub fn journal_key(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = JOURNAL_PREFIX;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// Key of a payer channel.
pub fn payer_key(id: &B256) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = PAYER_PREFIX;
    k[1..].copy_from_slice(id.as_slice());
    k
}

/// Key of a metadata value.
pub fn meta_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(META_PREFIX);
    k.extend_from_slice(name.as_bytes());
    k
}

struct W<'a>(&'a mut Vec<u8>);
impl W<'_> {
    fn b(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
}

/// Encodes a channel record (v1).
pub fn encode_channel(r: &ChannelRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(CHANNEL_V1_LEN);
    let mut w = W(&mut v);
    w.b(&[CHANNEL_V1]);
    w.b(r.channel_id.as_slice());
    let c = &r.config;
    for a in [
        c.payer,
        c.payer_authorizer,
        c.receiver,
        c.receiver_authorizer,
        c.token,
    ] {
        w.b(a.as_slice());
    }
    w.b(&c.withdraw_delay.to_be_bytes());
    w.b(c.salt.as_slice());
    w.b(&r.charged.to_be_bytes());
    w.b(&r.signed_max_claimable.to_be_bytes());
    match &r.signature {
        Some(s) => {
            w.b(&[1]);
            w.b(&s.to_bytes());
        }
        None => {
            w.b(&[0]);
            w.b(&[0u8; 65]);
        }
    }
    w.b(&r.onchain.balance.to_be_bytes());
    w.b(&r.onchain.total_claimed.to_be_bytes());
    w.b(&r.onchain.withdraw_requested_at.to_be_bytes());
    w.b(&r.onchain.refund_nonce.to_be_bytes::<32>());
    w.b(&r.onchain_synced_at.to_be_bytes());
    w.b(&r.last_request_at.to_be_bytes());
    debug_assert_eq!(v.len(), CHANNEL_V1_LEN);
    v
}

struct R<'a> {
    b: &'a [u8],
    at: usize,
}
impl<'a> R<'a> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.b[self.at..self.at + N]);
        self.at += N;
        out
    }
    fn addr(&mut self) -> Address {
        Address::from(self.take::<20>())
    }
    fn word(&mut self) -> B256 {
        B256::from(self.take::<32>())
    }
    fn u128(&mut self) -> u128 {
        u128::from_be_bytes(self.take::<16>())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take::<8>())
    }
}

fn corrupt(key: &[u8], reason: impl Into<String>) -> Error {
    Error::Corrupt {
        key: alloy_primitives::hex::encode_prefixed(key),
        reason: reason.into(),
    }
}

/// Decodes a channel record stored under `key`.
pub fn decode_channel(key: &[u8], v: &[u8]) -> Result<ChannelRecord> {
    match v.first() {
        Some(&CHANNEL_V1) if v.len() == CHANNEL_V1_LEN => {}
        Some(&CHANNEL_V1) => {
            return Err(corrupt(
                key,
                format!("v1 channel record of {} bytes", v.len()),
            ));
        }
        Some(f) => return Err(corrupt(key, format!("unknown channel record format {f}"))),
        None => return Err(corrupt(key, "empty value")),
    }
    let mut r = R { b: v, at: 1 };
    let channel_id = r.word();
    let config = ChannelConfig {
        payer: r.addr(),
        payer_authorizer: r.addr(),
        receiver: r.addr(),
        receiver_authorizer: r.addr(),
        token: r.addr(),
        withdraw_delay: r.u64(),
        salt: r.word(),
    };
    let charged = r.u128();
    let signed_max_claimable = r.u128();
    let has_sig = r.take::<1>()[0];
    let sig_bytes = r.take::<65>();
    let signature = match has_sig {
        0 => None,
        1 => Some(
            Signature::from_bytes(&sig_bytes)
                .map_err(|e| corrupt(key, format!("signature: {e}")))?,
        ),
        f => return Err(corrupt(key, format!("signature flag {f}"))),
    };
    let onchain = OnchainState {
        balance: r.u128(),
        total_claimed: r.u128(),
        withdraw_requested_at: r.u64(),
        refund_nonce: U256::from_be_bytes(r.take::<32>()),
    };
    let onchain_synced_at = r.u64();
    let last_request_at = r.u64();
    if key.len() == 33 && key[1..] != channel_id[..] {
        return Err(corrupt(key, "record's channel id differs from its key"));
    }
    Ok(ChannelRecord {
        channel_id,
        config,
        charged,
        signed_max_claimable,
        signature,
        onchain,
        onchain_synced_at,
        last_request_at,
    })
}

/// The charged total of a stored v1 channel record if it pays `receiver` in `token`: a peek at
/// three fields, without decoding the whole record (for summing aggregates over many channels).
pub fn peek_charged(v: &[u8], receiver: &Address, token: &Address) -> Option<u128> {
    if v.len() != CHANNEL_V1_LEN || v[0] != CHANNEL_V1 {
        return None;
    }
    // layout: version 1, id 32, payer 20, payerAuthorizer 20, receiver 20 (73..93),
    // receiverAuthorizer 20, token 20 (113..133), withdrawDelay 8, salt 32, charged 16 (173..189)
    (&v[73..93] == receiver.as_slice() && &v[113..133] == token.as_slice())
        .then(|| u128::from_be_bytes(v[173..189].try_into().unwrap_or([0; 16])))
}

/// Encodes a JSON record behind its format byte.
pub fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut v = vec![JSON_V1];
    // Our record types always serialize (no non-string map keys).
    if serde_json::to_writer(&mut v, value).is_err() {
        v.truncate(1);
    }
    v
}

/// Decodes a JSON record stored under `key`.
pub fn decode_json<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T> {
    match v.first() {
        Some(&JSON_V1) => serde_json::from_slice(&v[1..]).map_err(|e| corrupt(key, e.to_string())),
        Some(f) => Err(corrupt(key, format!("unknown record format {f}"))),
        None => Err(corrupt(key, "empty value")),
    }
}

/// Reads the database format from its metadata value, if present.
pub fn decode_format(v: &[u8]) -> Result<u32> {
    <[u8; 4]>::try_from(v)
        .map(u32::from_be_bytes)
        .map_err(|_| corrupt(&meta_key(FORMAT_KEY), "format is not 4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{address, b256};
    use paychan_core::sig::LocalSigner;

    pub(crate) fn sample(with_sig: bool) -> ChannelRecord {
        let signer = LocalSigner::from_hex(
            "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
        )
        .unwrap();
        ChannelRecord {
            channel_id: b256!("15b5cbc562125867593bcf9ff41e1c440274a725bacd8c1b15b952a4163ae61d"),
            config: ChannelConfig {
                payer: signer.address(),
                payer_authorizer: signer.address(),
                receiver: address!("3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"),
                receiver_authorizer: address!("90F79bf6EB2c4f870365E785982E1f101E93b906"),
                token: address!("5FbDB2315678afecb367f032d93F642f64180aa3"),
                withdraw_delay: 900,
                salt: B256::repeat_byte(9),
            },
            charged: u128::MAX - 5,
            signed_max_claimable: u128::MAX - 1,
            signature: with_sig.then(|| signer.sign_digest(&B256::repeat_byte(1)).unwrap()),
            onchain: OnchainState {
                balance: u128::MAX,
                total_claimed: 77,
                withdraw_requested_at: 1_700_000_000,
                refund_nonce: U256::MAX - U256::from(3),
            },
            onchain_synced_at: 123,
            last_request_at: 456,
        }
    }

    #[test]
    fn channel_records_round_trip() {
        for with_sig in [false, true] {
            let r = sample(with_sig);
            let v = encode_channel(&r);
            assert_eq!(v.len(), CHANNEL_V1_LEN);
            assert_eq!(decode_channel(&channel_key(&r.channel_id), &v).unwrap(), r);
        }
    }

    #[test]
    fn peeking_the_charged_total_reads_the_right_fields() {
        let r = sample(true);
        let v = encode_channel(&r);
        assert_eq!(
            peek_charged(&v, &r.config.receiver, &r.config.token),
            Some(r.charged)
        );
        assert_eq!(peek_charged(&v, &r.config.token, &r.config.receiver), None);
        assert_eq!(
            peek_charged(&v[1..], &r.config.receiver, &r.config.token),
            None
        );
    }

    #[test]
    fn unknown_or_damaged_values_are_refused_not_misread() {
        let r = sample(true);
        let key = channel_key(&r.channel_id);
        let v = encode_channel(&r);
        let mut future = v.clone();
        future[0] = 2;
        assert!(
            decode_channel(&key, &future)
                .unwrap_err()
                .to_string()
                .contains("unknown channel record format 2")
        );
        assert!(decode_channel(&key, &v[..100]).is_err());
        assert!(decode_channel(&key, &[]).is_err());
        let mut bad_flag = v.clone();
        bad_flag[205] = 7;
        assert!(decode_channel(&key, &bad_flag).is_err());
        let other_key = channel_key(&B256::ZERO);
        assert!(
            decode_channel(&other_key, &v)
                .unwrap_err()
                .to_string()
                .contains("differs from its key")
        );
        let j: Result<crate::Aggregate> = decode_json(b"a", &[9, b'{', b'}']);
        assert!(j.is_err());
    }
}
