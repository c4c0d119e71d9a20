//! `clipd bench`: image encoder alone versus the whole pipeline (decode + preprocess + encode +
//! head + store), at each batch size; with an adapter, also the head's own cost per frame
//! (zero-shot versus adapter), which is what a few-shot adapter adds to the frame path.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use clipd::bundle::Bundle;
use clipd::config::{EngineConfig, ModelOverrides};
use clipd::encoder::{
    load_image_encoder, Backend, BackendKind, EncoderOptions, ImageEncoder, TractImageEncoder,
    TractStock,
};
use clipd::engine::Engine;
use clipd::head::Classifier;
use clipd::pipeline::{self, Pipeline, PipelineOptions, SinkError};
use clipd::preprocess::Transform;
use clipd::source::{self, FrameSource, Next, Payload};
use clipd::store::{BatchWriter, Store, StoreOptions, WriteOp};

use super::{bundle_dir, demo_config, load_config, AdapterArg, UsageError};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model bundle directory [default: the config's `bundle`, else models/tiny-clip].
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// Configuration file [default: ./clipd.toml if it exists, else the built-in demo].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Encoder thread counts to measure, comma separated [default: the config's engine.threads].
    #[arg(long, value_name = "N,..", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Backends to measure, comma separated: tract, ort [default: the config's engine.backend].
    #[arg(long, value_name = "NAME,..", value_delimiter = ',', value_parser = ["tract", "ort"])]
    backend: Vec<String>,
    /// tract only: frame-level parallelism, comma separated lane counts to measure [default:
    /// the config's engine.lanes]. A full batch runs as that many single-thread runs of the
    /// shared plan side by side; a batch that fits one lane gets --threads threads.
    #[arg(long, value_name = "N,..", value_delimiter = ',')]
    lanes: Vec<usize>,
    /// tract only, for comparison: run without an explicit executor (tract's built-in
    /// single-thread path, whatever --threads says).
    #[arg(long, hide = true)]
    tract_no_executor: bool,
    /// tract only, for comparison: keep tract's own softmax (rows evaluated one by one) where
    /// clipd would swap in its vectorised row softmax.
    #[arg(long, hide = true)]
    tract_stock_softmax: bool,
    /// tract only, for comparison: keep tract's own matrix products for the dense
    /// (constant-weight) layers where clipd would run its AVX2 kernel.
    #[arg(long, hide = true)]
    tract_stock_matmul: bool,
    /// tract only, for tuning: MMM panel count below which tract does not thread a product
    /// (tract's default 64).
    #[arg(long, hide = true, value_name = "PANELS")]
    tract_panel_threshold: Option<usize>,
    /// tract only: after timing, run each configuration's batch N more times with every node
    /// timed, and print where the time goes per operator kind.
    #[arg(long, value_name = "N")]
    tract_profile: Option<usize>,
    /// Run the bundle's reduced-precision encoders of this name (e.g. int8) [default: the
    /// config's engine.variant, else the fp32 originals].
    #[arg(long, value_name = "NAME")]
    variant: Option<String>,
    #[command(flatten)]
    adapter: AdapterArg,
    /// Batch sizes to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batch: Vec<usize>,
    /// Use at most this many frames from the config's sources (0 = all); each timed round
    /// encodes this many images.
    #[arg(long, default_value_t = 0)]
    frames: usize,
    /// Timed rounds per configuration, after one warm-up batch; min and median are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Time the image encoder alone: skip the whole pipeline, the text side and the head.
    #[arg(long)]
    encoder_only: bool,
    /// Print one JSON object per configuration (for scripts) instead of the table.
    #[arg(long)]
    json: bool,
    /// Benchmark transductive refinement instead: the algorithms over N and K, and the
    /// pipeline's p50/p99 frame latency with and without the refiner running.
    #[arg(long)]
    transduct: bool,
    /// With --transduct: a refinement pass every this many frames in the latency comparison
    /// [default: the daemon's default, 256].
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    refine_every: u64,
    /// With --transduct: TransCLIP parameter overrides for the latency comparison's refiner,
    /// key=value (as `[refine] set`), repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    refine_set: Vec<String>,
}

/// One measured configuration.
struct Row {
    backend: &'static str,
    /// The bundle variant timed (`None`: fp32).
    variant: Option<String>,
    threads: usize,
    lanes: usize,
    batch: usize,
    /// Seconds to load and prepare the encoder (parse, optimise, plan).
    load_s: f64,
    /// Encoder ms per image, one value per timed round.
    rounds: Vec<f64>,
    /// CPU ms per image (all of the process's threads), one value per timed round: on a shared
    /// machine, for one thread, the time the work would take with the core to itself.
    cpu: Vec<f64>,
    /// Whole-pipeline ms per image (None with --encoder-only).
    pipe_ms: Option<f64>,
}

