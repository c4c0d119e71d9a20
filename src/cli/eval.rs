//! `clipd eval`: zero-shot versus every few-shot method at several shot counts, averaged over
//! random draws of the support set, on a labelled test directory.
//!
//! The pool and the test set are encoded once; each draw takes the first K shots of a seeded
//! permutation of every class's pool (so a draw's 2 shots are inside its 4 shots), and every
//! method trains on exactly that draw with hyperparameters cross-validated on it. The test
//! set is only ever scored.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use clipd::adapter::train::{train as train_method, TrainOptions};
use clipd::adapter::{Head, Method};
use clipd::report::{self, CurvePoint, ResultCell};
use clipd::rng::Rng;

use super::progress::Progress;
use super::train::{encode_dir, prepare};
use super::{ModelArgs, UsageError};

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Pool of labelled shots, one folder per class; each draw samples from it.
    #[arg(long, value_name = "DIR")]
    support: PathBuf,
    /// Labelled test images, one folder per class.
    #[arg(long, value_name = "DIR")]
    test: PathBuf,
    /// Shot counts, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    shots: Vec<usize>,
    /// Methods, comma separated [default: all].
    #[arg(long, value_delimiter = ',')]
    methods: Vec<Method>,
    /// Random draws of the support set per shot count (seeds first-seed, first-seed+1, ...).
    #[arg(long, default_value_t = 3, value_name = "N")]
    seeds: u64,
    #[arg(long, default_value_t = 0, value_name = "S")]
    first_seed: u64,
    /// Random-augmentation views per pool image (0 disables).
    #[arg(long, default_value_t = 10, value_name = "N")]
    augment: usize,
    /// Directory for results.csv, results.md, curves.csv and curves-<K>shot.png.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Evaluate and print (and write) the tables.
