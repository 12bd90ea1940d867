//! The PostgreSQL store: one database shared by the dispatchers of several hosts, migrated with
//! the numbered scripts in `migrations/postgres/`.
//!
//! Each [`PostgresStore`] holds one connection (the synchronous `postgres` client, without TLS)
//! and runs every call as one transaction. Claims lock the jobs they take with
//! `FOR UPDATE SKIP LOCKED`, so claimers on any number of hosts never take the same job and
//! never wait for each other. Enqueue, cancel and retry `NOTIFY` the channel [`CHANNEL`] in
//! their transaction; a [`PgListener`] (a connection of its own doing `LISTEN`) wakes an idle
//! dispatcher with them.
//!
//! A call that finds the connection broken (the server restarted, an administrator ended the
//! session) fails with [`StoreError::ConnectionLost`], and the next call connects again to the
//! same URL. The failed call's transaction was rolled back, unless the connection broke while
//! it committed (or while a write of a single statement ran): then the server may have stored
//! it, and the call fails with [`StoreError::CommitUnknown`] instead. A failed call is never
//! repeated on its own: only the caller knows whether doing it twice is harmless. Other
//! server errors are classified by their SQLSTATE (see [`classify`]).

use std::{collections::HashMap, time::Duration};

use ::postgres::{
    error::SqlState, fallible_iterator::FallibleIterator, types::ToSql, Client, Config,
    GenericClient, IsolationLevel, NoTls, Row, Statement, Transaction,
};

use super::{
    masked,
    rows::{
        self, attempt_at, dispatcher_at, job_at, prefixed, Columns, NewRow, Settled,
        ATTEMPT_COLUMNS, JOB_COLUMNS, JOB_COLUMN_COUNT, SELECT_DISPATCHERS,
    },
    Amended, Attempt, AttemptEnd, AttemptStart, CancelOutcome, Cutoff, DispatcherId,
    DispatcherInfo, DispatcherRecord, Finished, JobId, JobRecord, JobState, ListFilter, Listener,
    Millis, NewJob, Next, Pruned, Quarantined, Stats, Store, StoreError,
};

/// The migrations, in order; the table `jobhost_schema` holds the number applied.
const MIGRATIONS: &[&str] = &[include_str!("migrations/001_jobs.sql")];

/// The advisory lock migrations run under, so that processes opening a new database at once
/// migrate it one after the other ("jobhost" in ASCII).
const MIGRATION_LOCK: i64 = 0x006a_6f62_686f_7374;

/// The advisory lock a pruning transaction holds, so that dispatchers on several hosts prune
/// one at a time ("jobprune" in ASCII).
const PRUNE_LOCK: i64 = 0x6a6f_6270_7275_6e65;

/// The channel enqueue, cancel and retry notify, with a [`Wake`] as payload.
pub const CHANNEL: &str = "jobhost_wake";

/// How long connecting may take when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection settings of the PostgreSQL URL `url`, checked without connecting, with
/// jobhost's defaults, or why it is not one.
pub(super) fn parse_url(url: &str) -> Result<Config, String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("expected a PostgreSQL URL, postgres://USER@HOST:PORT/DATABASE".into());
    }
    let mut config: Config = url.parse().map_err(|e| describe(&e))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    Ok(config)
}

/// One line for a PostgreSQL error: the server's message with its SQLSTATE, or the client's
/// error with its causes.
fn describe(e: &::postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    crate::shared::text::chain(e)
}

/// Whether `e`, met on `client`, means the connection is gone rather than the statement failed.
fn connection_lost(e: &::postgres::Error, client: &Client) -> bool {
    client.is_closed()
        || e.is_closed()
        || e.code().is_some_and(|code| {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(code)
        })
}

/// `e`, met on `client`, as a store error of its class (see [`StoreError::class`]): a lost
/// connection is [`StoreError::CommitUnknown`] when it broke while `committing`, else
/// [`StoreError::ConnectionLost`]; the server's errors go by their SQLSTATE.
fn classify(
    e: &::postgres::Error,
    client: &Client,
    database: &str,
    committing: bool,
) -> StoreError {
    let reason = describe(e);
    if connection_lost(e, client) {
        let database = database.to_owned();
        return if committing {
            StoreError::CommitUnknown { database, reason }
        } else {
            StoreError::ConnectionLost { database, reason }
        };
    }
    let Some(code) = e.code() else {
        return StoreError::Query(reason);
    };
    let class = &code.code()[..2];
    if [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
    ]
    .contains(code)
    {
        StoreError::Conflict(reason)
    } else if [SqlState::LOCK_NOT_AVAILABLE, SqlState::QUERY_CANCELED].contains(code) {
        StoreError::Busy(reason)
    } else if *code == SqlState::DISK_FULL {
        StoreError::DiskFull(reason)
    } else if [SqlState::DATA_CORRUPTED, SqlState::INDEX_CORRUPTED].contains(code) {
        StoreError::Corrupt(reason)
    } else if class == "53" || class == "58" {
        // Insufficient resources (memory, connections) or a system error (I/O).
        StoreError::Io(reason)
    } else {
        StoreError::Query(reason)
    }
}

/// Connects with `config` as the application `name` (unless the URL names one).
fn connect(config: &Config, name: &str) -> Result<Client, ::postgres::Error> {
    let mut config = config.clone();
    if config.get_application_name().is_none() {
        config.application_name(name);
    }
    config.connect(NoTls)
}

impl Columns for Row {
    fn int(&self, index: usize) -> Result<Option<i64>, String> {
        self.try_get(index)
            .map_err(|e| format!("cannot be read: {}", describe(&e)))
    }

    fn text(&self, index: usize) -> Result<Option<String>, String> {
        self.try_get(index)
            .map_err(|e| format!("cannot be read: {}", describe(&e)))
    }

    fn flag(&self, index: usize) -> Result<bool, String> {
        self.try_get::<_, Option<bool>>(index)
            .map_err(|e| format!("cannot be read: {}", describe(&e)))?
            .ok_or_else(|| "is NULL".to_owned())
    }

    fn name(&self, index: usize) -> String {
        self.columns()
            .get(index)
            .map_or_else(|| index.to_string(), |c| c.name().to_owned())
    }
}

/// Column `index` of `row`, which the query makes sure has type `T` (a count, an id).
fn get<'a, T: ::postgres::types::FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, StoreError> {
    row.try_get(index).map_err(|e| query(&e))
}

