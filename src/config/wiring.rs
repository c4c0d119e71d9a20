//! From the file to the modules: each section becomes the options type of the module it
//! configures (`StoreOptions`, `SourceSpec`, `FramePolicy`, `ClassSpec`, `PipelineOptions`), and
//! [`Engine::from_config`] is the one place a model is loaded from a config. The modules below
//! never read the config themselves, so each can be used and tested with plain options.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Config, Loaded, SourceConfig, StoreConfig};
use crate::classes::ClassSpec;
use crate::encoder::{Backend, EncoderOptions};
use crate::engine::{Engine, EngineError};
use crate::pipeline::{FramePolicy, PipelineOptions};
use crate::source::{CameraSpec, SourceSpec};
use crate::store::{Retention, StoreOptions};

/// The bundle used when neither the command line nor the config names one.
pub const DEFAULT_BUNDLE: &str = "models/tiny-clip";

impl StoreConfig {
    /// The options the daemon opens its history with.
    pub fn options(&self) -> StoreOptions {
        const DAY_SECS: f64 = 86_400.0;
        StoreOptions {
            batch_rows: self.commit_rows,
            batch_ms: self.commit_ms,
            synchronous: self.synchronous,
            retention: Retention {
                // Validated positive; a value too large for a Duration is no limit at all.
                max_age: self
                    .retention_days
                    .and_then(|d| Duration::try_from_secs_f64(d * DAY_SECS).ok()),
                max_rows: self.max_rows,
                // `as` saturates: an absurdly large limit is no limit.
                max_bytes: self.max_size_mb.map(|mb| (mb * 1024.0 * 1024.0) as u64),
                every: Duration::from_secs(self.retention_every_secs),
                batch: self.prune_batch,
            },
            quick_check: self.quick_check,
            allow_network_fs: self.allow_network_fs,
            max_pending_rows: 0,
            max_page_count: None,
        }
    }
}

impl SourceConfig {
    /// The source of entry `index`, its paths resolved against `base` (the config's folder).
    pub fn spec(&self, index: usize, base: &Path) -> SourceSpec {
        SourceSpec {
            name: self.name.clone().unwrap_or_else(|| self.path.clone()),
            recursive: self.recursive,
            labels_from: self.labels_from,
            poll: Duration::from_millis(self.poll_ms),
            camera: self.camera_spec(),
            ..SourceSpec::new(&format!("sources[{index}]"), self.kind, &self.path, base)
        }
    }

    /// What a camera source asks of its device.
    pub fn camera_spec(&self) -> CameraSpec {
        let secs = |s: f64| Duration::try_from_secs_f64(s).unwrap_or(Duration::from_secs(86_400));
        CameraSpec {
            formats: self.formats.clone(),
            width: self.width,
            height: self.height,
            fps: self.fps,
            stall: secs(self.stall_secs),
            reconnect_min: Duration::from_millis(self.reconnect_min_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
        }
    }

    /// Which of this source's frames the pipeline classifies.
    pub fn policy(&self) -> FramePolicy {
        FramePolicy {
            every_nth: self.every_nth.max(1),
            max_fps: self.max_fps,
            novelty: self.novelty,
            overflow: self.overflow(),
        }
    }
}

impl Config {
    /// The configured classes with their resolved prompts.
    pub fn class_specs(&self) -> Vec<ClassSpec> {
        self.classes
            .iter()
            .map(|c| ClassSpec {
                name: c.name.trim().to_string(),
                domain: c.domain.clone(),
                prompts: c.prompts(&self.prompts),
                aliases: c.aliases.clone(),
            })
            .collect()
    }
}

impl Loaded {
    /// Every configured source, resolved.
    pub fn source_specs(&self) -> Vec<SourceSpec> {
        self.config
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| s.spec(i, &self.base))
            .collect()
    }
}