pub fn eval(args: EvalArgs) -> Result<ExitCode> {
    if args.shots.is_empty() || args.shots.contains(&0) || args.seeds == 0 {
        return Err(UsageError("--shots needs counts ≥ 1 and --seeds ≥ 1".into()).into());
    }
    let methods: Vec<Method> = if args.methods.is_empty() {
        Method::FEW_SHOT.to_vec()
    } else {
        args.methods
            .iter()
            .copied()
            .filter(|m| *m != Method::ZeroShot)
            .collect()
    };
    let (cfg, mut p) = prepare(&args.model, "eval")?;
    let pool = encode_dir(
        &mut p,
        &cfg,
        &args.support,
        args.augment,
        args.first_seed,
        "encoding pool",
    )?;
    let test = encode_dir(&mut p, &cfg, &args.test, 0, 0, "encoding test set")?;
    let classes = p.engine.classes.len();
    let test_x = &test.shots.views[0];
    let test_y = &test.shots.labels;
    let scale = p.engine.bundle.manifest.logit_scale;

    // Per-class pool indices; every shot count must fit in every class.
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in pool.shots.labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let most = *args.shots.iter().max().unwrap_or(&1);
    if let Some((c, have)) = by_class
        .iter()
        .enumerate()
        .map(|(c, v)| (c, v.len()))
        .find(|&(_, n)| n < most)
    {
        return Err(UsageError(format!(
            "{}: class {:?} has {have} usable images; --shots {most} needs at least {most} per class",
            args.support.display(),
            p.engine.classes[c].name
        ))
        .into());
    }

    let zero = Head::Residual {
        text: p.text.clone(),
        image: None,
        scale,
    };
    let (z1, z5) = zero.evaluate(test_x, test_y);
    let n_test = test_y.len().max(1) as f64;
    let mut cells = vec![ResultCell {
        method: Method::ZeroShot.name().into(),
        shots: 0,
        top1: vec![z1 as f64 / n_test],
        top5: vec![z5 as f64 / n_test],
    }];
    let mut curves: Vec<CurvePoint> = Vec::new();
    let mut timings: Vec<(Method, usize, f64)> = Vec::new();
    let mut shots_sorted = args.shots.clone();
    shots_sorted.sort_unstable();
    shots_sorted.dedup();
    println!(
        "eval: {} classes, pool {} images, test {} images, shots {:?}, {} draws, methods {}",
        classes,
        pool.shots.len(),
        test_y.len(),
        shots_sorted,
        args.seeds,
        methods
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let runs = (shots_sorted.len() * methods.len()) as u64 * args.seeds;
    let progress = Progress::new("training runs");
    let mut done = 0u64;
    for seed in args.first_seed..args.first_seed + args.seeds {
        let perms: Vec<Vec<usize>> = by_class
            .iter()
            .enumerate()
            .map(|(c, idx)| {
                let mut v = idx.clone();
                Rng::derive(seed, &[0x5107, c as u64]).shuffle(&mut v);
                v
            })
            .collect();
        for &k in &shots_sorted {
            let mut draw: Vec<usize> = perms.iter().flat_map(|v| v[..k].iter().copied()).collect();
            draw.sort_unstable();
            let shots = pool.shots.subset(&draw);
            for &method in &methods {
                let opts = TrainOptions {
                    seed,
                    threads: p.threads,
                    report: Some((test_x, test_y)),
                    ..Default::default()
                };
                let t0 = Instant::now();
                let trained = train_method(method, &shots, &p.text, scale, &opts)?;
                timings.push((method, k, t0.elapsed().as_secs_f64()));
                let (t1, t5) = trained.head.evaluate(test_x, test_y);
                let cell = match cells
                    .iter_mut()
                    .find(|c| c.method == method.name() && c.shots == k)
                {
                    Some(c) => c,
                    None => {
                        cells.push(ResultCell {
                            method: method.name().into(),
                            shots: k,
                            top1: Vec::new(),
                            top5: Vec::new(),
                        });
                        let last = cells.len() - 1;
                        &mut cells[last]
                    }
                };
                cell.top1.push(t1 as f64 / n_test);
                cell.top5.push(t5 as f64 / n_test);
                log::info!(
                    "seed {seed} {k}-shot {method}: top-1 {:.1}% ({}) {:?}",
                    100.0 * t1 as f64 / n_test,
                    trained.selection.how,
                    trained.hyper
                );
                curves.extend(trained.curve.iter().map(|e| CurvePoint {
                    method: method.name().into(),
                    shots: k,
                    seed,
                    epoch: e.epoch,
                    train_loss: e.train_loss,
                    train_acc: e.train_acc,
                    cv_acc: e.cv_acc,
                    test_acc: e.test_acc,
                }));
                done += 1;
                progress.set(done, runs);
            }
        }
    }
    progress.finish();

    print!("{}", report::text_table(&cells));
    println!("training + hyperparameter search, mean seconds per run:");
    for &m in &methods {
        let per: Vec<String> = shots_sorted
            .iter()
            .map(|&k| {
                let t: Vec<f64> = timings
                    .iter()
                    .filter(|(mm, kk, _)| *mm == m && *kk == k)
                    .map(|t| t.2)
                    .collect();
                format!(
                    "{k}-shot {:.2}",
                    t.iter().sum::<f64>() / t.len().max(1) as f64
                )
            })
            .collect();
        println!("  {:<13} {}", m.name(), per.join(", "));
    }
    if let Some(out) = &args.out {
        report::write_file(&out.join("results.csv"), &report::results_csv(&cells))?;
        report::write_file(&out.join("results.md"), &report::markdown_table(&cells))?;
        report::write_file(&out.join("curves.csv"), &report::curves_csv(&curves))?;
        for &k in &shots_sorted {
            if curves.iter().any(|c| c.shots == k) {
                report::plot_curves(&curves, k, &out.join(format!("curves-{k}shot.png")))?;
            }
        }
        println!("wrote {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}
