//! The status file `clipd status` reads: what the running daemon is doing, rewritten every
//! `daemon.status_interval_secs`.
//!
//! It is a small JSON document beside the database (`clipd.db.status.json` unless
//! `daemon.status_file` says otherwise), replaced atomically (temp file, fsync, rename) so a
//! reader, or the next boot after a power cut, sees either the previous report or the new one,
//! never half of each. Counters are totals since the daemon started; rates are over the last
//! interval. The history itself stays in the database: this file only answers "is it alive,
//! and is it keeping up?".

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{ExitClass, HasExitClass};
use serde::{Deserialize, Serialize};

/// Reading or writing the status file failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("status file {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("status file {}: not a clipd status report ({detail}); it is rewritten while the daemon runs, or delete it", path.display())]
    Parse { path: PathBuf, detail: String },
}

impl HasExitClass for StatusError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::Io
    }
}

impl StatusError {
    /// Whether the file simply does not exist (no daemon has written one yet).
    pub fn is_missing(&self) -> bool {
        matches!(self, StatusError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Everything the daemon reports about itself.
///
/// Unknown fields are ignored and missing ones take their defaults, so a `clipd status` from
/// one version reads the file of another.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusReport {
    /// The daemon's process id (checked with `kill(pid, 0)` by `clipd status`).
    pub pid: u32,
    /// clipd's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// When the daemon started and when this report was written, UTC epoch ms.
    pub started_ms: i64,
    pub updated_ms: i64,
    /// How often the report is rewritten, in ms: a report older than a few intervals is stale.
    pub interval_ms: u64,
    /// The configuration file the daemon runs with, if any.
    pub config: Option<PathBuf>,
    /// The bundle's sha256 and the adapter's id (`None`: zero-shot).
    pub model_id: String,
    pub adapter_id: Option<String>,
    /// The history database.
    pub db_path: PathBuf,
    /// One entry per configured source, in config order.
    pub sources: Vec<SourceStatus>,
    /// The transductive refiner, when configured.
    pub refiner: Option<RefinerStatus>,
    /// Configuration reloads (SIGHUP) taken, and why the last refused one was refused.
    pub reloads: u64,
    pub last_reload_error: Option<String>,
    pub db: DbStatus,
}

/// One frame source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SourceStatus {
    /// The source's name (as logged with each frame) and kind (`camera`, `dir`, `file`, `glob`).
    pub name: String,
    pub kind: String,
    /// Frames the source delivered.
    pub frames: u64,
    /// Frames classified, and frames that could not be (decode or inference errors).
    pub classified: u64,
    pub failed: u64,
    /// Frames the frame policy passed over (fps cap, every-Nth, novelty gate).
    pub skipped: u64,
    /// Frames dropped because the queue was full (inference falling behind).
    pub dropped: u64,
    /// Frames classified per second over the last status interval.
    pub fps: f64,
    /// Camera reopenings, and how many of them followed a stall (no frame in `stall_secs`).
    pub reconnects: u64,
    pub stalls: u64,
    /// Whether the device is open now (`None` for file sources).
    pub connected: Option<bool>,
    /// The most recent classification: top-1 label, its score and the frame's time (UTC ms).
    pub last_label: Option<String>,
    pub last_score: Option<f32>,
    pub last_ts_ms: Option<i64>,
    /// The refiner's smoothed decision for this source (what it is looking at), if any.
    pub state: Option<String>,
}

/// The transductive refiner.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RefinerStatus {
    /// Passes written to the database, passes refused by the `max_changed` guard, and passes
    /// that failed.
    pub passes: u64,
    pub guarded: u64,
    pub failed: u64,
    /// Duration of the last pass in ms, when it ran (UTC ms), and how many labels it changed.
    pub last_ms: Option<u64>,
    pub last_ts_ms: Option<i64>,
    pub last_changed: Option<u64>,
}

/// The database writer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DbStatus {
    /// Size on disk: the database file plus its WAL.
    pub bytes: u64,
    /// Rows committed since the daemon started, and the id of the last one.
    pub rows_committed: u64,
    pub last_committed_id: Option<i64>,
    /// Rows waiting for the next commit.
    pub pending: u64,
    /// Rows lost because the writer could not keep up or a commit failed for good.
    pub dropped: u64,
    /// Failed commits, and the last error's message.
    pub commit_errors: u64,
    pub last_error: Option<String>,
}

