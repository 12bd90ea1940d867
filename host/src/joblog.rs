//! The two job logs, `background_jobs.log` and `background_jobs_errors.log`, in the line format
//! of the original specification:
//!
//! ```text
//! [2024-11-12 10:00:00] local.INFO: Job started: App\Jobs\SendWelcomeEmail@handle {"params":{"user_id":123},"status":"running"}
//! ```
//!
//! Lines are [`tracing`] events rendered by [`SpecFormatLayer`]: the channel is the environment
//! name, the level uses the spec's names (`DEBUG`, `INFO`, `WARNING`, `ERROR`), and the context is
//! one JSON object with sorted keys. `production` writes INFO and up; any other environment also
//! writes DEBUG, and `local` mirrors every line to stderr. WARNING and ERROR lines (retries,
//! failures, unauthorized attempts) also go to the errors file. Each line is one `write` to a
//! file opened for appending, so several processes can share the logs without tearing lines.
//!
//! A line that cannot be written (a full disk) is not lost silently: the failure is reported
//! on stderr once per episode, counted ([`health`]), and the line kept in a bounded buffer that
//! is written first, in order, when the file can be written again; lines beyond the buffer are
//! counted as dropped and a `Log lines dropped` line marks the gap. [`reopen`] opens every log
//! file of the process again by its path, for logrotate (`jobhost serve` calls it on SIGHUP and
//! SIGUSR1). Each file is one shared [`LogFile`] per process, whichever layers write it.
//!
//! The functions at the bottom ([`started`], [`completed`], ...) are the job lifecycle's
//! vocabulary; everything that logs a job line goes through them.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Write as _,
    fs::{File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use serde::Serialize;
use serde_json::{json, Map, Value};
use tracing::{field::Field, Event, Level, Subscriber};
use tracing_subscriber::{layer::Context, prelude::*, Layer};

use crate::{
    shared::text::{visible, Escape},
    store::{now_millis, Millis},
};

/// The main log's file name.
pub const LOG_FILE: &str = "background_jobs.log";
/// The errors log's file name.
pub const ERRORS_FILE: &str = "background_jobs_errors.log";

/// The most lines kept in memory for one log file that cannot be written.
pub const PENDING_LINES_MAX: usize = 10_000;

/// Why the logs could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open log file {path}")]
pub struct LogOpenError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// How the writing of this process's log files goes: a plain snapshot, for `jobhost stats`
/// and the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogHealth {
    /// Writes that failed since the process started, over all its log files.
    pub failed_writes: u64,
    /// Lines given up on because the buffer of unwritten lines was full.
    pub dropped_lines: u64,
    /// Lines waiting in memory to be written.
    pub pending_lines: u64,
    /// The last write failure: the file and the error. Kept after the file recovers.
    pub last_error: Option<String>,
    /// When (ms since the epoch) the current failure began; `None` while every file writes.
    pub since: Option<Millis>,
}

/// The health of the writing of every log file of this process.
pub fn health() -> LogHealth {
    let mut health = LogHealth::default();
    let mut last_at = None;
    for file in registry().values() {
        let file = lock(file);
        health.failed_writes += file.failed_writes;
        health.dropped_lines += file.dropped_lines;
        health.pending_lines += file.pending.len() as u64;
        if let Some((at, error)) = &file.last_error {
            if last_at < Some(*at) {
                last_at = Some(*at);
                health.last_error = Some(format!("{}: {error}", file.path.display()));
            }
        }
        if let Some(episode) = &file.episode {
            health.since = Some(health.since.map_or(episode.since, |s| s.min(episode.since)));
        }
    }
    health
}

/// Opens every log file of this process again by its path — after logrotate renamed it away,
/// a new file — writes first what could not be written before, and logs `Log files reopened`.
pub fn reopen() {
    let files: Vec<Arc<Mutex<LogFile>>> = registry().values().cloned().collect();
    for file in files {
        let change = lock(&file).reopen(now_millis());
        report(change);
    }
    let context = context([
        ("pid", json!(std::process::id())),
        ("status", json!("reopened")),
    ]);
    tracing::info!(context = context.as_str(), "Log files reopened");
}

