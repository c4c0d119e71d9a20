//! `clipd bench --transduct`: what refinement costs. The algorithms alone on synthetic
//! CLIP-like buffers over N and K (d = 512), and the pipeline's per-frame latency with and
//! without the refiner thread running beside it: fed as fast as frames decode (saturated, where
//! any extra CPU work must show) and paced like a camera below the pipeline's capacity (what a
//! deployment sees).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

use clipd::adapter::linalg::{normalize_rows, Mat};
use clipd::encoder::{EncoderOptions, TractImageEncoder};
use clipd::engine::Engine;
use clipd::head::{Classifier, ZeroShotHead};
use clipd::pipeline::{self, FrameResult, Pipeline, PipelineOptions, SinkError};
use clipd::preprocess::Transform;
use clipd::refiner::{
    refine, BufferedFrame, RefineConfig, RefineContext, RefinerHandle, RefinerStats,
};
use clipd::rng::Rng;
use clipd::source::{self, Frame, FrameSource, Next, Payload, SourceError};
use clipd::store::{BatchWriter, Store, StoreOptions, WriteOp};
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
#[derive(Debug, Clone)]
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

/// The pipeline half of the benchmark: frame latency without and with the refiner.
#[allow(dead_code)] // reached only through `clipd bench --transduct` (src/cli/bench.rs)
pub mod latency {
    use super::*;

    /// Repetitions of each latency comparison. Within a round the runs without and with the
    /// refiner alternate (ABBA over rounds), so drift on a shared machine hits both alike; the
    /// figures reported are medians over rounds.
    const ROUNDS: usize = 5;

    /// Frames per run: the config's frames, repeated up to this many, so the refiner's buffer
    /// fills (every pass after the first 1024 frames refines a full buffer) and p99 rests on
    /// enough samples.
    const FRAMES_PER_RUN: usize = 2048;

    /// The paced feed's frame rate as a share of the capacity measured without the refiner.
    const PACED_LOAD: f64 = 0.5;

    /// The refiner as the benchmark runs it: TransCLIP (default preset) over a 1024-frame buffer,
    /// a pass every `every_frames` frames (the daemon's default is 256; `clipd bench --transduct
    /// --refine-every 64` stresses it four times harder), with `set` overriding parameters
    /// (`--refine-set threads=1`).
    pub fn refine_config(every_frames: usize, set: &[String]) -> RefineConfig {
        RefineConfig {
            method: Method::TransClip,
            every_frames,
            buffer: 1024,
            set: set.to_vec(),
            ..Default::default()
        }
    }

    /// How frames reach the pipeline.
    #[derive(Debug, Clone, Copy)]
    enum Feed {
        /// As fast as the pipeline takes them; latency from the start of decoding (the pipeline's
        /// own figure).
        Saturated,
        /// One frame every interval, like a camera; latency from the moment the frame was due, so
        /// waiting behind a slow frame counts.
        Paced(Duration),
    }

    /// A file list released at a fixed rate. Frame `i` is due at `start + i·interval` whatever
    /// happened before (a late pipeline does not slow a camera down); due times are recorded by
    /// sequence number for the sink.
    pub(super) struct PacedSource {
        pub(super) files: Vec<PathBuf>,
        pub(super) next: usize,
        pub(super) interval: Duration,
        pub(super) start: Option<Instant>,
        pub(super) due: Arc<Mutex<Vec<Instant>>>,
    }

    impl FrameSource for PacedSource {
        fn name(&self) -> &str {
            "bench"
        }

        fn next(&mut self) -> Result<Next, SourceError> {
            let Some(path) = self.files.get(self.next) else {
                return Ok(Next::Done);
            };
            let start = *self.start.get_or_insert_with(Instant::now);
            let due = start + self.interval.mul_f64(self.next as f64);
            let now = Instant::now();
            if now < due {
                return Ok(Next::Wait(due - now));
            }
            if let Ok(mut d) = self.due.lock() {
                d.push(due);
            }
            self.next += 1;
            Ok(Next::Frame(Frame {
                source: "bench".into(),
                reference: path.display().to_string(),
                payload: Payload::File(path.clone()),
                truth: None,
            }))
        }
    }

    /// Stores every frame, hands classified frames to the refiner, and records each frame's
    /// latency.
    struct LatencySink {
        tx: SyncSender<WriteOp>,
        model_id: String,
        adapter_id: Option<String>,
        refiner: Option<(RefinerHandle, HashMap<String, usize>)>,
        /// Paced feeds: when each frame was due, by sequence number.
        due: Option<Arc<Mutex<Vec<Instant>>>>,
        latencies: Vec<u64>,
    }

