//! `clipd embed`: feature dumps for offline research.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use clipd::bundle::Bundle;
use clipd::classes::PromptEmbedder;
use clipd::encoder::{l2_normalize_rows, load_image_encoder, EncoderOptions, ImageEncoder};
use clipd::npy;
use clipd::preprocess::{DecodeLimits, Transform};

use super::{bundle_dir, load_config, ModelArgs, UsageError, SOME_FAILED};

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Image files (one row each, in this order).
    #[arg(value_name = "IMAGE", conflicts_with = "text")]
    images: Vec<PathBuf>,
    /// Embed these prompts instead of images (repeatable).
    #[arg(long, value_name = "PROMPT", num_args = 1..)]
    text: Vec<String>,
    /// Output .npy file: N×d float32, L2-normalised.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
}

/// Embed images or prompts and write them as one N×d matrix.
pub fn embed(args: EmbedArgs) -> Result<ExitCode> {
    if args.images.is_empty() && args.text.is_empty() {
        return Err(UsageError("embed needs image files or --text PROMPT…".into()).into());
    }
    let cfg = load_config(args.model.config.as_deref())?;
    let threads = args
        .model
        .threads
        .or(cfg.as_ref().map(|c| c.config.engine.threads))
        .unwrap_or(1);
    let limits = cfg.as_ref().map(|c| c.config.decode).unwrap_or_default();
    let variant = cfg
        .as_ref()
        .and_then(|c| c.config.engine.variant.as_deref());
    let bundle = Bundle::open(&bundle_dir(args.model.bundle.as_deref(), cfg.as_ref()))?
        .with_variant(variant)?;
    let d = bundle.manifest.embed_dim;
    if !args.text.is_empty() {
        let mut embedder = PromptEmbedder::new(&bundle, threads);
        let rows = embedder.embed(&args.text)?;
        npy::write(&args.out, &[rows.len(), d], &rows.concat())?;
        return Ok(ExitCode::SUCCESS);
    }
    let batch = cfg
        .as_ref()
        .map_or(8, |c| c.config.engine.batch)
        .min(args.images.len())
        .max(1);
    // Images on the configured backend, as `classify` and `run` encode them (prompts always
    // go through tract, as the engine's text side does).
    let backend = cfg
        .as_ref()
        .map(|c| c.config.engine.backend(&c.base))
        .unwrap_or_default();
    let mut encoder = load_image_encoder(
        &bundle,
        EncoderOptions {
            batch,
            threads,
            lanes: 1,
        },
        &backend,
    )?;
    let (out, failed) = embed_images(&args.images, &bundle, encoder.as_mut(), &limits)?;
    if failed > 0 {
        // Rows must line up with the inputs: write nothing rather than a shifted matrix.
        eprintln!(
            "clipd: {failed} of {} images failed; {} not written",
            args.images.len(),
            args.out.display()
        );
        return Ok(ExitCode::from(SOME_FAILED));
    }
    npy::write(&args.out, &[args.images.len(), d], &out)?;
    Ok(ExitCode::SUCCESS)
}

fn embed_images(
    paths: &[PathBuf],
    bundle: &Bundle,
    encoder: &mut dyn ImageEncoder,
    limits: &DecodeLimits,
) -> Result<(Vec<f32>, usize)> {
    let t = Transform::from_spec(&bundle.manifest.image);
    let d = bundle.manifest.embed_dim;
    let mut out = Vec::with_capacity(paths.len() * d);
    let mut failed = 0;
    for chunk in paths.chunks(encoder.batch_size()) {
        let mut pixels = Vec::with_capacity(chunk.len() * t.len());
        for p in chunk {
            match t.load(p, limits) {
                Ok(px) => pixels.extend(px),
                Err(e) => {
                    eprintln!("clipd: {e}");
                    failed += 1;
                }
            }
        }
        if failed > 0 {
            continue;
        }
        let mut emb = encoder.encode(&pixels, chunk.len())?;
        l2_normalize_rows(&mut emb, d);
        out.extend(emb);
    }
    Ok((out, failed))
}
