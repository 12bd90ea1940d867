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
    env,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    job::{self, OutOfRange, ParamsLimits},
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
    /// A path given as the empty string, which would silently mean the current directory.
    #[error("{origin} is empty: give a path, or leave it out for the default")]
    EmptyPath {
        /// Where: `--state-dir`, `environment variable JOBHOST_STATE_DIR`, `FILE: state_dir`.
        origin: String,
    },
}

/// `jobhost.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    /// Directory of plugin libraries.
    pub plugin_dir: Option<PathBuf>,
    /// The allowlist file.
    pub allowlist: Option<PathBuf>,
    /// Directory for jobhost's own state.
    pub state_dir: Option<PathBuf>,
    /// Directory of the two log files.
    pub log_dir: Option<PathBuf>,
    /// Environment name (the log channel): `local`, `production`, ...
    pub env: Option<String>,
    /// The job database: a `postgres://` URL; SQLite under the state directory if absent.
    pub store: Option<String>,
    /// Defaults for jobs that do not say otherwise.
    #[serde(default)]
    pub defaults: RawDefaults,
    /// Limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// The dispatcher.
    #[serde(default)]
    pub dispatcher: RawDispatcher,
    /// The admin dashboard.
    #[serde(default)]
    pub web: RawWeb,
    /// How long finished jobs are kept.
    #[serde(default)]
    pub retention: RawRetention,
}

/// The `[retention]` table, as written: each value is checked (and named when refused) by
/// [`Settings::resolve`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Seconds completed jobs are kept; 0 keeps them forever.
    pub completed: Option<toml::Value>,
    /// Seconds failed jobs are kept; 0 keeps them forever.
    pub failed: Option<toml::Value>,
    /// Seconds cancelled jobs are kept; 0 keeps them forever.
    pub cancelled: Option<toml::Value>,
    /// Seconds between two prunings by the dispatcher.
    pub interval: Option<toml::Value>,
}

/// The `[web]` table: the admin dashboard `jobhost serve` runs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    /// Whether `jobhost serve` runs the dashboard.
    pub enabled: Option<bool>,
    /// The address it listens on, `IP:PORT`.
    pub listen: Option<SocketAddr>,
    /// The admin token; generated at each start when neither this nor the environment sets one.
    #[serde(default, deserialize_with = "de_token")]
    pub admin_token: Option<String>,
    /// The reverse proxies whose `X-Forwarded-For` names the client: addresses and CIDR ranges.
    #[serde(default, deserialize_with = "de_proxies")]
    pub trusted_proxies: Option<Vec<IpRange>>,
}

/// An address (`127.0.0.1`, `::1`) or a CIDR range of them (`10.0.0.0/8`, `fd00::/8`), as
/// `web.trusted_proxies` lists them. IPv4 addresses written as IPv6 (`::ffff:10.0.0.1`) are
/// IPv4 addresses here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    first: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `10.0.0.0/8`, `::1`, ...; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{text:?} is not an IP address or CIDR range ({why})");
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("such as 127.0.0.1, ::1 or 10.0.0.0/8"))?;
        let addr = addr.to_canonical();
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(text) => text
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits && p.to_string() == text)
                .ok_or_else(|| bad(&format!("the prefix length must be 0 to {bits}")))?,
        };
        Ok(Self {
            first: addr,
            prefix,
        })
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let masked = |bits: u128, width: u32| {
            let shift = width - u32::from(self.prefix);
            bits.checked_shr(shift).unwrap_or(0)
        };
        match (self.first, ip.to_canonical()) {
            (IpAddr::V4(first), IpAddr::V4(ip)) => {
                masked(u32::from(first).into(), 32) == masked(u32::from(ip).into(), 32)
            }
            (IpAddr::V6(first), IpAddr::V6(ip)) => {
                masked(u128::from(first), 128) == masked(u128::from(ip), 128)
            }
            _ => false,
        }
    }
}

/// The `[dispatcher]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDispatcher {
    /// Attempts run at once.
    pub slots: Option<usize>,
    /// Seconds a dispatcher started by `jobhost run` waits idle before it exits.
    #[serde(default, deserialize_with = "de_secs")]
    pub idle_exit: Option<Duration>,
    /// Seconds running attempts get to finish when the dispatcher is asked to stop.
    #[serde(default, deserialize_with = "de_secs")]
    pub shutdown_grace: Option<Duration>,
    /// Seconds without a heartbeat after which other dispatchers rescue a dispatcher's jobs.
    #[serde(default, deserialize_with = "de_secs")]
    pub lease: Option<Duration>,
    /// Whether `jobhost run` (and the Rust API) start a dispatcher when none serves.
    pub autostart: Option<bool>,
}

