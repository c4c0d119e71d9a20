//! Tables and figures for `clipd eval`.
//!
//! A few-shot evaluation produces many numbers: every (method, shots) pair is trained and
//! tested on several random draws of the support set, and every training run has per-epoch
//! curves. One number per pair hides how much a result depends on which images happened to be
//! drawn, so everything here reports mean ± sample standard deviation over the draws, and keeps
//! the per-draw values in the CSV so a reader can recompute or test significance.
//!
//! This module only formats and plots; it never trains or evaluates. That keeps it
//! deterministic and testable without a model, and lets the evaluation loop write its results
//! once and render them in several forms:
//!
//! * [`text_table`] for the terminal, [`markdown_table`] for a README or a pull request;
//! * [`results_csv`] / [`curves_csv`] for spreadsheets and scripts;
//! * [`plot_curves`] for a paper-style loss/accuracy figure (PNG).
//!
//! Conventions shared by all of them: methods appear in first-appearance order of the input,
//! except `"zero-shot"`, which always comes first because it is the baseline every other row is
//! read against; shot counts are ascending; accuracies are shown as percentages with one
//! decimal in tables and figures, and kept as full-precision fractions in CSV files.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{Display, Write as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::store::csv_field;

use crate::error::{ExitClass, HasExitClass};
use plotters::backend::{BitMapBackend, RGBPixel};
use plotters::coord::Shift;
use plotters::element::{Circle, DashedPathElement, PathElement};
use plotters::prelude::{ChartBuilder, DrawingArea, IntoDrawingArea, SeriesLabelPosition};
use plotters::series::{DashedLineSeries, LineSeries};
use plotters::style::{Color, FontStyle, RGBColor, ShapeStyle, BLACK, WHITE};

/// The method name that is pinned to the first row: the baseline the other rows improve on.
const ZERO_SHOT: &str = "zero-shot";

/// Size in pixels (width, height) of the PNG written by [`plot_curves`]: wide enough for two
/// side-by-side panels with readable tick labels, small enough to embed in a README.
pub const CURVE_PLOT_SIZE: (u32, u32) = (1200, 480);

/// Font family name the plots ask for; [`ensure_font`] registers the embedded font under it.
const FONT_FAMILY: &str = "sans-serif";

/// DejaVu Sans cut down to printable ASCII plus `±·×–` (see `assets/fonts/README.md`).
/// Embedded because plotters' `ab_glyph` backend has no access to system fonts, and figures
/// should look the same on every machine, including headless ones with no fonts installed.
static FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-subset.ttf");

/// Categorical palette (Tableau 10): distinguishable, and still readable when printed in
/// greyscale thanks to differing lightness. Methods past the tenth reuse colours.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One evaluated (method, shots) cell: accuracies over the random draws of the support set.
///
/// Several draws are kept (rather than a single accuracy) because few-shot results vary a lot
/// with which images are drawn; the spread is part of the result.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultCell {
    /// Method name, e.g. `"zero-shot"`, `"jclip"`, `"tip-f"`.
    pub method: String,
    /// Support images per class; 0 for zero-shot.
    pub shots: usize,
    /// Top-1 accuracy, one value per draw/seed, as a fraction in [0, 1].
    pub top1: Vec<f64>,
    /// Top-5 accuracy, one value per draw/seed, as a fraction in [0, 1]. May be empty (e.g.
    /// fewer than five classes), in which case the top-5 table is left out.
    pub top5: Vec<f64>,
}

/// One epoch of one training run.
#[derive(Debug, Clone, PartialEq)]
pub struct CurvePoint {
    /// Method name, as in [`ResultCell::method`].
    pub method: String,
    /// Support images per class.
    pub shots: usize,
    /// Seed of the support-set draw (and training run).
    pub seed: u64,
    /// Epoch number, 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Training accuracy, as a fraction.
    pub train_acc: f64,
    /// Held-out-shot accuracy (cross-validation), if known; this is what model selection uses.
    pub cv_acc: Option<f64>,
    /// Test accuracy, if known; reported only, never used for selection.
    pub test_acc: Option<f64>,
}

/// Why a report could not be written. Every message names the file concerned, because
/// `clipd eval` writes several outputs and the user needs to know which one failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Writing a file failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Creating the directory for an output file failed.
    #[error("cannot create directory {} (for {}): {source}", dir.display(), path.display())]
    CreateDir {
        /// The directory that could not be created.
        dir: PathBuf,
        /// The output file it was for.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Drawing the figure failed (font, layout or backend error).
    #[error("cannot draw plot {}: {message}", path.display())]
    Plot {
        /// The PNG being drawn.
        path: PathBuf,
        /// What plotters (or the font setup) reported.
        message: String,
    },
    /// Encoding or saving the PNG failed.
    #[error("cannot save PNG {}: {source}", path.display())]
    Png {
        /// The PNG being written.
        path: PathBuf,
        /// The underlying error.
        source: image::ImageError,
    },
    /// There are no curve points for the requested shot count, so there is nothing to plot.
    #[error(
        "no training curves for {shots} shot(s) to plot into {} (curves exist for shots: {})",
        path.display(),
        list_or_none(available)
    )]
    NoCurves {
        /// The requested shot count.
        shots: usize,
        /// The PNG that was not written.
        path: PathBuf,
        /// Shot counts that do have curve points, to help the user pick one.
        available: Vec<usize>,
    },
}

impl HasExitClass for ReportError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::Io
    }
}

