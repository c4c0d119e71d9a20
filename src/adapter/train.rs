//! Training on precomputed shot features, with every hyperparameter chosen by cross-validation
//! over the shots (never on test data).
//!
//! Protocol, for the trainable methods: the shots of each class are shuffled (seeded) and dealt
//! into `k = min(4, fewest shots of any class)` folds. Every grid candidate is trained on k−1
//! folds with a cosine schedule over `E_max` epochs and scored on the held-out fold after each
//! epoch. The candidate and epoch with the best pooled held-out accuracy (then lowest held-out
//! loss) win; the final model is trained on all shots with the same schedule and kept at that
//! epoch. With one shot per class nothing can be held out, so documented defaults are used.
//! Tip-Adapter's α/β are searched by leave-one-out over the cache, which is exact and cheap.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::linalg::{argmax, cross_entropy, normalize_rows, Mat};
use super::models::{Bottleneck, CacheModel, CosineModel, LinearModel, Objective, ResidualModel};
use super::optim::{cosine_lr, AdamW, AdamWConfig};
use super::{Head, Method};
use crate::error::{ExitClass, HasExitClass};
use crate::rng::Rng;

/// Features of the support shots. `views[0]` holds the plain CLIP transform of every shot;
/// `views[1..]` random augmentations of the same shots, in the same order. Rows are normalised.
#[derive(Debug, Clone)]
pub struct Shots {
    pub views: Vec<Mat<f32>>,
    pub labels: Vec<usize>,
    pub classes: usize,
}

impl Shots {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.views.first().map_or(0, |v| v.cols)
    }

    /// The shots at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Shots {
        Shots {
            views: self.views.iter().map(|v| v.select_rows(idx)).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes,
        }
    }

    /// Shots per class.
    pub fn counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes];
        for &l in &self.labels {
            c[l] += 1;
        }
        c
    }

    /// Tip-Adapter's cache keys: the mean of the augmented views, renormalised (the plain view
    /// when there are no augmentations).
    pub fn cache_keys(&self) -> Mat<f32> {
        let aug = if self.views.len() > 1 {
            &self.views[1..]
        } else {
            &self.views[..]
        };
        let mut sum = Mat::zeros(self.len(), self.dim());
        for v in aug {
            for (s, &x) in sum.data.iter_mut().zip(&v.data) {
                *s += x;
            }
        }
        normalize_rows(&sum).0
    }
}

/// The hyperparameters a method was trained with (what an adapter file records).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// Epochs the kept model was trained for (of a cosine schedule over `schedule_epochs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_epochs: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
}

/// One epoch of the final training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStat {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    /// Pooled held-out accuracy of the chosen candidate at this epoch (cross-validation).
    pub cv_acc: Option<f64>,
    /// Accuracy on a test set given for reporting; never used to choose anything.
    pub test_acc: Option<f64>,
}

/// How the hyperparameters were chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// `"cross-validation"`, `"leave-one-out"` or `"defaults"`.
    pub how: String,
    pub folds: usize,
    /// Candidates tried (grid size).
    pub candidates: usize,
    /// Held-out accuracy of the chosen setting.
    pub score: Option<f64>,
}

/// A trained head plus everything worth recording about how it came to be.
#[derive(Debug, Clone)]
pub struct Trained {
    pub method: Method,
    pub head: Head,
    pub hyper: Hyper,
    pub selection: Selection,
    pub curve: Vec<EpochStat>,
}

/// Training settings that are not hyperparameters.
#[derive(Clone, Copy)]
pub struct TrainOptions<'a> {
    pub seed: u64,
    /// Mini-batch size (the study used 64).
    pub batch: usize,
    /// Most folds for cross-validation.
    pub max_folds: usize,
    /// Worker threads for the cross-validation runs.
    pub threads: usize,
    /// Test features and labels to report per-epoch accuracy on (curves only).
    pub report: Option<(&'a Mat<f32>, &'a [usize])>,
    /// Called with (epochs done, epochs in total) as training advances.
    pub progress: Option<&'a (dyn Fn(u64, u64) + Sync)>,
}

impl Default for TrainOptions<'_> {
    fn default() -> Self {
        TrainOptions {
            seed: 0,
            batch: 64,
            max_folds: 4,
            threads: 1,
            report: None,
            progress: None,
        }
    }
}

/// Errors that make training impossible (the inputs, not the numbers).
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("no shots")]
    NoShots,
    #[error("class {0} has no shots")]
    EmptyClass(usize),
    #[error("shot features have {shots} dimensions, the text embeddings {text}")]
    Dim { shots: usize, text: usize },
}

