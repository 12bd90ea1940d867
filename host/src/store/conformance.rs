//! The store behaviour suite: written once, run against every backend.
//!
//! A backend provides a [`Backend`]: a fresh, empty database per test, and any number of
//! connections to it (as separate dispatchers and enqueuers would have). The
//! `conformance_suite!` macro turns every case below into a `#[test]` for that backend.

use std::{
    collections::HashSet,
    sync::{Arc, Barrier},
    time::Duration,
};

use serde_json::json;

use super::{
    Amended, AttemptEnd, AttemptStart, CancelOutcome, Cutoff, DispatcherId, DispatcherInfo,
    DispatcherRecord, ErrorClass, Finished, JobId, JobRecord, JobState, ListFilter, NewJob, Next, Pruned,
    Settlement, StartedAttempt, Store, StoreError, StoreLocation,
};
use crate::job::{JobSpec, Priority};

/// A fresh database for one test.
pub trait Backend {
    /// Where this test's database is; nothing is there until the first [`Backend::connect`].
    fn location(&self) -> StoreLocation;

    /// A new connection to this test's database, as [`super::open`] makes it.
    fn connect(&self) -> Box<dyn Store> {
        super::open(&self.location()).unwrap()
    }

    /// Runs `sql` straight on the database, as a hand edit, a bug or another program would:
    /// how the cases below write rows jobhost never writes.
    fn execute(&self, sql: &str);
}

/// A job of `class` with the usual settings.
pub(super) fn new_job(class: &str, priority: Priority, delay_ms: u64) -> NewJob {
    NewJob {
        spec: JobSpec {
            class: class.into(),
            method: "handle".into(),
            params: json!({"user_id": 1}),
            retries: 2,
            retry_delay: Duration::from_millis(500),
            priority,
            delay: Duration::from_millis(delay_ms),
            timeout: Duration::from_secs(30),
        },
        plugin: "/plugins/libx.so".into(),
    }
}

/// The registration of a dispatcher on `host`.
pub(super) fn info(host: &str) -> DispatcherInfo {
    DispatcherInfo {
        host: host.into(),
        pid: 4242,
        slots: 4,
        state_dir: format!("/var/lib/jobhost-{host}"),
    }
}

/// Registers a dispatcher to claim under.
fn register(s: &mut dyn Store) -> DispatcherId {
    s.register_dispatcher(&info("claimer"), 0).unwrap()
}

fn end(outcome: &str, at: i64) -> AttemptEnd {
    AttemptEnd {
        finished_at: at,
        outcome: outcome.into(),
        error: (outcome != "ok").then(|| format!("{outcome} happened")),
        output_bytes: 12,
    }
}

pub fn enqueue_stores_every_field_and_returns_increasing_ids(b: &dyn Backend) {
    let mut s = b.connect();
    let ids = s
        .enqueue(
            &[
                new_job("A", Priority::High, 0),
                new_job("B", Priority::Low, 1500),
            ],
            1000,
        )
        .unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] > 0 && ids[1] > ids[0]);
    let (a, attempts) = s.job(ids[0]).unwrap().unwrap();
    assert!(attempts.is_empty());
    assert_eq!((a.class.as_str(), a.method.as_str()), ("A", "handle"));
    assert_eq!(a.params, json!({"user_id": 1}));
    assert_eq!(a.priority, Priority::High);
    assert_eq!(a.state, JobState::Queued);
    assert_eq!((a.attempts, a.max_attempts, a.retries), (0, 3, 2));
    assert_eq!(a.retry_delay, Duration::from_millis(500));
    assert_eq!(a.timeout, Duration::from_secs(30));
    assert_eq!(a.plugin, std::path::PathBuf::from("/plugins/libx.so"));
    assert_eq!(
        (a.run_at, a.created_at, a.started_at, a.finished_at),
        (1000, 1000, None, None)
    );
    let (b_job, _) = s.job(ids[1]).unwrap().unwrap();
    assert_eq!(b_job.state, JobState::Scheduled);
    assert_eq!(b_job.run_at, 2500);
    assert!(s.job(ids[1] + 1000).unwrap().is_none());
}

pub fn claim_takes_priority_then_run_at_then_id_and_respects_the_limit(b: &dyn Backend) {
    let mut s = b.connect();
    let me = register(&mut *s);
    let low = s
        .enqueue(&[new_job("low", Priority::Low, 0)], 1000)
        .unwrap()[0];
    let normal_late = s
        .enqueue(&[new_job("normal-late", Priority::Normal, 0)], 1200)
        .unwrap()[0];
    let normal_early = s
        .enqueue(&[new_job("normal-early", Priority::Normal, 0)], 1100)
        .unwrap()[0];
    let high = s
        .enqueue(&[new_job("high", Priority::High, 0)], 1300)
        .unwrap()[0];
    let normal_same = s
        .enqueue(&[new_job("normal-same", Priority::Normal, 0)], 1100)
        .unwrap()[0];
    let future = s
        .enqueue(&[new_job("future", Priority::High, 60_000)], 1000)
        .unwrap()[0];

    let first = s.claim(me, 2000, 2).unwrap();
    assert_eq!(
        first.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![high, normal_early]
    );
    assert!(first
        .iter()
        .all(|j| j.state == JobState::Running && j.attempts == 1));
    let rest = s.claim(me, 2000, 10).unwrap();
    assert_eq!(
        rest.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![normal_same, normal_late, low]
    );
    assert!(
        s.claim(me, 2000, 10).unwrap().is_empty(),
        "a future job is not due"
    );
    assert_eq!(s.claim(me, 61_000, 10).unwrap()[0].id, future);
    assert!(s.claim(me, 61_000, 0).unwrap().is_empty());
}

pub fn claim_records_the_attempt_and_the_first_start(b: &dyn Backend) {
    let mut s = b.connect();
    let me = register(&mut *s);
    let id = s
        .enqueue(&[new_job("A", Priority::Normal, 0)], 1000)
        .unwrap()[0];
    s.claim(me, 1500, 1).unwrap();
    s.attempt_started(
        id,
        1,
        &AttemptStart {
            pid: 4242,
            plugin_hash: "abc".into(),
            output_path: "/out/1.out".into(),
        },
    )
    .unwrap();
    let (job, attempts) = s.job(id).unwrap().unwrap();
    assert_eq!(job.started_at, Some(1500));
    assert_eq!(attempts.len(), 1);
    let a = &attempts[0];
    assert_eq!((a.attempt, a.started_at, a.pid), (1, 1500, Some(4242)));
    assert_eq!(a.plugin_hash.as_deref(), Some("abc"));
    assert_eq!(a.output_path, Some("/out/1.out".into()));
    assert_eq!((a.finished_at, a.outcome.as_deref()), (None, None));
    let running = s.running().unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(
        (running[0].0.id, running[0].1.attempt, running[0].1.pid),
        (id, 1, Some(4242))
    );
}

