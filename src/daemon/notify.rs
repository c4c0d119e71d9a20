//! systemd's readiness and watchdog protocol (sd_notify), spoken directly.
//!
//! The protocol is one datagram per message on the AF_UNIX socket named by `NOTIFY_SOCKET`,
//! each holding newline-separated `KEY=VALUE` assignments. It is small enough that a crate
//! would add more than it saves, and writing it here keeps two rules in one place:
//!
//! * sending never blocks: the socket is non-blocking, so a busy or wedged systemd cannot
//!   stall the inference loop (a lost `WATCHDOG=1` is followed by another half an interval
//!   later);
//! * sending never fails the daemon: the first error is logged once and later ones are
//!   silent, because a service that dies for want of telling systemd it is alive would be
//!   the worst outcome of all.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every method is a no-op, so the daemon calls them
//! unconditionally.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where `NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyTarget {
    /// A socket file, e.g. `/run/systemd/notify`.
    Path(PathBuf),
    /// A Linux abstract socket (`@name` in the variable, without the `@` here).
    Abstract(Vec<u8>),
}

impl NotifyTarget {
    /// Parses a `NOTIFY_SOCKET` value; `None` for an empty or unsupported one (e.g. the
    /// `vsock:` addresses of systemd 254+ for virtual machines, which clipd does not speak).
    pub fn parse(value: &OsStr) -> Option<NotifyTarget> {
        let bytes = value.as_bytes();
        match bytes.first() {
            Some(b'/') => Some(NotifyTarget::Path(PathBuf::from(value))),
            Some(b'@') if bytes.len() > 1 => Some(NotifyTarget::Abstract(bytes[1..].to_vec())),
            _ => None,
        }
    }

    fn socket_addr(&self) -> io::Result<SocketAddr> {
        match self {
            NotifyTarget::Path(p) => SocketAddr::from_pathname(p),
            NotifyTarget::Abstract(name) => SocketAddr::from_abstract_name(name),
        }
    }
}

