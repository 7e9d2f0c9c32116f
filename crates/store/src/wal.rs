//! paychan's write-ahead log: what makes a commit durable without flushing sled.
//!
//! The log writer writes each group of commits as one **group**, with one `pwrite(2)` and (with
//! `fsync` durability) one `fdatasync(2)`. Two log files take turns: while sled takes in a
//! checkpoint of everything logged in one file, new commits go to the other, so a checkpoint
//! never holds commits up. Each turn of a file is a **generation**, numbered upwards; a file is
//! written from its start again at each of its turns, over what it held before.
//!
//! The files are never truncated: they keep their size and are extended in 1 MiB steps of
//! zeros ahead of the write position, so that a group overwrites allocated, initialized blocks
//! and its `fdatasync` writes data only — no inode or extent update (measured here: 100 µs wall
//! and 45 µs of CPU per sync, against 160 µs and 63 µs when appending). Each file thus holds at
//! most one checkpoint's worth of log plus a step (`checkpoint_bytes`, 64 MiB by default).
//!
//! Group: `magic u32 | payload length u32 | generation u64 | crc32 u32`, then the payload: the
//! entries of its commits in commit order, `op u8 (1 put, 0 delete) | key length u32 | key |
//! value length u32 | value`, little-endian. The checksum covers the length, the generation and
//! the payload. A file is read from its start: the first group gives the file's generation, and
//! the log ends at the first group that is short, fails its checksum, or belongs to another
//! generation. Entries hold full values (never deltas), so a group replayed over a state that
//! already holds it changes nothing.
//!
//! **Torn tail or damage.** What a crash can leave follows from how the files are written. A
//! group is one `pwrite` at the write position, into space that already holds zeros (a first
//! pass, or a step the file grew by) or an older turn of the file; with `fsync` durability it is
//! synced before it is acknowledged, and the next group is written only after that, by the same
//! thread. So a crash can leave at most one group incomplete — the last one, never acknowledged —
//! and its extent may hold any mix of its own bytes and what was there before. Beyond it lie
//! zeros, or an older turn's bytes, which may well include complete groups with good checksums:
//! but only of generations sled holds, since a file is written over only once its turn is
//! checkpointed (and a generation is reused only when no complete group of it was logged). So
//! "valid-looking data after the end" is normal here, and what tells the two cases apart is this:
//! where the log stops, a **torn tail** has no complete, checksummed group *of the log's own
//! generation* anywhere after it; **damage** in the middle of the log (a bad sector, a stray
//! write) does — the acknowledged groups written after the damaged one. A torn tail is ignored
//! (the next turn writes over it); damage makes the store refuse to open ([`Error::LogDamaged`],
//! naming the file and the byte) instead of dropping the commits after it. A group whose
//! checksum matches but whose entries do not decode was written whole, so it is refused too,
//! wherever it is. (With `flush` durability a power cut may persist writes out of order; such a
//! store may then refuse too, and the message says how to accept the loss.)
//!
//! Looking for that later group, the reader tries the boundary the stopped group's header
//! declares (right unless the damage hit its length field), then scans the rest of the file,
//! stepping over every intact group it meets rather than reading through its payload. Payloads
//! hold keys and values, some of them chosen by payers (a channel's salt is 32 free bytes), so a
//! crafted value could carry a forged group; stepping over intact groups, and wanting the log's
//! exact generation (unknown outside the store, new at every checkpoint), keeps such a value from
//! making the store refuse to open after a crash.
//!
//! Which generations sled already holds is recorded in sled itself (the meta key
//! [`CHECKPOINTED`], written in the same batch as a checkpoint's data): a file's older turn is
//! only ever overwritten once sled holds it, and the log replays only what sled does not.

