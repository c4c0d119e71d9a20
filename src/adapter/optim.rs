//! AdamW with a per-step cosine learning-rate schedule, as PyTorch's `AdamW` +
//! `CosineAnnealingLR(T_max = total steps, eta_min = 0)` compute them.

use super::linalg::{Mat, Real};

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub lr: f64,
    pub weight_decay: f64,
    pub eps: f64,
    pub beta1: f64,
    pub beta2: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            weight_decay: 0.01,
            eps: 1e-8,
            beta1: 0.9,
            beta2: 0.999,
        }
    }
}

/// The learning rate at `step` (0-based) of `total`: `lr · ½(1 + cos(π·step/total))`.
pub fn cosine_lr(lr: f64, step: usize, total: usize) -> f64 {
    if total == 0 {
        return lr;
    }
    let t = step.min(total) as f64 / total as f64;
    lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

pub struct AdamW<T> {
    cfg: AdamWConfig,
    m: Vec<Mat<T>>,
    v: Vec<Mat<T>>,
    t: i32,
}

impl<T: Real> AdamW<T> {
    pub fn new(cfg: AdamWConfig, params: &[&Mat<T>]) -> Self {
        let zeros = |p: &&Mat<T>| Mat::zeros(p.rows, p.cols);
        AdamW {
            cfg,
            m: params.iter().map(zeros).collect(),
            v: params.iter().map(zeros).collect(),
            t: 0,
        }
    }

    /// One update with learning rate `lr` (the schedule's value for this step).
    pub fn step(&mut self, params: Vec<&mut Mat<T>>, grads: &[Mat<T>], lr: f64) {
        self.t += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.t);
        let bc2 = 1.0 - c.beta2.powi(self.t);
        let (b1, b2) = (T::c(c.beta1), T::c(c.beta2));
        let decay = T::c(1.0 - lr * c.weight_decay);
        let step = T::c(lr / bc1);
        let bc2_sqrt = T::c(bc2.sqrt());
        let eps = T::c(c.eps);
        for (((p, g), m), v) in params
            .into_iter()
            .zip(grads)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            for (((pi, &gi), mi), vi) in p
                .data
                .iter_mut()
                .zip(&g.data)
                .zip(&mut m.data)
                .zip(&mut v.data)
            {
                *mi = b1 * *mi + (T::one() - b1) * gi;
                *vi = b2 * *vi + (T::one() - b2) * gi * gi;
                *pi = *pi * decay - step * *mi / (vi.sqrt() / bc2_sqrt + eps);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_weight_by_lr_against_its_gradient() {
        // Adam's first bias-corrected step is lr·sign(g) (up to eps); decay is applied first.
        let mut p = Mat::from_vec(1, 3, vec![1.0f64, -2.0, 0.5]);
        let g = Mat::from_vec(1, 3, vec![0.3, -4.0, 0.0]);
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.5,
            eps: 1e-12,
            ..Default::default()
        };
        let mut opt = AdamW::new(cfg, &[&p]);
        opt.step(vec![&mut p], &[g], 0.1);
        let want = [1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1, 0.5 * 0.95];
        for (a, b) in p.data.iter().zip(want) {
            assert!((a - b).abs() < 1e-9, "{:?}", p.data);
        }
    }

    #[test]
    fn cosine_schedule_endpoints() {
        assert_eq!(cosine_lr(1.0, 0, 10), 1.0);
        assert!((cosine_lr(1.0, 5, 10) - 0.5).abs() < 1e-12);
        assert!(cosine_lr(1.0, 10, 10).abs() < 1e-12);
    }
}
