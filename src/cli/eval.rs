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

use std::sync::Arc;

use clipd::adapter::linalg::Mat;
use clipd::adapter::train::{train as train_method, Shots, TrainOptions};
use clipd::adapter::{AdaptedHead, Head, Method};
use clipd::head::Classifier;
use clipd::refiner::evaluate::{evaluate, stream_windows, Scores};
use clipd::refiner::{RefineContext, Support};
use clipd::report::{self, CurvePoint, ResultCell};
use clipd::rng::Rng;
use clipd::transduct::{Method as TMethod, Params, Preset};

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
    /// Directory for results.csv, results.md, curves.csv and curves-<K>shot.png (and
    /// transduct.csv / transduct.md with --transduct).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Also refine the test set transductively: zero-shot and every adapter (trained at
    /// --transduct-shots on the first draw) as the start, each method and preset, fed as a
    /// stream of windows dominated by a few classes and as one whole buffer.
    #[arg(long)]
    transduct: bool,
    /// Shot count of the adapters refined with --transduct [default: 4, else the smallest].
    #[arg(long, value_name = "K")]
    transduct_shots: Option<usize>,
    /// Transductive methods [default: all].
    #[arg(long, value_delimiter = ',')]
    transduct_methods: Vec<TMethod>,
    /// Presets to compare.
    #[arg(long, value_delimiter = ',', default_value = "default,reference")]
    presets: Vec<Preset>,
    /// Classes that dominate each stream window.
    #[arg(long, default_value_t = 5, value_name = "N")]
    dominant: usize,
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
    let transduct_shots = args
        .transduct_shots
        .unwrap_or(if shots_sorted.contains(&4) {
            4
        } else {
            shots_sorted[0]
        });
    // The adapters refined with --transduct: (method, head, the shots it was trained on).
    let mut bases: Vec<(Method, Head, Shots)> = Vec::new();
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
                if args.transduct && seed == args.first_seed && k == transduct_shots {
                    bases.push((method, trained.head.clone(), shots.clone()));
                }
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
    let transduct_rows = if args.transduct {
        let labels: Vec<String> = p.engine.classes.iter().map(|c| c.name.clone()).collect();
        let rows = transduct_table(
            &args, &p.text, scale, &labels, test_x, test_y, &zero, &bases,
        )?;
        print!("{}", transduct_text(&rows, transduct_shots, args.dominant));
        Some(rows)
    } else {
        None
    };
    if let Some(out) = &args.out {
        if let Some(rows) = &transduct_rows {
            report::write_file(
                &out.join("transduct.md"),
                &transduct_markdown(rows, transduct_shots, args.dominant),
            )?;
            report::write_file(&out.join("transduct.csv"), &transduct_csv(rows))?;
        }
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

/// One transductive result: a start (zero-shot or an adapter), a method and a preset.
struct TransductRow {
    start: String,
    method: TMethod,
    preset: Preset,
    stream: Scores,
    whole: Scores,
}

#[allow(clippy::too_many_arguments)]
fn transduct_table(
    args: &EvalArgs,
    text: &Mat<f32>,
    scale: f32,
    labels: &[String],
    x: &Mat<f32>,
    y: &[usize],
    zero: &Head,
    bases: &[(Method, Head, Shots)],
) -> Result<Vec<TransductRow>> {
    let methods = if args.transduct_methods.is_empty() {
        TMethod::ALL.to_vec()
    } else {
        args.transduct_methods.clone()
    };
    let k = labels.len();
    let windows = stream_windows(y, k, args.dominant, 0.2, args.first_seed);
    let whole = vec![(0..y.len()).collect::<Vec<_>>()];
    let mut starts: Vec<(String, Head, Option<&Shots>)> =
        vec![(Method::ZeroShot.name().to_string(), zero.clone(), None)];
    for (m, h, s) in bases {
        starts.push((m.name().to_string(), h.clone(), Some(s)));
    }
    let total = (starts.len() * methods.len() * args.presets.len()) as u64;
    let progress = Progress::new("transductive runs");
    let mut rows = Vec::new();
    for (start, head, shots) in &starts {
        let classifier: Arc<dyn Classifier> =
            Arc::new(AdaptedHead::new(labels.to_vec(), head.clone()));
        for &method in &methods {
            for &preset in &args.presets {
                let support = shots.map(|s| Support {
                    features: s.views[0].clone(),
                    labels: s.labels.clone(),
                });
                let ctx = RefineContext {
                    params: Params::new(method, preset, k, support.is_some()),
                    text: text.clone(),
                    labels: labels.to_vec(),
                    classifier: classifier.clone(),
                    logit_scale: scale,
                    support,
                    // The daemon's guard goes with the default preset; the reference runs bare.
                    max_changed: (preset == Preset::Default).then_some(0.3),
                };
                let stream = evaluate(&ctx, x, y, &windows)?;
                let all = evaluate(&ctx, x, y, &whole)?;
                log::info!(
                    "{start} + {method} ({preset}): stream {:.1}% → {:.1}%, whole {:.1}%",
                    100.0 * stream.base_top1,
                    100.0 * stream.refined_top1,
                    100.0 * all.refined_top1
                );
                rows.push(TransductRow {
                    start: start.clone(),
                    method,
                    preset,
                    stream,
                    whole: all,
                });
                progress.set(rows.len() as u64, total);
            }
        }
    }
    progress.finish();
    Ok(rows)
}

fn transduct_cells(r: &TransductRow) -> [String; 7] {
    let pct = |v: f64| format!("{:.1}", 100.0 * v);
    let delta = |a: f64, b: f64| format!("{:+.1}", 100.0 * (a - b));
    [
        r.start.clone(),
        format!("{} ({})", r.method, r.preset),
        pct(r.stream.base_top1),
        format!(
            "{} ({})",
            pct(r.stream.refined_top1),
            delta(r.stream.refined_top1, r.stream.base_top1)
        ),
        format!(
            "{} ({})",
            pct(r.whole.refined_top1),
            delta(r.whole.refined_top1, r.whole.base_top1)
        ),
        format!("{:.0}", r.stream.ms_per_window),
        format!("{:.0}", r.whole.ms_per_window),
    ]
}

const TRANSDUCT_HEADER: [&str; 7] = [
    "start",
    "refinement",
    "start top-1",
    "stream top-1 (Δ)",
    "whole top-1 (Δ)",
    "ms / window",
    "ms / whole",
];

fn transduct_title(shots: usize, dominant: usize) -> String {
    format!(
        "Transductive refinement, top-1 % (adapters: {shots} shots, first draw; stream: windows \
         where {dominant} classes supply 80% of the frames)"
    )
}

fn transduct_text(rows: &[TransductRow], shots: usize, dominant: usize) -> String {
    let cells: Vec<[String; 7]> = rows.iter().map(transduct_cells).collect();
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([TRANSDUCT_HEADER[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |c: &[String]| -> String {
        c.iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    let mut out = transduct_title(shots, dominant) + "\n";
    out.push_str(&line(&TRANSDUCT_HEADER.map(String::from)));
    for c in &cells {
        out.push_str(&line(c));
    }
    out
}

fn transduct_markdown(rows: &[TransductRow], shots: usize, dominant: usize) -> String {
    let mut out = format!("**{}**\n\n", transduct_title(shots, dominant));
    out.push_str(&format!("| {} |\n", TRANSDUCT_HEADER.join(" | ")));
    out.push_str("|:---|:---|---:|---:|---:|---:|---:|\n");
    for r in rows {
        out.push_str(&format!("| {} |\n", transduct_cells(r).join(" | ")));
    }
    out
}

fn transduct_csv(rows: &[TransductRow]) -> String {
    let mut out = String::from(
        "start,method,preset,start_top1,stream_top1,whole_top1,stream_ms_per_window,whole_ms\n",
    );
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{:.1},{:.1}\n",
            r.start,
            r.method,
            r.preset,
            r.stream.base_top1,
            r.stream.refined_top1,
            r.whole.refined_top1,
            r.stream.ms_per_window,
            r.whole.ms_per_window
        ));
    }
    out
}
