//! One attempt of one job, from the host's side: spawn the worker, supervise it, and turn what
//! happened into an [`Outcome`].
//!
//! The worker's report says how the job ended *inside* the worker; the process's end says
//! how the worker itself ended. This module is where the two are reconciled: a report wins
//! when there is one (a job that succeeded just before its timeout succeeded), otherwise the
//! supervisor's stop reason, the signal or the exit code explains the end.

pub mod attempts;
pub mod capture;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use crate::{
    config::settings::{Runner, Settings},
    job::outcome::Outcome,
    platform::{
        self, CancelToken, ExitKind, Launch, OutputPair, ProcessEnd, StopReason, SuperviseOptions,
    },
    runner::protocol::{
        self, read_report, FailureKind, WorkerReport, WorkerRequest, PROTOCOL_VERSION,
    },
    runner::supervisor::capture::{Capture, CapturedOutput},
    shared::text::chain,
};

/// How workers are started, as `dispatcher.runner` says: each executed anew (`jobhost
/// __worker REQUEST`), or forked by a fork server ([`platform::fork_server`], Linux) that the
/// dispatcher starts once. One per dispatcher, shared by everything that runs its attempts.
///
/// A worker that cannot be forked (the fork server cannot be started, or died twice in a row)
/// is executed instead, with a WARNING; for a minute after that, workers are executed without
/// trying the fork server, then it is tried again.
#[derive(Debug)]
pub struct Spawner {
    #[cfg(unix)]
    fork: Option<Forking>,
}

/// The fork server of a [`Spawner`], and when forking last failed.
#[cfg(unix)]
#[derive(Debug)]
struct Forking {
    server: platform::fork_server::ForkServer,
    failed_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How long workers are executed after forking one failed, before the fork server is tried
/// again.
#[cfg(unix)]
const FORK_RETRY_AFTER: Duration = Duration::from_secs(60);

impl Spawner {
    /// The spawner `settings` ask for; the fork server is started with the first worker.
    pub fn new(settings: &Settings) -> Self {
        match settings.dispatcher.runner {
            Runner::Exec => Self::exec(),
            #[cfg(unix)]
            Runner::Fork => Self {
                fork: Some(Forking {
                    server: platform::fork_server::ForkServer::new(zygote_command(settings)),
                    failed_at: std::sync::Mutex::new(None),
                }),
            },
            // Settings refuse `fork` where it is not available.
            #[cfg(not(unix))]
            Runner::Fork => Self::exec(),
        }
    }

    /// A spawner that executes every worker.
    pub fn exec() -> Self {
        Self {
            #[cfg(unix)]
            fork: None,
        }
    }

    /// Starts the worker of `prepared`, its output going into `output`: forks it, or says how
    /// to execute it.
    fn start(&self, settings: &Settings, prepared: &Prepared, output: &OutputPair) -> Launch {
        #[cfg(unix)]
        if let Some(forked) = self.fork(prepared, output) {
            return Launch::Forked(forked);
        }
        // Only forking needs them: an executed worker loads its plugin itself.
        #[cfg(not(unix))]
        let _ = (output, prepared.fork_safe);
        let mut command = Command::new(super::jobhost_program());
        command
            .current_dir(&settings.work_dir)
            .arg(protocol::WORKER_SUBCOMMAND)
            .arg(&prepared.json)
            // Inherited RUST_BACKTRACE=1 makes every panic cost ~100 ms of symbolisation.
            .env("RUST_BACKTRACE", "0");
        Launch::Exec(command)
    }

