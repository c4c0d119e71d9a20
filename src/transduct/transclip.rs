//! TransCLIP (Zanella et al., NeurIPS 2024): refines a buffer's class probabilities with a
//! Gaussian model of each class in feature space and a kNN smoothness term, so a frame is
//! pulled towards the classes of its look-alikes and of the class means it sits near.
//!
//! Follows `docs/transduction.md` step by step. Rows are always `[queries; shots]`, in the
//! affinity and in `z` alike (the reference mixes the two orders). The affinity is kept as
//! `knn` neighbour lists, built block by block so no `R × R` matrix is ever held; the Gaussian
//! term and the μ/σ² statistics are GEMMs over `N × d` and `K × d`.

use super::{
    argmax, check_features_and_text, check_matrix, check_support_features, log_softmax_in_place,
    normalised, softmax_in_place, to_f32, Outcome, Result, TransClipParams,
};
use crate::adapter::linalg::Mat;

/// Rows of the cosine matrix computed at once when building the affinity: bounds the
/// temporary to `BLOCK × R` values whatever the buffer size.
const BLOCK: usize = 256;

/// Floor on every variance: a buffer of identical frames has zero spread, and dividing by it
/// would turn the Gaussian term into NaN.
const MIN_VARIANCE: f64 = 1e-12;

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