/// Every log file of this process, by path.
static FILES: Mutex<BTreeMap<PathBuf, Arc<Mutex<LogFile>>>> = Mutex::new(BTreeMap::new());

fn registry() -> MutexGuard<'static, BTreeMap<PathBuf, Arc<Mutex<LogFile>>>> {
    FILES.lock().unwrap_or_else(PoisonError::into_inner)
}

fn lock(file: &Mutex<LogFile>) -> MutexGuard<'_, LogFile> {
    file.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The shared log file at `path`, opened (created) if this process has not opened it yet.
fn shared(path: PathBuf, env: &str) -> Result<Arc<Mutex<LogFile>>, LogOpenError> {
    let mut files = registry();
    if let Some(file) = files.get(&path) {
        return Ok(Arc::clone(file));
    }
    let file =
        LogFile::open(path.clone(), env, PENDING_LINES_MAX).map_err(|source| LogOpenError {
            path: path.clone(),
            source,
        })?;
    let file = Arc::new(Mutex::new(file));
    files.insert(path, Arc::clone(&file));
    Ok(file)
}

/// One log file: its handle, the lines that could not be written yet, and how writing went.
struct LogFile {
    path: PathBuf,
    /// The environment, for the lines this file writes itself (`Log lines dropped`).
    env: String,
    /// None after a failed (re)open: the next write opens the path.
    file: Option<File>,
    /// Unwritten lines, oldest first; the first may be the unwritten rest of a line.
    pending: VecDeque<Vec<u8>>,
    capacity: usize,
    failed_writes: u64,
    dropped_lines: u64,
    /// Dropped lines not yet marked in the file by a `Log lines dropped` line.
    unmarked_drops: u64,
    last_error: Option<(Millis, String)>,
    episode: Option<Episode>,
}

/// A run of failed writes of one file.
struct Episode {
    since: Millis,
    failed_writes: u64,
    dropped_lines: u64,
}

/// What a write changed about a file's health, for people (on stderr).
#[derive(Debug, PartialEq)]
enum Change {
    /// It could be written, and now cannot.
    Failing { path: PathBuf, error: String },
    /// It could not be written since `since`, and now can.
    Recovered {
        path: PathBuf,
        since: Millis,
        failed_writes: u64,
        dropped_lines: u64,
    },
}

impl LogFile {
    fn open(path: PathBuf, env: &str, capacity: usize) -> io::Result<Self> {
        let file = open_append(&path)?;
        Ok(Self {
            path,
            env: env.to_owned(),
            file: Some(file),
            pending: VecDeque::new(),
            capacity,
            failed_writes: 0,
            dropped_lines: 0,
            unmarked_drops: 0,
            last_error: None,
            episode: None,
        })
    }

    /// Writes what is pending, then `line`; keeps what cannot be written.
    fn write(&mut self, line: &[u8], now: Millis) -> Option<Change> {
        if let Err(error) = self.write_pending(now) {
            self.keep(line);
            return self.failed(&error, now);
        }
        match self.write_out(line) {
            Ok(()) => self.recovered(),
            Err((written, error)) => {
                if written > 0 {
                    // The rest of a line begun: kept whatever the buffer holds, or the file
                    // would get half a line.
                    self.pending.push_back(line[written..].to_vec());
                } else {
                    self.keep(line);
                }
                self.failed(&error, now)
            }
        }
    }

    /// Opens the path again, and writes what is pending.
    fn reopen(&mut self, now: Millis) -> Option<Change> {
        self.file = None;
        match self.write_pending(now) {
            Ok(()) => self.recovered(),
            Err(error) => self.failed(&error, now),
        }
    }

