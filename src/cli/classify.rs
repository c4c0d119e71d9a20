//! `clipd classify`: one result per image on stdout, failures on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;
use clap::{Args, ValueEnum};
use serde::Serialize;

use clipd::config::{LabelsFrom, ModelOverrides};
use clipd::engine::Engine;
use clipd::pipeline::{Pipeline, PipelineOptions, VecSink};
use clipd::preprocess::Transform;
use clipd::source::FileListSource;
use clipd::store::{csv_field, is_broken_pipe};

use super::{load_config, AdapterArg, ModelArgs, UsageError, SOME_FAILED};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Image files.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapter: AdapterArg,
    /// How many classes to report per image [default: the config's top_k].
    #[arg(long, value_name = "N")]
    top_k: Option<usize>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
}

#[derive(Serialize)]
struct TopK<'a> {
    label: &'a str,
    score: f32,
}

#[derive(Serialize)]
struct Row<'a> {
    path: &'a str,
    label: &'a str,
    score: f32,
    topk: Vec<TopK<'a>>,
}

/// Classify the given images with the config's classes.
pub fn classify(args: ClassifyArgs) -> Result<ExitCode> {
    let Some(cfg) = load_config(args.model.config.as_deref())? else {
        return Err(UsageError(
            "classify needs classes: pass --config FILE (see clipd.toml.example)".into(),
        )
        .into());
    };
    let c = &cfg.config;
    let top_k = args.top_k.unwrap_or(c.top_k);
    if top_k == 0 {
        return Err(UsageError("--top-k must be at least 1".into()).into());
    }
    // Reuse the daemon's text-embedding cache when there is one; never create a database here.
    let engine = Engine::from_config(
        &cfg,
        &ModelOverrides {
            batch: Some(c.engine.batch.min(args.images.len()).max(1)),
            ..args.model.overrides(Some(&args.adapter))
        },
    )?;
    let classifier = engine.classifier();
    let source = FileListSource::new("classify".into(), args.images.clone(), LabelsFrom::None);
    let popts = PipelineOptions {
        top_k,
        keep_embeddings: false,
        policies: Vec::new(),
        ..PipelineOptions::from_config(c)
    };
    let (_, sink) = Pipeline {
        transform: Transform::from_spec(&engine.bundle.manifest.image),
        encoder: Box::new(engine.image_encoder),
        head: classifier,
        labels: None,
        options: popts,
    }
    .run(
        vec![Box::new(source)],
        VecSink::default(),
        Arc::new(AtomicBool::new(false)),
    )?;
    let mut results = sink.0;
    results.sort_by_key(|r| r.seq);

    let mut failed = 0;
    let mut rows = Vec::new();
    for r in &results {
        match &r.outcome {
            Ok(c) => rows.push(Row {
                path: &r.reference,
                label: &c.label,
                score: c.score,
                topk: c
                    .top_k
                    .iter()
                    .map(|(l, s)| TopK {
                        label: l,
                        score: *s,
                    })
                    .collect(),
            }),
            Err(f) => {
                failed += 1;
                eprintln!("clipd: {}", f.message);
            }
        }
    }
    match write(&rows, args.format) {
        Err(e) if is_broken_pipe(&e) => {}
        Err(e) => return Err(anyhow::Error::new(e).context("writing results")),
        Ok(()) => {}
    }
    Ok(if failed > 0 {
        ExitCode::from(SOME_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

fn write(rows: &[Row], format: OutputFormat) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match format {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut out, rows).map_err(std::io::Error::other)?;
            writeln!(out)?;
        }
        OutputFormat::Csv => {
            writeln!(out, "path,label,score,topk")?;
            for r in rows {
                let topk: Vec<String> = r
                    .topk
                    .iter()
                    .map(|t| format!("{}:{:.4}", t.label, t.score))
                    .collect();
                writeln!(
                    out,
                    "{},{},{:.4},{}",
                    csv_field(r.path),
                    csv_field(r.label),
                    r.score,
                    csv_field(&topk.join(";"))
                )?;
            }
        }
        OutputFormat::Table => {
            let w = rows.iter().map(|r| r.path.len()).max().unwrap_or(4).max(4);
            let lw = rows.iter().map(|r| r.label.len()).max().unwrap_or(5).max(5);
            writeln!(out, "{:w$}  {:lw$}  {:>6}  top-k", "path", "label", "score")?;
            for r in rows {
                let topk: Vec<String> = r
                    .topk
                    .iter()
                    .skip(1)
                    .map(|t| format!("{} {:.3}", t.label, t.score))
                    .collect();
                writeln!(
                    out,
                    "{:w$}  {:lw$}  {:>6.3}  {}",
                    r.path,
                    r.label,
                    r.score,
                    topk.join(", ")
                )?;
            }
        }
    }
    out.flush()
}
