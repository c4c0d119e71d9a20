//! V4L2 cameras through nokhwa, run under the capture [`supervisor`](super::supervisor).
//!
//! The device is chosen by index (`0` → `/dev/video0`), by path (`/dev/video2`, or a stable
//! `/dev/v4l/by-id/…` link, resolved on every open so a camera that comes back under another
//! number is still found) or by name (case-insensitive; an exact match wins over a substring).
//! The mode is negotiated by [`negotiate`] from what the device offers, and logged once per
//! open as e.g. `camera front: /dev/video0 1280×720 MJPEG 30 fps (HD Webcam C270)`. MJPEG
//! frames go to the decode workers as encoded bytes, the raw formats as [`RawFrame`]s.
//!
//! # A camera missing at start-up
//!
//! The source still starts: the supervisor logs the camera as unavailable (once, with the
//! reason and the fix) and keeps retrying with backoff until it appears. A daemon in a shed
//! must survive a power cut after which the USB camera enumerates seconds after the service
//! starts, or a camera that is plugged in later; refusing to start would turn both into an
//! outage that needs a person, and a systemd restart loop would only log the same error every
//! few seconds. `clipd doctor` reports the absence (and permissions) for someone checking an
//! installation. Only what no retry can fix is a configuration error (exit status 2): a
//! `device` path that exists but is not a V4L2 video node.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nokhwa::utils::{
    ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
    Resolution,
};
use nokhwa::Camera;

use super::convert::{frame_len, mjpeg_frame, PixelFormat, RawFrame};
use super::supervisor::{self, Capture, CaptureDevice, DeviceError, DeviceOpener, Opened};
use super::{CameraSpec, CaptureFormat};
use super::{FrameSource, Payload, SourceError};

/// Size asked for when the config gives none: ample for CLIP's 224-pixel input, and far cheaper
/// to decode than HD on a small board.
pub const DEFAULT_SIZE: (u32, u32) = (640, 480);
/// Frame rate asked for when the config gives none.
pub const DEFAULT_FPS: u32 = 30;

/// Open the camera `device` (an index, a path or a name) of config entry `key` as a
/// supervised source.
pub fn open(
    key: &str,
    name: String,
    device: &str,
    spec: &CameraSpec,
) -> Result<Box<dyn FrameSource>, SourceError> {
    let selector = Selector::parse(device);
    selector.check().map_err(|msg| SourceError::Setup {
        key: format!("{key}.device"),
        path: PathBuf::from(device),
        msg,
    })?;
    let settings = supervisor::Settings::for_camera(spec);
    let reporter = supervisor::log_reporter(name.clone(), &settings);
    let opener = V4lOpener {
        selector: selector.clone(),
        want: Want::from_spec(spec),
    };
    let capture = Capture::start(
        name,
        selector.to_string(),
        Arc::new(opener),
        settings,
        reporter,
    )?;
    Ok(Box::new(capture))
}

/// How the config names a camera.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `/dev/video<N>`.
    Index(u32),
    /// A device node or a link to one.
    Path(PathBuf),
    /// A (part of a) camera's name as the driver reports it.
    Name(String),
}

impl Selector {
    pub fn parse(device: &str) -> Selector {
        let d = device.trim();
        if let Ok(n) = d.parse::<u32>() {
            Selector::Index(n)
        } else if d.starts_with('/') {
            Selector::Path(PathBuf::from(d))
        } else {
            Selector::Name(d.to_string())
        }
    }

