//! Retention: finished jobs, their attempts and their attempt files are deleted after their
//! state's period, by the dispatcher or by `jobhost prune`; with several hosts on one
//! PostgreSQL store, each removes its own files. Periods are short here, and a job is never
//! expected gone before its period has passed by the test's own clock (nor is its deletion
//! timed).

use std::{path::PathBuf, time::Duration};

use jobhost::store::{now_millis, JobId};
use jobhost_e2e::{wait_for, Host};
use jobhost_testing::TestDatabase;

const CLASS: &str = r"Tests\Misbehave";

/// The directory of job `id`'s attempt files.
fn job_dir(host: &Host, id: JobId) -> PathBuf {
    host.state_dir().join("attempts").join(id.to_string())
}

/// Whether job `id` is still stored (`jobhost show` finds it).
fn stored(host: &Host, id: JobId) -> bool {
    let run = host.run(&["show", &id.to_string(), "--json"]);
    match run.code {
        0 => true,
        2 => false,
        _ => panic!("show {id}: {run:?}"),
    }
}

/// Runs `CLASS@method ARGS` to its end with `--wait`, expecting exit `code`; returns its id.
fn run_to_end(host: &Host, method: &str, args: &[&str], code: i32) -> JobId {
    let mut full = vec!["run", CLASS, method, "--wait", "--retries", "0"];
    full.extend_from_slice(args);
    let run = host.run(&full);
    run.expect_code(code);
    run.job_id().parse().unwrap()
}

/// A job of `delay` seconds, cancelled while it waits.
fn cancelled(host: &Host) -> JobId {
    let id = host.enqueue(&[CLASS, "ok", "--delay", "600"]);
    host.run(&["cancel", &id.to_string()]).expect_code(0);
    id
}

/// When job `id` finished, by the dispatcher's clock (milliseconds since the epoch).
fn finished_at(host: &Host, id: JobId) -> i64 {
    host.show(id)["job"]["finished_at"].as_i64().unwrap()
}

/// Waits until job `id` and its attempt files are gone, and checks that was no earlier than
/// `period` after it finished at `finished`.
fn wait_pruned(host: &Host, id: JobId, finished: i64, period: Duration) {
    wait_for(
        &format!("job {id} and its files to be pruned"),
        Duration::from_secs(60),
        || {
            let gone = !job_dir(host, id).exists() && !host.report_path(id, 1).exists();
            (!stored(host, id) && gone).then_some(())
        },
    );
    let age = now_millis() - finished;
    assert!(
        age >= period.as_millis() as i64,
        "job {id} was pruned {age} ms after it finished, before its period of {period:?}"
    );
}

#[test]
fn the_dispatcher_prunes_finished_jobs_and_their_files_after_each_states_period() {
    let host = Host::standard();
    host.settings(
        "retention.completed = 2\nretention.cancelled = 2\nretention.failed = 3600\n\
         retention.interval = 0.2\n",
    );
    let mut serve = host.serve();
    let completed = run_to_end(&host, "huge_output", &["bytes=2000"], 0);
    let failed = run_to_end(&host, "always_fail", &[], 4);
    let cancelled = cancelled(&host);
    let (done_at, cancelled_at) = (finished_at(&host, completed), finished_at(&host, cancelled));
    assert!(job_dir(&host, completed).join("1.out").is_file());
    // It printed nothing, so it has a report and no output file.
    assert!(host.report_path(failed, 1).is_file());

    wait_pruned(&host, completed, done_at, Duration::from_secs(2));
    wait_pruned(&host, cancelled, cancelled_at, Duration::from_secs(2));
    // A job finished after them is pruned in its turn, not before its period either.
    let later = run_to_end(&host, "ok", &[], 0);
    let later_at = finished_at(&host, later);
    assert!(stored(&host, later));
    wait_pruned(&host, later, later_at, Duration::from_secs(2));
    // Failed jobs are kept for an hour.
    assert!(stored(&host, failed));
    assert!(host.report_path(failed, 1).is_file());
    let pruned: Vec<String> = host
        .log("background_jobs.log")
        .into_iter()
        .filter(|line| line.contains("Pruned "))
        .collect();
    assert!(!pruned.is_empty(), "each pruning is logged");
    assert!(host.stop_serve(&mut serve));
}

