//! Every value is bounded where it enters: a job option, a setting or params the store could
//! not hold, or the worker could not hand on, is refused with exit 2 naming the field and the
//! allowed range; and a job the dispatcher cannot read is quarantined, not fatal.

use std::time::Duration;

use jobhost::{DispatchError, Job};
use jobhost_e2e::Host;
use jobhost_testing::TestDatabase;
use serde_json::Value;

const WELCOME: [&str; 4] = ["run", r"App\Jobs\SendWelcomeEmail", "handle", "user_id=1"];

fn run_with(host: &Host, extra: &[&str]) -> jobhost_e2e::Run {
    let args: Vec<&str> = WELCOME.iter().chain(extra).copied().collect();
    host.run(&args)
}

/// `[[[...1...]]]`, `depth` arrays deep.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// Asserts that `run` was refused as bad input with `expect` in its message and that the
/// queue is as empty as before.
fn assert_refused(host: &Host, run: &jobhost_e2e::Run, expect: &str) {
    run.expect_code(2);
    assert!(
        run.stderr.contains(expect),
        "expected {expect:?} in:\n{}",
        run.stderr
    );
    let list = host.run(&["list", "--json"]);
    list.expect_code(0);
    assert_eq!(list.json(), serde_json::json!([]), "nothing was stored");
}

#[test]
fn retries_the_store_cannot_count_are_refused_on_the_command_line() {
    let host = Host::standard();
    for retries in ["4294967295", "1001", "-1", "99999999999"] {
        let run = run_with(&host, &["--retries", retries]);
        assert_refused(
            &host,
            &run,
            &format!("retries {retries} is out of range: allowed 0 to 1000"),
        );
    }
    let id = host.enqueue(&[r"Tests\Misbehave", "ok", "--retries", "1000"]);
    let shown = host.wait_state(id, &["completed"]);
    assert_eq!(shown["job"]["max_attempts"], 1001);
}

#[test]
fn a_timeout_under_a_millisecond_is_refused_not_stored_as_zero() {
    let host = Host::standard();
    let run = run_with(&host, &["--timeout", "0.0004"]);
    assert_refused(
        &host,
        &run,
        "timeout 0.0004 s is out of range: allowed 0.001 s to 604800 s (7 days)",
    );
    let run = run_with(&host, &["--timeout", "604801"]);
    assert_refused(&host, &run, "timeout 604801 s is out of range");
    let run = run_with(&host, &["--delay", "315360001"]);
    assert_refused(&host, &run, "delay 315360001 s is out of range");
    let run = run_with(&host, &["--retry-delay", "1e9"]);
    assert_refused(&host, &run, "retry_delay 1000000000 s is out of range");
}

#[test]
fn params_nested_too_deep_for_the_worker_are_refused() {
    let host = Host::standard();
    for depth in [33, 126, 127] {
        let run = host.run(&[
            "run",
            r"Tests\Misbehave",
            "echo",
            "--params-json",
            &nested(depth),
        ]);
        assert_refused(
            &host,
            &run,
            "params nest more than 32 levels deep (limits.max_params_depth)",
        );
    }
    // Echo returns its params one level deeper, within the result's limit of 100.
    host.settings("limits.max_params_depth = 100\n");
    let id = host.enqueue(&[r"Tests\Misbehave", "echo", "--params-json", &nested(99)]);
    let shown = host.wait_state(id, &["completed", "failed"]);
    assert_eq!(shown["job"]["state"], "completed", "{shown}");
}

