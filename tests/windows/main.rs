//! End-to-end tests of the Windows build: the real `jobhost.exe`, real `.dll` plugins and real
//! worker processes, run under Wine by `scripts/test-windows`
//! (`cargo test --target x86_64-pc-windows-gnu -p jobhost-e2e --test windows`).
//!
//! They cover what `host/src/platform/windows.rs` does differently from Linux: the detached
//! (`start /b`) dispatcher and workers, crash codes, Job Objects that take a job's whole process
//! tree down at its timeout, the stop event behind cooperative cancellation, and the loopback
//! doorbell that wakes the dispatcher. Wine is slow to start processes (~25-45 ms each), so
//! every wait is a generous deadline on a condition, never a fixed sleep.
#![cfg(windows)]
#![allow(clippy::unwrap_used)]

use std::{
    fs,
    os::windows::process::CommandExt,
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant},
};

use jobhost_e2e::{alive, examples, spawn, wait_for, Host, Process, Run};
use serde_json::Value;

/// `CREATE_NEW_CONSOLE`: the child gets a console of its own.
const CREATE_NEW_CONSOLE: u32 = 0x0000_0010;

/// The states a job ends in.
const TERMINAL: [&str; 3] = ["completed", "failed", "cancelled"];

fn state(shown: &Value) -> &str {
    shown["job"]["state"].as_str().unwrap()
}

/// Asserts that log file `name` has a line equal to `line` (timestamps checked and stripped).
fn assert_logged(host: &Host, name: &str, line: &str) {
    let log = host.log(name);
    assert!(
        log.iter().any(|l| l == line),
        "no line {line:?} in {name}:\n{log:#?}"
    );
}

/// Asserts that log file `name` has a line starting with `prefix`.
fn assert_logged_prefix(host: &Host, name: &str, prefix: &str) {
    let log = host.log(name);
    assert!(
        log.iter().any(|l| l.starts_with(prefix)),
        "no line starting {prefix:?} in {name}:\n{log:#?}"
    );
}

/// The captured output of attempt `n` of job `id` so far.
fn output(host: &Host, id: i64, n: u32) -> String {
    fs::read_to_string(
        host.state_dir()
            .join("attempts")
            .join(id.to_string())
            .join(format!("{n}.out")),
    )
    .unwrap_or_default()
}

/// Runs a job with `--wait` and checks that the next one still completes.
fn next_job_completes(host: &Host) {
    let run = host.run(&["run", r"Tests\Misbehave", "ok", "--wait"]);
    run.expect_code(0);
    assert_eq!(run.json(), serde_json::json!({"ok": true}));
}

#[test]
fn windows_runs_the_spec_examples_with_run_wait() {
    let host = Host::standard();

    let run = host.run(&[
        "run",
        r"App\Jobs\SendWelcomeEmail",
        "handle",
        "user_id=123",
        "--wait",
    ]);
    run.expect_code(0);
    let path = run.json()["path"].as_str().unwrap().to_owned();
    let eml = fs::read_to_string(host.root().join(&path)).unwrap();
    assert!(eml.contains("To: user123@example.com"), "{eml}");
    assert!(
        eml.contains(&run.job_id()),
        "Message-ID names the job: {eml}"
    );
    let params = r#"{"params":{"user_id":123},"#;
    assert_logged(
        &host,
        "background_jobs.log",
        &format!(
            r#"local.INFO: Job started: App\Jobs\SendWelcomeEmail@handle {params}"status":"running"}}"#
        ),
    );
    assert_logged(
        &host,
        "background_jobs.log",
        &format!(
            r#"local.INFO: Job completed: App\Jobs\SendWelcomeEmail@handle {params}"status":"completed"}}"#
        ),
    );

    examples::report_is_generated_then_mailed(&host);
    examples::notification_takes_positional_params(&host);

    assert!(
        host.log("background_jobs_errors.log").is_empty(),
        "{:#?}",
        host.log("background_jobs_errors.log")
    );
}

