//! Progress for long commands: a bar on an interactive terminal, otherwise an info log line
//! every tenth of the way (shown with `-v`), so piped output and error lines stay clean.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    label: String,
    bar: Option<ProgressBar>,
    /// Last tenth reported in plain mode.
    tenth: AtomicU64,
}

impl Progress {
    pub fn new(label: &str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(0);
            let style = ProgressStyle::with_template("{msg:>24} [{bar:32}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            b.set_style(style);
            b.set_message(label.to_string());
            b
        });
        Progress {
            label: label.to_string(),
            bar,
            tenth: AtomicU64::new(0),
        }
    }

    /// `done` of `total` units finished (callable from any thread).
    pub fn set(&self, done: u64, total: u64) {
        match &self.bar {
            Some(b) => {
                b.set_length(total);
                b.set_position(done);
            }
            None => {
                let t = (done * 10).checked_div(total).unwrap_or(10);
                if t > self.tenth.fetch_max(t, Ordering::Relaxed) {
                    log::info!("{}: {}% ({done}/{total})", self.label, t * 10);
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
