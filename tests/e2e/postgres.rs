//! Dispatchers on several hosts sharing one PostgreSQL queue. Each "host" is an installation
//! of its own (plugin directory, allowlist, state directory, logs) whose settings name the same
//! throwaway database ([`TestDatabase`], on the server `JOBHOST_TEST_POSTGRES` names; these
//! tests fail, never skip, when it is unreachable). Times the issue states as targets (a rescue
//! within the lease plus a second, a cross-host cancel within a second) are printed, not
//! asserted: the suite must pass on a loaded machine.

use std::{
    collections::{BTreeMap, HashMap},
    process::{Child, Command},
    time::{Duration, Instant},
};

use jobhost::{
    store::{now_millis, Attempt, DispatcherId, JobId, JobState, Millis, Store},
    Job, Priority,
};
use jobhost_e2e::{group_alive, open_store, wait_for, Host, Run};
use jobhost_testing::TestDatabase;
use serde_json::Value;

use crate::dashboard::{As, Dashboard};

const CLASS: &str = r"Tests\Misbehave";
const ECHO: &str = r"Tests\Misbehave@echo";

/// An installation on the shared database with its `jobhost serve` running.
struct Dispatcher {
    host: Host,
    serve: Child,
    /// Its registration.
    id: DispatcherId,
}

/// Starts `n` installations on `db` with the `extra` settings, each with its `jobhost serve`,
/// and waits until each is registered in `store`.
fn start_dispatchers(
    db: &TestDatabase,
    n: usize,
    extra: &str,
    store: &mut dyn Store,
) -> Vec<Dispatcher> {
    (0..n)
        .map(|_| {
            let host = Host::on_store(db.url());
            host.settings(extra);
            let serve = host.serve();
            let id = host.registered(store).id;
            Dispatcher { host, serve, id }
        })
        .collect()
}

/// `count` echo jobs numbered from `first` (`n = first..`).
fn echoes(first: i64, count: i64) -> impl Iterator<Item = Job> {
    (first..first + count).map(|n| Job::new(CLASS, "echo").param("n", n))
}

/// Job `id` and its attempts.
fn job(store: &mut dyn Store, id: JobId) -> (JobState, Vec<Attempt>) {
    let (job, attempts) = store.job(id).unwrap().unwrap();
    (job.state, attempts)
}

/// How many jobs are finished (completed, failed or cancelled); `None` if the store cannot say
/// right now.
fn finished(store: &mut dyn Store) -> Option<u64> {
    let stats = store.stats().ok()?;
    Some(
        ["completed", "failed", "cancelled"]
            .iter()
            .map(|state| stats.by_state[*state])
            .sum(),
    )
}

/// What [`assert_each_ran_once`] found.
struct RanOnce {
    /// How many jobs each dispatcher ran.
    by_dispatcher: BTreeMap<DispatcherId, usize>,
    /// Attempts that never started a worker (claims whose answer a dispatcher never got, or
    /// whose commit was in doubt).
    unstarted: Vec<Attempt>,
}