#[test]
fn windows_runs_the_spec_examples_in_the_background_dispatcher() {
    let host = Host::standard();
    let started = Instant::now();
    let welcome = host.enqueue(&[r"App\Jobs\SendWelcomeEmail", "handle", "user_id=7"]);
    let report = host.enqueue(&[
        r"App\Jobs\ProcessUserReport",
        "generate",
        "report_id=8",
        "rows=2",
    ]);
    let notify = host.enqueue(&[r"App\Jobs\SendNotification", "send", "9", "Hello"]);
    let enqueued = started.elapsed();
    // The `jobhost run` that found no dispatcher started one, detached (`start /b`).
    let dispatcher = wait_for("a dispatcher to start", Duration::from_secs(60), || {
        host.dispatcher_pid()
    });

    for id in [welcome, report, notify] {
        let shown = host.wait_state(id, &TERMINAL);
        assert_eq!(state(&shown), "completed", "{shown:#}");
        assert_eq!(shown["attempts"][0]["outcome"], "ok", "{shown:#}");
    }
    let send = host.enqueue(&[r"App\Jobs\ProcessUserReport", "send", "report_id=8"]);
    let shown = host.wait_state(send, &TERMINAL);
    assert_eq!(state(&shown), "completed", "{shown:#}");
    let eml = shown["job"]["result"]["path"].as_str().unwrap();
    assert!(fs::read_to_string(host.root().join(eml))
        .unwrap()
        .contains("report-8.csv"));
    assert_eq!(
        host.storage_dir().join("mail").read_dir().unwrap().count(),
        2,
        "the welcome email and the report's"
    );
    assert!(host
        .storage_dir()
        .join("notifications")
        .join("9.jsonl")
        .is_file());

    assert_logged_prefix(
        &host,
        "background_jobs.log",
        &format!(
            r#"local.INFO: Job queued: App\Jobs\SendWelcomeEmail@handle {{"delay_seconds":0.0,"job_id":{welcome},"params":{{"user_id":7}},"priority":"normal","status":"queued"}}"#
        ),
    );
    assert_logged(
        &host,
        "background_jobs.log",
        r#"local.INFO: Job completed: App\Jobs\SendNotification@send {"params":[9,"Hello"],"status":"completed"}"#,
    );
    assert!(host.log("background_jobs_errors.log").is_empty());

    // idle_exit is 2 s in the test settings: the dispatcher `run` started leaves by itself.
    wait_for(
        "the idle dispatcher to exit",
        Duration::from_secs(60),
        || (!alive(dispatcher)).then_some(()),
    );
    assert!(
        enqueued < Duration::from_secs(30),
        "`jobhost run` returns without waiting for the job ({enqueued:?} for three)"
    );
}

