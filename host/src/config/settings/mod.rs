//! Settings: where things live and the defaults every job gets.
//!
//! Parsing only parses ([`RawSettings`] mirrors `jobhost.toml`); [`Settings::resolve`] is the one
//! place that layers flags over environment over file over built-in defaults and turns relative
//! paths into absolute ones (relative to the current directory for flags and environment, to
//! the file's directory for `jobhost.toml`). It is also the one place settings are checked:
//! every value against its bound (defined with the job bounds in [`crate::job`], listed in
//! `docs/limits.md`), every path for being empty, so that every command refuses the same bad
//! settings the same way, naming where the value came from.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    job::{OutOfRange, ParamsLimits},
    store::{JobState, StoreLocation},
};

/// The name of the settings file looked for in the current directory.
pub const CONFIG_FILE: &str = "jobhost.toml";

/// The most slots a dispatcher may have: each is a thread and, while busy, a worker process.
pub const MAX_SLOTS: usize = 256;

/// The most `limits.max_output_bytes` may be: 1 GiB kept per attempt.
pub const MAX_OUTPUT_BYTES: u64 = 1024 * 1024 * 1024;

/// The most `limits.max_plugin_bytes` may be: 4 GiB.
pub const MAX_PLUGIN_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// The longest `limits.kill_grace` and `dispatcher.lease`: one hour.
pub const MAX_GRACE: Duration = Duration::from_secs(3600);

/// The shortest `limits.inspect_timeout`: one millisecond.
pub const MIN_INSPECT_TIMEOUT: Duration = Duration::from_millis(1);

/// The longest `limits.inspect_timeout`: ten minutes.
pub const MAX_INSPECT_TIMEOUT: Duration = Duration::from_secs(600);

/// The shortest `dispatcher.lease`: one second. A dispatcher heartbeats every fifth of it, and
/// a shorter lease would have busy dispatchers rescued from each other.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

/// The longest `dispatcher.idle_exit`: 365 days.
pub const MAX_IDLE_EXIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why settings could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The settings file could not be read.
    #[error("cannot read settings file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The settings file is not valid.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The 1-based line of the problem.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// An environment variable holds a value that does not fit.
    #[error("environment variable {name}={value:?}: {message}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// The environment name (`--env`, `JOBHOST_ENV` or `env` in the file) is not a name.
    #[error("{origin}: environment name {value:?} must be a name like `local` or `production` (letters, digits, `-`, `_`)")]
    EnvName {
        /// Where it was given.
        origin: String,
        /// The name given.
        value: String,
    },
    /// The current directory is unknown.
    #[error("cannot determine the current directory")]
    CurrentDir(#[source] std::io::Error),
    /// The store setting does not name a usable store.
    #[error("the store setting ({origin})")]
    Store {
        /// Where it was set: `--store`, `JOBHOST_STORE` or the settings file.
        origin: String,
        /// What is wrong.
        #[source]
        source: crate::store::StoreError,
    },
    /// A `[retention]` value is not a period jobhost can use.
    #[error("{path}: {key} {message}")]
    Retention {
        /// The settings file.
        path: PathBuf,
        /// The key, such as `retention.completed`.
        key: &'static str,
        /// What is wrong, with the allowed range.
        message: String,
    },
    /// A setting outside its allowed range, named as it was given: `--slots`, or a key of
    /// the settings file `file`.
    #[error("{}{range}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
    OutOfRange {
        /// The settings file, when the value came from it.
        file: Option<PathBuf>,
        /// The value and its range.
        range: OutOfRange,
    },
    /// A directory setting naming something that is not a directory (a file, a device).
    #[error("{origin} is {}, not a directory: name a directory (or leave it out for the default)", path.display())]
    NotADirectory {
        /// Where: `--state-dir`, `environment variable JOBHOST_STATE_DIR`, `FILE: state_dir`.
        origin: String,
        /// The path it names.
        path: PathBuf,
    },
    /// A setting asks for something this platform does not have.
    #[error("{origin}: {message}")]
    Unavailable {
        /// Where it was set.
        origin: String,
        /// What is missing, and what to use instead.
        message: String,
    },
    /// A path given as the empty string, which would silently mean the current directory.
    #[error("{origin} is empty: give a path, or leave it out for the default")]
    EmptyPath {
        /// Where: `--state-dir`, `environment variable JOBHOST_STATE_DIR`, `FILE: state_dir`.
        origin: String,
    },
}