/// Asserts that each of the echo jobs `ids`, numbered `0..ids.len()`, ran exactly once among
/// `dispatchers`: it completed, one of its attempts started a worker, by one of them, and
/// ended `ok`, and all their logs together have one `Job started` line for it. Attempts that
/// started no worker (none on record, or one that was told not to start) are returned, not
/// judged.
fn assert_each_ran_once(
    store: &mut dyn Store,
    dispatchers: &[Dispatcher],
    ids: &[JobId],
) -> RanOnce {
    let mut by_dispatcher: BTreeMap<DispatcherId, usize> = BTreeMap::new();
    let mut unstarted = Vec::new();
    for &id in ids {
        let (state, attempts) = job(store, id);
        // A worker on record may still not have started: one whose claim's commit was in
        // doubt is told not to, and its attempt settled `not started`.
        let (ran, never): (Vec<Attempt>, Vec<Attempt>) = attempts
            .iter()
            .cloned()
            .partition(|a| a.pid.is_some() && a.outcome.as_deref() != Some("not started"));
        assert_eq!(
            (state, ran.len()),
            (JobState::Completed, 1),
            "job {id}: {attempts:#?}"
        );
        assert_eq!(ran[0].outcome.as_deref(), Some("ok"), "job {id}");
        let by = ran[0].dispatcher.expect("the attempt names its dispatcher");
        assert!(
            dispatchers.iter().any(|d| d.id == by),
            "job {id} ran on dispatcher {by}, not one of the test's"
        );
        *by_dispatcher.entry(by).or_default() += 1;
        unstarted.extend(never);
    }
    let mut starts: HashMap<i64, usize> = HashMap::new();
    for d in dispatchers {
        for context in d.host.logged("started", ECHO) {
            *starts
                .entry(context["params"]["n"].as_i64().unwrap())
                .or_default() += 1;
        }
    }
    assert_eq!(starts.len(), ids.len(), "every job started");
    let twice: Vec<_> = starts.iter().filter(|(_, &count)| count != 1).collect();
    assert!(twice.is_empty(), "started more than once: {twice:?}");
    RanOnce {
        by_dispatcher,
        unstarted,
    }
}

/// Stops every dispatcher with `jobhost stop`; each deregisters from `store`.
fn stop_all(dispatchers: &mut [Dispatcher], store: &mut dyn Store) {
    for d in dispatchers.iter_mut() {
        assert!(d.host.stop_serve(&mut d.serve), "jobhost serve stops");
    }
    assert_eq!(store.dispatchers().unwrap(), vec![], "all deregistered");
}

#[test]
fn three_dispatchers_drain_3000_jobs_each_exactly_once_and_all_three_do_work() {
    const JOBS: i64 = 3000;
    let db = TestDatabase::create();
    let mut store = open_store(db.url());
    let mut dispatchers = start_dispatchers(&db, 3, "", &mut *store);
    let mut client = dispatchers[0].host.client();
    let started = Instant::now();
    let mut ids = Vec::new();
    for first in (0..JOBS).step_by(1000) {
        ids.extend(client.dispatch_batch(echoes(first, 1000)).unwrap());
    }
    wait_for("3000 finished jobs", Duration::from_secs(900), || {
        finished(&mut *store).filter(|&n| n == JOBS as u64)
    });
    println!(
        "3 dispatchers drained {JOBS} jobs in {:?}",
        started.elapsed()
    );
    let RanOnce {
        by_dispatcher,
        unstarted,
    } = assert_each_ran_once(&mut *store, &dispatchers, &ids);
    println!("jobs run by each dispatcher: {by_dispatcher:?}");
    assert!(unstarted.is_empty(), "one attempt each: {unstarted:#?}");
    for d in &dispatchers {
        assert!(
            by_dispatcher.contains_key(&d.id),
            "dispatcher {} ran no job: {by_dispatcher:?}",
            d.id
        );
    }
    stop_all(&mut dispatchers, &mut *store);
}

