//! What a dispatcher that dies leaves behind, and how the next one (on this host, or another
//! sharing the store) settles it: an attempt counts only once its worker was on record, so a
//! job claimed by a dispatcher that died before starting a worker runs again without using up
//! an attempt.

use std::time::Duration;

use jobhost::store::{now_millis, DispatcherInfo, Store};
use jobhost_e2e::{alive, wait_for, Host};
use serde_json::Value;

/// A pid no process has: one that just ended.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Enqueues a quick `--retries 0` job far in the future and stops the dispatcher `run`
/// started, so that the test can play a dispatcher that claimed it and died at once.
fn parked_job(host: &Host) -> i64 {
    let id = host.enqueue(&[
        r"Tests\Misbehave",
        "echo",
        "n=1",
        "--retries",
        "0",
        "--delay",
        "3600",
    ]);
    let pid = wait_for(
        "the dispatcher run started",
        Duration::from_secs(30),
        || host.dispatcher_pid(),
    );
    // Asked again until it is gone: a `stop` that comes before the new dispatcher answers
    // its doorbell finds nobody to ask.
    wait_for("the dispatcher to stop", Duration::from_secs(30), || {
        host.run(&["stop"]).expect_code(0);
        (!alive(pid)).then_some(())
    });
    id
}

/// Claims job `id` as a dispatcher registered with `info`, which then "dies": it starts no
/// worker and never heartbeats again.
fn claim_and_die(store: &mut dyn Store, info: &DispatcherInfo, id: i64) {
    let owner = store.register_dispatcher(info, now_millis()).unwrap();
    let due_by_then = now_millis() + 2 * 3_600_000;
    let claimed = store.claim(owner, due_by_then, 1).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, id);
}

