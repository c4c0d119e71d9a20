//! The daemon's face to the outside: systemd readiness and STATUS= lines, the watchdog (fed
//! only while inference progresses), and the status file `clipd status` reads.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::notify::Notifier;
use super::status::{self, RateMeter, RefinerStatus, SourceStatus, StatusReport};
use crate::config::Loaded;
use crate::pipeline::Monitor;
use crate::refiner::RefinerMonitor;
use crate::store::{now_ms, WriterProgress};

/// READY=1 waits for the first classified frame, but no longer than this: a camera unplugged at
/// boot must not turn into a start timeout and a restart loop (the STATUS= line says why no
/// frame has come yet, and the camera source keeps reconnecting).
const READY_GRACE: Duration = Duration::from_secs(60);

/// The daemon's face to the outside: systemd notifications, the watchdog, the status file.
pub struct Reporter {
    pub notifier: Notifier,
    status_path: PathBuf,
    interval: Duration,
    hung_after: Duration,
    started: Instant,
    /// What every status report starts from (counters the service loop keeps: reloads).
    pub base: StatusReport,
    kinds: Vec<String>,
    meters: Vec<RateMeter>,
    last_status: Option<Instant>,
    last_ping: Option<Instant>,
    ready: bool,
    hung_logged: bool,
    status_failed: bool,
}

impl Reporter {
    pub fn new(notifier: Notifier, cfg: &Loaded, db: &Path, started_ms: i64) -> Reporter {
        let d = &cfg.config.daemon;
        let status_path = d
            .status_file
            .as_ref()
            .map(|p| cfg.resolve(p))
            .unwrap_or_else(|| status::default_status_path(db));
        let base = StatusReport {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_ms,
            interval_ms: (d.status_interval_secs * 1000.0) as u64,
            config: Some(cfg.file.clone()),
            db_path: db.to_path_buf(),
            ..Default::default()
        };
        Reporter {
            notifier,
            status_path,
            interval: Duration::from_secs_f64(d.status_interval_secs),
            hung_after: Duration::from_secs_f64(d.hung_after_secs),
            started: Instant::now(),
            base,
            kinds: Vec::new(),
            meters: Vec::new(),
            last_status: None,
            last_ping: None,
            ready: false,
            hung_logged: false,
            status_failed: false,
        }
    }

    /// A configuration went live (start or reload).
    pub fn generation(&mut self, cfg: &Loaded, model_id: &str, adapter_id: Option<&str>) {
        let d = &cfg.config.daemon;
        self.interval = Duration::from_secs_f64(d.status_interval_secs);
        self.hung_after = Duration::from_secs_f64(d.hung_after_secs);
        self.base.interval_ms = (d.status_interval_secs * 1000.0) as u64;
        self.base.config = Some(cfg.file.clone());
        self.base.model_id = model_id.to_string();
        self.base.adapter_id = adapter_id.map(str::to_string);
        self.kinds = cfg
            .config
            .sources
            .iter()
            .map(|s| format!("{:?}", s.kind).to_lowercase())
            .collect();
        self.meters = vec![RateMeter::new(); self.kinds.len()];
        self.last_status = None;
    }

    /// Feed the watchdog, report readiness, refresh the status file when due.
    pub fn tick(
        &mut self,
        monitor: &Monitor,
        store: Option<&Arc<WriterProgress>>,
        refiner: Option<&RefinerMonitor>,
    ) {
        let now = Instant::now();
        // Watchdog: fed only while the inference loop makes progress (or has nothing to do).
        if let Some(every) = self.notifier.watchdog_interval() {
            let stuck = monitor.stuck_for();
            if stuck < self.hung_after {
                if self.last_ping.is_none_or(|t| now - t >= every / 2) {
                    self.notifier.watchdog();
                    self.last_ping = Some(now);
                }
                if self.hung_logged {
                    log::warn!("inference is progressing again");
                    self.hung_logged = false;
                }
            } else if !self.hung_logged {
                log::error!(
                    "inference hung: {} frames waiting, none finished for {:.0} s \
                     (daemon.hung_after_secs); no longer feeding the systemd watchdog",
                    monitor.in_flight(),
                    stuck.as_secs_f64()
                );
                self.hung_logged = true;
            }
        }
        if !self.ready {
            let first = monitor.outputs() > 0;
            if first || self.started.elapsed() >= READY_GRACE {
                if !first {
                    log::warn!(
                        "no frame classified within {} s of start (is the camera connected? \
                         `clipd doctor`); reporting ready and waiting",
                        READY_GRACE.as_secs()
                    );
                }
                self.notifier.ready();
                self.ready = true;
            }
        }
        if self.last_status.is_none_or(|t| now - t >= self.interval) {
            self.last_status = Some(now);
            let report = self.snapshot(monitor, store, refiner, now);
            self.notifier.status(&status_line(&report, self.ready));
            match report.write_atomic(&self.status_path) {
                Ok(()) => self.status_failed = false,
                Err(e) if !self.status_failed => {
                    log::warn!("status file: {e}");
                    self.status_failed = true;
                }
                Err(_) => {}
            }
        }
    }

