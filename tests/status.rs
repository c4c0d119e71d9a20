//! `clipd status`: from a status file written through the library, from the database alone,
//! and for a daemon that is gone.

mod common;

use std::path::{Path, PathBuf};

use clipd::daemon::status::{
    default_status_path, DbStatus, RefinerStatus, SourceStatus, StatusReport,
};
use clipd::store::{now_ms, FrameRecord, RefinementRecord, StateChange, Store, StoreOptions};
use common::{run, stderr, stdout};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

/// A database with `shed` (3 frames, last a fox, state "empty") and `gate` (2 frames, one of
/// them unclassifiable), all within the last hour.
fn history(path: &Path) -> i64 {
    let mut store = Store::open(path, &StoreOptions::default()).unwrap();
    let t = now_ms() - 30 * MIN;
    let frame = |dt: i64, src: &str, label: &str, p: f32| {
        FrameRecord::classified(
            t + dt,
            src,
            format!("{src}/{dt}"),
            "tiny-clip@0123456789abcdef",
            vec![(label.to_string(), p), ("other".to_string(), 1.0 - p)],
        )
    };
    store
        .insert_frames(&[
            frame(0, "shed", "cat", 0.61),
            frame(1_000, "gate", "person", 0.77),
            frame(2_000, "shed", "empty", 0.55),
            FrameRecord::failed(t + 3_000, "gate", "gate/3000", "m", "truncated JPEG"),
            frame(4_000, "shed", "fox", 0.875),
        ])
        .unwrap();
    store
        .apply_refinement(&RefinementRecord {
            ts_ms: t + 5_000,
            algorithm: "em-dirichlet".into(),
            params: "{}".into(),
            n_frames: 3,
            n_changed: 0,
            duration_ms: 12,
            labels: Vec::new(),
            state_changes: vec![StateChange {
                ts_ms: t + 5_000,
                source: "shed".into(),
                from_label: None,
                to_label: "empty".into(),
                agreement: 0.67,
                n_frames: 3,
            }],
        })
        .unwrap();
    t
}

fn report(pid: u32, db: &Path, now: i64) -> StatusReport {
    StatusReport {
        pid,
        version: "0.1.0".into(),
        started_ms: now - (3 * HOUR + 12 * MIN + 5_000),
        updated_ms: now,
        interval_ms: 5_000,
        config: Some("/etc/clipd/clipd.toml".into()),
        model_id: "tiny-clip@0123456789abcdef".into(),
        adapter_id: None,
        db_path: db.to_path_buf(),
        sources: vec![SourceStatus {
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
            last_ts_ms: Some(now - 2_000),
            state: Some("empty".into()),
        }],
        refiner: Some(RefinerStatus {
            passes: 12,
            guarded: 1,
            failed: 0,
            last_ms: Some(37),
            last_ts_ms: Some(now - 20_000),
            last_changed: Some(5),
        }),
        reloads: 0,
        last_reload_error: None,
        db: DbStatus {
            bytes: 0,
            rows_committed: 8_103,
            last_committed_id: Some(8_103),
            pending: 7,
            dropped: 0,
            commit_errors: 0,
            last_error: None,
        },
    }
}

fn status(args: &[&str]) -> std::process::Output {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    run(&all)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A pid that certainly belongs to no process: a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// The table row of `source` (first column).
fn row<'a>(out: &'a str, source: &str) -> Vec<&'a str> {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(source))
        .unwrap_or_else(|| panic!("no row for {source} in:\n{out}"))
        .split_whitespace()
        .collect()
}