impl HasExitClass for TrainError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::Usage
    }
}

/// One point of a method's search grid.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Candidate {
    image_ratio: f64,
    text_ratio: f64,
    lr: f64,
    weight_decay: f64,
}

/// Tip-Adapter's α/β grid (the reference's search: β over 200 steps up to 7, α over 20 up to 3).
pub const BETA_MAX: f64 = 7.0;
pub const BETA_STEPS: usize = 200;
pub const ALPHA_MAX: f64 = 3.0;
pub const ALPHA_STEPS: usize = 20;
/// Tip-Adapter's published defaults, used when α/β cannot be searched (one shot per class).
pub const DEFAULT_ALPHA: f64 = 1.0;
pub const DEFAULT_BETA: f64 = 5.5;

struct Plan {
    grid: Vec<Candidate>,
    defaults: Candidate,
    max_epochs: usize,
    default_epochs: usize,
    eps: f64,
}

fn cand(image_ratio: f64, text_ratio: f64, lr: f64, weight_decay: f64) -> Candidate {
    Candidate {
        image_ratio,
        text_ratio,
        lr,
        weight_decay,
    }
}

/// Search grids and one-shot defaults per trainable method (documented in docs/adapters.md).
fn plan(method: Method) -> Plan {
    let mut grid = Vec::new();
    match method {
        Method::JClip => {
            for rv in [0.2, 0.5] {
                for rt in [0.2, 0.5] {
                    for lr in [1e-3, 1e-2] {
                        grid.push(cand(rv, rt, lr, 0.01));
                    }
                }
            }
            Plan {
                grid,
                defaults: cand(0.2, 0.2, 1e-3, 0.01),
                max_epochs: 40,
                default_epochs: 20,
                eps: 1e-8,
            }
        }
        Method::ClipAdapter => {
            for r in [0.2, 0.5] {
                for lr in [1e-3, 1e-2] {
                    grid.push(cand(r, 0.0, lr, 0.01));
                }
            }
            Plan {
                grid,
                defaults: cand(0.2, 0.0, 1e-3, 0.01),
                max_epochs: 40,
                default_epochs: 20,
                eps: 1e-8,
            }
        }
        Method::TipF => Plan {
            grid: vec![cand(0.0, 0.0, 1e-3, 0.01), cand(0.0, 0.0, 1e-2, 0.01)],
            defaults: cand(0.0, 0.0, 1e-3, 0.01),
            max_epochs: 20,
            default_epochs: 20,
            eps: 1e-4,
        },
        Method::Linear => {
            for lr in [1e-2, 1e-1] {
                for wd in [0.01, 0.3] {
                    grid.push(cand(0.0, 0.0, lr, wd));
                }
            }
            Plan {
                grid,
                defaults: cand(0.0, 0.0, 1e-1, 0.01),
                max_epochs: 60,
                default_epochs: 60,
                eps: 1e-8,
            }
        }
        Method::CrossModal => {
            for lr in [1e-4, 1e-3, 1e-2] {
                grid.push(cand(0.0, 0.0, lr, 0.01));
            }
            Plan {
                grid,
                defaults: cand(0.0, 0.0, 1e-3, 0.01),
                max_epochs: 40,
                default_epochs: 20,
                eps: 1e-8,
            }
        }
        Method::ZeroShot | Method::Tip => Plan {
            grid: Vec::new(),
            defaults: cand(0.0, 0.0, 0.0, 0.0),
            max_epochs: 0,
            default_epochs: 0,
            eps: 1e-8,
        },
    }
}

/// Stratified folds: per class, shuffled shots dealt round-robin. `None` when some class has
/// fewer than two shots.
pub fn folds(
    labels: &[usize],
    classes: usize,
    max_folds: usize,
    rng: &mut Rng,
) -> Option<Vec<Vec<usize>>> {
    let mut per_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        per_class[l].push(i);
    }
    let fewest = per_class.iter().map(Vec::len).min().unwrap_or(0);
    let k = fewest.min(max_folds);
    if k < 2 {
        return None;
    }
    let mut out = vec![Vec::new(); k];
    for shots in &mut per_class {
        rng.shuffle(shots);
        for (j, &i) in shots.iter().enumerate() {
            out[j % k].push(i);
        }
    }
    out.iter_mut().for_each(|f| f.sort_unstable());
    Some(out)
}