/// The `[defaults]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// Retries after the first failed attempt.
    pub retries: Option<u32>,
    /// Seconds between attempts.
    #[serde(default, deserialize_with = "de_secs")]
    pub retry_delay: Option<Duration>,
    /// Seconds an attempt may run.
    #[serde(default, deserialize_with = "de_secs")]
    pub timeout: Option<Duration>,
}

/// The `[limits]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest params, as JSON bytes.
    pub max_params_bytes: Option<usize>,
    /// Deepest params, in nested arrays and objects.
    pub max_params_depth: Option<usize>,
    /// Output kept per attempt, in bytes.
    pub max_output_bytes: Option<u64>,
    /// Largest file in the plugin directory that is read, in bytes.
    pub max_plugin_bytes: Option<u64>,
    /// Seconds between asking a job to stop and killing it.
    #[serde(default, deserialize_with = "de_secs")]
    pub kill_grace: Option<Duration>,
    /// Seconds loading a plugin file to inspect it may take.
    #[serde(default, deserialize_with = "de_secs")]
    pub inspect_timeout: Option<Duration>,
}

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
    /// [`MAX_PARAMS_BYTES`](crate::job::MAX_PARAMS_BYTES)).
    pub max_params_bytes: usize,
    /// Deepest params accepted, in arrays and objects nested in each other (default 32, at
    /// most [`MAX_PARAMS_DEPTH`](crate::job::MAX_PARAMS_DEPTH)).
    pub max_params_depth: usize,
    /// Output kept per attempt; the rest is counted and dropped (default 1 MiB).
    pub max_output_bytes: u64,
    /// Largest file in the plugin directory that is read (default 256 MiB, at most
    /// [`MAX_PLUGIN_BYTES`]); a larger one is rejected unread.
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
    /// Attempts run at once (default: the number of CPUs, at most [`MAX_SLOTS`]), each with a
    /// thread of its own.
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
    /// Resolves settings from `overrides`, the process environment, the settings file and the
    /// built-in defaults, in that order of precedence.
    pub fn resolve(overrides: &Overrides) -> Result<Self, SettingsError> {
        let cwd = env::current_dir().map_err(SettingsError::CurrentDir)?;
        Self::resolve_with(overrides, &cwd, |name| env::var(name).ok())
    }

    /// [`Settings::resolve`] with the current directory and environment given explicitly.
    pub fn resolve_with(
        overrides: &Overrides,
        cwd: &Path,
        getenv: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let explicit = match (&overrides.config, getenv("JOBHOST_CONFIG")) {
            (Some(path), _) if path.as_os_str().is_empty() => {
                return Err(SettingsError::EmptyPath {
                    origin: "--config".into(),
                })
            }
            (Some(path), _) => Some(path.clone()),
            (None, Some(path)) if path.is_empty() => {
                return Err(SettingsError::EmptyPath {
                    origin: "environment variable JOBHOST_CONFIG".into(),
                })
            }
            (None, path) => path.map(PathBuf::from),
        };
        let (raw, base, config_file) = match explicit {
            Some(path) => {
                let path = cwd.join(path);
                (RawSettings::load(&path)?, parent_of(&path), Some(path))
            }
            None => {
                let path = cwd.join(CONFIG_FILE);
                if path.is_file() {
                    (RawSettings::load(&path)?, cwd.to_path_buf(), Some(path))
                } else {
                    (RawSettings::default(), cwd.to_path_buf(), None)
                }
            }
        };

        let path = |flag: &Option<PathBuf>,
                    flag_name: &str,
                    var: &str,
                    file: &Option<PathBuf>,
                    key: &str,
                    default: &str|
         -> Result<(PathBuf, String), SettingsError> {
            let (path, origin) = match (flag, getenv(var), file) {
                (Some(p), _, _) => (cwd.join(p), flag_name.to_owned()),
                (None, Some(v), _) => (cwd.join(v), format!("environment variable {var}")),
                (None, None, Some(p)) => {
                    (base.join(p), format!("{}: {key}", in_file(&config_file)))
                }
                (None, None, None) => {
                    return Ok((base.join(default), format!("{key} (by default {default})")))
                }
            };
            // `cwd.join("")` is the current directory: an empty value is refused instead.
            let given = flag.as_deref().map(Path::as_os_str).map(|p| p.is_empty());
            let empty = match (given, getenv(var), file) {
                (Some(empty), _, _) => empty,
                (None, Some(v), _) => v.is_empty(),
                (None, None, Some(p)) => p.as_os_str().is_empty(),
                (None, None, None) => false,
            };
            if empty {
                return Err(SettingsError::EmptyPath { origin });
            }
            Ok((path, origin))
        };
        // A directory setting that names something other than a directory is bad input, said
        // once here for every command, not an I/O failure later.
        let directory = |(path, origin): (PathBuf, String)| match std::fs::metadata(&path) {
            Ok(meta) if !meta.is_dir() => Err(SettingsError::NotADirectory { origin, path }),
            _ => Ok(path),
        };
        let (env_name, env_origin) = match (&overrides.env, getenv("JOBHOST_ENV"), raw.env) {
            (Some(name), _, _) => (name.clone(), "--env".to_owned()),
            (None, Some(name), _) => (name, "environment variable JOBHOST_ENV".to_owned()),
            (None, None, Some(name)) => (name, format!("{}: env", in_file(&config_file))),
            (None, None, None) => ("local".to_owned(), String::new()),
        };
        if env_name.is_empty()
            || !env_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(SettingsError::EnvName {
                origin: env_origin,
                value: env_name,
            });
        }

        // A value from the file is checked under its key, one from the environment under its
        // variable, one from a flag under the flag: the error names where to fix it.
        let file_range = |range: OutOfRange| SettingsError::OutOfRange {
            file: config_file.clone(),
            range,
        };
        let flag_range = |range: OutOfRange| SettingsError::OutOfRange { file: None, range };
        let getenv = &getenv;
        let env_range = |name: &'static str, range: OutOfRange| SettingsError::Env {
            name,
            value: getenv(name).unwrap_or_default(),
            message: format!("out of range: allowed {}", range.allowed),
        };
        let builtin = JobDefaults::default();
        let whole = |v: &str| v.parse::<u32>().ok();
        let defaults = JobDefaults {
            retries: layered(
                (
                    env_parse(getenv, "JOBHOST_RETRIES", "a whole number", whole)?,
                    "JOBHOST_RETRIES",
                ),
                (raw.defaults.retries, "defaults.retries"),
                builtin.retries,
                job::check_retries,
                (&env_range, &file_range),
            )?,
            retry_delay: layered(
                (
                    env_parse(getenv, "JOBHOST_RETRY_DELAY", SECONDS, parse_secs)?,
                    "JOBHOST_RETRY_DELAY",
                ),
                (raw.defaults.retry_delay, "defaults.retry_delay"),
                builtin.retry_delay,
                job::check_delay,
                (&env_range, &file_range),
            )?,
            timeout: layered(
                (
                    env_parse(getenv, "JOBHOST_TIMEOUT", SECONDS, parse_secs)?,
                    "JOBHOST_TIMEOUT",
                ),
                (raw.defaults.timeout, "defaults.timeout"),
                builtin.timeout,
                job::check_timeout,
                (&env_range, &file_range),
            )?,
        };
        let count = |key: &'static str, value: Option<usize>, min: usize, max: usize| {
            value
                .map(|n| job::check_count(key, n, min, max))
                .transpose()
                .map_err(file_range)
        };
        let duration =
            |key: &'static str, value: Option<Duration>, min: Duration, max: Duration| {
                value
                    .map(|d| job::check_duration(key, d, min, max))
                    .transpose()
                    .map_err(file_range)
            };
        let builtin = Limits::default();
        let limits = Limits {
            max_params_bytes: count(
                "limits.max_params_bytes",
                raw.limits.max_params_bytes,
                1,
                job::MAX_PARAMS_BYTES,
            )?
            .unwrap_or(builtin.max_params_bytes),
            max_params_depth: count(
                "limits.max_params_depth",
                raw.limits.max_params_depth,
                1,
                job::MAX_PARAMS_DEPTH,
            )?
            .unwrap_or(builtin.max_params_depth),
            max_output_bytes: raw
                .limits
                .max_output_bytes
                .map(|n| job::check_count("limits.max_output_bytes", n, 0, MAX_OUTPUT_BYTES))
                .transpose()
                .map_err(file_range)?
                .unwrap_or(builtin.max_output_bytes),
            max_plugin_bytes: raw
                .limits
                .max_plugin_bytes
                .map(|n| job::check_count("limits.max_plugin_bytes", n, 1, MAX_PLUGIN_BYTES))
                .transpose()
                .map_err(file_range)?
                .unwrap_or(builtin.max_plugin_bytes),
            kill_grace: duration(
                "limits.kill_grace",
                raw.limits.kill_grace,
                Duration::ZERO,
                MAX_GRACE,
            )?
            .unwrap_or(builtin.kill_grace),
            inspect_timeout: duration(
                "limits.inspect_timeout",
                raw.limits.inspect_timeout,
                MIN_INSPECT_TIMEOUT,
                MAX_INSPECT_TIMEOUT,
            )?
            .unwrap_or(builtin.inspect_timeout),
        };

        let builtin = DispatcherSettings::default();
        let slots = match (
            overrides.slots,
            env_parse(&getenv, "JOBHOST_SLOTS", "a whole number", |v| {
                v.parse::<usize>().ok()
            })?,
        ) {
            (Some(n), _) => job::check_count("--slots", n, 1, MAX_SLOTS).map_err(flag_range)?,
            (None, Some(n)) => job::check_count("JOBHOST_SLOTS", n, 1, MAX_SLOTS)
                .map_err(|range| env_range("JOBHOST_SLOTS", range))?,
            (None, None) => count("dispatcher.slots", raw.dispatcher.slots, 1, MAX_SLOTS)?
                .unwrap_or(builtin.slots),
        };
        let dispatcher = DispatcherSettings {
            slots,
            idle_exit: duration(
                "dispatcher.idle_exit",
                raw.dispatcher.idle_exit,
                Duration::ZERO,
                MAX_IDLE_EXIT,
            )?
            .unwrap_or(builtin.idle_exit),
            shutdown_grace: duration(
                "dispatcher.shutdown_grace",
                raw.dispatcher.shutdown_grace,
                Duration::ZERO,
                job::MAX_TIMEOUT,
            )?
            .unwrap_or(builtin.shutdown_grace),
            lease: duration(
                "dispatcher.lease",
                raw.dispatcher.lease,
                MIN_LEASE,
                MAX_GRACE,
            )?
            .unwrap_or(builtin.lease),
            autostart: env_parse(&getenv, "JOBHOST_AUTOSTART", "true or false", |v| {
                v.parse::<bool>().ok()
            })?
            .or(raw.dispatcher.autostart)
            .unwrap_or(builtin.autostart),
        };

        let retention =
            RetentionSettings::resolve(&raw.retention, config_file.as_deref().unwrap_or(cwd))?;

        let builtin = WebSettings::default();
        let env_token = match getenv("JOBHOST_ADMIN_TOKEN") {
            Some(value) if value.trim().is_empty() => {
                return Err(SettingsError::Env {
                    name: "JOBHOST_ADMIN_TOKEN",
                    value,
                    message: "must not be empty (unset it to have one generated)".into(),
                })
            }
            other => other,
        };
        let web = WebSettings {
            enabled: raw.web.enabled.unwrap_or(builtin.enabled),
            listen: raw.web.listen.unwrap_or(builtin.listen),
            admin_token: env_token.or(raw.web.admin_token),
            trusted_proxies: raw.web.trusted_proxies.unwrap_or(builtin.trusted_proxies),
        };

        let state_dir = directory(path(
            &overrides.state_dir,
            "--state-dir",
            "JOBHOST_STATE_DIR",
            &raw.state_dir,
            "state_dir",
            "storage/jobhost",
        )?)?;
        let store = match (&overrides.store, getenv("JOBHOST_STORE"), &raw.store) {
            (Some(url), _, _) => Some(("--store".to_owned(), url.clone())),
            (None, Some(url), _) => Some(("JOBHOST_STORE".to_owned(), url)),
            (None, None, Some(url)) => Some((
                config_file
                    .as_ref()
                    .map_or_else(String::new, |f| f.display().to_string()),
                url.clone(),
            )),
            (None, None, None) => None,
        };
        let store = match store {
            Some((origin, url)) => StoreLocation::parse(&url)
                .map_err(|source| SettingsError::Store { origin, source })?,
            None => StoreLocation::Sqlite(state_dir.join(crate::store::sqlite::DB_FILE)),
        };

        let plugin_dir = directory(path(
            &overrides.plugin_dir,
            "--plugin-dir",
            "JOBHOST_PLUGIN_DIR",
            &raw.plugin_dir,
            "plugin_dir",
            "plugins",
        )?)?;
        let allowlist = path(
            &overrides.allowlist,
            "--allowlist",
            "JOBHOST_ALLOWLIST",
            &raw.allowlist,
            "allowlist",
            "allowlist.toml",
        )?
        .0;
        let log_dir = directory(path(
            &overrides.log_dir,
            "--log-dir",
            "JOBHOST_LOG_DIR",
            &raw.log_dir,
            "log_dir",
            "storage/logs",
        )?)?;
        Ok(Settings {
            work_dir: base.clone(),
            config_file,
            plugin_dir,
            allowlist,
            state_dir,
            log_dir,
            env: env_name,
            defaults,
            limits,
            dispatcher,
            web,
            retention,
            store,
        })
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
        ];
        if let Some(file) = &self.config_file {
            vars.push(("JOBHOST_CONFIG", file.clone().into_os_string()));
        }
        if let StoreLocation::Postgres(url) = &self.store {
            vars.push(("JOBHOST_STORE", url.into()));
        }
        vars
    }
}

