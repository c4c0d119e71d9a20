//! The TOML configuration shared by the daemon and the CLI: typed, with defaults, unknown keys
//! refused, and every error naming the file, the key and (when known) the line.

use std::path::{Path, PathBuf};

use crate::error::{ExitClass, HasExitClass};
use serde::Deserialize;

mod locate;
mod validate;
mod wiring;

use crate::encoder::{Backend, BackendKind, ExecutionProvider, OrtSettings};
pub use crate::paths::normalize;
pub use crate::pipeline::Overflow;
use crate::preprocess::DecodeLimits;
pub use crate::refiner::{RefineConfig, SmoothingConfig};
pub use crate::source::{CaptureFormat, LabelsFrom, SourceKind};
pub use crate::store::Synchronous;
use locate::{line_of_key, locate};
pub use validate::validate;
pub use wiring::{ModelOverrides, DEFAULT_BUNDLE};

/// A configuration problem, printed as one line: `file:line: key: message`.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {}{msg}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub msg: String,
}

impl HasExitClass for ConfigError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::Usage
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Model bundle directory (default: `models/tiny-clip`).
    pub bundle: Option<PathBuf>,
    /// Few-shot adapter file from `clipd train` (default: none, zero-shot).
    pub adapter: Option<PathBuf>,
    /// How many classes to keep per frame.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub decode: DecodeLimits,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub prompts: PromptConfig,
    #[serde(default)]
    pub classes: Vec<ClassConfig>,
    /// Transductive refinement of recent frames (absent: none).
    pub refine: Option<RefineConfig>,
    #[serde(default)]
    pub daemon: DaemonConfig,
}

/// How `clipd run` behaves as a long-running service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// On SIGTERM/SIGINT: how long draining the queues and the last commit may take before the
    /// process exits anyway (a second signal exits at once).
    pub shutdown_timeout_secs: f64,
    /// Status file read by `clipd status` (default: `<store.path>.status.json`, beside the DB).
    pub status_file: Option<PathBuf>,
    /// How often the status file and systemd's STATUS= line are refreshed.
    pub status_interval_secs: f64,
    /// systemd watchdog: the inference loop counts as hung when frames are queued and none has
    /// completed for this long (then WATCHDOG=1 stops and systemd restarts the service).
    pub hung_after_secs: f64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            shutdown_timeout_secs: 10.0,
            status_file: None,
            status_interval_secs: 5.0,
            hung_after_secs: 30.0,
        }
    }
}

fn default_top_k() -> usize {
    5
}

/// Inference settings, fixed when the encoders load.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Image encoder batch size B (the graph is specialised for it).
    pub batch: usize,
    /// Threads for the encoder's matrix kernels.
    pub threads: usize,
    /// tract only: frame-level parallelism. A batch of more than `batch / lanes` frames is
    /// encoded as `lanes` concurrent single-core runs of one shared plan (each on its share of
    /// the frames), which parallelises the whole graph, not just its matrix products; a
    /// smaller batch runs once on `threads` threads. Set it to the number of cores given to
    /// the encoder (docs/performance.md). 1: every batch runs once on `threads` threads.
    pub lanes: usize,
    /// Threads decoding and preprocessing frames.
    pub decode_threads: usize,
    /// How long the encoder waits to fill a batch before running a partial one.
    pub batch_timeout_ms: u64,
    /// Capacity of each bounded queue between pipeline stages.
    pub queue: usize,
    /// Runtime for the encoders: `tract` (built in) or `ort` (ONNX Runtime, feature `ort`).
    pub backend: BackendKind,
    /// `ort`: execution providers to try, best first; ONNX Runtime's CPU kernels stay the
    /// fallback for whatever they cannot run.
    pub execution_providers: Vec<ExecutionProvider>,
    /// `ort`: the libonnxruntime shared library (default: `ORT_DYLIB_PATH`).
    pub ort_library: Option<PathBuf>,
    /// Reduced-precision encoders to run, by their name in the bundle's `variants` (`int8`,
    /// `fp16`, made by models/export/variants.py); both towers follow it, a tower the variant
    /// lacks stays fp32. Absent: the fp32 originals.
    pub variant: Option<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            batch: 8,
            threads: 1,
            lanes: 1,
            decode_threads: 1,
            batch_timeout_ms: 50,
            queue: 32,
            backend: BackendKind::Tract,
            execution_providers: vec![ExecutionProvider::Cpu],
            ort_library: None,
            variant: None,
        }
    }
}

