-- 0001_init: the first clipd history schema.
--
-- Never edit this file once released: add 0002_<name>.sql instead. Each file
-- runs in one transaction and bumps PRAGMA user_version to its number.
--
-- Tables are STRICT so a wrong type from any writer is an error, not a
-- silently coerced value. Timestamps are UTC epoch milliseconds.

-- One row per refiner pass (EM-Dirichlet, TransCLIP, ...). Created here,
-- although nothing writes it yet, so that frames.refine_run_id can be a real
-- foreign key without rebuilding the frames table later.
CREATE TABLE refinements (
    id          INTEGER PRIMARY KEY,
    ts_ms       INTEGER NOT NULL,
    algorithm   TEXT    NOT NULL,
    params      TEXT    NOT NULL DEFAULT '{}',   -- JSON object
    n_frames    INTEGER NOT NULL,
    n_changed   INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL
) STRICT;

-- One row per frame the pipeline saw: either classified (label set) or
-- failed (error set), never both and never neither.
CREATE TABLE frames (
    id            INTEGER PRIMARY KEY,
    ts_ms         INTEGER NOT NULL CHECK (ts_ms >= 0),
    source        TEXT    NOT NULL,                -- source name from the config
    frame_ref     TEXT    NOT NULL,                -- file path or frame counter
    label         TEXT,                            -- top-1 label, NULL on error
    score         REAL,                            -- top-1 probability
    topk          TEXT    NOT NULL DEFAULT '[]',   -- JSON [[label, score], ...]
    model_id      TEXT    NOT NULL,                -- bundle sha256
    adapter_id    TEXT,                            -- NULL when zero-shot
    latency_us    INTEGER CHECK (latency_us >= 0),
    embedding     BLOB,                            -- optional f16 little-endian
    refined_label TEXT,
    refined_score REAL,
    refine_run_id INTEGER REFERENCES refinements(id) ON DELETE SET NULL,
    error         TEXT,                            -- why the frame has no label
    CHECK ((label IS NULL) <> (error IS NULL))
) STRICT;

-- One index per `clipd query` filter; the ts_ms suffix lets a filtered query
-- return newest-first straight from the index instead of sorting.
CREATE INDEX idx_frames_ts        ON frames (ts_ms);
CREATE INDEX idx_frames_label_ts  ON frames (label, ts_ms);
CREATE INDEX idx_frames_source_ts ON frames (source, ts_ms);
CREATE INDEX idx_frames_score     ON frames (score);
-- Keeps deleting a refinement run (ON DELETE SET NULL) from scanning frames.
CREATE INDEX idx_frames_refine_run ON frames (refine_run_id) WHERE refine_run_id IS NOT NULL;

-- The classes a model was run with, and their ensembled text embedding.
CREATE TABLE classes (
    model_id  TEXT NOT NULL,                       -- bundle sha256
    name      TEXT NOT NULL,
    domain    TEXT,
    prompts   TEXT NOT NULL DEFAULT '[]',          -- JSON array of prompt strings
    embedding BLOB NOT NULL,                       -- f32 little-endian
    PRIMARY KEY (model_id, name)
) STRICT;

-- Text-encoder output per (model, prompt), so a restart need not load or run
-- the text encoder for prompts it has already seen.
CREATE TABLE text_cache (
    model_id  TEXT    NOT NULL,                    -- bundle sha256
    prompt    TEXT    NOT NULL,
    embedding BLOB    NOT NULL,                    -- f32 little-endian
    dim       INTEGER NOT NULL CHECK (dim > 0),
    PRIMARY KEY (model_id, prompt)
) STRICT;
