//! A capture device run under supervision, so that a camera can misbehave for months without
//! taking the daemon down or flooding its log.
//!
//! Each device *instance* (one open of the device) runs on its own capture thread, because the
//! capture call of a stalled USB camera can block forever inside the driver (V4L2 polls with no
//! timeout). A supervisor thread watches the instances through a channel:
//!
//! - **stall watchdog**: no frame (or no completed open) for `stall` → the instance is abandoned
//!   (its thread is detached and will close its device if the call ever returns) and a fresh
//!   instance is opened; nothing ever waits for the stuck thread;
//! - **reconnect**: an error, an unplug or a failed open → reopen after an exponential backoff
//!   with jitter between `backoff_min` and `backoff_max` ([`backoff_delay`]); the backoff resets
//!   once a connection has stayed up for a full stall period;
//! - **state changes** ([`CaptureEvent`]) are reported once each — connected, unavailable (again
//!   only when the reason changes), lost, stalled, reconnected — never per frame or per retry;
//! - **counters**: reconnects and stalls in the shared [`SourceCounters`];
//! - **frames** land in a small slot that keeps only the newest ones: a camera frame is
//!   perishable, and the pipeline wants the present, not a backlog.
//!
//! The source never fails for transient trouble: while the device is away `next()` answers
//! [`Next::Wait`]. It fails for good only when abandoned threads stay stuck in the driver (more
//! than `max_stuck` of them, or one for longer than `stuck_limit` with no working instance):
//! with nokhwa's shared per-device handle a stuck stream keeps the device busy, so only a fresh
//! process can recover, and failing lets the service manager restart it (exit status 4).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{Frame, FrameSource, Next, Payload, SourceCounters, SourceError};
use crate::error::{ExitClass, HasExitClass};
use crate::rng::Rng;

/// Why a device could not be opened or stopped delivering (one line, naming the device).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DeviceError(pub String);

impl HasExitClass for DeviceError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::Io
    }
}

/// One open instance of a capture device. It lives and dies on its capture thread (so it need
/// not be `Send`); dropping it closes the device.
pub trait CaptureDevice {
    /// Block until the next frame.
    fn frame(&mut self) -> Result<Payload, DeviceError>;
}

/// A freshly opened device and one line saying what was negotiated.
pub struct Opened {
    pub device: Box<dyn CaptureDevice>,
    pub description: String,
}

/// Opens new instances of one device; called on a new capture thread each time (may block).
pub trait DeviceOpener: Send + Sync + 'static {
    fn open(&self) -> Result<Opened, DeviceError>;
}

/// Timing and sizing of a supervised capture.
#[derive(Debug, Clone)]
pub struct Settings {
    /// No frame (or no completed open) for this long is a stall.
    pub stall: Duration,
    /// Reconnect backoff bounds.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Frames kept for `next()`; when full the oldest is dropped.
    pub slot: usize,
    /// How long `next()` waits for a frame while connected, and asks to be called back after
    /// while disconnected.
    pub poll: Duration,
    /// Abandoned capture threads that may be stuck in the driver at once before the source gives
    /// up, and how long one may stay stuck while no instance works.
    pub max_stuck: usize,
    pub stuck_limit: Duration,
    /// Seed of the backoff jitter.
    pub seed: u64,
}

impl Settings {
    /// Settings for a camera source: the stall timeout and backoff bounds as configured,
    /// a two-frame slot, a 50 ms poll, at most 4 stuck threads or one stuck for 4 × the longest
    /// backoff, jitter seeded from the clock.
    pub fn for_camera(spec: &super::CameraSpec) -> Settings {
        let backoff_max = spec.reconnect_max;
        Settings {
            stall: spec.stall,
            backoff_min: spec.reconnect_min,
            backoff_max,
            slot: 2,
            poll: Duration::from_millis(50),
            max_stuck: 4,
            stuck_limit: backoff_max.saturating_mul(4).max(Duration::from_secs(60)),
            seed: clock_seed(),
        }
    }
}

/// A seed that differs between processes and runs (jitter exists to de-synchronise them).
fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

/// The reconnect delay before attempt `attempt` (0 = first retry): uniform in
/// [max(min, hi/2), hi] with hi = min(max, min·2^(attempt+1)). Always within [min, max], the
/// lower bound doubles with each attempt until it reaches max/2, and the jitter keeps several
/// daemons (or several cameras on one hub) from retrying in lockstep.
pub fn backoff_delay(attempt: u32, min: Duration, max: Duration, rng: &mut Rng) -> Duration {
    let max = max.max(min);
    let hi = min
        .saturating_mul(1u32 << attempt.saturating_add(1).min(31))
        .min(max);
    let lo = (hi / 2).max(min);
    lo + (hi - lo).mul_f64(rng.uniform())
}

