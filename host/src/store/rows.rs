//! What the SQL backends share: the columns they select, how a row becomes a record, and the
//! small rules every backend applies alike. Both schemas name their columns the same and store
//! the same values (integers, text and one flag), so one decoder serves both.

use std::time::Duration;

use serde_json::Value;

use super::{
    Attempt, AttemptEnd, CancelOutcome, DispatcherRecord, JobId, JobRecord, JobState, Millis,
    NewJob, Next, Stats, StoreError,
};
use crate::job::Priority;

/// The `jobs` columns, in the order [`job_at`] reads them.
pub(super) const JOB_COLUMNS: &str = "id, class, method, params, priority, state, attempts, \
    max_attempts, retries, retry_delay_ms, timeout_ms, plugin, run_at, created_at, started_at, \
    finished_at, cancel_requested, last_error, result";

/// How many columns [`JOB_COLUMNS`] lists.
pub(super) const JOB_COLUMN_COUNT: usize = 19;

/// The `attempts` columns, in the order [`attempt_at`] reads them.
pub(super) const ATTEMPT_COLUMNS: &str = "job_id, attempt, started_at, finished_at, outcome, \
    error, output_path, output_bytes, pid, plugin_hash, dispatcher";

/// Selects the registered dispatchers as [`dispatcher_at`] reads them, each with its count of
/// unsettled attempts; a backend adds its filter and `ORDER BY d.id`.
pub(super) const SELECT_DISPATCHERS: &str = "SELECT d.id, d.host, d.pid, d.slots, d.state_dir, \
    d.started_at, d.heartbeat_at, (SELECT COUNT(*) FROM attempts a \
    WHERE a.dispatcher = d.id AND a.finished_at IS NULL) FROM dispatchers d";