/// The model for `method` with hyperparameters `c`, freshly initialised.
#[derive(Clone)]
enum Model {
    Residual(ResidualModel<f32>),
    Cache(CacheModel<f32>),
    Linear(LinearModel<f32>),
    Cosine(CosineModel<f32>),
}

impl Model {
    fn objective(&self) -> &dyn ObjectiveDyn {
        match self {
            Model::Residual(m) => m,
            Model::Cache(m) => m,
            Model::Linear(m) => m,
            Model::Cosine(m) => m,
        }
    }

    fn objective_mut(&mut self) -> &mut dyn ObjectiveDyn {
        match self {
            Model::Residual(m) => m,
            Model::Cache(m) => m,
            Model::Linear(m) => m,
            Model::Cosine(m) => m,
        }
    }

    fn into_head(self) -> Head {
        match self {
            Model::Residual(m) => Head::Residual {
                text: m.adapted_text(),
                image: Some((m.image, m.image_ratio)),
                scale: m.scale,
            },
            Model::Cache(m) => Head::Cache(m),
            Model::Linear(m) => Head::Linear(m),
            Model::Cosine(m) => Head::Residual {
                text: normalize_rows(&m.weight).0,
                image: None,
                scale: m.scale,
            },
        }
    }
}

/// Object-safe view of [`Objective`] for the training loop.
trait ObjectiveDyn: Send + Sync {
    fn params(&self) -> Vec<&Mat<f32>>;
    fn params_mut(&mut self) -> Vec<&mut Mat<f32>>;
    fn logits(&self, x: &Mat<f32>) -> Mat<f32>;
    fn step(&self, x: &Mat<f32>, y: &[usize]) -> super::models::Step<f32>;
}

impl<M: Objective<f32>> ObjectiveDyn for M {
    fn params(&self) -> Vec<&Mat<f32>> {
        Objective::params(self)
    }
    fn params_mut(&mut self) -> Vec<&mut Mat<f32>> {
        Objective::params_mut(self)
    }
    fn logits(&self, x: &Mat<f32>) -> Mat<f32> {
        Objective::logits(self, x)
    }
    fn step(&self, x: &Mat<f32>, y: &[usize]) -> super::models::Step<f32> {
        Objective::step(self, x, y)
    }
}

/// Everything a model is built from besides its hyperparameters.
struct Context<'a> {
    method: Method,
    text: &'a Mat<f32>,
    scale: f32,
}

fn build(ctx: &Context, c: &Candidate, train: &Shots, ab: (f64, f64), rng: &mut Rng) -> Model {
    let d = ctx.text.cols;
    let hidden = (d / 4).max(1);
    match ctx.method {
        Method::JClip | Method::ClipAdapter => {
            let clip_adapter = ctx.method == Method::ClipAdapter;
            let image = Bottleneck::init(d, hidden, clip_adapter, rng);
            let text_adapter = (!clip_adapter).then(|| Bottleneck::init(d, hidden, false, rng));
            Model::Residual(ResidualModel {
                image,
                image_ratio: c.image_ratio as f32,
                text_adapter,
                text_ratio: c.text_ratio as f32,
                text: ctx.text.clone(),
                scale: ctx.scale,
            })
        }
        Method::Tip | Method::TipF => Model::Cache(CacheModel {
            keys: train.cache_keys(),
            labels: train.labels.clone(),
            text: ctx.text.clone(),
            alpha: ab.0 as f32,
            beta: ab.1 as f32,
            scale: ctx.scale,
        }),
        Method::Linear => Model::Linear(LinearModel {
            weight: Mat::zeros(ctx.text.rows, d),
            bias: Mat::zeros(1, ctx.text.rows),
        }),
        Method::CrossModal | Method::ZeroShot => Model::Cosine(CosineModel {
            weight: ctx.text.clone(),
            scale: ctx.scale,
        }),
    }
}

/// Accuracy and mean loss of `m` on normalised rows `x`.
fn score(m: &dyn ObjectiveDyn, x: &Mat<f32>, y: &[usize]) -> (usize, f64) {
    if y.is_empty() {
        return (0, 0.0);
    }
    let (loss, _, correct) = cross_entropy(&m.logits(x), y);
    (correct, loss as f64)
}

