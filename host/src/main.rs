//! The `jobhost` binary: parses the command line, resolves settings, runs the command, and
//! maps every error to one message and a documented exit code (see `jobhost --help`).
//!
//! The hidden `__worker` and `__inspect` subcommands are how the host re-executes itself as
//! a worker or an inspector; they are dispatched before anything else is set up, since they
//! must start fast and must not open the logs.

mod cli;

use std::{process::ExitCode, time::SystemTime};

use anyhow::Context as _;
use clap::Parser;

use cli::{Cli, Commands, RunArgs};
use jobhost::{
    allowlist::{Allowlist, AllowlistError},
    attempt::WORKER_SUBCOMMAND,
    authorize::{authorize, Refused},
    child,
    inventory::{FileStatus, Inventory, INSPECT_SUBCOMMAND},
    job::{parse_cli_params, JobSpec, ParamsError},
    joblog::SpecFormatLayer,
    platform::CancelToken,
    runner::{run_to_end, JobEnd},
    settings::{Settings, SettingsError},
};

const EXIT_FAILURE: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;
const EXIT_REFUSED: u8 = 3;
const EXIT_JOB_FAILED: u8 = 4;
const EXIT_JOB_CANCELLED: u8 = 5;

fn main() -> ExitCode {
    let mut args = std::env::args();
    let first = args.nth(1);
    if let (Some(sub), Some(request)) = (first.as_deref(), args.next()) {
        let code = match sub {
            WORKER_SUBCOMMAND => Some(child::worker_main(&request)),
            INSPECT_SUBCOMMAND => Some(child::inspect_main(&request)),
            _ => None,
        };
        if let Some(code) = code {
            // Exit at once: a job's threads must not keep the worker alive.
            std::process::exit(code);
        }
    }

    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("jobhost: {error:#}");
            ExitCode::from(exit_code_for(&error))
        }
    }
}

/// Bad input is exit 2, refusal exit 3, anything else exit 1.
fn exit_code_for(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.is::<ParamsError>() || cause.is::<SettingsError>() || cause.is::<AllowlistError>()
        {
            return EXIT_BAD_INPUT;
        }
        if cause.is::<Refused>() {
            return EXIT_REFUSED;
        }
    }
    EXIT_FAILURE
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let settings = Settings::resolve(&cli.global.overrides())?;
    SpecFormatLayer::open(&settings.log_dir, &settings.env)?.install();
    match cli.command {
        Commands::Run(args) => run_job(&settings, args),
        Commands::Plugins { json } => list_plugins(&settings, json),
    }
}

fn run_job(settings: &Settings, args: RunArgs) -> anyhow::Result<u8> {
    let spec = JobSpec {
        params: parse_cli_params(&args.params, args.params_json.as_deref())?,
        class: args.class,
        method: args.method,
        retries: args.retries.unwrap_or(settings.defaults.retries),
        retry_delay: args.retry_delay.unwrap_or(settings.defaults.retry_delay),
        priority: args.priority,
        delay: args.delay,
        timeout: args.timeout.unwrap_or(settings.defaults.timeout),
    };
    spec.validate(settings.limits.max_params_bytes)?;
    let allowlist = Allowlist::load(&settings.allowlist)?;
    let inventory = Inventory::scan(settings)?;
    let plugin = authorize(&allowlist, &inventory, &spec)?;
    if !args.wait {
        anyhow::bail!(ParamsError::Name {
            what: "mode",
            name: "background (without --wait)".into(),
        });
    }
    let cancel = CancelToken::new().context("cannot set up cancellation")?;
    cancel
        .cancel_on_signals()
        .context("cannot install signal handlers")?;
    let job_id = new_job_id();
    let (end, attempts) = run_to_end(settings, &spec, &job_id, &plugin.path, &cancel)?;
    let tries = attempts.len();
    match end {
        JobEnd::Completed(result) => {
            eprintln!("job {job_id} completed on attempt {tries}");
            println!("{result}");
            Ok(0)
        }
        JobEnd::Failed(error) => {
            eprintln!("job {job_id} failed after {tries} attempt(s): {error}");
            Ok(EXIT_JOB_FAILED)
        }
        JobEnd::Cancelled => {
            eprintln!("job {job_id} cancelled after {tries} attempt(s)");
            Ok(EXIT_JOB_CANCELLED)
        }
    }
}

/// A job id for a job run in the foreground: time-ordered and unique per process.
fn new_job_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("fg-{nanos:x}-{}", std::process::id())
}

fn list_plugins(settings: &Settings, json: bool) -> anyhow::Result<u8> {
    let inventory = Inventory::scan(settings)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&inventory)?);
        return Ok(0);
    }
    println!("plugin directory: {}", inventory.dir.display());
    if inventory.files.is_empty() {
        println!("  (no plugin files)");
    }
    for file in &inventory.files {
        let name = file.path.file_name().map_or_else(
            || file.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        match &file.status {
            FileStatus::Plugin {
                sdk_version,
                classes,
            } => {
                println!(
                    "\n{name}  (job-sdk {sdk_version}, blake3 {})",
                    &file.hash[..16]
                );
                for class in classes {
                    println!("  {}{}", class.name, doc_suffix(&class.doc));
                    for method in &class.methods {
                        println!("    @{}{}", method.name, doc_suffix(&method.doc));
                    }
                }
            }
            FileStatus::Rejected { reason } => println!("\n{name}  REJECTED: {reason}"),
        }
    }
    Ok(0)
}

fn doc_suffix(doc: &str) -> String {
    if doc.is_empty() {
        String::new()
    } else {
        format!("  — {doc}")
    }
}