/// Formats a list of shot counts for an error message.
fn list_or_none(v: &[usize]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Mean and sample standard deviation (n − 1 denominator) of `v`.
///
/// The sample (not population) deviation is used because the draws are a small sample of all
/// possible support sets, and papers report it that way. With one value the spread is unknown,
/// not zero, but 0 is returned so callers need no special case; the tables show such cells
/// without `±`. An empty slice gives a NaN mean, so a missing measurement can never pass for
/// 0 % accuracy.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, 0.0);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() == 1 {
        return (mean, 0.0);
    }
    // Two-pass: subtracting the mean first avoids the cancellation of the sum-of-squares form.
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Methods in report order: first appearance, with zero-shot moved to the front.
fn method_order<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut order: Vec<&str> = Vec::new();
    for name in names {
        if !order.contains(&name) {
            order.push(name);
        }
    }
    if let Some(i) = order.iter().position(|m| *m == ZERO_SHOT) {
        let zs = order.remove(i);
        order.insert(0, zs);
    }
    order
}

/// All draws of one (method, shots) pair; pairs given more than once are pooled.
#[derive(Debug, Default, Clone)]
struct Pooled {
    top1: Vec<f64>,
    top5: Vec<f64>,
}

/// The results rearranged for output: methods and shot counts ordered, duplicate pairs pooled.
struct Grid<'a> {
    methods: Vec<&'a str>,
    /// Distinct shot counts in ascending order, including 0.
    shots: Vec<usize>,
    cells: HashMap<(&'a str, usize), Pooled>,
}

impl<'a> Grid<'a> {
    fn new(cells: &'a [ResultCell]) -> Self {
        let methods = method_order(cells.iter().map(|c| c.method.as_str()));
        let shots: BTreeSet<usize> = cells.iter().map(|c| c.shots).collect();
        let mut map: HashMap<(&str, usize), Pooled> = HashMap::new();
        for c in cells {
            let p = map.entry((c.method.as_str(), c.shots)).or_default();
            p.top1.extend_from_slice(&c.top1);
            p.top5.extend_from_slice(&c.top5);
        }
        Grid {
            methods,
            shots: shots.into_iter().collect(),
            cells: map,
        }
    }

    /// Table columns: every shot count above 0. Zero-shot results have no column of their own
    /// (they are repeated across the row instead); only when there is nothing else is a single
    /// "0 shots" column used.
    fn columns(&self) -> Vec<usize> {
        let cols: Vec<usize> = self.shots.iter().copied().filter(|&s| s > 0).collect();
        if cols.is_empty() {
            vec![0]
        } else {
            cols
        }
    }

    /// The draws shown for `method` in the column for `shots`, and whether they are the
    /// method's shot-independent (0-shot) result standing in for a missing cell.
    fn lookup(&self, method: &'a str, shots: usize) -> Option<(&Pooled, bool)> {
        match self.cells.get(&(method, shots)) {
            Some(p) => Some((p, false)),
            None => self.cells.get(&(method, 0)).map(|p| (p, true)),
        }
    }

    fn has_top5(&self) -> bool {
        self.cells.values().any(|p| !p.top5.is_empty())
    }

    /// Methods with at least one repeated (shot-independent) value, for the footnote.
    fn repeated_methods(&self, columns: &[usize]) -> Vec<&'a str> {
        self.methods
            .iter()
            .copied()
            .filter(|m| {
                columns
                    .iter()
                    .any(|&s| matches!(self.lookup(m, s), Some((_, true))))
            })
            .collect()
    }

    /// The distinct numbers of draws among few-shot cells (for the table title). Zero-shot
    /// cells are left out: they are deterministic and usually evaluated once.
    fn draw_counts(&self, which: Metric) -> BTreeSet<usize> {
        self.cells
            .iter()
            .filter(|((_, s), _)| *s > 0)
            .map(|(_, p)| which.values(p).len())
            .filter(|&n| n > 0)
            .collect()
    }
}

/// Which accuracy a table block shows.
#[derive(Debug, Clone, Copy)]
enum Metric {
    Top1,
    Top5,
}

impl Metric {
    fn values(self, p: &Pooled) -> &[f64] {
        match self {
            Metric::Top1 => &p.top1,
            Metric::Top5 => &p.top5,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Metric::Top1 => "Top-1",
            Metric::Top5 => "Top-5",
        }
    }
}

/// A fraction as a percentage with one decimal.
fn pct(x: f64) -> String {
    format!("{:.1}", x * 100.0)
}

/// Table cell text: `"62.7 ± 1.3"`; a single draw shows no `±` because its spread is
/// unknown rather than zero; no draws at all show `-`.
fn cell_text(values: &[f64]) -> String {
    match values {
        [] => "-".to_string(),
        [x] => pct(*x),
        _ => {
            let (m, s) = mean_std(values);
            format!("{} ± {}", pct(m), pct(s))
        }
    }
}

/// Column header: "1 shot", "16 shots".
fn shots_header(s: usize) -> String {
    if s == 1 {
        "1 shot".to_string()
    } else {
        format!("{s} shots")
    }
}

/// One table block, as a title, a header row and body rows of plain strings; the text and
/// Markdown renderers only differ in how they lay these out.
struct Block {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    footnote: Option<String>,
}

