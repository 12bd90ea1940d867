//! The `jobhost` command line, which the binary runs ([`main`]): parses the command line,
//! resolves settings, runs the command, and maps every error to one message and a documented
//! exit code (see `jobhost --help`). `args` is the command line as clap parses it; `queries`
//! the read-only commands (`list`, `show`, `stats`); `output` how every command prints
//! (stdout that may close, notes on stderr). The commands that change things go through the
//! library's API, as an application's would.
//!
//! The hidden `__worker` and `__inspect` subcommands are how the host re-executes itself as
//! a worker or an inspector; they are dispatched before anything else is set up, since they
//! must start fast and must not open the logs.
//!
//! Commands print through `output::Stdout` and `output::note!`, never `println!`, so that a
//! closed stdout ends them quietly (see `output`).
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod args;
mod output;
mod queries;

use std::{
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::Context as _;
use clap::Parser;

use crate::{
    catalog::gate::Refused,
    catalog::inventory::{FileStatus, Inventory, InventoryError, Listing},
    config::allowlist::{AllowlistError, Verdict},
    config::settings::{Settings, SettingsError},
    job::{parse_cli_params, ParamsError},
    joblog::SpecFormatLayer,
    platform,
    queue::dispatcher::{self, DispatcherError, ServeOptions},
    queue::retention::{prune_by_hand, PruneRequest},
    runner::child,
    shared::text::{local_time, visible, Escape},
    store::{CancelOutcome, JobState, StoreError},
    Client, DispatchError, Job,
};
use args::{Cli, Commands, RunArgs};
use output::{note, Stdout, StdoutError};

const EXIT_FAILURE: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;
const EXIT_REFUSED: u8 = 3;
const EXIT_JOB_FAILED: u8 = 4;
const EXIT_JOB_CANCELLED: u8 = 5;
const EXIT_OUTCOME_UNKNOWN: u8 = 6;
const EXIT_INTERRUPTED: u8 = 130;

/// The `jobhost` binary, whole: its `main` calls this and nothing else.
pub fn main() -> ExitCode {
    child::exit_if_child();

    let args = match output::check_arguments(std::env::args_os()) {
        Ok(args) => args,
        Err(error) => {
            note!("jobhost: {error}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let cli = Cli::parse_from(args);
    let mut out = Stdout::new();
    match run(cli, &mut out).and_then(|code| Ok(out.flush().map(|()| code)?)) {
        Ok(code) => ExitCode::from(code),
        Err(error) if stdout_closed(&error) => ExitCode::SUCCESS,
        Err(error) => {
            note!("jobhost: {error:#}");
            ExitCode::from(exit_code_for(&error))
        }
    }
}

/// Whether `error` is stdout's reader having gone away, which ends a command quietly.
fn stdout_closed(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<StdoutError>()
            .is_some_and(StdoutError::is_closed)
    })
}

/// Bad input is exit 2, refusal exit 3, a change whose outcome is unknown exit 6, anything
/// else exit 1.
fn exit_code_for(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.is::<OutcomeUnknown>() {
            return EXIT_OUTCOME_UNKNOWN;
        }
        match cause.downcast_ref::<DispatchError>() {
            Some(
                DispatchError::BadInput(_)
                | DispatchError::Settings(_)
                | DispatchError::Allowlist(_)
                | DispatchError::Store(StoreError::NotFound(_) | StoreError::WrongState { .. }),
            ) => return EXIT_BAD_INPUT,
            Some(DispatchError::Inventory(e)) if e.is_missing_dir() => return EXIT_BAD_INPUT,
            Some(DispatchError::Refused(_)) => return EXIT_REFUSED,
            _ => {}
        }
        let bad_input = cause.is::<ParamsError>()
            || cause.is::<SettingsError>()
            || cause
                .downcast_ref::<InventoryError>()
                .is_some_and(InventoryError::is_missing_dir)
            || cause.is::<AllowlistError>()
            || matches!(
                cause.downcast_ref::<StoreError>(),
                Some(StoreError::NotFound(_) | StoreError::WrongState { .. })
            );
        if bad_input {
            return EXIT_BAD_INPUT;
        }
        if cause.is::<Refused>() {
            return EXIT_REFUSED;
        }
    }
    EXIT_FAILURE
}

/// A change that may or may not have been stored (the database connection broke while it
/// committed), with the command that tells which.
#[derive(Debug, thiserror::Error)]
#[error("{error}; check with `{check}` before trying again")]
struct OutcomeUnknown {
    error: DispatchError,
    check: String,
}

/// `error` as the CLI reports it: when the change may have been stored after all, with the
/// command `check` that tells.
fn reported(error: DispatchError, check: impl FnOnce() -> String) -> anyhow::Error {
    if error.outcome_unknown() {
        OutcomeUnknown {
            error,
            check: check(),
        }
        .into()
    } else {
        error.into()
    }
}

/// A client whose warnings (a change stored, but the dispatcher could not be told) go to
/// stderr.
fn cli_client(settings: Settings) -> anyhow::Result<Client> {
    let mut client = Client::new(settings)?;
    client.on_warning(|warning| note!("jobhost: warning: {}", crate::shared::text::chain(warning)));
    Ok(client)
}

fn run(cli: Cli, out: &mut Stdout) -> anyhow::Result<u8> {
    let mut overrides = cli.global.overrides();
    if let Commands::Serve(args) = &cli.command {
        if args.detached {
            // Before anything else: no terminal, no session of the caller's (the spec's nohup).
            platform::detach_self().context("cannot detach")?;
        }
        overrides.slots = args.slots.map(|n| n as usize);
    }
    let settings = Settings::resolve(&overrides)?;
    if !cli.command.is_read_only() {
        SpecFormatLayer::open(&settings.log_dir, &settings.env)?.install();
    }
    match cli.command {
        Commands::Run(args) => run_job(settings, args, out),
        Commands::Plugins { json } => list_plugins(&settings, json, out),
        Commands::Serve(args) => serve(&settings, &args),
        Commands::Cancel { id } => cancel(settings, id),
        Commands::Wait { id } => follow(&mut cli_client(settings)?, id, out),
        Commands::Retry { id } => {
            cli_client(settings)?
                .retry(id)
                .map_err(|e| reported(e, || format!("jobhost show {id}")))?;
            note!("job {id} queued again");
            Ok(0)
        }
        Commands::List(args) => queries::list(&settings, &args, out),
        Commands::Show { id, json } => queries::show(&settings, id, json, out),
        Commands::Stats { json } => queries::stats(&settings, json, out),
        Commands::Prune(args) => prune(&settings, args, out),
        Commands::Stop => {
            if Client::new(settings)?.stop_dispatcher()? {
                note!("asked the dispatcher to stop");
            } else {
                note!("no dispatcher is running");
            }
            Ok(0)
        }
    }
}

fn run_job(settings: Settings, args: RunArgs, out: &mut Stdout) -> anyhow::Result<u8> {
    let class = args.class.clone();
    let mut job = Job::new(args.class, args.method)
        .params(parse_cli_params(&args.params, args.params_json.as_deref())?)
        .priority(args.priority)
        .delay(args.delay);
    if let Some(retries) = args.retries {
        job = job.retries(retries);
    }
    if let Some(delay) = args.retry_delay {
        job = job.retry_delay(delay);
    }
    if let Some(timeout) = args.timeout {
        job = job.timeout(timeout);
    }
    let mut client = cli_client(settings)?;
    let id = client
        .dispatch(job)
        .map_err(|e| reported(e, || format!("jobhost list --class '{class}'")))?;
    if !args.wait {
        writeln!(out, "{id}")?;
        return Ok(0);
    }
    note!("job {id} queued");
    // The job stands whatever happens to its follower.
    follow(&mut client, id, out).with_context(|| {
        format!(
            "job {id} is queued, but following it failed (`jobhost wait {id}` follows it again)"
        )
    })
}

/// Follows job `id` to its end (`run --wait`, `wait`): exit 0 when it completed, 4 when it
/// failed, 5 when it was cancelled, 130 when interrupted (the job goes on).
fn follow(client: &mut Client, id: i64, out: &mut Stdout) -> anyhow::Result<u8> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    platform::on_termination(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install signal handlers")?;
    let Some(job) = client.follow(id, &|| interrupted.load(Ordering::SeqCst))? else {
        note!("stopped following job {id}; it goes on in the background (jobhost cancel {id} stops it)");
        return Ok(EXIT_INTERRUPTED);
    };
    let tries = job.attempts;
    match job.state {
        JobState::Completed => {
            note!("job {id} completed on attempt {tries}");
            let result = job.result.unwrap_or_default().to_string();
            writeln!(out, "{}", visible(&result, Escape::Json))?;
            Ok(0)
        }
        JobState::Cancelled => {
            note!("job {id} cancelled after {tries} attempt(s)");
            Ok(EXIT_JOB_CANCELLED)
        }
        _ => {
            let error = job.last_error.unwrap_or_default();
            let error = visible(&error, Escape::Text);
            note!("job {id} failed after {tries} attempt(s): {error}");
            Ok(EXIT_JOB_FAILED)
        }
    }
}

fn serve(settings: &Settings, args: &args::ServeArgs) -> anyhow::Result<u8> {
    let mut options = ServeOptions {
        idle_exit: args.idle_exit,
        on_demand: args.detached,
        ..ServeOptions::default()
    };
    crate::web::attach(settings, &mut options);
    if !args.detached {
        dispatcher::serve(settings, options)?;
        return Ok(0);
    }
    // Started by an enqueuer that found nobody answering. Another dispatcher may hold the
    // state directory while it is on its way out (its idle exit); wait for it a little rather
    // than leave the new job without a dispatcher.
    let paths = crate::queue::StatePaths::new(&settings.state_dir);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match dispatcher::serve(settings, options.clone()) {
            Err(DispatcherError::AlreadyRunning { .. }) => {
                let answered = platform::ring(&paths.doorbell, crate::queue::doorbell::RING_WAKE)
                    .unwrap_or(false);
                if answered || std::time::Instant::now() >= deadline {
                    return Ok(0);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => {
                other?;
                return Ok(0);
            }
        }
    }
}

fn prune(settings: &Settings, args: args::PruneArgs, out: &mut Stdout) -> anyhow::Result<u8> {
    let request = PruneRequest {
        older_than: args.older_than,
        state: args.state,
        dry_run: args.dry_run,
    };
    if let (None, Some(state)) = (request.older_than, request.state) {
        if settings.retention.period(state).is_none() {
            note!("{state} jobs are kept forever (retention.{state} = 0); --older-than prunes them anyway");
        }
    }
    let removed = prune_by_hand(settings, &request)?;
    let done = if request.dry_run {
        "would prune"
    } else {
        "pruned"
    };
    writeln!(
        out,
        "{done} {} finished jobs ({} attempts, {} bytes of attempt files)",
        removed.jobs, removed.attempts, removed.bytes
    )?;
    Ok(0)
}

fn cancel(settings: Settings, id: i64) -> anyhow::Result<u8> {
    let outcome = cli_client(settings)?
        .cancel(id)
        .map_err(|e| reported(e, || format!("jobhost show {id}")))?;
    match outcome {
        CancelOutcome::Cancelled => note!("job {id} cancelled; it will not run"),
        CancelOutcome::Requested => note!("job {id} is running; its dispatcher is stopping it"),
        CancelOutcome::AlreadyFinished(state) => {
            anyhow::bail!(StoreError::WrongState {
                id,
                state,
                what: "it already finished; nothing to cancel",
            })
        }
    }
    Ok(0)
}
fn list_plugins(settings: &Settings, json: bool, out: &mut Stdout) -> anyhow::Result<u8> {
    let inventory = Inventory::refresh(settings)?;
    if json {
        let listing = Listing::from(&inventory);
        writeln!(out, "{}", serde_json::to_string_pretty(&listing)?)?;
        return Ok(0);
    }
    let since = |millis| local_time(millis).unwrap_or_default();
    // File names, reasons and docs come from the plugin directory and the plugins: hidden and
    // right-to-left characters in them are shown as escapes, never acted on by the terminal.
    let shown = |text: &str| {
        crate::shared::text::visible(text, crate::shared::text::Escape::Text).into_owned()
    };
    writeln!(out, "plugin directory: {}", inventory.dir.display())?;
    // Mark what the allowlist does not approve: offered, but refused if asked for.
    let allowlist = inventory.allowlist(settings);
    match (&allowlist, &inventory.allowlist) {
        // The error names the allowlist file itself.
        (Err(e), _) => writeln!(out, "{e:#}")?,
        (Ok(list), Some(state)) => {
            writeln!(
                out,
                "allowlist: {} (blake3 {}, in force since {})",
                list.path().display(),
                short(&state.hash),
                since(state.since)
            )?;
            if let Some(error) = &state.error {
                writeln!(
                    out,
                    "  REJECTED CHANGE, the version above stays in force: {error}"
                )?;
            }
        }
        (Ok(list), None) => writeln!(out, "allowlist: {}", list.path().display())?,
    }
    let unapproved = |class: &str, method: &str| {
        allowlist
            .as_ref()
            .is_ok_and(|list| list.check(class, method) != Verdict::Approved)
    };

    let classes = inventory.classes();
    writeln!(out, "\nclasses serving new jobs:")?;
    if classes.is_empty() {
        writeln!(out, "  (none)")?;
    }
    for class in &classes {
        let file = shown(&class.file.file_name().unwrap_or_default().to_string_lossy());
        writeln!(
            out,
            "  {}  {file}  blake3 {}  since {}",
            shown(class.class),
            short(class.hash),
            since(class.since)
        )?;
    }
    for (class, files) in inventory.conflicts() {
        let names: Vec<String> = files.iter().map(|f| shown(&f.file_name())).collect();
        writeln!(
            out,
            "  warning: {} is offered by {}; the first serves",
            shown(class),
            names.join(", ")
        )?;
    }

    if inventory.files.is_empty() {
        writeln!(out, "\n(no plugin files)")?;
    }
    for file in &inventory.files {
        let name = shown(&file.file_name());
        match &file.status {
            FileStatus::Plugin {
                sdk_version,
                fork_safe,
                ..
            } => {
                writeln!(
                    out,
                    "\n{name}  (job-sdk {sdk_version}{}, blake3 {})",
                    if *fork_safe { ", fork-safe" } else { "" },
                    short(&file.hash)
                )?;
            }
            FileStatus::Rejected { reason } => {
                writeln!(out, "\n{name}  REJECTED: {}", shown(reason.as_str()))?;
            }
        }
        let Some(version) = &file.active else {
            continue;
        };
        if version.hash != file.hash {
            writeln!(
                out,
                "  still serving its previous version, blake3 {} since {}:",
                short(&version.hash),
                since(version.since)
            )?;
        }
        for class in &version.classes {
            writeln!(
                out,
                "  {}{}",
                shown(&class.name),
                shown(&doc_suffix(&class.doc))
            )?;
            for method in &class.methods {
                let mark = if unapproved(&class.name, &method.name) {
                    "  [not in the allowlist]"
                } else {
                    ""
                };
                writeln!(
                    out,
                    "    @{}{}{mark}",
                    shown(&method.name),
                    shown(&doc_suffix(&method.doc))
                )?;
                if let Some(params) = &method.params {
                    writeln!(out, "      params: {}", params_summary(params))?;
                }
            }
        }
    }
    Ok(0)
}

/// A method's declared params for people: `user_id, email?, name?` (`?` marks an optional
/// one), `none` when it takes none.
fn params_summary(params: &[job_sdk::Param]) -> String {
    if params.is_empty() {
        return "none".into();
    }
    let names: Vec<String> = params
        .iter()
        .map(|p| format!("{}{}", p.name, if p.required { "" } else { "?" }))
        .collect();
    names.join(", ")
}

/// The first 16 hex digits of a hash, as shown to people.
fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

fn doc_suffix(doc: &str) -> String {
    if doc.is_empty() {
        String::new()
    } else {
        format!("  — {doc}")
    }
}
