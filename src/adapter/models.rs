//! The few-shot heads as differentiable functions of their parameters: forward passes for
//! inference and analytic backward passes for training. Inputs are always L2-normalised image
//! features (one per row) and the class text matrix `T` (K×d, rows normalised).
//!
//! | model            | logits                                                        | trains        |
//! |------------------|---------------------------------------------------------------|---------------|
//! | [`ResidualModel`]| `s · n(r_v·A_v(f) + (1−r_v)·f) · n(r_t·A_t(T) + (1−r_t)·T)ᵀ`   | A_v (and A_t) |
//! | [`CacheModel`]   | `s · f·Tᵀ + α · exp(−β(1 − f·Fᵀ)) · L`                         | F (Tip-F)     |
//! | [`LinearModel`]  | `f·Wᵀ + b`                                                    | W, b          |
//! | [`CosineModel`]  | `s · f · n(W)ᵀ` with W initialised from T                     | W             |
//!
//! `n(·)` normalises rows, `s` is the bundle's logit scale. JCLIP-Adapter is the residual
//! model with both adapters; CLIP-Adapter is the image-only case with a second ReLU.

use super::linalg::{cross_entropy, normalize_rows, normalize_rows_backward, Mat, Real};
use crate::rng::Rng;

/// Loss, gradients and accuracy of a model on one batch.
pub struct Step<T> {
    pub loss: T,
    /// One gradient per parameter, in [`Objective::params`] order.
    pub grads: Vec<Mat<T>>,
    pub correct: usize,
}

/// A head that can be trained with gradient descent on precomputed features.
pub trait Objective<T: Real>: Clone + Send + Sync {
    fn params(&self) -> Vec<&Mat<T>>;
    fn params_mut(&mut self) -> Vec<&mut Mat<T>>;
    /// Logits for each row of `x` (B×d, rows normalised).
    fn logits(&self, x: &Mat<T>) -> Mat<T>;
    /// Mean cross-entropy on (`x`, `y`) and its gradient.
    fn step(&self, x: &Mat<T>, y: &[usize]) -> Step<T>;
}

/// `x·W1 → ReLU → ·W2 (→ ReLU)`, no biases: the adapter of CLIP-Adapter and JCLIP-Adapter.
#[derive(Debug, Clone)]
pub struct Bottleneck<T> {
    /// d × h.
    pub w1: Mat<T>,
    /// h × d.
    pub w2: Mat<T>,
    /// CLIP-Adapter ends with a second ReLU; JCLIP's `A` does not.
    pub relu_out: bool,
}

struct BottleneckTrace<T> {
    hidden: Mat<T>,
    out: Mat<T>,
}

impl<T: Real> Bottleneck<T> {
    /// PyTorch's default `Linear` initialisation, U(−1/√fan_in, 1/√fan_in), from `rng`.
    pub fn init(dim: usize, hidden: usize, relu_out: bool, rng: &mut Rng) -> Self {
        let mut uniform = |rows: usize, cols: usize| {
            let bound = 1.0 / (rows as f64).sqrt();
            let data = (0..rows * cols)
                .map(|_| T::c(rng.range(-bound, bound)))
                .collect();
            Mat::from_vec(rows, cols, data)
        };
        let w1 = uniform(dim, hidden);
        let w2 = uniform(hidden, dim);
        Bottleneck { w1, w2, relu_out }
    }

    fn forward(&self, x: &Mat<T>) -> BottleneckTrace<T> {
        let hidden = x.matmul(&self.w1).relu();
        let mut out = hidden.matmul(&self.w2);
        if self.relu_out {
            out = out.relu();
        }
        BottleneckTrace { hidden, out }
    }