/// Train `model` on `train` for `stop` epochs of a cosine schedule over `schedule` epochs,
/// calling `each_epoch(epoch, model, train_loss, train_acc)` after every epoch.
#[allow(clippy::too_many_arguments)]
fn fit(
    model: &mut Model,
    method: Method,
    train: &Shots,
    text: &Mat<f32>,
    c: &Candidate,
    eps: f64,
    batch: usize,
    schedule: usize,
    stop: usize,
    rng: &mut Rng,
    each_epoch: &mut dyn FnMut(usize, &Model, f64, f64),
) {
    let n = train.len();
    let cross_modal = method == Method::CrossModal;
    // Half of each cross-modal batch is text embeddings labelled with their class.
    let img_batch = if cross_modal {
        (batch / 2).max(1)
    } else {
        batch.max(1)
    };
    let steps_per_epoch = n.div_ceil(img_batch).max(1);
    let total = schedule * steps_per_epoch;
    let cfg = AdamWConfig {
        lr: c.lr,
        weight_decay: c.weight_decay,
        eps,
        ..Default::default()
    };
    let mut opt = AdamW::new(cfg, &model.objective().params());
    let mut order: Vec<usize> = (0..n).collect();
    let mut text_order: Vec<usize> = (0..text.rows).collect();
    let mut text_pos = text.rows;
    let d = train.dim();
    let mut step = 0;
    for epoch in 1..=stop.min(schedule) {
        rng.shuffle(&mut order);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        for chunk in order.chunks(img_batch) {
            let mut x = Vec::with_capacity((chunk.len() + img_batch) * d);
            let mut y = Vec::with_capacity(chunk.len() + img_batch);
            for &i in chunk {
                let v = if train.views.len() > 1 {
                    rng.below(train.views.len())
                } else {
                    0
                };
                x.extend_from_slice(train.views[v].row(i));
                y.push(train.labels[i]);
            }
            let images = y.len();
            if cross_modal {
                for _ in 0..img_batch {
                    if text_pos == text.rows {
                        rng.shuffle(&mut text_order);
                        text_pos = 0;
                    }
                    let k = text_order[text_pos];
                    text_pos += 1;
                    x.extend_from_slice(text.row(k));
                    y.push(k);
                }
            }
            let xb = Mat::from_vec(y.len(), d, x);
            let s = model.objective().step(&xb, &y);
            if cross_modal {
                // Train accuracy counts the image rows only (text rows are trivially easy).
                let z = model.objective().logits(&Mat::from_vec(
                    images,
                    d,
                    xb.data[..images * d].to_vec(),
                ));
                correct += (0..images).filter(|&r| argmax(z.row(r)) == y[r]).count();
            } else {
                correct += s.correct;
            }
            let lr = cosine_lr(c.lr, step, total);
            opt.step(model.objective_mut().params_mut(), &s.grads, lr);
            step += 1;
            loss_sum += s.loss as f64 * y.len() as f64;
            seen += y.len();
        }
        let train_acc = correct as f64 / n.max(1) as f64;
        each_epoch(epoch, model, loss_sum / seen.max(1) as f64, train_acc);
    }
}

/// Run `jobs` on up to `threads` workers; results come back in job order.
fn parallel<J: Sync, R: Send>(jobs: &[J], threads: usize, f: impl Fn(&J) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, jobs.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let r = f(job);
                if let Ok(mut slot) = slots[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    slots
        .into_iter()
        .filter_map(|m| m.into_inner().ok().flatten())
        .collect()
}

/// Per-(α, β) correct counts and summed losses of a cache over `query`, for the whole grid
/// (β-major). `exclude_self` drops key i from query i's cache (leave-one-out over the shots).
#[allow(clippy::too_many_arguments)]
fn alpha_beta_scores(
    query: &Mat<f32>,
    qlabels: &[usize],
    keys: &Mat<f32>,
    klabels: &[usize],
    text: &Mat<f32>,
    scale: f32,
    exclude_self: bool,
) -> Vec<(usize, f64)> {
    let k = text.rows;
    let mut clip = query.matmul_t(text);
    clip.scale(scale);
    let aff = query.matmul_t(keys);
    let mut out = Vec::with_capacity(BETA_STEPS * ALPHA_STEPS);
    let mut cache = Mat::zeros(query.rows, k);
    for bi in 0..BETA_STEPS {
        let beta = (0.1 + bi as f64 * (BETA_MAX - 0.1) / BETA_STEPS as f64) as f32;
        cache.data.iter_mut().for_each(|v| *v = 0.0);
        for q in 0..query.rows {
            let (ar, cr) = (aff.row(q), cache.row_mut(q));
            for (j, (&a, &l)) in ar.iter().zip(klabels).enumerate() {
                if exclude_self && j == q {
                    continue;
                }
                cr[l] += (-beta * (1.0 - a)).exp();
            }
        }
        for ai in 0..ALPHA_STEPS {
            let alpha = (0.1 + ai as f64 * (ALPHA_MAX - 0.1) / ALPHA_STEPS as f64) as f32;
            let z = clip.lerp(1.0, &cache, alpha);
            let (loss, _, correct) = cross_entropy(&z, qlabels);
            out.push((correct, loss as f64 * qlabels.len() as f64));
        }
    }
    out
}

fn grid_alpha_beta(index: usize) -> (f64, f64) {
    let (bi, ai) = (index / ALPHA_STEPS, index % ALPHA_STEPS);
    (
        0.1 + ai as f64 * (ALPHA_MAX - 0.1) / ALPHA_STEPS as f64,
        0.1 + bi as f64 * (BETA_MAX - 0.1) / BETA_STEPS as f64,
    )
}

/// The best entry: most correct, then lowest loss, then first.
fn best_index(scores: &[(usize, f64)]) -> usize {
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        let b = scores[best];
        if s.0 > b.0 || (s.0 == b.0 && s.1 < b.1) {
            best = i;
        }
    }
    best
}

