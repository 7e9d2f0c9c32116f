//! paychan's write-ahead log: what makes a commit durable without flushing sled.
//!
//! Each commit is one record; the log writer appends a group of them with one write and (with
//! `fsync` durability) one `fdatasync`. Two log files take turns: while sled takes in a
//! checkpoint of everything logged in one file, new commits go to the other, so a checkpoint
//! never holds commits up; once sled has it durably, the checkpointed file is emptied. Each file
//! starts with its generation, written with its first records: on open, the files are replayed
//! into sled oldest generation first. Records hold full values (never deltas), so replaying one
//! already applied changes nothing.
//!
//! File: `header magic u32 | generation u64 | crc32 of the generation u32`, then records.
//! Record: `magic u32 | length u32 | crc32 u32 | payload`, little-endian; payload: entries
//! `op u8 (1 put, 0 delete) | key length u32 | key | value length u32 | value`. A record that
//! is short or fails its checksum ends the log: it is the tail of a write that never completed,
//! so never acknowledged. A file whose header is short or wrong holds nothing acknowledged (the
//! header is made durable together with the file's first records).

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

use crate::{Error, Result, plan::Plan};

const MAGIC: u32 = 0x5041_5743; // "PAWC"
const HEADER: usize = 12;
const FILE_MAGIC: u32 = 0x5041_5748; // "PAWH"
const FILE_HEADER: usize = 16;
/// Largest record accepted on replay (a group of thousands of channel records fits easily).
const MAX_RECORD: usize = 256 << 20;

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Io(format!("{what} {}: {e}", path.display()))
}

/// One log file.
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    len: u64,
    generation: u64,
}

impl Wal {
    /// Opens (creating) the log file at `path`, positioned at its end.
    pub(crate) fn open(path: PathBuf) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io("opening the write-ahead log", &path, e))?;
        let len = file.metadata().map_err(|e| io("reading", &path, e))?.len();
        Ok(Self {
            file,
            path,
            len,
            generation: 0,
        })
    }

    /// Bytes in the file.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The file's generation and the plans of its complete records, in order; `None` if it
    /// holds nothing (empty, or a header that never became durable).
    pub(crate) fn read(&mut self) -> Result<Option<(u64, Vec<Plan>)>> {
        let mut bytes = Vec::new();
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| io("reading", &self.path, e))?;
        (&self.file)
            .read_to_end(&mut bytes)
            .map_err(|e| io("reading", &self.path, e))?;
        let word = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if bytes.len() < FILE_HEADER || word(&bytes, 0) != FILE_MAGIC {
            return Ok(None);
        }
        let generation_bytes = &bytes[4..12];
        if crc32fast::hash(generation_bytes) != word(&bytes, 12) {
            return Ok(None);
        }
        let mut generation = [0u8; 8];
        generation.copy_from_slice(generation_bytes);
        let generation = u64::from_le_bytes(generation);
        let mut out = Vec::new();
        let mut at = FILE_HEADER;
        while bytes.len() - at >= HEADER {
            let (magic, len, crc) = (
                word(&bytes, at),
                word(&bytes, at + 4) as usize,
                word(&bytes, at + 8),
            );
            if magic != MAGIC || len > MAX_RECORD || bytes.len() - at - HEADER < len {
                break;
            }
            let payload = &bytes[at + HEADER..at + HEADER + len];
            if crc32fast::hash(payload) != crc {
                break;
            }
            match decode(payload) {
                Some(plan) => out.push(plan),
                None => break,
            }
            at += HEADER + len;
        }
        Ok(Some((generation, out)))
    }

    /// Makes this (empty) file the log of `generation`: its header goes out with the first write.
    pub(crate) fn begin(&mut self, generation: u64) {
        debug_assert_eq!(self.len, 0, "a log file is reused only once emptied");
        self.generation = generation;
    }

    /// The generation this file logs.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Appends a record for `plan`; `sync` makes it durable (`fdatasync`) before returning.
    #[cfg(test)]
    pub(crate) fn append(&mut self, plan: &Plan, sync: bool) -> Result<()> {
        self.write(&record(plan)?, sync)
    }

    /// Appends complete records (from [`record`]), after the file header if the file is empty;
    /// `sync` makes them durable (`fdatasync`) before returning.
    pub(crate) fn write(&mut self, records: &[u8], sync: bool) -> Result<()> {
        let written = if self.len == 0 {
            let mut first = Vec::with_capacity(FILE_HEADER + records.len());
            let generation = self.generation.to_le_bytes();
            first.extend_from_slice(&FILE_MAGIC.to_le_bytes());
            first.extend_from_slice(&generation);
            first.extend_from_slice(&crc32fast::hash(&generation).to_le_bytes());
            first.extend_from_slice(records);
            self.file.write_all(&first).map(|()| first.len())
        } else {
            self.file.write_all(records).map(|()| records.len())
        }
        .map_err(|e| io("appending to", &self.path, e))?;
        if sync {
            self.file
                .sync_data()
                .map_err(|e| io("fdatasync of", &self.path, e))?;
        }
        self.len += written as u64;
        Ok(())
    }

    /// Empties the file (after a checkpoint made everything in it durable in sled).
    pub(crate) fn truncate(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .map_err(|e| io("truncating", &self.path, e))?;
        self.file
            .sync_all()
            .map_err(|e| io("fsync of", &self.path, e))?;
        self.len = 0;
        Ok(())
    }
}