    /// Forks the worker of `prepared`, when this spawner forks and forking works; its plugin
    /// loaded by the fork server first when it declares itself fork-safe.
    #[cfg(unix)]
    fn fork(&self, prepared: &Prepared, output: &OutputPair) -> Option<platform::ForkedWorker> {
        let forking = self.fork.as_ref()?;
        let mut failed_at = forking
            .failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failed_at.is_some_and(|at| at.elapsed() < FORK_RETRY_AFTER) {
            return None;
        }
        *failed_at = None;
        drop(failed_at);
        let request = &prepared.request;
        let preload = prepared.fork_safe.then_some(request.plugin.as_path());
        match platform::fork_worker(
            &forking.server,
            &worker_title(request),
            prepared.json.as_bytes(),
            output,
            preload,
        ) {
            Ok(forked) => Some(forked),
            Err(e) => {
                tracing::warn!(
                    "Workers cannot be forked ({e}); they are executed instead, and forking \
                     is tried again in {} s",
                    FORK_RETRY_AFTER.as_secs()
                );
                *forking
                    .failed_at
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(std::time::Instant::now());
                None
            }
        }
    }
}

/// The command that starts the fork server for `settings`: `jobhost __zygote ROOM`, where
/// `ROOM` (the state directory, padded) makes room for the command lines its workers write
/// over its own ([`worker_title`]).
#[cfg(unix)]
fn zygote_command(settings: &Settings) -> impl Fn() -> Command + Send + Sync + 'static {
    let program = super::jobhost_program();
    let work_dir = settings.work_dir.clone();
    let state_dir = settings.state_dir.display().to_string();
    let room = format!("{state_dir}{}", " ".repeat(state_dir.len() + 1024));
    move || {
        let mut command = Command::new(&program);
        command
            .current_dir(&work_dir)
            .arg(protocol::ZYGOTE_SUBCOMMAND)
            .arg(&room)
            .env("RUST_BACKTRACE", "0");
        command
    }
}

/// The command line of a forked worker, its arguments separated by NUL bytes: `__worker`
/// and what names its attempt, the report first (it is how a worker is recognised after a
/// dispatcher restart, [`platform::find_worker`]), as an executed worker's request names it.
#[cfg(unix)]
fn worker_title(request: &WorkerRequest) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Title<'a> {
        report: &'a Path,
        job_id: &'a str,
        attempt: u32,
        class: &'a str,
        method: &'a str,
    }
    let title = Title {
        report: &request.report,
        job_id: &request.job_id,
        attempt: request.attempt,
        class: &request.class,
        method: &request.method,
    };
    let mut bytes = format!("{}\0", protocol::WORKER_SUBCOMMAND).into_bytes();
    // Paths and names serialize; were one not to, the worker would just be named less.
    let _ = serde_json::to_writer(&mut bytes, &title);
    bytes
}

/// What to run.
#[derive(Debug, Clone)]
pub struct AttemptSpec<'a> {
    /// The job id.
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
    /// The allowlist the worker checks the job against before it loads anything.
    pub allowlist: &'a Path,
    /// Whether the plugin declares itself fork-safe (its catalog entry says so,
    /// [`crate::catalog::inventory::Version::fork_safe`]): a fork server may then load it
    /// before forking the worker, which starts with it loaded.
    pub fork_safe: bool,
}

/// Everything recorded about one attempt.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The attempt number.
    pub attempt: u32,
    /// The worker's pid.
    pub pid: u32,
    /// How long it ran (as seen by whoever supervised its end).
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

impl AttemptError {
    /// The outcome of an attempt that could not run for this error: `lost` if its worker had
    /// been let start (`released`: plugin code may have run), else `not started` (the
    /// dispatcher's problem, not the job's: the attempt does not count).
    pub fn outcome(&self, released: bool) -> Outcome {
        if released {
            Outcome::Lost(format!("the attempt could not be supervised: {}", chain(self)))
        } else {
            Outcome::NotStarted(format!("not started: the worker could not start: {}", chain(self)))
        }
    }
}

/// The directory of every job's attempt files in `state_dir`: `<state_dir>/attempts/`, with
/// a directory per job, named after its id, for its attempts' output, and each attempt's
/// report beside it ([`AttemptPaths`]).
pub fn attempts_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("attempts")
}

