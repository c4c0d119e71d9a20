//! Reading the history back: frame listings, per-bucket statistics and the
//! run summary.
//!
//! Every [`FrameFilter`] field maps onto an indexed column (see
//! `migrations/0001_init.sql`); the `explain` tests below hold the query
//! planner to that as the schema evolves.

use rusqlite::types::Value;
use serde::Serialize;

use crate::store::{Ctx, Store, StoreError};

/// Which frames to read. `None`/`false` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameFilter {
    /// Only frames at or after this time (UTC epoch ms, inclusive).
    pub since_ms: Option<i64>,
    /// Only frames before this time (UTC epoch ms, exclusive).
    pub until_ms: Option<i64>,
    /// Only frames whose top-1 label is exactly this.
    pub label: Option<String>,
    /// Only frames whose top-1 score is at least this.
    pub min_score: Option<f32>,
    /// Only frames from this source.
    pub source: Option<String>,
    /// At most this many rows (newest first). Ignored by stats and summary.
    pub limit: Option<usize>,
    /// Also list frames that could not be classified. Ignored by stats
    /// (which count labels) and summary (which always counts errors).
    pub include_errors: bool,
}

/// One stored frame, as `clipd query` lists it. The embedding is left out
/// (read it with [`Store::frame_embedding`]): it is most of a row's size and
/// no listing needs it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameRow {
    pub id: i64,
    pub ts_ms: i64,
    pub source: String,
    pub frame_ref: String,
    pub label: Option<String>,
    pub score: Option<f32>,
    pub topk: Vec<(String, f32)>,
    pub model_id: String,
    pub adapter_id: Option<String>,
    pub latency_us: Option<u64>,
    pub refined_label: Option<String>,
    pub refined_score: Option<f32>,
    pub refine_run_id: Option<i64>,
    pub error: Option<String>,
}

/// Width of a statistics bucket. Buckets are aligned to UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bucket {
    #[default]
    Hour,
    Day,
}

impl Bucket {
    /// Bucket width in milliseconds.
    pub fn width_ms(self) -> i64 {
        match self {
            Bucket::Hour => 3_600_000,
            Bucket::Day => 86_400_000,
        }
    }
}

impl std::str::FromStr for Bucket {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "hour" | "hourly" | "h" => Ok(Bucket::Hour),
            "day" | "daily" | "d" => Ok(Bucket::Day),
            _ => Err(format!(
                "invalid bucket {s:?}: expected \"hour\" or \"day\""
            )),
        }
    }
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Bucket::Hour => "hour",
            Bucket::Day => "day",
        })
    }
}

/// Count of one label in one time bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatRow {
    /// Start of the bucket, UTC epoch ms.
    pub bucket_start_ms: i64,
    pub label: String,
    pub count: u64,
    pub mean_score: f32,
}

/// Count of one label over the whole filter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelCount {
    pub label: String,
    pub count: u64,
    pub mean_score: f32,
}

/// What a run (or any filtered slice of history) logged.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Frames matched, classified or not.
    pub total: u64,
    /// Frames with a label.
    pub classified: u64,
    /// Frames that could not be classified.
    pub errors: u64,
    /// Earliest and latest frame time, UTC epoch ms; `None` when empty.
    pub first_ts_ms: Option<i64>,
    pub last_ts_ms: Option<i64>,
    /// Per label, most frequent first.
    pub labels: Vec<LabelCount>,
}

/// Whether a WHERE clause keeps error rows.
#[derive(Clone, Copy, PartialEq)]
enum Errors {
    Keep,
    Drop,
}

/// Builds the WHERE clause shared by all three queries. Conditions are
/// written as plain comparisons on the bare columns so that SQLite can match
/// them against the indexes.
fn where_clause(f: &FrameFilter, errors: Errors) -> (String, Vec<Value>) {
    let mut conds: Vec<&str> = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    if let Some(t) = f.since_ms {
        conds.push("ts_ms >= ?");
        args.push(Value::Integer(t));
    }
    if let Some(t) = f.until_ms {
        conds.push("ts_ms < ?");
        args.push(Value::Integer(t));
    }
    if let Some(l) = &f.label {
        conds.push("label = ?");
        args.push(Value::Text(l.clone()));
    }
    if let Some(s) = &f.source {
        conds.push("source = ?");
        args.push(Value::Text(s.clone()));
    }
    if let Some(s) = f.min_score {
        conds.push("score >= ?");
        args.push(Value::Real(f64::from(s)));
    }
    if errors == Errors::Drop {
        conds.push("error IS NULL");
    }
    if conds.is_empty() {
        (String::new(), args)
    } else {
        (format!(" WHERE {}", conds.join(" AND ")), args)
    }
}

