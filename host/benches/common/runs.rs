//! Runs of real dispatchers that several benches measure the same way: where the jobs are
//! ([`Backend`]: SQLite, or a throwaway PostgreSQL database), the drain of a backlog by one
//! or more idle dispatchers with the CPU each side used ([`drain`], [`Drain`]), the pickup
//! latency of an idle dispatcher ([`pickup_latency`], [`Latency`]), waiting for a drain to
//! end ([`wait_completed`]), and a state directory kept free of dispatchers while a backlog is
//! enqueued ([`Muted`]).

use std::{
    collections::BTreeMap,
    path::Path,
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{ensure, Context as _};
use jobhost::{
    config::settings::Runner,
    platform::{Doorbell, FileLock},
    store::{DispatcherId, JobId, JobState},
    Client, Job,
};
use jobhost_testing::TestDatabase;
use serde_json::Value;

use super::{
    cpu::{live_children_cpu, named_processes_cpu, named_processes_used, process_cpu, CpuMeter},
    dispatch_in_batches, ensure_in_state, machine_busy, ms, AttemptRunner, Installation, Measured,
    Served, ALLOWLIST, CLASS, CLOCK, OK, SETTINGS,
};

/// How often a drain is checked.
pub const POLL: Duration = Duration::from_millis(10);

// ----- stores -----

/// Where a measurement's jobs are.
pub enum Backend {
    /// SQLite, in each installation's state directory: one dispatcher only.
    Sqlite,
    /// A throwaway PostgreSQL database, shared by the installations.
    Postgres(TestDatabase),
}

impl Backend {
    /// A new throwaway PostgreSQL database on the server `JOBHOST_TEST_POSTGRES` names (see
    /// [`TestDatabase`]), dropped with it.
    pub fn postgres() -> anyhow::Result<Self> {
        TestDatabase::try_create()
            .map(Self::Postgres)
            .map_err(anyhow::Error::msg)
    }

    /// `SQLite` or `PostgreSQL`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres(_) => "PostgreSQL",
        }
    }

    /// The `jobhost.toml` of an installation on it: [`SETTINGS`], and the store.
    pub fn settings(&self) -> String {
        self.settings_with(SETTINGS)
    }

    /// The `jobhost.toml` of an installation on it: `settings`, and the store.
    pub fn settings_with(&self, settings: &str) -> String {
        match self {
            Self::Sqlite => settings.to_owned(),
            // A JSON string is a TOML basic string.
            Self::Postgres(db) => format!("store = {}\n{settings}", Value::from(db.url())),
        }
    }

    /// `dispatchers` installations `name-N` on it under `scratch`, with `settings` (the rest
    /// of `jobhost.toml`, as for [`Backend::settings_with`]).
    pub fn installations(
        &self,
        scratch: &Path,
        fixture: &Path,
        name: &str,
        dispatchers: usize,
        settings: &str,
    ) -> anyhow::Result<Vec<Installation>> {
        (0..dispatchers)
            .map(|n| {
                let name = format!("{name}-{n}");
                let settings = self.settings_with(settings);
                Installation::create(scratch, &name, fixture, ALLOWLIST, &settings)
            })
            .collect()
    }
}

// ----- drains -----

/// How many jobs completed by when, as [`wait_completed`] saw it.
pub struct Completed {
    /// When the last one completed, from the start given.
    pub wall: Duration,
    /// When the first ones were seen completed, and how many they were.
    pub first_done: (Duration, u64),
}