    /// What no retry can fix: a path that exists but is not a V4L2 video node.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Selector::Path(p) if p.exists() => node_index(p).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// The V4L2 nodes this selector points at now, best first.
    pub fn resolve(&self) -> Result<Vec<(u32, PathBuf)>, DeviceError> {
        match self {
            Selector::Index(n) => {
                let node = PathBuf::from(format!("/dev/video{n}"));
                if node.exists() {
                    Ok(vec![(*n, node)])
                } else {
                    Err(DeviceError(format!(
                        "{} does not exist (no camera attached as number {n})",
                        node.display()
                    )))
                }
            }
            Selector::Path(p) => {
                if !p.exists() {
                    return Err(DeviceError(format!(
                        "{} does not exist (camera unplugged or not yet attached)",
                        p.display()
                    )));
                }
                let n = node_index(p).map_err(|e| DeviceError(format!("{}: {e}", p.display())))?;
                Ok(vec![(n, PathBuf::from(format!("/dev/video{n}")))])
            }
            Selector::Name(want) => {
                let nodes = video_nodes();
                if nodes.is_empty() {
                    return Err(DeviceError(format!(
                        "no camera named {want:?}: no /dev/video* nodes exist"
                    )));
                }
                let named: Vec<(u32, PathBuf, String)> = nodes
                    .into_iter()
                    .map(|(n, p)| {
                        let name = node_name(n).unwrap_or_default();
                        (n, p, name)
                    })
                    .collect();
                let lower = want.to_lowercase();
                let mut hits: Vec<(bool, u32, PathBuf)> = named
                    .iter()
                    .filter(|(_, _, name)| name.to_lowercase().contains(&lower))
                    .map(|(n, p, name)| (name.to_lowercase() != lower, *n, p.clone()))
                    .collect();
                if hits.is_empty() {
                    let found: Vec<String> = named
                        .iter()
                        .map(|(_, p, name)| format!("{} {name:?}", p.display()))
                        .collect();
                    return Err(DeviceError(format!(
                        "no camera named {want:?} (found: {})",
                        found.join(", ")
                    )));
                }
                hits.sort();
                Ok(hits.into_iter().map(|(_, n, p)| (n, p)).collect())
            }
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Index(n) => write!(f, "/dev/video{n}"),
            Selector::Path(p) => write!(f, "{}", p.display()),
            Selector::Name(n) => f.write_str(n),
        }
    }
}

/// N of the `/dev/videoN` node `path` is or links to.
fn node_index(path: &Path) -> Result<u32, String> {
    let real = path
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", path.display()))?;
    real.file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.strip_prefix("video"))
        .and_then(|n| n.parse().ok())
        .filter(|_| real.parent() == Some(Path::new("/dev")))
        .ok_or_else(|| {
            format!(
                "resolves to {}, not a V4L2 video device (expected /dev/videoN or a /dev/v4l/by-id/ link to one)",
                real.display()
            )
        })
}

/// The `/dev/videoN` nodes that exist now, by N.
pub fn video_nodes() -> Vec<(u32, PathBuf)> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_str()?
                .strip_prefix("video")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    nodes.sort();
    nodes
}

/// The name the driver gives node N (from sysfs, without opening the device).
pub fn node_name(n: u32) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/video4linux/video{n}/name"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether this process may open `node` for capture; the error says how to fix it.
pub fn check_access(node: &Path) -> Result<(), String> {
    match std::fs::OpenOptions::new().read(true).write(true).open(node) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(format!(
            "{}: permission denied: add the user running clipd to group `video` (systemd: SupplementaryGroups=video)",
            node.display()
        )),
        Err(e) => Err(format!("{}: {e}", node.display())),
    }
}

/// One mode a camera offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub format: CaptureFormat,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

/// What the config asks of a camera.
#[derive(Debug, Clone)]
pub struct Want {
    pub formats: Vec<CaptureFormat>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<u32>,
}

impl Want {
    pub fn from_spec(spec: &CameraSpec) -> Want {
        Want {
            formats: spec.formats.clone(),
            width: spec.width,
            height: spec.height,
            fps: spec.fps,
        }
    }

    fn size(&self) -> (u32, u32) {
        match (self.width, self.height) {
            (Some(w), Some(h)) => (w, h),
            (Some(w), None) => (w, (u64::from(w) * 3 / 4) as u32),
            (None, Some(h)) => ((u64::from(h) * 4 / 3).min(u64::from(u32::MAX)) as u32, h),
            (None, None) => DEFAULT_SIZE,
        }
    }
}