/// α/β by leave-one-out over the cache of `shots`; defaults when a class has a single shot.
fn tip_search(shots: &Shots, text: &Mat<f32>, scale: f32) -> (f64, f64, Option<f64>) {
    if shots.counts().iter().any(|&c| c < 2) {
        return (DEFAULT_ALPHA, DEFAULT_BETA, None);
    }
    let scores = alpha_beta_scores(
        &shots.views[0],
        &shots.labels,
        &shots.cache_keys(),
        &shots.labels,
        text,
        scale,
        true,
    );
    let i = best_index(&scores);
    let (a, b) = grid_alpha_beta(i);
    (a, b, Some(scores[i].0 as f64 / shots.len() as f64))
}

/// Train `method` on `shots` against the class text matrix `text` (K×d, normalised) with
/// logit scale `scale`, choosing hyperparameters by cross-validation on the shots.
pub fn train(
    method: Method,
    shots: &Shots,
    text: &Mat<f32>,
    scale: f32,
    opts: &TrainOptions,
) -> Result<Trained, TrainError> {
    if shots.is_empty() {
        return Err(TrainError::NoShots);
    }
    if shots.dim() != text.cols {
        return Err(TrainError::Dim {
            shots: shots.dim(),
            text: text.cols,
        });
    }
    if let Some(k) = shots.counts().iter().position(|&c| c == 0) {
        return Err(TrainError::EmptyClass(k));
    }
    let ctx = Context {
        method,
        text,
        scale,
    };
    match method {
        Method::ZeroShot => Ok(Trained {
            method,
            head: Head::Residual {
                text: text.clone(),
                image: None,
                scale,
            },
            hyper: Hyper::default(),
            selection: Selection {
                how: "none".into(),
                folds: 0,
                candidates: 0,
                score: None,
            },
            curve: Vec::new(),
        }),
        Method::Tip => {
            let (alpha, beta, score) = tip_search(shots, text, scale);
            let mut rng = Rng::derive(opts.seed, &[method as u64]);
            let model = build(&ctx, &plan(method).defaults, shots, (alpha, beta), &mut rng);
            Ok(Trained {
                method,
                head: model.into_head(),
                hyper: Hyper {
                    alpha: Some(alpha),
                    beta: Some(beta),
                    ..Default::default()
                },
                selection: Selection {
                    how: if score.is_some() {
                        "leave-one-out"
                    } else {
                        "defaults"
                    }
                    .into(),
                    folds: if score.is_some() { shots.len() } else { 0 },
                    candidates: BETA_STEPS * ALPHA_STEPS,
                    score,
                },
                curve: Vec::new(),
            })
        }
        _ => Ok(train_gradient(&ctx, shots, opts)),
    }
}