/// A state change of a supervised device, reported once when it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum CaptureEvent {
    /// An instance opened; `reconnected` when an earlier one had been connected before.
    Connected {
        description: String,
        reconnected: bool,
    },
    /// Opening failed. Repeats with the same reason are not reported again.
    Unavailable { error: String },
    /// A connected instance failed (unplug, I/O error, a driver panic).
    Lost { error: String },
    /// No frame (`opening`: no completed open) within the stall timeout; the instance was
    /// abandoned and the device is being reopened.
    Stalled { waited: Duration, opening: bool },
    /// Capture threads are stuck in the driver; the source has given up.
    Failed { error: String },
    /// The capture was dropped.
    Stopped,
}

/// Receives state changes (the daemon logs them; tests record them).
pub type Reporter = Box<dyn FnMut(&CaptureEvent) + Send>;

/// A reporter that logs each state change as one line prefixed with `camera <name>:`.
pub fn log_reporter(name: String, settings: &Settings) -> Reporter {
    let max = settings.backoff_max;
    Box::new(move |ev| {
        match ev {
        CaptureEvent::Connected {
            description,
            reconnected: false,
        } => log::info!("camera {name}: {description}"),
        // At the level of the loss it ends, so the default (warn) log shows both.
        CaptureEvent::Connected {
            description,
            reconnected: true,
        } => log::warn!("camera {name}: reconnected: {description}"),
        CaptureEvent::Unavailable { error } => log::warn!(
            "camera {name}: not available: {error}; retrying with backoff up to {} (`clipd doctor` lists the cameras this user can open)",
            humantime::format_duration(max)
        ),
        CaptureEvent::Lost { error } => log::warn!("camera {name}: lost: {error}; reconnecting"),
        CaptureEvent::Stalled { waited, opening } => log::warn!(
            "camera {name}: stalled: {} for {}; abandoning that capture and reopening",
            if *opening { "open did not complete" } else { "no frame" },
            humantime::format_duration(*waited)
        ),
        CaptureEvent::Failed { error } => log::error!("camera {name}: {error}"),
        CaptureEvent::Stopped => log::debug!("camera {name}: stopped"),
    }
    })
}

/// Frames received and dropped by the slot (the daemon's status counts its own queue drops).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    pub received: u64,
    pub dropped: u64,
}

/// A supervised device as a [`FrameSource`].
pub struct Capture {
    name: String,
    label: String,
    poll: Duration,
    shared: Arc<Shared>,
    control: Sender<Msg>,
    supervisor: Option<JoinHandle<()>>,
}

/// What the supervisor and `next()` share.
struct Shared {
    slot: Mutex<Slot>,
    ready: Condvar,
    counters: Arc<SourceCounters>,
}

struct Slot {
    frames: VecDeque<(u64, Payload)>,
    capacity: usize,
    stats: CaptureStats,
    /// Set when the source has given up for good.
    failed: Option<String>,
}

enum Msg {
    Stop,
    Instance(u64, InstanceEvent),
}

enum InstanceEvent {
    Opened(String),
    Frame(Payload),
    Failed(DeviceError),
}

impl Capture {
    /// Start supervising the device `opener` opens. `name` is the source name; `label` names
    /// the device in frame references and errors (e.g. `/dev/video0`).
    pub fn start(
        name: String,
        label: String,
        opener: Arc<dyn DeviceOpener>,
        settings: Settings,
        reporter: Reporter,
    ) -> Result<Capture, SourceError> {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                frames: VecDeque::new(),
                capacity: settings.slot.max(1),
                stats: CaptureStats::default(),
                failed: None,
            }),
            ready: Condvar::new(),
            counters: Arc::new(SourceCounters::default()),
        });
        let (tx, rx) = mpsc::channel();
        let poll = settings.poll;
        let rng = Rng::new(settings.seed);
        let supervisor = Supervisor {
            opener,
            settings,
            reporter,
            shared: shared.clone(),
            tx: tx.clone(),
            rx,
            rng,
            generation: 0,
            ever_connected: false,
            abandoned: Vec::new(),
            last_unavailable: None,
            last: None,
        };
        let handle = thread::Builder::new()
            .name(format!("capture-supervisor:{name}"))
            .spawn(move || supervisor.run())
            .map_err(|source| SourceError::Io {
                path: label.clone().into(),
                source,
            })?;
        Ok(Capture {
            name,
            label,
            poll,
            shared,
            control: tx,
            supervisor: Some(handle),
        })
    }

    /// Frames received from the device and dropped by the slot so far.
    pub fn stats(&self) -> CaptureStats {
        lock(&self.shared.slot).stats
    }

    fn frame(&self, (seq, payload): (u64, Payload)) -> Next {
        Next::Frame(Frame {
            source: self.name.clone(),
            reference: format!("{}#{seq}", self.label),
            payload,
            truth: None,
        })
    }
}

