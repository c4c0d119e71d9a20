//! The bad-input corpus of `tests/fixtures/bad/` (each item listed in its README.md), run
//! through the real `clipd` binary in one place. Every fatal item must exit with its documented
//! status and print exactly one line naming the culprit (file, config key or field); bad frames
//! must fail alone while the good frames around them are classified and logged; nothing panics.
//!
//! Items that are fragile to commit (non-UTF-8 file names) or are copies of the shipped bundle
//! with one thing wrong are built at test time; the README lists them too.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

const SHAPES: &[&str] = &["circle", "square", "triangle", "star"];

fn corpus() -> PathBuf {
    fixtures().join("bad")
}

/// A corpus image that must fail on its own, with the failure kind and message it gives.
struct BadImage {
    file: &'static str,
    /// The kind counted in the run summary (`PreprocessError::kind`).
    kind: &'static str,
    message: &'static str,
    /// A known product bug: the item is left out of the corpus-wide tests and has a failing
    /// test of its own, named after the bug. Set back to `None` once that test passes.
    known_bug: Option<&'static str>,
}

const BAD_IMAGES: &[BadImage] = &[
    BadImage {
        file: "truncated.jpg",
        kind: "decode",
        message: "cannot decode image",
        known_bug: None,
    },
    BadImage {
        file: "truncated_header.jpg",
        kind: "decode",
        message: "cannot decode image",
        known_bug: None,
    },
    BadImage {
        file: "truncated.png",
        kind: "decode",
        message: "cannot decode image",
        known_bug: None,
    },
    BadImage {
        file: "empty.png",
        kind: "empty",
        message: "empty file",
        known_bug: None,
    },
    BadImage {
        file: "text.jpg",
        kind: "unsupported",
        message: "unsupported image format",
        known_bug: None,
    },
    BadImage {
        file: "random.png",
        kind: "unsupported",
        message: "unsupported image format",
        known_bug: None,
    },
    BadImage {
        file: "huge_header.png",
        kind: "too_large",
        message: "image is 20000x20000, over the decode limit",
        known_bug: None,
    },
];

/// The bad images the corpus-wide tests use (those without a known bug).
fn bad_images() -> impl Iterator<Item = &'static BadImage> {
    BAD_IMAGES.iter().filter(|b| b.known_bug.is_none())
}

/// Corpus images that look odd but are valid and must classify.
const VALID_IMAGES: &[&str] = &["one_pixel.png"];

/// Non-UTF-8 file names made at test time: `(raw name, lossy name, valid content?)`.
fn non_utf8_names() -> [(&'static [u8], &'static str, bool); 2] {
    [
        (b"\xff\xfe.png", "\u{fffd}\u{fffd}.png", true),
        (b"bad-\xfe\xff.jpg", "bad-\u{fffd}\u{fffd}.jpg", false),
    ]
}

/// A corpus config, the exit status it must give and what its one error line must say.
struct BadConfig {
    file: &'static str,
    code: i32,
    /// The error line starts (after `clipd: `) with `<config path>:<line>: <key>: ` …
    line: Option<usize>,
    key: Option<&'static str>,
    /// … and contains this.
    message: &'static str,
}

const BAD_CONFIGS: &[BadConfig] = &[
    BadConfig {
        file: "wrong_type.toml",
        code: 2,
        line: Some(3),
        key: Some("top_k"),
        message: "invalid type: string \"five\"",
    },
    BadConfig {
        file: "unknown_key.toml",
        code: 2,
        line: Some(5),
        key: Some("engine.bacth"),
        message: "unknown field `bacth`",
    },
    BadConfig {
        file: "no_classes.toml",
        code: 2,
        line: None,
        key: Some("classes"),
        message: "no classes configured",
    },
    BadConfig {
        file: "missing_source.toml",
        code: 2,
        line: None,
        key: None,
        message: "sources[0]: {dir}/no-such-frames: no such directory (relative paths resolve against the config's folder, {dir})",
    },
    BadConfig {
        file: "missing_bundle.toml",
        code: 3,
        line: None,
        key: None,
        message: "bundle {dir}/no-such-bundle: no such directory",
    },
    BadConfig {
        file: "camera_every_nth_zero.toml",
        code: 2,
        line: Some(7),
        key: Some("sources[0].every_nth"),
        message: "must be at least 1",
    },
    BadConfig {
        file: "novelty_out_of_range.toml",
        code: 2,
        line: Some(8),
        key: Some("sources[0].novelty"),
        message: "must be between 0 and 1",
    },
    BadConfig {
        file: "max_rows_zero.toml",
        code: 2,
        line: Some(5),
        key: Some("store.max_rows"),
        message: "must be at least 1",
    },
];