fn query(e: &::postgres::Error) -> StoreError {
    StoreError::Query(describe(e))
}

/// Why a call failed: PostgreSQL's error (which may be a lost connection), PostgreSQL's error
/// while committing (or while a write of a single statement ran, which commits by itself), or
/// the store's.
enum Failure {
    Pg(::postgres::Error),
    Commit(::postgres::Error),
    Store(StoreError),
}

impl From<::postgres::Error> for Failure {
    fn from(e: ::postgres::Error) -> Self {
        Self::Pg(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

type Params<'a> = [&'a (dyn ToSql + Sync)];

/// A client with the statements it prepared, by SQL text.
struct Prepared<'a, C> {
    client: &'a mut C,
    statements: &'a mut HashMap<String, Statement>,
}

impl<C: GenericClient> Prepared<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<Statement, ::postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn query(&mut self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>, ::postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query(&statement, params)
    }

    fn query_one(&mut self, sql: &str, params: &Params<'_>) -> Result<Row, ::postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query_one(&statement, params)
    }

    fn query_opt(
        &mut self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, ::postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query_opt(&statement, params)
    }

    fn execute(&mut self, sql: &str, params: &Params<'_>) -> Result<u64, ::postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.execute(&statement, params)
    }

    /// Each row of `sql` decoded by `decode`.
    fn rows<T>(
        &mut self,
        sql: &str,
        params: &Params<'_>,
        decode: impl Fn(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, Failure> {
        Ok(self
            .query(sql, params)?
            .iter()
            .map(decode)
            .collect::<Result<_, _>>()?)
    }

    /// Tells the listeners `wake` (`Enqueued`, `Cancel` or `Retry`) when the transaction
    /// commits.
    fn notify(&mut self, wake: &Wake) -> Result<(), ::postgres::Error> {
        self.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &wake.payload()])
            .map(drop)
    }

    /// The ids of up to `limit` jobs finished before their state's cutoff, oldest first per
    /// state (a range scan of `jobs_finished` per cutoff); with `lock`, locked until the
    /// transaction ends, skipping those another transaction holds.
    fn expired_ids(
        &mut self,
        cutoffs: &[Cutoff],
        limit: usize,
        lock: bool,
    ) -> Result<Vec<JobId>, Failure> {
        let sql = format!(
            "SELECT id FROM jobs WHERE state = $1 AND finished_at < $2 ORDER BY finished_at \
             LIMIT $3{}",
            if lock { " FOR UPDATE SKIP LOCKED" } else { "" }
        );
        let mut ids = Vec::new();
        for cutoff in cutoffs.iter().filter(|c| c.state.is_terminal()) {
            let wanted = i64::try_from(limit - ids.len()).unwrap_or(i64::MAX);
            if wanted == 0 {
                break;
            }
            ids.extend(self.rows(
                &sql,
                &[&cutoff.state.as_str(), &cutoff.before, &wanted],
                |row| get::<i64>(row, 0),
            )?);
        }
        Ok(ids)
    }

    /// The state of job `id`, locked until the transaction ends.
    fn lock_state(&mut self, id: JobId) -> Result<JobState, Failure> {
        let row = self
            .query_opt("SELECT state FROM jobs WHERE id = $1 FOR UPDATE", &[&id])?
            .ok_or(StoreError::NotFound(id))?;
        let state: String = row.try_get(0)?;
        Ok(JobState::parse(&state)
            .ok_or_else(|| StoreError::Query(format!("job {id} has unknown state {state:?}")))?)
    }
}

/// An open connection.
struct Session {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Session {
    fn new(client: Client) -> Self {
        Self {
            client,
            statements: HashMap::new(),
        }
    }

    /// The connection outside a transaction: each statement commits by itself.
    fn direct(&mut self) -> Prepared<'_, Client> {
        Prepared {
            client: &mut self.client,
            statements: &mut self.statements,
        }
    }

    /// Runs `op` in a transaction, committed if it succeeds and rolled back if not.
    fn transaction<T>(
        &mut self,
        op: impl FnOnce(&mut Prepared<'_, Transaction<'_>>) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let tx = self.client.transaction()?;
        within(tx, &mut self.statements, op)
    }

    /// Runs the reads of `op` on one snapshot.
    fn snapshot<T>(
        &mut self,
        op: impl FnOnce(&mut Prepared<'_, Transaction<'_>>) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let tx = self
            .client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        within(tx, &mut self.statements, op)
    }
}

/// Runs `op` in `tx` and commits it; an error rolls it back.
fn within<T>(
    mut tx: Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    op: impl FnOnce(&mut Prepared<'_, Transaction<'_>>) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let value = op(&mut Prepared {
        client: &mut tx,
        statements,
    })?;
    tx.commit().map_err(Failure::Commit)?;
    Ok(value)
}

/// A connection to the PostgreSQL job database, connecting again after it is lost.
pub struct PostgresStore {
    config: Config,
    /// The URL with its password masked, for messages.
    database: String,
    /// None after the connection was lost: the next call connects.
    session: Option<Session>,
    /// What claims quarantined, until [`Store::take_quarantined`].
    quarantined: Vec<Quarantined>,
}

impl PostgresStore {
    /// Jobs each with one of their attempts, `from` naming `jobs j` and `attempts a`, how they
    /// join and which rows: what [`Store::running`] and [`Store::lost_attempts`] read.
    fn jobs_with_attempts(&mut self, from: &str) -> Result<Vec<(JobRecord, Attempt)>, StoreError> {
        let sql = format!(
            "SELECT {}, {} {from}",
            prefixed(JOB_COLUMNS, "j"),
            prefixed(ATTEMPT_COLUMNS, "a")
        );
        self.run(|session| {
            session.direct().rows(&sql, &[], |row| {
                Ok((job_at(row, 0), attempt_at(row, JOB_COLUMN_COUNT)?))
            })
        })
    }

