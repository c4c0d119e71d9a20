//! `clipd doctor` on a machine without cameras (as CI is): what it reports for the demo config,
//! and the failure of each check with its documented exit status.

mod common;

use std::path::Path;

use common::*;

/// The check lines of `clipd doctor` (status, check, message), asserting the output format.
fn checks(out: &str) -> Vec<(String, String, String)> {
    out.lines()
        .map(|l| {
            let (status, rest) = l.split_at(6);
            let (check, msg) = rest.split_at(10);
            let status = status.trim().to_string();
            assert!(
                ["ok", "--", "FAIL"].contains(&status.as_str()),
                "not a check line: {l:?}"
            );
            (status, check.trim().to_string(), msg.to_string())
        })
        .collect()
}

fn line<'a>(c: &'a [(String, String, String)], check: &str) -> &'a (String, String, String) {
    c.iter()
        .find(|(_, k, _)| k == check)
        .unwrap_or_else(|| panic!("no {check} line in {c:?}"))
}

fn has_video_nodes() -> bool {
    std::fs::read_dir("/dev")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("video"))
        })
        .unwrap_or(false)
}

/// A config in `dir` with the shipped bundle, one class, the database at `db` and `extra`.
fn config(dir: &Path, db: &Path, extra: &str) -> std::path::PathBuf {
    let text = format!(
        "bundle = {:?}\n\n[store]\npath = {:?}\n\n{extra}\n[[classes]]\nname = \"circle\"\ndomain = \"shape\"\n",
        bundle_dir(),
        db
    );
    let p = dir.join("clipd.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn doctor_passes_the_demo_config_and_reports_no_cameras() {
    let o = run(&["doctor", "--config", "configs/demo.toml"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    let c = checks(&out);
    if has_video_nodes() {
        assert!(
            c.iter().any(|(s, k, _)| s == "--" && k == "camera"),
            "{out}"
        );
    } else {
        assert_eq!(
            line(&c, "cameras"),
            &(
                "--".into(),
                "cameras".into(),
                "none found: no /dev/video* device nodes (no camera attached, its driver not loaded, or a container started without --device /dev/videoN)".into()
            )
        );
    }
    assert_eq!(
        line(&c, "config").2,
        "configs/demo.toml: 50 classes, 1 source"
    );
    let (status, _, msg) = line(&c, "bundle");
    assert_eq!(status, "ok");
    assert!(msg.starts_with("models/tiny-clip: tiny-clip@"), "{msg}");
    assert!(
        msg.ends_with("files verified, encoders and tokenizer load"),
        "{msg}"
    );
    assert_eq!(line(&c, "adapter").2, "none configured: zero-shot");
    let (status, _, msg) = line(&c, "database");
    assert_eq!(status, "ok");
    assert!(msg.starts_with("out/demo.db: "), "{msg}");
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn doctor_names_a_broken_config_and_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        &tmp.path().join("h.db"),
        "[engine]\nbatchh = 4\n",
    );
    let o = run(&["doctor", "--config", cfg.to_str().unwrap()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    let c = checks(&out);
    let (status, _, msg) = line(&c, "config");
    assert_eq!(status, "FAIL");
    let prefix = format!(
        "{}:7: engine.batchh: unknown field `batchh`, expected one of `batch`, ",
        cfg.display()
    );
    assert!(msg.starts_with(&prefix), "{msg}");
    assert!(
        msg.ends_with(
            " — fix: correct the key named above (clipd.toml.example documents every key)"
        ),
        "{msg}"
    );
    // The other checks still run (the bundle with its default) or say why they did not.
    assert_eq!(line(&c, "bundle").0, "ok");
    assert_eq!(
        line(&c, "database"),
        &(
            "--".into(),
            "database".into(),
            "not checked: the config did not load".into()
        )
    );
}

#[test]
fn doctor_checks_the_database_read_only() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("history.db");
    let cfg = config(tmp.path(), &db, "");
    let cfg = cfg.to_str().unwrap();

    let o = run(&["doctor", "--config", cfg]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let c = checks(&stdout(&o));
    assert_eq!(
        line(&c, "database").2,
        format!(
            "{}: does not exist yet (`clipd run` creates it)",
            db.display()
        )
    );
    assert!(!db.exists(), "doctor must not create the database");

    clipd::store::Store::open(&db, &Default::default()).unwrap();
    let o = run(&["doctor", "--config", cfg]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let c = checks(&stdout(&o));
    let (status, _, msg) = line(&c, "database");
    assert_eq!(status, "ok");
    assert!(
        msg.contains(": schema ") && msg.contains(", quick_check ok, "),
        "{msg}"
    );

    std::fs::write(&db, b"this is not a database, it is a text file").unwrap();
    let o = run(&["doctor", "--config", cfg]);
    assert_eq!(o.status.code(), Some(4), "{}", stdout(&o));
    let c = checks(&stdout(&o));
    let (status, _, msg) = line(&c, "database");
    assert_eq!(status, "FAIL");
    assert!(msg.contains("is not a SQLite database"), "{msg}");
    assert!(msg.contains("— fix: "), "{msg}");
}

#[test]
fn doctor_fails_a_bad_bundle_and_adapter_with_exit_3() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &tmp.path().join("h.db"), "");
    let adapter = tmp.path().join("garbage.safetensors");
    std::fs::write(&adapter, b"\x08\0\0\0\0\0\0\0{}      ").unwrap();
    let o = run(&[
        "doctor",
        "--config",
        cfg.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    let c = checks(&stdout(&o));
    let (status, _, msg) = line(&c, "adapter");
    assert_eq!(status, "FAIL");
    assert!(
        msg.starts_with(&format!("{}: ", adapter.display())),
        "{msg}"
    );

    let o = run(&[
        "doctor",
        "--config",
        cfg.to_str().unwrap(),
        "--bundle",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    let c = checks(&stdout(&o));
    let (status, _, msg) = line(&c, "bundle");
    assert_eq!(status, "FAIL");
    assert!(
        msg.contains("not a bundle: manifest.json is missing"),
        "{msg}"
    );
}

#[cfg(feature = "camera")]
#[test]
fn doctor_reports_configured_cameras_that_are_missing_or_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = "[[sources]]\nkind = \"camera\"\nname = \"yard\"\ndevice = \"/dev/v4l/by-id/usb-no-such-camera-video-index0\"\n";
    let cfg = config(tmp.path(), &tmp.path().join("h.db"), missing);
    let o = run(&["doctor", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(4), "{}", stdout(&o));
    let c = checks(&stdout(&o));
    let (status, _, msg) = line(&c, "camera");
    assert_eq!(status, "FAIL");
    assert!(
        msg.starts_with("sources[0].device = \"/dev/v4l/by-id/usb-no-such-camera-video-index0\": /dev/v4l/by-id/usb-no-such-camera-video-index0 does not exist (camera unplugged or not yet attached) — fix: attach the camera"),
        "{msg}"
    );

    let not_video = "[[sources]]\nkind = \"camera\"\ndevice = \"/dev/null\"\n";
    let cfg = config(tmp.path(), &tmp.path().join("h.db"), not_video);
    let o = run(&["doctor", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let c = checks(&stdout(&o));
    let (status, _, msg) = line(&c, "camera");
    assert_eq!(status, "FAIL");
    assert!(
        msg.starts_with("sources[0]: /dev/null: resolves to /dev/null, not a V4L2 video device"),
        "{msg}"
    );
}
