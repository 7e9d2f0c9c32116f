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
//!
//! * **Light load** (commits arriving on their own schedule, slower than the log can write them
//!   one group at a time — paced clients, a server at half its capacity): company comes later
//!   than a sync would take, so waiting for it only adds latency (a paced loop of 16 channels
//!   looks like a closed loop to the measure above, and its commits used to wait ~2 ms each for
//!   half of it). The pacer keeps a running mean of the time between commits and of the time a
//!   write takes; while commits come no faster than one per write, the log writer is idle
//!   between them and what is staged is written at once, however many. An earlier rule kept
//!   waiting when four or more were staged, to see load arrive before the means did; at half
//!   load those bursts then waited for half the loop, and that was most of the added p99
//!   (BENCHMARKS.md §6: at 2,500 paid calls/s on 16 channels, added p50 2.4 → 1.0–1.3 ms and
//!   added p99 6.5–7.5 → 5.2–5.4 ms without it, the same closed-loop groups and throughput).
//!   Load is still seen soon: groups written back to back make the time between commits the
//!   write's time over the group's size, below one write as soon as groups hold two, and the
//!   mean follows within a couple of dozen groups (a few milliseconds; meanwhile groups are
//!   written as they come, as with no pacing at all).
//!
//! [`Pacer::gather`] is the decision, a pure function of the pacer's measurements and the
//! queue.

use std::{hash::BuildHasher, time::Duration};

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
    /// Running means (nanoseconds, weight 1/8 per group) of the time between commits and of
    /// the time a group's write takes; `None` before the first group is timed.
    between_ns: Option<u64>,
    write_ns: Option<u64>,
}

/// A sample of the time between commits counts at most this much: an idle hour would
/// otherwise keep the mean "light" for hundreds of groups once load arrives (from 10 ms, a
/// dozen groups).
const LONGEST_GAP: Duration = Duration::from_millis(10);

impl Pacer {
    pub(crate) fn new() -> Self {
        Self {
            seq: 0,
            recent: FxHashMap::with_capacity_and_hasher(GENERATION, FxBuildHasher),
            older: FxHashMap::with_capacity_and_hasher(GENERATION, FxBuildHasher),
            target: None,
            between_ns: None,
            write_ns: None,
        }
    }

    /// Whether the writer should wait for more commits before writing the `staged` ones (the
    /// last write was `since_write` ago): `None` to write now, else `Some(n)`: wait until `n`
    /// are staged (`usize::MAX`: until the window ends) or the window ends.
    pub(crate) fn gather(
        &self,
        staged: usize,
        since_write: Duration,
        window: Duration,
    ) -> Option<usize> {
        if since_write >= window {
            return None;
        }
        // The writer is idle between commits: waiting for company only delays these.
        if self.keeping_up() {
            return None;
        }
        match self.target {
            Some(target) => (staged < target).then_some(target),
            None => (staged >= 2).then_some(usize::MAX),
        }
    }

    /// Commits come no faster than one per write: the writer is idle between them.
    fn keeping_up(&self) -> bool {
        matches!((self.between_ns, self.write_ns), (Some(b), Some(w)) if b >= w)
    }

    /// Takes note of a group's timing: `commits` commits staged over `since_last` (since the
    /// group before was taken), written in `write`.
    pub(crate) fn timed(&mut self, commits: usize, since_last: Duration, write: Duration) {
        if commits == 0 {
            return;
        }
        let gap = since_last.min(LONGEST_GAP).as_nanos() / commits as u128;
        let gap = u64::try_from(gap).unwrap_or(u64::MAX);
        let write = u64::try_from(write.as_nanos()).unwrap_or(u64::MAX);
        self.between_ns = Some(mean(self.between_ns, gap));
        self.write_ns = Some(mean(self.write_ns, write));
    }

