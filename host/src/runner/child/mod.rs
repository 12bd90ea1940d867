//! The code that runs in jobhost's short-lived child processes: the worker, which runs one
//! attempt of one job, and the inspector, which lists one plugin file's classes.
//!
//! Both are plain functions from a request to a report, callable from a fresh process's
//! `main` (the hidden `__worker` and `__inspect` subcommands) or from a child forked by the
//! fork server (`__zygote`, [`crate::platform::fork_server`]); neither keeps per-job state in
//! globals set up at start-up. They never write logs: the host that reads the report does.

pub mod loader;

use std::{
    io::Write,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        OnceLock,
    },
    time::Duration,
};

use abi_stable::{
    prefix_type::WithMetadata,
    std_types::{RResult, RStr},
};
use job_sdk::ffi::{ErrorKind, HostApi, HostApiRef, Invocation};

use crate::{
    config::allowlist::{Allowlist, Verdict},
    job::{json_text_depth, MAX_RESULT_BYTES, MAX_RESULT_DEPTH},
    platform::{self, ExitKind, SuperviseOptions},
    runner::protocol::{
        self, read_report, write_report, ClassEntry, FailureKind, InspectReport, InspectRequest,
        MethodEntry, ReservedReport, WorkerReport, WorkerRequest, GO, PROTOCOL_VERSION,
    },
    runner::reason::Reason,
};

/// If this process was started as a worker or an inspector (`jobhost __worker REQUEST`,
/// `jobhost __inspect REQUEST`), runs it and exits; otherwise returns. Call it first thing in
/// `main` of any program that serves as the jobhost binary.
pub fn exit_if_child() {
    // `args_os`: `args` panics on an argument that is not UTF-8, and this runs before the
    // command line is checked.
    let mut args = std::env::args_os().skip(1);
    let (Some(sub), Some(request)) = (args.next(), args.next()) else {
        return;
    };
    let child_main = match sub.to_str() {
        Some(protocol::WORKER_SUBCOMMAND) => worker_main,
        Some(protocol::INSPECT_SUBCOMMAND) => inspect_main,
        Some(protocol::LOAD_SUBCOMMAND) => load_main,
        Some(protocol::ZYGOTE_SUBCOMMAND) => zygote_main,
        _ => return,
    };
    let code = match request.to_str() {
        Some(request) => child_main(request),
        None => {
            eprintln!("jobhost child: the request is not UTF-8");
            EXIT_NO_REPORT
        }
    };
    // Exit at once: a job's threads must not keep the worker alive.
    crate::platform::exit_child(code);
}

/// The `__zygote` subcommand: the fork server ([`crate::platform::fork_server`]), which forks a
/// worker running [`worker_main`] for each request from the dispatcher. Its argument only
/// pads its command line, which each worker overwrites with its own.
fn zygote_main(_room: &str) -> i32 {
    #[cfg(unix)]
    return crate::platform::fork_server::serve_zygote(crate::platform::fork_server::ZygoteCode {
        child_main: worker_main,
        preload: loader::preload,
    });
    #[cfg(windows)]
    {
        eprintln!("jobhost: the fork server needs Linux");
        EXIT_NO_REPORT
    }
}

/// Exit code of a child that could not write its report.
pub const EXIT_NO_REPORT: i32 = 70;

/// The set-up every child shares: session, core limit, SIGTERM flag, and the request.
fn start<T: for<'de> serde::Deserialize<'de>>(request_json: &str) -> Result<T, i32> {
    match crate::platform::prepare_child() {
        Ok(flag) => {
            let _ = STOP.set(flag);
        }
        Err(e) => {
            eprintln!("jobhost child: cannot prepare process: {e}");
            return Err(EXIT_NO_REPORT);
        }
    }
    serde_json::from_str(request_json).map_err(|e| {
        eprintln!("jobhost child: unreadable request: {e}");
        EXIT_NO_REPORT
    })
}

static STOP: OnceLock<&'static AtomicBool> = OnceLock::new();