fn build_block(grid: &Grid<'_>, metric: Metric) -> Block {
    let columns = grid.columns();
    let counts: Vec<usize> = grid.draw_counts(metric).into_iter().collect();
    let what = match counts.as_slice() {
        [] => String::new(),
        [1] => ", one draw of the support set".to_string(),
        [n] => format!(", mean ± std over {n} draws of the support set"),
        _ => ", mean ± std over draws of the support set".to_string(),
    };
    let title = format!("{} accuracy (%){what}", metric.name());
    let mut header = vec!["method".to_string()];
    header.extend(columns.iter().map(|&s| shots_header(s)));
    let rows = grid
        .methods
        .iter()
        .map(|m| {
            let mut row = vec![(*m).to_string()];
            row.extend(columns.iter().map(|&s| match grid.lookup(m, s) {
                Some((p, _)) => cell_text(metric.values(p)),
                None => "-".to_string(),
            }));
            row
        })
        .collect();
    let repeated = grid.repeated_methods(&columns);
    let footnote = (!repeated.is_empty()).then(|| {
        format!(
            "{}: does not depend on the number of shots (0-shot result); \
             its one value is repeated in every column.",
            repeated.join(", ")
        )
    });
    Block {
        title,
        header,
        rows,
        footnote,
    }
}

/// The blocks to print: top-1 always, top-5 only when some cell has top-5 values.
fn blocks(cells: &[ResultCell]) -> Vec<Block> {
    let grid = Grid::new(cells);
    let mut out = vec![build_block(&grid, Metric::Top1)];
    if grid.has_top5() {
        out.push(build_block(&grid, Metric::Top5));
    }
    out
}

/// Text table for a terminal: one row per method, one column per shot count, cells
/// `"62.7 ± 1.3"` (accuracy %, mean ± sample std over draws); a top-1 block, then a top-5
/// block when top-5 values exist.
///
/// Zero-shot presentation: its result does not depend on the support set, so it gets no
/// "0 shots" column (which would be empty for every other method); instead its one value is
/// repeated in every column, so each column can be read against the baseline directly, and a
/// footnote under the block says so. The same applies to any method's 0-shot result standing
/// in for shot counts it has no cell for. Missing cells show `-`; single-draw cells show no
/// `±`. Pairs given more than once are pooled.
pub fn text_table(cells: &[ResultCell]) -> String {
    if cells.is_empty() {
        return "(no results)\n".to_string();
    }
    let mut out = String::new();
    for (i, b) in blocks(cells).iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let ncols = b.header.len();
        // Widths in characters, not bytes: "±" is two bytes in UTF-8.
        let widths: Vec<usize> = (0..ncols)
            .map(|c| {
                std::iter::once(&b.header)
                    .chain(&b.rows)
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |row: &[String]| -> String {
            row.iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (s, &w))| {
                    if c == 0 {
                        format!("{s:<w$}")
                    } else {
                        format!("{s:>w$}")
                    }
                })
                .collect::<Vec<_>>()
                .join(" | ")
                .trim_end()
                .to_string()
        };
        let _ = writeln!(out, "{}", b.title);
        let _ = writeln!(out, "{}", line(&b.header));
        let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
        let _ = writeln!(out, "{}", rule.join("-+-"));
        for r in &b.rows {
            let _ = writeln!(out, "{}", line(r));
        }
        if let Some(f) = &b.footnote {
            let _ = writeln!(out, "{f}");
        }
    }
    out
}

/// Escapes text for a Markdown table cell: a bare `|` would start a new column.
fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// GitHub Markdown version of [`text_table`]: the same top-1 (and, when present, top-5)
/// blocks, each with a bold title, a header row `| method | 1 shot | 2 shots | ... |`, numbers
/// right-aligned, and the zero-shot footnote in italics.
pub fn markdown_table(cells: &[ResultCell]) -> String {
    if cells.is_empty() {
        return "_No results._\n".to_string();
    }
    let mut out = String::new();
    for (i, b) in blocks(cells).iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let row = |r: &[String]| -> String {
            let cells: Vec<String> = r.iter().map(|s| md_escape(s)).collect();
            format!("| {} |", cells.join(" | "))
        };
        let _ = writeln!(out, "**{}**\n", b.title);
        let _ = writeln!(out, "{}", row(&b.header));
        let mut align = vec![":---".to_string()];
        align.extend(std::iter::repeat_n(
            "---:".to_string(),
            b.header.len().saturating_sub(1),
        ));
        let _ = writeln!(out, "|{}|", align.join("|"));
        for r in &b.rows {
            let _ = writeln!(out, "{}", row(r));
        }
        if let Some(f) = &b.footnote {
            let _ = writeln!(out, "\n_{}_", md_escape(f));
        }
    }
    out
}

/// A float for CSV: Rust's shortest representation that parses back to the same value, so
/// round trips are exact. NaN and infinities come out as `NaN`, `inf`, `-inf`.
fn csv_num(x: f64) -> String {
    format!("{x}")
}

/// `(mean, std)` fields, empty when there are no values.
fn csv_stats(v: &[f64]) -> (String, String) {
    if v.is_empty() {
        (String::new(), String::new())
    } else {
        let (m, s) = mean_std(v);
        (csv_num(m), csv_num(s))
    }
}

/// CSV, long format (one row per (method, shots) pair, in table order), header
/// `method,shots,draws,top1_mean,top1_std,top5_mean,top5_std,top1_all,top5_all`.
///
/// Unlike the tables, values are fractions in [0, 1] at full precision, because this file is
/// for scripts; `*_all` are the per-draw values joined with `;` so the statistics can be
/// recomputed or tested. `draws` is the number of top-1 values; mean/std fields are empty when
/// there are no values, and std is 0 for one draw (see [`mean_std`]). Zero-shot is written
/// once, with `shots` 0. Fields are quoted per RFC 4180 when needed; lines end with `\n`.
pub fn results_csv(cells: &[ResultCell]) -> String {
    let grid = Grid::new(cells);
    let mut out = String::from(
        "method,shots,draws,top1_mean,top1_std,top5_mean,top5_std,top1_all,top5_all\n",
    );
    for m in &grid.methods {
        for &s in &grid.shots {
            let Some(p) = grid.cells.get(&(*m, s)) else {
                continue;
            };
            let (t1m, t1s) = csv_stats(&p.top1);
            let (t5m, t5s) = csv_stats(&p.top5);
            let join = |v: &[f64]| v.iter().map(|&x| csv_num(x)).collect::<Vec<_>>().join(";");
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{}",
                csv_field(m),
                s,
                p.top1.len(),
                t1m,
                t1s,
                t5m,
                t5s,
                join(&p.top1),
                join(&p.top5)
            );
        }
    }
    out
}

