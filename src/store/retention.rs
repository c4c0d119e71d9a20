//! Retention: keeping the history within an age, a row count and a file
//! size, oldest frames first.
//!
//! A daemon left running for months on an SD card must not fill it. Deleting
//! a month of frames in one statement would hold SQLite's write lock for
//! seconds (and make the WAL as large as the deleted data), so a pass is cut
//! into steps of at most [`Retention::batch`] rows, each its own small
//! transaction. The writer thread runs one step at a time between its
//! commits, so frames keep flowing while a large backlog is pruned.
//!
//! A pass, in order:
//! 1. frames older than `max_age`, then the oldest frames beyond `max_rows`,
//!    then the oldest frames until the live data is under `max_bytes`;
//! 2. what described only deleted frames: state changes older than the
//!    oldest remaining frame (except each source's latest, which is its
//!    current state) and refiner runs no remaining frame or state change
//!    names (so `refine_run_id` never dangles);
//! 3. `PRAGMA incremental_vacuum` in bounded steps, so freed pages leave the
//!    file (it needs `auto_vacuum = INCREMENTAL`; see `health.rs`);
//! 4. a passive checkpoint, which is when the file is actually truncated in
//!    WAL mode.

use std::time::Duration;

use rusqlite::{params, Connection};

use crate::store::{Ctx, Store, StoreError};

/// Pages released per `incremental_vacuum` step (16 MiB at the default
/// 4 KiB page size): large enough to catch up quickly, small enough that one
/// step is a short transaction on an SD card.
const VACUUM_STEP_PAGES: u64 = 4096;

/// Once the size limit is exceeded, a pass prunes down to this share of it,
/// so the next few minutes of frames do not trip it again at once.
const SIZE_LOW_WATER_PERCENT: u64 = 90;

/// What the history keeps. Every limit is optional; with none set,
/// retention never runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Delete frames captured longer ago than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many frames.
    pub max_rows: Option<u64>,
    /// Keep the live data of the database file (its pages less its free
    /// pages) under this many bytes. The WAL beside it is not counted: it is
    /// bounded by SQLite's automatic checkpoints (about 4 MiB).
    pub max_bytes: Option<u64>,
    /// How often the writer starts a pass.
    pub every: Duration,
    /// Rows deleted per transaction (0 is treated as 1).
    pub batch: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: None,
            max_rows: None,
            max_bytes: None,
            every: Duration::from_secs(60),
            batch: 500,
        }
    }
}

impl Retention {
    /// True when at least one limit is set.
    pub fn is_enabled(&self) -> bool {
        self.max_age.is_some() || self.max_rows.is_some() || self.max_bytes.is_some()
    }

    fn batch_rows(&self) -> u64 {
        self.batch.max(1) as u64
    }
}

/// What one retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Frames deleted for being older than `max_age`.
    pub by_age: u64,
    /// Frames deleted for exceeding `max_rows`.
    pub by_rows: u64,
    /// Frames deleted to get under `max_bytes`.
    pub by_size: u64,
    pub state_changes: u64,
    pub refinements: u64,
    /// Free pages handed back to the file system by `incremental_vacuum`.
    pub pages_released: u64,
    /// The database's size (pages × page size) when the pass ended.
    pub db_bytes: u64,
}

impl PruneReport {
    /// Frames deleted for any reason.
    pub fn frames(&self) -> u64 {
        self.by_age + self.by_rows + self.by_size
    }

    fn deleted_anything(&self) -> bool {
        self.frames() + self.state_changes + self.refinements + self.pages_released > 0
    }
}

/// Where a pass stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Frames,
    Dependents,
    Vacuum,
    Checkpoint,
}

#[derive(Debug)]
struct Pass {
    phase: Phase,
    /// Frames captured before this are too old (fixed when the pass starts).
    age_cutoff_ms: Option<i64>,
    /// Set once the size limit was found exceeded: prune down to this.
    size_target: Option<u64>,
    report: PruneReport,
}

/// Runs retention passes one bounded step at a time; see the module docs.
/// Keeps the frame count between passes (counting a large table on every
/// pass would read its whole index), which is exact because the writer that
/// owns this is the only connection that inserts or deletes frames.
#[derive(Debug)]
pub(crate) struct Pruner {
    policy: Retention,
    frame_count: Option<u64>,
    pass: Option<Pass>,
}

