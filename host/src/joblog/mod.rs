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
//! SIGUSR1). Each file is one shared `LogFile` per process (`file.rs`), whichever layers write
//! it; `format.rs` renders the lines.
//!
//! The functions here ([`started`], [`completed`], ...) are the vocabulary of the logs:
//! everything that logs a job, plugin, allowlist or dashboard line goes through them, and they
//! take plain fields, never another layer's types.

mod file;
mod format;

pub use file::{health, reopen, LogOpenError};
pub use format::SpecFormatLayer;

use std::{fmt::Write as _, path::Path};

use serde_json::{json, Map, Value};
use tracing::Level;

use crate::shared::text::{visible, Escape};

/// The main log's file name.
pub const LOG_FILE: &str = "background_jobs.log";
/// The errors log's file name.
pub const ERRORS_FILE: &str = "background_jobs_errors.log";

/// The most lines kept in memory for one log file that cannot be written.
pub const PENDING_LINES_MAX: usize = 10_000;

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

/// `Attempt output not saved` (WARNING): some of attempt `attempt`'s output could not be
/// written to its file (`error`, a full disk); the attempt's outcome stands.
pub fn output_not_saved(job: &str, id: i64, attempt: u32, error: &str) {
    let context = context([
        ("attempt", json!(attempt)),
        ("error", json!(error)),
        ("job_id", json!(id)),
        ("status", json!("output_lost")),
    ]);
    tracing::warn!(context = context.as_str(), "Attempt output not saved: {job}");
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
    /// Where its output is kept; `None` when it printed nothing (it has no output file).
    pub output: Option<&'a Path>,
}

/// A DEBUG line with the details of a finished attempt of job `id`; its `output` only when it
/// printed something.
pub fn attempt_finished(job: &str, id: i64, attempt: &FinishedAttempt<'_>) {
    let output = attempt.output.map(|path| ("output", json!(path)));
    let context = context(
        [
            ("attempt", json!(attempt.attempt)),
            ("job_id", json!(id)),
            ("duration_ms", json!(attempt.duration.as_millis() as u64)),
            ("outcome", json!(attempt.outcome)),
            ("pid", json!(attempt.pid)),
        ]
        .into_iter()
        .chain(output),
    );
    tracing::debug!(context = context.as_str(), "Attempt finished: {job}");
}
