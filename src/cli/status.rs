//! `clipd status`: what the daemon is doing, from its status file and the history database.
//!
//! The status file (rewritten by `clipd run` every few seconds) holds the live counters: fps,
//! drops, reconnects, refiner passes. The database holds what survives the process: frames,
//! last labels, refinements. Either alone is enough for a report; the command fails (exit 4)
//! only when neither can be read.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};
use serde::Serialize;

use clipd::config::{self, Loaded};
use clipd::daemon::status::{default_status_path, process_alive, StatusReport};
use clipd::store::{format_ts_ms, is_broken_pipe, now_ms, on_disk_bytes, HistorySnapshot, Store};

/// Where a deployed daemon's configuration lives (see systemd/clipd.service).
const SYSTEM_CONFIG: &str = "/etc/clipd/clipd.toml";

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Configuration file (for store.path and daemon.status_file) [default: ./clipd.toml,
    /// else /etc/clipd/clipd.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// History database [default: the config's store.path, else the one the status file names,
    /// else clipd.db].
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
    /// Status file written by `clipd run` [default: the config's daemon.status_file, else
    /// <database>.status.json].
    #[arg(long, value_name = "FILE")]
    status_file: Option<PathBuf>,
    /// text or json.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

/// What `clipd status` concludes about the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Liveness {
    /// The process exists and its report is fresh.
    Running,
    /// The process exists but has not rewritten its report for several intervals (hung, or
    /// its pid now belongs to another process after a reboot).
    NotUpdating,
    /// The process no longer exists.
    NotRunning,
    /// No readable status file: nothing is known about a daemon.
    Unknown,
}

/// The history database as `clipd status` sees it.
#[derive(Debug, Clone, Serialize)]
struct DbSnapshot {
    path: PathBuf,
    /// Database file plus WAL, in bytes.
    bytes: u64,
    #[serde(flatten)]
    history: HistorySnapshot,
}

/// The whole answer, printed as text or JSON.
#[derive(Debug, Serialize)]
struct Report {
    state: Liveness,
    now_ms: i64,
    status_file: PathBuf,
    status: Option<StatusReport>,
    status_error: Option<String>,
    database: Option<DbSnapshot>,
    database_error: Option<String>,
}

