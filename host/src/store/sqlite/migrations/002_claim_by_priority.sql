-- Claims look up due jobs one priority at a time (priority = ?, run_at <= now), and the next
-- wake-up is the smallest run_at per priority: both are range scans of this index, however
-- many jobs wait for a later run_at. The old index, led by priority DESC and unconstrained on
-- run_at, made SQLite sort every waiting job instead.
DROP INDEX jobs_due;
CREATE INDEX jobs_due ON jobs (priority, run_at, id) WHERE state IN ('queued', 'scheduled');
CREATE INDEX jobs_unfinished ON jobs (state) WHERE state IN ('queued', 'scheduled', 'running');
