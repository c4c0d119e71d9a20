//! Frame sources behind one trait: a directory, a single file, a glob pattern, a V4L2 camera.

#[cfg(feature = "camera")]
pub mod camera;
pub mod convert;
mod files;
pub mod spec;
pub mod supervisor;

pub use convert::{PixelFormat, RawFrame};
pub use files::{DirSource, FileListSource};
pub use spec::{CameraSpec, CaptureFormat, LabelsFrom, SourceKind, SourceSpec};

use crate::error::{ExitClass, HasExitClass};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

/// What a frame's pixels are.
#[derive(Debug, Clone)]
pub enum Payload {
    /// An image file to read and decode.
    File(PathBuf),
    /// Encoded image bytes already in memory (e.g. an MJPEG frame from a camera).
    Encoded(Vec<u8>),
    /// Raw pixels from a capture device, converted to RGB by the decode workers.
    Raw(RawFrame),
}

/// One frame to classify.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Source name logged with the frame.
    pub source: String,
    /// Reference logged with the frame (the path for file-backed frames).
    pub reference: String,
    pub payload: Payload,
    /// Known label, when the source provides one (for accuracy summaries).
    pub truth: Option<String>,
}

/// What a source has to offer right now.
#[derive(Debug)]
pub enum Next {
    Frame(Frame),
    /// Nothing yet; ask again after this long.
    Wait(Duration),
    /// Exhausted for good.
    Done,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{key}: {}: {msg}", path.display())]
    Setup {
        key: String,
        path: PathBuf,
        msg: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HasExitClass for SourceError {
    fn exit_class(&self) -> ExitClass {
        match self {
            SourceError::Setup { .. } => ExitClass::Usage,
            SourceError::Io { .. } => ExitClass::Io,
        }
    }
}

/// Health counters a live source shares with the daemon's status reporting.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Times the device was reopened after an unplug, an error or a stall.
    pub reconnects: AtomicU64,
    /// Of those, how many were stalls (no frame within the stall timeout).
    pub stalls: AtomicU64,
    /// Whether the device is open and delivering right now.
    pub connected: AtomicBool,
}

/// A producer of frames.
pub trait FrameSource: Send {
    fn name(&self) -> &str;
    fn next(&mut self) -> Result<Next, SourceError>;
    /// Counters of a live source (cameras); file sources have none.
    fn counters(&self) -> Option<Arc<SourceCounters>> {
        None
    }
}

/// File extensions a directory source picks up. Some have no decoder here (HEIC, AVIF); such
/// frames are reported as unsupported rather than silently skipped.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp", "avif", "heic", "heif",
];

/// Whether a path has one of [`IMAGE_EXTENSIONS`].
pub fn is_image_path(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The known label of a file-backed frame.
pub fn truth_for(path: &Path, labels: LabelsFrom) -> Option<String> {
    match labels {
        LabelsFrom::None => None,
        LabelsFrom::ParentDir => path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned()),
    }
}

/// Open the source `spec` describes; `once` selects a finite listing over a watching one.
/// Fails if the source has nothing to read.
pub fn open(spec: &SourceSpec, once: bool) -> Result<Box<dyn FrameSource>, SourceError> {
    let setup = |path: PathBuf, msg: &str| SourceError::Setup {
        key: spec.key.clone(),
        path,
        msg: msg.to_string(),
    };
    // A path that is not there: say where a relative one was looked for.
    let missing = |what: &str| {
        let mut msg = format!("no such {what}");
        if Path::new(&spec.path).is_relative() {
            msg.push_str(&format!(
                " (relative paths resolve against the config's folder, {})",
                spec.base.display()
            ));
        }
        setup(spec.resolved.clone(), &msg)
    };
    let name = spec.name.clone();
    match spec.kind {
        SourceKind::Dir => {
            let dir = &spec.resolved;
            if !dir.exists() {
                return Err(missing("directory"));
            }
            if !dir.is_dir() {
                return Err(setup(
                    dir.clone(),
                    "not a directory (use kind = \"file\" for one image)",
                ));
            }
            let poll = (!once).then(|| spec.poll.max(Duration::from_millis(10)));
            let src = DirSource::new(name, dir.clone(), spec.recursive, spec.labels_from, poll)?;
            if once && src.pending() == 0 {
                return Err(setup(dir.clone(), "no image files found"));
            }
            Ok(Box::new(src))
        }
        SourceKind::File => {
            let file = &spec.resolved;
            if !file.exists() {
                return Err(missing("file"));
            }
            if !file.is_file() {
                return Err(setup(
                    file.clone(),
                    "not a file (use kind = \"dir\" for a folder of images)",
                ));
            }
            Ok(Box::new(FileListSource::new(
                name,
                vec![file.clone()],
                spec.labels_from,
            )))
        }
        SourceKind::Glob => {
            let pattern = &spec.resolved;
            let text = pattern.to_string_lossy().into_owned();
            let paths = glob::glob(&text).map_err(|e| setup(pattern.clone(), &e.to_string()))?;
            let mut files: Vec<PathBuf> = paths
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            if files.is_empty() {
                let mut msg = "pattern matches no files".to_string();
                if Path::new(&spec.path).is_relative() {
                    msg.push_str(&format!(
                        " (relative patterns resolve against the config's folder, {})",
                        spec.base.display()
                    ));
                }
                return Err(setup(pattern.clone(), &msg));
            }
            Ok(Box::new(FileListSource::new(name, files, spec.labels_from)))
        }
        #[cfg(feature = "camera")]
        SourceKind::Camera => camera::open(&spec.key, name, &spec.path, &spec.camera),
        #[cfg(not(feature = "camera"))]
        SourceKind::Camera => Err(setup(
            PathBuf::from(&spec.path),
            "this clipd was built without camera support: rebuild with the `camera` feature",
        )),
    }
}