#[test]
fn a_live_daemon_is_reported_with_its_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("h.db");
    history(&db);
    let file = default_status_path(&db);
    // This test process stands in for the daemon: its pid is certainly alive.
    report(std::process::id(), &db, now_ms())
        .write_atomic(&file)
        .unwrap();

    let o = status(&["--db", s(&db), "--status-file", s(&file)]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.starts_with(&format!(
            "clipd: running (pid {}, up 3h12m)\n",
            std::process::id()
        )),
        "{out}"
    );
    // source kind fps classified failed skipped dropped reconnects stalls connected last… state
    let shed = row(&out, "shed");
    assert_eq!(
        &shed[..10],
        ["shed", "camera", "2.50", "8100", "3", "800", "97", "4", "1", "yes"],
        "{out}"
    );
    assert_eq!(&shed[10..12], ["fox", "0.88"], "{out}");
    assert_eq!(shed.last(), Some(&"empty"), "{out}");
    assert!(
        out.contains("refiner: 12 passes, 1 guarded, 0 failed; last took 37 ms, changed 5 labels"),
        "{out}"
    );
    assert!(
        out.contains("writer: 8103 rows committed this run (last id 8103), 7 pending, 0 dropped"),
        "{out}"
    );
    assert!(
        out.contains("model: tiny-clip@0123456789ab, adapter: none (zero-shot)"),
        "{out}"
    );
    // Database figures come from the file itself.
    let size = std::fs::metadata(&db).unwrap().len()
        + std::fs::metadata(tmp.path().join("h.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    assert!(size > 0);
    assert!(
        out.contains(&format!("database: {}, ", db.display())),
        "{out}"
    );
    assert!(out.contains(", 5 frames (1 unclassifiable)"), "{out}");

    // JSON carries the same, machine-readable.
    let o = status(&[
        "--db",
        s(&db),
        "--status-file",
        s(&file),
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["state"], "running");
    assert_eq!(j["status"]["sources"][0]["dropped"], 97);
    assert_eq!(j["status"]["refiner"]["passes"], 12);
    assert_eq!(j["database"]["frames"], 5);
    assert_eq!(j["database"]["errors"], 1);
    assert_eq!(j["database"]["bytes"], size);
    assert_eq!(j["database"]["refinements"], 1);
    let sources: Vec<&str> = j["database"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["gate", "shed"]);
}

#[test]
fn a_dead_daemon_is_not_running_and_a_silent_one_is_not_updating() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("h.db");
    history(&db);
    let file = tmp.path().join("status.json");
    let now = now_ms();
    let mut r = report(dead_pid(), &db, now - 2 * HOUR - 5 * MIN);
    r.write_atomic(&file).unwrap();
    let o = status(&["--db", s(&db), "--status-file", s(&file)]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = out.lines().next().unwrap();
    assert!(first.starts_with("clipd: not running (last seen "), "{out}");
    assert!(
        first.contains(", 2h05m ago; it had been up 3h12m)"),
        "{out}"
    );
    // The last report's figures are still shown.
    assert_eq!(row(&out, "shed")[6], "97", "{out}");
    let j: serde_json::Value = serde_json::from_str(&stdout(&status(&[
        "--db",
        s(&db),
        "--status-file",
        s(&file),
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(j["state"], "not_running");

    // The pid exists (this process) but the report stopped changing: hung, or a reused pid.
    r.pid = std::process::id();
    r.write_atomic(&file).unwrap();
    let o = status(&["--db", s(&db), "--status-file", s(&file)]);
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!(
            "clipd: not updating (pid {} exists, but its status was last written 2h05m ago",
            std::process::id()
        )),
        "{out}"
    );
}

#[test]
fn without_a_status_file_the_database_still_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("h.db");
    history(&db);
    // The status file's default place, found through the config's store.path.
    let cfg = tmp.path().join("clipd.toml");
    std::fs::write(
        &cfg,
        "[store]\npath = \"h.db\"\n\n[[classes]]\nname = \"fox\"\n",
    )
    .unwrap();
    let o = status(&["--config", s(&cfg)]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    let expected_file = tmp.path().join("h.db.status.json");
    assert!(
        out.starts_with(&format!(
            "clipd: state unknown: no daemon status file {}",
            expected_file.display()
        )),
        "{out}"
    );
    assert!(out.contains(", 5 frames (1 unclassifiable)"), "{out}");
    // Per source: frames, the newest classified frame, the refiner's state.
    let shed = row(&out, "shed");
    assert_eq!(&shed[..4], ["shed", "3", "fox", "0.88"], "{out}");
    assert_eq!(shed.last(), Some(&"empty"), "{out}");
    let gate = row(&out, "gate");
    assert_eq!(&gate[..4], ["gate", "2", "person", "0.77"], "{out}");
    assert_eq!(gate.last(), Some(&"-"), "{out}");

    // Once the daemon writes its file there, the same command finds it.
    report(std::process::id(), &db, now_ms())
        .write_atomic(&expected_file)
        .unwrap();
    let o = status(&["--config", s(&cfg)]);
    assert!(
        stdout(&o).starts_with("clipd: running (pid "),
        "{}",
        stdout(&o)
    );
    // daemon.status_file overrides the default.
    let custom = tmp.path().join("elsewhere.json");
    std::fs::write(
        &cfg,
        "[store]\npath = \"h.db\"\n[daemon]\nstatus_file = \"elsewhere.json\"\n\
         [[classes]]\nname = \"fox\"\n",
    )
    .unwrap();
    let o = status(&["--config", s(&cfg), "--format", "json"]);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["status_file"], s(&custom));
    assert_eq!(j["state"], "unknown");
}

#[test]
fn a_damaged_status_file_is_named_and_the_database_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("h.db");
    history(&db);
    let file = tmp.path().join("status.json");
    std::fs::write(&file, b"{\"pid\": 12, \"sources\": [").unwrap();
    let o = status(&["--db", s(&db), "--status-file", s(&file)]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.starts_with("clipd: state unknown: status file "),
        "{out}"
    );
    assert!(out.contains("status.json"), "{out}");
    assert!(out.contains(", 5 frames"), "{out}");
}

#[test]
fn nothing_to_read_is_exit_4_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let db: PathBuf = tmp.path().join("none.db");
    let file = tmp.path().join("none.json");
    let o = status(&["--db", s(&db), "--status-file", s(&file)]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("none.json") && err.contains("none.db"),
        "{err}"
    );
    assert!(!db.exists());
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
}

#[test]
fn usage_and_config_errors_are_exit_2() {
    let o = status(&["--format", "xml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[store]\npath = 3\n").unwrap();
    let o = status(&["--config", s(&cfg)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("bad.toml"), "{}", stderr(&o));
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("h.db");
    history(&db);
    let file = tmp.path().join("status.json");
    report(std::process::id(), &db, now_ms())
        .write_atomic(&file)
        .unwrap();
    for format in ["text", "json"] {
        let mut child = common::clipd()
            .args(["status", "--db", s(&db), "--status-file", s(&file)])
            .args(["--format", format])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Close our end before clipd writes, like `clipd status | true`.
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "{format}: {:?} {}",
            o.status,
            stderr(&o)
        );
        assert_eq!(stderr(&o), "", "{format}");
    }
}