use std::{
    fs::{File, OpenOptions},
    io::Read,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use crate::{Error, Result, plan::Plan};

const GROUP_MAGIC: u32 = 0x5041_5747; // "PAWG"
/// Bytes before a group's payload; a staged group reserves them at the front of its buffer.
pub(crate) const GROUP_HEADER: usize = 20;
/// Largest group accepted on replay.
const MAX_GROUP: usize = 1 << 30;
/// The files grow in steps of this many zero bytes.
const STEP_BYTES: usize = 1 << 20;
pub(crate) const STEP: u64 = STEP_BYTES as u64;
/// The meta key naming the newest generation whose writes sled holds durably.
pub(crate) const CHECKPOINTED: &str = "wal-checkpointed";

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Io(format!("{what} {}: {e}", path.display()))
}

/// One log file.
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    /// The generation being written.
    generation: u64,
    /// Where the next group goes: the bytes of this generation so far.
    pos: u64,
    /// The file's length (zeros or older turns beyond `pos`).
    size: u64,
}

impl Wal {
    /// Opens (creating) the log file at `path`.
    pub(crate) fn open(path: PathBuf) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("opening the write-ahead log", &path, e))?;
        let size = file.metadata().map_err(|e| io("reading", &path, e))?.len();
        Ok(Self {
            file,
            path,
            generation: 0,
            pos: 0,
            size,
        })
    }

    fn bytes(&mut self) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        let mut f = &self.file;
        std::io::Seek::rewind(&mut f).map_err(|e| io("reading", &self.path, e))?;
        f.read_to_end(&mut bytes)
            .map_err(|e| io("reading", &self.path, e))?;
        Ok(bytes)
    }

    /// The generation the file last logged and the plans of its complete groups, in order, if
    /// that generation is newer than `after`; `None` if the file holds no complete group or an
    /// older generation (read no further than its first group: sled already holds it). A log
    /// damaged before its end is refused (see the module documentation).
    pub(crate) fn read(&mut self, after: u64) -> Result<Option<(u64, Vec<Plan>)>> {
        if self.starts_held(after)? {
            // A turn sled holds: nothing to replay, nothing to check.
            return Ok(None);
        }
        let bytes = self.bytes()?;
        let mut generation = None;
        let mut out = Vec::new();
        let mut at = 0usize;
        let mut stop = None;
        while bytes.len() - at >= GROUP_HEADER {
            let h = &bytes[at..at + GROUP_HEADER];
            let len = u32_at(h, 4) as usize;
            let g = u64_at(h, 8);
            if u32_at(h, 0) != GROUP_MAGIC {
                stop = Some("bad group header");
                break;
            }
            if len > MAX_GROUP || bytes.len() - at - GROUP_HEADER < len {
                stop = Some("group length runs past the end of the file");
                break;
            }
            if generation.is_some_and(|first| first != g) {
                stop = Some("group of another generation");
                break;
            }
            let payload = &bytes[at + GROUP_HEADER..at + GROUP_HEADER + len];
            if checksum(g, payload) != u32_at(h, 16) {
                stop = Some("checksum mismatch");
                break;
            }
            // A group that passes its checksum but does not decode was written whole, and wrong:
            // refuse it rather than drop acknowledged commits without a word.
            let plan = decode(payload).ok_or_else(|| {
                self.damaged(at, "checksum matches but the entries do not decode")
            })?;
            generation = Some(g);
            out.push(plan);
            at += GROUP_HEADER + len;
        }
        if let Some(reason) = stop {
            // The groups that count as the log going on: of its generation, or (nothing read
            // yet) of the generation the first header names or one sled may not hold yet — the
            // unheld generations are `after + 1` (a file whose checkpoint had not finished) and
            // `after + 2`.
            let named = (u32_at(&bytes, at) == GROUP_MAGIC).then(|| u64_at(&bytes, at + 8));
            let ours = |g: u64| match generation {
                Some(n) => g == n,
                None => g > after && (Some(g) == named || g - after <= 2),
            };
            if continues(&bytes, at, ours).is_some() {
                return Err(self.damaged(at, reason));
            }
            if named.is_some_and(ours) {
                tracing::info!(target: "paychan_store", path = %self.path.display(), offset = at, reason, "the write-ahead log ends in a torn group (never acknowledged); it is ignored");
            }
        }
        Ok(generation.map(|g| (g, out)))
    }

    /// The refusal for damage at byte `at`.
    fn damaged(&self, at: usize, reason: &'static str) -> Error {
        Error::LogDamaged {
            path: self.path.display().to_string(),
            offset: at as u64,
            reason,
        }
    }

    /// Whether the file starts with an intact group of a generation sled holds (`<= after`):
    /// then all of it is a turn sled holds (a turn is written from the file's start). The
    /// group's checksum is checked, so that damage to its generation field cannot make an
    /// unheld turn pass for a held one.
    fn starts_held(&self, after: u64) -> Result<bool> {
        let mut h = [0u8; GROUP_HEADER];
        match self.file.read_exact_at(&mut h, 0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(io("reading", &self.path, e)),
        }
        let len = u32_at(&h, 4) as usize;
        let g = u64_at(&h, 8);
        if u32_at(&h, 0) != GROUP_MAGIC
            || g > after
            || len > MAX_GROUP
            || (GROUP_HEADER + len) as u64 > self.size
        {
            return Ok(false);
        }
        let mut payload = vec![0u8; len];
        self.file
            .read_exact_at(&mut payload, GROUP_HEADER as u64)
            .map_err(|e| io("reading", &self.path, e))?;
        Ok(checksum(g, &payload) == u32_at(&h, 16))
    }

    /// Makes this file the log of `generation`, written from its start (everything it held
    /// before must already be in sled).
    pub(crate) fn begin(&mut self, generation: u64) {
        self.generation = generation;
        self.pos = 0;
    }

    /// The generation this file logs.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes logged in this generation.
    pub(crate) fn written(&self) -> u64 {
        self.pos
    }

    /// Writes a group: `group` holds [`GROUP_HEADER`] bytes (filled in here) and then the
    /// entries of its commits. `sync` makes it durable (`fdatasync`) before returning.
    pub(crate) fn write(&mut self, group: &mut [u8], sync: bool) -> Result<()> {
        let payload_len = group.len().saturating_sub(GROUP_HEADER);
        let len = u32::try_from(payload_len)
            .ok()
            .filter(|&l| l as usize <= MAX_GROUP)
            .ok_or_else(|| Error::Io("write-ahead log group too large".into()))?;
        let crc = checksum(self.generation, &group[GROUP_HEADER..]);
        group[0..4].copy_from_slice(&GROUP_MAGIC.to_le_bytes());
        group[4..8].copy_from_slice(&len.to_le_bytes());
        group[8..16].copy_from_slice(&self.generation.to_le_bytes());
        group[16..20].copy_from_slice(&crc.to_le_bytes());
        let end = self.pos + group.len() as u64;
        if end > self.size {
            self.grow(end)?;
        }
        self.file
            .write_all_at(group, self.pos)
            .map_err(|e| io("writing to", &self.path, e))?;
        if sync {
            self.file
                .sync_data()
                .map_err(|e| io("fdatasync of", &self.path, e))?;
        }
        self.pos = end;
        Ok(())
    }

    /// Extends the file with zeros to a whole step past `end` (made durable by the next sync).
    fn grow(&mut self, end: u64) -> Result<()> {
        let target = end.div_ceil(STEP) * STEP;
        let zeros = vec![0u8; STEP_BYTES];
        while self.size < target {
            // `size` and `target` are whole steps (or `size` a length from before): the gap is
            // filled a step at a time
            let n = usize::try_from(target - self.size).map_or(STEP_BYTES, |n| n.min(STEP_BYTES));
            self.file
                .write_all_at(&zeros[..n], self.size)
                .map_err(|e| io("extending", &self.path, e))?;
            self.size += n as u64;
        }
        Ok(())
    }

    /// Cuts the file back to `max` bytes if it grew beyond (a burst of log while a checkpoint
    /// ran long); only once sled holds everything in it.
    pub(crate) fn shrink_to(&mut self, max: u64) -> Result<()> {
        if self.size > max {
            self.file
                .set_len(max)
                .map_err(|e| io("shrinking", &self.path, e))?;
            self.size = max;
        }
        Ok(())
    }

    /// Empties the file (after a migration replayed it).
    pub(crate) fn truncate(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .map_err(|e| io("truncating", &self.path, e))?;
        self.file
            .sync_all()
            .map_err(|e| io("fsync of", &self.path, e))?;
        self.size = 0;
        self.pos = 0;
        Ok(())
    }

    /// The generation and plans of a log file written by store format 1 (`header | records`,
    /// appended, emptied by truncation): read once, when such a store is opened and migrated.
    pub(crate) fn read_format1(&mut self) -> Result<Option<(u64, Vec<Plan>)>> {
        const FILE_MAGIC: u32 = 0x5041_5748; // "PAWH"
        const RECORD_MAGIC: u32 = 0x5041_5743; // "PAWC"
        let bytes = self.bytes()?;
        let mut out = Vec::new();
        if bytes.len() < 16
            || u32_at(&bytes, 0) != FILE_MAGIC
            || crc32fast::hash(&bytes[4..12]) != u32_at(&bytes, 12)
        {
            return Ok(None);
        }
        let generation = u64_at(&bytes, 4);
        let mut at = 16;
        while bytes.len() - at >= 12 {
            let (magic, len, crc) = (
                u32_at(&bytes, at),
                u32_at(&bytes, at + 4) as usize,
                u32_at(&bytes, at + 8),
            );
            if magic != RECORD_MAGIC || len > MAX_GROUP || bytes.len() - at - 12 < len {
                break;
            }
            let payload = &bytes[at + 12..at + 12 + len];
            if crc32fast::hash(payload) != crc {
                break;
            }
            match decode(payload) {
                Some(plan) => out.push(plan),
                None => break,
            }
            at += 12 + len;
        }
        Ok(Some((generation, out)))
    }
}

