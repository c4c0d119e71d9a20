//! `clipd status`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct StatusArgs {}

pub fn status(_args: StatusArgs) -> Result<ExitCode> {
    anyhow::bail!("clipd status is not available yet")
}
