//! Dispatchers started on demand (by `jobhost run`, the Rust API or a follower finding none
//! serving): `dispatcher.autostart` turns them off, they resolve the settings of whoever
//! started them, and they hand their state directory over to a `jobhost serve`.

use std::{
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use jobhost::store::{sqlite::SqliteStore, Store};
use jobhost_e2e::{processes_matching, wait_for, Host};

/// The `jobhost serve` processes running in `root` (their current directory).
fn serves_in(root: &Path) -> Vec<u32> {
    processes_matching(" serve")
        .into_iter()
        .filter(|(pid, cmd)| {
            cmd.contains("jobhost")
                && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == root)
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// The lock file's note on who holds the state directory.
fn lock_note(host: &Host) -> String {
    let text = std::fs::read_to_string(host.state_dir().join("dispatcher.lock")).unwrap();
    text.lines().nth(1).unwrap_or_default().to_owned()
}

#[test]
fn with_autostart_off_run_stores_the_job_warns_and_no_dispatcher_starts() {
    let host = Host::standard();
    host.settings("dispatcher.autostart = false\n");
    let run = host.run(&["run", r"Tests\Misbehave", "ok"]);
    run.expect_code(0);
    let id: i64 = run.stdout.trim().parse().expect("the job id on stdout");
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("jobhost: warning: "))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", run.stderr);
    assert!(
        warnings[0].contains("dispatcher.autostart is off")
            && warnings[0].contains("jobhost serve"),
        "{}",
        warnings[0]
    );
    // A dispatcher started on demand would have been spawned before `run` returned.
    assert_eq!(serves_in(host.root()), Vec::<u32>::new());
    assert!(host.dispatcher_pid().is_none());
    assert_eq!(host.show(id)["job"]["state"], "queued");

    // The environment turns it back on, like every setting.
    let run = host
        .jobhost()
        .env("JOBHOST_AUTOSTART", "true")
        .args(["run", r"Tests\Misbehave", "ok"])
        .output()
        .unwrap();
    assert!(run.status.success());
    assert!(!String::from_utf8_lossy(&run.stderr).contains("warning"));
    host.wait_state(id, &["completed"]);
}

#[test]
fn a_dispatcher_started_on_demand_has_the_configured_slots() {
    let host = Host::standard();
    host.settings("dispatcher.slots = 3\n");
    host.enqueue(&[r"Tests\Misbehave", "sleep", "seconds=1"]);
    let pid = wait_for("a dispatcher to start", Duration::from_secs(30), || {
        host.dispatcher_pid()
    });
    let mut store = SqliteStore::open(&host.state_dir().join("jobs.sqlite3")).unwrap();
    let registered = wait_for("it to register", Duration::from_secs(30), || {
        store
            .dispatchers()
            .unwrap()
            .into_iter()
            .find(|d| d.pid == pid)
    });
    assert_eq!(registered.slots, 3);
    assert_eq!(lock_note(&host), "on-demand");
}

#[test]
fn serve_takes_over_from_an_on_demand_dispatcher_whose_running_job_completes_once() {
    let host = Host::standard();
    let mut on_demand: Child = host
        .jobhost()
        .args(["serve", "--detached", "--idle-exit", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the on-demand dispatcher", Duration::from_secs(30), || {
        host.dispatcher_pid().filter(|pid| *pid == on_demand.id())
    });
    assert_eq!(lock_note(&host), "on-demand");
    assert_eq!(serves_in(host.root()), vec![on_demand.id()]);
    let id = host.enqueue(&[r"Tests\Misbehave", "sleep", "seconds=3"]);
    host.wait_state(id, &["running"]);

    let mut serve = host.serve();
    let status = wait_for(
        "the on-demand dispatcher to exit",
        Duration::from_secs(60),
        || on_demand.try_wait().unwrap(),
    );
    assert_eq!(status.code(), Some(0), "it handed over and exited 0");
    assert_eq!(lock_note(&host), "supervised");

    let shown = host.wait_state(id, &["completed"]);
    let attempts = shown["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "it ran once: {attempts:#?}");
    assert_eq!(attempts[0]["outcome"], "ok");

    // The new one serves.
    let next = host.enqueue(&[r"Tests\Misbehave", "ok"]);
    host.wait_state(next, &["completed"]);
    assert_eq!(host.dispatcher_pid(), Some(serve.id()));

    // A second supervised serve does not take over from it.
    let second = host.run(&["serve"]);
    second.expect_code(1);
    assert!(
        second.stderr.contains("already serves"),
        "{}",
        second.stderr
    );
    assert_eq!(host.dispatcher_pid(), Some(serve.id()));
    assert!(host.stop_serve(&mut serve));
}