    /// Gradients of `w1`, `w2` given the gradient of the output (the input is a constant).
    fn backward(&self, x: &Mat<T>, t: &BottleneckTrace<T>, mut d_out: Mat<T>) -> [Mat<T>; 2] {
        if self.relu_out {
            d_out.relu_mask(&t.out);
        }
        let dw2 = t.hidden.t_matmul(&d_out);
        let mut dh = d_out.matmul_t(&self.w2);
        dh.relu_mask(&t.hidden);
        let dw1 = x.t_matmul(&dh);
        [dw1, dw2]
    }
}

/// `n(r·A(x) + (1−r)·x)` plus what its backward pass needs.
struct ResidualTrace<T> {
    adapter: BottleneckTrace<T>,
    normed: Mat<T>,
    norms: Vec<T>,
}

fn residual_forward<T: Real>(a: &Bottleneck<T>, ratio: T, x: &Mat<T>) -> ResidualTrace<T> {
    let adapter = a.forward(x);
    let mixed = adapter.out.lerp(ratio, x, T::one() - ratio);
    let (normed, norms) = normalize_rows(&mixed);
    ResidualTrace {
        adapter,
        normed,
        norms,
    }
}

fn residual_backward<T: Real>(
    a: &Bottleneck<T>,
    ratio: T,
    x: &Mat<T>,
    t: &ResidualTrace<T>,
    d_normed: &Mat<T>,
) -> [Mat<T>; 2] {
    let mut d_mixed = normalize_rows_backward(d_normed, &t.normed, &t.norms);
    d_mixed.scale(ratio);
    a.backward(x, &t.adapter, d_mixed)
}

/// Apply a residual adapter to normalised rows (inference).
pub fn residual_apply<T: Real>(a: &Bottleneck<T>, ratio: T, x: &Mat<T>) -> Mat<T> {
    residual_forward(a, ratio, x).normed
}

/// JCLIP-Adapter (`text` adapter present) or CLIP-Adapter (image side only).
#[derive(Debug, Clone)]
pub struct ResidualModel<T> {
    pub image: Bottleneck<T>,
    pub image_ratio: T,
    pub text_adapter: Option<Bottleneck<T>>,
    pub text_ratio: T,
    /// K×d normalised class text embeddings.
    pub text: Mat<T>,
    pub scale: T,
}

impl<T: Real> ResidualModel<T> {
    /// The class matrix after the text adapter (what an adapter file stores).
    pub fn adapted_text(&self) -> Mat<T> {
        match &self.text_adapter {
            Some(a) => residual_apply(a, self.text_ratio, &self.text),
            None => self.text.clone(),
        }
    }
}

impl<T: Real> Objective<T> for ResidualModel<T> {
    fn params(&self) -> Vec<&Mat<T>> {
        let mut p = vec![&self.image.w1, &self.image.w2];
        if let Some(a) = &self.text_adapter {
            p.extend([&a.w1, &a.w2]);
        }
        p
    }

    fn params_mut(&mut self) -> Vec<&mut Mat<T>> {
        let mut p = vec![&mut self.image.w1, &mut self.image.w2];
        if let Some(a) = &mut self.text_adapter {
            p.extend([&mut a.w1, &mut a.w2]);
        }
        p
    }

    fn logits(&self, x: &Mat<T>) -> Mat<T> {
        let f = residual_apply(&self.image, self.image_ratio, x);
        let mut z = f.matmul_t(&self.adapted_text());
        z.scale(self.scale);
        z
    }

    fn step(&self, x: &Mat<T>, y: &[usize]) -> Step<T> {
        let img = residual_forward(&self.image, self.image_ratio, x);
        let txt = self
            .text_adapter
            .as_ref()
            .map(|a| residual_forward(a, self.text_ratio, &self.text));
        let w = txt.as_ref().map_or(&self.text, |t| &t.normed);
        let mut z = img.normed.matmul_t(w);
        z.scale(self.scale);
        let (loss, mut dz, correct) = cross_entropy(&z, y);
        dz.scale(self.scale);
        let d_img = dz.matmul(w);
        let mut grads: Vec<Mat<T>> =
            residual_backward(&self.image, self.image_ratio, x, &img, &d_img).into();
        if let (Some(a), Some(t)) = (&self.text_adapter, &txt) {
            let d_txt = dz.t_matmul(&img.normed);
            grads.extend(residual_backward(a, self.text_ratio, &self.text, t, &d_txt));
        }
        Step {
            loss,
            grads,
            correct,
        }
    }
}

