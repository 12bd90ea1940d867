//! PostgreSQL beside SQLite: how fast 1, 2 and 3 dispatchers sharing one PostgreSQL queue
//! drain a backlog of no-op jobs, beside one dispatcher on SQLite, and how fast an application
//! enqueues through the Rust API into each.
//!
//! Run it with
//!
//! ```text
//! cargo build --release --workspace && cargo bench -p jobhost --bench postgres
//! ```
//!
//! The first command builds the release `jobhost` binary (the dispatchers and their workers) and
//! the fixture plugin `libmisbehave_fixture.so`, which `cargo bench -p jobhost` alone does not.
//! Without cargo's `--bench` argument (as under `cargo test --all-targets`) it makes a quick
//! smoke run with small counts instead. The counts can be set with
//!
//! | variable | what | default |
//! | --- | --- | --- |
//! | `POSTGRES_DRAIN_JOBS` | no-op jobs drained in each configuration | 2000 |
//! | `POSTGRES_ENQUEUE_JOBS` | jobs enqueued one `dispatch` each, then again in batches of 1000 | 5000 |
//!
//! PostgreSQL is the server `JOBHOST_TEST_POSTGRES` names (by default
//! `postgres://postgres@127.0.0.1:5432/postgres`, which `ci/postgres/setup` provides), as for
//! the tests: each measurement on it gets a throwaway database of its own
//! ([`jobhost_testing::TestDatabase`]), dropped when it ends. SQLite is the default store, `jobs.sqlite3` in the
//! installation's state directory.
//!
//! Each dispatcher is a `jobhost serve --slots 2` of an installation of its own (plugin
//! directory, allowlist, `jobhost.toml`, state and log directories, as a host would have) under
//! one scratch directory; the installations of one measurement name the same database.
//!
//! 1. **drain**: with the dispatchers started and idle, from the first `dispatch_batch` of the
//!    backlog (batches of 1000, through the first installation's [`jobhost::Client`]) until the
//!    store counts every job completed. Which dispatcher ran how many is printed. Every
//!    attempt is a worker process, so on a machine with few cores the dispatchers compete
//!    for the same CPUs: more dispatchers than cores / 2 cannot add throughput there.
//! 2. **enqueue**: with one idle dispatcher running, `dispatch` of one parked job (delayed an
//!    hour) per call, then as many in `dispatch_batch` calls of 1000.
//!
//! Before each measurement the bench waits a second and counts the cores the machine kept busy
//! meanwhile (the table's last column: other processes, including the PostgreSQL server
//! serving someone else); above 0.15 of a core the figures are flagged as unreliable.
//!
//! The dispatchers and workers are the real release `jobhost` binary, found beside the bench
//! binary's directory by [`jobhost::runner::jobhost_program`] (or `$JOBHOST_BIN`); `main`
//! still first handles the hidden `__worker` and `__inspect` subcommands
//! ([`jobhost::runner::child::exit_if_child`]), so the bench binary can stand in as a worker.

// Public, so that what only the other benches use of it is not reported unused here.
pub mod common;

use std::{path::Path, process::ExitCode, time::Duration};

use common::{
    bench_main, busy_cores, count, cpus, enqueue_parked, ensure_in_state, find_fixture,
    jobhost_binary, ms,
    runs::{drain, Backend},
    warm_up, EnqueueCalls, Installation, Scratch, Served, ALLOWLIST, BATCH, CLASS, NOISY, OK,
    PLUGIN_FILE, SETTINGS, WARM_UP,
};
use jobhost::{runner::child, store::JobState};

const BENCH: &str = "postgres";
/// Iteration counts: (variable, bench default, smoke default).
const DRAIN: (&str, usize, usize) = ("POSTGRES_DRAIN_JOBS", 2000, 40);
const ENQUEUE: (&str, usize, usize) = ("POSTGRES_ENQUEUE_JOBS", 5000, 200);

fn main() -> ExitCode {
    // The workers are the real jobhost binary; this one serves as one only if it is pointed at
    // itself with JOBHOST_BIN.
    child::exit_if_child();
    bench_main(BENCH, run)
}

