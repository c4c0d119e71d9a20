//! `clipd run` and `clipd demo`: the pipeline from configured sources into the history database.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use clipd::classes::ClassSpec;
use clipd::config::Loaded;
use clipd::encoder::EncoderOptions;
use clipd::engine::Engine;
use clipd::head::Classifier;
use clipd::pipeline::{self, FrameResult, PipelineOptions, RunStats, Sink};
use clipd::preprocess::Transform;
use clipd::refiner::{self, BufferedFrame, RefineContext, RefinerHandle};
use clipd::source::{self, FrameSource};
use clipd::store::{BatchWriter, FrameRecord, Store, StoreOptions, WriteOp, WriterSummary};

use super::{
    adapter_path, bundle_dir, demo_config, load_config, AdapterArg, ModelArgs, UsageError,
    SOME_FAILED,
};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapter: AdapterArg,
    /// Exit once every source is exhausted instead of watching for new frames.
    #[arg(long)]
    once: bool,
    /// History database (overrides the config's store.path).
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Model bundle directory [default: the shipped models/tiny-clip].
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// History database [default: out/demo.db in the source tree].
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
}

/// Classify every frame from the config's sources and log it; prints a summary at the end.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    let Some(cfg) = load_config(args.model.config.as_deref())? else {
        return Err(UsageError(
            "no configuration: pass --config FILE (see clipd.toml.example), or try `clipd demo`"
                .into(),
        )
        .into());
    };
    let bundle = bundle_dir(args.model.bundle.as_deref(), Some(&cfg));
    let adapter = adapter_path(args.adapter.adapter.as_deref(), Some(&cfg));
    execute(
        &cfg,
        bundle,
        adapter,
        args.db,
        args.model.threads,
        args.once,
    )
}

/// The demo: `run --once` with the built-in configuration.
pub fn demo(args: DemoArgs) -> Result<ExitCode> {
    let cfg = demo_config()?;
    let bundle = bundle_dir(args.bundle.as_deref(), Some(&cfg));
    println!(
        "clipd demo: zero-shot classification of the sample frames in {}",
        cfg.resolve(std::path::Path::new(&cfg.config.sources[0].path))
            .display()
    );
    execute(&cfg, bundle, None, args.db, None, true)
}

/// Sends results to the store thread, numbering rows itself so the refiner can name them, and
/// feeds classified frames to the refiner's buffer.
struct StoreSink {
    tx: SyncSender<WriteOp>,
    model_id: String,
    adapter_id: Option<String>,
    /// Row ids are `first_id + seq`.
    first_id: i64,
    keep_embeddings: bool,
    refiner: Option<(RefinerHandle, HashMap<String, usize>)>,
}