/// Print what the daemon is (or was last) doing.
pub fn status(args: StatusArgs) -> Result<ExitCode> {
    let cfg = if args.db.is_some() && args.status_file.is_some() {
        // Both paths given: a broken config must not stand in the way.
        None
    } else {
        config_for_status(args.config.as_deref())?
    };
    let cfg_db = cfg.as_ref().map(|l| l.resolve(&l.config.store.path));
    let status_file = args
        .status_file
        .clone()
        .or_else(|| {
            cfg.as_ref()
                .and_then(|l| l.config.daemon.status_file.as_ref().map(|p| l.resolve(p)))
        })
        .unwrap_or_else(|| {
            default_status_path(
                args.db
                    .as_deref()
                    .or(cfg_db.as_deref())
                    .unwrap_or(Path::new("clipd.db")),
            )
        });

    let (status, status_error) = match StatusReport::read(&status_file) {
        Ok(r) => (Some(r), None),
        Err(e) if e.is_missing() => (None, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let db_path = args
        .db
        .clone()
        .or(cfg_db)
        .or_else(|| {
            status
                .as_ref()
                .map(|s| s.db_path.clone())
                .filter(|p| !p.as_os_str().is_empty())
        })
        .unwrap_or_else(|| PathBuf::from("clipd.db"));
    let (database, database_error) = match db_snapshot(&db_path) {
        Ok(d) => (Some(d), None),
        Err(e) => (None, Some(super::one_line(&e))),
    };

    let now = now_ms();
    let state = match &status {
        None => Liveness::Unknown,
        Some(s) if !process_alive(s.pid) => Liveness::NotRunning,
        Some(s) if s.is_fresh(now) => Liveness::Running,
        Some(_) => Liveness::NotUpdating,
    };
    let report = Report {
        state,
        now_ms: now,
        status_file,
        status,
        status_error,
        database,
        database_error,
    };

    let mut out = std::io::stdout().lock();
    let written = match args.format {
        // Serialised first, so that a closed pipe surfaces as the io::Error it is.
        OutputFormat::Json => serde_json::to_string_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|json| writeln!(out, "{json}")),
        // Nothing to show: the one error line below says why.
        OutputFormat::Text if report.status.is_none() && report.database.is_none() => Ok(()),
        OutputFormat::Text => write_text(&mut out, &report),
    }
    .and_then(|()| out.flush());
    match written {
        Err(e) if is_broken_pipe(&e) => {}
        Err(e) => return Err(anyhow::Error::new(e).context("writing the status")),
        Ok(()) => {}
    }
    if report.status.is_none() && report.database.is_none() {
        let why = report
            .status_error
            .clone()
            .unwrap_or_else(|| format!("no status file {}", report.status_file.display()));
        let db = report.database_error.unwrap_or_default();
        eprintln!("clipd: nothing to report: {why}; {db}");
        return Ok(ExitCode::from(4));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--config`, else `./clipd.toml`, else the system-wide config of a systemd install.
fn config_for_status(arg: Option<&Path>) -> Result<Option<Loaded>> {
    if let Some(c) = super::load_config(arg)? {
        return Ok(Some(c));
    }
    let system = Path::new(SYSTEM_CONFIG);
    if system.is_file() {
        return Ok(Some(config::load(system)?));
    }
    Ok(None)
}

/// Reads what the database knows: size, frame count, the last frame and state of each source,
/// refinement runs. Opened read-only (WAL: never blocks the writer).
fn db_snapshot(path: &Path) -> Result<DbSnapshot> {
    let store = Store::open_read_only(path)?;
    Ok(DbSnapshot {
        bytes: on_disk_bytes(path),
        path: path.to_path_buf(),
        history: store.snapshot()?,
    })
}

fn write_text(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    let now = r.now_ms;
    match (&r.status, r.state) {
        (Some(s), Liveness::Running) => writeln!(
            out,
            "clipd: running (pid {}, up {})",
            s.pid,
            human_duration(now - s.started_ms)
        )?,
        (Some(s), Liveness::NotUpdating) => writeln!(
            out,
            "clipd: not updating (pid {} exists, but its status was last written {} ago, at {}; \
             hung, or the pid now belongs to another process)",
            s.pid,
            human_duration(now - s.updated_ms),
            format_ts_ms(s.updated_ms)
        )?,
        (Some(s), _) => writeln!(
            out,
            "clipd: not running (last seen {}, {} ago; it had been up {})",
            format_ts_ms(s.updated_ms),
            human_duration(now - s.updated_ms),
            human_duration(s.updated_ms - s.started_ms)
        )?,
        (None, _) => match &r.status_error {
            Some(e) => writeln!(out, "clipd: state unknown: {e}")?,
            None => writeln!(
                out,
                "clipd: state unknown: no daemon status file {} (no daemon has run with this \
                 configuration yet){}",
                r.status_file.display(),
                if r.database.is_some() {
                    "; reporting from the database"
                } else {
                    ""
                }
            )?,
        },
    }
    if let Some(s) = &r.status {
        write_report(out, s, now)?;
    }
    match (&r.database, &r.database_error) {
        (Some(db), _) => write_db(out, db, r.status.is_none(), now)?,
        (None, Some(e)) => writeln!(out, "{e}")?,
        (None, None) => {}
    }
    Ok(())
}

fn write_report(out: &mut impl Write, s: &StatusReport, now: i64) -> std::io::Result<()> {
    writeln!(
        out,
        "version {}, started {}, status updated {} ago",
        s.version,
        format_ts_ms(s.started_ms),
        human_duration(now - s.updated_ms)
    )?;
    if let Some(c) = &s.config {
        writeln!(out, "config: {}", c.display())?;
    }
    writeln!(
        out,
        "model: {}, adapter: {}",
        short_id(&s.model_id),
        s.adapter_id.as_deref().map_or("none (zero-shot)", short_id)
    )?;
    if s.reloads > 0 || s.last_reload_error.is_some() {
        write!(out, "reloads: {}", s.reloads)?;
        if let Some(e) = &s.last_reload_error {
            write!(out, " (last refused: {e})")?;
        }
        writeln!(out)?;
    }
    if !s.sources.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{:<16} {:<6} {:>6} {:>10} {:>7} {:>8} {:>8} {:>10} {:>6}  {:<9} {:<28} state",
            "source",
            "kind",
            "fps",
            "classified",
            "failed",
            "skipped",
            "dropped",
            "reconnects",
            "stalls",
            "connected",
            "last"
        )?;
        for src in &s.sources {
            let connected = match src.connected {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            writeln!(
                out,
                "{:<16} {:<6} {:>6.2} {:>10} {:>7} {:>8} {:>8} {:>10} {:>6}  {:<9} {:<28} {}",
                src.name,
                src.kind,
                src.fps,
                src.classified,
                src.failed,
                src.skipped,
                src.dropped,
                src.reconnects,
                src.stalls,
                connected,
                last_label(
                    src.last_label.as_deref(),
                    src.last_score,
                    src.last_ts_ms,
                    now
                ),
                src.state.as_deref().unwrap_or("-")
            )?;
        }
        writeln!(out)?;
    }
    match &s.refiner {
        Some(rf) => {
            write!(
                out,
                "refiner: {} passes, {} guarded, {} failed",
                rf.passes, rf.guarded, rf.failed
            )?;
            if let Some(ms) = rf.last_ms {
                write!(out, "; last took {ms} ms")?;
            }
            if let Some(n) = rf.last_changed {
                write!(out, ", changed {n} labels")?;
            }
            if let Some(t) = rf.last_ts_ms {
                write!(out, ", {} ago", human_duration(now - t))?;
            }
            writeln!(out)?;
        }
        None => writeln!(out, "refiner: off")?,
    }
    let d = &s.db;
    write!(out, "writer: {} rows committed this run", d.rows_committed)?;
    if let Some(id) = d.last_committed_id {
        write!(out, " (last id {id})")?;
    }
    write!(
        out,
        ", {} pending, {} dropped, {} commit errors",
        d.pending, d.dropped, d.commit_errors
    )?;
    if let Some(e) = &d.last_error {
        write!(out, " (last: {e})")?;
    }
    writeln!(out)
}

fn write_db(
    out: &mut impl Write,
    snapshot: &DbSnapshot,
    per_source: bool,
    now: i64,
) -> std::io::Result<()> {
    let db = &snapshot.history;
    write!(
        out,
        "database: {}, {}, {} frames ({} unclassifiable)",
        snapshot.path.display(),
        human_bytes(snapshot.bytes),
        db.frames,
        db.errors
    )?;
    if let Some(t) = db.last_ts_ms {
        write!(
            out,
            ", last frame {} ({} ago)",
            format_ts_ms(t),
            human_duration(now - t)
        )?;
    }
    writeln!(out)?;
    if db.refinements > 0 {
        write!(out, "refinements in the database: {}", db.refinements)?;
        if let Some(t) = db.last_refinement_ts_ms {
            write!(out, ", last {}", format_ts_ms(t))?;
        }
        writeln!(out)?;
    }
    if per_source && !db.sources.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{:<16} {:>9}  {:<28} state",
            "source", "frames", "last"
        )?;
        for s in &db.sources {
            writeln!(
                out,
                "{:<16} {:>9}  {:<28} {}",
                s.name,
                s.frames,
                last_label(s.last_label.as_deref(), s.last_score, s.last_ts_ms, now),
                s.state.as_deref().unwrap_or("-")
            )?;
        }
    }
    Ok(())
}

/// `fox 0.88 (3s ago)`, or `-`.
fn last_label(label: Option<&str>, score: Option<f32>, ts: Option<i64>, now: i64) -> String {
    let Some(label) = label else {
        return "-".into();
    };
    let mut s = label.to_string();
    if let Some(p) = score {
        s.push_str(&format!(" {p:.2}"));
    }
    if let Some(t) = ts {
        s.push_str(&format!(" ({} ago)", human_duration(now - t)));
    }
    s
}

/// An id with its hash cut to 12 characters: `tiny-clip@0123456789ab`, `6b1c0e7a9d3f`.
fn short_id(id: &str) -> &str {
    let start = id.rfind('@').map_or(0, |i| i + 1);
    match id[start..].char_indices().nth(12) {
        Some((i, _)) => &id[..start + i],
        None => id,
    }
}

/// A duration in its two largest units: `45s`, `5m03s`, `3h12m`, `2d04h`.
fn human_duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{sec:02}s")
    } else {
        format!("{sec}s")
    }
}

/// Bytes in binary units with one decimal: `812 B`, `11.8 MiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_two_units() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(-5_000), "0s");
        assert_eq!(human_duration(45_999), "45s");
        assert_eq!(human_duration(303_000), "5m03s");
        assert_eq!(human_duration((3 * 3600 + 12 * 60 + 59) * 1000), "3h12m");
        assert_eq!(human_duration((2 * 86_400 + 4 * 3600 + 60) * 1000), "2d04h");
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(human_bytes(812), "812 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(12_345_678), "11.8 MiB");
    }

    #[test]
    fn ids_are_shortened_on_character_boundaries() {
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("short"), "short");
        assert_eq!(
            short_id("tiny-clip@0123456789abcdef"),
            "tiny-clip@0123456789ab"
        );
        assert_eq!(short_id("tip-f@"), "tip-f@");
        assert_eq!(short_id("éééééééééééééé"), "éééééééééééé");
    }
}