fn outcomes(shown: &Value) -> Vec<String> {
    shown["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or("(none)").to_owned())
        .collect()
}

#[test]
fn job_claimed_by_a_dispatcher_killed_before_starting_its_worker_runs_without_using_an_attempt() {
    let host = Host::standard();
    let id = parked_job(&host);
    let mut client = host.client();
    let state_dir = client.settings().state_dir.clone();
    let info = DispatcherInfo {
        pid: dead_pid(),
        ..DispatcherInfo::this_process(2, &state_dir)
    };
    claim_and_die(client.store(), &info, id);

    // The next dispatcher on this host and state directory settles what it left.
    let mut serve = host.serve();
    let shown = host.wait_state(id, &["completed", "failed", "cancelled"]);
    assert!(host.stop_serve(&mut serve));
    assert_eq!(
        shown["job"]["state"], "completed",
        "a job with --retries 0 whose only claim never started a worker still runs: {shown:#}"
    );
    assert_eq!(outcomes(&shown), ["not started", "ok"], "{shown:#}");
    let first = &shown["attempts"][0];
    assert!(
        first["error"]
            .as_str()
            .unwrap()
            .contains("before starting a worker")
            || first["error"]
                .as_str()
                .unwrap()
                .contains("between claiming the job and starting a worker"),
        "the not-started attempt says why: {first:#}"
    );
}

#[test]
fn job_claimed_by_another_host_that_died_before_starting_its_worker_is_rescued_without_using_an_attempt(
) {
    let host = Host::standard();
    host.settings("dispatcher.lease = 2\n");
    let id = parked_job(&host);
    let mut client = host.client();
    let info = DispatcherInfo {
        host: "elsewhere.invalid".into(),
        pid: 4_000_000,
        slots: 2,
        state_dir: "/srv/jobhost/state".into(),
    };
    claim_and_die(client.store(), &info, id);

    // A dispatcher here rescues it once that one's lease has run out.
    let mut serve = host.serve();
    let shown = host.wait_state(id, &["completed", "failed", "cancelled"]);
    assert!(host.stop_serve(&mut serve));
    assert_eq!(shown["job"]["state"], "completed", "{shown:#}");
    assert_eq!(outcomes(&shown), ["not started", "ok"], "{shown:#}");
    assert!(
        shown["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("stopped heartbeating before starting a worker"),
        "{shown:#}"
    );
}

/// The live worker processes of job `id`'s attempts.
fn workers_of(host: &Host, id: i64) -> Vec<u32> {
    let marker = format!("attempts/{id}.");
    host.workers()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(&marker))
        .map(|(pid, _)| pid)
        .collect()
}

/// Waits until job `id`'s first worker is on record and has taken its go-ahead, and returns
/// its pid. On record is not yet let go (its dispatcher sends the go-ahead once the record is
/// committed); a worker that took its go-ahead has its stdin, the gate, replaced by
/// `/dev/null` before it runs anything, so that is the sign.
fn worker_on_record(host: &Host, id: i64) -> u32 {
    wait_for(
        "the job's worker on record and let go",
        Duration::from_secs(30),
        || {
            let pid = host.show(id)["attempts"][0]["pid"].as_u64()?;
            let worker = workers_of(host, id)
                .into_iter()
                .find(|&w| u64::from(w) == pid)?;
            let stdin = std::fs::read_link(format!("/proc/{worker}/fd/0")).ok()?;
            (stdin == std::path::Path::new("/dev/null")).then_some(worker)
        },
    )
}

#[test]
fn dispatcher_survives_a_database_locked_past_its_busy_timeout_and_settles_what_ran_meanwhile() {
    let host = Host::standard();
    let mut serve = host.serve();
    let dispatcher = serve.id();
    let id = host.enqueue(&[r"Tests\Misbehave", "sleep", "seconds=1", "--retries", "0"]);
    let worker = worker_on_record(&host, id);

    // Another process takes the database's write lock and keeps it past SQLite's busy timeout
    // (10 s), from before the job ends until well after its dispatcher tried to settle it.
    let database = host.state_dir().join("jobs.sqlite3");
    let holder = rusqlite::Connection::open(&database).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    wait_for("the job's worker to end", Duration::from_secs(60), || {
        (!alive(worker)).then_some(())
    });
    let busy = host.wait_log(
        "background_jobs_errors.log",
        "The job database cannot be used",
    );
    assert!(busy.contains("busy") || busy.contains("locked"), "{busy}");
    assert!(
        alive(dispatcher),
        "the dispatcher goes on while the database is locked"
    );
    let problem = wait_for(
        "stats to report the problem",
        Duration::from_secs(30),
        || {
            let stats = host.run(&["stats", "--json"]).json();
            let problem = stats["dispatcher"]["problems"][0].clone();
            (!problem.is_null()).then_some(problem)
        },
    );
    assert_eq!(
        problem["what"], "the job database cannot be used",
        "{problem:#}"
    );
    assert!(
        problem["error"].as_str().unwrap().contains("busy"),
        "{problem:#}"
    );
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);

    // What ran meanwhile is settled from what the dispatcher held, once, and work goes on.
    let shown = host.wait_state(id, &["completed", "failed", "cancelled"]);
    assert_eq!(shown["job"]["state"], "completed", "{shown:#}");
    assert_eq!(outcomes(&shown), ["ok"], "{shown:#}");
    host.wait_log("background_jobs_errors.log", "The job database recovered");
    wait_for("stats to say all is well", Duration::from_secs(30), || {
        let stats = host.run(&["stats", "--json"]).json();
        (stats["dispatcher"]["problems"] == serde_json::json!([])).then_some(())
    });
    let next = host.enqueue(&[r"Tests\Misbehave", "echo", "n=2"]);
    host.wait_state(next, &["completed"]);
    assert_eq!(
        host.dispatcher_pid(),
        Some(dispatcher),
        "the same dispatcher serves"
    );
    assert!(host.stop_serve(&mut serve));
    let started = host.logged("started", r"Tests\Misbehave@sleep");
    assert_eq!(started.len(), 1, "it ran once: {started:?}");
}

