//! The history database over a long life: retention by age, count and size;
//! a damaged file moved aside; a backup before migrating; a full database and
//! a full file system; readers during writes, pruning and checkpoints; and
//! `clipd db check|backup|vacuum`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tmpfs::Tmpfs;

use rusqlite::Connection;

use clipd::store::{
    now_ms, BatchWriter, FrameFilter, FrameRecord, RefinementRecord, Retention, StateChange, Store,
    StoreOptions, WriteOp, SCHEMA_VERSION,
};

const DAY_MS: i64 = 86_400_000;

/// A classified frame with a known id and time.
fn frame(id: i64, ts_ms: i64) -> FrameRecord {
    let mut f = FrameRecord::classified(
        ts_ms,
        "cam",
        format!("cam/{id:06}.jpg"),
        "sha-model",
        vec![("dog".into(), 0.75), ("cat".into(), 0.25)],
    );
    f.id = Some(id);
    f
}

/// A frame with a 2 KiB embedding, so a few hundred make megabytes.
fn heavy(id: i64, ts_ms: i64) -> FrameRecord {
    let mut f = frame(id, ts_ms);
    f.embedding = Some(
        (0..1024)
            .map(|i| (i as f32 * 0.37 + id as f32).sin())
            .collect(),
    );
    f
}

fn raw(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

fn ids(path: &Path) -> Vec<i64> {
    raw(path)
        .prepare("SELECT id FROM frames ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn integrity(path: &Path) -> String {
    raw(path)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

fn scalar(path: &Path, sql: &str) -> i64 {
    raw(path).query_row(sql, [], |r| r.get(0)).unwrap()
}

fn opts() -> StoreOptions {
    StoreOptions::default()
}

fn policy(f: impl FnOnce(&mut Retention)) -> Retention {
    let mut r = Retention {
        batch: 50,
        every: Duration::from_millis(20),
        ..Retention::default()
    };
    f(&mut r);
    r
}

/// Polls `cond` until it holds; fails the test (instead of hanging it) after
/// a generous while. Not a timing assertion: only a bound on waiting.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn retention_by_age_deletes_old_frames_and_what_only_they_referenced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    let mut store = Store::open(&path, &opts()).unwrap();
    let now = now_ms();
    // 120 frames 10..5 days old, then 30 from the last hour.
    let old: Vec<FrameRecord> = (1..=120)
        .map(|i| frame(i, now - 10 * DAY_MS + i * DAY_MS / 24))
        .collect();
    let new: Vec<FrameRecord> = (121..=150).map(|i| frame(i, now - 3_600_000 + i)).collect();
    store.insert_frames(&old).unwrap();
    store.insert_frames(&new).unwrap();
    let refine = |ts_ms: i64, ids: &[i64], changes: Vec<StateChange>| RefinementRecord {
        ts_ms,
        algorithm: "em-dirichlet".into(),
        params: "{}".into(),
        n_frames: ids.len(),
        n_changed: 0,
        duration_ms: 1,
        labels: ids.iter().map(|&i| (i, "cat".to_string(), 0.9)).collect(),
        state_changes: changes,
    };
    let change = |ts_ms: i64, source: &str, to: &str| StateChange {
        ts_ms,
        source: source.into(),
        from_label: None,
        to_label: to.into(),
        agreement: 1.0,
        n_frames: 4,
    };
    // Run 1 refines old frames only and records an old change of "cam";
    // run 2 an old change of "gate" (that source's only one, its current
    // state); run 3 refines new frames and records a recent change of "cam".
    let r1 = store
        .apply_refinement(&refine(
            now - 9 * DAY_MS,
            &[5, 6],
            vec![change(now - 9 * DAY_MS, "cam", "cat")],
        ))
        .unwrap();
    let r2 = store
        .apply_refinement(&refine(
            now - 8 * DAY_MS,
            &[],
            vec![change(now - 8 * DAY_MS, "gate", "open")],
        ))
        .unwrap();
    let r3 = store
        .apply_refinement(&refine(
            now - 60_000,
            &[140],
            vec![change(now - 60_000, "cam", "dog")],
        ))
        .unwrap();

    let report = store
        .prune(
            &policy(|r| r.max_age = Some(Duration::from_secs(86_400))),
            now,
        )
        .unwrap();
    assert_eq!(report.by_age, 120, "{report:?}");
    assert_eq!((report.by_rows, report.by_size), (0, 0));
    assert_eq!(ids(&path), (121..=150).collect::<Vec<_>>());
    // The old change of "cam" went; "gate"'s only change stays (it is its
    // current state), as does "cam"'s recent one.
    let changes = store.state_changes(None, None, None, 0).unwrap();
    let kept: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| (c.source.as_str(), c.to_label.as_str()))
        .collect();
    assert_eq!(kept, [("cam", "dog"), ("gate", "open")]);
    assert_eq!(report.state_changes, 1);
    // Run 1 is referenced by nothing left; run 2 by gate's change; run 3 by
    // a frame and a change.
    let runs: Vec<i64> = raw(&path)
        .prepare("SELECT id FROM refinements ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(runs, [r2, r3]);
    assert_ne!(r1, r2);
    assert_eq!(report.refinements, 1);
    assert_eq!(
        scalar(&path, "SELECT COUNT(*) FROM pragma_foreign_key_check"),
        0
    );
    // A second pass finds nothing.
    let again = store
        .prune(
            &policy(|r| r.max_age = Some(Duration::from_secs(86_400))),
            now,
        )
        .unwrap();
    assert_eq!(again.frames() + again.state_changes + again.refinements, 0);
}

#[test]
fn retention_by_row_count_keeps_exactly_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    let mut store = Store::open(&path, &opts()).unwrap();
    let now = now_ms();
    // Out of id order in time: "oldest" means captured first.
    let mut frames: Vec<FrameRecord> = (1..=1000).map(|i| frame(i, now - 1000 + i)).collect();
    frames[0].ts_ms = now; // id 1 is the newest capture
    store.insert_frames(&frames).unwrap();
    let report = store
        .prune(&policy(|r| r.max_rows = Some(300)), now)
        .unwrap();
    assert_eq!(report.by_rows, 700);
    let left = ids(&path);
    assert_eq!(left.len(), 300);
    assert_eq!(left[0], 1, "the newest capture stays");
    assert_eq!(left[1..], (702..=1000).collect::<Vec<_>>()[..]);
    assert_eq!(store.frame_count().unwrap(), 300);
}

#[test]
fn retention_by_size_shrinks_the_file_under_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    let mut store = Store::open(&path, &opts()).unwrap();
    assert!(store.incremental_vacuum_enabled().unwrap());
    let now = now_ms();
    let frames: Vec<FrameRecord> = (1..=2000).map(|i| heavy(i, now - 5000 + i)).collect();
    for chunk in frames.chunks(200) {
        store.insert_frames(chunk).unwrap();
    }
    store.checkpoint().unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    let limit: u64 = 1024 * 1024;
    assert!(before > 4 * limit, "{before}");
    let report = store
        .prune(&policy(|r| r.max_bytes = Some(limit)), now)
        .unwrap();
    assert!(
        report.by_size > 0 && report.pages_released > 0,
        "{report:?}"
    );
    assert!(report.db_bytes <= limit, "{report:?}");
    store.checkpoint().unwrap();
    let after = std::fs::metadata(&path).unwrap().len();
    assert!(after <= limit, "file is {after} bytes, limit {limit}");
    // Oldest first: what is left is a contiguous run up to the newest.
    let left = ids(&path);
    assert!(!left.is_empty());
    assert_eq!(*left.last().unwrap(), 2000);
    assert_eq!(left.len() as i64, 2000 - left[0] + 1);
    assert_eq!(integrity(&path), "ok");
}

