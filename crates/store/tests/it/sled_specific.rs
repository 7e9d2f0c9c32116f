//! sled store: what survives a reopen, format refusal, group commit.

use std::sync::Arc;

use alloy_primitives::B256;
use paychan_core::batch::payee::ChannelRecord;
use paychan_store::{Durability, SledStore, SledStoreConfig, Store, WriteBatch, codec};

use crate::conformance::record;

/// Opens the sled database at `path` directly (as another program would), applies `edit` and
/// flushes it.
fn edit_sled(path: &std::path::Path, edit: impl FnOnce(&sled::Db)) {
    let db = sled::open(path).unwrap();
    edit(&db);
    db.flush().unwrap();
}

/// Creates a store at `path` holding one committed channel record, and closes it.
async fn closed_store_with(path: &std::path::Path, r: ChannelRecord) {
    let s = SledStore::open(SledStoreConfig::new(path)).unwrap();
    s.commit(WriteBatch::channel(r)).await.unwrap();
}

#[tokio::test]
async fn committed_writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    closed_store_with(&path, record(1, 42)).await;
    let s = SledStore::open(SledStoreConfig::new(&path)).unwrap();
    assert_eq!(
        s.channel(B256::repeat_byte(1))
            .await
            .unwrap()
            .unwrap()
            .charged,
        42
    );
}

#[tokio::test]
async fn a_newer_or_foreign_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    edit_sled(&path, |db| {
        db.insert(
            codec::meta_key(codec::FORMAT_KEY),
            &(codec::DB_FORMAT + 1).to_be_bytes(),
        )
        .unwrap();
    });
    let err = SledStore::open(SledStoreConfig::new(&path))
        .unwrap_err()
        .to_string();
    assert!(err.contains("newer paychan"), "{err}");

    let foreign = dir.path().join("foreign");
    edit_sled(&foreign, |db| {
        db.insert(b"someone else's key", b"v").unwrap();
    });
    let err = SledStore::open(SledStoreConfig::new(&foreign))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a paychan store"), "{err}");
}

#[tokio::test]
async fn a_record_of_an_unknown_format_is_an_error_not_a_guess() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    closed_store_with(&path, record(1, 42)).await;
    edit_sled(&path, |db| {
        let key = codec::channel_key(&B256::repeat_byte(1));
        let mut v = db.get(key).unwrap().unwrap().to_vec();
        v[0] = 9;
        db.insert(key, v).unwrap();
    });
    let s = SledStore::open(SledStoreConfig::new(&path)).unwrap();
    let err = s
        .channel(B256::repeat_byte(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown channel record format 9"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_flushes() {
    for durability in [Durability::Fsync, Durability::Flush, Durability::None] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SledStoreConfig::new(dir.path().join("db"));
        cfg.durability = durability;
        let s = Arc::new(SledStore::open(cfg).unwrap());
        let tasks: Vec<_> = (0..400u32)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.commit(WriteBatch::channel(record((i % 250) as u8, u128::from(i))))
                        .await
                        .unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let st = s.stats().await.unwrap();
        assert_eq!(st.batches, 400, "{durability:?}");
        if durability == Durability::None {
            // no log to share: every commit is published on its own
            assert_eq!(st.commits, st.batches);
        } else {
            assert!(
                st.commits < st.batches,
                "{durability:?}: {} log writes for {} batches",
                st.commits,
                st.batches
            );
        }
        assert_eq!(st.channels, 250);
    }
}

fn log_bytes(db: &std::path::Path) -> [u64; 2] {
    paychan_store::sled_store::WAL_FILES
        .map(|f| std::fs::metadata(db.join(f)).map_or(0, |m| m.len()))
}

/// Copies the files of a store directory (what a crash at this moment leaves on disk, since
/// the page cache survives a process crash).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn commits_go_through_the_write_ahead_log_and_a_clean_close_checkpoints_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let crashed = dir.path().join("crashed");
    {
        let mut cfg = SledStoreConfig::new(&path);
        cfg.checkpoint_every = std::time::Duration::from_secs(3600);
        let s = SledStore::open(cfg).unwrap();
        for i in 0..10 {
            s.commit(WriteBatch::channel(record(i, u128::from(i))))
                .await
                .unwrap();
        }
        // no checkpoint has run: only the log holds the commits
        copy_dir(&path, &crashed);
    }
    for _ in 0..2 {
        // replayed on open (and again on a second open, to the same state)
        let s = SledStore::open(SledStoreConfig::new(&crashed)).unwrap();
        for i in 0..10u8 {
            let got = s.channel(B256::repeat_byte(i)).await.unwrap();
            assert_eq!(got.map(|r| r.charged), Some(u128::from(i)), "channel {i}");
        }
    }
    // a clean close wrote everything to sled: the log files are no longer needed
    for f in paychan_store::sled_store::WAL_FILES {
        std::fs::remove_file(path.join(f)).unwrap();
    }
    let s = SledStore::open(SledStoreConfig::new(&path)).unwrap();
    assert_eq!(
        s.channel(B256::repeat_byte(9))
            .await
            .unwrap()
            .unwrap()
            .charged,
        9
    );
}