const FRAME_COLUMNS: &str = "id, ts_ms, source, frame_ref, label, score, topk, model_id, \
    adapter_id, latency_us, refined_label, refined_score, refine_run_id, error";

/// The listing query: newest first, `id` breaking ties so the order is stable.
pub(crate) fn frames_sql(f: &FrameFilter) -> (String, Vec<Value>) {
    let errors = if f.include_errors {
        Errors::Keep
    } else {
        Errors::Drop
    };
    let (wh, mut args) = where_clause(f, errors);
    // With min_score as the only indexed filter, SQLite (lacking statistics)
    // prefers walking the whole ts_ms index in order and testing each row's
    // score; the unary `+` hides ts_ms from the planner so it searches the
    // score index and sorts just the matches instead.
    let score_only = f.min_score.is_some()
        && f.since_ms.is_none()
        && f.until_ms.is_none()
        && f.label.is_none()
        && f.source.is_none();
    let order = if score_only { "+ts_ms" } else { "ts_ms" };
    let mut sql = format!("SELECT {FRAME_COLUMNS} FROM frames{wh} ORDER BY {order} DESC, id DESC");
    if let Some(n) = f.limit {
        sql.push_str(" LIMIT ?");
        args.push(Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)));
    }
    (sql, args)
}

pub(crate) fn stats_sql(f: &FrameFilter, bucket: Bucket) -> (String, Vec<Value>) {
    let (wh, args) = where_clause(f, Errors::Drop);
    let w = bucket.width_ms();
    // ts_ms >= 0 is a schema CHECK, so integer division floors.
    let sql = format!(
        "SELECT (ts_ms / {w}) * {w} AS bucket, label, COUNT(*), AVG(score) FROM frames{wh} \
         GROUP BY bucket, label ORDER BY bucket, label"
    );
    (sql, args)
}

pub(crate) fn summary_sql(f: &FrameFilter) -> (String, Vec<Value>) {
    let (wh, args) = where_clause(f, Errors::Keep);
    // `+label`: grouping by the bare column makes SQLite walk the whole label
    // index to avoid a sort, ignoring a time or source filter; the few groups
    // are cheaper to sort than all of history is to read.
    let sql = format!(
        "SELECT label, COUNT(*), AVG(score), MIN(ts_ms), MAX(ts_ms) FROM frames{wh} GROUP BY +label"
    );
    (sql, args)
}

/// A row as read, before its JSON column is parsed.
type RawFrame = (FrameRow, String);