mod file;
mod resolve;
#[cfg(test)]
mod tests;

use file::secs_from_f64;
pub use file::{IpRange, RawDefaults, RawDispatcher, RawLimits, RawRetention, RawSettings, RawWeb};

/// Settings given on the command line; they win over everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--config`
    pub config: Option<PathBuf>,
    /// `--plugin-dir`
    pub plugin_dir: Option<PathBuf>,
    /// `--allowlist`
    pub allowlist: Option<PathBuf>,
    /// `--state-dir`
    pub state_dir: Option<PathBuf>,
    /// `--log-dir`
    pub log_dir: Option<PathBuf>,
    /// `--env`
    pub env: Option<String>,
    /// `--store`
    pub store: Option<String>,
    /// `serve --slots`
    pub slots: Option<usize>,
}

/// Defaults applied to a job that does not set its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobDefaults {
    /// Retries after the first failure (default 3, as in the spec).
    pub retries: u32,
    /// Wait between attempts (default 5 s, as in the spec).
    pub retry_delay: Duration,
    /// How long one attempt may run (default 1 hour).
    pub timeout: Duration,
}

/// Named limits, each with a documented default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest params accepted, as compact JSON (default 64 KiB, at most
    /// 16 MiB).
    pub max_params_bytes: usize,
    /// Deepest params accepted, in arrays and objects nested in each other (default 32, at
    /// most 100).
    pub max_params_depth: usize,
    /// Output kept per attempt; the rest is counted and dropped (default 1 MiB).
    pub max_output_bytes: u64,
    /// Largest file in the plugin directory that is read (default 256 MiB, at most
    /// 4 GiB); a larger one is rejected unread.
    pub max_plugin_bytes: u64,
    /// Time between SIGTERM and SIGKILL when an attempt is stopped (default 5 s).
    pub kill_grace: Duration,
    /// How long loading a plugin file to inspect it may take before it is stopped and the
    /// file reported as hanging (default 5 s).
    pub inspect_timeout: Duration,
}

/// How the dispatcher runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DispatcherSettings {
    /// Attempts run at once (default: the number of CPUs, at most 256), all supervised by the
    /// dispatcher's loop thread on Linux.
    pub slots: usize,
    /// How long a dispatcher started by `jobhost run` stays with nothing to do before it exits
    /// (default 30 s).
    pub idle_exit: Duration,
    /// How long running attempts get to finish when the dispatcher is asked to stop, before
    /// they are stopped and queued again (default 30 s).
    pub shutdown_grace: Duration,
    /// How long a dispatcher may go without a heartbeat before the other dispatchers sharing
    /// its store rescue its running jobs (default 15 s). It heartbeats every fifth of it.
    pub lease: Duration,
    /// Whether an enqueuer (`jobhost run`, `wait`, the Rust API) that finds no dispatcher
    /// serving the state directory starts one, detached, on demand (default true). Off, the
    /// job waits for a dispatcher started otherwise (`jobhost serve` under a supervisor).
    pub autostart: bool,
    /// How workers are started (default [`Runner::Fork`] on Linux, [`Runner::Exec`]
    /// elsewhere).
    pub runner: Runner,
}

/// How the dispatcher starts the worker process of each attempt. Either way every attempt
/// runs in a fresh process of its own, with its own session and process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runner {
    /// Each worker is the `jobhost` program, executed anew (`jobhost __worker REQUEST`).
    Exec,
    /// Each worker is forked from a small single-threaded fork server that the dispatcher
    /// starts once (Linux only): no program to load and link per attempt. The fork server
    /// loads only plugins that declare themselves fork-safe (once each, so that their workers
    /// start with them loaded); each forked worker loads any other plugin itself.
    Fork,
}

impl Runner {
    /// The default: [`Runner::Fork`] where it is available (Linux), else [`Runner::Exec`].
    pub const DEFAULT: Self = if cfg!(target_os = "linux") {
        Self::Fork
    } else {
        Self::Exec
    };

