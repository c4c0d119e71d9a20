//! Opening the daemon's database safely: refusing network file systems,
//! moving a damaged file aside, backing up before a migration, and switching
//! on incremental auto-vacuum.
//!
//! A daemon in a shed restarts after every power cut. If the card left the
//! file damaged, refusing to start would stop all logging until someone
//! comes by; deleting it would destroy the history. So a file that fails
//! `PRAGMA quick_check` is renamed (with its `-wal` and `-shm`, which belong
//! to it) to `<db>.corrupt-<UTC time>` and a fresh history is started, with
//! an error-level log line naming both files.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::store::files::{mib, with_suffix};
use crate::store::maintenance::backup_connection;
use crate::store::volume::{available_bytes, network_fs_of};
use crate::store::{Ctx, StoreError, BUSY_TIMEOUT, SCHEMA_VERSION};

/// Problems `quick_check` lists at most (the first is what the log shows).
const QUICK_CHECK_MAX_PROBLEMS: u32 = 5;

/// Refuses a database on a network file system unless `allow` says the
/// user knows; then only warns.
pub(crate) fn check_local_fs(path: &Path, allow: bool) -> Result<(), StoreError> {
    let Some(fs) = network_fs_of(path) else {
        return Ok(());
    };
    if !allow {
        return Err(StoreError::NetworkFs {
            path: path.to_path_buf(),
            fs,
        });
    }
    log::warn!(
        "database {} is on a network file system ({fs}): SQLite's locking and WAL index are \
         unreliable there and the file may be damaged; store.allow_network_fs is set, so going on",
        path.display()
    );
    Ok(())
}

/// What `quick_check` concluded about an existing file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Health {
    Ok,
    /// Damaged: the first problems SQLite reported.
    Damaged(String),
}

/// Runs `PRAGMA quick_check` on an existing file. Damage (including a file
/// that is not a database at all) is a [`Health::Damaged`]; a file that
/// cannot be opened or read (permissions, I/O) is an error, never damage,
/// so nothing is moved aside for a problem a move would not fix.
pub(crate) fn quick_check(path: &Path) -> Result<Health, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|cause| StoreError::Open {
        path: path.to_path_buf(),
        cause,
    })?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .ctx(path, "setting the busy timeout")?;
    let rows: rusqlite::Result<Vec<String>> = conn
        .prepare(&format!("PRAGMA quick_check({QUICK_CHECK_MAX_PROBLEMS})"))
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect());
    match rows {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => Ok(Health::Ok),
        Ok(rows) => Ok(Health::Damaged(rows.join("; "))),
        Err(e)
            if matches!(
                e.sqlite_error_code(),
                Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
            ) =>
        {
            Ok(Health::Damaged(e.to_string()))
        }
        Err(e) => Err(StoreError::sqlite(
            path,
            "checking the database (quick_check)",
            e,
        )),
    }
}

/// Checks an existing database and, if it is damaged, moves it aside so a
/// fresh one can be started at `path`. Returns where it went.
pub(crate) fn quick_check_or_move_aside(path: &Path) -> Result<Option<PathBuf>, StoreError> {
    let problem = match quick_check(path)? {
        Health::Ok => return Ok(None),
        Health::Damaged(problem) => problem,
    };
    let dest = move_aside(path)?;
    log::error!(
        "database {} is damaged (quick_check: {problem}); moved it to {} and started a fresh \
         history at {}: restore from a backup or recover rows from the moved file with \
         `sqlite3 {} .recover`",
        path.display(),
        dest.display(),
        path.display(),
        dest.display(),
    );
    Ok(Some(dest))
}

/// Renames the database and its `-wal`/`-shm` to `<db>.corrupt-<UTC time>`
/// (and the same with `-wal`/`-shm`), so SQLite can still open the pair.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let dest = unused_name(path, &format!("corrupt-{}", utc_stamp()), "");
    for suffix in ["", "-wal", "-shm"] {
        let from = with_suffix(path, suffix);
        if suffix.is_empty() || from.exists() {
            let to = with_suffix(&dest, suffix);
            std::fs::rename(&from, &to).map_err(|cause| StoreError::MoveAside {
                path: from.clone(),
                dest: to.clone(),
                cause,
            })?;
        }
    }
    Ok(dest)
}