/// Polls `client`'s store every [`POLL`] until the `jobs` jobs it holds (a drain's store holds
/// nothing else) are finished, timed from `started`; fails unless they all completed, or after
/// a generous deadline (50 ms a job, at least a minute). It polls the count of unfinished jobs
/// until the first are done, then the state of `last`, the job enqueued last (claimed last:
/// they all have the same priority and are due at once), and the count again once it is
/// finished. The count reads an index of every unfinished job: polled through the whole
/// drain, it would load the database server (PostgreSQL) enough to slow the drain it
/// measures, and the stats, which count every row by state, more so.
pub fn wait_completed(
    client: &mut Client,
    jobs: usize,
    last: JobId,
    started: Instant,
) -> anyhow::Result<Completed> {
    let deadline = Duration::from_secs(60).max(Duration::from_millis(50 * jobs as u64));
    let mut first_done = None;
    loop {
        let count = first_done.is_none() || {
            let (job, _) = client
                .job(last)
                .context("cannot read the job enqueued last")?
                .with_context(|| format!("job {last} is gone"))?;
            job.state.is_terminal()
        };
        let unfinished = if count {
            client
                .store()
                .unfinished()
                .context("cannot count the unfinished jobs")?
        } else {
            jobs as u64
        };
        let elapsed = started.elapsed();
        let done = (jobs as u64).saturating_sub(unfinished);
        if done > 0 && first_done.is_none() {
            first_done = Some((elapsed, done));
        }
        if unfinished == 0 {
            ensure_in_state(client, JobState::Completed, jobs)?;
            return Ok(Completed {
                wall: elapsed,
                first_done: first_done.unwrap_or((elapsed, 0)),
            });
        }
        ensure!(
            elapsed < deadline,
            "the drain did not finish in {deadline:?}: {unfinished} jobs unfinished"
        );
        std::thread::sleep(POLL);
    }
}

/// The command name of a PostgreSQL server's processes.
const POSTGRES_SERVER: &str = "postgres";

/// What a [`drain`] measured.
pub struct Drain {
    /// Jobs drained.
    pub jobs: usize,
    /// From the first `dispatch_batch` of the backlog until the store counted every job
    /// completed.
    pub wall: Duration,
    /// The `dispatch_batch` calls.
    pub enqueue: Duration,
    /// How many jobs each dispatcher ran.
    pub by_dispatcher: BTreeMap<DispatcherId, usize>,
    /// CPU seconds of the dispatchers themselves (all their threads) over `wall`.
    pub dispatchers_cpu: f64,
    /// CPU seconds of everything the dispatchers started, counted once they had exited and
    /// been reaped (see [`drain`]).
    pub workers_cpu: f64,
    /// CPU seconds of the dispatchers' workers over `wall`, as `/proc` shows them during the
    /// drain (see [`drain`]).
    pub seen_cpu: f64,
    /// CPU seconds of this bench over `wall`: its polling, and what `load` does.
    pub bench_cpu: f64,
    /// CPU seconds of the processes of a PostgreSQL server on this machine over `wall` (the
    /// store's work, when the dispatchers use it; [`named_processes_cpu`]).
    pub server_cpu: f64,
    /// Cores kept busy by other processes over `wall`.
    pub other_cores: f64,
}

impl Drain {
    /// Jobs a second.
    pub fn rate(&self) -> f64 {
        self.jobs as f64 / self.wall.as_secs_f64()
    }

    /// Milliseconds of `cpu` seconds per job.
    pub fn per_job_ms(&self, cpu: f64) -> f64 {
        cpu * 1e3 / self.jobs as f64
    }
}

