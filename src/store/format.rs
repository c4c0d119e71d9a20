//! Printing query results as an aligned table, JSON or CSV.
//!
//! The writers return `io::Result` and never panic: `clipd query | head`
//! closes the pipe early, and the caller should treat that error (see
//! [`is_broken_pipe`]) as a normal end, not a failure. Timestamps are RFC
//! 3339 UTC with milliseconds in every format.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, BufWriter, Write};
use std::str::FromStr;

use serde::Serialize;

use crate::store::{format_ts_ms, FrameRow, StatRow, Summary};

/// Output format of `clipd query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned columns for a terminal.
    #[default]
    Table,
    /// One JSON array of objects.
    Json,
    /// RFC 4180 CSV with a header row.
    Csv,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            _ => Err(format!(
                "invalid format {s:?}: expected \"table\", \"json\" or \"csv\""
            )),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Table => "table",
            Format::Json => "json",
            Format::Csv => "csv",
        })
    }
}

/// True for the error a writer gets when the reader of a pipe went away
/// (`clipd query | head`). Rust ignores SIGPIPE, so this arrives as an error
/// rather than killing the process; it means "stop writing", not "fail".
pub fn is_broken_pipe(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::BrokenPipe
}

/// One top-k entry in JSON output.
#[derive(Serialize)]
struct TopKJson<'a> {
    label: &'a str,
    score: f32,
}

/// A frame as a JSON object: the row plus a readable `ts`.
#[derive(Serialize)]
struct FrameJson<'a> {
    id: i64,
    ts: String,
    ts_ms: i64,
    source: &'a str,
    frame_ref: &'a str,
    label: Option<&'a str>,
    score: Option<f32>,
    topk: Vec<TopKJson<'a>>,
    model_id: &'a str,
    adapter_id: Option<&'a str>,
    latency_us: Option<u64>,
    refined_label: Option<&'a str>,
    refined_score: Option<f32>,
    refine_run_id: Option<i64>,
    error: Option<&'a str>,
}

impl<'a> From<&'a FrameRow> for FrameJson<'a> {
    fn from(r: &'a FrameRow) -> Self {
        FrameJson {
            id: r.id,
            ts: format_ts_ms(r.ts_ms),
            ts_ms: r.ts_ms,
            source: &r.source,
            frame_ref: &r.frame_ref,
            label: r.label.as_deref(),
            score: r.score,
            topk: r
                .topk
                .iter()
                .map(|(label, score)| TopKJson {
                    label,
                    score: *score,
                })
                .collect(),
            model_id: &r.model_id,
            adapter_id: r.adapter_id.as_deref(),
            latency_us: r.latency_us,
            refined_label: r.refined_label.as_deref(),
            refined_score: r.refined_score,
            refine_run_id: r.refine_run_id,
            error: r.error.as_deref(),
        }
    }
}

#[derive(Serialize)]
struct StatJson<'a> {
    bucket: String,
    bucket_start_ms: i64,
    label: &'a str,
    count: u64,
    mean_score: f32,
}

#[derive(Serialize)]
struct SummaryJson<'a> {
    total: u64,
    classified: u64,
    errors: u64,
    first: Option<String>,
    last: Option<String>,
    labels: &'a [crate::store::LabelCount],
}

/// Writes `items` as a JSON array with one object per line: valid JSON for
/// `jq`, and still readable and greppable as text.
fn write_json_array<W: Write, T: Serialize>(
    w: &mut W,
    items: impl Iterator<Item = T>,
) -> io::Result<()> {
    w.write_all(b"[")?;
    let mut any = false;
    for item in items {
        w.write_all(if any { b",\n  " } else { b"\n  " })?;
        serde_json::to_writer(&mut *w, &item)?;
        any = true;
    }
    w.write_all(if any { b"\n]\n" } else { b"]\n" })
}

/// Quotes a CSV field when it holds a delimiter, quote, line break or edge
/// whitespace (RFC 4180: inner quotes are doubled).
pub fn csv_field(s: &str) -> Cow<'_, str> {
    let needs = s.contains([',', '"', '\n', '\r'])
        || s.starts_with(char::is_whitespace)
        || s.ends_with(char::is_whitespace);
    if needs {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(s)
    }
}

fn write_csv_record<W: Write>(w: &mut W, fields: &[String]) -> io::Result<()> {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        w.write_all(csv_field(f).as_bytes())?;
    }
    w.write_all(b"\n")
}