#[test]
fn a_result_nested_too_deep_to_record_fails_the_job_clearly_once() {
    let host = Host::standard();
    for depth in [101, 126, 127] {
        let id = host.enqueue(&[
            r"Tests\Misbehave",
            "nest",
            &format!("depth={depth}"),
            "--retries",
            "2",
        ]);
        let shown = host.wait_state(id, &["completed", "failed"]);
        let job = &shown["job"];
        assert_eq!(job["state"], "failed", "{shown}");
        assert!(
            job["last_error"]
                .as_str()
                .unwrap()
                .contains("result nests more than 100 levels deep"),
            "{shown}"
        );
        let attempts = shown["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "not retried: {shown}");
        assert_eq!(attempts[0]["outcome"], "error", "{shown}");
    }
    let id = host.enqueue(&[r"Tests\Misbehave", "nest", "depth=100"]);
    let shown = host.wait_state(id, &["completed", "failed"]);
    assert_eq!(shown["job"]["state"], "completed", "{shown}");
}

#[test]
fn the_rust_api_refuses_out_of_range_options_and_stores_nothing() {
    let host = Host::standard();
    let mut client = host.client();
    let job = || Job::new(r"Tests\Misbehave", "ok");
    for (job, expect) in [
        (
            job().retries(u32::MAX),
            "retries 4294967295 is out of range: allowed 0 to 1000",
        ),
        (
            job().timeout(Duration::from_nanos(1)),
            "timeout 0.000000001 s is out of range",
        ),
        (job().delay(Duration::MAX), "delay "),
        (
            job().params(serde_json::from_str::<Value>(&nested(127)).unwrap()),
            "params nest more than 32 levels deep",
        ),
    ] {
        match client.dispatch(job) {
            Err(e @ DispatchError::BadInput(_)) => {
                assert!(e.to_string().starts_with(expect), "{e}")
            }
            other => panic!("{expect}: {other:?}"),
        }
    }
    let list = host.run(&["list", "--json"]);
    assert_eq!(list.json(), serde_json::json!([]));
}

#[test]
fn out_of_range_settings_are_refused_by_every_command_with_exit_2() {
    let host = Host::standard();
    for (setting, expect) in [
        (
            "defaults.timeout = 0\n",
            "defaults.timeout 0 s is out of range: allowed 0.001 s to 604800 s (7 days)",
        ),
        (
            "defaults.retries = 4294967295\n",
            "defaults.retries 4294967295 is out of range: allowed 0 to 1000",
        ),
        (
            "dispatcher.slots = 2000\n",
            "dispatcher.slots 2000 is out of range: allowed 1 to 256",
        ),
        (
            "limits.max_params_depth = 127\n",
            "limits.max_params_depth 127 is out of range: allowed 1 to 100",
        ),
    ] {
        host.settings(setting);
        for command in [&["stats"][..], &["list"], &WELCOME[..]] {
            let run = host.run(command);
            run.expect_code(2);
            assert!(
                run.stderr.contains(expect) && run.stderr.contains("jobhost.toml"),
                "{command:?} with {setting}: {}",
                run.stderr
            );
        }
    }
    host.settings("");
    let mut slots = host.jobhost();
    slots.args(["serve", "--slots", "2000"]);
    let run = jobhost_e2e::Run::from(slots.output().unwrap());
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("--slots 2000 is out of range: allowed 1 to 256"),
        "{}",
        run.stderr
    );
    let mut env = host.jobhost();
    env.args(["serve"]).env("JOBHOST_SLOTS", "2000");
    let run = jobhost_e2e::Run::from(env.output().unwrap());
    run.expect_code(2);
    assert!(run.stderr.contains("JOBHOST_SLOTS"), "{}", run.stderr);
}

#[test]
fn an_empty_path_variable_is_refused_not_taken_for_the_current_directory() {
    let host = Host::standard();
    for name in [
        "JOBHOST_STATE_DIR",
        "JOBHOST_LOG_DIR",
        "JOBHOST_PLUGIN_DIR",
        "JOBHOST_ALLOWLIST",
        "JOBHOST_CONFIG",
    ] {
        let mut command = host.jobhost();
        command.arg("stats").env(name, "");
        let run = jobhost_e2e::Run::from(command.output().unwrap());
        run.expect_code(2);
        assert!(
            run.stderr.contains(name) && run.stderr.contains("empty"),
            "{name}: {}",
            run.stderr
        );
    }
    let run = host.run(&["--state-dir", "", "stats"]);
    run.expect_code(2);
    assert!(run.stderr.contains("--state-dir"), "{}", run.stderr);
    assert!(
        !host.root().join("jobs.sqlite3").exists(),
        "no database in the current directory"
    );
}

/// Runs `sql`, which must change one row, on the installation's SQLite database, as a hand
/// edit or a bug would.
fn corrupt_sqlite(host: &Host, sql: &str) {
    let database = rusqlite::Connection::open(host.state_dir().join("jobs.sqlite3")).unwrap();
    database.busy_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(database.execute(sql, []).unwrap(), 1, "{sql}");
}

