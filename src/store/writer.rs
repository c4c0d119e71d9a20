//! The store thread: turns a stream of [`FrameRecord`]s into batched
//! commits, applies the refiner's passes in order with them, and runs
//! retention between commits.
//!
//! A commit costs (at least) one write barrier on the storage device; on an
//! SD card that is milliseconds, so committing per frame would cap the
//! pipeline. Batching every `batch_rows` rows bounds that cost, and the
//! `batch_ms` deadline bounds how long a frame waits in memory when frames
//! arrive slowly.
//!
//! A failed commit (full disk, an I/O error, a lock held too long) is rolled
//! back and its frames stay pending in memory: the thread keeps receiving,
//! retries with a growing pause (running retention first, which may free
//! pages), and when the pending frames exceed
//! [`StoreOptions::pending_limit`](crate::store::StoreOptions::pending_limit)
//! drops the oldest, counted. It logs once when writing starts failing and
//! once when it recovers, never per frame, and never panics or stops for a
//! transient error. Only a damaged file stops it (retrying cannot help; the
//! daemon exits and the next start moves the file aside).
//!
//! After every commit it logs, at debug level with target `clipd::commit`,
//! `committed {n} frames through id {max_id}`: a line written only once the
//! rows are durable against a crash of the process, which the crash tests
//! hold it to. Counters for `clipd status` are in a shared
//! [`WriterProgress`].

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::store::retention::Pruner;
use crate::store::{now_ms, FrameRecord, RefinementRecord, Store, StoreError};

/// The log target of the per-commit line (see the module docs).
pub const COMMIT_LOG_TARGET: &str = "clipd::commit";

/// First pause before retrying a failed commit; doubles up to
/// [`RETRY_MAX`]. Short enough that a transient lock costs little, long
/// enough that a full disk is not hammered.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Refiner passes held while commits fail (they must follow the frames they
/// refine); beyond it the oldest is dropped.
const HELD_REFINEMENTS: usize = 16;

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

/// Live counters of a writer thread, shared with whoever holds an
/// `Arc<WriterProgress>` (the daemon's status file, tests). Every field is
/// an atomic updated by the writer alone: reading is free and never waits
/// for a commit. Updates are release stores and reads acquire loads, so a
/// reader that sees a counter move also sees everything the writer did
/// before it (with relaxed ordering an ARM core may show a later update
/// before an earlier one). Fields are read one at a time: a snapshot taken
/// while the writer is busy may mix moments.
#[derive(Debug, Default)]
pub struct WriterProgress {
    rows_committed: AtomicU64,
    last_committed_id: AtomicI64,
    commits: AtomicU64,
    pending: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    commit_errors: AtomicU64,
    pruned_rows: AtomicU64,
    db_bytes: AtomicU64,
    failing: AtomicBool,
    stopped: AtomicBool,
}

/// A copy of [`WriterProgress`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProgressSnapshot {
    /// Frames committed since the writer started.
    pub rows_committed: u64,
    /// Largest frame id committed so far (0 before the first commit).
    pub last_committed_id: i64,
    /// Successful commits.
    pub commits: u64,
    /// Frames received and not yet committed.
    pub pending: u64,
    /// Frames dropped unwritten (held too long while commits failed, or
    /// still pending when the writer stopped).
    pub dropped: u64,
    /// Frames refused as invalid.
    pub rejected: u64,
    /// Commit attempts that failed (each failed retry counts).
    pub commit_errors: u64,
    /// Frames deleted by retention.
    pub pruned_rows: u64,
    /// Database size (pages × page size) after the last commit or pass.
    pub db_bytes: u64,
    /// True while commits are failing.
    pub failing: bool,
    /// True once the thread has finished.
    pub stopped: bool,
}

