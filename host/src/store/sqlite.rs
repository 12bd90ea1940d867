//! The SQLite store: one file under the state directory, in WAL mode, migrated with the
//! numbered scripts in `migrations/sqlite/`.
//!
//! Each process opens its own connection; SQLite's write lock makes every transaction atomic
//! across processes, and `BEGIN IMMEDIATE` makes a claim take that lock before it reads, so two
//! dispatchers can never claim the same job. `synchronous = NORMAL` in WAL mode keeps a commit
//! durable across a crash of the process (not of the machine) without an fsync per commit.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{
    params, types::ValueRef, Connection, ErrorCode, OpenFlags, OptionalExtension, Row,
    TransactionBehavior,
};

use super::{
    rows::{
        self, attempt_at, dispatcher_at, job_at, prefixed, BadColumn, Columns, NewRow, Settled,
        ATTEMPT_COLUMNS, JOB_COLUMNS, JOB_COLUMN_COUNT, SELECT_DISPATCHERS,
    },
    Attempt, AttemptEnd, AttemptStart, CancelOutcome, DispatcherId, DispatcherInfo,
    DispatcherRecord, Finished, JobId, JobRecord, JobState, ListFilter, Millis, NewJob, Next,
    Quarantined, Stats, Store, StoreError,
};

/// The migrations, in order; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/sqlite/001_jobs.sql"),
    include_str!("migrations/sqlite/002_claim_by_priority.sql"),
    include_str!("migrations/sqlite/003_finished_index.sql"),
    include_str!("migrations/sqlite/004_dispatchers.sql"),
];

/// Priorities from first to last served, as stored.
const PRIORITIES_FIRST_TO_LAST: [i64; 3] = [2, 1, 0];

/// The database file's name in the state directory.
pub const DB_FILE: &str = "jobs.sqlite3";

/// A connection to the SQLite job database.
pub struct SqliteStore {
    conn: Connection,
    /// What claims quarantined, until [`Store::take_quarantined`].
    quarantined: Vec<Quarantined>,
}

impl SqliteStore {
    /// Opens (creating if absent) the database at `path` and brings its schema up to date. A
    /// file that is not a jobhost database is reported, never overwritten.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let database = path.display().to_string();
        let open_error = |reason: String| StoreError::Open {
            database: database.clone(),
            reason,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(path, flags).map_err(|e| open_error(e.to_string()))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| open_error(e.to_string()))?;
        // The first statement that reads the file is where a corrupt file shows itself.
        let version: i64 = retry_busy(|| conn.query_row("PRAGMA user_version", [], |r| r.get(0)))
            .map_err(|e| open_error(describe(&e)))?;
        // A checkpoint (copying the WAL into the database, with an fsync) would stall whichever
        // commit crosses the threshold; the dispatcher runs them in the background instead
        // ([`SqliteStore::checkpoint`]), and this high threshold only bounds the WAL when no
        // dispatcher runs.
        // The journal mode is stored in the file: switching needs an exclusive lock, so it is
        // only asked for when the file is not in WAL mode yet (a new database).
        let mode: String = retry_busy(|| conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
            .map_err(|e| open_error(describe(&e)))?;
        if !mode.eq_ignore_ascii_case("wal") {
            retry_busy(|| conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())))
                .map_err(|e| open_error(describe(&e)))?;
        }
        retry_busy(|| {
            conn.execute_batch(
                "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                 PRAGMA wal_autocheckpoint = 20000;",
            )
        })
        .map_err(|e| open_error(describe(&e)))?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(StoreError::NewerSchema {
                database,
                found: version,
                supported,
            });
        }
        let mut store = Self {
            conn,
            quarantined: Vec::new(),
        };
        retry_busy(|| store.migrate(version))
            .map_err(|e| open_error(format!("migration failed: {e}")))?;
        Ok(store)
    }

    /// Copies what the WAL holds into the database file without waiting for readers or
    /// writers (a passive checkpoint).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(query)
    }

    fn migrate(&mut self, from: i64) -> rusqlite::Result<()> {
        for (i, script) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Another process may have migrated while we waited for the lock.
            let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if now <= i as i64 {
                tx.execute_batch(script)?;
                tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
            }
            tx.commit()?;
        }
        Ok(())
    }
}

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `op`, retrying it while SQLite says "database is locked" for up to [`BUSY_TIMEOUT`].
/// Some statements at open time (a WAL file being recovered or removed by a closing
/// connection) fail that way at once instead of waiting in the busy handler.
fn retry_busy<T>(mut op: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match op() {
            Err(e)
                if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// One line for a SQLite error, naming the usual causes plainly.
fn describe(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => {
            "the file is not a SQLite database (corrupt, or not jobhost's); it was left untouched"
                .into()
        }
        Some(ErrorCode::DatabaseCorrupt) => "the database is corrupt; it was left untouched".into(),
        Some(ErrorCode::CannotOpen)
        | Some(ErrorCode::PermissionDenied)
        | Some(ErrorCode::ReadOnly) => {
            format!("cannot open or write it: {e}")
        }
        _ => e.to_string(),
    }
}

fn query(e: rusqlite::Error) -> StoreError {
    StoreError::Query(describe(&e))
}

/// A stored value as messages show it: SQLite lets any column hold any type.
fn shown(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            let mut short: String = text.chars().take(40).collect();
            if short.len() < text.len() {
                short.push_str("...");
            }
            format!("{short:?}")
        }
        ValueRef::Blob(bytes) => format!("a blob of {} bytes", bytes.len()),
    }
}