/// What a command sets over the config when it loads the model: its own options
/// (`--bundle`, `--adapter`, `--db`, `--threads`) and the needs of the command itself.
#[derive(Debug, Clone, Default)]
pub struct ModelOverrides {
    pub bundle: Option<PathBuf>,
    pub adapter: Option<PathBuf>,
    pub db: Option<PathBuf>,
    pub threads: Option<usize>,
    /// The command's own batch size (fewer images than the config's batch, a latency bench).
    pub batch: Option<usize>,
    pub lanes: Option<usize>,
    /// Commands that only embed run on tract, whatever backend the daemon uses.
    pub backend: Option<Backend>,
    /// Reduced-precision encoders other than the config's `engine.variant` (a benchmark).
    pub variant: Option<String>,
    /// Classify zero-shot even when the config names an adapter (training a new one).
    pub zero_shot: bool,
    /// Do not read the history's text-embedding cache.
    pub no_text_cache: bool,
}

impl ModelOverrides {
    /// `--bundle`, else the config's bundle, else [`DEFAULT_BUNDLE`].
    pub fn bundle_dir(&self, cfg: Option<&Loaded>) -> PathBuf {
        if let Some(b) = &self.bundle {
            return b.clone();
        }
        cfg.and_then(|l| l.config.bundle.as_ref().map(|b| l.resolve(b)))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BUNDLE))
    }

    /// `--adapter`, else the config's adapter, else none (zero-shot).
    pub fn adapter_path(&self, cfg: Option<&Loaded>) -> Option<PathBuf> {
        if self.zero_shot {
            return None;
        }
        if let Some(a) = &self.adapter {
            return Some(a.clone());
        }
        cfg.and_then(|l| l.config.adapter.as_ref().map(|a| l.resolve(a)))
    }

    /// `--db`, else the config's `store.path`.
    pub fn db_path(&self, cfg: &Loaded) -> PathBuf {
        self.db
            .clone()
            .unwrap_or_else(|| cfg.resolve(&cfg.config.store.path))
    }

    /// The encoder's batch, threads and lanes.
    pub fn encoder_options(&self, cfg: &Config) -> EncoderOptions {
        let batch = self.batch.unwrap_or(cfg.engine.batch).max(1);
        EncoderOptions {
            batch,
            threads: self.threads.unwrap_or(cfg.engine.threads).max(1),
            lanes: self.lanes.unwrap_or(cfg.engine.lanes).clamp(1, batch),
        }
    }
}

impl Engine {
    /// Load the model a config describes: its bundle (and variant), image encoder on the
    /// configured backend, classes, adapter, and the text side from the history's cache when
    /// it has it.
    pub fn from_config(cfg: &Loaded, ov: &ModelOverrides) -> Result<Engine, EngineError> {
        let c = &cfg.config;
        let backend = ov
            .backend
            .clone()
            .unwrap_or_else(|| c.engine.backend(&cfg.base));
        let db = ov.db_path(cfg);
        Engine::load(
            &backend,
            ov.variant.as_deref().or(c.engine.variant.as_deref()),
            &ov.bundle_dir(Some(cfg)),
            c.class_specs(),
            ov.encoder_options(c),
            (!ov.no_text_cache).then_some(db.as_path()),
            ov.adapter_path(Some(cfg)).as_deref(),
        )
    }
}

impl PipelineOptions {
    /// The pipeline a config describes: decode workers, queue, batching, top-k, decode limits,
    /// one frame policy per source, and embeddings kept when they are stored or refined.
    pub fn from_config(c: &Config) -> PipelineOptions {
        PipelineOptions {
            decode_threads: c.engine.decode_threads,
            queue: c.engine.queue,
            batch_timeout: Duration::from_millis(c.engine.batch_timeout_ms),
            top_k: c.top_k,
            limits: c.decode,
            keep_embeddings: c.store.embeddings || c.refine.is_some(),
            policies: c.sources.iter().map(SourceConfig::policy).collect(),
            monitor: None,
        }
    }
}
