//! Online transductive refinement beside the pipeline: the head thread pushes every classified
//! frame into a [`RingBuffer`]; a refiner thread wakes every `every_frames` frames or
//! `every_secs` seconds, re-decides the whole buffer jointly with EM-Dirichlet or TransCLIP
//! (anchored by the adapter's shots when there are some), smooths per-source decisions, and
//! hands the result to the store thread as one [`WriteOp::Refine`]. Capture and inference only
//! ever take the buffer's lock for a push.

pub mod buffer;
pub mod evaluate;
pub mod smoothing;

use std::collections::HashMap;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::adapter::linalg::Mat;
use crate::head::{softmax, Classifier};
use crate::pipeline::FrameResult;
use crate::store::{now_ms, RefinementRecord, WriteOp};
use crate::transduct::{self, Method, Outcome, Params, Preset, TransductError};
pub use buffer::{BufferedFrame, RingBuffer};
pub use smoothing::{Smoother, SmoothingConfig};

/// `[refine]` in the config: present = the daemon refines.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefineConfig {
    /// `em-dirichlet`, `hard-em-dirichlet` or `transclip`.
    #[serde(default = "default_method")]
    pub method: Method,
    /// `default` (chosen on the benchmarks) or `reference` (the papers' settings).
    #[serde(default = "default_preset")]
    pub preset: Preset,
    /// Parameter overrides, `"key=value"` by the names in docs/transduction.md.
    #[serde(default)]
    pub set: Vec<String>,
    /// Frames in the rolling buffer.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// Refine after this many new frames…
    #[serde(default = "default_every_frames")]
    pub every_frames: usize,
    /// …or this many seconds with at least one new frame, whichever comes first.
    #[serde(default = "default_every_secs")]
    pub every_secs: f64,
    /// A pass that would change more than this share of its frames' labels is not applied
    /// (1 disables the guard): transduction should refine decisions, not overturn them, and a
    /// collapse onto a few clusters changes most labels at once.
    #[serde(default = "default_max_changed")]
    pub max_changed: f64,
    #[serde(default)]
    pub smoothing: SmoothingConfig,
}

fn default_max_changed() -> f64 {
    0.3
}

impl Default for RefineConfig {
    fn default() -> Self {
        RefineConfig {
            method: default_method(),
            preset: default_preset(),
            set: Vec::new(),
            buffer: default_buffer(),
            every_frames: default_every_frames(),
            every_secs: default_every_secs(),
            max_changed: default_max_changed(),
            smoothing: SmoothingConfig::default(),
        }
    }
}

/// EM-Dirichlet: on the validation split it was the method that helped (see docs/results.md).
fn default_method() -> Method {
    Method::EmDirichlet
}
fn default_preset() -> Preset {
    Preset::Default
}
fn default_buffer() -> usize {
    1024
}
fn default_every_frames() -> usize {
    256
}
fn default_every_secs() -> f64 {
    30.0
}

/// Anchors for few-shot refinement: the adapter's shots.
#[derive(Debug, Clone)]
pub struct Support {
    /// S×d normalised features.
    pub features: Mat<f32>,
    pub labels: Vec<usize>,
}

/// Everything a refinement pass needs besides the frames.
pub struct RefineContext {
    pub params: Params,
    /// K×d zero-shot class embeddings (TransCLIP's text side).
    pub text: Mat<f32>,
    pub labels: Vec<String>,
    /// What the pipeline classifies with (zero-shot or adapter): the starting probabilities.
    pub classifier: Arc<dyn Classifier>,
    /// The classifier's logit scale, to put EM-Dirichlet's temperature on the same footing.
    pub logit_scale: f32,
    pub support: Option<Support>,
    /// See [`RefineConfig::max_changed`]; `None` applies every pass.
    pub max_changed: Option<f64>,
}

impl RefineContext {
    /// The context for refining what `engine` classifies with `classifier` (its own
    /// classifier, shared): the engine's zero-shot class matrix, its class names, and the
    /// adapter's shots as anchors when it has them.
    pub fn for_engine(
        engine: &crate::engine::Engine,
        classifier: Arc<dyn Classifier>,
        params: Params,
        max_changed: Option<f64>,
    ) -> RefineContext {
        let labels: Vec<String> = engine.classes.iter().map(|c| c.name.clone()).collect();
        RefineContext {
            params,
            text: Mat::from_vec(
                labels.len(),
                engine.head.dim(),
                engine.head.weights().to_vec(),
            ),
            labels,
            classifier,
            logit_scale: engine.bundle.manifest.logit_scale,
            support: engine
                .adapter
                .as_ref()
                .and_then(|a| a.support.clone())
                .map(|(features, labels)| Support { features, labels }),
            max_changed,
        }
    }

