//! `clipd run` and `clipd demo`: the pipeline from configured sources into the history database.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

use clipd::classes::ClassSpec;
use clipd::config::Loaded;
use clipd::daemon::signals::{Signal, Signals};
use clipd::encoder::EncoderOptions;
use clipd::engine::Engine;
use clipd::head::Classifier;
use clipd::pipeline::{self, FramePolicy, FrameResult, Monitor, PipelineOptions, RunStats, Sink};
use clipd::preprocess::Transform;
use clipd::refiner::{
    self, BufferedFrame, RefineConfig, RefineContext, RefinerHandle, RefinerStats,
};
use clipd::source::{self, FrameSource};
use clipd::store::{BatchWriter, FrameRecord, Store, StoreOptions, WriteOp, WriterSummary};
use clipd::transduct::Params;

use super::{
    adapter_path, bundle_dir, demo_config, load_config, one_line, AdapterArg, ModelArgs,
    UsageError, SOME_FAILED,
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
    let ov = Overrides {
        bundle: args.model.bundle,
        adapter: args.adapter.adapter,
        db: args.db,
        threads: args.model.threads,
    };
    execute(cfg, ov, args.once)
}

/// The demo: `run --once` with the built-in configuration.
pub fn demo(args: DemoArgs) -> Result<ExitCode> {
    let cfg = demo_config()?;
    println!(
        "clipd demo: zero-shot classification of the sample frames in {}",
        cfg.resolve(std::path::Path::new(&cfg.config.sources[0].path))
            .display()
    );
    let ov = Overrides {
        bundle: args.bundle,
        adapter: None,
        db: args.db,
        threads: None,
    };
    execute(cfg, ov, true)
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

/// What the command line fixes for the daemon's whole life (a reload re-reads only the config
/// file and the files it and these name).
#[derive(Debug, Clone)]
pub struct Overrides {
    pub bundle: Option<PathBuf>,
    pub adapter: Option<PathBuf>,
    pub db: Option<PathBuf>,
    pub threads: Option<usize>,
}

/// Everything checked and loaded before a configuration goes live: a reload swaps only a fully
/// prepared one in, so a bad new config never stops the running one.
struct Prepared {
    cfg: Loaded,
    engine: Engine,
    refine: Option<(RefineConfig, Params)>,
    db: PathBuf,
}

fn prepare(cfg: Loaded, ov: &Overrides) -> Result<Prepared> {
    let c = &cfg.config;
    if c.sources.is_empty() {
        return Err(UsageError(format!(
            "{}: sources: no [[sources]] configured",
            cfg.file.display()
        ))
        .into());
    }
    let bundle = bundle_dir(ov.bundle.as_deref(), Some(&cfg));
    let adapter = adapter_path(ov.adapter.as_deref(), Some(&cfg));
    let db = ov.db.clone().unwrap_or_else(|| cfg.resolve(&c.store.path));
    let opts = EncoderOptions {
        batch: c.engine.batch,
        threads: ov.threads.unwrap_or(c.engine.threads),
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
    Ok(Prepared {
        cfg,
        engine,
        refine,
        db,
    })
}

/// What one configuration's run did.
struct Finished {
    stats: RunStats,
    written: WriterSummary,
    refined: Option<RefinerStats>,
    model_id: String,
    adapter_id: Option<String>,
    db: PathBuf,
}

/// One configuration running: the pipeline, its store writer and refiner, on their threads.
struct Generation {
    stop: Arc<AtomicBool>,
    monitor: Arc<Monitor>,
    thread: std::thread::JoinHandle<Result<Finished>>,
}

impl Generation {
    /// Open the sources (now: a camera can only be held by one generation at a time), then run
    /// the rest on a thread.
    fn start(p: Prepared, once: bool) -> Result<Generation> {
        let c = &p.cfg.config;
        let sources: Vec<Box<dyn FrameSource>> = c
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| source::open(i, s, &p.cfg.base, once))
            .collect::<Result<_, _>>()?;
        let names: Vec<String> = sources.iter().map(|s| s.name().to_string()).collect();
        let monitor = Monitor::new(&names);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, monitor) = (stop.clone(), monitor.clone());
            std::thread::Builder::new()
                .name("clipd-run".into())
                .spawn(move || serve(p, sources, monitor, stop))?
        };
        Ok(Generation {
            stop,
            monitor,
            thread,
        })
    }

    fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    fn join(self) -> Result<Finished> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))?
    }
}

