//! What the benches share: their `main` and iteration counts, the fixture plugins and the
//! scratch directory they set up installations in, no-op attempts run through the real attempt
//! path ([`AttemptRunner`], with either spawner, [`RUNNERS`]) and timing them ([`measure`], [`measure_serial`],
//! [`Measured`]), the `/bin/true` floor ([`spawn_true`]), enqueueing through the Rust API
//! ([`dispatch_in_batches`], [`enqueue_parked`]), installations and the `jobhost serve` they
//! start ([`Installation`], [`Served`]). Beside it: [`cpu`] (CPU accounting from `/proc`),
//! [`runs`] (drains, pickup latency, SQLite or PostgreSQL) and [`table`] (the final table's
//! rows).
//!
//! It is a module of each bench (`pub mod common;`), not a bench target of its own: cargo
//! takes only the files directly in `benches/` for targets. It is public in each, so that what
//! only some benches use is not reported unused in the others; what only one bench needs
//! stays in that bench.

pub mod cpu;
pub mod runs;
pub mod table;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, ensure, Context as _};
use jobhost::{
    config::settings::{Overrides, Runner, Settings},
    job::outcome::Outcome,
    platform::{self, CancelToken},
    queue::{
        doorbell::{RING_STOP, RING_WAKE},
        StatePaths,
    },
    runner::{
        jobhost_program,
        supervisor::{attempts::run_attempt, AttemptSpec, Spawner},
    },
    store::{JobId, JobState},
    Client, Job,
};
use serde_json::{json, Value};

/// The fixture plugin's file name, in the target profile directory and in each installation's
/// plugin directory.
pub const PLUGIN_FILE: &str = "libmisbehave_fixture.so";
/// The fixture plugin's job class.
pub const CLASS: &str = r"Tests\Misbehave";
/// Its no-op method, returning `{"ok": true}`.
pub const OK: &str = "ok";
/// Its method returning the worker's clock when it ran (`{"unix_micros": N}`).
pub const CLOCK: &str = "clock";
/// The allowlist of the benches' installations: the fixture's `ok` and `clock`.
pub const ALLOWLIST: &str = "[jobs]\n'Tests\\Misbehave' = [\"ok\", \"clock\"]\n";
/// The text of [`BASE_SETTINGS`], for `concat!`.
macro_rules! base_settings {
    () => {
        "plugin_dir = \"plugins\"\nallowlist = \"allowlist.toml\"\n\
         state_dir = \"state\"\nlog_dir = \"logs\"\nenv = \"production\"\n\
         dispatcher.slots = 2\ndispatcher.idle_exit = 600\n"
    };
}
/// The `jobhost.toml` of the benches' installations, but for the store and the dashboard
/// (`web.*`), which the caller adds.
pub const BASE_SETTINGS: &str = base_settings!();
/// [`BASE_SETTINGS`] without the dashboard, on SQLite.
pub const SETTINGS: &str = concat!(base_settings!(), "web.enabled = false\n");
/// The floor every spawn rate is compared with.
pub const TRUE_PROGRAM: &str = "/bin/true";