#[test]
fn prune_by_hand_reports_what_it_removes_and_a_dry_run_changes_nothing() {
    let host = Host::standard();
    // Kept forever, so that the dispatcher `run` starts prunes nothing itself.
    host.settings("retention.completed = 0\nretention.failed = 0\nretention.cancelled = 0\n");
    let completed = run_to_end(&host, "huge_output", &["bytes=2000"], 0);
    let failed = run_to_end(&host, "always_fail", &[], 4);
    let cancelled = cancelled(&host);
    let all = [completed, failed, cancelled];
    let prune = |args: &[&str]| {
        let mut full = vec!["prune"];
        full.extend_from_slice(args);
        let run = host.run(&full);
        run.expect_code(0);
        run.stdout.trim().to_owned()
    };

    // Kept forever: nothing is due by the settings.
    assert_eq!(
        prune(&[]),
        "pruned 0 finished jobs (0 attempts, 0 bytes of attempt files)"
    );
    let dry = prune(&["--older-than", "0", "--dry-run"]);
    let bytes: u64 = dry
        .strip_prefix("would prune 3 finished jobs (2 attempts, ")
        .and_then(|rest| rest.strip_suffix(" bytes of attempt files)"))
        .unwrap_or_else(|| panic!("{dry}"))
        .parse()
        .unwrap();
    assert!(bytes >= 2000, "{dry}");
    assert!(
        all.iter().all(|&id| stored(&host, id)),
        "a dry run changes nothing"
    );
    assert!(job_dir(&host, completed).join("1.out").is_file());

    let only_completed = prune(&["--older-than", "0", "--state", "completed"]);
    assert!(
        only_completed.starts_with("pruned 1 finished jobs (1 attempts, "),
        "{only_completed}"
    );
    assert!(!stored(&host, completed) && !job_dir(&host, completed).exists());
    assert!(!host.report_path(completed, 1).exists());
    assert!(stored(&host, failed) && stored(&host, cancelled));
    // Finished less than an hour ago: kept.
    assert!(prune(&["--older-than", "3600"]).starts_with("pruned 0 finished jobs"));
    assert!(prune(&["--older-than", "0"]).starts_with("pruned 2 finished jobs (1 attempts, "));
    assert!(all.iter().all(|&id| !stored(&host, id)));

    for (args, says) in [
        (&["--state", "queued"][..], "only finished jobs are pruned"),
        (&["--state", "running"][..], "only finished jobs are pruned"),
        (
            &["--older-than", "-1"][..],
            "non-negative number of seconds",
        ),
    ] {
        let mut full = vec!["prune"];
        full.extend_from_slice(args);
        let run = host.run(&full);
        run.expect_code(2);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn bad_retention_settings_are_exit_2_naming_the_key() {
    let host = Host::standard();
    for (setting, key) in [
        ("retention.completed = \"24h\"", "retention.completed"),
        ("retention.failed = -1", "retention.failed"),
        ("retention.interval = 0", "retention.interval"),
    ] {
        host.settings(&format!("{setting}\n"));
        for command in [&["stats"][..], &["serve"], &["prune", "--dry-run"]] {
            let run = host.run(command);
            run.expect_code(2);
            assert!(
                run.stderr
                    .contains(&format!("{key} must be a number of seconds")),
                "{setting} / {command:?}: {}",
                run.stderr
            );
        }
    }
}

#[test]
fn with_a_shared_postgres_store_each_host_removes_its_own_files_of_pruned_jobs() {
    let db = TestDatabase::create();
    // Host A runs the jobs and keeps finished jobs forever: it never prunes them itself.
    let a = Host::on_store(db.url());
    a.settings("retention.completed = 0\nretention.interval = 0.1\n");
    let mut serve_a = a.serve();
    let ids: Vec<JobId> = (0..3)
        .map(|_| run_to_end(&a, "huge_output", &["bytes=100"], 0))
        .collect();
    assert!(ids
        .iter()
        .all(|&id| job_dir(&a, id).is_dir() && a.report_path(id, 1).is_file()));
    // Host B prunes them after a second; their files are on A's disk, not B's.
    let b = Host::on_store(db.url());
    b.settings("retention.completed = 1\nretention.interval = 0.1\n");
    let mut serve_b = b.serve();
    for &id in &ids {
        wait_for(
            &format!("job {id} to be pruned"),
            Duration::from_secs(60),
            || (!stored(&b, id)).then_some(()),
        );
    }
    // A's sweep finds them gone from the store and removes its files.
    for &id in &ids {
        wait_for(
            &format!("host A to remove the files of job {id}"),
            Duration::from_secs(60),
            || (!job_dir(&a, id).exists() && !a.report_path(id, 1).exists()).then_some(()),
        );
    }
    let swept = a.wait_log("background_jobs.log", "Removed the attempt files of");
    assert!(swept.contains("pruned jobs"), "{swept}");
    assert!(a.stop_serve(&mut serve_a) && b.stop_serve(&mut serve_b));
}
