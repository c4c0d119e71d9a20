//! Everything that can go wrong with the history database, each error naming the file and, where
//! there is one, what the user can do about it.

use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

use crate::error::{ExitClass, HasExitClass};

/// Everything that can go wrong with the history database. Every variant
/// names the file, and most say what to do next.
///
/// The underlying SQLite message is part of the text rather than a
/// `source()`, so printing the error (even with its chain) says it once.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "database {} does not exist: check the path (the daemon creates it on its first run)",
        path.display()
    )]
    Missing { path: PathBuf },

    #[error("cannot open database {}: {cause}{}", path.display(), sqlite_hint(cause))]
    Open {
        path: PathBuf,
        cause: rusqlite::Error,
    },

    #[error("{} is a directory, not a database file: name the .db file itself", path.display())]
    IsDirectory { path: PathBuf },

    #[error(
        "{} is not a SQLite database (or it is damaged): point clipd at its history database, or move this file aside",
        path.display()
    )]
    NotADatabase { path: PathBuf },

    #[error(
        "database {} has no clipd schema: is it a clipd history database? (the daemon creates the schema on its first run)",
        path.display()
    )]
    NotClipd { path: PathBuf },

    #[error(
        "database {} is newer (schema {found}) than this clipd (schema {supported}): upgrade clipd",
        path.display()
    )]
    SchemaTooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error(
        "database {} has schema {found} but this clipd reads schema {supported}: open it once read-write (start the daemon) to migrate it",
        path.display()
    )]
    SchemaTooOld {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error(
        "database {}: migration {name} failed and was rolled back: {cause} (is this a clipd history database?)",
        path.display()
    )]
    Migration {
        path: PathBuf,
        name: &'static str,
        cause: rusqlite::Error,
    },

    #[error(
        "database {}: could not enable WAL mode (journal mode is {mode:?}): keep the database on a local filesystem",
        path.display()
    )]
    NoWal { path: PathBuf, mode: String },

    #[error(
        "database {}: disk full while {op}: {cause}; free space on its volume (rows committed earlier are kept)",
        path.display()
    )]
    DiskFull {
        path: PathBuf,
        op: &'static str,
        cause: rusqlite::Error,
    },

    #[error("database {}: {op} failed: {cause}{}", path.display(), sqlite_hint(cause))]
    Sqlite {
        path: PathBuf,
        op: &'static str,
        cause: rusqlite::Error,
    },

    #[error(
        "database {}: unreadable {what} in row {row}: {detail}; the row was written by something other than this clipd",
        path.display()
    )]
    InvalidData {
        path: PathBuf,
        what: &'static str,
        row: String,
        detail: String,
    },

    #[error("database {}: refusing to store {what}: {reason}", path.display())]
    InvalidRecord {
        path: PathBuf,
        /// Which record, e.g. `frame "cam/0001.jpg" from source "cam"`.
        what: String,
        reason: String,
    },

    #[error(
        "database {} is on a network file system ({fs}), where SQLite's locking and WAL are unreliable: \
         move it to a local disk (store.path) or set store.allow_network_fs = true",
        path.display()
    )]
    NetworkFs { path: PathBuf, fs: &'static str },

    #[error(
        "database {} is damaged and could not be moved aside to {}: {cause}; move it away by hand (or restore a backup)",
        path.display(),
        dest.display()
    )]
    MoveAside {
        path: PathBuf,
        dest: PathBuf,
        cause: std::io::Error,
    },

    #[error(
        "database {}: backup to {} failed: {cause}",
        path.display(),
        dest.display()
    )]
    Backup {
        path: PathBuf,
        dest: PathBuf,
        cause: String,
    },

    #[error(
        "database {}: auto_vacuum is off, so there are no free pages to release incrementally: \
         run `clipd db vacuum` without --incremental once to switch it on",
        path.display()
    )]
    NotIncremental { path: PathBuf },

    #[error(
        "database {} is damaged ({problems} problems; first: {first}): restore it from a backup, \
         or move it aside and let the daemon start a fresh one",
        path.display()
    )]
    Damaged {
        path: PathBuf,
        problems: usize,
        first: String,
    },
}

impl HasExitClass for StoreError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::Io
    }
}

impl StoreError {
    /// The database file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            StoreError::Missing { path }
            | StoreError::Open { path, .. }
            | StoreError::IsDirectory { path }
            | StoreError::NotADatabase { path }
            | StoreError::NotClipd { path }
            | StoreError::SchemaTooNew { path, .. }
            | StoreError::SchemaTooOld { path, .. }
            | StoreError::Migration { path, .. }
            | StoreError::NoWal { path, .. }
            | StoreError::DiskFull { path, .. }
            | StoreError::Sqlite { path, .. }
            | StoreError::InvalidData { path, .. }
            | StoreError::InvalidRecord { path, .. }
            | StoreError::NetworkFs { path, .. }
            | StoreError::MoveAside { path, .. }
            | StoreError::Backup { path, .. }
            | StoreError::NotIncremental { path }
            | StoreError::Damaged { path, .. } => path,
        }
    }

    /// True when the volume (or SQLite's page limit) is full, so a caller can
    /// keep running and retry later instead of treating it as fatal.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }

    /// True when SQLite found the file damaged: retrying cannot help, and
    /// the next start's `quick_check` moves the file aside.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::NotADatabase { .. })
            || self.sqlite_code() == Some(ErrorCode::DatabaseCorrupt)
    }

    /// True for a constraint violation: the rows, not the database, are at
    /// fault (a duplicate frame id from a second writer, say).
    pub fn is_constraint(&self) -> bool {
        self.sqlite_code() == Some(ErrorCode::ConstraintViolation)
    }

    /// Wraps a rusqlite error, lifting the cases a user acts on differently
    /// (full disk, not a database) into their own variants.
    pub(crate) fn sqlite(path: &Path, op: &'static str, cause: rusqlite::Error) -> Self {
        let path = path.to_path_buf();
        match cause.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::DiskFull { path, op, cause },
            Some(ErrorCode::NotADatabase) => StoreError::NotADatabase { path },
            _ => StoreError::Sqlite { path, op, cause },
        }
    }

    /// SQLite's result code, when SQLite reported the error.
    pub fn sqlite_code(&self) -> Option<ErrorCode> {
        match self {
            StoreError::Open { cause, .. }
            | StoreError::Migration { cause, .. }
            | StoreError::DiskFull { cause, .. }
            | StoreError::Sqlite { cause, .. } => cause.sqlite_error_code(),
            _ => None,
        }
    }
}

/// A hint appended to SQLite's own message for the failures that have an
/// obvious next step.
fn sqlite_hint(err: &rusqlite::Error) -> &'static str {
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            " (another connection held a lock longer than the busy timeout: is a second writer running?)"
        }
        Some(ErrorCode::ReadOnly) => " (check write permission on the file and its directory)",
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            " (check that the directory exists and that clipd may access it)"
        }
        Some(ErrorCode::DatabaseCorrupt) => {
            " (the file is damaged: restore it from a backup or move it aside)"
        }
        Some(ErrorCode::SystemIoFailure) => " (I/O error: check the storage device)",
        _ => "",
    }
}

/// Attaches the database path and the operation to a rusqlite result.
pub(crate) trait Ctx<T> {
    fn ctx(self, path: &Path, op: &'static str) -> Result<T, StoreError>;
}

impl<T> Ctx<T> for rusqlite::Result<T> {
    fn ctx(self, path: &Path, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::sqlite(path, op, e))
    }
}