/// CSV of training curves, one row per point in input order, header
/// `method,shots,seed,epoch,train_loss,train_acc,cv_acc,test_acc`; accuracies are fractions,
/// and an unknown `cv_acc`/`test_acc` is an empty field (not 0, which would read as a result).
pub fn curves_csv(points: &[CurvePoint]) -> String {
    let mut out = String::from("method,shots,seed,epoch,train_loss,train_acc,cv_acc,test_acc\n");
    let opt = |x: Option<f64>| x.map(csv_num).unwrap_or_default();
    for p in points {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{}",
            csv_field(&p.method),
            p.shots,
            p.seed,
            p.epoch,
            csv_num(p.train_loss),
            csv_num(p.train_acc),
            opt(p.cv_acc),
            opt(p.test_acc)
        );
    }
    out
}

/// Creates the parent directory of `path` if it has one, so that `--out results/run1/x.csv`
/// works without a separate `mkdir`.
fn create_parent(path: &Path) -> Result<(), ReportError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|source| ReportError::CreateDir {
                dir: dir.to_path_buf(),
                path: path.to_path_buf(),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// Writes `text` to `path`, creating parent directories; the error names the path.
pub fn write_file(path: &Path, text: &str) -> Result<(), ReportError> {
    create_parent(path)?;
    std::fs::write(path, text).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Registers the embedded font with plotters, once per process. plotters' font table is
/// global and re-registering on every plot would be wasted work; the outcome is cached so a
/// broken font is reported on every call rather than only the first.
fn ensure_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_BYTES)
                .map_err(|_| "the embedded plot font could not be parsed".to_string())
        })
        .clone()
}

/// Running mean that ignores non-finite values: a diverged run's NaN loss would otherwise
/// poison the average and break the axis ranges.
#[derive(Debug, Default, Clone, Copy)]
struct Mean {
    sum: f64,
    n: usize,
}

impl Mean {
    fn add(&mut self, x: f64) {
        if x.is_finite() {
            self.sum += x;
            self.n += 1;
        }
    }

    fn get(self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

/// Per-epoch means over seeds of one method.
#[derive(Debug, Default, Clone, Copy)]
struct EpochMeans {
    loss: Mean,
    train: Mean,
    cv: Mean,
    test: Mean,
}

/// One method's curve, averaged over seeds.
#[derive(Debug)]
struct MethodCurve {
    method: String,
    seeds: usize,
    epochs: BTreeMap<usize, EpochMeans>,
}

impl MethodCurve {
    /// `(epoch, value)` points where `f` has a value; accuracies scaled to percent by `scale`.
    fn series(&self, f: impl Fn(&EpochMeans) -> Mean, scale: f64) -> Vec<(i32, f64)> {
        self.epochs
            .iter()
            .filter_map(|(&e, m)| {
                let x = i32::try_from(e).ok()?;
                f(m).get().map(|v| (x, v * scale))
            })
            .collect()
    }
}

/// Averages the points with `shots` support images per method and epoch. Runs of different
/// lengths (early stopping) are averaged where present: epoch 30 of a method is the mean of
/// the seeds that reached epoch 30.
fn average_curves(points: &[CurvePoint], shots: usize) -> Vec<MethodCurve> {
    let selected: Vec<&CurvePoint> = points.iter().filter(|p| p.shots == shots).collect();
    method_order(selected.iter().map(|p| p.method.as_str()))
        .into_iter()
        .map(|method| {
            let mut seeds = BTreeSet::new();
            let mut epochs: BTreeMap<usize, EpochMeans> = BTreeMap::new();
            for p in selected.iter().filter(|p| p.method == method) {
                seeds.insert(p.seed);
                let e = epochs.entry(p.epoch).or_default();
                e.loss.add(p.train_loss);
                e.train.add(p.train_acc);
                if let Some(v) = p.cv_acc {
                    e.cv.add(v);
                }
                if let Some(v) = p.test_acc {
                    e.test.add(v);
                }
            }
            MethodCurve {
                method: method.to_string(),
                seeds: seeds.len(),
                epochs,
            }
        })
        .collect()
}

/// Axis range covering `values` with a margin, never empty (plotters needs a non-zero span).
fn padded_range(values: impl Iterator<Item = f64>, floor_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if floor_zero {
        lo = lo.min(0.0);
    }
    let span = hi - lo;
    let pad = if span > 0.0 { span * 0.05 } else { 1.0 };
    if !floor_zero || lo < 0.0 {
        lo -= pad;
    }
    hi += pad;
    (lo, hi)
}

/// Accuracy axis in percent: from the nearest multiple of 10 below the data to just above the
/// data, so curves that differ by a few points are not squashed against a fixed 0–100 scale.
fn accuracy_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 100.0);
    }
    // Capped at 90 so that curves sitting at 100 % still get a 10-point span.
    let lo = ((lo / 10.0).floor() * 10.0).min(90.0);
    let hi = ((hi / 10.0).ceil() * 10.0).max(lo + 10.0);
    // A little headroom so a 100 % training curve is not hidden under the frame.
    (lo, hi + 1.0)
}