impl EngineConfig {
    /// The backend to load encoders on, with `ort_library` resolved against `base` (the config
    /// file's directory), as every other path in the file is.
    pub fn backend(&self, base: &Path) -> Backend {
        match self.backend {
            BackendKind::Tract => Backend::Tract,
            BackendKind::Ort => Backend::Ort(OrtSettings {
                library: self
                    .ort_library
                    .as_ref()
                    .map(|p| crate::paths::resolve(base, p)),
                providers: self.execution_providers.clone(),
            }),
        }
    }
}

/// History database settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite file (default `clipd.db`).
    pub path: PathBuf,
    /// Commit after this many rows…
    pub commit_rows: usize,
    /// …or after this many milliseconds, whichever comes first.
    pub commit_ms: u64,
    /// `normal` (default: safe in WAL mode, fsync at checkpoints) or `full` (fsync per commit).
    pub synchronous: Synchronous,
    /// Also store each frame's image embedding (f16).
    pub embeddings: bool,
    /// Retention: delete frames older than this many days…
    pub retention_days: Option<f64>,
    /// …keep at most this many frames…
    pub max_rows: Option<u64>,
    /// …and keep the database file under this size (MiB), oldest frames first.
    pub max_size_mb: Option<f64>,
    /// How often retention runs (seconds); deletes go in batches of `prune_batch` rows so the
    /// writer never holds the database for long.
    pub retention_every_secs: u64,
    pub prune_batch: usize,
    /// `PRAGMA quick_check` when the daemon opens the database; a damaged file is moved aside
    /// and a fresh database started.
    pub quick_check: bool,
    /// Allow the database on NFS/CIFS (SQLite's locking is unreliable there; refused otherwise).
    pub allow_network_fs: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("clipd.db"),
            commit_rows: 64,
            commit_ms: 500,
            synchronous: Synchronous::Normal,
            embeddings: false,
            retention_days: None,
            max_rows: None,
            max_size_mb: None,
            retention_every_secs: 60,
            prune_batch: 500,
            quick_check: true,
            allow_network_fs: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// Directory or file (`dir`, `file`), pattern (`glob`), or camera (`device`: index, path
    /// or name).
    #[serde(alias = "device")]
    pub path: String,
    /// Name logged with each frame (default: the path).
    pub name: Option<String>,
    /// Descend into subdirectories (`dir` only).
    #[serde(default = "yes")]
    pub recursive: bool,
    #[serde(default)]
    pub labels_from: LabelsFrom,
    /// How often a `dir` source rescans for new files when not running `--once`.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// Frame policy: classify at most this many frames per second from this source.
    pub max_fps: Option<f64>,
    /// Frame policy: classify only every N-th frame the source delivers.
    #[serde(default = "one")]
    pub every_nth: u32,
    /// Novelty gate: skip a frame whose 32×32 grey thumbnail differs from the last classified
    /// one of this source by less than this mean absolute difference (0–1 scale; e.g. 0.02).
    pub novelty: Option<f32>,
    /// Full queue: `block` or `drop_oldest` (default: drop_oldest for cameras, block otherwise).
    pub overflow: Option<Overflow>,
    /// Camera: requested frame size and rate (the closest the device offers is used).
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<u32>,
    /// Camera: acceptable pixel formats, best first.
    #[serde(default = "default_formats")]
    pub formats: Vec<CaptureFormat>,
    /// Camera: no frame for this long counts as a stall: the device is closed and reopened.
    #[serde(default = "default_stall_secs")]
    pub stall_secs: f64,
    /// Camera: reconnect backoff bounds (exponential with jitter between them).
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
}

impl SourceConfig {
    /// A source of `kind` at `path` with every other key at its default.
    pub fn new(kind: SourceKind, path: &str) -> Self {
        SourceConfig {
            kind,
            path: path.to_string(),
            name: None,
            recursive: true,
            labels_from: LabelsFrom::None,
            poll_ms: default_poll_ms(),
            max_fps: None,
            every_nth: 1,
            novelty: None,
            overflow: None,
            width: None,
            height: None,
            fps: None,
            formats: default_formats(),
            stall_secs: default_stall_secs(),
            reconnect_min_ms: default_reconnect_min_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
        }
    }