#[tokio::test]
#[allow(clippy::cast_possible_truncation)]
async fn a_format1_store_is_migrated_with_its_log_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    closed_store_with(&path, record(1, 5)).await;
    // turn it into what format 1 left after a crash: format number 1, and a log file (header,
    // then one record) holding a commit sled does not have
    edit_sled(&path, |db| {
        db.insert(codec::meta_key(codec::FORMAT_KEY), &1u32.to_be_bytes())
            .unwrap();
    });
    let r = record(2, 77);
    let (key, value) = (codec::channel_key(&r.channel_id), codec::encode_channel(&r));
    let mut payload = vec![1u8];
    payload.extend_from_slice(&(key.len() as u32).to_le_bytes());
    payload.extend_from_slice(&key);
    payload.extend_from_slice(&(value.len() as u32).to_le_bytes());
    payload.extend_from_slice(&value);
    let mut file = Vec::new();
    file.extend_from_slice(&0x5041_5748u32.to_le_bytes());
    file.extend_from_slice(&3u64.to_le_bytes());
    file.extend_from_slice(&crc32fast::hash(&3u64.to_le_bytes()).to_le_bytes());
    file.extend_from_slice(&0x5041_5743u32.to_le_bytes());
    file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    file.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    file.extend_from_slice(&payload);
    let wal1 = path.join(paychan_store::sled_store::WAL_FILES[1]);
    std::fs::write(&wal1, &file).unwrap();
    {
        let s = SledStore::open(SledStoreConfig::new(&path)).unwrap();
        let one = s.channel(B256::repeat_byte(1)).await.unwrap();
        assert_eq!(one.map(|r| r.charged), Some(5));
        let two = s.channel(B256::repeat_byte(2)).await.unwrap();
        assert_eq!(
            two.map(|r| r.charged),
            Some(77),
            "the format-1 log was replayed"
        );
    }
    let db = sled::open(&path).unwrap();
    assert_eq!(
        db.get(codec::meta_key(codec::FORMAT_KEY))
            .unwrap()
            .unwrap()
            .as_ref(),
        codec::DB_FORMAT.to_be_bytes(),
        "migrated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_run_beside_commits_and_reads_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut latest = [0u128; 20];
    let mut both_logs_used = [false; 2];
    {
        let mut cfg = SledStoreConfig::new(&path);
        // a checkpoint falls due after almost every commit
        cfg.checkpoint_every = std::time::Duration::from_millis(1);
        let s = SledStore::open(cfg).unwrap();
        for round in 1..=300u128 {
            let n = (round % 20) as u8;
            s.commit(WriteBatch::channel(record(n, round)))
                .await
                .unwrap();
            latest[n as usize] = round;
            // whatever layer holds it (overlay, frozen overlay under checkpoint, sled), a read
            // sees the latest acknowledged value of every channel
            for (i, want) in (0u8..).zip(latest.iter()) {
                let got = s
                    .channel(B256::repeat_byte(i))
                    .await
                    .unwrap()
                    .map(|r| r.charged);
                assert_eq!(
                    got,
                    (*want > 0).then_some(*want),
                    "round {round}, channel {i}"
                );
            }
            for (used, bytes) in both_logs_used.iter_mut().zip(log_bytes(&path)) {
                *used |= bytes > 0;
            }
        }
        assert_eq!(s.stats().await.unwrap().channels, 20);
    }
    assert_eq!(both_logs_used, [true, true], "the two log files take turns");
    let s = SledStore::open(SledStoreConfig::new(&path)).unwrap();
    for (i, want) in (0u8..).zip(latest.iter()) {
        let got = s.channel(B256::repeat_byte(i)).await.unwrap().unwrap();
        assert_eq!(got.charged, *want);
    }
}

