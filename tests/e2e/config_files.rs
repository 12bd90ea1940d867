//! The files jobhost reads whole — the settings file, the allowlist — may be anything at all:
//! a FIFO with no writer, `/dev/zero`, a file of 100 MB. Each is one clear error (exit 2)
//! naming the file, answered at once: nothing blocks, nothing is read past a small limit.

use std::process::Command;

use jobhost_e2e::Host;

use crate::hostile_files::bounded;

/// A FIFO at `name` under the host's root, which nobody ever writes.
fn fifo(host: &Host, name: &str) -> std::path::PathBuf {
    let path = host.root().join(name);
    let made = Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
    path
}

/// A sparse file of 100 MB at `name` under the host's root.
fn huge(host: &Host, name: &str) -> std::path::PathBuf {
    let path = host.root().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(100 * 1024 * 1024)
        .unwrap();
    path
}

const JOB: [&str; 4] = ["run", r"App\Jobs\SendWelcomeEmail", "handle", "user_id=1"];

/// `jobhost ARGS` for each of `commands` with `variable` naming `path`: exit 2 with one line
/// naming the file and `problem`, and nothing stored.
fn assert_refused(
    host: &Host,
    commands: &[&[&str]],
    variable: &str,
    path: &std::path::Path,
    problem: &str,
) {
    for args in commands {
        let mut command = host.jobhost();
        command.args(*args).env(variable, path);
        let run = bounded(&format!("{command:?}"), command);
        run.expect_code(2);
        let shown = path.display().to_string();
        let errors = run.error_lines();
        assert_eq!(errors.len(), 1, "one error: {}", run.stderr);
        assert!(
            errors[0].contains(&shown) && errors[0].contains(problem),
            "expected {shown} and {problem:?} in:\n{}",
            run.stderr
        );
    }
    let listed = host.run(&["list", "--json"]);
    listed.expect_code(0);
    assert!(
        !listed.stdout.contains("SendWelcomeEmail"),
        "nothing stored: {}",
        listed.stdout
    );
}

/// Every command reads the settings file.
const EVERY: [&[&str]; 2] = [&JOB, &["plugins"]];
/// Commands that check jobs against the allowlist.
const GATED: [&[&str]; 1] = [&JOB];

#[test]
fn a_settings_file_that_is_a_fifo_a_device_or_huge_is_a_clear_error_at_once() {
    let host = Host::standard();
    let pipe = fifo(&host, "jobhost.fifo");
    assert_refused(
        &host,
        &EVERY,
        "JOBHOST_CONFIG",
        &pipe,
        "a FIFO (named pipe), not a regular file",
    );
    let zero = std::path::Path::new("/dev/zero");
    assert_refused(
        &host,
        &EVERY,
        "JOBHOST_CONFIG",
        zero,
        "a device, not a regular file",
    );
    let big = huge(&host, "big.toml");
    assert_refused(
        &host,
        &EVERY,
        "JOBHOST_CONFIG",
        &big,
        "104857600 bytes, over the limit of 1048576 bytes for a settings file",
    );
}

#[test]
fn an_allowlist_that_is_a_fifo_a_device_or_huge_is_a_clear_error_at_once() {
    let host = Host::standard();
    let pipe = fifo(&host, "allowlist.fifo");
    assert_refused(
        &host,
        &GATED,
        "JOBHOST_ALLOWLIST",
        &pipe,
        "a FIFO (named pipe), not a regular file",
    );
    let zero = std::path::Path::new("/dev/zero");
    assert_refused(
        &host,
        &GATED,
        "JOBHOST_ALLOWLIST",
        zero,
        "a device, not a regular file",
    );
    let big = huge(&host, "big-allowlist.toml");
    assert_refused(
        &host,
        &GATED,
        "JOBHOST_ALLOWLIST",
        &big,
        "104857600 bytes, over the limit of 1048576 bytes for an allowlist",
    );
    // The same installation with its own allowlist serves as ever.
    let id = host.enqueue(&JOB[1..]);
    let done = host.wait_state(id, &["completed", "failed"]);
    assert_eq!(done["job"]["state"], "completed", "{done:#}");
}

/// The job `jobhost run` gets in these tests, without `run`.
const WELCOME: [&str; 3] = [r"App\Jobs\SendWelcomeEmail", "handle", "user_id=1"];

