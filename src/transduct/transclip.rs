//! TransCLIP (Zanella et al., NeurIPS 2024): refines a buffer's class probabilities with a
//! Gaussian model of each class in feature space and a kNN smoothness term, so a frame is
//! pulled towards the classes of its look-alikes and of the class means it sits near.
//!
//! Follows `docs/transduction.md` step by step. Rows are always `[queries; shots]`, in the
//! affinity and in `z` alike (the reference mixes the two orders). The affinity is kept as
//! neighbour lists, built block by block so no `R × R` matrix is ever held; the Gaussian term
//! and the μ/σ² statistics are GEMMs over `N × d` and `K × d`.
//!
//! Cost: the steps that grow with the buffer (the affinity, the Gaussian term, the μ-step and
//! the z-sweeps) are split over `threads` by output rows ([`super::parallel`]), which leaves
//! every value bit-identical to a single-threaded pass. The affinity ranks candidates with an
//! `f32` GEMM and re-decides the close calls in `f64` (see [`nearest`]), so the neighbours are
//! those of the `f64` cosines.

use super::parallel::{for_row_chunks, resolve, MIN_PARALLEL_WORK};
use super::{
    argmax, check_features_and_text, check_matrix, check_support_features, log_softmax_in_place,
    normalised, softmax_in_place, to_f32, Outcome, Result, TransClipParams,
};
use crate::adapter::linalg::{dot, Mat, Real};
use std::cmp::Ordering;

/// Rows of the cosine matrix computed at once when building the affinity: bounds the
/// temporary to `BLOCK × R` values per thread whatever the buffer size.
const BLOCK: usize = 256;

/// Floor on every variance: a buffer of identical frames has zero spread, and dividing by it
/// would turn the Gaussian term into NaN.
const MIN_VARIANCE: f64 = 1e-12;

/// What one `exp` costs in multiply–adds, for weighing the z-sweeps' work.
const EXP_COST: usize = 20;

/// Refines the classes of `n` frames (`features`, `n × d`) among `k` classes (`text`, `k × d`).
///
/// `support`, for few-shot, is the shots' features (`S × d`) and labels. `init_logprobs`
/// (`n × k`, logits or log-probabilities of an adapter; log-softmax is applied) replaces the
/// zero-shot `scale · cos` start. Zero-shot buffers smaller than `init_top` cannot seed the class
/// means and come back with their initial probabilities (`iterations` = 0).
#[allow(clippy::too_many_arguments)] // the documented flat-slice API: shapes travel with data
pub fn transclip(
    features: &[f32],
    n: usize,
    d: usize,
    text: &[f32],
    k: usize,
    support: Option<(&[f32], &[usize])>,
    init_logprobs: Option<&[f32]>,
    params: &TransClipParams,
) -> Result<Outcome> {
    params.validate()?;
    check_features_and_text(features, n, d, text, k)?;
    let f = normalised(n, d, features);
    let shots = match support {
        None => None,
        Some((sf, labels)) => {
            let s = check_support_features(sf, labels, d, k)?;
            Some(Shots {
                f: normalised(s, d, sf),
                labels,
            })
        }
    };
    let mut log_y = match init_logprobs {
        Some(lp) => {
            check_matrix("initial log-probabilities", lp, n, k)?;
            Mat::<f64>::from_f32(n, k, lp)
        }
        None => {
            let mut logits = f.matmul_t(&normalised(k, d, text));
            logits.scale(params.scale);
            logits
        }
    };
    for i in 0..n {
        log_softmax_in_place(log_y.row_mut(i));
    }
    let y_hat = Mat::from_vec(n, k, log_y.data.iter().map(|v| v.exp()).collect());

    if shots.is_none() && n < params.init_top {
        return Ok(finish(y_hat, 0));
    }
    let z = Refiner::new(&f, shots.as_ref(), &log_y, &y_hat, params).run();
    Ok(finish(z, params.outer_steps))
}

fn finish(z: Mat<f64>, iterations: usize) -> Outcome {
    Outcome {
        n: z.rows,
        k: z.cols,
        pred: (0..z.rows).map(|i| argmax(z.row(i))).collect(),
        z: to_f32(&z),
        iterations,
        cluster_to_class: None,
    }
}