#[test]
fn kill_9_of_a_dispatcher_mid_run_has_its_jobs_rescued_as_lost_and_retried_elsewhere() {
    const LEASE_MS: Millis = 2000;
    let db = TestDatabase::create();
    let mut store = open_store(db.url());
    let mut dispatchers = start_dispatchers(
        &db,
        2,
        &format!("dispatcher.lease = {}\n", LEASE_MS as f64 / 1000.0),
        &mut *store,
    );
    let (survivor, victim) = (dispatchers[0].id, dispatchers[1].id);
    let mut client = dispatchers[0].host.client();
    let sleeper = || {
        Job::new(CLASS, "sleep")
            .param("seconds", 10)
            .retries(1)
            .retry_delay(Duration::ZERO)
    };
    let sleepers = client.dispatch_batch((0..4).map(|_| sleeper())).unwrap();
    // Two slots each: once all four run, each dispatcher runs two of them.
    let running = wait_for("the four sleepers to run", Duration::from_secs(60), || {
        sleepers
            .iter()
            .map(|&id| {
                let (state, attempts) = job(&mut *store, id);
                let attempt = attempts.last()?;
                (state == JobState::Running && attempt.pid.is_some()).then(|| attempt.clone())
            })
            .collect::<Option<Vec<Attempt>>>()
    });
    let doomed: Vec<JobId> = running
        .iter()
        .filter(|a| a.dispatcher == Some(victim))
        .map(|a| a.job_id)
        .collect();
    assert_eq!(doomed.len(), 2, "{running:#?}");
    let queued = client.dispatch_batch(echoes(0, 10)).unwrap();
    wait_for("the victim's two workers", Duration::from_secs(30), || {
        (dispatchers[1].host.workers().len() == 2).then_some(())
    });
    let heartbeat = |store: &mut dyn Store| {
        let dispatchers = store.dispatchers().unwrap();
        let record = dispatchers.into_iter().find(|d| d.id == victim);
        record.map(|d| d.heartbeat_at)
    };
    let heartbeat_before = heartbeat(&mut *store).expect("the victim is registered");

    let killed_at = now_millis();
    let kill = Instant::now();
    dispatchers[1].serve.kill().unwrap();
    dispatchers[1].serve.wait().unwrap();
    // Its last heartbeat, if it is not rescued yet; else the one read before is a lower bound.
    let last_heartbeat = heartbeat(&mut *store).unwrap_or(heartbeat_before);
    let lost = wait_for(
        "the victim's attempts to be settled",
        Duration::from_secs(60),
        || {
            doomed
                .iter()
                .map(|&id| {
                    let first = job(&mut *store, id).1.swap_remove(0);
                    first.finished_at.is_some().then_some(first)
                })
                .collect::<Option<Vec<Attempt>>>()
        },
    );
    let seen = kill.elapsed();

    for id in sleepers.iter().chain(&queued) {
        wait_for(
            &format!("job {id} to complete"),
            Duration::from_secs(120),
            || (job(&mut *store, *id).0 == JobState::Completed).then_some(()),
        );
    }
    let rescued_at = lost.iter().map(|a| a.finished_at.unwrap()).max().unwrap();
    println!(
        "kill -9 to rescue (lease {LEASE_MS} ms, heartbeat every {} ms): the attempts were \
         settled lost {} ms after the kill and {} ms after its last heartbeat (store times); \
         the test saw it {seen:?} after the kill",
        LEASE_MS / 5,
        rescued_at - killed_at,
        rescued_at - last_heartbeat,
    );
    for attempt in &lost {
        // Not before its lease ran out: a live dispatcher is never rescued.
        assert!(
            attempt.finished_at.unwrap() >= last_heartbeat + LEASE_MS,
            "rescued {} ms after its last heartbeat, within the lease",
            attempt.finished_at.unwrap() - last_heartbeat
        );
    }
    let who = |attempts: &[Attempt]| -> Vec<(String, DispatcherId)> {
        attempts
            .iter()
            .map(|a| (a.outcome.clone().unwrap(), a.dispatcher.unwrap()))
            .collect()
    };
    for &id in &sleepers {
        let attempts = job(&mut *store, id).1;
        if doomed.contains(&id) {
            assert_eq!(
                who(&attempts),
                [("lost".into(), victim), ("ok".into(), survivor)],
                "job {id}"
            );
            let error = attempts[0].error.as_deref().unwrap_or_default();
            assert!(error.contains("stopped heartbeating"), "{error}");
        } else {
            assert_eq!(who(&attempts), [("ok".into(), survivor)], "job {id}");
        }
    }
    for &id in &queued {
        assert_eq!(
            who(&job(&mut *store, id).1),
            [("ok".into(), survivor)],
            "job {id}"
        );
    }
    let registered: Vec<DispatcherId> = store.dispatchers().unwrap().iter().map(|d| d.id).collect();
    assert_eq!(registered, [survivor], "the victim is deregistered");
    // Its orphaned workers finish their sleep unwatched.
    wait_for(
        "the victim's orphaned workers to end",
        Duration::from_secs(60),
        || dispatchers[1].host.workers().is_empty().then_some(()),
    );
}

