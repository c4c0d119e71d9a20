//! The classification history: one SQLite file per daemon.
//!
//! SQLite runs in WAL mode so that `clipd query` (a separate, read-only
//! process) can read while the daemon writes, without either waiting for the
//! other. The schema comes from numbered `.sql` files under `migrations/`,
//! applied in order and tracked with `PRAGMA user_version` (see
//! [`SCHEMA_VERSION`]).
//!
//! Writes are batched: the pipeline sends [`FrameRecord`]s over a channel to a
//! [`BatchWriter`] thread that commits every `batch_rows` rows or `batch_ms`
//! milliseconds, because one transaction per frame would cost an fsync per
//! frame on an SD card.
//!
//! Reads go through [`FrameFilter`], whose every field maps onto an indexed
//! column, and the results print with [`write_rows`], [`write_stats`] and
//! [`write_summary`].
//!
//! Every error is a [`StoreError`] naming the database file and, where there
//! is one, what the user can do about it.

mod error;
mod files;
mod format;
mod health;
mod maintenance;
mod migrate;
mod query;
mod records;
mod retention;
mod snapshot;
mod text_cache;
mod timespec;
mod volume;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

pub(crate) use error::Ctx;
pub use error::StoreError;
pub use files::{on_disk_bytes, with_suffix};
pub use format::{csv_field, is_broken_pipe, write_rows, write_stats, write_summary, Format};
pub use maintenance::{
    backup, check, quick_check, vacuum, vacuum_space, BackupReport, CheckReport, VacuumReport,
};
pub use migrate::SCHEMA_VERSION;
pub use query::{Bucket, FrameFilter, FrameRow, LabelCount, StatRow, Summary};
pub use records::{ClassRecord, EmbeddedFrame, FrameRecord, RefinementRecord, StateChange};
pub use retention::{PruneReport, Retention};
pub use snapshot::{HistorySnapshot, SourceSnapshot};
pub use timespec::{format_ts_ms, now_ms, parse_time_spec, TimeSpecError};
pub use volume::{available_bytes, network_fs_name, network_fs_of};
pub use writer::{
    BatchWriter, ProgressSnapshot, WriteOp, WriterHandle, WriterProgress, WriterSummary,
};

/// How long a connection waits for another connection's lock before failing
/// with "database is locked". Checkpoints and migrations briefly take
/// exclusive locks; five seconds covers them on slow SD cards.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Upper bound, in bytes, that the WAL file is truncated back to after a
/// checkpoint, so a burst of writes does not leave a large file behind on a
/// small flash disk.
const JOURNAL_SIZE_LIMIT: i64 = 32 * 1024 * 1024;

/// SQLite's `synchronous` setting for the writer.
///
/// `Normal` (the default) in WAL mode can lose the last transactions on power
/// loss but never corrupts the file, and it fsyncs only at checkpoints, which
/// matters on SD cards. `Full` fsyncs every commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Normal,
    Full,
}

impl Synchronous {
    fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

impl fmt::Display for Synchronous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Synchronous::Normal => "normal",
            Synchronous::Full => "full",
        })
    }
}

impl FromStr for Synchronous {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "normal" => Ok(Synchronous::Normal),
            "full" => Ok(Synchronous::Full),
            _ => Err(format!(
                "invalid synchronous mode {s:?}: expected \"normal\" or \"full\""
            )),
        }
    }
}