/// The files of one attempt: its output in its job's directory,
/// `<state_dir>/attempts/<job_id>/<attempt>.out`, which is made with the first output of any
/// of the job's attempts, and its report beside that directory,
/// `<state_dir>/attempts/<job_id>.<attempt>.report.json`. So an attempt that prints nothing,
/// most of them, allocates one file (its report) and no directory: on a file system where
/// allocating an inode is slow (ext4 without a journal skips every inode deleted in the last
/// minutes), that was a good part of an attempt's supervision.
#[derive(Debug, Clone)]
pub struct AttemptPaths {
    dir: PathBuf,
    /// The captured output.
    pub output: PathBuf,
    /// The worker's report.
    pub report: PathBuf,
    /// Where a worker of an earlier jobhost, which kept the report in the job's directory
    /// too, writes it: read when its attempt is adopted or settled late.
    earlier_report: PathBuf,
}

impl AttemptPaths {
    /// The files of attempt `attempt` of job `job_id`.
    pub fn new(state_dir: &Path, job_id: &str, attempt: u32) -> Self {
        let attempts = attempts_dir(state_dir);
        let dir = attempts.join(job_id);
        Self {
            output: dir.join(format!("{attempt}.out")),
            report: attempts.join(format!("{job_id}.{attempt}.report.json")),
            earlier_report: dir.join(format!("{attempt}.report.json")),
            dir,
        }
    }

    /// The report of the attempt, where its worker wrote it; `None` when there is none.
    pub fn read_report(&self) -> Result<Option<WorkerReport>, AttemptError> {
        match read_report(&self.report).map_err(|e| self.error(e))? {
            Some(report) => Ok(Some(report)),
            None => read_report(&self.earlier_report).map_err(|e| self.error(e)),
        }
    }

    fn error(&self, source: std::io::Error) -> AttemptError {
        AttemptError::Files {
            dir: self.dir.clone(),
            source,
        }
    }
}

/// An attempt ready to start: its files set up, its worker's request written.
pub struct Prepared {
    paths: AttemptPaths,
    request: WorkerRequest,
    /// Whether its plugin declares itself fork-safe ([`AttemptSpec::fork_safe`]).
    fork_safe: bool,
    json: String,
    capture: Capture,
    options: SuperviseOptions,
}

/// Sets up the files of `spec` and writes its worker's request.
pub fn prepare(settings: &Settings, spec: &AttemptSpec<'_>) -> Result<Prepared, AttemptError> {
    let paths = AttemptPaths::new(&settings.state_dir, spec.job_id, spec.attempt);
    let attempts = attempts_dir(&settings.state_dir);
    if !attempts.is_dir() {
        crate::shared::files::create_private_dir(&attempts).map_err(|source| {
            AttemptError::Files {
                dir: attempts.clone(),
                source,
            }
        })?;
    }
    crate::shared::files::remove_if_present(&paths.report).map_err(|e| paths.error(e))?;
    let request = WorkerRequest {
        protocol: PROTOCOL_VERSION,
        job_id: spec.job_id.to_owned(),
        attempt: spec.attempt,
        class: spec.class.to_owned(),
        method: spec.method.to_owned(),
        params: spec.params.clone(),
        plugin: spec.plugin.to_path_buf(),
        allowlist: spec.allowlist.to_path_buf(),
        allowlist_file: Some(settings.allowlist.clone()),
        report: paths.report.clone(),
        output: platform::HELD_OUTPUT.map(PathBuf::from),
        gate: true,
    };
    let json = serde_json::to_string(&request).map_err(|e| paths.error(e.into()))?;
    let capture = Capture::create(&paths.output, settings.limits.max_output_bytes)
        .map_err(|e| paths.error(e))?;
    Ok(Prepared {
        paths,
        request,
        fork_safe: spec.fork_safe,
        json,
        capture,
        options: SuperviseOptions {
            timeout: spec.timeout,
            kill_grace: settings.limits.kill_grace,
        },
    })
}

