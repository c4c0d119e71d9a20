//! `clipd doctor`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct DoctorArgs {}

pub fn doctor(_args: DoctorArgs) -> Result<ExitCode> {
    anyhow::bail!("clipd doctor is not available yet")
}