    /// How many staged commits make a group worth writing before the window ends (`None`:
    /// the window decides).
    #[cfg(test)]
    fn target(&self) -> Option<usize> {
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

/// A running mean, weight 1/8 to the new sample.
fn mean(old: Option<u64>, sample: u64) -> u64 {
    match old {
        None => sample,
        Some(old) => old - old / 8 + sample / 8,
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

    const WINDOW: Duration = Duration::from_millis(4);
    const US: Duration = Duration::from_micros(1);

    /// A pacer that measured a loop of 16 channels (target 8), then `groups` groups of
    /// `per_group` commits staged over `gap` each and written in `write`.
    fn measured(per_group: usize, gap: Duration, write: Duration) -> Pacer {
        let mut p = Pacer::new();
        for i in 0..8u32 {
            group(&mut p, if i % 2 == 0 { 0..8 } else { 8..16 });
        }
        assert_eq!(p.target(), Some(8));
        for _ in 0..64 {
            p.timed(per_group, gap, write);
        }
        p
    }

    #[test]
    fn light_load_is_written_at_once_however_many_are_staged() {
        // paced: a commit every 266 µs, a write takes 150 µs
        let p = measured(1, 266 * US, 150 * US);
        assert_eq!(p.gather(1, 10 * US, WINDOW), None);
        assert_eq!(p.gather(3, 10 * US, WINDOW), None);
        // a burst: half the loop is staged at once, and still nothing waits for the rest
        assert_eq!(p.gather(4, 10 * US, WINDOW), None);
        assert_eq!(p.gather(7, 10 * US, WINDOW), None);
        // commits come faster than writes: the loop's rule again
        let p = measured(4, 400 * US, 150 * US);
        assert_eq!(p.gather(4, 10 * US, WINDOW), Some(8));
        assert_eq!(p.gather(8, 10 * US, WINDOW), None, "the target is staged");
    }

    #[test]
    fn under_load_the_loop_and_the_window_still_gather() {
        // 8 commits per group, staged over 400 µs (50 µs apart), a write takes 300 µs
        let p = measured(8, 400 * US, 300 * US);
        assert_eq!(p.gather(1, 10 * US, WINDOW), Some(8));
        assert_eq!(p.gather(7, 10 * US, WINDOW), Some(8));
        assert_eq!(p.gather(7, WINDOW, WINDOW), None, "the window ended");
        // no loop measured (many channels): the window decides, once two are staged
        let mut p = Pacer::new();
        assert_eq!(p.gather(1, 10 * US, WINDOW), None, "a lone commit");
        assert_eq!(
            p.gather(2, 10 * US, WINDOW),
            Some(usize::MAX),
            "nothing timed yet"
        );
        for _ in 0..64 {
            p.timed(150, 4_000 * US, 500 * US);
        }
        assert_eq!(p.gather(2, 10 * US, WINDOW), Some(usize::MAX));
        assert_eq!(p.gather(150, 3_999 * US, WINDOW), Some(usize::MAX));
        assert_eq!(p.gather(150, WINDOW, WINDOW), None);
    }

    #[test]
    fn many_channels_at_light_load_are_written_at_once() {
        let mut p = Pacer::new();
        for _ in 0..64 {
            p.timed(1, 1_000 * US, 150 * US);
        }
        assert_eq!(p.target(), None);
        assert_eq!(p.gather(1, 10 * US, WINDOW), None);
        assert_eq!(p.gather(4, 10 * US, WINDOW), None);
        // load arrives: groups of 3 written back to back, 150 µs each; the means see it
        // within a couple of dozen groups (~3 ms), and groups gather again
        for _ in 0..8 {
            p.timed(3, 150 * US, 150 * US);
        }
        assert_eq!(p.gather(4, 10 * US, WINDOW), None, "not seen yet");
        for _ in 0..16 {
            p.timed(3, 150 * US, 150 * US);
        }
        assert_eq!(p.gather(4, 10 * US, WINDOW), Some(usize::MAX));
    }

    #[test]
    fn the_means_follow_a_change_of_load() {
        // light, then load arrives: commits 20 µs apart, writes of 300 µs
        let mut p = measured(1, 500 * US, 150 * US);
        assert_eq!(p.gather(1, 10 * US, WINDOW), None);
        for _ in 0..32 {
            p.timed(15, 300 * US, 300 * US);
        }
        assert_eq!(p.gather(1, 10 * US, WINDOW), Some(8));
        // an idle hour counts as 10 ms: load is seen again within a dozen groups
        p.timed(1, Duration::from_secs(3600), 150 * US);
        assert_eq!(p.gather(1, 10 * US, WINDOW), None);
        for _ in 0..16 {
            p.timed(15, 300 * US, 300 * US);
        }
        assert_eq!(p.gather(1, 10 * US, WINDOW), Some(8));
        // an empty group changes nothing
        p.timed(0, Duration::from_secs(1), US);
        assert_eq!(p.gather(1, 10 * US, WINDOW), Some(8));
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