/// Starts a dispatcher (`jobhost serve`) for each of `installs` (sharing one store) with
/// `runner` in its environment, puts `load` on them once they are idle, then enqueues `jobs`
/// no-op jobs in batches through the first installation's [`Client`] and times them from the
/// first enqueue until all completed; `finish` gets what `load` returned, before the
/// dispatchers are stopped.
///
/// CPU: the dispatchers' own time is the change of utime + stime in their `/proc/PID/stat`
/// over the drain. Their workers' time is counted two ways. `seen_cpu`, during the drain: the
/// change of the dispatchers' cutime + cstime (the children they have waited for: executed
/// workers) plus the utime + stime + cutime + cstime of their children still running (a fork
/// server, whose cutime holds the forked workers it has waited for). Not the dispatchers'
/// cutime alone: a process's cutime counts only the children it has waited for and what those
/// had waited for, so workers forked by a fork server appear there only once the fork server
/// itself has exited and been waited for. `workers_cpu`, after the drain: the change of this
/// bench's own cutime + cstime from before the dispatchers started until they exited and were
/// reaped (everything reaped below them, transitively), minus the dispatchers' own time as last
/// read, just before they were asked to stop. The two agree when every process waits for its
/// children; `workers_cpu` is short by the time of whatever exited unwaited for (a fork server
/// a dispatcher left without waiting for it takes its workers' time with it), and it counts
/// the few milliseconds a dispatcher spends stopping as its workers'.
pub fn drain<L, R>(
    installs: &[Installation],
    jobs: usize,
    runner: Option<Runner>,
    load: impl FnOnce(&[Served]) -> anyhow::Result<L>,
    finish: impl FnOnce(L) -> anyhow::Result<R>,
) -> anyhow::Result<(Drain, R)> {
    let (_, reaped_before) = process_cpu("self")?;
    let served = installs
        .iter()
        .map(|install| Served::start_with(install, runner))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let load = load(&served)?;
    let mut client = installs[0].client()?;
    // The dispatchers' own CPU, and their children's as far as /proc shows it.
    let read_dispatchers = || -> anyhow::Result<(f64, f64)> {
        let mut sum = (0.0, 0.0);
        for dispatcher in &served {
            let (own, children) = process_cpu(&dispatcher.pid().to_string())?;
            sum = (
                sum.0 + own,
                sum.1 + children + live_children_cpu(dispatcher.pid()),
            );
        }
        Ok(sum)
    };
    let dispatchers_before = read_dispatchers()?;
    let (bench_before, _) = process_cpu("self")?;
    let server_before = named_processes_cpu(POSTGRES_SERVER);
    let machine_before = machine_busy()?;
    let started = Instant::now();
    let ids = dispatch_in_batches(&mut client, jobs, || Job::new(CLASS, OK))?;
    let enqueue = started.elapsed();
    let last = *ids.iter().max().context("nothing was enqueued")?;
    let completed = wait_completed(&mut client, jobs, last, started)?;
    let machine = machine_busy()? - machine_before;
    let server_cpu = named_processes_used(&server_before, &named_processes_cpu(POSTGRES_SERVER));
    let (bench_after, _) = process_cpu("self")?;
    let dispatchers_after = read_dispatchers()?;
    let result = finish(load)?;
    let mut by_dispatcher = BTreeMap::new();
    for id in ids {
        let (_, attempts) = client
            .job(id)
            .context("cannot read a drained job")?
            .with_context(|| format!("job {id} is gone"))?;
        for attempt in attempts {
            let by = attempt
                .dispatcher
                .context("an attempt names no dispatcher")?;
            *by_dispatcher.entry(by).or_default() += 1;
        }
    }
    let dispatchers_last = read_dispatchers()?;
    for (install, dispatcher) in installs.iter().zip(served) {
        dispatcher.stop(&install.client()?)?;
    }
    let (_, reaped_after) = process_cpu("self")?;
    let dispatchers_cpu = dispatchers_after.0 - dispatchers_before.0;
    let seen_cpu = dispatchers_after.1 - dispatchers_before.1;
    let bench_cpu = bench_after - bench_before;
    let wall = completed.wall;
    let others = machine - dispatchers_cpu - seen_cpu - bench_cpu - server_cpu;
    Ok((
        Drain {
            jobs,
            wall,
            enqueue,
            by_dispatcher,
            dispatchers_cpu,
            workers_cpu: (reaped_after - reaped_before - dispatchers_last.0).max(0.0),
            seen_cpu,
            bench_cpu,
            server_cpu,
            other_cores: others.max(0.0) / wall.as_secs_f64(),
        },
        result,
    ))
}

