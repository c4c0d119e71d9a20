//! EM-Dirichlet (Martin et al., CVPR 2024): models each class as a Dirichlet distribution over
//! the frames' probability vectors and re-assigns the frames by EM, so frames whose CLIP
//! probabilities look alike end up in the same cluster even when their argmaxes disagree.
//!
//! Follows `docs/transduction.md` step by step. The sufficient statistics `Σ_n u_nk·log z_n`
//! and the log-likelihoods `log z · (α − 1)ᵀ` are GEMMs (no N×K×K temporary); the Dirichlet
//! parameters are fitted by the minorise–maximise (MM) fixed point of the reference.

use super::parallel::{for_row_chunks, resolve, MIN_PARALLEL_WORK};
use super::{
    argmax, check_features_and_text, check_labels, check_probs, check_support_features, nonempty,
    normalised, rows_of, softmax_in_place, to_f32, EmDirichletParams, Outcome, Result,
};
use crate::adapter::linalg::Mat;
use pathfinding::kuhn_munkres::kuhn_munkres;
use pathfinding::matrix::Matrix;
use statrs::function::gamma::{digamma, ln_gamma};
use std::f64::consts::PI;

/// A cluster whose mass is below this is empty: its statistics are undefined.
const EMPTY_MASS: f64 = 1e-12;

/// Below this a Dirichlet parameter is treated as zero by the MM curvature bound.
const TINY_ALPHA: f64 = 1e-11;

/// What one MM entry update costs in multiply–adds (two special functions and a square root),
/// for deciding when a block of steps is worth splitting over threads.
const MM_ENTRY_COST: usize = 100;

/// The Hungarian solver needs integer weights: mean probabilities (in [0, 1]) are scaled by
/// this and rounded, so assignments whose totals differ by less than ~K·1e-9 may tie.
const MATCH_SCALE: f64 = 1e9;

/// Refines a buffer of `n` probability vectors over `k` classes (`probs`, `n × k` row-major).
///
/// `support`, for few-shot, is the shots' probabilities (`S × k`) and their labels; clusters
/// are then the classes themselves. Zero-shot, clusters are matched to classes afterwards.
pub fn em_dirichlet(
    probs: &[f32],
    n: usize,
    k: usize,
    support: Option<(&[f32], &[usize])>,
    params: &EmDirichletParams,
) -> Result<Outcome> {
    params.validate()?;
    nonempty("probs", "frame", n)?;
    nonempty("probs", "class", k)?;
    check_probs("probs", probs, n, k)?;
    let z = Mat::<f64>::from_f32(n, k, probs);
    let support = match support {
        None => None,
        Some((sp, labels)) => {
            let s = rows_of("support probs", sp, k)?;
            nonempty("support probs", "shot", s)?;
            check_probs("support probs", sp, s, k)?;
            check_labels(labels, s, k)?;
            Some((Mat::<f64>::from_f32(s, k, sp), labels))
        }
    };
    Ok(run(&z, support.as_ref().map(|(m, l)| (m, *l)), params))
}

/// As [`em_dirichlet`], with the probabilities built from features (`n × d`) and class text
/// embeddings (`k × d`): `softmax(temperature · cos)`. `support` is the shots' features
/// (`S × d`) and labels.
pub fn em_dirichlet_from_features(
    features: &[f32],
    n: usize,
    d: usize,
    text: &[f32],
    k: usize,
    support: Option<(&[f32], &[usize])>,
    params: &EmDirichletParams,
) -> Result<Outcome> {
    params.validate()?;
    check_features_and_text(features, n, d, text, k)?;
    let t = normalised(k, d, text);
    let z = probs_from_features(&normalised(n, d, features), &t, params.temperature);
    let support = match support {
        None => None,
        Some((sf, labels)) => {
            let s = check_support_features(sf, labels, d, k)?;
            let zs = probs_from_features(&normalised(s, d, sf), &t, params.temperature);
            Some((zs, labels))
        }
    };
    Ok(run(&z, support.as_ref().map(|(m, l)| (m, *l)), params))
}

/// `softmax(T · f·tᵀ)` row by row.
fn probs_from_features(f: &Mat<f64>, t: &Mat<f64>, temperature: f64) -> Mat<f64> {
    let mut z = f.matmul_t(t);
    z.scale(temperature);
    for i in 0..z.rows {
        softmax_in_place(z.row_mut(i));
    }
    z
}

