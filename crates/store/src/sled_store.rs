//! The on-disk store: sled 0.34 behind a write-ahead log, with group commit.
//!
//! **Commit path.** [`Store::commit`] turns its batch into key writes and their log entries in
//! the caller's task (no thread hop, all cores share the encoding work), stages both, and waits.
//! One log-writer thread takes everything staged at that moment, writes it to the write-ahead log
//! (`<dir>/paychan-{0,1}.wal`, format in `wal.rs`) as one group with one `pwrite(2)`, makes it
//! durable with one `fdatasync(2)`, publishes the writes to an in-memory overlay that every read
//! consults before sled, and answers every waiter. Commits that arrive while a sync is under way
//! form the next group. A lone commit is written at once, and so is everything staged while
//! commits come no faster than the log writes them (light load); otherwise the writer lets
//! commits gather so that more of them share each `fdatasync`: when a closed loop of channels
//! is measured, until half of it is staged; else until `group_window` has passed since its last
//! write (`pace.rs`; BENCHMARKS.md §2 measures the trade). A commit's writes become visible to
//! readers only once they are durable.
//!
//! **Checkpoints.** sled is out of the request path. At a checkpoint (every `checkpoint_every`,
//! when the log passes `checkpoint_bytes` or the overlay `checkpoint_keys`, and on close) the
//! writer freezes the overlay and switches to the other of the two log files; a checkpoint thread
//! applies the frozen writes to sled in one batch — the latest value of each key once, however
//! often it changed, together with the log generation they complete — flushes sled, hands the
//! log file back for a later turn and drops the frozen overlay. Commits go on meanwhile (a
//! checkpoint of 200,000 keys takes a few hundred milliseconds). Reads consult the overlay, then
//! the frozen overlay, then sled. On open, the log generations sled does not hold yet are
//! replayed into it, oldest first.
//!
//! **What makes a commit durable** ([`Durability::Fsync`], the default): `pwrite(2)` of its log
//! group followed by `fdatasync(2)` of the log file, before the commit returns. A checkpoint makes
//! sled's copy durable with `Db::flush()` — on Linux `pwrite` + `sync_file_range(WAIT_BEFORE |
//! WRITE | WAIT_AFTER)` — followed by `fdatasync(2)` of `<dir>/db`, and only then may the log
//! file be written over. `sync_file_range` alone would not be enough: it waits for write-back of
//! dirty pages but neither flushes the device's volatile write cache nor persists the file-size
//! and extent metadata of newly written regions, so after a power loss the data may be gone (it
//! only protects against a process crash, which the page cache already survives); `fdatasync`
//! does both.
//!
//! [`Durability::Flush`] writes the log record without `fdatasync` (survives a process crash, not
//! a power loss); [`Durability::None`] writes no log at all and publishes a commit at once
//! (benchmarks of what durability costs; data reaches the disk at the next checkpoint).

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use crate::{
    Error, Result, Store, StoreStats, WriteBatch, codec,
    pace::Pacer,
    plan::{self, Merged, Plan},
    reads::Kv,
    wal::{self, Wal},
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
    /// The longest a commit waits for others to share its log write (`fdatasync`). A lone
    /// commit is written at once, and so is everything staged at light load (commits coming no
    /// faster than the log writes them); a closed loop of channels is written once half of it waits
    /// (the pacing rule is in `pace.rs`); otherwise the log is written at most once per window.
    /// Default 4 ms: small next to an inference call, and it cuts syncs (and their CPU time)
    /// fourfold against 1 ms when thousands of channels pay at once (BENCHMARKS.md §2).
    pub group_window: Duration,
    /// Checkpoint (write the overlay to sled, flush it, free a log file for reuse) at least this
    /// often while there are writes (default 5 s).
    pub checkpoint_every: Duration,
    /// ... or when the log file reaches this size (default 64 MiB),
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
            group_window: Duration::from_millis(4),
            checkpoint_every: Duration::from_secs(5),
            checkpoint_bytes: 64 << 20,
            checkpoint_keys: 200_000,
        }
    }
}

/// Writes logged but not yet in sled: key → value, or `None` for a deletion.
#[derive(Default)]
struct Layers {
    /// Since the last checkpoint began.
    active: Merged,
    /// Being checkpointed into sled (empty when no checkpoint runs); older than `active`.
    frozen: Arc<Merged>,
}

impl Layers {
    /// A key's newest write, if any.
    fn get(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.active.get(key).or_else(|| self.frozen.get(key))
    }