#[test]
fn a_dispatcher_restarted_after_kill_9_adopts_its_running_workers_and_nobody_rescues_them() {
    // A lease far longer than a restart takes, even on a loaded machine, and jobs far longer
    // than the lease.
    const LEASE: &str = "dispatcher.lease = 10\n";
    let db = TestDatabase::create();
    let mut store = open_store(db.url());
    let mut a = start_dispatchers(&db, 1, LEASE, &mut *store).remove(0);
    let old = a.id;
    let sleepers = a
        .host
        .client()
        .dispatch_batch((0..2).map(|_| {
            Job::new(CLASS, "sleep")
                .param("seconds", 25)
                .retries(1)
                .retry_delay(Duration::ZERO)
        }))
        .unwrap();
    let workers = wait_for("both workers on A", Duration::from_secs(60), || {
        let workers = a.host.workers();
        (workers.len() == 2).then_some(workers)
    });
    // B starts once both jobs run on A: it could rescue them, and must not.
    let _b = start_dispatchers(&db, 1, LEASE, &mut *store);
    a.serve.kill().unwrap();
    a.serve.wait().unwrap();
    // One orphan dies unwatched; the other runs on and is adopted.
    let (gone, _) = workers[0];
    Command::new("kill")
        .args(["-9", &gone.to_string()])
        .status()
        .unwrap();
    a.serve = a.host.serve();
    let restarted = a.host.registered(&mut *store).id;
    assert_ne!(restarted, old, "registered anew");

    for &id in &sleepers {
        wait_for(
            &format!("job {id} to complete"),
            Duration::from_secs(120),
            || (job(&mut *store, id).0 == JobState::Completed).then_some(()),
        );
    }
    let mut outcomes: Vec<Vec<String>> = sleepers
        .iter()
        .map(|&id| {
            let attempts = job(&mut *store, id).1;
            assert_eq!(attempts[0].dispatcher, Some(old), "job {id}");
            attempts
                .iter()
                .map(|a| {
                    let error = a.error.as_deref().unwrap_or_default();
                    format!("{} {error}", a.outcome.as_deref().unwrap())
                        .trim()
                        .to_owned()
                })
                .collect()
        })
        .collect();
    outcomes.sort();
    assert_eq!(outcomes.len(), 2);
    assert_eq!(
        outcomes[1],
        ["ok"],
        "the adopted worker's result is the job's: {outcomes:#?}"
    );
    assert_eq!(outcomes[0].len(), 2, "{outcomes:#?}");
    assert!(
        outcomes[0][0].starts_with("lost") && outcomes[0][0].contains("restarted"),
        "the vanished worker's attempt is settled by the restart, not by the lease: \
         {outcomes:#?}"
    );
    // Once its attempts are settled, on the restarted dispatcher's next look.
    wait_for(
        "the predecessor to be deregistered",
        Duration::from_secs(60),
        || {
            let dispatchers = store.dispatchers().unwrap();
            (!dispatchers.iter().any(|d| d.id == old)).then_some(())
        },
    );
}

#[test]
fn a_job_that_fails_saying_a_nul_is_settled_and_the_dispatcher_goes_on() {
    // PostgreSQL's text holds no NUL: the attempt that said one used to be refused by every
    // settle, and the dispatcher stalled on it with the next job waiting behind.
    let db = TestDatabase::create();
    let mut store = open_store(db.url());
    let dispatchers = start_dispatchers(&db, 1, "", &mut *store);
    let host = &dispatchers[0].host;
    let said = host.enqueue(&[
        CLASS,
        "say_and_fail",
        "--params-json",
        r#"{"text":"a\u0000b"}"#,
    ]);
    let shown = host.wait_state(said, &["failed"]);
    assert_eq!(shown["attempts"][0]["error"], "a\u{FFFD}b", "{shown:#}");
    let next = host.enqueue(&[CLASS, "ok"]);
    host.wait_state(next, &["completed"]);
}