impl Sink for StoreSink {
    fn accept(&mut self, r: FrameResult) -> Result<(), String> {
        if let Err(f) = &r.outcome {
            log::warn!("{}", f.message);
        }
        let id = self.first_id + i64::try_from(r.seq).unwrap_or(i64::MAX - self.first_id);
        if let (Some((refiner, index)), Ok(c), Some(e)) = (&self.refiner, &r.outcome, &r.embedding)
        {
            if let Some(&class) = index.get(&c.label) {
                refiner.push(BufferedFrame {
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
        rec.adapter_id = self.adapter_id.clone();
        if !self.keep_embeddings {
            rec.embedding = None;
        }
        self.tx
            .send(WriteOp::Frame(rec))
            .map_err(|_| "the database writer stopped".to_string())
    }
}

pub fn to_record(r: FrameResult, model_id: &str) -> FrameRecord {
    let mut rec = match r.outcome {
        Ok(c) => FrameRecord::classified(r.ts_ms, r.source, r.reference, model_id, c.top_k),
        Err(f) => FrameRecord::failed(r.ts_ms, r.source, r.reference, model_id, f.message),
    };
    rec.latency_us = Some(r.latency_us);
    rec.embedding = r.embedding;
    rec
}

/// Open sources, load the model, then (only then) open the database and run.
pub fn execute(
    cfg: &Loaded,
    bundle: PathBuf,
    adapter: Option<PathBuf>,
    db: Option<PathBuf>,
    threads: Option<usize>,
    once: bool,
) -> Result<ExitCode> {
    let c = &cfg.config;
    if c.sources.is_empty() {
        return Err(UsageError(format!(
            "{}: sources: no [[sources]] configured",
            cfg.file.display()
        ))
        .into());
    }
    let sources: Vec<Box<dyn FrameSource>> = c
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| source::open(i, s, &cfg.base, once))
        .collect::<Result<_, _>>()?;
    let db = db.unwrap_or_else(|| cfg.resolve(&c.store.path));
    let opts = EncoderOptions {
        batch: c.engine.batch,
        threads: threads.unwrap_or(c.engine.threads),
    };
    let classes = ClassSpec::from_config(&c.classes, &c.prompts);
    let engine = Engine::load(&bundle, classes, opts, Some(&db), adapter.as_deref())?;
    let refine = match &c.refine {
        Some(rc) => {
            let few_shot = engine.adapter.as_ref().is_some_and(|a| a.support.is_some());
            let params = RefineContext::params(rc, engine.classes.len(), few_shot)
                .map_err(|e| UsageError(format!("{}: refine: {e}", cfg.file.display())))?;
            Some((rc.clone(), params))
        }
        None => None,
    };
    match &engine.adapter {
        Some(a) => log::info!(
            "model {} loaded; adapter {} ({}, {} shots per class)",
            engine.bundle.model_id(),
            a.id,
            a.meta.method,
            a.meta.shots
        ),
        None => log::info!(
            "model {} loaded; {} prompts from cache, {} embedded",
            engine.bundle.model_id(),
            engine.cached_prompts,
            engine.new_prompt_embeddings.len()
        ),
    }

    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::Error::new(e).context(format!("{}", dir.display())))?;
    }
    let store_opts = StoreOptions::from_config(&c.store);
    let mut store = Store::open(&db, &store_opts)?;
    engine.save_text_side(&mut store)?;
    let first_id = store.max_frame_id()? + 1;

    let (tx, rx) = sync_channel::<WriteOp>(c.engine.queue.max(1));
    let writer = BatchWriter::spawn(store, rx)?;
    let model_id = engine.bundle.model_id();
    let adapter_id = engine.adapter_id();
    let head: Arc<dyn Classifier> = Arc::from(engine.classifier());
    let refiner = match &refine {
        Some((rc, params)) => {
            let ctx = RefineContext::for_engine(
                &engine,
                head.clone(),
                params.clone(),
                Some(rc.max_changed),
            );
            let labels = &ctx.labels;
            let index = labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i))
                .collect();
            let (handle, refiner) = refiner::spawn(rc, ctx, tx.clone())?;
            Some((handle, index, refiner))
        }
        None => None,
    };
    let (refiner_handle, refiner) = match refiner {
        Some((h, i, r)) => (Some((h, i)), Some(r)),
        None => (None, None),
    };
    let sink = StoreSink {
        tx,
        model_id: model_id.clone(),
        adapter_id: adapter_id.clone(),
        first_id,
        keep_embeddings: c.store.embeddings,
        refiner: refiner_handle,
    };
    let labels = engine.label_index();
    let popts = PipelineOptions {
        decode_threads: c.engine.decode_threads,
        queue: c.engine.queue,
        batch_timeout: Duration::from_millis(c.engine.batch_timeout_ms),
        top_k: c.top_k,
        limits: c.decode,
        keep_embeddings: c.store.embeddings || refine.is_some(),
    };
    let transform = Transform::from_spec(&engine.bundle.manifest.image);
    let result = pipeline::run(
        sources,
        transform,
        Box::new(engine.image_encoder),
        Box::new(head),
        Some(labels),
        sink,
        popts,
        Arc::new(AtomicBool::new(false)),
    );
    // The sink (and with it the channel's sender) is dropped by now, so the writer drains,
    // commits and exits.
    // The refiner's last pass goes out before its sender is dropped, so it is recorded.
    let refined = refiner.map(|r| r.finish());
    let (stats, sink) = match result {
        Ok(x) => x,
        Err(e) => {
            let _ = writer.join();
            return Err(e.into());
        }
    };
    drop(sink);
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the database writer thread panicked"))?;
    print_summary(&stats, &written, &db, &model_id, adapter_id.as_deref());
    if let Some(r) = refined {
        println!(
            "refinement: {} passes ({} held back by max_changed, {} failed), {:.1} ms per pass, {} state changes",
            r.passes,
            r.guarded,
            r.failed,
            r.total.as_secs_f64() * 1000.0 / r.passes.max(1) as f64,
            r.state_changes
        );
    }
    if let Some(e) = written.first_error {
        return Err(e.into());
    }
    Ok(if stats.failed > 0 {
        ExitCode::from(SOME_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_summary(
    s: &RunStats,
    w: &WriterSummary,
    db: &std::path::Path,
    model_id: &str,
    adapter_id: Option<&str>,
) {
    let mut out = String::new();
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    out.push_str(&format!(
        "frames: {} ({} classified, {} failed) in {:.2} s, {:.1} frames/s\n",
        s.frames,
        s.classified,
        s.failed,
        secs,
        s.frames as f64 / secs
    ));
    if !s.failures.is_empty() {
        let kinds: Vec<String> = s.failures.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out.push_str(&format!("failures: {}\n", kinds.join(", ")));
    }
    if let (Some(t1), Some(t5)) = (s.accuracy_top1(), s.accuracy_top5()) {
        out.push_str(&format!(
            "accuracy vs known labels: top-1 {:.1}% ({}/{}), top-5 {:.1}%\n",
            100.0 * t1,
            s.correct_top1,
            s.labelled,
            100.0 * t5
        ));
    }
    if !s.unknown_truth.is_empty() {
        let names: Vec<&str> = s.unknown_truth.keys().map(String::as_str).take(5).collect();
        out.push_str(&format!(
            "known labels matching no class (not scored): {}\n",
            names.join(", ")
        ));
    }
    if s.frames > 0 {
        out.push_str(&format!(
            "latency: mean {:.1} ms/frame; encoder {:.2} ms/frame over {} batches\n",
            s.latency_us_total as f64 / 1000.0 / s.frames as f64,
            s.encode_time.as_secs_f64() * 1000.0 / s.classified.max(1) as f64,
            s.batches
        ));
    }
    let mut labels: Vec<(&String, &u64)> = s.per_label.iter().collect();
    labels.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    if !labels.is_empty() {
        let top: Vec<String> = labels
            .iter()
            .take(8)
            .map(|(l, n)| format!("{l} {n}"))
            .collect();
        out.push_str(&format!("most frequent labels: {}\n", top.join(", ")));
    }
    out.push_str(&format!("model: {model_id}\n"));
    if let Some(a) = adapter_id {
        out.push_str(&format!("adapter: {a}\n"));
    }
    out.push_str(&format!("database: {} ({w})\n", db.display()));
    // A closed stdout (e.g. piped into `head`) is not worth failing the run over.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
}
