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

pub use monitor::{LastLabel, Monitor, SourceMetrics};
pub use policy::FramePolicy;
pub use queue::Overflow;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::classes::LabelIndex;
use crate::encoder::{l2_normalize_rows, ImageEncoder};
use crate::error::{ExitClass, HasExitClass};
use crate::head::Classifier;
use crate::preprocess::{decode_bytes, decode_file, to_rgb8, DecodeLimits, Transform};
use crate::source::{Frame, FrameSource, Next, Payload};
use crate::store::FrameRecord;
use policy::{Admit, NoveltyGate, RateGate};
use queue::{FrameQueue, Pushed};

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

struct Job {
    seq: u64,
    ts_ms: i64,
    frame: Frame,
}

struct Meta {
    /// Index of the source in the pipeline's list.
    index: usize,
    seq: u64,
    ts_ms: i64,
    source: String,
    reference: String,
    truth: Option<String>,
    started: Instant,
}

enum Decoded {
    Ok(Meta, Vec<f32>),
    Failed(Meta, FrameFailure),
    /// Too similar to the source's last kept frame (novelty gate).
    Skipped(Meta),
}

enum Encoded {
    Batch(Vec<Meta>, Vec<f32>),
    Failed(Meta, FrameFailure),
    Skipped(Meta),
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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

/// Run the pipeline until every source is exhausted (or `stop` is set), sending each result to
/// `sink`. `labels` maps known labels to classes for the accuracy counts.
#[allow(clippy::too_many_arguments)]
pub fn run<S: Sink + 'static>(
    sources: Vec<Box<dyn FrameSource>>,
    transform: Transform,
    mut encoder: Box<dyn ImageEncoder>,
    head: Box<dyn Classifier>,
    labels: Option<LabelIndex>,
    mut sink: S,
    opts: PipelineOptions,
    stop: Arc<AtomicBool>,
) -> Result<(RunStats, S), PipelineError> {
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

    // Sources: one thread each, sharing a sequence counter; the rate rules run here.
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut source_threads = Vec::new();
    for (index, mut src) in sources.into_iter().enumerate() {
        let queue = queue.clone();
        let seq = seq.clone();
        let stop = stop.clone();
        let monitor = monitor.clone();
        let policy = policy_of(index);
        if let Some(m) = monitor.source(index) {
            m.set_device(src.counters());
        }
        source_threads.push(spawn("source", move || -> Result<(), PipelineError> {
            let mut gate = RateGate::new(&policy);
            let metrics = monitor.source(index);
            let count = |f: fn(&SourceMetrics) -> &std::sync::atomic::AtomicU64| {
                if let Some(m) = metrics {
                    f(m).fetch_add(1, Ordering::Relaxed);
                }
            };
            let result = loop {
                if stop.load(Ordering::Relaxed) {
                    break Ok(());
                }
                match src.next() {
                    Ok(Next::Frame(frame)) => {
                        count(|m| &m.delivered);
                        match gate.admit(Instant::now()) {
                            Admit::Yes => {}
                            Admit::Skip => {
                                count(|m| &m.skipped);
                                continue;
                            }
                            Admit::After(d) => sleep_unless_stopped(d, &stop),
                        }
                        let job = Job {
                            seq: seq.fetch_add(1, Ordering::Relaxed),
                            ts_ms: now_ms(),
                            frame,
                        };
                        match queue.push(index, job, policy.overflow) {
                            Pushed::Queued => monitor.admitted(),
                            // One frame out, one in: nothing changes in flight.
                            Pushed::Evicted | Pushed::Dropped => count(|m| &m.dropped),
                            Pushed::Closed => break Ok(()),
                        }
                    }
                    Ok(Next::Wait(d)) => sleep_unless_stopped(d, &stop),
                    Ok(Next::Done) => break Ok(()),
                    Err(e) => {
                        break Err(PipelineError::Source {
                            name: src.name().to_string(),
                            msg: e.to_string(),
                        })
                    }
                }
            };
            queue.producer_done();
            result
        })?);
    }

    // Decode + preprocess workers pull from the shared queue; the novelty gates run here.
    let gates: Arc<Vec<Option<NoveltyGate>>> = Arc::new(
        (0..source_threads.len())
            .map(|i| policy_of(i).novelty.map(NoveltyGate::new))
            .collect(),
    );
    let mut decode_threads = Vec::new();
    for _ in 0..opts.decode_threads.max(1) {
        let queue = queue.clone();
        let tx = dec_tx.clone();
        let t = transform.clone();
        let limits = opts.limits;
        let gates = gates.clone();
        decode_threads.push(spawn("decode", move || {
            while let Some((index, job)) = queue.pop() {
                let gate = gates.get(index).and_then(Option::as_ref);
                if tx.send(decode_one(index, job, &t, &limits, gate)).is_err() {
                    break;
                }
            }
        })?);
    }
    drop(dec_tx);

    // Encoder: batches of up to B frames, waiting at most `batch_timeout` to fill one.
    let timeout = opts.batch_timeout;
    let enc_monitor = monitor.clone();
    let encode_thread = spawn("encode", move || {
        let b = encoder.batch_size().max(1);
        let d = encoder.embed_dim();
        let per = 3 * encoder.image_size() * encoder.image_size();
        let mut encode_time = Duration::ZERO;
        let mut batches = 0u64;
        let mut metas: Vec<Meta> = Vec::with_capacity(b);
        let mut pixels: Vec<f32> = Vec::with_capacity(b * per);
        let mut open = true;
        while open {
            let first = match dec_rx.recv() {
                Ok(x) => x,
                Err(_) => break,
            };
            let deadline = Instant::now() + timeout;
            let mut item = Some(first);
            loop {
                let sent = match item.take() {
                    Some(Decoded::Ok(m, px)) => {
                        metas.push(m);
                        pixels.extend_from_slice(&px);
                        Ok(())
                    }
                    // Failed frames skip the encoder but keep their place in the flow.
                    Some(Decoded::Failed(m, f)) => enc_tx.send(Encoded::Failed(m, f)),
                    Some(Decoded::Skipped(m)) => enc_tx.send(Encoded::Skipped(m)),
                    None => Ok(()),
                };
                if sent.is_err() {
                    return (encode_time, batches);
                }
                if metas.len() >= b {
                    break;
                }
                let wait = deadline.saturating_duration_since(Instant::now());
                match dec_rx.recv_timeout(wait) {
                    Ok(x) => item = Some(x),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if metas.is_empty() {
                continue;
            }
            let n = metas.len();
            let t0 = Instant::now();
            let result = encoder.encode(&pixels, n);
            encode_time += t0.elapsed();
            batches += 1;
            enc_monitor.batches.fetch_add(1, Ordering::Relaxed);
            pixels.clear();
            let batch: Vec<Meta> = std::mem::take(&mut metas);
            let msg = match result {
                Ok(mut emb) => {
                    l2_normalize_rows(&mut emb, d);
                    Encoded::Batch(batch, emb)
                }
                Err(e) => {
                    let reason = e.to_string();
                    for m in batch {
                        let f = FrameFailure {
                            kind: "inference".into(),
                            message: format!("{}: {reason}", m.reference),
                        };
                        if enc_tx.send(Encoded::Failed(m, f)).is_err() {
                            return (encode_time, batches);
                        }
                    }
                    continue;
                }
            };
            if enc_tx.send(msg).is_err() {
                break;
            }
        }
        (encode_time, batches)
    })?;

    // Head + sink on this thread's helper: results, summary counts.
    let keep = opts.keep_embeddings;
    let top_k = opts.top_k.max(1);
    let head_monitor = monitor.clone();
    let head_thread = spawn("head", move || -> Result<(RunStats, S), SinkError> {
        let monitor = head_monitor;
        let mut stats = RunStats::default();
        let d = head.dim();
        let emit = |stats: &mut RunStats,
                    sink: &mut S,
                    m: Meta,
                    outcome: Result<(Classification, Vec<usize>), FrameFailure>,
                    emb: Option<&[f32]>|
         -> Result<(), SinkError> {
            stats.frames += 1;
            let latency_us = m.started.elapsed().as_micros() as u64;
            stats.latency_us_total += latency_us;
            let metrics = monitor.source(m.index);
            let outcome = match outcome {
                Ok((c, top)) => {
                    stats.classified += 1;
                    if let Some(sm) = metrics {
                        sm.classified.fetch_add(1, Ordering::Relaxed);
                        sm.set_last(LastLabel {
                            label: c.label.clone(),
                            score: c.score,
                            ts_ms: m.ts_ms,
                        });
                    }
                    *stats.per_label.entry(c.label.clone()).or_default() += 1;
                    if let Some(truth) = &m.truth {
                        match labels.as_ref().and_then(|ix| ix.lookup(truth)) {
                            Some(t) => {
                                stats.labelled += 1;
                                if top.first() == Some(&t) {
                                    stats.correct_top1 += 1;
                                }
                                if top.iter().take(5).any(|&i| i == t) {
                                    stats.correct_top5 += 1;
                                }
                            }
                            None => *stats.unknown_truth.entry(truth.clone()).or_default() += 1,
                        }
                    }
                    Ok(c)
                }
                Err(f) => {
                    stats.failed += 1;
                    if let Some(sm) = metrics {
                        sm.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    *stats.failures.entry(f.kind.clone()).or_default() += 1;
                    Err(f)
                }
            };
            monitor.finished();
            sink.accept(FrameResult {
                seq: m.seq,
                ts_ms: m.ts_ms,
                source: m.source,
                reference: m.reference,
                truth: m.truth,
                outcome,
                latency_us,
                embedding: emb.filter(|_| keep).map(<[f32]>::to_vec),
            })
        };
        for msg in enc_rx {
            match msg {
                Encoded::Failed(m, f) => emit(&mut stats, &mut sink, m, Err(f), None)?,
                Encoded::Skipped(m) => {
                    if let Some(sm) = monitor.source(m.index) {
                        sm.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    monitor.finished();
                }
                Encoded::Batch(metas, emb) => {
                    for (m, e) in metas.into_iter().zip(emb.chunks_exact(d)) {
                        let p = head.predict(e, top_k.max(5));
                        let names = head.labels();
                        let top: Vec<usize> = p.top_k.iter().map(|(i, _)| *i).collect();
                        let c = Classification {
                            label: names[p.class].clone(),
                            score: p.score,
                            top_k: p
                                .top_k
                                .iter()
                                .take(top_k)
                                .map(|(i, s)| (names[*i].clone(), *s))
                                .collect(),
                        };
                        emit(&mut stats, &mut sink, m, Ok((c, top)), Some(e))?;
                    }
                }
            }
        }
        Ok((stats, sink))
    })?;

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

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

fn decode_one(
    index: usize,
    job: Job,
    t: &Transform,
    limits: &DecodeLimits,
    novelty: Option<&NoveltyGate>,
) -> Decoded {
    let started = Instant::now();
    let Frame {
        source,
        reference,
        payload,
        truth,
    } = job.frame;
    let meta = Meta {
        index,
        seq: job.seq,
        ts_ms: job.ts_ms,
        source,
        reference,
        truth,
        started,
    };
    let failure = |kind: &str, message: String| FrameFailure {
        kind: kind.to_string(),
        message,
    };
    let rgb = match &payload {
        Payload::File(p) => decode_file(p, limits).map(to_rgb8),
        Payload::Encoded(bytes) => {
            decode_bytes(bytes, &PathBuf::from(&meta.reference), limits).map(to_rgb8)
        }
        Payload::Raw(raw) => match crate::source::convert::to_rgb(raw) {
            Ok(rgb) => Ok(rgb),
            Err(e) => {
                let f = failure("decode", format!("{}: {e}", meta.reference));
                return Decoded::Failed(meta, f);
            }
        },
    };
    match rgb {
        Ok(rgb) if novelty.is_some_and(|g| !g.is_novel(&rgb)) => Decoded::Skipped(meta),
        Ok(rgb) => {
            let mut out = vec![0f32; t.len()];
            t.apply(&rgb, &mut out);
            Decoded::Ok(meta, out)
        }
        Err(e) => {
            let f = failure(e.kind(), e.to_string());
            Decoded::Failed(meta, f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::EncoderError;
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
        let (stats, sink) = run(
            vec![Box::new(Frames(frames))],
            t,
            Box::new(enc),
            Box::new(head),
            Some(LabelIndex::new(&classes)),
            VecSink::default(),
            opts,
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
