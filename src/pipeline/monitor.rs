//! Live counters of a running pipeline, read by the daemon for its status file, systemd's
//! STATUS= line and the watchdog. Writers are the pipeline's threads (atomics, no locks on the
//! frame path except the per-source "last label").

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::source::SourceCounters;

/// The latest classification of a source.
#[derive(Debug, Clone, PartialEq)]
pub struct LastLabel {
    pub label: String,
    pub score: f32,
    pub ts_ms: i64,
}

/// Counters of one source.
#[derive(Debug, Default)]
pub struct SourceMetrics {
    pub name: String,
    /// Frames the source delivered.
    pub delivered: AtomicU64,
    /// Frames the frame policy (every-N-th, rate cap, novelty gate) chose not to classify.
    pub skipped: AtomicU64,
    /// Frames evicted or refused because inference fell behind (drop-oldest).
    pub dropped: AtomicU64,
    pub classified: AtomicU64,
    pub failed: AtomicU64,
    last: Mutex<Option<LastLabel>>,
    device: Mutex<Option<Arc<SourceCounters>>>,
}

impl SourceMetrics {
    fn new(name: &str) -> Self {
        SourceMetrics {
            name: name.to_string(),
            ..Default::default()
        }
    }

    pub fn last(&self) -> Option<LastLabel> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_last(&self, l: LastLabel) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(l);
    }

    /// The live source's own counters (reconnects, stalls), when it has them.
    pub fn device(&self) -> Option<Arc<SourceCounters>> {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_device(&self, c: Option<Arc<SourceCounters>>) {
        *self.device.lock().unwrap_or_else(|e| e.into_inner()) = c;
    }
}

/// Counters of the whole pipeline.
#[derive(Debug)]
pub struct Monitor {
    started: Instant,
    sources: Vec<Arc<SourceMetrics>>,
    /// Frames admitted and not yet through the head (queued, decoding, encoding).
    in_flight: AtomicI64,
    /// When a frame last came out of the head (ms since `started`).
    last_output_ms: AtomicU64,
    /// Batches run by the encoder.
    pub batches: AtomicU64,
}

impl Monitor {
    /// Counters for sources named `names`, in the order they are passed to the pipeline.
    pub fn new<S: AsRef<str>>(names: &[S]) -> Arc<Self> {
        Arc::new(Monitor {
            started: Instant::now(),
            sources: names
                .iter()
                .map(|n| Arc::new(SourceMetrics::new(n.as_ref())))
                .collect(),
            in_flight: AtomicI64::new(0),
            last_output_ms: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        })
    }

    pub fn sources(&self) -> &[Arc<SourceMetrics>] {
        &self.sources
    }

    pub(crate) fn source(&self, i: usize) -> Option<&SourceMetrics> {
        self.sources.get(i).map(|s| s.as_ref())
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(crate) fn admitted(&self) {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            // Idle until now: the clock for "stuck" starts with this frame.
            self.last_output_ms.store(self.now_ms(), Ordering::Release);
        }
    }

    pub(crate) fn finished(&self) {
        self.last_output_ms.store(self.now_ms(), Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Frames admitted and not finished.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// How long frames have been waiting without any coming out: zero when idle. The systemd
    /// watchdog stops being fed when this grows past the configured limit (a hung encoder).
    pub fn stuck_for(&self) -> std::time::Duration {
        if self.in_flight() <= 0 {
            return std::time::Duration::ZERO;
        }
        let last = self.last_output_ms.load(Ordering::Acquire);
        std::time::Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// Frames classified or failed so far, over all sources.
    pub fn outputs(&self) -> u64 {
        self.sources
            .iter()
            .map(|s| s.classified.load(Ordering::Relaxed) + s.failed.load(Ordering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_only_while_frames_wait() {
        let m = Monitor::new(&["cam"]);
        assert_eq!(m.stuck_for(), std::time::Duration::ZERO);
        m.admitted();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(m.stuck_for() >= std::time::Duration::from_millis(15));
        m.finished();
        assert_eq!(m.stuck_for(), std::time::Duration::ZERO);
        assert_eq!(m.in_flight(), 0);
    }
}