    /// Build the parameters for `cfg` (errors name the bad `set` entry).
    pub fn params(cfg: &RefineConfig, k: usize, few_shot: bool) -> Result<Params, TransductError> {
        let mut p = Params::new(cfg.method, cfg.preset, k, few_shot);
        for s in &cfg.set {
            p.set_assignment(s)?;
        }
        p.validate()?;
        Ok(p)
    }
}

/// The result of one pass over a buffer.
#[derive(Debug, Clone)]
pub struct Pass {
    pub outcome: Outcome,
    /// Refined class and its score per frame (the start's, when the guard held the pass back).
    pub refined: Vec<(usize, f32)>,
    /// Labels changed by the pass as applied (0 when guarded).
    pub changed: usize,
    /// Labels the algorithm wanted to change, when the guard held the pass back.
    pub guarded: Option<usize>,
    pub duration: Duration,
}

/// Re-decide `frames` jointly.
pub fn refine(ctx: &RefineContext, frames: &[BufferedFrame]) -> Result<Pass, TransductError> {
    let started = Instant::now();
    let n = frames.len();
    let d = ctx.text.cols;
    let k = ctx.text.rows;
    let mut feats = Vec::with_capacity(n * d);
    let mut logits = Vec::with_capacity(n * k);
    for f in frames {
        feats.extend_from_slice(&f.embedding);
        logits.extend(ctx.classifier.logits(&f.embedding));
    }
    let support = ctx
        .support
        .as_ref()
        .map(|s| (s.features.data.as_slice(), s.labels.as_slice()));
    let outcome = match &ctx.params {
        Params::TransClip(p) => {
            transduct::transclip(&feats, n, d, &ctx.text.data, k, support, Some(&logits), p)?
        }
        Params::EmDirichlet(p) => {
            // Same probabilities EM-Dirichlet would build from cosines, softmax(T·cos), but
            // from the classifier's own logits (so an adapter's decisions are the start).
            let t = p.temperature as f32 / ctx.logit_scale.max(f32::MIN_POSITIVE);
            let probs = |rows: &mut [f32]| {
                for r in rows.chunks_mut(k) {
                    r.iter_mut().for_each(|v| *v *= t);
                    softmax(r);
                }
            };
            probs(&mut logits);
            let shot_probs = ctx.support.as_ref().map(|s| {
                let mut lp: Vec<f32> = (0..s.features.rows)
                    .flat_map(|i| ctx.classifier.logits(s.features.row(i)))
                    .collect();
                probs(&mut lp);
                lp
            });
            let support = match (&shot_probs, &ctx.support) {
                (Some(p), Some(s)) => Some((p.as_slice(), s.labels.as_slice())),
                _ => None,
            };
            transduct::em_dirichlet(&logits, n, k, support, p)?
        }
    };
    let refined: Vec<(usize, f32)> = outcome
        .pred
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let row = &outcome.z[i * outcome.k..(i + 1) * outcome.k];
            (c, row.iter().copied().fold(0.0, f32::max))
        })
        .collect();
    let changed = refined
        .iter()
        .zip(frames)
        .filter(|((c, _), f)| *c != f.class)
        .count();
    if ctx
        .max_changed
        .is_some_and(|m| changed as f64 > m * n as f64)
    {
        // Keep the start: each frame's own class with the classifier's probability.
        let kept = frames
            .iter()
            .map(|f| {
                let mut p = ctx.classifier.logits(&f.embedding);
                softmax(&mut p);
                (f.class, p.get(f.class).copied().unwrap_or(0.0))
            })
            .collect();
        return Ok(Pass {
            outcome,
            refined: kept,
            changed: 0,
            guarded: Some(changed),
            duration: started.elapsed(),
        });
    }
    Ok(Pass {
        outcome,
        refined,
        changed,
        guarded: None,
        duration: started.elapsed(),
    })
}

struct Shared {
    buffer: Mutex<RingBuffer>,
    wake: Condvar,
    stop: Mutex<bool>,
    live: Mutex<RefinerLive>,
}

/// What the refiner has done so far, for the daemon's status report.
#[derive(Debug, Default, Clone)]
pub struct RefinerLive {
    pub stats: RefinerStats,
    /// The last pass: its duration, when it ended (UTC ms) and how many labels it changed.
    pub last_duration: Option<Duration>,
    pub last_ts_ms: Option<i64>,
    pub last_changed: Option<u64>,
    /// Each source's smoothed state.
    pub states: std::collections::BTreeMap<String, String>,
}