#[test]
fn the_writer_prunes_between_commits_and_the_file_converges() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    let limit: u64 = 1024 * 1024;
    let o = StoreOptions {
        batch_rows: 50,
        retention: policy(|r| r.max_bytes = Some(limit)),
        ..opts()
    };
    let store = Store::open(&path, &o).unwrap();
    let (tx, rx) = mpsc::sync_channel(64);
    let writer = BatchWriter::spawn(store, rx).unwrap();
    let progress = writer.progress();
    let now = now_ms();
    for i in 1..=3000 {
        tx.send(WriteOp::Frame(heavy(i, now - 5000 + i))).unwrap();
    }
    wait_until("all frames committed", || progress.rows_committed() == 3000);
    // Retention keeps running every 20 ms; nothing else arrives.
    wait_until("the database under its limit", || {
        let p = progress.snapshot();
        p.pruned_rows > 0 && p.db_bytes <= limit
    });
    drop(tx);
    let summary = writer.join().unwrap();
    assert!(summary.is_clean(), "{summary}");
    assert!(summary.rows_pruned > 0, "{summary}");
    let file = std::fs::metadata(&path).unwrap().len();
    assert!(file <= limit, "file is {file} bytes, limit {limit}");
    let left = ids(&path);
    assert_eq!(*left.last().unwrap(), 3000);
    assert_eq!(integrity(&path), "ok");
}

