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
    Amended, Attempt, AttemptEnd, AttemptStart, CancelOutcome, Cutoff, DispatcherId,
    DispatcherInfo, DispatcherRecord, Finished, JobId, JobRecord, JobState, ListFilter,
    Maintenance, Millis, NewJob, Next, Pruned, Quarantined, Stats, Store, StoreError,
};

/// The migrations, in order; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/001_jobs.sql"),
    include_str!("migrations/002_claim_by_priority.sql"),
    include_str!("migrations/003_finished_index.sql"),
    include_str!("migrations/004_dispatchers.sql"),
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
        let open_error = open_error(path);
        if let Some(dir) = path.parent() {
            crate::shared::files::create_private_dir(dir).map_err(|e| open_error(e.to_string()))?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let (conn, version) = connect(path, flags)?;
        let database = path.display().to_string();
        let failed = |e: rusqlite::Error| open_failure(&database, "", &e);
        // A checkpoint (copying the WAL into the database, with an fsync) would stall whichever
        // commit crosses the threshold; the dispatcher runs them in the background instead
        // ([`SqliteStore::checkpoint`]), and this high threshold only bounds the WAL when no
        // dispatcher runs. `journal_size_limit` cuts the file back when a writer starts the
        // WAL over after a complete checkpoint.
        // The journal mode is stored in the file: switching needs an exclusive lock, so it is
        // only asked for when the file is not in WAL mode yet (a new database).
        let mode: String = retry_busy(|| conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
            .map_err(failed)?;
        if !mode.eq_ignore_ascii_case("wal") {
            retry_busy(|| conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())))
                .map_err(failed)?;
        }
        retry_busy(|| {
            conn.execute_batch(&format!(
                "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                 PRAGMA wal_autocheckpoint = 20000; PRAGMA journal_size_limit = {WAL_LIMIT};"
            ))
        })
        .map_err(failed)?;
        check_not_newer(path, version)?;
        let mut store = Self {
            conn,
            quarantined: Vec::new(),
        };
        retry_busy(|| store.migrate(version))
            .map_err(|e| open_failure(&database, "migration failed: ", &e))?;
        Ok(store)
    }

    /// Opens the database at `path` for reading only, if it exists: `None` when there is no
    /// file, and nothing is created. A database of an older schema is brought up to date
    /// first, as [`SqliteStore::open`] does; an up-to-date one is opened read-only, and the
    /// methods that write fail.
    pub fn open_existing(path: &Path) -> Result<Option<Self>, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let (conn, version) = match connect(path, flags) {
            Err(_) if !path.exists() => return Ok(None),
            other => other?,
        };
        check_not_newer(path, version)?;
        if version < MIGRATIONS.len() as i64 {
            drop(conn);
            return Self::open(path).map(Some);
        }
        Ok(Some(Self {
            conn,
            quarantined: Vec::new(),
        }))
    }

    /// Copies what the WAL holds into the database file without waiting for readers or
    /// writers (a passive checkpoint); returns how many bytes the WAL holds. When all of it
    /// was copied, the next commit starts the WAL over, cutting its file back to
    /// [`WAL_LIMIT`]; under a steady stream of commits that moment seldom comes (each one
    /// adds frames while the checkpoint runs), and only [`SqliteStore::truncate_wal`] bounds it.
    pub fn checkpoint(&self) -> Result<u64, StoreError> {
        let frames: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .map_err(query)?;
        let page_size: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(query)?;
        Ok(u64::try_from(frames.max(0) * page_size).unwrap_or(0))
    }

    /// Copies all of the WAL into the database file and truncates the WAL to nothing, if
    /// readers of older snapshots let it within [`TRUNCATE_PATIENCE`] (writers wait that long
    /// at most). Returns whether it did.
    pub fn truncate_wal(&self) -> Result<bool, StoreError> {
        self.conn.busy_timeout(TRUNCATE_PATIENCE).map_err(query)?;
        let busy = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
        self.conn.busy_timeout(BUSY_TIMEOUT).map_err(query)?;
        Ok(busy.map_err(query)? == 0)
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

/// How often the database's write-ahead log is folded into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// A dispatcher's checkpointer: so that no commit on the hot path pays for the fsync. A
/// passive checkpoint never holds anybody up, but while commits keep coming the WAL seldom
/// starts over; so when it holds more than [`WAL_LIMIT`] the checkpointer truncates it, which
/// holds writers up briefly and gives up rather than long.
impl Maintenance for SqliteStore {
    fn interval(&self) -> Duration {
        CHECKPOINT_EVERY
    }

    fn maintain(&mut self) -> Result<(), StoreError> {
        if self.checkpoint()? > WAL_LIMIT as u64 {
            self.truncate_wal()?;
        }
        Ok(())
    }
}

/// The size the WAL file is cut back to when a writer starts it over after a complete
/// checkpoint (`journal_size_limit`): without it the file keeps the size of its largest burst.
pub const WAL_LIMIT: i64 = 8 * 1024 * 1024;

/// How long a truncating checkpoint waits for readers of older snapshots, holding up writers
/// meanwhile, before it gives up until next time.
const TRUNCATE_PATIENCE: Duration = Duration::from_millis(100);

/// The error for the database at `path` that cannot be opened, for this reason.
fn open_error(path: &Path) -> impl Fn(String) -> StoreError + '_ {
    move |reason| StoreError::Open {
        database: path.display().to_string(),
        reason,
    }
}

