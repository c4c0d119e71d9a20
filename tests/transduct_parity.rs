//! Parity of `clipd::transduct` with the independent NumPy reference
//! (`models/reference/transduct_reference.py`), whose outputs are committed in
//! `tests/fixtures/transduct/cases.json` (see the README beside it). Every case must give the
//! same Z to 1e-4 and the same predictions.
//!
//! `CLIPD_TRANSDUCT_CASES=path` runs another cases file (e.g. one just regenerated elsewhere).

mod common;

use clipd::transduct::{
    em_dirichlet, em_dirichlet_from_features, transclip, Method, Outcome, Params, Preset,
};
use serde_json::Value;
use std::path::PathBuf;

const TOLERANCE: f64 = 1e-4;

fn cases_path() -> PathBuf {
    match std::env::var_os("CLIPD_TRANSDUCT_CASES") {
        Some(p) => PathBuf::from(p),
        None => common::fixtures().join("transduct").join("cases.json"),
    }
}

/// A row-major matrix from a JSON list of rows (or `None` for JSON null).
fn matrix(v: &Value) -> Option<(Vec<f32>, usize, usize)> {
    let rows = v.as_array()?;
    let cols = rows.first().and_then(Value::as_array).map_or(0, Vec::len);
    let mut data = Vec::with_capacity(rows.len() * cols);
    for row in rows {
        let row = row.as_array().expect("matrix row");
        assert_eq!(row.len(), cols, "ragged matrix");
        data.extend(row.iter().map(|x| x.as_f64().expect("number") as f32));
    }
    Some((data, rows.len(), cols))
}

fn labels(v: &Value) -> Option<Vec<usize>> {
    v.as_array().map(|a| {
        a.iter()
            .map(|x| x.as_u64().expect("label") as usize)
            .collect()
    })
}

fn expected_f64(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("expected_z")
        .iter()
        .flat_map(|row| row.as_array().expect("row").iter())
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// The method's parameters: the reference preset, then every fixture parameter by its
/// documented name (an unknown name fails the test, so the two sides cannot drift apart).
fn params(method: Method, case: &Value, k: usize, few_shot: bool) -> Params {
    let mut p = Params::new(method, Preset::Reference, k, few_shot);
    for (key, value) in case["params"].as_object().expect("params") {
        p.set(key, &value.to_string())
            .unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
    }
    p
}

fn compare(name: &str, path: &str, got: &Outcome, case: &Value) -> f64 {
    let want = expected_f64(&case["expected_z"]);
    assert_eq!(got.z.len(), want.len(), "{name} ({path}): Z size");
    let worst = got
        .z
        .iter()
        .zip(&want)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(
        worst < TOLERANCE,
        "{name} ({path}): max |Z − expected| = {worst:e}"
    );
    assert_eq!(
        got.pred,
        labels(&case["expected_pred"]).expect("expected_pred"),
        "{name} ({path}): predictions"
    );
    worst
}

#[test]
fn transduction_matches_the_numpy_reference() {
    let path = cases_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (generate it with models/reference/make_transduct_fixtures.py)",
            path.display()
        )
    });
    let cases: Vec<Value> = serde_json::from_str(&text).expect("cases.json is a JSON list");
    assert!(!cases.is_empty(), "{}: no cases", path.display());
    let mut seen = std::collections::BTreeSet::new();
    for case in &cases {
        let name = case["name"].as_str().expect("name");
        let method: Method = case["method"]
            .as_str()
            .expect("method")
            .parse()
            .expect("known method");
        seen.insert(method.name());
        let ys = labels(&case["support_labels"]);
        match method {
            Method::EmDirichlet | Method::HardEmDirichlet => {
                let mut checked = 0;
                if let Some((probs, n, k)) = matrix(&case["probs"]) {
                    let Params::EmDirichlet(p) = params(method, case, k, ys.is_some()) else {
                        unreachable!()
                    };
                    let sp = matrix(&case["support_probs"]).map(|m| m.0);
                    let support = sp.as_deref().zip(ys.as_deref());
                    let got = em_dirichlet(&probs, n, k, support, &p)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    let worst = compare(name, "probs", &got, case);
                    eprintln!("{name} (probs): max diff {worst:.2e}");
                    checked += 1;
                }
                if let (Some((f, n, d)), Some((t, k, _))) =
                    (matrix(&case["features"]), matrix(&case["text"]))
                {
                    let Params::EmDirichlet(p) = params(method, case, k, ys.is_some()) else {
                        unreachable!()
                    };
                    let sf = matrix(&case["support_features"]).map(|m| m.0);
                    let support = sf.as_deref().zip(ys.as_deref());
                    let got = em_dirichlet_from_features(&f, n, d, &t, k, support, &p)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    let worst = compare(name, "features", &got, case);
                    eprintln!("{name} (features): max diff {worst:.2e}");
                    checked += 1;
                }
                assert!(checked > 0, "{name}: neither probs nor features");
            }
            Method::TransClip => {
                let (f, n, d) = matrix(&case["features"]).expect("features");
                let (t, k, _) = matrix(&case["text"]).expect("text");
                let Params::TransClip(p) = params(method, case, k, ys.is_some()) else {
                    unreachable!()
                };
                let sf = matrix(&case["support_features"]).map(|m| m.0);
                let support = sf.as_deref().zip(ys.as_deref());
                let got = transclip(&f, n, d, &t, k, support, None, &p)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let worst = compare(name, "features", &got, case);
                eprintln!("{name}: max diff {worst:.2e}");
            }
        }
    }
    eprintln!("{} cases, methods {seen:?}", cases.len());
}