/// A fatal error: the documented status, exactly one `clipd: ` line containing every needle,
/// no panic. Returns the line.
fn assert_fatal(o: &Output, code: i32, needles: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("clipd: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    err.trim_end().to_string()
}

fn file_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// A staged file and the name it must appear under in messages (lossy for non-UTF-8 names).
type Named = (PathBuf, String);

/// The corpus images (and the non-UTF-8 names) copied under `dir/corpus/`: the bad ones and
/// the valid ones.
fn stage_corpus(dir: &Path) -> (Vec<Named>, Vec<Named>) {
    let dst = dir.join("corpus");
    std::fs::create_dir_all(&dst).unwrap();
    let src = corpus().join("images");
    let mut bad = Vec::new();
    let mut valid = Vec::new();
    for b in bad_images() {
        std::fs::copy(src.join(b.file), dst.join(b.file)).unwrap();
        bad.push((dst.join(b.file), b.file.to_string()));
    }
    for v in VALID_IMAGES {
        std::fs::copy(src.join(v), dst.join(v)).unwrap();
        valid.push((dst.join(v), v.to_string()));
    }
    let good_frame = fixtures().join("fieldset/test/star/star_000.jpg");
    for (raw, lossy, ok) in non_utf8_names() {
        let p = dst.join(OsStr::from_bytes(raw));
        if ok {
            std::fs::copy(&good_frame, &p).unwrap();
            valid.push((p, lossy.to_string()));
        } else {
            std::fs::write(&p, b"not an image, and not a UTF-8 name either\n").unwrap();
            bad.push((p, lossy.to_string()));
        }
    }
    (bad, valid)
}

fn json_rows(o: &Output) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&stdout(o))
        .unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn every_corpus_file_is_listed_and_tested() {
    let readme = std::fs::read_to_string(corpus().join("README.md")).unwrap();
    let images = file_names(&corpus().join("images"));
    let configs = file_names(&corpus().join("configs"));
    for name in images.iter().chain(&configs) {
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} is not listed in tests/fixtures/bad/README.md"
        );
    }
    for test in BAD_IMAGES.iter().filter_map(|b| b.known_bug) {
        assert!(
            readme.contains(test),
            "known bug {test} is not in the README"
        );
    }
    let tested: BTreeSet<String> = BAD_IMAGES
        .iter()
        .map(|b| b.file)
        .chain(VALID_IMAGES.iter().copied())
        .map(String::from)
        .collect();
    assert_eq!(images, tested, "images/ and the test tables differ");
    let tested: BTreeSet<String> = BAD_CONFIGS.iter().map(|c| c.file.to_string()).collect();
    assert_eq!(configs, tested, "configs/ and the test table differ");
}

#[test]
fn corpus_images_are_what_the_readme_says() {
    let dir = corpus().join("images");
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    // Truncations are strict prefixes of committed valid images.
    for (cut, whole) in [
        ("truncated.jpg", "fieldset/test/circle/circle_000.jpg"),
        (
            "truncated_header.jpg",
            "fieldset/test/circle/circle_000.jpg",
        ),
        ("truncated.png", "images/star_rgb.png"),
    ] {
        let (cut, whole) = (read(cut), std::fs::read(fixtures().join(whole)).unwrap());
        assert!(!cut.is_empty() && cut.len() < whole.len() && whole.starts_with(&cut));
        assert!(image::load_from_memory(&whole).is_ok());
    }
    // One JPEG is cut after its start-of-scan marker, the other before it.
    let has_scan = |b: &[u8]| b.windows(2).any(|w| w == [0xff, 0xda]);
    assert!(has_scan(&read("truncated.jpg")));
    assert!(!has_scan(&read("truncated_header.jpg")));
    assert!(read("empty.png").is_empty());
    assert!(String::from_utf8(read("text.jpg")).is_ok());
    assert!(image::guess_format(&read("random.png")).is_err());
    let one = image::load_from_memory(&read("one_pixel.png")).unwrap();
    assert_eq!((one.width(), one.height()), (1, 1));
    // The huge header is tiny on disk and well-formed up to its claimed size.
    let huge = read("huge_header.png");
    assert!(huge.len() < 100, "{} bytes", huge.len());
    let dims = image::ImageReader::new(std::io::Cursor::new(&huge))
        .with_guessed_format()
        .unwrap()
        .into_dimensions()
        .unwrap();
    assert_eq!(dims, (20_000, 20_000));
}

