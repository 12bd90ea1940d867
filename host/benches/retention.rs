//! Retention under load: how much disk a state directory (the SQLite database, its WAL and the
//! attempt files) takes after many no-op jobs, with retention on (a period of a few seconds)
//! and off, and whether the WAL stays bounded while the dispatcher works flat out.
//!
//! Run it with
//!
//! ```text
//! cargo build --release --workspace && cargo bench -p jobhost --bench retention
//! ```
//!
//! The first command builds the release `jobhost` binary (the dispatcher and its workers) and
//! the fixture plugin `libmisbehave_fixture.so`. Without cargo's `--bench` argument (as under
//! `cargo test --all-targets`) it makes a quick smoke run with small counts instead.
//!
//! | variable | what | default |
//! | --- | --- | --- |
//! | `RETENTION_JOBS` | no-op jobs run in each installation | 20000 |
//! | `RETENTION_PERIOD` | seconds completed jobs are kept with retention on | 5 |
//! | `RETENTION_KEEP` | set to keep the scratch directory | unset |
//! | `RETENTION_SCRATCH_DIR` | where the scratch directory goes | temp dir |
//!
//! Two installations each get the jobs at once (in batches of 1,000 through the Rust API) and
//! a `jobhost serve --slots 2` that drains them: `kept` keeps completed jobs forever
//! (`retention.completed = 0`), `pruned` for `RETENTION_PERIOD` seconds, pruning every second.
//! While it drains, the database, the WAL and the number of entries in `attempts/` (job
//! directories and attempt reports) are
//! read every second; once it has drained and a period and two rounds have passed, the whole
//! state directory is measured as `du` would (allocated blocks). The figures per job of `kept`
//! say what an hour at 50 jobs/s (180,000 jobs) takes without retention; `pruned` stays at
//! what its period holds, however long it runs.

// Public, so that what the other benches use of it is not reported unused here.
pub mod common;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use common::{
    bench_main, count, cpus, dispatch_in_batches, find_fixture, jobhost_binary, Installation,
    Scratch, Served, CLASS, OK, PLUGIN_FILE,
};
use jobhost::{runner::child, store::sqlite::DB_FILE, Job};

const BENCH: &str = "retention";
const ALLOWLIST: &str = "[jobs]\n'Tests\\Misbehave' = [\"ok\"]\n";
const SETTINGS: &str = "plugin_dir = \"plugins\"\nallowlist = \"allowlist.toml\"\n\
    state_dir = \"state\"\nlog_dir = \"logs\"\nenv = \"production\"\n\
    dispatcher.slots = 2\nweb.enabled = false\nretention.interval = 1\n";
const JOBS: (&str, usize, usize) = ("RETENTION_JOBS", 20_000, 300);
/// How often the state directory is read while the dispatcher drains.
const SAMPLE: Duration = Duration::from_secs(1);
/// Jobs an hour at 50 jobs/s.
const HOUR_JOBS: f64 = 50.0 * 3600.0;

fn main() -> ExitCode {
    child::exit_if_child();
    bench_main(BENCH, run)
}

fn run(bench_mode: bool) -> anyhow::Result<()> {
    let jobs = count(bench_mode, JOBS)?;
    let period: f64 = match std::env::var("RETENTION_PERIOD") {
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|p: &f64| p.is_finite() && *p > 0.0)
            .with_context(|| format!("RETENTION_PERIOD={v:?}: expected seconds, more than 0"))?,
        Err(_) => 5.0,
    };
    let fixture = find_fixture(BENCH, PLUGIN_FILE)?;
    let jobhost = jobhost_binary()?;
    let parent =
        std::env::var_os("RETENTION_SCRATCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let keep = std::env::var_os("RETENTION_KEEP").is_some();
    let scratch = Scratch::create(&parent, "jobhost-bench-retention", BENCH, keep)?;
    println!(
        "retention: {} CPUs; {jobs} no-op jobs per installation, period {period} s{}",
        cpus(),
        if bench_mode { "" } else { " (smoke run)" }
    );
    println!("jobhost: {}", jobhost.display());
    println!("scratch: {}", scratch.path.display());

    let kept = drain(
        &scratch.path,
        &fixture,
        "kept",
        "retention.completed = 0\n",
        jobs,
        0.0,
    )?;
    let pruned_settings = format!("retention.completed = {period}\n");
    let pruned = drain(
        &scratch.path,
        &fixture,
        "pruned",
        &pruned_settings,
        jobs,
        period,
    )?;

    println!();
    println!(
        "{:<8} {:>7} {:>10} {:>11} {:>9} {:>9} {:>10} {:>9} {:>9}",
        "", "jobs/s", "max WAL", "max entries", "WAL", "db", "attempts/", "entries", "other"
    );
    for (name, run) in [("kept", &kept), ("pruned", &pruned)] {
        println!(
            "{name:<8} {:>7.0} {:>10} {:>11} {:>9} {:>9} {:>10} {:>9} {:>9}",
            run.rate,
            mib(run.max_wal),
            run.max_entries,
            mib(run.end.wal),
            mib(run.end.db),
            mib(run.end.attempts),
            run.end.entries,
            mib(run.end.other)
        );
    }
    // What grows with the jobs kept: the database and the attempt files. The WAL is bounded
    // apart, and the rest (the plugin catalog and snapshots) does not depend on the jobs.
    let per_job = (kept.end.db + kept.end.attempts) as f64 / jobs as f64;
    println!();
    println!(
        "without retention: {per_job:.0} bytes a job (database and attempt files), {} after an \
         hour at 50 jobs/s, and growing for as long as it runs",
        mib((per_job * HOUR_JOBS) as u64)
    );
    println!(
        "with retention ({period} s): database and attempt files {} at the end; the WAL {} at \
         the end, {} at most (the database file keeps its largest size: freed pages are reused)",
        mib(pruned.end.db + pruned.end.attempts),
        mib(pruned.end.wal),
        mib(pruned.max_wal)
    );
    println!(
        "the default periods hold a day of completed jobs: at 50 jobs/s about {}",
        mib((per_job * 50.0 * 86_400.0) as u64)
    );
    Ok(())
}

