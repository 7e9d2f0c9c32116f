//! paychan's durable state: channels, per-(receiver, token) aggregates, the settlement journal,
//! the payer's own channels, and small metadata (such as the chain watcher's cursor).
//!
//! [`Store`] is a small async trait so that a networked backend can be added without touching the
//! engine. [`SledStore`] (on disk, the default) and [`MemStore`] (tests) implement it.
//!
//! **Durability contract.** [`Store::commit`] resolves only when the batch is durable under the
//! store's [`Durability`]; the engine acknowledges a charge only after that. Each batch is applied
//! atomically. Concurrent commits are grouped into one flush (group commit) by the sled backend.
//!
//! **Formats.** Every stored value starts with a one-byte format version ([`codec`]); the database
//! records its format in a metadata key and refuses to open a newer or unknown format rather than
//! misread it. A format-1 store (whose write-ahead log held format-1 records) is migrated when
//! opened: its log is replayed into sled, made durable, and only then is the new format recorded
//! (`sled_store::migrate_format1`); no other older format has a migration.
//!
//! | module | what |
//! | --- | --- |
//! | [`clock`] | [`SystemClock`], wall-clock time for the core's `Clock` port |
//! | [`codec`] | versioned encodings of every record |
//! | [`mem`] | in-memory store for tests |
//! | [`sled_store`] | the on-disk store with group commit |

#[macro_use]
mod reads;
pub mod clock;
pub mod codec;
pub mod mem;
mod pace;
mod plan;
pub mod sled_store;
mod wal;

use std::future::Future;

use alloy_primitives::{Address, B256};
use paychan_core::batch::{ChannelConfig, payee::ChannelRecord};
use serde::{Deserialize, Serialize};

pub use clock::SystemClock;
pub use mem::MemStore;
pub use sled_store::{Durability, SledStore, SledStoreConfig};

/// Store errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The backend failed.
    #[error("store I/O failed: {0}")]
    Io(String),
    /// A stored value could not be decoded.
    #[error("stored record {key} is corrupt or of an unknown format: {reason}")]
    Corrupt {
        /// Which key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The database was written by another format.
    #[error(
        "database format v{found} cannot be read by this paychan (format v{supported}); {hint}"
    )]
    Format {
        /// The database's format.
        found: u32,
        /// This build's format.
        supported: u32,
        /// What to do.
        hint: &'static str,
    },
    /// The write-ahead log is damaged before its end: the commits logged from the damage on were
    /// acknowledged, so opening would lose them without a word. The message names the file and
    /// the byte, and how to accept the loss.
    #[error(
        "write-ahead log {path} is corrupt at byte {offset}: {reason}; the commits logged from there on were acknowledged and would be lost, so the store refuses to open. Restore the data directory from a backup, or accept losing them: truncate {path} to {offset} bytes (keeps the commits logged before the damage) or move it aside (loses every commit in it not yet checkpointed)"
    )]
    LogDamaged {
        /// The log file.
        path: String,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong there.
        reason: &'static str,
    },
    /// The store was closed.
    #[error("store is closed")]
    Closed,
}

/// `Result` with the store's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Totals for one (receiver, token): what requests were charged (derived from the channel
/// records, so it is exact after any crash), and what is claimed and settled on chain (mirrored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Aggregate {
    /// Sum of the charged totals of the channels paying this receiver in this token. Computed by
    /// [`Store::aggregate`] from the channel records (a scan), not stored.
    #[serde(default, with = "paychan_core::amount::u128_dec")]
    pub charged: u128,
    /// Claimed on chain (`receivers(r, t).totalClaimed`).
    #[serde(with = "paychan_core::amount::u128_dec")]
    pub claimed: u128,
    /// Settled to the receiver (`receivers(r, t).totalSettled`).
    #[serde(with = "paychan_core::amount::u128_dec")]
    pub settled: u128,
}

/// A change to an [`Aggregate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateOp {
    /// Set the mirrored on-chain totals.
    SetOnchain {
        /// Claimed.
        claimed: u128,
        /// Settled.
        settled: u128,
    },
}

/// What a settlement journal entry does on chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum JournalKind {
    /// `claimWithSignature` / `claim` of these channels up to these totals.
    Claim {
        /// (channel, total claimed after the claim).
        #[serde(with = "claims_ser")]
        claims: Vec<(B256, u128)>,
    },
    /// `settle(receiver, token)`.
    Settle {
        /// Receiver.
        receiver: Address,
        /// Token.
        token: Address,
    },
    /// A cooperative refund.
    Refund {
        /// Channel.
        channel_id: B256,
        /// Amount.
        #[serde(with = "paychan_core::amount::u128_dec")]
        amount: u128,
    },
    /// A deposit relayed for a payer.
    Deposit {
        /// Channel.
        channel_id: B256,
        /// Amount.
        #[serde(with = "paychan_core::amount::u128_dec")]
        amount: u128,
    },
}

/// Where a journal entry stands. Transitions: `Prepared → Sent → Confirmed`, or `→ Failed`;
/// a `Sent` transaction dropped by a reorg goes back to `Prepared` and is sent again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum JournalState {
    /// Decided, not yet sent.
    Prepared,
    /// Broadcast.
    Sent {
        /// Transaction hash (the latest, after fee bumps).
        tx_hash: B256,
        /// Sender nonce.
        nonce: u64,
        /// Every hash broadcast for this entry (fee bumps replace earlier ones).
        #[serde(default)]
        all_hashes: Vec<B256>,
    },
    /// Mined with enough confirmations.
    Confirmed {
        /// Transaction hash.
        tx_hash: B256,
        /// Block number.
        block: u64,
        /// Gas used.
        gas_used: u64,
    },
    /// Given up, with why.
    Failed {
        /// Reason.
        reason: String,
    },
}