#[test]
fn removing_the_allowlist_while_serving_revokes_every_approval_and_restoring_it_approves_again() {
    let host = Host::standard();
    host.settings("dispatcher.slots = 1\n");
    let mut serve = host.serve();
    // The one slot busy, so the next job waits in the queue.
    let blocker = host.enqueue(&[r"Tests\Misbehave", "hang_cooperative"]);
    host.wait_state(blocker, &["running"]);
    let queued = host.enqueue(&WELCOME);
    assert_eq!(host.show(queued)["job"]["state"], "queued");

    std::fs::remove_file(host.root().join("allowlist.toml")).unwrap();
    let line = host.wait_log("background_jobs_errors.log", "Allowlist removed");
    assert!(line.contains("local.ERROR: Allowlist removed: "), "{line}");
    assert!(line.contains(r#""revoked":true"#), "{line}");

    // New jobs are refused, at every entry point, naming the user's file.
    let user_file = host.root().join("allowlist.toml").display().to_string();
    let internal = host.state_dir().join("plugins").display().to_string();
    let run = host.run(&[&["run"][..], &WELCOME].concat());
    run.expect_code(2);
    assert!(
        run.stderr.contains(&format!(
            "allowlist {user_file} does not exist, so no job is approved"
        )),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(&internal), "{}", run.stderr);
    let refused = host
        .client()
        .dispatch(jobhost::Job::new(WELCOME[0], WELCOME[1]).param("user_id", 1))
        .expect_err("nothing is approved");
    assert!(
        matches!(
            refused,
            jobhost::DispatchError::Allowlist(
                jobhost::config::allowlist::AllowlistError::Missing { .. }
            )
        ),
        "{refused:?}"
    );
    let listed = host.run(&["plugins"]);
    assert!(
        listed.stdout.contains("does not exist"),
        "{}",
        listed.stdout
    );

    // The job already queued is refused when it starts: the worker loads nothing.
    host.run(&["cancel", &blocker.to_string()]).expect_code(0);
    let done = host.wait_state(queued, &["completed", "failed"]);
    assert_eq!(done["job"]["state"], "failed", "{done:#}");
    let error = done["attempts"][0]["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("allowlist {user_file} does not exist")),
        "{error}"
    );
    assert!(!error.contains(&internal), "{error}");
    assert!(
        !host.storage_dir().join("mail").exists(),
        "the job did not run"
    );

    // Restored: approved again, logged.
    host.write("allowlist.toml", jobhost_e2e::SPEC_ALLOWLIST);
    host.wait_log("background_jobs.log", "Allowlist reloaded");
    let id = host.enqueue(&WELCOME);
    let done = host.wait_state(id, &["completed", "failed"]);
    assert_eq!(done["job"]["state"], "completed", "{done:#}");

    // Emptied: a valid allowlist approving nothing, logged as a warning; refused as not approved.
    host.write("allowlist.toml", "");
    host.wait_log("background_jobs_errors.log", "approves nothing");
    let run = host.run(&[&["run"][..], &WELCOME].concat());
    run.expect_code(3);
    assert!(
        run.stderr
            .contains(&format!("is not in the allowlist {user_file}")),
        "{}",
        run.stderr
    );
    assert!(host.stop_serve(&mut serve));
}

/// The permission bits of `path`.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_state_directory_and_what_jobhost_makes_in_it_are_owner_only() {
    let host = Host::standard();
    let run = host.run(&[&["run"][..], &WELCOME, &["--wait"]].concat());
    run.expect_code(0);
    let state = host.state_dir();
    for dir in [
        state.clone(),
        state.join("plugins"),
        state.join("plugins/snapshots"),
        state.join("attempts"),
        state.join(format!("attempts/{}", run.job_id())),
        state.join("waiters"),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }

    // One made by hand, open to others: left as it is, and the dispatcher says so.
    let host = Host::standard();
    std::fs::create_dir(host.state_dir()).unwrap();
    std::fs::set_permissions(
        host.state_dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    host.run(&[&["run"][..], &WELCOME, &["--wait"]].concat())
        .expect_code(0);
    let line = host.wait_log("background_jobs_errors.log", "is open to other users");
    assert!(
        line.contains("(mode 755)") && line.contains("chmod 700"),
        "{line}"
    );
    assert_eq!(mode(&host.state_dir()), 0o755);
}

#[test]
fn the_dashboard_refuses_every_job_while_the_allowlist_is_removed() {
    use crate::dashboard::{As, Dashboard};
    let d = Dashboard::start("");
    std::fs::remove_file(d.host.root().join("allowlist.toml")).unwrap();
    d.host
        .wait_log("background_jobs_errors.log", "Allowlist removed");
    let reply = d.post_json(
        "/api/jobs",
        As::Bearer(&d.token),
        &[],
        Some(serde_json::json!({"class": WELCOME[0], "method": WELCOME[1], "params": {"user_id": 1}})),
    );
    assert_eq!(reply.status, 403, "{reply:?}");
    let user_file = d.host.root().join("allowlist.toml").display().to_string();
    assert_eq!(
        reply.json()["error"].as_str().unwrap(),
        format!(
            "allowlist {user_file} does not exist, so no job is approved: create it (a `[jobs]` \
             table naming the classes and methods that may run), or name another with \
             --allowlist or JOBHOST_ALLOWLIST"
        )
    );
}

#[test]
fn a_directory_setting_that_names_a_file_or_a_device_is_bad_input_for_every_command() {
    let host = Host::standard();
    let file = host.write("not-a-dir", "a file\n");
    let file = file.to_str().unwrap();
    for (how, args, env) in [
        (
            "--state-dir",
            vec!["--state-dir", "/dev/zero", "stats"],
            None,
        ),
        ("--plugin-dir", vec!["--plugin-dir", file, "plugins"], None),
        (
            "environment variable JOBHOST_LOG_DIR",
            vec!["list"],
            Some(("JOBHOST_LOG_DIR", file)),
        ),
        (
            "environment variable JOBHOST_STATE_DIR",
            vec!["run", r"Tests\Misbehave", "ok"],
            Some(("JOBHOST_STATE_DIR", file)),
        ),
    ] {
        let mut command = host.jobhost();
        command.args(&args);
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        let run = bounded(&format!("{command:?}"), command);
        run.expect_code(2);
        assert!(
            run.stderr.contains(&format!("{how} is "))
                && run.stderr.contains(", not a directory: name a directory"),
            "{args:?}: {}",
            run.stderr
        );
    }
    // Nothing was queued by the refused run.
    assert!(
        !host.state_dir().exists() || host.run(&["list", "--json"]).json() == serde_json::json!([])
    );
}