/// The `__worker` subcommand: runs the attempt and writes its report; returns the exit code.
pub fn worker_main(request_json: &str) -> i32 {
    let request: WorkerRequest = match start(request_json) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if let Some(pipe) = &request.output {
        if let Err(e) = crate::platform::hold_output_open(pipe) {
            eprintln!(
                "jobhost worker: cannot hold output pipe {}: {e}",
                pipe.display()
            );
        }
    }
    // The report's space and the allowlist's word before the go-ahead, while the dispatcher
    // commits the claim: after it, only the job is left to run. Neither runs plugin code.
    let reserved = ReservedReport::reserve(&request.report);
    let approved = approve(&request);
    let gone_ahead = wait_for_go(&request);
    let reserved = match reserved {
        Ok(reserved) => reserved,
        // Without it the job does not run at all.
        Err(e) => {
            eprintln!("jobhost worker: no room for the report, so the job does not run: {e}");
            return EXIT_NO_REPORT;
        }
    };
    let report = match (gone_ahead, approved) {
        (Err(not_started), _) => not_started,
        (Ok(()), Err(refused)) => refused,
        (Ok(()), Ok(())) => run_approved(&request),
    };
    finish(reserved.write(&report, |note| shorter(&report, note)))
}

/// A report that fits the space taken for it, in place of one too large to write: the same
/// outcome, its result or message replaced by `note`.
fn shorter(report: &WorkerReport, note: String) -> WorkerReport {
    match report {
        WorkerReport::Ok { .. } => WorkerReport::Ok {
            protocol: PROTOCOL_VERSION,
            result: serde_json::Value::String(format!("(result not recorded: {note})")),
        },
        WorkerReport::Error { kind, .. } => error(*kind, format!("(error not recorded: {note})")),
    }
}

/// For a gated request, waits for the supervisor's go-ahead on stdin (see
/// [`WorkerRequest::gate`]); the report to write instead when it does not come.
fn wait_for_go(request: &WorkerRequest) -> Result<(), WorkerReport> {
    if !request.gate {
        return Ok(());
    }
    match crate::platform::await_go_ahead() {
        Ok(Some(GO)) => crate::platform::stdin_to_null().map_err(|e| {
            error(
                FailureKind::NotStarted,
                format!("not started: cannot give the job a null stdin ({e}); no plugin code ran"),
            )
        }),
        Ok(_) => Err(error(
            FailureKind::NotStarted,
            "not started: its supervisor stopped before letting the worker run; no plugin code ran",
        )),
        Err(e) => Err(error(
            FailureKind::NotStarted,
            format!("not started: cannot read the go-ahead from its supervisor ({e}); no plugin code ran"),
        )),
    }
}

/// The `__inspect` subcommand: has the library loaded by a child process of its own
/// (`__inspect-load`, which lists its classes and writes the report) within the request's
/// timeout, ends every process that loading it started, and writes the report when the child
/// did not.
///
/// The inspector itself runs no plugin code. Before starting the child it becomes the reaper of
/// its descendants ([`platform::adopt_orphans`]), so a process the library's load-time code
/// starts stays within its reach even after leaving the process group and session (`fork`,
/// `setsid`) and even when the child crashes; once the child has ended it kills them all
/// ([`platform::kill_adopted`]). So when the inspector is gone, so is everything the
/// inspection started.
pub fn inspect_main(request_json: &str) -> i32 {
    let request: InspectRequest = match start(request_json) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match load_in_child(&request, request_json) {
        Some(report) => finish(write_report(&request.report, &report)),
        None => 0,
    }
}

/// Runs the `__inspect-load` child and ends what it started; the report to write, or `None`
/// when the child wrote its own.
fn load_in_child(request: &InspectRequest, request_json: &str) -> Option<InspectReport> {
    let failed = |reason: String| InspectReport::Failed {
        protocol: PROTOCOL_VERSION,
        reason,
    };
    if let Err(e) = platform::adopt_orphans() {
        return Some(failed(format!(
            "cannot keep hold of the processes loading it may start: {e}"
        )));
    }
    let ended = load_supervised(request, request_json);
    platform::kill_adopted();
    let end = match ended {
        Ok(end) => end,
        Err(e) => return Some(failed(format!("cannot run the loading process: {e}"))),
    };
    match read_report::<InspectReport>(&request.report) {
        Ok(Some(_)) => return None,
        Ok(None) => {}
        Err(e) => {
            return Some(failed(format!(
                "cannot read the loading process's report: {e}"
            )))
        }
    }
    let rejected = |reason: Reason| InspectReport::Rejected {
        protocol: PROTOCOL_VERSION,
        reason,
    };
    Some(match (end.stopped, end.exit) {
        (Some(_), _) => InspectReport::Hung {
            protocol: PROTOCOL_VERSION,
        },
        (None, Some(ExitKind::Signaled(signal))) => {
            rejected(Reason::crashed(&platform::crash_name(signal)))
        }
        (None, Some(ExitKind::Exited(EXIT_NO_REPORT))) => {
            failed("the loading process could not write its report".to_owned())
        }
        (None, Some(ExitKind::Exited(code))) => rejected(Reason::exited(code)),
        // Not for the loading process, which is executed, so its exit status is read.
        (None, None) => failed("the loading process ended without a report".to_owned()),
    })
}

