//! The durable queue end to end, with real processes: how fast one dispatcher drains a backlog
//! of no-op jobs (beside the raw worker-spawn rate two at a time, its ceiling on two slots),
//! how long an idle dispatcher takes to start a job after `dispatch`, how fast an application
//! enqueues through the Rust API, and how much memory the dispatcher holds.
//!
//! Run it with
//!
//! ```text
//! cargo build --release --workspace && cargo bench -p jobhost --bench queue
//! ```
//!
//! The first command builds the release `jobhost` binary (the dispatcher and its workers) and
//! the fixture plugin `libmisbehave_fixture.so`, which `cargo bench -p jobhost` alone does not.
//! Without cargo's `--bench` argument (as under `cargo test --all-targets`) it makes a quick
//! smoke run with small counts instead. The counts can be set with
//!
//! | variable | what | default |
//! | --- | --- | --- |
//! | `QUEUE_DRAIN_JOBS` | jobs drained, and raw attempts run two at a time | 2000 |
//! | `QUEUE_LATENCY_JOBS` | jobs dispatched one at a time for the pickup latency | 500 |
//! | `QUEUE_ENQUEUE_JOBS` | jobs enqueued one `dispatch` each, then again in batches | 10000 |
//! | `QUEUE_MEMORY_JOBS` | jobs left queued while the dispatcher's memory is read | 100000 |
//! | `QUEUE_PARTS` | which parts to run, as `1,3` | `1,2,3,4` |
//! | `QUEUE_KEEP` | set to keep the scratch directory (databases, logs, attempt files) | unset |
//! | `QUEUE_SCRATCH_DIR` | where the scratch directory goes (its file system matters) | temp dir |
//!
//! Each part runs in an installation of its own (plugin directory, allowlist, `jobhost.toml`,
//! state and log directories) under one scratch directory, with a dispatcher this bench starts
//! as `jobhost --config FILE serve --slots 2 --idle-exit 600` (the idle exit is what a
//! dispatcher started on demand has) and stops at the end with `Client::stop_dispatcher`.
//!
//! To enqueue while *no* dispatcher runs, the bench takes the state directory's dispatcher lock
//! and answers its doorbell itself (see [`Muted`]): `dispatch` then finds someone listening and
//! starts no dispatcher, and none could start anyway.
//!
//! Other processes' CPU use during each measurement is printed, and flagged when it is high.
//! The scratch directory's file system matters too: every job's attempts get a directory, and
//! every attempt a report file written by its worker (and an output file when it prints). On
//! ext4 without a journal, allocating an inode skips every inode deleted in the last minutes,
//! reading each one's dtime: after many recent deletions (the previous run's cleanup, a
//! retention round) that costs more CPU than the rest of the supervision, so a run started
//! within five minutes of another's end measures less. `QUEUE_SCRATCH_DIR=/dev/shm` measures
//! on tmpfs instead.
//!
//! The dispatchers and workers are the real release `jobhost` binary, found beside the bench
//! binary's directory by [`jobhost::runner::jobhost_program`] (or `$JOBHOST_BIN`); `main`
//! still first handles the hidden `__worker` and `__inspect` subcommands
//! ([`jobhost::runner::child::exit_if_child`]), so the bench binary can stand in as a worker.

// Public, so that what only the other benches use of it is not reported unused here.
pub mod common;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use common::{
    bench_main, count,
    cpu::{main_thread_cpu, CpuMeter, CpuUse},
    cpus, dispatch_in_batches, enqueue_parked, ensure_in_state, find_fixture, jobhost_binary,
    measure, ms, parked, parts,
    runs::{pickup_latency, wait_completed, Completed, Muted},
    table::{Bound, Row},
    warm_up, AttemptRunner, EnqueueCalls, Installation, Measured, Scratch, Served, ALLOWLIST,
    BATCH, CLASS, CLOCK, NOISY, OK, PLUGIN_FILE, SETTINGS, WARM_UP,
};
use jobhost::{runner::child, store::JobState, Job};

const BENCH: &str = "queue";

/// Iteration counts: (variable, bench default, smoke default).
const DRAIN: (&str, usize, usize) = ("QUEUE_DRAIN_JOBS", 2000, 40);
const LATENCY: (&str, usize, usize) = ("QUEUE_LATENCY_JOBS", 500, 20);
const ENQUEUE: (&str, usize, usize) = ("QUEUE_ENQUEUE_JOBS", 10_000, 500);
const MEMORY: (&str, usize, usize) = ("QUEUE_MEMORY_JOBS", 100_000, 2000);
const PARTS_VAR: &str = "QUEUE_PARTS";
const KEEP_VAR: &str = "QUEUE_KEEP";
const SCRATCH_VAR: &str = "QUEUE_SCRATCH_DIR";