/// Replaces control characters (a newline in an error message) so one row
/// stays one line and the columns stay aligned.
fn cell(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Writes aligned columns separated by two spaces. `right[i]` right-aligns
/// column `i` (numbers). The last column is not padded, so lines carry no
/// trailing blanks.
fn write_table<W: Write>(
    w: &mut W,
    header: &[&str],
    right: &[bool],
    rows: &[Vec<String>],
) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (wd, c) in widths.iter_mut().zip(row) {
            *wd = (*wd).max(c.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(c.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(c);
            } else {
                line.push_str(c);
                if i != last {
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        // An empty last cell would leave the separator dangling.
        let line = line.trim_end();
        w.write_all(line.as_bytes())?;
        w.write_all(b"\n")?;
    }
    Ok(())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn score4(v: Option<f32>) -> String {
    v.map(|s| format!("{s:.4}")).unwrap_or_default()
}

/// Writes frame rows. The table shows the columns a person scans for (the
/// refined and error columns only when some row has one); JSON and CSV carry
/// every column.
pub fn write_rows<W: Write>(out: &mut W, rows: &[FrameRow], format: Format) -> io::Result<()> {
    let mut w = BufWriter::new(out);
    match format {
        Format::Json => write_json_array(&mut w, rows.iter().map(FrameJson::from))?,
        Format::Csv => {
            let header = [
                "id",
                "ts",
                "source",
                "frame_ref",
                "label",
                "score",
                "topk",
                "model_id",
                "adapter_id",
                "latency_us",
                "refined_label",
                "refined_score",
                "refine_run_id",
                "error",
            ];
            write_csv_record(&mut w, &header.map(String::from))?;
            for r in rows {
                // serde_json only fails on non-string map keys; none here.
                let topk = serde_json::to_string(&r.topk).unwrap_or_default();
                write_csv_record(
                    &mut w,
                    &[
                        r.id.to_string(),
                        format_ts_ms(r.ts_ms),
                        r.source.clone(),
                        r.frame_ref.clone(),
                        opt(r.label.as_deref()),
                        opt(r.score),
                        topk,
                        r.model_id.clone(),
                        opt(r.adapter_id.as_deref()),
                        opt(r.latency_us),
                        opt(r.refined_label.as_deref()),
                        opt(r.refined_score),
                        opt(r.refine_run_id),
                        opt(r.error.as_deref()),
                    ],
                )?;
            }
        }
        // Nothing matched: say so, rather than print a header over nothing.
        Format::Table if rows.is_empty() => writeln!(w, "0 frames")?,
        Format::Table => {
            let refined = rows.iter().any(|r| r.refined_label.is_some());
            let errors = rows.iter().any(|r| r.error.is_some());
            // The row id comes first: it names the frame for anything that refers to it later.
            let mut header = vec!["ID", "TIME", "SOURCE", "FRAME", "LABEL", "SCORE"];
            let mut right = vec![true, false, false, false, false, true];
            if refined {
                header.extend(["REFINED", "R.SCORE"]);
                right.extend([false, true]);
            }
            if errors {
                header.push("ERROR");
                right.push(false);
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let mut c = vec![
                        r.id.to_string(),
                        format_ts_ms(r.ts_ms),
                        cell(&r.source),
                        cell(&r.frame_ref),
                        cell(r.label.as_deref().unwrap_or("-")),
                        score4(r.score),
                    ];
                    if refined {
                        c.push(cell(r.refined_label.as_deref().unwrap_or("")));
                        c.push(score4(r.refined_score));
                    }
                    if errors {
                        c.push(cell(r.error.as_deref().unwrap_or("")));
                    }
                    c
                })
                .collect();
            write_table(&mut w, &header, &right, &cells)?;
        }
    }
    w.flush()
}

/// Writes per-bucket label counts from [`crate::store::Store::stats`].
pub fn write_stats<W: Write>(out: &mut W, rows: &[StatRow], format: Format) -> io::Result<()> {
    let mut w = BufWriter::new(out);
    match format {
        Format::Json => write_json_array(
            &mut w,
            rows.iter().map(|r| StatJson {
                bucket: format_ts_ms(r.bucket_start_ms),
                bucket_start_ms: r.bucket_start_ms,
                label: &r.label,
                count: r.count,
                mean_score: r.mean_score,
            }),
        )?,
        Format::Csv => {
            write_csv_record(
                &mut w,
                &["bucket", "label", "count", "mean_score"].map(String::from),
            )?;
            for r in rows {
                write_csv_record(
                    &mut w,
                    &[
                        format_ts_ms(r.bucket_start_ms),
                        r.label.clone(),
                        r.count.to_string(),
                        r.mean_score.to_string(),
                    ],
                )?;
            }
        }
        Format::Table => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        format_ts_ms(r.bucket_start_ms),
                        cell(&r.label),
                        r.count.to_string(),
                        format!("{:.4}", r.mean_score),
                    ]
                })
                .collect();
            write_table(
                &mut w,
                &["BUCKET", "LABEL", "COUNT", "MEAN SCORE"],
                &[false, false, true, true],
                &cells,
            )?;
        }
    }
    w.flush()
}