/// Overwrites the middle of several pages with garbage.
fn damage(path: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let len = std::fs::metadata(path).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let page = 4096u64;
    for p in (2..len / page).step_by(3) {
        f.seek(SeekFrom::Start(p * page + 1024)).unwrap();
        f.write_all(&[0xFF; 1500]).unwrap();
    }
    f.sync_all().unwrap();
}

#[test]
fn a_damaged_file_is_moved_aside_and_a_fresh_history_started() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    {
        let mut store = Store::open(&path, &opts()).unwrap();
        let frames: Vec<FrameRecord> = (1..=2000).map(|i| frame(i, 1000 + i)).collect();
        store.insert_frames(&frames).unwrap();
    }
    damage(&path);
    let damaged = std::fs::read(&path).unwrap();
    assert_ne!(integrity(&path), "ok");

    let daemon = StoreOptions {
        quick_check: true,
        ..opts()
    };
    let store = Store::open(&path, &daemon).unwrap();
    assert_eq!(store.frame_count().unwrap(), 0, "a fresh history");
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let moved: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("h.db.corrupt-") && !name.ends_with("-wal") && !name.ends_with("-shm")
        })
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(
        std::fs::read(&moved[0]).unwrap(),
        damaged,
        "moved, not changed"
    );
    drop(store);
    // A healthy file is left where it is.
    let store = Store::open(&path, &daemon).unwrap();
    assert_eq!(store.frame_count().unwrap(), 0);
    let n = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("corrupt")
        })
        .count();
    assert_eq!(n, 1);
}

#[test]
fn a_damaged_file_is_refused_without_quick_check_by_query_tools() {
    // Without the daemon's quick_check the file stays put: tools never move it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    assert!(Store::open(&path, &opts()).is_err());
    assert!(path.exists());
    let daemon = StoreOptions {
        quick_check: true,
        ..opts()
    };
    // Not a database at all counts as damage for the daemon.
    Store::open(&path, &daemon).unwrap();
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("h.db.corrupt-")),
        "{names:?}"
    );
}

#[test]
fn an_old_schema_is_backed_up_before_it_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    {
        // A version-1 history as the first release wrote it: no
        // auto_vacuum, one frame.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(include_str!("../src/store/migrations/0001_init.sql"))
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO frames (ts_ms, source, frame_ref, label, score, model_id) \
             VALUES (5, 'cam', 'a.jpg', 'dog', 0.9, 'm')",
            [],
        )
        .unwrap();
    }
    assert_eq!(scalar(&path, "PRAGMA auto_vacuum"), 0);
    let store = Store::open(&path, &opts()).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert!(
        store.incremental_vacuum_enabled().unwrap(),
        "converted on migration"
    );
    assert_eq!(store.frame_count().unwrap(), 1);
    drop(store);
    let bak = dir.path().join(format!("h.db.pre-v{SCHEMA_VERSION}.bak"));
    assert!(bak.exists());
    assert_eq!(scalar(&bak, "PRAGMA user_version"), 1);
    assert_eq!(scalar(&bak, "SELECT COUNT(*) FROM frames"), 1);
    assert_eq!(integrity(&bak), "ok");
    // The backup is one self-contained file.
    assert_eq!(
        raw(&bak)
            .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
            .unwrap(),
        "delete"
    );
    // A current database is not backed up again.
    drop(Store::open(&path, &opts()).unwrap());
    let baks = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".bak")
        })
        .count();
    assert_eq!(baks, 1);
}

#[test]
fn a_full_database_is_survived_by_the_writer_thread() {
    // A genuine SQLITE_FULL from a page cap; retention by row count frees
    // pages, and the held frames are written without raising the cap.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    let probe = Store::open(&path, &opts()).unwrap();
    let empty_pages = probe.db_bytes().unwrap() / 4096;
    drop(probe);
    let o = StoreOptions {
        batch_rows: 8,
        max_pending_rows: 10_000,
        max_page_count: Some(empty_pages + 60),
        retention: policy(|r| {
            r.max_rows = Some(40);
            r.every = Duration::from_secs(3600);
        }),
        ..opts()
    };
    let store = Store::open(&path, &o).unwrap();
    let (tx, rx) = mpsc::sync_channel(16);
    let writer = BatchWriter::spawn(store, rx).unwrap();
    let progress = writer.progress();
    let now = now_ms();
    let total = 400;
    for i in 1..=total {
        tx.send(WriteOp::Frame(heavy(i, now - 10_000 + i))).unwrap();
    }
    // The count and the failing flag are separate atomics: the flag clears
    // just after the last held chunk is counted, so wait for both.
    wait_until("every frame committed and writing recovered", || {
        progress.rows_committed() == total as u64 && !progress.is_failing()
    });
    let p = progress.snapshot();
    assert!(p.commit_errors > 0, "the cap was hit: {p:?}");
    assert!(p.pruned_rows > 0, "{p:?}");
    assert_eq!(p.dropped, 0, "{p:?}");
    assert!(!p.failing && !p.stopped, "{p:?}");
    drop(tx);
    let summary = writer.join().expect("the writer never panics");
    assert!(summary.is_clean(), "{summary}");
    assert_eq!(integrity(&path), "ok");
    let left = ids(&path);
    assert_eq!(*left.last().unwrap(), total, "the newest frame is stored");
}

