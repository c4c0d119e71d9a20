//! Exit classes: every error type of the library says which documented exit status it stands
//! for (`clipd --help`), so the command line never has to guess from a type it does not know.
//! The registry that finds the class of any error in a chain is [`crate::exit`].

use std::error::Error;

/// The documented exit statuses other than success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    /// 1: some inputs (images, frames) could not be processed; the others were.
    SomeFailed = 1,
    /// 2: usage or configuration error.
    Usage = 2,
    /// 3: model bundle or adapter error.
    Model = 3,
    /// 4: I/O or database error.
    Io = 4,
}

impl ExitClass {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// An error that knows its exit class.
pub trait HasExitClass {
    fn exit_class(&self) -> ExitClass;
}

/// An error and its causes as one line (`a: b: c`), each cause once.
pub fn one_line(e: &(dyn Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