/// The generation and end of the complete group at `at` whose checksum holds, if one is there.
fn group_at(bytes: &[u8], at: usize) -> Option<(u64, usize)> {
    let h = bytes.get(at..at.checked_add(GROUP_HEADER)?)?;
    let len = u32_at(h, 4) as usize;
    if u32_at(h, 0) != GROUP_MAGIC || len > MAX_GROUP {
        return None;
    }
    let end = at + GROUP_HEADER + len;
    let g = u64_at(h, 8);
    let payload = bytes.get(at + GROUP_HEADER..end)?;
    (checksum(g, payload) == u32_at(h, 16)).then_some((g, end))
}

/// Where, after the log stopped at `at` (a header's worth of bytes at least is left there), a
/// group of a generation `ours` accepts starts that shows the log goes on past damage, if
/// anywhere (see the module documentation). Evidence is, in turn:
///
/// 1. a group at the boundary the stopped header declares (right unless its length field is
///    damaged);
/// 2. if the stopped header is one of this log's (magic, generation) and its extent fits in the
///    file, a group inside that extent at which the header's checksum cuts the payload (damage
///    to the length field alone) — and nothing else there: the extent is the group's payload,
///    written by one `pwrite`, and a torn group keeps whatever values it carried;
/// 3. beyond, a scan that steps over every intact group of another generation (an older turn)
///    and takes a group it finds only if another group of ours follows it directly: a payer
///    controls at most 32 contiguous bytes of a value (a channel's salt), room for one forged
///    group but not two.
///
/// Missed: damage to the length field and the checksum of the last group but one, or of a
/// group whose declared extent covers every group after it.
fn continues(bytes: &[u8], at: usize, ours: impl Fn(u64) -> bool) -> Option<usize> {
    let is_ours = |i: usize| group_at(bytes, i).filter(|&(g, _)| ours(g));
    let h = bytes.get(at..at + GROUP_HEADER)?;
    let (len, g, crc) = (u32_at(h, 4) as usize, u64_at(h, 8), u32_at(h, 16));
    let declared = (at + GROUP_HEADER).checked_add(len)?;
    if is_ours(declared).is_some() {
        return Some(declared);
    }
    let magic = GROUP_MAGIC.to_le_bytes();
    let mine =
        u32_at(h, 0) == GROUP_MAGIC && ours(g) && len <= MAX_GROUP && declared <= bytes.len();
    if mine {
        let payload = &bytes[at + GROUP_HEADER..declared];
        let cut = payload.windows(4).enumerate().find_map(|(k, w)| {
            (w == magic
                && is_ours(at + GROUP_HEADER + k).is_some()
                && checksum(g, &payload[..k]) == crc)
                .then_some(at + GROUP_HEADER + k)
        });
        if cut.is_some() {
            return cut;
        }
    }
    let mut i = if mine { declared } else { at };
    while i + GROUP_HEADER <= bytes.len() {
        match group_at(bytes, i) {
            Some((g, end)) if ours(g) && is_ours(end).is_some() => return Some(i),
            Some((_, end)) => i = end,
            None => {
                let rest = bytes.get(i + 1..)?;
                i += 1 + rest.windows(4).position(|w| w == magic)?;
            }
        }
    }
    None
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from(u32_at(b, i)) | (u64::from(u32_at(b, i + 4)) << 32)
}