pub fn concurrent_claims_never_hand_out_a_job_twice(b: &dyn Backend) {
    let mut s = b.connect();
    let me = register(&mut *s);
    let jobs: Vec<NewJob> = (0..200)
        .map(|_| new_job("A", Priority::Normal, 0))
        .collect();
    let ids: HashSet<i64> = s.enqueue(&jobs, 1000).unwrap().into_iter().collect();
    let claimers: Vec<_> = (0..4)
        .map(|_| {
            let mut conn = b.connect();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                loop {
                    let batch = conn.claim(me, 2000, 3).unwrap();
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.into_iter().map(|j| j.id));
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for claimer in claimers {
        for id in claimer.join().unwrap() {
            assert!(seen.insert(id), "job {id} claimed twice");
        }
    }
    assert_eq!(seen, ids);
}

pub fn settle_moves_the_job_and_records_the_attempt_once(b: &dyn Backend) {
    let mut s = b.connect();
    let me = register(&mut *s);
    let ids = s
        .enqueue(
            &[
                new_job("A", Priority::Normal, 0),
                new_job("B", Priority::Normal, 0),
            ],
            1000,
        )
        .unwrap();
    s.claim(me, 1000, 2).unwrap();
    assert!(s
        .settle(
            ids[0],
            1,
            &end("ok", 1300),
            &Next::Complete(json!({"sent": true}))
        )
        .unwrap());
    assert!(
        !s.settle(ids[0], 1, &end("ok", 1400), &Next::Fail).unwrap(),
        "settled twice"
    );
    let (done, attempts) = s.job(ids[0]).unwrap().unwrap();
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.result, Some(json!({"sent": true})));
    assert_eq!(done.finished_at, Some(1300));
    assert_eq!(attempts[0].outcome.as_deref(), Some("ok"));
    assert_eq!(
        (attempts[0].finished_at, attempts[0].output_bytes),
        (Some(1300), Some(12))
    );

    assert!(s
        .settle(
            ids[1],
            1,
            &end("crashed: SIGSEGV", 1300),
            &Next::Retry(1800)
        )
        .unwrap());
    let (retrying, _) = s.job(ids[1]).unwrap().unwrap();
    assert_eq!(
        (retrying.state, retrying.run_at, retrying.finished_at),
        (JobState::Scheduled, 1800, None)
    );
    assert_eq!(
        retrying.last_error.as_deref(),
        Some("crashed: SIGSEGV happened")
    );
    assert!(
        s.claim(me, 1799, 5).unwrap().is_empty(),
        "not before the retry delay"
    );
    let again = s.claim(me, 1800, 5).unwrap();
    assert_eq!((again[0].id, again[0].attempts), (ids[1], 2));
    assert!(
        !s.settle(ids[1], 1, &end("ok", 1900), &Next::Fail).unwrap(),
        "an old attempt"
    );
    assert!(s
        .settle(ids[1], 2, &end("timed out", 1900), &Next::Fail)
        .unwrap());
    let (failed, attempts) = s.job(ids[1]).unwrap().unwrap();
    assert_eq!(
        (failed.state, failed.finished_at),
        (JobState::Failed, Some(1900))
    );
    assert_eq!(
        attempts
            .iter()
            .map(|a| a.outcome.clone().unwrap())
            .collect::<Vec<_>>(),
        ["crashed: SIGSEGV", "timed out"]
    );
}

pub fn requeue_puts_an_interrupted_attempt_back_without_using_up_the_budget(b: &dyn Backend) {
    let mut s = b.connect();
    let me = register(&mut *s);
    let id = s
        .enqueue(&[new_job("A", Priority::Normal, 0)], 1000)
        .unwrap()[0];
    s.claim(me, 1000, 1).unwrap();
    assert!(s
        .settle(id, 1, &end("interrupted", 1100), &Next::Requeue)
        .unwrap());
    let (job, attempts) = s.job(id).unwrap().unwrap();
    assert_eq!(
        (job.state, job.run_at, job.attempts, job.max_attempts),
        (JobState::Queued, 1100, 1, 4)
    );
    assert_eq!(attempts[0].outcome.as_deref(), Some("interrupted"));
    assert_eq!(s.claim(me, 1100, 1).unwrap()[0].attempts, 2);
}

pub fn cancel_stops_waiting_jobs_and_flags_running_ones(b: &dyn Backend) {
    let mut s = b.connect();
    let me = register(&mut *s);
    let ids = s
        .enqueue(
            &[
                new_job("A", Priority::Normal, 0),
                new_job("B", Priority::Normal, 5000),
                new_job("C", Priority::High, 0),
            ],
            1000,
        )
        .unwrap();
    assert_eq!(s.claim(me, 1000, 1).unwrap()[0].id, ids[2]);
    assert_eq!(s.cancel(ids[0], 1100).unwrap(), CancelOutcome::Cancelled);
    assert_eq!(s.cancel(ids[1], 1100).unwrap(), CancelOutcome::Cancelled);
    assert!(s.cancel_requests().unwrap().is_empty());
    assert_eq!(s.cancel(ids[2], 1100).unwrap(), CancelOutcome::Requested);
    assert_eq!(s.cancel_requests().unwrap(), vec![ids[2]]);
    assert!(
        s.claim(me, 10_000, 10).unwrap().is_empty(),
        "cancelled jobs never start"
    );
    let (flagged, _) = s.job(ids[2]).unwrap().unwrap();
    assert!(flagged.cancel_requested && flagged.state == JobState::Running);
    assert!(s
        .settle(ids[2], 1, &end("cancelled", 1200), &Next::Cancel)
        .unwrap());
    assert_eq!(
        s.cancel(ids[2], 1300).unwrap(),
        CancelOutcome::AlreadyFinished(JobState::Cancelled)
    );
    assert!(s.cancel_requests().unwrap().is_empty());
    let (a, _) = s.job(ids[0]).unwrap().unwrap();
    assert_eq!((a.state, a.finished_at), (JobState::Cancelled, Some(1100)));
    assert!(matches!(
        s.cancel(99_999, 0),
        Err(StoreError::NotFound(99_999))
    ));
}

pub fn retry_requeues_failed_and_cancelled_jobs_only(b: &dyn Backend) {
    let mut s = b.connect();
    let me = register(&mut *s);
    let ids = s
        .enqueue(
            &[
                new_job("A", Priority::Normal, 0),
                new_job("B", Priority::Normal, 0),
            ],
            1000,
        )
        .unwrap();
    s.claim(me, 1000, 1).unwrap();
    assert!(matches!(
        s.retry(ids[0], 1100),
        Err(StoreError::WrongState {
            state: JobState::Running,
            ..
        })
    ));
    assert!(matches!(
        s.retry(ids[1], 1100),
        Err(StoreError::WrongState {
            state: JobState::Queued,
            ..
        })
    ));
    s.settle(ids[0], 1, &end("error", 1200), &Next::Fail)
        .unwrap();
    s.retry(ids[0], 5000).unwrap();
    let (again, _) = s.job(ids[0]).unwrap().unwrap();
    assert_eq!(
        (again.state, again.run_at, again.finished_at),
        (JobState::Queued, 5000, None)
    );
    assert_eq!(
        (again.attempts, again.max_attempts),
        (1, 4),
        "a full retry budget after the attempts used"
    );
    s.cancel(ids[1], 5000).unwrap();
    s.retry(ids[1], 5000).unwrap();
    let claimed: Vec<i64> = s
        .claim(me, 5000, 5)
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(claimed, ids);
    assert!(matches!(
        s.retry(424_242, 0),
        Err(StoreError::NotFound(424_242))
    ));
}

pub fn list_filters_and_pages_newest_first_and_stats_count_by_state(b: &dyn Backend) {
    let mut s = b.connect();
    let me = register(&mut *s);
    let ids = s
        .enqueue(
            &[
                new_job("A", Priority::High, 0),
                new_job("B", Priority::Low, 0),
                new_job("A", Priority::Low, 9000),
                new_job("A", Priority::Normal, 0),
            ],
            1000,
        )
        .unwrap();
    fn s_list(s: &mut dyn Store, f: ListFilter) -> Vec<i64> {
        s.list(&f).unwrap().into_iter().map(|j| j.id).collect()
    }
    let page = |limit, offset| ListFilter {
        limit,
        offset,
        ..ListFilter::default()
    };
    assert_eq!(
        s_list(&mut *s, page(10, 0)),
        vec![ids[3], ids[2], ids[1], ids[0]]
    );
    assert_eq!(s_list(&mut *s, page(2, 1)), vec![ids[2], ids[1]]);
    let by_class = ListFilter {
        class: Some("A".into()),
        limit: 10,
        ..ListFilter::default()
    };
    assert_eq!(s_list(&mut *s, by_class), vec![ids[3], ids[2], ids[0]]);
    let by_state = ListFilter {
        state: Some(JobState::Scheduled),
        limit: 10,
        ..ListFilter::default()
    };
    assert_eq!(s_list(&mut *s, by_state), vec![ids[2]]);
    let by_priority = ListFilter {
        priority: Some(Priority::Low),
        limit: 10,
        ..ListFilter::default()
    };
    assert_eq!(s_list(&mut *s, by_priority), vec![ids[2], ids[1]]);

    s.claim(me, 1000, 1).unwrap();
    let stats = s.stats().unwrap();
    let count = |state: &str| stats.by_state[state];
    assert_eq!(
        (
            count("queued"),
            count("scheduled"),
            count("running"),
            count("completed")
        ),
        (2, 1, 1, 0)
    );
    assert_eq!(
        stats.by_state.len(),
        6,
        "every state is listed, zeros included"
    );
    assert_eq!(s.unfinished().unwrap(), 4);
    assert_eq!(s.next_run_at().unwrap(), Some(1000));
}

pub fn batch_enqueue_is_one_transaction_visible_to_other_connections(b: &dyn Backend) {
    let mut writer = b.connect();
    let mut reader = b.connect();
    let jobs: Vec<NewJob> = (0..500)
        .map(|i| new_job(&format!("C{i}"), Priority::Normal, 0))
        .collect();
    let ids = writer.enqueue(&jobs, 1000).unwrap();
    assert_eq!(ids.len(), 500);
    assert_eq!(reader.unfinished().unwrap(), 500);
    assert!(reader.next_run_at().unwrap().is_some());
    assert!(writer.enqueue(&[], 1000).unwrap().is_empty());
}

pub fn finished_since_counts_completed_and_failed_jobs_by_when_they_ended(b: &dyn Backend) {
    let mut s = b.connect();
    let me = register(&mut *s);
    let ids = s
        .enqueue(
            &[
                new_job("A", Priority::Normal, 0),
                new_job("B", Priority::Normal, 0),
                new_job("C", Priority::Normal, 0),
                new_job("D", Priority::Normal, 0),
            ],
            1000,
        )
        .unwrap();
    let claimed = s.claim(me, 1000, 4).unwrap();
    assert_eq!(claimed.len(), 4);
    assert!(s
        .settle(ids[0], 1, &end("ok", 2000), &Next::Complete(json!(1)))
        .unwrap());
    assert!(s
        .settle(ids[1], 1, &end("ok", 5000), &Next::Complete(json!(2)))
        .unwrap());
    assert!(s
        .settle(ids[2], 1, &end("error", 6000), &Next::Fail)
        .unwrap());
    // Scheduled for a retry: not finished.
    assert!(s
        .settle(ids[3], 1, &end("error", 6000), &Next::Retry(9000))
        .unwrap());
    let mut at = |since| {
        let Finished { completed, failed } = s.finished_since(since).unwrap();
        (completed, failed)
    };
    assert_eq!(at(0), (2, 1));
    assert_eq!(at(5000), (1, 1));
    assert_eq!(at(5001), (0, 1));
    assert_eq!(at(6001), (0, 0));
}

pub fn dispatchers_register_heartbeat_and_deregister(b: &dyn Backend) {
    let mut s = b.connect();
    assert!(s.dispatchers().unwrap().is_empty());
    let a = s.register_dispatcher(&info("a"), 1000).unwrap();
    let other = s.register_dispatcher(&info("b"), 1500).unwrap();
    assert!(a > 0 && other > a);
    assert!(s.heartbeat(a, 3000).unwrap());
    let record = |id, host: &str, started_at, heartbeat_at| DispatcherRecord {
        id,
        host: host.into(),
        pid: 4242,
        slots: 4,
        state_dir: format!("/var/lib/jobhost-{host}"),
        started_at,
        heartbeat_at,
        running: 0,
    };
    assert_eq!(
        s.dispatchers().unwrap(),
        vec![record(a, "a", 1000, 3000), record(other, "b", 1500, 1500)]
    );
    assert!(s.deregister(a).unwrap());
    assert!(
        !s.heartbeat(a, 4000).unwrap(),
        "a deregistered dispatcher is told so"
    );
    assert!(s.deregister(a).unwrap(), "deregistering again is harmless");
    assert_eq!(
        s.dispatchers().unwrap(),
        vec![record(other, "b", 1500, 1500)]
    );
    let again = s.register_dispatcher(&info("a"), 5000).unwrap();
    assert!(again > other, "ids are never reused");
}

pub fn claims_record_their_dispatcher_which_cannot_leave_with_attempts_unsettled(b: &dyn Backend) {
    let mut s = b.connect();
    let me = s.register_dispatcher(&info("a"), 1000).unwrap();
    let other = s.register_dispatcher(&info("b"), 1000).unwrap();
    let ids = s
        .enqueue(
            &[
                new_job("A", Priority::Normal, 0),
                new_job("B", Priority::Normal, 0),
                new_job("C", Priority::Normal, 0),
            ],
            1000,
        )
        .unwrap();
    assert_eq!(s.claim(me, 1000, 2).unwrap().len(), 2);
    assert_eq!(s.claim(other, 1000, 1).unwrap()[0].id, ids[2]);
    let owners: Vec<_> = s
        .running()
        .unwrap()
        .into_iter()
        .map(|(job, attempt)| (job.id, attempt.dispatcher))
        .collect();
    assert_eq!(
        owners,
        vec![
            (ids[0], Some(me)),
            (ids[1], Some(me)),
            (ids[2], Some(other))
        ]
    );
    let running = |s: &mut dyn Store| {
        s.dispatchers()
            .unwrap()
            .into_iter()
            .map(|d| (d.id, d.running))
            .collect::<Vec<_>>()
    };
    assert_eq!(running(&mut *s), vec![(me, 2), (other, 1)]);
    assert!(
        !s.deregister(me).unwrap(),
        "refused while its attempts are unsettled"
    );
    assert_eq!(running(&mut *s), vec![(me, 2), (other, 1)]);

    assert!(s
        .settle(ids[0], 1, &end("ok", 1100), &Next::Complete(json!(1)))
        .unwrap());
    assert!(s
        .settle(ids[1], 1, &end("interrupted", 1100), &Next::Requeue)
        .unwrap());
    assert_eq!(running(&mut *s), vec![(me, 0), (other, 1)]);
    assert!(s.deregister(me).unwrap());
    assert!(matches!(
        s.claim(me, 2000, 1),
        Err(StoreError::NotRegistered(id)) if id == me
    ));
    assert!(matches!(
        s.claim(424_242, 2000, 1),
        Err(StoreError::NotRegistered(424_242))
    ));
    let taken = s.claim(other, 2000, 5).unwrap();
    assert_eq!(
        taken.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[1]],
        "what the deregistered dispatcher requeued is there for the others"
    );
    let (_, attempts) = s.job(ids[1]).unwrap().unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.dispatcher).collect::<Vec<_>>(),
        vec![Some(me), Some(other)],
        "an attempt names its dispatcher after that one left"
    );
}