impl FrameSource for Capture {
    fn name(&self) -> &str {
        &self.name
    }

    /// The oldest frame in the slot; while connected waits up to `poll` for one (then
    /// `Wait(0)`), while disconnected answers `Wait(poll)` at once.
    fn next(&mut self) -> Result<Next, SourceError> {
        let mut slot = lock(&self.shared.slot);
        if slot.frames.is_empty() && slot.failed.is_none() {
            if !self.shared.counters.connected.load(Ordering::Relaxed) {
                return Ok(Next::Wait(self.poll));
            }
            slot = self
                .shared
                .ready
                .wait_timeout_while(slot, self.poll, |s| {
                    s.frames.is_empty() && s.failed.is_none()
                })
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if let Some(f) = slot.frames.pop_front() {
            drop(slot);
            return Ok(self.frame(f));
        }
        if let Some(msg) = &slot.failed {
            return Err(SourceError::Io {
                path: self.label.clone().into(),
                source: std::io::Error::other(msg.clone()),
            });
        }
        Ok(Next::Wait(Duration::ZERO))
    }

    fn counters(&self) -> Option<Arc<SourceCounters>> {
        Some(self.shared.counters.clone())
    }
}

impl Drop for Capture {
    /// Stops the supervisor and waits for it (it never blocks on the device); capture threads
    /// are not waited for: one stuck in the driver closes its device if the call ever returns.
    fn drop(&mut self) {
        let _ = self.control.send(Msg::Stop);
        if let Some(h) = self.supervisor.take() {
            let _ = h.join();
        }
    }
}

/// `d` from now, saturating far in the future (an absurd configured timeout must not panic).
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
        .unwrap_or(now)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How one instance ended.
enum Ended {
    Stop,
    OpenFailed(DeviceError),
    Lost(DeviceError),
    Stalled { waited: Duration, opening: bool },
}

struct Supervisor {
    opener: Arc<dyn DeviceOpener>,
    settings: Settings,
    reporter: Reporter,
    shared: Arc<Shared>,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    rng: Rng,
    generation: u64,
    ever_connected: bool,
    /// Capture threads abandoned after a stall, with when; pruned as they finish.
    abandoned: Vec<(JoinHandle<()>, Instant)>,
    last_unavailable: Option<String>,
    /// The most recent instance that ended.
    last: Option<Span>,
}

/// When an ended instance connected (if it did) and when it ended.
#[derive(Clone, Copy)]
struct Span {
    connected_at: Option<Instant>,
    ended_at: Instant,
}

impl Supervisor {
    fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            let ended = match self.spawn_instance() {
                Ok(handle) => self.watch(handle),
                Err(e) => Ended::OpenFailed(e),
            };
            let counters = &self.shared.counters;
            counters.connected.store(false, Ordering::Relaxed);
            match ended {
                Ended::Stop => break,
                Ended::OpenFailed(e) => {
                    if self.last_unavailable.as_deref() != Some(e.0.as_str()) {
                        self.last_unavailable = Some(e.0.clone());
                        self.report(CaptureEvent::Unavailable { error: e.0 });
                    }
                }
                Ended::Lost(e) => {
                    counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.report(CaptureEvent::Lost { error: e.0 });
                }
                Ended::Stalled { waited, opening } => {
                    counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    counters.stalls.fetch_add(1, Ordering::Relaxed);
                    self.report(CaptureEvent::Stalled { waited, opening });
                }
            }
            if let Some(error) = self.stuck() {
                lock(&self.shared.slot).failed = Some(error.clone());
                self.shared.ready.notify_all();
                self.report(CaptureEvent::Failed { error });
                // Stay until dropped, so that `next()` keeps reporting the failure.
                while !matches!(self.rx.recv(), Ok(Msg::Stop) | Err(_)) {}
                break;
            }
            if self.last_connection_was_healthy() {
                attempt = 0;
            }
            let delay = backoff_delay(
                attempt,
                self.settings.backoff_min,
                self.settings.backoff_max,
                &mut self.rng,
            );
            attempt = attempt.saturating_add(1);
            if self.pause(delay) {
                break;
            }
        }
        self.shared
            .counters
            .connected
            .store(false, Ordering::Relaxed);
        self.report(CaptureEvent::Stopped);
    }

    fn report(&mut self, ev: CaptureEvent) {
        (self.reporter)(&ev);
    }

    fn spawn_instance(&mut self) -> Result<Instance, DeviceError> {
        self.generation += 1;
        let generation = self.generation;
        let opener = self.opener.clone();
        let tx = self.tx.clone();
        let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = abandoned.clone();
        let handle = thread::Builder::new()
            .name(format!("capture#{generation}"))
            .spawn(move || capture_thread(generation, opener.as_ref(), &tx, &flag))
            .map_err(|e| DeviceError(format!("cannot start a capture thread: {e}")))?;
        Ok(Instance {
            generation,
            handle,
            abandoned,
            connected_at: None,
        })
    }

    /// Follow one instance until it fails, stalls or the capture stops.
    fn watch(&mut self, mut inst: Instance) -> Ended {
        let stall = self.settings.stall;
        let mut deadline = after(stall);
        let ended = loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break Ended::Stop,
                Ok(Msg::Instance(g, _)) if g != inst.generation => {} // an abandoned instance
                Ok(Msg::Instance(_, InstanceEvent::Opened(description))) => {
                    inst.connected_at = Some(Instant::now());
                    self.shared
                        .counters
                        .connected
                        .store(true, Ordering::Relaxed);
                    self.last_unavailable = None;
                    let reconnected = self.ever_connected;
                    self.ever_connected = true;
                    self.report(CaptureEvent::Connected {
                        description,
                        reconnected,
                    });
                    deadline = after(stall);
                }
                Ok(Msg::Instance(_, InstanceEvent::Frame(payload))) => {
                    self.push(payload);
                    deadline = after(stall);
                }
                Ok(Msg::Instance(_, InstanceEvent::Failed(e))) => {
                    break if inst.connected_at.is_some() {
                        Ended::Lost(e)
                    } else {
                        Ended::OpenFailed(e)
                    };
                }
                Err(RecvTimeoutError::Timeout) => {
                    break Ended::Stalled {
                        waited: stall,
                        opening: inst.connected_at.is_none(),
                    }
                }
            }
        };
        self.last = Some(Span {
            connected_at: inst.connected_at,
            ended_at: Instant::now(),
        });
        inst.abandoned.store(true, Ordering::Relaxed);
        if matches!(ended, Ended::Stalled { .. }) {
            self.abandoned.push((inst.handle, Instant::now()));
        }
        ended
    }

    fn push(&mut self, payload: Payload) {
        let mut slot = lock(&self.shared.slot);
        let seq = slot.stats.received;
        slot.stats.received += 1;
        if slot.frames.len() >= slot.capacity {
            slot.frames.pop_front();
            slot.stats.dropped += 1;
        }
        slot.frames.push_back((seq, payload));
        drop(slot);
        self.shared.ready.notify_one();
    }

    /// Why the source must give up, if it must: too many abandoned threads still stuck, or one
    /// stuck for longer than `stuck_limit` (no instance has worked since it was abandoned).
    fn stuck(&mut self) -> Option<String> {
        self.abandoned.retain(|(h, _)| !h.is_finished());
        let n = self.abandoned.len();
        let oldest = self.abandoned.iter().map(|(_, at)| *at).min()?;
        let too_many = n > self.settings.max_stuck;
        let too_long = oldest.elapsed() >= self.settings.stuck_limit && !self.worked_since(oldest);
        (too_many || too_long).then(|| {
            format!(
                "{n} capture thread(s) stuck inside the camera driver for up to {}; giving up so that the service manager restarts clipd with a fresh device handle",
                humantime::format_duration(Duration::from_secs(oldest.elapsed().as_secs()))
            )
        })
    }

    fn worked_since(&self, at: Instant) -> bool {
        self.last
            .and_then(|s| s.connected_at)
            .is_some_and(|c| c > at)
    }

    /// Whether the instance that just ended had been connected for a full stall period.
    fn last_connection_was_healthy(&self) -> bool {
        self.last.is_some_and(|s| {
            s.connected_at
                .is_some_and(|c| s.ended_at.duration_since(c) >= self.settings.stall)
        })
    }

    /// Sleep for `d` unless stopped (returns true when stopped).
    fn pause(&mut self, d: Duration) -> bool {
        let end = after(d);
        loop {
            match self
                .rx
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return true,
                Ok(Msg::Instance(..)) => {} // late words from an ended instance
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
    }
}

