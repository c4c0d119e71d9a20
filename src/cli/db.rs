//! `clipd db`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct DbArgs {}

pub fn db(_args: DbArgs) -> Result<ExitCode> {
    anyhow::bail!("clipd db is not available yet")
}