pub fn expired_dispatchers_are_those_whose_heartbeat_is_older_than_the_cutoff(b: &dyn Backend) {
    let mut s = b.connect();
    let quiet = s.register_dispatcher(&info("quiet"), 1000).unwrap();
    let alive = s.register_dispatcher(&info("alive"), 1000).unwrap();
    s.enqueue(&[new_job("A", Priority::Normal, 0)], 1000)
        .unwrap();
    s.claim(quiet, 1000, 1).unwrap();
    assert!(s.heartbeat(alive, 9000).unwrap());
    let expired = |s: &mut dyn Store, cutoff| {
        s.expired_dispatchers(cutoff)
            .unwrap()
            .into_iter()
            .map(|d| (d.id, d.heartbeat_at, d.running))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        expired(&mut *s, 1000),
        vec![],
        "a heartbeat at the cutoff is in time"
    );
    assert_eq!(expired(&mut *s, 5000), vec![(quiet, 1000, 1)]);
    assert_eq!(
        expired(&mut *s, 9001),
        vec![(quiet, 1000, 1), (alive, 9000, 0)]
    );
}

pub fn two_rescuers_racing_settle_each_lost_job_once(b: &dyn Backend) {
    let mut s = b.connect();
    let lost = s.register_dispatcher(&info("lost"), 1000).unwrap();
    let alive = s.register_dispatcher(&info("alive"), 1000).unwrap();
    let jobs: Vec<NewJob> = (0..6)
        .map(|i| new_job(&format!("J{i}"), Priority::Normal, 0))
        .collect();
    let ids = s.enqueue(&jobs, 1000).unwrap();
    assert_eq!(s.claim(lost, 1000, 5).unwrap().len(), 5);
    assert_eq!(s.claim(alive, 1000, 1).unwrap()[0].id, ids[5]);
    assert!(s.heartbeat(alive, 20_000).unwrap());

    // Both read the same expired dispatcher and running attempts before either settles.
    let barrier = Arc::new(Barrier::new(2));
    let rescuers: Vec<_> = (0..2)
        .map(|_| {
            let mut conn = b.connect();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let expired = conn.expired_dispatchers(15_000).unwrap();
                let running = conn.running().unwrap();
                barrier.wait();
                let mut settled = Vec::new();
                for dispatcher in &expired {
                    for (job, attempt) in &running {
                        if attempt.dispatcher == Some(dispatcher.id)
                            && conn
                                .settle(
                                    job.id,
                                    attempt.attempt,
                                    &end("lost", 20_000),
                                    &Next::Retry(25_000),
                                )
                                .unwrap()
                        {
                            settled.push(job.id);
                        }
                    }
                    assert!(
                        conn.deregister(dispatcher.id).unwrap(),
                        "its attempts are all settled, by one rescuer or the other"
                    );
                }
                (expired.iter().map(|d| d.id).collect::<Vec<_>>(), settled)
            })
        })
        .collect();
    let mut settled = Vec::new();
    for rescuer in rescuers {
        let (expired, mine) = rescuer.join().unwrap();
        assert_eq!(expired, vec![lost]);
        settled.extend(mine);
    }
    settled.sort_unstable();
    assert_eq!(settled, ids[..5], "each lost job settled exactly once");
    for id in &ids[..5] {
        let (job, attempts) = s.job(*id).unwrap().unwrap();
        assert_eq!((job.state, job.run_at), (JobState::Scheduled, 25_000));
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].outcome.as_deref(), Some("lost"));
    }
    let left: Vec<_> = s
        .dispatchers()
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d.running))
        .collect();
    assert_eq!(left, vec![(alive, 1)]);
}