/// Opens a connection to `path` with `flags` and reads its schema version.
fn connect(path: &Path, flags: OpenFlags) -> Result<(Connection, i64), StoreError> {
    let open_error = open_error(path);
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(e.to_string()))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| open_error(e.to_string()))?;
    // The first statement that reads the file is where a corrupt file shows itself.
    let version: i64 = retry_busy(|| conn.query_row("PRAGMA user_version", [], |r| r.get(0)))
        .map_err(|e| open_failure(&path.display().to_string(), "", &e))?;
    Ok((conn, version))
}

/// Refuses a database whose schema is newer than this build's.
fn check_not_newer(path: &Path, version: i64) -> Result<(), StoreError> {
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::NewerSchema {
            database: path.display().to_string(),
            found: version,
            supported,
        });
    }
    Ok(())
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
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => format!(
            "another connection held its lock for longer than {}s ({e})",
            BUSY_TIMEOUT.as_secs()
        ),
        Some(ErrorCode::DiskFull) => format!("the disk or the database's size limit is full ({e})"),
        Some(ErrorCode::CannotOpen)
        | Some(ErrorCode::PermissionDenied)
        | Some(ErrorCode::ReadOnly) => {
            format!("cannot open or write it: {e}")
        }
        _ => e.to_string(),
    }
}

fn query(e: rusqlite::Error) -> StoreError {
    classify(&e)
}

/// `e` as a store error of its class (see [`StoreError::class`]).
fn classify(e: &rusqlite::Error) -> StoreError {
    let reason = describe(e);
    let Some(code) = e.sqlite_error_code() else {
        return StoreError::Query(reason);
    };
    match code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreError::Busy(reason),
        ErrorCode::DiskFull => StoreError::DiskFull(reason),
        ErrorCode::ReadOnly if extended_code(e) == Some(SQLITE_READONLY_DBMOVED) => {
            StoreError::Corrupt(reason)
        }
        ErrorCode::SystemIoFailure
        | ErrorCode::OutOfMemory
        | ErrorCode::CannotOpen
        | ErrorCode::PermissionDenied
        | ErrorCode::ReadOnly
        | ErrorCode::FileLockingProtocolFailed => StoreError::Io(reason),
        ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => StoreError::Corrupt(reason),
        _ => StoreError::Query(reason),
    }
}

/// SQLite's extended result code of `e`, if it has one.
fn extended_code(e: &rusqlite::Error) -> Option<std::ffi::c_int> {
    match e {
        rusqlite::Error::SqliteFailure(failure, _) => Some(failure.extended_code),
        _ => None,
    }
}

/// The database file was moved or deleted while open: writes would go nowhere anyone reads.
const SQLITE_READONLY_DBMOVED: std::ffi::c_int = rusqlite::ffi::SQLITE_READONLY_DBMOVED;

