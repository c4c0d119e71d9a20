//! The store thread: turns a stream of [`FrameRecord`]s into batched
//! commits, and applies the refiner's passes in order with them.
//!
//! A commit costs (at least) one write barrier on the storage device; on an
//! SD card that is milliseconds, so committing per frame would cap the
//! pipeline. Batching every `batch_rows` rows bounds that cost, and the
//! `batch_ms` deadline bounds how long a frame waits in memory when frames
//! arrive slowly.
//!
//! A failed commit (full disk, a locked file) never stops the thread or
//! panics: that batch is counted as lost, the error is logged once when
//! writing starts failing and once when it recovers, and later batches are
//! tried normally, since space may be freed meanwhile. Earlier commits stay.

use std::fmt;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store::{FrameRecord, RefinementRecord, Store, StoreError};

/// What the writer thread is asked to do.
// Frames are nearly every message, so they travel unboxed (no allocation per frame); the rare
// refinement is boxed. A 240-byte channel slot is nothing at these queue lengths.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum WriteOp {
    /// Log one frame (batched).
    Frame(FrameRecord),
    /// Record a refiner pass. Pending frames are committed first, so the
    /// rows it refines are in the database when it is applied.
    Refine(Box<RefinementRecord>),
}

impl From<FrameRecord> for WriteOp {
    fn from(f: FrameRecord) -> Self {
        WriteOp::Frame(f)
    }
}

/// What the writer did over its life, returned when its channel closes.
#[derive(Debug, Default)]
pub struct WriterSummary {
    /// Frames committed to the database.
    pub rows_written: u64,
    /// Successful commits.
    pub batches: u64,
    /// Failed commits.
    pub failed_batches: u64,
    /// Frames in failed commits, not in the database.
    pub rows_lost: u64,
    /// Frames refused as invalid (see [`FrameRecord::validate`]).
    pub rows_rejected: u64,
    /// Refiner passes recorded, and passes that failed to be.
    pub refinements: u64,
    pub refinements_failed: u64,
    /// Failures of any kind: failed commits, rejected frames, and a failed
    /// final checkpoint.
    pub errors: u64,
    /// The first failure, for the exit message.
    pub first_error: Option<StoreError>,
}

impl WriterSummary {
    /// True when every frame received was committed.
    pub fn is_clean(&self) -> bool {
        self.errors == 0
    }

    fn record_error(&mut self, e: StoreError) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

impl fmt::Display for WriterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stored {} frames in {} batches",
            self.rows_written, self.batches
        )?;
        if self.errors > 0 {
            write!(
                f,
                "; {} errors ({} frames lost in {} failed commits, {} rejected)",
                self.errors, self.rows_lost, self.failed_batches, self.rows_rejected
            )?;
            if let Some(e) = &self.first_error {
                write!(f, "; first: {e}")?;
            }
        }
        Ok(())
    }
}

/// Owns a [`Store`] and commits the frames it receives in batches.
pub struct BatchWriter {
    store: Store,
    pending: Vec<FrameRecord>,
    summary: WriterSummary,
    /// Whether the last commit failed, so the log says so once per change of
    /// state rather than once per batch.
    failing: bool,
}

impl BatchWriter {
    /// Starts the writer on its own thread (named `clipd-store`). It runs
    /// until every sender of `rx` is dropped, then commits what is pending,
    /// checkpoints the WAL and returns its summary through the handle.
    pub fn spawn(
        store: Store,
        rx: Receiver<WriteOp>,
    ) -> std::io::Result<JoinHandle<WriterSummary>> {
        std::thread::Builder::new()
            .name("clipd-store".into())
            .spawn(move || BatchWriter::run(store, rx))
    }