/// Why a worker could not be spawned or supervised.
fn spawn_error(source: std::io::Error) -> AttemptError {
    AttemptError::Spawn {
        program: super::jobhost_program(),
        source,
    }
}

impl Prepared {
    /// Runs it to its end, waiting for it. `on_spawn` learns the worker's pid as soon as it
    /// exists, before the worker may load anything: the worker starts when it returns true
    /// (the caller has recorded the pid durably), and when it returns false ends without
    /// running any plugin code, reporting [`Outcome::NotStarted`].
    #[cfg(windows)]
    fn run(
        mut self,
        settings: &Settings,
        spawner: &Spawner,
        cancel: &CancelToken,
        on_spawn: &mut dyn FnMut(u32) -> bool,
    ) -> Result<AttemptRecord, AttemptError> {
        let (launch, output) = self.launch(settings, spawner)?;
        let end = platform::supervise(
            launch,
            output,
            self.options,
            cancel,
            &mut self.capture,
            on_spawn,
        )
        .map_err(spawn_error)?;
        self.conclude(end)
    }

    /// Its worker's output pipe, and how to start the worker (forked already, when `spawner`
    /// forks).
    fn launch(
        &self,
        settings: &Settings,
        spawner: &Spawner,
    ) -> Result<(Launch, OutputPair), AttemptError> {
        let output = OutputPair::pipe().map_err(|e| self.paths.error(e))?;
        let launch = spawner.start(settings, self, &output);
        Ok((launch, output))
    }

    /// The record of the attempt, from how its worker ended (`end`), its output and its
    /// report.
    fn conclude(self, end: ProcessEnd) -> Result<AttemptRecord, AttemptError> {
        let stack_overflow = self.capture.tail_contains("has overflowed its stack");
        let output = self.capture.finish();
        let report: Option<WorkerReport> =
            read_report(&self.paths.report).map_err(|e| self.paths.error(e))?;
        Ok(AttemptRecord {
            attempt: self.request.attempt,
            pid: end.pid,
            duration: end.duration,
            outcome: classify(
                report,
                end.stopped,
                end.exit.map_or(Exit::Orphaned, Exit::Status),
                end.took_go_ahead,
                stack_overflow,
                self.options.timeout,
            ),
            output,
        })
    }
}

/// What to adopt: an attempt whose dispatcher died while it ran.
#[derive(Debug, Clone)]
pub struct Orphan<'a> {
    /// The job id.
    pub job_id: &'a str,
    /// The attempt number.
    pub attempt: u32,
    /// The worker's pid, if it was recorded.
    pub pid: Option<u32>,
    /// How long the attempt may still run.
    pub time_left: Duration,
    /// The attempt's timeout, for the record.
    pub timeout: Duration,
}

/// Settles an attempt left behind by a crashed dispatcher: if its worker still runs, watches
/// it to its end (deadline and cancellation included) and reads its report; if the worker is
/// gone, its report says how it ended, and without one the attempt is [`Outcome::Lost`].
pub fn adopt_attempt(
    settings: &Settings,
    orphan: &Orphan<'_>,
    cancel: &CancelToken,
) -> Result<AttemptRecord, AttemptError> {
    let paths = AttemptPaths::new(&settings.state_dir, orphan.job_id, orphan.attempt);
    let worker = find_worker(&paths, orphan.pid);
    let mut capture = Capture::append(&paths.output, settings.limits.max_output_bytes)
        .map_err(|e| paths.error(e))?;
    let started = std::time::Instant::now();
    let stopped = match worker {
        Some(pid) => {
            let output = platform::reopen_output(pid).ok();
            platform::adopt(
                pid,
                output,
                orphan.time_left,
                settings.limits.kill_grace,
                cancel,
                &mut capture,
            )
            .map_err(|source| AttemptError::Spawn {
                program: PathBuf::from(format!("adopted worker {pid}")),
                source,
            })?
        }
        None => None,
    };
    let stack_overflow = capture.tail_contains("has overflowed its stack");
    let output = capture.finish();
    let report = paths.read_report()?;
    let exit = match worker {
        Some(_) => Exit::Adopted,
        None => Exit::Gone {
            pid_recorded: orphan.pid.is_some(),
        },
    };
    let outcome = classify(report, stopped, exit, true, stack_overflow, orphan.timeout);
    Ok(AttemptRecord {
        attempt: orphan.attempt,
        pid: worker.or(orphan.pid).unwrap_or(0),
        duration: started.elapsed(),
        outcome,
        output,
    })
}