/// Starts the `__inspect-load` child and waits for it, stopping it at the request's timeout.
fn load_supervised(
    request: &InspectRequest,
    request_json: &str,
) -> std::io::Result<platform::ProcessEnd> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg(protocol::LOAD_SUBCOMMAND)
        .arg(request_json)
        .env("RUST_BACKTRACE", "0");
    let options = SuperviseOptions {
        timeout: Duration::from_millis(request.timeout_ms),
        // Code that hangs while loading has nothing to clean up.
        kill_grace: Duration::ZERO,
    };
    platform::supervise_quietly(command, options)
}

/// The `__inspect-load` subcommand, run by the inspector: loads the library, lists its
/// classes and writes the report. It stays in the inspector's process group and keeps the
/// default SIGTERM, so stopping it stops it.
pub fn load_main(request_json: &str) -> i32 {
    let request: InspectRequest = match serde_json::from_str(request_json) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("jobhost child: unreadable request: {e}");
            return EXIT_NO_REPORT;
        }
    };
    finish(write_report(&request.report, &inspect(&request)))
}

fn finish(written: std::io::Result<()>) -> i32 {
    match written {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("jobhost child: cannot write report: {e}");
            EXIT_NO_REPORT
        }
    }
}

fn error(kind: FailureKind, message: impl Into<String>) -> WorkerReport {
    WorkerReport::Error {
        protocol: PROTOCOL_VERSION,
        kind,
        message: message.into(),
    }
}

/// Whether the worker may run the job of `request`: it speaks the request's protocol and the
/// allowlist approves the job; the report to write instead when not. Nothing of the plugin
/// is loaded unless it may ([`run_approved`]).
fn approve(request: &WorkerRequest) -> Result<(), WorkerReport> {
    if request.protocol != PROTOCOL_VERSION {
        return Err(error(
            FailureKind::BadRequest,
            format!(
                "worker protocol {} requested, this worker speaks {PROTOCOL_VERSION}",
                request.protocol
            ),
        ));
    }
    let named = request
        .allowlist_file
        .as_deref()
        .unwrap_or(&request.allowlist);
    let allowlist = match Allowlist::load_as(&request.allowlist, named) {
        Ok(a) => a,
        Err(e) => return Err(error(FailureKind::Unauthorized, format!("refused: {e}"))),
    };
    if allowlist.check(&request.class, &request.method) != Verdict::Approved {
        return Err(error(
            FailureKind::Unauthorized,
            format!(
                "refused: {}@{} is not approved by {}",
                request.class,
                request.method,
                allowlist.path().display()
            ),
        ));
    }
    Ok(())
}

/// Runs the approved attempt of `request`: loads its plugin and invokes the method.
fn run_approved(request: &WorkerRequest) -> WorkerReport {
    let plugin = match loader::load(&request.plugin) {
        Ok(p) => p,
        Err(reason) => {
            return error(
                FailureKind::LoadFailed,
                format!("cannot load plugin {}: {reason}", request.plugin.display()),
            )
        }
    };
    let params = request.params.to_string();
    let call = Invocation {
        class: RStr::from_str(&request.class),
        method: RStr::from_str(&request.method),
        params_json: RStr::from_str(&params),
        job_id: RStr::from_str(&request.job_id),
        attempt: request.attempt,
        host: host_api(),
    };
    match (plugin.invoke())(&call) {
        RResult::ROk(json) => result_report(json.as_str()),
        RResult::RErr(e) => {
            let kind = match e.kind {
                ErrorKind::Failed => FailureKind::Failed,
                ErrorKind::Permanent => FailureKind::Permanent,
                ErrorKind::InvalidParams => FailureKind::InvalidParams,
                ErrorKind::UnknownClass | ErrorKind::UnknownMethod => FailureKind::LoadFailed,
                ErrorKind::Panicked => FailureKind::Panicked,
                ErrorKind::Cancelled => FailureKind::Cancelled,
            };
            error(kind, e.message.into_string())
        }
    }
}

