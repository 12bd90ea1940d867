//! Following a job (`jobhost wait`, `run --wait`) costs its dispatcher nothing: a follower is
//! woken by the dispatcher's ring on its own doorbell and sees that a dispatcher serves without
//! waking it, so the queue changes the dashboard announces, and the dispatcher's CPU time, are
//! those of the job alone, however many follow it.

use std::{
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use jobhost_e2e::{wait_for, Host};

use crate::dashboard::Dashboard;

/// How long without a change event means everything so far was announced: an event follows
/// a change within 200 ms (`MIN_GAP` of the event stream).
const QUIET: Duration = Duration::from_secs(2);

/// What the dashboard's change events said so far, kept up to date by a reader thread: the
/// number of queue changes (each event carries the count) and of events.
struct Announced {
    changes: Arc<AtomicU64>,
    events: Arc<AtomicU64>,
}

impl Announced {
    fn subscribe(d: &Dashboard) -> Self {
        let lines = d.events(&d.login());
        let changes = Arc::new(AtomicU64::new(0));
        let events = Arc::new(AtomicU64::new(0));
        let (c, e) = (Arc::clone(&changes), Arc::clone(&events));
        std::thread::spawn(move || {
            for line in lines {
                if let Some(count) = line.strip_prefix("data: ") {
                    c.store(count.parse().unwrap(), Ordering::SeqCst);
                    e.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Self { changes, events }
    }

    fn now(&self) -> (u64, u64) {
        (
            self.changes.load(Ordering::SeqCst),
            self.events.load(Ordering::SeqCst),
        )
    }

    /// (changes, events) once nothing was announced for [`QUIET`].
    fn settled(&self) -> (u64, u64) {
        let (mut last, mut since) = (self.now(), Instant::now());
        wait_for(
            "the change events to settle",
            Duration::from_secs(60),
            || {
                let now = self.now();
                if now != last {
                    (last, since) = (now, Instant::now());
                }
                (since.elapsed() >= QUIET).then_some(now)
            },
        )
    }
}

/// The CPU time process `pid` used so far (user and system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // utime and stime: fields 14 and 15 of stat(5), the 12th and 13th after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// What one followed job cost its dispatcher.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cost {
    changes: u64,
    events: u64,
    cpu_ticks: u64,
}

/// Runs a 5 s job followed by `followers` `jobhost wait` processes, each of which must exit 0.
fn followed_job(d: &Dashboard, announced: &Announced, serve: u32, followers: usize) -> Cost {
    let (changes, events) = announced.settled();
    let ticks = cpu_ticks(serve);
    let id = d
        .host
        .enqueue(&[r"Tests\Misbehave", "sleep", "seconds=5"])
        .to_string();
    let waiting: Vec<Child> = (0..followers)
        .map(|_| {
            d.host
                .jobhost()
                .args(["wait", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for follower in waiting {
        let status = follower.wait_with_output().unwrap().status;
        assert_eq!(status.code(), Some(0), "a follower of job {id}");
    }
    d.host.wait_state(id.parse().unwrap(), &["completed"]);
    let (changes_after, events_after) = announced.settled();
    Cost {
        changes: changes_after - changes,
        events: events_after - events,
        cpu_ticks: cpu_ticks(serve) - ticks,
    }
}

#[test]
fn ten_followers_of_a_job_cost_its_dispatcher_no_change_and_no_event() {
    let d = Dashboard::start_in(Host::standard(), "");
    let serve = d.serve.as_ref().unwrap().id();
    let announced = Announced::subscribe(&d);
    // The first job of an installation also brings its plugin catalog up to date.
    followed_job(&d, &announced, serve, 0);
    let alone = followed_job(&d, &announced, serve, 0);
    let followed = followed_job(&d, &announced, serve, 10);
    let hz = 100.0; // USER_HZ, the unit of /proc/PID/stat times on Linux
    eprintln!(
        "dispatcher cost of a 5 s job: alone {} changes, {} events, {:.2} s CPU; \
         with 10 followers {} changes, {} events, {:.2} s CPU",
        alone.changes,
        alone.events,
        alone.cpu_ticks as f64 / hz,
        followed.changes,
        followed.events,
        followed.cpu_ticks as f64 / hz,
    );
    // Enqueued (the doorbell), claimed, settled.
    assert!(alone.changes <= 4, "the job's own transitions: {alone:?}");
    assert!(
        followed.changes <= alone.changes,
        "followers changed nothing: {followed:?} against {alone:?}"
    );
    assert!(
        followed.events <= alone.changes,
        "no event beyond the job's own changes: {followed:?}"
    );
}

#[test]
fn wait_follows_a_job_enqueued_earlier_and_exits_like_run_wait() {
    let host = Host::standard();
    let ok = host.enqueue(&[r"Tests\Misbehave", "ok"]).to_string();
    let waited = host.run(&["wait", &ok]);
    waited.expect_code(0);
    assert_eq!(waited.stdout.trim(), r#"{"ok":true}"#);
    // A job that ended before `wait` started: its end, at once.
    host.run(&["wait", &ok]).expect_code(0);

    let failing = host
        .enqueue(&[r"Tests\Misbehave", "fail_permanent"])
        .to_string();
    let failed = host.run(&["wait", &failing]);
    failed.expect_code(4);
    assert!(
        failed.stderr.contains(&format!("job {failing} failed")),
        "{}",
        failed.stderr
    );

    let later = host
        .enqueue(&[r"Tests\Misbehave", "ok", "--delay", "3600"])
        .to_string();
    host.run(&["cancel", &later]).expect_code(0);
    host.run(&["wait", &later]).expect_code(5);

    let unknown = host.run(&["wait", "424242"]);
    unknown.expect_code(2);
    assert!(
        unknown.stderr.contains("no job with id 424242"),
        "{}",
        unknown.stderr
    );
}