    /// Connects to the database at the PostgreSQL URL `url` and brings its schema up to date
    /// (creating it in an empty database). A server that does not answer is reported with the
    /// URL, its password masked, and the reason.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let database = masked(url);
        let open_error = |reason: String| StoreError::Open {
            database: database.clone(),
            reason,
        };
        let config = parse_url(url).map_err(open_error)?;
        let client = connect(&config, "jobhost").map_err(|e| open_error(describe(&e)))?;
        Self::migrated(config, database, client)
    }

    /// Connects to the database at `url` for reading, if it holds a jobhost schema: `None`
    /// when it has none, and nothing is created. An older schema is brought up to date, as
    /// [`PostgresStore::open`] does.
    pub fn open_existing(url: &str) -> Result<Option<Self>, StoreError> {
        let database = masked(url);
        let open_error = |reason: String| StoreError::Open {
            database: database.clone(),
            reason,
        };
        let config = parse_url(url).map_err(open_error)?;
        let mut client = connect(&config, "jobhost").map_err(|e| open_error(describe(&e)))?;
        let exists: bool = client
            .query_one("SELECT to_regclass('jobhost_schema') IS NOT NULL", &[])
            .and_then(|row| row.try_get(0))
            .map_err(|e| open_error(describe(&e)))?;
        if !exists {
            return Ok(None);
        }
        Self::migrated(config, database, client).map(Some)
    }

    /// The store on `client`, its schema brought up to date.
    fn migrated(config: Config, database: String, mut client: Client) -> Result<Self, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            database: database.clone(),
            reason,
        };
        match migrate(&mut client) {
            Ok(()) => {}
            Err(Migration::Newer(found)) => {
                return Err(StoreError::NewerSchema {
                    database,
                    found,
                    supported: MIGRATIONS.len() as i64,
                })
            }
            // Migrating again is harmless (it applies what the database lacks), so a connection
            // lost while it committed is only lost, and opening again may succeed.
            Err(Migration::Failed(e)) => {
                return Err(match classify(&e, &client, &database, false) {
                    transient if transient.is_transient() => transient,
                    _ => open_error(format!("migration failed: {}", describe(&e))),
                })
            }
        }
        Ok(Self {
            config,
            database,
            session: Some(Session::new(client)),
            quarantined: Vec::new(),
        })
    }

    /// Runs `op` on the connection, connecting first if the last one was lost. A failure that
    /// shows the connection gone drops it, for the next call to connect again.
    fn run<T>(
        &mut self,
        op: impl FnOnce(&mut Session) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let mut session = match self.session.take() {
            Some(session) if !session.client.is_closed() => session,
            _ => Session::new(connect(&self.config, "jobhost").map_err(|e| {
                StoreError::ConnectionLost {
                    database: self.database.clone(),
                    reason: describe(&e),
                }
            })?),
        };
        let (e, committing) = match op(&mut session) {
            Ok(value) => {
                self.session = Some(session);
                return Ok(value);
            }
            Err(Failure::Store(e)) => {
                self.session = Some(session);
                return Err(e);
            }
            Err(Failure::Pg(e)) => (e, false),
            Err(Failure::Commit(e)) => (e, true),
        };
        let error = classify(&e, &session.client, &self.database, committing);
        if !connection_lost(&e, &session.client) {
            self.session = Some(session);
        }
        Err(error)
    }
}

/// Why migrating failed.
enum Migration {
    /// The database has this schema version, newer than ours.
    Newer(i64),
    Failed(::postgres::Error),
}

impl From<::postgres::Error> for Migration {
    fn from(e: ::postgres::Error) -> Self {
        Self::Failed(e)
    }
}

/// Applies the migrations the database lacks, in one transaction, under [`MIGRATION_LOCK`].
fn migrate(client: &mut Client) -> Result<(), Migration> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS jobhost_schema (version BIGINT NOT NULL)")?;
    let version: i64 = match tx.query_opt("SELECT version FROM jobhost_schema", &[])? {
        Some(row) => row.try_get(0)?,
        None => {
            tx.execute("INSERT INTO jobhost_schema (version) VALUES (0)", &[])?;
            0
        }
    };
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(Migration::Newer(version));
    }
    for script in &MIGRATIONS[version as usize..] {
        tx.batch_execute(script)?;
    }
    tx.execute("UPDATE jobhost_schema SET version = $1", &[&supported])?;
    tx.commit()?;
    Ok(())
}

fn job_from_row(row: &Row) -> Result<JobRecord, StoreError> {
    Ok(job_at(row, 0))
}