/// Normalised shot features and their labels.
struct Shots<'a> {
    f: Mat<f64>,
    labels: &'a [usize],
}

/// The affinity rows of the query frames, flattened: row `i`'s neighbours are
/// `to[start[i]..start[i + 1]]`, each with its weight `A_ir / (2·knn)` (the z-step's factor
/// folded in once).
struct Neighbours {
    start: Vec<usize>,
    to: Vec<usize>,
    weight: Vec<f64>,
}

impl Neighbours {
    /// The first `rows` rows of `adj`, each weight times `coupling`.
    fn new(adj: &[Vec<(usize, f64)>], rows: usize, coupling: f64) -> Self {
        let mut nb = Neighbours {
            start: Vec::with_capacity(rows + 1),
            to: Vec::new(),
            weight: Vec::new(),
        };
        nb.start.push(0);
        for list in &adj[..rows] {
            for &(r, a) in list {
                nb.to.push(r);
                nb.weight.push(coupling * a);
            }
            nb.start.push(nb.to.len());
        }
        nb
    }

    fn of(&self, i: usize) -> impl Iterator<Item = (usize, f64)> + '_ {
        let span = self.start[i]..self.start[i + 1];
        self.to[span.clone()]
            .iter()
            .copied()
            .zip(self.weight[span].iter().copied())
    }
}

/// The state of one TransCLIP run on validated, normalised inputs.
struct Refiner<'a> {
    p: &'a TransClipParams,
    threads: usize,
    f: &'a Mat<f64>,
    shots: Option<&'a Shots<'a>>,
    log_y: &'a Mat<f64>,
    /// `A = W + Wᵀ` over all `R = N + S` rows (queries first, then shots), for the query rows.
    affinity: Neighbours,
    /// `z` of the query rows (`N × K`).
    z: Mat<f64>,
    /// The shots' fixed one-hot rows of `z` (`S × K`): rows `N..N + S` of the affinity.
    z_shots: Mat<f64>,
    /// The next sweep's query rows, swapped with `z` after each sweep.
    next: Mat<f64>,
    /// The current z-step's `λ·log ŷ + G/g_divisor` (`N × K`).
    base: Mat<f64>,
    mu: Mat<f64>,
    /// `(zᵀ·f)ᵀ = fᵀ·z` of the last μ-step (`d × K`), which the σ²-step reuses. Kept
    /// transposed so the GEMM splits over feature columns: each thread then packs only its
    /// share of `f`.
    fz: Mat<f64>,
    var: Vec<f64>,
    /// Each shot's weight in the μ- and σ²-steps: `γ·shot_weight/S` (0 zero-shot).
    shot_w: f64,
    /// `Σ_{s: ys_s = k} fs_s` (`K × d`).
    shot_sum: Mat<f64>,
}

impl<'a> Refiner<'a> {
    fn new(
        f: &'a Mat<f64>,
        shots: Option<&'a Shots<'a>>,
        log_y: &'a Mat<f64>,
        y_hat: &Mat<f64>,
        p: &'a TransClipParams,
    ) -> Self {
        let (n, d, k) = (f.rows, f.cols, log_y.cols);
        let threads = resolve(p.threads);
        let s = shots.map_or(0, |sh| sh.labels.len());
        let mut z_shots = Mat::<f64>::zeros(s, k);
        let mut shot_sum = Mat::<f64>::zeros(k, d);
        if let Some(sh) = shots {
            for (i, &c) in sh.labels.iter().enumerate() {
                z_shots.row_mut(i)[c] = 1.0;
                add_to(shot_sum.row_mut(c), sh.f.row(i), 1.0);
            }
        }
        let mu = match shots {
            // Few-shot: the normalised mean of each class's shots (normalising the sum is
            // the same; a class without shots starts at zero).
            Some(_) => {
                let mut mu = shot_sum.clone();
                (0..k).for_each(|c| normalise(mu.row_mut(c)));
                mu
            }
            None => top_means(f, y_hat, p.init_top),
        };
        let shot_w = if s > 0 {
            p.gamma * p.shot_weight / s as f64
        } else {
            0.0
        };
        let adj = match shots {
            None => knn_affinity(f, p.knn, threads),
            Some(sh) => {
                let mut rows = Mat::<f64>::zeros(n + s, d);
                rows.data[..n * d].copy_from_slice(&f.data);
                rows.data[n * d..].copy_from_slice(&sh.f.data);
                knn_affinity(&rows, p.knn, threads)
            }
        };
        Refiner {
            p,
            threads,
            f,
            shots,
            log_y,
            affinity: Neighbours::new(&adj, n, 1.0 / (2.0 * p.knn as f64)),
            z: y_hat.clone(),
            z_shots,
            next: Mat::zeros(n, k),
            base: Mat::zeros(n, k),
            mu,
            fz: Mat::zeros(d, k),
            var: vec![1.0 / d as f64; d],
            shot_w,
            shot_sum,
        }
    }