/// The head thread's handle: push frames, then `finish` to run a last pass and stop.
#[derive(Clone)]
pub struct RefinerHandle {
    shared: Arc<Shared>,
    every_frames: usize,
}

impl RefinerHandle {
    /// Offer a pipeline result stored as row `id`: buffered when it was classified, carries its
    /// embedding and its label is one of `classes` (label → class index); skipped otherwise.
    pub fn push_result(&self, id: i64, r: &FrameResult, classes: &HashMap<String, usize>) {
        if let (Ok(c), Some(e)) = (&r.outcome, &r.embedding) {
            if let Some(&class) = classes.get(&c.label) {
                self.push(BufferedFrame {
                    id,
                    ts_ms: r.ts_ms,
                    source: r.source.clone(),
                    class,
                    embedding: e.clone(),
                });
            }
        }
    }

    /// Add a classified frame (never blocks on a running refinement).
    pub fn push(&self, f: BufferedFrame) {
        let wake = match self.shared.buffer.lock() {
            Ok(mut b) => {
                b.push(f);
                b.fresh() >= self.every_frames
            }
            Err(_) => false,
        };
        if wake {
            self.shared.wake.notify_one();
        }
    }
}

/// Start the refiner thread. It refines whenever `every_frames` new frames have arrived or
/// `every_secs` have passed with new frames, and once more for the frames left when stopped.
pub fn spawn(
    cfg: &RefineConfig,
    ctx: RefineContext,
    writer: SyncSender<WriteOp>,
) -> std::io::Result<(RefinerHandle, Refiner)> {
    let shared = Arc::new(Shared {
        buffer: Mutex::new(RingBuffer::new(cfg.buffer)),
        wake: Condvar::new(),
        stop: Mutex::new(false),
        live: Mutex::new(RefinerLive::default()),
    });
    let every_frames = cfg.every_frames.max(1);
    let every = Duration::from_secs_f64(cfg.every_secs.max(0.01));
    let smoothing = cfg.smoothing;
    let params_json = params_json(&ctx.params);
    let algorithm = ctx.params.method().name().to_string();
    let s = shared.clone();
    let thread = std::thread::Builder::new()
        .name("clipd-refiner".into())
        .spawn(move || {
            yield_to_pipeline();
            let mut smoother = Smoother::new(smoothing);
            let mut stats = RefinerStats::default();
            let mut last = Instant::now();
            loop {
                let (frames, stopping) = {
                    let Ok(mut b) = s.buffer.lock() else { break };
                    loop {
                        let stopping = s.stop.lock().map(|g| *g).unwrap_or(true);
                        let due =
                            b.fresh() >= every_frames || (b.fresh() > 0 && last.elapsed() >= every);
                        if stopping || due {
                            let frames = if b.fresh() > 0 {
                                b.snapshot()
                            } else {
                                Vec::new()
                            };
                            break (frames, stopping);
                        }
                        let wait = every
                            .saturating_sub(last.elapsed())
                            .max(Duration::from_millis(10));
                        b = match s.wake.wait_timeout(b, wait) {
                            Ok((g, _)) => g,
                            Err(_) => return stats,
                        };
                    }
                };
                last = Instant::now();
                if !frames.is_empty() {
                    match refine(&ctx, &frames) {
                        Ok(pass) => {
                            stats.passes += 1;
                            stats.total += pass.duration;
                            if let Some(would) = pass.guarded {
                                stats.guarded += 1;
                                log::info!(
                                    "refinement would change {would} of {} labels (more than max_changed); not applied",
                                    frames.len()
                                );
                            }
                            let record = to_record(
                                &ctx,
                                &frames,
                                &pass,
                                &algorithm,
                                &params_json,
                                &mut smoother,
                            );
                            stats.state_changes += record.state_changes.len() as u64;
                            if let Ok(mut live) = s.live.lock() {
                                live.stats = stats.clone();
                                live.last_duration = Some(pass.duration);
                                live.last_ts_ms = Some(record.ts_ms);
                                live.last_changed = Some(pass.changed as u64);
                                for f in &frames {
                                    if let Some(state) = smoother.state(&f.source) {
                                        live.states.insert(f.source.clone(), state.to_string());
                                    }
                                }
                            }
                            if writer.send(WriteOp::Refine(Box::new(record))).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            stats.failed += 1;
                            if let Ok(mut live) = s.live.lock() {
                                live.stats = stats.clone();
                            }
                            log::warn!("refinement of {} frames failed: {e}", frames.len());
                        }
                    }
                }
                if stopping {
                    break;
                }
            }
            stats
        })?;
    Ok((
        RefinerHandle {
            shared: shared.clone(),
            every_frames,
        },
        Refiner {
            shared,
            thread: Some(thread),
        },
    ))
}