impl Store for PostgresStore {
    fn enqueue(&mut self, jobs: &[NewJob], now: Millis) -> Result<Vec<JobId>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<NewRow> = jobs.iter().map(|job| NewRow::of(job, now)).collect();
        // One array per column, for one INSERT of every row.
        let texts = |column: fn(&NewRow) -> &str| rows.iter().map(column).collect::<Vec<_>>();
        let numbers = |column: fn(&NewRow) -> i64| rows.iter().map(column).collect::<Vec<_>>();
        self.run(|session| {
            session.transaction(|tx| {
                // Ids are drawn in the order rows are inserted, which is the order of the
                // arrays: sorted, they are the jobs' ids in order.
                let mut ids = tx
                    .query(
                        "INSERT INTO jobs (class, method, params, priority, state, max_attempts, \
                         retries, retry_delay_ms, timeout_ms, plugin, run_at, created_at) \
                         SELECT class, method, params, priority, state, max_attempts, retries, \
                         retry_delay_ms, timeout_ms, plugin, run_at, $12 \
                         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], \
                         $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], \
                         $11::bigint[]) WITH ORDINALITY AS n (class, method, params, priority, \
                         state, max_attempts, retries, retry_delay_ms, timeout_ms, plugin, run_at, \
                         position) ORDER BY position RETURNING id",
                        &[
                            &texts(|r| &r.class),
                            &texts(|r| &r.method),
                            &texts(|r| &r.params),
                            &numbers(|r| r.priority),
                            &texts(|r| r.state),
                            &numbers(|r| r.max_attempts),
                            &numbers(|r| r.retries),
                            &numbers(|r| r.retry_delay_ms),
                            &numbers(|r| r.timeout_ms),
                            &texts(|r| &r.plugin),
                            &numbers(|r| r.run_at),
                            &now,
                        ],
                    )?
                    .iter()
                    .map(|row| row.try_get(0))
                    .collect::<Result<Vec<JobId>, _>>()?;
                ids.sort_unstable();
                tx.notify(&Wake::Enqueued)?;
                Ok(ids)
            })
        })
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // The due jobs are read whole and locked first, so that a row that cannot be read is
        // quarantined before anything is claimed, then the readable ones are claimed.
        let due_sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('queued', 'scheduled') AND run_at <= $1 \
             ORDER BY priority DESC, run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED"
        );
        let claim_sql = format!(
            "WITH claimed AS ( \
                 UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, \
                 started_at = COALESCE(j.started_at, $1) WHERE j.id = ANY($2) \
                 RETURNING j.*), \
             recorded AS ( \
                 INSERT INTO attempts (job_id, attempt, started_at, dispatcher) \
                 SELECT id, attempts, $1, $3 FROM claimed) \
             SELECT {JOB_COLUMNS} FROM claimed ORDER BY priority DESC, run_at, id"
        );
        let (jobs, quarantined) = self.run(|session| {
            session.transaction(|tx| {
                // A share lock on the owner's row: a concurrent deregister waits for this
                // claim, then sees its attempts, and a claim after it sees the row gone.
                let registered = tx.query_opt(
                    "SELECT 1 FROM dispatchers WHERE id = $1 FOR KEY SHARE",
                    &[&owner],
                )?;
                if registered.is_none() {
                    return Err(StoreError::NotRegistered(owner).into());
                }
                let mut quarantined = Vec::new();
                let mut ids = Vec::new();
                for job in tx.rows(&due_sql, &[&now, &limit], job_from_row)? {
                    match rows::unclaimable(&job) {
                        Some(reason) => {
                            tx.execute(
                                "UPDATE jobs SET state = 'failed', finished_at = $2, \
                                 last_error = $3 WHERE id = $1",
                                &[&job.id, &now, &rows::quarantine_error(&reason)],
                            )?;
                            quarantined.push(Quarantined { id: job.id, reason });
                        }
                        None => ids.push(job.id),
                    }
                }
                if ids.is_empty() {
                    return Ok((Vec::new(), quarantined));
                }
                let jobs = tx.rows(&claim_sql, &[&now, &ids, &owner], |row| {
                    let job = job_at(row, 0);
                    match &job.problem {
                        None => Ok(job),
                        Some(problem) => Err(StoreError::Query(format!(
                            "job {} cannot be read once claimed: {problem}",
                            job.id
                        ))),
                    }
                })?;
                Ok((jobs, quarantined))
            })
        })?;
        self.quarantined.extend(quarantined);
        Ok(jobs)
    }

    fn attempt_started(
        &mut self,
        id: JobId,
        attempt: u32,
        start: &AttemptStart,
    ) -> Result<(), StoreError> {
        let output_path = start.output_path.to_string_lossy().into_owned();
        self.run(|session| {
            session
                .direct()
                .execute(
                    "UPDATE attempts SET pid = $3, plugin_hash = $4, output_path = $5 \
                 WHERE job_id = $1 AND attempt = $2",
                    &[
                        &id,
                        &i64::from(attempt),
                        &i64::from(start.pid),
                        &start.plugin_hash,
                        &output_path,
                    ],
                )
                .map_err(Failure::Commit)?;
            Ok(())
        })
    }

    fn settle(
        &mut self,
        id: JobId,
        attempt: u32,
        end: &AttemptEnd,
        next: &Next,
    ) -> Result<bool, StoreError> {
        let attempt = i64::from(attempt);
        let settled = Settled::of(end, next);
        let output_bytes = i64::try_from(end.output_bytes).unwrap_or(i64::MAX);
        self.run(|session| {
            session.transaction(|tx| {
                // Locked: a second settler waits here, then finds the attempt settled.
                let running = tx.query_opt(
                    "SELECT 1 FROM jobs WHERE id = $1 AND state = 'running' AND attempts = $2 \
                     FOR UPDATE",
                    &[&id, &attempt],
                )?;
                if running.is_none() {
                    return Ok(false);
                }
                tx.execute(
                    "UPDATE attempts SET finished_at = $3, outcome = $4, error = $5, \
                     output_bytes = $6 WHERE job_id = $1 AND attempt = $2",
                    &[
                        &id,
                        &attempt,
                        &end.finished_at,
                        &end.outcome,
                        &end.error,
                        &output_bytes,
                    ],
                )?;
                tx.execute(
                    "UPDATE jobs SET state = $2, run_at = COALESCE($3, run_at), finished_at = $4, \
                     last_error = COALESCE($5, last_error), result = $6, \
                     max_attempts = max_attempts + $7 WHERE id = $1",
                    &[
                        &id,
                        &settled.state.as_str(),
                        &settled.run_at,
                        &settled.finished_at,
                        &end.error,
                        &settled.result,
                        &settled.extra_attempts,
                    ],
                )?;
                Ok(true)
            })
        })
    }

    fn cancel(&mut self, id: JobId, now: Millis) -> Result<CancelOutcome, StoreError> {
        self.run(|session| {
            session.transaction(|tx| {
                let outcome = rows::cancel_outcome(tx.lock_state(id)?);
                match outcome {
                    CancelOutcome::Cancelled => tx.execute(
                        "UPDATE jobs SET state = 'cancelled', finished_at = $2 WHERE id = $1",
                        &[&id, &now],
                    )?,
                    CancelOutcome::Requested => tx.execute(
                        "UPDATE jobs SET cancel_requested = TRUE WHERE id = $1",
                        &[&id],
                    )?,
                    CancelOutcome::AlreadyFinished(_) => return Ok(outcome),
                };
                tx.notify(&Wake::Cancel(id))?;
                Ok(outcome)
            })
        })
    }

    fn retry(&mut self, id: JobId, now: Millis) -> Result<(), StoreError> {
        self.run(|session| {
            session.transaction(|tx| {
                let state = tx.lock_state(id)?;
                let row =
                    tx.query_one("SELECT attempts, retries FROM jobs WHERE id = $1", &[&id])?;
                let (retries, max_attempts) =
                    rows::renewed_budget(id, state, get(&row, 0)?, get(&row, 1)?)?;
                tx.execute(
                    "UPDATE jobs SET state = 'queued', run_at = $2, finished_at = NULL, \
                     cancel_requested = FALSE, retries = $3, max_attempts = $4 WHERE id = $1",
                    &[&id, &now, &retries, &max_attempts],
                )?;
                tx.notify(&Wake::Retry(id))?;
                Ok(())
            })
        })
    }

    fn take_quarantined(&mut self) -> Vec<Quarantined> {
        std::mem::take(&mut self.quarantined)
    }

    fn job(&mut self, id: JobId) -> Result<Option<(JobRecord, Vec<Attempt>)>, StoreError> {
        let job_sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let attempts_sql =
            format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id = $1 ORDER BY attempt");
        self.run(|session| {
            session.snapshot(|tx| {
                let Some(row) = tx.query_opt(&job_sql, &[&id])? else {
                    return Ok(None);
                };
                let attempts = tx.rows(&attempts_sql, &[&id], |row| Ok(attempt_at(row, 0)))?;
                Ok(Some(rows::with_attempts(job_at(&row, 0), attempts)))
            })
        })
    }

    fn list(&mut self, filter: &ListFilter) -> Result<Vec<JobRecord>, StoreError> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1::text IS NULL OR state = $1) \
             AND ($2::text IS NULL OR class = $2) AND ($3::bigint IS NULL OR priority = $3) \
             ORDER BY id DESC LIMIT $4 OFFSET $5"
        );
        let state = filter.state.map(JobState::as_str);
        let priority = filter.priority.map(rows::priority_to_i64);
        let (limit, offset) = (i64::from(filter.limit), i64::from(filter.offset));
        self.run(|session| {
            session.direct().rows(
                &sql,
                &[&state, &filter.class, &priority, &limit, &offset],
                job_from_row,
            )
        })
    }

    fn stats(&mut self) -> Result<Stats, StoreError> {
        self.run(|session| {
            let counts = session.direct().rows(
                "SELECT state, COUNT(*) FROM jobs GROUP BY state",
                &[],
                |row| Ok((get(row, 0)?, get(row, 1)?)),
            )?;
            Ok(rows::stats(counts))
        })
    }

    fn finished_since(&mut self, since: Millis) -> Result<Finished, StoreError> {
        self.run(|session| {
            let row = session.direct().query_one(
                "SELECT COUNT(*) FILTER (WHERE state = 'completed'), \
                 COUNT(*) FILTER (WHERE state = 'failed') FROM jobs \
                 WHERE state IN ('completed', 'failed') AND finished_at >= $1",
                &[&since],
            )?;
            Ok(Finished {
                completed: get::<i64>(&row, 0)?.max(0) as u64,
                failed: get::<i64>(&row, 1)?.max(0) as u64,
            })
        })
    }

    fn cancel_requests(&mut self) -> Result<Vec<JobId>, StoreError> {
        self.run(|session| {
            session.direct().rows(
                "SELECT id FROM jobs WHERE state = 'running' AND cancel_requested ORDER BY id",
                &[],
                |row| get(row, 0),
            )
        })
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
        let attempt = i64::from(attempt);
        let settled = Settled::of(end, next);
        self.run(|session| {
            session.transaction(|tx| {
                // Locked: a second amender waits here, then finds the attempt amended.
                let lost = tx.query_opt(
                    "SELECT 1 FROM attempts WHERE job_id = $1 AND attempt = $2 \
                     AND outcome = 'lost' FOR UPDATE",
                    &[&id, &attempt],
                )?;
                if lost.is_none() {
                    return Ok(Amended::NotLost);
                }
                tx.execute(
                    "UPDATE attempts SET outcome = $3, error = $4 WHERE job_id = $1 AND attempt = $2",
                    &[&id, &attempt, &end.outcome, &end.error],
                )?;
                let moved = tx.execute(
                    "UPDATE jobs SET state = $3, run_at = COALESCE($4, run_at), finished_at = $5, \
                     last_error = $6, result = $7, max_attempts = max_attempts + $8 \
                     WHERE id = $1 AND attempts = $2 AND state IN ('queued', 'scheduled')",
                    &[
                        &id,
                        &attempt,
                        &settled.state.as_str(),
                        &settled.run_at,
                        &settled.finished_at,
                        &end.error,
                        &settled.result,
                        &settled.extra_attempts,
                    ],
                )?;
                Ok(if moved == 1 {
                    Amended::Moved
                } else {
                    Amended::Recorded
                })
            })
        })
    }

    fn running(&mut self) -> Result<Vec<(JobRecord, Attempt)>, StoreError> {
        self.jobs_with_attempts(
            "FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempts \
             WHERE j.state = 'running' ORDER BY j.id",
        )
    }

    fn next_run_at(&mut self) -> Result<Option<Millis>, StoreError> {
        self.run(|session| {
            // The first entry of each priority's range of `jobs_due`, then the earliest.
            let row = session.direct().query_one(
                "SELECT MIN(first.run_at) FROM (VALUES (0::bigint), (1), (2)) AS p (priority), \
                 LATERAL (SELECT run_at FROM jobs WHERE state IN ('queued', 'scheduled') \
                 AND priority = p.priority ORDER BY run_at LIMIT 1) AS first",
                &[],
            )?;
            Ok(get::<Option<i64>>(&row, 0)?)
        })
    }

    #[cfg(any(test, feature = "internals"))]
    fn unfinished(&mut self) -> Result<u64, StoreError> {
        self.run(|session| {
            let row = session.direct().query_one(
                "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'scheduled', 'running')",
                &[],
            )?;
            Ok(get::<i64>(&row, 0)?.max(0) as u64)
        })
    }

    fn unfinished_plugins(&mut self) -> Result<Vec<std::path::PathBuf>, StoreError> {
        self.run(|session| {
            session.direct().rows(
                "SELECT DISTINCT plugin FROM jobs \
                 WHERE state IN ('queued', 'scheduled', 'running') ORDER BY plugin",
                &[],
                |row| Ok(get::<String>(row, 0)?.into()),
            )
        })
    }

    fn register_dispatcher(
        &mut self,
        info: &DispatcherInfo,
        now: Millis,
    ) -> Result<DispatcherId, StoreError> {
        self.run(|session| {
            let row = session.direct().query_one(
                "INSERT INTO dispatchers (host, pid, slots, state_dir, started_at, heartbeat_at) \
                 VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
                &[
                    &info.host,
                    &i64::from(info.pid),
                    &i64::from(info.slots),
                    &info.state_dir,
                    &now,
                ],
            ).map_err(Failure::Commit)?;
            Ok(get(&row, 0)?)
        })
    }

    fn heartbeat(&mut self, id: DispatcherId, now: Millis) -> Result<bool, StoreError> {
        self.run(|session| {
            let changed = session
                .direct()
                .execute(
                    "UPDATE dispatchers SET heartbeat_at = $2 WHERE id = $1",
                    &[&id, &now],
                )
                .map_err(Failure::Commit)?;
            Ok(changed == 1)
        })
    }

    fn deregister(&mut self, id: DispatcherId) -> Result<bool, StoreError> {
        self.run(|session| {
            session.transaction(|tx| {
                // Waits for claims under this id in progress (they hold a share lock on the
                // row); the check below, a statement of its own, then sees their attempts.
                let registered =
                    tx.query_opt("SELECT 1 FROM dispatchers WHERE id = $1 FOR UPDATE", &[&id])?;
                if registered.is_none() {
                    return Ok(true);
                }
                let owns_unsettled = tx.query_opt(
                    "SELECT 1 FROM attempts WHERE dispatcher = $1 AND finished_at IS NULL LIMIT 1",
                    &[&id],
                )?;
                if owns_unsettled.is_some() {
                    return Ok(false);
                }
                tx.execute("DELETE FROM dispatchers WHERE id = $1", &[&id])?;
                Ok(true)
            })
        })
    }

    fn prune(&mut self, cutoffs: &[Cutoff], limit: usize) -> Result<Option<Pruned>, StoreError> {
        self.run(|session| {
            session.transaction(|tx| {
                let row = tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])?;
                if !get::<bool>(&row, 0)? {
                    return Ok(None);
                }
                let jobs = tx.expired_ids(cutoffs, limit, true)?;
                let attempts =
                    tx.execute("DELETE FROM attempts WHERE job_id = ANY($1)", &[&jobs])?;
                tx.execute("DELETE FROM jobs WHERE id = ANY($1)", &[&jobs])?;
                Ok(Some(Pruned { jobs, attempts }))
            })
        })
    }

    fn expired(&mut self, cutoffs: &[Cutoff]) -> Result<Pruned, StoreError> {
        self.run(|session| {
            session.snapshot(|tx| {
                let jobs = tx.expired_ids(cutoffs, usize::MAX, false)?;
                let row = tx.query_one(
                    "SELECT COUNT(*) FROM attempts WHERE job_id = ANY($1)",
                    &[&jobs],
                )?;
                let attempts = get::<i64>(&row, 0)?.max(0) as u64;
                Ok(Pruned { jobs, attempts })
            })
        })
    }

    fn existing_jobs(&mut self, ids: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        self.run(|session| {
            session.direct().rows(
                "SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id",
                &[&ids],
                |row| get::<i64>(row, 0),
            )
        })
    }

    fn dispatchers(&mut self) -> Result<Vec<DispatcherRecord>, StoreError> {
        let sql = format!("{SELECT_DISPATCHERS} ORDER BY d.id");
        self.run(|session| {
            session
                .direct()
                .rows(&sql, &[], |row| Ok(dispatcher_at(row)?))
        })
    }

    fn expired_dispatchers(&mut self, cutoff: Millis) -> Result<Vec<DispatcherRecord>, StoreError> {
        let sql = format!("{SELECT_DISPATCHERS} WHERE d.heartbeat_at < $1 ORDER BY d.id");
        self.run(|session| {
            session
                .direct()
                .rows(&sql, &[&cutoff], |row| Ok(dispatcher_at(row)?))
        })
    }
}

