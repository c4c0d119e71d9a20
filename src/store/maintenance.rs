//! `clipd db`: a full integrity check, a consistent backup and a vacuum, all
//! safe to run while the daemon writes to the same file.
//!
//! The backup uses SQLite's online backup API in one step: the copy is made
//! inside a single read transaction, so it is exactly the database as of
//! one commit, and in WAL mode that read never blocks the daemon's writer
//! (a stepwise backup would restart every time the daemon commits). It is
//! written to `<out>.partial` and renamed into place only when complete and
//! synced, so `<out>` is either absent or a whole database.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension};

use crate::store::files::{file_len, mib, with_suffix};
use crate::store::retention::incremental_vacuum;
use crate::store::{existing_file, format_ts_ms, Ctx, StoreError, BUSY_TIMEOUT};

/// Problems `integrity_check` lists at most.
const INTEGRITY_MAX_PROBLEMS: u32 = 100;

/// How long a backup waits for the source's lock, in total, before giving
/// up (it only waits while another connection holds an exclusive lock,
/// e.g. a `VACUUM`).
const BACKUP_LOCK_WAIT: Duration = Duration::from_secs(30);

/// What `clipd db check` found.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub path: PathBuf,
    /// Size of the main file and of its WAL on disk.
    pub file_bytes: u64,
    pub wal_bytes: u64,
    pub page_size: u64,
    pub page_count: u64,
    pub freelist_count: u64,
    /// `none`, `full` or `incremental`.
    pub auto_vacuum: &'static str,
    pub journal_mode: String,
    pub schema_version: u32,
    /// Frames stored and their time range; `None` without a frames table.
    pub frames: Option<u64>,
    pub oldest_ms: Option<i64>,
    pub newest_ms: Option<i64>,
    /// What `PRAGMA integrity_check` reported; empty when the file is sound.
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "database:    {}", self.path.display())?;
        writeln!(
            f,
            "file:        {:.2} MiB (+ {:.2} MiB WAL); {} pages of {} bytes, {} free",
            mib(self.file_bytes),
            mib(self.wal_bytes),
            self.page_count,
            self.page_size,
            self.freelist_count
        )?;
        writeln!(
            f,
            "mode:        journal {}, auto_vacuum {}, schema {}",
            self.journal_mode, self.auto_vacuum, self.schema_version
        )?;
        match self.frames {
            Some(n) => {
                write!(f, "frames:      {n}")?;
                if let (Some(a), Some(b)) = (self.oldest_ms, self.newest_ms) {
                    write!(f, " from {} to {}", format_ts_ms(a), format_ts_ms(b))?;
                }
                writeln!(f)?;
            }
            None => writeln!(f, "frames:      (no frames table)")?,
        }
        if self.is_ok() {
            writeln!(f, "integrity:   ok")
        } else {
            writeln!(f, "integrity:   {} problems", self.problems.len())?;
            for p in &self.problems {
                writeln!(f, "  {p}")?;
            }
            Ok(())
        }
    }
}

/// Opens an existing database without creating, migrating or checking its
/// schema (maintenance must work on any version).
fn open_existing(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    existing_file(path)?;
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|cause| StoreError::Open {
        path: path.to_path_buf(),
        cause,
    })?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .ctx(path, "setting the busy timeout")?;
    Ok(conn)
}

fn pragma_u64(conn: &Connection, path: &Path, name: &'static str) -> Result<u64, StoreError> {
    let v: i64 = conn
        .pragma_query_value(None, name, |r| r.get(0))
        .ctx(path, name)?;
    Ok(u64::try_from(v).unwrap_or(0))
}

/// A full `PRAGMA integrity_check` (every page, index and constraint) and a
/// description of the file. Damage is reported in the result, not as an
/// error; errors are files that cannot be read at all.
pub fn check(path: &Path) -> Result<CheckReport, StoreError> {
    check_with(path, "integrity_check")
}

/// Like [`check`], with `PRAGMA quick_check` (no index or constraint checks: seconds on a
/// large file, where a full check takes minutes), for `clipd doctor`.
pub fn quick_check(path: &Path) -> Result<CheckReport, StoreError> {
    check_with(path, "quick_check")
}

