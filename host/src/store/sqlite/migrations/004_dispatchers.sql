-- The dispatchers sharing this queue, each with its lease: one whose heartbeat is older than
-- the lease is rescued by the others. Ids are never reused (AUTOINCREMENT), so an attempt
-- keeps naming the dispatcher that claimed it after that one deregistered.
CREATE TABLE dispatchers (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    host          TEXT    NOT NULL,
    pid           INTEGER NOT NULL,
    slots         INTEGER NOT NULL,
    state_dir     TEXT    NOT NULL,               -- on its host
    started_at    INTEGER NOT NULL,
    heartbeat_at  INTEGER NOT NULL
);

-- The dispatcher that claimed the attempt (NULL for attempts claimed before this migration).
ALTER TABLE attempts ADD COLUMN dispatcher INTEGER;

-- A dispatcher's unsettled attempts: its running count, and what deregistering checks.
CREATE INDEX attempts_unsettled ON attempts (dispatcher) WHERE finished_at IS NULL;