/// What a notification on [`CHANNEL`] says changed, or that the listener reconnected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// Jobs were enqueued.
    Enqueued,
    /// Job `id` was cancelled while waiting, or its cancellation was requested while it runs:
    /// the dispatcher running it should stop it.
    Cancel(JobId),
    /// Job `id` was queued again.
    Retry(JobId),
    /// The listener lost its connection and connected again: notifications sent in between
    /// were missed, so look at the store afresh.
    Reconnected,
    /// A payload this jobhost does not know (from a newer one): look at the store afresh.
    Other(String),
}

impl Wake {
    /// The notification's payload: `enqueue`, `cancel:ID` or `retry:ID` (the store sends no
    /// other).
    fn payload(&self) -> String {
        match self {
            Wake::Enqueued => "enqueue".into(),
            Wake::Cancel(id) => format!("cancel:{id}"),
            Wake::Retry(id) => format!("retry:{id}"),
            Wake::Reconnected => "reconnected".into(),
            Wake::Other(payload) => payload.clone(),
        }
    }

    /// The wake a notification's payload describes.
    fn parse(payload: &str) -> Self {
        let id = |prefix: &str| payload.strip_prefix(prefix)?.parse::<JobId>().ok();
        if payload == "enqueue" {
            Wake::Enqueued
        } else if let Some(id) = id("cancel:") {
            Wake::Cancel(id)
        } else if let Some(id) = id("retry:") {
            Wake::Retry(id)
        } else {
            Wake::Other(payload.to_owned())
        }
    }
}