#[test]
fn bad_frames_fail_alone_in_run_once() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    let good = copy_frames(&frames, &["circle", "square"], 1);
    let (bad, valid) = stage_corpus(&frames);
    let db = tmp.path().join("h.db");
    let cfg = write_config(tmp.path(), &frames, &db, SHAPES, "");
    let o = run(&["run", "--once", "--config", cfg.to_str().unwrap()]);
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    let classified = good + valid.len();
    let total = classified + bad.len();
    assert!(
        out.contains(&format!(
            "frames: {total} ({classified} classified, {} failed)",
            bad.len()
        )),
        "{out}"
    );
    for kind in ["decode", "empty", "too_large"] {
        let n = bad_images().filter(|b| b.kind == kind).count();
        assert!(out.contains(&format!("{kind} {n}")), "{kind}: {out}");
    }
    // The non-UTF-8 bad frame is unsupported too.
    let unsupported = 1 + bad_images().filter(|b| b.kind == "unsupported").count();
    assert!(out.contains(&format!("unsupported {unsupported}")), "{out}");
    // One warning per bad frame, naming it; nothing else on stderr.
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), bad.len(), "{err}");
    for (_, name) in &bad {
        assert_eq!(
            lines.iter().filter(|l| l.contains(name.as_str())).count(),
            1,
            "{name} not reported once: {err}"
        );
    }

    let o = run(&[
        "query",
        "--db",
        db.to_str().unwrap(),
        "--format",
        "json",
        "--errors",
        "--limit",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = json_rows(&o);
    assert_eq!(rows.len(), total);
    let row_for = |name: &str| {
        let found: Vec<&serde_json::Value> = rows
            .iter()
            .filter(|r| {
                r["frame_ref"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("/{name}"))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name}: {rows:?}");
        found[0].clone()
    };
    for (_, name) in &bad {
        let r = row_for(name);
        assert!(r["label"].is_null(), "{r}");
        let e = r["error"].as_str().unwrap();
        assert!(e.contains(name.as_str()), "{e}");
        assert_eq!(e.lines().count(), 1, "{e:?}");
        assert_eq!(e.trim_end(), e, "{e:?}");
    }
    for b in bad_images() {
        let r = row_for(b.file);
        assert!(r["error"].as_str().unwrap().contains(b.message), "{r}");
    }
    for (_, name) in &valid {
        let r = row_for(name);
        assert!(r["error"].is_null(), "{r}");
        assert!(SHAPES.contains(&r["label"].as_str().unwrap()), "{r}");
    }
    let ok = rows.iter().filter(|r| r["error"].is_null()).count();
    assert_eq!(ok, classified);
}

#[test]
fn bad_frames_fail_alone_in_classify() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    copy_frames(&frames, &["circle"], 1);
    let good = frames.join("circle/circle_000.jpg");
    let (bad, valid) = stage_corpus(&frames);
    let db = tmp.path().join("never.db");
    let cfg = write_config(tmp.path(), &frames, &db, SHAPES, "");
    // Interleave: good, bad…, valid…, so order and isolation both show.
    let mut inputs: Vec<(PathBuf, String, bool)> = vec![(good, "circle_000.jpg".into(), true)];
    inputs.extend(bad.iter().map(|(p, n)| (p.clone(), n.clone(), false)));
    inputs.extend(valid.iter().map(|(p, n)| (p.clone(), n.clone(), true)));
    let o = clipd()
        .args(["classify", "--format", "json", "--config"])
        .arg(&cfg)
        .args(inputs.iter().map(|(p, _, _)| p.as_os_str()))
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), bad.len(), "{err}");
    for (_, name) in &bad {
        assert_eq!(
            lines.iter().filter(|l| l.contains(name.as_str())).count(),
            1,
            "{name}: {err}"
        );
    }
    for b in bad_images() {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(b.file) && l.contains(b.message)),
            "{}: {err}",
            b.file
        );
    }
    let rows = json_rows(&o);
    let want: Vec<&String> = inputs
        .iter()
        .filter(|(_, _, ok)| *ok)
        .map(|(_, n, _)| n)
        .collect();
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for (r, name) in rows.iter().zip(want) {
        assert!(r["path"].as_str().unwrap().ends_with(name.as_str()), "{r}");
        assert!(SHAPES.contains(&r["label"].as_str().unwrap()), "{r}");
    }
    assert!(!db.exists(), "classify created the history database");
}

