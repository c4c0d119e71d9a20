//! Command definitions, shared option handling and exit codes.

mod bench;
mod bench_transduct;
mod classify;
mod db;
mod doctor;
mod embed;
mod eval;
mod progress;
mod query;
mod refine;
mod run;
mod status;
mod train;
mod transduct;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use clipd::config::{self, Loaded, ModelOverrides};
use clipd::error::ExitClass;

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  some inputs (images, frames) could not be processed; the others were
  2  usage or configuration error (bad option, config key or type, no classes,
     a source without images, a support folder that matches no class, an
     adapter trained for other classes)
  3  model bundle or adapter error (missing file, wrong sha256, inconsistent
     shapes, unloadable encoder or tokenizer, adapter for another bundle)
  4  I/O or database error

Environment: RUST_LOG (e.g. RUST_LOG=debug) controls logging on stderr.";

/// On-device CLIP zero-shot image classification with a SQLite history.
#[derive(Debug, Parser)]
#[command(name = "clipd", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Classify image files and print one result per image.
    #[command(after_help = EXIT_CODES)]
    Classify(classify::ClassifyArgs),
    /// Write L2-normalised image or text embeddings to a .npy file.
    #[command(after_help = EXIT_CODES)]
    Embed(embed::EmbedArgs),
    /// Read the classification history (read-only; safe while `run` writes).
    #[command(after_help = EXIT_CODES)]
    Query(query::QueryArgs),
    /// Classify every frame from the configured sources and log it to the database.
    #[command(after_help = EXIT_CODES)]
    Run(run::RunArgs),
    /// Run the built-in demo: the tiny model on the committed sample frames, with a summary.
    #[command(after_help = EXIT_CODES)]
    Demo(run::DemoArgs),
    /// Measure encoder and whole-pipeline throughput (and an adapter's cost per frame).
    #[command(after_help = EXIT_CODES)]
    Bench(bench::BenchArgs),
    /// Train a few-shot adapter from a support directory (one folder of shots per class).
    #[command(after_help = EXIT_CODES)]
    Train(train::TrainArgs),
    /// Compare zero-shot and few-shot methods over shot counts and random support draws.
    #[command(after_help = EXIT_CODES)]
    Eval(eval::EvalArgs),
    /// Rerun transductive refinement over stored frames and report (or write) what changes.
    #[command(after_help = EXIT_CODES)]
    Refine(refine::RefineArgs),
    /// Run EM-Dirichlet or TransCLIP on .npy dumps (offline research interface).
    #[command(after_help = EXIT_CODES)]
    Transduct(transduct::TransductArgs),
    /// Show what a running (or the last) daemon is doing: fps, drops, labels, database.
    #[command(after_help = EXIT_CODES)]
    Status(status::StatusArgs),
    /// Check the installation: cameras and their formats, config, bundle, adapter, database.
    #[command(after_help = EXIT_CODES)]
    Doctor(doctor::DoctorArgs),
    /// Database maintenance: integrity check, consistent online backup, vacuum.
    #[command(after_help = EXIT_CODES)]
    Db(db::DbArgs),
}

/// Options of every command that loads the model.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model bundle directory [default: the config's `bundle`, else models/tiny-clip].
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// Configuration file [default: ./clipd.toml if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Encoder threads (overrides the config's engine.threads).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// `--adapter` for the commands that classify.
#[derive(Debug, Clone, Args)]
pub struct AdapterArg {
    /// Few-shot adapter from `clipd train` [default: the config's `adapter`, else zero-shot].
    #[arg(long, value_name = "FILE")]
    pub adapter: Option<PathBuf>,
}

/// A usage problem found after parsing (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Some inputs failed; already reported (exit status 1).
pub const SOME_FAILED: u8 = 1;

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // tract logs its optimiser passes at info; keep them out unless asked for.
    let filter = format!("{default},tract_core=warn,tract_onnx=warn,tract_hir=warn");
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter))
        .format_timestamp(None)
        .init();
}

pub fn try_main(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Classify(a) => classify::classify(a),
        Command::Embed(a) => embed::embed(a),
        Command::Query(a) => query::query(a),
        Command::Run(a) => run::run(a),
        Command::Demo(a) => run::demo(a),
        Command::Bench(a) => bench::bench(a),
        Command::Train(a) => train::train(a),
        Command::Eval(a) => eval::eval(a),
        Command::Transduct(a) => transduct::transduct(a),
        Command::Refine(a) => refine::refine_history(a),
        Command::Status(a) => status::status(a),
        Command::Doctor(a) => doctor::doctor(a),
        Command::Db(a) => db::db(a),
    }
}

/// The error as one line (causes joined with `: `, newlines folded).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    // Errors built with context keep their cause; ours already embed it in the message.
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
    }
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Map an error to the documented exit status: the first error in the chain that knows its
/// class decides (every library error type does; see `clipd::error`).
pub fn exit_code(e: &anyhow::Error) -> ExitCode {
    if e.chain().any(|c| c.is::<UsageError>()) {
        return ExitCode::from(ExitClass::Usage.code());
    }
    ExitCode::from(clipd::exit::class_of_chain(e.chain()).code())
}

/// The built-in demo configuration and the directory its relative paths resolve against.
pub const DEMO_CONFIG: &str = include_str!("../../configs/demo.toml");

pub fn demo_config() -> Result<Loaded> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    Ok(config::parse(
        DEMO_CONFIG,
        Path::new("configs/demo.toml (built in)"),
        &base,
    )?)
}

/// Load `--config`, else `./clipd.toml`, else `None`.
pub fn load_config(path: Option<&Path>) -> Result<Option<Loaded>> {
    match path {
        Some(p) => Ok(Some(config::load(p)?)),
        None => {
            let p = Path::new("clipd.toml");
            if p.is_file() {
                Ok(Some(config::load(p)?))
            } else {
                Ok(None)
            }
        }
    }
}

impl ModelArgs {
    /// What these options set over the config when the model loads.
    pub fn overrides(&self, adapter: Option<&AdapterArg>) -> ModelOverrides {
        ModelOverrides {
            bundle: self.bundle.clone(),
            adapter: adapter.and_then(|a| a.adapter.clone()),
            threads: self.threads,
            ..Default::default()
        }
    }
}

/// `--adapter`, else the config's adapter, else none (zero-shot).
pub fn adapter_path(arg: Option<&Path>, cfg: Option<&Loaded>) -> Option<PathBuf> {
    ModelOverrides {
        adapter: arg.map(Path::to_path_buf),
        ..Default::default()
    }
    .adapter_path(cfg)
}

/// `--bundle`, else the config's bundle, else the shipped one.
pub fn bundle_dir(arg: Option<&Path>, cfg: Option<&Loaded>) -> PathBuf {
    ModelOverrides {
        bundle: arg.map(Path::to_path_buf),
        ..Default::default()
    }
    .bundle_dir(cfg)
}