/// The state of one TransCLIP run on validated, normalised inputs.
struct Refiner<'a> {
    p: &'a TransClipParams,
    f: &'a Mat<f64>,
    shots: Option<&'a Shots<'a>>,
    log_y: &'a Mat<f64>,
    /// `A = W + Wᵀ` as neighbour lists over all `R = N + S` rows.
    affinity: Vec<Vec<(usize, f64)>>,
    /// `z` for every row: queries first, then the shots' fixed one-hot rows.
    z: Mat<f64>,
    mu: Mat<f64>,
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
        let s = shots.map_or(0, |sh| sh.labels.len());
        let mut rows = Mat::<f64>::zeros(n + s, d);
        rows.data[..n * d].copy_from_slice(&f.data);
        let mut z = Mat::<f64>::zeros(n + s, k);
        z.data[..n * k].copy_from_slice(&y_hat.data);
        let mut shot_sum = Mat::<f64>::zeros(k, d);
        if let Some(sh) = shots {
            rows.data[n * d..].copy_from_slice(&sh.f.data);
            for (i, &c) in sh.labels.iter().enumerate() {
                z.row_mut(n + i)[c] = 1.0;
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
        Refiner {
            p,
            f,
            shots,
            log_y,
            affinity: knn_affinity(&rows, p.knn),
            z,
            mu,
            var: vec![1.0 / d as f64; d],
            shot_w,
            shot_sum,
        }
    }

    fn run(mut self) -> Mat<f64> {
        for _ in 0..self.p.outer_steps {
            self.z_step();
            let m = self.mu_step();
            self.var_step(&m);
        }
        self.z_step();
        let (n, k) = (self.f.rows, self.z.cols);
        Mat::from_vec(n, k, self.z.data[..n * k].to_vec())
    }

    /// `sweeps` Jacobi sweeps: every query row from the previous sweep's `z`.
    fn z_step(&mut self) {
        let (n, k) = (self.f.rows, self.z.cols);
        let base = self.unary();
        let coupling = 1.0 / (2.0 * self.p.knn as f64);
        for _ in 0..self.p.sweeps {
            let mut next = base.clone();
            for i in 0..n {
                let row = next.row_mut(i);
                for &(r, a) in &self.affinity[i] {
                    add_to(row, self.z.row(r), coupling * a);
                }
                softmax_in_place(row);
            }
            self.z.data[..n * k].copy_from_slice(&next.data);
        }
    }

    /// `λ·log ŷ + G/g_divisor` with `G_ik = −½ Σ_j (f_ij − μ_kj)²/σ²_j`, expanded into
    /// `‖f_i‖²_w − 2 f_i·μ_k_w + ‖μ_k‖²_w` so the cross term is one GEMM.
    fn unary(&self) -> Mat<f64> {
        let (n, k) = (self.f.rows, self.mu.rows);
        let w: Vec<f64> = self.var.iter().map(|v| 1.0 / v).collect();
        let weighted_sq = |row: &[f64]| -> f64 { row.iter().zip(&w).map(|(x, w)| x * x * w).sum() };
        let mut mu_w = self.mu.clone();
        for c in 0..k {
            mu_w.row_mut(c)
                .iter_mut()
                .zip(&w)
                .for_each(|(m, w)| *m *= w);
        }
        let mu_sq: Vec<f64> = (0..k).map(|c| weighted_sq(self.mu.row(c))).collect();
        let mut out = self.f.matmul_t(&mu_w);
        for i in 0..n {
            let f_sq = weighted_sq(self.f.row(i));
            let (row, ly) = (out.row_mut(i), self.log_y.row(i));
            for c in 0..k {
                let g = -0.5 * (f_sq - 2.0 * row[c] + mu_sq[c]);
                row[c] = self.p.lambda * ly[c] + g / self.p.g_divisor;
            }
        }
        out
    }

    /// `μ_k = normalise((1/N) Σ_i z_ik f_i + w_s Σ_{s∈k} fs_s)`; returns `zᵀ·f` for the σ²-step.
    fn mu_step(&mut self) -> Mat<f64> {
        let (n, k) = (self.f.rows, self.z.cols);
        let zq = Mat::from_vec(n, k, self.z.data[..n * k].to_vec());
        let m = zq.t_matmul(self.f);
        for c in 0..k {
            let row = self.mu.row_mut(c);
            row.iter_mut()
                .zip(m.row(c))
                .for_each(|(mu, &v)| *mu = v / n as f64);
            add_to(row, self.shot_sum.row(c), self.shot_w);
            normalise(row);
        }
        m
    }

    /// The z-weighted (plus shot-weighted) squared deviation from the class means, shared by
    /// all classes. The query part is expanded so it needs only `zᵀ·f` (`m`) and `K × d` work:
    /// `Σ_i Σ_k z_ik (f_ij − μ_kj)² = Σ_i (Σ_k z_ik) f_ij² − 2 Σ_k μ_kj m_kj + Σ_k (Σ_i z_ik) μ_kj²`.
    fn var_step(&mut self, m: &Mat<f64>) {
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
            for ((a, &mu), &mm) in acc.iter_mut().zip(self.mu.row(c)).zip(m.row(c)) {
                *a += mass * mu * mu - 2.0 * mu * mm;
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
/// the largest `ŷ_ik` (lower index first on ties).
fn top_means(f: &Mat<f64>, y_hat: &Mat<f64>, top: usize) -> Mat<f64> {
    let (n, k) = (f.rows, y_hat.cols);
    let mut mu = Mat::<f64>::zeros(k, f.cols);
    let mut order: Vec<usize> = (0..n).collect();
    for c in 0..k {
        // A stable sort keeps equal confidences in index order.
        order.sort_by(|&a, &b| y_hat.data[b * k + c].total_cmp(&y_hat.data[a * k + c]));
        let row = mu.row_mut(c);
        for &i in order.iter().take(top) {
            add_to(row, f.row(i), y_hat.data[i * k + c]);
        }
        normalise(row);
    }
    mu
}

/// `A = W + Wᵀ` as neighbour lists, where row `i` of `W` holds the cosines of the `knn` other
/// rows most similar to it (lower index first on ties; a duplicate of `i` is still a neighbour,
/// only `i` itself is excluded). `x` must be L2-normalised.
fn knn_affinity(x: &Mat<f64>, knn: usize) -> Vec<Vec<(usize, f64)>> {
    let r = x.rows;
    let mut adj: Vec<Vec<(usize, f64)>> = vec![Vec::new(); r];
    let mut best: Vec<(f64, usize)> = Vec::with_capacity(knn + 1);
    for start in (0..r).step_by(BLOCK) {
        let end = (start + BLOCK).min(r);
        let idx: Vec<usize> = (start..end).collect();
        let cos = x.select_rows(&idx).matmul_t(x);
        for (bi, i) in (start..end).enumerate() {
            best.clear();
            for (j, &v) in cos.row(bi).iter().enumerate() {
                if j == i || (best.len() == knn && v <= best[knn - 1].0) {
                    continue;
                }
                // After every kept entry at least as large: earlier (lower) indices win ties.
                let at = best.partition_point(|&(b, _)| b >= v);
                best.insert(at, (v, j));
                best.truncate(knn);
            }
            for &(v, j) in &best {
                adj[i].push((j, v));
                adj[j].push((i, v));
            }
        }
    }
    adj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::transduct::TransductError;
    use std::time::Instant;

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
        let a = knn_affinity(&x, 1);
        // W: 0→1, 1→0, 2→0, 3→0 (cos 0, lowest index); A lists each W entry in both rows.
        assert_eq!(a[0], vec![(1, 1.0), (1, 1.0), (2, 1.0), (3, 0.0)]);
        assert_eq!(a[1], vec![(0, 1.0), (0, 1.0)]);
        assert_eq!(a[2], vec![(0, 1.0)]);
        assert_eq!(a[3], vec![(0, 0.0)]);
        assert_eq!(knn_affinity(&x, 10)[3].len(), 6);
        assert!(knn_affinity(&Mat::from_vec(1, 2, vec![1.0, 0.0]), 3)[0].is_empty());
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

    /// `cargo test --release --lib transduct -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn timing_n1024_k64_d512() {
        let (n, k, d) = (1024, 64, 512);
        let classes: Vec<usize> = (0..k).collect();
        let data = axes(n, k, d, &classes, 0.05, 10);
        let mut p = reference(false);
        p.scale = 100.0;
        let t0 = Instant::now();
        let o = transclip(&data.features, n, d, &data.text, k, None, None, &p).unwrap();
        eprintln!("transclip N={n} K={k} d={d}: {:?}", t0.elapsed());
        check_invariants(&o);
    }
}
