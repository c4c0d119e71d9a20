//! Offline evaluation of refinement on labelled features: the same pass the daemon runs, fed
//! either as a stream of windows in which a few classes dominate at a time (what a camera sees:
//! one scene for a while, then another) or as one buffer holding everything.

use std::time::Instant;

use super::{refine, BufferedFrame, RefineContext};
use crate::adapter::linalg::Mat;
use crate::rng::Rng;
use crate::transduct::TransductError;

/// Split the frames into windows where `dominant` classes at a time supply most frames.
///
/// Classes are shuffled into groups of `dominant`; each group gets one window. Of every class's
/// frames, the first `1 − background` share goes to its group's window and the rest is dealt
/// round-robin over all windows as background, so each window mixes a few dominant classes
/// with a sprinkling of everything else. Every frame is in exactly one window.
pub fn stream_windows(
    labels: &[usize],
    classes: usize,
    dominant: usize,
    background: f64,
    seed: u64,
) -> Vec<Vec<usize>> {
    let mut rng = Rng::derive(seed, &[0x57ea]);
    let mut order: Vec<usize> = (0..classes).collect();
    rng.shuffle(&mut order);
    let groups: Vec<&[usize]> = order.chunks(dominant.max(1)).collect();
    let mut group_of = vec![0; classes];
    for (g, members) in groups.iter().enumerate() {
        for &c in *members {
            group_of[c] = g;
        }
    }
    let mut windows: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
    let mut spill = Vec::new();
    for c in 0..classes {
        let mut frames: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        rng.shuffle(&mut frames);
        let keep = ((frames.len() as f64) * (1.0 - background.clamp(0.0, 1.0))).round() as usize;
        windows[group_of[c]].extend_from_slice(&frames[..keep]);
        spill.extend_from_slice(&frames[keep..]);
    }
    rng.shuffle(&mut spill);
    let n = windows.len().max(1);
    for (i, f) in spill.into_iter().enumerate() {
        windows[i % n].push(f);
    }
    for w in &mut windows {
        rng.shuffle(w);
    }
    windows.retain(|w| !w.is_empty());
    windows
}

/// Top-1 accuracy of the start (the classifier alone) and after refining each window, plus the
/// mean milliseconds per window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    pub base_top1: f64,
    pub refined_top1: f64,
    pub ms_per_window: f64,
}

/// Refine `windows` of the labelled rows `x`/`y` (normalised features) and score them.
pub fn evaluate(
    ctx: &RefineContext,
    x: &Mat<f32>,
    y: &[usize],
    windows: &[Vec<usize>],
) -> Result<Scores, TransductError> {
    let (mut base, mut refined, mut total) = (0usize, 0usize, 0usize);
    let started = Instant::now();
    for w in windows {
        let frames: Vec<BufferedFrame> = w
            .iter()
            .map(|&i| {
                let e = x.row(i).to_vec();
                let logits = ctx.classifier.logits(&e);
                BufferedFrame {
                    id: i as i64,
                    ts_ms: i as i64,
                    source: "eval".into(),
                    class: crate::adapter::linalg::argmax(&logits),
                    embedding: e,
                }
            })
            .collect();
        let pass = refine(ctx, &frames)?;
        for ((f, &(c, _)), &i) in frames.iter().zip(&pass.refined).zip(w) {
            base += usize::from(f.class == y[i]);
            refined += usize::from(c == y[i]);
        }
        total += w.len();
    }
    let t = total.max(1) as f64;
    Ok(Scores {
        base_top1: base as f64 / t,
        refined_top1: refined as f64 / t,
        ms_per_window: started.elapsed().as_secs_f64() * 1000.0 / windows.len().max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_frame_once_and_are_dominated_by_few_classes() {
        let labels: Vec<usize> = (0..500).map(|i| i % 20).collect();
        let w = stream_windows(&labels, 20, 4, 0.2, 1);
        assert_eq!(w.len(), 5);
        let mut all: Vec<usize> = w.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..500).collect::<Vec<_>>());
        for win in &w {
            let mut counts = [0usize; 20];
            for &i in win {
                counts[labels[i]] += 1;
            }
            counts.sort_unstable_by(|a, b| b.cmp(a));
            let top4: usize = counts[..4].iter().sum();
            assert!(
                top4 * 10 >= win.len() * 7,
                "top-4 classes hold {top4} of {}",
                win.len()
            );
        }
        assert_eq!(w, stream_windows(&labels, 20, 4, 0.2, 1));
    }
}