pub fn unfinished_plugins_are_those_of_waiting_and_running_jobs(b: &dyn Backend) {
    let mut s = b.connect();
    let me = register(&mut *s);
    let job = |class: &str, plugin: &str, delay_ms| NewJob {
        plugin: plugin.into(),
        ..new_job(class, Priority::Normal, delay_ms)
    };
    let first = s
        .enqueue(
            &[
                job("Done", "/p/liba-1.so", 0),
                job("Runs", "/p/libb-1.so", 0),
                job("Fails", "/p/libf-1.so", 0),
            ],
            1000,
        )
        .unwrap();
    assert_eq!(s.claim(me, 1000, 3).unwrap().len(), 3);
    assert!(s
        .settle(first[0], 1, &end("ok", 1100), &Next::Complete(json!(1)))
        .unwrap());
    assert!(s
        .settle(first[2], 1, &end("error", 1100), &Next::Fail)
        .unwrap());
    let later = s
        .enqueue(
            &[
                job("Later", "/p/libc-1.so", 9000),
                job("Queued", "/p/liba-1.so", 0),
                job("Cancelled", "/p/libe-1.so", 0),
            ],
            2000,
        )
        .unwrap();
    assert_eq!(s.cancel(later[2], 2100).unwrap(), CancelOutcome::Cancelled);
    let mut plugins = s.unfinished_plugins().unwrap();
    plugins.sort();
    assert_eq!(
        plugins,
        ["/p/liba-1.so", "/p/libb-1.so", "/p/libc-1.so"].map(std::path::PathBuf::from)
    );
}

pub fn refused_calls_are_rejected_errors_that_change_nothing(b: &dyn Backend) {
    let mut s = b.connect();
    let id = s
        .enqueue(&[new_job("A", Priority::Normal, 0)], 1000)
        .unwrap()[0];
    for e in [
        s.cancel(id + 1, 1100).unwrap_err(),
        s.retry(id, 1100).unwrap_err(),
        s.claim(id + 999, 1100, 1).unwrap_err(),
    ] {
        assert_eq!(e.class(), ErrorClass::Rejected, "{e}");
        assert!(
            !e.is_transient() && !e.outcome_unknown() && !e.is_fatal(),
            "{e}"
        );
    }
    let (job, attempts) = s.job(id).unwrap().unwrap();
    assert_eq!((job.state, attempts.len()), (JobState::Queued, 0));
}

/// Cutoffs of `before` for every terminal state.
fn finished_before(before: i64) -> Vec<Cutoff> {
    [JobState::Completed, JobState::Failed, JobState::Cancelled]
        .map(|state| Cutoff { state, before })
        .to_vec()
}

/// Enqueues a job at 1000 and runs its attempts to its end, each claimed and ended at `at`:
/// completed, or failed after `tries` attempts. Nothing else may be due.
fn finished(s: &mut dyn Store, me: DispatcherId, ok: bool, tries: u32, at: i64) -> JobId {
    let id = s
        .enqueue(&[new_job("A", Priority::Normal, 0)], 1000)
        .unwrap()[0];
    for attempt in 1..=tries {
        assert_eq!(s.claim(me, at, 1).unwrap()[0].id, id);
        let (outcome, next) = match (attempt == tries, ok) {
            (false, _) => ("error", Next::Retry(at)),
            (true, true) => ("ok", Next::Complete(json!(null))),
            (true, false) => ("error", Next::Fail),
        };
        assert!(s.settle(id, attempt, &end(outcome, at), &next).unwrap());
    }
    id
}

pub fn prune_deletes_jobs_finished_before_their_states_cutoff_with_their_attempts(b: &dyn Backend) {
    let mut s = b.connect();
    let me = register(&mut *s);
    // Finished long ago: completed (after 2 attempts), failed, cancelled while waiting.
    let mut ids = vec![
        finished(&mut *s, me, true, 2, 2000),
        finished(&mut *s, me, false, 1, 2000),
    ];
    ids.extend(
        s.enqueue(&[new_job("A", Priority::Normal, 0)], 1000)
            .unwrap(),
    );
    assert_eq!(s.cancel(ids[2], 2000).unwrap(), CancelOutcome::Cancelled);
    // Finished recently.
    ids.push(finished(&mut *s, me, true, 1, 5000));
    ids.push(finished(&mut *s, me, false, 1, 5000));
    // Failed long ago, then retried and running again.
    ids.push(finished(&mut *s, me, false, 1, 2000));
    s.retry(ids[5], 5000).unwrap();
    assert_eq!(s.claim(me, 5000, 1).unwrap()[0].id, ids[5]);
    // Scheduled for a retry after failing long ago, and queued: never pruned either.
    ids.extend(
        s.enqueue(&[new_job("A", Priority::Normal, 0)], 1000)
            .unwrap(),
    );
    assert_eq!(s.claim(me, 2000, 1).unwrap()[0].id, ids[6]);
    assert!(s
        .settle(ids[6], 1, &end("error", 2000), &Next::Retry(90_000))
        .unwrap());
    ids.extend(
        s.enqueue(
            &[
                new_job("A", Priority::Normal, 0),
                new_job("A", Priority::Normal, 0),
            ],
            1000,
        )
        .unwrap(),
    );
    let old = vec![ids[0], ids[1], ids[2]];

    let cutoffs = finished_before(3000);
    let expired = s.expired(&cutoffs).unwrap();
    let mut found = expired.jobs.clone();
    found.sort_unstable();
    assert_eq!((found, expired.attempts), (old.clone(), 3));
    assert_eq!(
        s.expired(&cutoffs).unwrap(),
        expired,
        "expired changes nothing"
    );
    // Non-terminal states are never pruned, whatever the cutoff.
    let waiting = [JobState::Queued, JobState::Scheduled, JobState::Running].map(|state| Cutoff {
        state,
        before: i64::MAX,
    });
    assert_eq!(s.expired(&waiting).unwrap(), Pruned::default());
    assert_eq!(s.prune(&waiting, 100).unwrap(), Some(Pruned::default()));

    // In batches of at most the limit; a short batch says there are no more.
    let first = s.prune(&cutoffs, 2).unwrap().unwrap();
    assert_eq!(first.jobs.len(), 2);
    let second = s.prune(&cutoffs, 2).unwrap().unwrap();
    assert_eq!(second.jobs.len(), 1);
    assert_eq!(first.attempts + second.attempts, 3);
    let mut pruned: Vec<JobId> = first.jobs.iter().chain(&second.jobs).copied().collect();
    pruned.sort_unstable();
    assert_eq!(pruned, old);
    assert_eq!(s.prune(&cutoffs, 2).unwrap(), Some(Pruned::default()));

    for &id in &old {
        assert!(s.job(id).unwrap().is_none(), "job {id} was pruned");
        assert!(matches!(s.retry(id, 6000), Err(StoreError::NotFound(_))));
    }
    let kept: Vec<JobId> = ids[3..].to_vec();
    let mut asked = ids.clone();
    asked.push(ids[8] + 1000);
    assert_eq!(s.existing_jobs(&asked).unwrap(), kept);
    assert_eq!(s.existing_jobs(&[]).unwrap(), Vec::<JobId>::new());
    let stats = s.stats().unwrap().by_state;
    assert_eq!(
        [
            "completed",
            "failed",
            "cancelled",
            "running",
            "scheduled",
            "queued"
        ]
        .map(|state| stats[state]),
        [1, 1, 0, 1, 1, 2]
    );

    // Each state has its own cutoff: only completed jobs before 6000 go now.
    let completed = [Cutoff {
        state: JobState::Completed,
        before: 6000,
    }];
    assert_eq!(
        s.prune(&completed, 10).unwrap().unwrap(),
        Pruned {
            jobs: vec![ids[3]],
            attempts: 1
        }
    );
    assert!(s.job(ids[4]).unwrap().is_some(), "failed jobs are kept");
}