    /// The threads for a step of `work` multiply–adds.
    fn threads_for(&self, work: usize) -> usize {
        if work < MIN_PARALLEL_WORK {
            1
        } else {
            self.threads
        }
    }

    fn run(mut self) -> Mat<f64> {
        for _ in 0..self.p.outer_steps {
            self.z_step();
            self.mu_step();
            self.var_step();
        }
        self.z_step();
        self.z
    }

    /// `sweeps` Jacobi sweeps: every query row from the previous sweep's `z`.
    fn z_step(&mut self) {
        let (n, k) = (self.f.rows, self.z.cols);
        self.unary();
        let links = self.affinity.to.len();
        let threads = self.threads_for(n * k * EXP_COST + links * k);
        for _ in 0..self.p.sweeps {
            let (z, z_shots, base, affinity) = (&self.z, &self.z_shots, &self.base, &self.affinity);
            for_row_chunks(&mut self.next.data, k, threads, 1, |first, chunk| {
                for (r, row) in chunk.chunks_mut(k).enumerate() {
                    let i = first + r;
                    row.copy_from_slice(base.row(i));
                    for (j, a) in affinity.of(i) {
                        let zj = if j < n { z.row(j) } else { z_shots.row(j - n) };
                        add_to(row, zj, a);
                    }
                    softmax_in_place(row);
                }
            });
            std::mem::swap(&mut self.z, &mut self.next);
        }
    }

    /// `base = λ·log ŷ + G/g_divisor` with `G_ik = −½ Σ_j (f_ij − μ_kj)²/σ²_j`, expanded into
    /// `‖f_i‖²_w − 2 f_i·μ_k_w + ‖μ_k‖²_w` so the cross term is one GEMM.
    fn unary(&mut self) {
        let (n, d, k) = (self.f.rows, self.f.cols, self.mu.rows);
        let w: Vec<f64> = self.var.iter().map(|v| 1.0 / v).collect();
        let mut mu_w = self.mu.clone();
        for c in 0..k {
            mu_w.row_mut(c)
                .iter_mut()
                .zip(&w)
                .for_each(|(m, w)| *m *= w);
        }
        let mu_sq: Vec<f64> = (0..k).map(|c| weighted_sq(self.mu.row(c), &w)).collect();
        let threads = self.threads_for(n * k * d);
        let (f, log_y, p) = (self.f, self.log_y, self.p);
        for_row_chunks(&mut self.base.data, k, threads, 1, |first, chunk| {
            let rows = chunk.len() / k;
            gemm_nt(&f.data[first * d..(first + rows) * d], &mu_w.data, d, chunk);
            for (r, row) in chunk.chunks_mut(k).enumerate() {
                let f_sq = weighted_sq(f.row(first + r), &w);
                let ly = log_y.row(first + r);
                for c in 0..k {
                    let g = -0.5 * (f_sq - 2.0 * row[c] + mu_sq[c]);
                    row[c] = p.lambda * ly[c] + g / p.g_divisor;
                }
            }
        });
    }