impl Pruner {
    pub(crate) fn new(policy: Retention) -> Pruner {
        Pruner {
            policy,
            frame_count: None,
            pass: None,
        }
    }

    pub(crate) fn policy(&self) -> &Retention {
        &self.policy
    }

    /// True between the first and the last step of a pass.
    #[cfg(test)]
    pub(crate) fn in_pass(&self) -> bool {
        self.pass.is_some()
    }

    /// Tells the pruner about committed frames, keeping its count exact.
    pub(crate) fn note_inserted(&mut self, n: u64) {
        if let Some(c) = &mut self.frame_count {
            *c += n;
        }
    }

    fn note_deleted(&mut self, n: u64) {
        if let Some(c) = &mut self.frame_count {
            *c = c.saturating_sub(n);
        }
    }

    /// Runs one step, starting a pass if none is under way. Returns the
    /// pass's report once its last step is done. On error the pass is
    /// abandoned (every finished step stays done) and the count re-read next
    /// time.
    pub(crate) fn step(
        &mut self,
        store: &mut Store,
        now_ms: i64,
    ) -> Result<Option<PruneReport>, StoreError> {
        let result = self.step_inner(store, now_ms);
        if result.is_err() {
            self.pass = None;
            self.frame_count = None;
        }
        result
    }

    /// A whole pass at once (for a writer that cannot commit and must free
    /// pages now, and for tests).
    pub(crate) fn run_pass(
        &mut self,
        store: &mut Store,
        now_ms: i64,
    ) -> Result<PruneReport, StoreError> {
        loop {
            if let Some(report) = self.step(store, now_ms)? {
                return Ok(report);
            }
        }
    }

    fn step_inner(
        &mut self,
        store: &mut Store,
        now_ms: i64,
    ) -> Result<Option<PruneReport>, StoreError> {
        let policy = self.policy;
        let mut pass = match self.pass.take() {
            Some(p) => p,
            None => Pass {
                phase: Phase::Frames,
                age_cutoff_ms: policy.max_age.map(|age| {
                    let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                    now_ms.saturating_sub(age_ms)
                }),
                size_target: None,
                report: PruneReport::default(),
            },
        };
        let next = match pass.phase {
            Phase::Frames => self.frames_step(store, &mut pass)?,
            Phase::Dependents => dependents_step(store, &mut pass, policy.batch_rows())?,
            Phase::Vacuum => vacuum_step(store, &mut pass)?,
            Phase::Checkpoint => {
                if pass.report.deleted_anything() {
                    store.checkpoint_passive()?;
                }
                pass.report.db_bytes = store.db_bytes()?;
                return Ok(Some(pass.report));
            }
        };
        pass.phase = next;
        self.pass = Some(pass);
        Ok(None)
    }

    /// Deletes one batch of frames for the first limit that is exceeded, or
    /// moves on when none is.
    fn frames_step(&mut self, store: &mut Store, pass: &mut Pass) -> Result<Phase, StoreError> {
        let batch = self.policy.batch_rows();
        if let Some(cutoff) = pass.age_cutoff_ms {
            let n = store.delete_frames_before(cutoff, batch)?;
            if n > 0 {
                pass.report.by_age += n;
                self.note_deleted(n);
                return Ok(Phase::Frames);
            }
        }
        if let Some(max) = self.policy.max_rows {
            let count = match self.frame_count {
                Some(c) => c,
                None => {
                    let c = store.frame_count()?;
                    self.frame_count = Some(c);
                    c
                }
            };
            if count > max {
                let n = store.delete_oldest_frames(batch.min(count - max))?;
                if n > 0 {
                    pass.report.by_rows += n;
                    self.note_deleted(n);
                    return Ok(Phase::Frames);
                }
                // The table is empty although the count said otherwise:
                // re-read it next pass.
                self.frame_count = None;
            }
        }
        if let Some(max) = self.policy.max_bytes {
            let live = store.live_bytes()?;
            if pass.size_target.is_none() && live > max {
                pass.size_target = Some(max / 100 * SIZE_LOW_WATER_PERCENT);
            }
            if let Some(target) = pass.size_target {
                if live > target {
                    let n = store.delete_oldest_frames(batch)?;
                    if n > 0 {
                        pass.report.by_size += n;
                        self.note_deleted(n);
                        return Ok(Phase::Frames);
                    }
                    // No frames left: the rest is schema and caches, which
                    // retention does not touch.
                }
            }
        }
        Ok(Phase::Dependents)
    }
}

