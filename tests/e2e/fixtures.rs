//! Misbehaving jobs end their own worker and nothing else: each ends with the right outcome
//! and cause, the host reports it normally, and the next job runs fine.

use std::time::{Duration, Instant};

use jobhost_e2e::{alive, group_alive, proc_stat, wait_for, Host};

/// Runs `Tests\Misbehave@method` once (no retries) and checks how it failed; then checks that
/// a good job still runs in the same installation. Returns the failed attempt's output.
fn misbehave(method: &str, extra: &[&str], error: &str) -> String {
    let host = Host::standard();
    let mut args = vec![
        "run",
        r"Tests\Misbehave",
        method,
        "--wait",
        "--retries",
        "0",
    ];
    args.extend_from_slice(extra);
    let run = host.run(&args);
    run.expect_code(4);
    assert!(
        run.stderr
            .contains(&format!("failed after 1 attempt(s): {error}")),
        "expected {error:?} in:\n{}",
        run.stderr
    );
    let failed = format!(r#"Job failed: Tests\Misbehave@{method} {{"error":"{error}""#);
    assert!(
        host.log("background_jobs_errors.log")
            .iter()
            .any(|l| l.contains(&failed)),
        "{:#?}",
        host.log("background_jobs_errors.log")
    );
    let attempts = host.attempts(&run.job_id());
    // An attempt that printed nothing and reported nothing left no file at all.
    let (output, report) = attempts.get(&1).cloned().unwrap_or_default();

    host.run(&["run", r"Tests\Misbehave", "ok", "--wait"])
        .expect_code(0);
    assert!(
        report.is_none() || method == "panic",
        "a crashed worker leaves no report"
    );
    output
}

#[test]
fn worker_reports_sigsegv_when_plugin_segfaults() {
    let output = misbehave("segfault", &[], "worker crashed: SIGSEGV");
    assert!(
        output.contains("about to segfault"),
        "output before the crash is kept: {output:?}"
    );
}

#[test]
fn worker_reports_sigabrt_when_plugin_aborts() {
    misbehave("abort", &[], "worker crashed: SIGABRT");
}

#[test]
fn worker_reports_the_panic_message_when_plugin_panics() {
    let output = misbehave("panic", &[], "panicked: fixture panicked on purpose");
    assert!(output.contains("fixture panicked on purpose"), "{output:?}");
}

#[test]
fn worker_reports_stack_overflow_when_plugin_recurses_forever() {
    let output = misbehave(
        "stack_overflow",
        &[],
        "worker crashed: stack overflow (SIGABRT)",
    );
    assert!(output.contains("has overflowed its stack"), "{output:?}");
}

#[test]
fn worker_that_exits_without_a_result_is_reported_with_its_code() {
    misbehave(
        "exit42",
        &[],
        "worker exited with code 42 without reporting a result",
    );
}

#[test]
fn huge_output_is_capped_and_the_job_still_completes() {
    let host = Host::standard();
    host.settings("limits.max_output_bytes = 100000\n");
    let run = host.run(&[
        "run",
        r"Tests\Misbehave",
        "huge_output",
        "bytes=20000000",
        "--wait",
    ]);
    run.expect_code(0);
    assert_eq!(run.json()["bytes"], 20_000_000);
    let (output, _) = host.attempts(&run.job_id())[&1].clone();
    assert!(
        output.len() < 100_000 + 20_000,
        "kept {} bytes",
        output.len()
    );
    assert!(
        output.contains("[jobhost: output over the 100000 byte limit;"),
        "says what it dropped"
    );
}

#[test]
fn hanging_job_is_killed_with_its_whole_process_group_at_its_timeout() {
    let host = Host::standard();
    let child = host
        .jobhost()
        .args([
            "run",
            r"Tests\Misbehave",
            "hang",
            "--wait",
            "--retries",
            "0",
            "--timeout",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // Once the worker has made its own group (its first act), its group id is its pid.
    let pgrp = wait_for("the worker to start", Duration::from_secs(30), || {
        let (pid, _) = host.workers().pop()?;
        (proc_stat(pid)?.2 == pid).then_some(pid)
    });
    let run = jobhost_e2e::Run::from(child.wait_with_output().unwrap());
    run.expect_code(4);
    assert!(run.stderr.contains("timed out after 1s"), "{}", run.stderr);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not stopped before its timeout"
    );
    assert!(
        !group_alive(pgrp),
        "the worker's process group {pgrp} is gone"
    );
    assert!(host
        .log("background_jobs_errors.log")
        .iter()
        .any(|l| l.contains(r#"Job failed: Tests\Misbehave@hang {"error":"timed out after 1s""#)));
    host.run(&["run", r"Tests\Misbehave", "ok", "--wait"])
        .expect_code(0);
}

#[test]
fn hanging_job_is_killed_with_the_child_it_started_at_its_timeout() {
    let host = Host::standard();
    let id = host.enqueue(&[
        r"Tests\Misbehave",
        "hang_with_child",
        "--retries",
        "0",
        "--timeout",
        "2",
    ]);
    let out = host
        .state_dir()
        .join("attempts")
        .join(id.to_string())
        .join("1.out");
    let child: u32 = wait_for(
        "the job to start its child",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&out).ok()?;
            let pid = text.lines().find_map(|l| l.strip_prefix("child pid "))?;
            Some(pid.trim().parse().unwrap())
        },
    );
    let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap();
    assert_eq!(
        cmdline, b"sleep\x00600\x00",
        "the job's child is its `sleep 600`"
    );
    assert!(alive(child));

    let shown = host.wait_state(id, &["completed", "failed", "cancelled"]);
    assert_eq!(shown["job"]["state"], "failed");
    assert_eq!(shown["attempts"][0]["error"], "timed out after 2s");
    assert!(
        !alive(child),
        "the grandchild `sleep 600` ({child}) died with its worker"
    );
    host.run(&["run", r"Tests\Misbehave", "ok", "--wait"])
        .expect_code(0);
}

#[test]
fn cooperative_job_sees_its_cancellation_and_stops_cleanly() {
    let host = Host::standard();
    let id = host.enqueue(&[r"Tests\Misbehave", "hang_cooperative"]);
    host.wait_state(id, &["running"]);
    // Cancelled once the job runs: a worker stopped before it set itself up (before it
    // could see a cancellation) is cancelled too, but not cleanly.
    wait_for("the job to run", Duration::from_secs(30), || {
        let (output, _) = host.attempts(&id.to_string()).remove(&1)?;
        output.contains("waiting for cancellation").then_some(())
    });
    host.run(&["cancel", &id.to_string()]).expect_code(0);
    let shown = host.wait_state(id, &["cancelled"]);
    assert_eq!(
        shown["attempts"].as_array().unwrap().len(),
        1,
        "no retry after a cancel"
    );
    assert_eq!(shown["attempts"][0]["outcome"], "cancelled");
    let (output, _) = host.attempts(&id.to_string())[&1].clone();
    assert!(
        output.contains("saw cancellation"),
        "the job stopped cleanly: {output:?}"
    );
    assert!(host
        .log("background_jobs.log")
        .iter()
        .any(|l| l.starts_with(r#"local.WARNING: Job cancelled: Tests\Misbehave@hang_cooperative {"params":{},"status":"cancelled"}"#)));
}