    /// `μ_k = normalise((1/N) Σ_i z_ik f_i + w_s Σ_{s∈k} fs_s)`, keeping `fᵀ·z` for the σ²-step.
    fn mu_step(&mut self) {
        let (n, d, k) = (self.f.rows, self.f.cols, self.z.cols);
        let threads = self.threads_for(n * k * d);
        let (z, f) = (&self.z.data, &self.f.data);
        // Rows j.. of fᵀ·z read columns j.. of f (row stride d).
        for_row_chunks(&mut self.fz.data, k, threads, 1, |first, chunk| {
            let rows = chunk.len() / k;
            f64::gemm(
                rows,
                n,
                k,
                1.0,
                &f[first..],
                1,
                d as isize,
                z,
                k as isize,
                1,
                0.0,
                chunk,
                k as isize,
                1,
            );
        });
        for c in 0..k {
            let row = self.mu.row_mut(c);
            for (j, mu) in row.iter_mut().enumerate() {
                *mu = self.fz.data[j * k + c] / n as f64;
            }
            add_to(row, self.shot_sum.row(c), self.shot_w);
            normalise(row);
        }
    }

    /// The z-weighted (plus shot-weighted) squared deviation from the class means, shared by
    /// all classes. The query part is expanded so it needs only `fᵀ·z` (`m`) and `K × d` work:
    /// `Σ_i Σ_k z_ik (f_ij − μ_kj)² = Σ_i (Σ_k z_ik) f_ij² − 2 Σ_k μ_kj m_kj + Σ_k (Σ_i z_ik) μ_kj²`.
    fn var_step(&mut self) {
        let (n, d, k) = (self.f.rows, self.f.cols, self.z.cols);
        let mut acc = vec![0.0; d];
        let mut mass = vec![0.0; k];
        for i in 0..n {
            let zi = self.z.row(i);
            mass.iter_mut().zip(zi).for_each(|(a, &v)| *a += v);
            let s: f64 = zi.iter().sum();
            acc.iter_mut()
                .zip(self.f.row(i))
                .for_each(|(a, &x)| *a += s * x * x);
        }
        for (c, &mass) in mass.iter().enumerate() {
            let mu = self.mu.row(c);
            for (j, a) in acc.iter_mut().enumerate() {
                let mm = self.fz.data[j * k + c];
                *a += mass * mu[j] * mu[j] - 2.0 * mu[j] * mm;
            }
        }
        acc.iter_mut().for_each(|a| *a /= n as f64);
        let mut denom = 1.0;
        if let Some(sh) = self.shots {
            for (s, &c) in sh.labels.iter().enumerate() {
                for ((a, &x), &mu) in acc.iter_mut().zip(sh.f.row(s)).zip(self.mu.row(c)) {
                    *a += self.shot_w * (x - mu) * (x - mu);
                }
            }
            denom += self.p.gamma * self.p.shot_weight;
        }
        for (v, a) in self.var.iter_mut().zip(acc) {
            *v = (a / denom).max(MIN_VARIANCE);
        }
    }
}

/// `out = a · bᵀ` for row-major `a` (`m × kdim`) and `b` (`n × kdim`) into row-major `out`
/// (`m × n`).
fn gemm_nt<T: Real>(a: &[T], b: &[T], kdim: usize, out: &mut [T]) {
    let (m, n) = (a.len() / kdim, b.len() / kdim);
    T::gemm(
        m,
        kdim,
        n,
        T::one(),
        a,
        kdim as isize,
        1,
        b,
        1,
        kdim as isize,
        T::zero(),
        out,
        n as isize,
        1,
    );
}