#[test]
fn a_full_file_system_is_survived_and_held_frames_written_when_space_returns() {
    // Room for the database, its WAL and the final checkpoint (which copies
    // the WAL into the file) once the filler is gone.
    let fs = match Tmpfs::mount("4m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipping the full file system test: {why}");
            return;
        }
    };
    let path = fs.path().join("h.db");
    let filler = fs.path().join("filler");
    let o = StoreOptions {
        batch_rows: 16,
        max_pending_rows: 100_000,
        ..opts()
    };
    let store = Store::open(&path, &o).unwrap();
    std::fs::write(&filler, vec![0u8; 3200 * 1024]).unwrap();
    let (tx, rx) = mpsc::sync_channel(16);
    let writer = BatchWriter::spawn(store, rx).unwrap();
    let progress = writer.progress();
    let now = now_ms();
    let mut sent = 0i64;
    while !progress.is_failing() {
        sent += 1;
        assert!(sent < 5000, "the file system never filled up");
        tx.send(WriteOp::Frame(heavy(sent, now + sent))).unwrap();
        if sent % 16 == 0 {
            // Let the commit happen before deciding whether to send more.
            wait_until("a commit or a failure", || {
                progress.is_failing() || progress.snapshot().pending < 16
            });
        }
    }
    let committed_while_full = progress.rows_committed();
    assert!(committed_while_full > 0 && committed_while_full < sent as u64);
    // Keep sending while the disk is full: the writer holds, keeps running.
    for _ in 0..40 {
        sent += 1;
        tx.send(WriteOp::Frame(heavy(sent, now + sent))).unwrap();
    }
    wait_until("the held frames to be received", || {
        progress.snapshot().pending as i64 + progress.rows_committed() as i64 == sent
    });
    assert!(progress.is_failing());
    assert_eq!(integrity(&path), "ok", "the database stays intact");

    std::fs::remove_file(&filler).unwrap();
    wait_until("the held frames to be written", || {
        progress.rows_committed() == sent as u64
    });
    drop(tx);
    let summary = writer.join().expect("the writer never panics");
    assert!(summary.is_clean(), "{summary}");
    assert!(summary.failed_batches > 0, "{summary}");
    assert_eq!(ids(&path), (1..=sent).collect::<Vec<_>>());
    assert_eq!(integrity(&path), "ok");
}

#[test]
fn readers_never_see_a_locked_database_while_the_writer_writes_prunes_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    let o = StoreOptions {
        batch_rows: 20,
        batch_ms: 5,
        retention: policy(|r| {
            r.max_rows = Some(500);
            r.batch = 40;
            r.every = Duration::from_millis(5);
        }),
        ..opts()
    };
    let store = Store::open(&path, &o).unwrap();
    let (tx, rx) = mpsc::sync_channel(64);
    let writer = BatchWriter::spawn(store, rx).unwrap();
    let progress = writer.progress();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let now = now_ms();
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                if tx.send(WriteOp::Frame(heavy(i, now + i))).is_err() {
                    break;
                }
            }
            i
        })
    };
    // Readers start once retention is pruning, and run while it goes on.
    wait_until("retention to start deleting", || {
        progress.snapshot().pruned_rows > 0
    });
    let readers: Vec<_> = (0..4)
        .map(|k| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                let mut store = Store::open_read_only(&path).unwrap();
                for i in 0..300 {
                    if i % 50 == 0 {
                        // New connections too, as each `clipd query` is.
                        match Store::open_read_only(&path) {
                            Ok(s) => store = s,
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                    let filter = FrameFilter {
                        limit: Some(20),
                        ..FrameFilter::default()
                    };
                    let r = match (i + k) % 3 {
                        0 => store.query_frames(&filter).map(|_| ()),
                        1 => store.summary(&filter).map(|_| ()),
                        _ => store.frame_count().map(|_| ()),
                    };
                    if let Err(e) = r {
                        errors.push(e.to_string());
                    }
                }
                errors
            })
        })
        .collect();
    let errors: Vec<String> = readers
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    stop.store(true, Ordering::Relaxed);
    let sent = feeder.join().unwrap();
    let summary = writer.join().unwrap();
    assert!(
        errors.is_empty(),
        "{} errors, first: {}",
        errors.len(),
        errors[0]
    );
    assert!(summary.is_clean(), "{summary}");
    assert!(summary.rows_pruned > 0, "retention ran: {summary}");
    assert!(sent > 500);
    assert_eq!(integrity(&path), "ok");
}