pub fn concurrent_pruners_delete_each_job_once(b: &dyn Backend) {
    let mut s = b.connect();
    let me = register(&mut *s);
    let ids: Vec<JobId> = (0..60)
        .map(|_| finished(&mut *s, me, true, 1, 2000))
        .collect();
    let barrier = Arc::new(Barrier::new(3));
    let pruners: Vec<_> = (0..3)
        .map(|_| {
            let (mut conn, barrier) = (b.connect(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                let mut mine = Vec::new();
                loop {
                    // `None`: another connection is pruning; ask again.
                    if let Some(batch) = conn.prune(&finished_before(3000), 4).unwrap() {
                        if batch.jobs.is_empty() {
                            return mine;
                        }
                        mine.extend(batch.jobs);
                    }
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for pruner in pruners {
        for id in pruner.join().unwrap() {
            assert!(seen.insert(id), "job {id} pruned twice");
        }
    }
    assert_eq!(seen, ids.into_iter().collect());
    assert_eq!(s.stats().unwrap().by_state["completed"], 0);
}

pub fn open_existing_finds_no_store_before_the_first_open_and_creates_none(b: &dyn Backend) {
    let location = b.location();
    assert!(super::open_existing(&location).unwrap().is_none());
    assert!(
        super::open_existing(&location).unwrap().is_none(),
        "the first look created nothing"
    );
    let mut writer = b.connect();
    writer
        .enqueue(&[new_job("A", Priority::Normal, 0)], 1000)
        .unwrap();
    let mut reader = super::open_existing(&location)
        .unwrap()
        .expect("the store exists once opened");
    assert_eq!(reader.stats().unwrap().by_state["queued"], 1);
    assert_eq!(reader.job(1).unwrap().unwrap().0.class, "A");
}

/// Enqueues one normal job and returns its id.
fn one_job(s: &mut dyn Store, class: &str) -> i64 {
    s.enqueue(&[new_job(class, Priority::Normal, 0)], 1000)
        .unwrap()[0]
}

pub fn a_due_job_whose_row_cannot_be_read_is_quarantined_and_the_claim_goes_on(b: &dyn Backend) {
    let mut s = b.connect();
    let me = register(&mut *s);
    let cases = [
        (
            "max_attempts = 4294967296",
            "column max_attempts holds 4294967296, out of range (0 to 4294967295)",
        ),
        (
            "params = '{not json'",
            "column params holds text that is not JSON",
        ),
        (
            "priority = 7",
            "column priority holds 7, out of range (0 to 2)",
        ),
        ("retries = -1", "column retries holds -1, out of range"),
        (
            "timeout_ms = 0",
            "column timeout_ms holds 0, out of range (1 to ",
        ),
        ("attempts = 1000000", "the most attempts a job may have"),
    ];
    let mut bad = Vec::new();
    for (i, (set, _)) in cases.iter().enumerate() {
        let id = one_job(&mut *s, &format!("bad{i}"));
        b.execute(&format!("UPDATE jobs SET {set} WHERE id = {id}"));
        bad.push(id);
    }
    let good = one_job(&mut *s, "good");

    let claimed: Vec<i64> = s
        .claim(me, 2000, 10)
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(claimed, [good], "the readable job is claimed, the rest not");
    let quarantined = s.take_quarantined();
    assert_eq!(
        quarantined.iter().map(|q| q.id).collect::<HashSet<_>>(),
        bad.iter().copied().collect::<HashSet<_>>()
    );
    assert!(s.take_quarantined().is_empty(), "reported once");
    for (id, (set, why)) in bad.iter().zip(cases) {
        let reported = quarantined.iter().find(|q| q.id == *id).unwrap();
        assert!(reported.reason.contains(why), "{set}: {}", reported.reason);
        let (job, attempts) = s.job(*id).unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed, "{set}");
        assert_eq!(job.finished_at, Some(2000), "{set}");
        let error = job.last_error.unwrap();
        assert!(error.starts_with("quarantined: "), "{set}: {error}");
        assert!(error.contains(why), "{set}: {error}");
        assert!(attempts.is_empty(), "{set}: it never ran");
    }
    assert!(s.claim(me, 3000, 10).unwrap().is_empty(), "none comes back");
    assert!(s.take_quarantined().is_empty());
}

pub fn a_job_whose_row_cannot_be_read_is_listed_and_shown_with_its_problem(b: &dyn Backend) {
    let mut s = b.connect();
    let me = register(&mut *s);
    let odd = one_job(&mut *s, "odd");
    let unparsable = one_job(&mut *s, "unparsable");
    let fine = one_job(&mut *s, "fine");
    b.execute(&format!(
        "UPDATE jobs SET state = 'exploded' WHERE id = {odd}"
    ));
    b.execute(&format!(
        "UPDATE jobs SET state = 'completed', result = '[[' WHERE id = {unparsable}"
    ));

    let listed = s.list(&ListFilter {
        limit: 10,
        ..ListFilter::default()
    });
    let listed = listed.unwrap();
    assert_eq!(
        listed.iter().map(|j| j.id).collect::<Vec<_>>(),
        [fine, unparsable, odd]
    );
    assert_eq!(listed[0].problem, None);
    assert_eq!(
        listed[1]
            .problem
            .as_deref()
            .map(|p| p.starts_with("column result holds text that is not JSON")),
        Some(true),
        "{:?}",
        listed[1].problem
    );
    let (shown, _) = s.job(odd).unwrap().unwrap();
    assert_eq!(
        shown.problem.as_deref(),
        Some(r#"column state holds "exploded", not a job state"#)
    );
    assert_eq!(shown.class, "odd", "the readable columns are read");
    // A bad attempt row leaves the job shown, with the attempts that can be read.
    s.claim(me, 1500, 1).unwrap();
    s.settle(fine, 1, &end("error", 1600), &Next::Retry(1700))
        .unwrap();
    s.claim(me, 1700, 1).unwrap();
    b.execute(&format!(
        "UPDATE attempts SET pid = -5 WHERE job_id = {fine} AND attempt = 1"
    ));
    let (job, attempts) = s.job(fine).unwrap().unwrap();
    assert_eq!(attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(), [2]);
    assert_eq!(
        job.problem.as_deref(),
        Some("attempt row 1 left out: column pid holds -5, out of range (0 to 4294967295)")
    );
    let stats = s.stats().unwrap();
    assert_eq!(stats.by_state.get("exploded"), Some(&1));
    assert_eq!(stats.by_state.get("running"), Some(&1));
    // A job in an unknown state is not due: it is never claimed, so never quarantined.
    assert!(s.claim(me, 2000, 10).unwrap().is_empty());
    assert!(s.take_quarantined().is_empty());
}

pub fn retry_renews_only_a_budget_the_store_can_hold_and_read_back(b: &dyn Backend) {
    let mut s = b.connect();
    let me = register(&mut *s);
    let stored_unbounded = one_job(&mut *s, "A");
    let worn_out = one_job(&mut *s, "B");
    s.claim(me, 1000, 2).unwrap();
    for id in [stored_unbounded, worn_out] {
        s.settle(id, 1, &end("error", 1100), &Next::Fail).unwrap();
    }
    // As a jobhost that did not bound retries could have stored them.
    b.execute(&format!(
        "UPDATE jobs SET retries = 4294967294 WHERE id = {stored_unbounded}"
    ));
    s.retry(stored_unbounded, 2000).unwrap();
    let (job, _) = s.job(stored_unbounded).unwrap().unwrap();
    assert_eq!(job.problem, None);
    assert_eq!(
        (job.attempts, job.retries, job.max_attempts),
        (1, crate::job::MAX_RETRIES, 1 + crate::job::MAX_RETRIES + 1)
    );

    b.execute(&format!(
        "UPDATE jobs SET attempts = 999999, max_attempts = 999999 WHERE id = {worn_out}"
    ));
    match s.retry(worn_out, 2000) {
        Err(e @ StoreError::WrongState { .. }) => {
            assert!(
                e.to_string()
                    .contains(&format!("more than {} attempts", crate::job::MAX_ATTEMPTS)),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    let (job, _) = s.job(worn_out).unwrap().unwrap();
    assert_eq!((job.state, job.max_attempts), (JobState::Failed, 999_999));
}

pub fn a_lost_attempt_whose_report_turns_up_moves_its_job_on_only_while_it_still_waits(
    b: &dyn Backend,
) {
    let mut s = b.connect();
    let me = register(&mut *s);
    let ids = s
        .enqueue(
            &[
                new_job("A", Priority::Normal, 0),
                new_job("B", Priority::Normal, 0),
            ],
            1000,
        )
        .unwrap();
    // Both rescued as lost, each retried in a while.
    assert_eq!(s.claim(me, 1000, 2).unwrap().len(), 2);
    for &id in &ids {
        assert!(s
            .settle(id, 1, &end("lost", 2000), &Next::Retry(9000))
            .unwrap());
    }
    assert_eq!(s.lost_attempts().unwrap().len(), 2);
    // B's retry has run already.
    assert_eq!(s.claim(me, 9000, 2).unwrap().len(), 2);
    assert!(s
        .settle(ids[0], 2, &end("error", 9100), &Next::Retry(20_000))
        .unwrap());

    // The lost attempts' reports say ok after all.
    let ok = end("ok", 3000);
    let done = Next::Complete(json!({"late": true}));
    // Not the lost attempt: nothing.
    assert_eq!(
        s.amend_lost(ids[0], 2, &ok, &done).unwrap(),
        Amended::NotLost
    );
    let (job, _) = s.job(ids[0]).unwrap().unwrap();
    assert_eq!(job.state, JobState::Scheduled);
    // A's lost first attempt: the job moved on since (a second attempt ran), so only the
    // attempt's record is corrected.
    assert_eq!(
        s.amend_lost(ids[0], 1, &ok, &done).unwrap(),
        Amended::Recorded
    );
    let (job, attempts) = s.job(ids[0]).unwrap().unwrap();
    assert_eq!(job.state, JobState::Scheduled, "it had moved on");
    assert_eq!(attempts[0].outcome.as_deref(), Some("ok"));
    // B is running its second attempt: only the record.
    assert_eq!(
        s.amend_lost(ids[1], 1, &ok, &done).unwrap(),
        Amended::Recorded
    );
    assert_eq!(s.job(ids[1]).unwrap().unwrap().0.state, JobState::Running);
    assert!(s.lost_attempts().unwrap().is_empty(), "amended once");
    assert_eq!(
        s.amend_lost(ids[1], 1, &ok, &done).unwrap(),
        Amended::NotLost
    );

    // A third job, lost and still waiting for its retry: its late report completes it.
    let c = s
        .enqueue(&[new_job("C", Priority::Normal, 0)], 1000)
        .unwrap()[0];
    s.settle(ids[1], 2, &end("ok", 9200), &Next::Complete(json!(null)))
        .unwrap();
    let claimed = s.claim(me, 30_000, 1).unwrap();
    assert_eq!(claimed[0].id, c, "{claimed:?}");
    assert!(s
        .settle(c, 1, &end("lost", 30_100), &Next::Retry(90_000))
        .unwrap());
    assert_eq!(s.amend_lost(c, 1, &ok, &done).unwrap(), Amended::Moved);
    let (job, attempts) = s.job(c).unwrap().unwrap();
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.result, Some(json!({"late": true})));
    assert_eq!(job.last_error, None);
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_deref(), Some("ok"));
}

fn worker(pid: u32) -> AttemptStart {
    AttemptStart {
        pid,
        plugin_hash: format!("hash-{pid}"),
        output_path: format!("/state/attempts/{pid}/output").into(),
    }
}

fn started(id: JobId, attempt: u32, start: &AttemptStart) -> StartedAttempt<'_> {
    StartedAttempt { id, attempt, start }
}

fn settlement<'a>(id: JobId, attempt: u32, end: &'a AttemptEnd, next: &'a Next) -> Settlement<'a> {
    Settlement {
        id,
        attempt,
        end,
        next,
    }
}

pub fn batched_starts_record_each_unsettled_attempt_and_refuse_the_others(b: &dyn Backend) {
    let mut s = b.connect();
    let me = register(&mut *s);
    let jobs: Vec<NewJob> = (0..3).map(|_| new_job("A", Priority::Normal, 0)).collect();
    let ids = s.enqueue(&jobs, 1000).unwrap();
    assert_eq!(s.claim(me, 1000, 2).unwrap().len(), 2);
    assert!(s.settle(ids[1], 1, &end("lost", 1100), &Next::Retry(5000)).unwrap());
    assert_eq!(s.attempts_started(&[]).unwrap(), Vec::<bool>::new(), "an empty batch");

    let (first, again, other) = (worker(101), worker(102), worker(103));
    let recorded = s
        .attempts_started(&[
            started(ids[0], 1, &first),
            started(ids[1], 1, &other),  // settled already
            started(ids[2], 1, &other),  // never claimed
            started(999_999, 1, &other), // no such job
            started(ids[0], 2, &other),  // an attempt number it never claimed
            started(ids[0], 1, &again),  // the same attempt again: the later start holds
        ])
        .unwrap();
    assert_eq!(recorded, [true, false, false, false, false, true]);
    let (_, attempts) = s.job(ids[0]).unwrap().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (
            attempts[0].pid,
            attempts[0].plugin_hash.as_deref(),
            attempts[0].output_path.as_deref()
        ),
        (
            Some(102),
            Some("hash-102"),
            Some(std::path::Path::new("/state/attempts/102/output"))
        )
    );
    let (_, attempts) = s.job(ids[1]).unwrap().unwrap();
    assert_eq!(
        (attempts[0].pid, attempts[0].plugin_hash.as_deref()),
        (None, None),
        "a settled attempt gets no worker"
    );
    let (queued, attempts) = s.job(ids[2]).unwrap().unwrap();
    assert_eq!((queued.state, queued.attempts, attempts.len()), (JobState::Queued, 0, 0));
    assert!(s.job(999_999).unwrap().is_none(), "nothing made up");
    assert!(!s.attempt_started(ids[1], 1, &other).unwrap(), "one at a time alike");
    assert!(s.attempt_started(ids[0], 1, &first).unwrap());
}

pub fn batched_settles_settle_each_running_attempt_once_and_refuse_the_others(b: &dyn Backend) {
    let mut s = b.connect();
    let me = register(&mut *s);
    let jobs: Vec<NewJob> = (0..4).map(|_| new_job("A", Priority::Normal, 0)).collect();
    let ids = s.enqueue(&jobs, 1000).unwrap();
    assert_eq!(s.claim(me, 1000, 3).unwrap().len(), 3);
    assert_eq!(s.settle_many(&[]).unwrap(), Vec::<bool>::new(), "an empty batch");

    let (ok, failed, cancelled) = (end("ok", 1300), end("error", 1300), end("cancelled", 1300));
    let (complete, retry, fail, cancel) = (
        Next::Complete(json!({"n": 1})),
        Next::Retry(1800),
        Next::Fail,
        Next::Cancel,
    );
    let batch = [
        settlement(ids[0], 1, &ok, &complete),
        settlement(ids[1], 1, &failed, &retry),
        settlement(ids[0], 1, &failed, &fail), // the same attempt again
        settlement(ids[3], 1, &ok, &complete), // never claimed
        settlement(999_999, 1, &ok, &complete), // no such job
        settlement(ids[2], 2, &ok, &complete), // an attempt number it never claimed
        settlement(ids[2], 1, &cancelled, &cancel),
    ];
    let settled = s.settle_many(&batch).unwrap();
    assert_eq!(settled, [true, true, false, false, false, false, true]);

    let (done, attempts) = s.job(ids[0]).unwrap().unwrap();
    assert_eq!(
        (done.state, done.result, done.finished_at),
        (JobState::Completed, Some(json!({"n": 1})), Some(1300)),
        "the first item for an attempt settles it"
    );
    assert_eq!(
        (attempts[0].outcome.as_deref(), attempts[0].finished_at),
        (Some("ok"), Some(1300))
    );
    let (retrying, attempts) = s.job(ids[1]).unwrap().unwrap();
    assert_eq!(
        (retrying.state, retrying.run_at, retrying.last_error.as_deref()),
        (JobState::Scheduled, 1800, Some("error happened"))
    );
    assert_eq!(attempts[0].outcome.as_deref(), Some("error"));
    let (stopped, attempts) = s.job(ids[2]).unwrap().unwrap();
    assert_eq!((stopped.state, attempts.len()), (JobState::Cancelled, 1));
    assert_eq!(attempts[0].outcome.as_deref(), Some("cancelled"));
    let (queued, attempts) = s.job(ids[3]).unwrap().unwrap();
    assert_eq!((queued.state, queued.attempts, attempts.len()), (JobState::Queued, 0, 0));
    assert!(s.job(999_999).unwrap().is_none(), "nothing made up");

    assert_eq!(
        s.settle_many(&batch).unwrap(),
        [false; 7],
        "settled once: the same batch again changes nothing"
    );
    assert_eq!(s.job(ids[0]).unwrap().unwrap().0.state, JobState::Completed);

    // One job named at two attempt numbers: only its current attempt settles, and the old
    // one's record stays as it was.
    let again = s.claim(me, 1800, 5).unwrap();
    assert_eq!(again.iter().map(|j| (j.id, j.attempts)).collect::<Vec<_>>(), [(ids[3], 1), (ids[1], 2)]);
    let timed_out = end("timed out", 1900);
    let settled = s
        .settle_many(&[
            settlement(ids[1], 1, &ok, &complete),
            settlement(ids[1], 2, &timed_out, &fail),
        ])
        .unwrap();
    assert_eq!(settled, [false, true]);
    let (failed_job, attempts) = s.job(ids[1]).unwrap().unwrap();
    assert_eq!((failed_job.state, failed_job.finished_at), (JobState::Failed, Some(1900)));
    assert_eq!(
        attempts.iter().map(|a| a.outcome.clone().unwrap()).collect::<Vec<_>>(),
        ["error", "timed out"]
    );
    assert_eq!(s.unfinished().unwrap(), 1, "only the job claimed last still runs");
}

pub fn concurrent_batched_settles_settle_each_attempt_once(b: &dyn Backend) {
    const JOBS: usize = 40;
    let mut s = b.connect();
    let me = register(&mut *s);
    let jobs: Vec<NewJob> = (0..JOBS).map(|_| new_job("A", Priority::Normal, 0)).collect();
    let ids = s.enqueue(&jobs, 1000).unwrap();
    assert_eq!(s.claim(me, 1000, JOBS).unwrap().len(), JOBS);
    let barrier = Arc::new(Barrier::new(2));
    let settlers: Vec<_> = (0..2i64)
        .map(|n| {
            let mut s = b.connect();
            let barrier = Arc::clone(&barrier);
            // One in the order of the ids, one in reverse: a rescuer and a slow owner.
            let mut order = ids.clone();
            if n == 1 {
                order.reverse();
            }
            std::thread::spawn(move || {
                let outcome = end(if n == 0 { "ok" } else { "lost" }, 2000 + n);
                let next = Next::Complete(json!(n));
                let batch: Vec<Settlement<'_>> = order
                    .iter()
                    .map(|&id| settlement(id, 1, &outcome, &next))
                    .collect();
                barrier.wait();
                let settled = s.settle_many(&batch).unwrap();
                order.into_iter().zip(settled).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut by_whom = std::collections::HashMap::new();
    for (n, settler) in settlers.into_iter().enumerate() {
        for (id, settled) in settler.join().unwrap() {
            if settled {
                assert!(by_whom.insert(id, n as i64).is_none(), "job {id} settled twice");
            }
        }
    }
    assert_eq!(by_whom.len(), JOBS, "every job settled once");
    for id in ids {
        let (job, attempts) = s.job(id).unwrap().unwrap();
        let n = by_whom[&id];
        assert_eq!(job.state, JobState::Completed);
        assert_eq!(job.result, Some(json!(n)), "job {id} has its settler's result");
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].finished_at, Some(2000 + n), "and its settler's attempt");
    }
}

/// A `spawn` for [`Store::settle_and_claim`] that answers `starts` in turn, noting the jobs it
/// was given and, read from `other` (another connection), their states as committed then.
fn spawning<'a>(
    other: &'a mut dyn Store,
    starts: &'a [Option<AttemptStart>],
    seen: &'a mut Vec<(JobId, u32, JobState)>,
) -> impl FnMut(&[JobRecord]) -> Vec<Option<AttemptStart>> + 'a {
    move |jobs| {
        jobs.iter()
            .zip(starts.iter().cycle())
            .map(|(job, start)| {
                let committed = other.job(job.id).unwrap().unwrap().0.state;
                seen.push((job.id, job.attempts, committed));
                start.clone()
            })
            .collect()
    }
}

pub fn settle_and_claim_settles_claims_and_records_the_spawned_workers_in_one_commit(
    b: &dyn Backend,
) {
    let mut s = b.connect();
    let mut other = b.connect();
    let me = register(&mut *s);
    let jobs: Vec<NewJob> = (0..4).map(|_| new_job("A", Priority::Normal, 0)).collect();
    let ids = s.enqueue(&jobs, 1000).unwrap();
    assert_eq!(s.claim(me, 1000, 1).unwrap()[0].id, ids[0]);
    let (ok, complete) = (end("ok", 1100), Next::Complete(json!(1)));
    let mut seen = Vec::new();

    // The running attempt is settled (once, and a stray one not), two jobs are claimed, and
    // `spawn` starts a worker for the first and none for the second, while the claim is not
    // yet committed; the one worker is recorded with it.
    let starts = [Some(worker(4242)), None];
    let both = s
        .settle_and_claim(
            &[
                settlement(ids[0], 1, &ok, &complete),
                settlement(ids[0], 1, &ok, &complete),
                settlement(999_999, 1, &ok, &complete),
            ],
            me,
            1100,
            2,
            &mut spawning(&mut *other, &starts, &mut seen),
        )
        .unwrap();
    assert_eq!(both.settled, [true, false, false]);
    let claimed: Vec<(JobId, u32)> = both
        .claimed
        .unwrap()
        .iter()
        .map(|j| (j.id, j.attempts))
        .collect();
    assert_eq!(claimed, [(ids[1], 1), (ids[2], 1)]);
    assert_eq!(both.recorded, [true, false]);
    assert_eq!(
        seen,
        [
            (ids[1], 1, JobState::Queued),
            (ids[2], 1, JobState::Queued)
        ],
        "spawn is called once, before the claim is committed"
    );
    assert_eq!(s.job(ids[0]).unwrap().unwrap().0.state, JobState::Completed);
    let (second, attempts) = other.job(ids[1]).unwrap().unwrap();
    assert_eq!(second.state, JobState::Running);
    assert_eq!(attempts[0].pid, Some(4242), "{attempts:?}");
    assert_eq!(attempts[0].plugin_hash.as_deref(), Some("hash-4242"));
    let (third, attempts) = other.job(ids[2]).unwrap().unwrap();
    assert_eq!(third.state, JobState::Running);
    assert_eq!(attempts[0].pid, None, "no worker, none on record");

    // A claim refused once the settles are stored: they stand, and nothing is spawned.
    seen.clear();
    let both = s
        .settle_and_claim(
            &[settlement(ids[1], 1, &ok, &complete)],
            me + 1000,
            1200,
            2,
            &mut spawning(&mut *other, &starts, &mut seen),
        )
        .unwrap();
    assert_eq!(both.settled, [true]);
    assert!(
        matches!(both.claimed, Err(StoreError::NotRegistered(id)) if id == me + 1000),
        "{:?}",
        both.claimed
    );
    assert!(both.recorded.is_empty() && seen.is_empty());
    assert_eq!(s.job(ids[1]).unwrap().unwrap().0.state, JobState::Completed);
    assert_eq!(s.job(ids[3]).unwrap().unwrap().0.state, JobState::Queued);

    // A due row that must be quarantined: the settle stands, the row is quarantined, and the
    // claim and its spawn go on without it.
    let bad = one_job(&mut *s, "bad");
    b.execute(&format!("UPDATE jobs SET params = '{{not json' WHERE id = {bad}"));
    let starts = [Some(worker(4343))];
    let both = s
        .settle_and_claim(
            &[settlement(ids[2], 1, &ok, &complete)],
            me,
            1300,
            5,
            &mut spawning(&mut *other, &starts, &mut seen),
        )
        .unwrap();
    assert_eq!(both.settled, [true]);
    let claimed: Vec<JobId> = both.claimed.unwrap().iter().map(|j| j.id).collect();
    assert_eq!(claimed, [ids[3]]);
    assert_eq!(both.recorded, [true]);
    // (PostgreSQL claims a row that must be looked at one by one in a transaction of its
    // own, so the job may be committed running by then.)
    let spawned: Vec<(JobId, u32)> = seen.iter().map(|&(id, n, _)| (id, n)).collect();
    assert_eq!(spawned, [(ids[3], 1)]);
    assert_eq!(
        s.take_quarantined().iter().map(|q| q.id).collect::<Vec<_>>(),
        [bad]
    );
    assert_eq!(s.job(ids[2]).unwrap().unwrap().0.state, JobState::Completed);
    assert_eq!(s.job(ids[3]).unwrap().unwrap().1[0].pid, Some(4343));
    assert_eq!(s.job(bad).unwrap().unwrap().0.state, JobState::Failed);

    // Nothing due, or nothing to claim: no spawn.
    seen.clear();
    let both = s
        .settle_and_claim(&[], me, 1400, 5, &mut spawning(&mut *other, &starts, &mut seen))
        .unwrap();
    assert!(both.settled.is_empty() && both.recorded.is_empty());
    assert!(both.claimed.unwrap().is_empty());
    let both = s
        .settle_and_claim(
            &[settlement(ids[3], 1, &ok, &complete)],
            me,
            1400,
            0,
            &mut spawning(&mut *other, &starts, &mut seen),
        )
        .unwrap();
    assert_eq!(both.settled, [true]);
    assert!(both.claimed.unwrap().is_empty());
    assert!(seen.is_empty());
    assert_eq!(s.unfinished().unwrap(), 0);
}

pub fn a_round_records_workers_whose_paths_hold_quotes_backslashes_and_parameters_as_given(
    b: &dyn Backend,
) {
    let mut s = b.connect();
    let mut other = b.connect();
    let me = register(&mut *s);
    let ids = s
        .enqueue(&[new_job("A", Priority::Normal, 0), new_job("A", Priority::Normal, 0)], 1000)
        .unwrap();
    let odd = |pid: u32, path: &str| AttemptStart {
        pid,
        plugin_hash: format!("h'{pid}\\$2"),
        output_path: path.into(),
    };
    // Two workers in one round, their values anything a path may hold.
    let starts = [
        Some(odd(7, "/state/it's\\ a $1 path; DROP TABLE jobs; --/\u{e9}.out")),
        Some(odd(8, "/state/'';$2\\'/E'x'/8.out")),
    ];
    let mut seen = Vec::new();
    let both = s
        .settle_and_claim(&[], me, 1000, 2, &mut spawning(&mut *other, &starts, &mut seen))
        .unwrap();
    assert_eq!(both.recorded, [true, true]);
    for (id, start) in ids.iter().zip(starts.iter().flatten()) {
        let (job, attempts) = other.job(*id).unwrap().unwrap();
        assert_eq!(job.state, JobState::Running);
        assert_eq!(
            (
                attempts[0].pid,
                attempts[0].plugin_hash.as_deref(),
                attempts[0].output_path.as_deref()
            ),
            (
                Some(start.pid),
                Some(start.plugin_hash.as_str()),
                Some(start.output_path.as_path())
            )
        );
    }
    assert_eq!(other.unfinished().unwrap(), 2, "nothing else was touched");
}

pub fn a_round_settles_and_claims_values_holding_quotes_backslashes_nul_and_parameters_as_given(
    b: &dyn Backend,
) {
    let mut s = b.connect();
    let mut other = b.connect();
    let me = register(&mut *s);
    let odd = "it's a \\ $1 '';\\' E'x' \u{e9}\u{0}; DROP TABLE jobs; --";
    let mut job = new_job("App\\Jobs\\It's", Priority::High, 0);
    job.spec.method = "$2".into();
    job.spec.params = json!({"q": odd, "n": -1, "nested": ["\\", "'", null, true]});
    job.plugin = "/plugins/it's \\ $3.so".into();
    let ids = s
        .enqueue(&[new_job("A", Priority::Normal, 0), job.clone(), new_job("A", Priority::Low, 0)], 1000)
        .unwrap();
    assert_eq!(s.claim(me, 1000, 1).unwrap()[0].id, ids[1], "the high one first");
    // The attempt's error and result hold anything a job may say; the round settles it and
    // claims the next two, and every value comes back as it was stored.
    let failed = AttemptEnd {
        finished_at: 1100,
        outcome: "error".into(),
        error: Some(odd.into()),
        output_bytes: 3,
    };
    let retry = Next::Retry(5000);
    let mut seen = Vec::new();
    let starts = [Some(worker(1)), Some(worker(2))];
    let both = s
        .settle_and_claim(
            &[settlement(ids[1], 1, &failed, &retry)],
            me,
            1100,
            2,
            &mut spawning(&mut *other, &starts, &mut seen),
        )
        .unwrap();
    assert_eq!(both.settled, [true]);
    assert_eq!(both.recorded, [true, true]);
    let claimed = both.claimed.unwrap();
    assert_eq!(claimed.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[0], ids[2]]);
    assert!(claimed.iter().all(|j| j.problem.is_none()), "{claimed:?}");
    let (settled, attempts) = other.job(ids[1]).unwrap().unwrap();
    assert_eq!(settled.state, JobState::Scheduled);
    assert_eq!(settled.run_at, 5000);
    assert_eq!(attempts[0].error.as_deref(), Some(odd.replace('\0', "\u{fffd}").as_str()));
    assert_eq!(settled.last_error, attempts[0].error);

    // Claimed again, the odd job reads back whole from the round's claim.
    let complete = Next::Complete(json!({"said": odd}));
    let ok = end("ok", 6000);
    seen.clear();
    let starts = [Some(worker(3))];
    let both = s
        .settle_and_claim(
            &[settlement(ids[0], 1, &ok, &complete)],
            me,
            6000,
            1,
            &mut spawning(&mut *other, &starts, &mut seen),
        )
        .unwrap();
    assert_eq!(both.settled, [true]);
    let again = &both.claimed.unwrap()[0];
    assert_eq!(
        (again.id, again.attempts, again.problem.as_deref()),
        (ids[1], 2, None)
    );
    assert_eq!(
        (&again.class, &again.method, &again.params, &again.plugin),
        (&job.spec.class, &job.spec.method, &job.spec.params, &job.plugin)
    );
    assert_eq!((again.priority, again.started_at, again.last_error.as_deref()),
        (Priority::High, Some(1000), settled.last_error.as_deref()));
    assert_eq!(other.job(ids[0]).unwrap().unwrap().0.result, Some(json!({"said": odd})));
}

pub fn a_round_that_meets_a_row_it_cannot_claim_settles_quarantines_it_and_claims_the_rest(
    b: &dyn Backend,
) {
    let mut s = b.connect();
    let mut other = b.connect();
    let me = register(&mut *s);
    let running = one_job(&mut *s, "running");
    assert_eq!(s.claim(me, 1000, 1).unwrap()[0].id, running);
    // One more attempt cannot be counted (PostgreSQL refuses the claim's statement), or the
    // row does not read back.
    let overflowing = one_job(&mut *s, "overflowing");
    b.execute(&format!("UPDATE jobs SET attempts = 9223372036854775807 WHERE id = {overflowing}"));
    let unreadable = one_job(&mut *s, "unreadable");
    b.execute(&format!("UPDATE jobs SET priority = 7 WHERE id = {unreadable}"));
    let good = one_job(&mut *s, "good");
    let (ok, complete) = (end("ok", 1100), Next::Complete(json!(1)));
    let mut seen = Vec::new();
    let starts = [Some(worker(9))];
    let both = s
        .settle_and_claim(
            &[settlement(running, 1, &ok, &complete)],
            me,
            1100,
            3,
            &mut spawning(&mut *other, &starts, &mut seen),
        )
        .unwrap();
    assert_eq!(both.settled, [true]);
    let claimed: Vec<JobId> = both.claimed.unwrap().iter().map(|j| j.id).collect();
    assert_eq!(claimed, [good]);
    assert_eq!(both.recorded, [true]);
    assert_eq!(s.job(running).unwrap().unwrap().0.state, JobState::Completed);
    let quarantined: HashSet<JobId> = s.take_quarantined().iter().map(|q| q.id).collect();
    assert_eq!(quarantined, HashSet::from([overflowing, unreadable]));
    for id in [overflowing, unreadable] {
        let (job, attempts) = s.job(id).unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed, "{job:?}");
        assert!(job.last_error.unwrap().starts_with("quarantined: "));
        assert!(attempts.is_empty(), "it never ran");
    }
}

/// Instantiates every case above as a `#[test]` for one backend.
macro_rules! conformance_suite {
    ($backend:expr) => {
        conformance_suite!(@cases $backend;
            enqueue_stores_every_field_and_returns_increasing_ids,
            claim_takes_priority_then_run_at_then_id_and_respects_the_limit,
            claim_records_the_attempt_and_the_first_start,
            concurrent_claims_never_hand_out_a_job_twice,
            settle_moves_the_job_and_records_the_attempt_once,
            cancel_stops_waiting_jobs_and_flags_running_ones,
            requeue_puts_an_interrupted_attempt_back_without_using_up_the_budget,
            retry_requeues_failed_and_cancelled_jobs_only,
            list_filters_and_pages_newest_first_and_stats_count_by_state,
            batch_enqueue_is_one_transaction_visible_to_other_connections,
            finished_since_counts_completed_and_failed_jobs_by_when_they_ended,
            dispatchers_register_heartbeat_and_deregister,
            claims_record_their_dispatcher_which_cannot_leave_with_attempts_unsettled,
            expired_dispatchers_are_those_whose_heartbeat_is_older_than_the_cutoff,
            two_rescuers_racing_settle_each_lost_job_once,
            unfinished_plugins_are_those_of_waiting_and_running_jobs,
            refused_calls_are_rejected_errors_that_change_nothing,
            prune_deletes_jobs_finished_before_their_states_cutoff_with_their_attempts,
            concurrent_pruners_delete_each_job_once,
            open_existing_finds_no_store_before_the_first_open_and_creates_none,
            a_due_job_whose_row_cannot_be_read_is_quarantined_and_the_claim_goes_on,
            a_job_whose_row_cannot_be_read_is_listed_and_shown_with_its_problem,
            retry_renews_only_a_budget_the_store_can_hold_and_read_back,
            a_lost_attempt_whose_report_turns_up_moves_its_job_on_only_while_it_still_waits,
            batched_starts_record_each_unsettled_attempt_and_refuse_the_others,
            batched_settles_settle_each_running_attempt_once_and_refuse_the_others,
            concurrent_batched_settles_settle_each_attempt_once,
            settle_and_claim_settles_claims_and_records_the_spawned_workers_in_one_commit,
            a_round_records_workers_whose_paths_hold_quotes_backslashes_and_parameters_as_given,
            a_round_settles_and_claims_values_holding_quotes_backslashes_nul_and_parameters_as_given,
            a_round_that_meets_a_row_it_cannot_claim_settles_quarantines_it_and_claims_the_rest,
        );
    };
    (@cases $backend:expr; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                let backend = $backend;
                $crate::store::conformance::$case(&backend);
            }
        )+
    };
}

