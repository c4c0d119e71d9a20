//! What a source is asked to be: the `[[sources]]` entry as the source modules take it, with
//! its paths already resolved. The config owns the file's schema and builds these; the value
//! types (kind, pixel formats, known labels) are the sources' own and deserialise directly.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

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

impl CaptureFormat {
    /// Every format, best first: the default preference.
    pub const ALL: [CaptureFormat; 5] = [
        CaptureFormat::Mjpeg,
        CaptureFormat::Yuyv,
        CaptureFormat::Nv12,
        CaptureFormat::Rgb,
        CaptureFormat::Grey,
    ];
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

/// One source to open.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// Where it came from, for messages (`sources[2]`).
    pub key: String,
    pub kind: SourceKind,
    /// The path, pattern or camera selector as written.
    pub path: String,
    /// `path` resolved against the config's folder (files, directories, patterns).
    pub resolved: PathBuf,
    /// The folder relative paths were resolved against, for messages about a missing path.
    pub base: PathBuf,
    /// Name logged with each frame.
    pub name: String,
    /// Descend into subdirectories (`dir`).
    pub recursive: bool,
    pub labels_from: LabelsFrom,
    /// How often a watched directory is rescanned.
    pub poll: Duration,
    pub camera: CameraSpec,
}

impl SourceSpec {
    /// A source of `kind` at `path` (relative to `base`) with every other setting at its
    /// default: named after its path, recursive, no known labels, 1 s polling.
    pub fn new(key: &str, kind: SourceKind, path: &str, base: &std::path::Path) -> SourceSpec {
        SourceSpec {
            key: key.to_string(),
            kind,
            path: path.to_string(),
            resolved: crate::paths::resolve(base, std::path::Path::new(path)),
            base: base.to_path_buf(),
            name: path.to_string(),
            recursive: true,
            labels_from: LabelsFrom::None,
            poll: Duration::from_secs(1),
            camera: CameraSpec::default(),
        }
    }
}

/// What a camera source is asked for, and how it recovers.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraSpec {
    /// Acceptable pixel formats, best first.
    pub formats: Vec<CaptureFormat>,
    /// Requested frame size and rate (the closest the device offers is used).
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<u32>,
    /// No frame for this long counts as a stall: the device is closed and reopened.
    pub stall: Duration,
    /// Reconnect backoff bounds.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl Default for CameraSpec {
    fn default() -> Self {
        CameraSpec {
            formats: CaptureFormat::ALL.to_vec(),
            width: None,
            height: None,
            fps: None,
            stall: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
        }
    }
}
