//! The on-disk store: sled 0.34 behind a write-ahead log, with group commit.
//!
//! **Commit path.** [`Store::commit`] hands its batch to one committer thread and waits. The
//! committer takes every batch queued at that moment (under contention it waits up to
//! `group_window` for more), turns them into one set of writes, appends that set as one record to
//! the write-ahead log (`<dir>/paychan.wal`), makes the record durable, puts the writes in an
//! in-memory overlay that every read consults before sled, and answers every waiter. Concurrent
//! requests on different channels therefore share one `fdatasync`, and sled is out of the request
//! path: at checkpoints (every `checkpoint_every`, when the log passes `checkpoint_bytes` or the
//! overlay `checkpoint_keys`, and on close) the committer applies the overlay to sled in one
//! batch — the latest value of each key once, however often it changed — flushes sled, truncates
//! the log and empties the overlay. On open, records left in the log are replayed into sled first.
//!
//! **What makes a commit durable** ([`Durability::Fsync`], the default): `write(2)` of the log
//! record followed by `fdatasync(2)` of the log file, before the commit returns. A checkpoint makes
//! sled's copy durable with `Db::flush()` — on Linux `pwrite` + `sync_file_range(WAIT_BEFORE |
//! WRITE | WAIT_AFTER)` — followed by `fdatasync(2)` of `<dir>/db`, and only then truncates the
//! log. `sync_file_range` alone would not be enough: it waits for write-back of dirty pages but
//! neither flushes the device's volatile write cache nor persists the file-size and extent
//! metadata of newly written regions, so after a power loss the data may be gone (it only protects
//! against a process crash, which the page cache already survives); `fdatasync` does both.
//!
//! [`Durability::Flush`] writes the log record without `fdatasync` (survives a process crash, not
//! a power loss); [`Durability::None`] writes no log at all (benchmarks of what durability costs;
//! sled's background flush makes data durable within about 500 ms).

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    Error, Result, Store, StoreStats, WriteBatch, codec,
    plan::{self, Plan},
    reads::Kv,
    wal::Wal,
};

/// How hard a commit works to be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Log record written and `fdatasync`ed before the commit returns: survives power loss.
    #[default]
    Fsync,
    /// Log record written, not synced: survives a process crash.
    Flush,
    /// No log: for measuring what durability costs.
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
    /// Most batches grouped into one commit.
    pub max_group: usize,
    /// Under contention (two or more batches already waiting), how long the committer waits for
    /// more before writing the group: fewer syncs per request under load. A lone commit never
    /// waits. Default 100 µs.
    pub group_window: Duration,
    /// Flush sled and truncate the log at least this often (default 5 s).
    pub checkpoint_every: Duration,
    /// ... or when the log reaches this size (default 64 MiB),
    pub checkpoint_bytes: u64,
    /// ... or when this many distinct keys wait in the overlay (default 200,000).
    pub checkpoint_keys: usize,
}

impl SledStoreConfig {
    /// Defaults for `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::Fsync,
            cache_bytes: 256 << 20,
            max_group: 4096,
            group_window: Duration::from_micros(100),
            checkpoint_every: Duration::from_secs(5),
            checkpoint_bytes: 64 << 20,
            checkpoint_keys: 200_000,
        }
    }
}

type Job = (WriteBatch, tokio::sync::oneshot::Sender<Result<()>>);

/// Writes logged but not yet in sled: key → value, or `None` for a deletion.
type Overlay = Arc<std::sync::RwLock<std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>>>;