    /// Writes the pending lines, then marks dropped ones; opens the file first if needed.
    fn write_pending(&mut self, now: Millis) -> io::Result<()> {
        self.file()?;
        while let Some(front) = self.pending.front() {
            match self.write_out(&front.clone()) {
                Ok(()) => {
                    self.pending.pop_front();
                }
                Err((written, error)) => {
                    if let Some(front) = self.pending.front_mut() {
                        front.drain(..written);
                    }
                    return Err(error);
                }
            }
        }
        if self.unmarked_drops > 0 {
            let since = self.episode.as_ref().map_or(now, |e| e.since);
            let line = dropped_line(&self.env, &self.path, self.unmarked_drops, since);
            let result = self.write_out(line.as_bytes());
            if let Err((written, _)) = &result {
                if *written == 0 {
                    return result.map_err(|(_, e)| e);
                }
                self.pending.push_back(line.as_bytes()[*written..].to_vec());
            }
            self.unmarked_drops = 0;
            return result.map_err(|(_, e)| e);
        }
        Ok(())
    }

    fn file(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            self.file = Some(open_append(&self.path)?);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("log file not open"))
    }

    /// Writes all of `bytes`, or says how much was written before the error.
    fn write_out(&mut self, bytes: &[u8]) -> Result<(), (usize, io::Error)> {
        let file = self.file().map_err(|e| (0, e))?;
        let mut written = 0;
        while written < bytes.len() {
            match file.write(&bytes[written..]) {
                Ok(0) => return Err((written, io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((written, e)),
            }
        }
        Ok(())
    }

    /// Keeps `line` to write later, or counts it dropped when the buffer is full.
    fn keep(&mut self, line: &[u8]) {
        if self.pending.len() < self.capacity {
            self.pending.push_back(line.to_vec());
            return;
        }
        self.dropped_lines += 1;
        self.unmarked_drops += 1;
        if let Some(episode) = &mut self.episode {
            episode.dropped_lines += 1;
        }
    }

    fn failed(&mut self, error: &io::Error, now: Millis) -> Option<Change> {
        self.failed_writes += 1;
        self.last_error = Some((now, error.to_string()));
        let first = self.episode.is_none();
        let episode = self.episode.get_or_insert(Episode {
            since: now,
            failed_writes: 0,
            dropped_lines: 0,
        });
        episode.failed_writes += 1;
        first.then(|| Change::Failing {
            path: self.path.clone(),
            error: error.to_string(),
        })
    }

    fn recovered(&mut self) -> Option<Change> {
        let episode = self.episode.take()?;
        Some(Change::Recovered {
            path: self.path.clone(),
            since: episode.since,
            failed_writes: episode.failed_writes,
            dropped_lines: episode.dropped_lines,
        })
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// The `Log lines dropped` (WARNING) line that marks where `dropped` lines are missing.
fn dropped_line(env: &str, path: &Path, dropped: u64, since: Millis) -> String {
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    let context = context([
        ("dropped_lines", json!(dropped)),
        (
            "failing_since",
            json!(crate::shared::text::local_time(since)),
        ),
        ("status", json!("dropped")),
    ]);
    render(
        env,
        &Level::WARN,
        &format!("Log lines dropped: {file}"),
        Some(&context),
    )
}

/// Tells people on stderr that a log file stopped or started being written again.
fn report(change: Option<Change>) {
    let message = match change {
        None => return,
        Some(Change::Failing { path, error }) => format!(
            "jobhost: cannot write log file {}: {error}; its lines are kept in memory (up to \
             {PENDING_LINES_MAX}) and written when it can be written again",
            path.display()
        ),
        Some(Change::Recovered {
            path,
            since,
            failed_writes,
            dropped_lines,
        }) => format!(
            "jobhost: log file {} is written again, after {failed_writes} failed writes since \
             {}; {dropped_lines} lines were dropped",
            path.display(),
            crate::shared::text::local_time(since).unwrap_or_default()
        ),
    };
    let _ = writeln!(io::stderr().lock(), "{message}");
}

/// Renders events as spec-format lines into the two log files.
pub struct SpecFormatLayer {
    env: String,
    max_level: Level,
    mirror_to_stderr: bool,
    all: Arc<Mutex<LogFile>>,
    errors: Arc<Mutex<LogFile>>,
}

impl SpecFormatLayer {
    /// Opens (creating) both log files in `log_dir` for environment `env`.
    pub fn open(log_dir: &Path, env: &str) -> Result<Self, LogOpenError> {
        Ok(Self {
            env: env.to_owned(),
            max_level: if env == "production" {
                Level::INFO
            } else {
                Level::DEBUG
            },
            mirror_to_stderr: env == "local",
            all: shared(log_dir.join(LOG_FILE), env)?,
            errors: shared(log_dir.join(ERRORS_FILE), env)?,
        })
    }

    /// Installs this layer as the process's global subscriber.
    pub fn install(self) {
        // A second install (tests calling twice) keeps the first; that is fine.
        let _ = tracing_subscriber::registry().with(self).try_init();
    }

    /// This layer as a dispatch of its own, for a library that must log the job lines
    /// whatever subscriber its application installed (see `tracing::dispatcher::with_default`).
    pub fn into_dispatch(self) -> tracing::Dispatch {
        tracing::Dispatch::new(tracing_subscriber::registry().with(self))
    }
}

/// The spec's name for a level.
fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    context: Option<String>,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "context" => self.context = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "context" => self.context = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl<S: Subscriber> Layer<S> for SpecFormatLayer {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        *metadata.level() <= self.max_level
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > self.max_level {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = render(
            &self.env,
            &level,
            &fields.message,
            fields.context.as_deref(),
        );
        let now = now_millis();
        report(lock(&self.all).write(line.as_bytes(), now));
        if level <= Level::WARN {
            report(lock(&self.errors).write(line.as_bytes(), now));
        }
        if self.mirror_to_stderr {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// One spec-format line, newline included. Characters that would not show as themselves (a
/// right-to-left override in a param, a zero-width space in an error) are written as escapes
/// ([`crate::shared::text::visible`]): `\u{202E}` in the message, `\u202E` in the JSON context, which
/// stays JSON with the exact value.
fn render(env: &str, level: &Level, message: &str, context: Option<&str>) -> String {
    let mut line = String::with_capacity(128);
    let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
    let message = visible(message, Escape::Text);
    let _ = write!(line, "[{now}] {env}.{}: {message}", level_name(level));
    if let Some(context) = context {
        line.push(' ');
        line.push_str(&visible(context, Escape::Json));
    }
    line.push('\n');
    line
}

/// A context object with the spec's keys; `serde_json::Map` keeps them sorted.
fn context(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> String {
    Value::Object(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<Map<_, _>>(),
    )
    .to_string()
}

/// `Job started` (INFO), as each attempt starts.
pub fn started(job: &str, params: &Value) {
    let context = context([("params", params.clone()), ("status", json!("running"))]);
    tracing::info!(context = context.as_str(), "Job started: {job}");
}

/// `Job completed` (INFO).
pub fn completed(job: &str, params: &Value) {
    let context = context([("params", params.clone()), ("status", json!("completed"))]);
    tracing::info!(context = context.as_str(), "Job completed: {job}");
}

/// `Job failed` (ERROR): the job ended without success and will not be retried.
pub fn failed(job: &str, params: &Value, error: &str) {
    let context = context([
        ("error", json!(error)),
        ("params", params.clone()),
        ("status", json!("failed")),
    ]);
    tracing::error!(context = context.as_str(), "Job failed: {job}");
}

/// `Job ID quarantined` (ERROR): a due job whose stored row cannot be read was settled failed
/// without running. Named by id: its class and method may be what cannot be read.
pub fn quarantined(id: i64, reason: &str) {
    let context = context([
        ("error", json!(reason)),
        ("job_id", json!(id)),
        ("status", json!("failed")),
    ]);
    tracing::error!(context = context.as_str(), "Job {id} quarantined");
}

/// `Job cancelled` (WARNING): the job was cancelled and will not be retried.
pub fn cancelled(job: &str, params: &Value) {
    let context = context([("params", params.clone()), ("status", json!("cancelled"))]);
    tracing::warn!(context = context.as_str(), "Job cancelled: {job}");
}

/// `Job retrying` (WARNING): attempt `attempt` failed with `error`; attempt `attempt + 1`
/// follows after `delay`.
pub fn retrying(job: &str, params: &Value, attempt: u32, error: &str, delay: std::time::Duration) {
    let context = context([
        ("attempt", json!(attempt)),
        ("error", json!(error)),
        ("params", params.clone()),
        ("retry_in_seconds", json!(delay.as_secs_f64())),
        ("status", json!("retrying")),
    ]);
    tracing::warn!(context = context.as_str(), "Job retrying: {job}");
}

/// `Unauthorized job execution attempt` (ERROR): the allowlist refused the job.
pub fn unauthorized(job: &str) {
    let context = context([("status", json!("unauthorized"))]);
    tracing::error!(
        context = context.as_str(),
        "Unauthorized job execution attempt: {job}"
    );
}

/// `Job not found` (ERROR): approved, but no plugin offers the class or method.
pub fn not_found(job: &str, error: &str) {
    let context = context([("error", json!(error)), ("status", json!("not_found"))]);
    tracing::error!(context = context.as_str(), "Job not found: {job}");
}

/// `Job queued` (INFO): the job was stored and will run at `run_at` (ms since the epoch).
pub fn queued(job: &str, id: i64, params: &Value, priority: &str, delay: std::time::Duration) {
    let context = context([
        ("delay_seconds", json!(delay.as_secs_f64())),
        ("job_id", json!(id)),
        ("params", params.clone()),
        ("priority", json!(priority)),
        (
            "status",
            json!(if delay.is_zero() {
                "queued"
            } else {
                "scheduled"
            }),
        ),
    ]);
    tracing::info!(context = context.as_str(), "Job queued: {job}");
}

/// `Job requeued` (WARNING): the attempt was interrupted by the dispatcher stopping; the job
/// runs again without losing an attempt.
pub fn requeued(job: &str, params: &Value, reason: &str) {
    let context = context([
        ("error", json!(reason)),
        ("params", params.clone()),
        ("status", json!("queued")),
    ]);
    tracing::warn!(context = context.as_str(), "Job requeued: {job}");
}

/// A dispatcher's start or stop (INFO).
pub fn dispatcher(message: &str, slots: usize, state_dir: &std::path::Path) {
    let context = context([
        ("pid", json!(std::process::id())),
        ("slots", json!(slots)),
        ("state_dir", json!(state_dir)),
    ]);
    tracing::info!(context = context.as_str(), "{message}");
}

/// `Plugin version active` (INFO): the version `hash` of a plugin file serves new jobs of its
/// `classes` from now on, in place of `previous`.
pub fn plugin_active(file: &str, hash: &str, classes: &[&str], previous: Option<&str>) {
    let context = context([
        ("classes", json!(classes)),
        ("file", json!(file)),
        ("hash", json!(hash)),
        ("previous_hash", json!(previous)),
        ("status", json!("active")),
    ]);
    tracing::info!(context = context.as_str(), "Plugin version active: {file}");
}

/// `Plugin rejected` (ERROR): a new or changed plugin file is not usable; `serving` is the
/// hash of the previous version, which keeps serving, if there is one.
pub fn plugin_rejected(file: &str, reason: &str, serving: Option<&str>) {
    let context = context([
        ("error", json!(reason)),
        ("file", json!(file)),
        ("serving_hash", json!(serving)),
        ("status", json!("rejected")),
    ]);
    tracing::error!(context = context.as_str(), "Plugin rejected: {file}");
}

/// `Plugin removed` (WARNING): a plugin file left the plugin directory; its `classes` (of the
/// version `hash`) are no longer accepted for new jobs.
pub fn plugin_removed(file: &str, hash: &str, classes: &[&str]) {
    let context = context([
        ("classes", json!(classes)),
        ("file", json!(file)),
        ("hash", json!(hash)),
        ("status", json!("removed")),
    ]);
    tracing::warn!(context = context.as_str(), "Plugin removed: {file}");
}

/// `Plugin class offered twice` (WARNING): several files offer `class`; the first serves.
pub fn plugin_conflict(class: &str, files: &[std::path::PathBuf]) {
    let context = context([
        ("class", json!(class)),
        ("files", json!(files)),
        ("serving", json!(files.first())),
        ("status", json!("conflict")),
    ]);
    tracing::warn!(
        context = context.as_str(),
        "Plugin class offered twice: {class}"
    );
}

/// `Allowlist reloaded` (INFO): a new version of the allowlist is in force, approving
/// `classes` classes; a WARNING when that is none (the file was emptied).
pub fn allowlist_reloaded(file: &str, classes: usize) {
    let context = context([
        ("classes", json!(classes)),
        ("file", json!(file)),
        ("status", json!("active")),
    ]);
    if classes == 0 {
        tracing::warn!(
            context = context.as_str(),
            "Allowlist reloaded: {file} approves nothing"
        );
    } else {
        tracing::info!(context = context.as_str(), "Allowlist reloaded: {file}");
    }
}

/// `Allowlist removed` (ERROR): the allowlist file no longer exists, so nothing is approved:
/// queued jobs are refused when they start, new ones when they are requested. `revoked` when a
/// version was in force until then.
pub fn allowlist_removed(file: &str, revoked: bool) {
    let context = context([
        ("file", json!(file)),
        ("revoked", json!(revoked)),
        ("status", json!("removed")),
    ]);
    tracing::error!(
        context = context.as_str(),
        "Allowlist removed: {file}; nothing is approved until it exists again"
    );
}

/// `Allowlist rejected` (ERROR): the allowlist file is not valid; the previous version stays
/// in force when `kept`.
pub fn allowlist_rejected(file: &str, error: &str, kept: bool) {
    let context = context([
        ("error", json!(error)),
        ("file", json!(file)),
        ("previous_kept", json!(kept)),
        ("status", json!("rejected")),
    ]);
    tracing::error!(context = context.as_str(), "Allowlist rejected: {file}");
}

/// `Failed dashboard login` (WARNING): a wrong admin token was offered from `ip`.
pub fn failed_login(ip: &str) {
    let context = context([("ip", json!(ip)), ("status", json!("refused"))]);
    tracing::warn!(context = context.as_str(), "Failed dashboard login");
}

/// What the DEBUG line of a finished attempt says.
#[derive(Debug, Clone, Copy)]
pub struct FinishedAttempt<'a> {
    /// The attempt number.
    pub attempt: u32,
    /// Its worker's pid.
    pub pid: u32,
    /// How long it ran.
    pub duration: std::time::Duration,
    /// How it ended, as the host names outcomes (`completed`, `crashed: SIGSEGV`, ...).
    pub outcome: &'a str,
    /// Where its output is kept.
    pub output: &'a Path,
}

/// A DEBUG line with the details of a finished attempt of job `id`.
pub fn attempt_finished(job: &str, id: i64, attempt: &FinishedAttempt<'_>) {
    let context = context([
        ("attempt", json!(attempt.attempt)),
        ("job_id", json!(id)),
        ("duration_ms", json!(attempt.duration.as_millis() as u64)),
        ("outcome", json!(attempt.outcome)),
        ("output", json!(attempt.output)),
        ("pid", json!(attempt.pid)),
    ]);
    tracing::debug!(context = context.as_str(), "Attempt finished: {job}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log file at a path that is a symlink to `/dev/full`: every write fails with ENOSPC,
    /// as on a full disk (root included).
    #[cfg(target_os = "linux")]
    fn full_disk_log(dir: &Path, capacity: usize) -> (PathBuf, LogFile) {
        let path = dir.join(LOG_FILE);
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let file = LogFile::open(path.clone(), "local", capacity).unwrap();
        (path, file)
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_log_file_that_cannot_be_written_keeps_its_lines_and_writes_them_first_when_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut file) = full_disk_log(dir.path(), 10);
        let Some(Change::Failing { error, .. }) = file.write(b"one\n", 1_000) else {
            panic!("the first failure is reported")
        };
        assert!(error.contains("No space left on device"), "{error}");
        assert_eq!(
            file.write(b"two\n", 2_000),
            None,
            "reported once per episode"
        );
        assert_eq!((file.failed_writes, file.pending.len()), (2, 2));
        assert_eq!(file.episode.as_ref().map(|e| e.since), Some(1_000));

        // The disk has room again: the path is a file that can be written.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            file.reopen(3_000),
            Some(Change::Recovered {
                path: path.clone(),
                since: 1_000,
                failed_writes: 2,
                dropped_lines: 0
            })
        );
        assert_eq!(file.write(b"three\n", 4_000), None);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\nthree\n");
        assert!(file.pending.is_empty() && file.episode.is_none());
        assert_eq!(file.failed_writes, 2, "counted for good");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn lines_beyond_the_buffer_are_counted_dropped_and_the_gap_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut file) = full_disk_log(dir.path(), 2);
        for line in ["1\n", "2\n", "3\n", "4\n", "5\n"] {
            file.write(line.as_bytes(), 1_000);
        }
        assert_eq!((file.pending.len(), file.dropped_lines), (2, 3));

        // Recovery by the next write rather than a reopen: the path now names a file.
        std::fs::remove_file(&path).unwrap();
        file.file = None;
        let Some(Change::Recovered { dropped_lines, .. }) = file.write(b"6\n", 2_000) else {
            panic!("recovery is reported")
        };
        assert_eq!(dropped_lines, 3);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!((lines[0], lines[1], lines[3]), ("1", "2", "6"));
        assert!(
            lines[2].contains(
                "local.WARNING: Log lines dropped: background_jobs.log {\"dropped_lines\":3,"
            ),
            "{text}"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn health_sums_the_files_of_the_process_and_says_since_when_they_fail() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.path().join(ERRORS_FILE)).unwrap();
        let layer = SpecFormatLayer::open(dir.path(), "production").unwrap();
        assert_eq!(health(), LogHealth::default());
        tracing::dispatcher::with_default(&layer.into_dispatch(), || {
            tracing::info!("fine");
            tracing::error!("not in the errors file");
            tracing::error!("nor this");
        });
        let health = health();
        assert_eq!(
            (
                health.failed_writes,
                health.pending_lines,
                health.dropped_lines
            ),
            (2, 2, 0)
        );
        assert!(health.since.is_some());
        let error = health.last_error.unwrap();
        assert!(
            error.contains(ERRORS_FILE) && error.contains("No space left on device"),
            "{error}"
        );
        let main = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(main.lines().count(), 3, "the main file is written: {main}");
    }

    #[test]
    fn lines_follow_the_spec_format() {
        let context = context([
            ("params", json!({"user_id": 123})),
            ("status", json!("running")),
        ]);
        let line = render(
            "local",
            &Level::INFO,
            r"Job started: App\Jobs\SendWelcomeEmail@handle",
            Some(&context),
        );
        let (stamp, rest) = line.split_at(22);
        assert!(stamp.starts_with('[') && stamp.ends_with("] "), "{stamp:?}");
        chrono::NaiveDateTime::parse_from_str(&stamp[1..20], "%Y-%m-%d %H:%M:%S")
            .expect("timestamp in the spec's format");
        assert_eq!(
            rest,
            "local.INFO: Job started: App\\Jobs\\SendWelcomeEmail@handle {\"params\":{\"user_id\":123},\"status\":\"running\"}\n"
        );
    }

    #[test]
    fn hidden_characters_are_escaped_and_the_context_stays_exact_json() {
        let params = json!({"file": "\u{202E}exe.txt\u{200B}"});
        let context = context([("params", params.clone())]);
        let line = render("local", &Level::INFO, "Job x\u{2066}: A@b", Some(&context));
        assert!(
            line.ends_with(
                "local.INFO: Job x\\u{2066}: A@b {\"params\":{\"file\":\"\\u202Eexe.txt\\u200B\"}}\n"
            ),
            "{line}"
        );
        let json = &line[line.find(" {\"").unwrap() + 1..];
        let back: Value = serde_json::from_str(json).unwrap();
        assert_eq!(back["params"], params);
    }

    #[test]
    fn warnings_use_the_spec_level_name_and_sorted_keys() {
        let context = context([
            ("status", json!("failed")),
            ("error", json!("boom")),
            ("params", json!({})),
        ]);
        let line = render("production", &Level::WARN, "x", Some(&context));
        assert!(line.ends_with("] production.WARNING: x {\"error\":\"boom\",\"params\":{},\"status\":\"failed\"}\n"), "{line}");
    }
}