/// Runs the bench `bench` as its `main`: `run` gets whether cargo's `--bench` argument was
/// given (without it, as under `cargo test --all-targets`, a bench makes a quick smoke run), and
/// its error is printed after the bench's name.
pub fn bench_main(bench: &str, run: impl FnOnce(bool) -> anyhow::Result<()>) -> ExitCode {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    match run(bench_mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{bench}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// An iteration count: the environment variable `var` if set (a whole number of at least 2),
/// else `bench` in bench mode and `smoke` in a smoke run.
pub fn count(bench_mode: bool, (var, bench, smoke): (&str, usize, usize)) -> anyhow::Result<usize> {
    match std::env::var(var) {
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 2)
            .with_context(|| format!("{var}={v:?}: expected a whole number of at least 2")),
        Err(_) if bench_mode => Ok(bench),
        Err(_) => Ok(smoke),
    }
}

/// The parts of a bench to run: the environment variable `var`, a comma-separated list of
/// numbers from 1 to `last`; all of them if it is not set.
pub fn parts(var: &str, last: u8) -> anyhow::Result<Vec<u8>> {
    let Ok(list) = std::env::var(var) else {
        return Ok((1..=last).collect());
    };
    list.split(',')
        .map(|p| {
            p.trim()
                .parse::<u8>()
                .ok()
                .filter(|n| (1..=last).contains(n))
                .with_context(|| format!("{var}={list:?}: expected parts 1 to {last}, as 1,3"))
        })
        .collect()
}

/// The number of CPUs this process may use, 0 if unknown.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// Milliseconds in `d`.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ----- files -----

/// The fixture plugin `file` in the target profile directory the bench binary `bench` was
/// built into (`target/release/deps/BENCH-…` beside `target/release/libmisbehave_fixture.so`).
pub fn find_fixture(bench: &str, file: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the bench binary")?;
    let found = exe
        .ancestors()
        .skip(1)
        // Cargo's copy in `deps/` is an intermediate; the profile directory holds the real one.
        .filter(|dir| !dir.ends_with("deps"))
        .map(|dir| dir.join(file))
        .find(|path| path.is_file());
    match found {
        Some(path) => Ok(path),
        None => bail!(
            "{file} not found in any directory above {}; build the fixture plugins first \
             with `cargo build --release --workspace` (then `cargo bench -p jobhost --bench \
             {bench}`)",
            exe.display()
        ),
    }
}

/// The release `jobhost` binary the dispatchers and workers run
/// ([`jobhost_program`]), which must have been built.
pub fn jobhost_binary() -> anyhow::Result<PathBuf> {
    let jobhost = jobhost_program();
    ensure!(
        jobhost.is_file(),
        "the jobhost binary {} was not found; build it first with `cargo build --release \
         --workspace` (or set JOBHOST_BIN)",
        jobhost.display()
    );
    Ok(jobhost)
}

/// A scratch directory of the bench run; removed when dropped, unless kept.
pub struct Scratch {
    /// The directory.
    pub path: PathBuf,
    /// The bench's name, for its messages.
    bench: &'static str,
    /// Whether to leave the directory in place when dropped (and say so).
    keep: bool,
}

impl Scratch {
    /// Creates `PREFIX-PID-NANOS` in `parent` for the bench `bench`.
    pub fn create(
        parent: &Path,
        prefix: &str,
        bench: &'static str,
        keep: bool,
    ) -> anyhow::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = parent.join(format!("{prefix}-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir(&path)
            .with_context(|| format!("cannot create scratch directory {}", path.display()))?;
        Ok(Self { path, bench, keep })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("{}: kept {}", self.bench, self.path.display());
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!(
                "{}: cannot remove scratch directory {}: {e}",
                self.bench,
                self.path.display()
            );
        }
    }
}

/// Lays out a jobhost installation in `root`: a private copy of the `fixture` plugin in
/// `root/plugins` (under the same file name) and the `files` (name, text) in `root`; then
/// resolves `overrides` against `root`, ignoring any `JOBHOST_*` variables of the caller.
pub fn install(
    root: &Path,
    fixture: &Path,
    files: &[(&str, &str)],
    overrides: &Overrides,
) -> anyhow::Result<Settings> {
    let plugin_dir = root.join("plugins");
    std::fs::create_dir_all(&plugin_dir)
        .with_context(|| format!("cannot create {}", plugin_dir.display()))?;
    // A private copy, as the host's snapshots are: a rebuild of the fixture while the bench
    // runs must not pull the file from under the workers mapping it.
    let name = fixture
        .file_name()
        .context("the fixture path has no file name")?;
    std::fs::copy(fixture, plugin_dir.join(name))
        .with_context(|| format!("cannot copy {}", fixture.display()))?;
    for (file, text) in files {
        std::fs::write(root.join(file), text)
            .with_context(|| format!("cannot write {file} in {}", root.display()))?;
    }
    Settings::resolve_with(overrides, root, |_| None).context("cannot resolve the bench settings")
}

// ----- attempts -----

/// The spawners a dispatcher or an attempt can use (`dispatcher.runner`): exec first.
pub const RUNNERS: [Runner; 2] = [Runner::Exec, Runner::Fork];
/// The environment variable a dispatcher reads its spawner from.
pub const RUNNER_VAR: &str = "JOBHOST_RUNNER";

/// Runs no-op attempts of the fixture plugin through the real attempt path (a dispatcher's
/// spawner and supervision, its workers started as `runner` says), in worker processes of the
/// release `jobhost` binary; from several threads at once if need be.
pub struct AttemptRunner {
    /// The installation's settings, with the spawner asked for as `dispatcher.runner`.
    settings: Settings,
    /// The plugin file in its plugin directory.
    plugin: PathBuf,
    /// Never cancelled.
    cancel: Arc<CancelToken>,
    spawner: Spawner,
}

impl AttemptRunner {
    /// Runs attempts in the installation of `settings`, with the default spawner.
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        Self::with_runner(settings, None)
    }

    /// Runs attempts in the installation of `settings` with `runner` (the settings' own
    /// `dispatcher.runner` if `None`).
    pub fn with_runner(settings: &Settings, runner: Option<Runner>) -> anyhow::Result<Self> {
        // The spawner is all that `dispatcher.runner` decides.
        let mut asked = settings.clone();
        if let Some(runner) = runner {
            asked.dispatcher.runner = runner;
        }
        Ok(Self {
            spawner: Spawner::new(&asked),
            plugin: settings.plugin_dir.join(PLUGIN_FILE),
            settings: asked,
            cancel: CancelToken::new().context("cannot create a cancel token")?,
        })
    }

    /// The spawner it uses.
    pub fn runner(&self) -> Runner {
        self.settings.dispatcher.runner
    }

    /// One attempt of a no-op job of its own, as the dispatcher would run it.
    pub fn run(&self, job_id: &str) -> anyhow::Result<()> {
        match self.attempt(job_id, OK)? {
            result if result == json!({ "ok": true }) => Ok(()),
            result => bail!("attempt of job {job_id} returned {result}"),
        }
    }

    /// One attempt of `method` of the fixture class; its result.
    pub fn attempt(&self, job_id: &str, method: &str) -> anyhow::Result<Value> {
        let params = Value::Object(serde_json::Map::new());
        let allowlist = jobhost::catalog::inventory::allowlist_in_force(&self.settings);
        let spec = AttemptSpec {
            job_id,
            attempt: 1,
            class: CLASS,
            method,
            params: &params,
            plugin: &self.plugin,
            timeout: Duration::from_secs(60),
            allowlist: &allowlist,
            // As the catalog says of the fixture, which declares itself so: a fork server loads
            // it before forking, as it does for a dispatcher's workers.
            fork_safe: true,
        };
        let record = run_attempt(
            &self.settings,
            &self.spawner,
            &spec,
            Arc::clone(&self.cancel),
        )
        .with_context(|| format!("attempt of job {job_id} could not run"))?;
        match record.outcome {
            Outcome::Ok(result) => Ok(result),
            outcome => {
                // The scratch directory goes when the bench ends, so show the output here.
                let output = std::fs::read(&record.output.path).unwrap_or_default();
                let shown = String::from_utf8_lossy(&output[..output.len().min(4096)]);
                bail!("attempt of job {job_id} ended {outcome:?}; worker output:\n{shown}")
            }
        }
    }
}

