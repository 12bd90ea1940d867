//! One attempt of one job, from the host's side: spawn the worker, supervise it, and turn what
//! happened into an [`Outcome`].
//!
//! The worker's report says how the job ended *inside* the worker; the process's end says
//! how the worker itself ended. This module is where the two are reconciled: a report wins
//! when there is one (a job that succeeded just before its timeout succeeded), otherwise the
//! supervisor's stop reason, the signal or the exit code explains the end.

use std::{
    fmt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use serde_json::Value;

use crate::{
    capture::{Capture, CapturedOutput},
    platform::{self, CancelToken, ExitKind, StopReason, SuperviseOptions},
    protocol::{read_report, FailureKind, WorkerReport, WorkerRequest, PROTOCOL_VERSION},
    settings::Settings,
};

/// The hidden subcommand that runs a worker.
pub const WORKER_SUBCOMMAND: &str = "__worker";

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The job returned this result.
    Ok(Value),
    /// The job (or the worker on its behalf) reported an error.
    Error {
        /// What kind.
        kind: FailureKind,
        /// The message.
        message: String,
    },
    /// The worker died of a signal (Unix) or crash code (Windows).
    Crashed {
        /// Its name, e.g. `SIGSEGV`.
        signal: String,
        /// Whether the runtime reported a stack overflow just before.
        stack_overflow: bool,
    },
    /// The attempt ran past its timeout and was stopped.
    TimedOut(Duration),
    /// The attempt was cancelled.
    Cancelled,
    /// The worker exited without writing a report.
    ExitedWithoutResult(i32),
    /// The attempt's worker was gone without a report when its dispatcher came back after a
    /// crash; how it ended cannot be known.
    Lost(String),
}

impl Outcome {
    /// Whether another attempt could end differently.
    pub fn is_retryable(&self) -> bool {
        match self {
            Outcome::Ok(_) | Outcome::Cancelled => false,
            Outcome::Error { kind, .. } => kind.is_retryable(),
            Outcome::Crashed { .. }
            | Outcome::TimedOut(_)
            | Outcome::ExitedWithoutResult(_)
            | Outcome::Lost(_) => true,
        }
    }

    /// The short outcome label: `ok`, `error`, `crashed: SIGSEGV`, `timed out`, ...
    pub fn label(&self) -> String {
        match self {
            Outcome::Ok(_) => "ok".into(),
            Outcome::Error { .. } => "error".into(),
            Outcome::Crashed { signal, .. } => format!("crashed: {signal}"),
            Outcome::TimedOut(_) => "timed out".into(),
            Outcome::Cancelled => "cancelled".into(),
            Outcome::ExitedWithoutResult(code) => format!("exited without a result: code {code}"),
            Outcome::Lost(_) => "lost".into(),
        }
    }

    /// The error message, for every outcome but success.
    pub fn error(&self) -> Option<String> {
        match self {
            Outcome::Ok(_) => None,
            Outcome::Error { message, .. } => Some(message.clone()),
            Outcome::Crashed {
                signal,
                stack_overflow: true,
            } => Some(format!("worker crashed: stack overflow ({signal})")),
            Outcome::Crashed { signal, .. } => Some(format!("worker crashed: {signal}")),
            Outcome::TimedOut(after) => {
                Some(format!("timed out after {}", crate::text::secs(*after)))
            }
            Outcome::Cancelled => Some("cancelled".into()),
            Outcome::ExitedWithoutResult(code) => Some(format!(
                "worker exited with code {code} without reporting a result"
            )),
            Outcome::Lost(why) => Some(why.clone()),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct AttemptSpec<'a> {
    /// The job id (safe as a file name).
    pub job_id: &'a str,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// The class.
    pub class: &'a str,
    /// The method.
    pub method: &'a str,
    /// The params.
    pub params: &'a Value,
    /// The plugin library offering the class.
    pub plugin: &'a Path,
    /// How long the attempt may run.
    pub timeout: Duration,
}

/// Everything recorded about one attempt.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The attempt number.
    pub attempt: u32,
    /// The worker's pid.
    pub pid: u32,
    /// When the worker was spawned.
    pub started_at: SystemTime,
    /// How long it ran.
    pub duration: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// Its captured output.
    pub output: CapturedOutput,
}

/// Why an attempt could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The attempt's files could not be set up or read.
    #[error("cannot prepare attempt files in {dir}")]
    Files {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The worker could not be spawned or supervised.
    #[error("cannot run worker {program}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The program that runs workers: this very executable.
pub fn worker_program() -> std::io::Result<PathBuf> {
    std::env::current_exe()
}

/// Runs one attempt in a fresh worker process and waits for it to end.
pub fn run_attempt(
    settings: &Settings,
    spec: &AttemptSpec<'_>,
    cancel: &CancelToken,
) -> Result<AttemptRecord, AttemptError> {
    let dir = settings.state_dir.join("attempts").join(spec.job_id);
    let files = |source| AttemptError::Files {
        dir: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(files)?;
    let report_path = dir.join(format!("{}.report.json", spec.attempt));
    match std::fs::remove_file(&report_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(files(e)),
        _ => {}
    }
    let request = WorkerRequest {
        protocol: PROTOCOL_VERSION,
        job_id: spec.job_id.to_owned(),
        attempt: spec.attempt,
        class: spec.class.to_owned(),
        method: spec.method.to_owned(),
        params: spec.params.clone(),
        plugin: spec.plugin.to_path_buf(),
        allowlist: settings.allowlist.clone(),
        report: report_path.clone(),
    };
    let program = worker_program().map_err(|source| AttemptError::Spawn {
        program: PathBuf::from("jobhost"),
        source,
    })?;
    let request_json = serde_json::to_string(&request).map_err(|e| files(e.into()))?;
    let mut command = Command::new(&program);
    command
        .arg(WORKER_SUBCOMMAND)
        .arg(request_json)
        // Inherited RUST_BACKTRACE=1 makes every panic cost ~100 ms of symbolisation.
        .env("RUST_BACKTRACE", "0");
    let mut capture = Capture::create(
        &dir.join(format!("{}.out", spec.attempt)),
        settings.limits.max_output_bytes,
    )
    .map_err(files)?;
    let options = SuperviseOptions {
        timeout: spec.timeout,
        kill_grace: settings.limits.kill_grace,
    };
    let end = platform::supervise(command, options, cancel, &mut capture)
        .map_err(|source| AttemptError::Spawn { program, source })?;
    let stack_overflow = capture.tail_contains("has overflowed its stack");
    let output = capture.finish().map_err(files)?;
    let report: Option<WorkerReport> = read_report(&report_path).map_err(files)?;

    let outcome = match (report, end.stopped, end.exit) {
        (Some(WorkerReport::Ok { result, .. }), _, _) => Outcome::Ok(result),
        (_, Some(StopReason::Cancelled), _) => Outcome::Cancelled,
        (_, Some(StopReason::TimedOut), _) => Outcome::TimedOut(spec.timeout),
        (Some(WorkerReport::Error { kind, message, .. }), None, _) => {
            Outcome::Error { kind, message }
        }
        (None, None, ExitKind::Signaled(signal)) => Outcome::Crashed {
            signal: platform::crash_name(signal),
            stack_overflow,
        },
        (None, None, ExitKind::Exited(code)) => Outcome::ExitedWithoutResult(code),
    };
    Ok(AttemptRecord {
        attempt: spec.attempt,
        pid: end.pid,
        started_at: end.started_at,
        duration: end.duration,
        outcome,
        output,
    })
}