// ----- pickup latency -----

/// What [`pickup_latency`] measured.
pub struct Latency {
    /// Worker's clock minus the time just before `dispatch`.
    pub pickup: Measured,
    /// Worker's clock minus the time just before starting it through `run_attempt`, no queue involved: the floor.
    pub floor: Measured,
    /// The `dispatch` call itself.
    pub dispatch: Measured,
    /// From just before `dispatch` until `follow` returned.
    pub round_trip: Measured,
    /// Mean ms from just before `dispatch` to the claim, as recorded in the store.
    pub to_claim: f64,
    /// Mean ms from the claim to the worker's clock.
    pub claim_to_clock: f64,
    /// Cores other processes kept busy while the floor and the pickups were measured.
    pub floor_noise: f64,
    pub pickup_noise: f64,
}

/// One clock job dispatched into the idle dispatcher.
struct Sample {
    pickup: Duration,
    dispatched: Duration,
    round_trip: Duration,
    to_claim: f64,
    claim_to_clock: f64,
}

/// In a new installation `name` on SQLite: runs `jobs` clock jobs through `run_attempt` one
/// at a time (the floor, with `runner`), then dispatches `jobs` clock jobs one at a time into
/// an idle dispatcher started with `runner`, each after the last one completed.
pub fn pickup_latency(
    scratch: &Path,
    fixture: &Path,
    name: &str,
    jobs: usize,
    runner: Option<Runner>,
) -> anyhow::Result<Latency> {
    let install = Installation::create(scratch, name, fixture, ALLOWLIST, SETTINGS)?;
    let mut client = install.client()?;
    // The floor first: the same job run through run_attempt in this process, one at a time.
    let attempt = AttemptRunner::with_runner(&install.settings, runner)?;
    for i in 0..(jobs / 25).clamp(2, 20) {
        attempt.clock(&format!("warm-{i}"))?;
    }
    let meter = CpuMeter::start(None)?;
    let floor = (0..jobs)
        .map(|i| attempt.clock(&format!("floor-{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let floor_cpu = meter.stop(None)?;
    let floor = Measured::new(Duration::from_secs_f64(floor_cpu.wall), floor);

    let dispatcher = Served::start_with(&install, runner)?;
    let one = |client: &mut Client| -> anyhow::Result<Sample> {
        let before = SystemTime::now();
        let began = Instant::now();
        let id = client
            .dispatch(Job::new(CLASS, CLOCK))
            .context("cannot dispatch a clock job")?;
        let dispatched = began.elapsed();
        let job = client
            .follow(id, &|| false)
            .context("cannot follow a clock job")?
            .with_context(|| format!("stopped following job {id}"))?;
        let round_trip = began.elapsed();
        ensure!(
            job.state == JobState::Completed,
            "clock job {id} ended {}: {:?}",
            job.state,
            job.last_error
        );
        let result = job.result.unwrap_or_default();
        let pickup = clock_since(before, &result)
            .with_context(|| format!("clock job {id} returned {result}"))?;
        // When the dispatcher claimed it, in the store's milliseconds (truncated, so the
        // middle of that millisecond is the best estimate).
        let (_, attempts) = client
            .job(id)
            .context("cannot read the clock job")?
            .with_context(|| format!("job {id} is gone"))?;
        let claimed_ms = attempts
            .first()
            .map(|a| a.started_at)
            .with_context(|| format!("job {id} has no attempt"))?;
        let before_ms = before
            .duration_since(SystemTime::UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_secs_f64()
            * 1e3;
        let to_claim = claimed_ms as f64 + 0.5 - before_ms;
        Ok(Sample {
            pickup,
            dispatched,
            round_trip,
            to_claim,
            claim_to_clock: ms(pickup) - to_claim,
        })
    };
    // Warm up, then let the dispatcher go idle again.
    for _ in 0..(jobs / 25).clamp(2, 20) {
        one(&mut client)?;
    }
    std::thread::sleep(Duration::from_millis(200));
    let meter = CpuMeter::start(Some(dispatcher.pid()))?;
    let samples = (0..jobs)
        .map(|_| one(&mut client))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pickup_cpu = meter.stop(Some(dispatcher.pid()))?;
    let (mut to_claim, mut claim_to_clock) = (0.0, 0.0);
    for sample in &samples {
        to_claim += sample.to_claim / jobs as f64;
        claim_to_clock += sample.claim_to_clock / jobs as f64;
    }
    let samples_of = |f: fn(&Sample) -> Duration| samples.iter().map(f).collect::<Vec<_>>();
    let (pickup, dispatch, round_trip) = (
        samples_of(|s| s.pickup),
        samples_of(|s| s.dispatched),
        samples_of(|s| s.round_trip),
    );
    let wall = Duration::from_secs_f64(pickup_cpu.wall);
    dispatcher.stop(&client)?;
    Ok(Latency {
        pickup: Measured::new(wall, pickup),
        floor,
        to_claim,
        claim_to_clock,
        floor_noise: floor_cpu.other_cores(),
        pickup_noise: pickup_cpu.other_cores(),
        dispatch: Measured::new(wall, dispatch),
        round_trip: Measured::new(wall, round_trip),
    })
}

impl AttemptRunner {
    /// One attempt of the clock job; returns how long after the call its worker read the
    /// clock.
    pub fn clock(&self, job_id: &str) -> anyhow::Result<Duration> {
        let before = SystemTime::now();
        let result = self.attempt(job_id, CLOCK)?;
        clock_since(before, &result)
            .with_context(|| format!("attempt of job {job_id} returned {result}"))
    }
}

/// How long after `before` the clock job's worker read its clock, from its `result`.
fn clock_since(before: SystemTime, result: &Value) -> anyhow::Result<Duration> {
    let worker_micros = result
        .get("unix_micros")
        .and_then(Value::as_u64)
        .context("no unix_micros")?;
    let before_micros = before
        .duration_since(SystemTime::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_micros() as u64;
    Ok(Duration::from_micros(
        worker_micros.saturating_sub(before_micros),
    ))
}

impl Measured {
    /// Mean latency in milliseconds.
    pub fn mean_ms(&self) -> f64 {
        let total: Duration = self.latencies.iter().sum();
        ms(total) / self.latencies.len().max(1) as f64
    }
}

// ----- no dispatcher -----

/// Keeps dispatchers away from a state directory: holds its dispatcher lock and answers its
/// doorbell with a thread that discards the rings, so `dispatch` starts no dispatcher.
pub struct Muted {
    doorbell: Doorbell,
    listener: Option<JoinHandle<()>>,
    _lock: FileLock,
}

impl Muted {
    pub fn new(install: &Installation) -> anyhow::Result<Self> {
        let paths = install.paths();
        std::fs::create_dir_all(&install.settings.state_dir).context("cannot create the state")?;
        let lock = FileLock::try_acquire(&paths.lock)
            .context("cannot take the dispatcher lock")?
            .context("a dispatcher already serves the bench state directory")?;
        let doorbell = Doorbell::bind(&paths.doorbell).context("cannot bind the doorbell")?;
        let listening = doorbell.try_clone().context("cannot clone the doorbell")?;
        let listener = std::thread::Builder::new()
            .name("muted-doorbell".into())
            .spawn(move || while listening.wait().is_ok() {})
            .context("cannot start the doorbell thread")?;
        Ok(Self {
            doorbell,
            listener: Some(listener),
            _lock: lock,
        })
    }
}

impl Drop for Muted {
    fn drop(&mut self) {
        // Wakes the listener with an error; the lock goes after.
        let _ = self.doorbell.unlink();
        if let Some(listener) = self.listener.take() {
            let _ = listener.join();
        }
    }
}
