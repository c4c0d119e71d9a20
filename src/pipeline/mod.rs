//! The classification pipeline: stages on their own threads joined by bounded queues.
//!
//! ```text
//! sources (1 thread each) ─▶ decode+preprocess (N threads) ─▶ encode (batches ≤ B) ─▶ head ─▶ sink
//!   frame policy: every-N-th,   novelty gate
//!   rate cap, overflow
//! ```
//! A full queue blocks a file source (back-pressure) and makes a camera drop its oldest queued
//! frame ([`queue`]), so memory stays bounded whatever the source rate. A frame that cannot be
//! decoded travels on as an error result: it is counted, logged with its path and handed to the
//! sink, and the run continues. Setting `stop` ends the sources; what is already queued is still
//! classified and handed to the sink (a drain), then every thread exits.

pub mod monitor;
pub mod policy;
pub mod queue;
mod stages;

pub use monitor::{LastLabel, Monitor, SourceMetrics};
pub use policy::FramePolicy;
pub use queue::Overflow;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::classes::LabelIndex;
use crate::encoder::ImageEncoder;
use crate::error::{ExitClass, HasExitClass};
use crate::head::Classifier;
use crate::preprocess::{DecodeLimits, Transform};
use crate::source::FrameSource;
use crate::store::FrameRecord;
use policy::NoveltyGate;
use queue::FrameQueue;
use stages::{Decoded, Encoded, Job};

/// Settings fixed for the pipeline's lifetime.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub decode_threads: usize,
    pub queue: usize,
    /// How long the encoder waits to fill a batch.
    pub batch_timeout: Duration,
    pub top_k: usize,
    pub limits: DecodeLimits,
    /// Keep each frame's normalised embedding in its result.
    pub keep_embeddings: bool,
    /// Frame policy per source, in source order (missing: keep every frame, block when full).
    pub policies: Vec<FramePolicy>,
    /// Live counters to fill (the daemon reads them); a private one is used when absent.
    pub monitor: Option<Arc<Monitor>>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            decode_threads: 1,
            queue: 32,
            batch_timeout: Duration::from_millis(50),
            top_k: 5,
            limits: DecodeLimits::default(),
            keep_embeddings: false,
            policies: Vec::new(),
            monitor: None,
        }
    }
}

/// A successful classification.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    pub label: String,
    pub score: f32,
    /// (label, probability), best first.
    pub top_k: Vec<(String, f32)>,
}

/// Why a frame has no classification.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameFailure {
    /// Short kind: `empty`, `decode`, `unsupported`, `too_large`, `io`, `inference`.
    pub kind: String,
    /// One line naming the frame and the reason.
    pub message: String,
}

/// What the pipeline produced for one frame.
#[derive(Debug, Clone)]
pub struct FrameResult {
    /// Order in which the sources produced the frame (0-based).
    pub seq: u64,
    /// Capture time, UTC epoch milliseconds.
    pub ts_ms: i64,
    pub source: String,
    pub reference: String,
    pub truth: Option<String>,
    pub outcome: Result<Classification, FrameFailure>,
    /// From the start of decoding to the head's output.
    pub latency_us: u64,
    pub embedding: Option<Vec<f32>>,
}

impl FrameResult {
    /// The history row for this result, logged under `model_id` (no row id, no adapter yet:
    /// the sink that numbers and stores rows adds them).
    pub fn into_record(self, model_id: &str) -> FrameRecord {
        let mut rec = match self.outcome {
            Ok(c) => {
                FrameRecord::classified(self.ts_ms, self.source, self.reference, model_id, c.top_k)
            }
            Err(f) => {
                FrameRecord::failed(self.ts_ms, self.source, self.reference, model_id, f.message)
            }
        };
        rec.latency_us = Some(self.latency_us);
        rec.embedding = self.embedding;
        rec
    }
}