impl Columns for Row<'_> {
    fn int(&self, index: usize) -> Result<Option<i64>, String> {
        match self.get_ref(index).map_err(|e| e.to_string())? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(i) => Ok(Some(i)),
            other => Err(format!("holds {}, not an integer", shown(other))),
        }
    }

    fn text(&self, index: usize) -> Result<Option<String>, String> {
        match self.get_ref(index).map_err(|e| e.to_string())? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(bytes) => String::from_utf8(bytes.to_vec())
                .map(Some)
                .map_err(|_| "holds text that is not UTF-8".into()),
            other => Err(format!("holds {}, not text", shown(other))),
        }
    }

    fn flag(&self, index: usize) -> Result<bool, String> {
        match self.get_ref(index).map_err(|e| e.to_string())? {
            ValueRef::Integer(i) => Ok(i != 0),
            other => Err(format!("holds {}, not 0 or 1", shown(other))),
        }
    }

    fn name(&self, index: usize) -> String {
        self.as_ref()
            .column_name(index)
            .map_or_else(|_| index.to_string(), str::to_owned)
    }
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(job_at(row, 0))
}

fn attempt_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Attempt, BadColumn>> {
    Ok(attempt_at(row, 0))
}

/// Rows decoded with `decode` (which reports a bad column as a [`BadColumn`]), or the first
/// failure.
fn decoded<T>(
    rows: impl Iterator<Item = rusqlite::Result<Result<T, BadColumn>>>,
) -> Result<Vec<T>, StoreError> {
    rows.map(|row| Ok(row.map_err(query)??)).collect()
}

/// Settles job `id`, which a claim found unreadable, as failed for `reason`.
fn quarantine(
    tx: &rusqlite::Transaction<'_>,
    id: JobId,
    reason: &str,
    now: Millis,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE jobs SET state = 'failed', finished_at = ?2, last_error = ?3 WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![id, now, rows::quarantine_error(reason)]))
    .map_err(query)?;
    Ok(())
}

fn state_of(conn: &Connection, id: JobId) -> Result<JobState, StoreError> {
    let state: Option<String> = conn
        .query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
        .optional()
        .map_err(query)?;
    let state = state.ok_or(StoreError::NotFound(id))?;
    JobState::parse(&state)
        .ok_or_else(|| StoreError::Query(format!("job {id} has unknown state {state:?}")))
}

impl SqliteStore {
    fn immediate(&mut self) -> Result<rusqlite::Transaction<'_>, StoreError> {
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(query)
    }

    fn ids(&self, sql: &str) -> Result<Vec<JobId>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(query)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(query)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(query)
    }

    fn select_dispatchers(
        &self,
        filter: &str,
        cutoff: Option<Millis>,
    ) -> Result<Vec<DispatcherRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{SELECT_DISPATCHERS} {filter} ORDER BY d.id"))
            .map_err(query)?;
        let params: &[&dyn rusqlite::ToSql] = match &cutoff {
            Some(cutoff) => &[cutoff],
            None => &[],
        };
        let rows = stmt
            .query_map(params, |r| Ok(dispatcher_at(r)))
            .map_err(query)?;
        decoded(rows)
    }
}