fn main() -> ExitCode {
    // The workers are the real jobhost binary; this one serves as one only if it is pointed at
    // itself with JOBHOST_BIN.
    child::exit_if_child();
    bench_main(BENCH, run)
}

fn run(bench_mode: bool) -> anyhow::Result<()> {
    let drain_jobs = count(bench_mode, DRAIN)?;
    let latency_jobs = count(bench_mode, LATENCY)?;
    let enqueue_jobs = count(bench_mode, ENQUEUE)?;
    let memory_jobs = count(bench_mode, MEMORY)?;
    let parts = parts(PARTS_VAR, 4)?;
    let fixture = find_fixture(BENCH, PLUGIN_FILE)?;
    let jobhost = jobhost_binary()?;
    let scratch = Scratch::create(
        &std::env::var_os(SCRATCH_VAR).map_or_else(std::env::temp_dir, PathBuf::from),
        "jobhost-bench-queue",
        BENCH,
        std::env::var_os(KEEP_VAR).is_some(),
    )?;
    let cpus = cpus();
    println!(
        "queue: {cpus} CPUs; {drain_jobs} drained, {latency_jobs} one at a time, {enqueue_jobs} \
         enqueued per mode, {memory_jobs} kept queued{}",
        if bench_mode { "" } else { " (smoke run)" }
    );
    println!("jobhost: {}", jobhost.display());
    println!("plugin: {}", fixture.display());
    println!("scratch: {}", scratch.path.display());
    let mut rows = Vec::new();
    // Cores other processes kept busy during each measurement.
    let mut noise: Vec<(&str, f64)> = Vec::new();

    // The raw attempt rate first (it also warms the page cache, the loader and the plugin).
    let raw = Installation::create(&scratch.path, "raw", &fixture, ALLOWLIST, SETTINGS)?;
    let attempt = AttemptRunner::new(&raw.settings)?;
    measure((drain_jobs / 50).clamp(2, 20), 2, |t, i| {
        attempt.run(&format!("warm-{t}-{i}"))
    })?;
    if parts.contains(&1) {
        println!("\n[1] throughput: {drain_jobs} no-op jobs, and as many raw attempts around them");
        // The raw attempts run half before and half after the drain, so that both see the same
        // machine (other processes' load shows in the CPU lines below).
        let half = drain_jobs / 2;
        let before = CpuMeter::start(None)?;
        let raw_before = measure(half, 2, |t, i| attempt.run(&format!("raw-a-{t}-{i}")))?;
        let raw_cpu_before = before.stop(None)?;
        let drain = throughput(&scratch.path, &fixture, drain_jobs)?;
        let after = CpuMeter::start(None)?;
        let raw_after = measure(drain_jobs - half, 2, |t, i| {
            attempt.run(&format!("raw-b-{t}-{i}"))
        })?;
        let raw_cpu = raw_cpu_before.plus(&after.stop(None)?);
        let raw_wall = raw_before.wall + raw_after.wall;
        let spawn_rate = drain_jobs as f64 / raw_wall.as_secs_f64();
        let ratio = 100.0 * drain.rate / spawn_rate;
        let per_job = |s: f64| s * 1e3 / drain_jobs as f64;
        println!(
            "  drain {:.3} s: first job done after {:.1} ms, then {:.0} jobs/s; raw attempts \
             {:.3} s + {:.3} s ({:.0} + {:.0} attempts/s)",
            drain.wall.as_secs_f64(),
            ms(drain.first_done),
            drain.steady_rate,
            raw_before.wall.as_secs_f64(),
            raw_after.wall.as_secs_f64(),
            raw_before.rate(),
            raw_after.rate(),
        );
        println!(
            "  CPU per job: dispatcher {:.3} ms (its loop {:.3}, its other threads {:.3}) + \
             workers {:.3} ms (bench polling {:.3} ms); raw: supervisor {:.3} ms + workers {:.3} \
             ms",
            per_job(drain.cpu.own),
            per_job(drain.loop_cpu),
            per_job(drain.other_threads_cpu),
            per_job(drain.cpu.children),
            per_job(drain.cpu.bench),
            per_job(raw_cpu.own),
            per_job(raw_cpu.children),
        );
        println!(
            "  cores busy: drain {:.2} (other processes {:.2}); raw {:.2} (other processes {:.2})",
            drain.cpu.cores(),
            drain.cpu.other_cores(),
            raw_cpu.cores(),
            raw_cpu.other_cores(),
        );
        noise.push(("drain", drain.cpu.other_cores()));
        noise.push(("raw attempts", raw_cpu.other_cores()));
        rows.push(Row::info("drain, serve --slots 2", drain.rate, "jobs/s"));
        rows.push(Row::info(
            "raw attempts (ok), 2 at a time",
            spawn_rate,
            "attempts/s",
        ));
        rows.push(Row::target(
            "drain / raw attempt rate",
            ratio,
            "%",
            Bound::AtLeast(80.0),
        ));
    }

    if parts.contains(&2) {
        println!("\n[2] pickup latency: {latency_jobs} jobs one at a time into an idle dispatcher");
        let latency = pickup_latency(&scratch.path, &fixture, "latency", latency_jobs, None)?;
        println!(
            "  dispatch() p50 {:.3} ms p99 {:.3} ms; dispatch to completion seen p50 {:.3} ms p99 \
             {:.3} ms; pickup max {:.3} ms",
            ms(latency.dispatch.percentile(0.50)),
            ms(latency.dispatch.percentile(0.99)),
            ms(latency.round_trip.percentile(0.50)),
            ms(latency.round_trip.percentile(0.99)),
            ms(latency.pickup.percentile(1.0)),
        );
        println!(
            "  floor, an attempt through run_attempt to the job's clock with no queue: p50 {:.3} ms p99 {:.3} ms \
             (mean {:.3} ms)",
            ms(latency.floor.percentile(0.50)),
            ms(latency.floor.percentile(0.99)),
            latency.floor.mean_ms(),
        );
        println!(
            "  pickup mean {:.3} ms = dispatch to claim {:.3} ms + claim to the worker's clock \
             {:.3} ms (claim times at the store's 1 ms resolution)",
            latency.pickup.mean_ms(),
            latency.to_claim,
            latency.claim_to_clock,
        );
        noise.push(("latency floor", latency.floor_noise));
        noise.push(("pickup latency", latency.pickup_noise));
        rows.push(Row::info(
            "floor: attempt to job clock, p50",
            ms(latency.floor.percentile(0.50)),
            "ms",
        ));
        rows.push(Row::info(
            "floor: attempt to job clock, p99",
            ms(latency.floor.percentile(0.99)),
            "ms",
        ));
        rows.push(Row::target(
            "pickup latency p50",
            ms(latency.pickup.percentile(0.50)),
            "ms",
            Bound::AtMost(3.0),
        ));
        rows.push(Row::target(
            "pickup latency p99",
            ms(latency.pickup.percentile(0.99)),
            "ms",
            Bound::AtMost(5.0),
        ));
    }

    if parts.contains(&3) {
        println!("\n[3] enqueue rate: {enqueue_jobs} jobs per mode, delayed 1 h");
        let live = enqueue_rates(&scratch.path, &fixture, "enqueue", enqueue_jobs, true)?;
        let muted = enqueue_rates(
            &scratch.path,
            &fixture,
            "enqueue-muted",
            enqueue_jobs,
            false,
        )?;
        for (label, e) in [("idle dispatcher", &live), ("no dispatcher", &muted)] {
            println!(
                "  {label}: dispatch() p50 {:.3} ms p99 {:.3} ms; batch of {BATCH} p50 {:.2} ms \
                 p99 {:.2} ms",
                ms(e.single.percentile(0.50)),
                ms(e.single.percentile(0.99)),
                ms(e.batch.percentile(0.50)),
                ms(e.batch.percentile(0.99)),
            );
        }
        println!(
            "  the idle dispatcher used {:.3} ms of CPU per call while they enqueued (woken by \
             each call's doorbell ring)",
            live.dispatcher_ms_per_call
        );
        noise.push(("enqueue (dispatcher up)", live.noise));
        noise.push(("enqueue (no dispatcher)", muted.noise));
        rows.push(Row::target(
            "dispatch, 1 per call (dispatcher up)",
            live.single_rate,
            "jobs/s",
            Bound::AtLeast(5000.0),
        ));
        rows.push(Row::target(
            "dispatch_batch of 1000 (dispatcher up)",
            live.batch_rate,
            "jobs/s",
            Bound::AtLeast(50_000.0),
        ));
        rows.push(Row::info(
            "dispatch, 1 per call (no dispatcher)",
            muted.single_rate,
            "jobs/s",
        ));
        rows.push(Row::info(
            "dispatch_batch of 1000 (no dispatcher)",
            muted.batch_rate,
            "jobs/s",
        ));
    }

    if parts.contains(&4) {
        println!("\n[4] dispatcher memory: idle, with {memory_jobs} jobs queued, then draining");
        let memory =
            dispatcher_memory(&scratch.path, &fixture, memory_jobs, drain_jobs, bench_mode)?;
        println!(
            "  enqueued {memory_jobs} in batches of {BATCH} at {:.0} jobs/s (dispatcher up); while \
             draining: {} of {} due jobs done in {:.1} s ({:.0} jobs/s with the backlog), peak RSS \
             (VmHWM) {:.1} MB",
            memory.enqueue_rate,
            memory.drained,
            memory.due,
            memory.drain_window.as_secs_f64(),
            memory.drained as f64 / memory.drain_window.as_secs_f64(),
            mb(memory.hwm_kb),
        );
        rows.push(Row::target(
            "dispatcher RSS, idle, empty queue",
            mb(memory.idle_kb),
            "MB",
            Bound::AtMost(30.0),
        ));
        rows.push(Row::target(
            &format!("dispatcher RSS, {memory_jobs} queued"),
            mb(memory.queued_kb),
            "MB",
            Bound::AtMost(30.0),
        ));
        rows.push(Row::target(
            "dispatcher RSS, max while draining",
            mb(memory.draining_kb),
            "MB",
            Bound::AtMost(30.0),
        ));
    }

    println!();
    println!(
        "{:<42} {:>12} {:<10} {:>10} {:>6}",
        "what", "value", "unit", "target", "result"
    );
    for row in &rows {
        println!("{row}");
    }
    let missed = rows.iter().filter(|r| r.passed() == Some(false)).count();
    println!();
    if !noise.is_empty() {
        let shown: Vec<String> = noise
            .iter()
            .map(|(what, cores)| format!("{what} {cores:.2}"))
            .collect();
        println!(
            "cores kept busy by other processes: {} (of {cpus})",
            shown.join(", ")
        );
        if noise.iter().any(|(_, cores)| *cores > NOISY) {
            println!(
                "WARNING: the machine was not idle; the rates and latencies above are worse than \
                 on an idle machine. Run again when it is."
            );
        }
    }
    println!(
        "{missed} target(s) missed. A job is {CLASS}@{OK} (pickup latency: @{CLOCK}, the \
         worker's clock minus the time just before dispatch); a raw attempt is one through the dispatcher's spawner (run_attempt) \
         in this process, as in the worker_spawn bench."
    );
    Ok(())
}

