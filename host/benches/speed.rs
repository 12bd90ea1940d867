//! Process isolation against its floor, side by side in one run: the spawn rate of
//! `/bin/true` two at a time, raw attempts two at a time with each spawner, the drain of a
//! backlog of no-op jobs on 2 slots with each spawner on SQLite and on PostgreSQL (and with
//! two PostgreSQL dispatchers), the pickup latency of an idle dispatcher with each spawner, the
//! CPU per job of the dispatcher and of its workers, and the drain with dashboard tabs open.
//! It ends with a table of every figure beside its ratio to the `/bin/true` spawn rate of the
//! same run, so that runs on different machines compare, and the targets set for them.
//!
//! Run it with
//!
//! ```text
//! cargo build --release --workspace && cargo bench -p jobhost --bench speed
//! ```
//!
//! The first command builds the release `jobhost` binary (the dispatchers and their workers) and
//! the fixture plugin `libmisbehave_fixture.so`, which `cargo bench -p jobhost` alone does not.
//! Without cargo's `--bench` argument (as under `cargo test --all-targets`) it makes a quick
//! smoke run with small counts instead. The counts can be set with
//!
//! | variable | what | default |
//! | --- | --- | --- |
//! | `SPEED_SPAWNS` | `/bin/true` spawns, two at a time | 5000 |
//! | `SPEED_ATTEMPTS` | raw attempts per spawner, two at a time | 2000 |
//! | `SPEED_DRAIN_JOBS` | no-op jobs per drain | 5000 |
//! | `SPEED_LATENCY_JOBS` | jobs dispatched one at a time per spawner for the pickup latency | 500 |
//! | `SPEED_TABS` | dashboard tabs open during the last drain | 200 |
//! | `SPEED_PARTS` | which parts to run, as `1,4`: raw attempts, drains, pickup latency, tabs | `1,2,3,4` |
//! | `SPEED_KEEP` | set to keep the scratch directory (databases, logs, attempt files) | unset |
//! | `SPEED_SCRATCH_DIR` | where the scratch directory goes (its file system matters) | temp dir |
//!
//! PostgreSQL is the server `JOBHOST_TEST_POSTGRES` names (by default
//! `postgres://postgres@127.0.0.1:5432/postgres`), as for the tests and the `postgres` bench:
//! each PostgreSQL drain gets a throwaway database of its own, dropped when it ends.
//!
//! **Spawners.** Each dispatcher this bench starts (`jobhost --config FILE serve --slots 2
//! --idle-exit 600`, an installation of its own under the scratch directory) gets
//! `JOBHOST_RUNNER=exec` or `JOBHOST_RUNNER=fork` in its environment, the variable of the
//! `dispatcher.runner` setting. Raw attempts go through `jobhost::runner::supervisor::attempts::run_attempt`
//! (a dispatcher's own spawner and supervision) in this process ([`common::AttemptRunner`])
//! with either runner; a fork spawner's fork server is a child of this bench, started with the first
//! attempt. The drains that are not about spawners (two PostgreSQL dispatchers, the dashboard)
//! use the default, `fork` on Linux.
//!
//! **What is measured.**
//! - *`/bin/true`*: spawn and wait, two threads back to back: the floor every ratio is to.
//! - *raw attempts*: a no-op attempt (`Tests\Misbehave@ok`) through `run_attempt`: worker spawn,
//!   plugin load, invoke, output capture, report, supervision; two threads back to back.
//! - *drains*: with the dispatcher(s) started and idle, from the first `dispatch_batch` of the
//!   backlog (batches of 1000) until the store counts every job completed
//!   ([`common::runs::drain`]).
//! - *pickup latency*: a job that reads the clock, dispatched into an idle dispatcher one at a
//!   time after the last completed: the worker's clock minus the time just before `dispatch`
//!   ([`common::runs::pickup_latency`]).
//! - *CPU per job*, over each SQLite drain: the dispatcher's own, the change of utime + stime
//!   in its `/proc/PID/stat`; its workers', as `/proc` shows them during the drain: the change
//!   of the dispatcher's cutime + cstime (the executed workers it waited for) plus the time of
//!   its children still running, their own and their cutime + cstime (a fork server, and the
//!   forked workers it waited for). The dispatcher's cutime alone would miss forked workers:
//!   a process's cutime counts only the children it has waited for (and what they had waited
//!   for), so workers forked by a fork server, children of a child of the dispatcher, reach
//!   it only when the fork server exits and is waited for. As a check, each drain also prints
//!   the workers' time counted once the dispatcher has exited and this bench has reaped it
//!   (the change of this bench's own cutime + cstime, minus the dispatcher's own time): it is
//!   the same when every process waits for its children, and short by what exited unwaited
//!   for — the bench says so when it is. See [`common::runs::drain`].
//! - *dashboard tabs*: the drain with the dashboard on (`web.listen` on a free loopback port,
//!   an admin token) and nobody watching, then again with `SPEED_TABS` tabs open. A tab is what
//!   the dashboard's script does in a browser: it holds the server-sent event stream
//!   (`GET /events`) open, fetches the overview page once the stream is open, and again on
//!   every `change` event, one fetch at a time (changes during a fetch make one more fetch
//!   after it). All tabs share one session, logged in with the admin token, as the tabs of
//!   one browser do. A tab is two threads of this bench over plain HTTP/1.1, so their CPU is
//!   on the same machine: it is printed (the bench's CPU during the drain).
//! - *the PostgreSQL server's CPU*, over each drain: the change of utime + stime of every
//!   process named `postgres` on this machine (a server elsewhere shows 0), per job.
//!
//! Other processes' CPU use during each measurement is printed (the cores the machine kept
//! busy beyond this bench, what it measured and the PostgreSQL server), and flagged above 0.15
//! of a core.
//!
//! The scratch directory's file system counts as well (see the `queue` bench): on ext4 without
//! a journal, a run started within five minutes of another's cleanup pays for its deletions
//! in every inode it allocates; `SPEED_SCRATCH_DIR=/dev/shm` takes the file system out.
//!
//! The dispatchers and workers are the real release `jobhost` binary, found beside the bench
//! binary's directory by [`jobhost::runner::jobhost_program`] (or `$JOBHOST_BIN`); `main`
//! still first handles the hidden `__worker` and `__inspect` subcommands
//! ([`jobhost::runner::child::exit_if_child`]), so the bench binary can stand in as a worker.

