//! Few-shot adapters: heads trained on a handful of labelled shots per class that replace the
//! zero-shot head at run time.
//!
//! - [`models`]: the heads as differentiable functions (forward + analytic backward);
//! - [`train`]: training on precomputed shot features with cross-validated hyperparameters;
//! - [`file`]: the safetensors adapter file and its compatibility checks;
//! - [`support`]: reading a support directory (one folder per class) into shot features;
//! - [`linalg`], [`optim`]: the small matrix and AdamW kernels they share.
//!
//! Everything here except [`support`] is pure computation on plain arrays.

pub mod file;
pub mod linalg;
pub mod models;
pub mod optim;
pub mod support;
pub mod train;

use std::fmt;
use std::str::FromStr;

use crate::head::{Classifier, Prediction};
use linalg::Mat;
use models::{residual_apply, Bottleneck, CacheModel, LinearModel};

/// A few-shot method (the zero-shot head is included as the baseline every method is
/// compared with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    ZeroShot = 0,
    /// Residual adapters on the image and the text side (the study's JCLIP-Adapter).
    JClip = 1,
    /// Image-side residual adapter with the reference's two ReLUs (CLIP-Adapter).
    ClipAdapter = 2,
    /// Training-free key/value cache of the shots (Tip-Adapter).
    Tip = 3,
    /// Tip-Adapter with trainable keys (Tip-Adapter-F).
    TipF = 4,
    /// Logistic regression on the normalised image features.
    Linear = 5,
    /// Cosine head initialised from the text embeddings, trained on shots + text embeddings.
    CrossModal = 6,
}

impl Method {
    /// Every trainable method, in the order reports list them.
    pub const FEW_SHOT: [Method; 6] = [
        Method::JClip,
        Method::ClipAdapter,
        Method::Tip,
        Method::TipF,
        Method::Linear,
        Method::CrossModal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::ZeroShot => "zero-shot",
            Method::JClip => "jclip",
            Method::ClipAdapter => "clip-adapter",
            Method::Tip => "tip",
            Method::TipF => "tip-f",
            Method::Linear => "linear",
            Method::CrossModal => "cross-modal",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let all = [Method::ZeroShot]
            .into_iter()
            .chain(Method::FEW_SHOT)
            .collect::<Vec<_>>();
        all.iter()
            .copied()
            .find(|m| m.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = all.iter().map(|m| m.name()).collect();
                format!(
                    "unknown method {s:?} (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// A trained head, ready to classify normalised image features.
#[derive(Debug, Clone)]
pub enum Head {
    /// `s · n(r·A(f) + (1−r)·f) · Tᵀ` with an already adapted (or learned) class matrix;
    /// without an image adapter this is a cosine classifier (zero-shot, cross-modal).
    Residual {
        /// K×d, rows normalised.
        text: Mat<f32>,
        image: Option<(Bottleneck<f32>, f32)>,
        scale: f32,
    },
    /// Tip-Adapter(-F).
    Cache(CacheModel<f32>),
    /// Logistic regression.
    Linear(LinearModel<f32>),
}

impl Head {
    /// Logits for every row of `x` (B×d, rows normalised).
    pub fn logits(&self, x: &Mat<f32>) -> Mat<f32> {
        use models::Objective;
        match self {
            Head::Residual { text, image, scale } => {
                let mut z = match image {
                    Some((a, r)) => residual_apply(a, *r, x).matmul_t(text),
                    None => x.matmul_t(text),
                };
                z.scale(*scale);
                z
            }
            Head::Cache(m) => m.logits(x),
            Head::Linear(m) => m.logits(x),
        }
    }

    pub fn classes(&self) -> usize {
        match self {
            Head::Residual { text, .. } => text.rows,
            Head::Cache(m) => m.text.rows,
            Head::Linear(m) => m.weight.rows,
        }
    }

    pub fn dim(&self) -> usize {
        match self {
            Head::Residual { text, .. } => text.cols,
            Head::Cache(m) => m.text.cols,
            Head::Linear(m) => m.weight.cols,
        }
    }

    /// Top-1 and top-5 hits of this head on normalised rows `x` with labels `y`.
    pub fn evaluate(&self, x: &Mat<f32>, y: &[usize]) -> (usize, usize) {
        let z = self.logits(x);
        let (mut top1, mut top5) = (0, 0);
        for (r, &label) in y.iter().enumerate() {
            let best = crate::head::top_k(z.row(r), 5);
            top1 += usize::from(best.first() == Some(&label));
            top5 += usize::from(best.contains(&label));
        }
        (top1, top5)
    }
}

/// An adapter head with its class names: what the pipeline classifies with.
#[derive(Debug, Clone)]
pub struct AdaptedHead {
    labels: Vec<String>,
    head: Head,
}

impl AdaptedHead {
    pub fn new(labels: Vec<String>, head: Head) -> Self {
        AdaptedHead { labels, head }
    }

    pub fn head(&self) -> &Head {
        &self.head
    }
}

impl Classifier for AdaptedHead {
    fn labels(&self) -> &[String] {
        &self.labels
    }

    fn dim(&self) -> usize {
        self.head.dim()
    }

    fn logits(&self, feature: &[f32]) -> Vec<f32> {
        self.head
            .logits(&Mat::from_vec(1, feature.len(), feature.to_vec()))
            .data
    }

    fn predict(&self, feature: &[f32], k: usize) -> Prediction {
        crate::head::predict_from_logits(self.logits(feature), k)
    }
}
