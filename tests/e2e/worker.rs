//! The worker process itself: detached from its caller, and refusing unapproved jobs before
//! loading anything.

use std::time::Duration;

use jobhost::config::settings::Runner;
use jobhost_e2e::{artifacts_dir, built_library, proc_stat, wait_for, Host};
use serde_json::{json, Value};

fn run_worker_directly(host: &Host, class: &str, method: &str, plugin: &std::path::Path) -> Value {
    run_worker_with(host, class, method, plugin, json!({}), b"")
}

/// Runs `jobhost __worker` with a request for `class@method`, the request fields `extra`
/// added, and `stdin` as its input; returns its report.
pub(crate) fn run_worker_with(
    host: &Host,
    class: &str,
    method: &str,
    plugin: &std::path::Path,
    extra: Value,
    stdin: &[u8],
) -> Value {
    use std::io::Write;
    let report = host.root().join("report.json");
    let _ = std::fs::remove_file(&report);
    let mut request = json!({
        "protocol": 1,
        "job_id": "direct-1",
        "attempt": 1,
        "class": class,
        "method": method,
        "params": {},
        "plugin": plugin,
        "allowlist": host.root().join("allowlist.toml"),
        "report": report,
    });
    if let (Value::Object(request), Value::Object(extra)) = (&mut request, extra) {
        request.extend(extra);
    }
    let mut worker = std::process::Command::new(artifacts_dir().join("jobhost"))
        .args(["__worker", &request.to_string()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = worker.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    let status = worker.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "the worker reports, it does not crash"
    );
    serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap()
}

#[test]
fn worker_started_directly_with_an_unapproved_class_refuses_to_load_anything() {
    let host = Host::standard();
    host.write(
        "allowlist.toml",
        "[jobs]\n'App\\Jobs\\SendWelcomeEmail' = [\"handle\"]\n",
    );
    // Were the plugin loaded and the method invoked, this worker would die of SIGSEGV.
    let report = run_worker_directly(
        &host,
        r"Tests\Misbehave",
        "segfault",
        &built_library("misbehave_fixture"),
    );
    assert_eq!(report["status"], "error");
    assert_eq!(report["kind"], "unauthorized");
    assert!(report["message"]
        .as_str()
        .unwrap()
        .contains(r"Tests\Misbehave@segfault is not approved"));

    // The check comes before any loading: a plugin path that is not even a file changes nothing.
    let report = run_worker_directly(
        &host,
        r"Tests\Misbehave",
        "ok",
        &host.root().join("missing.so"),
    );
    assert_eq!(report["kind"], "unauthorized");
}

#[test]
fn gated_worker_runs_nothing_without_its_go_ahead_and_runs_the_job_with_it() {
    let host = Host::standard();
    // Were the plugin loaded and the method invoked, this worker would die of SIGSEGV.
    let gated = json!({"gate": true});
    let plugin = built_library("misbehave_fixture");
    let report = run_worker_with(
        &host,
        r"Tests\Misbehave",
        "segfault",
        &plugin,
        gated.clone(),
        b"",
    );
    assert_eq!(report["status"], "error", "{report}");
    assert_eq!(report["kind"], "not_started", "{report}");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("no plugin code ran"),
        "{report}"
    );
    let report = run_worker_with(&host, r"Tests\Misbehave", "echo", &plugin, gated, b"g");
    assert_eq!(report["status"], "ok", "the go-ahead starts it: {report}");
}

#[test]
fn worker_runs_in_its_own_session_without_terminal_stdin_or_core_dumps() {
    let host = Host::standard();
    let id = host.enqueue(&[r"Tests\Misbehave", "sleep", "seconds=60", "--retries", "0"]);
    // Its stdin carries only the go-ahead, and becomes /dev/null once that is read: wait for
    // a worker that leads its own session and has read it.
    let stdin = |pid: u32| std::fs::read_link(format!("/proc/{pid}/fd/0")).ok();
    let worker = wait_for(
        "the worker to call setsid and read its go-ahead",
        Duration::from_secs(30),
        || {
            let (pid, _) = host.workers().pop()?;
            let stat = proc_stat(pid)?;
            (stat.3 == pid && stdin(pid)? == std::path::Path::new("/dev/null")).then_some(pid)
        },
    );
    let dispatcher = host.dispatcher_pid().unwrap();
    let (_, ppid, pgrp, session, tty) = proc_stat(worker).unwrap();
    let (_, _, dispatcher_pgrp, dispatcher_session, dispatcher_tty) =
        proc_stat(dispatcher).unwrap();
    let parent = match jobhost_e2e::runner() {
        Runner::Exec => dispatcher,
        Runner::Fork => host.zygote().unwrap(),
    };
    assert_eq!(
        ppid, parent,
        "the dispatcher started it, or its fork server, which the dispatcher started"
    );
    assert_eq!(
        (pgrp, session),
        (worker, worker),
        "own process group and session"
    );
    assert_ne!((pgrp, session), (dispatcher_pgrp, dispatcher_session));
    assert_eq!(tty, 0, "no controlling terminal, so no SIGHUP from one");
    assert_eq!(
        dispatcher_tty, 0,
        "the dispatcher `run` started is detached too"
    );
    assert_eq!(dispatcher_session, dispatcher, "and leads its own session");
    let limits = std::fs::read_to_string(format!("/proc/{worker}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
    let env = std::fs::read(format!("/proc/{worker}/environ")).unwrap();
    assert!(String::from_utf8_lossy(&env)
        .split('\0')
        .any(|v| v == "RUST_BACKTRACE=0"));

    host.run(&["cancel", &id.to_string()]).expect_code(0);
    host.wait_state(id, &["cancelled"]);
    assert!(
        !jobhost_e2e::group_alive(worker),
        "the worker's group is gone"
    );
}