/// Tip-Adapter's cache: keys `F` (S×d) with one-hot values given by `labels`.
#[derive(Debug, Clone)]
pub struct CacheModel<T> {
    pub keys: Mat<T>,
    pub labels: Vec<usize>,
    pub text: Mat<T>,
    pub alpha: T,
    pub beta: T,
    pub scale: T,
}

impl<T: Real> CacheModel<T> {
    /// `exp(−β(1 − f·Fᵀ))` (B×S).
    fn affinity(&self, x: &Mat<T>) -> Mat<T> {
        let mut a = x.matmul_t(&self.keys);
        let beta = self.beta;
        a.data
            .iter_mut()
            .for_each(|v| *v = (-beta * (T::one() - *v)).exp());
        a
    }

    /// Sum the affinities per class: `E · L` without materialising the one-hot matrix.
    fn to_classes(&self, e: &Mat<T>, classes: usize) -> Mat<T> {
        let mut out = Mat::zeros(e.rows, classes);
        for b in 0..e.rows {
            let (er, or) = (e.row(b), out.row_mut(b));
            for (&v, &l) in er.iter().zip(&self.labels) {
                or[l] += v;
            }
        }
        out
    }
}

impl<T: Real> Objective<T> for CacheModel<T> {
    fn params(&self) -> Vec<&Mat<T>> {
        vec![&self.keys]
    }

    fn params_mut(&mut self) -> Vec<&mut Mat<T>> {
        vec![&mut self.keys]
    }

    fn logits(&self, x: &Mat<T>) -> Mat<T> {
        let mut z = x.matmul_t(&self.text);
        z.scale(self.scale);
        let e = self.affinity(x);
        let cache = self.to_classes(&e, self.text.rows);
        z.lerp(T::one(), &cache, self.alpha)
    }

    fn step(&self, x: &Mat<T>, y: &[usize]) -> Step<T> {
        let mut z = x.matmul_t(&self.text);
        z.scale(self.scale);
        let e = self.affinity(x);
        let z = z.lerp(T::one(), &self.to_classes(&e, self.text.rows), self.alpha);
        let (loss, dz, correct) = cross_entropy(&z, y);
        // d(α·E·L)/dE picks the logit gradient of each key's class; dE/dA = β·E.
        let mut da = e;
        for b in 0..da.rows {
            let dzr = dz.row(b);
            for (v, &l) in da.row_mut(b).iter_mut().zip(&self.labels) {
                *v = self.alpha * dzr[l] * self.beta * *v;
            }
        }
        let d_keys = da.t_matmul(x);
        Step {
            loss,
            grads: vec![d_keys],
            correct,
        }
    }
}

/// Logistic regression on normalised features.
#[derive(Debug, Clone)]
pub struct LinearModel<T> {
    /// K×d.
    pub weight: Mat<T>,
    /// 1×K.
    pub bias: Mat<T>,
}

impl<T: Real> Objective<T> for LinearModel<T> {
    fn params(&self) -> Vec<&Mat<T>> {
        vec![&self.weight, &self.bias]
    }

    fn params_mut(&mut self) -> Vec<&mut Mat<T>> {
        vec![&mut self.weight, &mut self.bias]
    }

    fn logits(&self, x: &Mat<T>) -> Mat<T> {
        let mut z = x.matmul_t(&self.weight);
        for b in 0..z.rows {
            for (v, &bb) in z.row_mut(b).iter_mut().zip(&self.bias.data) {
                *v += bb;
            }
        }
        z
    }