fn check_with(path: &Path, pragma: &str) -> Result<CheckReport, StoreError> {
    let conn = open_existing(path, true)?;
    let schema_version = crate::store::migrate::read_version(&conn, path)?;
    let problems: Vec<String> = match conn
        .prepare(&format!("PRAGMA {pragma}({INTEGRITY_MAX_PROBLEMS})"))
        .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(0))?.collect())
    {
        Ok(rows) => {
            let rows: Vec<String> = rows;
            if rows.len() == 1 && rows[0] == "ok" {
                Vec::new()
            } else {
                rows
            }
        }
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::DatabaseCorrupt) => {
            vec![e.to_string()]
        }
        Err(e) => return Err(StoreError::sqlite(path, "checking integrity", e)),
    };
    let auto_vacuum = match pragma_u64(&conn, path, "auto_vacuum")? {
        1 => "full",
        2 => "incremental",
        _ => "none",
    };
    let journal_mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .ctx(path, "reading the journal mode")?;
    let has_frames: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'frames')",
            [],
            |r| r.get(0),
        )
        .ctx(path, "reading the schema")?;
    let (frames, oldest_ms, newest_ms) = if has_frames && problems.is_empty() {
        let (n, lo, hi): (i64, Option<i64>, Option<i64>) = conn
            .query_row(
                "SELECT COUNT(*), MIN(ts_ms), MAX(ts_ms) FROM frames",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .ctx(path, "counting frames")?;
        (Some(u64::try_from(n).unwrap_or(0)), lo, hi)
    } else {
        (None, None, None)
    };
    Ok(CheckReport {
        path: path.to_path_buf(),
        file_bytes: file_len(path),
        wal_bytes: file_len(&with_suffix(path, "-wal")),
        page_size: pragma_u64(&conn, path, "page_size")?,
        page_count: pragma_u64(&conn, path, "page_count")?,
        freelist_count: pragma_u64(&conn, path, "freelist_count")?,
        auto_vacuum,
        journal_mode,
        schema_version,
        frames,
        oldest_ms,
        newest_ms,
        problems,
    })
}

/// What `clipd db backup` wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupReport {
    pub source: PathBuf,
    pub dest: PathBuf,
    pub bytes: u64,
    /// Frames in the copy (`None` without a frames table).
    pub frames: Option<u64>,
}

impl fmt::Display for BackupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backed up {} to {} ({:.2} MiB",
            self.source.display(),
            self.dest.display(),
            mib(self.bytes)
        )?;
        if let Some(n) = self.frames {
            write!(f, ", {n} frames")?;
        }
        write!(f, "; quick_check ok)")
    }
}

/// Copies the database at `path` to `dest` (which must not exist) as one
/// consistent snapshot, then checks the copy with `quick_check`.
pub fn backup(path: &Path, dest: &Path) -> Result<BackupReport, StoreError> {
    if dest.symlink_metadata().is_ok() {
        return Err(StoreError::Backup {
            path: path.to_path_buf(),
            dest: dest.to_path_buf(),
            cause: "the file exists (choose another name or remove it)".into(),
        });
    }
    let conn = open_existing(path, true)?;
    let bytes = backup_connection(&conn, path, dest)?;
    drop(conn);
    let copy = open_existing(dest, true)?;
    let verdict: String = copy
        .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
        .ctx(dest, "checking the backup (quick_check)")?;
    if verdict != "ok" {
        return Err(StoreError::Backup {
            path: path.to_path_buf(),
            dest: dest.to_path_buf(),
            cause: format!(
                "the copy fails quick_check ({verdict}): the source is probably damaged; run `clipd db check`"
            ),
        });
    }
    let frames: Option<i64> = copy
        .query_row("SELECT COUNT(*) FROM frames", [], |r| r.get(0))
        .optional()
        .unwrap_or(None);
    Ok(BackupReport {
        source: path.to_path_buf(),
        dest: dest.to_path_buf(),
        bytes,
        frames: frames.and_then(|n| u64::try_from(n).ok()),
    })
}

