//! Finding and vetting the ONNX Runtime shared library before the `ort` crate touches it. ort
//! opens the library lazily and panics when the file is missing, will not load or is older than
//! the API it was written for; here each of those is a one-line error naming the path, the
//! version found and the version needed, raised before any session exists.

use std::ffi::{CStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ::ort::sys::{OrtApiBase, ORT_API_VERSION};

use crate::encoder::EncoderError;

/// The ONNX Runtime minor version whose C API the `ort` crate speaks; any later 1.x library
/// serves it (ONNX Runtime keeps older API versions within a major release).
pub const REQUIRED_MINOR_VERSION: u32 = ::ort::MINOR_VERSION;

/// The library ONNX Runtime sessions in this process run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrtLibrary {
    pub path: PathBuf,
    /// What the library reports, e.g. `1.32.0`.
    pub version: String,
}

/// ort keeps one library per process; this records which one, so a later request for another
/// path (a reloaded config) is an error instead of silently running on the first.
static LOADED: Mutex<Option<OrtLibrary>> = Mutex::new(None);

fn lib_err(path: &Path, msg: impl Into<String>) -> EncoderError {
    EncoderError::Library {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Make the library usable by ort: `configured` (from `engine.ort_library`), else the
/// `ORT_DYLIB_PATH` environment variable, checked with [`probe`] and then handed to ort. Called
/// before every session is created; after the first success it only compares paths.
pub fn ensure_library(configured: Option<&Path>) -> Result<OrtLibrary, EncoderError> {
    let path = choose_path(configured, std::env::var_os("ORT_DYLIB_PATH"))?;
    // ort resolves a relative path against the executable's directory first; make it absolute
    // so the file ort opens is the file checked here.
    let path = std::path::absolute(&path).unwrap_or(path);
    // A panic elsewhere while holding the lock leaves the record intact: keep using it.
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(lib) = loaded.as_ref() {
        if lib.path == path {
            return Ok(lib.clone());
        }
        return Err(lib_err(
            &path,
            format!(
                "ONNX Runtime is already loaded from {} in this process; restart clipd to switch libraries",
                lib.path.display()
            ),
        ));
    }
    let version = probe(&path)?;
    let Some(path_str) = path.to_str() else {
        return Err(lib_err(
            &path,
            "the path is not valid UTF-8; rename or link the library",
        ));
    };
    // No custom logger: ort 2.0.0-rc.10 hands ONNX Runtime a pointer into the builder it then
    // moves, so the first log call would read freed memory. ONNX Runtime's own sink prints
    // errors only (ORT_LOG=warning|info|verbose raises it).
    ::ort::init_from(path_str)
        .with_name("clipd")
        .commit()
        .map_err(|e| {
            lib_err(
                &path,
                format!("cannot start ONNX Runtime {version}: {}", one_line(&e)),
            )
        })?;
    let lib = OrtLibrary { path, version };
    log::info!(
        "ONNX Runtime {} loaded from {}",
        lib.version,
        lib.path.display()
    );
    *loaded = Some(lib.clone());
    Ok(lib)
}

/// The configured path wins over the environment; an empty variable counts as unset.
fn choose_path(configured: Option<&Path>, env: Option<OsString>) -> Result<PathBuf, EncoderError> {
    match (configured, env) {
        (Some(p), _) => Ok(p.to_path_buf()),
        (None, Some(v)) if !v.is_empty() => Ok(PathBuf::from(v)),
        _ => Err(EncoderError::NoLibrary),
    }
}

/// Open `path` on its own and ask it for its version, without ort. Returns the version string.
pub fn probe(path: &Path) -> Result<String, EncoderError> {
    let hint = "set engine.ort_library or ORT_DYLIB_PATH to a libonnxruntime.so";
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(lib_err(path, format!("not a file: {hint}"))),
        Err(e) => return Err(lib_err(path, format!("{e}: {hint}"))),
    }
    // SAFETY: loading a shared library runs its initialisers; the file is the one the user
    // named as ONNX Runtime, which is exactly what would be loaded for inference anyway.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
        lib_err(
            path,
            format!(
                "cannot be loaded ({}); it must be a libonnxruntime shared library built for this machine",
                one_line(&e)
            ),
        )
    })?;
    // SAFETY: `OrtGetApiBase` is ONNX Runtime's one exported entry point, declared in its C
    // header as `const OrtApiBase* OrtGetApiBase(void)`.
    let get_base =
        unsafe { lib.get::<unsafe extern "system" fn() -> *const OrtApiBase>(b"OrtGetApiBase\0") }
            .map_err(|_| {
                lib_err(
                    path,
                    format!("not an ONNX Runtime library (no OrtGetApiBase symbol): {hint}"),
                )
            })?;
    // SAFETY: the function takes no arguments and returns a pointer to a static table.
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err(lib_err(path, "OrtGetApiBase returned no API table"));
    }
    // SAFETY: `base` points to ONNX Runtime's static OrtApiBase; GetVersionString returns a
    // static NUL-terminated string.
    let version = unsafe {
        let s = ((*base).GetVersionString)();
        if s.is_null() {
            return Err(lib_err(path, "the library reports no version"));
        }
        CStr::from_ptr(s).to_string_lossy().into_owned()
    };
    check_version(&version, REQUIRED_MINOR_VERSION).map_err(|msg| lib_err(path, msg))?;
    // SAFETY: as above; GetApi returns null for an API version the library does not provide.
    let api = unsafe { ((*base).GetApi)(ORT_API_VERSION) };
    if api.is_null() {
        return Err(lib_err(
            path,
            format!("ONNX Runtime {version} does not provide C API version {ORT_API_VERSION}, which clipd needs"),
        ));
    }
    Ok(version)
}

