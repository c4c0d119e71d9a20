//! The database's files on disk: the names of its WAL and side files, and their sizes.

use std::path::{Path, PathBuf};

/// `path` with `suffix` appended to its file name (`h.db` + `-wal`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Size of a file, 0 when it does not exist.
pub fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The database file plus its WAL, in bytes: what it takes on disk now.
pub fn on_disk_bytes(db: &Path) -> u64 {
    file_len(db) + file_len(&with_suffix(db, "-wal"))
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