/// One settlement action and its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalEntry {
    /// Monotonic id.
    pub id: u64,
    /// What it does.
    #[serde(flatten)]
    pub kind: JournalKind,
    /// Where it stands.
    #[serde(flatten)]
    pub state: JournalState,
    /// Created, unix ms.
    pub created_at: u64,
    /// Last changed, unix ms.
    pub updated_at: u64,
}

impl JournalEntry {
    /// Whether the entry still needs work (not confirmed or failed).
    pub fn is_open(&self) -> bool {
        matches!(
            self.state,
            JournalState::Prepared | JournalState::Sent { .. }
        )
    }
}

/// The payer's record of one of its own channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PayerChannelRecord {
    /// Channel id.
    pub channel_id: B256,
    /// Config.
    pub config: ChannelConfig,
    /// Charged total agreed with the server.
    #[serde(with = "paychan_core::amount::u128_dec")]
    pub charged: u128,
    /// Balance as known.
    #[serde(with = "paychan_core::amount::u128_dec")]
    pub balance: u128,
    /// Claimed on chain, as last seen.
    #[serde(with = "paychan_core::amount::u128_dec")]
    pub total_claimed: u128,
    /// Last voucher signed: ceiling.
    #[serde(default, with = "paychan_core::amount::opt_u128_dec")]
    pub last_ceiling: Option<u128>,
    /// Last voucher signed: signature bytes.
    #[serde(default)]
    pub last_signature: Option<alloy_primitives::Bytes>,
    /// The server this channel pays (its base URL), for listing.
    #[serde(default)]
    pub server: Option<String>,
    /// Last change, unix ms.
    pub updated_at: u64,
}

/// A set of writes applied atomically by [`Store::commit`].
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    /// Channel records to write (latest wins).
    pub channels: Vec<ChannelRecord>,
    /// Channel records to delete.
    pub remove_channels: Vec<B256>,
    /// Aggregate changes.
    pub aggregates: Vec<(Address, Address, AggregateOp)>,
    /// Journal entries to write (by id, latest wins).
    pub journal: Vec<JournalEntry>,
    /// Payer channel records to write.
    pub payer_channels: Vec<PayerChannelRecord>,
    /// Payer channel records to delete.
    pub remove_payer_channels: Vec<B256>,
    /// Metadata to write.
    pub meta: Vec<(String, Vec<u8>)>,
}

impl WriteBatch {
    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
            && self.remove_channels.is_empty()
            && self.aggregates.is_empty()
            && self.journal.is_empty()
            && self.payer_channels.is_empty()
            && self.remove_payer_channels.is_empty()
            && self.meta.is_empty()
    }

    /// A batch writing one channel.
    pub fn channel(record: ChannelRecord) -> Self {
        Self {
            channels: vec![record],
            ..Self::default()
        }
    }
}

/// Counts and sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Stored channels.
    pub channels: u64,
    /// Bytes on disk (0 in memory).
    pub disk_bytes: u64,
    /// Group commits performed.
    pub commits: u64,
    /// Batches those commits carried.
    pub batches: u64,
}

/// paychan's storage. All methods are async so that a networked backend fits; local backends
/// resolve reads immediately.
pub trait Store: Clone + Send + Sync + 'static {
    /// One channel.
    fn channel(&self, id: B256) -> impl Future<Output = Result<Option<ChannelRecord>>> + Send;
    /// Up to `limit` channels with ids greater than `after`, in id order.
    fn channels_after(
        &self,
        after: Option<B256>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ChannelRecord>>> + Send;
    /// Applies `batch` atomically; resolves when it is durable.
    fn commit(&self, batch: WriteBatch) -> impl Future<Output = Result<()>> + Send;
    /// The aggregate of (receiver, token): the stored on-chain totals, and the charged total summed
    /// over the channel records (a scan of every channel: an administrative query, not a hot path).
    fn aggregate(
        &self,
        receiver: Address,
        token: Address,
    ) -> impl Future<Output = Result<Aggregate>> + Send;
    /// One journal entry.
    fn journal_entry(&self, id: u64) -> impl Future<Output = Result<Option<JournalEntry>>> + Send;
    /// Every open (prepared or sent) journal entry, by id.
    fn open_journal(&self) -> impl Future<Output = Result<Vec<JournalEntry>>> + Send;
    /// Journal entries with id > `after`, up to `limit`.
    fn journal_after(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<JournalEntry>>> + Send;
    /// The next unused journal id.
    fn next_journal_id(&self) -> impl Future<Output = Result<u64>> + Send;
    /// One payer channel.
    fn payer_channel(
        &self,
        id: B256,
    ) -> impl Future<Output = Result<Option<PayerChannelRecord>>> + Send;
    /// All payer channels.
    fn payer_channels(&self) -> impl Future<Output = Result<Vec<PayerChannelRecord>>> + Send;
    /// A metadata value.
    fn meta(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
    /// Counts and sizes.
    fn stats(&self) -> impl Future<Output = Result<StoreStats>> + Send;
}

mod claims_ser {
    use alloy_primitives::B256;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Row {
        channel_id: B256,
        #[serde(with = "paychan_core::amount::u128_dec")]
        total_claimed: u128,
    }

    pub(super) fn serialize<S: Serializer>(v: &[(B256, u128)], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|&(channel_id, total_claimed)| Row {
                channel_id,
                total_claimed,
            })
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(B256, u128)>, D::Error> {
        Ok(Vec::<Row>::deserialize(d)?
            .into_iter()
            .map(|r| (r.channel_id, r.total_claimed))
            .collect())
    }
}