/// The log record of `plan`: header, checksum and entries.
pub(crate) fn record(plan: &Plan) -> Result<Vec<u8>> {
    let payload = encode(plan)?;
    let len = u32::try_from(payload.len())
        .map_err(|_| Error::Io("write-ahead log record too large".into()))?;
    let mut rec = Vec::with_capacity(HEADER + payload.len());
    rec.extend_from_slice(&MAGIC.to_le_bytes());
    rec.extend_from_slice(&len.to_le_bytes());
    rec.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    rec.extend_from_slice(&payload);
    Ok(rec)
}

fn encode(plan: &Plan) -> Result<Vec<u8>> {
    let len32 = |n: usize| {
        u32::try_from(n)
            .map_err(|_| Error::Io("a key or value too large for the write-ahead log".into()))
    };
    let mut out = Vec::new();
    for (k, v) in plan {
        out.push(u8::from(v.is_some()));
        out.extend_from_slice(&len32(k.len())?.to_le_bytes());
        out.extend_from_slice(k);
        let v = v.as_deref().unwrap_or(&[]);
        out.extend_from_slice(&len32(v.len())?.to_le_bytes());
        out.extend_from_slice(v);
    }
    Ok(out)
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
            1 => plan.insert(key, Some(val)),
            0 => plan.insert(key, None),
            _ => return None,
        };
    }
    Some(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: u8) -> Plan {
        let mut p = Plan::new();
        p.insert(vec![b'c', n], Some(vec![n; 40]));
        p.insert(vec![b'x', n], None);
        p
    }

    fn read(path: &Path) -> Option<(u64, Vec<Plan>)> {
        Wal::open(path.to_path_buf()).unwrap().read().unwrap()
    }

    #[test]
    fn records_round_trip_with_their_generation_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let mut w = Wal::open(path.clone()).unwrap();
        assert_eq!(read(&path), None, "an empty file holds nothing");
        w.begin(7);
        w.append(&plan(1), true).unwrap();
        w.append(&plan(2), false).unwrap();
        assert_eq!(read(&path), Some((7, vec![plan(1), plan(2)])));
        // a record cut short, and one with a bad checksum: the log ends before them
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        assert_eq!(read(&path), Some((7, vec![plan(1)])));
        let mut bad = full.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(read(&path), Some((7, vec![plan(1)])));
        // a torn or damaged file header: nothing in the file was acknowledged
        std::fs::write(&path, &full[..FILE_HEADER - 1]).unwrap();
        assert_eq!(read(&path), None);
        let mut bad = full.clone();
        bad[5] ^= 0x01; // the generation no longer matches its checksum
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(read(&path), None);
        // emptied, then reused for a later generation: only the new records are there
        std::fs::write(&path, &full).unwrap();
        let mut w = Wal::open(path.clone()).unwrap();
        w.truncate().unwrap();
        assert_eq!(read(&path), None);
        w.begin(8);
        w.append(&plan(3), true).unwrap();
        assert_eq!(read(&path), Some((8, vec![plan(3)])));
    }
}