/// Receives every result on the head thread, in completion order. Reporting failures (log,
/// stderr) is the sink's choice: the pipeline only counts them.
pub trait Sink: Send {
    /// A sink error stops the pipeline (e.g. the database writer died).
    fn accept(&mut self, result: FrameResult) -> Result<(), SinkError>;
}

/// Why a sink could take no more results.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The database writer thread ended; what ended it is reported when it is joined.
    #[error("the database writer stopped")]
    WriterStopped,
}

impl HasExitClass for SinkError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::Io
    }
}

/// Collects results in memory.
#[derive(Debug, Default)]
pub struct VecSink(pub Vec<FrameResult>);

impl Sink for VecSink {
    fn accept(&mut self, result: FrameResult) -> Result<(), SinkError> {
        self.0.push(result);
        Ok(())
    }
}

/// Counts of what a run did, for the end-of-run summary.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub frames: u64,
    pub classified: u64,
    pub failed: u64,
    /// Frames the frame policy chose not to classify (not counted in `frames`).
    pub skipped: u64,
    /// Frames dropped because inference fell behind (not counted in `frames`).
    pub dropped: u64,
    /// Failures per kind.
    pub failures: BTreeMap<String, u64>,
    /// Frames per predicted label.
    pub per_label: BTreeMap<String, u64>,
    /// Frames with a known label that maps onto a class.
    pub labelled: u64,
    pub correct_top1: u64,
    pub correct_top5: u64,
    /// Known labels that match no configured class (frame counts).
    pub unknown_truth: BTreeMap<String, u64>,
    pub elapsed: Duration,
    /// Time spent inside the image encoder.
    pub encode_time: Duration,
    pub batches: u64,
    /// Sum of per-frame latencies (for the mean).
    pub latency_us_total: u64,
}

impl RunStats {
    pub fn accuracy_top1(&self) -> Option<f64> {
        (self.labelled > 0).then(|| self.correct_top1 as f64 / self.labelled as f64)
    }
    pub fn accuracy_top5(&self) -> Option<f64> {
        (self.labelled > 0).then(|| self.correct_top5 as f64 / self.labelled as f64)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("frame source {name}: {msg}")]
    Source { name: String, msg: String },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("pipeline thread {0} panicked")]
    Panic(&'static str),
    #[error("cannot start pipeline thread: {0}")]
    Spawn(std::io::Error),
}

impl HasExitClass for PipelineError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::Io
    }
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<T>, PipelineError> {
    thread::Builder::new()
        .name(format!("clipd-{name}"))
        .spawn(f)
        .map_err(PipelineError::Spawn)
}

/// A pipeline ready to run: the preprocessing, the encoder and the head, with their options.
/// [`Pipeline::run`] starts one thread per stage (`stages.rs`) joined by bounded queues.
pub struct Pipeline {
    pub transform: Transform,
    pub encoder: Box<dyn ImageEncoder>,
    pub head: Box<dyn Classifier>,
    /// Maps known labels to classes for the accuracy counts.
    pub labels: Option<LabelIndex>,
    pub options: PipelineOptions,
}