impl StatusReport {
    /// Writes the report to `path` atomically: a temp file in the same directory is written,
    /// fsynced and renamed over `path`. On error the temp file is removed and `path` is left
    /// as it was.
    pub fn write_atomic(&self, path: &Path) -> Result<(), StatusError> {
        let io_err = |source| StatusError::Io {
            path: path.to_path_buf(),
            source,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|e| io_err(io::Error::other(e)))?;
        let tmp = temp_path(path);
        let written = write_synced(&tmp, &json).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(e));
        }
        Ok(())
    }

    /// Reads a report written by [`StatusReport::write_atomic`].
    pub fn read(path: &Path) -> Result<StatusReport, StatusError> {
        let bytes = std::fs::read(path).map_err(|source| StatusError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| StatusError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
    }

    /// Whether the report is recent enough to describe a live daemon at `now_ms`: written
    /// within three intervals (at least 15 s, so a briefly busy machine does not flap).
    pub fn is_fresh(&self, now_ms: i64) -> bool {
        let interval = i64::try_from(self.interval_ms).unwrap_or(i64::MAX);
        let window = interval.saturating_mul(3).max(15_000);
        now_ms.saturating_sub(self.updated_ms) <= window
    }
}

/// The status file used when `daemon.status_file` is not set: `<db>.status.json` beside the
/// database, e.g. `/var/lib/clipd/clipd.db.status.json` (in the unit's StateDirectory, the one
/// directory the daemon may write).
pub fn default_status_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".status.json");
    PathBuf::from(name)
}

/// `.<name>.<pid>.tmp` in the same directory, so the rename never crosses file systems.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "status".to_string());
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    // Without it a power cut after the rename can leave an empty file under the final name.
    f.sync_all()
}

/// Whether process `pid` exists, by `kill(pid, 0)`. A process of another user (the daemon's
/// transient `DynamicUser`) answers EPERM, which still means it exists.
pub fn process_alive(pid: u32) -> bool {
    // 0 and negative values address process groups, not a process.
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission checks; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Events per second between two readings of a monotonically increasing counter.
///
/// A counter that went backwards (it was reset) and an empty interval both give 0.
pub fn rate(previous: u64, current: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if current < previous || secs <= 0.0 {
        return 0.0;
    }
    (current - previous) as f64 / secs
}

/// Turns successive snapshots of a counter into a rate over each interval between them.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    last: Option<(Instant, u64)>,
}

impl RateMeter {
    pub fn new() -> RateMeter {
        RateMeter::default()
    }