impl RawSettings {
    /// Reads and parses a settings file.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = crate::shared::files::read_capped_text(
            path,
            crate::shared::files::MAX_SETTINGS_BYTES,
            "a settings file",
        )
        .map_err(|source| SettingsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let raw: RawSettings = toml::from_str(&text).map_err(|e| SettingsError::Parse {
            path: path.to_path_buf(),
            line: crate::shared::text::line_of(&text, e.span().map_or(0, |s| s.start)),
            message: e.message().to_owned(),
        })?;
        Ok(raw)
    }
}

/// How [`layered`] refuses a value: one from the environment (given the variable), one from
/// the settings file.
type RangeErrors<'a> = (
    &'a dyn Fn(&'static str, OutOfRange) -> SettingsError,
    &'a dyn Fn(OutOfRange) -> SettingsError,
);

/// The value from the environment variable (`env`: the value and its name) if set, else the
/// file's (`file`: the value and its key), else `default`; the one taken checked with `check`
/// under the name it was given by, its refusal made by the matching one of `errors`.
fn layered<T>(
    env: (Option<T>, &'static str),
    file: (Option<T>, &'static str),
    default: T,
    check: fn(&'static str, T) -> Result<T, OutOfRange>,
    errors: RangeErrors<'_>,
) -> Result<T, SettingsError> {
    match (env, file) {
        ((Some(v), name), _) => check(name, v).map_err(|range| errors.0(name, range)),
        (_, (Some(v), key)) => check(key, v).map_err(errors.1),
        _ => Ok(default),
    }
}

/// How messages name the settings file: its path, or `settings` when there is none.
fn in_file(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map_or_else(|| "settings".to_owned(), |f| f.display().to_string())
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn de_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let v = f64::deserialize(d)?;
    secs_from_f64(v).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "expected a non-negative number of seconds, got {v}"
        ))
    })
}