/// The report of a method that returned `json`. A result too big, or nested too deep, for the report that
/// wraps it, or for the store and `jobhost show --json` after it, to be read back is a
/// permanent error: the job ran, and running it again would return the same.
fn result_report(json: &str) -> WorkerReport {
    if json.len() > MAX_RESULT_BYTES {
        return error(
            FailureKind::Permanent,
            format!(
                "the job's result is {} bytes of JSON, over the limit of {MAX_RESULT_BYTES} \
                 bytes; return less (write big results to a file and return its path)",
                json.len()
            ),
        );
    }
    if json_text_depth(json, MAX_RESULT_DEPTH) > MAX_RESULT_DEPTH {
        return error(
            FailureKind::Permanent,
            format!(
                "the job's result nests more than {MAX_RESULT_DEPTH} levels deep, too deep to \
                 record; return it flatter"
            ),
        );
    }
    match serde_json::from_str(json) {
        Ok(result) => WorkerReport::Ok {
            protocol: PROTOCOL_VERSION,
            result,
        },
        Err(e) => error(FailureKind::Permanent, format!("result is not JSON: {e}")),
    }
}

/// The params every method of `plugin` declares: `{class: {method: [param…] or null}}`, asked
/// with [`job_sdk::PARAMS_QUERY`] (which runs no plugin code). Empty when the plugin was built
/// before plugins could declare them (it offers no such class).
fn declared_params(plugin: &job_sdk::ffi::PluginModRef) -> DeclaredParams {
    let call = Invocation {
        class: RStr::from_str(job_sdk::PARAMS_QUERY),
        method: RStr::from_str(""),
        params_json: RStr::from_str("null"),
        job_id: RStr::from_str(""),
        attempt: 0,
        host: host_api(),
    };
    match (plugin.invoke())(&call) {
        RResult::ROk(json) => serde_json::from_str(json.as_str()).unwrap_or_default(),
        RResult::RErr(_) => DeclaredParams::new(),
    }
}

/// What [`job_sdk::PARAMS_QUERY`] answers.
type DeclaredParams = std::collections::BTreeMap<
    String,
    std::collections::BTreeMap<String, Option<Vec<job_sdk::Param>>>,
>;

/// The host services a job sees: its log lines go to the captured output, and its
/// cancellation flag is the one SIGTERM sets.
fn host_api() -> HostApiRef {
    extern "C" fn log(line: RStr<'_>) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }
    extern "C" fn is_cancelled() -> bool {
        STOP.get().is_some_and(|flag| flag.load(Ordering::SeqCst))
    }
    const API: &WithMetadata<HostApi> = &WithMetadata::new(HostApi { log, is_cancelled });
    HostApiRef(API.static_as_prefix())
}

/// Lists the classes of one plugin file.
pub fn inspect(request: &InspectRequest) -> InspectReport {
    let rejected = |reason: Reason| InspectReport::Rejected {
        protocol: PROTOCOL_VERSION,
        reason,
    };
    if request.protocol != PROTOCOL_VERSION {
        return rejected(Reason::inspector_protocol(
            request.protocol,
            PROTOCOL_VERSION,
        ));
    }
    let plugin = match loader::load(&request.plugin) {
        Ok(p) => p,
        Err(reason) => return rejected(reason),
    };
    match (plugin.classes())() {
        RResult::ROk(classes) => {
            let declared = declared_params(&plugin);
            let params =
                |class: &str, method: &str| declared.get(class)?.get(method).cloned().flatten();
            InspectReport::Plugin {
                protocol: PROTOCOL_VERSION,
                sdk_version: plugin.sdk_version().to_string(),
                fork_safe: plugin.fork_safe(),
                classes: classes
                    .into_iter()
                    .map(|c| ClassEntry {
                        methods: c
                            .methods
                            .into_iter()
                            .map(|m| MethodEntry {
                                params: params(&c.name, &m.name),
                                name: m.name.into_string(),
                                doc: m.doc.into_string(),
                            })
                            .collect(),
                        name: c.name.into_string(),
                        doc: c.doc.into_string(),
                    })
                    .collect(),
            }
        }
        RResult::RErr(e) => rejected(Reason::cannot_list_classes(e.message)),
    }
}
