-- 0003_retention: what retention needs to delete old rows cheaply.
--
-- Retention deletes a refinement run once no frame and no state change
-- names it. The frames side is indexed since 0001 (idx_frames_refine_run);
-- this is the state_changes side, so that check (and the ON DELETE SET NULL
-- that SQLite plans for it) is an index probe instead of a table scan.
--
-- Opening an older database also switches it to auto_vacuum = INCREMENTAL
-- (a one-time VACUUM, done in code after a backup: PRAGMA auto_vacuum cannot
-- change inside a migration's transaction).

CREATE INDEX idx_state_changes_refine_run ON state_changes (refine_run_id)
    WHERE refine_run_id IS NOT NULL;