struct Instance {
    generation: u64,
    handle: JoinHandle<()>,
    abandoned: Arc<std::sync::atomic::AtomicBool>,
    connected_at: Option<Instant>,
}

/// The body of a capture thread: open, then deliver frames until told to stop, the channel
/// closes or the device fails. The device is dropped (closed) on this thread. A panic in the
/// driver is caught and reported as a failure.
fn capture_thread(
    generation: u64,
    opener: &dyn DeviceOpener,
    tx: &Sender<Msg>,
    abandoned: &std::sync::atomic::AtomicBool,
) {
    let send = |ev| tx.send(Msg::Instance(generation, ev)).is_ok();
    let opened = match catch_unwind(AssertUnwindSafe(|| opener.open())) {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            send(InstanceEvent::Failed(e));
            return;
        }
        Err(p) => {
            send(InstanceEvent::Failed(panicked("open", p.as_ref())));
            return;
        }
    };
    let Opened {
        mut device,
        description,
    } = opened;
    if !send(InstanceEvent::Opened(description)) {
        return;
    }
    let failure = loop {
        if abandoned.load(Ordering::Relaxed) {
            return;
        }
        match catch_unwind(AssertUnwindSafe(|| device.frame())) {
            Ok(Ok(payload)) => {
                if abandoned.load(Ordering::Relaxed) || !send(InstanceEvent::Frame(payload)) {
                    return;
                }
            }
            Ok(Err(e)) => break e,
            Err(p) => break panicked("capture", p.as_ref()),
        }
    };
    // Close before reporting, so the supervisor's reopen finds the device released.
    drop(device);
    send(InstanceEvent::Failed(failure));
}