/// Converts a plotters error into a [`ReportError::Plot`] naming the figure.
fn plot_err(path: &Path) -> impl Fn(&dyn Display) -> ReportError + '_ {
    move |e| ReportError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// PNG figure in the style of a paper's training-curve figure, for one shot count: left panel
/// training loss per epoch, right panel accuracy per epoch (train solid, cross-validation on
/// held-out shots lighter, test dashed, each only when present), one colour per method,
/// averaged over seeds per epoch (runs of different lengths are averaged where present;
/// non-finite values are skipped). The image is [`CURVE_PLOT_SIZE`] pixels.
///
/// One shot count per figure because curves for different support-set sizes differ in scale
/// and length and would be unreadable overlaid. Returns [`ReportError::NoCurves`] (listing the
/// shot counts that do have curves) when nothing matches `shots`.
pub fn plot_curves(points: &[CurvePoint], shots: usize, path: &Path) -> Result<(), ReportError> {
    let curves = average_curves(points, shots);
    if curves.is_empty() {
        let available: BTreeSet<usize> = points.iter().map(|p| p.shots).collect();
        return Err(ReportError::NoCurves {
            shots,
            path: path.to_path_buf(),
            available: available.into_iter().collect(),
        });
    }
    ensure_font().map_err(|m| plot_err(path)(&m))?;

    let (w, h) = CURVE_PLOT_SIZE;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let backend = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut buf, (w, h))
            .map_err(|e| plot_err(path)(&e))?;
        let root = backend.into_drawing_area();
        draw_figure(&root, &curves, shots).map_err(|m| plot_err(path)(&m))?;
        root.present().map_err(|e| plot_err(path)(&e))?;
    }

    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| ReportError::Plot {
        path: path.to_path_buf(),
        message: "pixel buffer does not match the image size".to_string(),
    })?;
    create_parent(path)?;
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|source| ReportError::Png {
            path: path.to_path_buf(),
            source,
        })
}

