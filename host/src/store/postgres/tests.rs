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

#[test]
fn a_round_finds_its_jobs_and_attempts_by_their_keys_not_by_the_partial_indexes() {
    // 3,000 jobs that ran, on statistics from before they did (none running, no attempt
    // unsettled): what a drain leaves before autovacuum comes by. The partial indexes of
    // unfinished jobs and unsettled attempts still hold an entry for each of them, which a
    // plan using them walks on every call.
    let db = TestDatabase::create();
    let mut s = store::open(&StoreLocation::parse(db.url()).unwrap()).unwrap();
    dispatcher(&mut *s);
    let mut client = db.client();
    client
        .batch_execute(
            "INSERT INTO jobs (class, method, params, priority, state, attempts, max_attempts, \
             retries, retry_delay_ms, timeout_ms, plugin, run_at, created_at) \
             SELECT 'A', 'ok', '{}', 1, 'completed', 1, 1, 0, 0, 1000, 'p', 0, 0 \
             FROM generate_series(1, 3000); \
             INSERT INTO attempts (job_id, attempt, started_at, dispatcher, finished_at) \
             SELECT id, 1, 0, 1, 5 FROM jobs; \
             ANALYZE jobs; ANALYZE attempts; \
             UPDATE jobs SET state = 'running'; UPDATE attempts SET finished_at = NULL; \
             UPDATE jobs SET state = 'completed'; UPDATE attempts SET finished_at = 5",
        )
        .unwrap();
    // The plans a prepared statement is run with once it is cached: generic ones.
    let mut plan = |name: &str, sql: &str, args: &str| -> String {
        client
            .batch_execute(&format!(
                "SET plan_cache_mode = force_generic_plan; PREPARE {name} AS {sql}"
            ))
            .unwrap();
        client
            .simple_query(&format!("EXPLAIN EXECUTE {name}({args})"))
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                ::postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let record = plan("record", super::queue::RECORD_START, "1, 1, 4242, 'h', 'o'");
    let settle = plan(
        "settle",
        super::queue::SETTLE_BATCH,
        "'{1}', '{1}', '{9}', '{ok}', '{NULL}', '{0}', '{completed}', '{NULL}', '{9}', \
         '{NULL}', '{0}'",
    );
    for (what, plan) in [("record", &record), ("settle", &settle)] {
        for partial in ["jobs_unfinished", "attempts_unsettled", "jobs_due"] {
            assert!(!plan.contains(partial), "the {what} walks {partial}:\n{plan}");
        }
    }
    assert!(record.contains("attempts_pkey"), "{record}");
    assert!(
        settle.contains("jobs_pkey") && settle.contains("attempts_pkey"),
        "{settle}"
    );
}
