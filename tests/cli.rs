//! End-to-end runs of the `clipd` binary: the README demo, the history round trip, reading
//! while a daemon writes, and the bad inputs every command must survive.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const SHAPES: &[&str] = &["circle", "square", "triangle", "star"];

fn json_rows(args: &[&str]) -> Vec<serde_json::Value> {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_str::<serde_json::Value>(&stdout(&o))
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stdout(&o)))
        .as_array()
        .unwrap()
        .clone()
}

/// One line on stderr, a documented exit status, and no database left behind.
fn assert_clean_failure(o: &std::process::Output, code: i32, needle: &str, db: &Path) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "{needle:?} not in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!db.exists(), "{} was created", db.display());
}

#[test]
fn demo_runs_end_to_end_with_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("demo.db");
    let o = run(&["demo", "--db", db.to_str().unwrap()]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}\n{}", out, stderr(&o));
    let n = fieldset_test_frames().len();
    assert!(
        out.contains(&format!("frames: {n} ({n} classified, 0 failed)")),
        "{out}"
    );
    assert!(out.contains("accuracy vs known labels: top-1"), "{out}");
    assert!(!out.contains("matching no class"), "{out}");
    let rows = json_rows(&[
        "query",
        "--db",
        db.to_str().unwrap(),
        "--limit",
        "0",
        "--format",
        "json",
    ]);
    assert_eq!(rows.len(), n);
    // A second run takes every prompt embedding from the cache and logs the frames again.
    let o = clipd()
        .args(["-v", "demo", "--db", db.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(
        stderr(&o).contains("prompts from cache, 0 embedded"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn demo_config_matches_the_fieldset_classes() {
    let cfg = clipd::config::load(&root().join("configs/demo.toml")).unwrap();
    let reference = read_json(&fixtures().join("zeroshot_reference.json"));
    let classes = read_json(&fixtures().join("fieldset/classes.json"));
    let names: Vec<&str> = classes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let configured: Vec<&str> = cfg.config.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        configured, names,
        "configs/demo.toml is out of date with classes.json"
    );
    // The config's default prompts are the ones the Python reference used.
    for c in &cfg.config.classes {
        let want: Vec<String> = reference["prompts"][&c.name]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(c.prompts(&cfg.config.prompts), want, "{}", c.name);
    }
}

#[test]
fn history_round_trips_through_run_and_query() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    let n = copy_frames(&frames, SHAPES, 3);
    let db = tmp.path().join("h.db");
    let cfg = write_config(tmp.path(), &frames, &db, SHAPES, "top_k = 3");
    let o = run(&["run", "--once", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("frames: {n} ({n} classified, 0 failed)")));
    let d = db.to_str().unwrap();
    let all = json_rows(&["query", "--db", d, "--format", "json", "--limit", "0"]);
    assert_eq!(all.len(), n);
    for r in &all {
        assert_eq!(r["source"], "cam");
        assert_eq!(r["topk"].as_array().unwrap().len(), 3);
        assert_eq!(r["topk"][0]["label"], r["label"]);
        assert!(r["frame_ref"].as_str().unwrap().ends_with(".jpg"));
        assert!(r["latency_us"].as_u64().is_some());
        assert!(r["model_id"].as_str().unwrap().starts_with("tiny-clip@"));
    }
    // Each filter.
    let label = all[0]["label"].as_str().unwrap();
    let by_label = json_rows(&["query", "--db", d, "--format", "json", "--label", label]);
    assert!(!by_label.is_empty() && by_label.iter().all(|r| r["label"] == label));
    assert_eq!(
        by_label.len(),
        all.iter().filter(|r| r["label"] == label).count()
    );
    let min = all[0]["score"].as_f64().unwrap();
    let by_score = json_rows(&[
        "query",
        "--db",
        d,
        "--format",
        "json",
        "--min-score",
        &format!("{min}"),
    ]);
    assert!(by_score
        .iter()
        .all(|r| r["score"].as_f64().unwrap() >= min - 1e-6));
    assert!(!by_score.is_empty());
    assert_eq!(
        json_rows(&["query", "--db", d, "--format", "json", "--source", "cam"]).len(),
        n
    );
    assert!(json_rows(&["query", "--db", d, "--format", "json", "--source", "other"]).is_empty());
    assert_eq!(
        json_rows(&["query", "--db", d, "--format", "json", "--since", "1h"]).len(),
        n
    );
    assert!(json_rows(&["query", "--db", d, "--format", "json", "--until", "1h"]).is_empty());
    assert!(json_rows(&[
        "query",
        "--db",
        d,
        "--format",
        "json",
        "--since",
        "2099-01-01T00:00:00Z"
    ])
    .is_empty());
    assert_eq!(
        json_rows(&["query", "--db", d, "--format", "json", "--limit", "2"]).len(),
        2
    );
    let stats = json_rows(&["query", "--db", d, "--format", "json", "--stats"]);
    let counted: u64 = stats.iter().map(|s| s["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, n as u64);
    let csv = run(&["query", "--db", d, "--format", "csv", "--limit", "0"]);
    assert_eq!(stdout(&csv).lines().count(), n + 1);
    // Labels match in any case; a label that is no class gets a note on stderr.
    let upper = label.to_uppercase();
    assert_eq!(
        json_rows(&["query", "--db", d, "--format", "json", "--label", &upper]).len(),
        by_label.len()
    );
    let o = run(&["query", "--db", d, "--label", "no-such-class"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("\"no-such-class\" is not a configured class"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o), "0 frames\n", "an empty table says so");
    // The table leads with the row id; `--since -1h` is a time, not a flag.
    let table = run(&["query", "--db", d, "--since", "-1h", "--limit", "0"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("ID "), "{text}");
    let ids: Vec<String> = all.iter().map(|r| r["id"].to_string()).collect();
    assert_eq!(lines.count(), n, "{text}");
    assert!(
        text.lines()
            .skip(1)
            .all(|l| ids.contains(&l.split_whitespace().next().unwrap().to_string())),
        "{text}"
    );
    let bad = run(&["query", "--db", d, "--since", "yesterday-ish"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    // Query never creates a database.
    let missing = tmp.path().join("none.db");
    let o = run(&["query", "--db", missing.to_str().unwrap()]);
    assert_clean_failure(&o, 4, "none.db", &missing);
}

#[test]
fn query_into_a_closed_pipe_is_not_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    copy_frames(&frames, SHAPES, 10);
    let db = tmp.path().join("p.db");
    let cfg = write_config(tmp.path(), &frames, &db, SHAPES, "");
    assert!(run(&["run", "--once", "--config", cfg.to_str().unwrap()])
        .status
        .success());
    let mut child = clipd()
        .args([
            "query",
            "--db",
            db.to_str().unwrap(),
            "--limit",
            "0",
            "--format",
            "csv",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, then close our end, like `clipd query | head -1`.
    {
        use std::io::{BufRead, BufReader};
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("id,") || line.contains(','), "{line}");
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{:?} {}", o.status, stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn query_reads_while_run_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("incoming");
    std::fs::create_dir_all(&frames).unwrap();
    let db = tmp.path().join("live.db");
    let cfg = write_config(tmp.path(), &frames, &db, SHAPES, "");
    // Watching (no --once): the daemon keeps polling the directory.
    let mut daemon = clipd()
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let d = db.to_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    // The database is usable once its schema is committed (creating it is one transaction).
    while !run(&["query", "--db", d, "--summary"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "daemon never created its database"
        );
        assert!(daemon.try_wait().unwrap().is_none(), "daemon exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut expected = 0;
    let mut seen_partial = false;
    for (round, class) in SHAPES.iter().enumerate() {
        let src = tmp.path().join(format!("batch{round}"));
        expected += copy_frames(&src, &[class], 5);
        std::fs::rename(src.join(class), frames.join(class)).unwrap();
        loop {
            let o = run(&["query", "--db", d, "--format", "json", "--limit", "0"]);
            assert!(
                o.status.success(),
                "query failed while run writes: {}",
                stderr(&o)
            );
            let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(&o)).unwrap();
            if rows.len() == expected {
                break;
            }
            seen_partial |= rows.len() < expected;
            assert!(
                Instant::now() < deadline,
                "only {} of {expected} rows",
                rows.len()
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_eq!(expected, 20);
    let _ = seen_partial;
}

#[test]
fn bad_frames_are_logged_and_the_run_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    let good = copy_frames(&frames, &["circle"], 3);
    let bad = frames.join("circle");
    std::fs::write(bad.join("zero.png"), b"").unwrap();
    std::fs::write(
        bad.join("corrupt.jpg"),
        b"\xff\xd8\xff\xe0 this is not a jpeg at all",
    )
    .unwrap();
    let jpg = std::fs::read(
        fixtures()
            .join("fieldset/test/circle")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    std::fs::write(bad.join("truncated.jpg"), &jpg[..jpg.len() / 3]).unwrap();
    std::fs::write(bad.join("photo.heic"), b"\0\0\0\x18ftypheic\0\0\0\0").unwrap();
    std::fs::copy(
        fixtures().join("bad/images/huge_header.png"),
        bad.join("huge.png"),
    )
    .unwrap();
    let db = tmp.path().join("b.db");
    let cfg = write_config(tmp.path(), &frames, &db, SHAPES, "");
    let started = Instant::now();
    let o = run(&["run", "--once", "--config", cfg.to_str().unwrap()]);
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(started.elapsed() < Duration::from_secs(60));
    let total = good + 5;
    assert!(
        out.contains(&format!("frames: {total} ({good} classified, 5 failed)")),
        "{out}"
    );
    assert!(out.contains("too_large 1"), "{out}");
    for name in [
        "zero.png",
        "corrupt.jpg",
        "truncated.jpg",
        "photo.heic",
        "huge.png",
    ] {
        assert!(err.contains(name), "{name} not reported: {err}");
    }
    assert!(!err.contains("panicked"));
    let rows = json_rows(&[
        "query",
        "--db",
        db.to_str().unwrap(),
        "--format",
        "json",
        "--errors",
        "--limit",
        "0",
    ]);
    assert_eq!(rows.len(), total);
    let errors: Vec<&serde_json::Value> = rows.iter().filter(|r| !r["error"].is_null()).collect();
    assert_eq!(errors.len(), 5);
    assert!(errors.iter().all(|r| r["label"].is_null()));
    assert!(errors
        .iter()
        .any(|r| r["error"].as_str().unwrap().contains("20000x20000")));
}

#[test]
fn classify_reports_bad_inputs_and_prints_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("f");
    copy_frames(&frames, &["star"], 2);
    std::fs::write(frames.join("empty.jpg"), b"").unwrap();
    let db = tmp.path().join("never.db");
    let cfg = write_config(tmp.path(), &frames, &db, SHAPES, "");
    let mut files: Vec<_> = std::fs::read_dir(frames.join("star"))
        .unwrap()
        .map(|e| e.unwrap().path().to_str().unwrap().to_string())
        .collect();
    files.sort();
    let empty = frames.join("empty.jpg");
    let mut args = vec![
        "classify",
        "--config",
        cfg.to_str().unwrap(),
        "--format",
        "json",
        "--top-k",
        "2",
    ];
    args.push(&files[0]);
    args.push(empty.to_str().unwrap());
    args.push(&files[1]);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("empty.jpg: empty file"),
        "{}",
        stderr(&o)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["path"], files[0].as_str());
    assert_eq!(rows[1]["path"], files[1].as_str());
    for r in &rows {
        assert!(SHAPES.contains(&r["label"].as_str().unwrap()));
        assert_eq!(r["topk"].as_array().unwrap().len(), 2);
        assert!(r["score"].as_f64().unwrap() > 0.0);
    }
    assert!(
        !db.exists(),
        "classify must not create the history database"
    );
}

#[test]
fn classify_with_two_lanes_matches_one_lane() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("f");
    let n = copy_frames(&frames, &["star", "circle"], 3);
    let mut files: Vec<String> = ["star", "circle"]
        .iter()
        .flat_map(|c| std::fs::read_dir(frames.join(c)).unwrap())
        .map(|e| e.unwrap().path().to_str().unwrap().to_string())
        .collect();
    files.sort();
    assert_eq!(files.len(), n);
    let classify = |lanes: usize| {
        let dir = tmp.path().join(format!("lanes{lanes}"));
        std::fs::create_dir_all(&dir).unwrap();
        let engine = format!("[engine]\nbatch = 4\nthreads = 2\nlanes = {lanes}\n");
        let cfg = write_config(&dir, &frames, &dir.join("db"), SHAPES, &engine);
        let mut args = vec!["-v", "classify", "--config", cfg.to_str().unwrap()];
        args.extend(["--format", "json", "--top-k", "3"]);
        args.extend(files.iter().map(String::as_str));
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        // 6 images in batches of 4: one full batch over the lanes, one short batch.
        let plan = format!("batch {} x {lanes} lane(s)", 4 / lanes);
        assert!(stderr(&o).contains(&plan), "no {plan:?} in {}", stderr(&o));
        serde_json::from_str::<Vec<serde_json::Value>>(&stdout(&o)).unwrap()
    };
    let (one, two) = (classify(1), classify(2));
    assert_eq!(one.len(), n);
    assert_eq!(two.len(), n);
    for (a, b) in one.iter().zip(&two) {
        assert_eq!(a["path"], b["path"]);
        assert_eq!(a["label"], b["label"], "{a} vs {b}");
        for (x, y) in a["topk"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["topk"].as_array().unwrap())
        {
            assert_eq!(x["label"], y["label"]);
            let (p, q) = (x["score"].as_f64().unwrap(), y["score"].as_f64().unwrap());
            assert!((p - q).abs() <= 1e-4, "{} scores {p} vs {q}", a["path"]);
        }
    }
}

#[test]
fn embed_writes_normalised_matrices_in_input_order() {
    let tmp = tempfile::tempdir().unwrap();
    let names = ["star_rgb.png", "seven_gray.png", "boat_palette.png"];
    let paths: Vec<String> = names
        .iter()
        .map(|n| {
            fixtures()
                .join("images")
                .join(n)
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let out = tmp.path().join("x.npy");
    let mut args = vec!["embed", "--out", out.to_str().unwrap()];
    args.extend(paths.iter().map(String::as_str));
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let x: clipd::npy::Array<f32> = clipd::npy::read(&out).unwrap();
    let reference: clipd::npy::Array<f32> =
        clipd::npy::read(&fixtures().join("image_embeds.npy")).unwrap();
    let order: Vec<String> = read_json(&fixtures().join("images.json"))
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let d = reference.shape[1];
    assert_eq!(x.shape, vec![3, d]);
    for (i, n) in names.iter().enumerate() {
        let j = order.iter().position(|o| o == n).unwrap();
        let c = cosine(
            &x.data[i * d..(i + 1) * d],
            &reference.data[j * d..(j + 1) * d],
        );
        assert!(c >= 0.999, "{n}: {c}");
    }
    let t = tmp.path().join("t.npy");
    let o = run(&[
        "embed",
        "--text",
        "a photo of a circle, a type of shape.",
        "--text",
        "",
        "--out",
        t.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let tm: clipd::npy::Array<f32> = clipd::npy::read(&t).unwrap();
    assert_eq!(tm.shape, vec![2, d]);
    let norm: f32 = tm.data[..d].iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
}

#[test]
fn directory_without_images_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("empty");
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::write(frames.join("notes.txt"), b"no frames here").unwrap();
    let db = tmp.path().join("x.db");
    let cfg = write_config(tmp.path(), &frames, &db, SHAPES, "");
    let o = run(&["run", "--once", "--config", cfg.to_str().unwrap()]);
    assert_clean_failure(&o, 2, "no image files found", &db);
    assert!(stderr(&o).contains("sources[0]"));
}

#[test]
fn bad_configs_name_the_key_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("f");
    copy_frames(&frames, &["circle"], 1);
    let db = tmp.path().join("c.db");
    let base = std::fs::read_to_string(write_config(tmp.path(), &frames, &db, SHAPES, "")).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            base.replace("commit_ms = 50", "commit_ms = 50\ncomit_rows = 3"),
            "store.comit_rows: unknown field `comit_rows`",
        ),
        (
            base.replace("commit_ms = 50", "commit_ms = \"soon\""),
            "store.commit_ms: invalid type",
        ),
        (
            base.split("\n[[classes]]").next().unwrap().to_string(),
            "classes: no classes configured",
        ),
        (
            base.replace("name = \"square\"", "name = \"\""),
            "classes[1].name: must not be empty",
        ),
    ];
    for (text, needle) in cases {
        let p = tmp.path().join("bad.toml");
        std::fs::write(&p, &text).unwrap();
        let o = run(&["run", "--once", "--config", p.to_str().unwrap()]);
        assert_clean_failure(&o, 2, needle, &db);
        assert!(stderr(&o).contains("bad.toml:"), "{}", stderr(&o));
    }
    let o = run(&[
        "run",
        "--once",
        "--config",
        tmp.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_clean_failure(&o, 2, "missing.toml", &db);
}

#[test]
fn bad_bundles_name_the_file_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("f");
    copy_frames(&frames, &["circle"], 1);
    let db = tmp.path().join("m.db");
    let cfg = write_config(tmp.path(), &frames, &db, SHAPES, "");
    let check = |bundle: &Path, needle: &str| {
        let o = run(&[
            "run",
            "--once",
            "--config",
            cfg.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
        ]);
        assert_clean_failure(&o, 3, needle, &db);
    };
    let case = |name: &str| tmp.path().join(name);

    let b = tampered_bundle(&case("hash"), &[], &[], |m| {
        m["files"]["text_encoder.onnx"] = "0".repeat(64).into();
    });
    check(&b, "text_encoder.onnx: sha256");

    let b = tampered_bundle(&case("missing"), &["image_encoder.onnx"], &[], |_| {});
    check(
        &b,
        "image_encoder.onnx: file listed in manifest `files` is missing",
    );

    let b = tampered_bundle(&case("tok"), &["tokenizer.json"], &[], |_| {});
    check(&b, "tokenizer.json");

    let b = tampered_bundle(&case("unlisted"), &[], &[], |m| {
        m["files"].as_object_mut().unwrap().remove("tokenizer.json");
    });
    check(&b, "tokenizer.file \"tokenizer.json\" is not listed");

    // The manifest declares towers of different widths.
    let b = tampered_bundle(&case("decl"), &[], &[], |m| {
        m["text_encoder"]["output"]["shape"][1] = 64.into();
    });
    check(&b, "text_encoder.output.shape");

    // The manifest is consistent but the text graph really produces 64-wide embeddings.
    let d = read_json(&bundle_dir().join("manifest.json"))["embed_dim"]
        .as_u64()
        .unwrap() as usize;
    let tower = onnx_text_tower(77, d / 2);
    let b = tampered_bundle(&case("graph"), &[], &[("text_encoder.onnx", tower)], |_| {});
    check(
        &b,
        &format!(
            "text_encoder.onnx: text_encoder.output.shape: graph output has shape [8, {}]",
            d / 2
        ),
    );

    let o = run(&[
        "run",
        "--once",
        "--config",
        cfg.to_str().unwrap(),
        "--bundle",
        tmp.path().to_str().unwrap(),
    ]);
    assert_clean_failure(&o, 3, "manifest.json is missing", &db);
}

#[test]
fn help_documents_exit_codes() {
    let o = run(&["--help"]);
    let out = stdout(&o);
    assert!(o.status.success());
    for line in [
        "0  success",
        "1  some inputs",
        "2  usage or configuration",
        "3  model bundle",
        "4  I/O or database",
    ] {
        assert!(out.contains(line), "{line:?} missing from --help:\n{out}");
    }
    let o = run(&["run", "--bogus"]);
    assert_eq!(o.status.code(), Some(2));
}