#[test]
fn windows_run_returns_at_once_while_the_dispatcher_it_started_runs_on() {
    let host = Host::standard();
    // Output captured through pipes, as a shell's `$(...)` or PHP's `exec` would: the detached
    // dispatcher must not inherit them, or `jobhost run` would seem to last as long as it.
    let mut command = host.jobhost();
    command
        .args([
            "run",
            r"Tests\Misbehave",
            "sleep",
            "seconds=120",
            "--retries",
            "0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = spawn(&mut command);
    let (done, returned) = mpsc::channel();
    std::thread::spawn(move || done.send(run.wait_with_output()));
    let run = returned.recv_timeout(Duration::from_secs(30)).expect(
        "`jobhost run` returns while its dispatcher runs on: the dispatcher keeps its output open",
    );
    let run = Run::from(run.unwrap());
    run.expect_code(0);
    let id: i64 = run.stdout.trim().parse().unwrap();
    // The dispatcher is still at it.
    let worker = wait_for("the job to start", Duration::from_secs(60), || {
        let shown = host.show(id);
        (state(&shown) == "running").then(|| shown["attempts"][0]["pid"].as_u64())?
    });
    assert!(alive(u32::try_from(worker).unwrap()));
    assert!(alive(host.dispatcher_pid().unwrap()));
    host.run(&["cancel", &id.to_string()]).expect_code(0);
    assert_eq!(state(&host.wait_state(id, &TERMINAL)), "cancelled");
}

#[test]
fn windows_worker_runs_detached_from_the_callers_console() {
    let host = Host::standard();
    // `jobhost run` gets a console of its own (CREATE_NEW_CONSOLE; Wine makes a headless one);
    // the dispatcher it starts and that dispatcher's workers must not share it.
    let mut command = host.jobhost();
    command
        .args(["run", r"Tests\Misbehave", "console", "--wait"])
        .creation_flags(CREATE_NEW_CONSOLE)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = Run::from(spawn(&mut command).wait_with_output().unwrap());
    run.expect_code(0);
    assert_eq!(
        run.json(),
        serde_json::json!({"console": false}),
        "the worker has no console (DETACHED_PROCESS)"
    );
}

#[test]
fn windows_reports_access_violation_when_plugin_segfaults() {
    let host = Host::standard();
    let run = host.run(&[
        "run",
        r"Tests\Misbehave",
        "segfault",
        "--wait",
        "--retries",
        "0",
    ]);
    run.expect_code(4);
    let error = "worker crashed: 0xC0000005 access violation";
    assert!(
        run.stderr
            .contains(&format!("failed after 1 attempt(s): {error}")),
        "{}",
        run.stderr
    );
    let failed = format!(
        r#"local.ERROR: Job failed: Tests\Misbehave@segfault {{"error":"{error}","params":{{}},"status":"failed"}}"#
    );
    assert_logged(&host, "background_jobs.log", &failed);
    assert_logged(&host, "background_jobs_errors.log", &failed);
    let (output, report) = host.attempts(&run.job_id())[&1].clone();
    assert!(
        output.contains("about to segfault"),
        "output before the crash is kept: {output:?}"
    );
    assert!(report.is_none(), "a crashed worker leaves no report");

    next_job_completes(&host);
}

#[test]
fn windows_kills_a_hanging_job_with_its_whole_process_tree_at_its_timeout() {
    let host = Host::standard();
    let id = host.enqueue(&[
        r"Tests\Misbehave",
        "hang_with_child",
        "--retries",
        "0",
        "--timeout",
        "4",
    ]);
    // The job starts a child (ping.exe) and prints its pid; hold handles to the child and the
    // worker from now on, so that their pids cannot be reused before the checks below.
    let child = wait_for(
        "the job to start its child",
        Duration::from_secs(60),
        || {
            let text = output(&host, id, 1);
            let pid = text.lines().find_map(|l| l.strip_prefix("child pid "))?;
            let child = Process::open(pid.trim().parse().unwrap());
            Some(child.expect("the child is running").kill_on_drop())
        },
    );
    let worker = host.show(id)["attempts"][0]["pid"].as_u64().unwrap();
    let worker = Process::open(u32::try_from(worker).unwrap())
        .expect("the worker is running")
        .kill_on_drop();
    assert!(child.running(), "child {} runs", child.pid());
    assert!(worker.running(), "worker {} runs", worker.pid());

    wait_for("the worker to be stopped", Duration::from_secs(60), || {
        (!worker.running()).then_some(())
    });
    // Terminating the Job Object stops the worker and its child together; give the child's
    // end a moment to be visible, far less than its own ten minutes.
    wait_for(
        &format!(
            "the job's child {} (ping.exe) to end with its worker",
            child.pid()
        ),
        Duration::from_secs(10),
        || (!child.running()).then_some(()),
    );
    let shown = host.wait_state(id, &TERMINAL);
    assert_eq!(state(&shown), "failed", "{shown:#}");
    assert_eq!(shown["attempts"][0]["error"], "timed out after 4s");
    let attempt = &shown["attempts"][0];
    let ran = attempt["finished_at"].as_u64().unwrap() - attempt["started_at"].as_u64().unwrap();
    assert!(ran >= 4000, "stopped after {ran} ms, before its timeout");
    assert_logged(
        &host,
        "background_jobs_errors.log",
        r#"local.ERROR: Job failed: Tests\Misbehave@hang_with_child {"error":"timed out after 4s","params":{},"status":"failed"}"#,
    );

    next_job_completes(&host);
}

#[test]
fn windows_times_out_a_hanging_job_with_run_wait() {
    let host = Host::standard();
    let started = Instant::now();
    let run = host.run(&[
        "run",
        r"Tests\Misbehave",
        "hang",
        "--wait",
        "--retries",
        "0",
        "--timeout",
        "1",
    ]);
    run.expect_code(4);
    assert!(run.stderr.contains("timed out after 1s"), "{}", run.stderr);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_logged(
        &host,
        "background_jobs_errors.log",
        r#"local.ERROR: Job failed: Tests\Misbehave@hang {"error":"timed out after 1s","params":{},"status":"failed"}"#,
    );
}

#[test]
fn windows_cancel_stops_a_cooperative_job_through_its_stop_event() {
    let host = Host::standard();
    // Long enough that only the job's own clean stop, not the forced one, can end it in time.
    host.settings("limits.kill_grace = 20\n");
    let id = host.enqueue(&[r"Tests\Misbehave", "hang_cooperative"]);
    let worker = wait_for("the worker to start", Duration::from_secs(60), || {
        let shown = host.show(id);
        let pid = shown["attempts"][0]["pid"].as_u64()?;
        (state(&shown) == "running").then(|| Process::open(u32::try_from(pid).unwrap()))?
    });
    host.run(&["cancel", &id.to_string()]).expect_code(0);
    let shown = host.wait_state(id, &TERMINAL);
    assert_eq!(state(&shown), "cancelled", "{shown:#}");
    assert_eq!(
        shown["attempts"].as_array().unwrap().len(),
        1,
        "no retry after a cancel"
    );
    assert_eq!(shown["attempts"][0]["outcome"], "cancelled");
    let output = output(&host, id, 1);
    assert!(
        output.contains("saw cancellation"),
        "the job saw the stop event and stopped cleanly: {output:?}"
    );
    wait_for("the worker to exit", Duration::from_secs(10), || {
        (!worker.running()).then_some(())
    });
    assert_logged(
        &host,
        "background_jobs.log",
        r#"local.WARNING: Job cancelled: Tests\Misbehave@hang_cooperative {"params":{},"status":"cancelled"}"#,
    );
    assert_logged(
        &host,
        "background_jobs_errors.log",
        r#"local.WARNING: Job cancelled: Tests\Misbehave@hang_cooperative {"params":{},"status":"cancelled"}"#,
    );
}