fn run(bench_mode: bool) -> anyhow::Result<()> {
    let drain_jobs = count(bench_mode, DRAIN)?;
    let enqueue_jobs = count(bench_mode, ENQUEUE)?;
    let fixture = find_fixture(BENCH, PLUGIN_FILE)?;
    let jobhost = jobhost_binary()?;
    let scratch = Scratch::create(
        &std::env::temp_dir(),
        "jobhost-bench-postgres",
        BENCH,
        false,
    )?;
    println!(
        "postgres: {} CPUs; {drain_jobs} jobs drained per configuration, {enqueue_jobs} enqueued \
         per mode{}",
        cpus(),
        if bench_mode { "" } else { " (smoke run)" }
    );
    println!("jobhost: {}", jobhost.display());
    println!("plugin: {}", fixture.display());
    println!("scratch: {}", scratch.path.display());
    // Each measurement first samples the machine's load for this long, waiting.
    let quiet = if bench_mode {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(100)
    };
    // What, how much, its unit, and the cores other processes kept busy just before.
    let mut rows: Vec<(String, f64, &str, f64)> = Vec::new();

    println!("\n[1] drain: {drain_jobs} no-op jobs, dispatchers of 2 slots each");
    for (backend, dispatchers) in [
        (Backend::Sqlite, 1),
        (Backend::postgres()?, 1),
        (Backend::postgres()?, 2),
        (Backend::postgres()?, 3),
    ] {
        let label = format!("drain, {}, {dispatchers} dispatcher(s)", backend.name());
        let name = format!(
            "drain-{}-{dispatchers}",
            backend.name().to_ascii_lowercase()
        );
        let busy = busy_cores(quiet)?;
        let installs =
            backend.installations(&scratch.path, &fixture, &name, dispatchers, SETTINGS)?;
        let (drain, ()) = drain(&installs, drain_jobs, None, |_| Ok(()), Ok)?;
        let rate = drain.rate();
        println!(
            "  {label}: {:.3} s ({rate:.0} jobs/s), of which {:.1} ms enqueueing; jobs run by \
             each dispatcher: {:?}",
            drain.wall.as_secs_f64(),
            ms(drain.enqueue),
            drain.by_dispatcher.values().collect::<Vec<_>>(),
        );
        rows.push((label, rate, "jobs/s", busy));
    }

    println!("\n[2] enqueue: {enqueue_jobs} parked jobs per mode, one idle dispatcher running");
    for backend in [Backend::Sqlite, Backend::postgres()?] {
        let name = format!("enqueue-{}", backend.name().to_ascii_lowercase());
        let busy = busy_cores(quiet)?;
        let calls = enqueue(&scratch.path, &fixture, &backend, &name, enqueue_jobs)?;
        println!(
            "  {}: dispatch() p50 {:.3} ms p99 {:.3} ms; batch of {BATCH} p50 {:.2} ms p99 {:.2} \
             ms",
            backend.name(),
            ms(calls.single.percentile(0.50)),
            ms(calls.single.percentile(0.99)),
            ms(calls.batch.percentile(0.50)),
            ms(calls.batch.percentile(0.99)),
        );
        rows.push((
            format!("dispatch, 1 per call, {}", backend.name()),
            calls.single_rate(),
            "jobs/s",
            busy,
        ));
        rows.push((
            format!("dispatch_batch of {BATCH}, {}", backend.name()),
            calls.batch_rate(),
            "jobs/s",
            busy,
        ));
    }

    println!();
    println!(
        "{:<44} {:>12} {:<8} {:>14}",
        "what", "value", "unit", "others' cores"
    );
    for (what, value, unit, busy) in &rows {
        println!("{what:<44} {value:>12.0} {unit:<8} {busy:>14.2}");
    }
    if rows.iter().any(|&(.., busy)| busy > NOISY) {
        println!(
            "\nWARNING: other processes kept the machine busy just before some measurements \
             (last column, sampled for {quiet:?} before each); their figures are worse than on \
             an idle machine. Run again when it is."
        );
    }
    println!(
        "\nA job is {CLASS}@{OK}, run in a worker process of its own; the machine has {} CPUs.",
        cpus()
    );
    Ok(())
}

// ----- [2] enqueue -----

/// Enqueues `jobs` parked jobs one `dispatch` each, then `jobs` more in batches, into a new
/// installation `name` on `backend` whose dispatcher runs idle.
fn enqueue(
    scratch: &Path,
    fixture: &Path,
    backend: &Backend,
    name: &str,
    jobs: usize,
) -> anyhow::Result<EnqueueCalls> {
    let install = Installation::create(scratch, name, fixture, ALLOWLIST, &backend.settings())?;
    let mut client = install.client()?;
    let dispatcher = Served::start(&install)?;
    warm_up(&mut client)?;
    let calls = enqueue_parked(&mut client, jobs)?;
    ensure_in_state(&mut client, JobState::Scheduled, 2 * jobs + WARM_UP)?;
    dispatcher.stop(&client)?;
    Ok(calls)
}
