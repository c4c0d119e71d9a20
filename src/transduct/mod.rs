//! Transductive refinement: re-deciding the labels of a buffer of recent frames jointly, so that
//! frames that look alike (TransCLIP) or whose probability vectors cluster together
//! (EM-Dirichlet) pull each other towards the same class.
//!
//! The algorithms are specified step by step in `docs/transduction.md`; the code follows that
//! page literally so it can be checked against the independent NumPy reference to 1e-4. Both
//! are pure computation on plain row-major `f32` slices with explicit shapes; iterations and
//! accumulations run in `f64` because EM-Dirichlet's log-likelihoods subtract large lgamma
//! terms and TransCLIP's Gaussian term divides by small variances.
//!
//! - [`em_dirichlet`] / [`em_dirichlet_from_features`]: EM over Dirichlet clusters of the
//!   frames' probability vectors (soft, or hard with [`EmDirichletParams::hard`]).
//! - [`transclip`]: EM over Gaussian class clusters of the features with a kNN Laplacian term.
//! - [`params`]: the published reference defaults and `--set key=value` handling.

pub mod em_dirichlet;
mod parallel;
pub mod params;
pub mod transclip;

pub use em_dirichlet::{em_dirichlet, em_dirichlet_from_features};
pub use params::{EmDirichletParams, Params, TransClipParams};
pub use transclip::transclip;

use crate::adapter::linalg::Mat;
use crate::error::{ExitClass, HasExitClass};
use std::fmt;
use std::str::FromStr;

/// Which transductive algorithm to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Soft EM-Dirichlet (Martin et al., CVPR 2024).
    EmDirichlet,
    /// EM-Dirichlet with one-hot assignments after every iteration.
    HardEmDirichlet,
    /// TransCLIP (Zanella et al., NeurIPS 2024).
    TransClip,
}

impl Method {
    pub const ALL: [Method; 3] = [
        Method::EmDirichlet,
        Method::HardEmDirichlet,
        Method::TransClip,
    ];

    /// The name used on the command line and in the test fixtures.
    pub fn name(self) -> &'static str {
        match self {
            Method::EmDirichlet => "em-dirichlet",
            Method::HardEmDirichlet => "hard-em-dirichlet",
            Method::TransClip => "transclip",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = TransductError;

    fn from_str(s: &str) -> Result<Self> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| TransductError::UnknownName {
                what: "method",
                name: s.to_string(),
                known: Method::ALL.map(Method::name).join(", "),
            })
    }
}

/// Which set of parameter values to start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// The published reference settings, reproduced exactly (for comparison with the papers).
    Reference,
    /// clipd's own defaults (see [`Params::new`] for how they differ from the reference).
    Default,
}

impl Preset {
    pub const ALL: [Preset; 2] = [Preset::Reference, Preset::Default];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Reference => "reference",
            Preset::Default => "default",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = TransductError;

    fn from_str(s: &str) -> Result<Self> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| TransductError::UnknownName {
                what: "preset",
                name: s.to_string(),
                known: Preset::ALL.map(Preset::name).join(", "),
            })
    }
}

/// Config files name methods and presets as strings; they deserialise through `FromStr`, so a
/// bad name is refused with the line it is on and the names that exist.
macro_rules! deserialize_by_name {
    ($t:ty) => {
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
deserialize_by_name!(Method);
deserialize_by_name!(Preset);

/// What a refinement produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Query frames.
    pub n: usize,
    /// Classes (and, for zero-shot EM-Dirichlet, clusters).
    pub k: usize,
    /// `N × K` row-major: the algorithm's final soft (or one-hot) assignments, exactly as the
    /// last iteration left them. Zero-shot EM-Dirichlet: columns are clusters, not classes
    /// (see `cluster_to_class`).
    pub z: Vec<f32>,
    /// The predicted class of every frame (after cluster→class matching where there is one).
    pub pred: Vec<usize>,
    /// Outer iterations run (0 when the buffer was returned unchanged).
    pub iterations: usize,
    /// Zero-shot EM-Dirichlet only: the class each cluster was matched to.
    pub cluster_to_class: Option<Vec<usize>>,
}

/// Why a refinement could not run. Every variant names the offending input or parameter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransductError {
    #[error("{what}: empty (needs at least one {unit})")]
    Empty {
        what: &'static str,
        unit: &'static str,
    },
    #[error("{what}: expected {expected} values ({shape}), got {got}")]
    Shape {
        what: &'static str,
        shape: String,
        expected: usize,
        got: usize,
    },
    #[error("support labels: shot {index} has label {label}, but there are only {k} classes")]
    LabelOutOfRange {
        index: usize,
        label: usize,
        k: usize,
    },
    #[error("{what}: value {value} at index {index} is {reason}")]
    BadValue {
        what: &'static str,
        index: usize,
        value: f32,
        reason: &'static str,
    },
    #[error("parameter {key}: {reason}")]
    BadParam { key: String, reason: String },
    #[error("unknown parameter {key:?} for {method} (known: {known})")]
    UnknownParam {
        key: String,
        method: Method,
        known: String,
    },
    #[error("unknown {what} {name:?} (known: {known})")]
    UnknownName {
        what: &'static str,
        name: String,
        known: String,
    },
}

impl HasExitClass for TransductError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::Usage
    }
}

pub type Result<T> = std::result::Result<T, TransductError>;

/// Checks that `data` holds `rows × cols` finite values.
/// The checks every feature-based method starts with: `n × d` frames, `k × d` class
/// embeddings, none of them empty.
fn check_features_and_text(
    features: &[f32],
    n: usize,
    d: usize,
    text: &[f32],
    k: usize,
) -> Result<()> {
    nonempty("features", "frame", n)?;
    nonempty("features", "dimension", d)?;
    nonempty("text", "class", k)?;
    check_matrix("features", features, n, d)?;
    check_matrix("text", text, k, d)
}

