//! The log files when things go wrong around them: a full disk (a log file that is a symlink to
//! `/dev/full`, where every write fails with ENOSPC, root included) is reported on stderr once
//! and its lines written later; logrotate renames the files away and `jobhost serve` opens new
//! ones on SIGHUP or SIGUSR1, and goes on. And what `Attempt finished` says of an attempt's
//! output.

use std::{fs, path::PathBuf, process::Child, time::Duration};

use jobhost_e2e::{wait_for, Host};

const MAIN: &str = "background_jobs.log";
const ERRORS: &str = "background_jobs_errors.log";

fn log_path(host: &Host, name: &str) -> PathBuf {
    host.root().join("logs").join(name)
}

/// Makes log file `name` a symlink to `/dev/full`.
fn fill_disk(host: &Host, name: &str) {
    let path = log_path(host, name);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = fs::remove_file(&path);
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
}

fn signal(serve: &Child, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(serve.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name}");
}

/// The lines of `serve.err` that contain `needle`.
fn serve_err(host: &Host, needle: &str) -> Vec<String> {
    fs::read_to_string(host.root().join("serve.err"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_unauthorized_attempt_that_cannot_be_logged_is_reported_on_stderr() {
    let host = Host::standard();
    fill_disk(&host, MAIN);
    fill_disk(&host, ERRORS);
    let run = host.run(&["run", r"App\Jobs\UnauthorizedJob", "method"]);
    run.expect_code(3);
    let reported: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("jobhost: cannot write log file"))
        .collect();
    assert_eq!(reported.len(), 2, "once for each file:\n{}", run.stderr);
    for (line, name) in reported.iter().zip([MAIN, ERRORS]) {
        assert!(
            line.contains(name) && line.contains("No space left on device"),
            "{line}"
        );
    }
}

#[test]
fn serve_writes_the_lines_it_could_not_write_once_its_log_is_reopened() {
    let host = Host::standard();
    fill_disk(&host, MAIN);
    let mut serve = host.serve();
    let id = host.enqueue(&[r"App\Jobs\SendWelcomeEmail", "handle", "user_id=41"]);
    host.wait_state(id, &["completed"]);
    let failing = serve_err(&host, "cannot write log file");
    assert_eq!(failing.len(), 1, "reported once: {failing:?}");
    assert!(failing[0].contains(MAIN), "{failing:?}");
    let problem = wait_for("stats to report the log", Duration::from_secs(30), || {
        let stats = host.run(&["stats", "--json"]).json();
        let problems = stats["dispatcher"]["problems"].as_array()?.clone();
        problems
            .into_iter()
            .find(|p| p["what"] == "the log files cannot be written")
    });
    assert!(
        problem["error"].as_str().unwrap().contains(MAIN),
        "{problem:#}"
    );

    // Room on the disk again: the path is free for a new file; logrotate's postrotate signals.
    fs::remove_file(log_path(&host, MAIN)).unwrap();
    signal(&serve, "HUP");
    host.wait_log(MAIN, "Log files reopened");
    let lines = host.log(MAIN);
    let position = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {lines:#?}"))
    };
    let started =
        position(r#"Job started: App\Jobs\SendWelcomeEmail@handle {"params":{"user_id":41}"#);
    let completed =
        position(r#"Job completed: App\Jobs\SendWelcomeEmail@handle {"params":{"user_id":41}"#);
    let reopened = position("Log files reopened");
    assert!(started < completed && completed < reopened, "{lines:#?}");
    wait_for(
        "stats to say the log is well",
        Duration::from_secs(30),
        || {
            let stats = host.run(&["stats", "--json"]).json();
            (stats["dispatcher"]["problems"] == serde_json::json!([])).then_some(())
        },
    );
    let recovered = serve_err(&host, "is written again");
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(serve.try_wait().unwrap().is_none(), "serve goes on");
    assert!(host.stop_serve(&mut serve));
}

#[test]
fn serve_opens_new_log_files_on_sighup_and_sigusr1_after_logrotate_and_goes_on() {
    let host = Host::standard();
    let mut serve = host.serve();
    for (round, signal_name) in [(1, "HUP"), (2, "USR1")] {
        let before_id = format!("user_id={}", round * 10);
        let before = host.enqueue(&[r"App\Jobs\SendWelcomeEmail", "handle", &before_id]);
        host.wait_state(before, &["completed"]);
        host.wait_log(MAIN, "Job completed");

        // What logrotate does: rename the files away, then signal (postrotate).
        let rotated = |name: &str| log_path(&host, &format!("{name}.{round}"));
        fs::rename(log_path(&host, MAIN), rotated(MAIN)).unwrap();
        fs::rename(log_path(&host, ERRORS), rotated(ERRORS)).unwrap();
        signal(&serve, signal_name);
        host.wait_log(MAIN, "Log files reopened");
        assert!(
            log_path(&host, ERRORS).is_file(),
            "the errors file is new too"
        );

        let after_params = format!(r#"{{"params":{{"user_id":{}}}"#, round * 10 + 1);
        let after_id = format!("user_id={}", round * 10 + 1);
        let after = host.enqueue(&[r"App\Jobs\SendWelcomeEmail", "handle", &after_id]);
        host.wait_state(after, &["completed"]);
        host.wait_log(
            MAIN,
            &format!(r"Job completed: App\Jobs\SendWelcomeEmail@handle {after_params}"),
        );
        let old = fs::read_to_string(rotated(MAIN)).unwrap();
        assert!(
            !old.contains(&after_params),
            "nothing after the signal goes to the rotated file:\n{old}"
        );
        assert!(
            serve.try_wait().unwrap().is_none(),
            "serve still runs after SIG{signal_name}"
        );
    }
    assert!(host.stop_serve(&mut serve), "and stops as usual");
}

/// The context of the `Attempt finished` line of job `id`.
fn attempt_finished(host: &Host, id: &str) -> serde_json::Value {
    host.log(MAIN)
        .iter()
        .filter_map(|line| {
            let (_, context) = line
                .strip_prefix("local.DEBUG: Attempt finished: ")?
                .split_once(' ')?;
            serde_json::from_str::<serde_json::Value>(context).ok()
        })
        .find(|context| context["job_id"].as_i64().map(|n| n.to_string()).as_deref() == Some(id))
        .unwrap_or_else(|| panic!("no Attempt finished line of job {id}"))
}

#[test]
fn attempt_finished_names_the_output_file_only_of_an_attempt_that_printed_something() {
    let host = Host::standard();
    let quiet = host.run(&["run", r"Tests\Misbehave", "ok", "--wait"]);
    quiet.expect_code(0);
    let loud = host.run(&["run", r"Tests\Misbehave", "log_lines", "count=2", "--wait"]);
    loud.expect_code(0);
    let attempts = host.state_dir().join("attempts");

    let (quiet, loud) = (quiet.job_id(), loud.job_id());
    let said = attempt_finished(&host, &quiet);
    assert_eq!(said["outcome"], "ok", "{said}");
    assert!(
        said.get("output").is_none(),
        "nothing printed, no file named: {said}"
    );
    assert!(!attempts.join(&quiet).join("1.out").exists());

    let said = attempt_finished(&host, &loud);
    let out = attempts.join(&loud).join("1.out");
    assert_eq!(said["output"], out.to_string_lossy().as_ref(), "{said}");
    let printed = fs::read_to_string(&out).unwrap();
    assert!(
        printed.contains("log line 2") && printed.contains("printed after 2 log lines"),
        "{printed}"
    );
}