impl Pipeline {
    /// Run until every source is exhausted (or `stop` is set), sending each result to `sink`.
    pub fn run<S: Sink + 'static>(
        self,
        sources: Vec<Box<dyn FrameSource>>,
        sink: S,
        stop: Arc<AtomicBool>,
    ) -> Result<(RunStats, S), PipelineError> {
        let Pipeline {
            transform,
            encoder,
            head,
            labels,
            options: opts,
        } = self;
        let started = Instant::now();
        let q = opts.queue.max(1);
        let monitor = opts.monitor.clone().unwrap_or_else(|| {
            let names: Vec<String> = sources.iter().map(|s| s.name().to_string()).collect();
            Monitor::new(&names)
        });
        let queue = Arc::new(FrameQueue::<Job>::new(q, sources.len()));
        let (dec_tx, dec_rx) = sync_channel::<Decoded>(q);
        let (enc_tx, enc_rx) = sync_channel::<Encoded>(q);
        let policy_of = |i: usize| opts.policies.get(i).cloned().unwrap_or_default();

        // Sources: one thread each, sharing a sequence counter; the rate rules run there.
        let seq = Arc::new(AtomicU64::new(0));
        let n_sources = sources.len();
        let mut source_threads = Vec::new();
        for (index, src) in sources.into_iter().enumerate() {
            if let Some(m) = monitor.source(index) {
                m.set_device(src.counters());
            }
            let stage = stages::SourceStage {
                index,
                policy: policy_of(index),
                queue: queue.clone(),
                seq: seq.clone(),
                stop: stop.clone(),
                monitor: monitor.clone(),
            };
            source_threads.push(spawn("source", move || stage.run(src))?);
        }

        // Decode + preprocess workers pull from the shared queue; the novelty gates run there.
        let gates: Arc<Vec<Option<NoveltyGate>>> = Arc::new(
            (0..n_sources)
                .map(|i| policy_of(i).novelty.map(NoveltyGate::new))
                .collect(),
        );
        let mut decode_threads = Vec::new();
        for _ in 0..opts.decode_threads.max(1) {
            let stage = stages::DecodeStage {
                queue: queue.clone(),
                out: dec_tx.clone(),
                transform: transform.clone(),
                limits: opts.limits,
                gates: gates.clone(),
            };
            decode_threads.push(spawn("decode", move || stage.run())?);
        }
        drop(dec_tx);

        // Encoder: batches of up to B frames, waiting at most `batch_timeout` to fill one.
        let stage = stages::EncodeStage {
            encoder,
            input: dec_rx,
            out: enc_tx,
            timeout: opts.batch_timeout,
            monitor: monitor.clone(),
        };
        let encode_thread = spawn("encode", move || stage.run())?;

        // Head: classification, the run's counts, and the sink.
        let stage = stages::HeadStage {
            head,
            labels,
            keep_embeddings: opts.keep_embeddings,
            top_k: opts.top_k.max(1),
            monitor: monitor.clone(),
        };
        let head_thread = spawn("head", move || stage.run(enc_rx, sink))?;

        // Join in pipeline order; a failing head (sink) closes its queue, which unblocks the rest.
        let mut source_err = None;
        for t in source_threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    stop.store(true, Ordering::Relaxed);
                    source_err.get_or_insert(e);
                }
                Err(_) => return Err(PipelineError::Panic("source")),
            }
        }
        for t in decode_threads {
            t.join().map_err(|_| PipelineError::Panic("decode"))?;
        }
        let (encode_time, batches) = encode_thread
            .join()
            .map_err(|_| PipelineError::Panic("encode"))?;
        let (mut stats, sink) = head_thread
            .join()
            .map_err(|_| PipelineError::Panic("head"))??;
        if let Some(e) = source_err {
            return Err(e);
        }
        stats.encode_time = encode_time;
        stats.batches = batches;
        for m in monitor.sources() {
            stats.skipped += m.skipped.load(Ordering::Relaxed);
            stats.dropped += m.dropped.load(Ordering::Relaxed);
        }
        stats.elapsed = started.elapsed();
        Ok((stats, sink))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::EncoderError;
    use crate::source::{Frame, Next, Payload};
    use std::sync::Mutex;

    /// Embeds an image as (mean of channel 0, 1 − that mean): bright → class 0, dark → class 1.
    struct FakeEncoder {
        size: usize,
        calls: Arc<Mutex<Vec<usize>>>,
    }

    impl ImageEncoder for FakeEncoder {
        fn batch_size(&self) -> usize {
            2
        }
        fn embed_dim(&self) -> usize {
            2
        }
        fn image_size(&self) -> usize {
            self.size
        }
        fn encode(&mut self, pixels: &[f32], n: usize) -> Result<Vec<f32>, EncoderError> {
            self.calls.lock().unwrap().push(n);
            let per = 3 * self.size * self.size;
            Ok(pixels
                .chunks(per)
                .flat_map(|p| {
                    let m = p[..self.size * self.size].iter().sum::<f32>()
                        / (self.size * self.size) as f32;
                    [m, 1.0 - m]
                })
                .collect())
        }
    }

    struct Frames(Vec<(String, Vec<u8>)>);

    impl FrameSource for Frames {
        fn name(&self) -> &str {
            "mem"
        }
        fn next(&mut self) -> Result<Next, crate::source::SourceError> {
            if self.0.is_empty() {
                return Ok(Next::Done);
            }
            let (name, bytes) = self.0.remove(0);
            Ok(Next::Frame(Frame {
                source: "mem".into(),
                reference: name.clone(),
                payload: Payload::Encoded(bytes),
                truth: Some(
                    if name.starts_with("white") {
                        "bright"
                    } else {
                        "dark"
                    }
                    .into(),
                ),
            }))
        }
    }

    fn png(v: u8) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(5, 4, image::Rgb([v, v, v]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn batches_classifies_counts_failures_and_scores() {
        let frames = vec![
            ("white1".to_string(), png(255)),
            ("black1".to_string(), png(0)),
            ("broken".to_string(), b"\x89PNG\r\n\x1a\ngarbage".to_vec()),
            ("white2".to_string(), png(250)),
            ("black2".to_string(), png(5)),
        ];
        let calls = Arc::new(Mutex::new(Vec::new()));
        let enc = FakeEncoder {
            size: 4,
            calls: calls.clone(),
        };
        let head = crate::head::ZeroShotHead::new(
            vec!["bright".into(), "dark".into()],
            vec![1.0, 0.0, 0.0, 1.0],
            2,
            100.0,
        )
        .unwrap();
        let classes: Vec<crate::classes::ClassSpec> = ["bright", "dark"]
            .iter()
            .map(|n| crate::classes::ClassSpec {
                name: n.to_string(),
                domain: None,
                prompts: vec![],
                aliases: vec![],
            })
            .collect();
        let t = Transform {
            size: 4,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let opts = PipelineOptions {
            decode_threads: 2,
            queue: 2,
            batch_timeout: Duration::from_millis(200),
            top_k: 1,
            limits: DecodeLimits::default(),
            keep_embeddings: true,
            ..Default::default()
        };
        let (stats, sink) = Pipeline {
            transform: t,
            encoder: Box::new(enc),
            head: Box::new(head),
            labels: Some(LabelIndex::new(&classes)),
            options: opts,
        }
        .run(
            vec![Box::new(Frames(frames))],
            VecSink::default(),
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap();
        assert_eq!((stats.frames, stats.classified, stats.failed), (5, 4, 1));
        assert_eq!(stats.failures.get("decode"), Some(&1));
        assert_eq!((stats.labelled, stats.correct_top1), (4, 4));
        assert_eq!(stats.accuracy_top1(), Some(1.0));
        let calls = calls.lock().unwrap();
        assert_eq!(calls.iter().sum::<usize>(), 4);
        assert!(calls.iter().all(|&n| n <= 2));
        let mut results = sink.0;
        results.sort_by_key(|r| r.seq);
        let labels: Vec<Option<&str>> = results
            .iter()
            .map(|r| r.outcome.as_ref().ok().map(|c| c.label.as_str()))
            .collect();
        assert_eq!(
            labels,
            vec![
                Some("bright"),
                Some("dark"),
                None,
                Some("bright"),
                Some("dark")
            ]
        );
        let broken = results[2].outcome.as_ref().unwrap_err();
        assert!(broken.message.starts_with("broken: "), "{}", broken.message);
        assert_eq!(results[0].outcome.as_ref().unwrap().top_k.len(), 1);
        assert_eq!(results[0].embedding.as_ref().map(Vec::len), Some(2));
    }
}
