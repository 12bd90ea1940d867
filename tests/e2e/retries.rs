//! Retries: a job is tried again after its retry delay until it succeeds or its retries run
//! out, with one WARNING line per retry.

use std::time::{Duration, Instant};

use jobhost_e2e::Host;

#[test]
fn job_failing_twice_completes_on_attempt_three_with_two_retry_lines() {
    let host = Host::standard();
    let run = host.run(&[
        "run",
        r"Tests\Misbehave",
        "fail_until_attempt",
        "succeed_on=3",
        "--wait",
        "--retry-delay",
        "0.1",
    ]);
    run.expect_code(0);
    assert_eq!(run.json(), serde_json::json!({"attempt": 3}));
    assert!(
        run.stderr.contains("completed on attempt 3"),
        "{}",
        run.stderr
    );
    let retries: Vec<String> = host
        .log("background_jobs.log")
        .into_iter()
        .filter(|l| l.starts_with("local.WARNING: Job retrying:"))
        .collect();
    assert_eq!(
        retries,
        [1, 2]
            .map(|n| format!(
                r#"local.WARNING: Job retrying: Tests\Misbehave@fail_until_attempt {{"attempt":{n},"error":"failing attempt {n} of 3","params":{{"succeed_on":3}},"retry_in_seconds":0.1,"status":"retrying"}}"#
            ))
            .to_vec()
    );
    assert_eq!(
        host.log("background_jobs_errors.log").len(),
        2,
        "the retries are failures too"
    );
    let started = host
        .log("background_jobs.log")
        .iter()
        .filter(|l| l.contains("Job started:"))
        .count();
    assert_eq!(started, 3);
}

#[test]
fn job_that_always_fails_ends_failed_after_one_plus_retries_attempts() {
    let host = Host::standard();
    let run = host.run(&[
        "run",
        r"Tests\Misbehave",
        "always_fail",
        "--wait",
        "--retries",
        "2",
        "--retry-delay",
        "0",
    ]);
    run.expect_code(4);
    assert!(
        run.stderr
            .contains("failed after 3 attempt(s): always fails"),
        "{}",
        run.stderr
    );
    assert_eq!(host.attempts(&run.job_id()).len(), 3);
    let log = host.log("background_jobs.log");
    assert_eq!(
        log.iter().filter(|l| l.contains("Job retrying:")).count(),
        2
    );
    assert_eq!(log.iter().filter(|l| l.contains("Job failed:")).count(), 1);
}

#[test]
fn permanent_failure_is_not_retried() {
    let host = Host::standard();
    let run = host.run(&[
        "run",
        r"Tests\Misbehave",
        "fail_permanent",
        "--wait",
        "--retry-delay",
        "0",
    ]);
    run.expect_code(4);
    assert_eq!(host.attempts(&run.job_id()).len(), 1);
}

#[test]
fn invalid_params_are_reported_by_name_and_not_retried() {
    let host = Host::standard();
    let run = host.run(&[
        "run",
        r"App\Jobs\SendWelcomeEmail",
        "handle",
        "user_id=abc",
        "--wait",
        "--retry-delay",
        "0",
    ]);
    run.expect_code(4);
    assert!(
        run.stderr.contains("param `user_id`: invalid type"),
        "{}",
        run.stderr
    );
    assert_eq!(host.attempts(&run.job_id()).len(), 1);
}

#[test]
fn retry_delay_and_start_delay_are_honoured() {
    let host = Host::standard();
    let start = Instant::now();
    let run = host.run(&[
        "run",
        r"Tests\Misbehave",
        "fail_until_attempt",
        "succeed_on=3",
        "--wait",
        "--retry-delay",
        "0.6",
        "--delay",
        "0.5",
    ]);
    let elapsed = start.elapsed();
    run.expect_code(0);
    // Two retry waits of 0.6 s and a start delay of 0.5 s; generous upper bound for a loaded machine.
    assert!(
        elapsed >= Duration::from_millis(1700),
        "took only {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
}
