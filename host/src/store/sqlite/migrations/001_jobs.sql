-- Jobs and their attempts. Times are milliseconds since the Unix epoch (UTC).
CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    class            TEXT    NOT NULL,
    method           TEXT    NOT NULL,
    params           TEXT    NOT NULL,
    priority         INTEGER NOT NULL,            -- 2 high, 1 normal, 0 low
    state            TEXT    NOT NULL,            -- queued, scheduled, running, completed, failed, cancelled
    attempts         INTEGER NOT NULL DEFAULT 0,  -- attempts started
    max_attempts     INTEGER NOT NULL,            -- 1 + retries (raised by a manual retry)
    retries          INTEGER NOT NULL,            -- retries after the first failure, as requested
    retry_delay_ms   INTEGER NOT NULL,
    timeout_ms       INTEGER NOT NULL,
    plugin           TEXT    NOT NULL,            -- the plugin file chosen when the job was accepted
    run_at           INTEGER NOT NULL,            -- not before this
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,                     -- first attempt's start
    finished_at      INTEGER,                     -- when it reached a terminal state
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    result           TEXT
);

-- The claim query's order, over the jobs that can be claimed.
CREATE INDEX jobs_due ON jobs (priority DESC, run_at, id) WHERE state IN ('queued', 'scheduled');
CREATE INDEX jobs_state ON jobs (state, id);
CREATE INDEX jobs_class ON jobs (class, id);

CREATE TABLE attempts (
    job_id        INTEGER NOT NULL REFERENCES jobs (id),
    attempt       INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    outcome       TEXT,                           -- ok, error, crashed: SIGSEGV, timed out, cancelled, lost, ...
    error         TEXT,
    output_path   TEXT,
    output_bytes  INTEGER,
    pid           INTEGER,
    plugin_hash   TEXT,
    PRIMARY KEY (job_id, attempt)
);
