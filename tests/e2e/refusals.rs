//! Jobs the allowlist does not approve, or no plugin offers, are refused before any plugin
//! code runs, logged, and exit 3.

use jobhost_e2e::Host;

fn assert_refused_before_running(host: &Host, run: &jobhost_e2e::Run) {
    run.expect_code(3);
    assert_eq!(
        run.error_lines().len(),
        1,
        "one clear error:\n{}",
        run.stderr
    );
    assert!(
        !host.state_dir().join("attempts").exists(),
        "no worker may have been started"
    );
}

#[test]
fn unapproved_class_is_refused_and_logged_as_unauthorized() {
    let host = Host::standard();
    let run = host.run(&["run", r"App\Jobs\UnauthorizedJob", "method", "--wait"]);
    assert_refused_before_running(&host, &run);
    assert!(
        run.stderr
            .contains(r"class `App\Jobs\UnauthorizedJob` is not in the allowlist"),
        "{}",
        run.stderr
    );
    let line = r#"local.ERROR: Unauthorized job execution attempt: App\Jobs\UnauthorizedJob@method {"status":"unauthorized"}"#;
    assert!(host.log("background_jobs.log").iter().any(|l| l == line));
    assert!(host
        .log("background_jobs_errors.log")
        .iter()
        .any(|l| l == line));
}

#[test]
fn unapproved_method_is_refused_and_names_the_approved_ones() {
    let host = Host::standard();
    let run = host.run(&["run", r"App\Jobs\ProcessUserReport", "delete", "--wait"]);
    assert_refused_before_running(&host, &run);
    assert!(
        run.stderr.contains("approves only generate, send"),
        "{}",
        run.stderr
    );
    assert!(host
        .log("background_jobs_errors.log")
        .iter()
        .any(|l| l
            .contains(r"Unauthorized job execution attempt: App\Jobs\ProcessUserReport@delete")));
}

#[test]
fn approved_class_that_no_plugin_offers_is_refused_as_not_found() {
    let host = Host::with_plugins(&["welcome_email"]);
    let run = host.run(&[
        "run",
        r"App\Jobs\SendNotification",
        "send",
        "1",
        "hi",
        "--wait",
    ]);
    assert_refused_before_running(&host, &run);
    assert!(run.stderr.contains("no plugin in"), "{}", run.stderr);
    assert!(host
        .log("background_jobs_errors.log")
        .iter()
        .any(|l| l.starts_with(
            r#"local.ERROR: Job not found: App\Jobs\SendNotification@send {"error":"no plugin in"#
        )));
}

#[test]
fn a_class_whose_backslashes_the_shell_ate_gets_the_quoted_form() {
    let host = Host::standard();
    let run = host.run(&[
        "run",
        "AppJobsSendWelcomeEmail",
        "handle",
        "user_id=1",
        "--wait",
    ]);
    assert_refused_before_running(&host, &run);
    assert!(
        run.stderr
            .contains(r"quote the class, as in jobhost run 'App\Jobs\SendWelcomeEmail' handle"),
        "{}",
        run.stderr
    );
}
