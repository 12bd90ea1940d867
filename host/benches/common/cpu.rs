//! CPU accounting for the benches: what a measured process, its reaped children, the bench
//! itself and everything else on the machine used over a measurement ([`CpuMeter`],
//! [`CpuUse`]), from `/proc/PID/stat` (utime + stime of all threads; cutime + cstime of the
//! children the process has waited for) and `/proc/stat`, in USER_HZ ticks (10 ms).

use std::{collections::HashMap, time::Instant};

use anyhow::{ensure, Context as _};

use super::{machine_busy, USER_HZ};

/// CPU seconds used over a measurement.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    pub wall: f64,
    /// By the measured process (the dispatcher, or this bench's supervisor threads).
    pub own: f64,
    /// By its children, the workers: those it reaped, and those still running with what they
    /// reaped (a fork server and its workers).
    pub children: f64,
    /// By this bench, when it is not the measured process.
    pub bench: f64,
    /// By everything else on the machine.
    pub others: f64,
}

impl CpuUse {
    /// Cores kept busy by the measured process and its workers.
    pub fn cores(&self) -> f64 {
        (self.own + self.children) / self.wall
    }

    /// Cores kept busy by other processes.
    pub fn other_cores(&self) -> f64 {
        self.others / self.wall
    }

    pub fn plus(&self, other: &Self) -> Self {
        Self {
            wall: self.wall + other.wall,
            own: self.own + other.own,
            children: self.children + other.children,
            bench: self.bench + other.bench,
            others: self.others + other.others,
        }
    }
}

/// Snapshots of this process's, a watched process's and the machine's CPU time at the start
/// of a measurement.
pub struct CpuMeter {
    started: Instant,
    bench: (f64, f64),
    machine: f64,
    /// The process already running at the start, with its CPU time then: its own, and its
    /// children's, reaped and running.
    watched: Option<(u32, (f64, f64))>,
    /// The time of this process's running children then (a fork server and its workers).
    bench_live: f64,
}

/// A process's own CPU time, and its children's: those it reaped, and those still running
/// with what they reaped (a fork server and the workers it waited for).
fn with_children(pid: u32) -> anyhow::Result<(f64, f64)> {
    let (own, reaped) = process_cpu(&pid.to_string())?;
    Ok((own, reaped + live_children_cpu(pid)))
}

impl CpuMeter {
    /// Starts measuring this process and the machine, and `watched` if it already runs.
    pub fn start(watched: Option<u32>) -> anyhow::Result<Self> {
        let watched = match watched {
            Some(pid) => Some((pid, with_children(pid)?)),
            None => None,
        };
        Ok(Self {
            started: Instant::now(),
            bench: process_cpu("self")?,
            machine: machine_busy()?,
            watched,
            bench_live: live_children_cpu(std::process::id()),
        })
    }

    /// The CPU used since the start by `process` (all of its time, unless it was watched
    /// from the start), or by this process when `None`, and by everything else.
    pub fn stop(self, process: Option<u32>) -> anyhow::Result<CpuUse> {
        let wall = self.started.elapsed().as_secs_f64();
        let machine = machine_busy()? - self.machine;
        let bench = process_cpu("self")?;
        let bench = (bench.0 - self.bench.0, bench.1 - self.bench.1);
        let (own, children, bench) = match process {
            Some(pid) => {
                let base = match self.watched {
                    Some((watched, base)) if watched == pid => base,
                    _ => (0.0, 0.0),
                };
                let (own, children) = with_children(pid)?;
                (own - base.0, children - base.1, bench.0 + bench.1)
            }
            // Its running children too: a fork server, with the workers it reaped, is a
            // child of this process that has not been waited for yet.
            None => (
                bench.0,
                bench.1 + live_children_cpu(std::process::id()) - self.bench_live,
                0.0,
            ),
        };
        Ok(CpuUse {
            wall,
            own,
            children,
            bench,
            others: (machine - own - children - bench).max(0.0),
        })
    }
}

/// A process's own CPU seconds (user and system, all threads) and its reaped children's.
pub fn process_cpu(pid: &str) -> anyhow::Result<(f64, f64)> {
    let (_, own, children) = stat_cpu(&format!("/proc/{pid}/stat"))?;
    Ok((own, children))
}

/// CPU seconds of a process's main thread (the dispatcher's loop, in `jobhost serve`), and of
/// its other threads.
pub fn main_thread_cpu(pid: u32) -> anyhow::Result<(f64, f64)> {
    let dir = format!("/proc/{pid}/task");
    let (mut main, mut others) = (0.0, 0.0);
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot read {dir}"))? {
        let entry = entry.context("cannot list threads")?;
        let (_, own, _) = stat_cpu(&entry.path().join("stat").to_string_lossy())?;
        if entry.file_name().to_str() == Some(pid.to_string().as_str()) {
            main += own;
        } else {
            others += own;
        }
    }
    Ok((main, others))
}

/// The command name, own and reaped children's CPU seconds in a `/proc/.../stat` file.
pub fn stat_cpu(path: &str) -> anyhow::Result<(String, f64, f64)> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    // The command name is in parentheses and may hold spaces; state is the field after it.
    let (open, close) = stat
        .find('(')
        .zip(stat.rfind(')'))
        .with_context(|| format!("{path} has no command name"))?;
    let name = stat[open + 1..close].to_owned();
    let rest = &stat[close + 1..];
    let fields: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .collect();
    ensure!(fields.len() == 4, "{path} is too short");
    Ok((
        name,
        (fields[0] + fields[1]) / USER_HZ,
        (fields[2] + fields[3]) / USER_HZ,
    ))
}

/// Own CPU seconds of each running process whose command name is `name` (as `postgres`, every
/// process of a PostgreSQL server on this machine), by pid; what cannot be read (a process
/// that just exited) is left out.
pub fn named_processes_cpu(name: &str) -> HashMap<u32, f64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let (comm, own, _) = stat_cpu(&format!("/proc/{pid}/stat")).ok()?;
            (comm == name).then_some((pid, own))
        })
        .collect()
}

/// The CPU seconds the processes of [`named_processes_cpu`] used between `before` and `after`:
/// those that ran at both, and those started since (a process that exited meanwhile is not
/// counted).
pub fn named_processes_used(before: &HashMap<u32, f64>, after: &HashMap<u32, f64>) -> f64 {
    after
        .iter()
        .map(|(pid, cpu)| (cpu - before.get(pid).copied().unwrap_or(0.0)).max(0.0))
        .sum()
}

/// CPU seconds of the children of process `pid` that still run (listed in each of its
/// threads' `/proc/PID/task/TID/children`), each its own and its reaped children's; 0 for what
/// cannot be read (a child that just exited).
pub fn live_children_cpu(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let mut sum = 0.0;
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace() {
            if let Ok((own, reaped)) = process_cpu(child) {
                sum += own + reaped;
            }
        }
    }
    sum
}