struct Inner {
    db: sled::Db,
    overlay: Overlay,
    path: PathBuf,
    tx: Option<mpsc::Sender<Job>>,
    committer: Option<JoinHandle<()>>,
    commits: Arc<AtomicU64>,
    batches: Arc<AtomicU64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the committer after it has answered every queued batch and
        // written a last checkpoint.
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

/// The name of the write-ahead log inside the database directory.
pub const WAL_FILE: &str = "paychan.wal";

struct Committer {
    db: sled::Db,
    overlay: Overlay,
    checkpoint_keys: usize,
    wal: Option<Wal>,
    data_file: Option<File>,
    durability: Durability,
    max_group: usize,
    window: Duration,
    checkpoint_every: Duration,
    checkpoint_bytes: u64,
    last_checkpoint: Instant,
    /// After an I/O failure nothing more may be acknowledged: the store fails closed.
    failed: Option<Error>,
    commits: Arc<AtomicU64>,
    batches: Arc<AtomicU64>,
}

impl SledStore {
    /// Opens (creating if needed) the database at `config.path`, checks its format, and replays
    /// its write-ahead log.
    pub fn open(config: SledStoreConfig) -> Result<Self> {
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_bytes)
            .open()
            .map_err(|e| Error::Io(format!("opening {}: {e}", config.path.display())))?;
        check_format(&db)?;
        let data_file = File::open(config.path.join("db")).map_err(|e| {
            Error::Io(format!(
                "opening {} for fdatasync: {e}",
                config.path.join("db").display()
            ))
        })?;
        let mut wal = Wal::open(config.path.join(WAL_FILE))?;
        let replay = wal.records()?;
        if !replay.is_empty() {
            tracing::info!(target: "paychan_store", records = replay.len(), "replaying the write-ahead log");
            for p in &replay {
                apply_plan(&db, p.clone())?;
            }
            db.flush().map_err(io)?;
            data_file
                .sync_data()
                .map_err(|e| Error::Io(format!("fdatasync: {e}")))?;
        }
        if wal.len() > 0 {
            wal.truncate()?;
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let commits = Arc::new(AtomicU64::new(0));
        let batches = Arc::new(AtomicU64::new(0));
        let overlay: Overlay = Arc::default();
        let mut c = Committer {
            db: db.clone(),
            overlay: overlay.clone(),
            checkpoint_keys: config.checkpoint_keys,
            wal: (config.durability != Durability::None).then_some(wal),
            data_file: (config.durability == Durability::Fsync).then_some(data_file),
            durability: config.durability,
            max_group: config.max_group.max(1),
            window: if config.durability == Durability::None {
                Duration::ZERO
            } else {
                config.group_window
            },
            checkpoint_every: config.checkpoint_every,
            checkpoint_bytes: config.checkpoint_bytes,
            last_checkpoint: Instant::now(),
            failed: None,
            commits: commits.clone(),
            batches: batches.clone(),
        };
        let committer = std::thread::Builder::new()
            .name("paychan-store-commit".into())
            .spawn(move || c.run(rx))
            .map_err(io)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                overlay,
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
}

impl Kv for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        read_through(&self.inner.db, &self.inner.overlay, key)
    }

    /// Keys with `prefix` after `after` (exclusive), up to `limit`: sled merged with the overlay.
    fn prefixed(
        &self,
        prefix: u8,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let start = after.map_or_else(|| vec![prefix], <[u8]>::to_vec);
        let end = vec![prefix + 1];
        let over: Vec<(Vec<u8>, Option<Vec<u8>>)> = {
            let o = self
                .inner
                .overlay
                .read()
                .map_err(|_| io("store overlay lock poisoned"))?;
            o.range(start.clone()..end.clone())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let mut over = over
            .into_iter()
            .filter(|(k, _)| Some(k.as_slice()) != after)
            .peekable();
        let mut disk = self.inner.db.range(start..end).filter(|kv| match kv {
            Ok((k, _)) => Some(k.as_ref()) != after,
            Err(_) => true,
        });
        let mut next_disk = disk.next().transpose().map_err(io)?;
        let mut out = Vec::new();
        while out.len() < limit {
            let take_over = match (over.peek(), &next_disk) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((ok, _)), Some((dk, _))) => ok.as_slice() <= dk.as_ref(),
            };
            if take_over {
                let Some((k, v)) = over.next() else { break };
                if next_disk
                    .as_ref()
                    .is_some_and(|(dk, _)| dk.as_ref() == k.as_slice())
                {
                    next_disk = disk.next().transpose().map_err(io)?;
                }
                if let Some(v) = v {
                    out.push((k, v));
                }
            } else if let Some((k, v)) = next_disk.take() {
                out.push((k.to_vec(), v.to_vec()));
                next_disk = disk.next().transpose().map_err(io)?;
            }
        }
        Ok(out)
    }

    /// The greatest key with `prefix` in the overlay or in sled (journal ids only grow, so an
    /// overlay deletion never hides a greater key on disk).
    fn last_key(&self, prefix: u8) -> Result<Option<Vec<u8>>> {
        let (lo, hi) = (vec![prefix], vec![prefix + 1]);
        let in_overlay = {
            let o = self
                .inner
                .overlay
                .read()
                .map_err(|_| io("store overlay lock poisoned"))?;
            o.range(lo.clone()..hi.clone())
                .next_back()
                .map(|(k, _)| k.clone())
        };
        let on_disk = self
            .inner
            .db
            .range(lo..hi)
            .next_back()
            .transpose()
            .map_err(io)?
            .map(|(k, _)| k.to_vec());
        Ok(in_overlay.max(on_disk))
    }
}

