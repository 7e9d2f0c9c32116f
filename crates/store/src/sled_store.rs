//! The on-disk store: sled 0.34, one keyspace, group commit.
//!
//! **Group commit.** [`Store::commit`] hands its batch to a single committer thread and waits.
//! The committer takes every batch queued at that moment (up to `max_group`), turns them into
//! one `sled::Batch` (applied atomically), makes it durable once, and then answers every waiter.
//! Concurrent requests on different channels therefore share one flush.
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
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
};

use alloy_primitives::{Address, B256};
use paychan_core::batch::payee::ChannelRecord;

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
    /// Most batches grouped into one flush.
    pub max_group: usize,
    /// Under contention (a group of two or more batches already waiting), how long the committer
    /// waits for more before flushing. Larger groups mean fewer flushes per request; a lone
    /// request never waits. Default 300 µs.
    pub group_window: std::time::Duration,
}

impl SledStoreConfig {
    /// Defaults for `path`: fsync durability, 256 MiB cache, groups of up to 4096 batches.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::Fsync,
            cache_bytes: 256 << 20,
            max_group: 4096,
            group_window: std::time::Duration::from_micros(300),
        }
    }
}

type Job = (WriteBatch, tokio::sync::oneshot::Sender<Result<()>>);

struct Inner {
    db: sled::Db,
    path: PathBuf,
    tx: Option<mpsc::Sender<Job>>,
    committer: Option<JoinHandle<()>>,
    commits: Arc<AtomicU64>,
    batches: Arc<AtomicU64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the committer after it has answered every queued batch.
        self.tx.take();
        if let Some(h) = self.committer.take() {
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
        let (tx, rx) = mpsc::channel::<Job>();
        let commits = Arc::new(AtomicU64::new(0));
        let batches = Arc::new(AtomicU64::new(0));
        let committer = {
            let db = db.clone();
            let (commits, batches) = (commits.clone(), batches.clone());
            let max_group = config.max_group.max(1);
            let durability = config.durability;
            let window = if durability == Durability::None {
                std::time::Duration::ZERO
            } else {
                config.group_window
            };
            std::thread::Builder::new()
                .name("paychan-store-commit".into())
                .spawn(move || {
                    commit_loop(
                        db, rx, max_group, window, durability, data_file, commits, batches,
                    )
                })
                .map_err(io)?
        };
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                path: config.path,
                tx: Some(tx),
                committer: Some(committer),
                commits,
                batches,
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

#[allow(clippy::too_many_arguments)]
fn commit_loop(
    db: sled::Db,
    rx: mpsc::Receiver<Job>,
    max_group: usize,
    window: std::time::Duration,
    durability: Durability,
    data_file: Option<File>,
    commits: Arc<AtomicU64>,
    batches: Arc<AtomicU64>,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        drain(&rx, &mut jobs, max_group);
        // Contention: others are committing too. Wait a little for more to share the flush.
        if jobs.len() >= 2 && !window.is_zero() {
            let deadline = std::time::Instant::now() + window;
            while jobs.len() < max_group {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left) {
                    Ok(j) => {
                        jobs.push(j);
                        drain(&rx, &mut jobs, max_group);
                    }
                    Err(_) => break,
                }
            }
        }
        let result = apply_group(&db, &jobs, durability, data_file.as_ref());
        commits.fetch_add(1, Ordering::Relaxed);
        batches.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        for (_, reply) in jobs {
            let _ = reply.send(result.clone());
        }
    }
}

fn drain(rx: &mpsc::Receiver<Job>, jobs: &mut Vec<Job>, max_group: usize) {
    while jobs.len() < max_group {
        match rx.try_recv() {
            Ok(j) => jobs.push(j),
            Err(_) => break,
        }
    }
}

fn apply_group(
    db: &sled::Db,
    jobs: &[Job],
    durability: Durability,
    data_file: Option<&File>,
) -> Result<()> {
    let mut p = plan::Plan::new();
    let read =
        |k: &[u8]| -> Result<Option<Vec<u8>>> { Ok(db.get(k).map_err(io)?.map(|v| v.to_vec())) };
    for (batch, _) in jobs {
        plan::add(&mut p, batch, &read)?;
    }
    let mut sb = sled::Batch::default();
    for (k, v) in p {
        match v {
            Some(v) => sb.insert(k, v),
            None => sb.remove(k),
        }
    }
    db.apply_batch(sb).map_err(io)?;
    match durability {
        Durability::Fsync => {
            db.flush().map_err(io)?;
            if let Some(f) = data_file {
                f.sync_data()
                    .map_err(|e| Error::Io(format!("fdatasync: {e}")))?;
            }
        }
        Durability::Flush => {
            db.flush().map_err(io)?;
        }
        Durability::None => {}
    }
    Ok(())
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
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner
            .tx
            .as_ref()
            .ok_or(Error::Closed)?
            .send((batch, tx))
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    async fn aggregate(&self, receiver: Address, token: Address) -> Result<Aggregate> {
        let key = codec::aggregate_key(&receiver, &token);
        Ok(self
            .get(&key)?
            .map(|v| codec::decode_json(&key, &v))
            .transpose()?
            .unwrap_or_default())
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
            commits: self.inner.commits.load(Ordering::Relaxed),
            batches: self.inner.batches.load(Ordering::Relaxed),
        })
    }
}
