//! Params are checked against the params the method declares when a job is requested, at
//! every entry point, with the message the worker would give: nothing is stored for a job
//! whose params cannot fit. The worker still checks (and checks their types).

use jobhost::{job::ParamsError, DispatchError, Job};
use jobhost_e2e::{built_library, Host};
use serde_json::{json, Value};

use crate::dashboard::{As, Dashboard};

const CLASS: &str = r"App\Jobs\SendWelcomeEmail";

/// Params that do not fit `SendWelcomeEmail@handle` (`user_id, email?, name?`), as PARAM
/// arguments and as JSON, with what is wrong with them.
fn misfits() -> Vec<(Vec<&'static str>, Value, &'static str)> {
    vec![
        (vec![], json!(null), "missing field `user_id`"),
        (
            vec!["usr_id=5"],
            json!({"usr_id": 5}),
            "unknown field `usr_id`, expected one of `user_id`, `email`, `name`",
        ),
        (
            vec!["user_id=5", "emial=a@b.c"],
            json!({"user_id": 5, "emial": "a@b.c"}),
            "unknown field `emial`, expected one of `user_id`, `email`, `name`",
        ),
        (
            vec!["1", "a@b.c", "Ann", "extra"],
            json!([1, "a@b.c", "Ann", "extra"]),
            "too many positional params: the method takes 3 (user_id, email, name), got 4",
        ),
    ]
}

/// What the worker reports for `params`, run directly on the welcome-email plugin.
fn worker_says(host: &Host, params: &Value) -> String {
    let plugin = built_library("welcome_email");
    let report = crate::worker::run_worker_with(
        host,
        CLASS,
        "handle",
        &plugin,
        json!({ "params": params }),
        b"",
    );
    assert_eq!(report["kind"], "invalid_params", "{report:#}");
    report["message"].as_str().unwrap().to_owned()
}

fn nothing_stored(host: &Host) {
    let listed = host.run(&["list", "--json"]);
    listed.expect_code(0);
    assert!(
        !listed.stdout.contains("SendWelcomeEmail"),
        "nothing stored: {}",
        listed.stdout
    );
}

#[test]
fn run_refuses_params_that_do_not_fit_with_the_worker_s_message() {
    let host = Host::standard();
    let listed = host.run(&["plugins"]);
    assert!(
        listed
            .stdout
            .contains("      params: user_id, email?, name?"),
        "{}",
        listed.stdout
    );
    for (args, params, problem) in misfits() {
        let mut run = vec!["run", CLASS, "handle"];
        run.extend(&args);
        let refused = host.run(&run);
        refused.expect_code(2);
        let expected = format!("jobhost: invalid params for {CLASS}@handle: {problem}");
        assert_eq!(refused.error_lines(), [expected.as_str()], "{args:?}");
        assert_eq!(worker_says(&host, &params), problem, "the worker agrees");
    }
    nothing_stored(&host);
    // Params that fit are queued and run.
    let id = host.enqueue(&[CLASS, "handle", "user_id=5", "name=Ann"]);
    let done = host.wait_state(id, &["completed", "failed"]);
    assert_eq!(done["job"]["state"], "completed", "{done:#}");
}

#[test]
fn the_rust_api_refuses_params_that_do_not_fit() {
    let host = Host::standard();
    let mut client = host.client();
    for (_, params, problem) in misfits() {
        let refused = client
            .dispatch(Job::new(CLASS, "handle").params(params.clone()))
            .expect_err("does not fit");
        let DispatchError::BadInput(ParamsError::DoNotFit { job, message }) = &refused else {
            panic!("{params}: {refused:?}");
        };
        assert_eq!(
            (job.as_str(), message.as_str()),
            (r"App\Jobs\SendWelcomeEmail@handle", problem)
        );
    }
    // A batch with one job that does not fit stores none.
    let batch = client.dispatch_batch([
        Job::new(CLASS, "handle").param("user_id", 1),
        Job::new(CLASS, "handle").param("usr_id", 2),
    ]);
    assert!(
        matches!(batch, Err(DispatchError::BadInput(_))),
        "{batch:?}"
    );
    nothing_stored(&host);
    // A method whose params are not a struct declares none: anything goes to the worker.
    client
        .dispatch(Job::new(r"Tests\Misbehave", "echo").param("anything", 1))
        .expect("not declared, not checked");
}

#[test]
fn the_dashboard_refuses_params_that_do_not_fit() {
    let d = Dashboard::start("");
    let cookie = d.login();
    let me = As::Cookie(&cookie);
    let csrf = d.get("/run", me).csrf();
    for (_, params, problem) in misfits() {
        let reply = d.post_json(
            "/api/jobs",
            As::Bearer(&d.token),
            &[],
            Some(json!({"class": CLASS, "method": "handle", "params": params})),
        );
        assert_eq!(reply.status, 400, "{reply:?}");
        assert_eq!(
            reply.json()["error"],
            format!("invalid params for {CLASS}@handle: {problem}")
        );
        let reply = d.post_form(
            "/run",
            me,
            &[
                ("csrf", &csrf),
                ("job", &format!("{CLASS}@handle")),
                // The form takes an object or an array: none given is `{}`.
                (
                    "params",
                    &if params.is_null() {
                        json!({})
                    } else {
                        params.clone()
                    }
                    .to_string(),
                ),
                ("priority", "normal"),
                ("delay", "0"),
            ],
        );
        assert_eq!(reply.status, 400, "{reply:?}");
        assert!(
            reply.body.contains(r#"id="run-error""#) && reply.body.contains(problem),
            "{problem}: {}",
            reply.body
        );
    }
    nothing_stored(&d.host);
}