/// Whether a library reporting `found` (e.g. `1.32.0`) serves an API written for 1.`minor`.
/// The error says what was found and what is needed.
pub fn check_version(found: &str, minor: u32) -> Result<(), String> {
    let needed = format!("clipd needs ONNX Runtime 1.{minor} or newer");
    let mut parts = found.trim().split(['.', '-', '+']);
    let number = |p: Option<&str>| p.and_then(|s| s.parse::<u32>().ok());
    match (number(parts.next()), number(parts.next())) {
        (Some(1), Some(m)) if m >= minor => Ok(()),
        (Some(1), Some(_)) => Err(format!("version {found} is too old: {needed}")),
        (Some(_), Some(_)) => Err(format!(
            "version {found} is not supported: {needed} within the 1.x series"
        )),
        _ => Err(format!(
            "reports version {found:?}, which is not a version number: {needed}"
        )),
    }
}

/// Library and runtime messages can span lines; errors are printed on one.
pub(super) fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_and_equal_minor_versions_are_accepted() {
        assert_eq!(check_version("1.22.0", 22), Ok(()));
        assert_eq!(check_version("1.32.0", 22), Ok(()));
        assert_eq!(check_version("1.22.2-dev", 22), Ok(()));
        assert_eq!(check_version(" 1.100.1\n", 22), Ok(()));
    }

    #[test]
    fn older_versions_name_what_was_found_and_needed() {
        let e = check_version("1.21.1", 22).unwrap_err();
        assert_eq!(
            e,
            "version 1.21.1 is too old: clipd needs ONNX Runtime 1.22 or newer"
        );
        // Minor versions compare as numbers, not strings ("1.3" is older than "1.22").
        assert!(check_version("1.3.0", 22).unwrap_err().contains("too old"));
    }

    #[test]
    fn other_major_versions_and_garbage_are_refused() {
        let e = check_version("2.0.0", 22).unwrap_err();
        assert!(e.contains("2.0.0") && e.contains("1.22"), "{e}");
        let e = check_version("banana", 22).unwrap_err();
        assert!(e.contains("\"banana\"") && e.contains("1.22"), "{e}");
        assert!(check_version("", 22).is_err());
        assert!(check_version("1", 22).is_err());
    }

    #[test]
    fn the_configured_path_wins_and_nothing_is_an_error() {
        let cfg = Path::new("/opt/ort/libonnxruntime.so");
        assert_eq!(
            choose_path(Some(cfg), Some("/elsewhere.so".into())).unwrap(),
            cfg
        );
        assert_eq!(
            choose_path(None, Some("/env/libonnxruntime.so".into())).unwrap(),
            Path::new("/env/libonnxruntime.so")
        );
        let e = choose_path(None, Some("".into())).unwrap_err();
        assert!(matches!(e, EncoderError::NoLibrary));
        let msg = choose_path(None, None).unwrap_err().to_string();
        assert!(
            msg.contains("engine.ort_library") && msg.contains("ORT_DYLIB_PATH"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn a_missing_file_is_a_one_line_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libonnxruntime.so.1.99.0");
        let msg = probe(&path).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("{}: ONNX Runtime library: ", path.display())),
            "{msg}"
        );
        assert!(msg.contains("ORT_DYLIB_PATH"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        let msg = probe(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("not a file"), "{msg}");
    }

    #[test]
    fn a_file_that_is_not_a_library_is_refused_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libonnxruntime.so");
        std::fs::write(&path, "this is not an ELF file\n".repeat(100)).unwrap();
        let msg = probe(&path).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!(
                "{}: ONNX Runtime library: cannot be loaded (",
                path.display()
            )),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }

    /// A real shared library that is not ONNX Runtime: the C library this test runs on.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_library_without_the_onnx_runtime_entry_point_is_refused() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let libc = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| {
                Path::new(p)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libc.so") || n.starts_with("libc-"))
            })
            .expect("the test process maps the C library");
        let msg = probe(Path::new(libc)).unwrap_err().to_string();
        assert!(msg.contains("no OrtGetApiBase symbol"), "{msg}");
        assert!(msg.starts_with(libc), "{msg}");
    }
}
