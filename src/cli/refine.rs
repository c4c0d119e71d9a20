//! `clipd refine`: rerun transductive refinement over stored frames (those logged with
//! `store.embeddings = true`), in windows of the refiner's buffer size, and report how many
//! labels would change (`--dry-run`) or changed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;

use clipd::config::ModelOverrides;
use clipd::encoder::Backend;
use clipd::engine::Engine;
use clipd::head::Classifier;
use clipd::refiner::{refine, BufferedFrame, RefineConfig, RefineContext};
use clipd::store::{now_ms, parse_time_spec, FrameFilter, RefinementRecord, Store, StoreOptions};
use clipd::transduct::{Method, Preset};

use super::{load_config, AdapterArg, ModelArgs, UsageError};

#[derive(Debug, Args)]
pub struct RefineArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapter: AdapterArg,
    /// History database [default: the config's store.path].
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
    /// Frames at or after this time (30s, 15m, 1h, 2d or RFC 3339).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Frames before this time.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only frames from this source.
    #[arg(long)]
    source: Option<String>,
    /// em-dirichlet, hard-em-dirichlet or transclip [default: the config's refine.method].
    #[arg(long)]
    method: Option<Method>,
    /// default or reference [default: the config's refine.preset].
    #[arg(long)]
    preset: Option<Preset>,
    /// Parameter override `key=value`; repeatable (added after the config's).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Frames refined together [default: the config's refine.buffer].
    #[arg(long, value_name = "N")]
    window: Option<usize>,
    /// Report what would change without writing.
    #[arg(long)]
    dry_run: bool,
}

/// Refine stored frames window by window.
pub fn refine_history(args: RefineArgs) -> Result<ExitCode> {
    let Some(cfg) = load_config(args.model.config.as_deref())? else {
        return Err(UsageError("refine needs the classes: pass --config FILE".into()).into());
    };
    let c = &cfg.config;
    let mut rc: RefineConfig = c.refine.clone().unwrap_or_default();
    if let Some(m) = args.method {
        rc.method = m;
    }
    if let Some(p) = args.preset {
        rc.preset = p;
    }
    rc.set.extend(args.set.iter().cloned());
    let window = args.window.unwrap_or(rc.buffer).max(1);
    let ov = ModelOverrides {
        db: args.db.clone(),
        backend: Some(Backend::Tract),
        batch: Some(1),
        threads: args.model.threads.or(Some(1)),
        ..args.model.overrides(Some(&args.adapter))
    };
    let db = ov.db_path(&cfg);
    let engine = Engine::from_config(&cfg, &ov)?;
    let few_shot = engine.adapter.as_ref().is_some_and(|a| a.support.is_some());
    let params = RefineContext::params(&rc, engine.classes.len(), few_shot)
        .map_err(|e| UsageError(format!("refine: {e}")))?;
    let labels: Vec<String> = engine.classes.iter().map(|c| c.name.clone()).collect();
    let index: HashMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let classifier: Arc<dyn Classifier> = Arc::from(engine.classifier());
    let ctx = RefineContext::for_engine(&engine, classifier, params.clone(), Some(rc.max_changed));

    let now = now_ms();
    let since = args
        .since
        .as_deref()
        .map(|s| parse_time_spec(s, now))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|s| parse_time_spec(s, now))
        .transpose()?;
    let store = Store::open_read_only(&db)?;
    let stored = store.embedded_frames(since, until, args.source.as_deref())?;
    let model_id = engine.bundle.model_id();
    let d = engine.bundle.manifest.embed_dim;
    let mut skipped = 0usize;
    let frames: Vec<BufferedFrame> = stored
        .iter()
        .filter_map(|f| {
            let class = index.get(f.label.as_str()).copied();
            if f.model_id != model_id || f.embedding.len() != d || class.is_none() {
                skipped += 1;
                return None;
            }
            Some(BufferedFrame {
                id: f.id,
                ts_ms: f.ts_ms,
                source: f.source.clone(),
                class: class.unwrap_or(0),
                embedding: f.embedding.clone(),
            })
        })
        .collect();
    if frames.is_empty() {
        // Say which it is: nothing logged in the window at all, or frames without embeddings.
        let in_window = store
            .summary(&FrameFilter {
                since_ms: since,
                until_ms: until,
                source: args.source.clone(),
                ..FrameFilter::default()
            })?
            .total;
        let window = match (&args.since, &args.until) {
            (None, None) => "the history".to_string(),
            (s, u) => format!(
                "the window{}{}",
                s.as_ref()
                    .map(|s| format!(" since {s}"))
                    .unwrap_or_default(),
                u.as_ref()
                    .map(|u| format!(" until {u}"))
                    .unwrap_or_default()
            ),
        };
        let msg = if in_window == 0 {
            format!(
                "{}: no frames in {window}{}: widen --since/--until",
                db.display(),
                args.source
                    .as_ref()
                    .map(|s| format!(" from source {s:?}"))
                    .unwrap_or_default()
            )
        } else if stored.is_empty() {
            format!(
                "{}: the {in_window} frames in {window} were logged without embeddings: set store.embeddings = true in the config so the daemon keeps them",
                db.display()
            )
        } else {
            format!(
                "{}: none of the {} embedded frames in {window} is of model {model_id} with a configured class ({skipped} skipped): refine with the bundle and classes that logged them",
                db.display(),
                stored.len()
            )
        };
        return Err(UsageError(msg).into());
    }
    let mut writer = if args.dry_run {
        None
    } else {
        Some(Store::open(&db, &StoreOptions::default())?)
    };
    let params_json = serde_json::to_string(&params)?;
    let (mut changed, mut total_ms, mut held) = (0usize, 0.0f64, 0usize);
    for chunk in frames.chunks(window) {
        let pass = refine(&ctx, chunk)?;
        changed += pass.changed;
        held += usize::from(pass.guarded.is_some());
        total_ms += pass.duration.as_secs_f64() * 1000.0;
        if let Some(store) = writer.as_mut() {
            store.apply_refinement(&RefinementRecord {
                ts_ms: now_ms(),
                algorithm: params.method().name().to_string(),
                params: params_json.clone(),
                n_frames: chunk.len(),
                n_changed: pass.changed,
                duration_ms: pass.duration.as_millis() as u64,
                labels: chunk
                    .iter()
                    .zip(&pass.refined)
                    .map(|(f, &(c, s))| (f.id, labels[c].clone(), s))
                    .collect(),
                state_changes: Vec::new(),
            })?;
        }
    }
    println!(
        "{} frames in {} windows of up to {window}: {changed} labels {} by {} ({}), {held} windows held back by max_changed, {:.1} ms per window; {skipped} frames skipped",
        frames.len(),
        frames.len().div_ceil(window),
        if args.dry_run { "would change" } else { "changed" },
        params.method(),
        rc.preset,
        total_ms / frames.len().div_ceil(window) as f64
    );
    Ok(ExitCode::SUCCESS)
}
