//! Settings: where things live and the defaults every job gets.
//!
//! Parsing only parses ([`RawSettings`] mirrors `jobhost.toml`); [`Settings::resolve`] is the one
//! place that layers flags over environment over file over built-in defaults and turns relative
//! paths into absolute ones (relative to the current directory for flags and environment, to
//! the file's directory for `jobhost.toml`).

use std::{
    env,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::store::StoreLocation;

/// The name of the settings file looked for in the current directory.
pub const CONFIG_FILE: &str = "jobhost.toml";

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
    /// `dispatcher.lease` is zero.
    #[error("{path}: dispatcher.lease must be more than 0 seconds")]
    Lease {
        /// The settings file.
        path: PathBuf,
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
}

/// The `[dispatcher]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDispatcher {
    /// Attempts run at once.
    pub slots: Option<std::num::NonZeroUsize>,
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
    /// Output kept per attempt, in bytes.
    pub max_output_bytes: Option<u64>,
    /// Seconds between asking a job to stop and killing it.
    #[serde(default, deserialize_with = "de_secs")]
    pub kill_grace: Option<Duration>,
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
    /// Largest params accepted, as compact JSON (default 64 KiB).
    pub max_params_bytes: usize,
    /// Output kept per attempt; the rest is counted and dropped (default 1 MiB).
    pub max_output_bytes: u64,
    /// Time between SIGTERM and SIGKILL when an attempt is stopped (default 5 s).
    pub kill_grace: Duration,
}

/// How the dispatcher runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DispatcherSettings {
    /// Attempts run at once (default: the number of CPUs).
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
}

impl Default for WebSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            admin_token: None,
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
            .finish()
    }
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        Self {
            slots: std::thread::available_parallelism().map_or(2, |n| n.get()),
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

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_params_bytes: 64 * 1024,
            max_output_bytes: 1024 * 1024,
            kill_grace: Duration::from_secs(5),
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
        let explicit = overrides
            .config
            .clone()
            .or_else(|| getenv("JOBHOST_CONFIG").map(PathBuf::from));
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

        let path = |flag: &Option<PathBuf>, var: &str, file: &Option<PathBuf>, default: &str| match (
            flag,
            getenv(var),
            file,
        ) {
            (Some(p), _, _) => cwd.join(p),
            (None, Some(v), _) => cwd.join(v),
            (None, None, Some(p)) => base.join(p),
            (None, None, None) => base.join(default),
        };
        let env_name = overrides
            .env
            .clone()
            .or_else(|| getenv("JOBHOST_ENV"))
            .or(raw.env)
            .unwrap_or_else(|| "local".to_owned());
        if env_name.is_empty()
            || !env_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(SettingsError::Env {
                name: "JOBHOST_ENV",
                value: env_name,
                message: "must be a name like `local` or `production` (letters, digits, `-`, `_`)"
                    .into(),
            });
        }

        let builtin = JobDefaults::default();
        let defaults = JobDefaults {
            retries: env_parse(&getenv, "JOBHOST_RETRIES", "a whole number", |v| {
                v.parse::<u32>().ok()
            })?
            .or(raw.defaults.retries)
            .unwrap_or(builtin.retries),
            retry_delay: env_parse(&getenv, "JOBHOST_RETRY_DELAY", SECONDS, parse_secs)?
                .or(raw.defaults.retry_delay)
                .unwrap_or(builtin.retry_delay),
            timeout: env_parse(&getenv, "JOBHOST_TIMEOUT", SECONDS, parse_secs)?
                .or(raw.defaults.timeout)
                .unwrap_or(builtin.timeout),
        };
        let builtin = Limits::default();
        let limits = Limits {
            max_params_bytes: raw
                .limits
                .max_params_bytes
                .unwrap_or(builtin.max_params_bytes),
            max_output_bytes: raw
                .limits
                .max_output_bytes
                .unwrap_or(builtin.max_output_bytes),
            kill_grace: raw.limits.kill_grace.unwrap_or(builtin.kill_grace),
        };

        let builtin = DispatcherSettings::default();
        let from_env = env_parse(
            &getenv,
            "JOBHOST_SLOTS",
            "a whole number of at least 1",
            |v| v.parse::<usize>().ok().filter(|n| *n > 0),
        )?;
        let slots = overrides
            .slots
            .or(from_env)
            .or(raw.dispatcher.slots.map(std::num::NonZeroUsize::get))
            .unwrap_or(builtin.slots);
        let dispatcher = DispatcherSettings {
            slots,
            idle_exit: raw.dispatcher.idle_exit.unwrap_or(builtin.idle_exit),
            shutdown_grace: raw
                .dispatcher
                .shutdown_grace
                .unwrap_or(builtin.shutdown_grace),
            lease: raw.dispatcher.lease.unwrap_or(builtin.lease),
            autostart: env_parse(&getenv, "JOBHOST_AUTOSTART", "true or false", |v| {
                v.parse::<bool>().ok()
            })?
            .or(raw.dispatcher.autostart)
            .unwrap_or(builtin.autostart),
        };
        if dispatcher.lease.is_zero() {
            return Err(SettingsError::Lease {
                path: config_file.clone().unwrap_or_default(),
            });
        }

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
        };

        let state_dir = path(
            &overrides.state_dir,
            "JOBHOST_STATE_DIR",
            &raw.state_dir,
            "storage/jobhost",
        );
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

        Ok(Settings {
            work_dir: base.clone(),
            config_file,
            plugin_dir: path(
                &overrides.plugin_dir,
                "JOBHOST_PLUGIN_DIR",
                &raw.plugin_dir,
                "plugins",
            ),
            allowlist: path(
                &overrides.allowlist,
                "JOBHOST_ALLOWLIST",
                &raw.allowlist,
                "allowlist.toml",
            ),
            state_dir,
            log_dir: path(
                &overrides.log_dir,
                "JOBHOST_LOG_DIR",
                &raw.log_dir,
                "storage/logs",
            ),
            env: env_name,
            defaults,
            limits,
            dispatcher,
            web,
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
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let raw: RawSettings = toml::from_str(&text).map_err(|e| SettingsError::Parse {
            path: path.to_path_buf(),
            line: crate::text::line_of(&text, e.span().map_or(0, |s| s.start)),
            message: e.message().to_owned(),
        })?;
        Ok(raw)
    }
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

fn secs_from_f64(v: f64) -> Option<Duration> {
    (v.is_finite() && (0.0..1e10).contains(&v)).then(|| Duration::from_secs_f64(v))
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
            error
                .to_string()
                .contains("dispatcher.lease must be more than 0"),
            "{error}"
        );
    }
}