/// How the database is opened and how the writer commits and prunes.
/// The daemon's come from its config's `[store]` table (the config builds them);
/// the defaults suit one-off tools (no retention, no moving files aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Commit once this many frames are pending (0 is treated as 1).
    pub batch_rows: usize,
    /// Commit pending frames at the latest this long after the first of them
    /// arrived, so a quiet camera's frames still reach the disk.
    pub batch_ms: u64,
    pub synchronous: Synchronous,
    /// What the writer thread deletes, and how often it looks.
    pub retention: Retention,
    /// Run `PRAGMA quick_check` when opening an existing file and move a
    /// damaged one aside, starting a fresh history (the daemon's choice: a
    /// tool should not move files).
    pub quick_check: bool,
    /// Open a database on NFS/CIFS/SMB anyway (with a warning).
    pub allow_network_fs: bool,
    /// Frames the writer holds in memory while commits fail (a full disk);
    /// beyond it the oldest are dropped and counted. 0 means 16 × `batch_rows`.
    pub max_pending_rows: usize,
    /// For tests and fault injection only: cap the database at this many
    /// pages (`PRAGMA max_page_count`), so writes fail with a genuine
    /// SQLITE_FULL as on a full volume.
    pub max_page_count: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            batch_rows: 64,
            batch_ms: 1000,
            synchronous: Synchronous::Normal,
            retention: Retention::default(),
            quick_check: false,
            allow_network_fs: false,
            max_pending_rows: 0,
            max_page_count: None,
        }
    }
}

impl StoreOptions {
    /// Frames held while commits fail; see [`StoreOptions::max_pending_rows`].
    pub fn pending_limit(&self) -> usize {
        match self.max_pending_rows {
            0 => self.batch_rows.max(1).saturating_mul(16),
            n => n,
        }
    }
}

/// An open history database. `Send`, so it can move to a writer thread; not
/// `Sync`: one connection per thread.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    options: StoreOptions,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

const INSERT_FRAME_SQL: &str = "INSERT INTO frames \
    (ts_ms, source, frame_ref, label, score, topk, model_id, adapter_id, latency_us, embedding, error, id) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