/// Choose a mode: the first format of `want.formats` the camera offers at all (preference is
/// strict: reorder `formats` to trade MJPEG's small frames for a raw format's sharpness); then
/// the size nearest the requested one (sum of the side differences; ties go to the larger
/// size; a missing side follows 4:3; nothing requested means [`DEFAULT_SIZE`]); then the frame
/// rate nearest the requested one at that size (ties go to the faster; default
/// [`DEFAULT_FPS`]).
pub fn negotiate(offered: &[Mode], want: &Want) -> Option<Mode> {
    let format = want
        .formats
        .iter()
        .copied()
        .find(|f| offered.iter().any(|m| m.format == *f))?;
    let (w, h) = want.size();
    let candidates = offered.iter().filter(|m| m.format == format);
    let size = |m: &Mode| (m.width, m.height);
    let best = candidates.clone().min_by_key(|m| {
        let d = m.width.abs_diff(w) as u64 + m.height.abs_diff(h) as u64;
        (d, std::cmp::Reverse(m.width as u64 * m.height as u64))
    })?;
    let fps = want.fps.unwrap_or(DEFAULT_FPS);
    candidates
        .filter(|m| size(m) == size(best))
        .min_by_key(|m| (m.fps.abs_diff(fps), std::cmp::Reverse(m.fps)))
        .copied()
}

/// Position of a format in clipd's default preference (for stable listings).
fn rank(f: CaptureFormat) -> u8 {
    match f {
        CaptureFormat::Mjpeg => 0,
        CaptureFormat::Yuyv => 1,
        CaptureFormat::Nv12 => 2,
        CaptureFormat::Rgb => 3,
        CaptureFormat::Grey => 4,
    }
}

pub fn format_name(f: CaptureFormat) -> &'static str {
    match f {
        CaptureFormat::Mjpeg => "MJPEG",
        CaptureFormat::Yuyv => "YUYV",
        CaptureFormat::Nv12 => "NV12",
        CaptureFormat::Rgb => "RGB",
        CaptureFormat::Grey => "GREY",
    }
}

fn from_nokhwa(f: FrameFormat) -> Option<CaptureFormat> {
    match f {
        FrameFormat::MJPEG => Some(CaptureFormat::Mjpeg),
        FrameFormat::YUYV => Some(CaptureFormat::Yuyv),
        FrameFormat::NV12 => Some(CaptureFormat::Nv12),
        FrameFormat::RAWRGB => Some(CaptureFormat::Rgb),
        FrameFormat::GRAY => Some(CaptureFormat::Grey),
        // BGR has no converter here: no consumer camera offers only BGR.
        FrameFormat::RAWBGR => None,
    }
}

fn to_nokhwa(f: CaptureFormat) -> FrameFormat {
    match f {
        CaptureFormat::Mjpeg => FrameFormat::MJPEG,
        CaptureFormat::Yuyv => FrameFormat::YUYV,
        CaptureFormat::Nv12 => FrameFormat::NV12,
        CaptureFormat::Rgb => FrameFormat::RAWRGB,
        CaptureFormat::Grey => FrameFormat::GRAY,
    }
}

fn raw_format(f: CaptureFormat) -> Option<PixelFormat> {
    match f {
        CaptureFormat::Mjpeg => None,
        CaptureFormat::Yuyv => Some(PixelFormat::Yuyv),
        CaptureFormat::Nv12 => Some(PixelFormat::Nv12),
        CaptureFormat::Rgb => Some(PixelFormat::Rgb),
        CaptureFormat::Grey => Some(PixelFormat::Grey),
    }
}

/// Every format nokhwa knows, so that opening succeeds whatever the camera offers and
/// [`negotiate`] can say what it offered instead.
const ANY_FORMAT: [FrameFormat; 6] = [
    FrameFormat::MJPEG,
    FrameFormat::YUYV,
    FrameFormat::NV12,
    FrameFormat::GRAY,
    FrameFormat::RAWRGB,
    FrameFormat::RAWBGR,
];

/// Open node N with nokhwa's V4L2 backend (the mode is whatever nokhwa picks first).
fn open_node(n: u32) -> Result<Camera, String> {
    let any = RequestedFormat::with_formats(RequestedFormatType::None, &ANY_FORMAT);
    Camera::with_backend(CameraIndex::Index(n), any, ApiBackend::Video4Linux).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("Device or resource busy") {
            format!("busy: another process (or an earlier capture still stuck in the driver) is using it: {msg}")
        } else if msg.contains("Failed to Fufill") {
            "offers no capture format (a metadata or output node?)".to_string()
        } else {
            msg
        }
    })
}

