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
    /// Frames at or after this time: a duration ago (30s, 15m, 1h, 2d) or RFC 3339.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Frames before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only frames with this top-1 label.
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
    let db = match args.db.clone() {
        Some(p) => p,
        None => match load_config(args.config.as_deref())? {
            Some(cfg) => cfg.resolve(&cfg.config.store.path),
            None => PathBuf::from("clipd.db"),
        },
    };
    if args.min_score.is_some_and(|s| !s.is_finite()) {
        return Err(UsageError("--min-score must be a number".into()).into());
    }
    let now = now_ms();
    let filter = FrameFilter {
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
        label: args.label.clone(),
        min_score: args.min_score,
        source: args.source.clone(),
        limit: (args.limit > 0).then_some(args.limit),
        include_errors: args.errors,
    };
    let store = Store::open_read_only(&db)?;
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