/// Copies what `conn` sees of its main database into a new file at `dest`
/// (see the module docs for why in one step). The copy is a self-contained
/// rollback-journal database: no `-wal` belongs to it. Returns its size.
pub(crate) fn backup_connection(
    conn: &Connection,
    path: &Path,
    dest: &Path,
) -> Result<u64, StoreError> {
    let partial = with_suffix(dest, ".partial");
    let fail = |cause: String| StoreError::Backup {
        path: path.to_path_buf(),
        dest: dest.to_path_buf(),
        cause,
    };
    let cleanup = || {
        for s in ["", "-journal", "-wal", "-shm"] {
            let _ = std::fs::remove_file(with_suffix(&partial, s));
        }
    };
    cleanup();
    let result = (|| {
        let mut out = Connection::open(&partial).map_err(|e| fail(e.to_string()))?;
        {
            let backup = Backup::new(conn, &mut out).map_err(|e| fail(e.to_string()))?;
            let mut waited = Duration::ZERO;
            loop {
                match backup.step(-1).map_err(|e| fail(e.to_string()))? {
                    StepResult::Done => break,
                    StepResult::More => {}
                    // Busy, Locked (the enum is non-exhaustive): wait a little.
                    _ => {
                        if waited >= BACKUP_LOCK_WAIT {
                            return Err(fail(
                                "the source stayed locked (is a VACUUM running?): try again".into(),
                            ));
                        }
                        let pause = Duration::from_millis(50);
                        std::thread::sleep(pause);
                        waited += pause;
                    }
                }
            }
        }
        // The copied header says WAL when the source is in WAL mode; a
        // backup should be one file.
        let _: String = out
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
            .map_err(|e| fail(e.to_string()))?;
        drop(out);
        let file = std::fs::File::open(&partial).map_err(|e| fail(e.to_string()))?;
        file.sync_all().map_err(|e| fail(e.to_string()))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        std::fs::rename(&partial, dest).map_err(|e| fail(e.to_string()))?;
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Makes the rename itself durable; not every platform can.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(bytes)
    })();
    if result.is_err() {
        cleanup();
    }
    result
}

/// What `clipd db vacuum` did.
#[derive(Debug, Clone, PartialEq)]
pub struct VacuumReport {
    pub path: PathBuf,
    pub incremental: bool,
    /// Main file plus WAL on disk, before and after.
    pub before_bytes: u64,
    pub after_bytes: u64,
}

impl fmt::Display for VacuumReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {:.2} MiB -> {:.2} MiB",
            if self.incremental {
                "released free pages of"
            } else {
                "vacuumed"
            },
            self.path.display(),
            mib(self.before_bytes),
            mib(self.after_bytes)
        )
    }
}

/// The bytes a full `VACUUM` of `path` needs free on its volume (it writes
/// the whole database through the WAL), and what is available there.
pub fn vacuum_space(path: &Path) -> (u64, Option<u64>) {
    (
        file_len(path) + file_len(&with_suffix(path, "-wal")),
        crate::store::volume::available_bytes(path),
    )
}

/// A full `VACUUM` (rebuilds the file, switching on incremental
/// auto-vacuum), or with `incremental` only hands free pages back. Ends with
/// a truncating checkpoint so the file on disk shrinks. Safe while the
/// daemon runs: its writer waits, and if it waits too long it holds its
/// frames in memory and retries.
pub fn vacuum(path: &Path, incremental: bool) -> Result<VacuumReport, StoreError> {
    let conn = open_existing(path, false)?;
    let on_disk = || file_len(path) + file_len(&with_suffix(path, "-wal"));
    let before_bytes = on_disk();
    if incremental {
        if pragma_u64(&conn, path, "auto_vacuum")? != 2 {
            return Err(StoreError::NotIncremental {
                path: path.to_path_buf(),
            });
        }
        incremental_vacuum(&conn, None).ctx(path, "releasing free pages (incremental_vacuum)")?;
    } else {
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")
            .ctx(path, "vacuuming")?;
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .ctx(path, "checkpointing the WAL")?;
    drop(conn);
    Ok(VacuumReport {
        path: path.to_path_buf(),
        incremental,
        before_bytes,
        after_bytes: on_disk(),
    })
}