/// Writes a [`Summary`]: totals, time span and per-label counts. CSV gets
/// one row per label (`label,count,share,mean_score`), errors as the label
/// `(error)`, so the totals can be recomputed from it.
pub fn write_summary<W: Write>(out: &mut W, s: &Summary, format: Format) -> io::Result<()> {
    let mut w = BufWriter::new(out);
    let share = |n: u64| {
        if s.classified == 0 {
            0.0
        } else {
            n as f64 / s.classified as f64
        }
    };
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(
                &mut w,
                &SummaryJson {
                    total: s.total,
                    classified: s.classified,
                    errors: s.errors,
                    first: s.first_ts_ms.map(format_ts_ms),
                    last: s.last_ts_ms.map(format_ts_ms),
                    labels: &s.labels,
                },
            )?;
            w.write_all(b"\n")?;
        }
        Format::Csv => {
            write_csv_record(
                &mut w,
                &["label", "count", "share", "mean_score"].map(String::from),
            )?;
            for l in &s.labels {
                write_csv_record(
                    &mut w,
                    &[
                        l.label.clone(),
                        l.count.to_string(),
                        format!("{:.4}", share(l.count)),
                        l.mean_score.to_string(),
                    ],
                )?;
            }
            if s.errors > 0 {
                write_csv_record(
                    &mut w,
                    &[
                        "(error)".into(),
                        s.errors.to_string(),
                        String::new(),
                        String::new(),
                    ],
                )?;
            }
        }
        Format::Table => {
            writeln!(
                w,
                "frames: {} ({} classified, {} error{})",
                s.total,
                s.classified,
                s.errors,
                if s.errors == 1 { "" } else { "s" }
            )?;
            if let (Some(a), Some(b)) = (s.first_ts_ms, s.last_ts_ms) {
                writeln!(w, "span:   {} .. {}", format_ts_ms(a), format_ts_ms(b))?;
            }
            if !s.labels.is_empty() {
                writeln!(w)?;
                let cells: Vec<Vec<String>> = s
                    .labels
                    .iter()
                    .map(|l| {
                        vec![
                            cell(&l.label),
                            l.count.to_string(),
                            format!("{:.1}%", 100.0 * share(l.count)),
                            format!("{:.4}", l.mean_score),
                        ]
                    })
                    .collect();
                write_table(
                    &mut w,
                    &["LABEL", "COUNT", "SHARE", "MEAN SCORE"],
                    &[false, true, true, true],
                    &cells,
                )?;
            }
        }
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LabelCount;

    fn row(id: i64, label: &str, score: f32) -> FrameRow {
        FrameRow {
            id,
            ts_ms: 1_714_521_600_123,
            source: "cam".into(),
            frame_ref: format!("frames/{id}.jpg"),
            label: Some(label.into()),
            score: Some(score),
            topk: vec![(label.into(), score), ("cat".into(), 1.0 - score)],
            model_id: "sha".into(),
            adapter_id: None,
            latency_us: Some(1500),
            refined_label: None,
            refined_score: None,
            refine_run_id: None,
            error: None,
        }
    }

    fn render(rows: &[FrameRow], f: Format) -> String {
        let mut out = Vec::new();
        write_rows(&mut out, rows, f).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn csv_quotes_commas_quotes_and_newlines() {
        let mut r = row(1, "hot dog, with \"mustard\"", 0.5);
        r.error = None;
        let mut e = row(2, "x", 0.5);
        e.label = None;
        e.score = None;
        e.error = Some("line one\nline two".into());
        let csv = render(&[r, e], Format::Csv);
        let mut lines = csv.lines();
        assert_eq!(
            lines.next().unwrap(),
            "id,ts,source,frame_ref,label,score,topk,model_id,adapter_id,latency_us,\
             refined_label,refined_score,refine_run_id,error"
        );
        let first = lines.next().unwrap();
        assert!(
            first.starts_with(
                "1,2024-05-01T00:00:00.123Z,cam,frames/1.jpg,\"hot dog, with \"\"mustard\"\"\",0.5,"
            ),
            "{first}"
        );
        assert!(csv.contains(",\"line one\nline two\"\n"), "{csv}");
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field(" padded"), "\" padded\"");
    }

    #[test]
    fn json_parses_back() {
        let rows = [row(1, "dog, small", 0.75), row(2, "cat", 0.25)];
        let json = render(&rows, Format::Json);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 2);
        assert_eq!(arr[0]["label"], "dog, small");
        assert_eq!(arr[0]["score"], 0.75);
        assert_eq!(arr[0]["ts"], "2024-05-01T00:00:00.123Z");
        assert_eq!(arr[0]["topk"][1]["label"], "cat");
        assert_eq!(arr[0]["adapter_id"], serde_json::Value::Null);
        assert_eq!(arr[1]["id"], 2);
        let empty: serde_json::Value = serde_json::from_str(&render(&[], Format::Json)).unwrap();
        assert_eq!(empty, serde_json::json!([]));
    }

    #[test]
    fn table_is_aligned() {
        let mut long = row(2, "golden retriever", 0.5);
        long.error = None;
        let t = render(&[row(1, "dog", 0.875), long], Format::Table);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID "), "{t}");
        assert!(lines[1].trim_start().starts_with("1 "), "{t}");
        assert_eq!(render(&[], Format::Table), "0 frames\n");
        // Right-aligned score column: every line ends at the same width.
        assert_eq!(lines[0].len(), lines[1].len(), "{t}");
        assert_eq!(lines[1].len(), lines[2].len(), "{t}");
        assert!(lines[1].ends_with("0.8750"), "{t}");
        assert!(!t.contains("ERROR"));
        assert!(t.lines().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn stats_and_summary_render() {
        let stats = [StatRow {
            bucket_start_ms: 1_714_521_600_000,
            label: "a,b".into(),
            count: 3,
            mean_score: 0.5,
        }];
        let mut out = Vec::new();
        write_stats(&mut out, &stats, Format::Csv).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "bucket,label,count,mean_score\n2024-05-01T00:00:00.000Z,\"a,b\",3,0.5\n"
        );
        let mut out = Vec::new();
        write_stats(&mut out, &stats, Format::Json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v[0]["count"], 3);
        assert_eq!(v[0]["bucket"], "2024-05-01T00:00:00.000Z");

        let s = Summary {
            total: 4,
            classified: 3,
            errors: 1,
            first_ts_ms: Some(0),
            last_ts_ms: Some(1000),
            labels: vec![LabelCount {
                label: "dog".into(),
                count: 3,
                mean_score: 0.9,
            }],
        };
        let mut out = Vec::new();
        write_summary(&mut out, &s, Format::Table).unwrap();
        let t = String::from_utf8(out).unwrap();
        assert!(t.starts_with("frames: 4 (3 classified, 1 error)\n"), "{t}");
        assert!(t.contains("100.0%"), "{t}");
        let mut out = Vec::new();
        write_summary(&mut out, &s, Format::Json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["labels"][0]["label"], "dog");
        assert_eq!(v["first"], "1970-01-01T00:00:00.000Z");
    }

    /// A writer whose reader has gone away, like stdout into `head`.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn broken_pipe_is_returned_not_panicked() {
        let rows: Vec<FrameRow> = (0..2000).map(|i| row(i, "dog", 0.5)).collect();
        for f in [Format::Table, Format::Json, Format::Csv] {
            let err = write_rows(&mut ClosedPipe, &rows, f).unwrap_err();
            assert!(is_broken_pipe(&err), "{f}: {err}");
        }
        let err = write_stats(&mut ClosedPipe, &[], Format::Csv).unwrap_err();
        assert!(is_broken_pipe(&err));
    }

    #[test]
    fn format_parses() {
        assert_eq!("JSON".parse::<Format>(), Ok(Format::Json));
        assert!("xml".parse::<Format>().unwrap_err().contains("csv"));
    }
}