    fn step(&self, x: &Mat<T>, y: &[usize]) -> Step<T> {
        let (loss, dz, correct) = cross_entropy(&self.logits(x), y);
        let dw = dz.t_matmul(x);
        let mut db = Mat::zeros(1, dz.cols);
        for b in 0..dz.rows {
            for (g, &v) in db.data.iter_mut().zip(dz.row(b)) {
                *g += v;
            }
        }
        Step {
            loss,
            grads: vec![dw, db],
            correct,
        }
    }
}

/// A cosine classifier `s · f · n(W)ᵀ`; the cross-modal probe initialises W from the text.
#[derive(Debug, Clone)]
pub struct CosineModel<T> {
    /// K×d (any scale; normalised in the forward pass).
    pub weight: Mat<T>,
    pub scale: T,
}

impl<T: Real> Objective<T> for CosineModel<T> {
    fn params(&self) -> Vec<&Mat<T>> {
        vec![&self.weight]
    }

    fn params_mut(&mut self) -> Vec<&mut Mat<T>> {
        vec![&mut self.weight]
    }

    fn logits(&self, x: &Mat<T>) -> Mat<T> {
        let (w, _) = normalize_rows(&self.weight);
        let mut z = x.matmul_t(&w);
        z.scale(self.scale);
        z
    }