/// Deletes one batch of state changes and refiner runs that only described
/// deleted frames.
fn dependents_step(store: &mut Store, pass: &mut Pass, batch: u64) -> Result<Phase, StoreError> {
    let oldest_frame = store.oldest_frame_ts()?;
    // Nothing older than the oldest frame describes a frame we still have.
    // With no frames left, only an age limit says what is too old.
    let Some(horizon) = oldest_frame.or(pass.age_cutoff_ms) else {
        return Ok(Phase::Vacuum);
    };
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    let path = store.path.clone();
    let changes = store
        .conn
        .prepare_cached(
            "DELETE FROM state_changes WHERE id IN (\
                 SELECT id FROM state_changes WHERE ts_ms < ?1 \
                 AND id NOT IN (SELECT MAX(id) FROM state_changes GROUP BY source) \
                 ORDER BY ts_ms, id LIMIT ?2)",
        )
        .and_then(|mut s| s.execute(params![horizon, limit]))
        .ctx(&path, "deleting old state changes")? as u64;
    let runs = store
        .conn
        .prepare_cached(
            "DELETE FROM refinements WHERE id IN (\
                 SELECT r.id FROM refinements r WHERE r.ts_ms < ?1 \
                 AND NOT EXISTS (SELECT 1 FROM frames f WHERE f.refine_run_id = r.id) \
                 AND NOT EXISTS (SELECT 1 FROM state_changes s WHERE s.refine_run_id = r.id) \
                 ORDER BY r.ts_ms, r.id LIMIT ?2)",
        )
        .and_then(|mut s| s.execute(params![horizon, limit]))
        .ctx(&path, "deleting old refinement runs")? as u64;
    pass.report.state_changes += changes;
    pass.report.refinements += runs;
    Ok(if changes == batch || runs == batch {
        Phase::Dependents
    } else {
        Phase::Vacuum
    })
}

/// Hands up to [`VACUUM_STEP_PAGES`] free pages back to the file system.
fn vacuum_step(store: &mut Store, pass: &mut Pass) -> Result<Phase, StoreError> {
    if !store.incremental_vacuum_enabled()? {
        return Ok(Phase::Checkpoint);
    }
    let free = store.pragma_u64("freelist_count")?;
    if free == 0 {
        return Ok(Phase::Checkpoint);
    }
    let pages = free.min(VACUUM_STEP_PAGES);
    incremental_vacuum(&store.conn, Some(pages))
        .ctx(&store.path, "releasing free pages (incremental_vacuum)")?;
    pass.report.pages_released += pages;
    Ok(if free > pages {
        Phase::Vacuum
    } else {
        Phase::Checkpoint
    })
}

