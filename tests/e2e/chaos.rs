//! The chaos test: 2,000 jobs drained through ten `kill -9`s of the dispatcher, each at a random
//! moment and followed by a restart, and a worker `kill -9`ed now and then; half the jobs are
//! allowed no retry. Every job is `Tests\Misbehave@trace`, which appends `JOB_ID ATTEMPT PID`
//! to a trace file as it starts: whatever the store says, the trace says which attempts really
//! ran, and how often. Once the last dispatcher has drained the queue, every job must be in the
//! state its attempts justify ([`judge`]); the figures are printed on one line starting
//! `chaos:` (run with `--no-capture` to see them when the test passes).
//!
//! The random choices come from a seeded generator, whose seed is printed:
//! `JOBHOST_CHAOS_SEED` replays which jobs have no retries and the dispatcher kills (how far
//! the queue has drained at each, the moment after that, whether a worker dies while no
//! dispatcher runs, how long the dispatcher stays down). Which workers die when, and what each
//! kill hits, depend on the machine's timing.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::Path,
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use jobhost::{
    store::{Attempt, JobId, JobRecord, JobState, Store},
    Job,
};
use jobhost_e2e::{wait_for, Host};
use serde_json::{json, Value};

const CLASS: &str = r"Tests\Misbehave";
const JOBS: usize = 2000;
const DISPATCHER_KILLS: usize = 10;
/// Retries of the jobs that may retry at all.
const RETRIES: u32 = 2;
/// How long each job sleeps after tracing its run: quick, yet long enough to be killed mid-run.
const JOB_SECONDS: f64 = 0.02;
const SLOTS: usize = 4;
/// The longest wait between two worker kills.
const WORKER_KILL_EVERY: Duration = Duration::from_millis(2000);
/// The longest wait between reaching a kill's share of the queue and the kill.
const KILL_MOMENT: Duration = Duration::from_millis(250);
/// The longest time the dispatcher stays down: its orphaned workers run on, unwatched.
const DOWN_FOR: Duration = Duration::from_millis(500);
/// How long one stretch of draining may take, even on a loaded machine.
const DRAIN_DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn jobs_end_as_their_attempts_justify_through_ten_dispatcher_kill_9s_and_killed_workers() {
    let clock = Instant::now();
    let (seed, mut rng) = Rng::from_env();
    println!("chaos seed {seed}: JOBHOST_CHAOS_SEED={seed} replays its choices");
    let host = Host::standard();
    host.settings(&format!("dispatcher.slots = {SLOTS}\n"));
    let trace = host.root().join("trace.log");
    let mut serve = host.serve();
    // Enqueued once the dispatcher answers its doorbell: a wake-up that found none would start
    // a dispatcher on demand, one the test does not hold and could not kill.
    let doorbell = jobhost::queue::StatePaths::new(&host.state_dir()).doorbell;
    wait_for("the dispatcher's doorbell", Duration::from_secs(30), || {
        doorbell.exists().then_some(())
    });
    let mut client = host.client();
    let no_retries: Vec<bool> = (0..JOBS).map(|_| rng.below(2) == 0).collect();
    let mut ids = Vec::new();
    for batch in no_retries.chunks(500) {
        let jobs = batch.iter().map(|&none| {
            Job::new(CLASS, "trace")
                .param("path", &trace)
                .param("seconds", JOB_SECONDS)
                .retries(if none { 0 } else { RETRIES })
                .retry_delay(Duration::ZERO)
        });
        ids.extend(client.dispatch_batch(jobs).unwrap());
    }

    let plan: Vec<DispatcherKill> = (0..DISPATCHER_KILLS)
        .map(|_| DispatcherKill::draw(&mut rng))
        .collect();
    let mut chaos = Chaos {
        host: &host,
        trace: &trace,
        // Which workers die, and when, depends on the machine's timing: their draws must not
        // shift the plan's.
        rng: Rng::seeded(rng.next()),
        next_worker_kill: Instant::now(),
        worker_kills: 0,
    };
    chaos.schedule_worker_kill();
    let (mut dispatcher_kills, mut orphan_kills) = (0, 0);
    let mut drained = true;
    for kill in &plan {
        drained = chaos.drain_until(&mut *client.store(), kill.done);
        if !drained {
            break;
        }
        std::thread::sleep(kill.moment);
        serve.kill().unwrap();
        serve.wait().unwrap();
        dispatcher_kills += 1;
        if kill.orphan && chaos.kill_a_worker() {
            orphan_kills += 1;
        }
        std::thread::sleep(kill.down_for);
        serve = host.serve();
    }
    if drained {
        drained = chaos.drain_until(&mut *client.store(), JOBS as u64);
    }
    let worker_kills = chaos.worker_kills;
    host.stop_serve(&mut serve);
    // No run may still be going on when the trace is read.
    let start = Instant::now();
    let mut workers = host.workers();
    while !workers.is_empty() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
        workers = host.workers();
    }

    let verdict = judge(&mut *client.store(), &host, &ids, &read_traces(&trace));
    let figures = format!(
        "chaos: jobs {JOBS} ({} with --retries 0), dispatcher kills {dispatcher_kills}, worker \
         kills {} ({orphan_kills} while no dispatcher ran), {}; attempt outcomes {:?}, claims that \
         never ran {}; {:.1} s, seed {seed}",
        no_retries.iter().filter(|&&none| none).count(),
        worker_kills + orphan_kills,
        verdict.figures(),
        verdict.outcomes,
        verdict.unrun_attempts,
        clock.elapsed().as_secs_f64(),
    );
    println!("{figures}");
    let mut stuck = String::new();
    if !drained {
        stuck += &format!(
            "the queue did not drain within {DRAIN_DEADLINE:?} after kill {dispatcher_kills}\n"
        );
    }
    if !workers.is_empty() {
        stuck += &format!("workers still running a minute after the drain: {workers:?}\n");
    }
    assert!(
        verdict.findings.is_empty() && stuck.is_empty(),
        "{figures}\n{stuck}{}",
        verdict.report(40)
    );
}

