//! The TOML configuration shared by the daemon and the CLI: typed, with defaults, unknown keys
//! refused, and every error naming the file, the key and (when known) the line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::encoder::{Backend, BackendKind, ExecutionProvider, OrtSettings};
use crate::preprocess::DecodeLimits;
pub use crate::store::Synchronous;

/// A configuration problem, printed as one line: `file:line: key: message`.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {}{msg}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub msg: String,
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
    pub refine: Option<crate::refiner::RefineConfig>,
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
                library: self.ort_library.as_ref().map(|p| {
                    if p.is_absolute() {
                        p.clone()
                    } else {
                        normalize(&base.join(p))
                    }
                }),
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

/// Kind of frame source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Every image file under a directory (sorted); without `--once`, new files are picked up.
    Dir,
    /// One image file.
    File,
    /// A glob pattern such as `frames/**/*.jpg`.
    Glob,
    /// A V4L2 camera: `device` is an index (`0`), a path (`/dev/video0`) or a name.
    Camera,
}

/// Pixel formats a camera may deliver, in the order clipd prefers them by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureFormat {
    Mjpeg,
    Yuyv,
    Nv12,
    Rgb,
    Grey,
}

/// What a source does when the pipeline falls behind and its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Wait (files: nothing may be skipped).
    Block,
    /// Drop the oldest queued frame of this source (cameras: the newest frame matters most).
    DropOldest,
}

/// Where a frame's known (ground-truth) label comes from, for accuracy summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelsFrom {
    /// Frames carry no known label.
    #[default]
    None,
    /// The name of the directory holding the frame (matched against class names and aliases).
    ParentDir,
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
    use CaptureFormat::*;
    vec![Mjpeg, Yuyv, Nv12, Rgb, Grey]
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
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            normalize(&self.base.join(p))
        }
    }
}