    /// Records `count` as of `now` and returns the rate since the previous call (0 on the
    /// first call, which only sets the baseline).
    pub fn update(&mut self, now: Instant, count: u64) -> f64 {
        let r = match self.last {
            Some((then, prev)) => rate(prev, count, now.saturating_duration_since(then)),
            None => 0.0,
        };
        self.last = Some((now, count));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StatusReport {
        StatusReport {
            pid: 4242,
            version: "0.1.0".into(),
            started_ms: 1_714_521_600_000,
            updated_ms: 1_714_533_120_000,
            interval_ms: 5_000,
            config: Some("/etc/clipd/clipd.toml".into()),
            model_id: "ab12".into(),
            adapter_id: Some("tip-f:cd34".into()),
            db_path: "/var/lib/clipd/clipd.db".into(),
            sources: vec![
                SourceStatus {
                    name: "shed".into(),
                    kind: "camera".into(),
                    frames: 9_000,
                    classified: 8_100,
                    failed: 3,
                    skipped: 800,
                    dropped: 97,
                    fps: 2.5,
                    reconnects: 4,
                    stalls: 1,
                    connected: Some(true),
                    last_label: Some("fox".into()),
                    last_score: Some(0.875),
                    last_ts_ms: Some(1_714_533_119_000),
                    state: Some("empty".into()),
                },
                SourceStatus {
                    name: "inbox".into(),
                    kind: "dir".into(),
                    ..SourceStatus::default()
                },
            ],
            refiner: Some(RefinerStatus {
                passes: 12,
                guarded: 1,
                failed: 0,
                last_ms: Some(37),
                last_ts_ms: Some(1_714_533_100_000),
                last_changed: Some(5),
            }),
            reloads: 2,
            last_reload_error: Some("clipd.toml:3: top_k: invalid type".into()),
            db: DbStatus {
                bytes: 12_345_678,
                rows_committed: 8_103,
                last_committed_id: Some(99_000),
                pending: 7,
                dropped: 0,
                commit_errors: 1,
                last_error: Some("disk full".into()),
            },
        }
    }

    #[test]
    fn reports_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clipd.db.status.json");
        let report = sample();
        report.write_atomic(&path).unwrap();
        assert_eq!(StatusReport::read(&path).unwrap(), report);
        // Rewriting replaces it and leaves no temp file behind.
        let mut next = report.clone();
        next.updated_ms += 5_000;
        next.sources[0].classified += 10;
        next.write_atomic(&path).unwrap();
        assert_eq!(StatusReport::read(&path).unwrap(), next);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("clipd.db.status.json")]);
    }

    #[test]
    fn a_failed_write_keeps_the_previous_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        sample().write_atomic(&path).unwrap();
        // The report's own path is now a directory's name: the rename must fail.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"keep").unwrap();
        let err = sample().write_atomic(&blocked).unwrap_err();
        assert!(err.to_string().contains("blocked"), "{err}");
        assert!(blocked.join("x").is_file());
        assert_eq!(StatusReport::read(&path).unwrap(), sample());
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
        // A directory that does not exist is an I/O error naming the file, not a panic.
        let err = sample()
            .write_atomic(&dir.path().join("missing/status.json"))
            .unwrap_err();
        assert!(matches!(err, StatusError::Io { .. }), "{err}");
        assert!(err.to_string().contains("missing/status.json"), "{err}");
    }

    #[test]
    fn reading_tells_missing_from_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let missing = StatusReport::read(&dir.path().join("nope.json")).unwrap_err();
        assert!(missing.is_missing());
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, b"{\"pid\": \"twelve\"").unwrap();
        let err = StatusReport::read(&bad).unwrap_err();
        assert!(!err.is_missing());
        assert!(matches!(err, StatusError::Parse { .. }));
        assert!(err.to_string().contains("bad.json"), "{err}");
        assert_eq!(err.to_string().lines().count(), 1);
    }

    #[test]
    fn other_versions_files_still_read() {
        // Older: fields missing; newer: fields unknown to this version.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        std::fs::write(
            &p,
            br#"{"pid": 7, "sources": [{"name": "a", "fps": 1.5, "future": 1}], "added_later": {}}"#,
        )
        .unwrap();
        let r = StatusReport::read(&p).unwrap();
        assert_eq!(r.pid, 7);
        assert_eq!(r.sources.len(), 1);
        assert_eq!(r.sources[0].fps, 1.5);
        assert_eq!(r.refiner, None);
        assert_eq!(r.db, DbStatus::default());
    }

    #[test]
    fn default_path_sits_beside_the_database() {
        assert_eq!(
            default_status_path(Path::new("/var/lib/clipd/clipd.db")),
            Path::new("/var/lib/clipd/clipd.db.status.json")
        );
        assert_eq!(
            default_status_path(Path::new("history.sqlite")),
            Path::new("history.sqlite.status.json")
        );
    }

    #[test]
    fn freshness_allows_three_intervals() {
        let mut r = sample();
        r.interval_ms = 10_000;
        assert!(r.is_fresh(r.updated_ms));
        assert!(r.is_fresh(r.updated_ms + 30_000));
        assert!(!r.is_fresh(r.updated_ms + 30_001));
        // Short intervals still get 15 s.
        r.interval_ms = 1_000;
        assert!(r.is_fresh(r.updated_ms + 15_000));
        assert!(!r.is_fresh(r.updated_ms + 15_001));
        // A clock that went backwards is not staleness.
        assert!(r.is_fresh(r.updated_ms - 60_000));
    }

    #[test]
    fn this_process_is_alive_and_nonsense_pids_are_not() {
        assert!(process_alive(std::process::id()));
        // Never kill(0, …) or kill(-1, …): those address groups of processes.
        assert!(!process_alive(0));
        assert!(!process_alive(u32::MAX));
        // A child that has exited and been reaped no longer exists.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn rates_follow_counter_differences() {
        assert_eq!(rate(100, 110, Duration::from_secs(2)), 5.0);
        assert_eq!(rate(0, 3, Duration::from_millis(1500)), 2.0);
        assert_eq!(rate(110, 100, Duration::from_secs(2)), 0.0);
        assert_eq!(rate(1, 5, Duration::ZERO), 0.0);
        let t0 = Instant::now();
        let mut m = RateMeter::new();
        assert_eq!(m.update(t0, 40), 0.0);
        assert_eq!(m.update(t0 + Duration::from_secs(4), 60), 5.0);
        assert_eq!(m.update(t0 + Duration::from_secs(5), 60), 0.0);
        assert_eq!(m.update(t0 + Duration::from_secs(7), 63), 1.5);
    }
}