fn count_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Store {
    /// Frames matching `filter`, newest first.
    pub fn query_frames(&self, filter: &FrameFilter) -> Result<Vec<FrameRow>, StoreError> {
        let (sql, args) = frames_sql(filter);
        let raw: Vec<RawFrame> = self
            .conn
            .prepare(&sql)
            .and_then(|mut stmt| {
                stmt.query_map(rusqlite::params_from_iter(args), |r| {
                    let row = FrameRow {
                        id: r.get(0)?,
                        ts_ms: r.get(1)?,
                        source: r.get(2)?,
                        frame_ref: r.get(3)?,
                        label: r.get(4)?,
                        score: r.get::<_, Option<f64>>(5)?.map(|s| s as f32),
                        topk: Vec::new(),
                        model_id: r.get(7)?,
                        adapter_id: r.get(8)?,
                        latency_us: r.get::<_, Option<i64>>(9)?.map(count_u64),
                        refined_label: r.get(10)?,
                        refined_score: r.get::<_, Option<f64>>(11)?.map(|s| s as f32),
                        refine_run_id: r.get(12)?,
                        error: r.get(13)?,
                    };
                    Ok((row, r.get::<_, String>(6)?))
                })?
                .collect()
            })
            .ctx(&self.path, "querying frames")?;
        raw.into_iter()
            .map(|(mut row, topk)| {
                row.topk = serde_json::from_str(&topk).map_err(|e| StoreError::InvalidData {
                    path: self.path.clone(),
                    what: "frames.topk",
                    row: format!("id {}", row.id),
                    detail: e.to_string(),
                })?;
                Ok(row)
            })
            .collect()
    }

    /// Per-bucket, per-label counts of classified frames matching `filter`,
    /// oldest bucket first, labels alphabetical within a bucket.
    pub fn stats(&self, filter: &FrameFilter, bucket: Bucket) -> Result<Vec<StatRow>, StoreError> {
        let (sql, args) = stats_sql(filter, bucket);
        self.conn
            .prepare(&sql)
            .and_then(|mut stmt| {
                stmt.query_map(rusqlite::params_from_iter(args), |r| {
                    Ok(StatRow {
                        bucket_start_ms: r.get(0)?,
                        label: r.get(1)?,
                        count: count_u64(r.get(2)?),
                        mean_score: r.get::<_, Option<f64>>(3)?.unwrap_or(0.0) as f32,
                    })
                })?
                .collect()
            })
            .ctx(&self.path, "computing statistics")
    }

    /// Totals over the frames matching `filter` (its `limit` and
    /// `include_errors` are ignored; errors are always counted).
    pub fn summary(&self, filter: &FrameFilter) -> Result<Summary, StoreError> {
        type Group = (Option<String>, i64, Option<f64>, Option<i64>, Option<i64>);
        let (sql, args) = summary_sql(filter);
        let groups: Vec<Group> = self
            .conn
            .prepare(&sql)
            .and_then(|mut stmt| {
                stmt.query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect()
            })
            .ctx(&self.path, "summarising frames")?;
        let mut s = Summary::default();
        for (label, n, mean, first, last) in groups {
            let n = count_u64(n);
            s.total += n;
            s.first_ts_ms = min_opt(s.first_ts_ms, first);
            s.last_ts_ms = max_opt(s.last_ts_ms, last);
            match label {
                None => s.errors += n,
                Some(label) => {
                    s.classified += n;
                    s.labels.push(LabelCount {
                        label,
                        count: n,
                        mean_score: mean.unwrap_or(0.0) as f32,
                    });
                }
            }
        }
        s.labels
            .sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.label.cmp(&b.label)));
        Ok(s)
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{rec, temp_store};
    use crate::store::FrameRecord;

    const H: i64 = 3_600_000;
    const DAY: i64 = 24 * H;
    /// 2024-05-01T00:00:00Z
    const T0: i64 = 1_714_521_600_000;

    /// Ten frames over two days from two sources, plus one error.
    fn fixture() -> (tempfile::TempDir, Store) {
        let (dir, mut store) = temp_store();
        let frames = vec![
            rec(T0, "cam", "dog", 0.90),
            rec(T0 + 10 * 60_000, "cam", "cat", 0.60),
            rec(T0 + 20 * 60_000, "door", "dog", 0.40),
            rec(T0 + H + 1, "cam", "dog", 0.80),
            rec(T0 + H + 2, "door", "person", 0.95),
            rec(T0 + 2 * H, "cam", "cat", 0.30),
            rec(T0 + DAY, "cam", "dog", 0.70),
            rec(T0 + DAY + 5, "door", "dog", 0.85),
            rec(T0 + DAY + 2 * H, "door", "cat", 0.99),
            rec(T0 + DAY + 3 * H, "cam", "person", 0.50),
            FrameRecord::failed(T0 + 30 * 60_000, "door", "door/x.jpg", "sha-model", "bad"),
        ];
        store.insert_frames(&frames).unwrap();
        (dir, store)
    }

    fn ts(store: &Store, f: FrameFilter) -> Vec<i64> {
        store
            .query_frames(&f)
            .unwrap()
            .into_iter()
            .map(|r| r.ts_ms)
            .collect()
    }

    #[test]
    fn no_filter_lists_everything_classified_newest_first() {
        let (_d, s) = fixture();
        let all = ts(&s, FrameFilter::default());
        assert_eq!(all.len(), 10);
        assert!(all.windows(2).all(|w| w[0] >= w[1]), "{all:?}");
        let with_errors = s
            .query_frames(&FrameFilter {
                include_errors: true,
                ..FrameFilter::default()
            })
            .unwrap();
        assert_eq!(with_errors.len(), 11);
        assert_eq!(with_errors.iter().filter(|r| r.error.is_some()).count(), 1);
    }

    #[test]
    fn each_filter_alone() {
        let (_d, s) = fixture();
        let f = FrameFilter::default;
        assert_eq!(
            ts(
                &s,
                FrameFilter {
                    since_ms: Some(T0 + DAY),
                    ..f()
                }
            ),
            [T0 + DAY + 3 * H, T0 + DAY + 2 * H, T0 + DAY + 5, T0 + DAY]
        );
        // until is exclusive.
        assert_eq!(
            ts(
                &s,
                FrameFilter {
                    until_ms: Some(T0 + 20 * 60_000),
                    ..f()
                }
            ),
            [T0 + 10 * 60_000, T0]
        );
        let cats = s
            .query_frames(&FrameFilter {
                label: Some("cat".into()),
                ..f()
            })
            .unwrap();
        assert_eq!(cats.len(), 3);
        assert!(cats.iter().all(|r| r.label.as_deref() == Some("cat")));
        let high = s
            .query_frames(&FrameFilter {
                min_score: Some(0.85),
                ..f()
            })
            .unwrap();
        let mut scores: Vec<f32> = high.iter().filter_map(|r| r.score).collect();
        scores.sort_by(f32::total_cmp);
        assert_eq!(scores, [0.85, 0.90, 0.95, 0.99], "min_score is inclusive");
        let door = s
            .query_frames(&FrameFilter {
                source: Some("door".into()),
                ..f()
            })
            .unwrap();
        assert_eq!(door.len(), 4);
        assert!(door.iter().all(|r| r.source == "door"));
        assert_eq!(
            ts(
                &s,
                FrameFilter {
                    limit: Some(2),
                    ..f()
                }
            ),
            [T0 + DAY + 3 * H, T0 + DAY + 2 * H]
        );
        assert!(ts(
            &s,
            FrameFilter {
                limit: Some(0),
                ..f()
            }
        )
        .is_empty());
        assert!(ts(
            &s,
            FrameFilter {
                label: Some("zebra".into()),
                ..f()
            }
        )
        .is_empty());
    }

    #[test]
    fn filters_combine() {
        let (_d, s) = fixture();
        let f = FrameFilter::default;
        assert_eq!(
            ts(
                &s,
                FrameFilter {
                    since_ms: Some(T0 + H),
                    until_ms: Some(T0 + DAY + H),
                    label: Some("dog".into()),
                    ..f()
                }
            ),
            [T0 + DAY + 5, T0 + DAY, T0 + H + 1]
        );
        assert_eq!(
            ts(
                &s,
                FrameFilter {
                    source: Some("cam".into()),
                    label: Some("dog".into()),
                    min_score: Some(0.75),
                    ..f()
                }
            ),
            [T0 + H + 1, T0]
        );
        assert_eq!(
            ts(
                &s,
                FrameFilter {
                    source: Some("door".into()),
                    since_ms: Some(T0),
                    limit: Some(1),
                    include_errors: true,
                    ..f()
                }
            ),
            [T0 + DAY + 2 * H]
        );
        // Errors have no label or score, so those filters exclude them.
        let errs = s
            .query_frames(&FrameFilter {
                source: Some("door".into()),
                until_ms: Some(T0 + H),
                include_errors: true,
                ..f()
            })
            .unwrap();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].error.as_deref(), Some("bad"));
    }

    #[test]
    fn stats_per_hour_and_day() {
        let (_d, s) = fixture();
        let hourly = s.stats(&FrameFilter::default(), Bucket::Hour).unwrap();
        let first: Vec<(i64, &str, u64)> = hourly
            .iter()
            .take(3)
            .map(|r| (r.bucket_start_ms, r.label.as_str(), r.count))
            .collect();
        assert_eq!(first, [(T0, "cat", 1), (T0, "dog", 2), (T0 + H, "dog", 1)]);
        let dog0 = &hourly[1];
        assert!((dog0.mean_score - 0.65).abs() < 1e-6, "{dog0:?}");
        assert_eq!(hourly.iter().map(|r| r.count).sum::<u64>(), 10);

        let daily = s.stats(&FrameFilter::default(), Bucket::Day).unwrap();
        let got: Vec<(i64, &str, u64)> = daily
            .iter()
            .map(|r| (r.bucket_start_ms, r.label.as_str(), r.count))
            .collect();
        assert_eq!(
            got,
            [
                (T0, "cat", 2),
                (T0, "dog", 3),
                (T0, "person", 1),
                (T0 + DAY, "cat", 1),
                (T0 + DAY, "dog", 2),
                (T0 + DAY, "person", 1),
            ]
        );
        let door_day2 = s
            .stats(
                &FrameFilter {
                    source: Some("door".into()),
                    since_ms: Some(T0 + DAY),
                    ..FrameFilter::default()
                },
                Bucket::Day,
            )
            .unwrap();
        assert_eq!(door_day2.len(), 2);
        assert_eq!("Day".parse::<Bucket>(), Ok(Bucket::Day));
        assert!("week".parse::<Bucket>().is_err());
    }

    #[test]
    fn summary_counts_labels_and_errors() {
        let (_d, s) = fixture();
        let sum = s.summary(&FrameFilter::default()).unwrap();
        assert_eq!((sum.total, sum.classified, sum.errors), (11, 10, 1));
        assert_eq!(sum.first_ts_ms, Some(T0));
        assert_eq!(sum.last_ts_ms, Some(T0 + DAY + 3 * H));
        let labels: Vec<(&str, u64)> = sum
            .labels
            .iter()
            .map(|l| (l.label.as_str(), l.count))
            .collect();
        assert_eq!(labels, [("dog", 5), ("cat", 3), ("person", 2)]);
        let empty = s
            .summary(&FrameFilter {
                since_ms: Some(T0 + 10 * DAY),
                ..FrameFilter::default()
            })
            .unwrap();
        assert_eq!(empty, Summary::default());
    }

    /// The detail column of EXPLAIN QUERY PLAN for `sql`.
    fn plan(store: &Store, sql: &str, args: Vec<Value>) -> Vec<String> {
        let mut stmt = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rows
    }

    /// Asserts that the plan finds rows of `frames` by searching `index`:
    /// no full scan of the table, nor a walk over a whole index.
    fn assert_searches(store: &Store, what: &str, (sql, args): (String, Vec<Value>), index: &str) {
        let p = plan(store, &sql, args);
        let frames: Vec<&String> = p.iter().filter(|l| l.contains("frames")).collect();
        assert!(!frames.is_empty(), "{what}: {p:?}");
        for line in &frames {
            assert!(!line.starts_with("SCAN"), "{what}: scans frames: {p:?}");
        }
        let want = format!("SEARCH frames USING INDEX {index} ");
        assert!(
            frames.iter().any(|l| l.starts_with(&want)),
            "{what}: expected a search of {index}: {p:?}"
        );
    }

    #[test]
    fn every_filter_is_served_by_an_index() {
        let (_d, s) = fixture();
        let f = FrameFilter::default;
        let cases: Vec<(&str, FrameFilter, &str)> = vec![
            (
                "since",
                FrameFilter {
                    since_ms: Some(T0),
                    ..f()
                },
                "idx_frames_ts",
            ),
            (
                "until",
                FrameFilter {
                    until_ms: Some(T0),
                    ..f()
                },
                "idx_frames_ts",
            ),
            (
                "label",
                FrameFilter {
                    label: Some("dog".into()),
                    ..f()
                },
                "idx_frames_label_ts",
            ),
            (
                "source",
                FrameFilter {
                    source: Some("cam".into()),
                    ..f()
                },
                "idx_frames_source_ts",
            ),
            (
                "min_score",
                FrameFilter {
                    min_score: Some(0.9),
                    ..f()
                },
                "idx_frames_score",
            ),
            (
                "min_score+limit",
                FrameFilter {
                    min_score: Some(0.9),
                    limit: Some(10),
                    ..f()
                },
                "idx_frames_score",
            ),
            (
                "label+since+until+limit",
                FrameFilter {
                    label: Some("dog".into()),
                    since_ms: Some(T0),
                    until_ms: Some(T0 + DAY),
                    limit: Some(5),
                    ..f()
                },
                "idx_frames_label_ts",
            ),
            (
                "source+since",
                FrameFilter {
                    source: Some("cam".into()),
                    since_ms: Some(T0),
                    ..f()
                },
                "idx_frames_source_ts",
            ),
            (
                "label+min_score",
                FrameFilter {
                    label: Some("dog".into()),
                    min_score: Some(0.5),
                    ..f()
                },
                "idx_frames_label_ts",
            ),
        ];
        for (what, filter, index) in cases {
            let mut with_errors = filter.clone();
            with_errors.include_errors = true;
            assert_searches(&s, what, frames_sql(&filter), index);
            assert_searches(&s, what, frames_sql(&with_errors), index);
            assert_searches(&s, what, summary_sql(&filter), index);
            assert_searches(&s, what, stats_sql(&filter, Bucket::Hour), index);
        }
    }

    #[test]
    fn limit_alone_walks_the_time_index() {
        let (_d, s) = fixture();
        // Newest-first with LIMIT n reads n index entries, then stops.
        let (sql, args) = frames_sql(&FrameFilter {
            limit: Some(10),
            ..FrameFilter::default()
        });
        let p = plan(&s, &sql, args);
        assert_eq!(p, ["SCAN frames USING INDEX idx_frames_ts"]);
    }

    #[test]
    fn label_listing_needs_no_sort() {
        let (_d, s) = fixture();
        let (sql, args) = frames_sql(&FrameFilter {
            label: Some("dog".into()),
            since_ms: Some(T0),
            limit: Some(5),
            ..FrameFilter::default()
        });
        let p = plan(&s, &sql, args);
        assert!(!p.iter().any(|l| l.contains("TEMP B-TREE")), "{p:?}");
    }
}
