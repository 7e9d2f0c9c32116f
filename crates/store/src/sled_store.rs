//! The on-disk store: sled 0.34, one keyspace, group commit.
//!
//! **Commit path.** [`Store::commit`] applies its batch to sled at once, on the caller's thread
//! (`Tree::apply_batch`: atomic, microseconds, visible to readers immediately), takes a sequence
//! number, and waits until a flush covering that number has completed. One flusher thread does
//! nothing but flush: it reads the highest applied sequence number, flushes, and publishes that
//! number as durable, so every commit applied before it started shares that one flush (group
//! commit). Keeping the CPU work on the callers and only the I/O on the flusher means a commit
//! never waits for another thread to be scheduled merely to do work it could do itself.
//!
//! A batch whose changes read stored values (aggregates) is applied under a lock so that two such
//! batches cannot interleave their read-modify-write.
//!
//! **What makes a commit durable** ([`Durability::Fsync`], the default): `Db::flush()` writes
//! sled's log buffer to `<dir>/db` with `pwrite` and, on Linux, `sync_file_range(WAIT_BEFORE |
//! WRITE | WAIT_AFTER)`; paychan then calls `fdatasync(2)` on `<dir>/db` (`File::sync_data`).
//! `sync_file_range` alone is not enough: it starts and waits for write-back of the dirty pages
//! but does not flush the device's volatile write cache and does not persist the file-size and
//! extent metadata of newly written regions, so after a power loss the data may be gone; it only
//! protects against a process crash, which the page cache already survives. `fdatasync` does both
//! (on Linux, fsync on any descriptor of the inode covers all its dirty data). sled's background
//! flusher also calls `fsync` every 500 ms, but acknowledging a charge cannot wait for that.
//!
//! [`Durability::Flush`] stops after sled's flush (survives process crashes, not power loss);
//! [`Durability::None`] does not flush per commit (benchmarks of what durability costs; data
//! reaches disk within sled's 500 ms flush interval).

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use alloy_primitives::{Address, B256};
use paychan_core::batch::payee::ChannelRecord;
use tokio::sync::watch;

use crate::{
    Aggregate, Error, JournalEntry, PayerChannelRecord, Result, Store, StoreStats, WriteBatch,
    codec, plan,
};

/// How hard a commit works to be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// sled flush, then `fdatasync` of the data file: survives power loss.
    #[default]
    Fsync,
    /// sled flush only (`sync_file_range` on Linux): survives a process crash.
    Flush,
    /// No flush per commit: for measuring what durability costs.
    None,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fsync" => Ok(Self::Fsync),
            "flush" => Ok(Self::Flush),
            "none" => Ok(Self::None),
            other => Err(format!(
                "durability must be fsync, flush or none, not {other:?}"
            )),
        }
    }
}

/// How to open a [`SledStore`].
#[derive(Debug, Clone)]
pub struct SledStoreConfig {
    /// Database directory.
    pub path: PathBuf,
    /// Durability of commits.
    pub durability: Durability,
    /// sled page cache size, bytes.
    pub cache_bytes: u64,
    /// When two or more commits are waiting for a flush, how long the flusher waits for more
    /// before flushing: fewer flushes per request under load. A lone commit never waits.
    /// Default 200 µs.
    pub group_window: Duration,
}

impl SledStoreConfig {
    /// Defaults for `path`: fsync durability, 256 MiB cache, 200 µs group window.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::Fsync,
            cache_bytes: 256 << 20,
            group_window: Duration::from_micros(200),
        }
    }
}

/// What the flusher has made durable. A failed flush is sticky: the store fails closed, and
/// every later commit fails until it is reopened (after an I/O error nothing more may be
/// acknowledged as durable).
#[derive(Debug, Clone, Default)]
struct Durable {
    /// Every commit with a sequence number up to this is durable.
    seq: u64,
    /// A flush failed: commits waiting for it fail with this.
    failed: Option<Error>,
}

struct Shared {
    /// Highest sequence number applied to sled.
    applied: AtomicU64,
    /// Wakes the flusher when `applied` moves.
    pending: Mutex<bool>,
    wake: Condvar,
    closing: Mutex<bool>,
    flushes: AtomicU64,
    batches: AtomicU64,
}

struct Inner {
    db: sled::Db,
    path: PathBuf,
    durability: Durability,
    shared: Arc<Shared>,
    durable: watch::Receiver<Durable>,
    /// Serializes batches that read stored values (read-modify-write).
    rmw: Mutex<()>,
    flusher: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut c) = self.shared.closing.lock() {
            *c = true;
        }
        self.shared.wake.notify_all();
        if let Some(h) = self.flusher.take() {
            let _ = h.join();
        }
    }
}

/// The sled-backed store. Cheap to clone; the last clone closes the database.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn io(e: impl std::fmt::Display) -> Error {
    Error::Io(e.to_string())
}