/// `columns` (a list like [`JOB_COLUMNS`]) each prefixed with `alias.`.
pub(super) fn prefixed(columns: &str, alias: &str) -> String {
    columns
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A result row, as the decoders below read it.
pub(super) trait Columns {
    /// The backend's error.
    type Error;
    /// An integer column, or NULL.
    fn int(&self, index: usize) -> Result<Option<i64>, Self::Error>;
    /// A text column, or NULL.
    fn text(&self, index: usize) -> Result<Option<String>, Self::Error>;
    /// A boolean column.
    fn flag(&self, index: usize) -> Result<bool, Self::Error>;
    /// The error for a column whose value is not what jobhost stores there.
    fn invalid(&self, index: usize, what: &str) -> Self::Error;
}

/// A column that is never NULL.
pub(super) fn int<R: Columns>(row: &R, index: usize) -> Result<i64, R::Error> {
    row.int(index)?
        .ok_or_else(|| row.invalid(index, "unexpected NULL"))
}

/// A text column that is never NULL.
pub(super) fn text<R: Columns>(row: &R, index: usize) -> Result<String, R::Error> {
    row.text(index)?
        .ok_or_else(|| row.invalid(index, "unexpected NULL"))
}

fn small<R: Columns>(row: &R, index: usize) -> Result<u32, R::Error> {
    u32::try_from(int(row, index)?).map_err(|_| row.invalid(index, "out of range"))
}

fn json<R: Columns>(row: &R, index: usize, text: String) -> Result<Value, R::Error> {
    serde_json::from_str(&text).map_err(|_| row.invalid(index, "not JSON"))
}

fn duration(ms: i64) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

/// A job from the [`JOB_COLUMNS`] starting at column `base`.
pub(super) fn job_at<R: Columns>(row: &R, base: usize) -> Result<JobRecord, R::Error> {
    let state = text(row, base + 5)?;
    Ok(JobRecord {
        id: int(row, base)?,
        class: text(row, base + 1)?,
        method: text(row, base + 2)?,
        params: json(row, base + 3, text(row, base + 3)?)?,
        priority: priority_from_i64(int(row, base + 4)?),
        state: JobState::parse(&state).ok_or_else(|| row.invalid(base + 5, "unknown state"))?,
        attempts: small(row, base + 6)?,
        max_attempts: small(row, base + 7)?,
        retries: small(row, base + 8)?,
        retry_delay: duration(int(row, base + 9)?),
        timeout: duration(int(row, base + 10)?),
        plugin: text(row, base + 11)?.into(),
        run_at: int(row, base + 12)?,
        created_at: int(row, base + 13)?,
        started_at: row.int(base + 14)?,
        finished_at: row.int(base + 15)?,
        cancel_requested: row.flag(base + 16)?,
        last_error: row.text(base + 17)?,
        result: match row.text(base + 18)? {
            Some(result) => Some(json(row, base + 18, result)?),
            None => None,
        },
    })
}

/// An attempt from the [`ATTEMPT_COLUMNS`] starting at column `base`.
pub(super) fn attempt_at<R: Columns>(row: &R, base: usize) -> Result<Attempt, R::Error> {
    Ok(Attempt {
        job_id: int(row, base)?,
        attempt: small(row, base + 1)?,
        started_at: int(row, base + 2)?,
        finished_at: row.int(base + 3)?,
        outcome: row.text(base + 4)?,
        error: row.text(base + 5)?,
        output_path: row.text(base + 6)?.map(Into::into),
        output_bytes: row.int(base + 7)?.map(|b| b.max(0) as u64),
        pid: row
            .int(base + 8)?
            .map(|pid| u32::try_from(pid).map_err(|_| row.invalid(base + 8, "out of range")))
            .transpose()?,
        plugin_hash: row.text(base + 9)?,
        dispatcher: row.int(base + 10)?,
    })
}

/// A dispatcher from a row of [`SELECT_DISPATCHERS`].
pub(super) fn dispatcher_at<R: Columns>(row: &R) -> Result<DispatcherRecord, R::Error> {
    Ok(DispatcherRecord {
        id: int(row, 0)?,
        host: text(row, 1)?,
        pid: small(row, 2)?,
        slots: small(row, 3)?,
        state_dir: text(row, 4)?,
        started_at: int(row, 5)?,
        heartbeat_at: int(row, 6)?,
        running: small(row, 7)?,
    })
}

/// A priority as stored: the higher, the sooner.
pub(super) fn priority_to_i64(p: Priority) -> i64 {
    match p {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
    }
}

fn priority_from_i64(v: i64) -> Priority {
    match v {
        2 => Priority::High,
        0 => Priority::Low,
        _ => Priority::Normal,
    }
}

/// A duration as stored, in milliseconds.
pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A new job's row, as every backend inserts it.
pub(super) struct NewRow {
    pub class: String,
    pub method: String,
    pub params: String,
    pub priority: i64,
    /// Queued when due at once, else scheduled.
    pub state: &'static str,
    pub max_attempts: i64,
    pub retries: i64,
    pub retry_delay_ms: i64,
    pub timeout_ms: i64,
    pub plugin: String,
    pub run_at: Millis,
}

impl NewRow {
    /// The row for `job` enqueued at `now`: due at `now + delay`.
    pub fn of(job: &NewJob, now: Millis) -> Self {
        let spec = &job.spec;
        let run_at = now.saturating_add(millis(spec.delay));
        let state = if run_at > now {
            JobState::Scheduled
        } else {
            JobState::Queued
        };
        Self {
            class: spec.class.clone(),
            method: spec.method.clone(),
            params: spec.params.to_string(),
            priority: priority_to_i64(spec.priority),
            state: state.as_str(),
            max_attempts: i64::from(spec.retries) + 1,
            retries: i64::from(spec.retries),
            retry_delay_ms: millis(spec.retry_delay),
            timeout_ms: millis(spec.timeout),
            plugin: job.plugin.to_string_lossy().into_owned(),
            run_at,
        }
    }
}

/// What settling an attempt writes into its job.
pub(super) struct Settled {
    pub state: JobState,
    /// The new `run_at`, if it changes.
    pub run_at: Option<Millis>,
    /// Set when the job reaches a terminal state.
    pub finished_at: Option<Millis>,
    /// The result, as JSON text.
    pub result: Option<String>,
    /// Attempts added to the budget: an interrupted attempt does not use one up.
    pub extra_attempts: i64,
}

impl Settled {
    /// The job's new values after an attempt that ended as `end`, moving on to `next`.
    pub fn of(end: &AttemptEnd, next: &Next) -> Self {
        let (state, run_at, result, extra_attempts) = match next {
            Next::Complete(result) => (JobState::Completed, None, Some(result.to_string()), 0),
            Next::Retry(at) => (JobState::Scheduled, Some(*at), None, 0),
            Next::Fail => (JobState::Failed, None, None, 0),
            Next::Cancel => (JobState::Cancelled, None, None, 0),
            Next::Requeue => (JobState::Queued, Some(end.finished_at), None, 1),
        };
        Self {
            state,
            run_at,
            finished_at: state.is_terminal().then_some(end.finished_at),
            result,
            extra_attempts,
        }
    }
}

/// What asking to cancel a job in `state` comes to.
pub(super) fn cancel_outcome(state: JobState) -> CancelOutcome {
    match state {
        JobState::Queued | JobState::Scheduled => CancelOutcome::Cancelled,
        JobState::Running => CancelOutcome::Requested,
        finished => CancelOutcome::AlreadyFinished(finished),
    }
}

/// Refuses to retry job `id` unless it failed or was cancelled.
pub(super) fn check_retryable(id: JobId, state: JobState) -> Result<(), StoreError> {
    match state {
        JobState::Failed | JobState::Cancelled => Ok(()),
        state => Err(StoreError::WrongState {
            id,
            state,
            what: "only a failed or cancelled job can be retried",
        }),
    }
}

/// Counts by state from `(state, count)` pairs; states without jobs count zero.
pub(super) fn stats(counts: impl IntoIterator<Item = (String, i64)>) -> Stats {
    let mut stats = Stats::empty();
    for (state, count) in counts {
        stats.by_state.insert(state, count.max(0) as u64);
    }
    stats
}
