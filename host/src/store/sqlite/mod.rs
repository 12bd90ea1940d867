//! The SQLite store: one file under the state directory, in WAL mode, migrated with the
//! numbered scripts in `migrations/`.
//!
//! Each process opens its own connection; SQLite's write lock makes every transaction atomic
//! across processes, and `BEGIN IMMEDIATE` makes a claim take that lock before it reads, so two
//! dispatchers can never claim the same job. `synchronous = NORMAL` in WAL mode keeps a commit
//! durable across a crash of the process (not of the machine) without an fsync per commit.
//!
//! Here: [`SqliteStore`] (opening, migrating, checkpoints); beside it `connection` (opening a
//! connection, busy waits, errors and rows), `maintenance` (the checkpointer a dispatcher runs)
//! and `queue` (the [`Store`] interface).

mod connection;
mod maintenance;
mod queue;
#[cfg(test)]
mod tests;

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
    Amended, Attempt, AttemptEnd, CancelOutcome, Cutoff, DispatcherId,
    DispatcherInfo, DispatcherRecord, Finished, JobId, JobRecord, JobState, ListFilter,
    Maintenance, Millis, NewJob, Next, Pruned, Quarantined, SettledAndClaimed, Settlement,
    SpawnWorkers, StartedAttempt, Stats,
    Store, StoreError,
};
use connection::*;
use maintenance::*;

/// The migrations, in order; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/001_jobs.sql"),
    include_str!("migrations/002_claim_by_priority.sql"),
    include_str!("migrations/003_finished_index.sql"),
    include_str!("migrations/004_dispatchers.sql"),
    include_str!("migrations/005_fewer_pages_per_round.sql"),
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