/// A key's value: the overlay's if it has one (a deletion reads as absent), else sled's.
fn read_through(db: &sled::Db, overlay: &Overlay, key: &[u8]) -> Result<Option<Vec<u8>>> {
    if let Some(v) = overlay
        .read()
        .map_err(|_| io("store overlay lock poisoned"))?
        .get(key)
    {
        return Ok(v.clone());
    }
    Ok(db.get(key).map_err(io)?.map(|v| v.to_vec()))
}

fn apply_plan(db: &sled::Db, p: Plan) -> Result<()> {
    let mut sb = sled::Batch::default();
    for (k, v) in p {
        match v {
            Some(v) => sb.insert(k, v),
            None => sb.remove(k),
        }
    }
    db.apply_batch(sb).map_err(io)
}

impl Committer {
    fn run(&mut self, rx: mpsc::Receiver<Job>) {
        loop {
            let until_checkpoint = self
                .checkpoint_every
                .saturating_sub(self.last_checkpoint.elapsed());
            let first = match rx.recv_timeout(until_checkpoint.max(Duration::from_millis(1))) {
                Ok(j) => j,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.maybe_checkpoint(true);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut jobs = vec![first];
            self.drain(&rx, &mut jobs);
            // Contention: others are committing too. Wait a little for more to share the sync.
            if jobs.len() >= 2 && !self.window.is_zero() {
                let deadline = Instant::now() + self.window;
                while jobs.len() < self.max_group {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match rx.recv_timeout(left) {
                        Ok(j) => {
                            jobs.push(j);
                            self.drain(&rx, &mut jobs);
                        }
                        Err(_) => break,
                    }
                }
            }
            let result = self.commit_group(&jobs);
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.batches.fetch_add(jobs.len() as u64, Ordering::Relaxed);
            for (_, reply) in jobs {
                let _ = reply.send(result.clone());
            }
            self.maybe_checkpoint(false);
        }
        // Closing: make sled durable and empty the log.
        self.maybe_checkpoint(true);
    }

    fn drain(&self, rx: &mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
        while jobs.len() < self.max_group {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
    }

    fn commit_group(&mut self, jobs: &[Job]) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let (db, overlay) = (&self.db, &self.overlay);
        let read = |k: &[u8]| read_through(db, overlay, k);
        let mut p = Plan::new();
        for (batch, _) in jobs {
            plan::add(&mut p, batch, &read)?;
        }
        if let Some(wal) = &mut self.wal
            && let Err(e) = wal.append(&p, self.durability == Durability::Fsync)
        {
            tracing::error!(target: "paychan_store", error = %e, "write-ahead log failed; the store stops acknowledging");
            self.failed = Some(e.clone());
            return Err(e);
        }
        self.overlay
            .write()
            .map_err(|_| io("store overlay lock poisoned"))?
            .extend(p);
        Ok(())
    }

    fn maybe_checkpoint(&mut self, force: bool) {
        let keys = self.overlay.read().map(|o| o.len()).unwrap_or(usize::MAX);
        if keys == 0 {
            self.last_checkpoint = Instant::now();
            return;
        }
        let log_bytes = self.wal.as_ref().map_or(0, Wal::len);
        if !force
            && log_bytes < self.checkpoint_bytes
            && keys < self.checkpoint_keys
            && self.last_checkpoint.elapsed() < self.checkpoint_every
        {
            return;
        }
        // Readers keep seeing the overlay until sled holds everything in it durably.
        let snapshot: Plan = match self.overlay.read() {
            Ok(o) => o.clone(),
            Err(_) => return,
        };
        let result = apply_plan(&self.db, snapshot)
            .and_then(|_| self.db.flush().map_err(io))
            .and_then(|_| match &self.data_file {
                Some(f) => f
                    .sync_data()
                    .map_err(|e| Error::Io(format!("fdatasync: {e}"))),
                None => Ok(()),
            })
            .and_then(|_| self.wal.as_mut().map_or(Ok(()), Wal::truncate));
        match result {
            Ok(()) => {
                if let Ok(mut o) = self.overlay.write() {
                    o.clear();
                }
            }
            // The log and the overlay still hold everything: nothing is lost; retried later.
            Err(e) => {
                tracing::warn!(target: "paychan_store", error = %e, "checkpoint failed; the write-ahead log is kept")
            }
        }
        self.last_checkpoint = Instant::now();
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

impl Store for SledStore {
    shared_reads!();

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

    async fn stats(&self) -> Result<StoreStats> {
        let channels = self
            .prefixed(codec::CHANNEL_PREFIX, None, usize::MAX)?
            .len() as u64;
        Ok(StoreStats {
            channels,
            disk_bytes: self.inner.db.size_on_disk().map_err(io)?,
            commits: self.inner.commits.load(Ordering::Relaxed),
            batches: self.inner.batches.load(Ordering::Relaxed),
        })
    }
}
