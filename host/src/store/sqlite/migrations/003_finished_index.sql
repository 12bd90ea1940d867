-- The dashboard counts the jobs that completed or failed in the last minutes: a range scan of
-- this index per state, however many jobs finished before.
CREATE INDEX jobs_finished ON jobs (state, finished_at) WHERE finished_at IS NOT NULL;
