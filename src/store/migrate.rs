//! Schema migrations: numbered `.sql` files embedded in the binary and
//! tracked with `PRAGMA user_version`.
//!
//! `user_version` lives in the database header, so it is written in the same
//! transaction as the migration's DDL: a crash mid-migration leaves the file at
//! the previous schema, never at a half-applied one.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::store::{Ctx, StoreError};

/// One embedded migration file.
#[derive(Debug)]
pub(crate) struct Migration {
    /// Schema version reached once the file has been applied (its number).
    pub(crate) version: u32,
    /// File name without extension, used in error messages.
    pub(crate) name: &'static str,
    pub(crate) sql: &'static str,
}

/// Every migration, in order. Released files are never edited; a schema
/// change is a new file appended here.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init",
        sql: include_str!("migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_state_changes",
        sql: include_str!("migrations/0002_state_changes.sql"),
    },
    Migration {
        version: 3,
        name: "0003_retention",
        sql: include_str!("migrations/0003_retention.sql"),
    },
];

/// The schema version this build writes and expects.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Reads `PRAGMA user_version`. This is also the first read of the file, so
/// a file that is not SQLite at all is reported here.
pub(crate) fn read_version(conn: &Connection, path: &Path) -> Result<u32, StoreError> {
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .ctx(path, "reading the schema version")?;
    // A negative user_version was not written by clipd; treat it as "newer
    // than we know" so it is refused rather than migrated over.
    Ok(u32::try_from(v).unwrap_or(u32::MAX))
}

/// Refuses a database written by a newer clipd: its schema may have columns
/// or constraints this build would violate.
fn refuse_newer(path: &Path, found: u32) -> Result<(), StoreError> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Brings the database up to [`SCHEMA_VERSION`], one transaction per file.
/// Returns how many migrations were applied (0 when already current).
///
/// Each transaction is `IMMEDIATE` and re-reads `user_version` inside it, so
/// two processes opening a fresh file at once cannot both apply a migration.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<usize, StoreError> {
    let start = read_version(conn, path)?;
    refuse_newer(path, start)?;
    let mut applied = 0;
    for m in MIGRATIONS.iter().filter(|m| m.version > start) {
        let fail = |cause| StoreError::Migration {
            path: path.to_path_buf(),
            name: m.name,
            cause,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        let current = read_version(&tx, path)?;
        refuse_newer(path, current)?;
        if current >= m.version {
            // Another process got there first.
            continue;
        }
        tx.execute_batch(m.sql).map_err(fail)?;
        tx.pragma_update(None, "user_version", m.version)
            .map_err(fail)?;
        tx.commit().map_err(fail)?;
        log::info!("database {}: applied migration {}", path.display(), m.name);
        applied += 1;
    }
    Ok(applied)
}

/// Checks that a database opened read-only has exactly the schema this build
/// queries: a read-only connection cannot migrate an older one.
pub(crate) fn check_read_only(conn: &Connection, path: &Path) -> Result<u32, StoreError> {
    let found = read_version(conn, path)?;
    refuse_newer(path, found)?;
    if found == 0 {
        return Err(StoreError::NotClipd {
            path: path.to_path_buf(),
        });
    }
    if found < SCHEMA_VERSION {
        return Err(StoreError::SchemaTooOld {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreOptions};

    #[test]
    fn versions_are_contiguous_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{}",
                m.name
            );
        }
    }

    fn table_names(store: &Store) -> Vec<String> {
        let mut stmt = store
            .conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap();
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        names
    }

    #[test]
    fn migrates_from_empty_and_reopen_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let store = Store::open(&path, &StoreOptions::default()).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(
            table_names(&store),
            [
                "classes",
                "frames",
                "refinements",
                "state_changes",
                "text_cache"
            ]
        );
        drop(store);

        let mut store = Store::open(&path, &StoreOptions::default()).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(migrate(&mut store.conn, &path).unwrap(), 0);
        assert_eq!(table_names(&store).len(), 5);
    }

    #[test]
    fn a_version_1_history_upgrades_and_keeps_its_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0].sql).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO frames (ts_ms, source, frame_ref, label, score, model_id) \
                 VALUES (5, 'cam', 'a.jpg', 'dog', 0.9, 'm')",
                [],
            )
            .unwrap();
        }
        let store = Store::open(&path, &StoreOptions::default()).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert!(table_names(&store).contains(&"state_changes".to_string()));
        assert_eq!(store.max_frame_id().unwrap(), 1);
    }

    #[test]
    fn newer_schema_is_refused_with_upgrade_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", SCHEMA_VERSION + 2)
                .unwrap();
        }
        let err =
            Store::open(&path, &StoreOptions::default()).expect_err("newer schema must be refused");
        assert!(
            matches!(err, StoreError::SchemaTooNew { found, .. } if found == SCHEMA_VERSION + 2)
        );
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("upgrade clipd"), "{msg}");
        // The read-only path refuses it too, and the file is left untouched.
        assert!(matches!(
            Store::open_read_only(&path),
            Err(StoreError::SchemaTooNew { .. })
        ));
        assert!(path.exists());
    }

    #[test]
    fn read_only_refuses_unmigrated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        }
        let err = Store::open_read_only(&path).unwrap_err();
        assert!(matches!(err, StoreError::NotClipd { .. }), "{err}");
    }

    #[test]
    fn failed_migration_names_the_file_and_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clash.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("CREATE TABLE frames (x INTEGER)")
                .unwrap();
        }
        let err = Store::open(&path, &StoreOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("0001_init"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        let conn = Connection::open(&path).unwrap();
        let v: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, 0);
        let n: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_schema WHERE name = 'text_cache'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0, "the failed migration must leave nothing behind");
    }

    #[test]
    fn not_a_database_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = Store::open(&path, &StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::NotADatabase { .. }), "{err}");
        let err = Store::open_read_only(&path).unwrap_err();
        assert!(matches!(err, StoreError::NotADatabase { .. }), "{err}");
        // An existing file is never deleted on failure.
        assert!(path.exists());
    }
}