/// A connection of its own that `LISTEN`s on [`CHANNEL`], for a dispatcher to sleep on.
///
/// [`PgListener::wait`] blocks until a notification arrives or the timeout passes. A lost
/// connection is made again within `wait`, which then reports [`Wake::Reconnected`].
pub struct PgListener {
    config: Config,
    /// The URL with its password masked, for messages.
    database: String,
    /// None after the connection was lost and connecting again failed.
    client: Option<Client>,
}

impl PgListener {
    /// Connects to the database at the PostgreSQL URL `url` and listens on [`CHANNEL`].
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let database = masked(url);
        let config = parse_url(url).map_err(|reason| StoreError::Open {
            database: database.clone(),
            reason,
        })?;
        let client = listen(&config).map_err(|e| StoreError::Open {
            database: database.clone(),
            reason: describe(&e),
        })?;
        Ok(Self {
            config,
            database,
            client: Some(client),
        })
    }

    /// The next notification, waiting up to `timeout` for one (a zero timeout only takes one
    /// already received); `None` if none came.
    ///
    /// When the connection is lost, it connects again at once and returns
    /// [`Wake::Reconnected`]; if that fails, it returns [`StoreError::ConnectionLost`] and
    /// the next call tries again. A caller looping on `wait` should pause after an error, so
    /// that a server that is down is not called in a tight loop.
    pub fn wait(&mut self, timeout: Duration) -> Result<Option<Wake>, StoreError> {
        let Some(client) = self.client.as_mut() else {
            return self.reconnect(None);
        };
        let next = client.notifications().timeout_iter(timeout).next();
        match next {
            Ok(Some(notification)) => Ok(Some(Wake::parse(notification.payload()))),
            Ok(None) if !client.is_closed() => Ok(None),
            Ok(None) => self.reconnect(None),
            Err(e) => self.reconnect(Some(e)),
        }
    }

    /// Connects again after the connection was lost (with `cause`, if an error said so).
    fn reconnect(&mut self, cause: Option<::postgres::Error>) -> Result<Option<Wake>, StoreError> {
        self.client = None;
        match listen(&self.config) {
            Ok(client) => {
                self.client = Some(client);
                Ok(Some(Wake::Reconnected))
            }
            Err(e) => Err(StoreError::ConnectionLost {
                database: self.database.clone(),
                reason: match cause {
                    Some(cause) => format!(
                        "{}; connecting again failed: {}",
                        describe(&cause),
                        describe(&e)
                    ),
                    None => format!("connecting again failed: {}", describe(&e)),
                },
            }),
        }
    }
}

