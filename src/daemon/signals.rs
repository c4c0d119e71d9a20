//! SIGTERM/SIGINT (stop) and SIGHUP (reload) as messages to the daemon's control loop.
//!
//! A signal handler may do almost nothing safely, so signal-hook's handler only records the
//! signal and a listener thread turns it into a message; the control loop acts on it between
//! its other duties (status, watchdog) without any code running in signal context.

use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals as HookSignals};

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: drain, commit and exit (a second one: exit at once).
    Stop,
    /// SIGHUP: reload the configuration.
    Reload,
}

/// Signals delivered to this process, in arrival order.
pub struct Signals {
    rx: Receiver<Signal>,
    handle: Handle,
}

impl Signals {
    /// Start listening. From now on SIGTERM, SIGINT and SIGHUP no longer kill the process.
    pub fn listen() -> std::io::Result<Signals> {
        let mut hook = HookSignals::new([SIGTERM, SIGINT, SIGHUP])?;
        let handle = hook.handle();
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("clipd-signals".into())
            .spawn(move || {
                for sig in hook.forever() {
                    let s = if sig == SIGHUP {
                        Signal::Reload
                    } else {
                        Signal::Stop
                    };
                    if tx.send(s).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Signals { rx, handle })
    }

    /// The next signal, waiting at most `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Signal> {
        self.rx.recv_timeout(timeout).ok()
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.handle.close();
    }
}