/// What failed while opening `database`: a condition that passes (busy, full, an I/O error)
/// as its own class, so that opening again may succeed; anything else — not a database, a
/// file that cannot be opened or written at all — as [`StoreError::Open`], its reason after
/// `context`.
fn open_failure(database: &str, context: &str, e: &rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::OutOfMemory,
        ) => classify(e),
        _ => StoreError::Open {
            database: database.to_owned(),
            reason: format!("{context}{}", describe(e)),
        },
    }
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
    /// Jobs each with one of their attempts, `from` naming `jobs j` and `attempts a`, how they
    /// join and which rows: what [`Store::running`] and [`Store::lost_attempts`] read.
    fn jobs_with_attempts(&self, from: &str) -> Result<Vec<(JobRecord, Attempt)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {}, {} {from}",
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

/// The ids of up to `limit` jobs finished before their state's cutoff, oldest first per state:
/// a range scan of `jobs_finished` per cutoff.
fn expired_ids(
    conn: &Connection,
    cutoffs: &[Cutoff],
    limit: usize,
) -> Result<Vec<JobId>, StoreError> {
    let mut due = conn
        .prepare_cached(
            "SELECT id FROM jobs WHERE state = ?1 AND finished_at < ?2 ORDER BY finished_at LIMIT ?3",
        )
        .map_err(query)?;
    let mut ids = Vec::new();
    for cutoff in cutoffs.iter().filter(|c| c.state.is_terminal()) {
        let wanted = i64::try_from(limit - ids.len()).unwrap_or(i64::MAX);
        if wanted == 0 {
            break;
        }
        let rows = due
            .query_map(params![cutoff.state.as_str(), cutoff.before, wanted], |r| {
                r.get(0)
            })
            .map_err(query)?;
        for id in rows {
            ids.push(id.map_err(query)?);
        }
    }
    Ok(ids)
}

