//! The service loop: start a configuration, then serve signals until the sources end (`once`)
//! or SIGTERM/SIGINT stops it. SIGHUP reloads the config file (and the adapter and bundle it
//! names): the new generation is prepared beside the running one, and a config that fails to
//! load is logged while the running one stays.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::generation::{Finished, Generation, Prepared};
use super::notify::Notifier;
use super::reporter::Reporter;
use super::signals::{Signal, Signals};
use super::DaemonError;
use crate::config::{self, Loaded, ModelOverrides, SourceKind};
use crate::error::one_line;
use crate::store::now_ms;

/// How often the control loop wakes to refresh status and feed the watchdog.
const TICK: Duration = Duration::from_millis(200);

/// How the service ended.
#[derive(Debug)]
pub enum Outcome {
    /// The sources ended or a stop signal was served: everything queued was committed.
    Finished(Box<Finished>),
    /// A second stop signal, or a drain that overran `daemon.shutdown_timeout_secs`: the
    /// process should exit now. Committed frames are safe; frames still queued are lost.
    Abandoned(&'static str),
}

/// Run the daemon on `cfg`; `ov` is what the command line fixes for its whole life (a reload
/// re-reads only the config file and the files it and these name).
pub fn run(cfg: Loaded, ov: ModelOverrides, once: bool) -> Result<Outcome, DaemonError> {
    if once {
        if let Some(index) = cfg
            .config
            .sources
            .iter()
            .position(|s| s.kind == SourceKind::Camera)
        {
            return Err(DaemonError::CameraWithOnce {
                file: cfg.file.clone(),
                index,
            });
        }
    }
    let signals = Signals::listen().map_err(|source| DaemonError::Io {
        path: "signal handlers".into(),
        source,
    })?;
    let notifier = Notifier::from_env();
    // A large model can take a while to load on a small board.
    notifier.extend_timeout(Duration::from_secs(300));
    let mut current = cfg.clone();
    let prepared = Prepared::new(cfg, &ov)?;
    let mut reporter = Reporter::new(notifier, &current, &prepared.db, now_ms());
    reporter.generation(
        &current,
        &prepared.model_id(),
        prepared.adapter_id().as_deref(),
    );
    let mut gen = Generation::start(prepared, once)?;
    let mut shutdown: Option<Instant> = None;
    loop {
        match signals.next(TICK) {
            Some(Signal::Stop) if shutdown.is_some() => {
                log::error!("second stop signal: exiting at once without draining");
                return Ok(Outcome::Abandoned("a second stop signal"));
            }
            Some(Signal::Stop) => {
                log::info!(
                    "stop requested: finishing queued frames and committing (at most {:.0} s)",
                    current.config.daemon.shutdown_timeout_secs
                );
                reporter.notifier.stopping();
                gen.stop.store(true, Ordering::Relaxed);
                shutdown = Some(Instant::now());
            }
            Some(Signal::Reload) if shutdown.is_none() => {
                reporter.notifier.reloading();
                gen = reload(gen, &mut current, &ov, &mut reporter, once)?;
                reporter.notifier.ready();
            }
            Some(Signal::Reload) | None => {}
        }
        if let Some(t0) = shutdown {
            let limit = Duration::from_secs_f64(current.config.daemon.shutdown_timeout_secs);
            if t0.elapsed() > limit && !gen.is_finished() {
                log::error!(
                    "shutdown did not finish within {:.0} s (daemon.shutdown_timeout_secs): exiting; \
                     frames still queued are lost, committed ones are safe",
                    limit.as_secs_f64()
                );
                return Ok(Outcome::Abandoned("daemon.shutdown_timeout_secs"));
            }
        }
        if gen.is_finished() {
            return gen.join().map(|f| Outcome::Finished(Box::new(f)));
        }
        reporter.tick(&gen.monitor, gen.store.get(), gen.refiner.get());
    }
}

/// Serve a SIGHUP: prepare the re-read configuration beside the running one, then swap it in.
/// A config that fails to prepare leaves `gen` running; one that prepares but fails to start
/// (a camera that cannot be opened) is rolled back to the previous configuration.
fn reload(
    gen: Generation,
    current: &mut Loaded,
    ov: &ModelOverrides,
    reporter: &mut Reporter,
    once: bool,
) -> Result<Generation, DaemonError> {
    log::info!("reloading {}", current.file.display());
    let prepared = config::load(&current.file)
        .map_err(DaemonError::from)
        .and_then(|cfg| Prepared::new(cfg, ov));
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            log::error!(
                "reload refused, the running configuration stays: {}",
                one_line(&e)
            );
            reporter.base.last_reload_error = Some(one_line(&e));
            return Ok(gen);
        }
    };
    gen.stop.store(true, Ordering::Relaxed);
    log_generation_end(gen.join(), "before reload");
    let cfg = prepared.cfg.clone();
    let (model, adapter) = (prepared.model_id(), prepared.adapter_id());
    match Generation::start(prepared, once) {
        Ok(g) => {
            *current = cfg;
            reporter.base.reloads += 1;
            reporter.base.last_reload_error = None;
            reporter.generation(current, &model, adapter.as_deref());
            log::info!("configuration reloaded ({} so far)", reporter.base.reloads);
            Ok(g)
        }
        Err(e) => {
            log::error!(
                "reload: {}; restarting with the previous configuration",
                one_line(&e)
            );
            reporter.base.last_reload_error = Some(one_line(&e));
            let prepared = Prepared::new(current.clone(), ov)?;
            reporter.generation(
                current,
                &prepared.model_id(),
                prepared.adapter_id().as_deref(),
            );
            Generation::start(prepared, once)
        }
    }
}

/// Log how a configuration's run ended (a reload ends one).
fn log_generation_end(done: Result<Finished, DaemonError>, when: &str) {
    match done {
        Ok(f) => log::info!(
            "{when}: {} frames ({} classified, {} failed, {} skipped, {} dropped); database: {}",
            f.stats.frames,
            f.stats.classified,
            f.stats.failed,
            f.stats.skipped,
            f.stats.dropped,
            f.written
        ),
        Err(e) => log::error!("{when}: the pipeline ended with an error: {}", one_line(&e)),
    }
}
