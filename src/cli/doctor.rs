//! `clipd doctor`: check an installation the way the daemon will use it, one line per check,
//! each failure with its fix.
//!
//! Nothing is written: the database is opened read-only, and the cameras are only opened to
//! list their modes (which fails with "busy" while the daemon streams from one — that is not a
//! fault). The exit status is that of the first failed check's class (2 config, 3 bundle or
//! adapter, 4 database or device), so scripts can tell what to repair.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use clipd::adapter::file::Adapter;
use clipd::bundle::{Bundle, BundleError};
use clipd::classes::ClassSpec;
use clipd::config::{Loaded, SourceKind};
use clipd::encoder::{EncoderOptions, TractImageEncoder, TractTextEncoder};
use clipd::source::SourceError;
use clipd::store::SCHEMA_VERSION;
use clipd::tokenizer::ClipTokenizer;

use super::{adapter_path, bundle_dir, exit_code, one_line};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Configuration file [default: ./clipd.toml if it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Model bundle directory [default: the config's `bundle`, else models/tiny-clip].
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// Few-shot adapter [default: the config's `adapter`, else none].
    #[arg(long, value_name = "FILE")]
    adapter: Option<PathBuf>,
}

/// The outcome of one check.
enum Status {
    Ok(String),
    /// Something worth knowing that is not a fault (a camera listing, a skipped check).
    Info(String),
    Fail {
        error: anyhow::Error,
        fix: &'static str,
    },
}

/// Prints checks as they complete and remembers the first failure's exit status.
struct Report {
    first_failure: Option<ExitCode>,
}

impl Report {
    fn line(&mut self, check: &str, status: Status) {
        match status {
            Status::Ok(msg) => println!("ok    {check:<9} {msg}"),
            Status::Info(msg) => println!("--    {check:<9} {msg}"),
            Status::Fail { error, fix } => {
                println!("FAIL  {check:<9} {} — fix: {fix}", one_line(&error));
                self.first_failure.get_or_insert(exit_code(&error));
            }
        }
    }
}

/// Check cameras, config, bundle, adapter, database and the configured cameras.
pub fn doctor(args: DoctorArgs) -> Result<ExitCode> {
    let mut report = Report {
        first_failure: None,
    };
    let cameras = cameras::list(&mut report);

    let config_file = args
        .config
        .clone()
        .or_else(|| Some(PathBuf::from("clipd.toml")).filter(|p| p.is_file()));
    let config = match &config_file {
        None => {
            report.line(
                "config",
                Status::Info(
                    "none given and no ./clipd.toml: checking the defaults (pass --config FILE)"
                        .into(),
                ),
            );
            None
        }
        Some(file) => match clipd::config::load(file) {
            Ok(l) => {
                let c = &l.config;
                report.line(
                    "config",
                    Status::Ok(format!(
                        "{}: {}, {}",
                        file.display(),
                        plural(c.classes.len(), "class", "classes"),
                        plural(c.sources.len(), "source", "sources")
                    )),
                );
                Some(l)
            }
            Err(e) => {
                report.line(
                    "config",
                    Status::Fail {
                        error: e.into(),
                        fix: "correct the key named above (clipd.toml.example documents every key)",
                    },
                );
                None
            }
        },
    };
    let config_failed = config_file.is_some() && config.is_none();

    let bundle_path = bundle_dir(args.bundle.as_deref(), config.as_ref());
    let variant = config
        .as_ref()
        .and_then(|l| l.config.engine.variant.as_deref());
    let bundle = match check_bundle(&bundle_path, variant) {
        Ok((b, msg)) => {
            report.line("bundle", Status::Ok(msg));
            Some(b)
        }
        Err(error) => {
            let fix = match error.downcast_ref() {
                Some(BundleError::UnknownVariant { .. }) => {
                    "set engine.variant to one the bundle has, or add the variant to the bundle (models/BUNDLE_FORMAT.md)"
                }
                _ => "point `bundle` at an intact bundle (models/BUNDLE_FORMAT.md; re-copy or re-export it)",
            };
            report.line("bundle", Status::Fail { error, fix });
            None
        }
    };

    let adapter = adapter_path(args.adapter.as_deref(), config.as_ref());
    report.line(
        "adapter",
        match (&adapter, &bundle) {
            (None, _) => Status::Ok("none configured: zero-shot".into()),
            (Some(p), None) => Status::Info(format!("{}: not checked without a bundle", p.display())),
            (Some(p), Some(b)) => match check_adapter(p, b, config.as_ref()) {
                Ok(msg) => Status::Ok(msg),
                Err(error) => Status::Fail {
                    error,
                    fix: "retrain it with `clipd train` for this bundle and class list, or remove `adapter`",
                },
            },
        },
    );

    if config_failed {
        report.line(
            "database",
            Status::Info("not checked: the config did not load".into()),
        );
    } else {
        let (db, allow_network_fs) = match &config {
            Some(l) => (
                l.resolve(&l.config.store.path),
                l.config.store.allow_network_fs,
            ),
            None => (PathBuf::from("clipd.db"), false),
        };
        report.line(
            "database",
            match check_database(&db, allow_network_fs) {
                Ok(msg) => Status::Ok(msg),
                Err(error) => Status::Fail {
                    error,
                    fix: "restore a backup (`clipd db backup` makes them) or move the file aside for a fresh one; keep it on a local disk (or set store.allow_network_fs)",
                },
            },
        );
    }

    if let Some(l) = &config {
        for (i, s) in l.config.sources.iter().enumerate() {
            if s.kind == SourceKind::Camera {
                let key = format!("sources[{i}]");
                report.line("camera", cameras::check_source(&key, s, &cameras));
            }
        }
    }

    Ok(report.first_failure.unwrap_or(ExitCode::SUCCESS))
}

/// Open and verify the bundle (manifest and sha256 of every file), then load both encoders (of
/// the configured variant) and the tokenizer as the daemon will.
fn check_bundle(dir: &Path, variant: Option<&str>) -> Result<(Bundle, String)> {
    let b = Bundle::open(dir)?.with_variant(variant)?;
    let opts = EncoderOptions::default();
    TractImageEncoder::load(&b, opts)?;
    TractTextEncoder::load(&b, opts)?;
    ClipTokenizer::load(&b.tokenizer_path(), &b.manifest.text)?;
    let running = match b.variant() {
        Some(v) => format!(", running variant {v}"),
        None if b.manifest.variants.is_empty() => String::new(),
        None => format!(
            ", running fp32 (variants: {})",
            b.manifest
                .variants
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let msg = format!(
        "{}: {}, {} files verified, encoders and tokenizer load{running}",
        dir.display(),
        b.model_id(),
        b.manifest.files.len()
    );
    Ok((b, msg))
}

/// The adapter loads and was trained for this bundle (and, with a config, its classes).
fn check_adapter(path: &Path, bundle: &Bundle, config: Option<&Loaded>) -> Result<String> {
    let a = Adapter::load(path)?;
    let classes = match config {
        Some(l) => l.config.class_specs(),
        // Without a config only the bundle can be checked: compare the adapter with itself.
        None => a
            .meta
            .classes
            .iter()
            .map(|c| ClassSpec {
                name: c.name.clone(),
                domain: c.domain.clone(),
                prompts: c.prompts.clone(),
                aliases: Vec::new(),
            })
            .collect(),
    };
    a.check(path, bundle, &classes)?;
    Ok(format!(
        "{}: {} adapter {} for {} classes, {}-shot",
        path.display(),
        a.meta.method,
        a.id,
        a.meta.classes.len(),
        a.meta.shots
    ))
}

/// The database opens read-only with a clipd schema and passes `PRAGMA quick_check`; a missing
/// file is fine (the daemon creates it). A network file system fails the check unless the
/// config allows it, as the daemon refuses it.
fn check_database(path: &Path, allow_network_fs: bool) -> Result<String> {
    if let Some(fs) = clipd::store::network_fs_of(path) {
        if !allow_network_fs {
            return Err(as_io(anyhow::anyhow!(
                "database {} is on a network file system ({fs}), where SQLite's locking is unreliable",
                path.display()
            )));
        }
    }
    if !path.exists() {
        return Ok(format!(
            "{}: does not exist yet (`clipd run` creates it)",
            path.display()
        ));
    }
    let report = clipd::store::quick_check(path).map_err(|e| as_io(e.into()))?;
    let version = report.schema_version;
    if version > SCHEMA_VERSION {
        return Err(as_io(anyhow::anyhow!(
            "database {} has schema {version}, newer than this clipd's {SCHEMA_VERSION}: \
             it was written by a newer clipd",
            path.display()
        )));
    }
    if !report.is_ok() {
        return Err(as_io(anyhow::anyhow!(
            "database {} is damaged: quick_check: {}",
            path.display(),
            report.problems.join("; ")
        )));
    }
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let upgrade = if version < SCHEMA_VERSION {
        format!(" (the daemon migrates it to {SCHEMA_VERSION} at its next start, after a backup)")
    } else {
        String::new()
    };
    Ok(format!(
        "{}: schema {version}{upgrade}, quick_check ok, {:.1} MiB",
        path.display(),
        size as f64 / (1024.0 * 1024.0)
    ))
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Mark an error as I/O class (exit status 4).
fn as_io(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(std::io::Error::other(one_line(&e)))
}

/// A camera problem as an error of the right class: device trouble is I/O (4), a config the
/// camera cannot satisfy is a configuration error (2).
#[cfg_attr(not(feature = "camera"), allow(dead_code))]
fn camera_error(key: &str, device: &str, msg: String, config: bool) -> anyhow::Error {
    if config {
        SourceError::Setup {
            key: key.to_string(),
            path: device.into(),
            msg,
        }
        .into()
    } else {
        SourceError::Io {
            path: format!("{key}.device = {device:?}").into(),
            source: std::io::Error::other(msg),
        }
        .into()
    }
}

#[cfg(feature = "camera")]
mod cameras {
    use super::*;
    use clipd::config::SourceConfig;
    use clipd::source::camera::{self, Listing, Selector, Want};

    /// List every V4L2 node with its modes (or why it cannot be listed).
    pub fn list(report: &mut Report) -> Vec<Listing> {
        let found = camera::list_cameras();
        if found.is_empty() {
            report.line(
                "cameras",
                Status::Info(
                    "none found: no /dev/video* device nodes (no camera attached, its driver not loaded, or a container started without --device /dev/videoN)"
                        .into(),
                ),
            );
        }
        for c in &found {
            let what = match &c.modes {
                Ok(m) if m.is_empty() => "no mode in a format clipd reads".to_string(),
                Ok(m) => camera::describe_modes(m),
                Err(e) => e.clone(),
            };
            report.line(
                "camera",
                Status::Info(format!("{} {:?}: {what}", c.node.display(), c.name)),
            );
        }
        found
    }

    /// A configured camera exists, can be opened by this user and offers an acceptable mode.
    pub fn check_source(key: &str, s: &SourceConfig, found: &[Listing]) -> Status {
        let label = s.name.clone().unwrap_or_else(|| s.path.clone());
        let selector = Selector::parse(&s.path);
        if let Err(msg) = selector.check() {
            return Status::Fail {
                error: camera_error(key, &s.path, msg, true),
                fix:
                    "set `device` to an index, /dev/videoN, a /dev/v4l/by-id/ link or a camera name",
            };
        }
        let nodes = match selector.resolve() {
            Ok(n) => n,
            Err(e) => {
                return Status::Fail {
                    error: camera_error(key, &s.path, e.0, false),
                    fix: "attach the camera or correct `device` (an index, /dev/videoN, a /dev/v4l/by-id/ link or a name listed above); the daemon keeps retrying meanwhile",
                }
            }
        };
        let mut problems = Vec::new();
        for (_, node) in &nodes {
            if let Err(e) = camera::check_access(node) {
                problems.push((e, false));
                continue;
            }
            let Some(listing) = found.iter().find(|l| &l.node == node) else {
                problems.push((
                    format!("{} appeared after the listing", node.display()),
                    false,
                ));
                continue;
            };
            match &listing.modes {
                Ok(modes) => match camera::negotiate(modes, &Want::from_spec(&s.camera_spec())) {
                    Some(m) => {
                        return Status::Ok(format!(
                            "{key} {label:?}: {} would run {}",
                            node.display(),
                            camera::describe_modes(&[m])
                        ))
                    }
                    None => problems.push((
                        format!("{} offers none of the configured formats", node.display()),
                        true,
                    )),
                },
                Err(e) => problems.push((format!("{}: {e}", node.display()), false)),
            }
        }
        let config = problems.iter().all(|(_, c)| *c);
        let msg = problems
            .into_iter()
            .map(|(m, _)| m)
            .collect::<Vec<_>>()
            .join("; ");
        Status::Fail {
            error: camera_error(key, &s.path, msg, config),
            fix: if config {
                "add a format the camera lists above to `formats`"
            } else {
                "add the user running clipd to group `video`, or stop the process holding the camera"
            },
        }
    }
}

#[cfg(not(feature = "camera"))]
mod cameras {
    use super::*;
    use clipd::config::SourceConfig;

    pub fn list(report: &mut Report) -> Vec<()> {
        report.line(
            "cameras",
            Status::Info("not listed: this clipd was built without the `camera` feature".into()),
        );
        Vec::new()
    }

    pub fn check_source(key: &str, s: &SourceConfig, _found: &[()]) -> Status {
        Status::Fail {
            error: SourceError::Setup {
                key: key.to_string(),
                path: s.path.clone().into(),
                msg: "this clipd was built without camera support".into(),
            }
            .into(),
            fix: "rebuild with the `camera` feature (the default)",
        }
    }
}
