//! `clipd bench --transduct`: what refinement costs. The algorithms alone on synthetic
//! CLIP-like buffers over N and K (d = 512), and the pipeline's per-frame latency with and
//! without the refiner thread running beside it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use clipd::adapter::linalg::{normalize_rows, Mat};
use clipd::head::ZeroShotHead;
use clipd::refiner::{refine, BufferedFrame, RefineContext};
use clipd::rng::Rng;
use clipd::transduct::{Method, Params, Preset};

/// A buffer of `n` frames around `k` class centres in `d` dimensions, with text embeddings
/// near (not at) the centres, like CLIP features.
fn synthetic(n: usize, k: usize, d: usize, seed: u64) -> (Vec<BufferedFrame>, Mat<f32>) {
    let mut rng = Rng::new(seed);
    let centres: Vec<Vec<f32>> = (0..k)
        .map(|_| (0..d).map(|_| rng.normal() as f32).collect())
        .collect();
    let mut text = Vec::with_capacity(k * d);
    for c in &centres {
        text.extend(c.iter().map(|&v| v + 0.8 * rng.normal() as f32));
    }
    let text = normalize_rows(&Mat::from_vec(k, d, text)).0;
    let frames = (0..n)
        .map(|i| {
            let c = rng.below(k);
            let e: Vec<f32> = centres[c]
                .iter()
                .map(|&v| v + 1.5 * rng.normal() as f32)
                .collect();
            let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt();
            BufferedFrame {
                id: i as i64,
                ts_ms: i as i64,
                source: "bench".into(),
                class: c,
                embedding: e.iter().map(|v| v / norm).collect(),
            }
        })
        .collect();
    (frames, text)
}

/// Milliseconds for one refinement pass of `method` (default preset) on a synthetic buffer.
fn time_pass(method: Method, n: usize, k: usize, d: usize) -> Result<f64> {
    let (frames, text) = synthetic(n, k, d, (n * 31 + k) as u64);
    let labels: Vec<String> = (0..k).map(|i| format!("class {i}")).collect();
    let head = ZeroShotHead::new(labels.clone(), text.data.clone(), d, 100.0)?;
    let ctx = RefineContext {
        params: Params::new(method, Preset::Default, k, false),
        text,
        labels,
        classifier: Arc::new(head),
        logit_scale: 100.0,
        support: None,
        max_changed: None,
    };
    let started = Instant::now();
    refine(&ctx, &frames)?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// The scaling tables: N at K = 64, and K at N = 1024 (d = 512).
pub fn scaling() -> Result<()> {
    let d = 512;
    let methods = [
        Method::TransClip,
        Method::EmDirichlet,
        Method::HardEmDirichlet,
    ];
    println!("refinement pass, ms (default preset, d = {d}, synthetic buffers)");
    println!(
        "{:>6} {:>5}  {:>10}  {:>12}  {:>17}",
        "N", "K", "transclip", "em-dirichlet", "hard-em-dirichlet"
    );
    let mut points: Vec<(usize, usize)> = [256, 512, 1024, 2048, 4096, 8192]
        .iter()
        .map(|&n| (n, 64))
        .collect();
    points.extend([16, 32, 128, 256, 512].iter().map(|&k| (1024, k)));
    for (n, k) in points {
        let mut cells = Vec::new();
        for m in methods {
            cells.push(time_pass(m, n, k, d)?);
        }
        println!(
            "{n:>6} {k:>5}  {:>10.1}  {:>12.1}  {:>17.1}",
            cells[0], cells[1], cells[2]
        );
    }
    Ok(())
}

/// Percentiles of per-frame latencies (µs).
pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64
}

/// Per-frame latency summary of one pipeline run.
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub passes: u64,
    pub per_pass: Duration,
}

impl Latency {
    pub fn from_samples(mut us: Vec<u64>, passes: u64, per_pass: Duration) -> Latency {
        us.sort_unstable();
        Latency {
            p50_ms: percentile(&us, 0.5) / 1000.0,
            p99_ms: percentile(&us, 0.99) / 1000.0,
            passes,
            per_pass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranked_samples() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.99), 0.0);
    }

    #[test]
    fn synthetic_buffers_are_normalised_and_labelled() {
        let (f, t) = synthetic(20, 4, 8, 1);
        assert_eq!((f.len(), t.rows, t.cols), (20, 4, 8));
        for x in &f {
            let n: f32 = x.embedding.iter().map(|v| v * v).sum();
            assert!((n - 1.0).abs() < 1e-4 && x.class < 4);
        }
        assert!(time_pass(Method::TransClip, 16, 2, 8).unwrap() >= 0.0);
    }
}
