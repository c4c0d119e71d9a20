//! The four stages of a [`super::Pipeline`], each the body of its own thread: sources (rate
//! rules) → decoders (decode, preprocess, novelty gate) → encoder (batches) → head (classify,
//! count, hand to the sink). They talk only through the queues `Pipeline::run` gives them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::policy::{Admit, FramePolicy, NoveltyGate, RateGate};
use super::queue::{FrameQueue, Pushed};
use super::{
    Classification, FrameFailure, FrameResult, LastLabel, Monitor, PipelineError, RunStats, Sink,
    SinkError, SourceMetrics,
};
use crate::classes::LabelIndex;
use crate::encoder::{l2_normalize_rows, ImageEncoder};
use crate::head::Classifier;
use crate::preprocess::{decode_bytes, decode_file, to_rgb8, DecodeLimits, Transform};
use crate::source::{Frame, FrameSource, Next, Payload};

/// A frame on its way from a source to the decoders.
pub(super) struct Job {
    seq: u64,
    ts_ms: i64,
    frame: Frame,
}

/// What travels with a frame through the stages.
pub(super) struct Meta {
    /// Index of the source in the pipeline's list.
    index: usize,
    seq: u64,
    ts_ms: i64,
    source: String,
    reference: String,
    truth: Option<String>,
    started: Instant,
}

/// Decoder → encoder.
pub(super) enum Decoded {
    Ok(Meta, Vec<f32>),
    Failed(Meta, FrameFailure),
    /// Too similar to the source's last kept frame (novelty gate).
    Skipped(Meta),
}

/// Encoder → head.
pub(super) enum Encoded {
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

/// One source's thread: pull frames, apply its rate rules, queue them.
pub(super) struct SourceStage {
    pub index: usize,
    pub policy: FramePolicy,
    pub queue: Arc<FrameQueue<Job>>,
    pub seq: Arc<AtomicU64>,
    pub stop: Arc<AtomicBool>,
    pub monitor: Arc<Monitor>,
}

impl SourceStage {
    pub fn run(self, mut src: Box<dyn FrameSource>) -> Result<(), PipelineError> {
        let SourceStage {
            index,
            policy,
            queue,
            seq,
            stop,
            monitor,
        } = self;
        let mut gate = RateGate::new(&policy);
        let metrics = monitor.source(index);
        let count = |f: fn(&SourceMetrics) -> &AtomicU64| {
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
    }
}

/// A decode worker: frames from the shared queue → preprocessed pixels (or a failure).
pub(super) struct DecodeStage {
    pub queue: Arc<FrameQueue<Job>>,
    pub out: SyncSender<Decoded>,
    pub transform: Transform,
    pub limits: DecodeLimits,
    /// Per source, in source order.
    pub gates: Arc<Vec<Option<NoveltyGate>>>,
}

impl DecodeStage {
    pub fn run(self) {
        while let Some((index, job)) = self.queue.pop() {
            let gate = self.gates.get(index).and_then(Option::as_ref);
            let decoded = decode_one(index, job, &self.transform, &self.limits, gate);
            if self.out.send(decoded).is_err() {
                break;
            }
        }
    }
}

/// The encoder's thread: batches of up to B frames, waiting at most `timeout` to fill one.
pub(super) struct EncodeStage {
    pub encoder: Box<dyn ImageEncoder>,
    pub input: Receiver<Decoded>,
    pub out: SyncSender<Encoded>,
    pub timeout: Duration,
    pub monitor: Arc<Monitor>,
}

impl EncodeStage {
    /// Returns the time spent encoding and the number of batches.
    pub fn run(self) -> (Duration, u64) {
        let EncodeStage {
            mut encoder,
            input: dec_rx,
            out: enc_tx,
            timeout,
            monitor: enc_monitor,
        } = self;
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
    }
}

/// The head's thread: classify each embedding, keep the run's counts, hand results to the sink.
pub(super) struct HeadStage {
    pub head: Box<dyn Classifier>,
    pub labels: Option<LabelIndex>,
    pub keep_embeddings: bool,
    pub top_k: usize,
    pub monitor: Arc<Monitor>,
}

impl HeadStage {
    pub fn run<S: Sink>(
        self,
        input: Receiver<Encoded>,
        mut sink: S,
    ) -> Result<(RunStats, S), SinkError> {
        let HeadStage {
            head,
            labels,
            keep_embeddings: keep,
            top_k,
            monitor,
        } = self;
        let enc_rx = input;
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
    }
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