impl WriterProgress {
    pub fn snapshot(&self) -> ProgressSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Acquire);
        ProgressSnapshot {
            rows_committed: get(&self.rows_committed),
            last_committed_id: self.last_committed_id.load(Ordering::Acquire),
            commits: get(&self.commits),
            pending: get(&self.pending),
            dropped: get(&self.dropped),
            rejected: get(&self.rejected),
            commit_errors: get(&self.commit_errors),
            pruned_rows: get(&self.pruned_rows),
            db_bytes: get(&self.db_bytes),
            failing: self.failing.load(Ordering::Acquire),
            stopped: self.stopped.load(Ordering::Acquire),
        }
    }

    pub fn rows_committed(&self) -> u64 {
        self.rows_committed.load(Ordering::Acquire)
    }

    pub fn last_committed_id(&self) -> i64 {
        self.last_committed_id.load(Ordering::Acquire)
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Release);
    }
}

/// What the writer did over its life, returned when its channel closes.
#[derive(Debug, Default)]
pub struct WriterSummary {
    /// Frames committed to the database.
    pub rows_written: u64,
    /// Successful commits.
    pub batches: u64,
    /// Commit attempts that failed and were retried (or, at the end, not).
    pub failed_batches: u64,
    /// Frames never written: dropped while commits failed, or still pending
    /// when the writer stopped.
    pub rows_lost: u64,
    /// Frames refused as invalid (see [`FrameRecord::validate`]).
    pub rows_rejected: u64,
    /// Refiner passes recorded, and passes that failed to be.
    pub refinements: u64,
    pub refinements_failed: u64,
    /// Frames deleted by retention.
    pub rows_pruned: u64,
    /// Failures that lost something: rejected frames, frames dropped or
    /// left unwritten, failed refinements, a failed final checkpoint. A
    /// failed commit whose frames were written on a retry is not one.
    pub errors: u64,
    /// The first of those failures, for the exit message.
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
        if self.rows_pruned > 0 {
            write!(f, ", {} old frames deleted by retention", self.rows_pruned)?;
        }
        if self.failed_batches > 0 && self.errors == 0 {
            write!(
                f,
                "; {} failed commits, all retried successfully",
                self.failed_batches
            )?;
        }
        if self.errors > 0 {
            write!(
                f,
                "; {} errors ({} frames lost, {} failed commits, {} rejected)",
                self.errors, self.rows_lost, self.failed_batches, self.rows_rejected
            )?;
            if let Some(e) = &self.first_error {
                write!(f, "; first: {e}")?;
            }
        }
        Ok(())
    }
}

/// A running writer thread: join it for its [`WriterSummary`], or read its
/// [`WriterProgress`] meanwhile.
#[derive(Debug)]
pub struct WriterHandle {
    thread: JoinHandle<WriterSummary>,
    progress: Arc<WriterProgress>,
}

impl WriterHandle {
    /// The thread's live counters.
    pub fn progress(&self) -> Arc<WriterProgress> {
        Arc::clone(&self.progress)
    }