/// The live worker of an attempt: the recorded pid if it is still that attempt's worker, else
/// any worker process running the attempt (its pid may not have been recorded).
fn find_worker(paths: &AttemptPaths, pid: Option<u32>) -> Option<u32> {
    let markers = [&paths.report, &paths.earlier_report].map(|path| path.to_string_lossy());
    platform::find_worker(pid, &markers.each_ref().map(|marker| marker.as_ref()))
}

/// How an attempt ended by its worker's report alone: for a report that turns up after the
/// attempt was settled `lost` (its dispatcher was rescued while the worker ran on).
pub fn reported_outcome(report: WorkerReport, timeout: Duration) -> Outcome {
    let gone = Exit::Gone { pid_recorded: true };
    classify(Some(report), None, gone, true, false, timeout)
}

/// How a worker's process ended, as far as its supervisor can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// The supervisor's own child ended so.
    Status(ExitKind),
    /// An adopted worker ended while its new dispatcher watched it: a process that dispatcher
    /// did not start has no exit status to read.
    Adopted,
    /// A forked worker ended after its fork server, which alone could have read its exit
    /// status, died.
    Orphaned,
    /// The worker was gone when its dispatcher came back; `pid_recorded` says whether its pid
    /// had been recorded (it is, before a worker may start).
    Gone {
        /// Whether the worker's pid was on record.
        pid_recorded: bool,
    },
}