/// Draws both panels; errors come back as text for [`plot_curves`] to attach the path to.
fn draw_figure(
    root: &DrawingArea<BitMapBackend<'_, RGBPixel>, Shift>,
    curves: &[MethodCurve],
    shots: usize,
) -> Result<(), String> {
    let s = |e: &dyn Display| e.to_string();
    root.fill(&WHITE).map_err(|e| s(&e))?;
    let title = format!(
        "Training curves, {} per class (mean over seeds)",
        shots_header(shots)
    );
    let root = root.titled(&title, (FONT_FAMILY, 24)).map_err(|e| s(&e))?;
    let panels = root.split_evenly((1, 2));
    let (Some(left), Some(right)) = (panels.first(), panels.get(1)) else {
        return Err("could not split the figure into two panels".to_string());
    };

    let colour = |i: usize| PALETTE[i % PALETTE.len()];
    let all_epochs = || curves.iter().flat_map(|c| c.epochs.keys().copied());
    let first = all_epochs().min().unwrap_or(1);
    let last = all_epochs().max().unwrap_or(1);
    let to_i32 = |e: usize| i32::try_from(e).unwrap_or(i32::MAX);
    let (x0, x1) = if first == last {
        (
            to_i32(first).saturating_sub(1),
            to_i32(first).saturating_add(1),
        )
    } else {
        (to_i32(first), to_i32(last))
    };
    let label_font = (FONT_FAMILY, 15);
    let desc_font = (FONT_FAMILY, 17);

    // Left panel: training loss.
    let losses: Vec<Vec<(i32, f64)>> = curves.iter().map(|c| c.series(|m| m.loss, 1.0)).collect();
    let (y0, y1) = padded_range(losses.iter().flatten().map(|p| p.1), true);
    let mut chart = ChartBuilder::on(left)
        .caption("Training loss", (FONT_FAMILY, 19))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| s(&e))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("loss")
        .label_style(label_font)
        .axis_desc_style(desc_font)
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .draw()
        .map_err(|e| s(&e))?;
    for (i, (c, pts)) in curves.iter().zip(&losses).enumerate() {
        let col = colour(i);
        let style = col.stroke_width(2);
        let seeds = if c.seeds == 1 { "seed" } else { "seeds" };
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), style))
            .map_err(|e| s(&e))?
            .label(format!("{} ({} {seeds})", c.method, c.seeds))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
        draw_lone_point(&mut chart, pts, col.filled()).map_err(|e| s(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(label_font)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(|e| s(&e))?;

    // Right panel: accuracy (train, cross-validation, test).
    let train: Vec<_> = curves
        .iter()
        .map(|c| c.series(|m| m.train, 100.0))
        .collect();
    let cv: Vec<_> = curves.iter().map(|c| c.series(|m| m.cv, 100.0)).collect();
    let test: Vec<_> = curves.iter().map(|c| c.series(|m| m.test, 100.0)).collect();
    let all_acc = train.iter().chain(&cv).chain(&test).flatten().map(|p| p.1);
    let (a0, a1) = accuracy_range(all_acc);
    let mut chart = ChartBuilder::on(right)
        .caption("Accuracy", (FONT_FAMILY, 19))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, a0..a1)
        .map_err(|e| s(&e))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("accuracy (%)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(label_font)
        .axis_desc_style(desc_font)
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .draw()
        .map_err(|e| s(&e))?;
    for (i, ((tr, cv), te)) in train.iter().zip(&cv).zip(&test).enumerate() {
        let col = colour(i);
        chart
            .draw_series(LineSeries::new(tr.iter().copied(), col.stroke_width(2)))
            .map_err(|e| s(&e))?;
        draw_lone_point(&mut chart, tr, col.filled()).map_err(|e| s(&e))?;
        chart
            .draw_series(LineSeries::new(
                cv.iter().copied(),
                col.mix(0.4).stroke_width(2),
            ))
            .map_err(|e| s(&e))?;
        draw_lone_point(&mut chart, cv, col.mix(0.4).filled()).map_err(|e| s(&e))?;
        chart
            .draw_series(DashedLineSeries::new(
                te.iter().copied(),
                8,
                5,
                col.stroke_width(2),
            ))
            .map_err(|e| s(&e))?;
        draw_lone_point(&mut chart, te, col.filled()).map_err(|e| s(&e))?;
    }
    // The legend explains line styles (colours are explained in the left panel), with one
    // entry per kind of accuracy that actually occurs.
    let grey = BLACK.mix(0.7);
    let legend_entries: [(&str, bool, ShapeStyle, bool); 3] = [
        ("train", true, grey.stroke_width(2), false),
        (
            "cv (held-out shots)",
            cv.iter().any(|v| !v.is_empty()),
            BLACK.mix(0.3).stroke_width(2),
            false,
        ),
        (
            "test",
            test.iter().any(|v| !v.is_empty()),
            grey.stroke_width(2),
            true,
        ),
    ];
    for (name, present, style, dashed) in legend_entries {
        if !present {
            continue;
        }
        let anno = chart
            .draw_series(std::iter::empty::<Circle<(i32, f64), i32>>())
            .map_err(|e| s(&e))?;
        anno.label(name);
        if dashed {
            anno.legend(move |(x, y)| {
                DashedPathElement::new(vec![(x, y), (x + 22, y)], 6, 4, style)
            });
        } else {
            anno.legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(label_font)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(|e| s(&e))?;
    Ok(())
}

/// A line through one point draws nothing, so a single-epoch series gets a dot instead.
fn draw_lone_point<'a, DB, CT>(
    chart: &mut plotters::chart::ChartContext<'a, DB, CT>,
    pts: &[(i32, f64)],
    style: ShapeStyle,
) -> Result<(), plotters::drawing::DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: plotters::backend::DrawingBackend + 'a,
    CT: plotters::coord::CoordTranslate<From = (i32, f64)>,
{
    if let [p] = pts {
        chart.draw_series(std::iter::once(Circle::new(*p, 4, style)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(method: &str, shots: usize, top1: &[f64], top5: &[f64]) -> ResultCell {
        ResultCell {
            method: method.to_string(),
            shots,
            top1: top1.to_vec(),
            top5: top5.to_vec(),
        }
    }

    fn sample_cells() -> Vec<ResultCell> {
        vec![
            cell("jclip", 2, &[0.70, 0.72, 0.74], &[0.90, 0.91, 0.92]),
            cell("jclip", 1, &[0.60, 0.62, 0.64], &[0.85, 0.86, 0.87]),
            cell("tip-f", 1, &[0.61, 0.63, 0.65], &[0.86, 0.87, 0.88]),
            cell("zero-shot", 0, &[0.582], &[0.801]),
            cell("tip-f", 2, &[0.71, 0.73, 0.75], &[0.91, 0.92, 0.93]),
        ]
    }

    fn point(method: &str, shots: usize, seed: u64, epoch: usize, loss: f64) -> CurvePoint {
        CurvePoint {
            method: method.to_string(),
            shots,
            seed,
            epoch,
            train_loss: loss,
            train_acc: 0.5 + 0.04 * epoch as f64,
            cv_acc: Some(0.45 + 0.03 * epoch as f64),
            test_acc: if epoch % 2 == 0 {
                Some(0.4 + 0.03 * epoch as f64)
            } else {
                None
            },
        }
    }

    /// Minimal RFC 4180 reader for the round-trip tests (quoted fields, doubled quotes).
    fn parse_csv(text: &str) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        let mut row = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                (true, '"') => quoted = false,
                (true, c) => field.push(c),
                (false, '"') => quoted = true,
                (false, ',') => row.push(std::mem::take(&mut field)),
                (false, '\n') => {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                (false, c) => field.push(c),
            }
        }
        assert!(
            field.is_empty() && row.is_empty(),
            "CSV must end with a newline"
        );
        rows
    }

    fn nums(s: &str) -> Vec<f64> {
        if s.is_empty() {
            return Vec::new();
        }
        s.split(';').map(|x| x.parse().unwrap()).collect()
    }

    #[test]
    fn mean_std_known_values() {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, sum of squared deviations 32, sample var 32/7.
        let (m, s) = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert!((m - 5.0).abs() < 1e-12);
        assert!((s - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        let (m, s) = mean_std(&[0.6, 0.62, 0.64]);
        assert!((m - 0.62).abs() < 1e-12);
        assert!((s - 0.02).abs() < 1e-12);
        assert_eq!(mean_std(&[0.3]), (0.3, 0.0));
        let (m, s) = mean_std(&[]);
        assert!(m.is_nan());
        assert_eq!(s, 0.0);
    }

    #[test]
    fn text_table_cells_and_order() {
        let t = text_table(&sample_cells());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("Top-1 accuracy (%), mean ± std over 3 draws"));
        // Header: method column then ascending shot columns, no "0 shots" column.
        let header = lines[1];
        assert!(header.starts_with("method"));
        let one = header.find("1 shot").unwrap();
        let two = header.find("2 shots").unwrap();
        assert!(one < two);
        assert!(!header.contains("0 shots"));
        // Rows: zero-shot first, then first-appearance order.
        let rows: Vec<&str> = lines[3..6].to_vec();
        assert!(rows[0].starts_with("zero-shot"));
        assert!(rows[1].starts_with("jclip"));
        assert!(rows[2].starts_with("tip-f"));
        // Zero-shot value repeated in both columns, single draw without "±".
        assert_eq!(rows[0].matches("58.2").count(), 2);
        assert!(!rows[0].contains('±'));
        // jclip: 1 shot 62.0 ± 2.0 before 2 shots 72.0 ± 2.0.
        let a = rows[1].find("62.0 ± 2.0").unwrap();
        let b = rows[1].find("72.0 ± 2.0").unwrap();
        assert!(a < b);
        assert!(rows[2].contains("63.0 ± 2.0") && rows[2].contains("73.0 ± 2.0"));
        assert!(lines[6].starts_with("zero-shot: does not depend on the number of shots"));
        // Columns line up: every row of the block has the same width in characters.
        let w = lines[1].chars().count();
        for l in &lines[1..6] {
            assert_eq!(l.chars().count(), w, "misaligned line {l:?}");
        }
        // Top-5 block.
        let top5 = t.find("Top-5 accuracy (%)").unwrap();
        let rest = &t[top5..];
        assert!(rest.contains("80.1"));
        assert!(rest.contains("86.0 ± 1.0") && rest.contains("91.0 ± 1.0"));
    }

    #[test]
    fn text_table_missing_cells_and_no_top5() {
        let cells = vec![cell("a", 4, &[0.5, 0.7], &[]), cell("b", 1, &[0.25], &[])];
        let t = text_table(&cells);
        assert!(
            !t.contains("Top-5"),
            "no top-5 values, no top-5 block:\n{t}"
        );
        let a = t.lines().find(|l| l.starts_with("a ")).unwrap();
        let cols: Vec<&str> = a.split('|').map(str::trim).collect();
        assert_eq!(cols, ["a", "-", "60.0 ± 14.1"]);
        let b = t.lines().find(|l| l.starts_with("b ")).unwrap();
        let cols: Vec<&str> = b.split('|').map(str::trim).collect();
        assert_eq!(cols, ["b", "25.0", "-"]);
        assert!(!t.contains("repeated"));
        assert_eq!(text_table(&[]), "(no results)\n");
    }

    #[test]
    fn zero_shot_only_gets_a_column() {
        let t = text_table(&[cell("zero-shot", 0, &[0.5], &[])]);
        assert!(t.starts_with("Top-1 accuracy (%)\n"), "{t}");
        assert!(t.contains("0 shots"));
        assert!(t
            .lines()
            .any(|l| l.starts_with("zero-shot") && l.ends_with("50.0")));
        assert!(!t.contains("repeated"));
    }

    #[test]
    fn markdown_table_layout() {
        let md = markdown_table(&sample_cells());
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(
            lines[0],
            "**Top-1 accuracy (%), mean ± std over 3 draws of the support set**"
        );
        assert_eq!(lines[2], "| method | 1 shot | 2 shots |");
        assert_eq!(lines[3], "|:---|---:|---:|");
        assert_eq!(lines[4], "| zero-shot | 58.2 | 58.2 |");
        assert_eq!(lines[5], "| jclip | 62.0 ± 2.0 | 72.0 ± 2.0 |");
        assert_eq!(lines[6], "| tip-f | 63.0 ± 2.0 | 73.0 ± 2.0 |");
        assert!(lines[8].starts_with("_zero-shot: does not depend"));
        assert!(md.contains("**Top-5 accuracy (%)"));
        assert!(md.contains("| jclip | 86.0 ± 1.0 | 91.0 ± 1.0 |"));
        // A pipe in a method name must not create a column.
        let md = markdown_table(&[cell("a|b", 1, &[0.5], &[])]);
        assert!(md.contains("| a\\|b | 50.0 |"));
    }

    #[test]
    fn results_csv_round_trip() {
        let mut cells = sample_cells();
        cells.push(cell("odd, \"name\"", 1, &[0.1, 0.2], &[]));
        let csv = results_csv(&cells);
        let rows = parse_csv(&csv);
        assert_eq!(
            rows[0].join(","),
            "method,shots,draws,top1_mean,top1_std,top5_mean,top5_std,top1_all,top5_all"
        );
        let body = &rows[1..];
        let keys: Vec<(String, usize)> = body
            .iter()
            .map(|r| (r[0].clone(), r[1].parse().unwrap()))
            .collect();
        assert_eq!(
            keys,
            [
                ("zero-shot".to_string(), 0),
                ("jclip".to_string(), 1),
                ("jclip".to_string(), 2),
                ("tip-f".to_string(), 1),
                ("tip-f".to_string(), 2),
                ("odd, \"name\"".to_string(), 1),
            ]
        );
        for r in body {
            assert_eq!(r.len(), 9);
            let orig = cells
                .iter()
                .find(|c| c.method == r[0] && c.shots.to_string() == r[1])
                .unwrap();
            assert_eq!(r[2].parse::<usize>().unwrap(), orig.top1.len());
            assert_eq!(nums(&r[7]), orig.top1, "per-draw values are exact");
            assert_eq!(nums(&r[8]), orig.top5);
            let (m, s) = mean_std(&orig.top1);
            assert_eq!(r[3].parse::<f64>().unwrap(), m);
            assert_eq!(r[4].parse::<f64>().unwrap(), s);
            if orig.top5.is_empty() {
                assert!(r[5].is_empty() && r[6].is_empty());
            } else {
                let (m, s) = mean_std(&orig.top5);
                assert_eq!(r[5].parse::<f64>().unwrap(), m);
                assert_eq!(r[6].parse::<f64>().unwrap(), s);
            }
        }
        assert!(csv.contains("\"odd, \"\"name\"\"\""));
    }

    #[test]
    fn duplicate_pairs_are_pooled() {
        let cells = vec![cell("a", 1, &[0.5], &[]), cell("a", 1, &[0.7], &[])];
        let rows = parse_csv(&results_csv(&cells));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1][2], "2");
        assert_eq!(nums(&rows[1][7]), [0.5, 0.7]);
        assert!(text_table(&cells).contains("60.0 ± 14.1"));
    }

    #[test]
    fn curves_csv_empty_fields_for_none() {
        let pts = vec![point("jclip", 4, 7, 1, 1.25), point("jclip", 4, 7, 2, 0.75)];
        let rows = parse_csv(&curves_csv(&pts));
        assert_eq!(
            rows[0].join(","),
            "method,shots,seed,epoch,train_loss,train_acc,cv_acc,test_acc"
        );
        assert_eq!(rows.len(), 3);
        for (r, p) in rows[1..].iter().zip(&pts) {
            assert_eq!(r[0], p.method);
            assert_eq!(r[1].parse::<usize>().unwrap(), p.shots);
            assert_eq!(r[2].parse::<u64>().unwrap(), p.seed);
            assert_eq!(r[3].parse::<usize>().unwrap(), p.epoch);
            assert_eq!(r[4].parse::<f64>().unwrap(), p.train_loss);
            assert_eq!(r[5].parse::<f64>().unwrap(), p.train_acc);
            assert_eq!(r[6].parse::<f64>().ok(), p.cv_acc);
            let test = (!r[7].is_empty()).then(|| r[7].parse::<f64>().unwrap());
            assert_eq!(test, p.test_acc);
        }
        // Epoch 1 has no test accuracy: the field is empty, not 0.
        assert_eq!(rows[1][7], "");
        assert!(!rows[2][7].is_empty());
    }

    #[test]
    fn curves_are_averaged_where_present() {
        let mut pts = Vec::new();
        for e in 1..=5 {
            pts.push(point("a", 2, 1, e, 1.0));
        }
        for e in 1..=3 {
            pts.push(point("a", 2, 2, e, 3.0));
        }
        pts.push(point("a", 8, 1, 1, 100.0)); // other shot count: ignored
        let mut nan = point("a", 2, 3, 1, f64::NAN);
        nan.train_acc = f64::NAN;
        pts.push(nan);
        let curves = average_curves(&pts, 2);
        assert_eq!(curves.len(), 1);
        assert_eq!(curves[0].seeds, 3);
        let loss = curves[0].series(|m| m.loss, 1.0);
        assert_eq!(loss, [(1, 2.0), (2, 2.0), (3, 2.0), (4, 1.0), (5, 1.0)]);
        let test = curves[0].series(|m| m.test, 100.0);
        assert_eq!(test.iter().map(|p| p.0).collect::<Vec<_>>(), [2, 4]);
        // Zero-shot first even when it appears later.
        let order = method_order(["b", "zero-shot", "a", "b"].into_iter());
        assert_eq!(order, ["zero-shot", "b", "a"]);
    }

    #[test]
    fn plot_curves_writes_a_real_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/curves.png");
        let mut pts = Vec::new();
        for seed in 0..3 {
            for e in 1..=(10 + seed as usize) {
                let loss = 2.0 / e as f64 + seed as f64 * 0.01;
                pts.push(point("jclip", 4, seed, e, loss));
                // Lower accuracies so the two methods' lines do not overlap.
                let mut tip = point("tip-f", 4, seed, e, loss * 1.2);
                tip.train_acc -= 0.15;
                tip.cv_acc = tip.cv_acc.map(|v| v - 0.1);
                tip.test_acc = tip.test_acc.map(|v| v - 0.1);
                pts.push(tip);
            }
        }
        plot_curves(&pts, 4, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), CURVE_PLOT_SIZE);
        let colours: BTreeSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        assert!(colours.len() > 20, "only {} colours", colours.len());
        // Both methods' colours are drawn in both panels.
        let (w, _) = CURVE_PLOT_SIZE;
        for c in &PALETTE[..2] {
            let count = |left: bool| {
                img.enumerate_pixels()
                    .filter(|(x, _, p)| (*x < w / 2) == left && p.0 == [c.0, c.1, c.2])
                    .count()
            };
            assert!(
                count(true) > 100,
                "colour {c:?} missing from the loss panel"
            );
            assert!(
                count(false) > 100,
                "colour {c:?} missing from the accuracy panel"
            );
        }
    }

    #[test]
    fn plot_curves_single_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.png");
        plot_curves(&[point("a", 1, 0, 1, 0.5)], 1, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), CURVE_PLOT_SIZE);
    }

    #[test]
    fn plot_curves_empty_selection_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.png");
        let pts = vec![point("a", 1, 0, 1, 0.5), point("a", 16, 0, 1, 0.5)];
        let err = plot_curves(&pts, 4, &path).unwrap_err();
        assert!(matches!(err, ReportError::NoCurves { shots: 4, .. }));
        let msg = err.to_string();
        assert!(msg.contains("none.png") && msg.contains("1, 16"), "{msg}");
        assert!(!path.exists());
        assert!(plot_curves(&[], 1, &path).is_err());
    }

    #[test]
    fn write_file_creates_parents_and_names_path_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/table.md");
        write_file(&path, "hello\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
        // A file where a directory is needed makes creation fail.
        let bad = dir.path().join("a/b/table.md/x.csv");
        let msg = write_file(&bad, "x").unwrap_err().to_string();
        assert!(msg.contains("x.csv"), "{msg}");
    }

    #[test]
    fn embedded_font_registers() {
        assert_eq!(ensure_font(), Ok(()));
        assert_eq!(ensure_font(), Ok(()));
    }
}