fn panicked(what: &str, payload: &(dyn std::any::Any + Send)) -> DeviceError {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".into());
    DeviceError(format!("the camera driver panicked during {what}: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Blocks callers until released (a driver call that never returns, until the test ends).
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        cv: Condvar,
    }

    impl Gate {
        fn wait(&self) {
            let g = lock(&self.open);
            let _g = self.cv.wait_while(g, |open| !*open).unwrap();
        }
        fn release(&self) {
            *lock(&self.open) = true;
            self.cv.notify_all();
        }
    }

    #[derive(Clone, Copy)]
    enum OpenStep {
        Ok,
        Fail(&'static str),
        Hang,
    }

    #[derive(Clone, Copy)]
    enum Then {
        Hang,
        Fail(&'static str),
        Panic,
    }

    /// What one instance of the fake device does: how it opens, how many frames it delivers,
    /// then what.
    #[derive(Clone, Copy)]
    struct Plan(OpenStep, u8, Then);

    /// A scripted device: instance `i` follows `plans[i]`; once the plans run out every open
    /// fails with "gone". Frames are `[instance, index]`; a hung call that is released returns
    /// the frame `[instance, 99]`, which must never reach the consumer.
    struct FakeOpener {
        plans: Mutex<VecDeque<Plan>>,
        /// Hung opens and hung frame calls wait on separate gates.
        open_gate: Gate,
        frame_gate: Arc<Gate>,
        opens: AtomicUsize,
        closed: Arc<AtomicUsize>,
    }

    struct FakeDevice {
        id: u8,
        sent: u8,
        plan: Plan,
        gate: Arc<Gate>,
        closed: Arc<AtomicUsize>,
    }

    impl Drop for FakeDevice {
        fn drop(&mut self) {
            self.closed.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl CaptureDevice for FakeDevice {
        fn frame(&mut self) -> Result<Payload, DeviceError> {
            if self.sent < self.plan.1 {
                self.sent += 1;
                return Ok(Payload::Encoded(vec![self.id, self.sent - 1]));
            }
            match self.plan.2 {
                Then::Hang => {
                    self.gate.wait();
                    Ok(Payload::Encoded(vec![self.id, 99]))
                }
                Then::Fail(msg) => Err(DeviceError(msg.into())),
                Then::Panic => panic!("driver bug"),
            }
        }
    }

    impl DeviceOpener for FakeOpener {
        fn open(&self) -> Result<Opened, DeviceError> {
            let id = self.opens.fetch_add(1, Ordering::SeqCst) as u8;
            let Some(plan) = lock(&self.plans).pop_front() else {
                return Err(DeviceError("gone".into()));
            };
            match plan.0 {
                OpenStep::Ok => {}
                OpenStep::Fail(msg) => return Err(DeviceError(msg.into())),
                OpenStep::Hang => self.open_gate.wait(),
            }
            Ok(Opened {
                device: Box::new(FakeDevice {
                    id,
                    sent: 0,
                    plan,
                    gate: self.frame_gate.clone(),
                    closed: self.closed.clone(),
                }),
                description: format!("fake{id}"),
            })
        }
    }

    struct Rig {
        cap: Option<Capture>,
        opener: Arc<FakeOpener>,
        events: Arc<Mutex<Vec<String>>>,
    }

    fn settings(stall_ms: u64) -> Settings {
        Settings {
            stall: Duration::from_millis(stall_ms),
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
            slot: 64,
            poll: Duration::from_millis(5),
            max_stuck: 8,
            stuck_limit: Duration::from_secs(3600),
            seed: 7,
        }
    }

    /// Events as short words, so a test states the whole expected history at once.
    fn word(ev: &CaptureEvent) -> String {
        match ev {
            CaptureEvent::Connected {
                description,
                reconnected: false,
            } => format!("connected {description}"),
            CaptureEvent::Connected { description, .. } => format!("reconnected {description}"),
            CaptureEvent::Unavailable { error } => format!("unavailable {error}"),
            CaptureEvent::Lost { error } => format!("lost {error}"),
            CaptureEvent::Stalled { opening: true, .. } => "stalled opening".into(),
            CaptureEvent::Stalled { .. } => "stalled".into(),
            CaptureEvent::Failed { .. } => "failed".into(),
            CaptureEvent::Stopped => "stopped".into(),
        }
    }

    fn rig(plans: &[Plan], settings: Settings) -> Rig {
        let opener = Arc::new(FakeOpener {
            plans: Mutex::new(plans.iter().copied().collect()),
            open_gate: Gate::default(),
            frame_gate: Arc::new(Gate::default()),
            opens: AtomicUsize::new(0),
            closed: Arc::new(AtomicUsize::new(0)),
        });
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let cap = Capture::start(
            "cam".into(),
            "/dev/fake0".into(),
            opener.clone(),
            settings,
            Box::new(move |ev| lock(&sink).push(word(ev))),
        )
        .unwrap();
        Rig {
            cap: Some(cap),
            opener,
            events,
        }
    }

    /// Poll `cond` until it holds; a generous bound keeps a broken test from hanging forever.
    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < end, "gave up waiting until {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    impl Rig {
        fn cap(&mut self) -> &mut Capture {
            self.cap.as_mut().unwrap()
        }
        fn events(&self) -> Vec<String> {
            lock(&self.events).clone()
        }
        fn counters(&mut self) -> (u64, u64, bool) {
            let c = self.cap().counters().unwrap();
            (
                c.reconnects.load(Ordering::SeqCst),
                c.stalls.load(Ordering::SeqCst),
                c.connected.load(Ordering::SeqCst),
            )
        }
        /// The next `n` frames as `[instance, index]`, with their references.
        fn frames(&mut self, n: usize) -> Vec<[u8; 2]> {
            let mut got = Vec::new();
            wait_until(&format!("{n} frames arrived"), || {
                match self.cap().next().unwrap() {
                    Next::Frame(f) => {
                        assert!(f.reference.starts_with("/dev/fake0#"), "{}", f.reference);
                        assert_eq!(f.source, "cam");
                        match f.payload {
                            Payload::Encoded(b) => got.push([b[0], b[1]]),
                            other => panic!("{other:?}"),
                        }
                    }
                    Next::Wait(_) => {}
                    Next::Done => panic!("a camera is never done"),
                }
                got.len() == n
            });
            got
        }
        fn stop(&mut self) {
            self.cap = None;
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            self.cap = None;
            self.opener.open_gate.release();
            self.opener.frame_gate.release();
        }
    }

    #[test]
    fn delivers_frames_in_order_and_reports_connected_once() {
        let mut r = rig(&[Plan(OpenStep::Ok, 5, Then::Hang)], settings(60_000));
        let frames = r.frames(5);
        assert_eq!(frames, (0..5).map(|i| [0, i]).collect::<Vec<_>>());
        assert_eq!(r.counters(), (0, 0, true));
        assert_eq!(r.events(), ["connected fake0"]);
        assert!(matches!(r.cap().next().unwrap(), Next::Wait(_)));
        // Dropping the capture must not wait for the capture thread stuck in `frame()`.
        r.stop();
        assert_eq!(r.events(), ["connected fake0", "stopped"]);
        assert_eq!(r.opener.closed.load(Ordering::SeqCst), 0, "still stuck");
        r.opener.frame_gate.release();
        wait_until("the stuck instance closed its device", || {
            r.opener.closed.load(Ordering::SeqCst) == 1
        });
    }

    #[test]
    fn stall_abandons_the_stuck_instance_and_reopens() {
        let plans = [
            Plan(OpenStep::Ok, 2, Then::Hang),
            Plan(OpenStep::Ok, 2, Then::Hang),
        ];
        let mut r = rig(&plans, settings(150));
        // Two frames from each instance: the second instance works while the first is stuck.
        assert_eq!(r.frames(4), [[0, 0], [0, 1], [1, 0], [1, 1]]);
        wait_until("both instances stalled and a third open failed", || {
            r.opener.opens.load(Ordering::SeqCst) >= 4
        });
        let (reconnects, stalls, connected) = r.counters();
        assert_eq!((reconnects, stalls, connected), (2, 2, false));
        // Repeated failed opens are reported once, not once per retry.
        assert_eq!(
            r.events(),
            [
                "connected fake0",
                "stalled",
                "reconnected fake1",
                "stalled",
                "unavailable gone"
            ]
        );
        assert!(matches!(r.cap().next().unwrap(), Next::Wait(d) if d == Duration::from_millis(5)));
        // Releasing the stuck calls lets the abandoned instances close their devices, and their
        // late frames ([i, 99]) are never delivered.
        r.opener.frame_gate.release();
        wait_until("both abandoned instances closed", || {
            r.opener.closed.load(Ordering::SeqCst) == 2
        });
        assert!(matches!(r.cap().next().unwrap(), Next::Wait(_)));
        assert_eq!(r.cap().stats().received, 4);
    }

    #[test]
    fn errors_reconnect_with_one_report_per_state_change() {
        let plans = [
            Plan(OpenStep::Ok, 3, Then::Fail("unplugged")),
            Plan(OpenStep::Fail("busy"), 0, Then::Hang),
            Plan(OpenStep::Fail("busy"), 0, Then::Hang),
            Plan(OpenStep::Fail("busy"), 0, Then::Hang),
            Plan(OpenStep::Ok, 2, Then::Hang),
        ];
        let mut r = rig(&plans, settings(60_000));
        assert_eq!(r.frames(5), [[0, 0], [0, 1], [0, 2], [4, 0], [4, 1]]);
        assert_eq!(
            r.events(),
            [
                "connected fake0",
                "lost unplugged",
                "unavailable busy",
                "reconnected fake4"
            ]
        );
        assert_eq!(r.counters(), (1, 0, true));
        assert_eq!(r.opener.opens.load(Ordering::SeqCst), 5);
        // The failed instance closed its device; the live one has it open.
        assert_eq!(r.opener.closed.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_open_that_hangs_is_a_stall() {
        let plans = [
            Plan(OpenStep::Hang, 1, Then::Hang),
            Plan(OpenStep::Ok, 1, Then::Hang),
        ];
        let mut r = rig(&plans, settings(100));
        assert_eq!(r.frames(1), [[1, 0]]);
        assert_eq!(r.events(), ["stalled opening", "connected fake1"]);
        assert_eq!(r.counters(), (1, 1, true));
        // When the hung open finally returns, its device is closed at once, never used.
        r.opener.open_gate.release();
        wait_until("the late device was closed", || {
            r.opener.closed.load(Ordering::SeqCst) == 1
        });
        assert!(matches!(r.cap().next().unwrap(), Next::Wait(_)));
    }

    #[test]
    fn a_panicking_driver_is_a_lost_device() {
        let plans = [
            Plan(OpenStep::Ok, 1, Then::Panic),
            Plan(OpenStep::Ok, 1, Then::Hang),
        ];
        let mut r = rig(&plans, settings(60_000));
        assert_eq!(r.frames(2), [[0, 0], [1, 0]]);
        let ev = r.events();
        assert_eq!(ev.len(), 3, "{ev:?}");
        assert!(
            ev[1].starts_with("lost the camera driver panicked during capture: driver bug"),
            "{ev:?}"
        );
        assert_eq!(ev[2], "reconnected fake1");
    }

    #[test]
    fn the_slot_keeps_only_the_newest_frames() {
        let s = Settings {
            slot: 2,
            ..settings(60_000)
        };
        let mut r = rig(&[Plan(OpenStep::Ok, 10, Then::Hang)], s);
        wait_until("all ten frames passed the slot", || {
            r.cap().stats().received == 10
        });
        assert_eq!(
            r.cap().stats(),
            CaptureStats {
                received: 10,
                dropped: 8
            }
        );
        assert_eq!(r.frames(2), [[0, 8], [0, 9]]);
        assert!(matches!(r.cap().next().unwrap(), Next::Wait(d) if d.is_zero()));
    }

    #[test]
    fn threads_stuck_beyond_the_limit_fail_the_source() {
        let s = Settings {
            max_stuck: 1,
            ..settings(100)
        };
        let plans = [Plan(OpenStep::Ok, 1, Then::Hang); 3];
        let mut r = rig(&plans, s);
        let mut err = None;
        wait_until("the source gave up", || match r.cap().next() {
            Err(e) => {
                err = Some(e.to_string());
                true
            }
            Ok(_) => false,
        });
        let err = err.unwrap();
        assert!(
            err.starts_with("/dev/fake0: 2 capture thread(s) stuck inside the camera driver"),
            "{err}"
        );
        // The capture thread reports the failure event just after publishing the error.
        wait_until("the failure was reported", || {
            r.events().last().map(String::as_str) == Some("failed")
        });
        assert_eq!(
            r.events(),
            [
                "connected fake0",
                "stalled",
                "reconnected fake1",
                "stalled",
                "failed"
            ]
        );
        // The failure is permanent (no third open) and reported on every call.
        assert!(r.cap().next().is_err());
        assert_eq!(r.opener.opens.load(Ordering::SeqCst), 2);
        r.stop();
        assert_eq!(r.events().last().map(String::as_str), Some("stopped"));
    }

    #[test]
    fn one_thread_stuck_too_long_with_no_working_instance_fails_the_source() {
        let s = Settings {
            stuck_limit: Duration::from_millis(50),
            ..settings(100)
        };
        // The first instance hangs; every reopen fails (the stuck stream keeps the device busy).
        let mut r = rig(&[Plan(OpenStep::Ok, 1, Then::Hang)], s);
        wait_until("the source gave up", || r.cap().next().is_err());
        // The capture thread reports the failure event just after publishing the error.
        wait_until("the failure was reported", || {
            r.events().last().map(String::as_str) == Some("failed")
        });
        let ev = r.events();
        assert_eq!(ev[..3], ["connected fake0", "stalled", "unavailable gone"]);
        assert_eq!(ev.last().map(String::as_str), Some("failed"));
    }

    #[test]
    fn dropping_during_a_long_backoff_stops_at_once() {
        let s = Settings {
            backoff_min: Duration::from_secs(3600),
            backoff_max: Duration::from_secs(3600),
            ..settings(60_000)
        };
        let mut r = rig(&[Plan(OpenStep::Fail("no such device"), 0, Then::Hang)], s);
        wait_until("the first open failed", || !r.events().is_empty());
        assert!(matches!(r.cap().next().unwrap(), Next::Wait(d) if d == Duration::from_millis(5)));
        let started = Instant::now();
        r.stop();
        // Not a speed check: an uninterruptible backoff would take the full hour.
        assert!(started.elapsed() < Duration::from_secs(1800));
        assert_eq!(r.events(), ["unavailable no such device", "stopped"]);
    }

    #[test]
    fn backoff_stays_within_bounds_and_grows() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(30));
        for seed in 0..50 {
            let mut rng = Rng::new(seed);
            let mut prev_floor = Duration::ZERO;
            for attempt in 0..64 {
                let d = backoff_delay(attempt, min, max, &mut rng);
                assert!(min <= d && d <= max, "attempt {attempt}: {d:?}");
                let hi = min.saturating_mul(1u32 << (attempt + 1).min(31)).min(max);
                let floor = (hi / 2).max(min);
                assert!(d >= floor && floor >= prev_floor);
                prev_floor = floor;
            }
            assert!(backoff_delay(0, min, max, &mut rng) <= 2 * min);
            assert!(backoff_delay(40, min, max, &mut rng) >= max / 2);
        }
        // Jitter: retries of the same attempt do not all wait the same time.
        let mut rng = Rng::new(1);
        let waits: std::collections::BTreeSet<_> = (0..20)
            .map(|_| backoff_delay(3, min, max, &mut rng))
            .collect();
        assert!(waits.len() > 10);
        // Degenerate bounds.
        assert_eq!(backoff_delay(5, min, min, &mut rng), min);
        assert_eq!(backoff_delay(5, max, min, &mut rng), max);
    }
}