/// The EM loop on validated inputs.
fn run(z: &Mat<f64>, support: Option<(&Mat<f64>, &[usize])>, p: &EmDirichletParams) -> Outcome {
    let (n, k) = (z.rows, z.cols);
    let log_eps = |m: &Mat<f64>| Mat::from_vec(m.rows, m.cols, ln_eps(&m.data, p.eps));
    let l = log_eps(z);

    // The shots never move: their counts and summed log-probabilities per class are constant.
    let mut shot_count = vec![0.0; k];
    let mut shot_log = Mat::<f64>::zeros(k, k);
    if let Some((zs, labels)) = support {
        let ls = log_eps(zs);
        for (s, &c) in labels.iter().enumerate() {
            shot_count[c] += 1.0;
            shot_log
                .row_mut(c)
                .iter_mut()
                .zip(ls.row(s))
                .for_each(|(a, &b)| *a += b);
        }
    }

    let threads = resolve(p.threads);
    let mut u = z.clone();
    let mut alpha = Mat::from_vec(k, k, vec![1.0; k * k]);
    for _ in 0..p.iterations {
        // 1. Sufficient statistics.
        let col = column_sums(&u);
        let ul = u.t_matmul(&l);
        let mut y = Mat::<f64>::zeros(k, k);
        let mut frozen = vec![false; k];
        for c in 0..k {
            let mass = col[c] + shot_count[c];
            if mass < EMPTY_MASS {
                frozen[c] = true;
                y.row_mut(c).iter_mut().for_each(|v| *v = p.empty_y);
            } else {
                for j in 0..k {
                    y.data[c * k + j] = (ul.data[c * k + j] + shot_log.data[c * k + j]) / mass;
                }
            }
        }
        // 2. Dirichlet parameters.
        mm(&mut alpha.data, &y.data, &frozen, k, p, threads);
        // 3. Cluster-size prior (queries only).
        let v: Vec<f64> = col.iter().map(|&m| (m / n as f64 + p.eps).ln()).collect();
        // 4. Re-assignment: ℓ = const + L·(α − 1)ᵀ.
        let norm = log_normalisers(&alpha.data, k);
        let mut am1 = alpha.clone();
        am1.data.iter_mut().for_each(|a| *a -= 1.0);
        u = l.matmul_t(&am1);
        for i in 0..n {
            let row = u.row_mut(i);
            for c in 0..k {
                row[c] += norm[c] + p.prior_weight * v[c];
            }
            softmax_in_place(row);
            if p.hard {
                let best = argmax(row);
                row.iter_mut().for_each(|x| *x = 0.0);
                row[best] = 1.0;
            }
        }
    }

    let (pred, cluster_to_class) = if support.is_some() {
        ((0..n).map(|i| argmax(u.row(i))).collect(), None)
    } else {
        let map = match_clusters(&u, z);
        ((0..n).map(|i| map[argmax(u.row(i))]).collect(), Some(map))
    };
    Outcome {
        n,
        k,
        z: to_f32(&u),
        pred,
        iterations: p.iterations,
        cluster_to_class,
    }
}

fn ln_eps(data: &[f64], eps: f64) -> Vec<f64> {
    data.iter().map(|&v| (v + eps).ln()).collect()
}

fn column_sums(m: &Mat<f64>) -> Vec<f64> {
    let mut col = vec![0.0; m.cols];
    for i in 0..m.rows {
        col.iter_mut().zip(m.row(i)).for_each(|(c, &v)| *c += v);
    }
    col
}

/// `lgamma(Σ_j α_kj) − Σ_j lgamma(α_kj)` for every row `k` of `alpha` (`k × k`).
fn log_normalisers(alpha: &[f64], k: usize) -> Vec<f64> {
    alpha
        .chunks_exact(k)
        .map(|row| ln_gamma(row.iter().sum()) - row.iter().map(|&a| ln_gamma(a)).sum::<f64>())
        .collect()
}

