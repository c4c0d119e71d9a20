//! `clipd db`: integrity check, consistent online backup and vacuum of the
//! history database, safe while the daemon writes to it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use clipd::store::{self, StoreError};

use super::{load_config, UsageError};

#[derive(Debug, Args)]
pub struct DbArgs {
    #[command(subcommand)]
    action: DbAction,
}

#[derive(Debug, Subcommand)]
enum DbAction {
    /// Full integrity check (every page, index and constraint) and a description of the file;
    /// exit status 4 if damaged.
    Check(DbTarget),
    /// Consistent copy of the database (one snapshot, even while the daemon writes).
    Backup {
        #[command(flatten)]
        target: DbTarget,
        /// Where to write the copy (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Rebuild the file to reclaim space (needs free space about the size of the database).
    Vacuum {
        #[command(flatten)]
        target: DbTarget,
        /// Only hand free pages back to the file system (fast; needs incremental auto-vacuum).
        #[arg(long)]
        incremental: bool,
    },
}

/// Which database: `--db`, else the config's `store.path`, else `clipd.db`.
#[derive(Debug, Args)]
struct DbTarget {
    /// History database [default: the config's store.path, else clipd.db].
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
    /// Configuration file (for its store.path).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl DbTarget {
    fn resolve(&self) -> Result<PathBuf> {
        if let Some(p) = &self.db {
            return Ok(p.clone());
        }
        Ok(match load_config(self.config.as_deref())? {
            Some(cfg) => cfg.resolve(&cfg.config.store.path),
            None => PathBuf::from("clipd.db"),
        })
    }
}

/// Run one maintenance action and print its report on stdout.
pub fn db(args: DbArgs) -> Result<ExitCode> {
    match args.action {
        DbAction::Check(target) => {
            let path = target.resolve()?;
            let report = store::check(&path)?;
            print!("{report}");
            if report.is_ok() {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(StoreError::Damaged {
                    path,
                    problems: report.problems.len(),
                    first: report.problems[0].clone(),
                }
                .into())
            }
        }
        DbAction::Backup { target, out } => {
            let path = target.resolve()?;
            if out.symlink_metadata().is_ok() {
                return Err(UsageError(format!(
                    "--out {}: the file exists; choose another name or remove it",
                    out.display()
                ))
                .into());
            }
            let report = store::backup(&path, &out)?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        DbAction::Vacuum {
            target,
            incremental,
        } => {
            let path = target.resolve()?;
            if !incremental {
                let (needed, available) = store::vacuum_space(&path);
                let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
                match available {
                    Some(free) if free < needed => log::warn!(
                        "VACUUM of {} needs about {:.1} MiB free on its volume and {:.1} MiB are \
                         available: it will probably fail (nothing is lost if it does)",
                        path.display(),
                        mib(needed),
                        mib(free)
                    ),
                    _ => log::warn!(
                        "VACUUM rewrites all of {} ({:.1} MiB) and needs that much free space; \
                         the daemon's writer waits meanwhile",
                        path.display(),
                        mib(needed)
                    ),
                }
            }
            let report = store::vacuum(&path, incremental)?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