// Public, so that what only the other benches use of it is not reported unused here.
pub mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, TcpStream},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use common::{
    bench_main, count,
    cpu::CpuMeter,
    cpus, find_fixture, jobhost_binary, measure, ms, parts,
    runs::{drain, pickup_latency, Backend, Drain},
    spawn_true,
    table::{Bound, Row},
    AttemptRunner, Installation, Measured, Scratch, ALLOWLIST, BASE_SETTINGS, CLASS, NOISY, OK,
    PLUGIN_FILE, RUNNERS, SETTINGS, TRUE_PROGRAM,
};
use jobhost::{config::settings::Runner, runner::child};
use serde_json::Value;

const BENCH: &str = "speed";
/// Iteration counts: (variable, bench default, smoke default).
const SPAWNS: (&str, usize, usize) = ("SPEED_SPAWNS", 5000, 20);
const ATTEMPTS: (&str, usize, usize) = ("SPEED_ATTEMPTS", 2000, 10);
const DRAIN: (&str, usize, usize) = ("SPEED_DRAIN_JOBS", 5000, 30);
const LATENCY: (&str, usize, usize) = ("SPEED_LATENCY_JOBS", 500, 5);
const TABS: (&str, usize, usize) = ("SPEED_TABS", 200, 3);
const PARTS_VAR: &str = "SPEED_PARTS";
const KEEP_VAR: &str = "SPEED_KEEP";
const SCRATCH_VAR: &str = "SPEED_SCRATCH_DIR";
/// The dashboard's admin token in the installation with tabs open.
const TOKEN: &str = "speed-bench-admin-token-0123456789";
/// Where the dashboard's pages are.
const PREFIX: &str = "/admin/background-jobs";