/// Backs the database up to `<db>.pre-v<N>.bak` before it is migrated to
/// schema `N`, with SQLite's online backup API (a consistent copy even
/// while a reader is open). An earlier backup of that name is kept and the
/// new one gets a time stamp: the older file is the more original.
pub(crate) fn backup_before_migration(
    conn: &Connection,
    path: &Path,
    found: u32,
) -> Result<PathBuf, StoreError> {
    let dest = unused_name(path, &format!("pre-v{SCHEMA_VERSION}"), ".bak");
    backup_connection(conn, path, &dest).map_err(|e| match e {
        StoreError::Backup { path, dest, cause } => StoreError::Backup {
            path,
            dest,
            cause: format!(
                "{cause}; schema {found} is migrated to {SCHEMA_VERSION} only after a backup: \
                 free space on its volume and start again"
            ),
        },
        other => other,
    })?;
    log::info!(
        "database {}: schema {found} is older than {SCHEMA_VERSION}; backed it up to {} before migrating",
        path.display(),
        dest.display()
    );
    Ok(dest)
}

/// Switches an existing database to `auto_vacuum = INCREMENTAL`, which only
/// a `VACUUM` can do once tables exist. New databases get it at creation
/// (see `Store::open`); this converts files created before. Without it,
/// retention still frees pages for reuse but the file never shrinks.
///
/// The `VACUUM` rewrites the whole file through the WAL, so it needs about
/// the database's size in free space; when that is not there it is skipped
/// with a warning (and tried again at the next start). It never fails the
/// open: the history works either way.
pub(crate) fn ensure_incremental_vacuum(conn: &Connection, path: &Path) {
    let pragma = |name: &str| -> Option<u64> {
        conn.pragma_query_value(None, name, |r| r.get::<_, i64>(0))
            .ok()
            .and_then(|v| u64::try_from(v).ok())
    };
    // 2 = incremental.
    if pragma("auto_vacuum") == Some(2) {
        return;
    }
    let size = pragma("page_count").unwrap_or(0) * pragma("page_size").unwrap_or(4096);
    if let Some(free) = available_bytes(path) {
        if free < size.saturating_mul(11) / 10 {
            log::warn!(
                "database {}: auto_vacuum is off and switching it on needs a VACUUM with about \
                 {:.1} MiB free ({:.1} MiB available): retention will reuse freed pages but the \
                 file will not shrink; free space, then restart or run `clipd db vacuum`",
                path.display(),
                mib(size),
                mib(free)
            );
            return;
        }
    }
    log::info!(
        "database {}: switching on incremental auto-vacuum (a one-time VACUUM of {:.1} MiB)",
        path.display(),
        mib(size)
    );
    if let Err(e) = conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;") {
        log::warn!(
            "{}; auto_vacuum stays off (the file will not shrink after retention): free space, \
             then restart or run `clipd db vacuum`",
            StoreError::sqlite(path, "switching on incremental auto-vacuum (VACUUM)", e)
        );
    }
}

/// `<db>.<tag><ext>`, or with `.1`, `.2`… before `ext` if that exists.
fn unused_name(path: &Path, tag: &str, ext: &str) -> PathBuf {
    let base = with_suffix(path, &format!(".{tag}"));
    let first = with_suffix(&base, ext);
    if !taken(&first) {
        return first;
    }
    (1u32..)
        .map(|i| with_suffix(&base, &format!(".{i}{ext}")))
        .find(|p| !taken(p))
        .unwrap_or(first)
}

/// True when `p` (or a WAL or shared-memory file of that name) exists.
fn taken(p: &Path) -> bool {
    ["", "-wal", "-shm"]
        .iter()
        .any(|s| with_suffix(p, s).symlink_metadata().is_ok())
}

/// Now in UTC as `20240501T120000Z`: sorts by time, and has no `:` (which
/// some tools and file systems refuse in names).
pub(crate) fn utc_stamp() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_is_compact_utc() {
        let s = utc_stamp();
        assert_eq!(s.len(), "20240501T120000Z".len(), "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[8] == b'T', "{s}");
        assert!(s[..8].chars().all(|c| c.is_ascii_digit()), "{s}");
    }

    #[test]
    fn unused_name_never_reuses_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.db");
        let a = unused_name(&db, "pre-v3", ".bak");
        assert_eq!(a, dir.path().join("h.db.pre-v3.bak"));
        std::fs::write(&a, b"x").unwrap();
        let b = unused_name(&db, "pre-v3", ".bak");
        assert_eq!(b, dir.path().join("h.db.pre-v3.1.bak"));
        // A leftover -wal alone also claims the name.
        std::fs::write(with_suffix(&b, "-wal"), b"x").unwrap();
        let c = unused_name(&db, "pre-v3", ".bak");
        assert_eq!(c, dir.path().join("h.db.pre-v3.2.bak"));
    }

    #[test]
    fn a_healthy_file_is_ok_and_junk_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.db");
        Connection::open(&good)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        assert_eq!(quick_check(&good).unwrap(), Health::Ok);
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
        assert!(matches!(quick_check(&junk).unwrap(), Health::Damaged(_)));
        // A file that cannot be opened is an error, not damage.
        let missing = dir.path().join("none").join("x.db");
        assert!(quick_check(&missing).is_err());
    }
}