/// `PRAGMA incremental_vacuum`, stepped to the end: SQLite releases one page
/// per step (each is a result row), so running it once, as `execute_batch`
/// does, would release a single page. `None` releases every free page.
pub(crate) fn incremental_vacuum(conn: &Connection, pages: Option<u64>) -> rusqlite::Result<()> {
    let sql = match pages {
        Some(n) => format!("PRAGMA incremental_vacuum({n})"),
        None => "PRAGMA incremental_vacuum".to_string(),
    };
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

impl Store {
    /// Runs one whole retention pass now; see the module docs. The writer
    /// thread runs passes itself, a step at a time, when its options set a
    /// policy: use this only on a database no writer thread owns.
    pub fn prune(&mut self, policy: &Retention, now_ms: i64) -> Result<PruneReport, StoreError> {
        Pruner::new(*policy).run_pass(self, now_ms)
    }

    /// Frames in the history.
    pub fn frame_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM frames", [], |r| r.get(0))
            .ctx(&self.path, "counting frames")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The database's size in bytes, as pages × page size: what the main
    /// file holds once the WAL is checkpointed.
    pub fn db_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.pragma_u64("page_count")? * self.pragma_u64("page_size")?)
    }

    /// Bytes in use: pages less free pages, the figure `max_bytes` limits.
    pub fn live_bytes(&self) -> Result<u64, StoreError> {
        let pages = self
            .pragma_u64("page_count")?
            .saturating_sub(self.pragma_u64("freelist_count")?);
        Ok(pages * self.pragma_u64("page_size")?)
    }

    /// True when freed pages can be handed back with `incremental_vacuum`.
    pub fn incremental_vacuum_enabled(&self) -> Result<bool, StoreError> {
        // 0 none, 1 full, 2 incremental.
        Ok(self.pragma_u64("auto_vacuum")? == 2)
    }

    pub(crate) fn pragma_u64(&self, name: &'static str) -> Result<u64, StoreError> {
        let v: i64 = self
            .conn
            .pragma_query_value(None, name, |r| r.get(0))
            .ctx(&self.path, name)?;
        Ok(u64::try_from(v).unwrap_or(0))
    }

    /// Checkpoints as much of the WAL as no reader needs, without waiting for
    /// readers; truncates the main file when it shrank.
    pub(crate) fn checkpoint_passive(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .ctx(&self.path, "checkpointing the WAL")
    }

    fn oldest_frame_ts(&self) -> Result<Option<i64>, StoreError> {
        self.conn
            .query_row("SELECT MIN(ts_ms) FROM frames", [], |r| r.get(0))
            .ctx(&self.path, "reading the oldest frame time")
    }

    /// Deletes up to `limit` frames captured before `cutoff_ms`, oldest first.
    fn delete_frames_before(&mut self, cutoff_ms: i64, limit: u64) -> Result<u64, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn
            .prepare_cached(
                "DELETE FROM frames WHERE id IN (\
                     SELECT id FROM frames WHERE ts_ms < ?1 ORDER BY ts_ms, id LIMIT ?2)",
            )
            .and_then(|mut s| s.execute(params![cutoff_ms, limit]))
            .map(|n| n as u64)
            .ctx(&self.path, "deleting frames past store.retention_days")
    }

    /// Deletes the `limit` oldest frames.
    fn delete_oldest_frames(&mut self, limit: u64) -> Result<u64, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn
            .prepare_cached(
                "DELETE FROM frames WHERE id IN (\
                     SELECT id FROM frames ORDER BY ts_ms, id LIMIT ?1)",
            )
            .and_then(|mut s| s.execute([limit]))
            .map(|n| n as u64)
            .ctx(&self.path, "deleting the oldest frames")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{count, rec, temp_store};

    #[test]
    fn a_pass_deletes_at_most_one_batch_per_step_and_keeps_its_count_exact() {
        let (_dir, mut store) = temp_store();
        let frames: Vec<_> = (0..100)
            .map(|i| rec(1_000 + i, "cam", "dog", 0.5))
            .collect();
        store.insert_frames(&frames).unwrap();
        let policy = Retention {
            max_rows: Some(60),
            batch: 7,
            ..Retention::default()
        };
        let mut pruner = Pruner::new(policy);
        let mut before = count(&store);
        let report = loop {
            let step = pruner.step(&mut store, 0).unwrap();
            let now = count(&store);
            assert!(before - now <= 7, "{before} -> {now}");
            before = now;
            if let Some(r) = step {
                break r;
            }
        };
        assert_eq!(report.by_rows, 40);
        assert_eq!(count(&store), 60);
        // Inserts reported to the pruner keep its count exact: the next pass
        // deletes exactly the surplus without recounting.
        let more: Vec<_> = (0..15).map(|i| rec(5_000 + i, "cam", "cat", 0.5)).collect();
        store.insert_frames(&more).unwrap();
        pruner.note_inserted(15);
        assert_eq!(pruner.frame_count, Some(75));
        let report = pruner.run_pass(&mut store, 0).unwrap();
        assert_eq!(report.by_rows, 15);
        assert_eq!(count(&store), 60);
        assert!(!pruner.in_pass());
    }

    #[test]
    fn no_limits_means_nothing_is_deleted() {
        let (_dir, mut store) = temp_store();
        store
            .insert_frames(&[rec(1, "cam", "dog", 0.5), rec(2, "cam", "dog", 0.5)])
            .unwrap();
        assert!(!Retention::default().is_enabled());
        let report = store.prune(&Retention::default(), i64::MAX).unwrap();
        assert_eq!(report.frames(), 0);
        assert_eq!(count(&store), 2);
        assert!(report.db_bytes > 0);
    }
}