    /// Waits for the thread (it ends once every sender is dropped).
    pub fn join(self) -> std::thread::Result<WriterSummary> {
        self.thread.join()
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// State while commits fail.
#[derive(Debug)]
struct Failing {
    since: Instant,
    attempts: u32,
    retry_at: Instant,
    /// The error that started the episode, until a loss needs reporting.
    error: Option<StoreError>,
    /// Whether frames have been dropped in this episode (logged once).
    dropping: bool,
}

/// Owns a [`Store`] and commits the frames it receives in batches.
pub struct BatchWriter {
    store: Store,
    pending: VecDeque<FrameRecord>,
    held_refinements: VecDeque<Box<RefinementRecord>>,
    summary: WriterSummary,
    progress: Arc<WriterProgress>,
    pruner: Option<Pruner>,
    batch_rows: usize,
    batch_wait: Duration,
    pending_limit: usize,
    /// When pending frames must be committed at the latest.
    deadline: Option<Instant>,
    /// When the next retention step is due (`None`: no retention).
    next_prune: Option<Instant>,
    /// Whether the last retention step failed (logged once per episode).
    prune_failing: bool,
    failing: Option<Failing>,
    /// The file is damaged: stop taking frames.
    fatal: bool,
}

impl BatchWriter {
    /// Starts the writer on its own thread (named `clipd-store`). It runs
    /// until every sender of `rx` is dropped, then commits what is pending,
    /// checkpoints the WAL and returns its summary through the handle.
    pub fn spawn(store: Store, rx: Receiver<WriteOp>) -> std::io::Result<WriterHandle> {
        let progress = Arc::new(WriterProgress::default());
        let shared = Arc::clone(&progress);
        let thread = std::thread::Builder::new()
            .name("clipd-store".into())
            .spawn(move || BatchWriter::run_with_progress(store, rx, shared))?;
        Ok(WriterHandle { thread, progress })
    }

    /// The writer loop on the calling thread; see [`BatchWriter::spawn`].
    pub fn run(store: Store, rx: Receiver<WriteOp>) -> WriterSummary {
        BatchWriter::run_with_progress(store, rx, Arc::new(WriterProgress::default()))
    }

    /// [`BatchWriter::run`], publishing counters to `progress`.
    pub fn run_with_progress(
        store: Store,
        rx: Receiver<WriteOp>,
        progress: Arc<WriterProgress>,
    ) -> WriterSummary {
        let mut w = BatchWriter::new(store, progress);
        while !w.fatal {
            let next = match w.next_wake() {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(t) => rx.recv_timeout(t.saturating_duration_since(Instant::now())),
            };
            match next {
                Ok(op) => w.handle(op),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            w.on_timers(Instant::now());
        }
        w.finish()
    }

    fn new(store: Store, progress: Arc<WriterProgress>) -> BatchWriter {
        let opts = *store.options();
        let pruner = opts
            .retention
            .is_enabled()
            .then(|| Pruner::new(opts.retention));
        if let Ok(bytes) = store.db_bytes() {
            progress.db_bytes.store(bytes, Ordering::Release);
        }
        BatchWriter {
            pending: VecDeque::with_capacity(opts.batch_rows.max(1)),
            held_refinements: VecDeque::new(),
            summary: WriterSummary::default(),
            progress,
            // The first pass runs at once: a database that grew past its
            // limits while the daemon was stopped is pruned on start.
            next_prune: pruner.as_ref().map(|_| Instant::now()),
            pruner,
            batch_rows: opts.batch_rows.max(1),
            batch_wait: Duration::from_millis(opts.batch_ms),
            pending_limit: opts.pending_limit().max(1),
            deadline: None,
            prune_failing: false,
            failing: None,
            fatal: false,
            store,
        }
    }

    /// The earliest moment something is due without a new message.
    fn next_wake(&self) -> Option<Instant> {
        let commit = match &self.failing {
            Some(f) => Some(f.retry_at),
            None => self.deadline,
        };
        let prune = if self.failing.is_some() {
            None
        } else {
            self.next_prune
        };
        match (commit, prune) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle(&mut self, op: WriteOp) {
        match op {
            WriteOp::Frame(frame) => {
                if let Err(reason) = frame.validate() {
                    self.reject(&frame, reason);
                    return;
                }
                self.push_pending(frame);
                if self.failing.is_none() && self.pending.len() >= self.batch_rows {
                    self.commit();
                }
            }
            WriteOp::Refine(r) => {
                if self.failing.is_none() {
                    self.commit();
                }
                if self.failing.is_some() {
                    self.hold_refinement(r);
                } else {
                    self.refine(&r);
                }
            }
        }
    }

    fn on_timers(&mut self, now: Instant) {
        match &self.failing {
            Some(f) if now >= f.retry_at => {
                // Retention may free pages the retry can use.
                self.prune_whole_pass();
                self.commit();
            }
            Some(_) => {}
            None => {
                if self.deadline.is_some_and(|d| now >= d) {
                    self.commit();
                }
            }
        }
        if self.failing.is_none() && self.next_prune.is_some_and(|t| now >= t) {
            self.prune_step(now);
        }
    }

    fn push_pending(&mut self, frame: FrameRecord) {
        if self.pending.is_empty() && self.failing.is_none() {
            self.deadline = Some(Instant::now() + self.batch_wait);
        }
        if self.pending.len() >= self.pending_limit {
            self.pending.pop_front();
            self.note_dropped(1);
        }
        self.pending.push_back(frame);
        self.publish_pending();
    }

    fn publish_pending(&self) {
        self.progress
            .pending
            .store(self.pending.len() as u64, Ordering::Release);
    }

    /// Counts `n` frames as lost; the first loss of a failing episode is
    /// logged and reported with the error that started it.
    fn note_dropped(&mut self, n: u64) {
        self.summary.rows_lost += n;
        WriterProgress::add(&self.progress.dropped, n);
        if let Some(f) = &mut self.failing {
            if !f.dropping {
                f.dropping = true;
                log::warn!(
                    "database {}: still cannot write; dropping the oldest held frames (holding at most {})",
                    self.store.path().display(),
                    self.pending_limit
                );
                if let Some(e) = f.error.take() {
                    self.summary.record_error(e);
                }
            }
        }
    }

    fn hold_refinement(&mut self, r: Box<RefinementRecord>) {
        if self.held_refinements.len() >= HELD_REFINEMENTS {
            self.held_refinements.pop_front();
            self.summary.refinements_failed += 1;
            self.summary.errors += 1;
        }
        self.held_refinements.push_back(r);
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
        WriterProgress::add(&self.progress.rejected, 1);
        self.summary.record_error(e);
    }

    /// Commits every pending frame, in transactions of at most `batch_rows`
    /// (normally there is just one). On failure the uncommitted frames stay
    /// pending and a retry is scheduled. Returns whether all were committed.
    ///
    /// While catching up after failures, retention runs between chunks: on
    /// a capped file each chunk needs the pages the pass before it freed.
    fn commit(&mut self) -> bool {
        let recovering = self.failing.is_some();
        let mut first = true;
        while !self.pending.is_empty() {
            if recovering && !first {
                self.prune_whole_pass();
            }
            first = false;
            let n = self.pending.len().min(self.batch_rows);
            if !self.commit_chunk(n) {
                return false;
            }
        }
        self.deadline = None;
        self.publish_pending();
        if let Some(f) = self.failing.take() {
            self.progress.failing.store(false, Ordering::Release);
            log::info!(
                "database {}: writing again after {:.0} s and {} failed attempts; held frames committed ({} dropped in all)",
                self.store.path().display(),
                f.since.elapsed().as_secs_f64(),
                f.attempts,
                self.summary.rows_lost
            );
        }
        while let Some(r) = self.held_refinements.pop_front() {
            self.refine(&r);
        }
        true
    }

    /// Commits the `n` oldest pending frames in one transaction.
    fn commit_chunk(&mut self, n: usize) -> bool {
        let frames = &self.pending.make_contiguous()[..n];
        let explicit_max = frames.iter().filter_map(|f| f.id).max();
        match self.store.insert_frames(frames) {
            Ok(_) => {
                let max_id = explicit_max
                    .unwrap_or(i64::MIN)
                    .max(self.store.last_insert_rowid());
                self.pending.drain(..n);
                self.committed(n as u64, max_id);
                true
            }
            Err(e) if e.is_constraint() => self.commit_one_by_one(n),
            Err(e) => {
                self.commit_failed(e);
                false
            }
        }
    }

    /// A constraint violation is one row's fault (a duplicate id from a
    /// second writer): insert the `n` oldest frames row by row and reject
    /// only the culprits.
    fn commit_one_by_one(&mut self, n: usize) -> bool {
        for _ in 0..n {
            let Some(frame) = self.pending.pop_front() else {
                break;
            };
            match self.store.insert_frames(std::slice::from_ref(&frame)) {
                Ok(_) => {
                    let id = frame
                        .id
                        .unwrap_or(i64::MIN)
                        .max(self.store.last_insert_rowid());
                    self.committed(1, id);
                }
                Err(e) if e.is_constraint() => {
                    log::warn!("{e} ({}; frame not stored)", frame.describe());
                    self.summary.rows_rejected += 1;
                    WriterProgress::add(&self.progress.rejected, 1);
                    self.summary.record_error(e);
                }
                Err(e) => {
                    self.pending.push_front(frame);
                    self.commit_failed(e);
                    return false;
                }
            }
        }
        true
    }

    /// Bookkeeping for `n` frames committed, the largest id `max_id`.
    fn committed(&mut self, n: u64, max_id: i64) {
        log::debug!(target: COMMIT_LOG_TARGET, "committed {n} frames through id {max_id}");
        self.summary.rows_written += n;
        self.summary.batches += 1;
        let p = &self.progress;
        WriterProgress::add(&p.rows_committed, n);
        WriterProgress::add(&p.commits, 1);
        p.last_committed_id.fetch_max(max_id, Ordering::Release);
        if let Ok(bytes) = self.store.db_bytes() {
            p.db_bytes.store(bytes, Ordering::Release);
        }
        if let Some(pruner) = &mut self.pruner {
            pruner.note_inserted(n);
        }
        self.publish_pending();
    }

    fn commit_failed(&mut self, e: StoreError) {
        self.summary.failed_batches += 1;
        WriterProgress::add(&self.progress.commit_errors, 1);
        self.publish_pending();
        if e.is_corrupt() {
            log::error!(
                "{e}; the writer stops (restart the daemon: a damaged file is moved aside at start)"
            );
            self.summary.record_error(e);
            self.fatal = true;
            return;
        }
        let now = Instant::now();
        let n = self.pending.len();
        match &mut self.failing {
            Some(f) => {
                f.attempts += 1;
                f.retry_at = now + retry_delay(f.attempts);
                log::debug!("{e}; still holding {n} frames");
            }
            None => {
                let path = self.store.path().display();
                match &e {
                    StoreError::DiskFull { cause, .. } => log::error!(
                        "database {path} full: {cause}; holding {n} frames, retrying; \
                         free space or set store.max_size_mb"
                    ),
                    _ => log::error!("{e}; holding {n} frames, retrying"),
                }
                self.progress.failing.store(true, Ordering::Release);
                self.failing = Some(Failing {
                    since: now,
                    attempts: 1,
                    retry_at: now + retry_delay(1),
                    error: Some(e),
                    dropping: false,
                });
            }
        }
    }

    /// One retention step; the next is due at once while a pass is under
    /// way (after at most one message), else after the policy's interval.
    fn prune_step(&mut self, now: Instant) {
        let Some(pruner) = &mut self.pruner else {
            return;
        };
        let every = pruner.policy().every;
        match pruner.step(&mut self.store, now_ms()) {
            Ok(None) => self.next_prune = Some(now),
            Ok(Some(report)) => {
                self.next_prune = Some(now + every);
                self.pruned(&report);
            }
            Err(e) => {
                self.next_prune = Some(now + every);
                self.prune_error(e);
            }
        }
    }

    /// A whole pass at once, for a writer that cannot commit.
    fn prune_whole_pass(&mut self) {
        let Some(pruner) = &mut self.pruner else {
            return;
        };
        match pruner.run_pass(&mut self.store, now_ms()) {
            Ok(report) => self.pruned(&report),
            Err(e) => self.prune_error(e),
        }
    }

    fn pruned(&mut self, report: &crate::store::PruneReport) {
        if self.prune_failing {
            self.prune_failing = false;
            log::info!(
                "database {}: retention works again",
                self.store.path().display()
            );
        }
        self.summary.rows_pruned += report.frames();
        WriterProgress::add(&self.progress.pruned_rows, report.frames());
        self.progress
            .db_bytes
            .store(report.db_bytes, Ordering::Release);
        if report.frames() > 0 || report.pages_released > 0 {
            log::debug!(
                "database {}: retention deleted {} frames ({} by age, {} by count, {} by size), \
                 {} state changes, {} refinement runs; released {} pages; now {:.1} MiB",
                self.store.path().display(),
                report.frames(),
                report.by_age,
                report.by_rows,
                report.by_size,
                report.state_changes,
                report.refinements,
                report.pages_released,
                report.db_bytes as f64 / (1024.0 * 1024.0)
            );
        }
    }

    fn prune_error(&mut self, e: StoreError) {
        if self.prune_failing {
            log::debug!("{e} (retention)");
        } else {
            self.prune_failing = true;
            log::warn!("{e} (retention will try again)");
        }
    }

    /// The channel closed: one last commit (after retention, if commits
    /// were failing), the held refinements, a truncating checkpoint and
    /// `PRAGMA optimize`.
    fn finish(mut self) -> WriterSummary {
        if !self.fatal {
            if self.failing.is_some() {
                self.prune_whole_pass();
            }
            self.commit();
        }
        let unwritten = self.pending.len() as u64;
        if unwritten > 0 {
            self.summary.rows_lost += unwritten;
            WriterProgress::add(&self.progress.dropped, unwritten);
            self.pending.clear();
            log::error!(
                "database {}: {unwritten} frames could not be written before exit",
                self.store.path().display()
            );
            match self.failing.as_mut().and_then(|f| f.error.take()) {
                Some(e) => self.summary.record_error(e),
                // Already reported when frames were first dropped (or the
                // file is damaged, reported when found).
                None if !self.fatal => self.summary.errors += 1,
                None => {}
            }
        }
        let lost_refinements = self.held_refinements.len() as u64;
        if lost_refinements > 0 {
            self.summary.refinements_failed += lost_refinements;
            self.summary.errors += lost_refinements;
        }
        self.publish_pending();
        if !self.fatal {
            if let Err(e) = self.store.optimize() {
                log::debug!("{e}");
            }
            // Leave one self-contained file behind: the WAL folded in and
            // truncated, so copying the .db alone is a complete backup.
            if let Err(e) = self.store.checkpoint() {
                log::warn!("{e}");
                self.summary.record_error(e);
            }
        }
        self.progress.stopped.store(true, Ordering::Release);
        log::debug!("database {}: {}", self.store.path().display(), self.summary);
        self.summary
    }
}

/// Pause before retry `attempt` (1-based): doubling from [`RETRY_FIRST`]
/// up to [`RETRY_MAX`].
fn retry_delay(attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(factor).min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{count, rec};
    use crate::store::{FrameFilter, Retention, StoreOptions};
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
    /// Polls `done` every 10 ms for up to 10 s; the caller asserts after.
    fn poll_until(mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_for_rows(path: &Path, want: usize) -> usize {
        let reader = Store::open_read_only(path).unwrap();
        let count = || reader.query_frames(&FrameFilter::default()).unwrap().len();
        poll_until(|| count() >= want);
        count()
    }

    fn big(i: i64) -> FrameRecord {
        let mut r = rec(i, "cam", "dog", 0.5);
        r.id = Some(i + 1);
        r.embedding = Some(vec![0.25; 1024]);
        r
    }

    #[test]
    fn commits_by_row_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let (tx, rx) = mpsc::channel();
        // The timer is far away: only the row count can trigger commits.
        let handle = BatchWriter::spawn(open(&path, 10, 600_000), rx).unwrap();
        let progress = handle.progress();
        for i in 0..25 {
            tx.send(rec(i, "cam", "dog", 0.5).into()).unwrap();
        }
        assert_eq!(wait_for_rows(&path, 20), 20);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(wait_for_rows(&path, 20), 20, "5 rows still pending");
        // The counters follow the commit a moment later and are read one
        // by one: poll until all of them have caught up, then read them
        // again from the idle writer.
        let settled = |p: &ProgressSnapshot| {
            (p.rows_committed, p.commits, p.pending, p.last_committed_id) == (20, 2, 5, 20)
        };
        poll_until(|| settled(&progress.snapshot()));
        let p = progress.snapshot();
        assert_eq!((p.rows_committed, p.commits, p.pending), (20, 2, 5));
        assert_eq!(p.last_committed_id, 20, "SQLite numbered the rows 1..");
        assert!(p.db_bytes > 0 && !p.failing && !p.stopped, "{p:?}");
        drop(tx);
        let s = handle.join().unwrap();
        assert_eq!((s.rows_written, s.batches), (25, 3), "{s}");
        assert!(s.is_clean(), "{s}");
        assert_eq!(wait_for_rows(&path, 25), 25, "flushed on close");
        let p = progress.snapshot();
        assert_eq!((p.rows_committed, p.pending, p.stopped), (25, 0, true));
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
    fn a_duplicate_id_rejects_that_row_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let mut store = open(&path, 100, 600_000);
        store.insert_frames(&[big(4)]).unwrap(); // id 5
        let (tx, rx) = mpsc::channel();
        for i in 0..8 {
            tx.send(big(i).into()).unwrap(); // ids 1..=8, 5 taken
        }
        drop(tx);
        let s = BatchWriter::run(store, rx);
        assert_eq!((s.rows_written, s.rows_rejected), (7, 1), "{s}");
        assert!(s.first_error.as_ref().unwrap().is_constraint());
        assert_eq!(count(&open(&path, 1, 1)), 8);
    }

    /// A writer driven by hand: no thread, no clock, so a test can fail a
    /// commit, look, lift the cause and retry.
    fn manual(path: &Path, opts: StoreOptions) -> BatchWriter {
        let store = Store::open(path, &opts).unwrap();
        BatchWriter::new(store, Arc::new(WriterProgress::default()))
    }

    fn page_count(w: &BatchWriter) -> i64 {
        w.store
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_full_database_holds_frames_and_writes_them_when_space_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let opts = StoreOptions {
            batch_rows: 4,
            max_pending_rows: 40,
            ..StoreOptions::default()
        };
        let mut w = manual(&path, opts);
        // Cap the file a little above its empty size, as a full volume would.
        let cap = page_count(&w) + 12;
        w.store
            .conn
            .pragma_update(None, "max_page_count", cap)
            .unwrap();
        for i in 0..30 {
            w.handle(big(i).into());
        }
        let p = w.progress.snapshot();
        assert!(p.failing, "{p:?}");
        assert!(p.rows_committed > 0 && p.rows_committed < 30, "{p:?}");
        assert_eq!(p.rows_committed + p.pending, 30, "nothing dropped yet");
        assert!(p.commit_errors >= 1, "{p:?}");
        assert_eq!(w.summary.errors, 0, "holding is not losing");
        // The database itself is intact and holds exactly the committed rows.
        let check: String = w
            .store
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        assert_eq!(count(&w.store) as u64, p.rows_committed);

        // Space returns; the retry commits every held frame.
        w.store
            .conn
            .pragma_update(None, "max_page_count", 1_000_000)
            .unwrap();
        w.on_timers(Instant::now() + RETRY_MAX);
        let p = w.progress.snapshot();
        assert!(!p.failing, "{p:?}");
        assert_eq!((p.rows_committed, p.pending, p.dropped), (30, 0, 0));
        assert_eq!(p.last_committed_id, 30);
        assert_eq!(count(&w.store), 30);
        let s = w.finish();
        assert!(s.is_clean(), "{s}");
        assert!(s.failed_batches >= 1, "{s}");
    }

    #[test]
    fn beyond_the_limit_the_oldest_held_frames_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let opts = StoreOptions {
            batch_rows: 2,
            max_pending_rows: 5,
            ..StoreOptions::default()
        };
        let mut w = manual(&path, opts);
        let pages = page_count(&w);
        w.store
            .conn
            .pragma_update(None, "max_page_count", pages)
            .unwrap();
        for i in 0..12 {
            w.handle(big(i).into());
        }
        let p = w.progress.snapshot();
        assert_eq!((p.rows_committed, p.pending, p.dropped), (0, 5, 7), "{p:?}");
        let kept: Vec<i64> = w.pending.iter().filter_map(|f| f.id).collect();
        assert_eq!(kept, [8, 9, 10, 11, 12], "the newest are kept");
        w.store
            .conn
            .pragma_update(None, "max_page_count", 1_000_000)
            .unwrap();
        let s = w.finish();
        assert_eq!((s.rows_written, s.rows_lost), (5, 7), "{s}");
        assert!(s.first_error.as_ref().unwrap().is_disk_full(), "{s}");
    }

    #[test]
    fn a_refinement_waits_for_the_frames_it_refines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let opts = StoreOptions {
            batch_rows: 100,
            ..StoreOptions::default()
        };
        let mut w = manual(&path, opts);
        let pages = page_count(&w);
        w.store
            .conn
            .pragma_update(None, "max_page_count", pages)
            .unwrap();
        for i in 0..3 {
            w.handle(big(i).into());
        }
        w.handle(WriteOp::Refine(Box::new(RefinementRecord {
            ts_ms: 10,
            algorithm: "em-dirichlet".into(),
            params: "{}".into(),
            n_frames: 3,
            n_changed: 1,
            duration_ms: 1,
            labels: vec![(2, "cat".into(), 0.9)],
            state_changes: vec![],
        })));
        assert!(w.progress.is_failing());
        assert_eq!(w.held_refinements.len(), 1);
        w.store
            .conn
            .pragma_update(None, "max_page_count", 1_000_000)
            .unwrap();
        w.on_timers(Instant::now() + RETRY_MAX);
        let refined: Option<String> = w
            .store
            .conn
            .query_row("SELECT refined_label FROM frames WHERE id = 2", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(refined.as_deref(), Some("cat"));
        let s = w.finish();
        assert_eq!((s.refinements, s.errors), (1, 0), "{s}");
    }

    #[test]
    fn retention_frees_pages_for_a_full_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let opts = StoreOptions {
            batch_rows: 4,
            retention: Retention {
                max_rows: Some(8),
                batch: 3,
                every: Duration::from_secs(3600),
                ..Retention::default()
            },
            ..StoreOptions::default()
        };
        let mut w = manual(&path, opts);
        // The first (start-up) pass finds nothing to do.
        w.on_timers(Instant::now());
        while w.pruner.as_ref().unwrap().in_pass() {
            w.on_timers(Instant::now());
        }
        let cap = page_count(&w) + 14;
        w.store
            .conn
            .pragma_update(None, "max_page_count", cap)
            .unwrap();
        let mut i = 0;
        while !w.progress.is_failing() {
            w.handle(big(i).into());
            i += 1;
            assert!(i < 200, "the cap never filled");
        }
        // Retries prune down to 8 frames, freeing pages, until the held
        // frames fit; the cap stays where it is.
        for _ in 0..20 {
            if !w.progress.is_failing() {
                break;
            }
            w.on_timers(Instant::now() + RETRY_MAX);
        }
        let p = w.progress.snapshot();
        assert!(!p.failing, "{p:?}");
        assert!(p.pruned_rows > 0, "{p:?}");
        assert_eq!(p.rows_committed, i as u64, "{p:?}");
        assert_eq!(p.dropped, 0);
        let ids: Vec<i64> = w
            .store
            .conn
            .prepare("SELECT id FROM frames ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(*ids.last().unwrap(), i, "the newest frame is stored");
        let s = w.finish();
        assert!(s.is_clean(), "{s}");
    }

    #[test]
    fn retry_delays_grow_and_are_capped() {
        assert_eq!(retry_delay(1), RETRY_FIRST);
        assert_eq!(retry_delay(2), RETRY_FIRST * 2);
        assert!(retry_delay(5) > retry_delay(4));
        assert_eq!(retry_delay(40), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }
}