/// One `kill -9` of the dispatcher, as the plan drawn from the seed has it.
struct DispatcherKill {
    /// How many jobs are finished first: 2 % to 92 % of them.
    done: u64,
    /// How long after that.
    moment: Duration,
    /// Whether a worker is killed while no dispatcher runs.
    orphan: bool,
    /// How long the dispatcher stays down.
    down_for: Duration,
}

impl DispatcherKill {
    fn draw(rng: &mut Rng) -> Self {
        Self {
            done: (JOBS / 50) as u64 + rng.below((JOBS * 9 / 10) as u64),
            moment: rng.up_to(KILL_MOMENT),
            orphan: rng.below(2) == 0,
            down_for: rng.up_to(DOWN_FOR),
        }
    }
}

/// The test's hand on the installation while the queue drains.
struct Chaos<'a> {
    host: &'a Host,
    trace: &'a Path,
    rng: Rng,
    next_worker_kill: Instant,
    /// Workers killed while a dispatcher watched them.
    worker_kills: usize,
}

impl Chaos<'_> {
    fn schedule_worker_kill(&mut self) {
        self.next_worker_kill = Instant::now() + self.rng.up_to(WORKER_KILL_EVERY);
    }

    /// Waits (generously: [`DRAIN_DEADLINE`]) until `done` jobs are finished, killing a worker
    /// now and then. Returns whether they are: if not, the jobs that never finish are judged.
    fn drain_until(&mut self, store: &mut dyn Store, done: u64) -> bool {
        let start = Instant::now();
        while start.elapsed() < DRAIN_DEADLINE {
            // With no traced worker to kill right now, the next look tries again.
            if Instant::now() >= self.next_worker_kill && self.kill_a_worker() {
                self.worker_kills += 1;
                self.schedule_worker_kill();
            }
            // The store may be busy for a moment: then look again.
            if store
                .unfinished()
                .is_ok_and(|unfinished| JOBS as u64 - unfinished >= done)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Kills (SIGKILL) a live worker of the installation, chosen at random among those whose
    /// job has traced its run: a job killed mid-run, never one whose run left no trace.
    /// Returns whether it killed one.
    fn kill_a_worker(&mut self) -> bool {
        let traces = read_traces(self.trace);
        let traced: Vec<u32> = self
            .host
            .workers()
            .into_iter()
            .filter(|(pid, cmdline)| {
                worker_attempt(cmdline).is_some_and(|(job, attempt)| {
                    traces
                        .get(&job)
                        .is_some_and(|runs| runs.contains(&Traced { attempt, pid: *pid }))
                })
            })
            .map(|(pid, _)| pid)
            .collect();
        if traced.is_empty() {
            return false;
        }
        let pid = traced[self.rng.below(traced.len() as u64) as usize];
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .output()
            .unwrap()
            .status
            .success()
    }
}

/// The job id and attempt a worker runs, from its command line (`jobhost __worker REQUEST`).
fn worker_attempt(cmdline: &str) -> Option<(JobId, u32)> {
    let number_after = |key: &str| -> Option<u64> {
        let rest = &cmdline[cmdline.find(key)? + key.len()..];
        let end = rest.find(|c: char| !c.is_ascii_digit())?;
        rest[..end].parse().ok()
    };
    let job = number_after(r#""job_id":""#)?;
    let attempt = number_after(r#""attempt":"#)?;
    Some((JobId::try_from(job).ok()?, u32::try_from(attempt).ok()?))
}

/// One run of a job, as its trace line tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Traced {
    attempt: u32,
    pid: u32,
}

/// The trace file: each job's runs, in the order they started. A last line without its newline
/// (a worker writing it right now) is left out.
fn read_traces(path: &Path) -> BTreeMap<JobId, Vec<Traced>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut traces: BTreeMap<JobId, Vec<Traced>> = BTreeMap::new();
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [job, attempt, pid] = fields[..] else {
            panic!("a trace line is JOB ATTEMPT PID: {line:?}");
        };
        let number = |field: &str| -> u64 {
            field
                .parse()
                .unwrap_or_else(|_| panic!("a number in trace line {line:?}"))
        };
        traces
            .entry(number(job) as JobId)
            .or_default()
            .push(Traced {
                attempt: number(attempt) as u32,
                pid: number(pid) as u32,
            });
    }
    traces
}