#[tokio::test]
async fn reads_merge_sled_with_writes_not_yet_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let s = SledStore::open(SledStoreConfig::new(&path)).unwrap();
        s.commit(WriteBatch {
            channels: vec![record(1, 1), record(2, 2), record(3, 3)],
            ..Default::default()
        })
        .await
        .unwrap();
    } // closing checkpoints: 1, 2, 3 are in sled
    let mut cfg = SledStoreConfig::new(&path);
    cfg.checkpoint_every = std::time::Duration::from_secs(3600);
    let s = SledStore::open(cfg).unwrap();
    // in the overlay only: delete 1, overwrite 2, add 4
    s.commit(WriteBatch {
        channels: vec![record(2, 20), record(4, 4)],
        remove_channels: vec![B256::repeat_byte(1)],
        ..Default::default()
    })
    .await
    .unwrap();
    let charged = |v: Vec<paychan_core::batch::payee::ChannelRecord>| {
        v.iter().map(|r| r.charged).collect::<Vec<_>>()
    };
    assert!(s.channel(B256::repeat_byte(1)).await.unwrap().is_none());
    assert_eq!(
        s.channel(B256::repeat_byte(2))
            .await
            .unwrap()
            .unwrap()
            .charged,
        20
    );
    assert_eq!(
        charged(s.channels_after(None, 10).await.unwrap()),
        vec![20, 3, 4]
    );
    assert_eq!(
        charged(s.channels_after(None, 2).await.unwrap()),
        vec![20, 3]
    );
    assert_eq!(
        charged(
            s.channels_after(Some(B256::repeat_byte(2)), 10)
                .await
                .unwrap()
        ),
        vec![3, 4]
    );
    assert_eq!(s.stats().await.unwrap().channels, 3);
    assert_eq!(
        s.aggregate(crate::conformance::RECEIVER, crate::conformance::TOKEN)
            .await
            .unwrap()
            .charged,
        27
    );
    drop(s);
    let s = SledStore::open(SledStoreConfig::new(&path)).unwrap();
    assert_eq!(
        charged(s.channels_after(None, 10).await.unwrap()),
        vec![20, 3, 4]
    );
}

#[tokio::test]
async fn a_directory_in_use_is_refused_with_a_hint_and_free_again_after_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let first = SledStore::open(SledStoreConfig::new(&path)).unwrap();
    first
        .commit(WriteBatch::channel(record(1, 7)))
        .await
        .unwrap();
    let err = SledStore::open(SledStoreConfig::new(&path))
        .unwrap_err()
        .to_string();
    assert!(err.contains("another paychan"), "{err}");
    drop(first);
    // reopening right after close waits out sled's last background writes instead of failing
    let again = SledStore::open(SledStoreConfig::new(&path)).unwrap();
    assert_eq!(
        again
            .channel(B256::repeat_byte(1))
            .await
            .unwrap()
            .unwrap()
            .charged,
        7
    );
}

/// The byte offsets of the groups of the log file at `path`, read by the documented layout
/// (`magic u32 | payload length u32 | generation u64 | crc32 u32 | payload`).
fn group_starts(path: &std::path::Path) -> Vec<usize> {
    let b = std::fs::read(path).unwrap();
    let mut at = 0;
    let mut out = Vec::new();
    while at + 20 <= b.len() && b[at..at + 4] == 0x5041_5747u32.to_le_bytes() {
        out.push(at);
        at += 20 + u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
    }
    out
}

#[tokio::test]
async fn a_log_damaged_in_the_middle_is_refused_and_a_torn_tail_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let crashed = dir.path().join("crashed");
    {
        let mut cfg = SledStoreConfig::new(&path);
        cfg.checkpoint_every = std::time::Duration::from_secs(3600);
        let s = SledStore::open(cfg).unwrap();
        for i in 0..10 {
            s.commit(WriteBatch::channel(record(i, u128::from(i))))
                .await
                .unwrap();
        }
        // a crash now: only the log holds the ten acknowledged commits
        copy_dir(&path, &crashed);
    }
    let log = crashed.join(paychan_store::sled_store::WAL_FILES[0]);
    let starts = group_starts(&log);
    assert!(starts.len() >= 3, "{starts:?}");
    let intact = std::fs::read(&log).unwrap();

    // one flipped byte in the second group, acknowledged groups after it
    let mut damaged = intact.clone();
    damaged[starts[1] + 25] ^= 0x40;
    std::fs::write(&log, &damaged).unwrap();
    let err = SledStore::open(SledStoreConfig::new(&crashed)).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, paychan_store::Error::LogDamaged { offset, .. } if *offset == starts[1] as u64),
        "{msg}"
    );
    assert!(msg.contains(&log.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("byte {}", starts[1])), "{msg}");
    assert!(msg.contains("move") && msg.contains("backup"), "{msg}");
    // refusing changed nothing: the log is as it was, and refusing again gives the same answer
    assert_eq!(std::fs::read(&log).unwrap(), damaged);
    assert!(SledStore::open(SledStoreConfig::new(&crashed)).is_err());

    // the same byte in the last group: a torn tail (never acknowledged), the rest replays
    let last = *starts.last().unwrap();
    let mut torn = intact.clone();
    torn[last + 25] ^= 0x40;
    std::fs::write(&log, &torn).unwrap();
    let s = SledStore::open(SledStoreConfig::new(&crashed)).unwrap();
    let mut found = 0;
    for i in 0..10u8 {
        if let Some(r) = s.channel(B256::repeat_byte(i)).await.unwrap() {
            assert_eq!(r.charged, u128::from(i));
            found += 1;
        }
    }
    // every group before the torn one was replayed
    assert!(found >= 10 - 1, "{found} of 10 channels replayed");
    assert!(s.channel(B256::repeat_byte(0)).await.unwrap().is_some());
}