/// Fits the Dirichlet parameters to the mean log-probabilities `y` (`k × k`) by MM, starting
/// from `alpha` and leaving `frozen` rows alone; returns the number of steps taken.
///
/// A step updates each row from that row alone; only the stopping test couples them. So the
/// steps between two tests run row by row, the rows split over `threads`, and the test adds up
/// each row's change in row order: every thread count stops at the same step with the same
/// values.
fn mm(
    alpha: &mut [f64],
    y: &[f64],
    frozen: &[bool],
    k: usize,
    p: &EmDirichletParams,
    threads: usize,
) -> usize {
    let mut step = 0;
    while step < p.mm_max_steps {
        let block = (p.mm_check_every - step % p.mm_check_every).min(p.mm_max_steps - step);
        let threads = if k * k * block * MM_ENTRY_COST < MIN_PARALLEL_WORK {
            1
        } else {
            threads
        };
        // Per row: the row, then `Σ (α' − α)²` and `Σ α²` of the block's last step.
        let mut rows: Vec<(&mut [f64], f64, f64)> =
            alpha.chunks_exact_mut(k).map(|r| (r, 0.0, 0.0)).collect();
        for_row_chunks(&mut rows, 1, threads, 1, |first, chunk| {
            let mut next = vec![0.0; k];
            for (r, (row, change, size)) in chunk.iter_mut().enumerate() {
                let c = first + r;
                if frozen[c] {
                    (*change, *size) = (0.0, row.iter().map(|a| a * a).sum());
                    continue;
                }
                for _ in 0..block {
                    mm_row(row, &y[c * k..(c + 1) * k], &mut next);
                    *change = next
                        .iter()
                        .zip(row.iter())
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum();
                    *size = row.iter().map(|a| a * a).sum();
                    row.copy_from_slice(&next);
                }
            }
        });
        step += block;
        if step % p.mm_check_every == 0 {
            let (change, size) = rows
                .iter()
                .fold((0.0, 0.0), |(c, s), (_, rc, rs)| (c + rc, s + rs));
            if change / size < p.mm_tol {
                return step;
            }
        }
    }
    p.mm_max_steps
}

/// One MM step on every non-frozen entry of `alpha` (`k × k`), all from the same `alpha`.
pub fn mm_step(alpha: &[f64], y: &[f64], frozen: &[bool], k: usize) -> Vec<f64> {
    let mut next = alpha.to_vec();
    for (row, (out, ys)) in next.chunks_exact_mut(k).zip(y.chunks_exact(k)).enumerate() {
        if !frozen[row] {
            mm_row(&alpha[row * k..(row + 1) * k], ys, out);
        }
    }
    next
}

/// One MM step on one row of `alpha` (`y`: that row's mean log-probabilities) into `next`.
///
/// `lgamma(Σα)` is convex, so it is minorised by its tangent; `−lgamma(a) = log a −
/// lgamma(a+1)` and `lgamma(a+1)` is majorised by the quadratic with slope `ψ(a+1)` that passes
/// through `lgamma(1) = 0`, whose curvature is `c`. Maximising the bound is the quadratic
/// `c·a'² + b·a' − 1 = 0`. Its positive root is taken as `2 / (b + √(b²+4c))` when `b > 0`,
/// which equals the documented `(−b + √(b²+4c)) / (2c)` without cancelling to 0.
fn mm_row(alpha: &[f64], y: &[f64], next: &mut [f64]) {
    let psi_sum = digamma(alpha.iter().sum());
    for ((a_next, &a), &yy) in next.iter_mut().zip(alpha).zip(y) {
        let psi1 = digamma(a + 1.0);
        let c = curvature(a, psi1);
        let b = psi1 - psi_sum - c * a - yy;
        let root = (b * b + 4.0 * c).sqrt();
        *a_next = if b > 0.0 {
            2.0 / (b + root)
        } else {
            (root - b) / (2.0 * c)
        };
    }
}

/// `c = |2·(a·ψ(a+1) − lgamma(a+1)) / a²|`, or `π²/6` (its limit at 0) where `a` is tiny or
/// rounding leaves no positive finite value.
fn curvature(a: f64, psi1: f64) -> f64 {
    let limit = PI * PI / 6.0;
    if a <= TINY_ALPHA {
        return limit;
    }
    let c = (2.0 * (a * psi1 - ln_gamma(a + 1.0)) / (a * a)).abs();
    if c.is_finite() && c > 0.0 {
        c
    } else {
        limit
    }
}

