//! When the log writer writes a group: group-commit pacing.
//!
//! Every `fdatasync` costs CPU time (the write, the device cache flush, two context switches:
//! tens of microseconds here), so the writer lets commits gather; but a commit waiting for
//! company delays its request. How long to wait depends on who is committing:
//!
//! * **A closed loop of a few channels** (clients that send their next request as soon as the
//!   last one is acknowledged): every one of them waits for each sync. Best is two groups taking
//!   turns — one being synced while the other's requests are checked — so a group is written
//!   once **half the loop** is waiting. Waiting for more only leaves the cores idle (measured:
//!   with 64 channels a fixed window 50% too long lost a fifth of the throughput).
//! * **Many channels** (thousands of clients, or slow handlers): the commits waiting for a sync
//!   are a small part of the requests under way, so waiting costs no throughput, and each sync
//!   saved gives its CPU time back to request work. A group is written when the window ends.
//!
//! [`Pacer`] measures the loop: for each commit it remembers its key's fingerprint and position
//! in the commit sequence; a key that comes back after `d` other commits says the loop holds
//! about `d` channels. When at least half of a group's commits come back within the horizon
//! (the last one or two [`GENERATION`]s of keys), the loop's size is their mean distance and
//! the next group is written once half of it is staged; otherwise only the window (and the
//! rule that a lone commit is written at once) applies.

use std::hash::BuildHasher;

use rustc_hash::{FxBuildHasher, FxHashMap};

/// Keys remembered per generation: a loop of up to this many channels is measured (a larger
/// one fills the window before half of it could be staged at any rate measured here).
pub(crate) const GENERATION: usize = 2048;

/// The group-commit pacing state of one log writer.
#[derive(Debug)]
pub(crate) struct Pacer {
    /// Commits observed so far.
    seq: u64,
    /// Fingerprint → position of its last commit, this generation and the one before.
    recent: FxHashMap<u64, u64>,
    older: FxHashMap<u64, u64>,
    /// Staged commits at which the next group is written; `None`: no loop measured.
    target: Option<usize>,
}

impl Pacer {
    pub(crate) fn new() -> Self {
        Self {
            seq: 0,
            recent: FxHashMap::with_capacity_and_hasher(GENERATION, FxBuildHasher),
            older: FxHashMap::with_capacity_and_hasher(GENERATION, FxBuildHasher),
            target: None,
        }
    }

    /// How many staged commits make a group worth writing before the window ends (`None`:
    /// the window decides).
    pub(crate) fn target(&self) -> Option<usize> {
        self.target
    }

    /// Takes note of a group just written: the first key of each of its commits.
    pub(crate) fn observe<'a>(&mut self, keys: impl IntoIterator<Item = &'a [u8]>) {
        let (mut commits, mut returning, mut distance) = (0u64, 0u64, 0u64);
        for key in keys {
            self.seq += 1;
            commits += 1;
            let f = fingerprint(key);
            let before = match self.recent.insert(f, self.seq) {
                Some(at) => Some(at),
                None => self.older.get(&f).copied(),
            };
            if let Some(at) = before {
                returning += 1;
                distance += self.seq - at;
            }
            if self.recent.len() >= GENERATION {
                std::mem::swap(&mut self.recent, &mut self.older);
                self.recent.clear();
            }
        }
        // A lone commit says little about the loop (and is written at once anyway).
        if commits >= 2 {
            self.target = (returning * 2 >= commits).then(|| {
                let loop_size = distance / returning.max(1);
                usize::try_from(loop_size / 2).unwrap_or(usize::MAX).max(1)
            });
        }
    }
}

fn fingerprint(key: &[u8]) -> u64 {
    // A fast unkeyed hash: nothing adversarial here, a collision only misjudges one commit.
    FxBuildHasher.hash_one(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> Vec<u8> {
        let mut k = vec![b'c'];
        k.extend_from_slice(&n.to_be_bytes());
        k
    }

    fn group(p: &mut Pacer, keys: impl IntoIterator<Item = u32>) {
        let keys: Vec<Vec<u8>> = keys.into_iter().map(key).collect();
        p.observe(keys.iter().map(Vec::as_slice));
    }

    #[test]
    fn a_closed_loop_is_written_when_half_of_it_waits() {
        let mut p = Pacer::new();
        assert_eq!(p.target(), None, "nothing measured yet");
        group(&mut p, 0..32);
        assert_eq!(p.target(), None, "new keys only");
        // 64 channels, half of them in each group
        for i in 1..100u32 {
            group(&mut p, if i % 2 == 0 { 0..32 } else { 32..64 });
            if i >= 2 {
                assert_eq!(p.target(), Some(32), "group {i}");
            }
        }
        // the loop shrinks to 8 channels: the target follows at the next group
        group(&mut p, 0..4);
        group(&mut p, 4..8);
        group(&mut p, 0..4);
        assert!(p.target().is_some_and(|t| t < 32), "{:?}", p.target());
        group(&mut p, 4..8);
        assert_eq!(p.target(), Some(4));
    }

    #[test]
    fn many_channels_leave_it_to_the_window() {
        let mut p = Pacer::new();
        // 10,000 channels, 150 per group: a key returns after 10,000 commits, beyond the horizon
        for i in 0..500u32 {
            let start = (i * 150) % 10_000;
            group(&mut p, start..start + 150);
            assert_eq!(p.target(), None, "group {i}");
        }
    }

    #[test]
    fn the_horizon_is_one_to_two_generations() {
        let gen_ = u32::try_from(GENERATION).unwrap();
        // returning after one generation of other keys: still remembered
        let mut p = Pacer::new();
        group(&mut p, 0..10);
        group(&mut p, 1_000_000..1_000_000 + gen_);
        group(&mut p, 0..10);
        assert!(p.target().is_some());
        // after more than two generations: forgotten
        let mut p = Pacer::new();
        group(&mut p, 0..10);
        group(&mut p, 1_000_000..1_000_000 + 2 * gen_);
        group(&mut p, 0..10);
        assert_eq!(p.target(), None);
    }

    #[test]
    fn lone_commits_leave_the_target_alone_and_a_pair_loop_writes_at_once() {
        let mut p = Pacer::new();
        group(&mut p, 0..1);
        group(&mut p, 0..1);
        assert_eq!(p.target(), None, "lone commits");
        group(&mut p, 0..2);
        group(&mut p, 0..2);
        assert_eq!(p.target(), Some(1), "a loop of two: nothing to wait for");
    }
}