/// A small file system of its own mounted over a directory, to fill; unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            mounted.success(),
            "this test mounts a tmpfs to fill: run the suite as root, as CI does"
        );
        Self(dir.to_path_buf())
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0xA5u8; 1 << 20];
        loop {
            if let Err(e) = file.write_all(&block) {
                assert_eq!(e.raw_os_error(), Some(28), "ENOSPC, not {e}");
                return path;
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: the dispatcher may still have files open on it.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// An installation whose state directory is a [`SmallDisk`], serving; a `trace` job (its lines
/// in `runs.trace`, with the extra `params`) enqueued on it and started: its worker took the
/// space for its report and wrote its trace line (a disk that fills before that leaves the
/// worker no room, and it never starts). With its serve, the trace file, the job and its
/// worker.
struct TracedOnASmallDisk {
    // Dropped in this order: the disk is unmounted before the installation's directory goes.
    serve: std::process::Child,
    disk: SmallDisk,
    host: Host,
    trace: std::path::PathBuf,
    id: i64,
    worker: u32,
}

impl Drop for TracedOnASmallDisk {
    /// A test that failed before stopping its dispatcher leaves none running.
    fn drop(&mut self) {
        let _ = self.serve.kill();
        let _ = self.serve.wait();
    }
}

impl TracedOnASmallDisk {
    fn start(params: &[&str]) -> Self {
        let host = Host::standard();
        host.settings("defaults.retry_delay = 0\n");
        let disk = SmallDisk::mount(&host.state_dir());
        let serve = host.serve();
        let trace = host.root().join("runs.trace");
        let path = format!("path={}", trace.display());
        let mut args = vec![r"Tests\Misbehave", "trace", &path];
        args.extend_from_slice(params);
        let id = host.enqueue(&args);
        let worker = worker_on_record(&host, id);
        wait_for("the job to start", Duration::from_secs(60), || {
            std::fs::read_to_string(&trace)
                .ok()
                .filter(|runs| runs.lines().count() == 1)
        });
        Self {
            serve,
            disk,
            host,
            trace,
            id,
            worker,
        }
    }
}

#[test]
fn job_that_ends_while_the_state_disk_is_full_is_settled_from_its_report_and_never_run_again() {
    let mut t = TracedOnASmallDisk::start(&["seconds=2"]);

    // The state disk fills up while the job runs; it ends meanwhile.
    let filler = t.disk.fill();
    wait_for("the job's worker to end", Duration::from_secs(60), || {
        (!alive(t.worker)).then_some(())
    });
    assert!(alive(t.serve.id()), "the dispatcher goes on on a full disk");
    std::fs::remove_file(filler).unwrap();

    let shown = t
        .host
        .wait_state(t.id, &["completed", "failed", "cancelled"]);
    assert_eq!(shown["job"]["state"], "completed", "{shown:#}");
    assert_eq!(outcomes(&shown), ["ok"], "{shown:#}");
    assert_eq!(
        shown["job"]["result"]["pid"].as_u64(),
        Some(u64::from(t.worker)),
        "the result its worker reported: {shown:#}"
    );
    let runs = std::fs::read_to_string(&t.trace).unwrap();
    assert_eq!(runs.lines().count(), 1, "it ran once: {runs}");
    assert!(t.host.stop_serve(&mut t.serve));
}

#[test]
fn output_that_cannot_be_saved_on_a_full_disk_loses_the_output_not_the_outcome() {
    // Outside the state disk: the job prints once this exists.
    let outside = tempfile::tempdir().unwrap();
    let go = outside.path().join("print-now");
    let print_when = format!("print_when={}", go.display());
    let mut t = TracedOnASmallDisk::start(&["seconds=0", &print_when]);

    // The state disk is full when the job prints: its output cannot be kept. The disk gets
    // room again once the worker ended (the job's settling needs some).
    let filler = t.disk.fill();
    std::fs::write(&go, "").unwrap();
    wait_for("the job's worker to end", Duration::from_secs(60), || {
        (!alive(t.worker)).then_some(())
    });
    std::fs::remove_file(filler).unwrap();
    let shown = t
        .host
        .wait_state(t.id, &["completed", "failed", "cancelled"]);

    assert_eq!(shown["job"]["state"], "completed", "{shown:#}");
    assert_eq!(
        outcomes(&shown),
        ["ok"],
        "settled from its report: {shown:#}"
    );
    let runs = std::fs::read_to_string(&t.trace).unwrap();
    assert_eq!(runs.lines().count(), 1, "it ran once: {runs}");
    let warned = t
        .host
        .wait_log("background_jobs_errors.log", "Attempt output not saved");
    assert!(warned.contains("No space left on device"), "{warned}");
    assert!(t.host.stop_serve(&mut t.serve));
}

#[test]
fn adopted_worker_killed_while_its_new_dispatcher_runs_is_not_said_to_have_ended_while_it_was_down()
{
    let host = Host::standard();
    let mut first = host.serve();
    let id = host.enqueue(&[r"Tests\Misbehave", "sleep", "seconds=60", "--retries", "0"]);
    let worker = worker_on_record(&host, id);
    first.kill().unwrap();
    first.wait().unwrap();

    // The next dispatcher adopts the worker, which is then killed while that one watches.
    let mut second = host.serve();
    host.wait_log(
        "background_jobs_errors.log",
        &format!("Adopting attempt 1 of job {id}"),
    );
    std::process::Command::new("kill")
        .args(["-9", &worker.to_string()])
        .status()
        .unwrap();
    let shown = host.wait_state(id, &["completed", "failed", "cancelled"]);
    assert_eq!(outcomes(&shown), ["lost"], "{shown:#}");
    let error = shown["attempts"][0]["error"].as_str().unwrap();
    assert!(error.contains("adopted worker ended"), "{error}");
    assert!(!error.contains("while its dispatcher was down"), "{error}");
    assert!(host.stop_serve(&mut second));
}

#[test]
fn a_claim_whose_workers_cannot_be_recorded_starts_none_of_them_and_the_job_runs_once_later() {
    let host = Host::standard();
    let serve = host.serve();
    // Registered, so the database is there and migrated.
    let location = jobhost::store::StoreLocation::in_state_dir(&host.state_dir());
    host.registered(&mut *jobhost::store::open(&location).unwrap());
    let database = rusqlite::Connection::open(host.state_dir().join("jobs.sqlite3")).unwrap();
    claim_not_stored_starts_no_worker(
        &host,
        serve,
        || {
            database
                .execute_batch(
                    "CREATE TRIGGER refuse_workers BEFORE UPDATE OF pid ON attempts \
                     BEGIN SELECT RAISE(ABORT, 'no worker may be recorded'); END",
                )
                .unwrap()
        },
        || {
            database
                .execute_batch("DROP TRIGGER refuse_workers")
                .unwrap()
        },
    );
}

/// With the store refusing to record any worker (`refuse`, which makes it fail with "no worker
/// may be recorded"), a job's claim is rolled back after its worker was spawned: that worker
/// does not start, and the job waits, without an attempt, until workers can be recorded again
/// (`allow`); then it runs once, as its first attempt.
pub fn claim_not_stored_starts_no_worker(
    host: &Host,
    mut serve: std::process::Child,
    refuse: impl FnOnce(),
    allow: impl FnOnce(),
) {
    refuse();
    let trace = host.root().join("runs.trace");
    let path = format!("path={}", trace.display());
    let id = host.enqueue(&[r"Tests\Misbehave", "trace", &path, "seconds=0"]);
    host.wait_log(
        "background_jobs_errors.log",
        &format!("the claim of job(s) {id} was not stored"),
    );
    let errors = host.log("background_jobs_errors.log");
    assert!(
        errors
            .iter()
            .any(|l| l.contains("no worker may be recorded")),
        "the store's refusal is logged: {errors:#?}"
    );
    wait_for("its worker to end", Duration::from_secs(30), || {
        workers_of(host, id).is_empty().then_some(())
    });
    let shown = host.show(id);
    assert_eq!(shown["job"]["state"], "queued", "{shown:#}");
    assert_eq!(
        shown["attempts"].as_array().map(Vec::len),
        Some(0),
        "{shown:#}"
    );
    assert!(!trace.exists(), "no plugin code ran");

    // Once workers can be recorded, the job runs, once, as its first attempt.
    allow();
    let shown = host.wait_state(id, &["completed", "failed", "cancelled"]);
    assert_eq!(shown["job"]["state"], "completed", "{shown:#}");
    assert_eq!(outcomes(&shown), ["ok"], "{shown:#}");
    let runs = std::fs::read_to_string(&trace).unwrap();
    assert_eq!(runs.lines().count(), 1, "it ran once: {runs}");
    assert!(host.stop_serve(&mut serve));
}
