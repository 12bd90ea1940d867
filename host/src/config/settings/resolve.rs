//! [`Settings::resolve`]: flags over environment over file over built-in defaults, every value
//! checked against its bound, every path made absolute, each error naming where the value came
//! from.

use std::{
    env,
    path::{Path, PathBuf},
    time::Duration,
};

use super::*;
use crate::job::{self, OutOfRange};

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
        let getenv: &dyn Fn(&str) -> Option<String> = &getenv;
        let (raw, base, config_file) = settings_file(overrides, cwd, getenv)?;
        let r = Resolver {
            overrides,
            cwd,
            getenv,
            base: &base,
            config_file: &config_file,
        };
        let env = r.env_name(raw.env.clone())?;
        let defaults = r.defaults(&raw.defaults)?;
        let limits = r.limits(&raw.limits)?;
        let dispatcher = r.dispatcher(&raw.dispatcher)?;
        let retention =
            RetentionSettings::resolve(&raw.retention, config_file.as_deref().unwrap_or(cwd))?;
        let web = r.web(&raw.web)?;
        let state_dir = r.directory(r.path(
            (&overrides.state_dir, "--state-dir"),
            "JOBHOST_STATE_DIR",
            (&raw.state_dir, "state_dir"),
            "storage/jobhost",
        )?)?;
        let store = r.store(raw.store.as_deref(), &state_dir)?;
        let plugin_dir = r.directory(r.path(
            (&overrides.plugin_dir, "--plugin-dir"),
            "JOBHOST_PLUGIN_DIR",
            (&raw.plugin_dir, "plugin_dir"),
            "plugins",
        )?)?;
        let (allowlist, _) = r.path(
            (&overrides.allowlist, "--allowlist"),
            "JOBHOST_ALLOWLIST",
            (&raw.allowlist, "allowlist"),
            "allowlist.toml",
        )?;
        let log_dir = r.directory(r.path(
            (&overrides.log_dir, "--log-dir"),
            "JOBHOST_LOG_DIR",
            (&raw.log_dir, "log_dir"),
            "storage/logs",
        )?)?;
        Ok(Settings {
            work_dir: base.clone(),
            config_file,
            plugin_dir,
            allowlist,
            state_dir,
            log_dir,
            env,
            defaults,
            limits,
            dispatcher,
            web,
            retention,
            store,
        })
    }
}

/// The settings file (`--config`, else `JOBHOST_CONFIG`, else `jobhost.toml` in `cwd` if there is
/// one), parsed; the directory its relative paths are relative to; and its path.
fn settings_file(
    overrides: &Overrides,
    cwd: &Path,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<(RawSettings, PathBuf, Option<PathBuf>), SettingsError> {
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
    Ok(match explicit {
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
    })
}

/// What resolving one setting needs to know: the flags, the environment, where the settings
/// file is. Each method resolves one part of [`Settings`].
struct Resolver<'a> {
    overrides: &'a Overrides,
    cwd: &'a Path,
    getenv: &'a dyn Fn(&str) -> Option<String>,
    /// The directory the file's relative paths are relative to.
    base: &'a Path,
    config_file: &'a Option<PathBuf>,
}

