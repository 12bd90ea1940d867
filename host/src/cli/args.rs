//! The command line, as parsed: `jobhost [GLOBAL OPTIONS] COMMAND ...`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use jobhost::{config::settings::Overrides, job::Priority, store::JobState};

/// Runs approved jobs from shared-library plugins, each in an isolated worker process.
#[derive(Debug, Parser)]
#[command(name = "jobhost", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Commands,
}

pub const EXIT_CODES: &str =
    "Exit codes (from run without --wait, cancel or retry, any but 0 and 6: nothing was changed):
  0    success (with --wait and wait: the job completed); also when the reader closed stdout
  1    jobhost itself failed (I/O, database, spawning, ...)
  2    bad input: arguments (also one that is not UTF-8), params, settings, allowlist file,
       unknown job id, wrong job state
  3    refused: not approved by the allowlist, or no plugin offers it
  4    the job failed (with --wait and wait)
  5    the job was cancelled (with --wait and wait)
  6    the database connection broke while the change committed: it may or may not have been
       stored; the message names the command that tells (list --class CLASS, show ID)
  130  --wait or wait was interrupted; the job goes on in the background";

/// Options every command takes; each overrides its environment variable and `jobhost.toml`.
#[derive(Debug, Args)]
pub struct Global {
    /// Settings file [env: JOBHOST_CONFIG] [default: ./jobhost.toml if present]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of plugin libraries [env: JOBHOST_PLUGIN_DIR] [default: plugins]
    #[arg(long, global = true, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Allowlist file [env: JOBHOST_ALLOWLIST] [default: allowlist.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub allowlist: Option<PathBuf>,
    /// State directory [env: JOBHOST_STATE_DIR] [default: storage/jobhost]
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log directory [env: JOBHOST_LOG_DIR] [default: storage/logs]
    #[arg(long, global = true, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Environment name, the log channel: local, production, ... [env: JOBHOST_ENV] [default: local]
    #[arg(long, global = true, value_name = "NAME")]
    pub env: Option<String>,
    /// Job database: a postgres:// URL [env: JOBHOST_STORE] [default: SQLite in the state directory]
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,
}