impl Store for SqliteStore {
    fn enqueue(&mut self, jobs: &[NewJob], now: Millis) -> Result<Vec<JobId>, StoreError> {
        let tx = self.immediate()?;
        let mut ids = Vec::with_capacity(jobs.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO jobs (class, method, params, priority, state, max_attempts, retries, \
                     retry_delay_ms, timeout_ms, plugin, run_at, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .map_err(query)?;
            for job in jobs {
                let row = NewRow::of(job, now);
                insert
                    .execute(params![
                        row.class,
                        row.method,
                        row.params,
                        row.priority,
                        row.state,
                        row.max_attempts,
                        row.retries,
                        row.retry_delay_ms,
                        row.timeout_ms,
                        row.plugin,
                        row.run_at,
                        now,
                    ])
                    .map_err(query)?;
                ids.push(tx.last_insert_rowid());
            }
        }
        tx.commit().map_err(query)?;
        Ok(ids)
    }

    fn claim(
        &mut self,
        owner: DispatcherId,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let tx = self.immediate()?;
        let registered: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM dispatchers WHERE id = ?1)")
            .and_then(|mut s| s.query_row([owner], |r| r.get(0)))
            .map_err(query)?;
        if !registered {
            return Err(StoreError::NotRegistered(owner));
        }
        // One range scan of `jobs_due` per priority, highest first, until `limit` are found;
        // then the rows whose priority is none of those (only a hand edit writes them), so
        // that they are quarantined rather than left waiting for ever.
        let mut due: Vec<JobRecord> = Vec::with_capacity(limit);
        {
            let mut by_priority = tx
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('queued', 'scheduled') \
                     AND priority = ?1 AND run_at <= ?2 ORDER BY run_at, id LIMIT ?3"
                ))
                .map_err(query)?;
            for priority in PRIORITIES_FIRST_TO_LAST {
                let wanted = (limit - due.len()) as i64;
                if wanted == 0 {
                    break;
                }
                let rows = by_priority
                    .query_map(params![priority, now, wanted], job_from_row)
                    .map_err(query)?;
                for job in rows {
                    due.push(job.map_err(query)?);
                }
            }
            let wanted = (limit - due.len()) as i64;
            if wanted > 0 {
                let mut unknown = tx
                    .prepare_cached(&format!(
                        "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('queued', 'scheduled') \
                         AND (priority < 0 OR priority > 2) AND run_at <= ?1 \
                         ORDER BY run_at, id LIMIT ?2"
                    ))
                    .map_err(query)?;
                let rows = unknown
                    .query_map(params![now, wanted], job_from_row)
                    .map_err(query)?;
                for job in rows {
                    due.push(job.map_err(query)?);
                }
            }
        }
        let mut quarantined = Vec::new();
        let mut jobs = Vec::with_capacity(due.len());
        {
            let mut claim = tx
                .prepare_cached(&format!(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1, \
                     started_at = COALESCE(started_at, ?2) WHERE id = ?1 RETURNING {JOB_COLUMNS}"
                ))
                .map_err(query)?;
            for job in due {
                if let Some(reason) = rows::unclaimable(&job) {
                    quarantine(&tx, job.id, &reason, now)?;
                    quarantined.push(Quarantined { id: job.id, reason });
                    continue;
                }
                let claimed = claim
                    .query_row(params![job.id, now], job_from_row)
                    .map_err(query)?;
                if let Some(problem) = claimed.problem {
                    return Err(StoreError::Query(format!(
                        "job {} cannot be read once claimed: {problem}",
                        job.id
                    )));
                }
                jobs.push(claimed);
            }
        }
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO attempts (job_id, attempt, started_at, dispatcher) \
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(query)?;
            for job in &jobs {
                insert
                    .execute(params![job.id, job.attempts, now, owner])
                    .map_err(query)?;
            }
        }
        tx.commit().map_err(query)?;
        self.quarantined.extend(quarantined);
        Ok(jobs)
    }

    fn attempt_started(
        &mut self,
        id: JobId,
        attempt: u32,
        start: &AttemptStart,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE attempts SET pid = ?3, plugin_hash = ?4, output_path = ?5 \
                 WHERE job_id = ?1 AND attempt = ?2",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    attempt,
                    start.pid,
                    start.plugin_hash,
                    start.output_path.to_string_lossy()
                ])
            })
            .map_err(query)?;
        Ok(())
    }

    fn settle(
        &mut self,
        id: JobId,
        attempt: u32,
        end: &AttemptEnd,
        next: &Next,
    ) -> Result<bool, StoreError> {
        let tx = self.immediate()?;
        let running: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1 AND state = 'running' AND attempts = ?2)",
            )
            .and_then(|mut s| s.query_row(params![id, attempt], |r| r.get(0)))
            .map_err(query)?;
        if !running {
            return Ok(false);
        }
        tx.prepare_cached(
            "UPDATE attempts SET finished_at = ?3, outcome = ?4, error = ?5, output_bytes = ?6 \
             WHERE job_id = ?1 AND attempt = ?2",
        )
        .and_then(|mut s| {
            s.execute(params![
                id,
                attempt,
                end.finished_at,
                end.outcome,
                end.error,
                end.output_bytes as i64
            ])
        })
        .map_err(query)?;
        let settled = Settled::of(end, next);
        tx.prepare_cached(
            "UPDATE jobs SET state = ?2, run_at = COALESCE(?3, run_at), finished_at = ?4, \
             last_error = COALESCE(?5, last_error), result = ?6, max_attempts = max_attempts + ?7 \
             WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.execute(params![
                id,
                settled.state.as_str(),
                settled.run_at,
                settled.finished_at,
                end.error,
                settled.result,
                settled.extra_attempts
            ])
        })
        .map_err(query)?;
        tx.commit().map_err(query)?;
        Ok(true)
    }

    fn cancel(&mut self, id: JobId, now: Millis) -> Result<CancelOutcome, StoreError> {
        let tx = self.immediate()?;
        let outcome = rows::cancel_outcome(state_of(&tx, id)?);
        match outcome {
            CancelOutcome::Cancelled => tx.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?2 WHERE id = ?1",
                params![id, now],
            ),
            CancelOutcome::Requested => {
                tx.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1", [id])
            }
            CancelOutcome::AlreadyFinished(_) => Ok(0),
        }
        .map_err(query)?;
        tx.commit().map_err(query)?;
        Ok(outcome)
    }

    fn retry(&mut self, id: JobId, now: Millis) -> Result<(), StoreError> {
        let tx = self.immediate()?;
        let (attempts, retries): (i64, i64) = tx
            .query_row(
                "SELECT attempts, retries FROM jobs WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(query)?
            .ok_or(StoreError::NotFound(id))?;
        let (retries, max_attempts) =
            rows::renewed_budget(id, state_of(&tx, id)?, attempts, retries)?;
        tx.execute(
            "UPDATE jobs SET state = 'queued', run_at = ?2, finished_at = NULL, cancel_requested = 0, \
             retries = ?3, max_attempts = ?4 WHERE id = ?1",
            params![id, now, retries, max_attempts],
        )
        .map_err(query)?;
        tx.commit().map_err(query)?;
        Ok(())
    }

    fn take_quarantined(&mut self) -> Vec<Quarantined> {
        std::mem::take(&mut self.quarantined)
    }

    fn job(&mut self, id: JobId) -> Result<Option<(JobRecord, Vec<Attempt>)>, StoreError> {
        let job = self
            .conn
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_from_row,
            )
            .optional()
            .map_err(query)?;
        let Some(job) = job else { return Ok(None) };
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id = ?1 ORDER BY attempt"
            ))
            .map_err(query)?;
        let attempts = stmt
            .query_map([id], attempt_from_row)
            .map_err(query)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(query)?;
        Ok(Some(rows::with_attempts(job, attempts)))
    }

    fn list(&mut self, filter: &ListFilter) -> Result<Vec<JobRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) \
                 AND (?2 IS NULL OR class = ?2) AND (?3 IS NULL OR priority = ?3) \
                 ORDER BY id DESC LIMIT ?4 OFFSET ?5"
            ))
            .map_err(query)?;
        let rows = stmt
            .query_map(
                params![
                    filter.state.map(JobState::as_str),
                    filter.class,
                    filter.priority.map(rows::priority_to_i64),
                    i64::from(filter.limit),
                    i64::from(filter.offset)
                ],
                job_from_row,
            )
            .map_err(query)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(query)
    }

    fn stats(&mut self) -> Result<Stats, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")
            .map_err(query)?;
        let counts = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(query)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(query)?;
        Ok(rows::stats(counts))
    }

    fn finished_since(&mut self, since: Millis) -> Result<Finished, StoreError> {
        let mut count = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM jobs WHERE state = ?1 AND finished_at >= ?2")
            .map_err(query)?;
        let mut of = |state: JobState| {
            count
                .query_row(params![state.as_str(), since], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
                .map_err(query)
        };
        Ok(Finished {
            completed: of(JobState::Completed)?,
            failed: of(JobState::Failed)?,
        })
    }

    fn cancel_requests(&mut self) -> Result<Vec<JobId>, StoreError> {
        self.ids("SELECT id FROM jobs WHERE state = 'running' AND cancel_requested = 1")
    }

    fn running(&mut self) -> Result<Vec<(JobRecord, Attempt)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {}, {} FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempts \
                 WHERE j.state = 'running' ORDER BY j.id",
                prefixed(JOB_COLUMNS, "j"),
                prefixed(ATTEMPT_COLUMNS, "a")
            ))
            .map_err(query)?;
        let rows = stmt
            .query_map([], |row| {
                Ok(attempt_at(row, JOB_COLUMN_COUNT).map(|attempt| (job_at(row, 0), attempt)))
            })
            .map_err(query)?;
        decoded(rows)
    }

    fn next_run_at(&mut self) -> Result<Option<Millis>, StoreError> {
        // The smallest run_at of each priority is the first entry of its range of `jobs_due`.
        let mut first = self
            .conn
            .prepare_cached(
                "SELECT MIN(run_at) FROM jobs WHERE state IN ('queued', 'scheduled') AND priority = ?1",
            )
            .map_err(query)?;
        let mut earliest: Option<Millis> = None;
        for priority in PRIORITIES_FIRST_TO_LAST {
            let at: Option<Millis> = first.query_row([priority], |r| r.get(0)).map_err(query)?;
            earliest = match (earliest, at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(earliest)
    }

    fn unfinished(&mut self) -> Result<u64, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'scheduled', 'running')",
            )
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
            .map(|n| n.max(0) as u64)
            .map_err(query)
    }

    fn unfinished_plugins(&mut self) -> Result<Vec<PathBuf>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT plugin FROM jobs \
                 WHERE state IN ('queued', 'scheduled', 'running') ORDER BY plugin",
            )
            .map_err(query)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0).map(PathBuf::from))
            .map_err(query)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(query)
    }

    fn register_dispatcher(
        &mut self,
        info: &DispatcherInfo,
        now: Millis,
    ) -> Result<DispatcherId, StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO dispatchers (host, pid, slots, state_dir, started_at, heartbeat_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5) RETURNING id",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![info.host, info.pid, info.slots, info.state_dir, now],
                    |r| r.get(0),
                )
            })
            .map_err(query)
    }

    fn heartbeat(&mut self, id: DispatcherId, now: Millis) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("UPDATE dispatchers SET heartbeat_at = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id, now]))
            .map(|changed| changed == 1)
            .map_err(query)
    }

    fn deregister(&mut self, id: DispatcherId) -> Result<bool, StoreError> {
        let tx = self.immediate()?;
        let owns_unsettled: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM attempts WHERE dispatcher = ?1 AND finished_at IS NULL)",
            )
            .and_then(|mut s| s.query_row([id], |r| r.get(0)))
            .map_err(query)?;
        if owns_unsettled {
            return Ok(false);
        }
        tx.execute("DELETE FROM dispatchers WHERE id = ?1", [id])
            .map_err(query)?;
        tx.commit().map_err(query)?;
        Ok(true)
    }

    fn dispatchers(&mut self) -> Result<Vec<DispatcherRecord>, StoreError> {
        self.select_dispatchers("", None)
    }

    fn expired_dispatchers(&mut self, cutoff: Millis) -> Result<Vec<DispatcherRecord>, StoreError> {
        self.select_dispatchers("WHERE d.heartbeat_at < ?1", Some(cutoff))
    }
}