/// The modes a camera offers, in a format clipd can read.
fn modes_of(cam: &mut Camera) -> Result<Vec<Mode>, String> {
    let mut modes: Vec<Mode> = cam
        .compatible_camera_formats()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|cf| {
            Some(Mode {
                format: from_nokhwa(cf.format())?,
                width: cf.width(),
                height: cf.height(),
                fps: cf.frame_rate(),
            })
        })
        .collect();
    modes.sort_by_key(|m| (rank(m.format), m.width, m.height, m.fps));
    modes.dedup();
    Ok(modes)
}

/// A camera as `clipd doctor` lists it.
#[derive(Debug)]
pub struct Listing {
    pub node: PathBuf,
    pub name: String,
    /// The modes, or why they could not be read (permissions, busy, not a capture node).
    pub modes: Result<Vec<Mode>, String>,
}

/// Every V4L2 node with its modes. Opening a node to list it may change its current format,
/// and fails with "busy" while another process streams from it.
pub fn list_cameras() -> Vec<Listing> {
    video_nodes()
        .into_iter()
        .map(|(n, node)| {
            let name = node_name(n).unwrap_or_else(|| "?".into());
            let modes = check_access(&node).and_then(|()| {
                let mut cam = open_node(n)?;
                modes_of(&mut cam)
            });
            Listing { node, name, modes }
        })
        .collect()
}

/// Modes grouped for one line: `MJPEG 1280×720@30,15 640×480@30; YUYV 640×480@30`.
pub fn describe_modes(modes: &[Mode]) -> String {
    let mut out = String::new();
    let mut sorted = modes.to_vec();
    sorted.sort_by_key(|m| {
        (
            rank(m.format),
            std::cmp::Reverse(m.width as u64 * m.height as u64),
            m.width,
            std::cmp::Reverse(m.fps),
        )
    });
    let mut last: Option<Mode> = None;
    for m in sorted {
        match last {
            Some(l) if l.format == m.format && (l.width, l.height) == (m.width, m.height) => {
                let _ = write!(out, ",{}", m.fps);
            }
            Some(l) if l.format == m.format => {
                let _ = write!(out, " {}×{}@{}", m.width, m.height, m.fps);
            }
            prev => {
                if prev.is_some() {
                    out.push_str("; ");
                }
                let _ = write!(
                    out,
                    "{} {}×{}@{}",
                    format_name(m.format),
                    m.width,
                    m.height,
                    m.fps
                );
            }
        }
        last = Some(m);
    }
    out
}

/// Opens the configured camera with nokhwa on the calling (capture) thread.
struct V4lOpener {
    selector: Selector,
    want: Want,
}

impl DeviceOpener for V4lOpener {
    fn open(&self) -> Result<Opened, DeviceError> {
        let nodes = self.selector.resolve()?;
        let mut errors = Vec::new();
        // A name can match several nodes (a UVC camera also has a metadata node): take the
        // first that opens.
        for (n, node) in nodes {
            match self.open_node(n, &node) {
                Ok(o) => return Ok(o),
                Err(e) => errors.push(e),
            }
        }
        Err(DeviceError(errors.join("; ")))
    }
}

