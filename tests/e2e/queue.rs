//! The durable queue, through the background path: `jobhost run` returns at once and a
//! dispatcher runs the job later, in priority order, surviving its own crash.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use jobhost_e2e::{alive, group_alive, kill_9, proc_stat, wait_for, Host, Run};
use serde_json::Value;

fn state(shown: &Value) -> &str {
    shown["job"]["state"].as_str().unwrap()
}

#[test]
fn run_returns_at_once_and_the_dispatcher_it_started_exits_when_idle() {
    let host = Host::standard();
    assert!(host.dispatcher_pid().is_none());
    let id = host.enqueue(&[r"App\Jobs\SendWelcomeEmail", "handle", "user_id=9"]);
    let dispatcher = wait_for("a dispatcher to start", Duration::from_secs(30), || {
        host.dispatcher_pid()
    });
    let shown = host.wait_state(id, &["completed"]);
    assert_eq!(shown["attempts"][0]["outcome"], "ok");
    assert!(host.storage_dir().join("mail").read_dir().unwrap().count() == 1);
    // idle_exit is 2 s in the test settings.
    wait_for(
        "the idle dispatcher to exit",
        Duration::from_secs(30),
        || (!alive(dispatcher)).then_some(()),
    );
    assert!(host
        .log("background_jobs.log")
        .iter()
        .any(|l| l.starts_with(r#"local.INFO: Job queued: App\Jobs\SendWelcomeEmail@handle {"delay_seconds":0.0,"job_id":"#)));
}

#[test]
fn jobs_run_high_then_normal_then_low_and_first_in_first_out_within_a_level() {
    let host = Host::standard();
    host.settings("dispatcher.slots = 1\n");
    let blocker = host.enqueue(&[r"Tests\Misbehave", "hang_cooperative"]);
    host.wait_state(blocker, &["running"]);
    let order = [
        "low", "normal", "high", "low", "high", "normal", "high", "low",
    ];
    for (n, priority) in order.iter().enumerate() {
        host.enqueue(&[
            r"Tests\Misbehave",
            "echo",
            &format!("n={n}"),
            "--priority",
            priority,
        ]);
    }
    host.run(&["cancel", &blocker.to_string()]).expect_code(0);
    let last = blocker + order.len() as i64;
    wait_for("every job to finish", Duration::from_secs(60), || {
        (state(&host.show(last)) == "completed"
            && (blocker + 1..last).all(|id| state(&host.show(id)) == "completed"))
        .then_some(())
    });
    let started: Vec<i64> = host
        .logged("started", r"Tests\Misbehave@echo")
        .iter()
        .map(|context| context["params"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(started, vec![2, 4, 6, 1, 5, 0, 3, 7]);
}

#[test]
fn delayed_job_starts_no_earlier_than_its_delay_and_not_much_later() {
    let host = Host::standard();
    let id = host.enqueue(&[r"Tests\Misbehave", "ok", "--delay", "2"]);
    assert_eq!(state(&host.show(id)), "scheduled");
    let shown = host.wait_state(id, &["completed"]);
    let created = shown["job"]["created_at"].as_i64().unwrap();
    let started = shown["attempts"][0]["started_at"].as_i64().unwrap();
    assert!(
        started - created >= 2000,
        "started after {} ms",
        started - created
    );
    assert!(
        started - created < 2000 + 5000,
        "started after {} ms",
        started - created
    );
}

#[test]
fn a_thousand_jobs_from_four_processes_each_complete_exactly_once() {
    let host = Host::standard();
    let per_process = 250;
    std::thread::scope(|scope| {
        for p in 0..4 {
            let host = &host;
            scope.spawn(move || {
                for i in 0..per_process {
                    host.enqueue(&[
                        r"Tests\Misbehave",
                        "echo",
                        &format!("n={}", p * per_process + i),
                    ]);
                }
            });
        }
    });
    wait_for("1000 completed jobs", Duration::from_secs(300), || {
        let stats = host.run(&["stats", "--json"]).json();
        (stats["by_state"]["completed"] == 1000).then_some(())
    });
    let jobs = host.run(&["list", "--limit", "2000", "--json"]).json();
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 1000);
    assert!(jobs
        .iter()
        .all(|j| j["state"] == "completed" && j["attempts"] == 1));
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for context in host.logged("completed", r"Tests\Misbehave@echo") {
        *seen
            .entry(context["params"]["n"].as_i64().unwrap())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 1000, "every job completed");
    assert!(
        seen.values().all(|&count| count == 1),
        "and each exactly once"
    );
}

#[test]
fn cancelled_queued_job_never_starts_and_running_hung_job_is_killed_without_retry() {
    let host = Host::standard();
    let waiting = host.enqueue(&[r"Tests\Misbehave", "ok", "--delay", "60"]);
    let hung = host.enqueue(&[r"Tests\Misbehave", "hang", "--retries", "3"]);
    host.wait_state(hung, &["running"]);
    let worker = wait_for("the hung worker", Duration::from_secs(30), || {
        let (pid, _) = host.workers().pop()?;
        (proc_stat(pid)?.3 == pid).then_some(pid)
    });

    host.run(&["cancel", &waiting.to_string()]).expect_code(0);
    host.run(&["cancel", &hung.to_string()]).expect_code(0);
    let cancelled = host.wait_state(waiting, &["cancelled"]);
    assert!(
        cancelled["attempts"].as_array().unwrap().is_empty(),
        "never started"
    );
    let killed = host.wait_state(hung, &["cancelled"]);
    assert_eq!(
        killed["attempts"].as_array().unwrap().len(),
        1,
        "not retried"
    );
    assert_eq!(killed["attempts"][0]["outcome"], "cancelled");
    assert!(
        !group_alive(worker),
        "the hung worker's process group is gone"
    );

    let again = host.run(&["cancel", &hung.to_string()]);
    again.expect_code(2);
    assert!(
        again
            .stderr
            .contains(&format!("job {hung} is cancelled: it already finished")),
        "{}",
        again.stderr
    );
}

#[test]
fn output_a_worker_prints_while_no_dispatcher_runs_waits_for_the_next_one_and_is_kept() {
    let host = Host::standard();
    let trace = host.root().join("runs.trace");
    let print = host.root().join("print-now");
    let id = host.enqueue(&[
        r"Tests\Misbehave",
        "trace",
        &format!("path={}", trace.display()),
        "seconds=0",
        &format!("print_when={}", print.display()),
        "--retries",
        "0",
    ]);
    wait_for("the job to run", Duration::from_secs(60), || {
        std::fs::read_to_string(&trace)
            .ok()
            .filter(|t| t.ends_with('\n'))
    });
    let dispatcher = host.dispatcher_pid().unwrap();
    let (worker, _) = host.workers().pop().unwrap();
    kill_9(dispatcher);
    // 256 KiB, four times what a pipe holds: with nobody reading, the worker waits.
    std::fs::write(&print, b"").unwrap();
    wait_for(
        "the worker to wait on its full pipe",
        Duration::from_secs(30),
        || {
            let wchan = std::fs::read_to_string(format!("/proc/{worker}/wchan")).ok()?;
            wchan.contains("pipe").then_some(())
        },
    );
    assert!(
        alive(worker),
        "nothing a worker prints fails while no dispatcher reads"
    );

    let mut serve = host.serve();
    let shown = host.wait_state(id, &["completed", "failed"]);
    assert_eq!(shown["job"]["state"], "completed", "{shown:#}");
    let (output, _) = host.attempts(&id.to_string())[&1].clone();
    let line = format!("traced job {id} attempt 1\n");
    assert!(
        output.len() >= 256 * 1024 && output.ends_with(&line) && output.starts_with(&line),
        "all it printed is kept: {} bytes, ending {:?}",
        output.len(),
        &output[output.len().saturating_sub(80)..]
    );
    assert!(host.stop_serve(&mut serve));
}

#[test]
fn kill_9_of_the_dispatcher_loses_nothing_running_or_queued() {
    let host = Host::standard();
    let sleepers: Vec<i64> = (0..2)
        .map(|_| {
            host.enqueue(&[
                r"Tests\Misbehave",
                "sleep",
                "seconds=3",
                "--retries",
                "1",
                "--retry-delay",
                "0",
            ])
        })
        .collect();
    for id in &sleepers {
        host.wait_state(*id, &["running"]);
    }
    let queued: Vec<i64> = (0..10)
        .map(|n| host.enqueue(&[r"Tests\Misbehave", "echo", &format!("n={n}")]))
        .collect();
    let dispatcher = host.dispatcher_pid().unwrap();
    let workers = wait_for("both workers", Duration::from_secs(30), || {
        let w = host.workers();
        (w.len() == 2).then_some(w)
    });
    kill_9(dispatcher);
    // One orphan dies while nobody watches: its attempt is lost and retried. The other lives
    // on, detached, and is adopted by the next dispatcher.
    std::process::Command::new("kill")
        .args(["-9", &workers[0].0.to_string()])
        .status()
        .unwrap();
    assert!(alive(workers[1].0), "a worker outlives its dispatcher");

    let restarted = std::time::Instant::now();
    let mut serve = host
        .jobhost()
        .args(["serve", "--idle-exit", "2"])
        .spawn()
        .unwrap();
    for id in sleepers.iter().chain(&queued) {
        host.wait_state(*id, &["completed"]);
    }
    let outcomes: Vec<Vec<String>> = sleepers
        .iter()
        .map(|id| {
            host.show(*id)["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["outcome"].as_str().unwrap().to_owned())
                .collect()
        })
        .collect();
    assert!(
        outcomes.contains(&vec!["lost".to_owned(), "ok".to_owned()]),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&vec!["ok".to_owned()]),
        "the adopted worker's result was collected: {outcomes:?}"
    );
    assert!(restarted.elapsed() < Duration::from_secs(60));
    assert_eq!(serve.wait().unwrap().code(), Some(0), "exits when idle");
}

#[test]
fn dispatcher_stops_gracefully_and_requeues_what_it_had_to_interrupt() {
    let host = Host::standard();
    host.settings("dispatcher.shutdown_grace = 0.5\n");
    let mut serve = host.jobhost().args(["serve"]).spawn().unwrap();
    let id = host.enqueue(&[r"Tests\Misbehave", "hang_cooperative", "--retries", "0"]);
    host.wait_state(id, &["running"]);
    std::process::Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(serve.wait().unwrap().code(), Some(0));
    let shown = host.show(id);
    assert_eq!(
        state(&shown),
        "queued",
        "interrupted, not failed: {shown:#}"
    );
    assert_eq!(
        shown["attempts"][0]["outcome"],
        "interrupted: the dispatcher shut down"
    );
    assert_eq!(
        shown["job"]["max_attempts"], 2,
        "the interrupted attempt is not counted against it"
    );
    host.run(&["cancel", &id.to_string()]).expect_code(0);
}

#[test]
fn two_dispatchers_on_one_state_directory_are_harmless() {
    let host = Host::standard();
    let mut first = host.jobhost().args(["serve"]).spawn().unwrap();
    wait_for("the first dispatcher", Duration::from_secs(30), || {
        host.dispatcher_pid()
    });
    let second = host.run(&["serve"]);
    second.expect_code(1);
    assert!(
        second.stderr.contains("another dispatcher"),
        "{}",
        second.stderr
    );
    let detached = host.run(&["serve", "--detached", "--idle-exit", "1"]);
    detached.expect_code(0);
    let id = host.enqueue(&[r"Tests\Misbehave", "ok"]);
    host.wait_state(id, &["completed"]);
    host.run(&["stop"]).expect_code(0);
    assert_eq!(first.wait().unwrap().code(), Some(0));
}

#[test]
fn list_show_retry_and_stats_describe_the_queue() {
    let host = Host::standard();
    let failed = host.enqueue(&[r"Tests\Misbehave", "always_fail", "--retries", "0"]);
    let ok = host.enqueue(&[r"Tests\Misbehave", "echo", "n=1", "--priority", "high"]);
    host.wait_state(failed, &["failed"]);
    host.wait_state(ok, &["completed"]);

    let table = host.run(&["list"]);
    table.expect_code(0);
    assert!(
        table.stdout.lines().next().unwrap().contains("STATE"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains(r"Tests\Misbehave@always_fail"),
        "{}",
        table.stdout
    );
    let only_failed = host.run(&["list", "--status", "failed", "--json"]).json();
    assert_eq!(only_failed.as_array().unwrap().len(), 1);
    assert_eq!(only_failed[0]["id"], failed);
    let high = host.run(&["list", "--priority", "high", "--json"]).json();
    assert_eq!(high[0]["id"], ok);

    let shown = host.run(&["show", &failed.to_string()]);
    shown.expect_code(0);
    assert!(
        shown.stdout.contains("attempt 1: error after"),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains("error: always fails"),
        "{}",
        shown.stdout
    );
    let detail = host.show(ok);
    assert_eq!(detail["job"]["result"]["params"]["n"], 1);
    assert!(detail["attempts"][0]["pid"].as_u64().unwrap() > 0);
    assert_eq!(
        detail["attempts"][0]["plugin_hash"].as_str().unwrap().len(),
        64
    );

    host.run(&["retry", &failed.to_string()]).expect_code(0);
    let retried = host.wait_state(failed, &["failed"]);
    assert_eq!(
        retried["attempts"].as_array().unwrap().len(),
        2,
        "ran again"
    );
    host.run(&["retry", &ok.to_string()]).expect_code(2);

    let stats = host.run(&["stats", "--json"]).json();
    assert_eq!(
        (
            stats["by_state"]["failed"].as_u64(),
            stats["by_state"]["completed"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let bad = host.run(&["list", "--status", "sleeping"]);
    bad.expect_code(2);
}

#[test]
fn unknown_job_ids_are_bad_input() {
    let host = Host::standard();
    for command in ["show", "cancel", "retry"] {
        let run = host.run(&[command, "424242"]);
        run.expect_code(2);
        assert!(
            run.stderr.contains("no job with id 424242"),
            "{command}: {}",
            run.stderr
        );
    }
}

#[test]
fn corrupt_database_is_reported_and_left_untouched() {
    let host = Host::standard();
    let garbage = b"this is not a database, but someone's precious file\n".repeat(200);
    let db = host.write("state/jobs.sqlite3", &garbage);
    let run = host.run(&["run", r"Tests\Misbehave", "ok"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("not a SQLite database"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read(&db).unwrap(), garbage, "not overwritten");

    let blocked = Host::standard();
    std::fs::create_dir_all(blocked.state_dir().join("jobs.sqlite3")).unwrap();
    let run = blocked.run(&["list"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("cannot open job database"),
        "{}",
        run.stderr
    );
}

#[test]
fn enqueue_is_fast_to_return_even_for_a_long_job() {
    let host = Host::standard();
    let start = Instant::now();
    let id = host.enqueue(&[r"Tests\Misbehave", "sleep", "seconds=30"]);
    // Not a speed assertion: `run` must not wait for the job, which takes 30 s.
    assert!(start.elapsed() < Duration::from_secs(25));
    host.wait_state(id, &["running"]);
    host.run(&["cancel", &id.to_string()]).expect_code(0);
    host.wait_state(id, &["cancelled"]);
}

#[test]
fn read_only_commands_in_a_directory_without_settings_create_nothing() {
    let host = Host::standard();
    let empty = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let output = host
            .jobhost()
            .current_dir(empty.path())
            .args(args)
            .output()
            .unwrap();
        jobhost_e2e::Run::from(output)
    };
    let looked_at = "storage/jobhost";

    let list = run(&["list"]);
    list.expect_code(0);
    assert!(list.stdout.is_empty(), "{}", list.stdout);
    assert!(
        list.stderr.contains(looked_at) && list.stderr.contains("holds no jobs"),
        "{}",
        list.stderr
    );
    let json = run(&["list", "--json"]);
    json.expect_code(0);
    assert_eq!(json.json(), serde_json::json!([]));

    let stats = run(&["stats", "--json"]);
    stats.expect_code(0);
    assert_eq!(stats.json()["by_state"]["queued"], 0, "{}", stats.stdout);
    let stats = run(&["stats"]);
    stats.expect_code(0);
    assert!(stats.stdout.contains("queued     0"), "{}", stats.stdout);
    assert!(stats.stderr.contains(looked_at), "{}", stats.stderr);

    let show = run(&["show", "1"]);
    show.expect_code(2);
    assert!(show.stderr.contains("no job with id 1"), "{}", show.stderr);

    let left: Vec<_> = std::fs::read_dir(empty.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "read-only commands created {left:?}");
}

#[test]
fn run_cancel_and_retry_succeed_with_a_warning_when_no_dispatcher_can_be_started() {
    let host = Host::standard();
    let nowhere = "/nonexistent/jobhost";
    let without_dispatcher = |args: &[&str]| {
        Run::from(
            host.jobhost()
                .env("JOBHOST_BIN", nowhere)
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let warned = |run: &Run| {
        let warnings: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("jobhost: warning: no dispatcher serves"))
            .collect();
        assert_eq!(warnings.len(), 1, "one warning:\n{}", run.stderr);
        assert!(warnings[0].contains(nowhere), "{}", warnings[0]);
        assert!(
            run.error_lines().len() == 1,
            "nothing else:\n{}",
            run.stderr
        );
    };

    // The plugins are inspected (by jobhost itself) once, before jobhost cannot be found.
    host.run(&["plugins"]).expect_code(0);
    let run = without_dispatcher(&["run", r"Tests\Misbehave", "ok"]);
    run.expect_code(0);
    warned(&run);
    let id: i64 = run.stdout.trim().parse().expect("the job id on stdout");
    assert_eq!(state(&host.show(id)), "queued");

    let cancel = without_dispatcher(&["cancel", &id.to_string()]);
    cancel.expect_code(0);
    warned(&cancel);
    assert_eq!(state(&host.show(id)), "cancelled");

    let retry = without_dispatcher(&["retry", &id.to_string()]);
    retry.expect_code(0);
    warned(&retry);
    assert_eq!(state(&host.show(id)), "queued");

    assert!(host.dispatcher_pid().is_none(), "no dispatcher started");
    let listed = host.run(&["list", "--json"]);
    listed.expect_code(0);
    assert_eq!(listed.json().as_array().unwrap().len(), 1, "one job stored");

    // A follower that can start a dispatcher has the job run.
    host.run(&["wait", &id.to_string()]).expect_code(0);
    assert_eq!(state(&host.show(id)), "completed");
}

/// The names of the threads of process `pid`, sorted.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_loop_itself_supervises_every_running_attempt_however_many_slots_run() {
    let host = Host::standard();
    host.settings("dispatcher.slots = 8\n");
    let mut serve = host.serve();
    let dispatcher = serve.id();
    let hang = || host.enqueue(&[r"Tests\Misbehave", "hang_cooperative", "--retries", "0"]);
    let running = |n: usize| {
        wait_for(&format!("{n} workers"), Duration::from_secs(60), || {
            (host.workers().len() == n).then_some(())
        })
    };
    let mut ids = vec![hang()];
    running(1);
    let with_one = thread_names(dispatcher);
    ids.extend((0..7).map(|_| hang()));
    running(8);
    let with_eight = thread_names(dispatcher);
    assert_eq!(
        with_eight, with_one,
        "eight running attempts take no more threads than one"
    );
    // No thread of its own, either: the loop polls the workers with its events.
    assert!(
        !with_one.iter().any(|n| n.starts_with("attempt")),
        "{with_one:?}"
    );
    for id in ids {
        host.run(&["cancel", &id.to_string()]).expect_code(0);
        host.wait_state(id, &["cancelled"]);
    }
    assert!(host.stop_serve(&mut serve));
}
