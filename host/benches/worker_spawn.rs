//! Worker spawn rate beside the exec floor: how many `/bin/true` processes this machine can
//! spawn and reap per second, and how many full jobhost attempts (worker spawn, plugin load,
//! no-op invoke of `Tests\Misbehave@ok`, output capture, report file, supervision) it can run
//! per second, each one at a time and two at a time. See "Spawn costs" in the design notes.
//!
//! Run it with
//!
//! ```text
//! cargo build --release --workspace && cargo bench -p jobhost --bench worker_spawn
//! ```
//!
//! The first command builds the fixture plugin `libmisbehave_fixture.so`, which `cargo bench -p
//! jobhost` alone does not. `WORKER_SPAWN_ITERS=N` runs N attempts and 2N `/bin/true` spawns
//! per mode (default 1000). Without cargo's `--bench` argument (as under `cargo test
//! --all-targets`) it makes a quick smoke run of a few iterations instead.
//!
//! `run_attempt` spawns the real release `jobhost` binary as the worker (found beside the bench
//! binary's directory by `jobhost::attempt::jobhost_program`, or `$JOBHOST_BIN`): each attempt
//! runs in a real worker process.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, ensure, Context as _};
use jobhost::{
    attempt::{run_attempt, AttemptSpec, Outcome},
    platform::CancelToken,
    settings::{Overrides, Settings},
};
use serde_json::{json, Value};

const ITERS_VAR: &str = "WORKER_SPAWN_ITERS";
const DEFAULT_ATTEMPTS: usize = 1000;
const SMOKE_ATTEMPTS: usize = 4;
const PLUGIN_FILE: &str = "libmisbehave_fixture.so";
const CLASS: &str = r"Tests\Misbehave";
const METHOD: &str = "ok";
const TRUE_PROGRAM: &str = "/bin/true";

fn main() -> ExitCode {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    match run(bench_mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("worker_spawn: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(bench_mode: bool) -> anyhow::Result<()> {
    let attempts = match std::env::var(ITERS_VAR) {
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 2)
            .with_context(|| format!("{ITERS_VAR}={v:?}: expected a whole number of at least 2"))?,
        Err(_) if bench_mode => DEFAULT_ATTEMPTS,
        Err(_) => SMOKE_ATTEMPTS,
    };
    let spawns = attempts * 2;
    ensure!(
        Path::new(TRUE_PROGRAM).is_file(),
        "{TRUE_PROGRAM} not found; this benchmark needs it as the exec floor"
    );
    let fixture = find_fixture()?;
    let bench = BenchDir::create()?;
    let settings = bench.settings(&fixture)?;
    let plugin = settings.plugin_dir.join(PLUGIN_FILE);
    let cancel = CancelToken::new().context("cannot create a cancel token")?;
    let attempt = AttemptRunner {
        settings: &settings,
        plugin: &plugin,
        cancel: &cancel,
    };

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "worker_spawn: {cpus} CPUs, {spawns} /bin/true spawns and {attempts} attempts per mode \
         ({ITERS_VAR}={attempts}){}",
        if bench_mode { "" } else { ", smoke run" }
    );
    println!("worker: {}", std::env::current_exe()?.display());
    println!(
        "plugin: {} (copied from {})",
        plugin.display(),
        fixture.display()
    );

    // Warm the page cache, the dynamic loader and the plugin file before measuring.
    let warmup = (attempts / 50).clamp(1, 20);
    measure(warmup * 2, 1, |_, _| spawn_true())?;
    measure(warmup, 1, |t, i| attempt.run(&format!("warm-{t}-{i}")))?;

    let rows = [
        (
            "/bin/true spawn+wait, sequential",
            "spawns/s",
            measure(spawns, 1, |_, _| spawn_true())?,
        ),
        (
            "/bin/true spawn+wait, 2 at a time",
            "spawns/s",
            measure(spawns, 2, |_, _| spawn_true())?,
        ),
        (
            "jobhost attempt (ok), sequential",
            "invocations/s",
            measure(attempts, 1, |t, i| attempt.run(&format!("seq-{t}-{i}")))?,
        ),
        (
            "jobhost attempt (ok), 2 at a time",
            "invocations/s",
            measure(attempts, 2, |t, i| attempt.run(&format!("par-{t}-{i}")))?,
        ),
    ];

    println!();
    println!(
        "{:<36} {:>6} {:>8} {:>9} {:<14} {:>8} {:>8}",
        "what", "runs", "wall s", "rate", "unit", "p50 ms", "p99 ms"
    );
    for (what, unit, m) in &rows {
        println!(
            "{:<36} {:>6} {:>8.3} {:>9.0} {:<14} {:>8.3} {:>8.3}",
            what,
            m.latencies.len(),
            m.wall.as_secs_f64(),
            m.rate(),
            unit,
            ms(m.percentile(0.50)),
            ms(m.percentile(0.99)),
        );
    }
    println!();
    println!(
        "an attempt is {CLASS}@{METHOD} through jobhost::attempt::run_attempt: worker spawn, \
         plugin load, invoke, output capture, report file, supervision"
    );
    Ok(())
}