fn main() -> ExitCode {
    // The workers are the real jobhost binary; this one serves as one only if it is pointed at
    // itself with JOBHOST_BIN.
    child::exit_if_child();
    bench_main(BENCH, run)
}

/// How a figure compares with the `/bin/true` spawn rate.
#[derive(Clone, Copy)]
enum Kind {
    /// Things a second: the ratio is value / spawn rate.
    Rate,
    /// Milliseconds: the ratio is how many spawn intervals (1 / spawn rate) it spans.
    Millis,
    /// A count, or a ratio itself: none.
    Plain,
}

/// A row of the final table: the figure, how it compares, and its target in words.
struct Figure {
    row: Row,
    kind: Kind,
    goal: &'static str,
}

/// The figures as they are measured, and the other processes' load meanwhile.
#[derive(Default)]
struct Report {
    figures: Vec<Figure>,
    noise: Vec<(String, f64)>,
}

impl Report {
    fn info(&mut self, what: &str, value: f64, unit: &'static str, kind: Kind) {
        self.figures.push(Figure {
            row: Row::info(what, value, unit),
            kind,
            goal: "",
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn target(
        &mut self,
        what: &str,
        value: f64,
        unit: &'static str,
        kind: Kind,
        bound: Bound,
        goal: &'static str,
    ) {
        self.figures.push(Figure {
            row: Row::target(what, value, unit, bound),
            kind,
            goal,
        });
    }

    /// A figure whose target is `factor` times a figure measured before, `reference` (a
    /// figure without a target if that was not measured: its part was not run).
    #[allow(clippy::too_many_arguments)]
    fn relative(
        &mut self,
        what: &str,
        value: f64,
        unit: &'static str,
        kind: Kind,
        reference: Option<f64>,
        factor: f64,
        goal: &'static str,
    ) {
        match reference {
            Some(r) => self.target(what, value, unit, kind, Bound::AtLeast(factor * r), goal),
            None => self.figures.push(Figure {
                row: Row::info(what, value, unit),
                kind,
                goal,
            }),
        }
    }

    fn noise(&mut self, what: &str, cores: f64) {
        self.noise.push((what.to_owned(), cores));
    }
}

fn run(bench_mode: bool) -> anyhow::Result<()> {
    let spawns = count(bench_mode, SPAWNS)?;
    let attempts = count(bench_mode, ATTEMPTS)?;
    let drain_jobs = count(bench_mode, DRAIN)?;
    let latency_jobs = count(bench_mode, LATENCY)?;
    let tabs = count(bench_mode, TABS)?;
    let parts = parts(PARTS_VAR, 4)?;
    ensure!(
        Path::new(TRUE_PROGRAM).is_file(),
        "{TRUE_PROGRAM} not found; this benchmark needs it as the floor"
    );
    let fixture = find_fixture(BENCH, PLUGIN_FILE)?;
    let jobhost = jobhost_binary()?;
    let scratch = Scratch::create(
        &std::env::var_os(SCRATCH_VAR).map_or_else(std::env::temp_dir, PathBuf::from),
        "jobhost-bench-speed",
        BENCH,
        std::env::var_os(KEEP_VAR).is_some(),
    )?;
    let cpus = cpus();
    println!(
        "speed: {cpus} CPUs; {spawns} /bin/true spawns, {attempts} raw attempts per spawner, \
         {drain_jobs} jobs per drain, {latency_jobs} pickups per spawner, {tabs} tabs{}",
        if bench_mode { "" } else { " (smoke run)" }
    );
    println!("jobhost: {}", jobhost.display());
    println!("plugin: {}", fixture.display());
    println!("scratch: {}", scratch.path.display());
    let mut report = Report::default();

    // ----- the floor and raw attempts -----
    let raw = Installation::create(&scratch.path, "raw", &fixture, ALLOWLIST, SETTINGS)?;
    let runners = RUNNERS
        .iter()
        .map(|&r| AttemptRunner::with_runner(&raw.settings, Some(r)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Warm the page cache, the dynamic loader and the plugin file.
    measure(20, 2, |_, _| spawn_true())?;
    for attempt in &runners {
        measure((attempts / 50).clamp(2, 20), 2, |t, i| {
            attempt.run(&format!("warm-{t}-{i}"))
        })?;
    }
    println!(
        "\n[1] {spawns} spawns of {TRUE_PROGRAM}, then {attempts} raw attempts per spawner, two \
         at a time"
    );
    let (floor, noise) = metered(|| measure(spawns, 2, |_, _| spawn_true()))?;
    let true_rate = floor.rate();
    println!("  {TRUE_PROGRAM}: {}", latencies(&floor, "spawns"));
    report.info(
        &format!("{TRUE_PROGRAM} spawn+wait, 2 at a time"),
        true_rate,
        "spawns/s",
        Kind::Rate,
    );
    report.noise(TRUE_PROGRAM, noise);
    let mut raw_exec = None;
    for attempt in runners.iter().filter(|_| parts.contains(&1)) {
        let name = attempt.runner().as_str();
        let (m, noise) = metered(|| {
            measure(attempts, 2, |t, i| {
                attempt.run(&format!("raw-{name}-{t}-{i}"))
            })
        })?;
        if attempt.runner() == Runner::Exec {
            raw_exec = Some(m.rate());
        }
        println!("  raw attempts, {name}: {}", latencies(&m, "attempts"));
        report.info(
            &format!("raw attempts, {name}, 2 at a time"),
            m.rate(),
            "attempts/s",
            Kind::Rate,
        );
        report.noise(&format!("raw attempts, {name}"), noise);
    }
    drop(runners);

    // ----- drains -----
    if parts.contains(&2) {
        println!("\n[2] drains of {drain_jobs} no-op jobs, 2 slots a dispatcher");
    }
    let mut sqlite_fork = None;
    for runner in RUNNERS.into_iter().filter(|_| parts.contains(&2)) {
        let label = format!("drain, SQLite, {}", runner.as_str());
        let installs = Backend::Sqlite.installations(
            &scratch.path,
            &fixture,
            &format!("sqlite-{}", runner.as_str()),
            1,
            SETTINGS,
        )?;
        let (d, ()) = drain(&installs, drain_jobs, Some(runner), |_| Ok(()), Ok)?;
        print_drain(&label, &d);
        let (reference, factor, goal) = match runner {
            Runner::Exec => (raw_exec, 0.8, ">= 0.8 x raw exec attempts"),
            Runner::Fork => {
                sqlite_fork = Some(d.rate());
                (Some(true_rate), 1.2, ">= 1.2 x /bin/true")
            }
        };
        report.relative(
            &label,
            d.rate(),
            "jobs/s",
            Kind::Rate,
            reference,
            factor,
            goal,
        );
        report.target(
            &format!("dispatcher CPU per job, SQLite, {}", runner.as_str()),
            d.per_job_ms(d.dispatchers_cpu),
            "ms",
            Kind::Millis,
            Bound::AtMost(0.15),
            "<= 0.15 ms",
        );
        report.info(
            &format!("worker CPU per job, SQLite, {}", runner.as_str()),
            d.per_job_ms(d.seen_cpu),
            "ms",
            Kind::Millis,
        );
        report.noise(&label, d.other_cores);
    }
    let mut postgres_one = None;
    let postgres_drains = [
        (Runner::Exec, 1),
        (Runner::Fork, 1),
        (Runner::DEFAULT, 2usize),
    ];
    for (runner, dispatchers) in postgres_drains.into_iter().filter(|_| parts.contains(&2)) {
        let label = format!(
            "drain, PostgreSQL, {}, {dispatchers} dispatcher{}",
            runner.as_str(),
            if dispatchers == 1 { "" } else { "s" }
        );
        let backend = Backend::postgres()?;
        let installs = backend.installations(
            &scratch.path,
            &fixture,
            &format!("postgres-{}-{dispatchers}", runner.as_str()),
            dispatchers,
            SETTINGS,
        )?;
        let (d, ()) = drain(&installs, drain_jobs, Some(runner), |_| Ok(()), Ok)?;
        print_drain(&label, &d);
        match (runner, dispatchers) {
            (Runner::Fork, 1) => {
                postgres_one = Some(d.rate());
                report.relative(
                    &label,
                    d.rate(),
                    "jobs/s",
                    Kind::Rate,
                    sqlite_fork,
                    0.5,
                    ">= 0.5 x SQLite fork drain",
                );
                report.info(
                    "PostgreSQL server CPU per job, fork, 1 dispatcher",
                    d.per_job_ms(d.server_cpu),
                    "ms",
                    Kind::Millis,
                );
            }
            (_, 1) => report.info(&label, d.rate(), "jobs/s", Kind::Rate),
            _ => report.relative(
                &label,
                d.rate(),
                "jobs/s",
                Kind::Rate,
                postgres_one,
                1.0,
                "> 1 PostgreSQL dispatcher",
            ),
        }
        report.noise(&label, d.other_cores);
    }

    // ----- pickup latency -----
    if parts.contains(&3) {
        println!("\n[3] pickup latency: {latency_jobs} jobs one at a time into an idle dispatcher");
    }
    for runner in RUNNERS.into_iter().filter(|_| parts.contains(&3)) {
        let name = format!("latency-{}", runner.as_str());
        let l = pickup_latency(&scratch.path, &fixture, &name, latency_jobs, Some(runner))?;
        println!(
            "  {}: pickup p50 {:.3} ms p99 {:.3} ms (dispatch to claim {:.3} ms + claim to the \
             worker's clock {:.3} ms, means); floor, an attempt through run_attempt to the job's clock: p50 {:.3} \
             ms p99 {:.3} ms",
            runner.as_str(),
            ms(l.pickup.percentile(0.50)),
            ms(l.pickup.percentile(0.99)),
            l.to_claim,
            l.claim_to_clock,
            ms(l.floor.percentile(0.50)),
            ms(l.floor.percentile(0.99)),
        );
        for (p, limit) in [(0.50, 0.5), (0.99, 2.0)] {
            let what = format!("pickup latency p{:.0}, {}", p * 100.0, runner.as_str());
            let value = ms(l.pickup.percentile(p));
            match runner {
                Runner::Exec => report.info(&what, value, "ms", Kind::Millis),
                Runner::Fork => report.target(
                    &what,
                    value,
                    "ms",
                    Kind::Millis,
                    Bound::AtMost(limit),
                    if p < 0.9 { "<= 0.5 ms" } else { "<= 2 ms" },
                ),
            }
        }
        report.noise(
            &format!("pickup latency, {}", runner.as_str()),
            l.pickup_noise,
        );
    }

    // ----- dashboard tabs -----
    if parts.contains(&4) {
        println!(
            "\n[4] drains of {drain_jobs} no-op jobs with the dashboard on, SQLite, {}: nobody \
             watching, then {tabs} tabs open",
            Runner::DEFAULT.as_str()
        );
    }
    let web = format!(
        "{BASE_SETTINGS}web.enabled = true\nweb.listen = \"127.0.0.1:0\"\n\
         web.admin_token = \"{TOKEN}\"\n"
    );
    let mut without = None;
    for open in [0, tabs].into_iter().filter(|_| parts.contains(&4)) {
        let label = if open == 0 {
            "drain, dashboard on, no tabs".to_owned()
        } else {
            format!("drain, {open} dashboard tabs open")
        };
        let installs = Backend::Sqlite.installations(
            &scratch.path,
            &fixture,
            &format!("dashboard-{open}"),
            1,
            &web,
        )?;
        let state_dir = installs[0].settings.state_dir.clone();
        let (d, seen) = drain(
            &installs,
            drain_jobs,
            Some(Runner::DEFAULT),
            |_| Tabs::open(&state_dir, open),
            Tabs::close,
        )?;
        print_drain(&label, &d);
        if open == 0 {
            without = Some(d.rate());
            report.info(&label, d.rate(), "jobs/s", Kind::Rate);
        } else {
            println!(
                "  the tabs were told {} changes and fetched {} pages during the drain ({:.1} \
                 pages/s; {} fetches failed); this bench used {:.2} cores meanwhile",
                seen.events,
                seen.pages,
                seen.pages as f64 / d.wall.as_secs_f64(),
                seen.failed,
                d.bench_cpu / d.wall.as_secs_f64(),
            );
            report.relative(
                &label,
                d.rate(),
                "jobs/s",
                Kind::Rate,
                without,
                0.9,
                ">= 0.9 x no tabs",
            );
            report.info(
                &format!("pages fetched by {open} tabs during it"),
                seen.pages as f64,
                "pages",
                Kind::Plain,
            );
        }
        report.noise(&label, d.other_cores);
    }

    print_table(&report, true_rate, cpus);
    Ok(())
}

/// Runs `op`, with the cores other processes kept busy meanwhile.
fn metered<T>(op: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, f64)> {
    let meter = CpuMeter::start(None)?;
    let result = op()?;
    Ok((result, meter.stop(None)?.other_cores()))
}

/// `N things in S s (R/s), each p50 … p99 …`.
fn latencies(m: &Measured, things: &str) -> String {
    format!(
        "{} {things} in {:.3} s ({:.0}/s), each p50 {:.3} ms p99 {:.3} ms",
        m.latencies.len(),
        m.wall.as_secs_f64(),
        m.rate(),
        ms(m.percentile(0.50)),
        ms(m.percentile(0.99)),
    )
}

fn print_drain(label: &str, d: &Drain) {
    println!(
        "  {label}: {:.3} s ({:.0} jobs/s), of which {:.1} ms enqueueing; jobs by dispatcher \
         {:?}; CPU per job: dispatcher {:.3} ms, workers {:.3} ms (counted once the \
         dispatcher was reaped: {:.3} ms), this bench {:.3} ms, the PostgreSQL server {:.3} \
         ms; other processes {:.2} cores",
        d.wall.as_secs_f64(),
        d.rate(),
        ms(d.enqueue),
        d.by_dispatcher.values().collect::<Vec<_>>(),
        d.per_job_ms(d.dispatchers_cpu),
        d.per_job_ms(d.seen_cpu),
        d.per_job_ms(d.workers_cpu),
        d.per_job_ms(d.bench_cpu),
        d.per_job_ms(d.server_cpu),
        d.other_cores,
    );
    // A tick (10 ms) a job of slack over a drain is more than /proc's rounding.
    if d.workers_cpu + 0.05 * d.seen_cpu + 0.01 < d.seen_cpu {
        println!(
            "  NOTE: {:.3} ms a job of the workers' CPU never reached this bench when the \
             dispatcher was reaped: a process below it (its fork server?) exited without being \
             waited for, taking its children's times with it",
            d.per_job_ms(d.seen_cpu - d.workers_cpu)
        );
    }
}

fn print_table(report: &Report, true_rate: f64, cpus: usize) {
    println!();
    println!(
        "{:<44} {:>10} {:<10} {:>11} {:>10} {:<28} {:>6}",
        "figure", "value", "unit", "x /bin/true", "target", "", "result"
    );
    for Figure { row, kind, goal } in &report.figures {
        let ratio = match kind {
            Kind::Rate => format!("{:.3}", row.value / true_rate),
            Kind::Millis => format!("{:.2}", row.value * true_rate / 1e3),
            Kind::Plain => "-".to_owned(),
        };
        println!(
            "{:<44} {:>10} {:<10} {:>11} {:>10} {:<28} {:>6}",
            row.what,
            row.value_text(),
            row.unit,
            ratio,
            row.bound_text(),
            goal,
            row.result_text(),
        );
    }
    let missed = report
        .figures
        .iter()
        .filter(|f| f.row.passed() == Some(false))
        .count();
    println!();
    let shown: Vec<String> = report
        .noise
        .iter()
        .map(|(what, cores)| format!("{what} {cores:.2}"))
        .collect();
    println!(
        "cores kept busy by other processes: {} (of {cpus})",
        shown.join("; ")
    );
    if report.noise.iter().any(|(_, cores)| *cores > NOISY) {
        println!(
            "WARNING: the machine was not idle; the figures above are worse than on an idle \
             machine. Run again when it is."
        );
    }
    println!(
        "{missed} target(s) missed. x /bin/true: a rate divided by the {TRUE_PROGRAM} spawn \
         rate two at a time ({true_rate:.0}/s), a time in {TRUE_PROGRAM} spawn intervals \
         ({:.3} ms). A job is {CLASS}@{OK} in a worker process of its own.",
        1e3 / true_rate
    );
}

// ----- dashboard tabs -----

/// What the tabs saw while they were open.
struct Seen {
    /// `change` events received after the tabs were all open, all tabs.
    events: u64,
    /// Overview pages fetched after the tabs were all open.
    pages: u64,
    /// Fetches that failed, all along.
    failed: u64,
}

/// Counters the tabs share.
#[derive(Default)]
struct Counters {
    events: AtomicU64,
    pages: AtomicU64,
    failed: AtomicU64,
    /// Tabs whose stream is open and whose first fetch is done.
    ready: AtomicUsize,
    stop: AtomicBool,
}

/// Dashboard tabs open on one dashboard, as a browser holds them.
struct Tabs {
    counters: Arc<Counters>,
    /// A handle on each tab's event stream, to end it.
    streams: Vec<TcpStream>,
    threads: Vec<JoinHandle<()>>,
    /// Pages fetched and events told by the time every tab was open.
    pages_when_open: u64,
    events_when_open: u64,
}

impl Tabs {
    /// Logs in to the dashboard of the dispatcher serving `state_dir` with [`TOKEN`] and opens
    /// `tabs` tabs with that session; returns once each has its event stream open and has
    /// fetched its page once.
    fn open(state_dir: &Path, tabs: usize) -> anyhow::Result<Self> {
        let counters = Arc::new(Counters::default());
        let mut opened = Self {
            counters: Arc::clone(&counters),
            streams: Vec::new(),
            threads: Vec::new(),
            pages_when_open: 0,
            events_when_open: 0,
        };
        if tabs == 0 {
            return Ok(opened);
        }
        let authority = Arc::new(dashboard_authority(state_dir)?);
        let cookie = Arc::new(login(&authority)?);
        for tab in 0..tabs {
            let stream = open_events(&authority, &cookie)
                .with_context(|| format!("tab {tab} could not open the event stream"))?;
            opened.streams.push(
                stream
                    .get_ref()
                    .try_clone()
                    .context("cannot clone a tab's event stream")?,
            );
            let (told, changes) = mpsc::channel::<()>();
            let c = Arc::clone(&counters);
            opened.threads.push(
                std::thread::Builder::new()
                    .name(format!("tab-{tab}-events"))
                    .stack_size(64 * 1024)
                    .spawn(move || read_events(stream, &c, &told))
                    .context("cannot start a tab")?,
            );
            let (c, authority, cookie) = (
                Arc::clone(&counters),
                Arc::clone(&authority),
                Arc::clone(&cookie),
            );
            opened.threads.push(
                std::thread::Builder::new()
                    .name(format!("tab-{tab}-fetch"))
                    .stack_size(64 * 1024)
                    .spawn(move || refresh(&authority, &cookie, &c, &changes))
                    .context("cannot start a tab")?,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while counters.ready.load(Ordering::Acquire) < tabs {
            ensure!(
                Instant::now() < deadline,
                "only {} of {tabs} tabs opened within 60 s",
                counters.ready.load(Ordering::Acquire)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        opened.pages_when_open = counters.pages.load(Ordering::Acquire);
        opened.events_when_open = counters.events.load(Ordering::Acquire);
        Ok(opened)
    }

    /// Closes every tab; what they saw.
    fn close(mut self) -> anyhow::Result<Seen> {
        self.counters.stop.store(true, Ordering::Release);
        let pages = self.counters.pages.load(Ordering::Acquire) - self.pages_when_open;
        let events = self.counters.events.load(Ordering::Acquire) - self.events_when_open;
        for stream in &self.streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                bail!("a tab's thread panicked");
            }
        }
        Ok(Seen {
            events,
            pages,
            failed: self.counters.failed.load(Ordering::Acquire),
        })
    }
}

/// `127.0.0.1:PORT` of the dashboard serving `state_dir`, from its `dashboard.json` (written
/// once the dispatcher has started it).
fn dashboard_authority(state_dir: &Path) -> anyhow::Result<String> {
    // `jobhost::web::DASHBOARD_FILE`, which the benches do not see without the dashboard.
    let file = state_dir.join("dashboard.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        match std::fs::read_to_string(&file) {
            Ok(text) => break text,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => bail!(
                "the dashboard did not start: cannot read {}: {e}",
                file.display()
            ),
        }
    };
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON: {text}", file.display()))?;
    let url = value["url"].as_str().unwrap_or_default();
    url.strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .with_context(|| format!("{} names no http URL: {text}", file.display()))
}

/// Sends `request` to `authority` on a new connection and reads the answer to its end: the
/// status and the whole answer.
fn exchange(authority: &str, request: &str) -> anyhow::Result<(u16, String)> {
    let mut stream =
        TcpStream::connect(authority).with_context(|| format!("cannot connect to {authority}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    Ok((status_of(&text)?, text))
}

/// The status code of an HTTP/1.1 answer.
fn status_of(answer: &str) -> anyhow::Result<u16> {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer: {:?}", &answer[..answer.len().min(200)]))
}

/// Logs in with [`TOKEN`]; the cookie to send (`jobhost_session=...`).
fn login(authority: &str) -> anyhow::Result<String> {
    let body = format!("token={TOKEN}");
    let request = format!(
        "POST {PREFIX}/login HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, answer) = exchange(authority, &request)?;
    ensure!(status == 303, "the login was answered {status}: {answer}");
    answer
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie").then(|| {
                value
                    .trim()
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
        })
        .context("the login set no cookie")
}

/// Opens `GET /events` with `cookie`; the stream, past the answer's head.
fn open_events(authority: &str, cookie: &str) -> anyhow::Result<BufReader<TcpStream>> {
    let mut stream =
        TcpStream::connect(authority).with_context(|| format!("cannot connect to {authority}"))?;
    write!(
        stream,
        "GET {PREFIX}/events HTTP/1.1\r\nHost: {authority}\r\nCookie: {cookie}\r\n\
         Accept: text/event-stream\r\n\r\n"
    )?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        ensure!(
            reader.read_line(&mut line)? > 0,
            "the event stream closed in its head: {head}"
        );
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let status = status_of(&head)?;
    ensure!(
        status == 200,
        "the event stream was answered {status}: {head}"
    );
    Ok(reader)
}

/// A tab's event stream: tells `told` of every `change` event until the stream ends.
fn read_events(stream: BufReader<TcpStream>, counters: &Counters, told: &mpsc::Sender<()>) {
    // The body is chunked; an event's lines are whole within its chunk.
    for line in stream.lines() {
        let Ok(line) = line else { return };
        if line == "event: change" {
            counters.events.fetch_add(1, Ordering::Relaxed);
            if told.send(()).is_err() {
                return;
            }
        }
    }
}

/// A tab's page: fetched once, then again after every change it is told of, one fetch at a
/// time (changes told during a fetch make one fetch after it), as the dashboard's script does.
fn refresh(authority: &str, cookie: &str, counters: &Counters, changes: &mpsc::Receiver<()>) {
    let request = format!(
        "GET {PREFIX}/ HTTP/1.1\r\nHost: {authority}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    );
    let fetch = || match exchange(authority, &request) {
        Ok((200, _)) => {
            counters.pages.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    };
    fetch();
    counters.ready.fetch_add(1, Ordering::AcqRel);
    while changes.recv().is_ok() {
        while changes.try_recv().is_ok() {}
        if counters.stop.load(Ordering::Acquire) {
            return;
        }
        fetch();
    }
}
