//! `clipd train`: a few-shot adapter from a support directory (one folder of shots per class),
//! written as a safetensors file that `classify` and `run` take with `--adapter`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use clipd::adapter::file::Adapter;
use clipd::adapter::linalg::Mat;
use clipd::adapter::support::{self, Encoded};
use clipd::adapter::train::{train as train_method, TrainOptions};
use clipd::adapter::Method;
use clipd::config::{Loaded, ModelOverrides};
use clipd::encoder::Backend;
use clipd::engine::Engine;
use clipd::preprocess::Transform;

use super::progress::Progress;
use super::{load_config, ModelArgs, UsageError};

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Support directory: one folder of images per configured class (folder name = class).
    #[arg(long, value_name = "DIR")]
    support: PathBuf,
    /// jclip, clip-adapter, tip, tip-f, linear or cross-modal.
    #[arg(long, value_name = "M")]
    method: Method,
    /// Where to write the adapter (safetensors).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Seed for folds, initialisation, batches and augmentations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Random-augmentation views per shot (random resized crop 0.5–1 + flip); 0 disables.
    #[arg(long, default_value_t = 10, value_name = "N")]
    augment: usize,
}

/// Everything training and evaluation share: the loaded model, its class text matrix, and the
/// transform.
pub struct Prepared {
    pub engine: Engine,
    pub text: Mat<f32>,
    pub transform: Transform,
    pub threads: usize,
}

/// Load the config (required), bundle and class text embeddings (from the history's cache
/// when it has them).
pub fn prepare(model: &ModelArgs, what: &str) -> Result<(Loaded, Prepared)> {
    let Some(cfg) = load_config(model.config.as_deref())? else {
        return Err(UsageError(format!(
            "{what} needs classes: pass --config FILE (see clipd.toml.example)"
        ))
        .into());
    };
    let c = &cfg.config;
    if c.classes.is_empty() {
        return Err(UsageError(format!("{}: classes: none configured", cfg.file.display())).into());
    }
    // Shots are embedded on tract whatever backend the daemon runs, and always zero-shot:
    // the adapter being trained replaces the config's.
    let engine = Engine::from_config(
        &cfg,
        &ModelOverrides {
            backend: Some(Backend::Tract),
            zero_shot: true,
            ..model.overrides(None)
        },
    )?;
    let d = engine.bundle.manifest.embed_dim;
    let text = Mat::from_vec(engine.classes.len(), d, engine.head.weights().to_vec());
    let transform = Transform::from_spec(&engine.bundle.manifest.image);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok((
        cfg,
        Prepared {
            engine,
            text,
            transform,
            threads: workers,
        },
    ))
}

/// Encode the shots under `dir` (plain view + `augment` views), reporting skipped files.
pub fn encode_dir(
    p: &mut Prepared,
    cfg: &Loaded,
    dir: &Path,
    augment: usize,
    seed: u64,
    label: &str,
) -> Result<Encoded> {
    let folders = support::scan(dir, &p.engine.classes)?;
    let progress = Progress::new(label);
    let enc = support::encode(
        &folders,
        p.engine.classes.len(),
        &p.transform,
        &mut p.engine.image_encoder,
        &cfg.config.decode,
        augment,
        seed,
        &mut |done, total| progress.set(done as u64, total as u64),
    )?;
    progress.finish();
    for (path, why) in &enc.skipped {
        eprintln!("clipd: skipped {}: {why}", path.display());
    }
    Ok(enc)
}

/// Train one adapter and write it.
pub fn train(args: TrainArgs) -> Result<ExitCode> {
    if args.method == Method::ZeroShot {
        return Err(UsageError(
            "--method zero-shot needs no training; run without --adapter".into(),
        )
        .into());
    }
    let started = Instant::now();
    let (cfg, mut p) = prepare(&args.model, "train")?;
    let enc = encode_dir(
        &mut p,
        &cfg,
        &args.support,
        args.augment,
        args.seed,
        "encoding shots",
    )?;
    let encoded_in = started.elapsed();
    let progress = Progress::new(&format!("training {}", args.method));
    let report = |done: u64, total: u64| progress.set(done, total);
    let opts = TrainOptions {
        seed: args.seed,
        threads: p.threads,
        progress: Some(&report),
        ..Default::default()
    };
    let scale = p.engine.bundle.manifest.logit_scale;
    let trained = train_method(args.method, &enc.shots, &p.text, scale, &opts)?;
    progress.finish();
    let trained_in = started.elapsed() - encoded_in;
    let skipped = enc
        .skipped
        .iter()
        .map(|(f, why)| format!("{}: {why}", f.display()))
        .collect();
    let mut adapter = Adapter::from_trained(
        trained,
        &p.engine.bundle,
        &p.engine.classes,
        p.text.clone(),
        Some((enc.shots.views[0].clone(), enc.shots.labels.clone())),
        enc.records,
        skipped,
        args.augment,
        args.seed,
    );
    adapter.save(&args.out)?;

    let m = &adapter.meta;
    let hyper = serde_json::to_string(&m.hyper)?;
    println!(
        "adapter {} ({}) written to {}",
        adapter.id,
        m.method,
        args.out.display()
    );
    println!(
        "classes: {}, shots per class: {}–{}, skipped files: {}",
        m.classes.len(),
        m.shots,
        m.shots_per_class.iter().max().copied().unwrap_or(0),
        m.skipped.len()
    );
    println!(
        "hyperparameters ({}{}): {hyper}",
        m.selection.how,
        m.selection
            .score
            .map(|s| format!(", held-out accuracy {:.1}%", 100.0 * s))
            .unwrap_or_default()
    );
    println!(
        "time: encoding {:.1} s ({} views per shot), training + search {:.1} s",
        encoded_in.as_secs_f64(),
        1 + args.augment,
        trained_in.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
