//! Hot swap: how long after a new plugin version is renamed into the plugin directory of a
//! running `jobhost serve` it serves new jobs.
//!
//! Run it with
//!
//! ```text
//! cargo build --release --workspace && cargo bench -p jobhost --bench hot_swap
//! ```
//!
//! The first command builds the release `jobhost` binary and the versioned fixture plugin
//! `libversioned_fixture.so`, whose jobs return the name of the build that ran them; each swap
//! installs a new build, made by rewriting that name in a copy of the file (a new hash, a valid
//! plugin). Without cargo's `--bench` argument (as under `cargo test --all-targets`) it makes
//! a quick smoke run. Two things are measured, each `HOT_SWAP_ITERS` times (default 40):
//!
//! 1. **watcher**: from the `rename` until the dispatcher's watcher has written the catalog
//!    naming the new version (nobody else looks at the directory meanwhile). This is what an
//!    idle dispatcher, the dashboard and `jobhost plugins` see.
//! 2. **first job**: from the `rename` until a job dispatched right after it has completed, on
//!    the new version (checked): the enqueuer brings the catalog up to date itself if the
//!    watcher has not yet, so this includes inspecting the new file, storing the job, a worker
//!    starting and the job running.
//!
//! The target is 500 ms for both.

// Public, so that what only the other benches use of it is not reported unused here.
pub mod common;

use std::{
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use common::{
    bench_main, count, cpus, find_fixture, jobhost_binary, ms, Installation, Scratch, Served,
};
use jobhost::{
    catalog::inventory::{CatalogPaths, Inventory},
    runner::child,
    store::JobState,
    Job,
};

const BENCH: &str = "hot_swap";
const FIXTURE: &str = "libversioned_fixture.so";
const CLASS: &str = r"Tests\Versioned";
const ALLOWLIST: &str = "[jobs]\n'Tests\\Versioned' = [\"version\"]\n";
const SETTINGS: &str = "plugin_dir = \"plugins\"\nallowlist = \"allowlist.toml\"\n\
    state_dir = \"state\"\nlog_dir = \"logs\"\nenv = \"production\"\n\
    dispatcher.slots = 2\nweb.enabled = false\n";
/// What precedes the build's name in the fixture file.
const MARKER: &[u8] = b"jobhost-fixture-version:";
/// Swaps per measurement: (variable, bench default, smoke default).
const ITERS: (&str, usize, usize) = ("HOT_SWAP_ITERS", 40, 3);
/// How often the catalog and the job are looked at.
const POLL: Duration = Duration::from_millis(1);
/// The target, from the rename to the new version serving.
const TARGET: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    child::exit_if_child();
    bench_main(BENCH, run)
}

fn run(bench_mode: bool) -> anyhow::Result<()> {
    let iters = count(bench_mode, ITERS)?;
    let fixture = find_fixture(BENCH, FIXTURE)?;
    let jobhost = jobhost_binary()?;
    let built = std::fs::read(&fixture).with_context(|| format!("cannot read {FIXTURE}"))?;
    let marker = built
        .windows(MARKER.len())
        .position(|w| w == MARKER)
        .context("no version marker in the fixture")?
        + MARKER.len();
    let scratch = Scratch::create(
        &std::env::temp_dir(),
        "jobhost-bench-hot-swap",
        BENCH,
        false,
    )?;
    println!(
        "hot_swap: {} CPUs; {iters} swaps per measurement{}",
        cpus(),
        if bench_mode { "" } else { " (smoke run)" }
    );
    println!("jobhost: {}", jobhost.display());
    println!("plugin: {} ({} bytes)", fixture.display(), built.len());
    let install = Installation::create(&scratch.path, "swap", &fixture, ALLOWLIST, SETTINGS)?;
    let mut client = install.client()?;
    let dispatcher = Served::start(&install)?;
    let catalog = CatalogPaths::new(&install.settings.state_dir).catalog;
    let target = install.settings.plugin_dir.join(FIXTURE);
    let started = Instant::now();
    while serving(&catalog).is_none() {
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the dispatcher did not write the plugin catalog within 30 s"
        );
        std::thread::sleep(POLL);
    }
    let mut swap = 0;
    let mut next_build = || {
        swap += 1;
        let name = format!("s{swap}");
        let mut bytes = built.clone();
        let mut field = [0u8; 8];
        field[..name.len()].copy_from_slice(name.as_bytes());
        bytes[marker..marker + 8].copy_from_slice(&field);
        let hash = blake3::hash(&bytes).to_hex().to_string();
        (name, hash, bytes)
    };

    let mut watcher = Vec::with_capacity(iters);
    for _ in 0..iters {
        let (_, hash, bytes) = next_build();
        let started = rename_in(&target, &bytes)?;
        loop {
            if serving(&catalog).as_deref() == Some(hash.as_str()) {
                watcher.push(started.elapsed());
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "the watcher did not take in the new version within 30 s"
            );
            std::thread::sleep(POLL);
        }
    }
    report(
        "watcher: rename -> catalog names the new version",
        &mut watcher,
    );

    let mut first_job = Vec::with_capacity(iters);
    for _ in 0..iters {
        let (name, _, bytes) = next_build();
        let started = rename_in(&target, &bytes)?;
        let id = client.dispatch(Job::new(CLASS, "version"))?;
        let record = loop {
            let (record, _) = client.job(id)?.context("the job vanished")?;
            if record.state.is_terminal() {
                break record;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "job {id} did not finish within 30 s"
            );
            std::thread::sleep(POLL);
        };
        first_job.push(started.elapsed());
        ensure!(
            record.state == JobState::Completed,
            "job {id} ended {}",
            record.state
        );
        let ran = record.result.as_ref().and_then(|r| r["version"].as_str());
        ensure!(
            ran == Some(name.as_str()),
            "job {id} ran build {ran:?}, not the new build {name}"
        );
    }
    report(
        "first job: rename -> a job dispatched after it completed on the new version",
        &mut first_job,
    );
    dispatcher.stop(&client)
}

/// Writes `bytes` beside `target` and renames it over `target`, as a deploy does; returns
/// when the rename happened.
fn rename_in(target: &Path, bytes: &[u8]) -> anyhow::Result<Instant> {
    let tmp = target.with_file_name(".incoming.tmp");
    std::fs::write(&tmp, bytes).context("cannot write the new build")?;
    let started = Instant::now();
    std::fs::rename(&tmp, target).context("cannot rename the new build into place")?;
    Ok(started)
}

/// The hash of the version serving the fixture's class, as the catalog file says now.
fn serving(catalog: &Path) -> Option<String> {
    let inventory = Inventory::read(catalog)?;
    inventory
        .find(CLASS)
        .map(|offer| offer.version.hash.clone())
}

/// Prints the median, 95th percentile and maximum of `times`, against the target.
fn report(what: &str, times: &mut [Duration]) {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let max = times[times.len() - 1];
    println!(
        "  {what}: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms over {} swaps; target {:.0} ms: {}",
        ms(at(0.5)),
        ms(at(0.95)),
        ms(max),
        times.len(),
        ms(TARGET),
        if max <= TARGET { "met" } else { "MISSED" }
    );
}