impl Store {
    /// Opens (creating if needed) the database for writing and migrates it to
    /// [`SCHEMA_VERSION`].
    ///
    /// On the way: a database on a network file system is refused (unless
    /// [`StoreOptions::allow_network_fs`]); with [`StoreOptions::quick_check`]
    /// an existing file is checked and, if damaged, moved aside for a fresh
    /// one; an existing schema is backed up to `<db>.pre-v<N>.bak` before it
    /// is migrated; and an older file without incremental auto-vacuum is
    /// converted (see `health.rs`).
    ///
    /// If the file did not exist and opening fails, the new file is removed
    /// again, so a failed start leaves no half-made database behind.
    pub fn open(path: impl AsRef<Path>, options: &StoreOptions) -> Result<Store, StoreError> {
        let path = path.as_ref();
        if path.is_dir() {
            return Err(StoreError::IsDirectory {
                path: path.to_path_buf(),
            });
        }
        health::check_local_fs(path, options.allow_network_fs)?;
        if options.quick_check && path.exists() {
            health::quick_check_or_move_aside(path)?;
        }
        let existed = path.exists();
        let result = Store::open_rw(path, options);
        if result.is_err() && !existed {
            // The connection is already closed (dropped inside open_rw).
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.as_os_str().to_owned();
                p.push(suffix);
                let _ = std::fs::remove_file(PathBuf::from(p));
            }
        }
        result
    }

    fn open_rw(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        // No SQLITE_OPEN_URI: a path is always a path.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn =
            Connection::open_with_flags(path, flags).map_err(|cause| StoreError::Open {
                path: path.to_path_buf(),
                cause,
            })?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .ctx(path, "setting the busy timeout")?;
        // Takes effect on a new file (before its first table); on an older
        // one only through the VACUUM in `ensure_incremental_vacuum`.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .ctx(path, "setting auto_vacuum")?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .ctx(path, "enabling WAL mode")?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NoWal {
                path: path.to_path_buf(),
                mode,
            });
        }
        conn.pragma_update(None, "synchronous", options.synchronous.pragma_value())
            .ctx(path, "setting synchronous")?;
        conn.pragma_update(None, "foreign_keys", true)
            .ctx(path, "enabling foreign keys")?;
        conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)
            .ctx(path, "setting journal_size_limit")?;
        if let Some(pages) = options.max_page_count {
            let pages = i64::try_from(pages).unwrap_or(i64::MAX);
            conn.pragma_update(None, "max_page_count", pages)
                .ctx(path, "setting max_page_count")?;
        }
        let found = migrate::read_version(&conn, path)?;
        if found > 0 && found < SCHEMA_VERSION {
            health::backup_before_migration(&conn, path, found)?;
        }
        migrate::migrate(&mut conn, path)?;
        health::ensure_incremental_vacuum(&conn, path);
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            options: *options,
        })
    }

    /// Opens an existing database for reading only, e.g. for `clipd query`
    /// while the daemon writes to it. In WAL mode this never blocks the
    /// writer. A missing file is an error: a query must not create an empty
    /// database where the user expected their history.
    ///
    /// The connection waits up to five seconds for a lock (the writer's
    /// checkpoints and retention steps take one only briefly), so a query
    /// during writes does not fail with "database is locked".
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref();
        existing_file(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|cause| StoreError::Open {
            path: path.to_path_buf(),
            cause,
        })?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .ctx(path, "setting the busy timeout")?;
        migrate::check_read_only(&conn, path)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            options: StoreOptions::default(),
        })
    }

    /// The rowid of the last row this connection inserted.
    pub(crate) fn last_insert_rowid(&self) -> i64 {
        self.conn.last_insert_rowid()
    }

    /// Gathers statistics for the query planner (cheap when nothing
    /// changed); SQLite recommends it before closing a long-lived connection.
    pub fn optimize(&self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("PRAGMA optimize")
            .ctx(&self.path, "optimizing")
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options the store was opened with (defaults when read-only).
    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        migrate::read_version(&self.conn, &self.path)
    }

    /// Copies the WAL into the main file and truncates the WAL to zero
    /// bytes, so the database is one self-contained file again (for backups,
    /// or before the daemon exits).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let (busy, _log, _done): (i64, i64, i64) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .ctx(&self.path, "checkpointing the WAL")?;
        if busy != 0 {
            // A reader held an old snapshot past the busy timeout. The data is
            // safe in the WAL; the next checkpoint will finish the job.
            log::debug!(
                "database {}: checkpoint incomplete, a reader is still active",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Inserts frames in one transaction with a cached statement: all of them
    /// or, on error, none. Records are validated first (see
    /// [`FrameRecord::validate`]). Returns the number inserted.
    pub fn insert_frames(&mut self, frames: &[FrameRecord]) -> Result<usize, StoreError> {
        let path = &self.path;
        let mut topks = Vec::with_capacity(frames.len());
        for f in frames {
            let invalid = |reason: String| StoreError::InvalidRecord {
                path: path.clone(),
                what: f.describe(),
                reason,
            };
            f.validate().map_err(invalid)?;
            topks.push(serde_json::to_string(&f.topk).map_err(|e| invalid(e.to_string()))?);
        }
        if frames.is_empty() {
            return Ok(0);
        }
        // IMMEDIATE takes the write lock up front, so a competing writer
        // makes us wait (busy timeout) rather than fail mid-transaction.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(path, "starting a write transaction")?;
        {
            let mut stmt = tx
                .prepare_cached(INSERT_FRAME_SQL)
                .ctx(path, "preparing the frame insert")?;
            for (f, topk) in frames.iter().zip(&topks) {
                let latency = f.latency_us.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
                let embedding = f.embedding.as_deref().map(f16_le_bytes);
                stmt.execute(params![
                    f.ts_ms,
                    f.source,
                    f.frame_ref,
                    f.label,
                    f.score.map(f64::from),
                    topk,
                    f.model_id,
                    f.adapter_id,
                    latency,
                    embedding,
                    f.error,
                    f.id,
                ])
                .ctx(path, "inserting frames")?;
            }
        }
        tx.commit().ctx(path, "committing frames")?;
        Ok(frames.len())
    }

    /// The largest frame id so far (0 for an empty history): the daemon numbers
    /// its frames from here.
    pub fn max_frame_id(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM frames", [], |r| r.get(0))
            .ctx(&self.path, "reading the last frame id")
    }

    /// Records a refiner pass in one transaction: its `refinements` row, the
    /// refined label, score and run id of each frame, and the state changes.
    /// Frames not (or no longer) in the database are skipped. Returns the run id.
    pub fn apply_refinement(&mut self, r: &RefinementRecord) -> Result<i64, StoreError> {
        let path = &self.path;
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(path, "starting a refinement transaction")?;
        tx.execute(
            "INSERT INTO refinements (ts_ms, algorithm, params, n_frames, n_changed, duration_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                r.ts_ms,
                r.algorithm,
                r.params,
                count(r.n_frames),
                count(r.n_changed),
                i64::try_from(r.duration_ms).unwrap_or(i64::MAX)
            ],
        )
        .ctx(path, "recording a refinement run")?;
        let run = tx.last_insert_rowid();
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE frames SET refined_label = ?1, refined_score = ?2, refine_run_id = ?3 \
                     WHERE id = ?4 AND label IS NOT NULL",
                )
                .ctx(path, "preparing the refinement update")?;
            for (id, label, score) in &r.labels {
                stmt.execute(params![label, f64::from(*score), run, id])
                    .ctx(path, "writing refined labels")?;
            }
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO state_changes \
                     (ts_ms, source, from_label, to_label, agreement, n_frames, refine_run_id) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .ctx(path, "preparing the state-change insert")?;
            for c in &r.state_changes {
                ins.execute(params![
                    c.ts_ms,
                    c.source,
                    c.from_label,
                    c.to_label,
                    f64::from(c.agreement),
                    count(c.n_frames),
                    run
                ])
                .ctx(path, "recording a state change")?;
            }
        }
        tx.commit().ctx(path, "committing a refinement")?;
        Ok(run)
    }

    /// Classified frames that have a stored embedding, oldest first, within
    /// `[since, until)` and optionally one source.
    pub fn embedded_frames(
        &self,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        source: Option<&str>,
    ) -> Result<Vec<EmbeddedFrame>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, ts_ms, source, label, model_id, adapter_id, embedding FROM frames \
                 WHERE label IS NOT NULL AND embedding IS NOT NULL \
                 AND ts_ms >= ?1 AND ts_ms < ?2 AND (?3 IS NULL OR source = ?3) \
                 ORDER BY ts_ms, id",
            )
            .ctx(&self.path, "preparing the embedding query")?;
        let rows = stmt
            .query_map(
                params![
                    since_ms.unwrap_or(i64::MIN),
                    until_ms.unwrap_or(i64::MAX),
                    source
                ],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, Vec<u8>>(6)?,
                    ))
                },
            )
            .ctx(&self.path, "reading embeddings")?;
        let mut out = Vec::new();
        for row in rows {
            let (id, ts_ms, source, label, model_id, adapter_id, blob) =
                row.ctx(&self.path, "reading embeddings")?;
            let embedding = f16_from_le_bytes(&blob).ok_or_else(|| StoreError::InvalidData {
                path: self.path.clone(),
                what: "frames.embedding",
                row: format!("id {id}"),
                detail: format!("{} bytes is not a whole number of f16 values", blob.len()),
            })?;
            out.push(EmbeddedFrame {
                id,
                ts_ms,
                source,
                label,
                model_id,
                adapter_id,
                embedding,
            });
        }
        Ok(out)
    }

    /// Decision-state changes within `[since, until)`, newest first.
    pub fn state_changes(
        &self,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        source: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StateChange>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT ts_ms, source, from_label, to_label, agreement, n_frames FROM state_changes \
                 WHERE ts_ms >= ?1 AND ts_ms < ?2 AND (?3 IS NULL OR source = ?3) \
                 ORDER BY ts_ms DESC, id DESC LIMIT ?4",
            )
            .ctx(&self.path, "preparing the state-change query")?;
        let limit = if limit == 0 {
            -1
        } else {
            i64::try_from(limit).unwrap_or(-1)
        };
        let rows = stmt
            .query_map(
                params![
                    since_ms.unwrap_or(i64::MIN),
                    until_ms.unwrap_or(i64::MAX),
                    source,
                    limit
                ],
                |r| {
                    Ok(StateChange {
                        ts_ms: r.get(0)?,
                        source: r.get(1)?,
                        from_label: r.get(2)?,
                        to_label: r.get(3)?,
                        agreement: r.get::<_, f64>(4)? as f32,
                        n_frames: r.get::<_, i64>(5)?.max(0) as usize,
                    })
                },
            )
            .ctx(&self.path, "reading state changes")?;
        rows.collect::<Result<_, _>>()
            .ctx(&self.path, "reading state changes")
    }

    /// The stored image embedding of frame `id`, if it has one.
    pub fn frame_embedding(&self, id: i64) -> Result<Option<Vec<f32>>, StoreError> {
        let blob: Option<Option<Vec<u8>>> = self
            .conn
            .prepare_cached("SELECT embedding FROM frames WHERE id = ?1")
            .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
            .ctx(&self.path, "reading a frame embedding")?;
        match blob.flatten() {
            None => Ok(None),
            Some(b) => f16_from_le_bytes(&b)
                .map(Some)
                .ok_or_else(|| StoreError::InvalidData {
                    path: self.path.clone(),
                    what: "frames.embedding",
                    row: format!("id {id}"),
                    detail: format!("{} bytes is not a whole number of f16 values", b.len()),
                }),
        }
    }
}