/// Remove `.` and `name/..` pairs without touching the filesystem, so logged paths read
/// `tests/fixtures/x` rather than `configs/../tests/fixtures/x`.
pub fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) | Some(Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            c => out.push(c),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
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
            msg: e.message().trim().replace('\n', " "),
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

/// Semantic checks; the error names the key, e.g. `classes[3].name`.
pub fn validate(c: &Config) -> Result<(), (String, String)> {
    let err = |k: String, m: &str| Err((k, m.to_string()));
    if c.classes.is_empty() {
        return err(
            "classes".into(),
            "no classes configured: add at least one [[classes]] table with a name",
        );
    }
    let mut seen = std::collections::HashMap::new();
    for (i, class) in c.classes.iter().enumerate() {
        let name = class.name.trim();
        if name.is_empty() {
            return err(format!("classes[{i}].name"), "must not be empty");
        }
        if let Some(j) = seen.insert(name.to_string(), i) {
            return Err((
                format!("classes[{i}].name"),
                format!("duplicate class {name:?} (also classes[{j}])"),
            ));
        }
        if class.prompts.as_ref().is_some_and(|p| p.is_empty()) {
            return err(format!("classes[{i}].prompts"), "must not be empty");
        }
        if class.templates.as_ref().is_some_and(|t| t.is_empty()) {
            return err(format!("classes[{i}].templates"), "must not be empty");
        }
    }
    if c.prompts.templates.as_ref().is_some_and(|t| t.is_empty()) {
        return err("prompts.templates".into(), "must not be empty");
    }
    if c.top_k == 0 {
        return err("top_k".into(), "must be at least 1");
    }
    let e = &c.engine;
    for (k, v) in [
        ("engine.batch", e.batch),
        ("engine.threads", e.threads),
        ("engine.lanes", e.lanes),
        ("engine.decode_threads", e.decode_threads),
        ("engine.queue", e.queue),
    ] {
        if v == 0 {
            return err(k.into(), "must be at least 1");
        }
    }
    if e.batch > 256 {
        return err("engine.batch".into(), "must be at most 256");
    }
    if e.lanes > e.batch {
        return err(
            "engine.lanes".into(),
            "must be at most engine.batch (each lane encodes at least one frame of a batch)",
        );
    }
    #[cfg(not(feature = "ort"))]
    if e.backend == BackendKind::Ort {
        return err(
            "engine.backend".into(),
            "\"ort\" needs clipd built with ONNX Runtime support (cargo build --release --features ort); use \"tract\" otherwise",
        );
    }
    if e.execution_providers.is_empty() {
        return err(
            "engine.execution_providers".into(),
            "must list at least one provider (e.g. [\"cpu\"])",
        );
    }
    for (i, p) in e.execution_providers.iter().enumerate() {
        if e.execution_providers[..i].contains(p) {
            return Err((
                "engine.execution_providers".into(),
                format!("{:?} is listed twice", p.name()),
            ));
        }
    }
    if e.ort_library
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        return err("engine.ort_library".into(), "must not be empty");
    }
    if let Some(v) = &e.variant {
        if !crate::bundle::is_variant_name(v) {
            return Err((
                "engine.variant".into(),
                format!(
                    "{v:?} is not a variant name (lowercase ASCII letters, digits, '_' and '-', e.g. \"int8\"); remove the key to run the fp32 encoders"
                ),
            ));
        }
    }
    if c.decode.max_side == 0 {
        return err("decode.max_side".into(), "must be at least 1");
    }
    if c.store.commit_rows == 0 {
        return err("store.commit_rows".into(), "must be at least 1");
    }
    if c.store.path.as_os_str().is_empty() {
        return err("store.path".into(), "must not be empty");
    }
    if let Some(d) = c.store.retention_days {
        if !positive(d) {
            return err(
                "store.retention_days".into(),
                "must be a positive number of days",
            );
        }
    }
    if c.store.max_rows == Some(0) {
        return err("store.max_rows".into(), "must be at least 1");
    }
    if let Some(m) = c.store.max_size_mb {
        if !(m.is_finite() && m >= 1.0) {
            return err("store.max_size_mb".into(), "must be at least 1 (MiB)");
        }
    }
    if c.store.prune_batch == 0 {
        return err("store.prune_batch".into(), "must be at least 1");
    }
    if c.store.retention_every_secs == 0 {
        return err("store.retention_every_secs".into(), "must be at least 1");
    }
    let d = &c.daemon;
    for (k, v) in [
        ("daemon.shutdown_timeout_secs", d.shutdown_timeout_secs),
        ("daemon.status_interval_secs", d.status_interval_secs),
        ("daemon.hung_after_secs", d.hung_after_secs),
    ] {
        if !positive(v) {
            return err(k.into(), "must be a positive number of seconds");
        }
    }
    for (i, s) in c.sources.iter().enumerate() {
        let key = |f: &str| format!("sources[{i}].{f}");
        if s.path.trim().is_empty() {
            let f = if s.kind == SourceKind::Camera {
                "device"
            } else {
                "path"
            };
            return err(key(f), "must not be empty");
        }
        if let Some(f) = s.max_fps {
            if !positive(f) {
                return err(key("max_fps"), "must be a positive number");
            }
        }
        if s.every_nth == 0 {
            return err(key("every_nth"), "must be at least 1");
        }
        if let Some(n) = s.novelty {
            if !(0.0..=1.0).contains(&n) {
                return err(key("novelty"), "must be between 0 and 1");
            }
        }
        if s.kind == SourceKind::Camera {
            if s.formats.is_empty() {
                return err(key("formats"), "must list at least one pixel format");
            }
            if !positive(s.stall_secs) {
                return err(key("stall_secs"), "must be a positive number of seconds");
            }
            if s.reconnect_min_ms == 0 || s.reconnect_max_ms < s.reconnect_min_ms {
                return err(
                    key("reconnect_max_ms"),
                    "need 0 < reconnect_min_ms <= reconnect_max_ms",
                );
            }
            for (f, v) in [("width", s.width), ("height", s.height), ("fps", s.fps)] {
                if v == Some(0) {
                    return err(key(f), "must be at least 1");
                }
            }
        } else {
            let camera_only = [
                ("width", s.width.is_some()),
                ("height", s.height.is_some()),
                ("fps", s.fps.is_some()),
            ];
            if let Some((f, _)) = camera_only.iter().find(|(_, set)| *set) {
                return err(key(f), "only applies to kind = \"camera\"");
            }
        }
        if s.kind == SourceKind::Glob {
            if let Err(e) = glob::Pattern::new(&s.path) {
                return Err((format!("sources[{i}].path"), format!("bad glob: {e}")));
            }
        }
    }
    Ok(())
}