/// `Σ_j x_j² w_j`, with four running sums so the loop vectorises.
fn weighted_sq(x: &[f64], w: &[f64]) -> f64 {
    let mut acc = [0.0; 4];
    let (xs, ws) = (x.chunks_exact(4), w.chunks_exact(4));
    let tail: f64 = xs
        .remainder()
        .iter()
        .zip(ws.remainder())
        .map(|(x, w)| x * x * w)
        .sum();
    for (x, w) in xs.zip(ws) {
        for l in 0..4 {
            acc[l] += x[l] * x[l] * w[l];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `dst += scale · src`.
fn add_to(dst: &mut [f64], src: &[f64], scale: f64) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d += scale * s);
}

/// L2-normalises `row` in place; a zero row stays zero.
fn normalise(row: &mut [f64]) {
    let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm > 0.0 {
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

/// Zero-shot class means: for each class, `normalise(Σ ŷ_ik f_i)` over the `top` queries with
/// the largest `ŷ_ik` (lower index first on ties), added in that order.
fn top_means(f: &Mat<f64>, y_hat: &Mat<f64>, top: usize) -> Mat<f64> {
    let (n, k) = (f.rows, y_hat.cols);
    let mut mu = Mat::<f64>::zeros(k, f.cols);
    let top = top.min(n);
    if top == 0 {
        return mu;
    }
    let mut order: Vec<usize> = (0..n).collect();
    for c in 0..k {
        let most_confident = |a: &usize, b: &usize| {
            let (ya, yb) = (y_hat.data[a * k + c], y_hat.data[b * k + c]);
            yb.total_cmp(&ya).then(a.cmp(b))
        };
        // A total order (index breaks ties), so selecting then sorting the head gives exactly
        // the head of a full sort, in O(N) instead of O(N log N) per class.
        order.select_nth_unstable_by(top - 1, most_confident);
        order[..top].sort_unstable_by(most_confident);
        let row = mu.row_mut(c);
        for &i in &order[..top] {
            add_to(row, f.row(i), y_hat.data[i * k + c]);
        }
        normalise(row);
    }
    mu
}

/// `A = W + Wᵀ` as neighbour lists, where row `i` of `W` holds the cosines of the `knn` other
/// rows most similar to it (lower index first on ties; a duplicate of `i` is still a neighbour,
/// only `i` itself is excluded). `x` must be L2-normalised. Rows are split over `threads`.
fn knn_affinity(x: &Mat<f64>, knn: usize, threads: usize) -> Vec<Vec<(usize, f64)>> {
    let (r, d) = (x.rows, x.cols);
    let x32: Vec<f32> = x.data.iter().map(|&v| v as f32).collect();
    // An f32 cosine of unit rows is within (d + 2)·ε/2 of the f64 one (rounding the inputs,
    // then at most d rounded multiply–adds); a neighbour by f64 is therefore within twice that
    // of the knn-th best f32 cosine. Twice again for safety.
    let margin = 2.0 * (d as f32 + 2.0) * f32::EPSILON;
    let threads = if r * r * d < MIN_PARALLEL_WORK {
        1
    } else {
        threads
    };
    let mut w: Vec<Vec<(f64, usize)>> = vec![Vec::new(); r];
    for_row_chunks(&mut w, 1, threads, 1, |first, lists| {
        let mut cos = vec![0f32; BLOCK.min(lists.len()) * r];
        let (mut top, mut candidates) = (Vec::with_capacity(knn), Vec::new());
        for (b, block) in lists.chunks_mut(BLOCK).enumerate() {
            let start = first + b * BLOCK;
            let cos = &mut cos[..block.len() * r];
            gemm_nt(&x32[start * d..(start + block.len()) * d], &x32, d, cos);
            for (bi, list) in block.iter_mut().enumerate() {
                let row = &cos[bi * r..(bi + 1) * r];
                *list = nearest(start + bi, row, x, knn, margin, &mut top, &mut candidates);
            }
        }
    });
    let mut adj: Vec<Vec<(usize, f64)>> = vec![Vec::new(); r];
    for (i, list) in w.iter().enumerate() {
        for &(v, j) in list {
            adj[i].push((j, v));
            adj[j].push((i, v));
        }
    }
    adj
}

/// Row `i`'s `knn` nearest rows of `x` as `(cosine, index)`, best first: by `f64` cosine, lower
/// index on ties. `cos` holds row `i`'s `f32` cosines with every row; only the rows within
/// `margin` of the knn-th best of those can be neighbours, and only they get an `f64` cosine.
fn nearest(
    i: usize,
    cos: &[f32],
    x: &Mat<f64>,
    knn: usize,
    margin: f32,
    top: &mut Vec<f32>,
    candidates: &mut Vec<(f64, usize)>,
) -> Vec<(f64, usize)> {
    top.clear();
    for (j, &v) in cos.iter().enumerate() {
        if j == i || (top.len() == knn && v <= top[knn - 1]) {
            continue;
        }
        let at = top.partition_point(|&b| b >= v);
        top.insert(at, v);
        top.truncate(knn);
    }
    let floor = match top.get(knn - 1) {
        Some(&kth) => kth - margin,
        None => f32::NEG_INFINITY,
    };
    candidates.clear();
    for (j, &v) in cos.iter().enumerate() {
        if j != i && v >= floor {
            candidates.push((dot(x.row(i), x.row(j)), j));
        }
    }
    // `partial_cmp` so that −0 and +0 tie (and fall to the index); cosines are finite.
    candidates.sort_unstable_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(Ordering::Equal)
            .then(a.1.cmp(&b.1))
    });
    candidates.truncate(knn);
    candidates.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::transduct::TransductError;

    fn check_invariants(o: &Outcome) {
        assert_eq!(o.z.len(), o.n * o.k);
        assert_eq!(o.pred.len(), o.n);
        for row in o.z.chunks(o.k) {
            assert!(row.iter().all(|v| v.is_finite() && *v >= 0.0), "{row:?}");
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "row sums to {s}");
        }
        assert!(o.pred.iter().all(|&p| p < o.k));
    }

    /// `n` unit features around the `k` axes of a `d`-space (d ≥ k), class `classes[i % len]`,
    /// with noise `noise`; the text embeddings are the axes themselves.
    fn axes(n: usize, k: usize, d: usize, classes: &[usize], noise: f64, seed: u64) -> Data {
        let mut rng = Rng::new(seed);
        let mut features = Vec::with_capacity(n * d);
        let mut truth = Vec::with_capacity(n);
        for i in 0..n {
            let c = classes[i % classes.len()];
            features.extend(
                (0..d).map(|j| (if j == c { 1.0 } else { 0.0 } + noise * rng.normal()) as f32),
            );
            truth.push(c);
        }
        let text = (0..k * d)
            .map(|x| if x % d == x / d { 1.0 } else { 0.0 })
            .collect();
        Data {
            features,
            text,
            truth,
        }
    }

    struct Data {
        features: Vec<f32>,
        text: Vec<f32>,
        truth: Vec<usize>,
    }

    fn reference(few_shot: bool) -> TransClipParams {
        TransClipParams::reference(3, few_shot)
    }

    #[test]
    fn separated_classes_are_recovered() {
        let data = axes(24, 3, 6, &[0, 1, 2], 0.1, 1);
        let o = transclip(
            &data.features,
            24,
            6,
            &data.text,
            3,
            None,
            None,
            &reference(false),
        )
        .unwrap();
        check_invariants(&o);
        assert_eq!(o.pred, data.truth);
        assert_eq!(o.iterations, 10);
    }

    #[test]
    fn neighbours_and_class_means_outvote_a_misleading_start() {
        // Frames clearly near axis 0 or 1; the adapter's start wrongly leans frame 0 (class 0)
        // towards class 1. Its neighbours and the class means pull it back.
        let data = axes(16, 2, 4, &[0, 1], 0.05, 2);
        let mut init = Vec::new();
        for (i, &c) in data.truth.iter().enumerate() {
            let good = if i == 0 { 0.4f32 } else { 0.9 };
            let p = if c == 0 {
                [good, 1.0 - good]
            } else {
                [1.0 - good, good]
            };
            init.extend(p.map(f32::ln));
        }
        let p = reference(false);
        let o = transclip(&data.features, 16, 4, &data.text, 2, None, Some(&init), &p).unwrap();
        check_invariants(&o);
        assert_eq!(o.pred, data.truth);
        assert!(o.z[0] > 0.5, "{:?}", &o.z[..2]);
    }

    #[test]
    fn small_zero_shot_buffers_are_returned_unchanged() {
        let data = axes(7, 3, 5, &[0, 1, 2], 0.2, 3);
        let p = reference(false);
        let o = transclip(&data.features, 7, 5, &data.text, 3, None, None, &p).unwrap();
        check_invariants(&o);
        assert_eq!(o.iterations, 0);
        // The initial probabilities: softmax(100 · cos).
        let f = normalised(7, 5, &data.features);
        for i in 0..7 {
            let mut logits: Vec<f64> = f.row(i)[..3].iter().map(|v| 100.0 * v).collect();
            softmax_in_place(&mut logits);
            for (got, want) in o.z[i * 3..(i + 1) * 3].iter().zip(&logits) {
                assert!((*got as f64 - want).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn edge_case_buffers_stay_finite() {
        let data = axes(8, 3, 5, &[0, 1, 2], 0.2, 4);
        let sup = axes(3, 3, 5, &[0, 1, 2], 0.1, 5);
        for few in [false, true] {
            let p = reference(few);
            let support = few.then_some((&sup.features[..], &sup.truth[..]));
            for n in [1, 2, 7, 8] {
                let o = transclip(
                    &data.features[..n * 5],
                    n,
                    5,
                    &data.text,
                    3,
                    support,
                    None,
                    &p,
                )
                .unwrap();
                check_invariants(&o);
                assert_eq!(o.iterations, if few || n >= 8 { 10 } else { 0 });
            }
            // Duplicate frames (zero spread: the variance floor keeps it finite).
            let dup = data.features[..5].repeat(9);
            let o = transclip(&dup, 9, 5, &data.text, 3, support, None, &p).unwrap();
            check_invariants(&o);
            assert!(o.pred.iter().all(|&c| c == o.pred[0]));
            // A class absent from the buffer; every frame in one class.
            let two = axes(10, 3, 5, &[0, 1], 0.2, 6);
            check_invariants(
                &transclip(&two.features, 10, 5, &two.text, 3, support, None, &p).unwrap(),
            );
            let one = axes(10, 3, 5, &[2], 0.2, 7);
            let o = transclip(&one.features, 10, 5, &one.text, 3, support, None, &p).unwrap();
            check_invariants(&o);
            assert!(o.pred.iter().all(|&c| c == 2));
            // Zero features and a single class.
            check_invariants(
                &transclip(&[0.0; 50], 10, 5, &data.text, 3, support, None, &p).unwrap(),
            );
            check_invariants(
                &transclip(&data.features, 8, 5, &data.text[..5], 1, None, None, &p).unwrap(),
            );
        }
    }

    #[test]
    fn few_shot_anchors_classes_with_shots() {
        // Text embeddings that point the wrong way (class 0 ↔ class 1); shots correct them.
        let data = axes(12, 2, 4, &[0, 1], 0.05, 8);
        let swapped: Vec<f32> = [&data.text[4..8], &data.text[..4]].concat();
        let sup = axes(4, 2, 4, &[0, 1], 0.05, 9);
        let mut p = reference(true);
        p.lambda = 0.0;
        p.gamma = 0.2;
        let o = transclip(
            &data.features,
            12,
            4,
            &swapped,
            2,
            Some((&sup.features, &sup.truth)),
            None,
            &p,
        )
        .unwrap();
        check_invariants(&o);
        assert_eq!(o.pred, data.truth);
    }

    #[test]
    fn knn_excludes_only_self_and_breaks_ties_by_index() {
        // Rows 0, 1, 2 identical; row 3 orthogonal.
        let x = Mat::from_vec(4, 2, vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
        let a = knn_affinity(&x, 1, 1);
        // W: 0→1, 1→0, 2→0, 3→0 (cos 0, lowest index); A lists each W entry in both rows.
        assert_eq!(a[0], vec![(1, 1.0), (1, 1.0), (2, 1.0), (3, 0.0)]);
        assert_eq!(a[1], vec![(0, 1.0), (0, 1.0)]);
        assert_eq!(a[2], vec![(0, 1.0)]);
        assert_eq!(a[3], vec![(0, 0.0)]);
        assert_eq!(knn_affinity(&x, 10, 1)[3].len(), 6);
        assert!(knn_affinity(&Mat::from_vec(1, 2, vec![1.0, 0.0]), 3, 1)[0].is_empty());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let p = reference(false);
        let t = [1.0f32, 0.0, 0.0, 1.0];
        assert!(matches!(
            transclip(&[], 0, 2, &t, 2, None, None, &p),
            Err(TransductError::Empty { .. })
        ));
        assert!(transclip(&[1.0, 0.0], 1, 2, &t, 3, None, None, &p).is_err());
        let e = transclip(
            &[1.0, 0.0],
            1,
            2,
            &t,
            2,
            Some((&[1.0, 0.0], &[5])),
            None,
            &p,
        );
        assert!(matches!(
            e,
            Err(TransductError::LabelOutOfRange { label: 5, .. })
        ));
        assert!(transclip(&[1.0, 0.0], 1, 2, &t, 2, Some((&[1.0], &[0])), None, &p).is_err());
        assert!(transclip(&[1.0, 0.0], 1, 2, &t, 2, None, Some(&[0.0]), &p).is_err());
        assert!(transclip(&[1.0, f32::INFINITY], 1, 2, &t, 2, None, None, &p).is_err());
        let mut bad = p.clone();
        bad.knn = 0;
        assert!(transclip(&[1.0, 0.0], 1, 2, &t, 2, None, None, &bad).is_err());
    }

    #[test]
    fn the_thread_count_changes_nothing() {
        // Large enough that every step is split (see MIN_PARALLEL_WORK).
        let (n, k, d) = (600, 24, 32);
        let classes: Vec<usize> = (0..k).collect();
        let data = axes(n, k, d, &classes, 0.3, 11);
        let sup = axes(2 * k, k, d, &classes, 0.3, 12);
        for few in [false, true] {
            let support = few.then_some((&sup.features[..], &sup.truth[..]));
            let mut p = reference(few);
            p.threads = 1;
            let one = transclip(&data.features, n, d, &data.text, k, support, None, &p).unwrap();
            check_invariants(&one);
            for threads in [2, 3] {
                p.threads = threads;
                let many =
                    transclip(&data.features, n, d, &data.text, k, support, None, &p).unwrap();
                assert_eq!(many, one, "{threads} threads, few-shot {few}");
            }
        }
    }

    /// The neighbours by exact f64 cosine, lower index on ties: what the f32 screening must
    /// reproduce.
    fn brute_force_knn(x: &Mat<f64>, knn: usize) -> Vec<Vec<(f64, usize)>> {
        (0..x.rows)
            .map(|i| {
                let mut all: Vec<(f64, usize)> = (0..x.rows)
                    .filter(|&j| j != i)
                    .map(|j| (dot(x.row(i), x.row(j)), j))
                    .collect();
                all.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
                all.truncate(knn);
                all
            })
            .collect()
    }

    #[test]
    fn f32_screening_finds_the_f64_neighbours_among_near_ties() {
        // Clusters so tight (spread 1e-4) that their cosines differ below f32 resolution, plus
        // exact duplicates and spread-out rows.
        let mut rng = Rng::new(13);
        let d = 40;
        let centres: Vec<Vec<f64>> = (0..4)
            .map(|_| (0..d).map(|_| rng.normal()).collect())
            .collect();
        let mut data = Vec::new();
        for i in 0..300 {
            let spread = if i % 3 == 0 { 1e-4 } else { 0.5 };
            let c = &centres[i % 4];
            data.extend(c.iter().map(|&v| v + spread * rng.normal()));
        }
        let first: Vec<f64> = data[..d].to_vec();
        data.extend_from_slice(&first);
        data.extend_from_slice(&first);
        let x = crate::adapter::linalg::normalize_rows(&Mat::from_vec(302, d, data)).0;
        for knn in [1, 3, 7] {
            let want = brute_force_knn(&x, knn);
            let mut adj: Vec<Vec<(usize, f64)>> = vec![Vec::new(); x.rows];
            for (i, list) in want.iter().enumerate() {
                for &(v, j) in list {
                    adj[i].push((j, v));
                    adj[j].push((i, v));
                }
            }
            for threads in [1, 2] {
                assert!(knn_affinity(&x, knn, threads) == adj, "knn {knn}");
            }
        }
    }
}