#[test]
fn bad_configs_name_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("never.db");
    let dir = corpus().join("configs");
    for c in BAD_CONFIGS {
        let path = dir.join(c.file);
        let shown = path.display().to_string();
        let o = run(&[
            "run",
            "--once",
            "--config",
            &shown,
            "--db",
            db.to_str().unwrap(),
        ]);
        let message = c.message.replace("{dir}", &dir.display().to_string());
        let line = assert_fatal(&o, c.code, &[&message]);
        if let Some(key) = c.key {
            let at = match c.line {
                Some(n) => format!("clipd: {shown}:{n}: {key}: "),
                None => format!("clipd: {shown}: {key}: "),
            };
            assert!(
                line.starts_with(&at),
                "{}: want {at:?}, got {line:?}",
                c.file
            );
        }
        assert!(!db.exists(), "{}: database created", c.file);
    }
}

#[test]
fn bad_bundles_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    copy_frames(&frames, &["circle"], 1);
    let db = tmp.path().join("never.db");
    let cfg = write_config(tmp.path(), &frames, &db, SHAPES, "");
    let case = |name: &str| tmp.path().join(name);

    // One byte of an encoder flipped: the manifest's sha256 no longer matches. The copy's
    // file is unlinked first so the shipped bundle (hard-linked) is never touched.
    let corrupt = tampered_bundle(&case("hash"), &[], &[], |_| {});
    let onnx = corrupt.join("image_encoder.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::remove_file(&onnx).unwrap();
    std::fs::write(&onnx, &bytes).unwrap();

    let missing = tampered_bundle(&case("missing"), &["text_encoder.onnx"], &[], |_| {});
    // The manifest claims 999-pixel images, but its declared encoder input still says 64.
    let inconsistent = tampered_bundle(&case("size"), &[], &[], |m| {
        m["image"]["size"] = 999.into();
    });
    // The manifest is consistent about 999 pixels; the graph itself takes 64.
    let shape = tampered_bundle(&case("shape"), &[], &[], |m| {
        m["image"]["size"] = 999.into();
        m["image_encoder"]["input"]["shape"] = serde_json::json!(["batch", 3, 999, 999]);
    });
    let cases: Vec<(PathBuf, Vec<String>)> = vec![
        (
            corrupt.clone(),
            vec![format!(
                "{}: sha256",
                corrupt.join("image_encoder.onnx").display()
            )],
        ),
        (
            missing.clone(),
            vec![format!(
                "{}: file listed in manifest `files` is missing",
                missing.join("text_encoder.onnx").display()
            )],
        ),
        (
            inconsistent.clone(),
            vec![
                format!("{}", inconsistent.join("manifest.json").display()),
                "image_encoder.input.shape".into(),
                "[batch, 3, 999, 999]".into(),
            ],
        ),
        (
            shape.clone(),
            vec![
                format!("{}", shape.join("image_encoder.onnx").display()),
                "image_encoder.input.shape".into(),
                "999".into(),
            ],
        ),
    ];
    for (bundle, needles) in cases {
        let o = run(&[
            "run",
            "--once",
            "--config",
            cfg.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
        ]);
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        assert_fatal(&o, 3, &needles);
        assert!(!db.exists(), "{}: database created", bundle.display());
    }
}

#[test]
fn adapters_for_another_bundle_or_other_classes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let classes = ["circle", "star"];
    let support = dir.join("support");
    for c in classes {
        let dst = support.join(c);
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(fixtures().join("fieldset/pool").join(c)).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
    let frames = dir.join("frames");
    copy_frames(&frames, &classes, 1);
    let db = dir.join("never.db");
    let cfg = write_config(dir, &frames, &db, &classes, "");
    let adapter = dir.join("shapes.safetensors");
    let o = run(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--support",
        support.to_str().unwrap(),
        "--method",
        "linear",
        "--augment",
        "0",
        "--seed",
        "0",
        "--out",
        adapter.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = adapter.to_str().unwrap();

    // The same adapter with a bundle whose manifest (and so model id) differs.
    let other = tampered_bundle(&dir.join("other"), &[], &[], |m| {
        m["name"] = "other-clip".into();
    });
    let o = run(&[
        "run",
        "--once",
        "--config",
        cfg.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--bundle",
        other.to_str().unwrap(),
        "--adapter",
        a,
    ]);
    assert_fatal(
        &o,
        3,
        &[
            &format!("{a}: trained for model bundle tiny-clip@"),
            "other-clip@",
        ],
    );

    // The same adapter with a config whose classes differ.
    let other_classes = write_config(dir, &frames, &db, &["circle", "square"], "");
    let o = run(&[
        "run",
        "--once",
        "--config",
        other_classes.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--adapter",
        a,
    ]);
    assert_fatal(
        &o,
        2,
        &[
            &format!("{a}: trained for other classes"),
            "config classes not in the adapter: square",
            "adapter classes not in the config: star",
        ],
    );
    assert!(!db.exists(), "database created");
}