/// Reconciles the worker's report with how its process ended. A report of success wins;
/// then a report of `not started`; then a stop by the supervisor; then the report's error;
/// then, for a worker that ended before it took its go-ahead (`took_go_ahead` false: no
/// plugin code ran), `not started`; then the signal or exit code. With no report and no exit
/// status the attempt is lost, or never started if no worker was ever on record.
fn classify(
    report: Option<WorkerReport>,
    stopped: Option<StopReason>,
    exit: Exit,
    took_go_ahead: bool,
    stack_overflow: bool,
    timeout: Duration,
) -> Outcome {
    match (report, stopped, exit) {
        (Some(WorkerReport::Ok { result, .. }), _, _) => Outcome::Ok(result),
        (
            Some(WorkerReport::Error {
                kind: FailureKind::NotStarted,
                message,
                ..
            }),
            _,
            _,
        ) => Outcome::NotStarted(message),
        (_, Some(StopReason::Cancelled), _) => Outcome::Cancelled,
        (_, Some(StopReason::TimedOut), _) => Outcome::TimedOut(timeout),
        (Some(WorkerReport::Error { kind, message, .. }), None, _) => {
            Outcome::Error { kind, message }
        }
        (None, None, _) if !took_go_ahead => Outcome::NotStarted(
            "not started: the worker ended before it took its go-ahead; no plugin code ran".into(),
        ),
        (None, None, Exit::Status(ExitKind::Signaled(signal))) => Outcome::Crashed {
            signal: platform::crash_name(signal),
            stack_overflow,
        },
        (None, None, Exit::Status(ExitKind::Exited(code))) => Outcome::ExitedWithoutResult(code),
        (None, None, Exit::Adopted) => Outcome::Lost(
            "the adopted worker ended without a report; a worker the dispatcher did not start \
             has no exit status to read, so how it ended is unknown"
                .into(),
        ),
        (None, None, Exit::Orphaned) => Outcome::Lost(
            "the worker ended without a report after its fork server died, which alone could \
             read its exit status, so how it ended is unknown"
                .into(),
        ),
        // The pid is recorded before a worker may start, so none ever ran plugin code.
        (
            None,
            None,
            Exit::Gone {
                pid_recorded: false,
            },
        ) => Outcome::NotStarted(
            "not started: its dispatcher stopped between claiming the job and starting a worker"
                .into(),
        ),
        (None, None, Exit::Gone { pid_recorded: true }) => Outcome::Lost(
            "the worker was gone without a report when its dispatcher restarted".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn a_report_is_read_beside_the_jobs_directory_and_where_an_earlier_worker_wrote_it() {
        let state = tempfile::tempdir().unwrap();
        let paths = AttemptPaths::new(state.path(), "12", 3);
        let attempts = attempts_dir(state.path());
        assert_eq!(paths.report, attempts.join("12.3.report.json"));
        assert_eq!(paths.output, attempts.join("12").join("3.out"));
        assert_eq!(paths.read_report().unwrap(), None);
        // An earlier jobhost's worker wrote it in the job's directory.
        std::fs::create_dir_all(attempts.join("12")).unwrap();
        let earlier = ok(json!("earlier")).unwrap();
        crate::runner::protocol::write_report(&attempts.join("12").join("3.report.json"), &earlier)
            .unwrap();
        assert_eq!(paths.read_report().unwrap(), Some(earlier));
        // Where this one writes it comes first.
        let now = ok(json!("now")).unwrap();
        crate::runner::protocol::write_report(&paths.report, &now).unwrap();
        assert_eq!(paths.read_report().unwrap(), Some(now));
    }

    fn ok(result: Value) -> Option<WorkerReport> {
        Some(WorkerReport::Ok {
            protocol: PROTOCOL_VERSION,
            result,
        })
    }

    fn error(kind: FailureKind, message: &str) -> Option<WorkerReport> {
        Some(WorkerReport::Error {
            protocol: PROTOCOL_VERSION,
            kind,
            message: message.into(),
        })
    }

    /// The outcome of the supervisor's own child, stopped or not, without a stack overflow.
    fn of_child(
        report: Option<WorkerReport>,
        stopped: Option<StopReason>,
        exit: ExitKind,
    ) -> Outcome {
        classify(report, stopped, Exit::Status(exit), true, false, TIMEOUT)
    }

    /// Every way a process can end, as its supervisor sees it.
    fn every_exit() -> [Exit; 6] {
        [
            Exit::Status(ExitKind::Exited(0)),
            Exit::Status(ExitKind::Exited(1)),
            Exit::Status(ExitKind::Signaled(9)),
            Exit::Adopted,
            Exit::Orphaned,
            Exit::Gone {
                pid_recorded: false,
            },
        ]
    }

    #[test]
    fn a_report_of_success_wins_over_everything() {
        for stopped in [
            None,
            Some(StopReason::TimedOut),
            Some(StopReason::Cancelled),
        ] {
            for exit in every_exit() {
                assert_eq!(
                    classify(ok(json!({"n": 1})), stopped, exit, true, true, TIMEOUT),
                    Outcome::Ok(json!({"n": 1})),
                    "{stopped:?} {exit:?}"
                );
            }
        }
    }

    #[test]
    fn a_report_of_not_started_means_no_plugin_code_ran_however_it_was_stopped() {
        for stopped in [
            None,
            Some(StopReason::TimedOut),
            Some(StopReason::Cancelled),
        ] {
            assert_eq!(
                of_child(
                    error(FailureKind::NotStarted, "no go-ahead"),
                    stopped,
                    ExitKind::Exited(3)
                ),
                Outcome::NotStarted("no go-ahead".into())
            );
        }
    }

    #[test]
    fn a_stop_by_the_supervisor_wins_over_a_reported_error_and_the_exit() {
        for exit in every_exit() {
            for report in [None, error(FailureKind::Failed, "boom")] {
                assert_eq!(
                    classify(
                        report.clone(),
                        Some(StopReason::Cancelled),
                        exit,
                        true,
                        false,
                        TIMEOUT,
                    ),
                    Outcome::Cancelled
                );
                assert_eq!(
                    classify(report, Some(StopReason::TimedOut), exit, true, false, TIMEOUT),
                    Outcome::TimedOut(TIMEOUT)
                );
            }
        }
    }

    #[test]
    fn a_reported_error_is_the_outcome_whatever_the_exit() {
        for kind in [
            FailureKind::Failed,
            FailureKind::Permanent,
            FailureKind::InvalidParams,
            FailureKind::Panicked,
            FailureKind::Cancelled,
            FailureKind::Unauthorized,
            FailureKind::LoadFailed,
            FailureKind::BadRequest,
        ] {
            for exit in every_exit() {
                assert_eq!(
                    classify(error(kind, "why"), None, exit, true, true, TIMEOUT),
                    Outcome::Error {
                        kind,
                        message: "why".into()
                    },
                    "{kind:?} {exit:?}"
                );
            }
        }
    }

    #[test]
    fn an_exit_without_a_report_is_an_exit_without_a_result_whatever_its_code() {
        for code in [0, 1, 2, 101, 255, -1] {
            let outcome = of_child(None, None, ExitKind::Exited(code));
            assert_eq!(outcome, Outcome::ExitedWithoutResult(code));
            assert!(outcome.is_retryable());
        }
        assert_eq!(
            of_child(None, None, ExitKind::Exited(101)).error().unwrap(),
            "worker exited with code 101 without reporting a result"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_signal_without_a_report_is_a_crash_named_by_the_signal() {
        use rustix::process::Signal;
        for (signal, name) in [
            (Signal::SEGV, "SIGSEGV"),
            (Signal::ABORT, "SIGABRT"),
            (Signal::BUS, "SIGBUS"),
            (Signal::ILL, "SIGILL"),
            (Signal::FPE, "SIGFPE"),
            (Signal::KILL, "SIGKILL"),
            (Signal::TERM, "SIGTERM"),
        ] {
            let outcome = of_child(None, None, ExitKind::Signaled(signal.as_raw()));
            assert_eq!(
                outcome,
                Outcome::Crashed {
                    signal: name.into(),
                    stack_overflow: false
                }
            );
            assert_eq!(outcome.label(), format!("crashed: {name}"));
            assert_eq!(outcome.error().unwrap(), format!("worker crashed: {name}"));
        }
        let overflowed = classify(
            None,
            None,
            Exit::Status(ExitKind::Signaled(Signal::SEGV.as_raw())),
            true,
            true,
            TIMEOUT,
        );
        assert_eq!(
            overflowed.error().unwrap(),
            "worker crashed: stack overflow (SIGSEGV)"
        );
    }

    #[cfg(windows)]
    #[test]
    fn a_crash_code_without_a_report_is_a_crash_named_by_the_code() {
        for (code, name) in [
            (0xC000_0005_u32, "0xC0000005 access violation"),
            (0xC000_00FD, "0xC00000FD stack overflow"),
            (0xC000_0409, "0xC0000409 stack buffer overrun / abort"),
        ] {
            assert_eq!(
                of_child(None, None, ExitKind::Signaled(code as i32)),
                Outcome::Crashed {
                    signal: name.into(),
                    stack_overflow: false
                }
            );
        }
    }

    #[test]
    fn a_crash_is_retryable_and_says_whether_the_stack_overflowed() {
        let outcome = classify(
            None,
            None,
            Exit::Status(ExitKind::Signaled(11)),
            true,
            true,
            TIMEOUT,
        );
        let Outcome::Crashed {
            signal,
            stack_overflow,
        } = &outcome
        else {
            panic!("{outcome:?}");
        };
        assert!(stack_overflow);
        assert_eq!(*signal, platform::crash_name(11));
        assert!(outcome.is_retryable());
    }

    #[test]
    fn a_worker_that_ended_before_taking_its_go_ahead_did_not_start_whatever_its_exit() {
        for exit in every_exit() {
            assert_eq!(
                classify(None, None, exit, false, false, TIMEOUT),
                Outcome::NotStarted(
                    "not started: the worker ended before it took its go-ahead; no plugin code \
                     ran"
                        .into()
                ),
                "{exit:?}"
            );
            // What it reported, or its stop, still says more.
            assert_eq!(
                classify(ok(json!(1)), None, exit, false, false, TIMEOUT),
                Outcome::Ok(json!(1))
            );
            assert_eq!(
                classify(
                    None,
                    Some(StopReason::Cancelled),
                    exit,
                    false,
                    false,
                    TIMEOUT
                ),
                Outcome::Cancelled
            );
        }
    }

    #[test]
    fn a_forked_worker_that_outlived_its_fork_server_without_a_report_is_lost() {
        assert_eq!(
            classify(None, None, Exit::Orphaned, true, false, TIMEOUT),
            Outcome::Lost(
                "the worker ended without a report after its fork server died, which alone \
                 could read its exit status, so how it ended is unknown"
                    .into()
            )
        );
    }

    #[test]
    fn an_adopted_worker_that_ended_without_a_report_is_lost() {
        assert_eq!(
            classify(None, None, Exit::Adopted, true, false, TIMEOUT),
            Outcome::Lost(
                "the adopted worker ended without a report; a worker the dispatcher did not \
                 start has no exit status to read, so how it ended is unknown"
                    .into()
            )
        );
    }

    #[test]
    fn a_gone_worker_without_a_report_is_lost_or_never_started() {
        assert_eq!(
            classify(
                None,
                None,
                Exit::Gone { pid_recorded: true },
                true,
                false,
                TIMEOUT,
            ),
            Outcome::Lost(
                "the worker was gone without a report when its dispatcher restarted".into()
            )
        );
        let never = classify(
            None,
            None,
            Exit::Gone {
                pid_recorded: false,
            },
            true,
            false,
            TIMEOUT,
        );
        assert_eq!(
            never,
            Outcome::NotStarted(
                "not started: its dispatcher stopped between claiming the job and starting a \
                 worker"
                    .into()
            )
        );
        assert!(!never.is_retryable());
    }

    #[test]
    fn an_attempt_that_could_not_run_is_lost_once_its_worker_was_let_start_and_says_why() {
        let error = AttemptError::Spawn {
            program: "/bin/jobhost".into(),
            source: std::io::Error::other("no processes left"),
        };
        assert_eq!(
            error.outcome(false),
            Outcome::NotStarted(
                "not started: the worker could not start: cannot run worker /bin/jobhost: no processes \
                 left"
                    .into()
            )
        );
        let error = AttemptError::Files {
            dir: "/state/attempts/1".into(),
            source: std::io::Error::other("disk full"),
        };
        let lost = error.outcome(true);
        assert_eq!(
            lost,
            Outcome::Lost(
                "the attempt could not be supervised: cannot prepare attempt files in \
                 /state/attempts/1: disk full"
                    .into()
            )
        );
        assert!(lost.is_retryable());
    }

    #[test]
    fn a_report_found_late_is_its_outcome() {
        assert_eq!(
            reported_outcome(ok(json!(3)).unwrap(), TIMEOUT),
            Outcome::Ok(json!(3))
        );
        assert_eq!(
            reported_outcome(error(FailureKind::Panicked, "oops").unwrap(), TIMEOUT),
            Outcome::Error {
                kind: FailureKind::Panicked,
                message: "oops".into()
            }
        );
        assert_eq!(
            reported_outcome(error(FailureKind::NotStarted, "no").unwrap(), TIMEOUT),
            Outcome::NotStarted("no".into())
        );
    }
}
