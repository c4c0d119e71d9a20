//! `clipd bench`: image encoder alone versus the whole pipeline (decode + preprocess + encode +
//! head + store), at each batch size; with an adapter, also the head's own cost per frame
//! (zero-shot versus adapter), which is what a few-shot adapter adds to the frame path.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

use clipd::classes::ClassSpec;
use clipd::encoder::{EncoderOptions, ImageEncoder, TractImageEncoder};
use clipd::engine::Engine;
use clipd::head::Classifier;
use clipd::pipeline::{self, PipelineOptions};
use clipd::preprocess::Transform;
use clipd::refiner::{BufferedFrame, RefineConfig, RefineContext, RefinerHandle};
use clipd::source::{self, FrameSource, Next, Payload};
use clipd::store::{BatchWriter, Store, StoreOptions, WriteOp};

use super::run::to_record;
use super::{
    adapter_path, bundle_dir, demo_config, load_config, AdapterArg, ModelArgs, UsageError,
};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapter: AdapterArg,
    /// Batch sizes to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batch: Vec<usize>,
    /// Use at most this many frames from the config's sources (0 = all).
    #[arg(long, default_value_t = 0)]
    frames: usize,
    /// Benchmark transductive refinement instead: the algorithms over N and K, and the
    /// pipeline's p50/p99 frame latency with and without the refiner running.
    #[arg(long)]
    transduct: bool,
}

struct Row {
    batch: usize,
    enc_ms: f64,
    pipe_ms: f64,
}