mod sqlite {
    use super::Backend;
    use crate::store::{open_existing, StoreLocation};

    struct Sqlite(tempfile::TempDir);

    impl Sqlite {
        fn path(&self) -> std::path::PathBuf {
            self.0.path().join("state").join("jobs.sqlite3")
        }
    }

    impl Backend for Sqlite {
        fn location(&self) -> StoreLocation {
            StoreLocation::Sqlite(self.path())
        }

        fn execute(&self, sql: &str) {
            let conn = rusqlite::Connection::open(self.path()).unwrap();
            conn.execute_batch(sql).unwrap();
        }
    }

    conformance_suite!(Sqlite(tempfile::tempdir().unwrap()));

    #[test]
    fn open_existing_creates_no_state_directory() {
        let backend = Sqlite(tempfile::tempdir().unwrap());
        assert!(open_existing(&backend.location()).unwrap().is_none());
        assert!(!backend.0.path().join("state").exists());
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::Backend;
    use crate::store::StoreLocation;
    use jobhost_testing::TestDatabase;

    struct Postgres(TestDatabase);

    impl Backend for Postgres {
        fn location(&self) -> StoreLocation {
            StoreLocation::parse(self.0.url()).unwrap()
        }

        fn execute(&self, sql: &str) {
            let mut client = ::postgres::Client::connect(self.0.url(), ::postgres::NoTls).unwrap();
            client.batch_execute(sql).unwrap();
        }
    }

    conformance_suite!(Postgres(TestDatabase::create()));
}