// ----- measurement -----

/// Latencies of one measured mode.
pub struct Measured {
    /// Wall time of the whole mode.
    pub wall: Duration,
    /// Sorted.
    pub latencies: Vec<Duration>,
}

impl Measured {
    /// Sorts `latencies`.
    pub fn new(wall: Duration, mut latencies: Vec<Duration>) -> Self {
        latencies.sort_unstable();
        Self { wall, latencies }
    }

    /// Operations per second of wall time.
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    /// Nearest-rank percentile; zero if nothing was measured.
    pub fn percentile(&self, p: f64) -> Duration {
        let n = self.latencies.len();
        if n == 0 {
            return Duration::ZERO;
        }
        let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
        self.latencies[rank - 1]
    }
}

/// Runs `op` `total` times spread over `threads` threads, each doing its share back to back;
/// `op` gets the thread and iteration number.
pub fn measure(
    total: usize,
    threads: usize,
    op: impl Fn(usize, usize) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<Measured> {
    let op = &op;
    let started = Instant::now();
    let per_thread: Vec<anyhow::Result<Vec<Duration>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let share = total / threads + usize::from(t < total % threads);
                scope.spawn(move || {
                    let mut latencies = Vec::with_capacity(share);
                    for i in 0..share {
                        let began = Instant::now();
                        op(t, i)?;
                        latencies.push(began.elapsed());
                    }
                    Ok(latencies)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a bench thread panicked")))
            })
            .collect()
    });
    let wall = started.elapsed();
    let mut latencies = Vec::with_capacity(total);
    for thread in per_thread {
        latencies.extend(thread?);
    }
    Ok(Measured::new(wall, latencies))
}