/// Measure throughput on the config's frames (the built-in demo frames without --config).
pub fn bench(args: BenchArgs) -> Result<ExitCode> {
    if args.batch.is_empty() || args.batch.contains(&0) {
        return Err(UsageError("--batch takes sizes of at least 1, e.g. 1,8".into()).into());
    }
    let cfg = match load_config(args.model.config.as_deref())? {
        Some(c) => c,
        None => demo_config()?,
    };
    let c = &cfg.config;
    let threads = args.model.threads.unwrap_or(c.engine.threads);
    let bundle = bundle_dir(args.model.bundle.as_deref(), Some(&cfg));

    // The frames: every file the sources list now.
    let mut files = Vec::new();
    for (i, s) in c.sources.iter().enumerate() {
        let mut src = source::open(i, s, &cfg.base, true)?;
        while let Next::Frame(f) = src.next()? {
            if let Payload::File(p) = f.payload {
                files.push(p);
            }
        }
    }
    if args.frames > 0 {
        files.truncate(args.frames);
    }
    if files.is_empty() {
        return Err(UsageError("bench: the config's sources list no frames".into()).into());
    }

    if args.transduct {
        super::bench_transduct::scaling()?;
    }
    let classes = ClassSpec::from_config(&c.classes, &c.prompts);
    let adapter = adapter_path(args.adapter.adapter.as_deref(), Some(&cfg));
    let engine = Engine::load(
        &bundle,
        classes,
        EncoderOptions { batch: 1, threads },
        None,
        adapter.as_deref(),
    )?;
    let t = Transform::from_spec(&engine.bundle.manifest.image);
    let mut tensors = Vec::new();
    for p in files.iter().take(256) {
        if let Ok(px) = t.load(p, &c.decode) {
            tensors.push(px);
        }
    }
    if tensors.is_empty() {
        return Err(UsageError("bench: none of the frames could be decoded".into()).into());
    }
    println!(
        "model {} (image {}px, embed {}), {} threads, {} frames, {} classes",
        engine.bundle.model_id(),
        engine.bundle.manifest.image.size,
        engine.bundle.manifest.embed_dim,
        threads,
        files.len(),
        engine.classes.len()
    );
    if let Some(a) = &engine.adapter {
        println!(
            "adapter {} ({}, {} shots per class)",
            a.id, a.meta.method, a.meta.shots
        );
    }

    let tmp = std::env::temp_dir().join(format!("clipd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    if args.transduct {
        let result = refiner_latency(&engine, &cfg, &files, threads, &tmp);
        let _ = std::fs::remove_dir_all(&tmp);
        return result.map(|_| ExitCode::SUCCESS);
    }
    let mut rows = Vec::new();
    let result = (|| -> Result<()> {
        for &b in &args.batch {
            let opts = EncoderOptions { batch: b, threads };
            let mut enc = TractImageEncoder::load(&engine.bundle, opts)?;
            let enc_ms = time_encoder(&mut enc, &tensors, files.len())?;

            let db = tmp.join(format!("bench-b{b}.db"));
            let store = Store::open(&db, &StoreOptions::default())?;
            let (tx, rx) = sync_channel::<WriteOp>(c.engine.queue);
            let writer = BatchWriter::spawn(store, rx)?;
            let src: Box<dyn FrameSource> = Box::new(source::FileListSource::new(
                "bench".into(),
                files.clone(),
                clipd::config::LabelsFrom::None,
            ));
            let enc = TractImageEncoder::load(&engine.bundle, opts)?;
            let model_id = engine.bundle.model_id();
            let sink = BenchSink {
                tx,
                model_id,
                adapter_id: engine.adapter_id(),
                latencies: Vec::new(),
                refiner: None,
            };
            let started = Instant::now();
            let (stats, sink) = pipeline::run(
                vec![src],
                t.clone(),
                Box::new(enc),
                engine.classifier(),
                None,
                sink,
                PipelineOptions {
                    decode_threads: c.engine.decode_threads,
                    queue: c.engine.queue,
                    batch_timeout: Duration::from_millis(c.engine.batch_timeout_ms),
                    top_k: c.top_k,
                    limits: c.decode,
                    keep_embeddings: false,
                    ..Default::default()
                },
                Arc::new(AtomicBool::new(false)),
            )?;
            drop(sink);
            let written = writer
                .join()
                .map_err(|_| anyhow::anyhow!("the database writer thread panicked"))?;
            // The pipeline's time ends when the last frame is committed.
            let elapsed = started.elapsed();
            if let Some(e) = written.first_error {
                return Err(e.into());
            }
            let pipe_ms = elapsed.as_secs_f64() * 1000.0 / stats.frames.max(1) as f64;
            rows.push(Row {
                batch: b,
                enc_ms,
                pipe_ms,
            });
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result?;

    println!(
        "{:>5}  {:>11}  {:>12}  {:>12}  {:>13}  {:>8}",
        "batch", "encoder/s", "encoder ms", "pipeline/s", "pipeline ms", "overhead"
    );
    for r in rows {
        println!(
            "{:>5}  {:>11.1}  {:>12.3}  {:>12.1}  {:>13.3}  {:>7.2}x",
            r.batch,
            1000.0 / r.enc_ms,
            r.enc_ms,
            1000.0 / r.pipe_ms,
            r.pipe_ms,
            r.pipe_ms / r.enc_ms
        );
    }
    println!("(ms are per image; overhead = pipeline ms / encoder ms)");

    if engine.adapter.is_some() {
        let mut enc =
            TractImageEncoder::load(&engine.bundle, EncoderOptions { batch: 1, threads })?;
        let enc_ms = time_encoder(&mut enc, &tensors, files.len())?;
        let mut feats = Vec::with_capacity(tensors.len());
        for px in &tensors {
            let mut e = enc.encode(px, 1)?;
            clipd::encoder::l2_normalize_rows(&mut e, engine.bundle.manifest.embed_dim);
            feats.push(e);
        }
        let zero_us = time_head(&engine.head, &feats, c.top_k);
        let adapted_us = time_head(engine.classifier().as_ref(), &feats, c.top_k);
        let frame_zero = enc_ms * 1000.0 + zero_us;
        println!(
            "head per frame: zero-shot {zero_us:.1} µs, adapter {adapted_us:.1} µs; \
             the adapter adds {:.2}% to encoder + head ({:.3} ms per frame at batch 1)",
            100.0 * (adapted_us - zero_us) / frame_zero,
            frame_zero / 1000.0
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Microseconds per frame for `head` to turn an embedding into a prediction.
fn time_head(head: &dyn Classifier, feats: &[Vec<f32>], k: usize) -> f64 {
    let rounds = (20_000 / feats.len().max(1)).max(1);
    let started = Instant::now();
    let mut sink = 0usize;
    for _ in 0..rounds {
        for f in feats {
            sink = sink.wrapping_add(head.predict(f, k).class);
        }
    }
    std::hint::black_box(sink);
    started.elapsed().as_secs_f64() * 1e6 / (rounds * feats.len()).max(1) as f64
}

/// Milliseconds per image for the encoder alone over `count` images (after one warm-up batch).
fn time_encoder(enc: &mut TractImageEncoder, tensors: &[Vec<f32>], count: usize) -> Result<f64> {
    let b = enc.batch_size();
    let batch_of = |start: usize| -> Vec<f32> {
        (0..b)
            .flat_map(|i| tensors[(start + i) % tensors.len()].iter().copied())
            .collect()
    };
    enc.encode(&batch_of(0), b)?;
    let batches = count.div_ceil(b).max(1);
    let inputs: Vec<Vec<f32>> = (0..batches.min(32)).map(|i| batch_of(i * b)).collect();
    let started = Instant::now();
    for i in 0..batches {
        enc.encode(&inputs[i % inputs.len()], b)?;
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0 / (batches * b) as f64)
}

struct BenchSink {
    tx: std::sync::mpsc::SyncSender<WriteOp>,
    model_id: String,
    adapter_id: Option<String>,
    latencies: Vec<u64>,
    refiner: Option<(RefinerHandle, std::collections::HashMap<String, usize>)>,
}

impl pipeline::Sink for BenchSink {
    fn accept(&mut self, r: pipeline::FrameResult) -> Result<(), String> {
        self.latencies.push(r.latency_us);
        let id = r.seq as i64 + 1;
        if let (Some((h, index)), Ok(c), Some(e)) = (&self.refiner, &r.outcome, &r.embedding) {
            if let Some(&class) = index.get(&c.label) {
                h.push(BufferedFrame {
                    id,
                    ts_ms: r.ts_ms,
                    source: r.source.clone(),
                    class,
                    embedding: e.clone(),
                });
            }
        }
        let mut rec = to_record(r, &self.model_id);
        rec.id = Some(id);
        rec.embedding = None;
        rec.adapter_id = self.adapter_id.clone();
        self.tx
            .send(WriteOp::Frame(rec))
            .map_err(|_| "the database writer stopped".to_string())
    }
}

/// p50/p99 per-frame latency of the whole pipeline (batch 1, frames fed as fast as they
/// decode) without and with a TransCLIP refiner re-deciding a 1024-frame buffer every 64
/// frames beside it.
fn refiner_latency(
    engine: &Engine,
    cfg: &clipd::config::Loaded,
    files: &[std::path::PathBuf],
    threads: usize,
    tmp: &std::path::Path,
) -> Result<()> {
    let c = &cfg.config;
    let labels: Vec<String> = engine.classes.iter().map(|c| c.name.clone()).collect();
    let mut rows = Vec::new();
    for with_refiner in [false, true] {
        let db = tmp.join(format!("latency-{with_refiner}.db"));
        let store = Store::open(&db, &StoreOptions::default())?;
        let (tx, rx) = sync_channel::<WriteOp>(c.engine.queue);
        let writer = BatchWriter::spawn(store, rx)?;
        let classifier: Arc<dyn Classifier> = Arc::from(engine.classifier());
        let (refiner, handle) = if with_refiner {
            let rc = RefineConfig {
                method: "transclip".into(),
                every_frames: 64,
                buffer: 1024,
                ..Default::default()
            };
            let params = RefineContext::params(&rc, labels.len(), false)?;
            let ctx =
                RefineContext::for_engine(engine, classifier.clone(), params, Some(rc.max_changed));
            let (h, r) = clipd::refiner::spawn(&rc, ctx, tx.clone())?;
            let index = labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i))
                .collect();
            (Some(r), Some((h, index)))
        } else {
            (None, None)
        };
        let sink = BenchSink {
            tx,
            model_id: engine.bundle.model_id(),
            adapter_id: engine.adapter_id(),
            latencies: Vec::new(),
            refiner: handle,
        };
        let enc = TractImageEncoder::load(&engine.bundle, EncoderOptions { batch: 1, threads })?;
        let src: Box<dyn FrameSource> = Box::new(source::FileListSource::new(
            "bench".into(),
            files.to_vec(),
            clipd::config::LabelsFrom::None,
        ));
        let (_, sink) = pipeline::run(
            vec![src],
            Transform::from_spec(&engine.bundle.manifest.image),
            Box::new(enc),
            Box::new(classifier),
            None,
            sink,
            PipelineOptions {
                decode_threads: c.engine.decode_threads,
                // A short queue: latency is measured from decode, so a long queue would only
                // measure waiting in it.
                queue: 2,
                batch_timeout: Duration::from_millis(c.engine.batch_timeout_ms),
                top_k: c.top_k,
                limits: c.decode,
                keep_embeddings: with_refiner,
                ..Default::default()
            },
            Arc::new(AtomicBool::new(false)),
        )?;
        let stats = refiner.map(|r| r.finish()).unwrap_or_default();
        // Dropping the sink's sender lets the writer drain and stop.
        let BenchSink { latencies, tx, .. } = sink;
        drop(tx);
        let _ = writer.join();
        rows.push(super::bench_transduct::Latency::from_samples(
            latencies,
            stats.passes,
            stats.total / stats.passes.max(1) as u32,
        ));
    }
    println!("pipeline frame latency, {} frames, batch 1:", files.len());
    for (name, r) in ["without refiner", "with refiner"].iter().zip(&rows) {
        println!(
            "  {name:<16} p50 {:.2} ms  p99 {:.2} ms  ({} refinement passes, {:.0} ms each)",
            r.p50_ms,
            r.p99_ms,
            r.passes,
            r.per_pass.as_secs_f64() * 1000.0
        );
    }
    if let [a, b] = &rows[..] {
        println!(
            "  p99 ratio (with / without): {:.2}",
            b.p99_ms / a.p99_ms.max(1e-9)
        );
    }
    Ok(())
}
