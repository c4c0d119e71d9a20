//! Which frames of a source are worth classifying.
//!
//! A camera delivers 30 frames a second of mostly the same scene; an edge board cannot (and need
//! not) classify them all. Three cheap rules run before the encoder: keep every N-th frame, cap
//! the rate, and skip frames that barely differ from the last one kept (the novelty gate, on a
//! 32×32 grey thumbnail, so it costs microseconds against the encoder's milliseconds).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use image::RgbImage;

use super::queue::Overflow;

/// One source's frame policy.
#[derive(Debug, Clone, PartialEq)]
pub struct FramePolicy {
    /// Keep one frame in N.
    pub every_nth: u32,
    /// At most this many frames per second.
    pub max_fps: Option<f64>,
    /// Skip a frame whose thumbnail differs from the last kept one by less than this.
    pub novelty: Option<f32>,
    pub overflow: Overflow,
}

impl Default for FramePolicy {
    fn default() -> Self {
        FramePolicy {
            every_nth: 1,
            max_fps: None,
            novelty: None,
            overflow: Overflow::Block,
        }
    }
}

/// The rate rules, applied by a source's thread as frames arrive.
#[derive(Debug)]
pub struct RateGate {
    every_nth: u32,
    interval: Option<Duration>,
    /// Files are paced (the source waits), live frames are skipped: a file must not be lost,
    /// a camera frame that arrives too early is simply not needed.
    pace: bool,
    seen: u64,
    next_due: Option<Instant>,
}

/// The gate's verdict on one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Skip it (counted as skipped by policy).
    Skip,
    /// Keep it, but not before this long.
    After(Duration),
}

impl RateGate {
    pub fn new(p: &FramePolicy) -> Self {
        RateGate {
            every_nth: p.every_nth.max(1),
            interval: p
                .max_fps
                .filter(|f| *f > 0.0 && f.is_finite())
                .map(|f| Duration::from_secs_f64(1.0 / f)),
            pace: p.overflow == Overflow::Block,
            seen: 0,
            next_due: None,
        }
    }

    /// Decide on the frame that arrived at `now`.
    pub fn admit(&mut self, now: Instant) -> Admit {
        self.seen += 1;
        if (self.seen - 1) % u64::from(self.every_nth) != 0 {
            return Admit::Skip;
        }
        let Some(interval) = self.interval else {
            return Admit::Yes;
        };
        match self.next_due {
            Some(due) if now < due => {
                if self.pace {
                    self.next_due = Some(due + interval);
                    Admit::After(due - now)
                } else {
                    Admit::Skip
                }
            }
            _ => {
                self.next_due = Some(now + interval);
                Admit::Yes
            }
        }
    }
}

/// Side of the novelty thumbnail.
const THUMB: u32 = 32;

/// Samples per thumbnail cell along each axis.
const SAMPLES: u32 = 4;

/// A 32×32 grey thumbnail on a 0–1 scale: each cell averages a 4×4 grid of pixels spread over
/// its area, so sensor noise averages out and the cost does not grow with the frame size.
pub fn thumbnail(rgb: &RgbImage) -> Vec<f32> {
    let (w, h) = rgb.dimensions();
    let mut out = vec![0f32; (THUMB * THUMB) as usize];
    if w == 0 || h == 0 {
        return out;
    }
    let grid = THUMB * SAMPLES;
    // Centre of sample i of `grid` along an axis of `len` pixels.
    let at =
        |i: u32, len: u32| ((u64::from(2 * i + 1) * u64::from(len)) / u64::from(2 * grid)) as u32;
    for ty in 0..THUMB {
        for tx in 0..THUMB {
            let mut sum = 0f32;
            for sy in 0..SAMPLES {
                let y = at(ty * SAMPLES + sy, h);
                for sx in 0..SAMPLES {
                    let p = rgb.get_pixel(at(tx * SAMPLES + sx, w), y).0;
                    sum +=
                        0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]);
                }
            }
            out[(ty * THUMB + tx) as usize] = sum / (255.0 * (SAMPLES * SAMPLES) as f32);
        }
    }
    out
}

