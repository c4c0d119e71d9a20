//! Transductive refinement through the binary: online in `run` (refined labels, refinement runs
//! and state changes in the history), offline over stored embeddings (`refine`), and on `.npy`
//! dumps (`transduct`) against the NumPy reference fixtures.

mod common;

use std::path::Path;

use common::*;

const SHAPES: [&str; 5] = ["circle", "square", "triangle", "star", "hexagon"];

fn sql(db: &Path, q: &str) -> Vec<Vec<String>> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare(q).unwrap();
    let cols = stmt.column_count();
    stmt.query_map([], |r| {
        (0..cols)
            .map(|i| {
                r.get::<_, rusqlite::types::Value>(i).map(|v| match v {
                    rusqlite::types::Value::Null => "NULL".to_string(),
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Real(f) => f.to_string(),
                    rusqlite::types::Value::Text(t) => t,
                    rusqlite::types::Value::Blob(_) => "blob".to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[test]
fn run_refines_the_buffer_and_records_runs_and_state_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    copy_frames(&frames, &SHAPES, 4);
    // A second source that only ever sees circles, so its smoothed state settles.
    copy_frames(&tmp.path().join("circles"), &["circle"], 10);
    let db = tmp.path().join("h.db");
    let refine = format!(
        "[refine]\nmethod = \"transclip\"\nevery_frames = 10\n[refine.smoothing]\nwindow = 10\nmin_frames = 3\nagreement = 0.3\n\n[[sources]]\nkind = \"dir\"\nname = \"circle-cam\"\npath = {:?}\n",
        tmp.path().join("circles")
    );
    let config = write_config(tmp.path(), &frames, &db, &SHAPES, "");
    let text = std::fs::read_to_string(&config).unwrap() + "\n" + &refine;
    std::fs::write(&config, text).unwrap();
    let o = run(&["run", "--once", "--config", config.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("refinement: "), "{}", stdout(&o));

    // Every classified frame got a refined label from some run; runs are recorded.
    let rows = sql(
        &db,
        "SELECT COUNT(*), COUNT(refined_label), COUNT(refine_run_id) FROM frames",
    );
    assert_eq!(rows[0], vec!["30", "30", "30"]);
    let runs = sql(
        &db,
        "SELECT algorithm, n_frames, n_changed, params FROM refinements",
    );
    assert!(!runs.is_empty());
    assert!(runs.iter().all(|r| r[0] == "transclip"));
    assert!(
        runs.iter().any(|r| r[1] == "30"),
        "the last pass covers every frame: {runs:?}"
    );
    assert!(runs[0][3].contains("\"knn\":3"), "{}", runs[0][3]);
    // No embeddings are stored unless asked for, even though the refiner used them.
    assert_eq!(sql(&db, "SELECT COUNT(embedding) FROM frames")[0][0], "0");

    // The circle camera's state is the label most of its refined frames agree on.
    let majority = sql(
        &db,
        "SELECT refined_label FROM frames WHERE source = 'circle-cam' GROUP BY refined_label ORDER BY COUNT(*) DESC LIMIT 1",
    );
    let o = run(&[
        "query",
        "--db",
        db.to_str().unwrap(),
        "--changes",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let changes: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let circle: Vec<&serde_json::Value> = changes
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["source"] == "circle-cam")
        .collect();
    assert!(!circle.is_empty(), "{changes}");
    assert_eq!(circle[0]["to_label"], majority[0][0].as_str());
}

#[test]
fn refine_rewrites_stored_history_and_dry_run_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    copy_frames(&frames, &SHAPES, 4);
    let db = tmp.path().join("h.db");
    let config = write_config(tmp.path(), &frames, &db, &SHAPES, "");
    let cfg = config.to_str().unwrap();

    // Without stored embeddings there is nothing to refine: a clear usage error.
    assert!(run(&["run", "--once", "--config", cfg]).status.success());
    let o = run(&["refine", "--config", cfg, "--dry-run"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("store.embeddings = true"),
        "{}",
        stderr(&o)
    );
    // A window with no frames at all says so (not that embeddings are missing).
    let o = run(&[
        "refine",
        "--config",
        cfg,
        "--dry-run",
        "--until",
        "2000-01-01",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no frames in the window until 2000-01-01: widen --since/--until"),
        "{}",
        stderr(&o)
    );

    std::fs::remove_file(&db).unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[store]\n", "[store]\nembeddings = true\n");
    std::fs::write(&config, text).unwrap();
    assert!(run(&["run", "--once", "--config", cfg]).status.success());
    let before = sql(&db, "SELECT COUNT(*) FROM refinements");
    let o = run(&[
        "refine",
        "--config",
        cfg,
        "--dry-run",
        "--method",
        "transclip",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("20 frames in 1 windows") && stdout(&o).contains("would change"),
        "{}",
        stdout(&o)
    );
    assert_eq!(sql(&db, "SELECT COUNT(*) FROM refinements"), before);

    let o = run(&[
        "refine",
        "--config",
        cfg,
        "--method",
        "hard-em-dirichlet",
        "--window",
        "10",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let runs = sql(
        &db,
        "SELECT algorithm, n_frames FROM refinements ORDER BY id",
    );
    assert_eq!(runs.len(), 2);
    assert!(runs
        .iter()
        .all(|r| r == &vec!["hard-em-dirichlet".to_string(), "10".to_string()]));
    assert_eq!(
        sql(&db, "SELECT COUNT(refined_label) FROM frames")[0][0],
        "20"
    );

    let o = run(&[
        "refine",
        "--config",
        cfg,
        "--method",
        "em-dirichlet",
        "--set",
        "bogus=1",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("bogus"), "{}", stderr(&o));
}

#[test]
fn transduct_on_npy_dumps_matches_the_reference_fixtures() {
    let cases: serde_json::Value = read_json(&fixtures().join("transduct/cases.json"));
    let tmp = tempfile::tempdir().unwrap();
    let matrix = |v: &serde_json::Value| -> (Vec<f32>, usize, usize) {
        let rows = v.as_array().unwrap();
        let data: Vec<f32> = rows
            .iter()
            .flat_map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
            })
            .collect();
        let n = rows.len();
        (data.clone(), n, data.len() / n.max(1))
    };
    let mut tried = 0;
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let method = case["method"].as_str().unwrap();
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let write = |file: &str, v: &serde_json::Value| {
            let (data, r, c) = matrix(v);
            let p = dir.join(file);
            clipd::npy::write(&p, &[r, c], &data).unwrap();
            p.to_str().unwrap().to_string()
        };
        let mut args: Vec<String> = vec!["transduct".into(), "--method".into(), method.into()];
        if method == "transclip" {
            args.extend(["--features".into(), write("x.npy", &case["features"])]);
            args.extend(["--text".into(), write("t.npy", &case["text"])]);
            if !case["support_features"].is_null() {
                args.extend([
                    "--support-features".into(),
                    write("s.npy", &case["support_features"]),
                ]);
            }
        } else {
            args.extend(["--probs".into(), write("p.npy", &case["probs"])]);
            if !case["support_probs"].is_null() {
                args.extend([
                    "--support-probs".into(),
                    write("sp.npy", &case["support_probs"]),
                ]);
            }
        }
        if let Some(l) = case["support_labels"].as_array() {
            let labels: Vec<i64> = l.iter().map(|v| v.as_i64().unwrap()).collect();
            let p = dir.join("y.npy");
            clipd::npy::write(&p, &[labels.len()], &labels).unwrap();
            args.extend(["--support-labels".into(), p.to_str().unwrap().into()]);
        }
        for (k, v) in case["params"].as_object().unwrap() {
            if v.is_null() {
                continue;
            }
            let value = match v {
                serde_json::Value::Bool(b) => b.to_string(),
                other => other.to_string(),
            };
            if k == "hard" {
                continue;
            }
            args.extend(["--set".into(), format!("{k}={value}")]);
        }
        let z = dir.join("z.npy");
        let pred = dir.join("pred.npy");
        args.extend(["--preset".into(), "reference".into()]);
        args.extend(["--out".into(), z.to_str().unwrap().into()]);
        args.extend(["--pred-out".into(), pred.to_str().unwrap().into()]);
        let o = clipd().args(&args).output().unwrap();
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let got = clipd::npy::read::<f32>(&z).unwrap();
        let (want, n, k) = matrix(&case["expected_z"]);
        assert_eq!(got.shape, vec![n, k], "{name}");
        let worst = got
            .data
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-4, "{name}: max |Z - expected| = {worst}");
        let p = clipd::npy::read::<i64>(&pred).unwrap();
        let expected: Vec<i64> = case["expected_pred"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(p.data, expected, "{name}");
        tried += 1;
    }
    assert!(tried >= 20, "only {tried} cases");
}
