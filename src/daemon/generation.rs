//! One configuration running: prepared (everything loaded and checked) before it goes live,
//! then its sources, pipeline, store writer and refiner on their own threads until the sources
//! end or it is told to stop. A reload prepares the next generation while this one runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, OnceLock};

use super::DaemonError;
use crate::config::{Loaded, ModelOverrides, RefineConfig};
use crate::engine::Engine;
use crate::head::Classifier;
use crate::pipeline::{FrameResult, Monitor, Pipeline, PipelineOptions, RunStats, Sink, SinkError};
use crate::preprocess::Transform;
use crate::refiner::{self, RefineContext, RefinerHandle, RefinerMonitor, RefinerStats};
use crate::source::{self, FrameSource};
use crate::store::{BatchWriter, Store, WriteOp, WriterProgress, WriterSummary};
use crate::transduct::Params;

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
    fn accept(&mut self, r: FrameResult) -> Result<(), SinkError> {
        if let Err(f) = &r.outcome {
            log::warn!("{}", f.message);
        }
        let id = self.first_id + i64::try_from(r.seq).unwrap_or(i64::MAX - self.first_id);
        if let Some((refiner, classes)) = &self.refiner {
            refiner.push_result(id, &r, classes);
        }
        let mut rec = r.into_record(&self.model_id);
        rec.id = Some(id);
        rec.adapter_id = self.adapter_id.clone();
        if !self.keep_embeddings {
            rec.embedding = None;
        }
        self.tx
            .send(WriteOp::Frame(rec))
            .map_err(|_| SinkError::WriterStopped)
    }
}

/// Everything checked and loaded before a configuration goes live: a reload swaps only a fully
/// prepared one in, so a bad new config never stops the running one.
pub struct Prepared {
    pub cfg: Loaded,
    pub engine: Engine,
    refine: Option<(RefineConfig, Params)>,
    pub db: PathBuf,
}

impl Prepared {
    /// Load and check everything `cfg` (with the command line's `ov`) names.
    pub fn new(cfg: Loaded, ov: &ModelOverrides) -> Result<Prepared, DaemonError> {
        let c = &cfg.config;
        if c.sources.is_empty() {
            return Err(DaemonError::NoSources {
                file: cfg.file.clone(),
            });
        }
        let db = ov.db_path(&cfg);
        let engine = Engine::from_config(&cfg, ov)?;
        let refine = match &c.refine {
            Some(rc) => {
                let few_shot = engine.adapter.as_ref().is_some_and(|a| a.support.is_some());
                let params = RefineContext::params(rc, engine.classes.len(), few_shot).map_err(
                    |source| DaemonError::Refine {
                        file: cfg.file.clone(),
                        source,
                    },
                )?;
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

    pub fn model_id(&self) -> String {
        self.engine.bundle.model_id()
    }

    pub fn adapter_id(&self) -> Option<String> {
        self.engine.adapter_id()
    }
}

/// What one configuration's run did.
#[derive(Debug)]
pub struct Finished {
    pub stats: RunStats,
    pub written: WriterSummary,
    pub refined: Option<RefinerStats>,
    pub model_id: String,
    pub adapter_id: Option<String>,
    pub db: PathBuf,
}

/// One configuration running: the pipeline, its store writer and refiner, on their threads.
pub struct Generation {
    pub stop: Arc<AtomicBool>,
    pub monitor: Arc<Monitor>,
    /// The store writer's counters, once the database is open.
    pub store: Arc<OnceLock<Arc<WriterProgress>>>,
    /// The refiner's progress, once it runs.
    pub refiner: Arc<OnceLock<RefinerMonitor>>,
    thread: std::thread::JoinHandle<Result<Finished, DaemonError>>,
}

impl Generation {
    /// Open the sources (now: a camera can only be held by one generation at a time), then run
    /// the rest on a thread.
    pub fn start(p: Prepared, once: bool) -> Result<Generation, DaemonError> {
        let sources: Vec<Box<dyn FrameSource>> = p
            .cfg
            .source_specs()
            .iter()
            .map(|s| source::open(s, once))
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
                .spawn(move || serve(p, sources, live, stop))
                .map_err(DaemonError::Spawn)?
        };
        Ok(Generation {
            stop,
            monitor,
            store,
            refiner,
            thread,
        })
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    pub fn join(self) -> Result<Finished, DaemonError> {
        self.thread
            .join()
            .map_err(|_| DaemonError::Panic("pipeline"))?
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
) -> Result<Finished, DaemonError> {
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
        std::fs::create_dir_all(dir).map_err(|source| DaemonError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let mut store = Store::open(&db, &c.store.options())?;
    engine.save_text_side(&mut store)?;
    let first_id = store.max_frame_id()? + 1;

    let (tx, rx) = sync_channel::<WriteOp>(c.engine.queue.max(1));
    let writer = BatchWriter::spawn(store, rx).map_err(DaemonError::Spawn)?;
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
            let (handle, refiner) =
                refiner::spawn(rc, ctx, tx.clone()).map_err(DaemonError::Spawn)?;
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
        monitor: Some(monitor),
        ..PipelineOptions::from_config(c)
    };
    let transform = Transform::from_spec(&engine.bundle.manifest.image);
    let result = Pipeline {
        transform,
        encoder: Box::new(engine.image_encoder),
        head: Box::new(head),
        labels: Some(labels),
        options: popts,
    }
    .run(sources, sink, stop);
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
        .map_err(|_| DaemonError::Panic("database writer"))?;
    Ok(Finished {
        stats,
        written,
        refined,
        model_id,
        adapter_id,
        db,
    })
}
