//! The PostgreSQL store: one database shared by the dispatchers of several hosts, migrated with
//! the numbered scripts in `migrations/`.
//!
//! Each [`PostgresStore`] holds one connection (the synchronous `postgres` client, without TLS)
//! and runs every call as one transaction. Claims lock the jobs they take with
//! `FOR UPDATE SKIP LOCKED`, so claimers on any number of hosts never take the same job and
//! never wait for each other. The calls a dispatcher makes for every job cost few round trips:
//! a batch of starts or of settles is one statement over `UNNEST`ed arrays (one round trip, one
//! commit), and a dispatcher's round (the settles of the attempts that ended, the claim of up
//! to its free slots, and the start of their workers) is one transaction of two round trips:
//! one simple query that begins it and `EXECUTE`s the settle and the claim (statements
//! `PREPARE`d by SQL once per connection), and one that records the workers' pids and
//! commits. A simple query takes no parameters: its values are written in as escaped
//! literals. A claim's quarantine of rows that cannot be read takes a slower path, only
//! when it meets one. Enqueue, cancel and retry `NOTIFY` the channel [`CHANNEL`] in their
//! transaction; a [`PgListener`] (a connection of its own doing `LISTEN`) wakes an idle
//! dispatcher with them.
//!
//! A call that finds the connection broken (the server restarted, an administrator ended the
//! session) fails with [`StoreError::ConnectionLost`], and the next call connects again to the
//! same URL. The failed call's transaction was rolled back, unless the connection broke while
//! it committed (or while a write of a single statement ran): then the server may have stored
//! it, and the call fails with [`StoreError::CommitUnknown`] instead. A failed call is never
//! repeated on its own: only the caller knows whether doing it twice is harmless. Other
//! server errors are classified by their SQLSTATE (see `classify`).
//!
//! Here: [`PostgresStore`] (connecting, migrating); beside it `connection` (errors, prepared
//! statements, the reconnecting session), `queue` (the [`Store`] interface) and `listener`
//! (`LISTEN`/`NOTIFY` between hosts).

mod connection;
mod listener;
mod queue;
#[cfg(test)]
mod tests;

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    sync::LazyLock,
    time::Duration,
};

use ::postgres::{
    error::SqlState, fallible_iterator::FallibleIterator, types::ToSql, Client, Config,
    GenericClient, IsolationLevel, NoTls, Row, SimpleQueryMessage, SimpleQueryRow, Statement,
    Transaction,
};

use super::{
    masked,
    rows::{
        self, attempt_at, dispatcher_at, job_at, prefixed, Columns, NewRow, Settled,
        ATTEMPT_COLUMNS, JOB_COLUMNS, JOB_COLUMN_COUNT, SELECT_DISPATCHERS,
    },
    Amended, Attempt, AttemptEnd, CancelOutcome, Cutoff, DispatcherId,
    DispatcherInfo, DispatcherRecord, Finished, JobId, JobRecord, JobState, ListFilter, Listener,
    Millis, NewJob, Next, Pruned, Quarantined, SettledAndClaimed, Settlement, SpawnWorkers,
    StartedAttempt,
    Stats, Store, StoreError,
};
use connection::*;
pub use listener::{PgListener, Wake};

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
pub(super) enum Migration {
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
pub(super) fn migrate(client: &mut Client) -> Result<(), Migration> {
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
