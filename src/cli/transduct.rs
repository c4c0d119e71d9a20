//! `clipd transduct`: run EM-Dirichlet or TransCLIP on `.npy` dumps (from `clipd embed` or any
//! other tool), for studying the algorithms offline. No model is loaded.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use clipd::npy;
use clipd::transduct::{self, Method, Params, Preset};

use super::UsageError;

#[derive(Debug, Args)]
pub struct TransductArgs {
    /// em-dirichlet, hard-em-dirichlet or transclip.
    #[arg(long)]
    method: Method,
    /// Parameter preset: default (chosen on the fieldset benchmark) or reference (the papers').
    #[arg(long, default_value = "default")]
    preset: Preset,
    /// Override one parameter, `key=value` (names as in docs/transduction.md); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// EM-Dirichlet input: N×K probabilities, used as given.
    #[arg(long, value_name = "P.npy", conflicts_with = "features")]
    probs: Option<PathBuf>,
    /// N×d image features (TransCLIP; EM-Dirichlet builds softmax(T·cos) from them).
    #[arg(long, value_name = "X.npy", requires = "text")]
    features: Option<PathBuf>,
    /// K×d class text embeddings.
    #[arg(long, value_name = "T.npy")]
    text: Option<PathBuf>,
    /// S×d support features (few-shot).
    #[arg(long, value_name = "S.npy", requires = "support_labels")]
    support_features: Option<PathBuf>,
    /// S×K support probabilities (few-shot EM-Dirichlet with --probs).
    #[arg(long, value_name = "SP.npy", requires = "support_labels")]
    support_probs: Option<PathBuf>,
    /// S int64 class indices of the support rows.
    #[arg(long, value_name = "y.npy")]
    support_labels: Option<PathBuf>,
    /// Where to write the final soft assignments (N×K f32; cluster space for zero-shot
    /// EM-Dirichlet, before matching).
    #[arg(long, value_name = "Z.npy")]
    out: PathBuf,
    /// Where to write the final class per frame (N int64, after matching).
    #[arg(long, value_name = "y.npy")]
    pred_out: Option<PathBuf>,
}

fn matrix(path: &Path, what: &str) -> Result<(Vec<f32>, usize, usize)> {
    let a = npy::read::<f32>(path)?;
    match a.shape[..] {
        [r, c] => Ok((a.data, r, c)),
        _ => Err(UsageError(format!(
            "{}: {what} must be a 2-d float32 array, found shape {:?}",
            path.display(),
            a.shape
        ))
        .into()),
    }
}

/// Refine and write Z (and the predictions).
pub fn transduct(args: TransductArgs) -> Result<ExitCode> {
    let labels = match &args.support_labels {
        Some(p) => {
            let a = npy::read::<i64>(p)?;
            let labels: Option<Vec<usize>> =
                a.data.iter().map(|&v| usize::try_from(v).ok()).collect();
            Some(labels.ok_or_else(|| {
                UsageError(format!(
                    "{}: support labels must be non-negative",
                    p.display()
                ))
            })?)
        }
        None => None,
    };
    let usage = |m: String| anyhow::Error::new(UsageError(m));
    let outcome = match (&args.probs, &args.features, &args.text) {
        (Some(p), None, _) => {
            let (probs, n, k) = matrix(p, "--probs")?;
            let mut params = params(&args, k, labels.is_some())?;
            let Params::EmDirichlet(ref mut ep) = params else {
                return Err(usage(
                    "--probs is EM-Dirichlet input; TransCLIP needs --features and --text".into(),
                ));
            };
            let support = match (&args.support_probs, &labels) {
                (Some(sp), Some(l)) => Some((matrix(sp, "--support-probs")?.0, l.clone())),
                (None, Some(_)) => {
                    return Err(usage("with --probs, few-shot needs --support-probs".into()))
                }
                _ => None,
            };
            transduct::em_dirichlet(
                &probs,
                n,
                k,
                support.as_ref().map(|(s, l)| (s.as_slice(), l.as_slice())),
                ep,
            )?
        }
        (None, Some(f), Some(t)) => {
            let (feats, n, d) = matrix(f, "--features")?;
            let (text, k, dt) = matrix(t, "--text")?;
            if dt != d {
                return Err(usage(format!(
                    "{} has {dt} columns but {} has {d}; both must come from the same model",
                    t.display(),
                    f.display()
                )));
            }
            let support = match (&args.support_features, &labels) {
                (Some(sf), Some(l)) => Some((matrix(sf, "--support-features")?.0, l.clone())),
                (None, Some(_)) => {
                    return Err(usage(
                        "with --features, few-shot needs --support-features".into(),
                    ))
                }
                _ => None,
            };
            let support = support.as_ref().map(|(s, l)| (s.as_slice(), l.as_slice()));
            match params(&args, k, labels.is_some())? {
                Params::EmDirichlet(p) => {
                    transduct::em_dirichlet_from_features(&feats, n, d, &text, k, support, &p)?
                }
                Params::TransClip(p) => {
                    transduct::transclip(&feats, n, d, &text, k, support, None, &p)?
                }
            }
        }
        _ => {
            return Err(usage(
                "give --probs P.npy (EM-Dirichlet) or --features X.npy --text T.npy".into(),
            ))
        }
    };
    npy::write(&args.out, &[outcome.n, outcome.k], &outcome.z)?;
    if let Some(p) = &args.pred_out {
        let pred: Vec<i64> = outcome.pred.iter().map(|&c| c as i64).collect();
        npy::write(p, &[pred.len()], &pred)?;
    }
    eprintln!(
        "clipd: {} ({}): {} frames, {} classes, {} iterations",
        args.method, args.preset, outcome.n, outcome.k, outcome.iterations
    );
    Ok(ExitCode::SUCCESS)
}

fn params(args: &TransductArgs, k: usize, few_shot: bool) -> Result<Params> {
    let mut p = Params::new(args.method, args.preset, k, few_shot);
    for s in &args.set {
        p.set_assignment(s)
            .map_err(|e| UsageError(format!("--set {s}: {e}")))?;
    }
    p.validate().map_err(|e| UsageError(e.to_string()))?;
    Ok(p)
}