// ----- [1] throughput -----

struct Drain {
    wall: Duration,
    rate: f64,
    first_done: Duration,
    steady_rate: f64,
    /// `own` is the dispatcher's, `children` its workers', `bench` this process's polling.
    cpu: CpuUse,
    /// The dispatcher's CPU seconds in its loop (the main thread: the store, the logs, the
    /// running attempts), and in its other threads (doorbell, heartbeat, store maintenance).
    loop_cpu: f64,
    other_threads_cpu: f64,
}

/// Enqueues `jobs` no-op jobs with no dispatcher running, then starts one and times it from
/// its start until every job is completed.
fn throughput(scratch: &Path, fixture: &Path, jobs: usize) -> anyhow::Result<Drain> {
    let install = Installation::create(scratch, "throughput", fixture, ALLOWLIST, SETTINGS)?;
    let mut client = install.client()?;
    let last = {
        let _muted = Muted::new(&install)?;
        let ids = client
            .dispatch_batch((0..jobs).map(|_| Job::new(CLASS, OK)))
            .context("cannot enqueue the drain jobs")?;
        ensure!(ids.len() == jobs, "enqueued {} of {jobs} jobs", ids.len());
        *ids.iter().max().context("nothing was enqueued")?
    };
    let meter = CpuMeter::start(None)?;
    let dispatcher = Served::start(&install)?;
    let Completed {
        wall,
        first_done: (first_done, first_count),
    } = wait_completed(&mut client, jobs, last, dispatcher.started)?;
    let cpu = meter.stop(Some(dispatcher.pid()))?;
    let (loop_cpu, other_threads_cpu) = main_thread_cpu(dispatcher.pid())?;
    dispatcher.stop(&client)?;
    let steady = wall.saturating_sub(first_done).as_secs_f64();
    Ok(Drain {
        wall,
        rate: jobs as f64 / wall.as_secs_f64(),
        first_done,
        steady_rate: if steady > 0.0 {
            (jobs as u64 - first_count) as f64 / steady
        } else {
            0.0
        },
        cpu,
        loop_cpu,
        other_threads_cpu,
    })
}