impl V4lOpener {
    fn open_node(&self, n: u32, node: &Path) -> Result<Opened, String> {
        check_access(node)?;
        let fail = |e: String| format!("{}: {e}", node.display());
        let mut cam = open_node(n).map_err(fail)?;
        let modes = modes_of(&mut cam).map_err(fail)?;
        let mode = negotiate(&modes, &self.want).ok_or_else(|| {
            let wanted: Vec<&str> = self.want.formats.iter().map(|f| format_name(*f)).collect();
            fail(format!(
                "offers none of the configured formats ({}); it offers: {}",
                wanted.join(", "),
                if modes.is_empty() {
                    "nothing clipd can read".to_string()
                } else {
                    describe_modes(&modes)
                }
            ))
        })?;
        let target = CameraFormat::new(
            Resolution::new(mode.width, mode.height),
            to_nokhwa(mode.format),
            mode.fps,
        );
        if cam.camera_format() != target {
            let only = [target.format()];
            let exact = RequestedFormat::with_formats(RequestedFormatType::Exact(target), &only);
            cam.set_camera_requset(exact)
                .map_err(|e| fail(format!("setting {}: {e}", describe_modes(&[mode]))))?;
        }
        let got = cam.camera_format();
        if got != target {
            return Err(fail(format!(
                "the driver did not take {}: it reports {got}",
                describe_modes(&[mode])
            )));
        }
        cam.open_stream().map_err(|e| fail(e.to_string()))?;
        let mut description = format!(
            "{} {}×{} {} {} fps ({})",
            node.display(),
            mode.width,
            mode.height,
            format_name(mode.format),
            mode.fps,
            cam.info().human_name()
        );
        if (self.want.width, self.want.height, self.want.fps) != (None, None, None) {
            let (w, h) = self.want.size();
            let fps = self.want.fps.unwrap_or(DEFAULT_FPS);
            if (w, h, fps) != (mode.width, mode.height, mode.fps) {
                let _ = write!(description, "; requested {w}×{h} {fps} fps");
            }
        }
        Ok(Opened {
            device: Box::new(V4lDevice {
                cam,
                raw: raw_format(mode.format),
                width: mode.width,
                height: mode.height,
                node: node.to_path_buf(),
            }),
            description,
        })
    }
}

/// An open, streaming camera.
struct V4lDevice {
    cam: Camera,
    /// The raw layout, or `None` for MJPEG.
    raw: Option<PixelFormat>,
    width: u32,
    height: u32,
    node: PathBuf,
}

impl CaptureDevice for V4lDevice {
    fn frame(&mut self) -> Result<Payload, DeviceError> {
        let buf = self
            .cam
            .frame_raw()
            .map_err(|e| DeviceError(format!("{}: {e}", self.node.display())))?;
        // The mapped buffer is the driver's worst case: copy only the frame in it.
        Ok(match self.raw {
            None => Payload::Encoded(mjpeg_frame(&buf)),
            Some(format) => {
                let len = frame_len(format, self.width, self.height)
                    .map_or(buf.len(), |n| n.min(buf.len()));
                Payload::Raw(RawFrame {
                    format,
                    width: self.width,
                    height: self.height,
                    data: buf[..len].to_vec(),
                })
            }
        })
    }
}