/// A finite, non-negative number of seconds as a duration; one too long for a [`Duration`]
/// is the longest, for the bound it is checked against to refuse with its range.
fn secs_from_f64(v: f64) -> Option<Duration> {
    (v.is_finite() && v >= 0.0).then(|| Duration::try_from_secs_f64(v).unwrap_or(Duration::MAX))
}

fn de_token<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let token = String::deserialize(d)?;
    if token.trim().is_empty() {
        return Err(serde::de::Error::custom(
            "the admin token must not be empty (leave it out to have one generated)",
        ));
    }
    Ok(Some(token))
}

fn de_proxies<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<IpRange>>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| IpRange::parse(text.trim()).map_err(serde::de::Error::custom))
        .collect::<Result<_, _>>()
        .map(Some)
}

const SECONDS: &str = "a non-negative number of seconds";

/// Parses a non-negative number of seconds, such as `5` or `0.25`.
pub fn parse_secs(text: &str) -> Option<Duration> {
    secs_from_f64(text.trim().parse().ok()?)
}

fn env_parse<T>(
    getenv: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    expected: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, SettingsError> {
    match getenv(name) {
        None => Ok(None),
        Some(value) => match parse(&value) {
            Some(v) => Ok(Some(v)),
            None => Err(SettingsError::Env {
                name,
                value,
                message: format!("must be {expected}"),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(toml: &str, env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), toml).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::resolve_with(&Overrides::default(), dir.path(), |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn the_dashboard_listens_on_loopback_8000_by_default_with_a_generated_token() {
        let web = resolve("", &[]).unwrap().web;
        assert!(web.enabled);
        assert_eq!(web.listen, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(web.admin_token, None);
    }

    #[test]
    fn web_settings_come_from_the_file_and_the_token_also_from_the_environment() {
        let toml =
            "web.enabled = false\nweb.listen = \"127.0.0.1:0\"\nweb.admin_token = \"from-file\"\n";
        let web = resolve(toml, &[]).unwrap().web;
        assert!(!web.enabled);
        assert_eq!(web.listen.port(), 0);
        assert_eq!(web.admin_token.as_deref(), Some("from-file"));
        let web = resolve(toml, &[("JOBHOST_ADMIN_TOKEN", "from-env")])
            .unwrap()
            .web;
        assert_eq!(web.admin_token.as_deref(), Some("from-env"));
        assert!(
            !format!("{web:?}").contains("from-env"),
            "Debug hides the token"
        );
    }

    #[test]
    fn trusted_proxies_are_addresses_and_cidr_ranges() {
        let web = resolve(
            "[web]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"fd00::/8\", \"::ffff:192.0.2.1\"]\n",
            &[],
        )
        .unwrap()
        .web;
        let trusted = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            web.trusted_proxies.iter().any(|r| r.contains(ip))
        };
        for ip in [
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "10.255.0.1",
            "fd12::1",
            "192.0.2.1",
        ] {
            assert!(trusted(ip), "{ip}");
        }
        for ip in ["127.0.0.2", "11.0.0.1", "fe80::1", "::1", "192.0.2.2"] {
            assert!(!trusted(ip), "{ip}");
        }
        assert!(IpRange::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(!IpRange::parse("0.0.0.0/0")
            .unwrap()
            .contains("::2".parse().unwrap()));
        assert_eq!(resolve("", &[]).unwrap().web.trusted_proxies, []);
        for (bad, why) in [
            ("localhost", "such as 127.0.0.1"),
            ("10.0.0.0/33", "0 to 32"),
            ("::1/129", "0 to 128"),
            ("10.0.0.0/", "0 to 32"),
            ("10.0.0.0/+8", "0 to 32"),
            ("", "such as"),
        ] {
            let error = resolve(&format!("web.trusted_proxies = [\"{bad}\"]\n"), &[]).unwrap_err();
            assert!(
                matches!(error, SettingsError::Parse { line: 1, .. }),
                "{bad}: {error}"
            );
            let message = error.to_string();
            assert!(
                message.contains(&format!("{bad:?} is not an IP address or CIDR range")),
                "{message}"
            );
            assert!(message.contains(why), "{message}");
        }
    }

    #[test]
    fn bad_web_settings_are_refused() {
        let listen = resolve("\n[web]\nlisten = \"localhost\"\n", &[]).unwrap_err();
        assert!(
            matches!(listen, SettingsError::Parse { line: 3, .. }),
            "{listen}"
        );
        let empty = resolve("web.admin_token = \"  \"\n", &[]).unwrap_err();
        assert!(empty.to_string().contains("must not be empty"), "{empty}");
        let env = resolve("", &[("JOBHOST_ADMIN_TOKEN", "")]).unwrap_err();
        assert!(
            matches!(
                env,
                SettingsError::Env {
                    name: "JOBHOST_ADMIN_TOKEN",
                    ..
                }
            ),
            "{env}"
        );
        assert!(
            resolve("web.port = 1\n", &[]).is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn autostart_is_on_unless_the_file_or_the_environment_turns_it_off() {
        assert!(resolve("", &[]).unwrap().dispatcher.autostart);
        let off = "[dispatcher]\nautostart = false\n";
        assert!(!resolve(off, &[]).unwrap().dispatcher.autostart);
        let on = [("JOBHOST_AUTOSTART", "true")];
        assert!(resolve(off, &on).unwrap().dispatcher.autostart);
        let e = resolve("", &[("JOBHOST_AUTOSTART", "maybe")]).unwrap_err();
        assert!(
            e.to_string().contains("JOBHOST_AUTOSTART") && e.to_string().contains("true or false"),
            "{e}"
        );
    }

    #[test]
    fn a_dispatcher_started_on_demand_resolves_the_settings_of_its_starter() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(CONFIG_FILE);
        std::fs::write(
            &file,
            "state_dir = \"var/state\"\n[dispatcher]\nslots = 2\nshutdown_grace = 7\nautostart = false\n",
        )
        .unwrap();
        let caller_env = |name: &str| {
            [
                ("JOBHOST_SLOTS", "3"),
                ("JOBHOST_ENV", "staging"),
                ("JOBHOST_LOG_DIR", "elsewhere/logs"),
            ]
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
        };
        let starter =
            Settings::resolve_with(&Overrides::default(), dir.path(), caller_env).unwrap();
        // The dispatcher runs in another directory, with nothing but what it is handed.
        let handed: Vec<(&str, String)> = starter
            .to_env()
            .into_iter()
            .map(|(k, v)| (k, v.to_string_lossy().into_owned()))
            .collect();
        let elsewhere = tempfile::tempdir().unwrap();
        let started = Settings::resolve_with(&Overrides::default(), elsewhere.path(), |name| {
            handed
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        })
        .unwrap();
        assert_eq!(started.dispatcher, starter.dispatcher);
        assert_eq!(started.dispatcher.slots, 3);
        assert!(!started.dispatcher.autostart);
        assert_eq!(
            (&started.state_dir, &started.log_dir, &started.plugin_dir),
            (&starter.state_dir, &starter.log_dir, &starter.plugin_dir)
        );
        assert_eq!(
            (&started.env, &started.store),
            (&starter.env, &starter.store)
        );
        assert_eq!(started.limits, starter.limits);
        assert_eq!(started.web, starter.web);
    }

    #[test]
    fn the_store_is_sqlite_in_the_state_directory_unless_a_postgres_url_is_given() {
        let settings = resolve("state_dir = \"var/state\"\n", &[]).unwrap();
        assert_eq!(
            settings.store,
            StoreLocation::Sqlite(settings.state_dir.join("jobs.sqlite3"))
        );
        assert_eq!(settings.dispatcher.lease, Duration::from_secs(15));

        let file = "store = \"postgres://jobs:secret@db.example/queue\"\ndispatcher.lease = 2.5\n";
        let settings = resolve(file, &[]).unwrap();
        assert_eq!(
            settings.store,
            StoreLocation::Postgres("postgres://jobs:secret@db.example/queue".into())
        );
        assert_eq!(settings.dispatcher.lease, Duration::from_millis(2500));
        // The environment wins over the file, and is handed on to a dispatcher started for us.
        let env = [("JOBHOST_STORE", "postgresql://other/db")];
        let settings = resolve(file, &env).unwrap();
        assert_eq!(
            settings.store,
            StoreLocation::Postgres("postgresql://other/db".into())
        );
        assert!(settings
            .to_env()
            .contains(&("JOBHOST_STORE", "postgresql://other/db".into())));
    }

    #[test]
    fn a_store_that_is_not_a_postgres_url_and_a_zero_lease_are_refused() {
        let error = resolve("store = \"mysql://jobs:secret@db/queue\"\n", &[]).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("jobhost.toml"), "{message}");
        let chain = format!("{:#}", anyhow::Error::from(error));
        assert!(chain.contains("mysql://"), "{chain}");
        assert!(
            !chain.contains("secret"),
            "the password is never shown: {chain}"
        );

        let error = resolve("", &[("JOBHOST_STORE", "not a url")]).unwrap_err();
        assert!(error.to_string().contains("JOBHOST_STORE"), "{error}");

        let error = resolve("dispatcher.lease = 0\n", &[]).unwrap_err();
        assert!(
            error.to_string().ends_with(
                "jobhost.toml: dispatcher.lease 0 s is out of range: allowed 1 s to 3600 s"
            ),
            "{error}"
        );
    }

    #[test]
    fn every_setting_is_checked_against_its_bound_naming_where_it_came_from() {
        for (toml, expect) in [
            ("defaults.timeout = 0\n", "jobhost.toml: defaults.timeout 0 s is out of range: allowed 0.001 s to 604800 s (7 days)"),
            ("defaults.timeout = 0.0004\n", "defaults.timeout 0.0004 s is out of range"),
            ("defaults.retries = 4294967295\n", "defaults.retries 4294967295 is out of range: allowed 0 to 1000"),
            ("defaults.retry_delay = 1e12\n", "defaults.retry_delay 1000000000000 s is out of range"),
            ("dispatcher.slots = 0\n", "dispatcher.slots 0 is out of range: allowed 1 to 256"),
            ("dispatcher.slots = 2000\n", "dispatcher.slots 2000 is out of range: allowed 1 to 256"),
            ("dispatcher.idle_exit = 1e300\n", "dispatcher.idle_exit "),
            ("dispatcher.shutdown_grace = 1e7\n", "dispatcher.shutdown_grace "),
            ("limits.kill_grace = 7200\n", "limits.kill_grace 7200 s is out of range: allowed 0 s to 3600 s"),
            ("limits.inspect_timeout = 0\n", "limits.inspect_timeout 0 s is out of range: allowed 0.001 s to 600 s"),
            ("limits.inspect_timeout = 3600\n", "limits.inspect_timeout 3600 s is out of range"),
            ("limits.max_params_bytes = 0\n", "limits.max_params_bytes 0 is out of range: allowed 1 to 16777216"),
            ("limits.max_params_depth = 127\n", "limits.max_params_depth 127 is out of range: allowed 1 to 100"),
            ("limits.max_output_bytes = 1e3\n", "invalid type"),
            ("limits.max_output_bytes = 2000000000\n", "limits.max_output_bytes 2000000000 is out of range"),
            ("limits.max_plugin_bytes = 0\n", "limits.max_plugin_bytes 0 is out of range: allowed 1 to 4294967296"),
            ("limits.max_plugin_bytes = 5000000000\n", "limits.max_plugin_bytes 5000000000 is out of range"),
        ] {
            let error = resolve(toml, &[]).unwrap_err().to_string();
            assert!(error.contains(expect), "{toml}: {error}");
        }
        for (var, value, expect) in [
            ("JOBHOST_TIMEOUT", "0", "environment variable JOBHOST_TIMEOUT=\"0\": out of range: allowed 0.001 s to 604800 s (7 days)"),
            ("JOBHOST_RETRIES", "5000", "JOBHOST_RETRIES=\"5000\": out of range: allowed 0 to 1000"),
            ("JOBHOST_RETRY_DELAY", "1e300", "JOBHOST_RETRY_DELAY"),
            ("JOBHOST_SLOTS", "2000", "JOBHOST_SLOTS=\"2000\": out of range: allowed 1 to 256"),
            ("JOBHOST_SLOTS", "0", "JOBHOST_SLOTS=\"0\": out of range"),
        ] {
            let error = resolve("", &[(var, value)]).unwrap_err().to_string();
            assert!(error.contains(expect), "{var}={value}: {error}");
        }
        let dir = tempfile::tempdir().unwrap();
        let slots = Overrides {
            slots: Some(2000),
            ..Overrides::default()
        };
        let error = Settings::resolve_with(&slots, dir.path(), |_| None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--slots 2000 is out of range: allowed 1 to 256"
        );
        let settings = resolve("dispatcher.slots = 256\ndefaults.timeout = 0.001\n", &[]).unwrap();
        assert_eq!(settings.dispatcher.slots, 256);
        assert_eq!(settings.defaults.timeout, Duration::from_millis(1));
        assert!(resolve("", &[]).unwrap().dispatcher.slots <= MAX_SLOTS);
    }

    #[test]
    fn an_empty_path_is_refused_naming_where_it_was_given() {
        for var in [
            "JOBHOST_STATE_DIR",
            "JOBHOST_LOG_DIR",
            "JOBHOST_PLUGIN_DIR",
            "JOBHOST_ALLOWLIST",
            "JOBHOST_CONFIG",
        ] {
            let error = resolve("", &[(var, "")]).unwrap_err().to_string();
            assert_eq!(
                error,
                format!("environment variable {var} is empty: give a path, or leave it out for the default")
            );
        }
        let error = resolve("state_dir = \"\"\n", &[]).unwrap_err().to_string();
        assert!(
            error.ends_with(
                "jobhost.toml: state_dir is empty: give a path, or leave it out for the default"
            ),
            "{error}"
        );
        let dir = tempfile::tempdir().unwrap();
        let flag = Overrides {
            state_dir: Some(PathBuf::new()),
            ..Overrides::default()
        };
        let error = Settings::resolve_with(&flag, dir.path(), |_| None).unwrap_err();
        assert!(
            error.to_string().starts_with("--state-dir is empty"),
            "{error}"
        );
    }

    #[test]
    fn a_bad_environment_name_is_named_where_it_was_given() {
        let error = resolve("env = \"a b\"\n", &[]).unwrap_err().to_string();
        assert!(
            error.contains("jobhost.toml: env: environment name \"a b\""),
            "{error}"
        );
        let error = resolve("", &[("JOBHOST_ENV", "")]).unwrap_err().to_string();
        assert!(
            error.starts_with("environment variable JOBHOST_ENV: "),
            "{error}"
        );
    }

    #[test]
    fn retention_defaults_to_a_day_for_completed_and_cancelled_jobs_and_a_week_for_failed() {
        let retention = resolve("", &[]).unwrap().retention;
        let day = Duration::from_secs(86_400);
        assert_eq!(retention.period(JobState::Completed), Some(day));
        assert_eq!(retention.period(JobState::Cancelled), Some(day));
        assert_eq!(retention.period(JobState::Failed), Some(day * 7));
        assert_eq!(retention.period(JobState::Queued), None);
        assert_eq!(retention.interval, Duration::from_secs(30));
    }

    #[test]
    fn retention_periods_are_seconds_and_zero_keeps_jobs_forever() {
        let toml = "[retention]\ncompleted = 3600\nfailed = 0\ncancelled = 0.5\ninterval = 0.25\n";
        let retention = resolve(toml, &[]).unwrap().retention;
        assert_eq!(retention.completed, Some(Duration::from_secs(3600)));
        assert_eq!(retention.failed, None);
        assert_eq!(retention.cancelled, Some(Duration::from_millis(500)));
        assert_eq!(retention.interval, Duration::from_millis(250));
        // A key left out keeps its default.
        let retention = resolve("retention.failed = 60\n", &[]).unwrap().retention;
        assert_eq!(retention.failed, Some(Duration::from_secs(60)));
        assert_eq!(retention.completed, RetentionSettings::default().completed);
    }

    #[test]
    fn bad_retention_values_are_refused_naming_the_key_and_the_range() {
        for (toml, key, shown) in [
            (
                "retention.completed = -1\n",
                "retention.completed",
                "not -1",
            ),
            (
                "retention.failed = \"7d\"\n",
                "retention.failed",
                "not \"7d\"",
            ),
            (
                "retention.cancelled = nan\n",
                "retention.cancelled",
                "not nan",
            ),
            (
                "retention.completed = 1e11\n",
                "retention.completed",
                "not 100000000000",
            ),
            (
                "retention.interval = 0\n",
                "retention.interval",
                "more than 0",
            ),
            (
                "retention.interval = true\n",
                "retention.interval",
                "not true",
            ),
        ] {
            let error = resolve(toml, &[]).unwrap_err();
            let message = error.to_string();
            assert!(
                matches!(&error, SettingsError::Retention { key: k, .. } if *k == key),
                "{toml}: {message}"
            );
            assert!(message.contains("jobhost.toml: "), "{message}");
            assert!(
                message.contains(&format!("{key} must be a number of seconds")),
                "{message}"
            );
            assert!(message.contains(shown), "{toml}: {message}");
        }
        let unknown = resolve("retention.running = 1\n", &[]).unwrap_err();
        assert!(unknown.to_string().contains("running"), "{unknown}");
    }
}