/// Runs `op` `total` times on this thread, back to back.
pub fn measure_serial(
    total: usize,
    mut op: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Measured> {
    let mut latencies = Vec::with_capacity(total);
    let started = Instant::now();
    for _ in 0..total {
        let began = Instant::now();
        op()?;
        latencies.push(began.elapsed());
    }
    Ok(Measured::new(started.elapsed(), latencies))
}

/// Spawns [`TRUE_PROGRAM`] and waits for it: the floor of every spawn rate.
pub fn spawn_true() -> anyhow::Result<()> {
    let status = Command::new(TRUE_PROGRAM)
        .spawn()
        .with_context(|| format!("cannot spawn {TRUE_PROGRAM}"))?
        .wait()
        .with_context(|| format!("cannot wait for {TRUE_PROGRAM}"))?;
    ensure!(status.success(), "{TRUE_PROGRAM} ended with {status}");
    Ok(())
}

// ----- enqueueing -----

/// Jobs per `dispatch_batch` call when the benches enqueue in batches.
pub const BATCH: usize = 1000;
/// The delay of jobs that must stay queued while the benches measure something else.
pub const PARKED: Duration = Duration::from_secs(3600);
/// Parked jobs dispatched before an enqueue rate is measured ([`warm_up`]).
pub const WARM_UP: usize = 10;

/// A no-op job delayed by [`PARKED`].
pub fn parked() -> Job {
    Job::new(CLASS, OK).delay(PARKED)
}

/// Enqueues `jobs` jobs made by `job` through `client`, [`BATCH`] per `dispatch_batch`;
/// returns their ids.
pub fn dispatch_in_batches(
    client: &mut Client,
    jobs: usize,
    job: impl Fn() -> Job,
) -> anyhow::Result<Vec<JobId>> {
    let mut ids = Vec::with_capacity(jobs);
    while ids.len() < jobs {
        let n = (jobs - ids.len()).min(BATCH);
        let batch = client
            .dispatch_batch((0..n).map(|_| job()))
            .context("cannot dispatch a batch")?;
        ensure!(batch.len() == n, "enqueued {} of {n} jobs", batch.len());
        ids.extend(batch);
    }
    Ok(ids)
}

/// Dispatches [`WARM_UP`] parked jobs through `client`: the first reads the allowlist and
/// inventories the plugin directory, which is not what an enqueue rate is about.
pub fn warm_up(client: &mut Client) -> anyhow::Result<()> {
    for _ in 0..WARM_UP {
        client.dispatch(parked()).context("cannot dispatch")?;
    }
    Ok(())
}

/// The calls of [`enqueue_parked`], timed.
pub struct EnqueueCalls {
    /// Each `dispatch` call.
    pub single: Measured,
    /// Each `dispatch_batch` call.
    pub batch: Measured,
}

impl EnqueueCalls {
    /// Jobs a second through `dispatch`, one each.
    pub fn single_rate(&self) -> f64 {
        self.single.rate()
    }

    /// Jobs a second through `dispatch_batch` (as many jobs as through `dispatch`).
    pub fn batch_rate(&self) -> f64 {
        self.single.latencies.len() as f64 / self.batch.wall.as_secs_f64()
    }
}

/// Enqueues `jobs` parked jobs through `client` one `dispatch` each, then `jobs` more in
/// batches of [`BATCH`], timing each call.
pub fn enqueue_parked(client: &mut Client, jobs: usize) -> anyhow::Result<EnqueueCalls> {
    let single = measure_serial(jobs, || {
        client.dispatch(parked()).context("cannot dispatch")?;
        Ok(())
    })?;
    let mut left = jobs;
    let batch = measure_serial(jobs.div_ceil(BATCH), || {
        let n = left.min(BATCH);
        left -= n;
        dispatch_in_batches(client, n, parked)?;
        Ok(())
    })?;
    Ok(EnqueueCalls { single, batch })
}

/// Checks that `client`'s store holds `expected` jobs in `state`.
pub fn ensure_in_state(
    client: &mut Client,
    state: JobState,
    expected: usize,
) -> anyhow::Result<()> {
    let stats = client.store().stats().context("cannot read the stats")?;
    let count = stats.by_state.get(state.as_str()).copied().unwrap_or(0);
    ensure!(
        count as usize == expected,
        "expected {expected} {} jobs: {stats:?}",
        state.as_str()
    );
    Ok(())
}

// ----- the machine -----

/// Linux reports process and machine CPU times in USER_HZ ticks, 100 a second on every
/// architecture's user ABI.
pub const USER_HZ: f64 = 100.0;
/// Cores other processes may keep busy before the figures are flagged as unreliable.
pub const NOISY: f64 = 0.15;

/// The machine's busy CPU seconds since boot, all cores: everything but idle and iowait.
pub fn machine_busy() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .collect();
    ensure!(ticks.len() >= 8, "/proc/stat's cpu line is too short");
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7];
    Ok(busy / USER_HZ)
}