/// A finite number above zero (NaN is not).
fn positive(v: f64) -> bool {
    v > 0.0 && v.is_finite()
}

/// Line (1-based) and dotted key at byte `offset` of a TOML document.
fn locate(text: &str, offset: usize) -> (usize, Option<String>) {
    let offset = offset.min(text.len());
    let line_no = text[..offset].matches('\n').count() + 1;
    let mut table: Option<String> = None;
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    let mut key_here = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if i + 1 > line_no {
            break;
        }
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            table = Some(format!("{name}[{n}]"));
            *n += 1;
            key_here = None;
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = Some(name.trim().to_string());
            key_here = None;
        } else if i + 1 == line_no {
            key_here = line
                .split('=')
                .next()
                .map(str::trim)
                .filter(|k| !k.is_empty() && !k.starts_with('#') && line.contains('='))
                .map(|k| k.trim_matches('"').to_string());
        }
    }
    let key = match (table, key_here) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    };
    (line_no, key)
}

/// Best-effort line of a dotted key such as `classes[3].name` or `engine.batch`.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let (table, field) = match key.rsplit_once('.') {
        Some((t, f)) => (Some(t), f),
        None => (None, key),
    };
    let (name, index) = match table {
        Some(t) => match t.split_once('[') {
            Some((n, rest)) => (Some(n), rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (Some(t), None),
        },
        None => (None, None),
    };
    let mut in_table = name.is_none();
    let mut seen = 0usize;
    let mut header_line = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            let inner = line
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
            in_table = match (name, index) {
                (Some(n), Some(ix)) if line.starts_with("[[") && inner == n => {
                    seen += 1;
                    seen - 1 == ix
                }
                (Some(n), None) => inner == n,
                _ => false,
            };
            if in_table {
                header_line = Some(i + 1);
            }
            continue;
        }
        if in_table {
            let k = line.split('=').next().map(str::trim).unwrap_or("");
            if line.contains('=') && k == field {
                return Some(i + 1);
            }
        }
    }
    header_line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Loaded, ConfigError> {
        parse(s, Path::new("c.toml"), Path::new("/base"))
    }

    const OK: &str = r#"
bundle = "models/tiny-clip"

[engine]
batch = 4

[[sources]]
kind = "dir"
path = "frames"
labels_from = "parent_dir"

[[classes]]
name = "circle"
domain = "shape"

