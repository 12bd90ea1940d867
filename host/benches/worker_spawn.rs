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
//! An attempt goes through `jobhost::runner::supervisor::attempts::run_attempt` (a
//! dispatcher's spawner and supervision), which spawns the real release `jobhost` binary as the worker (found beside the bench
//! binary's directory by `jobhost::runner::jobhost_program`, or `$JOBHOST_BIN`): each attempt
//! runs in a real worker process.

// Public, so that what only the other benches use of it is not reported unused here.
pub mod common;

use std::{path::Path, process::ExitCode};

use anyhow::ensure;
use common::{
    bench_main, count, cpus, find_fixture, install, measure, ms, spawn_true, AttemptRunner,
    Scratch, ALLOWLIST, CLASS, OK, PLUGIN_FILE, TRUE_PROGRAM,
};
use jobhost::config::settings::{Overrides, Settings};

const BENCH: &str = "worker_spawn";
const ITERS_VAR: &str = "WORKER_SPAWN_ITERS";
const DEFAULT_ATTEMPTS: usize = 1000;
const SMOKE_ATTEMPTS: usize = 4;

fn main() -> ExitCode {
    bench_main(BENCH, run)
}

fn run(bench_mode: bool) -> anyhow::Result<()> {
    let attempts = count(bench_mode, (ITERS_VAR, DEFAULT_ATTEMPTS, SMOKE_ATTEMPTS))?;
    let spawns = attempts * 2;
    ensure!(
        Path::new(TRUE_PROGRAM).is_file(),
        "{TRUE_PROGRAM} not found; this benchmark needs it as the exec floor"
    );
    let fixture = find_fixture(BENCH, PLUGIN_FILE)?;
    let scratch = Scratch::create(&std::env::temp_dir(), "jobhost-bench", BENCH, false)?;
    let settings = settings(&scratch.path, &fixture)?;
    let plugin = settings.plugin_dir.join(PLUGIN_FILE);
    let attempt = AttemptRunner::new(&settings)?;

    let cpus = cpus();
    println!(
        "worker_spawn: {cpus} CPUs, {spawns} /bin/true spawns and {attempts} attempts per mode \
         ({ITERS_VAR}={attempts}){}",
        if bench_mode { "" } else { ", smoke run" }
    );
    println!("worker: {}", jobhost::runner::jobhost_program().display());
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
        "an attempt is {CLASS}@{OK} through jobhost::runner::supervisor::attempts::run_attempt: worker spawn, \
         plugin load, invoke, output capture, report file, supervision"
    );
    Ok(())
}

/// An installation in the scratch directory `root`: the allowlist approving `ok`, a copy of the
/// plugin, and settings pointing at both and at state and log directories beside them.
fn settings(root: &Path, fixture: &Path) -> anyhow::Result<Settings> {
    let overrides = Overrides {
        plugin_dir: Some(root.join("plugins")),
        allowlist: Some(root.join("allowlist.toml")),
        state_dir: Some(root.join("state")),
        log_dir: Some(root.join("logs")),
        env: Some("bench".into()),
        ..Overrides::default()
    };
    install(root, fixture, &[("allowlist.toml", ALLOWLIST)], &overrides)
}
