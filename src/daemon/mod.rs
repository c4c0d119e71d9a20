//! The long-running service: one configuration at a time runs as a [`generation`] (sources →
//! pipeline → store writer, with the refiner beside it); the [`service`] loop starts it, serves
//! signals (stop, reload with rollback), and keeps the outside informed through the
//! [`reporter`] (systemd readiness, watchdog, the status file). `clipd run` is a thin shell
//! over [`service::run`].

pub mod generation;
pub mod notify;
pub mod reporter;
pub mod service;
pub mod signals;
pub mod status;

use std::path::PathBuf;

use crate::error::{ExitClass, HasExitClass};

/// Why the daemon could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{}: sources: no [[sources]] configured", file.display())]
    NoSources { file: PathBuf },
    #[error(
        "{}: sources[{index}]: a camera never runs out of frames, so --once would never end; \
         run without --once (SIGTERM stops it) or use a dir/file/glob source",
        file.display()
    )]
    CameraWithOnce { file: PathBuf, index: usize },
    #[error("{}: refine: {source}", file.display())]
    Refine {
        file: PathBuf,
        #[source]
        source: crate::transduct::TransductError,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start a daemon thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the {0} thread panicked")]
    Panic(&'static str),
}

impl HasExitClass for DaemonError {
    fn exit_class(&self) -> ExitClass {
        match self {
            DaemonError::NoSources { .. }
            | DaemonError::CameraWithOnce { .. }
            | DaemonError::Refine { .. } => ExitClass::Usage,
            DaemonError::Config(e) => e.exit_class(),
            DaemonError::Engine(e) => e.exit_class(),
            DaemonError::Source(e) => e.exit_class(),
            DaemonError::Store(e) => e.exit_class(),
            DaemonError::Pipeline(e) => e.exit_class(),
            DaemonError::Io { .. } | DaemonError::Spawn(_) | DaemonError::Panic(_) => ExitClass::Io,
        }
    }
}
