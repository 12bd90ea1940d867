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

/// SQLite re-prepares a statement whose bound `LIMIT` changed unless the connection has the
/// query planner stability guarantee: the claim's `LIMIT ?` (the free slots) changes between
/// claims, and re-parsing it was an eighth of a busy dispatcher's time.
#[test]
fn a_statement_is_not_prepared_again_when_its_bound_limit_changes_on_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite3");
    let writer = SqliteStore::open(&path).unwrap();
    let reader = SqliteStore::open_existing(&path).unwrap().unwrap();
    for store in [&writer, &reader] {
        let mut statement = store
            .conn
            .prepare_cached("SELECT id FROM jobs WHERE run_at <= ?1 ORDER BY id LIMIT ?2")
            .unwrap();
        for limit in [1, 2, 1, 3, 2] {
            statement.query(rusqlite::params![0, limit]).unwrap().next().unwrap();
        }
        let reprepared = statement.get_status(rusqlite::StatementStatus::RePrepare);
        assert_eq!(reprepared, 0, "re-prepared {reprepared} times");
    }
}

#[test]
fn a_database_of_schema_4_is_migrated_with_its_jobs_and_attempts_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite3");
    {
        // A database as the schema before attempts were keyed by (job, attempt) left it: one
        // finished job with two attempts, one running with its attempt unsettled.
        let conn = rusqlite::Connection::open(&path).unwrap();
        // Schema 4: before 005_fewer_pages_per_round.sql.
        let previous = 4;
        for script in &super::MIGRATIONS[..previous] {
            conn.execute_batch(script).unwrap();
        }
        conn.execute_batch(&format!(
            "PRAGMA user_version = {previous};
             INSERT INTO dispatchers (id, host, pid, slots, state_dir, started_at, heartbeat_at)
                 VALUES (7, 'h', 1, 2, '/s', 1000, 1000);
             INSERT INTO jobs (id, class, method, params, priority, state, attempts, max_attempts,
                               retries, retry_delay_ms, timeout_ms, plugin, run_at, created_at,
                               started_at, finished_at, result)
                 VALUES (1, 'A', 'handle', '{{}}', 1, 'completed', 2, 2, 1, 1000, 60000,
                         '/p/liba.so', 1000, 1000, 1000, 3000, '{{\"ok\":true}}'),
                        (2, 'A', 'handle', '{{}}', 1, 'running', 1, 1, 0, 1000, 60000,
                         '/p/liba.so', 1000, 1000, 4000, NULL, NULL);
             INSERT INTO attempts (job_id, attempt, started_at, finished_at, outcome, error,
                                   output_path, output_bytes, pid, plugin_hash, dispatcher)
                 VALUES (1, 1, 1000, 2000, 'error', 'boom', '/o/1.out', 3, 11, 'h1', 7),
                        (1, 2, 2500, 3000, 'ok', NULL, '/o/2.out', 0, 12, 'h1', 7),
                        (2, 1, 4000, NULL, NULL, NULL, NULL, NULL, 13, 'h1', 7);"
        ))
        .unwrap();
    }
    let mut store = SqliteStore::open(&path).unwrap();
    let (job, attempts) = store.job(1).unwrap().unwrap();
    assert_eq!(job.state.as_str(), "completed");
    let kept: Vec<_> = attempts
        .iter()
        .map(|a| (a.attempt, a.outcome.as_deref(), a.error.as_deref(), a.pid, a.dispatcher))
        .collect();
    assert_eq!(
        kept,
        [
            (1, Some("error"), Some("boom"), Some(11), Some(7)),
            (2, Some("ok"), None, Some(12), Some(7)),
        ]
    );
    let running = store.running().unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!((running[0].0.id, running[0].1.pid), (2, Some(13)));
    assert_eq!(store.unfinished().unwrap(), 1);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, super::MIGRATIONS.len() as i64);
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'attempts'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        indexes,
        ["attempts_unsettled"],
        "the key is the table's own order, not an index beside it"
    );
}
