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
//! ([`TestDatabase`]), dropped when it ends. SQLite is the default store, `jobs.sqlite3` in the
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

use std::{
    collections::BTreeMap,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use common::{
    bench_main, busy_cores, count, cpus, dispatch_in_batches, enqueue_parked, ensure_scheduled,
    find_fixture, jobhost_binary, ms, warm_up, EnqueueCalls, Installation, Scratch, Served, BATCH,
    CLASS, NOISY, OK, PLUGIN_FILE, WARM_UP,
};
use jobhost::{
    runner::child,
    store::{postgres::TestDatabase, DispatcherId, JobState},
    Job,
};
use serde_json::Value;

const BENCH: &str = "postgres";
const ALLOWLIST: &str = "[jobs]\n'Tests\\Misbehave' = [\"ok\"]\n";
const SETTINGS: &str = "plugin_dir = \"plugins\"\nallowlist = \"allowlist.toml\"\n\
    state_dir = \"state\"\nlog_dir = \"logs\"\nenv = \"production\"\n\
    dispatcher.slots = 2\ndispatcher.idle_exit = 600\nweb.enabled = false\n";
/// Iteration counts: (variable, bench default, smoke default).
const DRAIN: (&str, usize, usize) = ("POSTGRES_DRAIN_JOBS", 2000, 40);
const ENQUEUE: (&str, usize, usize) = ("POSTGRES_ENQUEUE_JOBS", 5000, 200);
/// How often the drain is checked.
const POLL: Duration = Duration::from_millis(10);

fn main() -> ExitCode {
    // The workers are the real jobhost binary; this one serves as one only if it is pointed at
    // itself with JOBHOST_BIN.
    child::exit_if_child();
    bench_main(BENCH, run)
}

/// Where a measurement's jobs are.
enum Backend {
    /// SQLite, in each installation's state directory: one dispatcher only.
    Sqlite,
    /// A throwaway PostgreSQL database, shared by the installations.
    Postgres(TestDatabase),
}

impl Backend {
    /// A new throwaway PostgreSQL database.
    fn postgres() -> anyhow::Result<Self> {
        TestDatabase::try_create()
            .map(Self::Postgres)
            .map_err(anyhow::Error::msg)
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres(_) => "PostgreSQL",
        }
    }

    /// The `jobhost.toml` of an installation on it.
    fn settings(&self) -> String {
        match self {
            Self::Sqlite => SETTINGS.to_owned(),
            // A JSON string is a TOML basic string.
            Self::Postgres(db) => format!("store = {}\n{SETTINGS}", Value::from(db.url())),
        }
    }
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
        let drain = drain(
            &scratch.path,
            &fixture,
            &backend,
            &name,
            dispatchers,
            drain_jobs,
        )?;
        let rate = drain_jobs as f64 / drain.wall.as_secs_f64();
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

// ----- [1] drain -----

struct Drain {
    /// From the first `dispatch_batch` until every job completed.
    wall: Duration,
    /// The `dispatch_batch` calls.
    enqueue: Duration,
    /// How many jobs each dispatcher ran.
    by_dispatcher: BTreeMap<DispatcherId, usize>,
}

/// Starts `dispatchers` installations named `name-N` on `backend`, each with its dispatcher,
/// then enqueues `jobs` no-op jobs and times them from the first enqueue until all completed.
fn drain(
    scratch: &Path,
    fixture: &Path,
    backend: &Backend,
    name: &str,
    dispatchers: usize,
    jobs: usize,
) -> anyhow::Result<Drain> {
    let installs = (0..dispatchers)
        .map(|n| {
            let name = format!("{name}-{n}");
            Installation::create(scratch, &name, fixture, ALLOWLIST, &backend.settings())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let served = installs
        .iter()
        .map(Served::start)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut client = installs[0].client()?;
    let deadline = Duration::from_secs(60).max(Duration::from_millis(50 * jobs as u64));
    let started = Instant::now();
    let ids = dispatch_in_batches(&mut client, jobs, || Job::new(CLASS, OK))?;
    let enqueue = started.elapsed();
    let wall = loop {
        let stats = client.store().stats().context("cannot read the stats")?;
        let n = |state: JobState| stats.by_state.get(state.as_str()).copied().unwrap_or(0);
        if n(JobState::Completed) as usize >= jobs {
            break started.elapsed();
        }
        let failed = n(JobState::Failed) + n(JobState::Cancelled);
        if failed > 0 {
            bail!("{failed} drain job(s) failed or were cancelled: {stats:?}");
        }
        ensure!(
            started.elapsed() < deadline,
            "the drain did not finish in {deadline:?}: {stats:?}"
        );
        std::thread::sleep(POLL);
    };
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
    for (install, dispatcher) in installs.iter().zip(served) {
        dispatcher.stop(&install.client()?)?;
    }
    Ok(Drain {
        wall,
        enqueue,
        by_dispatcher,
    })
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
    ensure_scheduled(&mut client, 2 * jobs + WARM_UP)?;
    dispatcher.stop(&client)?;
    Ok(calls)
}