    impl pipeline::Sink for LatencySink {
        fn accept(&mut self, r: FrameResult) -> Result<(), SinkError> {
            let latency = match &self.due {
                None => r.latency_us,
                Some(due) => due
                    .lock()
                    .ok()
                    .and_then(|d| {
                        d.get(r.seq as usize)
                            .map(|t| t.elapsed().as_micros() as u64)
                    })
                    .unwrap_or(r.latency_us),
            };
            self.latencies.push(latency);
            let id = r.seq as i64 + 1;
            if let Some((refiner, classes)) = &self.refiner {
                refiner.push_result(id, &r, classes);
            }
            let mut rec = r.into_record(&self.model_id);
            rec.id = Some(id);
            rec.embedding = None;
            rec.adapter_id = self.adapter_id.clone();
            self.tx
                .send(WriteOp::Frame(rec))
                .map_err(|_| SinkError::WriterStopped)
        }
    }

    /// One pipeline run over `files`.
    struct Run {
        /// Per-frame latencies, µs.
        latencies: Vec<u64>,
        /// Frames per second the pipeline sustained.
        fps: f64,
        refiner: RefinerStats,
    }

    /// Runs the whole pipeline (decode, encode at batch 1, head, store) over `files` once.
    fn run_pipeline(
        engine: &Engine,
        cfg: &clipd::config::Loaded,
        files: &[PathBuf],
        threads: usize,
        db: &Path,
        feed: Feed,
        refine: Option<&RefineConfig>,
    ) -> Result<Run> {
        let with_refiner = refine.is_some();
        let c = &cfg.config;
        let labels: Vec<String> = engine.classes.iter().map(|c| c.name.clone()).collect();
        let store = Store::open(db, &StoreOptions::default())?;
        let (tx, rx) = sync_channel::<WriteOp>(c.engine.queue);
        let writer = BatchWriter::spawn(store, rx)?;
        let classifier: Arc<dyn Classifier> = Arc::from(engine.classifier());
        let (refiner, handle) = if let Some(rc) = refine {
            let params = RefineContext::params(rc, labels.len(), false)?;
            let ctx =
                RefineContext::for_engine(engine, classifier.clone(), params, Some(rc.max_changed));
            let (h, r) = clipd::refiner::spawn(rc, ctx, tx.clone())?;
            let index = labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i))
                .collect();
            (Some(r), Some((h, index)))
        } else {
            (None, None)
        };
        let (src, due): (Box<dyn FrameSource>, _) = match feed {
            Feed::Saturated => (
                Box::new(source::FileListSource::new(
                    "bench".into(),
                    files.to_vec(),
                    clipd::config::LabelsFrom::None,
                )),
                None,
            ),
            Feed::Paced(interval) => {
                let due = Arc::new(Mutex::new(Vec::with_capacity(files.len())));
                let src = PacedSource {
                    files: files.to_vec(),
                    next: 0,
                    interval,
                    start: None,
                    due: due.clone(),
                };
                (Box::new(src), Some(due))
            }
        };
        let sink = LatencySink {
            tx,
            model_id: engine.bundle.model_id(),
            adapter_id: engine.adapter_id(),
            refiner: handle,
            due,
            latencies: Vec::with_capacity(files.len()),
        };
        let enc = TractImageEncoder::load(
            &engine.bundle,
            EncoderOptions {
                batch: 1,
                threads,
                lanes: 1,
            },
        )?;
        let (stats, sink) = Pipeline {
            transform: Transform::from_spec(&engine.bundle.manifest.image),
            encoder: Box::new(enc),
            head: Box::new(classifier),
            labels: None,
            options: PipelineOptions {
                // A short queue: saturated latency is measured from decode, so a long queue would
                // only measure waiting in it.
                queue: 2,
                keep_embeddings: with_refiner,
                policies: Vec::new(),
                ..PipelineOptions::from_config(c)
            },
        }
        .run(vec![src], sink, Arc::new(AtomicBool::new(false)))?;
        let refiner = refiner.map(|r| r.finish()).unwrap_or_default();
        // Dropping the sink's sender lets the writer drain and stop.
        let LatencySink { latencies, tx, .. } = sink;
        drop(tx);
        let _ = writer.join();
        Ok(Run {
            latencies,
            fps: stats.frames as f64 / stats.elapsed.as_secs_f64().max(1e-9),
            refiner,
        })
    }

    /// The median of `v` (0 for none).
    pub(super) fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// `ROUNDS` interleaved rounds of runs without and with the refiner under `feed`.
    fn compare(
        engine: &Engine,
        cfg: &clipd::config::Loaded,
        files: &[PathBuf],
        threads: usize,
        tmp: &Path,
        feed: Feed,
        rc: &RefineConfig,
    ) -> Result<Comparison> {
        let mut c = Comparison::default();
        for round in 0..ROUNDS {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for with_refiner in order {
                let db = tmp.join(format!("latency-{round}-{with_refiner}.db"));
                let run = run_pipeline(
                    engine,
                    cfg,
                    files,
                    threads,
                    &db,
                    feed,
                    with_refiner.then_some(rc),
                )?;
                let _ = std::fs::remove_file(&db);
                let lat = Latency::from_samples(
                    run.latencies,
                    run.refiner.passes,
                    run.refiner.total / run.refiner.passes.max(1) as u32,
                );
                if with_refiner {
                    c.with.push(lat);
                } else {
                    c.fps.push(run.fps);
                    c.without.push(lat);
                }
            }
        }
        Ok(c)
    }

    /// The rounds of one feed.
    #[derive(Default)]
    struct Comparison {
        without: Vec<Latency>,
        with: Vec<Latency>,
        /// Throughput of the runs without the refiner.
        fps: Vec<f64>,
    }

    impl Comparison {
        fn print(&self) {
            let med =
                |rows: &[Latency], f: fn(&Latency) -> f64| median(rows.iter().map(f).collect());
            for (name, rows) in [
                ("without refiner", &self.without),
                ("with refiner", &self.with),
            ] {
                let passes = med(rows, |r| r.passes as f64);
                let per_pass = med(rows, |r| r.per_pass.as_secs_f64() * 1000.0);
                println!(
                    "    {name:<16} p50 {:.2} ms  p99 {:.2} ms  ({passes:.0} refinement passes, {per_pass:.0} ms each)",
                    med(rows, |r| r.p50_ms),
                    med(rows, |r| r.p99_ms),
                );
            }
            let ratios: Vec<String> = self
                .with
                .iter()
                .zip(&self.without)
                .map(|(w, o)| format!("{:.2}", w.p99_ms / o.p99_ms.max(1e-9)))
                .collect();
            println!(
                "    p99 ratio (with / without, medians): {:.2}; per round: {}",
                med(&self.with, |r| r.p99_ms) / med(&self.without, |r| r.p99_ms).max(1e-9),
                ratios.join(" ")
            );
        }
    }

    /// p50/p99 per-frame latency of the whole pipeline (batch 1) without and with a TransCLIP
    /// refiner (`rc`) re-deciding a 1024-frame buffer beside it: saturated, then paced at
    /// [`PACED_LOAD`] of the capacity the saturated runs measured.
    pub fn refiner_latency(
        engine: &Engine,
        cfg: &clipd::config::Loaded,
        files: &[PathBuf],
        threads: usize,
        tmp: &Path,
        rc: &RefineConfig,
    ) -> Result<()> {
        let files: Vec<PathBuf> = files
            .iter()
            .cycle()
            .take(files.len().max(FRAMES_PER_RUN))
            .cloned()
            .collect();
        let files = &files[..];
        println!(
            "pipeline frame latency, {} frames a run (the config's frames, repeated), batch 1; refiner: {} every {} frames over a {}-frame buffer; medians of {ROUNDS} interleaved rounds",
            files.len(),
            rc.method,
            rc.every_frames,
            rc.buffer
        );
        let saturated = compare(engine, cfg, files, threads, tmp, Feed::Saturated, rc)?;
        let capacity = median(saturated.fps.clone());
        println!("  saturated (frames fed as fast as they decode, {capacity:.0} frames/s; latency from decode):");
        saturated.print();
        let rate = PACED_LOAD * capacity;
        if rate > 0.0 {
            let paced = compare(
                engine,
                cfg,
                files,
                threads,
                tmp,
                Feed::Paced(Duration::from_secs_f64(1.0 / rate)),
                rc,
            )?;
            println!(
                "  paced at {:.0}% of capacity ({rate:.0} frames/s; latency from when the frame was due):",
                PACED_LOAD * 100.0
            );
            paced.print();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::latency::{median, PacedSource};
    use super::*;

    #[test]
    fn percentiles_pick_ranked_samples() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.99), 0.0);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn paced_source_releases_frames_on_schedule() {
        let due = Arc::new(Mutex::new(Vec::new()));
        let interval = Duration::from_millis(20);
        let mut src = PacedSource {
            files: vec!["a.png".into(), "b.png".into()],
            next: 0,
            interval,
            start: None,
            due: due.clone(),
        };
        // The first frame is due at once, the second one interval later.
        assert!(matches!(src.next().unwrap(), Next::Frame(f) if f.reference == "a.png"));
        match src.next().unwrap() {
            Next::Wait(w) => assert!(w > Duration::ZERO && w <= interval, "{w:?}"),
            other => panic!("expected a wait, got {other:?}"),
        }
        std::thread::sleep(interval);
        assert!(matches!(src.next().unwrap(), Next::Frame(f) if f.reference == "b.png"));
        assert!(matches!(src.next().unwrap(), Next::Done));
        let due = due.lock().unwrap();
        assert_eq!(due.len(), 2);
        assert_eq!(due[1] - due[0], interval);
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