    fn step(&self, x: &Mat<T>, y: &[usize]) -> Step<T> {
        let (w, norms) = normalize_rows(&self.weight);
        let mut z = x.matmul_t(&w);
        z.scale(self.scale);
        let (loss, mut dz, correct) = cross_entropy(&z, y);
        dz.scale(self.scale);
        let dwn = dz.t_matmul(x);
        Step {
            loss,
            grads: vec![normalize_rows_backward(&dwn, &w, &norms)],
            correct,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Normalised random rows.
    pub fn random_rows(rows: usize, cols: usize, rng: &mut Rng) -> Mat<f64> {
        let data = (0..rows * cols).map(|_| rng.normal()).collect();
        normalize_rows(&Mat::from_vec(rows, cols, data)).0
    }

    /// Max over parameters of ‖analytic − numeric‖ / max(‖analytic‖, ‖numeric‖), with central
    /// differences in f64.
    fn gradient_error<M: Objective<f64>>(model: &M, x: &Mat<f64>, y: &[usize]) -> f64 {
        let analytic = model.step(x, y).grads;
        let h = 1e-6;
        let mut worst: f64 = 0.0;
        for (p, g) in analytic.iter().enumerate() {
            let mut numeric = vec![0.0; g.data.len()];
            for (i, n) in numeric.iter_mut().enumerate() {
                let mut plus = model.clone();
                plus.params_mut()[p].data[i] += h;
                let mut minus = model.clone();
                minus.params_mut()[p].data[i] -= h;
                *n = (plus.step(x, y).loss - minus.step(x, y).loss) / (2.0 * h);
            }
            let diff: f64 = g
                .data
                .iter()
                .zip(&numeric)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                .sqrt();
            let scale = g
                .sq_norm()
                .sqrt()
                .max(numeric.iter().map(|v| v * v).sum::<f64>().sqrt());
            assert!(scale > 1e-8, "parameter {p} has no gradient at all");
            worst = worst.max(diff / scale);
        }
        worst
    }

    fn setup(seed: u64) -> (Mat<f64>, Vec<usize>, Mat<f64>, Rng) {
        let mut rng = Rng::new(seed);
        let (b, d, k) = (7, 8, 4);
        let x = random_rows(b, d, &mut rng);
        let y: Vec<usize> = (0..b).map(|i| i % k).collect();
        let t = random_rows(k, d, &mut rng);
        (x, y, t, rng)
    }

    #[test]
    fn jclip_gradients_match_finite_differences() {
        for seed in 0..3 {
            let (x, y, text, mut rng) = setup(seed);
            let m = ResidualModel {
                image: Bottleneck::init(8, 2, false, &mut rng),
                image_ratio: 0.3,
                text_adapter: Some(Bottleneck::init(8, 2, false, &mut rng)),
                text_ratio: 0.6,
                text,
                scale: 20.0,
            };
            let e = gradient_error(&m, &x, &y);
            assert!(e < 1e-3, "relative error {e}");
        }
    }

    #[test]
    fn clip_adapter_gradients_match_finite_differences() {
        for seed in 0..3 {
            let (x, y, text, mut rng) = setup(seed);
            let m = ResidualModel {
                image: Bottleneck::init(8, 2, true, &mut rng),
                image_ratio: 0.2,
                text_adapter: None,
                text_ratio: 0.0,
                text,
                scale: 100.0,
            };
            let e = gradient_error(&m, &x, &y);
            assert!(e < 1e-3, "relative error {e}");
        }
    }

    #[test]
    fn tip_f_gradients_match_finite_differences() {
        for seed in 0..3 {
            let (x, y, text, mut rng) = setup(seed);
            let m = CacheModel {
                keys: random_rows(6, 8, &mut rng),
                labels: vec![0, 1, 2, 3, 1, 2],
                text,
                alpha: 1.7,
                beta: 3.0,
                scale: 30.0,
            };
            let e = gradient_error(&m, &x, &y);
            assert!(e < 1e-3, "relative error {e}");
        }
    }

    #[test]
    fn linear_and_cross_modal_gradients_match_finite_differences() {
        for seed in 0..3 {
            let (x, y, text, mut rng) = setup(seed);
            let lin = LinearModel {
                weight: random_rows(4, 8, &mut rng),
                bias: Mat::from_vec(1, 4, vec![0.1, -0.2, 0.3, 0.0]),
            };
            let e = gradient_error(&lin, &x, &y);
            assert!(e < 1e-3, "linear: relative error {e}");
            let mut w = text.clone();
            w.scale(1.7);
            let cos = CosineModel {
                weight: w,
                scale: 50.0,
            };
            let e = gradient_error(&cos, &x, &y);
            assert!(e < 1e-3, "cross-modal: relative error {e}");
        }
    }

    #[test]
    fn tip_logits_match_a_hand_computed_case() {
        // d = 2, K = 2 classes, S = 2 cache entries (one per class).
        let text = Mat::from_vec(2, 2, vec![1.0, 0.0, 0.0, 1.0]);
        let keys = Mat::from_vec(2, 2, vec![0.6, 0.8, 1.0, 0.0]);
        let m = CacheModel {
            keys,
            labels: vec![1, 0],
            text,
            alpha: 2.0,
            beta: 5.0,
            scale: 10.0,
        };
        let f = Mat::from_vec(1, 2, vec![0.8, 0.6]);
        let z = m.logits(&f);
        // clip: 10·[0.8, 0.6]; affinities: key0 cos 0.96 → exp(−5·0.04), key1 cos 0.8 → exp(−1).
        let z0 = 8.0 + 2.0 * (-1.0f64).exp();
        let z1 = 6.0 + 2.0 * (-0.2f64).exp();
        assert!((z.data[0] - z0).abs() < 1e-12, "{:?}", z.data);
        assert!((z.data[1] - z1).abs() < 1e-12, "{:?}", z.data);
    }

    #[test]
    fn zero_ratio_residual_model_is_zero_shot() {
        let (x, _, text, mut rng) = setup(9);
        let m = ResidualModel {
            image: Bottleneck::init(8, 2, false, &mut rng),
            image_ratio: 0.0,
            text_adapter: Some(Bottleneck::init(8, 2, false, &mut rng)),
            text_ratio: 0.0,
            text: text.clone(),
            scale: 10.0,
        };
        let mut want = x.matmul_t(&text);
        want.scale(10.0);
        let got = m.logits(&x);
        for (a, b) in got.data.iter().zip(&want.data) {
            assert!((a - b).abs() < 1e-12);
        }
    }
}
