-- Jobs, their attempts and the dispatchers that run them, as the SQLite schema has them after
-- its migration 004 (same columns, same values). Times are milliseconds since the Unix epoch
-- (UTC).
CREATE TABLE jobs (
    id               BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    class            TEXT    NOT NULL,
    method           TEXT    NOT NULL,
    params           TEXT    NOT NULL,            -- JSON
    priority         BIGINT  NOT NULL,            -- 2 high, 1 normal, 0 low
    state            TEXT    NOT NULL,            -- queued, scheduled, running, completed, failed, cancelled
    attempts         BIGINT  NOT NULL DEFAULT 0,  -- attempts started
    max_attempts     BIGINT  NOT NULL,            -- 1 + retries (raised by a manual retry)
    retries          BIGINT  NOT NULL,            -- retries after the first failure, as requested
    retry_delay_ms   BIGINT  NOT NULL,
    timeout_ms       BIGINT  NOT NULL,
    plugin           TEXT    NOT NULL,            -- the plugin file chosen when the job was accepted
    run_at           BIGINT  NOT NULL,            -- not before this
    created_at       BIGINT  NOT NULL,
    started_at       BIGINT,                      -- first attempt's start
    finished_at      BIGINT,                      -- when it reached a terminal state
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    last_error       TEXT,
    result           TEXT                         -- JSON
);

-- Claims walk this index in their order (priority DESC, run_at, id) over the jobs that can be
-- claimed; the next wake-up is the first entry of each priority's range.
CREATE INDEX jobs_due ON jobs (priority DESC, run_at, id) WHERE state IN ('queued', 'scheduled');
CREATE INDEX jobs_state ON jobs (state, id);
CREATE INDEX jobs_class ON jobs (class, id);
CREATE INDEX jobs_unfinished ON jobs (state) WHERE state IN ('queued', 'scheduled', 'running');
CREATE INDEX jobs_finished ON jobs (state, finished_at) WHERE finished_at IS NOT NULL;

-- The dispatchers sharing this queue, each with its lease: one whose heartbeat is older than
-- the lease is rescued by the others. Ids are never reused, so an attempt keeps naming the
-- dispatcher that claimed it after that one deregistered.
CREATE TABLE dispatchers (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host          TEXT   NOT NULL,
    pid           BIGINT NOT NULL,
    slots         BIGINT NOT NULL,
    state_dir     TEXT   NOT NULL,                -- on its host
    started_at    BIGINT NOT NULL,
    heartbeat_at  BIGINT NOT NULL
);

CREATE TABLE attempts (
    job_id        BIGINT NOT NULL REFERENCES jobs (id),
    attempt       BIGINT NOT NULL,
    started_at    BIGINT NOT NULL,
    finished_at   BIGINT,
    outcome       TEXT,                           -- ok, error, crashed: SIGSEGV, timed out, cancelled, lost, ...
    error         TEXT,
    output_path   TEXT,
    output_bytes  BIGINT,
    pid           BIGINT,
    plugin_hash   TEXT,
    dispatcher    BIGINT,                         -- the dispatcher that claimed it
    PRIMARY KEY (job_id, attempt)
);

-- A dispatcher's unsettled attempts: its running count, and what deregistering checks.
CREATE INDEX attempts_unsettled ON attempts (dispatcher) WHERE finished_at IS NULL;