/// Mean absolute difference of two thumbnails.
pub fn difference(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return 1.0;
    }
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

/// The last kept thumbnail of one source, shared by the decode workers.
#[derive(Debug)]
pub struct NoveltyGate {
    threshold: f32,
    last: Mutex<Option<Vec<f32>>>,
}

impl NoveltyGate {
    pub fn new(threshold: f32) -> Self {
        NoveltyGate {
            threshold,
            last: Mutex::new(None),
        }
    }

    /// Whether the frame is new enough to classify; a kept frame becomes the reference.
    pub fn is_novel(&self, rgb: &RgbImage) -> bool {
        let thumb = thumbnail(rgb);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let novel = last
            .as_ref()
            .is_none_or(|prev| difference(prev, &thumb) >= self.threshold);
        if novel {
            *last = Some(thumb);
        }
        novel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(every_nth: u32, max_fps: Option<f64>, overflow: Overflow) -> FramePolicy {
        FramePolicy {
            every_nth,
            max_fps,
            novelty: None,
            overflow,
        }
    }

    #[test]
    fn every_nth_keeps_the_first_of_each_group() {
        let mut g = RateGate::new(&policy(3, None, Overflow::DropOldest));
        let now = Instant::now();
        let kept: Vec<bool> = (0..9).map(|_| g.admit(now) == Admit::Yes).collect();
        assert_eq!(
            kept,
            vec![true, false, false, true, false, false, true, false, false]
        );
    }

    #[test]
    fn rate_cap_skips_live_frames_and_paces_files() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // 10 fps cap on a 30 fps camera: one frame in three is kept.
        let mut live = RateGate::new(&policy(1, Some(10.0), Overflow::DropOldest));
        let kept = (0..30)
            .filter(|i| live.admit(ms(i * 1000 / 30)) == Admit::Yes)
            .count();
        assert!((10..=11).contains(&kept), "kept {kept}");
        // A file source asked for the same cap waits instead of losing frames.
        let mut files = RateGate::new(&policy(1, Some(10.0), Overflow::Block));
        assert_eq!(files.admit(ms(0)), Admit::Yes);
        assert_eq!(files.admit(ms(1)), Admit::After(Duration::from_millis(99)));
        assert_eq!(files.admit(ms(2)), Admit::After(Duration::from_millis(198)));
    }

    #[test]
    fn novelty_gate_skips_near_duplicates_and_keeps_changes() {
        let gate = NoveltyGate::new(0.02);
        let grey = RgbImage::from_pixel(640, 480, image::Rgb([100, 100, 100]));
        let mut noisy = grey.clone();
        // Sensor noise: ±2 levels on scattered pixels.
        for (i, p) in noisy.pixels_mut().enumerate() {
            if i % 7 == 0 {
                p.0 = [102, 98, 101];
            }
        }
        let mut changed = grey.clone();
        for y in 0..240 {
            for x in 0..320 {
                changed.put_pixel(x, y, image::Rgb([250, 250, 250]));
            }
        }
        assert!(gate.is_novel(&grey), "the first frame is always new");
        assert!(!gate.is_novel(&noisy));
        assert!(!gate.is_novel(&grey));
        assert!(gate.is_novel(&changed), "a quarter of the scene changed");
        assert!(!gate.is_novel(&changed));
        assert!(gate.is_novel(&grey), "compared with the last kept frame");
    }

    #[test]
    fn thumbnail_is_bounded_and_scale_free() {
        let small = RgbImage::from_pixel(5, 3, image::Rgb([255, 255, 255]));
        let t = thumbnail(&small);
        assert_eq!(t.len(), 1024);
        assert!(
            t.iter().all(|v| (v - 1.0).abs() < 1e-5),
            "every cell sampled"
        );
        let big = RgbImage::from_pixel(1920, 1080, image::Rgb([51, 51, 51]));
        let t = thumbnail(&big);
        assert!(t.iter().all(|v| (v - 0.2).abs() < 1e-3));
        assert!(difference(&t, &t) == 0.0);
        assert_eq!(thumbnail(&RgbImage::new(0, 0)).len(), 1024);
    }
}