    /// The newest writes of the keys in `range`, in key order.
    fn range(&self, range: std::ops::Range<Vec<u8>>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut merged: Merged = self
            .frozen
            .range(range.clone())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        merged.extend(
            self.active
                .range(range)
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        merged.into_iter().collect()
    }
}

type Overlay = Arc<RwLock<Layers>>;

/// Commits waiting for the log writer.
#[derive(Default)]
struct Staged {
    /// Room for the group header, then their log entries, in commit order.
    records: Vec<u8>,
    /// Their writes, in commit order: published to the overlay once durable.
    writes: Vec<Plan>,
    /// Their callers.
    waiters: Vec<oneshot::Sender<Result<()>>>,
    /// Set after a log failure: nothing more is acknowledged (the store fails closed).
    failed: Option<Error>,
    /// Set on close: the writer writes what is staged, checkpoints and ends.
    closing: bool,
    /// The writer sleeps on [`Shared::wake`] until this many commits are staged (1: it is idle);
    /// the commit that reaches it signals. `usize::MAX` while it is busy; 0 (before the writer
    /// first waits) signals every commit.
    wake_at: usize,
}

/// What the callers and the log writer share.
#[derive(Default)]
struct Shared {
    staged: Mutex<Staged>,
    wake: Condvar,
    /// Log writes (group commits) performed.
    commits: AtomicU64,
    /// Commits they carried.
    batches: AtomicU64,
}

impl Shared {
    fn lock(&self) -> Result<MutexGuard<'_, Staged>> {
        self.staged
            .lock()
            .map_err(|_| io("store commit queue lock poisoned"))
    }
}