/// Run this thread (and the helper threads it starts, which inherit its policy) only on CPU
/// time the pipeline leaves idle: on a board with two to four cores a refinement pass would
/// otherwise take cores from decoding and encoding and show up as frame latency. `SCHED_IDLE`
/// does that: the kernel runs the refiner only when a core has nothing else to do and preempts
/// it as soon as a frame is ready. Plain `nice 19` was not enough: at nice 19 the pass still
/// gets a time slice on a busy core, and frames waiting behind it raised the pipeline's p99
/// latency by about 30% (`clipd bench --transduct`, docs/results.md). When the pipeline keeps
/// every core busy, refinement waits: classification comes first. Where `SCHED_IDLE` is refused
/// the thread falls back to nice 19. Failing both is harmless and only logged.
fn yield_to_pipeline() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 names the calling thread; `param` is a valid sched_param that outlives
        // the call, which only reads it.
        let idle = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0;
        if idle {
            return;
        }
        let why = std::io::Error::last_os_error();
        // SAFETY: setpriority only reads its integer arguments; `who = 0` with PRIO_PROCESS
        // names the calling thread on Linux, where every thread is its own schedulable task.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
        if rc != 0 {
            log::debug!(
                "refiner: could not lower its priority ({why}; then {})",
                std::io::Error::last_os_error()
            );
        } else {
            log::debug!("refiner: SCHED_IDLE refused ({why}); running at nice 19");
        }
    }
}

fn params_json(p: &Params) -> String {
    serde_json::to_string(p).unwrap_or_else(|_| "{}".into())
}

fn to_record(
    ctx: &RefineContext,
    frames: &[BufferedFrame],
    pass: &Pass,
    algorithm: &str,
    params: &str,
    smoother: &mut Smoother,
) -> RefinementRecord {
    let name = |c: usize| ctx.labels.get(c).cloned().unwrap_or_default();
    let labels: Vec<(i64, String, f32)> = frames
        .iter()
        .zip(&pass.refined)
        .map(|(f, &(c, s))| (f.id, name(c), s))
        .collect();
    let votes: Vec<(String, i64, String)> = frames
        .iter()
        .zip(&pass.refined)
        .map(|(f, &(c, _))| (f.source.clone(), f.ts_ms, name(c)))
        .collect();
    RefinementRecord {
        ts_ms: now_ms(),
        algorithm: algorithm.to_string(),
        params: params.to_string(),
        n_frames: frames.len(),
        n_changed: pass.changed,
        duration_ms: pass.duration.as_millis() as u64,
        labels,
        state_changes: smoother.update(&votes),
    }
}

/// What the refiner did over its life.
#[derive(Debug, Default, Clone)]
pub struct RefinerStats {
    pub passes: u64,
    /// Passes held back by the `max_changed` guard.
    pub guarded: u64,
    pub failed: u64,
    pub state_changes: u64,
    pub total: Duration,
}

/// Reads the refiner's progress without touching its thread.
#[derive(Clone)]
pub struct RefinerMonitor(Arc<Shared>);

