//! What the `worker_spawn` and `queue` benches share: their `main` and iteration counts, the
//! fixture plugin and the scratch directory they set up installations in, no-op attempts run
//! through the real attempt path ([`AttemptRunner`]), and timing them ([`measure`],
//! [`Measured`]).
//!
//! It is a module of each bench (`mod common;`), not a bench target of its own: cargo takes
//! only the files directly in `benches/` for targets. So everything here is used by both;
//! what only one bench needs stays in that bench.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _};
use jobhost::{
    attempt::{run_attempt, AttemptSpec, Outcome},
    platform::CancelToken,
    settings::{Overrides, Settings},
};
use serde_json::{json, Value};

/// The fixture plugin's file name, in the target profile directory and in each installation's
/// plugin directory.
pub const PLUGIN_FILE: &str = "libmisbehave_fixture.so";
/// The fixture plugin's job class.
pub const CLASS: &str = r"Tests\Misbehave";
/// Its no-op method, returning `{"ok": true}`.
pub const OK: &str = "ok";

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

/// The number of CPUs this process may use, 0 if unknown.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// Milliseconds in `d`.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ----- files -----

/// The fixture plugin in the target profile directory the bench binary `bench` was built into
/// (`target/release/deps/BENCH-…` beside `target/release/libmisbehave_fixture.so`).
pub fn find_fixture(bench: &str) -> anyhow::Result<PathBuf> {
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
             {bench}`)",
            exe.display()
        ),
    }
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
/// `root/plugins` and the `files` (name, text) in `root`; then resolves `overrides` against
/// `root`, ignoring any `JOBHOST_*` variables of the caller.
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
    std::fs::copy(fixture, plugin_dir.join(PLUGIN_FILE))
        .with_context(|| format!("cannot copy {}", fixture.display()))?;
    for (file, text) in files {
        std::fs::write(root.join(file), text)
            .with_context(|| format!("cannot write {file} in {}", root.display()))?;
    }
    Settings::resolve_with(overrides, root, |_| None).context("cannot resolve the bench settings")
}

// ----- attempts -----

/// Runs no-op attempts of the fixture plugin through the real attempt path, in worker
/// processes of the release `jobhost` binary.
pub struct AttemptRunner<'a> {
    /// The installation's settings.
    settings: &'a Settings,
    /// The plugin file in its plugin directory.
    plugin: PathBuf,
    /// Never cancelled.
    cancel: Arc<CancelToken>,
}

impl<'a> AttemptRunner<'a> {
    /// Runs attempts in the installation of `settings`.
    pub fn new(settings: &'a Settings) -> anyhow::Result<Self> {
        Ok(Self {
            settings,
            plugin: settings.plugin_dir.join(PLUGIN_FILE),
            cancel: CancelToken::new().context("cannot create a cancel token")?,
        })
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
        let spec = AttemptSpec {
            job_id,
            attempt: 1,
            class: CLASS,
            method,
            params: &params,
            plugin: &self.plugin,
            timeout: Duration::from_secs(60),
        };
        let record = run_attempt(self.settings, &spec, &self.cancel, &mut |_| {})
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
