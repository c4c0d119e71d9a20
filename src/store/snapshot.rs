//! What the history holds, at a glance: frame and error counts, each source's last frame and
//! smoothed state, refinement runs (`clipd status`). Every lookup is served by an index.

use serde::Serialize;

use super::{Ctx, FrameFilter, Store, StoreError};

/// The history as `clipd status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HistorySnapshot {
    pub frames: u64,
    pub errors: u64,
    pub last_ts_ms: Option<i64>,
    pub sources: Vec<SourceSnapshot>,
    pub refinements: u64,
    pub last_refinement_ts_ms: Option<i64>,
}

/// One source's share of the history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceSnapshot {
    pub name: String,
    pub frames: u64,
    pub last_label: Option<String>,
    pub last_score: Option<f32>,
    pub last_ts_ms: Option<i64>,
    /// The smoothed per-source state, once refinement has set one.
    pub state: Option<String>,
}

impl Store {
    /// Counts, the last frame and state of each source, and refinement runs.
    pub fn snapshot(&self) -> Result<HistorySnapshot, StoreError> {
        let path = self.path.as_path();
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let (frames, errors, last_ts_ms): (i64, i64, Option<i64>) = self
            .conn
            .query_row(
                "SELECT COUNT(*), (SELECT COUNT(*) FROM frames WHERE error IS NOT NULL), \
                 (SELECT MAX(ts_ms) FROM frames) FROM frames",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .ctx(path, "counting frames")?;
        // Distinct sources by skip-scan over the (source, ts_ms) index: one lookup per source
        // instead of a pass over all of history.
        let names: Vec<String> = self
            .conn
            .prepare(
                "WITH RECURSIVE s(name) AS ( \
                   SELECT MIN(source) FROM frames \
                   UNION ALL \
                   SELECT (SELECT MIN(source) FROM frames WHERE source > s.name) FROM s \
                   WHERE s.name IS NOT NULL) \
                 SELECT name FROM s WHERE name IS NOT NULL",
            )
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .ctx(path, "listing sources")?;
        let mut sources = Vec::with_capacity(names.len());
        for name in names {
            let n: i64 = self
                .conn
                .query_row(
                    "SELECT COUNT(*) FROM frames WHERE source = ?1",
                    [&name],
                    |r| r.get(0),
                )
                .ctx(path, "counting frames per source")?;
            let last = self
                .query_frames(&FrameFilter {
                    source: Some(name.clone()),
                    limit: Some(1),
                    ..FrameFilter::default()
                })?
                .into_iter()
                .next();
            let state = self
                .state_changes(None, None, Some(&name), 1)?
                .into_iter()
                .next()
                .map(|c| c.to_label);
            sources.push(SourceSnapshot {
                frames: count(n),
                last_label: last.as_ref().and_then(|f| f.label.clone()),
                last_score: last.as_ref().and_then(|f| f.score),
                last_ts_ms: last.as_ref().map(|f| f.ts_ms),
                state,
                name,
            });
        }
        let (refinements, last_refinement_ts_ms): (i64, Option<i64>) = self
            .conn
            .query_row("SELECT COUNT(*), MAX(ts_ms) FROM refinements", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .ctx(path, "counting refinements")?;
        Ok(HistorySnapshot {
            frames: count(frames),
            errors: count(errors),
            last_ts_ms,
            sources,
            refinements: count(refinements),
            last_refinement_ts_ms,
        })
    }
}