impl SledStore {
    /// Opens (creating if needed) the database at `config.path`, checking its format.
    pub fn open(config: SledStoreConfig) -> Result<Self> {
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_bytes)
            .open()
            .map_err(|e| Error::Io(format!("opening {}: {e}", config.path.display())))?;
        check_format(&db)?;
        let data_file = if config.durability == Durability::Fsync {
            Some(File::open(config.path.join("db")).map_err(|e| {
                Error::Io(format!(
                    "opening {} for fdatasync: {e}",
                    config.path.join("db").display()
                ))
            })?)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            applied: AtomicU64::new(0),
            pending: Mutex::new(false),
            wake: Condvar::new(),
            closing: Mutex::new(false),
            flushes: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        });
        let (durable_tx, durable_rx) = watch::channel(Durable::default());
        let flusher = if config.durability == Durability::None {
            None
        } else {
            let (db, shared) = (db.clone(), shared.clone());
            let window = config.group_window;
            Some(
                std::thread::Builder::new()
                    .name("paychan-store-flush".into())
                    .spawn(move || flush_loop(db, shared, durable_tx, data_file, window))
                    .map_err(io)?,
            )
        };
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                path: config.path,
                durability: config.durability,
                shared,
                durable: durable_rx,
                rmw: Mutex::new(()),
                flusher,
            }),
        })
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.db.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn prefixed(
        &self,
        prefix: u8,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let end = vec![prefix + 1];
        let iter = match after {
            Some(a) => self.inner.db.range(a.to_vec()..end),
            None => self.inner.db.range(vec![prefix]..end),
        };
        let mut out = Vec::new();
        for kv in iter {
            let (k, v) = kv.map_err(io)?;
            if Some(k.as_ref()) == after {
                continue;
            }
            out.push((k.to_vec(), v.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Applies `batch` to sled atomically and returns its sequence number.
    fn apply(&self, batch: &WriteBatch) -> Result<u64> {
        let db = &self.inner.db;
        let read = |k: &[u8]| -> Result<Option<Vec<u8>>> {
            Ok(db.get(k).map_err(io)?.map(|v| v.to_vec()))
        };
        let needs_reads = !batch.aggregates.is_empty();
        let _guard = if needs_reads {
            Some(
                self.inner
                    .rmw
                    .lock()
                    .map_err(|_| io("store lock poisoned"))?,
            )
        } else {
            None
        };
        let mut p = plan::Plan::new();
        plan::add(&mut p, batch, &read)?;
        let mut sb = sled::Batch::default();
        for (k, v) in p {
            match v {
                Some(v) => sb.insert(k, v),
                None => sb.remove(k),
            }
        }
        db.apply_batch(sb).map_err(io)?;
        // Numbered after the apply completed: a flush that starts after reading this number
        // covers this batch.
        Ok(self.inner.shared.applied.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

fn check_format(db: &sled::Db) -> Result<()> {
    let key = codec::meta_key(codec::FORMAT_KEY);
    match db.get(&key).map_err(io)? {
        Some(v) => {
            let found = codec::decode_format(&v)?;
            if found == codec::DB_FORMAT {
                Ok(())
            } else if found > codec::DB_FORMAT {
                Err(Error::Format {
                    found,
                    supported: codec::DB_FORMAT,
                    hint: "it was written by a newer paychan; upgrade paychan or point it at another data directory",
                })
            } else {
                // No older format has existed yet; a future format change adds its migration here.
                Err(Error::Format {
                    found,
                    supported: codec::DB_FORMAT,
                    hint: "no migration from that format exists",
                })
            }
        }
        None if db.is_empty() => {
            db.insert(&key, &codec::DB_FORMAT.to_be_bytes())
                .map_err(io)?;
            db.flush().map_err(io)?;
            Ok(())
        }
        None => Err(Error::Format {
            found: 0,
            supported: codec::DB_FORMAT,
            hint: "the directory holds a sled database that is not a paychan store",
        }),
    }
}

fn flush_loop(
    db: sled::Db,
    shared: Arc<Shared>,
    durable: watch::Sender<Durable>,
    data_file: Option<File>,
    window: Duration,
) {
    let mut flushed = 0u64;
    loop {
        // Sleep until something was applied past what is durable, or the store closes.
        {
            let Ok(mut pending) = shared.pending.lock() else {
                return;
            };
            while !*pending && shared.applied.load(Ordering::SeqCst) <= flushed {
                if shared.closing.lock().map(|c| *c).unwrap_or(true) {
                    return;
                }
                pending = match shared
                    .wake
                    .wait_timeout(pending, Duration::from_millis(100))
                {
                    Ok((p, _)) => p,
                    Err(_) => return,
                };
            }
            *pending = false;
        }
        // Under contention, give the others a moment to join this flush.
        if !window.is_zero() && shared.applied.load(Ordering::SeqCst) >= flushed + 2 {
            std::thread::sleep(window);
        }
        let target = shared.applied.load(Ordering::SeqCst);
        let result = db.flush().map_err(io).and_then(|_| match &data_file {
            Some(f) => f
                .sync_data()
                .map_err(|e| Error::Io(format!("fdatasync: {e}"))),
            None => Ok(()),
        });
        shared.flushes.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                flushed = target;
                durable.send_modify(|d| d.seq = target);
            }
            Err(e) => {
                tracing::error!(target: "paychan_store", error = %e, "flush failed");
                durable.send_modify(|d| d.failed = Some(e));
            }
        }
    }
}

impl Store for SledStore {
    async fn channel(&self, id: B256) -> Result<Option<ChannelRecord>> {
        let key = codec::channel_key(&id);
        self.get(&key)?
            .map(|v| codec::decode_channel(&key, &v))
            .transpose()
    }

    async fn channels_after(
        &self,
        after: Option<B256>,
        limit: usize,
    ) -> Result<Vec<ChannelRecord>> {
        let after = after.map(|a| codec::channel_key(&a));
        self.prefixed(
            codec::CHANNEL_PREFIX,
            after.as_ref().map(|a| a.as_slice()),
            limit,
        )?
        .iter()
        .map(|(k, v)| codec::decode_channel(k, v))
        .collect()
    }

    async fn commit(&self, batch: WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let seq = self.apply(&batch)?;
        self.inner.shared.batches.fetch_add(1, Ordering::Relaxed);
        if self.inner.durability == Durability::None {
            return Ok(());
        }
        if let Ok(mut p) = self.inner.shared.pending.lock() {
            *p = true;
        }
        self.inner.shared.wake.notify_one();
        let mut rx = self.inner.durable.clone();
        let state = rx
            .wait_for(|d| d.seq >= seq || d.failed.is_some())
            .await
            .map_err(|_| Error::Closed)?;
        match &state.failed {
            Some(e) if state.seq < seq => Err(e.clone()),
            _ => Ok(()),
        }
    }

    async fn aggregate(&self, receiver: Address, token: Address) -> Result<Aggregate> {
        let key = codec::aggregate_key(&receiver, &token);
        let mut agg: Aggregate = self
            .get(&key)?
            .map(|v| codec::decode_json(&key, &v))
            .transpose()?
            .unwrap_or_default();
        let mut charged = 0u128;
        for kv in self.inner.db.scan_prefix([codec::CHANNEL_PREFIX]) {
            let (_, v) = kv.map_err(io)?;
            if let Some(c) = codec::peek_charged(&v, &receiver, &token) {
                charged = charged.saturating_add(c);
            }
        }
        agg.charged = charged;
        Ok(agg)
    }

    async fn journal_entry(&self, id: u64) -> Result<Option<JournalEntry>> {
        let key = codec::journal_key(id);
        self.get(&key)?
            .map(|v| codec::decode_json(&key, &v))
            .transpose()
    }

    async fn open_journal(&self) -> Result<Vec<JournalEntry>> {
        let mut out = Vec::new();
        for (k, v) in self.prefixed(codec::JOURNAL_PREFIX, None, usize::MAX)? {
            let e: JournalEntry = codec::decode_json(&k, &v)?;
            if e.is_open() {
                out.push(e);
            }
        }
        Ok(out)
    }

    async fn journal_after(&self, after: u64, limit: usize) -> Result<Vec<JournalEntry>> {
        let key = codec::journal_key(after);
        self.prefixed(codec::JOURNAL_PREFIX, Some(&key), limit)?
            .iter()
            .map(|(k, v)| codec::decode_json(k, v))
            .collect()
    }

    async fn next_journal_id(&self) -> Result<u64> {
        let last = self
            .inner
            .db
            .range(vec![codec::JOURNAL_PREFIX]..vec![codec::JOURNAL_PREFIX + 1])
            .next_back()
            .transpose()
            .map_err(io)?;
        Ok(match last {
            Some((k, _)) if k.len() == 9 => {
                u64::from_be_bytes(k[1..].try_into().unwrap_or([0; 8])) + 1
            }
            _ => 1,
        })
    }

    async fn payer_channel(&self, id: B256) -> Result<Option<PayerChannelRecord>> {
        let key = codec::payer_key(&id);
        self.get(&key)?
            .map(|v| codec::decode_json(&key, &v))
            .transpose()
    }

    async fn payer_channels(&self) -> Result<Vec<PayerChannelRecord>> {
        self.prefixed(codec::PAYER_PREFIX, None, usize::MAX)?
            .iter()
            .map(|(k, v)| codec::decode_json(k, v))
            .collect()
    }

    async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.get(&codec::meta_key(key))
    }

    async fn stats(&self) -> Result<StoreStats> {
        let channels = self.inner.db.scan_prefix([codec::CHANNEL_PREFIX]).count() as u64;
        Ok(StoreStats {
            channels,
            disk_bytes: self.inner.db.size_on_disk().map_err(io)?,
            commits: self.inner.shared.flushes.load(Ordering::Relaxed),
            batches: self.inner.shared.batches.load(Ordering::Relaxed),
        })
    }
}
