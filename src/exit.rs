//! The registry of the crate's error types: [`class_of`] finds the exit class of any error in
//! an `anyhow` chain by its type. It must name every error type in the crate, and a test reads
//! the sources to make sure it does.

use std::error::Error;

use crate::error::{ExitClass, HasExitClass};

use crate::adapter::file::AdapterError;
use crate::adapter::support::SupportError;
use crate::adapter::train::TrainError;
use crate::bundle::BundleError;
use crate::classes::ClassesError;
use crate::config::ConfigError;
use crate::daemon::status::StatusError;
use crate::daemon::DaemonError;
use crate::encoder::EncoderError;
use crate::engine::EngineError;
use crate::head::HeadError;
use crate::npy::NpyError;
use crate::pipeline::{PipelineError, SinkError};
use crate::preprocess::PreprocessError;
use crate::report::ReportError;
use crate::source::convert::ConvertError;
use crate::source::supervisor::DeviceError;
use crate::source::SourceError;
use crate::store::{StoreError, TimeSpecError};
use crate::tokenizer::TokenizerError;
use crate::transduct::TransductError;

macro_rules! registry {
    ($($t:ty),* $(,)?) => {
        /// The exit class of `e` itself, if it is one of the crate's error types (its causes are
        /// not looked at: walk the chain for that).
        pub fn class_of(e: &(dyn Error + 'static)) -> Option<ExitClass> {
            $(
                if let Some(x) = e.downcast_ref::<$t>() {
                    return Some(x.exit_class());
                }
            )*
            if e.is::<std::io::Error>() {
                return Some(ExitClass::Io);
            }
            None
        }

        #[cfg(test)]
        const REGISTERED: &[&str] = &[$(stringify!($t)),*];
    };
}

registry![
    AdapterError,
    BundleError,
    ClassesError,
    ConfigError,
    ConvertError,
    DaemonError,
    DeviceError,
    EncoderError,
    EngineError,
    HeadError,
    NpyError,
    PipelineError,
    PreprocessError,
    ReportError,
    SinkError,
    SourceError,
    StatusError,
    StoreError,
    SupportError,
    TimeSpecError,
    TokenizerError,
    TrainError,
    TransductError,
];

/// The exit class of the first error in the chain that has one (I/O when none has).
pub fn class_of_chain<'a>(chain: impl IntoIterator<Item = &'a (dyn Error + 'static)>) -> ExitClass {
    chain
        .into_iter()
        .find_map(class_of)
        .unwrap_or(ExitClass::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `thiserror` type in src/ is in the registry, so none falls into a default class.
    #[test]
    fn every_error_type_of_the_crate_is_registered() {
        let mut missing = Vec::new();
        let mut stack = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        let mut seen = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                if p.extension().is_none_or(|e| e != "rs") || p.ends_with("main.rs") {
                    continue;
                }
                // The binary's own errors (src/cli) are classified there.
                if p.components().any(|c| c.as_os_str() == "cli") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                let mut derive = false;
                for line in text.lines() {
                    let l = line.trim();
                    if l.starts_with("#[derive(") && l.contains("thiserror::Error") {
                        derive = true;
                        continue;
                    }
                    if derive && !l.starts_with("#[") && !l.starts_with("///") {
                        let name = l
                            .trim_start_matches("pub ")
                            .trim_start_matches("enum ")
                            .trim_start_matches("struct ")
                            .split(|c: char| !c.is_alphanumeric() && c != '_')
                            .next()
                            .unwrap_or("")
                            .to_string();
                        seen += 1;
                        if !REGISTERED.contains(&name.as_str()) {
                            missing.push(format!("{name} ({})", p.display()));
                        }
                        derive = false;
                    }
                }
            }
        }
        assert!(seen >= REGISTERED.len(), "found only {seen} error types");
        assert!(missing.is_empty(), "not in error::registry: {missing:?}");
    }

    #[test]
    fn classes_come_from_the_first_error_that_has_one() {
        let io = std::io::Error::other("disk");
        assert_eq!(class_of(&io), Some(ExitClass::Io));
        let e = anyhow::Error::new(TimeSpecError::BeforeEpoch {
            input: "1900".into(),
        })
        .context("while parsing --since");
        assert_eq!(class_of_chain(e.chain()), ExitClass::Usage);
        let plain = anyhow::anyhow!("something else");
        assert_eq!(class_of_chain(plain.chain()), ExitClass::Io);
        let adapter = EngineError::Adapter(AdapterError::Classes {
            path: "a.safetensors".into(),
            msg: "other classes".into(),
        });
        assert_eq!(adapter.exit_class(), ExitClass::Usage);
    }
}