/// A connection to the service manager, or a no-op outside systemd.
///
/// `Sync`: the inference loop (watchdog), the status timer (`STATUS=`) and the signal handler
/// (`STOPPING=1`) may share one through an `Arc`.
#[derive(Debug)]
pub struct Notifier {
    /// Socket and address; `None` when not run by systemd (or the socket could not be made).
    link: Option<(UnixDatagram, SocketAddr)>,
    /// `WATCHDOG_USEC` when it applies to this process.
    watchdog: Option<Duration>,
    /// Whether a send has failed already (only the first failure is logged).
    failed: AtomicBool,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            link: None,
            watchdog: None,
            failed: AtomicBool::new(false),
        }
    }

    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    ///
    /// The variables are left in place: clipd starts no child processes, and the unit's
    /// `NotifyAccess=main` makes systemd ignore any other sender anyway.
    pub fn from_env() -> Notifier {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::from_values(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            usec.as_deref(),
            pid.as_deref(),
            std::process::id(),
        )
    }

    /// The notifier the given variable values describe, for process `own_pid`.
    ///
    /// The watchdog applies only when `WATCHDOG_USEC` is a positive number and `WATCHDOG_PID`
    /// is unset or names `own_pid` (systemd sets it so that a forked child does not ping on the
    /// parent's behalf). Problems are logged, never returned: a daemon outside systemd, or one
    /// with a strange environment, still runs.
    pub fn from_values(
        notify_socket: Option<&OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        own_pid: u32,
    ) -> Notifier {
        let Some(value) = notify_socket.filter(|v| !v.is_empty()) else {
            return Notifier::disabled();
        };
        let Some(target) = NotifyTarget::parse(value) else {
            log::warn!(
                "NOTIFY_SOCKET={}: unsupported address (expected a path or @name); \
                 not notifying systemd",
                value.to_string_lossy()
            );
            return Notifier::disabled();
        };
        let link = match connect(&target) {
            Ok(link) => link,
            Err(e) => {
                log::warn!(
                    "NOTIFY_SOCKET={}: {e}; not notifying systemd",
                    value.to_string_lossy()
                );
                return Notifier::disabled();
            }
        };
        let watchdog = watchdog_for(watchdog_usec, watchdog_pid, own_pid);
        Notifier {
            link: Some(link),
            watchdog,
            failed: AtomicBool::new(false),
        }
    }

    /// A notifier sending to `target`, with the watchdog interval `watchdog` (tests, and
    /// callers that resolve the variables themselves).
    pub fn to_target(target: &NotifyTarget, watchdog: Option<Duration>) -> io::Result<Notifier> {
        Ok(Notifier {
            link: Some(connect(target)?),
            watchdog,
            failed: AtomicBool::new(false),
        })
    }

    /// Whether messages go anywhere (the process runs under systemd with `Type=notify`).
    pub fn enabled(&self) -> bool {
        self.link.is_some()
    }

    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as systemd recommends, so one
    /// late or lost ping is not fatal. `None` when no watchdog is configured for this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_timeout().map(|w| w / 2)
    }

    /// `WATCHDOG_USEC` itself: how long systemd waits for a ping before killing the service.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.link.as_ref().and(self.watchdog)
    }

    /// `READY=1`: start-up is complete (also ends a reload begun with [`Notifier::reloading`]).
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// `READY=1` and a first `STATUS=` line in one datagram.
    pub fn ready_with_status(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STATUS=…`: the one line `systemctl status clipd` shows (newlines become spaces).
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// `WATCHDOG=1`: the service is making progress. Send it only from the code whose progress
    /// it vouches for (the inference loop), never from a timer of its own.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (the reload's start, which systemd 253+ uses to
    /// match it with the `SIGHUP` it sent). Send [`Notifier::ready`] when the reload is done,
    /// whether the new configuration was taken or refused.
    pub fn reloading(&self) {
        if !self.enabled() {
            return;
        }
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            monotonic_usec().unwrap_or(0)
        ));
    }

    /// `EXTEND_TIMEOUT_USEC=…`: ask systemd to wait `by` longer than the unit's start or stop
    /// timeout from now (a slow model load, a long final commit). Repeat before it runs out.
    pub fn extend_timeout(&self, by: Duration) {
        let usec = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        self.send(&format!("EXTEND_TIMEOUT_USEC={usec}"));
    }

    /// Sends one message (newline-separated `KEY=VALUE` lines); returns whether it was sent.
    pub fn send(&self, message: &str) -> bool {
        let Some((socket, addr)) = &self.link else {
            return false;
        };
        match socket.send_to_addr(message.as_bytes(), addr) {
            Ok(_) => true,
            Err(e) => {
                if !self.failed.swap(true, Ordering::Relaxed) {
                    let first = message.lines().next().unwrap_or_default();
                    log::warn!(
                        "cannot notify systemd ({first}): {e}; further notification errors are \
                         not logged"
                    );
                }
                false
            }
        }
    }

    /// Whether any send has failed so far.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::disabled()
    }
}

fn connect(target: &NotifyTarget) -> io::Result<(UnixDatagram, SocketAddr)> {
    let addr = target.socket_addr()?;
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    Ok((socket, addr))
}

/// The watchdog timeout the variables give this process, if any.
fn watchdog_for(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid.filter(|p| !p.is_empty()) {
        match pid.trim().parse::<u32>() {
            Ok(p) if p == own_pid => {}
            Ok(_) => return None,
            Err(_) => {
                log::warn!("WATCHDOG_PID={pid:?} is not a process id; ignoring the watchdog");
                return None;
            }
        }
    }
    let usec = usec?.trim();
    match usec.parse::<u64>() {
        Ok(0) => None,
        Ok(us) => Some(Duration::from_micros(us)),
        Err(_) => {
            log::warn!("WATCHDOG_USEC={usec:?} is not a number of microseconds; no watchdog");
            None
        }
    }
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd's `MONOTONIC_USEC` refers to.
pub fn monotonic_usec() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    Some(secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000))
}

/// A `STATUS=` value must stay on one line: the protocol separates assignments by newlines.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// A listening socket file in a temp dir and a notifier pointing at it through the same
    /// value systemd would put in `NOTIFY_SOCKET`.
    fn path_pair(
        usec: Option<&str>,
        pid: Option<&str>,
    ) -> (tempfile::TempDir, UnixDatagram, Notifier) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_values(Some(path.as_os_str()), usec, pid, std::process::id());
        (dir, listener, n)
    }

    fn unique_abstract_name() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        format!(
            "clipd-test-notify-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    #[test]
    fn every_message_arrives_exactly_as_the_protocol_spells_it() {
        let (_dir, l, n) = path_pair(None, None);
        assert!(n.enabled());
        n.ready();
        assert_eq!(recv(&l), "READY=1");
        n.status("3.9 fps; cam: dog 0.91");
        assert_eq!(recv(&l), "STATUS=3.9 fps; cam: dog 0.91");
        n.watchdog();
        assert_eq!(recv(&l), "WATCHDOG=1");
        n.stopping();
        assert_eq!(recv(&l), "STOPPING=1");
        n.extend_timeout(Duration::from_millis(12_500));
        assert_eq!(recv(&l), "EXTEND_TIMEOUT_USEC=12500000");
        n.ready_with_status("up");
        assert_eq!(recv(&l), "READY=1\nSTATUS=up");
        assert!(!n.has_failed());
    }

    #[test]
    fn status_lines_cannot_inject_assignments() {
        let (_dir, l, n) = path_pair(None, None);
        n.status("fine\nREADY=1\r\nWATCHDOG=1");
        assert_eq!(recv(&l), "STATUS=fine READY=1  WATCHDOG=1");
    }

    #[test]
    fn reloading_carries_the_monotonic_clock() {
        let (_dir, l, n) = path_pair(None, None);
        let before = monotonic_usec().unwrap();
        n.reloading();
        let after = monotonic_usec().unwrap();
        let msg = recv(&l);
        let mut lines = msg.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(before <= usec && usec <= after, "{before} {usec} {after}");
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn abstract_sockets_are_reached_by_at_name() {
        let name = unique_abstract_name();
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let var = format!("@{name}");
        let n = Notifier::from_values(Some(OsStr::new(&var)), None, None, 1);
        assert!(n.enabled());
        n.ready();
        assert_eq!(recv(&listener), "READY=1");
        assert_eq!(
            NotifyTarget::parse(OsStr::new(&var)),
            Some(NotifyTarget::Abstract(name.into_bytes()))
        );
    }

    #[test]
    fn explicit_targets_work_like_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let l = UnixDatagram::bind(&path).unwrap();
        let n =
            Notifier::to_target(&NotifyTarget::Path(path), Some(Duration::from_secs(30))).unwrap();
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
        n.watchdog();
        assert_eq!(recv(&l), "WATCHDOG=1");
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_and_only_for_our_pid() {
        let own = std::process::id();
        let own_s = own.to_string();
        let other = own.wrapping_add(1).to_string();
        let (_d1, _l1, n) = path_pair(Some("30000000"), None);
        assert_eq!(n.watchdog_timeout(), Some(Duration::from_secs(30)));
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
        let (_d2, _l2, n) = path_pair(Some("30000000"), Some(&own_s));
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
        let (_d3, _l3, n) = path_pair(Some("30000000"), Some(&other));
        assert_eq!(n.watchdog_interval(), None);
        assert!(
            n.enabled(),
            "another pid's watchdog does not disable READY/STATUS"
        );
        for bad in ["0", "", "soon", "-5"] {
            let (_d, _l, n) = path_pair(Some(bad), None);
            assert_eq!(n.watchdog_interval(), None, "{bad:?}");
        }
        let (_d4, _l4, n) = path_pair(Some("30000000"), Some("nope"));
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn without_a_socket_everything_is_a_silent_no_op() {
        for value in [
            None,
            Some(""),
            Some("vsock:2:1234"),
            Some("relative/path"),
            Some("@"),
        ] {
            let n = Notifier::from_values(value.map(OsStr::new), Some("30000000"), None, 1);
            assert!(!n.enabled(), "{value:?}");
            assert_eq!(n.watchdog_interval(), None);
            n.ready();
            n.watchdog();
            n.reloading();
            assert!(!n.send("READY=1"));
            assert!(!n.has_failed());
        }
    }

    #[test]
    fn a_vanished_socket_fails_quietly_and_keeps_failing_quietly() {
        let (dir, l, n) = path_pair(None, None);
        drop(l);
        std::fs::remove_file(dir.path().join("notify.sock")).unwrap();
        assert!(!n.send("WATCHDOG=1"));
        assert!(n.has_failed());
        n.watchdog();
        n.status("still here");
        assert!(n.has_failed());
    }

    #[test]
    fn a_full_socket_does_not_block_the_sender() {
        let (_dir, l, n) = path_pair(None, None);
        // Nobody reads: the receive queue fills and the non-blocking send fails with
        // EAGAIN instead of waiting (a blocking send would hang this test forever).
        let mut sent = 0;
        while n.send("WATCHDOG=1") {
            sent += 1;
            assert!(sent < 1_000_000, "the receive queue never filled");
        }
        assert!(sent > 0);
        assert!(n.has_failed());
        assert_eq!(recv(&l), "WATCHDOG=1");
    }
}