impl Resolver<'_> {
    /// A path from its flag (`flag`: the value and its name), else its environment variable
    /// `var`, else the file (`file`: the value and its key), else `default` under the base
    /// directory; with where it came from. An empty value is refused: `cwd.join("")` would
    /// silently be the current directory.
    fn path(
        &self,
        flag: (&Option<PathBuf>, &str),
        var: &str,
        file: (&Option<PathBuf>, &str),
        default: &str,
    ) -> Result<(PathBuf, String), SettingsError> {
        let ((flag, flag_name), (file, key)) = (flag, file);
        let (path, origin, empty) = match (flag, (self.getenv)(var), file) {
            (Some(p), _, _) => (
                self.cwd.join(p),
                flag_name.to_owned(),
                p.as_os_str().is_empty(),
            ),
            (None, Some(v), _) => (
                self.cwd.join(&v),
                format!("environment variable {var}"),
                v.is_empty(),
            ),
            (None, None, Some(p)) => (
                self.base.join(p),
                format!("{}: {key}", in_file(self.config_file)),
                p.as_os_str().is_empty(),
            ),
            (None, None, None) => {
                return Ok((
                    self.base.join(default),
                    format!("{key} (by default {default})"),
                ))
            }
        };
        if empty {
            return Err(SettingsError::EmptyPath { origin });
        }
        Ok((path, origin))
    }

    /// A directory setting that names something other than a directory is bad input, said
    /// once here for every command, not an I/O failure later.
    fn directory(&self, (path, origin): (PathBuf, String)) -> Result<PathBuf, SettingsError> {
        match std::fs::metadata(&path) {
            Ok(meta) if !meta.is_dir() => Err(SettingsError::NotADirectory { origin, path }),
            _ => Ok(path),
        }
    }

    /// The environment name (the log channel): letters, digits, `_` and `-`.
    fn env_name(&self, file: Option<String>) -> Result<String, SettingsError> {
        let (name, origin) = match (&self.overrides.env, (self.getenv)("JOBHOST_ENV"), file) {
            (Some(name), _, _) => (name.clone(), "--env".to_owned()),
            (None, Some(name), _) => (name, "environment variable JOBHOST_ENV".to_owned()),
            (None, None, Some(name)) => (name, format!("{}: env", in_file(self.config_file))),
            (None, None, None) => ("local".to_owned(), String::new()),
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if name.is_empty() || !name.chars().all(valid) {
            return Err(SettingsError::EnvName {
                origin,
                value: name,
            });
        }
        Ok(name)
    }

    /// A value from the file out of range, refused under its key.
    fn file_range(&self, range: OutOfRange) -> SettingsError {
        SettingsError::OutOfRange {
            file: self.config_file.clone(),
            range,
        }
    }

    /// A value from the environment variable `name` out of range, refused under its name.
    fn env_range(&self, name: &'static str, range: OutOfRange) -> SettingsError {
        SettingsError::Env {
            name,
            value: (self.getenv)(name).unwrap_or_default(),
            message: format!("out of range: allowed {}", range.allowed),
        }
    }

    /// A count from the file under `key`, checked to be from `min` to `max`.
    fn count<T: Copy + PartialOrd + std::fmt::Display>(
        &self,
        key: &'static str,
        value: Option<T>,
        (min, max): (T, T),
    ) -> Result<Option<T>, SettingsError> {
        value
            .map(|n| job::check_count(key, n, min, max))
            .transpose()
            .map_err(|range| self.file_range(range))
    }

    /// A duration from the file under `key`, checked to be from `min` to `max`.
    fn duration(
        &self,
        key: &'static str,
        value: Option<Duration>,
        (min, max): (Duration, Duration),
    ) -> Result<Option<Duration>, SettingsError> {
        value
            .map(|d| job::check_duration(key, d, min, max))
            .transpose()
            .map_err(|range| self.file_range(range))
    }

    /// The value of environment variable `name` parsed with `parse`, if it is set.
    fn env<T>(
        &self,
        name: &'static str,
        expected: &'static str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, SettingsError> {
        match (self.getenv)(name) {
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

    /// `[defaults]`, under `JOBHOST_RETRIES`, `JOBHOST_RETRY_DELAY` and `JOBHOST_TIMEOUT`.
    fn defaults(&self, raw: &RawDefaults) -> Result<JobDefaults, SettingsError> {
        let builtin = JobDefaults::default();
        let errors: RangeErrors<'_> = (&|name, range| self.env_range(name, range), &|range| {
            self.file_range(range)
        });
        let whole = |v: &str| v.parse::<u32>().ok();
        Ok(JobDefaults {
            retries: layered(
                (
                    self.env("JOBHOST_RETRIES", "a whole number", whole)?,
                    "JOBHOST_RETRIES",
                ),
                (raw.retries, "defaults.retries"),
                builtin.retries,
                job::check_retries,
                errors,
            )?,
            retry_delay: layered(
                (
                    self.env("JOBHOST_RETRY_DELAY", SECONDS, parse_secs)?,
                    "JOBHOST_RETRY_DELAY",
                ),
                (raw.retry_delay, "defaults.retry_delay"),
                builtin.retry_delay,
                job::check_delay,
                errors,
            )?,
            timeout: layered(
                (
                    self.env("JOBHOST_TIMEOUT", SECONDS, parse_secs)?,
                    "JOBHOST_TIMEOUT",
                ),
                (raw.timeout, "defaults.timeout"),
                builtin.timeout,
                job::check_timeout,
                errors,
            )?,
        })
    }

    /// `[limits]`, from the file only.
    fn limits(&self, raw: &RawLimits) -> Result<Limits, SettingsError> {
        let builtin = Limits::default();
        Ok(Limits {
            max_params_bytes: self
                .count(
                    "limits.max_params_bytes",
                    raw.max_params_bytes,
                    (1, job::MAX_PARAMS_BYTES),
                )?
                .unwrap_or(builtin.max_params_bytes),
            max_params_depth: self
                .count(
                    "limits.max_params_depth",
                    raw.max_params_depth,
                    (1, job::MAX_PARAMS_DEPTH),
                )?
                .unwrap_or(builtin.max_params_depth),
            max_output_bytes: self
                .count(
                    "limits.max_output_bytes",
                    raw.max_output_bytes,
                    (0, MAX_OUTPUT_BYTES),
                )?
                .unwrap_or(builtin.max_output_bytes),
            max_plugin_bytes: self
                .count(
                    "limits.max_plugin_bytes",
                    raw.max_plugin_bytes,
                    (1, MAX_PLUGIN_BYTES),
                )?
                .unwrap_or(builtin.max_plugin_bytes),
            kill_grace: self
                .duration(
                    "limits.kill_grace",
                    raw.kill_grace,
                    (Duration::ZERO, MAX_GRACE),
                )?
                .unwrap_or(builtin.kill_grace),
            inspect_timeout: self
                .duration(
                    "limits.inspect_timeout",
                    raw.inspect_timeout,
                    (MIN_INSPECT_TIMEOUT, MAX_INSPECT_TIMEOUT),
                )?
                .unwrap_or(builtin.inspect_timeout),
        })
    }

    /// `[dispatcher]`; the slots also from `--slots` and `JOBHOST_SLOTS`, autostart also from
    /// `JOBHOST_AUTOSTART`.
    fn dispatcher(&self, raw: &RawDispatcher) -> Result<DispatcherSettings, SettingsError> {
        let builtin = DispatcherSettings::default();
        let env_slots = self.env("JOBHOST_SLOTS", "a whole number", |v| {
            v.parse::<usize>().ok()
        })?;
        let slots = match (self.overrides.slots, env_slots) {
            (Some(n), _) => job::check_count("--slots", n, 1, MAX_SLOTS)
                .map_err(|range| SettingsError::OutOfRange { file: None, range })?,
            (None, Some(n)) => job::check_count("JOBHOST_SLOTS", n, 1, MAX_SLOTS)
                .map_err(|range| self.env_range("JOBHOST_SLOTS", range))?,
            (None, None) => self
                .count("dispatcher.slots", raw.slots, (1, MAX_SLOTS))?
                .unwrap_or(builtin.slots),
        };
        Ok(DispatcherSettings {
            slots,
            idle_exit: self
                .duration(
                    "dispatcher.idle_exit",
                    raw.idle_exit,
                    (Duration::ZERO, MAX_IDLE_EXIT),
                )?
                .unwrap_or(builtin.idle_exit),
            shutdown_grace: self
                .duration(
                    "dispatcher.shutdown_grace",
                    raw.shutdown_grace,
                    (Duration::ZERO, job::MAX_TIMEOUT),
                )?
                .unwrap_or(builtin.shutdown_grace),
            lease: self
                .duration("dispatcher.lease", raw.lease, (MIN_LEASE, MAX_GRACE))?
                .unwrap_or(builtin.lease),
            autostart: self
                .env("JOBHOST_AUTOSTART", "true or false", |v| {
                    v.parse::<bool>().ok()
                })?
                .or(raw.autostart)
                .unwrap_or(builtin.autostart),
            runner: self.runner(raw.runner)?,
        })
    }

    /// `dispatcher.runner`, also from `JOBHOST_RUNNER`: `fork` only where it is available.
    fn runner(&self, file: Option<Runner>) -> Result<Runner, SettingsError> {
        let env = self.env("JOBHOST_RUNNER", "exec or fork", Runner::parse)?;
        let runner = env.or(file).unwrap_or(Runner::DEFAULT);
        if runner == Runner::Fork && !cfg!(target_os = "linux") {
            let origin = match env {
                Some(_) => "environment variable JOBHOST_RUNNER".to_owned(),
                None => format!("{}: dispatcher.runner", in_file(self.config_file)),
            };
            return Err(SettingsError::Unavailable {
                origin,
                message: "the fork runner needs Linux; use \"exec\" here".into(),
            });
        }
        Ok(runner)
    }

    /// `[web]`; the admin token also from `JOBHOST_ADMIN_TOKEN`.
    fn web(&self, raw: &RawWeb) -> Result<WebSettings, SettingsError> {
        let builtin = WebSettings::default();
        let env_token = match (self.getenv)("JOBHOST_ADMIN_TOKEN") {
            Some(value) if value.trim().is_empty() => {
                return Err(SettingsError::Env {
                    name: "JOBHOST_ADMIN_TOKEN",
                    value,
                    message: "must not be empty (unset it to have one generated)".into(),
                })
            }
            other => other,
        };
        Ok(WebSettings {
            enabled: raw.enabled.unwrap_or(builtin.enabled),
            listen: raw.listen.unwrap_or(builtin.listen),
            admin_token: env_token.or_else(|| raw.admin_token.clone()),
            trusted_proxies: raw
                .trusted_proxies
                .clone()
                .unwrap_or(builtin.trusted_proxies),
        })
    }

    /// The store: `--store`, `JOBHOST_STORE` or the file's `store`, else SQLite in the state
    /// directory.
    fn store(&self, file: Option<&str>, state_dir: &Path) -> Result<StoreLocation, SettingsError> {
        let given = match (&self.overrides.store, (self.getenv)("JOBHOST_STORE"), file) {
            (Some(url), _, _) => Some(("--store".to_owned(), url.clone())),
            (None, Some(url), _) => Some(("JOBHOST_STORE".to_owned(), url)),
            (None, None, Some(url)) => Some((
                self.config_file
                    .as_ref()
                    .map_or_else(String::new, |f| f.display().to_string()),
                url.to_owned(),
            )),
            (None, None, None) => None,
        };
        match given {
            Some((origin, url)) => {
                StoreLocation::parse(&url).map_err(|source| SettingsError::Store { origin, source })
            }
            None => Ok(StoreLocation::in_state_dir(state_dir)),
        }
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

const SECONDS: &str = "a non-negative number of seconds";
