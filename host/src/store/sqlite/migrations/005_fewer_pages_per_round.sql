-- Fewer pages written by each round of a dispatcher, which settles and claims jobs in one
-- transaction and so writes every index entry of the rows it changes:
-- - jobs_unfinished repeated what jobs_state (state, id) already answers, a range per state.
-- - attempts, found only by (job_id, attempt) and by attempts_unsettled, keeps its rows in the
--   order of that key (WITHOUT ROWID): an attempt started is one entry, not a row and an entry
--   of the key's own index.
DROP INDEX jobs_unfinished;
CREATE TABLE attempts_by_key (
    job_id        INTEGER NOT NULL REFERENCES jobs (id),
    attempt       INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    outcome       TEXT,
    error         TEXT,
    output_path   TEXT,
    output_bytes  INTEGER,
    pid           INTEGER,
    plugin_hash   TEXT,
    dispatcher    INTEGER,
    PRIMARY KEY (job_id, attempt)
) WITHOUT ROWID;
INSERT INTO attempts_by_key
    SELECT job_id, attempt, started_at, finished_at, outcome, error, output_path, output_bytes,
           pid, plugin_hash, dispatcher
    FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_by_key RENAME TO attempts;
CREATE INDEX attempts_unsettled ON attempts (dispatcher) WHERE finished_at IS NULL;