/// Open the database and run the pipeline until the sources end or `stop` is set.
fn serve(
    p: Prepared,
    sources: Vec<Box<dyn FrameSource>>,
    monitor: Arc<Monitor>,
    stop: Arc<AtomicBool>,
) -> Result<Finished> {
    let Prepared {
        cfg,
        engine,
        refine,
        db,
    } = p;
    let c = &cfg.config;
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::Error::new(e).context(format!("{}", dir.display())))?;
    }
    let store_opts = StoreOptions {
        batch_rows: c.store.commit_rows,
        batch_ms: c.store.commit_ms,
        synchronous: c.store.synchronous,
    };
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
            let index = ctx
                .labels
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
        policies: c.sources.iter().map(FramePolicy::from_config).collect(),
        monitor: Some(monitor),
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
        stop,
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
    Ok(Finished {
        stats,
        written,
        refined,
        model_id,
        adapter_id,
        db,
    })
}

/// How often the control loop wakes to refresh status and feed the watchdog.
const TICK: Duration = Duration::from_millis(200);

/// Run the daemon: start the configuration, then serve signals until the sources end (`once`)
/// or a SIGTERM/SIGINT stops it. SIGHUP reloads the config file (and the adapter and bundle it
/// names); a config that fails to load is logged and the running one stays.
pub fn execute(cfg: Loaded, ov: Overrides, once: bool) -> Result<ExitCode> {
    let signals = Signals::listen()?;
    let mut current = cfg.clone();
    let mut gen = Generation::start(prepare(cfg, &ov)?, once)?;
    let mut shutdown: Option<Instant> = None;
    let mut reloads = 0u64;
    let finished = loop {
        match signals.next(TICK) {
            Some(Signal::Stop) if shutdown.is_some() => {
                log::error!("second stop signal: exiting at once without draining");
                std::process::exit(i32::from(SOME_FAILED));
            }
            Some(Signal::Stop) => {
                log::info!(
                    "stop requested: finishing queued frames and committing (at most {:.0} s)",
                    current.config.daemon.shutdown_timeout_secs
                );
                gen.stop.store(true, Ordering::Relaxed);
                shutdown = Some(Instant::now());
            }
            Some(Signal::Reload) if shutdown.is_none() => match reload(&current, &ov) {
                Ok((cfg, prepared)) => {
                    gen.stop.store(true, Ordering::Relaxed);
                    let done = gen.join();
                    report_generation(done, "before reload");
                    gen = match Generation::start(prepared, once) {
                        Ok(g) => {
                            current = cfg;
                            reloads += 1;
                            log::info!("configuration reloaded ({reloads} so far)");
                            g
                        }
                        Err(e) => {
                            log::error!(
                                "reload: {}; restarting with the previous configuration",
                                one_line(&e)
                            );
                            Generation::start(prepare(current.clone(), &ov)?, once)?
                        }
                    };
                }
                Err(e) => log::error!(
                    "reload refused, the running configuration stays: {}",
                    one_line(&e)
                ),
            },
            Some(Signal::Reload) => {}
            None => {}
        }
        if let Some(t0) = shutdown {
            let limit = Duration::from_secs_f64(current.config.daemon.shutdown_timeout_secs);
            if t0.elapsed() > limit && !gen.is_finished() {
                log::error!(
                    "shutdown did not finish within {:.0} s (daemon.shutdown_timeout_secs): exiting; \
                     frames still queued are lost, committed ones are safe",
                    limit.as_secs_f64()
                );
                std::process::exit(i32::from(SOME_FAILED));
            }
        }
        if gen.is_finished() {
            break gen.join();
        }
        let _ = &gen.monitor;
    };
    let f = finished?;
    print_summary(
        &f.stats,
        &f.written,
        &f.db,
        &f.model_id,
        f.adapter_id.as_deref(),
    );
    if let Some(r) = &f.refined {
        println!(
            "refinement: {} passes ({} held back by max_changed, {} failed), {:.1} ms per pass, {} state changes",
            r.passes,
            r.guarded,
            r.failed,
            r.total.as_secs_f64() * 1000.0 / r.passes.max(1) as f64,
            r.state_changes
        );
    }
    if let Some(e) = f.written.first_error {
        return Err(e.into());
    }
    Ok(if f.stats.failed > 0 {
        ExitCode::from(SOME_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Re-read the config file and load everything it names, without touching the running one.
fn reload(current: &Loaded, ov: &Overrides) -> Result<(Loaded, Prepared)> {
    log::info!("reloading {}", current.file.display());
    let cfg = clipd::config::load(&current.file)?;
    let prepared = prepare(cfg.clone(), ov)?;
    Ok((cfg, prepared))
}

/// Log how a configuration's run ended (a reload ends one).
fn report_generation(done: Result<Finished>, when: &str) {
    match done {
        Ok(f) => log::info!(
            "{when}: {} frames ({} classified, {} failed, {} skipped, {} dropped); database: {}",
            f.stats.frames,
            f.stats.classified,
            f.stats.failed,
            f.stats.skipped,
            f.stats.dropped,
            f.written
        ),
        Err(e) => log::error!("{when}: the pipeline ended with an error: {}", one_line(&e)),
    }
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