/// Spawns `/bin/true` and waits for it.
fn spawn_true() -> anyhow::Result<()> {
    let status = Command::new(TRUE_PROGRAM)
        .spawn()
        .context("cannot spawn /bin/true")?
        .wait()
        .context("cannot wait for /bin/true")?;
    ensure!(status.success(), "/bin/true ended with {status}");
    Ok(())
}

/// Runs no-op attempts through the real attempt path.
struct AttemptRunner<'a> {
    settings: &'a Settings,
    plugin: &'a Path,
    cancel: &'a CancelToken,
}

impl AttemptRunner<'_> {
    /// One attempt of a job of its own, as the dispatcher would run it.
    fn run(&self, job_id: &str) -> anyhow::Result<()> {
        let params = Value::Object(serde_json::Map::new());
        let spec = AttemptSpec {
            job_id,
            attempt: 1,
            class: CLASS,
            method: METHOD,
            params: &params,
            plugin: self.plugin,
            timeout: Duration::from_secs(60),
        };
        let record = run_attempt(self.settings, &spec, self.cancel, &mut |_| {})
            .with_context(|| format!("attempt of job {job_id} could not run"))?;
        match &record.outcome {
            Outcome::Ok(result) if *result == json!({ "ok": true }) => Ok(()),
            outcome => {
                // The scratch directory goes when the bench ends, so show the output here.
                let output = std::fs::read(&record.output.path).unwrap_or_default();
                let shown = String::from_utf8_lossy(&output[..output.len().min(4096)]);
                bail!("attempt of job {job_id} ended {outcome:?}; worker output:\n{shown}")
            }
        }
    }
}

/// Latencies of one measured mode.
struct Measured {
    wall: Duration,
    /// Sorted.
    latencies: Vec<Duration>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    /// Nearest-rank percentile.
    fn percentile(&self, p: f64) -> Duration {
        let n = self.latencies.len();
        let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
        self.latencies[rank - 1]
    }
}

/// Runs `op` `total` times spread over `threads` threads, each doing its share back to back;
/// `op` gets the thread and iteration number.
fn measure(
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
    latencies.sort_unstable();
    Ok(Measured { wall, latencies })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The fixture plugin in the target profile directory this bench binary was built into
/// (`target/release/deps/worker_spawn-…` beside `target/release/libmisbehave_fixture.so`).
fn find_fixture() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the bench binary")?;
    let found = exe
        .ancestors()
        .skip(1)
        // Cargo's copy in `deps/` is an intermediate; the profile directory holds the real one.
        .filter(|dir| !dir.ends_with("deps"))
        .map(|dir| dir.join(PLUGIN_FILE))
        .find(|path| path.is_file());
    match found {
        Some(path) => Ok(path),
        None => bail!(
            "{PLUGIN_FILE} not found in any directory above {}; build the fixture plugins first \
             with `cargo build --release --workspace` (then `cargo bench -p jobhost --bench \
             worker_spawn`)",
            exe.display()
        ),
    }
}

/// A scratch directory holding the allowlist, a copy of the plugin and the attempts' files;
/// removed when dropped.
struct BenchDir {
    path: PathBuf,
}

impl BenchDir {
    fn create() -> anyhow::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path =
            std::env::temp_dir().join(format!("jobhost-bench-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir(&path)
            .with_context(|| format!("cannot create scratch directory {}", path.display()))?;
        Ok(Self { path })
    }

    /// Writes the allowlist, copies the plugin in and resolves settings pointing at both,
    /// ignoring any `JOBHOST_*` variables and `jobhost.toml` of the caller.
    fn settings(&self, fixture: &Path) -> anyhow::Result<Settings> {
        let allowlist = self.path.join("allowlist.toml");
        std::fs::write(&allowlist, "[jobs]\n'Tests\\Misbehave' = [\"ok\"]\n")
            .with_context(|| format!("cannot write {}", allowlist.display()))?;
        let plugin_dir = self.path.join("plugins");
        std::fs::create_dir(&plugin_dir)
            .with_context(|| format!("cannot create {}", plugin_dir.display()))?;
        // A private copy, as the host's snapshots are: a rebuild of the fixture while the bench
        // runs must not pull the file from under the workers mapping it.
        std::fs::copy(fixture, plugin_dir.join(PLUGIN_FILE))
            .with_context(|| format!("cannot copy {}", fixture.display()))?;
        let overrides = Overrides {
            plugin_dir: Some(plugin_dir),
            allowlist: Some(allowlist),
            state_dir: Some(self.path.join("state")),
            log_dir: Some(self.path.join("logs")),
            env: Some("bench".into()),
            ..Overrides::default()
        };
        Settings::resolve_with(&overrides, &self.path, |_| None)
            .context("cannot resolve bench settings")
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!(
                "worker_spawn: cannot remove scratch directory {}: {e}",
                self.path.display()
            );
        }
    }
}