/// What one installation's drain showed.
struct Drained {
    /// Jobs a second.
    rate: f64,
    /// The largest WAL file seen while it drained.
    max_wal: u64,
    /// The most entries (job directories and reports) seen in `attempts/` while it drained.
    max_entries: u64,
    /// The state directory at the end.
    end: Usage,
}

/// Runs `jobs` no-op jobs in a new installation `name` (with `extra` settings) and measures
/// its state directory while it drains and once `period` seconds and two rounds have passed.
fn drain(
    scratch: &Path,
    fixture: &Path,
    name: &str,
    extra: &str,
    jobs: usize,
    period: f64,
) -> anyhow::Result<Drained> {
    println!("{name}: {}", extra.trim());
    let install = Installation::create(
        scratch,
        name,
        fixture,
        ALLOWLIST,
        &format!("{SETTINGS}{extra}"),
    )?;
    let state_dir = install.settings.state_dir.clone();
    let mut client = install.client()?;
    let dispatcher = Served::start(&install)?;
    let started = Instant::now();
    dispatch_in_batches(&mut client, jobs, || Job::new(CLASS, OK))?;
    let (mut max_wal, mut max_entries) = (0, 0);
    loop {
        let seen = Usage::sample(&state_dir);
        max_wal = max_wal.max(seen.wal);
        max_entries = max_entries.max(seen.entries);
        if client.store().unfinished()? == 0 {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "{name}: {jobs} jobs did not drain within an hour"
        );
        std::thread::sleep(SAMPLE);
    }
    let drained = started.elapsed();
    let rate = jobs as f64 / drained.as_secs_f64();
    println!(
        "  drained {jobs} jobs in {:.1} s ({rate:.0} jobs/s)",
        drained.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs_f64(period) + 2 * SAMPLE);
    let stats = client.store().stats()?;
    let completed = stats.by_state.get("completed").copied().unwrap_or(0);
    println!("  {completed} completed jobs stored at the end");
    dispatcher.stop(&client)?;
    Ok(Drained {
        rate,
        max_wal,
        max_entries,
        end: Usage::measure(&state_dir),
    })
}

/// A state directory's disk use, in allocated bytes.
#[derive(Debug, Default)]
struct Usage {
    db: u64,
    wal: u64,
    /// `attempts/` and everything under it.
    attempts: u64,
    /// Entries in `attempts/`: job directories and attempt reports.
    entries: u64,
    /// Everything else in the state directory (the plugin catalog and snapshots, ...).
    other: u64,
}

impl Usage {
    /// The database, the WAL and the number of entries in `attempts/`: cheap enough to read while
    /// the dispatcher works.
    fn sample(state_dir: &Path) -> Self {
        Self {
            db: allocated(&state_dir.join(DB_FILE)),
            wal: apparent(&state_dir.join(format!("{DB_FILE}-wal"))),
            entries: std::fs::read_dir(state_dir.join("attempts")).map_or(0, |d| d.count() as u64),
            ..Self::default()
        }
    }

    /// Everything.
    fn measure(state_dir: &Path) -> Self {
        let mut usage = Self::sample(state_dir);
        usage.wal = allocated(&state_dir.join(format!("{DB_FILE}-wal")));
        usage.attempts = du(&state_dir.join("attempts"));
        usage.other = du(state_dir) - usage.db - usage.wal - usage.attempts;
        usage
    }
}

/// The size of `path`, 0 if it does not exist.
fn apparent(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The bytes allocated to `path`, 0 if it does not exist.
fn allocated(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).map_or(0, |m| blocks(&m))
}

/// The bytes allocated to a file as `du` counts them; where the platform does not say (Windows),
/// its length.
fn blocks(meta: &std::fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        std::os::unix::fs::MetadataExt::blocks(meta) * 512
    }
    #[cfg(not(unix))]
    {
        meta.len()
    }
}

/// The bytes allocated to `path` and everything under it, as `du` counts them.
fn du(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = blocks(&meta);
    match std::fs::read_dir(path) {
        Ok(entries) if meta.is_dir() => own + entries.flatten().map(|e| du(&e.path())).sum::<u64>(),
        _ => own,
    }
}

/// `bytes` in MiB, for the table.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
