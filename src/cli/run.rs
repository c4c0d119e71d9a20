//! `clipd run` and `clipd demo`: the pipeline from configured sources into the history database.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use clipd::config::{Loaded, ModelOverrides};
use clipd::daemon::service::{self, Outcome};
use clipd::pipeline::RunStats;
use clipd::store::WriterSummary;

use super::{demo_config, load_config, AdapterArg, ModelArgs, UsageError, SOME_FAILED};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapter: AdapterArg,
    /// Exit once every source is exhausted instead of watching for new frames.
    #[arg(long)]
    once: bool,
    /// History database (overrides the config's store.path).
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Model bundle directory [default: the shipped models/tiny-clip].
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// History database [default: out/demo.db in the source tree].
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
}

/// Classify every frame from the config's sources and log it; prints a summary at the end.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    let Some(cfg) = load_config(args.model.config.as_deref())? else {
        return Err(UsageError(
            "no configuration: pass --config FILE (see clipd.toml.example), or try `clipd demo`"
                .into(),
        )
        .into());
    };
    let ov = ModelOverrides {
        bundle: args.model.bundle,
        adapter: args.adapter.adapter,
        db: args.db,
        threads: args.model.threads,
        ..Default::default()
    };
    execute(cfg, ov, args.once)
}

/// The demo: `run --once` with the built-in configuration.
pub fn demo(args: DemoArgs) -> Result<ExitCode> {
    let cfg = demo_config()?;
    println!(
        "clipd demo: zero-shot classification of the sample frames in {}",
        cfg.resolve(std::path::Path::new(&cfg.config.sources[0].path))
            .display()
    );
    let ov = ModelOverrides {
        bundle: args.bundle,
        db: args.db,
        ..Default::default()
    };
    execute(cfg, ov, true)
}

/// Run the daemon (clipd::daemon::service) and print what it did.
pub fn execute(cfg: Loaded, ov: ModelOverrides, once: bool) -> Result<ExitCode> {
    let f = match service::run(cfg, ov, once)? {
        Outcome::Finished(f) => f,
        // The pipeline's threads may still be running: returning from main ends them with the
        // process (committed frames are safe, the service logged what was lost).
        Outcome::Abandoned(_) => return Ok(ExitCode::from(SOME_FAILED)),
    };
    print_summary(
        &f.stats,
        &f.written,
        &f.db,
        &f.model_id,
        f.adapter_id.as_deref(),
    );
    if let Some(r) = &f.refined {
        println!(
            "refinement: {} passes ({} held back by max_changed, {} failed), {:.1} ms per pass, {} state changes",
            r.passes,
            r.guarded,
            r.failed,
            r.total.as_secs_f64() * 1000.0 / r.passes.max(1) as f64,
            r.state_changes
        );
    }
    if let Some(e) = f.written.first_error {
        return Err(e.into());
    }
    Ok(if f.stats.failed > 0 {
        ExitCode::from(SOME_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_summary(
    s: &RunStats,
    w: &WriterSummary,
    db: &std::path::Path,
    model_id: &str,
    adapter_id: Option<&str>,
) {
    let mut out = String::new();
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    out.push_str(&format!(
        "frames: {} ({} classified, {} failed) in {:.2} s, {:.1} frames/s\n",
        s.frames,
        s.classified,
        s.failed,
        secs,
        s.frames as f64 / secs
    ));
    if !s.failures.is_empty() {
        let kinds: Vec<String> = s.failures.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out.push_str(&format!("failures: {}\n", kinds.join(", ")));
    }
    if let (Some(t1), Some(t5)) = (s.accuracy_top1(), s.accuracy_top5()) {
        out.push_str(&format!(
            "accuracy vs known labels: top-1 {:.1}% ({}/{}), top-5 {:.1}%\n",
            100.0 * t1,
            s.correct_top1,
            s.labelled,
            100.0 * t5
        ));
    }
    if !s.unknown_truth.is_empty() {
        let names: Vec<&str> = s.unknown_truth.keys().map(String::as_str).take(5).collect();
        out.push_str(&format!(
            "known labels matching no class (not scored): {}\n",
            names.join(", ")
        ));
    }
    if s.frames > 0 {
        out.push_str(&format!(
            "latency: mean {:.1} ms/frame; encoder {:.2} ms/frame over {} batches\n",
            s.latency_us_total as f64 / 1000.0 / s.frames as f64,
            s.encode_time.as_secs_f64() * 1000.0 / s.classified.max(1) as f64,
            s.batches
        ));
    }
    let mut labels: Vec<(&String, &u64)> = s.per_label.iter().collect();
    labels.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    if !labels.is_empty() {
        let top: Vec<String> = labels
            .iter()
            .take(8)
            .map(|(l, n)| format!("{l} {n}"))
            .collect();
        out.push_str(&format!("most frequent labels: {}\n", top.join(", ")));
    }
    out.push_str(&format!("model: {model_id}\n"));
    if let Some(a) = adapter_id {
        out.push_str(&format!("adapter: {a}\n"));
    }
    out.push_str(&format!("database: {} ({w})\n", db.display()));
    // A closed stdout (e.g. piped into `head`) is not worth failing the run over.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
}
