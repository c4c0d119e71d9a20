//! End-to-end few-shot runs of the binary: `train` → `classify`/`run` with the adapter → the
//! history logs its id; `eval` writes its tables and curves; every bad support set or
//! mismatched adapter fails with one line naming the folder, class or bundle.

mod common;

use std::path::{Path, PathBuf};

use clipd::adapter::file::Adapter;
use clipd::adapter::linalg::Mat;
use common::*;

const SHAPES: [&str; 5] = ["circle", "square", "triangle", "star", "hexagon"];

/// The slice's 4 pool images of each class under `dir/<class>/`.
fn copy_pool(dir: &Path, classes: &[&str]) -> PathBuf {
    let support = dir.join("support");
    for c in classes {
        let dst = support.join(c);
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(fixtures().join("fieldset/pool").join(c)).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
    support
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
    support: PathBuf,
    frames: PathBuf,
    db: PathBuf,
}

fn setup(extra: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let frames = dir.join("frames");
    copy_frames(&frames, &SHAPES, 4);
    let db = dir.join("history.db");
    let config = write_config(&dir, &frames, &db, &SHAPES, extra);
    let support = copy_pool(&dir, &SHAPES);
    Setup {
        _tmp: tmp,
        dir,
        config,
        support,
        frames,
        db,
    }
}

fn train(s: &Setup, method: &str, out: &Path, seed: &str) -> std::process::Output {
    run(&[
        "train",
        "--config",
        s.config.to_str().unwrap(),
        "--support",
        s.support.to_str().unwrap(),
        "--method",
        method,
        "--out",
        out.to_str().unwrap(),
        "--augment",
        "2",
        "--seed",
        seed,
    ])
}

fn assert_one_line_failure(o: &std::process::Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn trained_adapter_classifies_and_every_logged_frame_names_it() {
    let s = setup("");
    let adapter = s.dir.join("shapes.safetensors");
    let o = train(&s, "jclip", &adapter, "0");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let a = Adapter::load(&adapter).unwrap();
    assert!(out.contains(&format!("adapter {} (jclip)", a.id)), "{out}");
    assert!(out.contains("cross-validation"), "{out}");
    assert_eq!(a.meta.classes.len(), 5);
    assert_eq!(a.meta.shots_per_class, vec![4; 5]);
    assert_eq!(a.meta.support.len(), 20);
    assert!(a.meta.support.iter().all(|r| r.sha256.len() == 64));
    assert_eq!(a.meta.augment_views, 2);
    assert!(a.meta.hyper.image_ratio.is_some() && a.meta.hyper.text_ratio.is_some());

    // classify --adapter: labels come from the adapter's classes.
    let frame = s
        .frames
        .join("star")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let o = run(&[
        "classify",
        "--config",
        s.config.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--format",
        "json",
        frame.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let label = rows[0]["label"].as_str().unwrap();
    assert!(SHAPES.contains(&label), "{label}");

    // run with `adapter = …` in the config: every row records the adapter id.
    let config = write_config(
        &s.dir,
        &s.frames,
        &s.db,
        &SHAPES,
        &format!("adapter = {adapter:?}"),
    );
    let o = run(&["run", "--once", "--config", config.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("adapter: {}", a.id)),
        "{}",
        stdout(&o)
    );
    let o = run(&[
        "query",
        "--db",
        s.db.to_str().unwrap(),
        "--format",
        "json",
        "--limit",
        "100",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 20);
    assert!(
        rows.iter().all(|r| r["adapter_id"] == a.id.as_str()),
        "{rows:?}"
    );
}

#[test]
fn same_seed_same_adapter_other_seed_other_adapter() {
    let s = setup("");
    let load = |name: &str, seed: &str| {
        let p = s.dir.join(name);
        let o = train(&s, "tip-f", &p, seed);
        assert!(o.status.success(), "{}", stderr(&o));
        Adapter::load(&p).unwrap()
    };
    let (a, b, c) = (load("a", "5"), load("b", "5"), load("c", "6"));
    let x: Mat<f32> = a.text.clone();
    assert_eq!(a.meta.hyper, b.meta.hyper);
    assert_eq!(a.head.logits(&x).data, b.head.logits(&x).data);
    assert_ne!(a.head.logits(&x).data, c.head.logits(&x).data);
}

#[test]
fn support_problems_name_the_folder_or_class() {
    let s = setup("");
    let out = s.dir.join("a.safetensors");

    std::fs::create_dir(s.support.join("teapot")).unwrap();
    std::fs::copy(
        fixtures().join("fieldset/pool/circle/circle_000.png"),
        s.support.join("teapot/t.png"),
    )
    .unwrap();
    assert_one_line_failure(
        &train(&s, "tip", &out, "0"),
        2,
        &["teapot", "matches no configured class"],
    );
    std::fs::remove_dir_all(s.support.join("teapot")).unwrap();

    std::fs::rename(s.support.join("star"), s.dir.join("star-away")).unwrap();
    assert_one_line_failure(
        &train(&s, "tip", &out, "0"),
        2,
        &["no folder for class \"star\""],
    );

    std::fs::create_dir(s.support.join("star")).unwrap();
    assert_one_line_failure(&train(&s, "tip", &out, "0"), 2, &["star", "no images"]);

    std::fs::write(s.support.join("star/broken.png"), b"\x89PNG\r\n\x1a\nnope").unwrap();
    assert_one_line_failure(
        &train(&s, "tip", &out, "0"),
        2,
        &["star", "no readable images"],
    );
    assert!(!out.exists());

    // One unreadable shot among good ones is reported and skipped.
    for e in std::fs::read_dir(s.dir.join("star-away")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, s.support.join("star").join(p.file_name().unwrap())).unwrap();
    }
    let o = train(&s, "tip", &out, "0");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("skipped") && stderr(&o).contains("broken.png"),
        "{}",
        stderr(&o)
    );
    let a = Adapter::load(&out).unwrap();
    assert_eq!(a.meta.shots_per_class, vec![4, 4, 4, 4, 4]);
    assert_eq!(a.meta.skipped.len(), 1);
}

#[test]
fn adapters_for_other_classes_or_bundles_are_refused() {
    let s = setup("");
    let adapter = s.dir.join("a.safetensors");
    assert!(train(&s, "linear", &adapter, "0").status.success());

    let fewer = write_config(&s.dir, &s.frames, &s.db, &SHAPES[..4], "");
    let o = run(&[
        "run",
        "--once",
        "--config",
        fewer.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
    ]);
    assert_one_line_failure(
        &o,
        2,
        &[
            "a.safetensors",
            "adapter classes not in the config: hexagon",
        ],
    );
    assert!(!s.db.exists());

    let other = tampered_bundle(&s.dir, &[], &[], |m| m["name"] = "other-clip".into());
    let config = write_config(&s.dir, &s.frames, &s.db, &SHAPES, "");
    let o = run(&[
        "run",
        "--once",
        "--config",
        config.to_str().unwrap(),
        "--bundle",
        other.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
    ]);
    assert_one_line_failure(
        &o,
        3,
        &["trained for model bundle tiny-clip@", "other-clip@"],
    );
    assert!(!s.db.exists());

    std::fs::write(&adapter, b"garbage").unwrap();
    let o = run(&[
        "run",
        "--once",
        "--config",
        config.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
    ]);
    assert_one_line_failure(&o, 3, &["a.safetensors", "not a clipd adapter"]);
}

#[test]
fn eval_writes_tables_csv_and_curves() {
    let s = setup("");
    let test = s.dir.join("test");
    copy_frames(&test, &SHAPES, 10);
    let out = s.dir.join("eval");
    let o = run(&[
        "eval",
        "--config",
        s.config.to_str().unwrap(),
        "--support",
        s.support.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--shots",
        "1,2",
        "--methods",
        "tip,linear",
        "--seeds",
        "2",
        "--augment",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--transduct",
        "--transduct-methods",
        "transclip,hard-em-dirichlet",
        "--presets",
        "default",
        "--dominant",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    // zero-shot and the two adapters (1 shot, first draw) × 2 methods × 1 preset.
    let t = std::fs::read_to_string(out.join("transduct.csv")).unwrap();
    assert_eq!(t.lines().count(), 1 + 3 * 2, "{t}");
    for start in ["zero-shot,", "tip,", "linear,"] {
        assert!(t.lines().any(|l| l.starts_with(start)), "{start}: {t}");
    }
    assert!(table.contains("Transductive refinement"), "{table}");
    for l in t.lines().skip(1) {
        let f: Vec<&str> = l.split(',').collect();
        for v in &f[3..6] {
            let x: f64 = v.parse().unwrap();
            assert!((0.0..=1.0).contains(&x), "{l}");
        }
    }
    for needle in ["zero-shot", "tip", "linear"] {
        assert!(table.contains(needle), "{needle}: {table}");
    }
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    // zero-shot + 2 methods × 2 shot counts, each over 2 draws.
    assert_eq!(csv.lines().count(), 1 + 1 + 4, "{csv}");
    assert!(
        csv.lines()
            .skip(2)
            .all(|l| l.split(',').nth(2) == Some("2")),
        "{csv}"
    );
    assert!(std::fs::read_to_string(out.join("results.md"))
        .unwrap()
        .contains("| zero-shot"));
    let curves = std::fs::read_to_string(out.join("curves.csv")).unwrap();
    assert!(
        curves.lines().any(|l| l.starts_with("linear,2,")),
        "{curves}"
    );
    let png = image::open(out.join("curves-2shot.png")).unwrap();
    assert!(png.width() > 100);

    // More shots than the pool holds is a usage error naming the class.
    let o = run(&[
        "eval",
        "--config",
        s.config.to_str().unwrap(),
        "--support",
        s.support.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--shots",
        "8",
        "--augment",
        "0",
    ]);
    assert_one_line_failure(&o, 2, &["has 4 usable images", "--shots 8"]);
}