impl RefinerMonitor {
    pub fn snapshot(&self) -> RefinerLive {
        self.0.live.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Owner of the refiner thread.
pub struct Refiner {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<RefinerStats>>,
}

impl Refiner {
    /// A handle on the refiner's progress that outlives it (for status reports).
    pub fn live(&self) -> RefinerMonitor {
        RefinerMonitor(self.shared.clone())
    }

    /// Refine what is left, stop, and return the statistics.
    pub fn finish(mut self) -> RefinerStats {
        if let Ok(mut s) = self.shared.stop.lock() {
            *s = true;
        }
        self.shared.wake.notify_all();
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::ZeroShotHead;

    /// The refiner's thread, and any thread it starts, runs under SCHED_IDLE; the caller's
    /// thread is untouched.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_refiner_thread_and_its_helpers_run_idle() {
        // SAFETY: sched_getscheduler(0) only queries the calling thread.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let before = policy();
        let (own, helper) = std::thread::spawn(move || {
            yield_to_pipeline();
            let helper = std::thread::spawn(policy).join().unwrap();
            (policy(), helper)
        })
        .join()
        .unwrap();
        assert_eq!(own, libc::SCHED_IDLE);
        assert_eq!(helper, libc::SCHED_IDLE);
        assert_eq!(policy(), before);
        assert_ne!(before, libc::SCHED_IDLE);
    }

    /// Two classes along the x and y axes; frames near the axes, labelled by their start.
    fn context(method: &str) -> RefineContext {
        let text = Mat::from_vec(2, 3, vec![1.0, 0.0, 0.2, 0.0, 1.0, 0.2]);
        let head = ZeroShotHead::new(vec!["x".into(), "y".into()], text.data.clone(), 3, 10.0)
            .expect("head");
        let cfg = RefineConfig {
            method: method.parse().expect("method"),
            ..Default::default()
        };
        RefineContext {
            params: RefineContext::params(&cfg, 2, false).expect("params"),
            text: crate::adapter::linalg::normalize_rows(&text).0,
            labels: vec!["x".into(), "y".into()],
            classifier: Arc::new(head),
            logit_scale: 10.0,
            support: None,
            max_changed: None,
        }
    }

    fn frames() -> Vec<BufferedFrame> {
        let mut rng = crate::rng::Rng::new(3);
        (0..24)
            .map(|i| {
                let c = i % 2;
                let mut e = [0.05 * rng.normal() as f32; 3];
                e[c] += 1.0;
                e[2] = 0.3 * rng.normal() as f32;
                let n = e.iter().map(|v| v * v).sum::<f32>().sqrt();
                BufferedFrame {
                    id: i as i64 + 1,
                    ts_ms: i as i64,
                    source: "cam".into(),
                    class: c,
                    embedding: e.iter().map(|v| v / n).collect(),
                }
            })
            .collect()
    }

    #[test]
    fn every_method_keeps_clear_frames_and_reports_scores() {
        for m in ["transclip", "em-dirichlet", "hard-em-dirichlet"] {
            let fs = frames();
            let pass = refine(&context(m), &fs).expect("refine");
            assert_eq!(pass.refined.len(), fs.len());
            for (f, (c, s)) in fs.iter().zip(&pass.refined) {
                assert_eq!(*c, f.class, "{m}: frame {}", f.id);
                assert!((0.0..=1.0).contains(s) && s.is_finite());
            }
            assert_eq!(pass.changed, 0);
        }
    }

    #[test]
    fn the_guard_keeps_the_start_when_a_pass_would_overturn_too_much() {
        let mut fs = frames();
        // Claim the wrong start class for a third of the frames: refinement corrects them,
        // which is more change than a 10% guard allows.
        for f in fs.iter_mut().step_by(3) {
            f.class = 1 - f.class;
        }
        let mut ctx = context("transclip");
        let free = refine(&ctx, &fs).expect("refine");
        assert!(free.changed >= 8 && free.guarded.is_none());
        ctx.max_changed = Some(0.1);
        let held = refine(&ctx, &fs).expect("refine");
        assert_eq!(held.guarded, Some(free.changed));
        assert_eq!(held.changed, 0);
        for (f, (c, s)) in fs.iter().zip(&held.refined) {
            assert_eq!(*c, f.class);
            assert!((0.0..=1.0).contains(s));
        }
    }

    #[test]
    fn the_thread_refines_on_schedule_and_once_more_when_finished() {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        let cfg = RefineConfig {
            every_frames: 10,
            every_secs: 3600.0,
            smoothing: SmoothingConfig {
                window: 8,
                min_frames: 2,
                agreement: 0.4,
            },
            ..Default::default()
        };
        let (handle, refiner) = spawn(&cfg, context("transclip"), tx).expect("spawn");
        let fs = frames();
        for f in &fs[..12] {
            handle.push(f.clone());
        }
        // The first pass fires after 10 frames, without waiting for the hour.
        let first = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(WriteOp::Refine(r)) => r,
            other => panic!("expected a refinement, got {other:?}"),
        };
        assert!(first.n_frames >= 10);
        assert_eq!(first.algorithm, "transclip");
        assert!(first.params.contains("\"knn\""));
        for f in &fs[12..] {
            handle.push(f.clone());
        }
        let stats = refiner.finish();
        let mut last = None;
        while let Ok(WriteOp::Refine(r)) = rx.try_recv() {
            last = Some(r);
        }
        let last = last.expect("a final pass for the frames left");
        assert_eq!(last.n_frames, 24);
        assert_eq!(last.labels.len(), 24);
        assert!(stats.passes >= 2 && stats.failed == 0);
        // Alternating x/y frames never reach agreement on one state beyond the first.
        assert!(last.state_changes.len() <= 1);
    }
}