// ----- [3] enqueue rate -----

struct Enqueue {
    single_rate: f64,
    batch_rate: f64,
    /// Per `dispatch` call.
    single: Measured,
    /// Per `dispatch_batch` call.
    batch: Measured,
    /// Cores other processes kept busy meanwhile.
    noise: f64,
    /// The dispatcher's CPU ms per `dispatch` or `dispatch_batch` call, over both modes.
    dispatcher_ms_per_call: f64,
}

/// Enqueues `jobs` parked jobs one `dispatch` each, then `jobs` more in batches, with an idle
/// dispatcher answering the doorbell (`live`) or with none running.
fn enqueue_rates(
    scratch: &Path,
    fixture: &Path,
    name: &str,
    jobs: usize,
    live: bool,
) -> anyhow::Result<Enqueue> {
    let install = Installation::create(scratch, name, fixture, ALLOWLIST, SETTINGS)?;
    let mut client = install.client()?;
    let (dispatcher, muted) = if live {
        (Some(Served::start(&install)?), None)
    } else {
        (None, Some(Muted::new(&install)?))
    };
    warm_up(&mut client)?;
    let meter = CpuMeter::start(dispatcher.as_ref().map(Served::pid))?;
    let EnqueueCalls { single, batch } = enqueue_parked(&mut client, jobs)?;
    let cpu = meter.stop(dispatcher.as_ref().map(Served::pid))?;
    ensure_in_state(&mut client, JobState::Scheduled, 2 * jobs + WARM_UP)?;
    let batches = batch.latencies.len();
    if let Some(dispatcher) = dispatcher {
        dispatcher.stop(&client)?;
    }
    drop(muted);
    Ok(Enqueue {
        single_rate: jobs as f64 / single.wall.as_secs_f64(),
        batch_rate: jobs as f64 / batch.wall.as_secs_f64(),
        single,
        batch,
        noise: cpu.other_cores(),
        dispatcher_ms_per_call: if live {
            cpu.own * 1e3 / (jobs + batches) as f64
        } else {
            0.0
        },
    })
}