#[test]
fn a_job_running_on_one_host_is_cancelled_from_another() {
    let db = TestDatabase::create();
    let mut store = open_store(db.url());
    let dispatchers = start_dispatchers(&db, 1, "", &mut *store);
    // B's `jobhost cancel` starts a dispatcher there, as `run` would: B's store goes unchecked.
    let (a, b) = (&dispatchers[0], Host::on_store(db.url()));
    let id = a
        .host
        .enqueue(&[CLASS, "hang_cooperative", "--retries", "3"]);
    a.host.wait_state(id, &["running"]);
    let worker = wait_for("the worker on host A", Duration::from_secs(30), || {
        let (pid, _) = a.host.workers().pop()?;
        Some(pid)
    });

    b.run(&["cancel", &id.to_string()]).expect_code(0);
    let asked = Instant::now();
    let shown = b.wait_state(id, &["cancelled"]);
    println!(
        "cancelled from host B, stopped on host A: {:?}",
        asked.elapsed()
    );
    let attempts = shown["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "not retried: {shown:#}");
    assert_eq!(attempts[0]["outcome"], "cancelled", "{shown:#}");
    assert_eq!(attempts[0]["dispatcher"], a.id, "it ran on A: {shown:#}");
    assert!(!group_alive(worker), "the worker's process group is gone");
}

#[test]
fn an_unreachable_database_is_one_clear_error_and_a_bad_store_url_is_bad_input() {
    let host = Host::standard();
    let url = "postgres://postgres:s3cret@127.0.0.1:1/nope";
    let masked = "postgres://postgres:***@127.0.0.1:1/nope";
    let run = |store_env: Option<&str>, args: &[&str]| -> Run {
        let mut command = host.jobhost();
        if let Some(url) = store_env {
            command.env("JOBHOST_STORE", url);
        }
        Run::from(command.args(args).output().unwrap())
    };
    for (how, failed) in [
        ("--store", run(None, &["--store", url, "run", CLASS, "ok"])),
        ("JOBHOST_STORE", run(Some(url), &["serve"])),
    ] {
        failed.expect_code(1);
        let lines: Vec<&str> = failed.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{how}: one line:\n{}", failed.stderr);
        assert!(
            lines[0].starts_with(&format!("jobhost: cannot open job database {masked}: ")),
            "{how}: {}",
            lines[0]
        );
        assert!(
            lines[0].to_lowercase().contains("refused"),
            "{how}: the reason: {}",
            lines[0]
        );
    }
    assert!(host.dispatcher_pid().is_none(), "no dispatcher runs");

    let bad = host.run(&["--store", "mysql://jobs:s3cret@db/queue", "list"]);
    bad.expect_code(2);
    assert_eq!(bad.error_lines().len(), 1, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("mysql://jobs:***@db/queue"),
        "{}",
        bad.stderr
    );
    assert!(!bad.stderr.contains("s3cret"), "{}", bad.stderr);
    host.settings("store = \"sqlite:jobs.db\"\n");
    let bad = host.run(&["run", CLASS, "ok"]);
    bad.expect_code(2);
    assert!(bad.stderr.contains("sqlite:jobs.db"), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("jobhost.toml"),
        "names the file: {}",
        bad.stderr
    );
}

#[test]
fn dispatchers_whose_connections_are_killed_reconnect_and_lose_nothing() {
    const JOBS: i64 = 500;
    let db = TestDatabase::create();
    let mut store = open_store(db.url());
    let mut dispatchers = start_dispatchers(&db, 2, "", &mut *store);
    // Five times, a batch of echoes is queued and the sessions are killed while a job runs for
    // sure: one that runs until it is cancelled, claimed before the echoes still waiting (which
    // run meanwhile, as many as the other slots take). Terminated with the others, the test's own connections fail a
    // call now and then and reconnect on the next.
    const ROUNDS: u64 = 5;
    let mut client = dispatchers[0].host.client();
    let mut ids = Vec::new();
    let batch = JOBS / ROUNDS as i64;
    for round in 0..ROUNDS {
        // No retries: an attempt lost to a killed connection must not cost a job its run.
        let first = round as i64 * batch;
        ids.extend(
            client
                .dispatch_batch(echoes(first, batch).map(|job| job.retries(0)))
                .unwrap(),
        );
        let gate = client
            .dispatch(
                Job::new(CLASS, "hang_cooperative")
                    .retries(0)
                    .priority(Priority::High),
            )
            .unwrap();
        wait_for(
            &format!("round {round}'s job to run"),
            Duration::from_secs(300),
            || {
                let (job, _) = store.job(gate).ok()??;
                (job.state == JobState::Running).then_some(())
            },
        );
        let done = finished(&mut *store).unwrap_or_default();
        let ended = db.terminate(None);
        println!("round {round}, {done} jobs done: ended {ended} sessions");
        assert!(ended >= 2, "the dispatchers' sessions, at least");
        wait_for(
            &format!("round {round}'s job to be cancelled"),
            Duration::from_secs(300),
            || client.cancel(gate).ok(),
        );
    }
    wait_for("every job to finish", Duration::from_secs(600), || {
        finished(&mut *store).filter(|&n| n == JOBS as u64 + ROUNDS)
    });
    let mut store = open_store(db.url());
    let RanOnce {
        by_dispatcher,
        unstarted,
    } = assert_each_ran_once(&mut *store, &dispatchers, &ids);
    println!(
        "jobs run by each dispatcher: {by_dispatcher:?}; attempts that started no worker: \
         {unstarted:#?}"
    );
    for d in &mut dispatchers {
        assert!(
            d.serve.try_wait().unwrap().is_none(),
            "dispatcher {} runs",
            d.id
        );
    }
    let registered: Vec<DispatcherId> = store.dispatchers().unwrap().iter().map(|d| d.id).collect();
    let ours: Vec<DispatcherId> = dispatchers.iter().map(|d| d.id).collect();
    assert_eq!(registered, ours, "still registered, under the same ids");
    stop_all(&mut dispatchers, &mut *store);
}

#[test]
fn the_dashboard_lists_every_dispatcher_sharing_the_database() {
    let db = TestDatabase::create();
    let mut store = open_store(db.url());
    // One lease for all: a dispatcher judges the others by its own lease, so a shorter one
    // would take a peer heartbeating every fifth of a longer lease for dead.
    let others = start_dispatchers(&db, 1, "dispatcher.lease = 1\n", &mut *store);
    let d = Dashboard::start_in(Host::on_store(db.url()), "dispatcher.lease = 1\n");
    let own = d.host.registered(&mut *store).id;
    let mut expected = vec![
        (own, d.serve.as_ref().unwrap().id(), d.host.state_dir()),
        (
            others[0].id,
            others[0].serve.id(),
            others[0].host.state_dir(),
        ),
    ];
    expected.sort();
    let me = As::Bearer(&d.token);
    let listed = |d: &Dashboard| -> Vec<Value> {
        let reply = d.get("/api/dispatchers", me);
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.json()["dispatchers"].as_array().unwrap().clone()
    };
    let first = listed(&d);
    assert_eq!(first.len(), 2, "{first:#?}");
    for (shown, (id, pid, state_dir)) in first.iter().zip(&expected) {
        assert_eq!(shown["id"], *id, "{shown:#}");
        assert_eq!(shown["pid"], *pid, "{shown:#}");
        assert_eq!(shown["slots"], 2, "{shown:#}");
        assert_eq!(
            std::fs::canonicalize(shown["state_dir"].as_str().unwrap()).unwrap(),
            std::fs::canonicalize(state_dir).unwrap(),
        );
        assert!(
            shown["heartbeat_at"].as_i64().unwrap() >= shown["started_at"].as_i64().unwrap(),
            "{shown:#}"
        );
    }
    // Heartbeats go on, every fifth of the lease: the dashboard's own dispatcher's shows it.
    let at =
        |list: &[Value]| list.iter().find(|s| s["id"] == own).unwrap()["heartbeat_at"].as_i64();
    let before = at(&first);
    wait_for("a newer heartbeat", Duration::from_secs(30), || {
        (at(&listed(&d)) > before).then_some(())
    });

    let cookie = d.login();
    let overview = d.get("/", As::Cookie(&cookie));
    assert_eq!(overview.status, 200);
    let section = &overview.body[overview
        .body
        .find(r#"<section id="dispatchers">"#)
        .expect("a dispatchers section")..];
    let section = &section[..section.find("</section>").unwrap()];
    for (id, pid, _) in &expected {
        let row = format!(r#"<tr data-dispatcher="{id}">"#);
        let at = section
            .find(&row)
            .unwrap_or_else(|| panic!("{row} in {section}"));
        let row = &section[at..at + section[at..].find("</tr>").unwrap()];
        assert!(
            row.contains(&format!(r#"<td class="pid">{pid}</td>"#)),
            "{row}"
        );
        assert!(row.contains(r#"<td class="slots">2</td>"#), "{row}");
        assert!(row.contains(r#"class="heartbeat""#), "{row}");
    }
}

#[test]
fn a_dispatcher_serving_the_dashboard_stops_cleanly_and_leaves_the_database() {
    // The dashboard's store connections used to be dropped inside its async runtime, where
    // the synchronous driver cannot shut down: `jobhost stop` aborted the process instead.
    let db = TestDatabase::create();
    let mut store = open_store(db.url());
    let mut d = Dashboard::start_in(Host::on_store(db.url()), "");
    let id = d.host.registered(&mut *store).id;
    let ran = d.host.enqueue(&[CLASS, "ok"]);
    d.host.wait_state(ran, &["completed"]);
    assert_eq!(d.get("/", As::Bearer(&d.token)).status, 200);
    let mut serve = d.serve.take().unwrap();
    assert!(d.host.stop_serve(&mut serve), "it stopped by itself");
    let status = serve.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        d.host
            .log("background_jobs.log")
            .iter()
            .any(|line| line.contains("Dispatcher stopped")),
        "{:?}",
        d.host.log("background_jobs.log")
    );
    let registered: Vec<DispatcherId> = store.dispatchers().unwrap().iter().map(|r| r.id).collect();
    assert!(!registered.contains(&id), "deregistered: {registered:?}");
}

#[test]
fn a_job_that_ended_while_its_dispatcher_was_rescued_is_settled_from_its_report_when_that_host_returns(
) {
    let db = TestDatabase::create();
    let mut store = open_store(db.url());
    let settings = "dispatcher.lease = 2\n";
    // Only the victim runs at first, so the job is its.
    let mut victim = start_dispatchers(&db, 1, settings, &mut *store).remove(0);
    let trace = victim.host.root().join("runs.trace");
    let id = victim
        .host
        .client()
        .dispatch(
            Job::new(CLASS, "trace")
                .param("path", trace.display().to_string())
                .param("seconds", 4)
                .retries(1)
                .retry_delay(Duration::from_secs(3600)),
        )
        .unwrap();
    let worker = wait_for("its worker on record", Duration::from_secs(30), || {
        let (state, attempts) = job(&mut *store, id);
        let pid = attempts.last()?.pid?;
        (state == JobState::Running).then_some(pid)
    });
    // On record is not yet let go: the job has started once its trace line is there.
    wait_for("the job to start", Duration::from_secs(30), || {
        let runs = std::fs::read_to_string(&trace).ok()?;
        (runs.lines().count() == 1).then_some(())
    });
    victim.serve.kill().unwrap();
    victim.serve.wait().unwrap();

    // Another host rescues the job once the lease has run out, while its worker runs on and
    // ends with a report in the victim's state directory.
    let mut rescuer = start_dispatchers(&db, 1, settings, &mut *store).remove(0);
    wait_for("the rescue", Duration::from_secs(60), || {
        let (state, attempts) = job(&mut *store, id);
        let lost = attempts[0].outcome.as_deref() == Some("lost");
        (state == JobState::Scheduled && lost).then_some(())
    });
    wait_for("the worker to end", Duration::from_secs(60), || {
        (!jobhost_e2e::alive(worker)).then_some(())
    });

    // The host comes back: the report is the truth, and the job does not wait to run again.
    let mut back = victim.host.serve();
    let attempts = wait_for("the job to complete", Duration::from_secs(60), || {
        let (state, attempts) = job(&mut *store, id);
        (state == JobState::Completed).then_some(attempts)
    });
    let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome.clone()).collect();
    assert_eq!(outcomes, [Some("ok".to_owned())], "{attempts:#?}");
    let (record, _) = store.job(id).unwrap().unwrap();
    assert_eq!(record.result.unwrap()["pid"], worker, "its worker's result");
    let runs = std::fs::read_to_string(&trace).unwrap();
    assert_eq!(runs.lines().count(), 1, "it ran once: {runs}");
    assert!(victim.host.stop_serve(&mut back));
    assert!(rescuer.host.stop_serve(&mut rescuer.serve));
}

/// Runs `jobhost run` for an `ok` job on `host`, ending its session, as an administrator
/// would, once it waits in a stall ([`TestDatabase::stall_first_enqueue`],
/// [`TestDatabase::stall_enqueue_commits`]).
fn run_ending_its_stalled_session(host: &Host, db: &TestDatabase) -> Run {
    let run = host
        .jobhost()
        .args(["run", CLASS, "ok"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    db.terminate_when_waiting("jobhost", "PgSleep");
    Run::from(run.wait_with_output().unwrap())
}

#[test]
fn run_tries_again_after_its_connection_is_lost_before_the_commit_and_stores_the_job_once() {
    let db = TestDatabase::create();
    let host = Host::on_store(db.url());
    drop(open_store(db.url())); // migrated, so that the stall can be set up
    db.stall_first_enqueue();
    // Its first enqueue waits inside its transaction when the session is ended.
    let run = run_ending_its_stalled_session(&host, &db);
    run.expect_code(0);
    let id: JobId = run.stdout.trim().parse().expect("the job id on stdout");
    let mut store = open_store(db.url());
    let stored = store
        .list(&jobhost::store::ListFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(stored.len(), 1, "exactly one job stored: {stored:#?}");
    assert_eq!(stored[0].id, id);
    host.wait_state(id, &["completed"]);
}

#[test]
fn run_whose_connection_breaks_during_the_commit_says_the_outcome_is_unknown_and_how_to_check() {
    let db = TestDatabase::create();
    let host = Host::on_store(db.url());
    drop(open_store(db.url()));
    db.stall_enqueue_commits();
    let run = run_ending_its_stalled_session(&host, &db);
    run.expect_code(6);
    let lines = run.error_lines();
    assert_eq!(lines.len(), 1, "one error line:\n{}", run.stderr);
    assert!(
        lines[0].contains("may or may not have been stored"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(&format!("check with `jobhost list --class '{CLASS}'`")),
        "{}",
        lines[0]
    );
    assert!(run.stdout.is_empty(), "no job id: {}", run.stdout);
}

#[test]
fn a_claim_whose_workers_cannot_be_recorded_starts_none_of_them_and_the_job_runs_once_later() {
    let db = TestDatabase::create();
    let host = Host::on_store(db.url());
    let serve = host.serve();
    // Registered, so the database is migrated.
    host.registered(&mut *open_store(db.url()));
    crate::recovery::claim_not_stored_starts_no_worker(
        &host,
        serve,
        || {
            db.batch_execute(
                "CREATE FUNCTION refuse_workers() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'no worker may be recorded'; END $$; \
                 CREATE TRIGGER refuse_workers BEFORE UPDATE OF pid ON attempts \
                 FOR EACH ROW EXECUTE FUNCTION refuse_workers()",
            )
        },
        || db.batch_execute("DROP TRIGGER refuse_workers ON attempts"),
    );
}