fn checksum(generation: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&(payload.len() as u64).to_le_bytes());
    h.update(&generation.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends the log entries of `plan` to `out`.
pub(crate) fn entries(plan: &Plan, out: &mut Vec<u8>) -> Result<()> {
    let len32 = |n: usize| {
        u32::try_from(n)
            .map_err(|_| Error::Io("a key or value too large for the write-ahead log".into()))
    };
    for (k, v) in plan {
        let v = v.as_deref();
        out.push(u8::from(v.is_some()));
        out.extend_from_slice(&len32(k.len())?.to_le_bytes());
        out.extend_from_slice(k);
        let v = v.unwrap_or(&[]);
        out.extend_from_slice(&len32(v.len())?.to_le_bytes());
        out.extend_from_slice(v);
    }
    Ok(())
}

fn decode(mut b: &[u8]) -> Option<Plan> {
    let mut plan = Plan::new();
    let take = |n: usize, b: &mut &[u8]| -> Option<Vec<u8>> {
        if b.len() < n {
            return None;
        }
        let (x, rest) = b.split_at(n);
        *b = rest;
        Some(x.to_vec())
    };
    while !b.is_empty() {
        let op = take(1, &mut b)?[0];
        let klen = u32::from_le_bytes(take(4, &mut b)?.try_into().ok()?) as usize;
        let key = take(klen, &mut b)?;
        let vlen = u32::from_le_bytes(take(4, &mut b)?.try_into().ok()?) as usize;
        let val = take(vlen, &mut b)?;
        match op {
            1 => plan.push((key, Some(val))),
            0 => plan.push((key, None)),
            _ => return None,
        }
    }
    Some(plan)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn plan(n: u8) -> Plan {
        vec![(vec![b'c', n], Some(vec![n; 40])), (vec![b'x', n], None)]
    }

    fn group(plans: &[Plan]) -> Vec<u8> {
        let mut g = vec![0; GROUP_HEADER];
        for p in plans {
            entries(p, &mut g).unwrap();
        }
        g
    }

    /// What the file holds, as its generation and each group's writes in order.
    fn read(path: &Path) -> Option<(u64, Vec<Plan>)> {
        Wal::open(path.to_path_buf()).unwrap().read(0).unwrap()
    }

    /// A group's writes as read back: its commits' writes in order.
    fn merged(plans: &[Plan]) -> Plan {
        plans.concat()
    }

    #[test]
    fn groups_round_trip_with_their_generation_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let mut w = Wal::open(path.clone()).unwrap();
        assert_eq!(read(&path), None, "an empty file holds nothing");
        w.begin(7);
        w.write(&mut group(&[plan(1), plan(2)]), true).unwrap();
        w.write(&mut group(&[plan(3)]), false).unwrap();
        let both = Some((7, vec![merged(&[plan(1), plan(2)]), plan(3)]));
        assert_eq!(read(&path), both);
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(size, STEP, "the file grows by whole steps of zeros");
        // the second group cut short, and with a damaged byte: the log ends before it
        let full = std::fs::read(&path).unwrap();
        let end = w.written() as usize;
        std::fs::write(&path, &full[..end - 5]).unwrap();
        assert_eq!(read(&path), Some((7, vec![merged(&[plan(1), plan(2)])])));
        let mut bad = full.clone();
        bad[end - 1] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(read(&path), Some((7, vec![merged(&[plan(1), plan(2)])])));
        // a damaged first group with a complete group after it: damage, not a torn tail (the
        // second group was written after the first was synced, so the first was acknowledged)
        let mut bad = full.clone();
        bad[GROUP_HEADER + 3] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        let err = Wal::open(path.clone()).unwrap().read(0).unwrap_err();
        assert!(
            matches!(&err, Error::LogDamaged { offset: 0, reason, .. } if reason.contains("checksum")),
            "{err}"
        );
        // the first group alone, damaged (it was the last write): a torn tail, nothing to replay
        let first_end = end - group(&[plan(3)]).len();
        let mut bad = full[..first_end].to_vec();
        bad[GROUP_HEADER + 3] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(read(&path), None);
    }

    #[test]
    fn damage_in_the_middle_of_the_log_is_refused_with_the_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let mut w = Wal::open(path.clone()).unwrap();
        w.begin(4);
        let mut starts = Vec::new();
        for n in 0..5 {
            starts.push(w.written() as usize);
            w.write(&mut group(&[plan(n)]), true).unwrap();
        }
        let full = std::fs::read(&path).unwrap();
        let damaged = |at: usize, mask: u8| {
            let mut b = full.clone();
            b[at] ^= mask;
            std::fs::write(&path, &b).unwrap();
            Wal::open(path.clone()).unwrap().read(3)
        };
        // a payload byte, the length, the generation, the magic of the third group: each stops
        // the read there while groups 4 and 5 (acknowledged) follow
        for (at, what) in [
            (starts[2] + GROUP_HEADER + 5, "checksum"),
            (starts[2] + 4, ""),
            (starts[2] + 8, "generation"),
            (starts[2], "header"),
        ] {
            let err = damaged(at, 0x10).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(&err, Error::LogDamaged { offset, reason, .. }
                    if *offset == starts[2] as u64 && reason.contains(what)),
                "{at}: {msg}"
            );
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("byte {}", starts[2])), "{msg}");
        }
        // the last group damaged: a torn tail, the four before it replay
        let replayed = damaged(starts[4] + GROUP_HEADER + 1, 0x01).unwrap();
        assert_eq!(replayed, Some((4, (0..4).map(plan).collect())));
        // a turn sled already holds is neither replayed nor checked
        let mut b = full.clone();
        b[starts[2] + GROUP_HEADER + 5] ^= 0x10;
        std::fs::write(&path, &b).unwrap();
        assert_eq!(Wal::open(path.clone()).unwrap().read(4).unwrap(), None);
        std::fs::write(&path, &full).unwrap();
        // damage in an older turn behind the current one is not the current log's business
        let mut w = Wal::open(path.clone()).unwrap();
        w.begin(6);
        w.write(&mut group(&[plan(9)]), true).unwrap();
        let mut b = std::fs::read(&path).unwrap();
        b[starts[3] + GROUP_HEADER + 2] ^= 0x10;
        std::fs::write(&path, &b).unwrap();
        assert_eq!(
            Wal::open(path.clone()).unwrap().read(4).unwrap(),
            Some((6, vec![plan(9)]))
        );
    }

    #[test]
    fn a_group_forged_inside_a_payers_value_cannot_turn_a_torn_tail_into_a_refusal() {
        // A payer chooses 32 bytes of what is logged (a channel's salt): room for one complete
        // group of the log's own generation with an empty payload.
        let mut forged = vec![0u8; GROUP_HEADER];
        forged[0..4].copy_from_slice(&GROUP_MAGIC.to_le_bytes());
        forged[8..16].copy_from_slice(&4u64.to_le_bytes());
        forged[16..20].copy_from_slice(&checksum(4, &[]).to_le_bytes());
        forged.resize(32, 0xAA);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let mut w = Wal::open(path.clone()).unwrap();
        w.begin(4);
        for n in 0..3 {
            w.write(&mut group(&[plan(n)]), true).unwrap();
        }
        let last = w.written() as usize;
        let salted: Plan = vec![(b"salt".to_vec(), Some(forged))];
        w.write(&mut group(&[salted]), true).unwrap();
        // the last group torn (never acknowledged): its checksum no longer holds, the forged
        // group inside it still does
        let mut b = std::fs::read(&path).unwrap();
        b[last + 16] ^= 0x01;
        std::fs::write(&path, &b).unwrap();
        assert_eq!(
            Wal::open(path.clone()).unwrap().read(3).unwrap(),
            Some((4, (0..3).map(plan).collect()))
        );
    }

    #[test]
    fn a_later_turn_overwrites_from_the_start_and_never_reads_the_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let mut w = Wal::open(path.clone()).unwrap();
        w.begin(1);
        for n in 0..5 {
            w.write(&mut group(&[plan(n)]), false).unwrap();
        }
        // the next turn writes one group (as long as the first of the older turn): the older
        // turn's valid groups behind it belong to another generation and are not read
        // (sled holds a turn before it is overwritten: here, generation 1)
        w.begin(3);
        w.write(&mut group(&[plan(9)]), true).unwrap();
        let read = |path: &Path| Wal::open(path.to_path_buf()).unwrap().read(1).unwrap();
        assert_eq!(read(&path), Some((3, vec![plan(9)])));
        // a reopened file keeps its size and a write lands at its start
        let mut w = Wal::open(path.clone()).unwrap();
        w.begin(5);
        w.write(&mut group(&[plan(8)]), true).unwrap();
        let read = |path: &Path| Wal::open(path.to_path_buf()).unwrap().read(3).unwrap();
        assert_eq!(read(&path), Some((5, vec![plan(8)])));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), STEP);
        // a group larger than a step grows the file to the step after its end
        w.write(&mut group(&[plan(7)]), false).unwrap();
        let big: Plan = vec![(b"k".to_vec(), Some(vec![1; STEP_BYTES + 10]))];
        w.write(&mut group(std::slice::from_ref(&big)), true)
            .unwrap();
        assert_eq!(
            read(&path).map(|(g, p)| (g, p.len())),
            Some((5, 3)),
            "all three groups of the turn"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * STEP);
        // a turn sled already holds is not read
        let mut again = Wal::open(path.clone()).unwrap();
        assert_eq!(again.read(5).unwrap(), None);
        assert_eq!(again.read(4).unwrap().map(|(g, _)| g), Some(5));
        // a file grown past the limit is cut back to it once checkpointed
        w.shrink_to(STEP).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), STEP);
        w.shrink_to(2 * STEP).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            STEP,
            "never grown by it"
        );
    }

    #[test]
    fn a_format1_log_is_read_for_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        // header (magic, generation, crc of the generation), then two records
        let mut f = Vec::new();
        f.extend_from_slice(&0x5041_5748u32.to_le_bytes());
        f.extend_from_slice(&4u64.to_le_bytes());
        f.extend_from_slice(&crc32fast::hash(&4u64.to_le_bytes()).to_le_bytes());
        for n in [1, 2] {
            let mut payload = Vec::new();
            entries(&plan(n), &mut payload).unwrap();
            f.extend_from_slice(&0x5041_5743u32.to_le_bytes());
            f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            f.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            f.extend_from_slice(&payload);
        }
        std::fs::write(&path, &f).unwrap();
        let mut w = Wal::open(path.clone()).unwrap();
        assert_eq!(w.read_format1().unwrap(), Some((4, vec![plan(1), plan(2)])));
        assert_eq!(w.read(0).unwrap(), None, "not a current-format log");
        std::fs::write(&path, &f[..f.len() - 1]).unwrap();
        let mut w = Wal::open(path).unwrap();
        assert_eq!(
            w.read_format1().unwrap(),
            Some((4, vec![plan(1)])),
            "torn tail dropped"
        );
    }
}