    /// Its name in settings: `exec` or `fork`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Fork => "fork",
        }
    }

    /// The runner named `name` (`exec`, `fork`).
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim() {
            "exec" => Some(Self::Exec),
            "fork" => Some(Self::Fork),
            _ => None,
        }
    }
}

/// How long finished jobs, their attempts and their output files are kept before the
/// dispatcher deletes them (`crate::queue::retention`). `None` keeps them forever.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetentionSettings {
    /// Completed jobs (default 24 hours).
    pub completed: Option<Duration>,
    /// Failed jobs (default 7 days).
    pub failed: Option<Duration>,
    /// Cancelled jobs (default 24 hours).
    pub cancelled: Option<Duration>,
    /// How often the dispatcher prunes (default 30 s).
    pub interval: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        Self {
            completed: Some(DAY),
            failed: Some(DAY * 7),
            cancelled: Some(DAY),
            interval: Duration::from_secs(30),
        }
    }
}

impl RetentionSettings {
    /// How long jobs that ended in `state` are kept; `None` for forever, and for the states
    /// that are not an end.
    pub fn period(&self, state: JobState) -> Option<Duration> {
        match state {
            JobState::Completed => self.completed,
            JobState::Failed => self.failed,
            JobState::Cancelled => self.cancelled,
            JobState::Queued | JobState::Scheduled | JobState::Running => None,
        }
    }

    /// The `[retention]` table checked, with the built-in defaults for what it leaves out;
    /// a refusal names the key and what it allows (errors name `file`).
    fn resolve(raw: &RawRetention, file: &Path) -> Result<Self, SettingsError> {
        let builtin = Self::default();
        let refused = |key: &'static str, message: String| SettingsError::Retention {
            path: file.to_path_buf(),
            key,
            message,
        };
        let period = |key: &'static str, state: &str, value: &Option<toml::Value>, default| {
            let Some(value) = value else {
                return Ok(default);
            };
            match retention_secs(value) {
                Some(d) if d.is_zero() => Ok(None),
                Some(d) => Ok(Some(d)),
                None => Err(refused(
                    key,
                    format!(
                        "must be a number of seconds from 0 to {MAX_SECS} (0 keeps {state} jobs \
                         forever), not {value}"
                    ),
                )),
            }
        };
        let interval = match &raw.interval {
            None => builtin.interval,
            Some(value) => retention_secs(value).filter(|d| !d.is_zero()).ok_or_else(|| {
                refused(
                    "retention.interval",
                    format!(
                        "must be a number of seconds more than 0 and at most {MAX_SECS}, not {value}"
                    ),
                )
            })?,
        };
        Ok(Self {
            completed: period(
                "retention.completed",
                "completed",
                &raw.completed,
                builtin.completed,
            )?,
            failed: period("retention.failed", "failed", &raw.failed, builtin.failed)?,
            cancelled: period(
                "retention.cancelled",
                "cancelled",
                &raw.cancelled,
                builtin.cancelled,
            )?,
            interval,
        })
    }
}

/// A `[retention]` value as a period: a number of seconds (integer or not) in range.
/// The longest retention period or interval, in seconds (about 317 years).
const MAX_SECS: f64 = 1e10;

fn retention_secs(value: &toml::Value) -> Option<Duration> {
    let secs = match value {
        toml::Value::Integer(n) => *n as f64,
        toml::Value::Float(v) => *v,
        _ => return None,
    };
    (secs < MAX_SECS).then(|| secs_from_f64(secs)).flatten()
}

/// The admin dashboard (`docs/dashboard.md`).
#[derive(Clone, PartialEq)]
pub struct WebSettings {
    /// Whether `jobhost serve` runs it (default true).
    pub enabled: bool,
    /// The address it listens on (default `127.0.0.1:8000`); port 0 picks a free port.
    pub listen: SocketAddr,
    /// The admin token (`web.admin_token`, or `JOBHOST_ADMIN_TOKEN`); `None`: `serve`
    /// generates one at each start.
    pub admin_token: Option<String>,
    /// The reverse proxies whose `X-Forwarded-For` names the client (default none: the client
    /// is the address the request comes from).
    pub trusted_proxies: Vec<IpRange>,
}