    /// The overflow policy in force (explicit, else by kind).
    pub fn overflow(&self) -> Overflow {
        self.overflow.unwrap_or(match self.kind {
            SourceKind::Camera => Overflow::DropOldest,
            _ => Overflow::Block,
        })
    }
}

fn one() -> u32 {
    1
}

fn default_formats() -> Vec<CaptureFormat> {
    CaptureFormat::ALL.to_vec()
}

fn default_stall_secs() -> f64 {
    5.0
}

fn default_reconnect_min_ms() -> u64 {
    500
}

fn default_reconnect_max_ms() -> u64 {
    30_000
}

fn yes() -> bool {
    true
}

fn default_poll_ms() -> u64 {
    1000
}

/// Prompt defaults applied to classes that set neither `prompts` nor `templates`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptConfig {
    /// Templates (`{}` = class name) used instead of the domain's built-in set.
    pub templates: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    pub name: String,
    /// Domain noun used by the default prompt ("shape", "food", "handwritten digit").
    pub domain: Option<String>,
    /// Prompt templates for this class (`{}` = name, `{domain}` = domain).
    pub templates: Option<Vec<String>>,
    /// Literal prompts for this class (override templates).
    pub prompts: Option<Vec<String>>,
    /// Other spellings of this class in known labels (e.g. directory names).
    #[serde(default)]
    pub aliases: Vec<String>,
}

impl ClassConfig {
    /// The prompts this class is embedded with.
    pub fn prompts(&self, defaults: &PromptConfig) -> Vec<String> {
        let templates = self.templates.as_deref().or(defaults.templates.as_deref());
        crate::head::class_prompts(
            &self.name,
            self.domain.as_deref(),
            templates,
            self.prompts.as_deref(),
        )
    }
}

/// A parsed and validated configuration, with relative paths resolved against `base`.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The file it came from (for messages).
    pub file: PathBuf,
    /// Directory relative paths are resolved against.
    pub base: PathBuf,
}

impl Loaded {
    /// Resolve a path from the config against the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        crate::paths::resolve(&self.base, p)
    }
}

/// Read, parse and validate a config file; relative paths resolve against its directory.
pub fn load(file: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        line: None,
        key: None,
        msg: e.to_string(),
    })?;
    let base = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    parse(&text, file, &base)
}

/// Parse and validate config text; `file` labels errors, `base` resolves relative paths.
pub fn parse(text: &str, file: &Path, base: &Path) -> Result<Loaded, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|e| {
        let (line, key) = match e.span() {
            Some(span) => {
                let (line, key) = locate(text, span.start);
                (Some(line), key)
            }
            None => (None, None),
        };
        ConfigError {
            file: file.to_path_buf(),
            line,
            key,
            msg: with_suggestion(e.message().trim().replace('\n', " ")),
        }
    })?;
    if let Err((key, msg)) = validate(&config) {
        return Err(ConfigError {
            file: file.to_path_buf(),
            line: line_of_key(text, &key),
            key: Some(key),
            msg,
        });
    }
    Ok(Loaded {
        config,
        file: file.to_path_buf(),
        base: base.to_path_buf(),
    })
}

/// serde names an unknown key and every key it expected; add the closest expected one, so
/// `batchh` reads "did you mean `batch`?".
fn with_suggestion(msg: String) -> String {
    let Some(rest) = msg.strip_prefix("unknown field `") else {
        return msg;
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return msg;
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let best = candidates
        .iter()
        .map(|c| {
            (
                edit_distance(&unknown.to_lowercase(), &c.to_lowercase()),
                *c,
            )
        })
        .min();
    match best {
        // Close enough to be a typo: at most a third of the key's letters differ.
        Some((d, c)) if d > 0 && d <= unknown.chars().count().div_ceil(3).max(1) => {
            format!("{msg}; did you mean `{c}`?")
        }
        _ => msg,
    }
}

/// Levenshtein distance between two short strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests;