struct Inner {
    db: sled::Db,
    overlay: Overlay,
    path: PathBuf,
    durability: Durability,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer answers every staged commit, writes a last checkpoint and ends.
        if let Ok(mut st) = self.shared.lock() {
            st.closing = true;
        }
        self.shared.wake.notify_one();
        if let Some(h) = self.writer.take() {
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

/// The two write-ahead log files inside the database directory; they take turns.
pub const WAL_FILES: [&str; 2] = ["paychan-0.wal", "paychan-1.wal"];

/// The log-writer thread's state.
struct Writer {
    overlay: Overlay,
    shared: Arc<Shared>,
    checkpoint_keys: usize,
    /// The log file being written (`None` without a log).
    wal: Option<Wal>,
    /// The other log file, free to be written over, while no checkpoint runs.
    spare: Option<Wal>,
    durability: Durability,
    checkpoint_every: Duration,
    checkpoint_bytes: u64,
    last_checkpoint: Instant,
    group_window: Duration,
    /// When to write a group before its window ends.
    pacer: Pacer,
    last_write: Instant,
    /// After an I/O failure nothing more may be acknowledged: the store fails closed.
    failed: Option<Error>,
    /// Sends work to the checkpoint thread; `None` once closed.
    to_checkpointer: Option<std::sync::mpsc::Sender<Checkpoint>>,
    /// The checkpoint thread reports each finished checkpoint here, with the log file it freed
    /// (`None` if it failed and gave up on closing: that file keeps its records for the next open).
    from_checkpointer: std::sync::mpsc::Receiver<Option<Wal>>,
    checkpointer: Option<JoinHandle<()>>,
    /// A checkpoint is under way.
    checkpointing: bool,
    /// The last group's buffers, emptied: swapped into the queue when the next group is taken,
    /// so that staging never grows a fresh allocation page by page.
    buffers: Group,
}

/// A group of staged commits taken by the log writer.
#[derive(Default)]
struct Group {
    records: Vec<u8>,
    writes: Vec<Plan>,
    waiters: Vec<oneshot::Sender<Result<()>>>,
    /// Since the group before was taken: the time its commits were staged over.
    since_last: Duration,
}

/// A checkpoint for the checkpoint thread: frozen writes and the log file that holds them.
struct Checkpoint {
    frozen: Arc<Merged>,
    wal: Option<Wal>,
    /// The store is closing: give up after a failure instead of retrying (the log files keep
    /// everything; the next open replays them).
    last: bool,
}

/// The checkpoint thread's state.
struct Checkpointer {
    db: sled::Db,
    overlay: Overlay,
    /// `<dir>/db`, `fdatasync`ed after sled's flush (fsync durability).
    data_file: Option<File>,
    /// To see the store closing while a failed checkpoint waits to be retried.
    shared: Arc<Shared>,
    /// A log file larger than this (grown by a burst while a checkpoint ran long) is cut back to
    /// it once checkpointed: `checkpoint_bytes` and a step.
    keep_log_bytes: u64,
}

impl SledStore {
    /// Opens (creating if needed) the database at `config.path`, checks its format, and replays
    /// its write-ahead log.
    pub fn open(config: SledStoreConfig) -> Result<Self> {
        let db = open_sled(&config)?;
        let format1 = check_format(&db)?;
        let data_file = File::open(config.path.join("db")).map_err(|e| {
            Error::Io(format!(
                "opening {} for fdatasync: {e}",
                config.path.join("db").display()
            ))
        })?;
        let mut wals = [
            Wal::open(config.path.join(WAL_FILES[0]))?,
            Wal::open(config.path.join(WAL_FILES[1]))?,
        ];
        // The log files' directory entries must survive a power cut as well as their contents.
        sync_dir(&config.path)?;
        if format1 {
            migrate_format1(&db, &mut wals, &data_file)?;
        }
        // Replay what sled does not hold yet, oldest generation first, and record that it does.
        let checkpointed = checkpointed_generation(&db)?;
        let mut replay = Vec::new();
        for w in &mut wals {
            replay.extend(w.read(checkpointed)?);
        }
        let (newest, groups, merged) = in_generation_order(replay);
        let newest = newest.unwrap_or(checkpointed);
        if groups > 0 {
            tracing::info!(target: "paychan_store", groups, "replaying the write-ahead log");
            apply_checkpoint(&db, &merged, Some(newest))?;
            make_durable(&db, Some(&data_file))?;
        }
        let generation = newest + 1;
        // Every file's content is in sled now: either may take the next generation.
        let [mut wal, spare] = wals;
        wal.begin(generation);
        let logging = config.durability != Durability::None;
        let shared = Arc::new(Shared::default());
        let overlay: Overlay = Arc::default();
        let (to_checkpointer, jobs) = std::sync::mpsc::channel();
        let (done, from_checkpointer) = std::sync::mpsc::channel();
        let checkpointer = Checkpointer {
            db: db.clone(),
            overlay: overlay.clone(),
            data_file: (config.durability == Durability::Fsync).then_some(data_file),
            shared: shared.clone(),
            keep_log_bytes: config.checkpoint_bytes.saturating_add(wal::STEP),
        };
        let checkpointer = std::thread::Builder::new()
            .name("paychan-store-ckpt".into())
            .spawn(move || checkpointer.run(&jobs, &done))
            .map_err(io)?;
        let mut w = Writer {
            overlay: overlay.clone(),
            shared: shared.clone(),
            checkpoint_keys: config.checkpoint_keys,
            wal: logging.then_some(wal),
            spare: logging.then_some(spare),
            durability: config.durability,
            checkpoint_every: config.checkpoint_every,
            checkpoint_bytes: config.checkpoint_bytes,
            last_checkpoint: Instant::now(),
            group_window: config.group_window,
            pacer: Pacer::new(),
            last_write: Instant::now(),
            failed: None,
            to_checkpointer: Some(to_checkpointer),
            from_checkpointer,
            checkpointer: Some(checkpointer),
            checkpointing: false,
            buffers: Group::default(),
        };
        let writer = std::thread::Builder::new()
            .name("paychan-store-log".into())
            .spawn(move || w.run())
            .map_err(io)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                overlay,
                path: config.path,
                durability: config.durability,
                shared,
                writer: Some(writer),
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
            let active = o.active.range(lo.clone()..hi.clone()).next_back();
            let frozen = o.frozen.range(lo.clone()..hi.clone()).next_back();
            active.max(frozen).map(|(k, _)| k.clone())
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

/// Applies `p` to sled in one batch, with the newest generation of the log it comes from (so
/// that the log is never replayed over it).
fn apply_checkpoint(db: &sled::Db, p: &Merged, generation: Option<u64>) -> Result<()> {
    let mut sb = sled::Batch::default();
    for (k, v) in p {
        match v {
            Some(v) => sb.insert(k.as_slice(), v.as_slice()),
            None => sb.remove(k.as_slice()),
        }
    }
    if let Some(g) = generation {
        sb.insert(codec::meta_key(wal::CHECKPOINTED), &g.to_be_bytes());
    }
    db.apply_batch(sb).map_err(io)
}

/// The newest log generation sled holds (0: none).
fn checkpointed_generation(db: &sled::Db) -> Result<u64> {
    let key = codec::meta_key(wal::CHECKPOINTED);
    match db.get(&key).map_err(io)? {
        None => Ok(0),
        Some(v) => <[u8; 8]>::try_from(v.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| Error::Corrupt {
                key: wal::CHECKPOINTED.into(),
                reason: "the checkpointed log generation is not 8 bytes".into(),
            }),
    }
}

/// Makes everything applied to sled durable: its flush, then `fdatasync` of `<dir>/db` (when
/// given: with fsync durability).
fn make_durable(db: &sled::Db, data_file: Option<&File>) -> Result<()> {
    db.flush().map_err(io)?;
    match data_file {
        Some(f) => f
            .sync_data()
            .map_err(|e| Error::Io(format!("fdatasync: {e}"))),
        None => Ok(()),
    }
}

/// Logged generations merged oldest first (the newest write of each key wins): the newest
/// generation, how many groups or records they held, and their writes.
fn in_generation_order(mut logged: Vec<(u64, Vec<Plan>)>) -> (Option<u64>, usize, Merged) {
    logged.sort_by_key(|(generation, _)| *generation);
    let newest = logged.last().map(|(generation, _)| *generation);
    let count = logged.iter().map(|(_, plans)| plans.len()).sum();
    let merged = logged
        .into_iter()
        .flat_map(|(_, plans)| plans)
        .flatten()
        .collect();
    (newest, count, merged)
}

/// Moves a format-1 store to the current format: replays its log (format 1's records), makes
/// sled durable, empties the old files and only then writes the new format number.
fn migrate_format1(db: &sled::Db, wals: &mut [Wal; 2], data_file: &File) -> Result<()> {
    let mut logged = Vec::new();
    for w in wals.iter_mut() {
        logged.extend(w.read_format1()?);
    }
    let (_, records, merged) = in_generation_order(logged);
    tracing::info!(target: "paychan_store", records, "migrating the store from format 1: replaying its log");
    apply_checkpoint(db, &merged, None)?;
    make_durable(db, Some(data_file))?;
    for w in wals.iter_mut() {
        w.truncate()?;
    }
    db.insert(
        codec::meta_key(codec::FORMAT_KEY),
        &codec::DB_FORMAT.to_be_bytes(),
    )
    .map_err(io)?;
    make_durable(db, Some(data_file))
}

impl Writer {
    fn run(&mut self) {
        loop {
            let Some(mut group) = self.next_group() else {
                break;
            };
            let writing = Instant::now();
            let result = self.write(&mut group.records);
            self.pacer
                .timed(group.waiters.len(), group.since_last, writing.elapsed());
            let first_keys = group.writes.iter().filter_map(|w| w.first());
            self.pacer.observe(first_keys.map(|(k, _)| k.as_slice()));
            if result.is_ok()
                && let Ok(mut o) = self.overlay.write()
            {
                for writes in group.writes.drain(..) {
                    o.active.extend(writes);
                }
            }
            self.shared.commits.fetch_add(1, Ordering::Relaxed);
            self.shared
                .batches
                .fetch_add(group.waiters.len() as u64, Ordering::Relaxed);
            for w in group.waiters.drain(..) {
                let _ = w.send(result.clone());
            }
            group.records.clear();
            group.writes.clear();
            self.buffers = group;
            self.maybe_checkpoint();
        }
        // Closing: wait for a checkpoint under way, then checkpoint the rest and stop.
        self.collect_checkpoint(true);
        self.begin_checkpoint(true);
        self.collect_checkpoint(true);
        self.to_checkpointer = None;
        if let Some(h) = self.checkpointer.take() {
            let _ = h.join();
        }
    }

    /// Everything staged, once there is something; `None` when the store closes with nothing
    /// left to write. Checkpoints that fall due while idle are started here.
    fn next_group(&mut self) -> Option<Group> {
        let mut st = self.shared.lock().ok()?;
        loop {
            if !st.records.is_empty() {
                // Let commits gather (see `pace.rs`): until the measured loop's target is
                // staged, or the window since the last write ends. A lone commit with no loop
                // measured, or all that is staged while the log keeps up with the commits, is
                // written at once.
                let since = self.last_write.elapsed();
                let gather = self
                    .pacer
                    .gather(st.waiters.len(), since, self.group_window);
                if let Some(wake_at) = gather
                    && !st.closing
                {
                    st.wake_at = wake_at;
                    st = self
                        .shared
                        .wake
                        .wait_timeout(st, self.group_window - since)
                        .ok()?
                        .0;
                    st.wake_at = usize::MAX;
                    continue;
                }
                let now = Instant::now();
                let mut group = std::mem::take(&mut self.buffers);
                group.since_last = now - self.last_write;
                self.last_write = now;
                std::mem::swap(&mut group.records, &mut st.records);
                std::mem::swap(&mut group.writes, &mut st.writes);
                std::mem::swap(&mut group.waiters, &mut st.waiters);
                return Some(group);
            }
            if st.closing {
                return None;
            }
            let mut wait = self.until_checkpoint();
            if wait.is_zero() {
                drop(st);
                self.maybe_checkpoint();
                st = self.shared.lock().ok()?;
                // commits staged meanwhile did not wake a busy writer: look at the queue first
                if !st.records.is_empty() || st.closing {
                    continue;
                }
                // still due: one already under way kept it from starting; look again shortly
                wait = self.until_checkpoint();
                if wait.is_zero() {
                    wait = Duration::from_millis(100);
                }
            }
            st.wake_at = 1;
            st = self.shared.wake.wait_timeout(st, wait).ok()?.0;
            st.wake_at = usize::MAX;
        }
    }

    /// Time left until a checkpoint is due (zero: due).
    fn until_checkpoint(&self) -> Duration {
        self.checkpoint_every
            .saturating_sub(self.last_checkpoint.elapsed())
    }

    /// Writes a group to the log and makes it durable as configured.
    fn write(&mut self, records: &mut [u8]) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let Some(wal) = &mut self.wal else {
            return Ok(());
        };
        wal.write(records, self.durability == Durability::Fsync)
            .inspect_err(|e| {
                tracing::error!(target: "paychan_store", error = %e, "write-ahead log failed; the store stops acknowledging");
                self.failed = Some(e.clone());
                if let Ok(mut st) = self.shared.lock() {
                    st.failed = Some(e.clone());
                }
            })
    }

    /// Starts a checkpoint if one is due and none is under way.
    fn maybe_checkpoint(&mut self) {
        self.collect_checkpoint(false);
        if self.checkpointing {
            return;
        }
        let keys = self.overlay.read().map_or(0, |o| o.active.len());
        let log_bytes = self.wal.as_ref().map_or(0, Wal::written);
        if log_bytes >= self.checkpoint_bytes
            || keys >= self.checkpoint_keys
            || self.until_checkpoint().is_zero()
        {
            self.begin_checkpoint(false);
        }
    }

    /// Takes back the log file of a finished checkpoint; `wait` blocks until it finishes.
    fn collect_checkpoint(&mut self, wait: bool) {
        if !self.checkpointing {
            return;
        }
        let back = if wait {
            self.from_checkpointer.recv().ok()
        } else {
            self.from_checkpointer.try_recv().ok()
        };
        if let Some(wal) = back {
            self.spare = wal;
            self.checkpointing = false;
        }
    }

    /// Freezes the overlay, switches log files, and hands both to the checkpoint thread.
    fn begin_checkpoint(&mut self, last: bool) {
        self.last_checkpoint = Instant::now();
        if self.checkpointing {
            return;
        }
        let Some(to) = &self.to_checkpointer else {
            return;
        };
        let frozen = match self.overlay.write() {
            Ok(mut o) if !o.active.is_empty() => {
                let frozen = Arc::new(std::mem::take(&mut o.active));
                o.frozen = frozen.clone();
                frozen
            }
            _ => return,
        };
        // Every write logged in the current file is in `frozen` (a group is published right
        // after its write); from here on, commits go to the other file.
        let wal = match (self.wal.take(), self.spare.take()) {
            (Some(current), Some(mut next)) => {
                next.begin(current.generation() + 1);
                self.wal = Some(next);
                Some(current)
            }
            (current, _) => {
                self.wal = current;
                None
            }
        };
        if to.send(Checkpoint { frozen, wal, last }).is_ok() {
            self.checkpointing = true;
        }
    }
}

impl Checkpointer {
    fn run(
        mut self,
        jobs: &std::sync::mpsc::Receiver<Checkpoint>,
        done: &std::sync::mpsc::Sender<Option<Wal>>,
    ) {
        while let Ok(mut job) = jobs.recv() {
            let freed = loop {
                match self.checkpoint(&job.frozen, job.wal.as_mut()) {
                    Ok(()) => {
                        if let Ok(mut o) = self.overlay.write() {
                            o.frozen = Arc::default();
                        }
                        break job.wal;
                    }
                    // The log files and the frozen overlay still hold everything: nothing is
                    // lost. While open, retry; on close, the next open replays the log.
                    Err(e) if job.last || self.closing() => {
                        tracing::warn!(target: "paychan_store", error = %e, "last checkpoint failed; the write-ahead log is kept for the next open");
                        // not handed back: it still holds records, so it is never reused
                        break None;
                    }
                    Err(e) => {
                        tracing::warn!(target: "paychan_store", error = %e, "checkpoint failed; the write-ahead log is kept; retrying in 1 s");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            };
            if done.send(freed).is_err() {
                break;
            }
        }
    }

    fn closing(&self) -> bool {
        self.shared.lock().map_or(true, |st| st.closing)
    }

    /// Writes `frozen` to sled durably, with the generation of the log file that held it: from
    /// then on that file may be written over.
    fn checkpoint(&mut self, frozen: &Merged, wal: Option<&mut Wal>) -> Result<()> {
        let generation = wal.as_ref().map(|w| w.generation());
        apply_checkpoint(&self.db, frozen, generation)?;
        make_durable(&self.db, self.data_file.as_ref())?;
        match wal {
            Some(w) => w.shrink_to(self.keep_log_bytes),
            None => Ok(()),
        }
    }
}

/// `fsync(2)` of a directory: makes the entries of files created in it durable (a file's own
/// `fsync` does not persist its name in the directory).
fn sync_dir(dir: &std::path::Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::Io(format!("fsync of the directory {}: {e}", dir.display())))
}

/// How long [`open_sled`] waits for sled's file lock.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens sled, waiting up to [`LOCK_WAIT`] for its file lock: a store of this process that was
/// just closed holds it until sled's background writes finish (measured: a few percent of
/// immediate reopens found it still held).
fn open_sled(config: &SledStoreConfig) -> Result<sled::Db> {
    let started = Instant::now();
    loop {
        match sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_bytes)
            .open()
        {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(Error::Io(format!(
                        "opening {}: {e} (is another paychan using this data directory?)",
                        config.path.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(Error::Io(format!("opening {}: {e}", config.path.display())));
            }
        }
    }
}

/// Checks the database's format; `true` for a format-1 store, which [`migrate_format1`] moves
/// to the current one.
fn check_format(db: &sled::Db) -> Result<bool> {
    let key = codec::meta_key(codec::FORMAT_KEY);
    match db.get(&key).map_err(io)? {
        Some(v) => {
            let found = codec::decode_format(&v)?;
            if found == codec::DB_FORMAT {
                Ok(false)
            } else if found > codec::DB_FORMAT {
                Err(Error::Format {
                    found,
                    supported: codec::DB_FORMAT,
                    hint: "it was written by a newer paychan; upgrade paychan or point it at another data directory",
                })
            } else if found == 1 {
                Ok(true)
            } else {
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
            Ok(false)
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
        let inner = &self.inner;
        let writes = plan::of(&batch);
        if inner.durability == Durability::None {
            // No log: published at once, on disk at the next checkpoint.
            let st = inner.shared.lock()?;
            if st.closing {
                return Err(Error::Closed);
            }
            inner
                .overlay
                .write()
                .map_err(|_| io("store overlay lock poisoned"))?
                .active
                .extend(writes);
            drop(st);
            inner.shared.commits.fetch_add(1, Ordering::Relaxed);
            inner.shared.batches.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let wake = {
            let mut st = inner.shared.lock()?;
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            if st.closing {
                return Err(Error::Closed);
            }
            let staged = st.records.len();
            if staged == 0 {
                // room for the group's header, which the log writer fills in
                st.records.resize(wal::GROUP_HEADER, 0);
            }
            // Encoded in place (a few hundred bytes: cheaper than a buffer of its own).
            if let Err(e) = wal::entries(&writes, &mut st.records) {
                st.records.truncate(staged);
                return Err(e);
            }
            st.writes.push(writes);
            st.waiters.push(tx);
            let wake = st.waiters.len() >= st.wake_at;
            if wake {
                st.wake_at = usize::MAX;
            }
            wake
        };
        if wake {
            inner.shared.wake.notify_one();
        }
        rx.await.map_err(|_| Error::Closed)?
    }

    async fn stats(&self) -> Result<StoreStats> {
        let channels = self
            .prefixed(codec::CHANNEL_PREFIX, None, usize::MAX)?
            .len() as u64;
        Ok(StoreStats {
            channels,
            disk_bytes: self.inner.db.size_on_disk().map_err(io)?,
            commits: self.inner.shared.commits.load(Ordering::Relaxed),
            batches: self.inner.shared.batches.load(Ordering::Relaxed),
        })
    }
}