    /// The writer loop on the calling thread; see [`BatchWriter::spawn`].
    pub fn run(store: Store, rx: Receiver<WriteOp>) -> WriterSummary {
        let opts = *store.options();
        let batch_rows = opts.batch_rows.max(1);
        let batch_wait = Duration::from_millis(opts.batch_ms);
        let mut w = BatchWriter {
            store,
            pending: Vec::with_capacity(batch_rows),
            summary: WriterSummary::default(),
            failing: false,
        };
        // Set when the first frame of a batch arrives; no deadline while idle,
        // so an idle writer sleeps in recv() instead of waking up.
        let mut deadline: Option<Instant> = None;
        loop {
            let next = match deadline {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
            };
            match next {
                Ok(WriteOp::Refine(r)) => {
                    w.commit();
                    deadline = None;
                    w.refine(&r);
                }
                Ok(WriteOp::Frame(frame)) => {
                    if let Err(reason) = frame.validate() {
                        w.reject(&frame, reason);
                        continue;
                    }
                    if w.pending.is_empty() {
                        deadline = Some(Instant::now() + batch_wait);
                    }
                    w.pending.push(frame);
                    if w.pending.len() >= batch_rows {
                        w.commit();
                        deadline = None;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    w.commit();
                    deadline = None;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        w.commit();
        // Leave one self-contained file behind: the WAL folded in and
        // truncated, so copying the .db alone is a complete backup.
        if let Err(e) = w.store.checkpoint() {
            log::warn!("{e}");
            w.summary.record_error(e);
        }
        log::debug!("database {}: {}", w.store.path().display(), w.summary);
        w.summary
    }

    fn refine(&mut self, r: &RefinementRecord) {
        match self.store.apply_refinement(r) {
            Ok(run) => {
                self.summary.refinements += 1;
                log::debug!(
                    "refinement run {run}: {} ({} frames, {} changed)",
                    r.algorithm,
                    r.n_frames,
                    r.n_changed
                );
            }
            Err(e) => {
                log::warn!("{e} (refinement of {} frames not recorded)", r.n_frames);
                self.summary.refinements_failed += 1;
                self.summary.record_error(e);
            }
        }
    }

    fn reject(&mut self, frame: &FrameRecord, reason: String) {
        let e = StoreError::InvalidRecord {
            path: self.store.path().to_path_buf(),
            what: frame.describe(),
            reason,
        };
        log::warn!("{e}");
        self.summary.rows_rejected += 1;
        self.summary.record_error(e);
    }

    fn commit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let n = self.pending.len() as u64;
        match self.store.insert_frames(&self.pending) {
            Ok(_) => {
                if self.failing {
                    log::info!(
                        "database {}: writing again after {} lost frames",
                        self.store.path().display(),
                        self.summary.rows_lost
                    );
                    self.failing = false;
                }
                self.summary.rows_written += n;
                self.summary.batches += 1;
            }
            Err(e) => {
                if self.failing {
                    log::debug!("{e} ({n} frames lost)");
                } else {
                    log::error!("{e} ({n} frames lost; will keep trying with the next batch)");
                    self.failing = true;
                }
                self.summary.failed_batches += 1;
                self.summary.rows_lost += n;
                self.summary.record_error(e);
            }
        }
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{count, rec};
    use crate::store::{FrameFilter, StoreOptions};
    use std::path::Path;
    use std::sync::mpsc;

    fn open(path: &Path, batch_rows: usize, batch_ms: u64) -> Store {
        let opts = StoreOptions {
            batch_rows,
            batch_ms,
            ..StoreOptions::default()
        };
        Store::open(path, &opts).unwrap()
    }

    /// Rows visible to a separate read-only connection, polled until `want`
    /// or a few seconds pass (thread scheduling on a loaded machine).
    fn wait_for_rows(path: &Path, want: usize) -> usize {
        let reader = Store::open_read_only(path).unwrap();
        let start = Instant::now();
        loop {
            let n = reader.query_frames(&FrameFilter::default()).unwrap().len();
            if n >= want || start.elapsed() > Duration::from_secs(10) {
                return n;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn commits_by_row_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let (tx, rx) = mpsc::channel();
        // The timer is far away: only the row count can trigger commits.
        let handle = BatchWriter::spawn(open(&path, 10, 600_000), rx).unwrap();
        for i in 0..25 {
            tx.send(rec(i, "cam", "dog", 0.5).into()).unwrap();
        }
        assert_eq!(wait_for_rows(&path, 20), 20);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(wait_for_rows(&path, 20), 20, "5 rows still pending");
        drop(tx);
        let s = handle.join().unwrap();
        assert_eq!((s.rows_written, s.batches), (25, 3), "{s}");
        assert!(s.is_clean(), "{s}");
        assert_eq!(wait_for_rows(&path, 25), 25, "flushed on close");
    }

    #[test]
    fn commits_by_timer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let (tx, rx) = mpsc::channel();
        let handle = BatchWriter::spawn(open(&path, 1000, 50), rx).unwrap();
        for i in 0..3 {
            tx.send(rec(i, "cam", "dog", 0.5).into()).unwrap();
        }
        // The sender stays open: only the 50 ms deadline can commit these.
        assert_eq!(wait_for_rows(&path, 3), 3);
        tx.send(rec(10, "cam", "cat", 0.5).into()).unwrap();
        assert_eq!(wait_for_rows(&path, 4), 4);
        drop(tx);
        let s = handle.join().unwrap();
        // Two deadlines passed; a stall between the first sends could split
        // the first batch, never merge the two.
        assert_eq!(s.rows_written, 4, "{s}");
        assert!(s.batches >= 2, "{s}");
    }

    #[test]
    fn flushes_and_checkpoints_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let (tx, rx) = mpsc::channel();
        let store = open(&path, 1000, 600_000);
        for i in 0..7 {
            tx.send(rec(i, "cam", "dog", 0.5).into()).unwrap();
        }
        drop(tx);
        let s = BatchWriter::run(store, rx);
        assert_eq!((s.rows_written, s.batches), (7, 1), "{s}");
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        // The connection is closed: the WAL is gone or empty after TRUNCATE.
        let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert_eq!(wal_len, 0);
        assert_eq!(count(&open(&path, 1, 1)), 7);
    }

    #[test]
    fn invalid_frames_are_rejected_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let (tx, rx) = mpsc::channel();
        let handle = BatchWriter::spawn(open(&path, 3, 600_000), rx).unwrap();
        tx.send(rec(1, "cam", "dog", 0.5).into()).unwrap();
        tx.send(FrameRecord::default().into()).unwrap();
        tx.send(rec(2, "cam", "dog", 0.5).into()).unwrap();
        drop(tx);
        let s = handle.join().unwrap();
        assert_eq!(
            (s.rows_written, s.rows_rejected, s.errors),
            (2, 1, 1),
            "{s}"
        );
        assert!(matches!(
            s.first_error,
            Some(StoreError::InvalidRecord { .. })
        ));
    }

    #[test]
    fn full_disk_is_reported_and_committed_rows_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let store = open(&path, 4, 600_000);
        // Cap the file a little above its empty size, as a full volume would.
        let pages: i64 = store
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        store
            .conn
            .pragma_update(None, "max_page_count", pages + 12)
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let handle = BatchWriter::spawn(store, rx).unwrap();
        for i in 0..40 {
            let mut r = rec(i, "cam", "dog", 0.5);
            r.embedding = Some(vec![0.25; 1024]);
            tx.send(r.into()).unwrap();
        }
        drop(tx);
        let s = handle.join().expect("the writer must not panic");
        assert!(s.rows_written > 0, "{s}");
        assert!(s.rows_lost > 0, "{s}");
        assert_eq!(s.rows_written + s.rows_lost, 40, "{s}");
        let e = s.first_error.as_ref().unwrap();
        assert!(e.is_disk_full(), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        let reader = Store::open_read_only(&path).unwrap();
        let stored = reader.query_frames(&FrameFilter::default()).unwrap().len();
        assert_eq!(stored as u64, s.rows_written);
    }
}