#[test]
fn a_row_the_dispatcher_cannot_read_is_quarantined_while_serve_runs_the_rest() {
    let host = Host::standard();
    quarantined_while_serve_runs_the_rest(&host, |sql| corrupt_sqlite(&host, sql));
}

#[test]
fn a_row_the_dispatcher_cannot_read_is_quarantined_on_postgres_too() {
    let db = TestDatabase::create();
    let host = Host::on_store(db.url());
    let run = run_with(&host, &["--retries", "4294967295"]);
    assert_refused(&host, &run, "retries 4294967295 is out of range");
    quarantined_while_serve_runs_the_rest(&host, |sql| {
        let mut client = postgres::Client::connect(db.url(), postgres::NoTls).unwrap();
        assert_eq!(client.execute(sql, &[]).unwrap(), 1, "{sql}");
    });
}

/// Breaks two jobs in the database of `host` with `corrupt` while its `jobhost serve` runs:
/// they end failed with the reason, every other job completes, and nothing stops.
fn quarantined_while_serve_runs_the_rest(host: &Host, corrupt: impl Fn(&str)) {
    let mut serve = host.serve();
    let first = host.enqueue(&[r"Tests\Misbehave", "ok"]);
    host.wait_state(first, &["completed"]);

    // Jobs scheduled for later, broken in the database and made due at once; the jobs
    // enqueued after them wake the dispatcher, which finds the broken ones first in line.
    let poisoned = host.enqueue(&[r"Tests\Misbehave", "ok", "--delay", "3600"]);
    corrupt(&format!(
        "UPDATE jobs SET max_attempts = 4294967296, run_at = 0 WHERE id = {poisoned}"
    ));
    let bad_json = host.enqueue(&[r"Tests\Misbehave", "ok", "--delay", "3600"]);
    corrupt(&format!(
        "UPDATE jobs SET params = '{{not json', run_at = 0 WHERE id = {bad_json}"
    ));
    let after: Vec<i64> = (0..5)
        .map(|n| host.enqueue(&[r"Tests\Misbehave", "echo", &format!("n={n}")]))
        .collect();

    for id in &after {
        host.wait_state(*id, &["completed"]);
    }
    for (id, why) in [
        (
            poisoned,
            "column max_attempts holds 4294967296, out of range",
        ),
        (bad_json, "column params holds text that is not JSON"),
    ] {
        let shown = host.wait_state(id, &["failed"]);
        let error = shown["job"]["last_error"].as_str().unwrap();
        assert!(error.starts_with("quarantined: "), "{shown}");
        assert!(error.contains(why), "{shown}");
        assert_eq!(shown["attempts"], serde_json::json!([]), "it never ran");
        assert!(
            shown["job"]["problem"].as_str().unwrap().contains(why),
            "{shown}"
        );
        let text = host.run(&["show", &id.to_string()]);
        text.expect_code(0);
        assert!(text.stdout.contains(why), "{}", text.stdout);
        host.wait_log(
            "background_jobs_errors.log",
            &format!("Job {id} quarantined"),
        );
    }
    // A row in a state jobhost does not know is never due: listed and counted, not run.
    let odd = host.enqueue(&[r"Tests\Misbehave", "ok", "--delay", "3600"]);
    corrupt(&format!(
        "UPDATE jobs SET state = 'exploded' WHERE id = {odd}"
    ));
    let list = host.run(&["list"]);
    list.expect_code(0);
    assert!(list.stdout.contains("unreadable row"), "{}", list.stdout);
    let shown = host.show(odd);
    assert!(
        shown["job"]["problem"]
            .as_str()
            .unwrap()
            .contains(r#"holds "exploded", not a job state"#),
        "{shown}"
    );
    let stats = host.run(&["stats"]);
    stats.expect_code(0);
    assert!(stats.stdout.contains(r#""exploded" 1"#), "{}", stats.stdout);

    // The dispatcher is still the one that started, and still runs jobs.
    assert_eq!(host.dispatcher_pid(), Some(serve.id()));
    let last = host.enqueue(&[r"Tests\Misbehave", "ok"]);
    host.wait_state(last, &["completed"]);
    assert!(serve.try_wait().unwrap().is_none(), "serve still runs");
    assert!(host.stop_serve(&mut serve));
}
