//! `clipd query`: the history, read-only.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use clipd::store::{
    csv_field, format_ts_ms as format_ts, is_broken_pipe, now_ms, parse_time_spec, write_rows,
    write_stats, write_summary, Bucket, Format, FrameFilter, StateChange, Store,
};

use super::{load_config, UsageError};

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// History database [default: the config's store.path, else clipd.db].
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
    /// Configuration file (for its store.path).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Frames at or after this time: a duration ago (30s, 15m, 1h, 2d; `-1h` reads the same)
    /// or RFC 3339.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    since: Option<String>,
    /// Frames before this time (same forms as --since).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    until: Option<String>,
    /// Only frames with this top-1 label (any case: matched to the class's own spelling).
    #[arg(long)]
    label: Option<String>,
    /// Only frames whose top-1 score is at least this.
    #[arg(long, value_name = "SCORE")]
    min_score: Option<f32>,
    /// Only frames from this source.
    #[arg(long)]
    source: Option<String>,
    /// At most this many frames, newest first (0 = all).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Also list frames that could not be classified.
    #[arg(long)]
    errors: bool,
    /// Counts per label per time bucket instead of frames.
    #[arg(long, conflicts_with = "summary")]
    stats: bool,
    /// Bucket width for --stats: hour or day.
    #[arg(long, default_value = "hour", value_parser = parse_bucket)]
    bucket: Bucket,
    /// Totals and per-label counts instead of frames.
    #[arg(long)]
    summary: bool,
    /// Decision-state changes (smoothed refined labels per source) instead of frames.
    #[arg(long, conflicts_with_all = ["stats", "summary"])]
    changes: bool,
    /// table, json or csv.
    #[arg(long, default_value = "table", value_parser = parse_format)]
    format: Format,
}

fn parse_bucket(s: &str) -> Result<Bucket, String> {
    s.parse()
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
}

/// Print frames, statistics or a summary from the history database.
pub fn query(args: QueryArgs) -> Result<ExitCode> {
    // With --db alone the config is not needed (nor read: a broken ./clipd.toml stays out of it).
    let cfg = if args.db.is_none() || args.config.is_some() {
        load_config(args.config.as_deref())?
    } else {
        None
    };
    let db = match (&args.db, &cfg) {
        (Some(p), _) => p.clone(),
        (None, Some(cfg)) => cfg.resolve(&cfg.config.store.path),
        (None, None) => PathBuf::from("clipd.db"),
    };
    if args.min_score.is_some_and(|s| !s.is_finite()) {
        return Err(UsageError("--min-score must be a number".into()).into());
    }
    let now = now_ms();
    let mut filter = FrameFilter {
        since_ms: args
            .since
            .as_deref()
            .map(|s| parse_time_spec(s, now))
            .transpose()?,
        until_ms: args
            .until
            .as_deref()
            .map(|s| parse_time_spec(s, now))
            .transpose()?,
        label: None,
        min_score: args.min_score,
        source: args.source.clone(),
        limit: (args.limit > 0).then_some(args.limit),
        include_errors: args.errors,
    };
    let store = Store::open_read_only(&db)?;
    if let Some(label) = &args.label {
        let known = match &cfg {
            Some(c) => c.config.class_specs().into_iter().map(|c| c.name).collect(),
            None => store.class_names()?,
        };
        filter.label = Some(resolve_label(label, &known));
    }
    let mut out = std::io::stdout().lock();
    let written = if args.changes {
        let changes = store.state_changes(
            filter.since_ms,
            filter.until_ms,
            filter.source.as_deref(),
            args.limit,
        )?;
        write_changes(&mut out, &changes, args.format)
    } else if args.stats {
        write_stats(&mut out, &store.stats(&filter, args.bucket)?, args.format)
    } else if args.summary {
        write_summary(&mut out, &store.summary(&filter)?, args.format)
    } else {
        write_rows(&mut out, &store.query_frames(&filter)?, args.format)
    };
    match written {
        // `clipd query | head`: the reader has what it wanted.
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e).context("writing results")),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

/// State changes, newest first.
fn write_changes(
    out: &mut impl Write,
    changes: &[StateChange],
    format: Format,
) -> std::io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, changes).map_err(std::io::Error::other)?;
            writeln!(out)?;
        }
        Format::Csv => {
            writeln!(out, "ts,source,from_label,to_label,agreement,n_frames")?;
            for c in changes {
                writeln!(
                    out,
                    "{},{},{},{},{:.3},{}",
                    format_ts(c.ts_ms),
                    csv_field(&c.source),
                    csv_field(c.from_label.as_deref().unwrap_or("")),
                    csv_field(&c.to_label),
                    c.agreement,
                    c.n_frames
                )?;
            }
        }
        Format::Table => {
            writeln!(
                out,
                "{:<24}  {:<16}  {:<20}  {:<20}  {:>9}  {:>6}",
                "time", "source", "from", "to", "agreement", "frames"
            )?;
            for c in changes {
                writeln!(
                    out,
                    "{:<24}  {:<16}  {:<20}  {:<20}  {:>8.0}%  {:>6}",
                    format_ts(c.ts_ms),
                    c.source,
                    c.from_label.as_deref().unwrap_or("-"),
                    c.to_label,
                    100.0 * c.agreement,
                    c.n_frames
                )?;
            }
        }
    }
    out.flush()
}

/// The class `label` names, in the class's own spelling (labels are matched without regard to
/// case); a label that is no class is kept as written, with a note on stderr saying so.
fn resolve_label(label: &str, known: &[String]) -> String {
    if let Some(k) = known.iter().find(|k| k.eq_ignore_ascii_case(label.trim())) {
        return k.clone();
    }
    if !known.is_empty() {
        let list: Vec<&str> = known.iter().map(String::as_str).take(12).collect();
        let more = if known.len() > list.len() {
            ", …"
        } else {
            ""
        };
        eprintln!(
            "clipd: note: {label:?} is not a configured class, so no frame is labelled with it (classes: {}{more})",
            list.join(", ")
        );
    }
    label.to_string()
}

#[cfg(test)]
mod tests {
    use super::resolve_label;

    #[test]
    fn labels_match_the_class_in_any_case() {
        let known = vec!["dog".to_string(), "Golden Retriever".to_string()];
        assert_eq!(resolve_label("DOG", &known), "dog");
        assert_eq!(
            resolve_label("golden retriever", &known),
            "Golden Retriever"
        );
        assert_eq!(resolve_label("cat", &known), "cat");
    }
}