/// Whether `label` is one of the outcomes the host names: those of `jobhost::job::outcome::Outcome`
/// (`ok`, `error`, `crashed: SIGNAL`, `timed out`, `cancelled`, `exited without a result: code
/// N`, `lost`, `not started`) and the dispatcher's `interrupted: the dispatcher shut down`.
fn is_named(label: &str) -> bool {
    const EXACT: [&str; 7] = [
        "ok",
        "error",
        "timed out",
        "cancelled",
        "lost",
        "not started",
        "interrupted: the dispatcher shut down",
    ];
    let signal = label.strip_prefix("crashed: SIG").is_some_and(|name| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    });
    let code = label
        .strip_prefix("exited without a result: code ")
        .is_some_and(|code| code.parse::<i32>().is_ok());
    EXACT.contains(&label) || signal || code
}

/// What is wrong with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Finding {
    /// Not finished when the queue was drained (or not in the store at all).
    Lost,
    /// It ran again after a run that succeeded, or one attempt of it ran twice.
    RanTwice,
    /// An attempt without an outcome, with one the host does not name, or with one its worker's
    /// report contradicts.
    WronglyNamed,
    /// Failed, and no attempt of it ever ran.
    FailedWithoutRun,
    /// Failed although attempts that never ran used up part of its budget, or after a success.
    WronglyFailed,
    /// Completed, but not by exactly one successful attempt that was its last and whose result
    /// names it.
    WronglyCompleted,
    /// It ran in an attempt the store does not know.
    UnrecordedRun,
}

