//! `clipd run` and `clipd demo`: the pipeline from configured sources into the history database.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

use clipd::classes::ClassSpec;
use clipd::config::Loaded;
use clipd::daemon::notify::Notifier;
use clipd::daemon::signals::{Signal, Signals};
use clipd::daemon::status::{self, RateMeter, RefinerStatus, SourceStatus, StatusReport};
use clipd::encoder::EncoderOptions;
use clipd::engine::Engine;
use clipd::head::Classifier;
use clipd::pipeline::{self, FramePolicy, FrameResult, Monitor, PipelineOptions, RunStats, Sink};
use clipd::preprocess::Transform;
use clipd::refiner::{
    self, RefineConfig, RefineContext, RefinerHandle, RefinerMonitor, RefinerStats,
};
use clipd::source::{self, FrameSource};
use clipd::store::{
    BatchWriter, FrameRecord, Store, StoreOptions, WriteOp, WriterProgress, WriterSummary,
};
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
        if let Some((refiner, classes)) = &self.refiner {
            refiner.push_result(id, &r, classes);
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
        lanes: c.engine.lanes,
    };
    let classes = ClassSpec::from_config(&c.classes, &c.prompts);
    let engine = Engine::load(
        &c.engine.backend(&cfg.base),
        c.engine.variant.as_deref(),
        &bundle,
        classes,
        opts,
        Some(&db),
        adapter.as_deref(),
    )?;
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
    /// The store writer's counters, once the database is open.
    store: Arc<OnceLock<Arc<WriterProgress>>>,
    /// The refiner's progress, once it runs.
    refiner: Arc<OnceLock<RefinerMonitor>>,
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
        let store = Arc::new(OnceLock::new());
        let refiner = Arc::new(OnceLock::new());
        let thread = {
            let live = Live {
                monitor: monitor.clone(),
                store: store.clone(),
                refiner: refiner.clone(),
            };
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("clipd-run".into())
                .spawn(move || serve(p, sources, live, stop))?
        };
        Ok(Generation {
            stop,
            monitor,
            store,
            refiner,
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

/// Where a generation publishes its live counters for the control loop.
struct Live {
    monitor: Arc<Monitor>,
    store: Arc<OnceLock<Arc<WriterProgress>>>,
    refiner: Arc<OnceLock<RefinerMonitor>>,
}

/// Open the database and run the pipeline until the sources end or `stop` is set.
fn serve(
    p: Prepared,
    sources: Vec<Box<dyn FrameSource>>,
    live: Live,
    stop: Arc<AtomicBool>,
) -> Result<Finished> {
    let Live {
        monitor,
        store: store_progress,
        refiner: refiner_live,
    } = live;
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
    let store_opts = StoreOptions::from_config(&c.store);
    let mut store = Store::open(&db, &store_opts)?;
    engine.save_text_side(&mut store)?;
    let first_id = store.max_frame_id()? + 1;

    let (tx, rx) = sync_channel::<WriteOp>(c.engine.queue.max(1));
    let writer = BatchWriter::spawn(store, rx)?;
    let _ = store_progress.set(writer.progress());
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
            let _ = refiner_live.set(refiner.live());
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

/// READY=1 waits for the first classified frame, but no longer than this: a camera unplugged at
/// boot must not turn into a start timeout and a restart loop (the STATUS= line says why no
/// frame has come yet, and the camera source keeps reconnecting).
const READY_GRACE: Duration = Duration::from_secs(60);

/// The daemon's face to the outside: systemd notifications, the watchdog, the status file.
struct Reporter {
    notifier: Notifier,
    status_path: PathBuf,
    interval: Duration,
    hung_after: Duration,
    started: Instant,
    base: StatusReport,
    kinds: Vec<String>,
    meters: Vec<RateMeter>,
    last_status: Option<Instant>,
    last_ping: Option<Instant>,
    ready: bool,
    hung_logged: bool,
    status_failed: bool,
}

impl Reporter {
    fn new(notifier: Notifier, cfg: &Loaded, db: &Path, started_ms: i64) -> Reporter {
        let d = &cfg.config.daemon;
        let status_path = d
            .status_file
            .as_ref()
            .map(|p| cfg.resolve(p))
            .unwrap_or_else(|| status::default_status_path(db));
        let base = StatusReport {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_ms,
            interval_ms: (d.status_interval_secs * 1000.0) as u64,
            config: Some(cfg.file.clone()),
            db_path: db.to_path_buf(),
            ..Default::default()
        };
        Reporter {
            notifier,
            status_path,
            interval: Duration::from_secs_f64(d.status_interval_secs),
            hung_after: Duration::from_secs_f64(d.hung_after_secs),
            started: Instant::now(),
            base,
            kinds: Vec::new(),
            meters: Vec::new(),
            last_status: None,
            last_ping: None,
            ready: false,
            hung_logged: false,
            status_failed: false,
        }
    }

    /// A configuration went live (start or reload).
    fn generation(&mut self, cfg: &Loaded, model_id: &str, adapter_id: Option<&str>) {
        let d = &cfg.config.daemon;
        self.interval = Duration::from_secs_f64(d.status_interval_secs);
        self.hung_after = Duration::from_secs_f64(d.hung_after_secs);
        self.base.interval_ms = (d.status_interval_secs * 1000.0) as u64;
        self.base.config = Some(cfg.file.clone());
        self.base.model_id = model_id.to_string();
        self.base.adapter_id = adapter_id.map(str::to_string);
        self.kinds = cfg
            .config
            .sources
            .iter()
            .map(|s| format!("{:?}", s.kind).to_lowercase())
            .collect();
        self.meters = vec![RateMeter::new(); self.kinds.len()];
        self.last_status = None;
    }

    fn tick(
        &mut self,
        monitor: &Monitor,
        store: Option<&Arc<WriterProgress>>,
        refiner: Option<&RefinerMonitor>,
    ) {
        let now = Instant::now();
        // Watchdog: fed only while the inference loop makes progress (or has nothing to do).
        if let Some(every) = self.notifier.watchdog_interval() {
            let stuck = monitor.stuck_for();
            if stuck < self.hung_after {
                if self.last_ping.is_none_or(|t| now - t >= every / 2) {
                    self.notifier.watchdog();
                    self.last_ping = Some(now);
                }
                if self.hung_logged {
                    log::warn!("inference is progressing again");
                    self.hung_logged = false;
                }
            } else if !self.hung_logged {
                log::error!(
                    "inference hung: {} frames waiting, none finished for {:.0} s \
                     (daemon.hung_after_secs); no longer feeding the systemd watchdog",
                    monitor.in_flight(),
                    stuck.as_secs_f64()
                );
                self.hung_logged = true;
            }
        }
        if !self.ready {
            let first = monitor.outputs() > 0;
            if first || self.started.elapsed() >= READY_GRACE {
                if !first {
                    log::warn!(
                        "no frame classified within {} s of start (is the camera connected? \
                         `clipd doctor`); reporting ready and waiting",
                        READY_GRACE.as_secs()
                    );
                }
                self.notifier.ready();
                self.ready = true;
            }
        }
        if self.last_status.is_none_or(|t| now - t >= self.interval) {
            self.last_status = Some(now);
            let report = self.snapshot(monitor, store, refiner, now);
            self.notifier.status(&status_line(&report, self.ready));
            match report.write_atomic(&self.status_path) {
                Ok(()) => self.status_failed = false,
                Err(e) if !self.status_failed => {
                    log::warn!("status file: {e}");
                    self.status_failed = true;
                }
                Err(_) => {}
            }
        }
    }

    fn snapshot(
        &mut self,
        monitor: &Monitor,
        store: Option<&Arc<WriterProgress>>,
        refiner: Option<&RefinerMonitor>,
        now: Instant,
    ) -> StatusReport {
        let refined = refiner.map(RefinerMonitor::snapshot);
        let mut r = self.base.clone();
        r.updated_ms = now_ms();
        r.sources = monitor
            .sources()
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let classified = m.classified.load(Ordering::Relaxed);
                let fps = self
                    .meters
                    .get_mut(i)
                    .map(|meter| meter.update(now, classified))
                    .unwrap_or(0.0);
                let device = m.device();
                let last = m.last();
                SourceStatus {
                    name: m.name.clone(),
                    kind: self.kinds.get(i).cloned().unwrap_or_default(),
                    frames: m.delivered.load(Ordering::Relaxed),
                    classified,
                    failed: m.failed.load(Ordering::Relaxed),
                    skipped: m.skipped.load(Ordering::Relaxed),
                    dropped: m.dropped.load(Ordering::Relaxed),
                    fps,
                    reconnects: device
                        .as_ref()
                        .map_or(0, |d| d.reconnects.load(Ordering::Relaxed)),
                    stalls: device
                        .as_ref()
                        .map_or(0, |d| d.stalls.load(Ordering::Relaxed)),
                    connected: device.as_ref().map(|d| d.connected.load(Ordering::Relaxed)),
                    last_label: last.as_ref().map(|l| l.label.clone()),
                    last_score: last.as_ref().map(|l| l.score),
                    last_ts_ms: last.as_ref().map(|l| l.ts_ms),
                    state: refined
                        .as_ref()
                        .and_then(|l| l.states.get(&m.name).cloned()),
                }
            })
            .collect();
        r.refiner = refined.map(|l| RefinerStatus {
            passes: l.stats.passes,
            guarded: l.stats.guarded,
            failed: l.stats.failed,
            last_ms: l.last_duration.map(|d| d.as_millis() as u64),
            last_ts_ms: l.last_ts_ms,
            last_changed: l.last_changed,
        });
        r.db.bytes = file_size(&r.db_path) + file_size(&wal_path(&r.db_path));
        if let Some(p) = store.map(|p| p.snapshot()) {
            r.db.rows_committed = p.rows_committed;
            r.db.last_committed_id = (p.last_committed_id > 0).then_some(p.last_committed_id);
            r.db.pending = p.pending;
            r.db.dropped = p.dropped;
            r.db.commit_errors = p.commit_errors;
            if p.failing {
                r.db.last_error = Some("commits are failing (see the journal)".into());
            }
        }
        r
    }
}

/// The one line `systemctl status` shows.
fn status_line(r: &StatusReport, ready: bool) -> String {
    let parts: Vec<String> = r
        .sources
        .iter()
        .map(|s| {
            format!(
                "{}: {:.1} fps, {}",
                s.name,
                s.fps,
                s.last_label.as_deref().unwrap_or("no frame yet")
            )
        })
        .collect();
    let waiting = if ready { "" } else { "starting; " };
    format!("{waiting}{}", parts.join("; "))
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Run the daemon: start the configuration, then serve signals until the sources end (`once`)
/// or a SIGTERM/SIGINT stops it. SIGHUP reloads the config file (and the adapter and bundle it
/// names); a config that fails to load is logged and the running one stays.
pub fn execute(cfg: Loaded, ov: Overrides, once: bool) -> Result<ExitCode> {
    if once {
        if let Some(i) = cfg
            .config
            .sources
            .iter()
            .position(|s| s.kind == clipd::config::SourceKind::Camera)
        {
            return Err(UsageError(format!(
                "{}: sources[{i}]: a camera never runs out of frames, so --once would never end; \
                 run without --once (SIGTERM stops it) or use a dir/file/glob source",
                cfg.file.display()
            ))
            .into());
        }
    }
    let signals = Signals::listen()?;
    let notifier = Notifier::from_env();
    // A large model can take a while to load on a small board.
    notifier.extend_timeout(Duration::from_secs(300));
    let mut current = cfg.clone();
    let prepared = prepare(cfg, &ov)?;
    let mut reporter = Reporter::new(notifier, &current, &prepared.db, now_ms());
    reporter.generation(
        &current,
        &prepared.engine.bundle.model_id(),
        prepared.engine.adapter_id().as_deref(),
    );
    let mut gen = Generation::start(prepared, once)?;
    let mut shutdown: Option<Instant> = None;
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
                reporter.notifier.stopping();
                gen.stop.store(true, Ordering::Relaxed);
                shutdown = Some(Instant::now());
            }
            Some(Signal::Reload) if shutdown.is_none() => {
                reporter.notifier.reloading();
                match reload(&current, &ov) {
                    Ok((cfg, prepared)) => {
                        gen.stop.store(true, Ordering::Relaxed);
                        let done = gen.join();
                        report_generation(done, "before reload");
                        let (model, adapter) = (
                            prepared.engine.bundle.model_id(),
                            prepared.engine.adapter_id(),
                        );
                        gen = match Generation::start(prepared, once) {
                            Ok(g) => {
                                current = cfg;
                                reporter.base.reloads += 1;
                                reporter.base.last_reload_error = None;
                                reporter.generation(&current, &model, adapter.as_deref());
                                log::info!(
                                    "configuration reloaded ({} so far)",
                                    reporter.base.reloads
                                );
                                g
                            }
                            Err(e) => {
                                log::error!(
                                    "reload: {}; restarting with the previous configuration",
                                    one_line(&e)
                                );
                                reporter.base.last_reload_error = Some(one_line(&e));
                                let prepared = prepare(current.clone(), &ov)?;
                                let (model, adapter) = (
                                    prepared.engine.bundle.model_id(),
                                    prepared.engine.adapter_id(),
                                );
                                reporter.generation(&current, &model, adapter.as_deref());
                                Generation::start(prepared, once)?
                            }
                        };
                    }
                    Err(e) => {
                        log::error!(
                            "reload refused, the running configuration stays: {}",
                            one_line(&e)
                        );
                        reporter.base.last_reload_error = Some(one_line(&e));
                    }
                }
                reporter.notifier.ready();
            }
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
        reporter.tick(&gen.monitor, gen.store.get(), gen.refiner.get());
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
