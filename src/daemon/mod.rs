//! The long-running service around the pipeline: systemd notification, the status file.

pub mod notify;
pub mod signals;
pub mod status;