// ----- [4] dispatcher memory -----

struct Memory {
    idle_kb: u64,
    queued_kb: u64,
    draining_kb: u64,
    hwm_kb: u64,
    enqueue_rate: f64,
    due: usize,
    drained: u64,
    drain_window: Duration,
}

/// The dispatcher's RSS idle with an empty queue, with `jobs` parked jobs queued, and while it
/// drains `due` no-op jobs on top of them for a few seconds.
fn dispatcher_memory(
    scratch: &Path,
    fixture: &Path,
    jobs: usize,
    due: usize,
    bench_mode: bool,
) -> anyhow::Result<Memory> {
    // How long to let the dispatcher settle or drain; a tenth of it in a smoke run.
    let pause = |secs: u64| Duration::from_secs(secs) / if bench_mode { 1 } else { 10 };
    let install = Installation::create(scratch, "memory", fixture, ALLOWLIST, SETTINGS)?;
    let mut client = install.client()?;
    let dispatcher = Served::start(&install)?;
    std::thread::sleep(pause(1));
    let idle_kb = dispatcher.rss_kb()?;

    let started = Instant::now();
    dispatch_in_batches(&mut client, jobs, parked)?;
    let enqueue_rate = jobs as f64 / started.elapsed().as_secs_f64();
    std::thread::sleep(pause(2));
    let queued_kb = dispatcher.rss_kb()?;

    client
        .dispatch_batch((0..due).map(|_| Job::new(CLASS, OK)))
        .context("cannot dispatch the due jobs")?;
    let window = pause(3);
    let started = Instant::now();
    let mut draining_kb = 0;
    while started.elapsed() < window {
        draining_kb = draining_kb.max(dispatcher.rss_kb()?);
        std::thread::sleep(Duration::from_millis(50));
    }
    let drain_window = started.elapsed();
    let drained = client
        .store()
        .stats()
        .context("cannot read the stats")?
        .by_state
        .get(JobState::Completed.as_str())
        .copied()
        .unwrap_or(0);
    let hwm_kb = dispatcher.status_kb("VmHWM")?;
    dispatcher.stop(&client)?;
    Ok(Memory {
        idle_kb,
        queued_kb,
        draining_kb,
        hwm_kb,
        enqueue_rate,
        due,
        drained,
        drain_window,
    })
}

// ----- dispatchers -----

/// What only this bench reads of a dispatcher: its memory.
impl Served {
    /// A `kB` field of `/proc/PID/status`.
    fn status_kb(&self, field: &str) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        status
            .lines()
            .find_map(|line| {
                line.strip_prefix(field)?
                    .strip_prefix(':')?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .with_context(|| format!("no {field} in {path}"))
    }

    fn rss_kb(&self) -> anyhow::Result<u64> {
        self.status_kb("VmRSS")
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}