fn train_gradient(ctx: &Context, shots: &Shots, opts: &TrainOptions) -> Trained {
    let method = ctx.method;
    let p = plan(method);
    let mid = method as u64;
    let folds = folds(
        &shots.labels,
        shots.classes,
        opts.max_folds,
        &mut Rng::derive(opts.seed, &[mid, 1]),
    );
    let n_folds = folds.as_ref().map_or(0, Vec::len);
    let cv_epochs = (p.grid.len() * n_folds * p.max_epochs) as u64;
    let final_epochs = if folds.is_some() {
        p.max_epochs
    } else {
        p.default_epochs
    };
    let tip_refit = if method == Method::TipF && folds.is_some() {
        (n_folds * p.max_epochs) as u64
    } else {
        0
    };
    let total_epochs = cv_epochs + tip_refit + final_epochs as u64;
    let done = AtomicUsize::new(0);
    let tick = || {
        let d = done.fetch_add(1, Ordering::Relaxed) as u64 + 1;
        if let Some(pr) = opts.progress {
            pr(d, total_epochs);
        }
    };
    let is_tip_f = method == Method::TipF;
    // Tip-F trains its keys at a fixed α/β: those Tip-Adapter finds by leave-one-out.
    let initial_ab = |s: &Shots| -> (f64, f64) {
        if is_tip_f {
            let (a, b, _) = tip_search(s, ctx.text, ctx.scale);
            (a, b)
        } else {
            (0.0, 0.0)
        }
    };

    let (chosen, epochs, cv_curve, cv_score) = match &folds {
        None => (p.defaults, p.default_epochs, None, None),
        Some(folds) => {
            let jobs: Vec<(usize, usize)> = (0..p.grid.len())
                .flat_map(|c| (0..folds.len()).map(move |f| (c, f)))
                .collect();
            let per_job = parallel(&jobs, opts.threads, |&(ci, fi)| {
                let held = &folds[fi];
                let train_idx: Vec<usize> =
                    (0..shots.len()).filter(|i| !held.contains(i)).collect();
                let train_set = shots.subset(&train_idx);
                let held_x = shots.views[0].select_rows(held);
                let held_y: Vec<usize> = held.iter().map(|&i| shots.labels[i]).collect();
                let mut rng = Rng::derive(opts.seed, &[mid, 2, ci as u64, fi as u64]);
                let c = &p.grid[ci];
                let mut model = build(ctx, c, &train_set, initial_ab(&train_set), &mut rng);
                let mut per_epoch = Vec::with_capacity(p.max_epochs);
                fit(
                    &mut model,
                    method,
                    &train_set,
                    ctx.text,
                    c,
                    p.eps,
                    opts.batch,
                    p.max_epochs,
                    p.max_epochs,
                    &mut rng,
                    &mut |_, m, _, _| {
                        per_epoch.push(score(m.objective(), &held_x, &held_y));
                        tick();
                    },
                );
                per_epoch
            });
            // Pool the folds: per candidate and epoch, total correct and summed loss.
            let held_total = shots.len() as f64;
            let mut best: Option<(usize, usize, (usize, f64))> = None;
            let mut curves = vec![vec![(0usize, 0.0f64); p.max_epochs]; p.grid.len()];
            for (&(ci, fi), per_epoch) in jobs.iter().zip(&per_job) {
                let n_held = folds[fi].len() as f64;
                for (e, &(correct, loss)) in per_epoch.iter().enumerate() {
                    curves[ci][e].0 += correct;
                    curves[ci][e].1 += loss * n_held;
                }
            }
            for (ci, curve) in curves.iter().enumerate() {
                for (e, &s) in curve.iter().enumerate() {
                    let better = match best {
                        None => true,
                        Some((_, _, b)) => s.0 > b.0 || (s.0 == b.0 && s.1 < b.1),
                    };
                    if better {
                        best = Some((ci, e + 1, s));
                    }
                }
            }
            let (ci, e, s) = best.unwrap_or((0, p.max_epochs, (0, 0.0)));
            let cv_curve: Vec<f64> = curves[ci].iter().map(|c| c.0 as f64 / held_total).collect();
            (p.grid[ci], e, Some(cv_curve), Some(s.0 as f64 / held_total))
        }
    };

    // Tip-F: α/β are searched again after training, on the held-out folds with keys trained
    // (to the chosen epoch) on the other folds.
    let mut final_ab = initial_ab(shots);
    if let (true, Some(folds)) = (is_tip_f, &folds) {
        let fold_ids: Vec<usize> = (0..folds.len()).collect();
        let per_fold = parallel(&fold_ids, opts.threads, |&fi| {
            let held = &folds[fi];
            let train_idx: Vec<usize> = (0..shots.len()).filter(|i| !held.contains(i)).collect();
            let train_set = shots.subset(&train_idx);
            let ci = p.grid.iter().position(|g| *g == chosen).unwrap_or(0);
            let mut rng = Rng::derive(opts.seed, &[mid, 2, ci as u64, fi as u64]);
            let mut model = build(ctx, &chosen, &train_set, initial_ab(&train_set), &mut rng);
            fit(
                &mut model,
                method,
                &train_set,
                ctx.text,
                &chosen,
                p.eps,
                opts.batch,
                p.max_epochs,
                epochs,
                &mut rng,
                &mut |_, _, _, _| tick(),
            );
            let Model::Cache(m) = model else {
                return Vec::new();
            };
            let held_y: Vec<usize> = held.iter().map(|&i| shots.labels[i]).collect();
            alpha_beta_scores(
                &shots.views[0].select_rows(held),
                &held_y,
                &m.keys,
                &m.labels,
                ctx.text,
                ctx.scale,
                false,
            )
        });
        let mut pooled = vec![(0usize, 0.0f64); BETA_STEPS * ALPHA_STEPS];
        for scores in &per_fold {
            for (acc, s) in pooled.iter_mut().zip(scores) {
                acc.0 += s.0;
                acc.1 += s.1;
            }
        }
        final_ab = grid_alpha_beta(best_index(&pooled));
    }

    // The final run: all shots, the chosen schedule, kept at the chosen epoch. It runs to the
    // end of the schedule only to draw complete training curves.
    let schedule = if folds.is_some() {
        p.max_epochs
    } else {
        p.default_epochs
    };
    let mut rng = Rng::derive(opts.seed, &[mid, 3]);
    let mut model = build(ctx, &chosen, shots, initial_ab(shots), &mut rng);
    let mut kept: Option<Model> = None;
    let mut curve = Vec::with_capacity(schedule);
    fit(
        &mut model,
        method,
        shots,
        ctx.text,
        &chosen,
        p.eps,
        opts.batch,
        schedule,
        schedule,
        &mut rng,
        &mut |e, m, loss, acc| {
            if e == epochs {
                kept = Some(m.clone());
            }
            let test_acc = opts.report.map(|(x, y)| {
                let (c, _) = score(m.objective(), x, y);
                c as f64 / y.len().max(1) as f64
            });
            curve.push(EpochStat {
                epoch: e,
                train_loss: loss,
                train_acc: acc,
                cv_acc: cv_curve.as_ref().and_then(|c| c.get(e - 1).copied()),
                test_acc,
            });
            tick();
        },
    );
    let mut kept = kept.unwrap_or(model);
    if let Model::Cache(m) = &mut kept {
        m.alpha = final_ab.0 as f32;
        m.beta = final_ab.1 as f32;
    }
    let mut hyper = Hyper {
        lr: Some(chosen.lr),
        weight_decay: Some(chosen.weight_decay),
        epochs: Some(epochs),
        schedule_epochs: Some(schedule),
        batch: Some(opts.batch),
        ..Default::default()
    };
    match method {
        Method::JClip => {
            hyper.image_ratio = Some(chosen.image_ratio);
            hyper.text_ratio = Some(chosen.text_ratio);
        }
        Method::ClipAdapter => hyper.image_ratio = Some(chosen.image_ratio),
        Method::TipF => {
            hyper.alpha = Some(final_ab.0);
            hyper.beta = Some(final_ab.1);
        }
        _ => {}
    }
    Trained {
        method,
        head: kept.into_head(),
        hyper,
        selection: Selection {
            how: if folds.is_some() {
                "cross-validation"
            } else {
                "defaults"
            }
            .into(),
            folds: n_folds,
            candidates: p.grid.len(),
            score: cv_score,
        },
        curve,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// K classes whose text embeddings are noisy versions of the true class centres, and
    /// shots/test rows drawn around the centres: shots carry information the text lacks.
    fn problem(seed: u64, shots: usize) -> (Shots, Mat<f32>, Mat<f32>, Vec<usize>) {
        let (k, d) = (6, 16);
        let mut rng = Rng::new(seed);
        let centres: Vec<Vec<f64>> = (0..k)
            .map(|_| (0..d).map(|_| rng.normal()).collect())
            .collect();
        let sample = |c: usize, noise: f64, rng: &mut Rng| -> Vec<f32> {
            let v: Vec<f32> = centres[c]
                .iter()
                .map(|&x| (x + noise * rng.normal()) as f32)
                .collect();
            v
        };
        let mut text = Vec::new();
        for c in 0..k {
            text.extend(sample(c, 1.6, &mut rng));
        }
        let text = normalize_rows(&Mat::from_vec(k, d, text)).0;
        let mut views = vec![Vec::new(); 3];
        let mut labels = Vec::new();
        for c in 0..k {
            for _ in 0..shots {
                for v in views.iter_mut() {
                    v.extend(sample(c, 0.6, &mut rng));
                }
                labels.push(c);
            }
        }
        let n = labels.len();
        let views = views
            .into_iter()
            .map(|v| normalize_rows(&Mat::from_vec(n, d, v)).0)
            .collect();
        let mut test = Vec::new();
        let mut test_y = Vec::new();
        for c in 0..k {
            for _ in 0..40 {
                test.extend(sample(c, 0.6, &mut rng));
                test_y.push(c);
            }
        }
        let test = normalize_rows(&Mat::from_vec(test_y.len(), d, test)).0;
        (
            Shots {
                views,
                labels,
                classes: k,
            },
            text,
            test,
            test_y,
        )
    }

    fn accuracy(h: &Head, x: &Mat<f32>, y: &[usize]) -> f64 {
        h.evaluate(x, y).0 as f64 / y.len() as f64
    }

    #[test]
    fn folds_are_stratified_and_disjoint() {
        let labels = vec![0, 0, 0, 1, 1, 1, 1, 2, 2, 2];
        let f = folds(&labels, 3, 4, &mut Rng::new(1)).unwrap();
        assert_eq!(f.len(), 3, "fewest shots (3) bounds the fold count");
        let mut all: Vec<usize> = f.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        for fold in &f {
            for c in 0..3 {
                assert!(
                    fold.iter().any(|&i| labels[i] == c),
                    "every class in every fold"
                );
            }
        }
        assert!(folds(&[0, 1, 1], 2, 4, &mut Rng::new(1)).is_none());
    }

    #[test]
    fn every_method_learns_from_shots_and_is_deterministic() {
        let (shots, text, test, test_y) = problem(11, 8);
        let zero = Head::Residual {
            text: text.clone(),
            image: None,
            scale: 30.0,
        };
        let z = accuracy(&zero, &test, &test_y);
        for m in Method::FEW_SHOT {
            let opts = TrainOptions {
                seed: 3,
                threads: 2,
                ..Default::default()
            };
            let a = train(m, &shots, &text, 30.0, &opts).unwrap();
            let b = train(m, &shots, &text, 30.0, &opts).unwrap();
            let acc = accuracy(&a.head, &test, &test_y);
            assert_eq!(a.hyper, b.hyper, "{m}: same seed, same choices");
            assert_eq!(
                a.head.logits(&test).data,
                b.head.logits(&test).data,
                "{m}: same seed, same model"
            );
            eprintln!("{m}: {acc:.3} vs zero-shot {z:.3}");
            assert!(acc > z + 0.05, "{m}: {acc:.3} vs zero-shot {z:.3}");
            assert_ne!(
                a.selection.how, "defaults",
                "{m}: 8 shots are cross-validated"
            );
        }
    }

    #[test]
    fn one_shot_falls_back_to_documented_defaults() {
        let (shots, text, _, _) = problem(5, 1);
        let t = train(Method::Tip, &shots, &text, 30.0, &TrainOptions::default()).unwrap();
        assert_eq!(
            (t.hyper.alpha, t.hyper.beta),
            (Some(DEFAULT_ALPHA), Some(DEFAULT_BETA))
        );
        let j = train(Method::JClip, &shots, &text, 30.0, &TrainOptions::default()).unwrap();
        assert_eq!(j.selection.how, "defaults");
        assert_eq!((j.hyper.image_ratio, j.hyper.epochs), (Some(0.2), Some(20)));
    }

    #[test]
    fn different_seeds_give_different_models() {
        let (shots, text, test, _) = problem(2, 4);
        let run = |seed| {
            let opts = TrainOptions {
                seed,
                ..Default::default()
            };
            train(Method::JClip, &shots, &text, 30.0, &opts)
                .unwrap()
                .head
                .logits(&test)
                .data
        };
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let (mut shots, text, _, _) = problem(2, 2);
        shots.classes += 1;
        assert!(matches!(
            train(
                Method::Linear,
                &shots,
                &text,
                30.0,
                &TrainOptions::default()
            ),
            Err(TrainError::EmptyClass(6))
        ));
        let (shots, _, _, _) = problem(2, 2);
        let wrong = Mat::zeros(6, 3);
        assert!(matches!(
            train(Method::Tip, &shots, &wrong, 30.0, &TrainOptions::default()),
            Err(TrainError::Dim { .. })
        ));
    }
}
