//! The shipped systemd unit: `systemd-analyze verify` accepts it, `systemd-analyze security`
//! rates it SAFE, and it agrees with what clipd does (paths it may write, exit statuses,
//! shutdown timeout). The systemd-analyze checks are skipped, with the reason printed, where
//! systemd-analyze is not installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use clipd::config::DaemonConfig;
use clipd::daemon::status::default_status_path;

const UNIT: &str = "systemd/clipd.service";
const DROP_IN: &str = "systemd/gpu-runtime.conf";
const EXAMPLE_CONFIG: &str = "systemd/clipd.toml";
/// Where the unit runs clipd from (kept in the shipped file; tests point a copy elsewhere).
const INSTALLED_BINARY: &str = "/usr/local/bin/clipd";

fn read(rel: &str) -> String {
    let p = common::root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every value of `key` in the unit, in order (comments and sections ignored).
fn values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

fn value(unit: &str, key: &str) -> String {
    let v = values(unit, key);
    assert_eq!(v.len(), 1, "{key}= should be set exactly once, found {v:?}");
    v.into_iter().next().unwrap_or_default()
}

/// Seconds in a unit time span such as `30s`, `3min`, `1min 30s` (the forms the unit uses).
fn seconds(span: &str) -> f64 {
    span.split_whitespace()
        .map(|part| {
            let digits = part
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(part.len());
            let (n, unit) = part.split_at(digits);
            let n: f64 = n.parse().unwrap_or_else(|_| panic!("time span {span:?}"));
            n * match unit {
                "" | "s" | "sec" => 1.0,
                "min" | "m" => 60.0,
                "h" => 3600.0,
                "ms" => 0.001,
                other => panic!("unit {other:?} in {span:?}"),
            }
        })
        .sum()
}

/// The unit as shipped, with ExecStart pointing at the binary under test (verify checks that
/// the executable exists), written into a fresh directory.
fn testable_unit(dir: &Path, with_drop_in: bool) -> PathBuf {
    let shipped = read(UNIT);
    let exec = format!("ExecStart={INSTALLED_BINARY} ");
    assert!(
        shipped.lines().any(|l| l.starts_with(&exec)),
        "{UNIT} should run {INSTALLED_BINARY}"
    );
    let unit = shipped.replace(
        &exec,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_clipd")),
    );
    let path = dir.join("clipd.service");
    std::fs::write(&path, unit).unwrap();
    if with_drop_in {
        let d = dir.join("clipd.service.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("gpu-runtime.conf"), read(DROP_IN)).unwrap();
    }
    path
}

/// `systemd-analyze` with `args`, or `None` (and a note on stderr) when it is not installed.
fn systemd_analyze(args: &[&str], cwd: &Path) -> Option<std::process::Output> {
    match Command::new("systemd-analyze")
        .args(args)
        .current_dir(cwd)
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_COLORS", "0")
        .output()
    {
        Ok(o) => Some(o),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: systemd-analyze is not installed (apt-get install systemd)");
            None
        }
        Err(e) => panic!("systemd-analyze: {e}"),
    }
}

/// The number in `Overall exposure level for clipd.service: 0.7 SAFE`, and its rating.
fn exposure(report: &str) -> (f64, String) {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line in:\n{report}"));
    let after = line.rsplit_once(':').map(|(_, r)| r).unwrap_or_default();
    let mut words = after.split_whitespace();
    let n = words
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"));
    (n, words.next().unwrap_or_default().to_string())
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_and_the_drop_in() {
    for with_drop_in in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let unit = testable_unit(tmp.path(), with_drop_in);
        let Some(o) = systemd_analyze(&["verify", unit.to_str().unwrap()], tmp.path()) else {
            return;
        };
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "drop-in {with_drop_in}: {err}");
        // verify reports unknown keys and bad values as warnings with a zero exit status.
        let complaints: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("clipd.service") || l.contains("gpu-runtime.conf"))
            .collect();
        assert!(complaints.is_empty(), "drop-in {with_drop_in}: {err}");
    }
}