    fn snapshot(
        &mut self,
        monitor: &Monitor,
        store: Option<&Arc<WriterProgress>>,
        refiner: Option<&RefinerMonitor>,
        now: Instant,
    ) -> StatusReport {
        let refined = refiner.map(RefinerMonitor::snapshot);
        let mut r = self.base.clone();
        r.updated_ms = now_ms();
        r.sources = monitor
            .sources()
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let classified = m.classified.load(Ordering::Relaxed);
                let fps = self
                    .meters
                    .get_mut(i)
                    .map(|meter| meter.update(now, classified))
                    .unwrap_or(0.0);
                let device = m.device();
                let last = m.last();
                SourceStatus {
                    name: m.name.clone(),
                    kind: self.kinds.get(i).cloned().unwrap_or_default(),
                    frames: m.delivered.load(Ordering::Relaxed),
                    classified,
                    failed: m.failed.load(Ordering::Relaxed),
                    skipped: m.skipped.load(Ordering::Relaxed),
                    dropped: m.dropped.load(Ordering::Relaxed),
                    fps,
                    reconnects: device
                        .as_ref()
                        .map_or(0, |d| d.reconnects.load(Ordering::Relaxed)),
                    stalls: device
                        .as_ref()
                        .map_or(0, |d| d.stalls.load(Ordering::Relaxed)),
                    connected: device.as_ref().map(|d| d.connected.load(Ordering::Relaxed)),
                    last_label: last.as_ref().map(|l| l.label.clone()),
                    last_score: last.as_ref().map(|l| l.score),
                    last_ts_ms: last.as_ref().map(|l| l.ts_ms),
                    state: refined
                        .as_ref()
                        .and_then(|l| l.states.get(&m.name).cloned()),
                }
            })
            .collect();
        r.refiner = refined.map(|l| RefinerStatus {
            passes: l.stats.passes,
            guarded: l.stats.guarded,
            failed: l.stats.failed,
            last_ms: l.last_duration.map(|d| d.as_millis() as u64),
            last_ts_ms: l.last_ts_ms,
            last_changed: l.last_changed,
        });
        r.db.bytes = file_size(&r.db_path) + file_size(&wal_path(&r.db_path));
        if let Some(p) = store.map(|p| p.snapshot()) {
            r.db.rows_committed = p.rows_committed;
            r.db.last_committed_id = (p.last_committed_id > 0).then_some(p.last_committed_id);
            r.db.pending = p.pending;
            r.db.dropped = p.dropped;
            r.db.commit_errors = p.commit_errors;
            if p.failing {
                r.db.last_error = Some("commits are failing (see the journal)".into());
            }
        }
        r
    }
}

/// The one line `systemctl status` shows.
fn status_line(r: &StatusReport, ready: bool) -> String {
    let parts: Vec<String> = r
        .sources
        .iter()
        .map(|s| {
            format!(
                "{}: {:.1} fps, {}",
                s.name,
                s.fps,
                s.last_label.as_deref().unwrap_or("no frame yet")
            )
        })
        .collect();
    let waiting = if ready { "" } else { "starting; " };
    format!("{waiting}{}", parts.join("; "))
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}
