//! The Rust API (`jobhost::Client`, `jobhost::Job`): the same gate, queue and logs as the
//! command line, from inside an application.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use jobhost::{
    store::{CancelOutcome, JobState},
    DispatchError, Job, Priority, WakeError,
};
use jobhost_e2e::Host;

#[test]
fn dispatch_stores_the_job_with_its_options_and_a_dispatcher_runs_it() {
    let host = Host::standard();
    let mut client = host.client();
    let id = client
        .dispatch(
            Job::new(r"Tests\Misbehave", "echo")
                .param("user_id", 789)
                .param("message", "Welcome!")
                .retries(5)
                .retry_delay(Duration::from_secs(10))
                .priority(Priority::Low)
                .timeout(Duration::from_secs(60)),
        )
        .unwrap();
    let (job, _) = client.job(id).unwrap().unwrap();
    assert_eq!(
        (job.retries, job.max_attempts, job.priority),
        (5, 6, Priority::Low)
    );
    assert_eq!(job.retry_delay, Duration::from_secs(10));
    assert_eq!(job.timeout, Duration::from_secs(60));
    let done = client.follow(id, &|| false).unwrap().unwrap();
    assert_eq!(done.state, JobState::Completed);
    let result = done.result.unwrap();
    assert_eq!(
        result["params"],
        serde_json::json!({"user_id": 789, "message": "Welcome!"})
    );
    assert_eq!(result["job_id"], id.to_string());
}

#[test]
fn positional_args_and_defaults_from_the_settings() {
    let host = Host::standard();
    host.settings("defaults.retries = 1\ndefaults.retry_delay = 0.25\n");
    let mut client = host.client();
    let id = client
        .dispatch(
            Job::new(r"App\Jobs\SendNotification", "send")
                .arg(5)
                .arg("hi")
                .delay(Duration::from_secs(30)),
        )
        .unwrap();
    let (job, _) = client.job(id).unwrap().unwrap();
    assert_eq!(job.params, serde_json::json!([5, "hi"]));
    assert_eq!(
        (job.retries, job.retry_delay),
        (1, Duration::from_millis(250))
    );
    assert_eq!(job.state, JobState::Scheduled);
    client.cancel(id).unwrap();
}

#[test]
fn a_batch_is_stored_whole_or_not_at_all() {
    let host = Host::standard();
    let mut client = host.client();
    let ids = client
        .dispatch_batch((0..100).map(|n| {
            Job::new(r"Tests\Misbehave", "echo")
                .param("n", n)
                .delay(Duration::from_secs(60))
        }))
        .unwrap();
    assert_eq!(ids.len(), 100);
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));

    let mixed = (0..3)
        .map(|n| Job::new(r"Tests\Misbehave", "echo").param("n", n))
        .chain([Job::new(r"App\Jobs\Nope", "handle")]);
    let refused = client.dispatch_batch(mixed).unwrap_err();
    assert!(matches!(refused, DispatchError::Refused(_)), "{refused}");
    assert_eq!(
        client.store().unfinished().unwrap(),
        100,
        "nothing of the refused batch was stored"
    );
    assert!(host
        .log("background_jobs_errors.log")
        .iter()
        .any(|l| l.contains(
            r#"Unauthorized job execution attempt: App\Jobs\Nope@handle {"status":"unauthorized"}"#
        )));
}

#[test]
fn bad_jobs_are_refused_with_one_clear_error() {
    let host = Host::standard();
    let mut client = host.client();
    let mixed = Job::new(r"Tests\Misbehave", "echo").param("a", 1).arg(2);
    assert_eq!(
        client.dispatch(mixed).unwrap_err().to_string(),
        "params mix named (key=value) and positional values; use one form or --params-json"
    );
    let zero = Job::new(r"Tests\Misbehave", "ok").timeout(Duration::ZERO);
    assert!(matches!(
        client.dispatch(zero),
        Err(DispatchError::BadInput(_))
    ));
    let unknown = client
        .dispatch(Job::new(r"Tests\Misbehave", "explode"))
        .unwrap_err();
    assert!(unknown.to_string().contains("is not approved"), "{unknown}");
    assert_eq!(client.store().unfinished().unwrap(), 0);
}

/// The warnings a client reported, as text.
fn collect_warnings(client: &mut jobhost::Client) -> Arc<Mutex<Vec<String>>> {
    let warnings = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&warnings);
    client.on_warning(move |w: &WakeError| sink.lock().unwrap().push(w.to_string()));
    warnings
}

#[test]
fn dispatch_cancel_and_retry_succeed_with_a_warning_when_no_dispatcher_can_be_started() {
    let host = Host::standard();
    let mut settings = host.client().settings().clone();
    // A dispatcher cannot start in a directory that does not exist.
    settings.work_dir = host.root().join("nowhere");
    let mut client = jobhost::Client::new(settings).unwrap();
    let warnings = collect_warnings(&mut client);

    let id = client
        .dispatch(Job::new(r"Tests\Misbehave", "ok"))
        .expect("the job is stored: dispatch is Ok");
    assert_eq!(client.cancel(id).unwrap(), CancelOutcome::Cancelled);
    client.retry(id).expect("the retry is stored: Ok");

    let warnings = warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    for w in &warnings {
        assert!(w.contains("none could be started"), "{w}");
        assert!(
            w.contains("JOBHOST_BIN"),
            "says how to name the program: {w}"
        );
    }
    let (job, _) = client.job(id).unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(client.store().unfinished().unwrap(), 1, "stored once");
    assert!(host.dispatcher_pid().is_none());
}

#[test]
fn with_autostart_off_dispatch_stores_the_job_warns_and_starts_no_dispatcher() {
    let host = Host::standard();
    host.settings("dispatcher.autostart = false\n");
    let mut client = host.client();
    let warnings = collect_warnings(&mut client);
    let id = client.dispatch(Job::new(r"Tests\Misbehave", "ok")).unwrap();
    let warnings = warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("dispatcher.autostart is off"),
        "{}",
        warnings[0]
    );
    assert_eq!(client.job(id).unwrap().unwrap().0.state, JobState::Queued);
    assert!(host.dispatcher_pid().is_none());
}