/// How many cores the machine kept busy over the next `window`, while the bench itself waits:
/// other processes' load, which slows what is measured next.
pub fn busy_cores(window: Duration) -> anyhow::Result<f64> {
    let before = machine_busy()?;
    std::thread::sleep(window);
    Ok((machine_busy()? - before) / window.as_secs_f64())
}

// ----- installations and dispatchers -----

/// The slots of the dispatchers the benches start.
const SLOTS: &str = "2";
/// Their idle exit, in seconds: what a dispatcher started on demand has.
const IDLE_EXIT: &str = "600";

/// A jobhost installation under the scratch directory: a fixture plugin, an allowlist, and a
/// `jobhost.toml` pointing at its own state and logs.
pub struct Installation {
    /// Its `jobhost.toml`.
    pub config: PathBuf,
    /// Its settings.
    pub settings: Settings,
}

impl Installation {
    /// Lays out `scratch/name` with the `fixture` plugin, `allowlist` and `settings` (the text
    /// of `jobhost.toml`).
    pub fn create(
        scratch: &Path,
        name: &str,
        fixture: &Path,
        allowlist: &str,
        settings: &str,
    ) -> anyhow::Result<Self> {
        let root = scratch.join(name);
        let config = root.join("jobhost.toml");
        let overrides = Overrides {
            config: Some(config.clone()),
            ..Overrides::default()
        };
        let files = [("allowlist.toml", allowlist), ("jobhost.toml", settings)];
        let settings = install(&root, fixture, &files, &overrides)?;
        Ok(Self { config, settings })
    }

    /// A Rust API client of it.
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::new(self.settings.clone()).context("cannot open a client")
    }

    /// Its dispatcher's files.
    pub fn paths(&self) -> StatePaths {
        StatePaths::new(&self.settings.state_dir)
    }
}

/// A `jobhost serve` this bench started; stopped when dropped if [`Served::stop`] was not
/// called.
pub struct Served {
    child: Child,
    doorbell: PathBuf,
    /// When it was started.
    pub started: Instant,
}

impl Served {
    /// Starts the release `jobhost serve --slots 2` for `install` and waits until it answers
    /// its doorbell.
    pub fn start(install: &Installation) -> anyhow::Result<Self> {
        Self::start_with(install, None)
    }

    /// [`Served::start`] with `runner` in its environment ([`RUNNER_VAR`]).
    pub fn start_with(install: &Installation, runner: Option<Runner>) -> anyhow::Result<Self> {
        let program = jobhost_program();
        let mut command = Command::new(&program);
        command
            .arg("--config")
            .arg(&install.config)
            .args(["serve", "--slots", SLOTS, "--idle-exit", IDLE_EXIT])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("JOBHOST_") && name != "JOBHOST_BIN" {
                command.env_remove(name);
            }
        }
        if let Some(runner) = runner {
            command.env(RUNNER_VAR, runner.as_str());
        }
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {} serve", program.display()))?;
        println!(
            "  dispatcher pid {} serving {}{}",
            child.id(),
            install.settings.state_dir.display(),
            runner.map_or(String::new(), |r| format!(" ({RUNNER_VAR}={})", r.as_str()))
        );
        let mut served = Self {
            child,
            doorbell: install.paths().doorbell,
            started,
        };
        loop {
            if let Some(status) = served
                .child
                .try_wait()
                .context("cannot check the dispatcher")?
            {
                bail!("the dispatcher exited at once with {status}");
            }
            let answered = platform::ring(&served.doorbell, RING_WAKE)
                .context("cannot ring the dispatcher")?;
            if answered {
                return Ok(served);
            }
            ensure!(
                served.started.elapsed() < Duration::from_secs(10),
                "the dispatcher did not answer its doorbell within 10 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks it to stop through `client` and waits for it to exit.
    pub fn stop(mut self, client: &Client) -> anyhow::Result<()> {
        let asked = client
            .stop_dispatcher()
            .context("cannot ask the dispatcher to stop")?;
        ensure!(asked, "the dispatcher no longer answered its doorbell");
        let status = self.wait(Duration::from_secs(30))?;
        ensure!(status.success(), "the dispatcher exited with {status}");
        Ok(())
    }

    /// Waits for the process to exit, killing it after `timeout`.
    fn wait(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .context("cannot wait for the dispatcher")?
            {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "the dispatcher (pid {}) did not stop within {timeout:?}; killed it",
                    self.pid()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = platform::ring(&self.doorbell, RING_STOP);
            if let Err(e) = self.wait(Duration::from_secs(10)) {
                eprintln!("{e:#}");
            }
        }
    }
}