impl Listener for PgListener {
    fn wait_for_change(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        Ok(self.wait(timeout)?.is_some())
    }
}

/// A new connection listening on [`CHANNEL`].
fn listen(config: &Config) -> Result<Client, ::postgres::Error> {
    let mut client = connect(config, "jobhost listener")?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Barrier},
        time::Duration,
    };

    use serde_json::json;

    use jobhost_testing::TestDatabase;

    use super::{PgListener, PostgresStore, Wake, MIGRATIONS};
    use crate::{
        job::{JobSpec, Priority},
        store::{
            self, masked, AttemptEnd, CancelOutcome, DispatcherInfo, JobState, NewJob, Next, Store,
            StoreError, StoreLocation,
        },
    };

    /// Long enough for a notification already sent to arrive: a deadline, not an estimate.
    const PATIENCE: Duration = Duration::from_secs(30);

    fn job(class: &str) -> NewJob {
        NewJob {
            spec: JobSpec {
                class: class.into(),
                method: "handle".into(),
                params: json!({"n": 1}),
                retries: 1,
                retry_delay: Duration::from_secs(1),
                priority: Priority::Normal,
                delay: Duration::ZERO,
                timeout: Duration::from_secs(60),
            },
            plugin: "/p/libx.so".into(),
        }
    }

    fn dispatcher(s: &mut dyn Store) -> i64 {
        let info = DispatcherInfo {
            host: "h".into(),
            pid: 1,
            slots: 2,
            state_dir: "/s".into(),
        };
        s.register_dispatcher(&info, 0).unwrap()
    }

    fn failed(at: i64) -> AttemptEnd {
        AttemptEnd {
            finished_at: at,
            outcome: "error".into(),
            error: Some("boom".into()),
            output_bytes: 0,
        }
    }

    #[test]
    fn an_unreachable_server_is_one_clear_error_naming_the_url_without_its_password() {
        // Nothing listens on port 1.
        let url = "postgres://jobs:s3cret@127.0.0.1:1/queue";
        let Err(e) = PostgresStore::open(url) else {
            panic!("opened a store on port 1")
        };
        let message = e.to_string();
        assert!(matches!(e, StoreError::Open { .. }), "{message}");
        assert!(
            message.starts_with("cannot open job database postgres://jobs:***@127.0.0.1:1/queue: "),
            "{message}"
        );
        assert!(message.to_lowercase().contains("refused"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
        let Err(e) = PgListener::connect(url) else {
            panic!("listened on port 1")
        };
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn a_database_of_a_newer_schema_is_refused() {
        let db = TestDatabase::create();
        drop(PostgresStore::open(db.url()).unwrap());
        db.client()
            .batch_execute("UPDATE jobhost_schema SET version = 99")
            .unwrap();
        match PostgresStore::open(db.url()) {
            Err(StoreError::NewerSchema {
                found, supported, ..
            }) => assert_eq!((found, supported), (99, MIGRATIONS.len() as i64)),
            Err(e) => panic!("expected NewerSchema, got {e}"),
            Ok(_) => panic!("opened a database of a newer schema"),
        }
    }

    #[test]
    fn processes_opening_a_new_database_at_once_migrate_it_once() {
        let db = TestDatabase::create();
        let barrier = Arc::new(Barrier::new(4));
        let openers: Vec<_> = (0..4)
            .map(|_| {
                let (url, barrier) = (db.url().to_owned(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    PostgresStore::open(&url).map(drop)
                })
            })
            .collect();
        for opener in openers {
            opener.join().unwrap().unwrap();
        }
        let versions: Vec<i64> = db
            .client()
            .query("SELECT version FROM jobhost_schema", &[])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(versions, vec![MIGRATIONS.len() as i64]);
    }

    #[test]
    fn a_terminated_connection_fails_one_call_then_reconnects_losing_nothing() {
        let db = TestDatabase::create();
        let mut s = store::open(&StoreLocation::parse(db.url()).unwrap()).unwrap();
        let me = dispatcher(&mut *s);
        let ids = s.enqueue(&[job("A"), job("B"), job("C")], 1000).unwrap();
        assert_eq!(s.claim(me, 1000, 1).unwrap()[0].id, ids[0]);
        assert_eq!(s.cancel(ids[2], 1100).unwrap(), CancelOutcome::Cancelled);

        assert_eq!(db.terminate(Some("jobhost")), 1);
        let Err(e) = s.claim(me, 1200, 1) else {
            panic!("a call on a terminated connection succeeded")
        };
        assert!(matches!(e, StoreError::ConnectionLost { .. }), "{e}");
        assert!(e.is_transient() && !e.outcome_unknown(), "{e}");
        let message = e.to_string();
        assert!(message.contains(&masked(db.url())), "{message}");

        // The next call connects again; what was stored before is all there.
        let (a, attempts) = s.job(ids[0]).unwrap().unwrap();
        assert_eq!((a.state, attempts.len()), (JobState::Running, 1));
        assert_eq!(attempts[0].dispatcher, Some(me));
        let stats = s.stats().unwrap();
        let count = |state: &str| stats.by_state[state];
        assert_eq!(
            (count("running"), count("queued"), count("cancelled")),
            (1, 1, 1)
        );
        assert_eq!(s.claim(me, 1200, 5).unwrap()[0].id, ids[1]);
        assert!(s.settle(ids[0], 1, &failed(1300), &Next::Fail).unwrap());
    }

    #[test]
    fn a_connection_lost_while_committing_is_an_unknown_outcome() {
        let db = TestDatabase::create();
        let mut s = PostgresStore::open(db.url()).unwrap();
        // The connection is ended while the server works on the commit.
        db.stall_enqueue_commits();
        let enqueue = std::thread::spawn(move || s.enqueue(&[job("A")], 1000).map(drop));
        db.terminate_when_waiting("jobhost", "PgSleep");
        let e = enqueue.join().unwrap().unwrap_err();
        assert!(matches!(e, StoreError::CommitUnknown { .. }), "{e}");
        assert!(e.outcome_unknown() && e.is_transient(), "{e}");
        let message = e.to_string();
        assert!(
            message.contains("may or may not have been stored"),
            "{message}"
        );
        assert!(message.contains(&masked(db.url())), "{message}");
    }

    #[test]
    fn a_connection_lost_while_migrating_is_a_lost_connection_not_a_failed_migration() {
        let db = TestDatabase::create();
        // Another session holds the migration lock: opening waits for it, and is ended then.
        let mut holder = db.client();
        holder
            .execute("SELECT pg_advisory_lock($1)", &[&super::MIGRATION_LOCK])
            .unwrap();
        let url = db.url().to_owned();
        let open = std::thread::spawn(move || PostgresStore::open(&url).map(drop));
        db.terminate_when_waiting("jobhost", "advisory");
        let e = open.join().unwrap().unwrap_err();
        assert!(matches!(e, StoreError::ConnectionLost { .. }), "{e}");
        assert!(e.is_transient() && !e.outcome_unknown(), "{e}");
        assert!(!e.to_string().contains("migration failed"), "{e}");
    }

    #[test]
    fn a_deadlock_is_a_transient_conflict_that_changes_nothing() {
        let db = TestDatabase::create();
        let mut s = PostgresStore::open(db.url()).unwrap();
        let ids = s.enqueue(&[job("A"), job("B")], 1000).unwrap();
        let (a, b) = (ids[0], ids[1]);
        // Another session locks B; the store's transaction locks A, then waits for B; the other
        // session then wants A. The other session checks for a deadlock only after a minute,
        // so the store's, checking after PostgreSQL's default second, is the victim.
        let mut other = db.client();
        other.batch_execute("SET deadlock_timeout = '60s'").unwrap();
        let mut tx = other.transaction().unwrap();
        tx.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", &[&b])
            .unwrap();
        let locking = std::thread::spawn(move || {
            let outcome = s.run(|session| {
                session.transaction(|tx| {
                    tx.lock_state(a)?;
                    tx.lock_state(b)?;
                    tx.execute("UPDATE jobs SET state = 'cancelled' WHERE id = $1", &[&a])?;
                    Ok(())
                })
            });
            (s, outcome)
        });
        db.waiting("jobhost", "transactionid");
        tx.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", &[&a])
            .unwrap();
        let (mut s, outcome) = locking.join().unwrap();
        let e = outcome.unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)), "{e}");
        assert!(e.is_transient() && !e.outcome_unknown(), "{e}");
        tx.rollback().unwrap();
        assert_eq!(s.stats().unwrap().by_state["queued"], 2, "nothing changed");
    }

    #[test]
    fn the_listener_wakes_on_enqueue_cancel_and_retry_in_other_connections() {
        let db = TestDatabase::create();
        let mut listener = PgListener::connect(db.url()).unwrap();
        let mut s = PostgresStore::open(db.url()).unwrap();
        assert_eq!(listener.wait(Duration::ZERO).unwrap(), None);

        let me = dispatcher(&mut s);
        let ids = s.enqueue(&[job("A"), job("B")], 1000).unwrap();
        assert_eq!(listener.wait(PATIENCE).unwrap(), Some(Wake::Enqueued));
        s.claim(me, 1000, 1).unwrap();
        assert_eq!(s.cancel(ids[0], 1100).unwrap(), CancelOutcome::Requested);
        assert_eq!(listener.wait(PATIENCE).unwrap(), Some(Wake::Cancel(ids[0])));
        assert_eq!(s.cancel(ids[1], 1100).unwrap(), CancelOutcome::Cancelled);
        assert_eq!(listener.wait(PATIENCE).unwrap(), Some(Wake::Cancel(ids[1])));
        s.retry(ids[1], 1200).unwrap();
        assert_eq!(listener.wait(PATIENCE).unwrap(), Some(Wake::Retry(ids[1])));

        // Notifications arrive in commit order: a cancel that changes nothing sent none.
        assert!(s.settle(ids[0], 1, &failed(1300), &Next::Cancel).unwrap());
        assert_eq!(
            s.cancel(ids[0], 1400).unwrap(),
            CancelOutcome::AlreadyFinished(JobState::Cancelled)
        );
        s.enqueue(&[job("C")], 1500).unwrap();
        assert_eq!(listener.wait(PATIENCE).unwrap(), Some(Wake::Enqueued));
    }

    #[test]
    fn a_terminated_listener_connects_again_and_says_so() {
        let db = TestDatabase::create();
        let mut listener = PgListener::connect(db.url()).unwrap();
        let mut s = PostgresStore::open(db.url()).unwrap();

        assert_eq!(db.terminate(Some("jobhost listener")), 1);
        assert_eq!(listener.wait(PATIENCE).unwrap(), Some(Wake::Reconnected));
        s.enqueue(&[job("A")], 1000).unwrap();
        assert_eq!(listener.wait(PATIENCE).unwrap(), Some(Wake::Enqueued));
    }

    #[test]
    fn a_dispatcher_gets_a_listener_that_sees_changes_and_reconnections_and_no_maintenance() {
        let db = TestDatabase::create();
        let location = crate::store::StoreLocation::Postgres(db.url().into());
        assert!(crate::store::maintenance(&location).unwrap().is_none());
        let mut listener = crate::store::listener(&location).unwrap().unwrap();
        let mut s = PostgresStore::open(db.url()).unwrap();
        assert!(!listener.wait_for_change(Duration::ZERO).unwrap());
        s.enqueue(&[job("A")], 1000).unwrap();
        assert!(listener.wait_for_change(PATIENCE).unwrap());
        assert_eq!(db.terminate(Some("jobhost listener")), 1);
        assert!(listener.wait_for_change(PATIENCE).unwrap(), "reconnected");
        assert!(!listener.wait_for_change(Duration::ZERO).unwrap());
    }
}