#[test]
fn a_backup_during_writes_is_a_consistent_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    let o = StoreOptions {
        batch_rows: 10,
        batch_ms: 5,
        ..opts()
    };
    let store = Store::open(&path, &o).unwrap();
    let (tx, rx) = mpsc::sync_channel(64);
    let writer = BatchWriter::spawn(store, rx).unwrap();
    let progress = writer.progress();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                if tx.send(WriteOp::Frame(heavy(i, i))).is_err() {
                    break;
                }
            }
        })
    };
    wait_until("some commits", || progress.rows_committed() > 300);
    let mut copies = Vec::new();
    for k in 0..3 {
        let out = dir.path().join(format!("copy-{k}.db"));
        let before = progress.last_committed_id();
        let report = clipd::store::backup(&path, &out).unwrap();
        let after = progress.last_committed_id();
        copies.push((out, before, after, report));
    }
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    writer.join().unwrap();
    for (out, before, after, report) in copies {
        assert_eq!(integrity(&out), "ok");
        let got = ids(&out);
        let n = got.len() as i64;
        // Exactly the rows of one commit: 1..=n, no gaps, none missing.
        assert_eq!(got, (1..=n).collect::<Vec<_>>());
        assert!(n >= before && n <= after, "{n} not in {before}..={after}");
        assert_eq!(report.frames, Some(n as u64));
        assert!(!PathBuf::from(format!("{}-wal", out.display())).exists());
    }
}

// ---- `clipd db` --------------------------------------------------------------

fn clipd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_clipd"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn history(path: &Path, n: i64) {
    let mut store = Store::open(path, &opts()).unwrap();
    let frames: Vec<FrameRecord> = (1..=n).map(|i| heavy(i, 1_000 + i)).collect();
    store.insert_frames(&frames).unwrap();
}

#[test]
fn db_check_reports_a_sound_file_and_fails_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    history(&path, 600);
    let d = path.to_str().unwrap();
    let o = clipd(&["db", "check", "--db", d]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("integrity:   ok"), "{out}");
    assert!(out.contains("frames:      600"), "{out}");
    assert!(out.contains("auto_vacuum incremental"), "{out}");

    damage(&path);
    let o = clipd(&["db", "check", "--db", d]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(d) && err.contains("damaged"), "{err}");
    assert!(path.exists(), "check never moves the file");

    let o = clipd(&[
        "db",
        "check",
        "--db",
        dir.path().join("none.db").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(4));
    assert!(!dir.path().join("none.db").exists());
    let o = clipd(&["db", "check", "--db", d, "--bogus"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn db_backup_writes_a_checked_copy_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    history(&path, 50);
    let out = dir.path().join("copy.db");
    let args = [
        "db",
        "backup",
        "--db",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let o = clipd(&args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("50 frames"));
    assert_eq!(ids(&out), (1..=50).collect::<Vec<_>>());
    let o = clipd(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("copy.db"), "{err}");
}

#[test]
fn db_vacuum_shrinks_the_file_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    history(&path, 1500);
    raw(&path)
        .execute("DELETE FROM frames WHERE id > 100", [])
        .unwrap();
    let d = path.to_str().unwrap();
    let size = || std::fs::metadata(&path).unwrap().len();
    let before = size();
    let o = clipd(&["db", "vacuum", "--incremental", "--db", d]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let after_incremental = size();
    assert!(
        after_incremental < before / 3,
        "{before} -> {after_incremental}"
    );
    let o = clipd(&["db", "vacuum", "--db", d]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(size() <= after_incremental);
    assert_eq!(ids(&path), (1..=100).collect::<Vec<_>>());

    // A file without incremental auto-vacuum: --incremental explains, a full
    // vacuum converts it.
    let plain = dir.path().join("plain.db");
    raw(&plain)
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    let p = plain.to_str().unwrap();
    let o = clipd(&["db", "vacuum", "--incremental", "--db", p]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("without --incremental"), "{err}");
    assert_eq!(clipd(&["db", "vacuum", "--db", p]).status.code(), Some(0));
    assert_eq!(scalar(&plain, "PRAGMA auto_vacuum"), 2);
}
