-- 0002_state_changes: the smoothed per-source decision state.
--
-- The refiner re-decides recent frames jointly (see the refinements table);
-- a source's current state changes only when enough refined labels agree.
-- Each change is one row here, so "what was the camera looking at, and
-- since when" is one indexed query (`clipd query --changes`).

CREATE TABLE state_changes (
    id            INTEGER PRIMARY KEY,
    ts_ms         INTEGER NOT NULL CHECK (ts_ms >= 0),
    source        TEXT    NOT NULL,
    from_label    TEXT,                            -- NULL for a source's first state
    to_label      TEXT    NOT NULL,
    agreement     REAL    NOT NULL CHECK (agreement >= 0 AND agreement <= 1),
    n_frames      INTEGER NOT NULL CHECK (n_frames > 0),
    refine_run_id INTEGER REFERENCES refinements(id) ON DELETE SET NULL
) STRICT;

CREATE INDEX idx_state_changes_ts        ON state_changes (ts_ms);
CREATE INDEX idx_state_changes_source_ts ON state_changes (source, ts_ms);
CREATE INDEX idx_refinements_ts          ON refinements (ts_ms);