impl Global {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            plugin_dir: self.plugin_dir.clone(),
            allowlist: self.allowlist.clone(),
            state_dir: self.state_dir.clone(),
            log_dir: self.log_dir.clone(),
            env: self.env.clone(),
            store: self.store.clone(),
            slots: None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Run CLASS@METHOD with params, like the spec's `artisan background:run`.
    Run(RunArgs),
    /// List the plugin directory: each file's classes and methods, or why it was rejected.
    Plugins {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the dispatcher: claim due jobs and run them in worker processes.
    Serve(ServeArgs),
    /// Cancel a job: a waiting one never starts, a running one is stopped.
    Cancel {
        /// The job id.
        #[arg(value_parser = jobhost::store::parse_job_id)]
        id: i64,
    },
    /// Follow a job enqueued earlier to its end; exits like `run --wait`.
    Wait {
        /// The job id.
        #[arg(value_parser = jobhost::store::parse_job_id)]
        id: i64,
    },
    /// Run a failed or cancelled job again.
    Retry {
        /// The job id.
        #[arg(value_parser = jobhost::store::parse_job_id)]
        id: i64,
    },
    /// List jobs, newest first.
    List(ListArgs),
    /// Show a job: params, result, and every attempt with its outcome and output.
    Show {
        /// The job id.
        #[arg(value_parser = jobhost::store::parse_job_id)]
        id: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Count jobs by state.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the dispatcher of this state directory to stop (running attempts may finish first).
    Stop,
    /// Delete finished jobs older than their retention period, with their attempts and output
    /// files (the dispatcher does it every retention.interval)
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Jobs that finished more than this many seconds ago [default: each state's period, retention.completed, .failed, .cancelled]
    #[arg(long, value_name = "SECS", value_parser = secs, allow_negative_numbers = true)]
    pub older_than: Option<std::time::Duration>,
    /// Only jobs in this state: completed, failed or cancelled [default: all three]
    #[arg(long, value_name = "STATE", value_parser = finished_state)]
    pub state: Option<JobState>,
    /// Change nothing; say what would be removed
    #[arg(long)]
    pub dry_run: bool,
}

impl Commands {
    /// Whether the command only reads the queue: it opens no logs and creates no state
    /// directory or database.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Commands::List(_) | Commands::Show { .. } | Commands::Stats { .. }
        )
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Attempts run at once, 1 to 256 [env: JOBHOST_SLOTS] [default: dispatcher.slots, or the CPU count]
    #[arg(long, value_name = "N")]
    pub slots: Option<u32>,
    /// Exit after this many seconds with nothing queued, scheduled or running (at most 365 days)
    #[arg(long, value_name = "SECS", value_parser = idle_exit)]
    pub idle_exit: Option<std::time::Duration>,
    /// Detach from the terminal first (how `jobhost run` starts a dispatcher on demand); exit
    /// quietly if another dispatcher already serves the state directory, and hand it over
    /// (stopping gracefully) to a `jobhost serve` without --detached that asks
    #[arg(long)]
    pub detached: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this state: queued, scheduled, running, completed, failed, cancelled
    #[arg(long, value_name = "STATE")]
    pub status: Option<String>,
    /// Only jobs of this class
    #[arg(long, value_name = "CLASS")]
    pub class: Option<String>,
    /// Only jobs of this priority
    #[arg(long, value_parser = priority)]
    pub priority: Option<Priority>,
    /// At most this many
    #[arg(long, default_value = "50")]
    pub limit: u32,
    /// Skip this many
    #[arg(long, default_value = "0")]
    pub offset: u32,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Fully qualified class name; quote it, the shell eats backslashes: 'App\Jobs\SendWelcomeEmail'
    pub class: String,
    /// Method name, e.g. handle
    pub method: String,
    /// Params: key=value (named) or bare values (positional); a value is JSON when it parses as a JSON scalar
    #[arg(value_name = "PARAM")]
    pub params: Vec<String>,
    /// Params as one JSON object or array, instead of PARAM arguments
    #[arg(long, value_name = "JSON")]
    pub params_json: Option<String>,
    /// Retries after the first failed attempt [default: 3, or the settings' defaults.retries]
    #[arg(long, value_name = "N", value_parser = retries, allow_negative_numbers = true)]
    pub retries: Option<u32>,
    /// Seconds between attempts [default: 5, or defaults.retry_delay]
    #[arg(long, value_name = "SECS", value_parser = secs, allow_negative_numbers = true)]
    pub retry_delay: Option<std::time::Duration>,
    /// Priority: high, normal or low
    #[arg(long, default_value = "normal", value_parser = priority)]
    pub priority: Priority,
    /// Seconds to wait before the first attempt
    #[arg(long, value_name = "SECS", value_parser = secs, default_value = "0", allow_negative_numbers = true)]
    pub delay: std::time::Duration,
    /// Seconds one attempt may run before it is stopped [default: 3600, or defaults.timeout]
    #[arg(long, value_name = "SECS", value_parser = secs, allow_negative_numbers = true)]
    pub timeout: Option<std::time::Duration>,
    /// Follow the job to its end and exit with a code that says how it ended
    #[arg(long)]
    pub wait: bool,
}

fn secs(text: &str) -> Result<std::time::Duration, String> {
    jobhost::config::settings::parse_secs(text)
        .ok_or_else(|| format!("{text:?} is not a non-negative number of seconds"))
}

fn retries(text: &str) -> Result<u32, String> {
    let n: i128 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number"))?;
    jobhost::job::retries_from("retries", n).map_err(|e| e.to_string())
}

fn idle_exit(text: &str) -> Result<std::time::Duration, String> {
    let max = jobhost::config::settings::MAX_IDLE_EXIT;
    jobhost::job::check_duration("--idle-exit", secs(text)?, std::time::Duration::ZERO, max)
        .map_err(|e| e.to_string())
}

fn finished_state(text: &str) -> Result<JobState, String> {
    JobState::parse(text)
        .filter(|state| state.is_terminal())
        .ok_or_else(|| {
            format!("only finished jobs are pruned: completed, failed or cancelled, not {text:?}")
        })
}

fn priority(text: &str) -> Result<Priority, String> {
    text.parse()
        .map_err(|e: jobhost::job::ParamsError| e.to_string())
}