impl Finding {
    const ALL: [Finding; 7] = [
        Finding::Lost,
        Finding::RanTwice,
        Finding::WronglyNamed,
        Finding::FailedWithoutRun,
        Finding::WronglyFailed,
        Finding::WronglyCompleted,
        Finding::UnrecordedRun,
    ];

    fn name(self) -> &'static str {
        match self {
            Finding::Lost => "lost",
            Finding::RanTwice => "ran twice",
            Finding::WronglyNamed => "wrongly named",
            Finding::FailedWithoutRun => "failed without a run",
            Finding::WronglyFailed => "failed with attempts that never ran",
            Finding::WronglyCompleted => "wrongly completed",
            Finding::UnrecordedRun => "unrecorded runs",
        }
    }
}

/// What [`judge`] found.
#[derive(Default)]
struct Verdict {
    /// Each finding: what, about which job, and the job's story.
    findings: Vec<(Finding, JobId, String)>,
    /// How many attempts ended with each outcome.
    outcomes: BTreeMap<String, usize>,
    /// Attempts the store recorded whose job never ran in them (claims whose worker never
    /// started).
    unrun_attempts: usize,
}

impl Verdict {
    /// `lost N, ran twice N, ...`: how many jobs have each finding.
    fn figures(&self) -> String {
        Finding::ALL
            .iter()
            .map(|&kind| {
                let jobs: BTreeSet<JobId> = self
                    .findings
                    .iter()
                    .filter(|(k, _, _)| *k == kind)
                    .map(|(_, id, _)| *id)
                    .collect();
                format!("{} {}", kind.name(), jobs.len())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The first `max` findings, one per line.
    fn report(&self, max: usize) -> String {
        let mut sorted: Vec<&(Finding, JobId, String)> = self.findings.iter().collect();
        sorted.sort_by_key(|(kind, id, _)| (*kind, *id));
        let mut text = String::new();
        for (kind, id, why) in sorted.iter().take(max) {
            let _ = writeln!(text, "job {id}: {}: {why}", kind.name());
        }
        if sorted.len() > max {
            let _ = writeln!(text, "... and {} more", sorted.len() - max);
        }
        text
    }
}

/// Judges every job of `ids` by its record in `store`, its attempts' report files under the
/// installation's state directory and its runs in `traces`:
///
/// - it is finished: `completed` or `failed`;
/// - every attempt is finished and named ([`is_named`]); a report of success is `ok` and `ok`
///   has one; `lost` has no report; `not started` did not run;
/// - every run is an attempt of the store's, no attempt ran twice, and nothing ran, nor was
///   attempted, after a success;
/// - `completed`: exactly one attempt is `ok`, the last, it ran, and the job's result names it;
/// - `failed`: no attempt is `ok`, and attempts that ran used up its whole budget of
///   `retries + 1` (every outcome of this job is retryable): at least one ran, and none that did
///   not was counted.
fn judge(
    store: &mut dyn Store,
    host: &Host,
    ids: &[JobId],
    traces: &BTreeMap<JobId, Vec<Traced>>,
) -> Verdict {
    let mut verdict = Verdict::default();
    for &id in ids {
        let Some((job, attempts)) = store.job(id).unwrap() else {
            verdict
                .findings
                .push((Finding::Lost, id, "not in the store".into()));
            continue;
        };
        let runs = traces.get(&id).map(Vec::as_slice).unwrap_or_default();
        let reports: BTreeMap<u32, Option<String>> = attempts
            .iter()
            .filter_map(|a| Some((a.attempt, report_status(host, id, a.attempt)?)))
            .collect();
        for attempt in &attempts {
            let label = attempt.outcome.as_deref().unwrap_or("(none)");
            *verdict.outcomes.entry(label.to_owned()).or_default() += 1;
            if !runs.iter().any(|r| r.attempt == attempt.attempt) {
                verdict.unrun_attempts += 1;
            }
        }
        let story = story(&job, &attempts, runs, &reports);
        for (finding, why) in judge_job(&job, &attempts, runs, &reports) {
            verdict
                .findings
                .push((finding, id, format!("{why}; {story}")));
        }
    }
    verdict
}

/// The `status` of attempt `attempt`'s report file (`ok` or `error`), `Some(None)` for a report
/// that cannot be read as one, `None` for none.
fn report_status(host: &Host, id: JobId, attempt: u32) -> Option<Option<String>> {
    let bytes = std::fs::read(host.report_path(id, attempt)).ok()?;
    let report: Option<Value> = serde_json::from_slice(&bytes).ok();
    Some(report.and_then(|r| r["status"].as_str().map(str::to_owned)))
}

/// What is wrong with one job, each with why. See [`judge`].
fn judge_job(
    job: &JobRecord,
    attempts: &[Attempt],
    runs: &[Traced],
    reports: &BTreeMap<u32, Option<String>>,
) -> Vec<(Finding, String)> {
    let mut found = Vec::new();
    let reported_ok = |n: u32| reports.get(&n).is_some_and(|s| s.as_deref() == Some("ok"));
    let ran = |n: u32| runs.iter().any(|r| r.attempt == n);
    if !matches!(job.state, JobState::Completed | JobState::Failed) {
        found.push((Finding::Lost, format!("{} after the drain", job.state)));
    }

    for a in attempts {
        let n = a.attempt;
        let why = match (a.outcome.as_deref(), a.finished_at) {
            (None, _) | (_, None) => Some("no outcome".to_owned()),
            (Some(label), _) if !is_named(label) => Some(format!("unknown outcome {label:?}")),
            (Some(label), _) if reported_ok(n) && label != "ok" => {
                Some(format!("its worker reported ok, recorded {label:?}"))
            }
            (Some("ok"), _) if !reported_ok(n) => Some("ok without a report of ok".to_owned()),
            (Some("lost"), _) if reports.contains_key(&n) => {
                Some("lost although its worker's report exists".to_owned())
            }
            (Some("not started"), _) if ran(n) => Some("not started, yet it ran".to_owned()),
            _ => None,
        };
        if let Some(why) = why {
            found.push((Finding::WronglyNamed, format!("attempt {n}: {why}")));
        }
    }

    let numbers: BTreeSet<u32> = attempts.iter().map(|a| a.attempt).collect();
    for (i, run) in runs.iter().enumerate() {
        if !numbers.contains(&run.attempt) {
            found.push((
                Finding::UnrecordedRun,
                format!(
                    "ran as attempt {}, which the store does not have",
                    run.attempt
                ),
            ));
        }
        if runs[..i].iter().any(|r| r.attempt == run.attempt) {
            found.push((
                Finding::RanTwice,
                format!("attempt {} ran twice", run.attempt),
            ));
        }
    }
    let success = attempts
        .iter()
        .filter(|a| is_ok(a) || reported_ok(a.attempt))
        .map(|a| a.attempt)
        .min();
    if let Some(first) = success {
        let later_runs: Vec<u32> = runs
            .iter()
            .map(|r| r.attempt)
            .filter(|&n| n > first)
            .collect();
        let later_attempts: Vec<u32> = numbers.iter().copied().filter(|&n| n > first).collect();
        if !later_runs.is_empty() || !later_attempts.is_empty() {
            found.push((
                Finding::RanTwice,
                format!(
                    "attempt {first} succeeded, then attempts {later_attempts:?} were made and \
                     {later_runs:?} ran"
                ),
            ));
        }
    }

    let oks: Vec<u32> = attempts
        .iter()
        .filter(|a| is_ok(a))
        .map(|a| a.attempt)
        .collect();
    match job.state {
        JobState::Completed => {
            let last = attempts.last().map(|a| a.attempt);
            let why = match oks[..] {
                [n] if Some(n) != last => Some(format!("ok attempt {n} is not the last")),
                [n] if !ran(n) => Some(format!("ok attempt {n} never ran")),
                [n] => {
                    let pid = runs.iter().find(|r| r.attempt == n).map(|r| r.pid);
                    let expected = json!({"job_id": job.id.to_string(), "attempt": n, "pid": pid});
                    (job.result.as_ref() != Some(&expected))
                        .then(|| format!("result {:?}, not {expected}", job.result))
                }
                _ => Some(format!("{} ok attempts", oks.len())),
            };
            if let Some(why) = why {
                found.push((Finding::WronglyCompleted, why));
            }
        }
        JobState::Failed => {
            let budget = job.retries + 1;
            let ran_attempts = numbers.iter().filter(|&&n| ran(n)).count();
            if !oks.is_empty() {
                found.push((
                    Finding::WronglyFailed,
                    format!("failed after ok attempt {oks:?}"),
                ));
            } else if ran_attempts == 0 {
                found.push((Finding::FailedWithoutRun, "no attempt ran".into()));
            } else if (ran_attempts as u32) < budget {
                found.push((
                    Finding::WronglyFailed,
                    format!("{ran_attempts} of its {budget} attempts ran"),
                ));
            }
        }
        _ => {}
    }
    found
}

fn is_ok(attempt: &Attempt) -> bool {
    attempt.outcome.as_deref() == Some("ok")
}

/// One line telling a job's life: its state, each attempt (outcome, error, pid, report) and
/// its runs.
fn story(
    job: &JobRecord,
    attempts: &[Attempt],
    runs: &[Traced],
    reports: &BTreeMap<u32, Option<String>>,
) -> String {
    let attempts: Vec<String> = attempts
        .iter()
        .map(|a| {
            let report = match reports.get(&a.attempt) {
                None => "no report".to_owned(),
                Some(status) => format!("report {}", status.as_deref().unwrap_or("unreadable")),
            };
            format!(
                "#{} {} ({}; pid {:?}, dispatcher {:?}, {report})",
                a.attempt,
                a.outcome.as_deref().unwrap_or("(none)"),
                a.error.as_deref().unwrap_or("no error"),
                a.pid,
                a.dispatcher,
            )
        })
        .collect();
    let runs: Vec<String> = runs
        .iter()
        .map(|r| format!("#{} pid {}", r.attempt, r.pid))
        .collect();
    format!(
        "{} with retries {} ({} of {} attempts counted): attempts [{}], runs [{}]",
        job.state,
        job.retries,
        job.attempts,
        job.max_attempts,
        attempts.join(", "),
        runs.join(", "),
    )
}

/// A small seeded generator (xorshift64*): the test's choices, replayable from the seed.
struct Rng(u64);

impl Rng {
    /// The generator seeded by `JOBHOST_CHAOS_SEED`, or by the clock; and its seed.
    fn from_env() -> (u64, Self) {
        let seed = match std::env::var("JOBHOST_CHAOS_SEED") {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                panic!("JOBHOST_CHAOS_SEED={text:?} is not a number from 0 to 2^64 - 1")
            }),
            Err(_) => SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        };
        (seed, Self::seeded(seed))
    }

    /// The generator seeded by `seed`.
    fn seeded(seed: u64) -> Self {
        // splitmix64's mix spreads any seed, and the low bit keeps the state off zero, where
        // xorshift would stay.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (more than 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A duration from zero to `max`, to the microsecond.
    fn up_to(&mut self, max: Duration) -> Duration {
        Duration::from_micros(self.below(max.as_micros() as u64 + 1))
    }
}