/// The Dirichlet objective the MM steps climb:
/// `Σ_k mass_k·(lgamma(Σ_j α_kj) − Σ_j lgamma(α_kj) + Σ_j (α_kj − 1)·y_kj)`.
pub fn dirichlet_objective(alpha: &[f64], y: &[f64], mass: &[f64], k: usize) -> f64 {
    let norm = log_normalisers(alpha, k);
    alpha
        .chunks_exact(k)
        .zip(y.chunks_exact(k))
        .enumerate()
        .map(|(c, (a, yy))| {
            let lin: f64 = a.iter().zip(yy).map(|(&a, &y)| (a - 1.0) * y).sum();
            mass[c] * (norm[c] + lin)
        })
        .sum()
}

/// The cluster→class assignment maximising the summed mean probability of each cluster's
/// matched class (Hungarian). Empty clusters have a zero mean.
fn match_clusters(u: &Mat<f64>, z: &Mat<f64>) -> Vec<usize> {
    let k = u.cols;
    let col = column_sums(u);
    let mut means = u.t_matmul(z);
    for (row, &mass) in means.data.chunks_exact_mut(k).zip(&col) {
        if mass < EMPTY_MASS {
            row.iter_mut().for_each(|v| *v = 0.0);
        } else {
            row.iter_mut().for_each(|v| *v /= mass);
        }
    }
    let weights: Vec<i64> = means
        .data
        .iter()
        .map(|&m| (m * MATCH_SCALE).round() as i64)
        .collect();
    match Matrix::from_vec(k, k, weights) {
        Ok(w) => kuhn_munkres(&w).1,
        // Unreachable (the shape is k × k by construction); the identity keeps it panic-free.
        Err(_) => (0..k).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::transduct::TransductError;

    fn shape_error(e: &TransductError) -> bool {
        matches!(e, TransductError::Shape { .. })
    }

    fn params(hard: bool) -> EmDirichletParams {
        if hard {
            EmDirichletParams::reference_hard(3, false)
        } else {
            EmDirichletParams::reference(3, false)
        }
    }

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

    /// Frames drawn around `k` well-separated prototypes, as probability vectors.
    fn clustered(n: usize, k: usize, classes: &[usize], seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut rng = Rng::new(seed);
        let mut probs = Vec::with_capacity(n * k);
        let mut truth = Vec::with_capacity(n);
        for i in 0..n {
            let c = classes[i % classes.len()];
            let mut logits: Vec<f64> = (0..k)
                .map(|j| if j == c { 2.0 } else { 0.0 } + rng.uniform())
                .collect();
            softmax_in_place(&mut logits);
            probs.extend(logits.iter().map(|&v| v as f32));
            truth.push(c);
        }
        (probs, truth)
    }

    #[test]
    fn separated_clusters_keep_their_classes() {
        let (probs, truth) = clustered(30, 3, &[0, 1, 2], 1);
        for hard in [false, true] {
            let mut p = params(hard);
            p.prior_weight = 0.0;
            let o = em_dirichlet(&probs, 30, 3, None, &p).unwrap();
            check_invariants(&o);
            assert_eq!(o.pred, truth, "hard = {hard}");
            let map = o.cluster_to_class.clone().unwrap();
            let mut sorted = map.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2]);
        }
    }

    #[test]
    fn clear_frames_survive_an_ambiguous_one_and_an_absent_class() {
        // Two clear clusters (class 0 absent) plus one frame torn between classes 1 and 2.
        let mut probs = Vec::new();
        for _ in 0..10 {
            probs.extend([0.05f32, 0.90, 0.05]);
        }
        for _ in 0..10 {
            probs.extend([0.05f32, 0.05, 0.90]);
        }
        probs.extend([0.02f32, 0.50, 0.48]);
        let mut p = params(false);
        p.prior_weight = 0.0;
        let o = em_dirichlet(&probs, 21, 3, None, &p).unwrap();
        check_invariants(&o);
        assert_eq!(&o.pred[..20], &[[1; 10], [2; 10]].concat()[..]);
        // Few-shot with shots anchoring the classes: the clear frames keep their class.
        let support = [0.05f32, 0.90, 0.05, 0.05, 0.05, 0.90, 0.90, 0.05, 0.05];
        let o = em_dirichlet(&probs, 21, 3, Some((&support, &[1, 2, 0])), &p).unwrap();
        check_invariants(&o);
        assert!(o.cluster_to_class.is_none());
        assert_eq!(&o.pred[..20], &[[1; 10], [2; 10]].concat()[..]);
    }

    #[test]
    fn zero_iterations_return_the_input() {
        let probs = [0.7f32, 0.2, 0.1, 0.1, 0.1, 0.8];
        let mut p = params(false);
        p.iterations = 0;
        let o = em_dirichlet(&probs, 2, 3, None, &p).unwrap();
        assert_eq!(o.z, probs.to_vec());
        assert_eq!(o.iterations, 0);
    }

    #[test]
    fn edge_case_buffers_stay_finite() {
        let (probs, _) = clustered(8, 3, &[0, 1, 2], 7);
        for hard in [false, true] {
            let p = params(hard);
            for n in [1, 2, 7, 8] {
                let o = em_dirichlet(&probs[..n * 3], n, 3, None, &p).unwrap();
                check_invariants(&o);
            }
            // Duplicate frames, a class absent from the buffer, every frame in one class.
            let dup: Vec<f32> = [0.6f32, 0.3, 0.1].repeat(8);
            check_invariants(&em_dirichlet(&dup, 8, 3, None, &p).unwrap());
            let absent: Vec<f32> = (0..8)
                .flat_map(|i| {
                    if i % 2 == 0 {
                        [0.8f32, 0.1, 0.1]
                    } else {
                        [0.1, 0.8, 0.1]
                    }
                })
                .collect();
            check_invariants(&em_dirichlet(&absent, 8, 3, None, &p).unwrap());
            let one_hot: Vec<f32> = [1.0f32, 0.0, 0.0].repeat(7);
            let o = em_dirichlet(&one_hot, 7, 3, None, &p).unwrap();
            check_invariants(&o);
            assert!(o.pred.iter().all(|&c| c == 0));
            let support = [0.0f32, 1.0, 0.0];
            let o = em_dirichlet(&one_hot, 7, 3, Some((&support, &[1])), &p).unwrap();
            check_invariants(&o);
            // A single class.
            check_invariants(&em_dirichlet(&[1.0; 5], 5, 1, None, &p).unwrap());
        }
    }

    #[test]
    fn from_features_builds_tempered_probabilities() {
        // Two classes along the axes; frames near each axis; zero iterations show z itself.
        let text = [1.0f32, 0.0, 0.0, 2.0];
        let feats = [3.0f32, 0.0, 0.6, 0.8];
        let mut p = params(false);
        p.iterations = 0;
        let o = em_dirichlet_from_features(&feats, 2, 2, &text, 2, None, &p).unwrap();
        let e = (30.0f64 * (0.8 - 0.6)).exp();
        assert!((o.z[0] as f64 - 1.0 / (1.0 + (-30.0f64).exp())).abs() < 1e-6);
        assert!((o.z[3] as f64 - e / (1.0 + e)).abs() < 1e-6);
        p.iterations = 20;
        let o = em_dirichlet_from_features(&feats, 2, 2, &text, 2, None, &p).unwrap();
        check_invariants(&o);
        let support = [0.0f32, 1.0];
        let o =
            em_dirichlet_from_features(&feats, 2, 2, &text, 2, Some((&support, &[1])), &p).unwrap();
        check_invariants(&o);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let p = params(false);
        let e = em_dirichlet(&[], 0, 3, None, &p).unwrap_err();
        assert!(matches!(e, TransductError::Empty { .. }));
        assert!(shape_error(
            &em_dirichlet(&[0.5, 0.5], 2, 2, None, &p).unwrap_err()
        ));
        let probs = [0.5f32, 0.5];
        let e = em_dirichlet(&probs, 1, 2, Some((&[0.5, 0.5], &[2])), &p).unwrap_err();
        assert!(matches!(
            e,
            TransductError::LabelOutOfRange { label: 2, .. }
        ));
        assert!(em_dirichlet(&probs, 1, 2, Some((&[0.5, 0.5, 0.5], &[0])), &p).is_err());
        assert!(em_dirichlet(&probs, 1, 2, Some((&[], &[])), &p).is_err());
        assert!(em_dirichlet(&[f32::NAN, 1.0], 1, 2, None, &p).is_err());
        let e = em_dirichlet_from_features(&[1.0, 0.0], 1, 2, &[1.0, 0.0], 2, None, &p);
        assert!(shape_error(&e.unwrap_err()));
        let mut bad = p.clone();
        bad.eps = 0.0;
        assert!(em_dirichlet(&probs, 1, 2, None, &bad).is_err());
    }

    #[test]
    fn the_thread_count_changes_nothing() {
        // K large enough that the MM blocks are split over threads.
        let (n, k) = (200, 32);
        let mut rng = Rng::new(21);
        let mut probs = Vec::with_capacity(n * k);
        for i in 0..n {
            let mut logits: Vec<f64> = (0..k).map(|_| rng.normal()).collect();
            logits[i % 5] += 3.0;
            softmax_in_place(&mut logits);
            probs.extend(logits.iter().map(|&v| v as f32));
        }
        for hard in [false, true] {
            let mut p = EmDirichletParams::default_for(k, false, hard);
            p.threads = 1;
            let one = em_dirichlet(&probs, n, k, None, &p).unwrap();
            check_invariants(&one);
            for threads in [2, 3] {
                p.threads = threads;
                assert_eq!(em_dirichlet(&probs, n, k, None, &p).unwrap(), one);
            }
        }
    }

    #[test]
    fn mm_steps_never_decrease_the_objective() {
        let mut rng = Rng::new(3);
        let k = 4;
        for trial in 0..20 {
            // Mean log-probabilities of a random cluster of 10 probability vectors.
            let mut y = vec![0.0; k * k];
            for c in 0..k {
                for _ in 0..10 {
                    let mut logits: Vec<f64> = (0..k).map(|_| 3.0 * rng.uniform()).collect();
                    logits[c] += 1.0;
                    softmax_in_place(&mut logits);
                    for j in 0..k {
                        y[c * k + j] += (logits[j] + 1e-15).ln() / 10.0;
                    }
                }
            }
            let mass: Vec<f64> = (0..k).map(|c| 1.0 + c as f64).collect();
            let mut frozen = vec![false; k];
            frozen[trial % k] = trial % 3 == 0;
            let mut alpha: Vec<f64> = (0..k * k).map(|_| 0.05 + 5.0 * rng.uniform()).collect();
            let mut obj = dirichlet_objective(&alpha, &y, &mass, k);
            for _ in 0..200 {
                let next = mm_step(&alpha, &y, &frozen, k);
                for c in (0..k).filter(|&c| frozen[c]) {
                    assert_eq!(next[c * k..(c + 1) * k], alpha[c * k..(c + 1) * k]);
                }
                let o = dirichlet_objective(&next, &y, &mass, k);
                assert!(o >= obj - 1e-9 * obj.abs().max(1.0), "{o} < {obj}");
                assert!(next.iter().all(|a| a.is_finite() && *a > 0.0));
                alpha = next;
                obj = o;
            }
        }
    }

    #[test]
    fn mm_converges_to_the_dirichlet_fixed_point() {
        // At the maximum, ψ(α_j) − ψ(Σα) = y_j for every j.
        let y = [-0.3, -2.0, -4.0];
        let mut alpha = vec![1.0; 3];
        let mut p = params(false);
        p.mm_max_steps = 100_000;
        mm(&mut alpha, &y, &[false], 3, &p, 1);
        let s: f64 = alpha.iter().sum();
        for (a, yy) in alpha.iter().zip(y) {
            assert!((digamma(*a) - digamma(s) - yy).abs() < 1e-5, "{alpha:?}");
        }
    }

    #[test]
    fn curvature_is_positive_and_finite() {
        for a in [0.0, 1e-12, 1e-9, 1e-6, 0.5, 1.0, 10.0, 1e6, 1e12] {
            let c = curvature(a, digamma(a + 1.0));
            assert!(c.is_finite() && c > 0.0, "a = {a}: c = {c}");
        }
        assert!((curvature(1e-3, digamma(1.001)) - PI * PI / 6.0).abs() < 1e-2);
    }

    #[test]
    fn hungarian_matching_maximises_the_matched_means() {
        // Cluster 0 looks like class 2, cluster 1 like class 0, cluster 2 like class 1.
        let z = Mat::from_vec(3, 3, vec![0.1, 0.1, 0.8, 0.7, 0.2, 0.1, 0.2, 0.6, 0.2]);
        let u = Mat::from_vec(3, 3, vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(match_clusters(&u, &z), vec![2, 0, 1]);
        // An empty cluster takes the class nobody else wants.
        let u = Mat::from_vec(3, 3, vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]);
        assert_eq!(match_clusters(&u, &z), vec![2, 0, 1]);
    }
}