impl Default for WebSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            admin_token: None,
            trusted_proxies: Vec::new(),
        }
    }
}

impl std::fmt::Debug for WebSettings {
    /// Never shows the token itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSettings")
            .field("enabled", &self.enabled)
            .field("listen", &self.listen)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "(set)"))
            .field("trusted_proxies", &self.trusted_proxies)
            .finish()
    }
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        Self {
            slots: std::thread::available_parallelism().map_or(2, |n| n.get().min(MAX_SLOTS)),
            idle_exit: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            lease: Duration::from_secs(15),
            autostart: true,
            runner: Runner::DEFAULT,
        }
    }
}

/// Fully resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The settings file they were read from, if any.
    pub config_file: Option<PathBuf>,
    /// Where workers run: the settings file's directory, or without one the current
    /// directory, so that relative paths in params mean the same whoever started the
    /// dispatcher.
    pub work_dir: PathBuf,
    /// Directory of plugin libraries.
    pub plugin_dir: PathBuf,
    /// The allowlist file.
    pub allowlist: PathBuf,
    /// Directory for jobhost's own state (captured output, results, the queue).
    pub state_dir: PathBuf,
    /// Directory of `background_jobs.log` and `background_jobs_errors.log`.
    pub log_dir: PathBuf,
    /// Environment name; `production` logs INFO and up, `local` also DEBUG, mirrored to stderr.
    pub env: String,
    /// Job defaults.
    pub defaults: JobDefaults,
    /// Limits.
    pub limits: Limits,
    /// The dispatcher.
    pub dispatcher: DispatcherSettings,
    /// The admin dashboard.
    pub web: WebSettings,
    /// How long finished jobs are kept.
    pub retention: RetentionSettings,
    /// The job database (default: SQLite, `jobs.sqlite3` in the state directory).
    pub store: StoreLocation,
}

impl Default for JobDefaults {
    fn default() -> Self {
        Self {
            retries: 3,
            retry_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(3600),
        }
    }
}

impl Limits {
    /// The bounds of a job's params.
    pub fn params(&self) -> ParamsLimits {
        ParamsLimits {
            max_bytes: self.max_params_bytes,
            max_depth: self.max_params_depth,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_params_bytes: ParamsLimits::default().max_bytes,
            max_params_depth: ParamsLimits::default().max_depth,
            max_output_bytes: 1024 * 1024,
            max_plugin_bytes: 256 * 1024 * 1024,
            kill_grace: Duration::from_secs(5),
            inspect_timeout: Duration::from_secs(5),
        }
    }
}

impl Settings {
    /// These settings as environment variables, for a jobhost process started on their behalf
    /// (a dispatcher started by `jobhost run`) to resolve the same ones.
    pub fn to_env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        let mut vars = vec![
            (
                "JOBHOST_PLUGIN_DIR",
                self.plugin_dir.clone().into_os_string(),
            ),
            ("JOBHOST_ALLOWLIST", self.allowlist.clone().into_os_string()),
            ("JOBHOST_STATE_DIR", self.state_dir.clone().into_os_string()),
            ("JOBHOST_LOG_DIR", self.log_dir.clone().into_os_string()),
            ("JOBHOST_ENV", self.env.clone().into()),
            ("JOBHOST_SLOTS", self.dispatcher.slots.to_string().into()),
            (
                "JOBHOST_AUTOSTART",
                self.dispatcher.autostart.to_string().into(),
            ),
            ("JOBHOST_RUNNER", self.dispatcher.runner.as_str().into()),
        ];
        if let Some(file) = &self.config_file {
            vars.push(("JOBHOST_CONFIG", file.clone().into_os_string()));
        }
        #[cfg(feature = "postgres")]
        if let StoreLocation::Postgres(url) = &self.store {
            vars.push(("JOBHOST_STORE", url.into()));
        }
        vars
    }
}

/// Parses a non-negative number of seconds, such as `5` or `0.25`.
pub fn parse_secs(text: &str) -> Option<Duration> {
    secs_from_f64(text.trim().parse().ok()?)
}