/// Fails unless `path` exists and is not a directory: reading must never
/// create an empty database where the user expected their history.
pub(crate) fn existing_file(path: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::Missing {
            path: path.to_path_buf(),
        }),
        Ok(m) if m.is_dir() => Err(StoreError::IsDirectory {
            path: path.to_path_buf(),
        }),
        // Anything else (permissions) is left to SQLite, whose error is then
        // reported with a hint.
        _ => Ok(()),
    }
}

/// f32 → f16, little-endian, as stored in `frames.embedding`.
fn f16_le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect()
}

/// Inverse of [`f16_le_bytes`]; `None` for an odd byte count.
fn f16_from_le_bytes(b: &[u8]) -> Option<Vec<f32>> {
    if b.len() % 2 != 0 {
        return None;
    }
    Some(
        b.chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    )
}

/// f32 little-endian, as stored in `text_cache` and `classes`: text
/// embeddings are few, so they keep full precision.
fn f32_le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Inverse of [`f32_le_bytes`]; `None` unless the length is a multiple of 4.
fn f32_from_le_bytes(b: &[u8]) -> Option<Vec<f32>> {
    if b.len() % 4 != 0 {
        return None;
    }
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A classified frame with a two-entry top-k.
    #[test]
    fn refinements_update_frames_by_id_and_record_state_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let mut store = Store::open(&path, &StoreOptions::default()).unwrap();
        let first = store.max_frame_id().unwrap() + 1;
        let mut frames: Vec<FrameRecord> = (0..3).map(|i| rec(10 + i, "cam", "dog", 0.6)).collect();
        frames[2].embedding = Some(vec![0.5, -0.25]);
        frames.push(FrameRecord::failed(
            13,
            "cam",
            "x.jpg",
            "sha-model",
            "corrupt",
        ));
        for (i, f) in frames.iter_mut().enumerate() {
            f.id = Some(first + i as i64);
        }
        store.insert_frames(&frames).unwrap();
        assert_eq!(store.max_frame_id().unwrap(), first + 3);
        let run = store
            .apply_refinement(&RefinementRecord {
                ts_ms: 20,
                algorithm: "transclip".into(),
                params: "{}".into(),
                n_frames: 3,
                n_changed: 1,
                duration_ms: 4,
                labels: vec![
                    (first, "cat".into(), 0.7),
                    (first + 1, "dog".into(), 0.8),
                    // The failed frame has no label to refine; an unknown id is ignored.
                    (first + 3, "cat".into(), 0.5),
                    (first + 99, "cat".into(), 0.5),
                ],
                state_changes: vec![StateChange {
                    ts_ms: 12,
                    source: "cam".into(),
                    from_label: None,
                    to_label: "dog".into(),
                    agreement: 0.75,
                    n_frames: 4,
                }],
            })
            .unwrap();
        let refined: Vec<(Option<String>, Option<i64>)> = store
            .conn
            .prepare("SELECT refined_label, refine_run_id FROM frames ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(refined[0], (Some("cat".into()), Some(run)));
        assert_eq!(refined[1], (Some("dog".into()), Some(run)));
        assert_eq!(refined[2], (None, None));
        assert_eq!(refined[3], (None, None));
        let changes = store.state_changes(None, None, Some("cam"), 0).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].to_label, "dog");
        assert!(store
            .state_changes(None, Some(12), None, 0)
            .unwrap()
            .is_empty());
        let emb = store.embedded_frames(None, None, None).unwrap();
        assert_eq!(emb.len(), 1);
        assert_eq!(
            (emb[0].id, emb[0].embedding.clone()),
            (first + 2, vec![0.5, -0.25])
        );
    }

    pub(crate) fn rec(ts_ms: i64, source: &str, label: &str, score: f32) -> FrameRecord {
        FrameRecord::classified(
            ts_ms,
            source,
            format!("{source}/{ts_ms}.jpg"),
            "sha-model",
            vec![
                (label.to_string(), score),
                ("other".to_string(), 1.0 - score),
            ],
        )
    }

    pub(crate) fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("history.db"), &StoreOptions::default()).unwrap();
        (dir, store)
    }

    pub(crate) fn count(store: &Store) -> i64 {
        store
            .conn
            .query_row("SELECT COUNT(*) FROM frames", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn connection_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let store = Store::open(&path, &StoreOptions::default()).unwrap();
        let get = |p: &str| -> String {
            store
                .conn
                .query_row(&format!("PRAGMA {p}"), [], |r| {
                    r.get::<_, rusqlite::types::Value>(0)
                })
                .map(|v| match v {
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Text(t) => t,
                    other => format!("{other:?}"),
                })
                .unwrap()
        };
        assert_eq!(get("journal_mode"), "wal");
        assert_eq!(get("synchronous"), "1"); // NORMAL
        assert_eq!(get("foreign_keys"), "1");
        assert_eq!(get("busy_timeout"), "5000");
        drop(store);

        let full = StoreOptions {
            synchronous: Synchronous::Full,
            ..StoreOptions::default()
        };
        let store = Store::open(&path, &full).unwrap();
        let sync: i64 = store
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2); // FULL
        assert_eq!("FULL".parse::<Synchronous>(), Ok(Synchronous::Full));
        assert!("fast"
            .parse::<Synchronous>()
            .unwrap_err()
            .contains("normal"));
    }

    #[test]
    fn insert_round_trip_and_f16_embedding() {
        let (_dir, mut store) = temp_store();
        let emb: Vec<f32> = (0..512).map(|i| (i as f32 - 256.0) / 300.0).collect();
        let mut a = rec(1_000, "cam", "dog", 0.75);
        a.embedding = Some(emb.clone());
        a.latency_us = Some(1234);
        a.adapter_id = Some("adapter-1".into());
        let b = FrameRecord::failed(2_000, "cam", "cam/bad.jpg", "sha-model", "truncated JPEG");
        assert_eq!(store.insert_frames(&[a.clone(), b]).unwrap(), 2);

        let rows = store
            .query_frames(&FrameFilter {
                include_errors: true,
                ..FrameFilter::default()
            })
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].error.as_deref(), Some("truncated JPEG"));
        assert_eq!(rows[0].label, None);
        let r = &rows[1];
        assert_eq!(r.label.as_deref(), Some("dog"));
        assert_eq!(r.score, Some(0.75));
        assert_eq!(r.topk, a.topk);
        assert_eq!(r.latency_us, Some(1234));
        assert_eq!(r.adapter_id.as_deref(), Some("adapter-1"));
        assert_eq!(r.model_id, "sha-model");

        let back = store.frame_embedding(r.id).unwrap().unwrap();
        assert_eq!(back.len(), emb.len());
        for (x, y) in emb.iter().zip(&back) {
            // f16 keeps 11 significant bits.
            assert!((x - y).abs() <= x.abs() / 1024.0 + 1e-6, "{x} vs {y}");
        }
        assert_eq!(store.frame_embedding(rows[0].id).unwrap(), None);
        assert_eq!(store.frame_embedding(9999).unwrap(), None);
        let blob_len: i64 = store
            .conn
            .query_row(
                "SELECT length(embedding) FROM frames WHERE id = ?1",
                [r.id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(blob_len, 1024, "512 values at 2 bytes each");
    }

    #[test]
    fn invalid_records_are_refused_before_writing() {
        let (_dir, mut store) = temp_store();
        let mut both = rec(1, "cam", "dog", 0.5);
        both.error = Some("x".into());
        let mut nan = rec(2, "cam", "dog", 0.5);
        nan.score = Some(f32::NAN);
        for bad in [both, nan, FrameRecord::default()] {
            let err = store
                .insert_frames(&[rec(3, "cam", "ok", 0.5), bad])
                .unwrap_err();
            assert!(matches!(err, StoreError::InvalidRecord { .. }), "{err}");
            assert!(err.to_string().contains("history.db"), "{err}");
        }
        assert_eq!(count(&store), 0, "nothing of a refused batch is written");
        assert_eq!(store.insert_frames(&[]).unwrap(), 0);
    }

    #[test]
    fn text_cache_round_trip() {
        let (_dir, mut store) = temp_store();
        assert_eq!(
            store.get_text_embedding("m", "a photo of a dog").unwrap(),
            None
        );
        let dog = vec![0.25f32, -1.5, 3.0e-8, 7.0];
        let cat = vec![1.0f32; 4];
        store
            .put_text_embeddings(
                "m",
                &[
                    ("a photo of a dog", dog.clone()),
                    ("a photo of a cat", cat.clone()),
                ],
            )
            .unwrap();
        assert_eq!(
            store.get_text_embedding("m", "a photo of a dog").unwrap(),
            Some(dog)
        );
        assert_eq!(
            store
                .get_text_embedding("other-model", "a photo of a dog")
                .unwrap(),
            None
        );
        // Replacing keeps one row per (model, prompt).
        store
            .put_text_embeddings("m", &[(String::from("a photo of a cat"), vec![2.0f32; 8])])
            .unwrap();
        assert_eq!(
            store.get_text_embedding("m", "a photo of a cat").unwrap(),
            Some(vec![2.0; 8])
        );
        let empty: &[(&str, Vec<f32>)] = &[("p", vec![])];
        assert!(store.put_text_embeddings("m", empty).is_err());
    }

    #[test]
    fn classes_round_trip() {
        let (_dir, mut store) = temp_store();
        let classes = vec![
            ClassRecord {
                name: "dog".into(),
                domain: Some("animal".into()),
                prompts: vec!["a photo of a {}, a kind of animal".into()],
                embedding: vec![0.5, 0.25],
            },
            ClassRecord {
                name: "pizza".into(),
                domain: None,
                prompts: vec![],
                embedding: vec![1.0, 0.0],
            },
        ];
        assert_eq!(store.put_classes("m", &classes).unwrap(), 2);
        assert_eq!(store.put_classes("m", &classes[..1]).unwrap(), 1);
        assert_eq!(store.classes("m").unwrap(), classes);
        assert!(store.classes("other").unwrap().is_empty());
    }

    #[test]
    fn read_only_sees_commits_while_writer_stays_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let mut writer = Store::open(&path, &StoreOptions::default()).unwrap();
        writer.insert_frames(&[rec(1, "cam", "dog", 0.9)]).unwrap();
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        assert!(PathBuf::from(wal).exists(), "writer is in WAL mode");

        let reader = Store::open_read_only(&path).unwrap();
        assert_eq!(
            reader.query_frames(&FrameFilter::default()).unwrap().len(),
            1
        );
        writer
            .insert_frames(&[rec(2, "cam", "cat", 0.8), rec(3, "cam", "dog", 0.7)])
            .unwrap();
        assert_eq!(
            reader.query_frames(&FrameFilter::default()).unwrap().len(),
            3
        );
        // A reader cannot write.
        let mut reader = reader;
        let err = reader
            .insert_frames(&[rec(4, "cam", "dog", 0.5)])
            .unwrap_err();
        assert!(err.to_string().contains("h.db"), "{err}");
        // The writer can still checkpoint with a reader open.
        writer.checkpoint().unwrap();
        writer.insert_frames(&[rec(5, "cam", "dog", 0.5)]).unwrap();
        assert_eq!(
            reader.query_frames(&FrameFilter::default()).unwrap().len(),
            4
        );
    }

    #[test]
    fn read_only_opens_a_closed_wal_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        {
            let mut w = Store::open(&path, &StoreOptions::default()).unwrap();
            w.insert_frames(&[rec(1, "cam", "dog", 0.9)]).unwrap();
        }
        let reader = Store::open_read_only(&path).unwrap();
        assert_eq!(
            reader.query_frames(&FrameFilter::default()).unwrap().len(),
            1
        );
    }

    #[test]
    fn read_only_on_missing_file_errors_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.db");
        let err = Store::open_read_only(&path).unwrap_err();
        assert!(matches!(err, StoreError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("nope.db"), "{err}");
        assert!(!path.exists());
        let err = Store::open_read_only(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::IsDirectory { .. }), "{err}");
        let err = Store::open(dir.path(), &StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::IsDirectory { .. }), "{err}");
    }

    #[test]
    fn failed_open_leaves_no_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("h.db");
        let err = Store::open(&path, &StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
        assert!(err.to_string().contains("directory exists"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn disk_full_is_a_clear_error_and_keeps_committed_rows() {
        let (_dir, mut store) = temp_store();
        store.insert_frames(&[rec(1, "cam", "dog", 0.9)]).unwrap();
        let pages: i64 = store
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        store
            .conn
            .pragma_update(None, "max_page_count", pages)
            .unwrap();
        let mut big = rec(2, "cam", "dog", 0.9);
        big.embedding = Some(vec![0.5; 64 * 1024]);
        let err = store.insert_frames(&[big]).unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("history.db") && msg.contains("disk full"),
            "{msg}"
        );
        assert_eq!(count(&store), 1);
    }

    #[test]
    fn errors_name_the_path() {
        let e = StoreError::SchemaTooNew {
            path: "/x/y.db".into(),
            found: 3,
            supported: 1,
        };
        assert_eq!(
            e.to_string(),
            "database /x/y.db is newer (schema 3) than this clipd (schema 1): upgrade clipd"
        );
        assert_eq!(e.path(), Path::new("/x/y.db"));
    }

    #[test]
    fn database_life_errors_are_one_line_with_the_fix() {
        let path = PathBuf::from("/srv/clipd/h.db");
        let errors = [
            StoreError::NetworkFs {
                path: path.clone(),
                fs: "nfs",
            },
            StoreError::MoveAside {
                path: path.clone(),
                dest: "/srv/clipd/h.db.corrupt-20240501T120000Z".into(),
                cause: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            },
            StoreError::NotIncremental { path: path.clone() },
            StoreError::Damaged {
                path: path.clone(),
                problems: 2,
                first: "Tree 2 page 7: btreeInitPage() returns error code 11".into(),
            },
        ];
        let fixes = [
            "store.allow_network_fs",
            "by hand",
            "without --incremental",
            "restore it from a backup",
        ];
        for (e, fix) in errors.iter().zip(fixes) {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg}");
            assert!(
                msg.contains("/srv/clipd/h.db") && msg.contains(fix),
                "{msg}"
            );
            assert_eq!(e.path(), path);
        }
    }

    #[test]
    fn store_is_send() {
        fn send<T: Send>() {}
        send::<Store>();
        send::<StoreError>();
    }
}