impl Row {
    fn min(&self) -> f64 {
        self.rounds.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn median(&self) -> f64 {
        median(&self.rounds)
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": self.backend,
            "variant": self.variant,
            "threads": self.threads,
            "lanes": self.lanes,
            "batch": self.batch,
            "load_s": self.load_s,
            "ms_per_image": self.rounds,
            "cpu_ms_per_image": self.cpu,
            "pipeline_ms_per_image": self.pipe_ms,
        })
    }
}

/// The median of `v` (the mean of the middle two for an even count); NaN when empty.
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The backends named by `--backend` (the config's when none), as the config would set them up.
fn backends(names: &[String], engine: &EngineConfig, base: &Path) -> Vec<(&'static str, Backend)> {
    let kinds = if names.is_empty() {
        vec![engine.backend]
    } else {
        names
            .iter()
            .map(|n| match n.as_str() {
                "ort" => BackendKind::Ort,
                _ => BackendKind::Tract,
            })
            .collect()
    };
    kinds
        .into_iter()
        .map(|kind| {
            let mut e = engine.clone();
            e.backend = kind;
            let name = match kind {
                BackendKind::Tract => "tract",
                BackendKind::Ort => "ort",
            };
            (name, e.backend(base))
        })
        .collect()
}

/// Measure throughput on the config's frames (the built-in demo frames without --config).
pub fn bench(args: BenchArgs) -> Result<ExitCode> {
    if args.batch.is_empty() || args.batch.contains(&0) {
        return Err(UsageError("--batch takes sizes of at least 1, e.g. 1,8".into()).into());
    }
    if args.lanes.contains(&0) {
        return Err(UsageError("--lanes takes counts of at least 1, e.g. 1,2".into()).into());
    }
    if args.threads.contains(&0) {
        return Err(UsageError("--threads takes counts of at least 1, e.g. 1,2".into()).into());
    }
    if args.rounds == 0 {
        return Err(UsageError("--rounds must be at least 1".into()).into());
    }
    if let Some(panels) = args.tract_panel_threshold {
        tract_linalg::multithread::set_threading_panel_threshold(panels);
    }
    let cfg = match load_config(args.config.as_deref())? {
        Some(c) => c,
        None => demo_config()?,
    };
    let c = &cfg.config;
    let thread_counts = if args.threads.is_empty() {
        vec![c.engine.threads]
    } else {
        args.threads.clone()
    };
    let threads = thread_counts[0];
    let variant = args.variant.as_deref().or(c.engine.variant.as_deref());
    if let Some(v) = variant.filter(|v| !clipd::bundle::is_variant_name(v)) {
        return Err(UsageError(format!(
            "--variant {v:?}: variant names are lowercase ASCII letters, digits, '_' and '-', e.g. int8"
        ))
        .into());
    }
    let bundle_path = bundle_dir(args.bundle.as_deref(), Some(&cfg));
    let backends = backends(&args.backend, &c.engine, &cfg.base);

    // The frames: every file the sources list now.
    let mut files = Vec::new();
    for spec in cfg.source_specs() {
        let mut src = source::open(&spec, true)?;
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
    // The encoder alone needs neither the text side nor the head: skip their start-up cost.
    let engine = if args.encoder_only && !args.transduct {
        None
    } else {
        Some(Engine::from_config(
            &cfg,
            &ModelOverrides {
                bundle: Some(bundle_path.clone()),
                adapter: args.adapter.adapter.clone(),
                threads: Some(threads),
                batch: Some(1),
                lanes: Some(1),
                backend: Some(Backend::Tract),
                variant: variant.map(str::to_string),
                no_text_cache: true,
                ..Default::default()
            },
        )?)
    };
    let bundle = match &engine {
        Some(e) => e.bundle.clone(),
        None => Bundle::open(&bundle_path)?.with_variant(variant)?,
    };
    let t = Transform::from_spec(&bundle.manifest.image);
    let mut tensors = Vec::new();
    for p in files.iter().take(256) {
        if let Ok(px) = t.load(p, &c.decode) {
            tensors.push(px);
        }
    }
    if tensors.is_empty() {
        return Err(UsageError("bench: none of the frames could be decoded".into()).into());
    }
    if !args.json {
        println!(
            "model {}{} (image {}px, embed {}), {} frames per round, {} rounds",
            bundle.model_id(),
            bundle
                .variant()
                .map(|v| format!(" variant {v}"))
                .unwrap_or_default(),
            bundle.manifest.image.size,
            bundle.manifest.embed_dim,
            files.len(),
            args.rounds
        );
    }
    if let (Some(engine), false) = (&engine, args.json) {
        println!("{} classes", engine.classes.len());
        if let Some(a) = &engine.adapter {
            println!(
                "adapter {} ({}, {} shots per class)",
                a.id, a.meta.method, a.meta.shots
            );
        }
    }

    let tmp = std::env::temp_dir().join(format!("clipd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    if args.transduct {
        let result = match &engine {
            Some(engine) => {
                let rc = super::bench_transduct::latency::refine_config(
                    args.refine_every as usize,
                    &args.refine_set,
                );
                super::bench_transduct::latency::refiner_latency(
                    engine, &cfg, &files, threads, &tmp, &rc,
                )
            }
            None => Ok(()),
        };
        let _ = std::fs::remove_dir_all(&tmp);
        return result.map(|_| ExitCode::SUCCESS);
    }
    let mut rows = Vec::new();
    let result = (|| -> Result<()> {
        for (name, backend) in &backends {
            let lane_counts = match backend {
                Backend::Tract if args.lanes.is_empty() => vec![c.engine.lanes],
                Backend::Tract => args.lanes.clone(),
                _ => vec![1],
            };
            for (&threads, &lanes) in thread_counts
                .iter()
                .flat_map(|t| lane_counts.iter().map(move |l| (t, l)))
            {
                for &b in &args.batch {
                    // The config's lanes are capped at the batch, as the daemon caps them;
                    // lane counts asked for explicitly are measured only where they fit.
                    let lanes = match args.lanes.is_empty() {
                        true => lanes.min(b),
                        false if lanes > b => continue,
                        false => lanes,
                    };
                    let opts = EncoderOptions {
                        batch: b,
                        threads,
                        lanes,
                    };
                    let stock = TractStock {
                        no_executor: args.tract_no_executor,
                        softmax: args.tract_stock_softmax,
                        matmul: args.tract_stock_matmul,
                    };
                    let load = |opts| -> Result<Box<dyn ImageEncoder>> {
                        Ok(match backend {
                            Backend::Tract => {
                                Box::new(TractImageEncoder::load_tuned(&bundle, opts, stock)?)
                            }
                            _ => load_image_encoder(&bundle, opts, backend)?,
                        })
                    };
                    if let (Backend::Tract, Some(runs)) = (backend, args.tract_profile) {
                        let enc = TractImageEncoder::load_tuned(
                            &bundle,
                            EncoderOptions { lanes: 1, ..opts },
                            stock,
                        )?;
                        let pixels: Vec<f32> =
                            tensors.iter().cycle().take(b).flatten().copied().collect();
                        print_profile(&enc.profile(&pixels, runs)?, threads, b, runs);
                    }
                    let started = Instant::now();
                    let mut enc = load(opts)?;
                    let load_s = started.elapsed().as_secs_f64();
                    let (rounds, cpu) =
                        time_encoder(enc.as_mut(), &tensors, files.len(), args.rounds)?;
                    let pipe_ms = match &engine {
                        Some(engine) => {
                            Some(time_pipeline(engine, enc, opts, &cfg, &files, &t, &tmp)?)
                        }
                        None => None,
                    };
                    let row = Row {
                        backend: name,
                        variant: bundle.variant().map(str::to_string),
                        threads,
                        lanes,
                        batch: b,
                        load_s,
                        rounds,
                        cpu,
                        pipe_ms,
                    };
                    if args.json {
                        println!("{}", row.json());
                    }
                    rows.push(row);
                }
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    if args.json {
        return Ok(ExitCode::SUCCESS);
    }

    println!(
        "{:>7}  {:>7}  {:>5}  {:>5}  {:>7}  {:>18}  {:>9}  {:>7}  {:>12}  {:>8}",
        "backend",
        "threads",
        "lanes",
        "batch",
        "load s",
        "encoder ms min/med",
        "encoder/s",
        "cpu ms",
        "pipeline ms",
        "overhead"
    );
    for r in &rows {
        let (pipe, overhead) = match r.pipe_ms {
            Some(p) => (
                format!("{p:.3}"),
                format!("{:.2}x", p / r.median().max(1e-9)),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:>7}  {:>7}  {:>5}  {:>5}  {:>7.2}  {:>8.2} / {:>7.2}  {:>9.1}  {:>7.2}  {:>12}  {:>8}",
            r.backend,
            r.threads,
            r.lanes,
            r.batch,
            r.load_s,
            r.min(),
            r.median(),
            1000.0 / r.median(),
            median(&r.cpu),
            pipe,
            overhead
        );
    }
    println!(
        "(ms are per image; encoder/s from the median; cpu ms: process CPU time per image, \
         median; overhead = pipeline ms / encoder ms)"
    );

    if let Some(engine) = engine.as_ref().filter(|e| e.adapter.is_some()) {
        let mut enc = TractImageEncoder::load(
            &engine.bundle,
            EncoderOptions {
                batch: 1,
                threads,
                lanes: 1,
            },
        )?;
        let enc_ms = median(&time_encoder(&mut enc, &tensors, files.len(), 1)?.0);
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

/// Milliseconds per image of the whole pipeline (decode, preprocess, encode, head, store) over
/// `files`, ending when the last frame is committed.
fn time_pipeline(
    engine: &Engine,
    enc: Box<dyn ImageEncoder>,
    opts: EncoderOptions,
    cfg: &clipd::config::Loaded,
    files: &[PathBuf],
    t: &Transform,
    tmp: &Path,
) -> Result<f64> {
    let c = &cfg.config;
    let db = tmp.join(format!("bench-b{}-t{}.db", opts.batch, opts.threads));
    let _ = std::fs::remove_file(&db);
    let store = Store::open(&db, &StoreOptions::default())?;
    let (tx, rx) = sync_channel::<WriteOp>(c.engine.queue);
    let writer = BatchWriter::spawn(store, rx)?;
    let src: Box<dyn FrameSource> = Box::new(source::FileListSource::new(
        "bench".into(),
        files.to_vec(),
        clipd::config::LabelsFrom::None,
    ));
    let sink = BenchSink {
        tx,
        model_id: engine.bundle.model_id(),
        adapter_id: engine.adapter_id(),
    };
    let started = Instant::now();
    let (stats, sink) = Pipeline {
        transform: t.clone(),
        encoder: enc,
        head: engine.classifier(),
        labels: None,
        options: PipelineOptions {
            keep_embeddings: false,
            policies: Vec::new(),
            ..PipelineOptions::from_config(c)
        },
    }
    .run(vec![src], sink, Arc::new(AtomicBool::new(false)))?;
    drop(sink);
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the database writer thread panicked"))?;
    let elapsed = started.elapsed();
    if let Some(e) = written.first_error {
        return Err(e.into());
    }
    Ok(elapsed.as_secs_f64() * 1000.0 / stats.frames.max(1) as f64)
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

/// Wall and process-CPU milliseconds per image for the encoder alone, one pair per round of
/// `count` images (rounded up to whole batches), after one warm-up batch.
fn time_encoder(
    enc: &mut dyn ImageEncoder,
    tensors: &[Vec<f32>],
    count: usize,
    rounds: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let b = enc.batch_size();
    let batch_of = |start: usize| -> Vec<f32> {
        (0..b)
            .flat_map(|i| tensors[(start + i) % tensors.len()].iter().copied())
            .collect()
    };
    enc.encode(&batch_of(0), b)?;
    let batches = count.div_ceil(b).max(1);
    let inputs: Vec<Vec<f32>> = (0..batches.min(32)).map(|i| batch_of(i * b)).collect();
    let (mut wall, mut cpu) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    let images = (batches * b) as f64;
    for _ in 0..rounds {
        let cpu0 = process_cpu_ms();
        let started = Instant::now();
        for i in 0..batches {
            enc.encode(&inputs[i % inputs.len()], b)?;
        }
        wall.push(started.elapsed().as_secs_f64() * 1000.0 / images);
        cpu.push((process_cpu_ms() - cpu0) / images);
    }
    Ok((wall, cpu))
}

/// The per-operator table of `--tract-profile`: ms per image in each operator kind, its share,
/// and node evaluations per run.
fn print_profile(ops: &[clipd::encoder::OpTime], threads: usize, batch: usize, runs: usize) {
    let total: f64 = ops.iter().map(|o| o.total.as_secs_f64()).sum();
    let images = (runs.max(1) * batch) as f64;
    println!(
        "tract profile, {threads} thread(s), batch {batch}, {runs} run(s): {:.2} ms per image in operators",
        total * 1000.0 / images
    );
    println!(
        "{:>28}  {:>10}  {:>6}  {:>9}",
        "operator", "ms/image", "share", "nodes/run"
    );
    for o in ops {
        let secs = o.total.as_secs_f64();
        println!(
            "{:>28}  {:>10.3}  {:>5.1}%  {:>9}",
            o.op,
            secs * 1000.0 / images,
            100.0 * secs / total.max(1e-12),
            o.calls / runs.max(1)
        );
    }
}

/// CPU time consumed so far by every thread of this process, in milliseconds.
fn process_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}

struct BenchSink {
    tx: std::sync::mpsc::SyncSender<WriteOp>,
    model_id: String,
    adapter_id: Option<String>,
}

impl pipeline::Sink for BenchSink {
    fn accept(&mut self, r: pipeline::FrameResult) -> Result<(), SinkError> {
        let id = r.seq as i64 + 1;
        let mut rec = r.into_record(&self.model_id);
        rec.id = Some(id);
        rec.embedding = None;
        rec.adapter_id = self.adapter_id.clone();
        self.tx
            .send(WriteOp::Frame(rec))
            .map_err(|_| SinkError::WriterStopped)
    }
}