/// The number of support shots in `features` (`S × d`) after checking them and their labels.
fn check_support_features(features: &[f32], labels: &[usize], d: usize, k: usize) -> Result<usize> {
    let s = rows_of("support features", features, d)?;
    nonempty("support features", "shot", s)?;
    check_matrix("support features", features, s, d)?;
    check_labels(labels, s, k)?;
    Ok(s)
}

fn check_matrix(what: &'static str, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    let expected = rows
        .checked_mul(cols)
        .ok_or_else(|| TransductError::Shape {
            what,
            shape: format!("{rows}×{cols}"),
            expected: usize::MAX,
            got: data.len(),
        })?;
    if data.len() != expected {
        return Err(TransductError::Shape {
            what,
            shape: format!("{rows}×{cols}"),
            expected,
            got: data.len(),
        });
    }
    if let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(TransductError::BadValue {
            what,
            index,
            value,
            reason: "not finite",
        });
    }
    Ok(())
}

/// Checks that `data` holds `rows × cols` probabilities (finite, non-negative). Rows are not
/// renormalised: the algorithms take them as given.
fn check_probs(what: &'static str, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    check_matrix(what, data, rows, cols)?;
    if let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| **v < 0.0) {
        return Err(TransductError::BadValue {
            what,
            index,
            value,
            reason: "negative",
        });
    }
    Ok(())
}

/// Checks one label per shot, each below `k`.
fn check_labels(labels: &[usize], shots: usize, k: usize) -> Result<()> {
    if labels.len() != shots {
        return Err(TransductError::Shape {
            what: "support labels",
            shape: format!("one per shot, {shots} shots"),
            expected: shots,
            got: labels.len(),
        });
    }
    if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= k) {
        return Err(TransductError::LabelOutOfRange { index, label, k });
    }
    Ok(())
}

/// The number of rows of a row-major buffer of `cols` columns, or a shape error.
fn rows_of(what: &'static str, data: &[f32], cols: usize) -> Result<usize> {
    if cols == 0 || data.len() % cols != 0 {
        return Err(TransductError::Shape {
            what,
            shape: format!("rows × {cols}"),
            expected: data.len().next_multiple_of(cols.max(1)),
            got: data.len(),
        });
    }
    Ok(data.len() / cols)
}

fn nonempty(what: &'static str, unit: &'static str, count: usize) -> Result<()> {
    if count == 0 {
        Err(TransductError::Empty { what, unit })
    } else {
        Ok(())
    }
}

/// Softmax of `row` in place (max-subtracted, so any finite row gives a finite result).
fn softmax_in_place(row: &mut [f64]) {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    row.iter_mut().for_each(|v| *v /= sum);
}

/// Log-softmax of `row` in place, without ever taking the log of a probability (which
/// underflows to 0 for confident CLIP logits).
fn log_softmax_in_place(row: &mut [f64]) {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + row.iter().map(|&v| (v - max).exp()).sum::<f64>().ln();
    row.iter_mut().for_each(|v| *v -= lse);
}

/// `rows × cols` f32 data as an L2-row-normalised f64 matrix (a zero row stays zero).
fn normalised(rows: usize, cols: usize, data: &[f32]) -> Mat<f64> {
    crate::adapter::linalg::normalize_rows(&Mat::<f64>::from_f32(rows, cols, data)).0
}

/// Index of the largest value, lowest index on ties.
fn argmax(row: &[f64]) -> usize {
    crate::adapter::linalg::argmax(row)
}

fn to_f32(m: &Mat<f64>) -> Vec<f32> {
    m.to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_and_preset_names_round_trip() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
        }
        for p in Preset::ALL {
            assert_eq!(p.name().parse::<Preset>().unwrap(), p);
        }
        let err = "em".parse::<Method>().unwrap_err().to_string();
        assert!(err.contains("\"em\"") && err.contains("transclip"), "{err}");
    }

    #[test]
    fn input_checks_name_the_problem() {
        assert!(check_matrix("x", &[1.0, 2.0], 1, 2).is_ok());
        let e = check_matrix("probs", &[1.0], 1, 2).unwrap_err();
        assert!(matches!(
            e,
            TransductError::Shape {
                expected: 2,
                got: 1,
                ..
            }
        ));
        let e = check_matrix("probs", &[1.0, f32::NAN], 1, 2).unwrap_err();
        assert!(matches!(e, TransductError::BadValue { index: 1, .. }));
        let e = check_probs("probs", &[1.0, -0.5], 1, 2).unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");
        let e = check_labels(&[0, 3], 2, 3).unwrap_err();
        assert_eq!(
            e,
            TransductError::LabelOutOfRange {
                index: 1,
                label: 3,
                k: 3
            }
        );
        assert!(check_labels(&[0], 2, 3).is_err());
        assert!(rows_of("f", &[0.0; 6], 4).is_err());
        assert_eq!(rows_of("f", &[0.0; 8], 4).unwrap(), 2);
        assert!(rows_of("f", &[], 0).is_err());
    }

    #[test]
    fn softmaxes_are_stable() {
        let mut r = vec![1000.0, 0.0, -1000.0];
        softmax_in_place(&mut r);
        assert_eq!(r[0], 1.0);
        assert!(r.iter().all(|v| v.is_finite()));
        let mut l = vec![1000.0, 0.0];
        log_softmax_in_place(&mut l);
        assert_eq!(l[0], 0.0);
        assert_eq!(l[1], -1000.0);
    }
}
