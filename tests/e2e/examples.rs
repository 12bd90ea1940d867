//! The spec's example jobs run and do their real work, and both logs hold the spec's lines.

use std::fs;

use jobhost_e2e::{examples, Host};

#[test]
fn send_welcome_email_writes_the_message_and_logs_start_and_completion() {
    let host = Host::standard();
    let run = host.run(&[
        "run",
        r"App\Jobs\SendWelcomeEmail",
        "handle",
        "user_id=123",
        "--wait",
    ]);
    run.expect_code(0);
    let result = run.json();
    let path = result["path"].as_str().unwrap();
    let eml = fs::read_to_string(host.root().join(path)).unwrap();
    assert!(
        eml.contains("To: user123@example.com\r\n") || eml.contains("To: user123@example.com\n"),
        "{eml}"
    );
    assert!(eml.contains("Subject: "), "{eml}");
    assert!(
        eml.contains(&run.job_id()),
        "Message-ID names the job: {eml}"
    );

    let log = host.log("background_jobs.log");
    let params = r#"{"params":{"user_id":123},"#;
    assert!(log.contains(&format!(r#"local.INFO: Job started: App\Jobs\SendWelcomeEmail@handle {params}"status":"running"}}"#)), "{log:#?}");
    assert!(log.contains(&format!(r#"local.INFO: Job completed: App\Jobs\SendWelcomeEmail@handle {params}"status":"completed"}}"#)), "{log:#?}");
    assert!(host.log("background_jobs_errors.log").is_empty());
}

#[test]
fn process_user_report_generates_a_csv_then_mails_it() {
    examples::report_is_generated_then_mailed(&Host::standard());
}

#[test]
fn send_notification_takes_positional_params() {
    examples::notification_takes_positional_params(&Host::standard());
}

#[test]
fn a_failing_job_is_logged_in_both_files_with_its_error() {
    let host = Host::standard();
    host.run(&[
        "run",
        r"App\Jobs\ProcessUserReport",
        "send",
        "report_id=1",
        "--wait",
    ])
    .expect_code(4);
    let expected = r#"local.ERROR: Job failed: App\Jobs\ProcessUserReport@send {"error":"report 1 has not been generated; run generate first","params":{"report_id":1},"status":"failed"}"#;
    assert!(
        host.log("background_jobs.log")
            .iter()
            .any(|l| l == expected),
        "{:#?}",
        host.log("background_jobs.log")
    );
    assert!(host
        .log("background_jobs_errors.log")
        .iter()
        .any(|l| l == expected));
}

#[test]
fn production_logs_info_and_up_without_debug_lines() {
    let host = Host::standard();
    host.jobhost()
        .env("JOBHOST_ENV", "production")
        .args(["run", r"Tests\Misbehave", "ok", "--wait"])
        .output()
        .unwrap();
    let log = host.log("background_jobs.log");
    assert!(
        log.iter()
            .any(|l| l.starts_with(r"production.INFO: Job completed: Tests\Misbehave@ok")),
        "{log:#?}"
    );
    assert!(!log.iter().any(|l| l.contains(".DEBUG:")), "{log:#?}");
}
