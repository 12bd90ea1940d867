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
//! The functions at the bottom ([`started`], [`completed`], ...) are the job lifecycle's
//! vocabulary; everything that logs a job line goes through them.

use std::{
    fmt::Write as _,
    fs::{File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
};

use serde_json::{json, Map, Value};
use tracing::{field::Field, Event, Level, Subscriber};
use tracing_subscriber::{layer::Context, prelude::*, Layer};

/// The main log's file name.
pub const LOG_FILE: &str = "background_jobs.log";
/// The errors log's file name.
pub const ERRORS_FILE: &str = "background_jobs_errors.log";

/// Why the logs could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open log file {path}")]
pub struct LogOpenError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Renders events as spec-format lines into the two log files.
pub struct SpecFormatLayer {
    env: String,
    max_level: Level,
    mirror_to_stderr: bool,
    all: File,
    errors: File,
}

impl SpecFormatLayer {
    /// Opens (creating) both log files in `log_dir` for environment `env`.
    pub fn open(log_dir: &Path, env: &str) -> Result<Self, LogOpenError> {
        let open = |name: &str| {
            let path = log_dir.join(name);
            std::fs::create_dir_all(log_dir)
                .and_then(|()| OpenOptions::new().create(true).append(true).open(&path))
                .map_err(|source| LogOpenError { path, source })
        };
        Ok(Self {
            env: env.to_owned(),
            max_level: if env == "production" {
                Level::INFO
            } else {
                Level::DEBUG
            },
            mirror_to_stderr: env == "local",
            all: open(LOG_FILE)?,
            errors: open(ERRORS_FILE)?,
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
        // A log line that cannot be written has nowhere better to go.
        let _ = (&self.all).write_all(line.as_bytes());
        if level <= Level::WARN {
            let _ = (&self.errors).write_all(line.as_bytes());
        }
        if self.mirror_to_stderr {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// One spec-format line, newline included.
fn render(env: &str, level: &Level, message: &str, context: Option<&str>) -> String {
    let mut line = String::with_capacity(128);
    let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
    let _ = write!(line, "[{now}] {env}.{}: {message}", level_name(level));
    if let Some(context) = context {
        line.push(' ');
        line.push_str(context);
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

/// `Plugin version active` (INFO): a plugin file's new version serves new jobs of its
/// classes from now on.
pub fn plugin_active(file: &str, version: &crate::inventory::Version, previous: Option<&str>) {
    let classes: Vec<&str> = version.classes.iter().map(|c| c.name.as_str()).collect();
    let context = context([
        ("classes", json!(classes)),
        ("file", json!(file)),
        ("hash", json!(version.hash)),
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

/// `Plugin removed` (WARNING): a plugin file left the plugin directory; its classes are no
/// longer accepted for new jobs.
pub fn plugin_removed(file: &str, version: &crate::inventory::Version) {
    let classes: Vec<&str> = version.classes.iter().map(|c| c.name.as_str()).collect();
    let context = context([
        ("classes", json!(classes)),
        ("file", json!(file)),
        ("hash", json!(version.hash)),
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

/// `Allowlist reloaded` (INFO): a new version of the allowlist is in force.
pub fn allowlist_reloaded(file: &str) {
    let context = context([("file", json!(file)), ("status", json!("active"))]);
    tracing::info!(context = context.as_str(), "Allowlist reloaded: {file}");
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

/// A DEBUG line with the details of a finished attempt.
pub fn attempt_finished(job: &str, id: i64, record: &crate::attempt::AttemptRecord) {
    let context = context([
        ("attempt", json!(record.attempt)),
        ("job_id", json!(id)),
        ("duration_ms", json!(record.duration.as_millis() as u64)),
        ("outcome", json!(record.outcome.label())),
        ("output", json!(record.output.path)),
        ("pid", json!(record.pid)),
    ]);
    tracing::debug!(context = context.as_str(), "Attempt finished: {job}");
}

#[cfg(test)]
mod tests {
    use super::*;

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