impl Drop for V4lDevice {
    fn drop(&mut self) {
        let _ = self.cam.stop_stream();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CaptureFormat::*;

    fn m(format: CaptureFormat, width: u32, height: u32, fps: u32) -> Mode {
        Mode {
            format,
            width,
            height,
            fps,
        }
    }

    fn want(formats: &[CaptureFormat], w: Option<u32>, h: Option<u32>, fps: Option<u32>) -> Want {
        Want {
            formats: formats.to_vec(),
            width: w,
            height: h,
            fps,
        }
    }

    /// A typical UVC webcam.
    fn webcam() -> Vec<Mode> {
        vec![
            m(Yuyv, 640, 480, 30),
            m(Yuyv, 1280, 720, 10),
            m(Yuyv, 1920, 1080, 5),
            m(Mjpeg, 640, 480, 30),
            m(Mjpeg, 640, 480, 15),
            m(Mjpeg, 1280, 720, 30),
            m(Mjpeg, 1280, 720, 15),
            m(Mjpeg, 1920, 1080, 30),
            m(Mjpeg, 320, 240, 30),
        ]
    }

    const DEFAULT_ORDER: [CaptureFormat; 5] = [Mjpeg, Yuyv, Nv12, Rgb, Grey];

    #[test]
    fn prefers_formats_in_config_order() {
        let w = want(&DEFAULT_ORDER, Some(1280), Some(720), Some(30));
        assert_eq!(negotiate(&webcam(), &w), Some(m(Mjpeg, 1280, 720, 30)));
        let w = want(&[Yuyv, Mjpeg], Some(1280), Some(720), Some(30));
        assert_eq!(negotiate(&webcam(), &w), Some(m(Yuyv, 1280, 720, 10)));
        // A format the camera lacks is skipped; none acceptable → None.
        let w = want(&[Nv12, Grey, Yuyv], None, None, None);
        assert_eq!(negotiate(&webcam(), &w), Some(m(Yuyv, 640, 480, 30)));
        assert_eq!(
            negotiate(&webcam(), &want(&[Nv12, Grey], None, None, None)),
            None
        );
        assert_eq!(
            negotiate(&[], &want(&DEFAULT_ORDER, None, None, None)),
            None
        );
    }

    #[test]
    fn picks_the_nearest_size_then_the_nearest_rate() {
        let cam = webcam();
        let pick = |w, h, fps| negotiate(&cam, &want(&[Mjpeg], w, h, fps)).unwrap();
        assert_eq!(
            pick(None, None, None),
            m(Mjpeg, 640, 480, 30),
            "default 640×480 @ 30"
        );
        assert_eq!(
            pick(Some(1280), Some(720), Some(12)),
            m(Mjpeg, 1280, 720, 15)
        );
        assert_eq!(
            pick(Some(1280), Some(720), Some(1)),
            m(Mjpeg, 1280, 720, 15)
        );
        assert_eq!(pick(Some(4000), Some(3000), None), m(Mjpeg, 1920, 1080, 30));
        assert_eq!(
            pick(Some(300), None, None),
            m(Mjpeg, 320, 240, 30),
            "4:3 assumed"
        );
        assert_eq!(pick(None, Some(700), Some(60)), m(Mjpeg, 1280, 720, 30));
        // Equidistant sizes: the larger wins; equidistant rates: the faster wins.
        let tie = [
            m(Mjpeg, 600, 400, 20),
            m(Mjpeg, 800, 600, 20),
            m(Mjpeg, 800, 600, 10),
        ];
        let got = negotiate(&tie, &want(&[Mjpeg], Some(700), Some(500), Some(15))).unwrap();
        assert_eq!(got, m(Mjpeg, 800, 600, 20));
    }

    #[test]
    fn selectors_parse_by_shape() {
        assert_eq!(Selector::parse("0"), Selector::Index(0));
        assert_eq!(Selector::parse(" 12 "), Selector::Index(12));
        assert_eq!(
            Selector::parse("/dev/v4l/by-id/usb-cam-video-index0"),
            Selector::Path("/dev/v4l/by-id/usb-cam-video-index0".into())
        );
        assert_eq!(
            Selector::parse("HD Webcam"),
            Selector::Name("HD Webcam".into())
        );
        assert_eq!(Selector::Index(3).to_string(), "/dev/video3");
    }

    #[test]
    fn a_path_that_is_not_a_video_node_is_a_config_error() {
        let e = node_index(Path::new("/dev/null")).unwrap_err();
        assert_eq!(
            e,
            "resolves to /dev/null, not a V4L2 video device (expected /dev/videoN or a /dev/v4l/by-id/ link to one)"
        );
        let e = open(
            "sources[0]",
            "cam".into(),
            "/dev/null",
            &CameraSpec::default(),
        )
        .err()
        .unwrap();
        assert!(matches!(e, SourceError::Setup { .. }));
        assert!(
            e.to_string()
                .starts_with("sources[0].device: /dev/null: resolves to /dev/null, not a V4L2"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_device_is_retried_not_refused() {
        let spec = CameraSpec {
            reconnect_min: std::time::Duration::from_millis(5),
            reconnect_max: std::time::Duration::from_millis(10),
            ..CameraSpec::default()
        };
        let mut src = open(
            "sources[0]",
            "cam".into(),
            "/dev/v4l/by-id/no-such-camera",
            &spec,
        )
        .unwrap();
        assert!(matches!(src.next().unwrap(), super::super::Next::Wait(_)));
        let c = src.counters().unwrap();
        assert!(!c.connected.load(std::sync::atomic::Ordering::SeqCst));
        let e = Selector::Path("/dev/v4l/by-id/no-such-camera".into())
            .resolve()
            .unwrap_err();
        assert_eq!(
            e.0,
            "/dev/v4l/by-id/no-such-camera does not exist (camera unplugged or not yet attached)"
        );
    }

    #[test]
    fn modes_are_described_compactly() {
        assert_eq!(
            describe_modes(&webcam()),
            "MJPEG 1920×1080@30 1280×720@30,15 640×480@30,15 320×240@30; \
             YUYV 1920×1080@5 1280×720@10 640×480@30"
        );
        assert_eq!(describe_modes(&[]), "");
    }
}