/// How many attempts the jobs `ids` have.
fn attempt_count(conn: &Connection, ids: &[JobId]) -> Result<u64, StoreError> {
    let mut count = conn
        .prepare_cached("SELECT COUNT(*) FROM attempts WHERE job_id = ?1")
        .map_err(query)?;
    let mut total = 0;
    for id in ids {
        let n: i64 = count.query_row([id], |r| r.get(0)).map_err(query)?;
        total += n.max(0) as u64;
    }
    Ok(total)
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

    fn lost_attempts(&mut self) -> Result<Vec<(JobRecord, Attempt)>, StoreError> {
        self.jobs_with_attempts(
            "FROM attempts a JOIN jobs j ON j.id = a.job_id \
             WHERE a.outcome = 'lost' ORDER BY a.job_id, a.attempt",
        )
    }

    fn amend_lost(
        &mut self,
        id: JobId,
        attempt: u32,
        end: &AttemptEnd,
        next: &Next,
    ) -> Result<Amended, StoreError> {
        let tx = self.immediate()?;
        let lost: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM attempts WHERE job_id = ?1 AND attempt = ?2 \
                 AND outcome = 'lost')",
            )
            .and_then(|mut s| s.query_row(params![id, attempt], |r| r.get(0)))
            .map_err(query)?;
        if !lost {
            return Ok(Amended::NotLost);
        }
        tx.prepare_cached(
            "UPDATE attempts SET outcome = ?3, error = ?4 WHERE job_id = ?1 AND attempt = ?2",
        )
        .and_then(|mut s| s.execute(params![id, attempt, end.outcome, end.error]))
        .map_err(query)?;
        let settled = Settled::of(end, next);
        let moved = tx
            .prepare_cached(
                "UPDATE jobs SET state = ?3, run_at = COALESCE(?4, run_at), finished_at = ?5, \
                 last_error = ?6, result = ?7, max_attempts = max_attempts + ?8 \
                 WHERE id = ?1 AND attempts = ?2 AND state IN ('queued', 'scheduled')",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    attempt,
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
        Ok(if moved == 1 {
            Amended::Moved
        } else {
            Amended::Recorded
        })
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
        // One read transaction: both statements see one snapshot, so the attempts counted
        // are the attempts listed.
        let tx = self.conn.transaction().map_err(query)?;
        let job = tx
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_from_row,
            )
            .optional()
            .map_err(query)?;
        let Some(job) = job else { return Ok(None) };
        let attempts = tx
            .prepare_cached(&format!(
                "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id = ?1 ORDER BY attempt"
            ))
            .and_then(|mut stmt| {
                stmt.query_map([id], attempt_from_row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(query)?;
        tx.commit().map_err(query)?;
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
        self.jobs_with_attempts(
            "FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempts \
             WHERE j.state = 'running' ORDER BY j.id",
        )
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

    #[cfg(any(test, feature = "internals"))]
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

    fn prune(&mut self, cutoffs: &[Cutoff], limit: usize) -> Result<Option<Pruned>, StoreError> {
        let tx = self.immediate()?;
        let jobs = expired_ids(&tx, cutoffs, limit)?;
        let mut attempts = 0;
        {
            let mut delete_attempts = tx
                .prepare_cached("DELETE FROM attempts WHERE job_id = ?1")
                .map_err(query)?;
            let mut delete_job = tx
                .prepare_cached("DELETE FROM jobs WHERE id = ?1")
                .map_err(query)?;
            for id in &jobs {
                attempts += delete_attempts.execute([id]).map_err(query)? as u64;
                delete_job.execute([id]).map_err(query)?;
            }
        }
        tx.commit().map_err(query)?;
        Ok(Some(Pruned { jobs, attempts }))
    }

    fn expired(&mut self, cutoffs: &[Cutoff]) -> Result<Pruned, StoreError> {
        // One read transaction: the jobs and their attempts counted on the same snapshot.
        let tx = self.conn.transaction().map_err(query)?;
        let jobs = expired_ids(&tx, cutoffs, usize::MAX)?;
        let attempts = attempt_count(&tx, &jobs)?;
        drop(tx);
        Ok(Pruned { jobs, attempts })
    }

    fn existing_jobs(&mut self, ids: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        let mut exists = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1)")
            .map_err(query)?;
        let mut found = Vec::new();
        for &id in ids {
            if exists.query_row([id], |r| r.get(0)).map_err(query)? {
                found.push(id);
            }
        }
        found.sort_unstable();
        found.dedup();
        Ok(found)
    }

    fn dispatchers(&mut self) -> Result<Vec<DispatcherRecord>, StoreError> {
        self.select_dispatchers("", None)
    }

    fn expired_dispatchers(&mut self, cutoff: Millis) -> Result<Vec<DispatcherRecord>, StoreError> {
        self.select_dispatchers("WHERE d.heartbeat_at < ?1", Some(cutoff))
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, time::Duration};

    use rusqlite::trace::{TraceEvent, TraceEventCodes};
    use serde_json::json;

    use super::{SqliteStore, WAL_LIMIT};
    use crate::{
        job::{JobSpec, Priority},
        store::{
            conformance::{info, new_job},
            AttemptEnd, AttemptStart, ErrorClass, NewJob, Next, Store, StoreError,
        },
    };

    fn job(params: serde_json::Value) -> NewJob {
        NewJob {
            spec: JobSpec {
                class: "A".into(),
                method: "handle".into(),
                params,
                retries: 0,
                retry_delay: Duration::from_secs(1),
                priority: Priority::Normal,
                delay: Duration::ZERO,
                timeout: Duration::from_secs(60),
            },
            plugin: "/p/liba.so".into(),
        }
    }

    fn jobs_in(store: &mut SqliteStore) -> u64 {
        store.stats().unwrap().by_state.values().sum()
    }

    #[test]
    fn a_lock_held_past_the_busy_timeout_is_a_transient_busy_error_that_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite3");
        let mut store = SqliteStore::open(&path).unwrap();
        let id = store.enqueue(&[job(json!({}))], 1000).unwrap()[0];
        // The store waits 10 s for a lock; a test need not.
        store.conn.busy_timeout(Duration::from_millis(100)).unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();

        let failures = [
            store.enqueue(&[job(json!({}))], 1100).unwrap_err(),
            store.cancel(id, 1100).unwrap_err(),
        ];
        for e in failures {
            assert!(matches!(e, StoreError::Busy(_)), "{e}");
            assert_eq!(e.class(), ErrorClass::Transient, "{e}");
            assert!(e.is_transient() && !e.outcome_unknown(), "{e}");
            assert!(e.to_string().contains("held its lock"), "{e}");
        }

        other.execute_batch("COMMIT").unwrap();
        assert_eq!(jobs_in(&mut store), 1, "the refused enqueue stored nothing");
        let (stored, _) = store.job(id).unwrap().unwrap();
        assert_eq!(
            stored.state,
            crate::store::JobState::Queued,
            "not cancelled"
        );
        store.enqueue(&[job(json!({}))], 1200).unwrap();
        assert_eq!(jobs_in(&mut store), 2, "the next call succeeds");
    }

    /// SQLite's page limit fails a write with the very error a full disk gives (SQLITE_FULL),
    /// without needing a small file system to fill.
    #[test]
    fn a_full_database_is_a_transient_disk_full_error_that_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("jobs.sqlite3")).unwrap();
        store.enqueue(&[job(json!({}))], 1000).unwrap();
        let pages: i64 = store
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        store
            .conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
            .unwrap();

        let big = job(json!({ "text": "x".repeat(64 * 1024) }));
        let e = store
            .enqueue(&[big.clone(), big.clone()], 1100)
            .unwrap_err();
        assert!(matches!(e, StoreError::DiskFull(_)), "{e}");
        assert!(e.is_transient() && !e.outcome_unknown(), "{e}");
        assert_eq!(jobs_in(&mut store), 1, "the failed batch stored nothing");

        store
            .conn
            .query_row("PRAGMA max_page_count = 1073741823", [], |_| Ok(()))
            .unwrap();
        store.enqueue(&[big], 1200).unwrap();
        assert_eq!(jobs_in(&mut store), 2, "once there is room, writes succeed");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_fatal_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite3");
        let garbage = b"not a database, but someone's precious file\n".repeat(200);
        std::fs::write(&path, &garbage).unwrap();
        let Err(e) = SqliteStore::open(&path) else {
            panic!("opened a file that is not a database")
        };
        assert!(matches!(e, StoreError::Open { .. }), "{e}");
        assert!(e.is_fatal() && !e.is_transient(), "{e}");
        assert!(e.to_string().contains("not a SQLite database"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), garbage, "not overwritten");
    }

    #[test]
    fn a_database_with_corrupt_pages_is_fatal_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite3");
        let mut store = SqliteStore::open(&path).unwrap();
        let page_size: usize = store
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        let batch: Vec<NewJob> = (0..200).map(|n| job(json!({ "n": n }))).collect();
        store.enqueue(&batch, 1000).unwrap();
        drop(store); // the last connection to close copies the WAL into the file
                     // Every page but the first (the header and the schema) overwritten.
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 4 * page_size, "{} bytes", bytes.len());
        bytes[page_size..].fill(0xA5);
        std::fs::write(&path, &bytes).unwrap();

        let mut store = SqliteStore::open(&path).unwrap();
        let e = store.list(&crate::store::ListFilter {
            limit: 500,
            ..Default::default()
        });
        let e = e.unwrap_err();
        assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
        assert!(e.is_fatal() && !e.is_transient(), "{e}");
        assert!(e.to_string().contains("corrupt"), "{e}");
    }

    /// A job whose params are `params_bytes` bytes of padding.
    fn padded(params_bytes: usize) -> NewJob {
        job(json!({ "pad": "x".repeat(params_bytes) }))
    }

    #[test]
    fn the_wal_is_cut_back_to_its_limit_after_a_checkpoint_however_large_a_burst_made_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite3");
        let wal = dir.path().join("jobs.sqlite3-wal");
        let mut store = SqliteStore::open(&path).unwrap();
        let burst: Vec<NewJob> = (0..2000).map(|_| padded(10_000)).collect();
        store.enqueue(&burst, 0).unwrap();
        let grown = std::fs::metadata(&wal).unwrap().len();
        assert!(
            grown > 2 * WAL_LIMIT as u64,
            "the burst made the WAL {grown} bytes"
        );
        // The dispatcher's background checkpoint, then the next commit starts the WAL over.
        assert!(store.checkpoint().unwrap() > 2 * WAL_LIMIT as u64);
        store.enqueue(&[padded(10)], 0).unwrap();
        let after = std::fs::metadata(&wal).unwrap().len();
        assert!(after <= WAL_LIMIT as u64, "the WAL stayed at {after} bytes");
        assert!(store.truncate_wal().unwrap());
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        assert_eq!(store.unfinished().unwrap(), 2001, "nothing was lost");
    }

    #[test]
    fn a_dispatchers_maintenance_truncates_a_wal_past_its_limit_and_it_needs_no_listener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite3");
        let wal = dir.path().join("jobs.sqlite3-wal");
        let location = crate::store::StoreLocation::Sqlite(path.clone());
        assert!(crate::store::listener(&location).unwrap().is_none());
        let mut maintenance = crate::store::maintenance(&location).unwrap().unwrap();
        assert_eq!(maintenance.interval(), Duration::from_secs(1));
        let mut store = SqliteStore::open(&path).unwrap();
        store.enqueue(&[padded(10)], 0).unwrap();
        maintenance.maintain().unwrap();
        assert!(
            std::fs::metadata(&wal).unwrap().len() > 0,
            "a small WAL is kept"
        );
        let burst: Vec<NewJob> = (0..1000).map(|_| padded(10_000)).collect();
        store.enqueue(&burst, 0).unwrap();
        assert!(std::fs::metadata(&wal).unwrap().len() > WAL_LIMIT as u64);
        maintenance.maintain().unwrap();
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        assert_eq!(store.unfinished().unwrap(), 1001, "nothing was lost");
    }

    #[test]
    fn truncating_the_wal_gives_up_quickly_while_a_reader_keeps_an_older_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite3");
        let mut store = SqliteStore::open(&path).unwrap();
        store.enqueue(&[padded(10)], 0).unwrap();
        let reader = rusqlite::Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let seen: i64 = reader
            .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, 1);
        store.enqueue(&[padded(10)], 0).unwrap();
        let started = std::time::Instant::now();
        assert!(!store.truncate_wal().unwrap(), "truncated under a reader");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // Writers go on meanwhile, and once the reader is done the WAL is truncated.
        store.enqueue(&[padded(10)], 0).unwrap();
        reader.execute_batch("COMMIT").unwrap();
        assert!(store.truncate_wal().unwrap());
        let wal = dir.path().join("jobs.sqlite3-wal");
        assert_eq!(std::fs::metadata(wal).unwrap().len(), 0);
        assert_eq!(store.unfinished().unwrap(), 3);
    }

    thread_local! {
        /// What the next statement reading `attempts` runs first, on another connection.
        static BEFORE_ATTEMPTS_READ: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
    }

    fn before_attempts_read(event: TraceEvent<'_>) {
        if let TraceEvent::Stmt(_, sql) = event {
            if sql.contains("FROM attempts") {
                if let Some(write) = BEFORE_ATTEMPTS_READ.with(|w| w.borrow_mut().take()) {
                    write();
                }
            }
        }
    }

    #[test]
    fn job_reads_the_job_and_its_attempts_from_one_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite3");
        let mut reader = SqliteStore::open(&path).unwrap();
        let mut writer = SqliteStore::open(&path).unwrap();
        let owner = writer.register_dispatcher(&info("h"), 0).unwrap();
        let id = writer
            .enqueue(&[new_job("A", Priority::Normal, 0)], 0)
            .unwrap()[0];
        writer.claim(owner, 0, 1).unwrap();

        // Between reading the job and reading its attempts, another connection settles the
        // first attempt and starts the second.
        BEFORE_ATTEMPTS_READ.with(|w| {
            *w.borrow_mut() = Some(Box::new(move || {
                let end = AttemptEnd {
                    finished_at: 10,
                    outcome: "error".into(),
                    error: Some("boom".into()),
                    output_bytes: 0,
                };
                assert!(writer.settle(id, 1, &end, &Next::Retry(10)).unwrap());
                assert_eq!(writer.claim(owner, 10, 1).unwrap().len(), 1);
                let start = AttemptStart {
                    pid: 1,
                    plugin_hash: "h".into(),
                    output_path: "/out/2.out".into(),
                };
                writer.attempt_started(id, 2, &start).unwrap();
            }));
        });
        reader.conn.trace_v2(
            TraceEventCodes::SQLITE_TRACE_STMT,
            Some(before_attempts_read),
        );
        let (job, attempts) = reader.job(id).unwrap().unwrap();
        assert!(
            BEFORE_ATTEMPTS_READ.with(|w| w.borrow().is_none()),
            "the other connection wrote during the read"
        );
        assert_eq!(
            job.attempts as usize,
            attempts.len(),
            "counted and listed attempts agree: {job:?} {attempts:?}"
        );
    }
}