[[classes]]
name = "pizza"
domain = "food"
aliases = ["pizza_dir"]
"#;

    #[test]
    fn parses_with_defaults() {
        let l = parse_str(OK).unwrap();
        let c = &l.config;
        assert_eq!(c.engine.batch, 4);
        assert_eq!(c.engine.threads, 1);
        assert_eq!(c.top_k, 5);
        assert_eq!(c.store.commit_rows, 64);
        assert_eq!(c.store.synchronous, Synchronous::Normal);
        assert_eq!(c.sources[0].labels_from, LabelsFrom::ParentDir);
        assert!(c.sources[0].recursive);
        assert_eq!(
            c.classes[1].prompts(&c.prompts),
            vec!["a photo of pizza, a type of food."]
        );
        assert_eq!(
            l.resolve(Path::new("models/x")),
            PathBuf::from("/base/models/x")
        );
        assert_eq!(l.resolve(Path::new("../m/./x")), PathBuf::from("/m/x"));
        assert_eq!(normalize(Path::new("../a/../b")), PathBuf::from("../b"));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let bad = OK.replace("batch = 4", "batch = 4\nbatchh = 2");
        let e = parse_str(&bad).unwrap_err();
        assert_eq!(e.line, Some(6));
        assert_eq!(e.key.as_deref(), Some("engine.batchh"));
        let s = e.to_string();
        assert!(
            s.starts_with("c.toml:6: engine.batchh: unknown field `batchh`"),
            "{s}"
        );
        assert!(!s.contains('\n'));
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let bad = OK.replace("batch = 4", "batch = \"four\"");
        let e = parse_str(&bad).unwrap_err();
        assert_eq!(e.line, Some(5));
        assert_eq!(e.key.as_deref(), Some("engine.batch"));
        let bad = OK.replace("domain = \"food\"", "domain = 3");
        let e = parse_str(&bad).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("classes[1].domain"), "{e}");
    }

    #[test]
    fn validation_names_key() {
        let e = parse_str("bundle = \"x\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("classes"));
        assert!(e.to_string().contains("no classes"));
        let dup = OK.replace("name = \"pizza\"", "name = \"circle\"");
        let e = parse_str(&dup).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("classes[1].name"));
        assert_eq!(e.line, Some(17));
        let e = parse_str(&OK.replace("batch = 4", "batch = 0")).unwrap_err();
        assert_eq!(e.to_string(), "c.toml:5: engine.batch: must be at least 1");
    }

    #[test]
    fn engine_lanes_default_to_one_and_fit_the_batch() {
        assert_eq!(parse_str(OK).unwrap().config.engine.lanes, 1);
        let l = parse_str(&OK.replace("batch = 4", "batch = 4\nlanes = 2")).unwrap();
        assert_eq!(l.config.engine.lanes, 2);
        let e = parse_str(&OK.replace("batch = 4", "batch = 4\nlanes = 5")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("engine.lanes"));
        assert!(
            e.to_string().contains("must be at most engine.batch"),
            "{e}"
        );
        let e = parse_str(&OK.replace("batch = 4", "batch = 4\nlanes = 0")).unwrap_err();
        assert!(
            e.to_string().ends_with("engine.lanes: must be at least 1"),
            "{e}"
        );
    }

    #[test]
    fn engine_variant_is_optional_and_checked() {
        assert_eq!(parse_str(OK).unwrap().config.engine.variant, None);
        let l = parse_str(&OK.replace("batch = 4", "batch = 4\nvariant = \"int8\"")).unwrap();
        assert_eq!(l.config.engine.variant.as_deref(), Some("int8"));
        for bad in ["", "INT8", "int 8", "../x"] {
            let text = OK.replace("batch = 4", &format!("batch = 4\nvariant = {bad:?}"));
            let e = parse_str(&text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("engine.variant"), "{e}");
            assert_eq!(e.line, Some(6), "{e}");
            let s = e.to_string();
            assert!(
                s.starts_with(&format!(
                    "c.toml:6: engine.variant: {bad:?} is not a variant name"
                )),
                "{s}"
            );
        }
        let e = parse_str(&OK.replace("batch = 4", "batch = 4\nvariant = 8")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("engine.variant"), "{e}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn annotated_example_and_demo_configs_parse() {
        let l = parse(
            include_str!("../clipd.toml.example"),
            Path::new("clipd.toml.example"),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(l.config.classes.len(), 4);
        assert_eq!(
            l.config.classes[3].prompts(&l.config.prompts).len(),
            2,
            "literal prompts"
        );
        let demo = parse(
            include_str!("../configs/demo.toml"),
            Path::new("demo.toml"),
            Path::new("configs"),
        )
        .unwrap();
        assert_eq!(demo.config.sources[0].labels_from, LabelsFrom::ParentDir);
    }
}