#[test]
fn systemd_analyze_security_rates_the_unit_safe() {
    let tmp = tempfile::tempdir().unwrap();
    let unit = testable_unit(tmp.path(), false);
    let Some(version) = systemd_analyze(&["--version"], tmp.path()) else {
        return;
    };
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let Some(o) = systemd_analyze(
        &["security", "--offline=yes", unit.to_str().unwrap()],
        tmp.path(),
    ) else {
        return;
    };
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() && err.contains("offline") {
        // --offline arrived in systemd 250.
        eprintln!(
            "skipped: this systemd-analyze cannot analyse unit files offline ({}): {err}",
            version.lines().next().unwrap_or_default()
        );
        return;
    }
    assert!(o.status.success(), "{err}");
    let (score, rating) = exposure(&out);
    eprintln!(
        "{}: exposure {score} {rating}",
        version.lines().next().unwrap_or_default()
    );
    assert!(score < 2.0, "exposure {score} {rating}:\n{out}");
    assert_eq!(rating, "SAFE", "{out}");
    // The settings the service relies on are counted as in force.
    for line in [
        "PrivateNetwork=",
        "NoNewPrivileges=",
        "MemoryDenyWriteExecute=",
        "SystemCallFilter=~@privileged",
        "ProtectSystem=",
        "RestrictAddressFamilies=~AF_(INET|INET6)",
    ] {
        let row = out
            .lines()
            .find(|l| l.contains(line))
            .unwrap_or_else(|| panic!("no {line} row in:\n{out}"));
        assert!(row.trim_start().starts_with('✓'), "{row}");
    }

    // The drop-in lifts exactly what it documents and keeps the unit SAFE.
    let tmp = tempfile::tempdir().unwrap();
    let unit = testable_unit(tmp.path(), true);
    let Some(o) = systemd_analyze(
        &["security", "--offline=yes", unit.to_str().unwrap()],
        tmp.path(),
    ) else {
        return;
    };
    let out = String::from_utf8_lossy(&o.stdout);
    let (gpu_score, gpu_rating) = exposure(&out);
    eprintln!("with {DROP_IN}: exposure {gpu_score} {gpu_rating}");
    assert!(gpu_score < 2.0 && gpu_score >= score, "{out}");
    let mdwe = out
        .lines()
        .find(|l| l.contains("MemoryDenyWriteExecute="))
        .unwrap_or_default();
    assert!(mdwe.trim_start().starts_with('✗'), "{mdwe}");
    assert!(out.contains("char-drm:rw"), "{out}");
}

#[test]
fn the_unit_agrees_with_what_clipd_does() {
    let unit = read(UNIT);
    assert_eq!(value(&unit, "Type"), "notify");
    assert_eq!(value(&unit, "NotifyAccess"), "main");
    assert_eq!(value(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID");
    // Configuration (2) and bundle/adapter (3) errors: the exit codes clipd documents.
    let help = common::run(&["--help"]);
    let help = common::stdout(&help);
    assert!(help.contains("2  usage or configuration error"), "{help}");
    assert!(help.contains("3  model bundle or adapter error"), "{help}");
    let mut prevent: Vec<&str> = Vec::new();
    let prevent_line = value(&unit, "RestartPreventExitStatus");
    prevent.extend(prevent_line.split_whitespace());
    assert_eq!(prevent, ["2", "3"]);
    // systemd must wait for clipd's own orderly shutdown before it kills.
    let stop = seconds(&value(&unit, "TimeoutStopSec"));
    let default_shutdown = DaemonConfig::default().shutdown_timeout_secs;
    assert!(
        stop > default_shutdown + 5.0,
        "{stop} vs {default_shutdown}"
    );
    // The watchdog fires later than clipd's own hang detection, so a hang is logged first.
    let watchdog = seconds(&value(&unit, "WatchdogSec"));
    assert!(watchdog >= 10.0, "{watchdog}");
    // The unit hands clipd the config ConfigurationDirectory makes, and lets it write only the
    // StateDirectory and CacheDirectory.
    let exec = value(&unit, "ExecStart");
    let config_dir = value(&unit, "ConfigurationDirectory");
    assert_eq!(
        exec,
        format!("{INSTALLED_BINARY} run --config /etc/{config_dir}/clipd.toml")
    );
    assert_eq!(value(&unit, "ProtectSystem"), "strict");
    assert_eq!(value(&unit, "DevicePolicy"), "closed");
    assert_eq!(values(&unit, "PrivateDevices"), Vec::<String>::new());
    assert_eq!(value(&unit, "DeviceAllow"), "char-video4linux rw");
    // tract picks its ARM kernels from /proc/cpuinfo, which ProcSubset=pid would hide.
    assert_eq!(values(&unit, "ProcSubset"), Vec::<String>::new());
    let state = format!("/var/lib/{}", value(&unit, "StateDirectory"));

    // The example config is valid and keeps the database and status file writable.
    let cfg =
        clipd::config::load(&common::root().join(EXAMPLE_CONFIG)).unwrap_or_else(|e| panic!("{e}"));
    let db = cfg.resolve(&cfg.config.store.path);
    assert!(db.is_absolute(), "{}", db.display());
    assert!(db.starts_with(&state), "{} outside {state}", db.display());
    let status = cfg
        .config
        .daemon
        .status_file
        .as_ref()
        .map(|p| cfg.resolve(p))
        .unwrap_or_else(|| default_status_path(&db));
    assert!(status.starts_with(&state), "{}", status.display());
    assert!(stop > cfg.config.daemon.shutdown_timeout_secs + 5.0);
    let bundle = cfg.resolve(cfg.config.bundle.as_deref().unwrap_or(Path::new("")));
    assert!(bundle.is_absolute(), "{}", bundle.display());
}

#[test]
fn time_spans_parse_as_systemd_reads_them() {
    assert_eq!(seconds("30s"), 30.0);
    assert_eq!(seconds("3min"), 180.0);
    assert_eq!(seconds("1min 30s"), 90.0);
    assert_eq!(seconds("45"), 45.0);
}
