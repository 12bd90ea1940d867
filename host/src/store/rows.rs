//! What the SQL backends share: the columns they select, how a row becomes a record, and the
//! small rules every backend applies alike. Both schemas name their columns the same and store
//! the same values (integers, text and one flag), so one decoder serves both.

use std::time::Duration;

use serde_json::Value;

use super::{
    Attempt, AttemptEnd, CancelOutcome, DispatcherRecord, JobId, JobRecord, JobState, Millis,
    NewJob, Next, Stats, StoreError,
};
use crate::job::{Priority, MAX_ATTEMPTS, MAX_RETRIES};

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
/// Which rows [`crate::store::Store::lost_attempts`] reads: every attempt settled `lost`, with
/// its job, `jobs j` and `attempts a` joined.
pub(super) const FROM_LOST_ATTEMPTS: &str = "FROM attempts a JOIN jobs j ON j.id = a.job_id \
    WHERE a.outcome = 'lost' ORDER BY a.job_id, a.attempt";

/// Which rows [`crate::store::Store::running`] reads: every running job with its current
/// attempt.
pub(super) const FROM_RUNNING: &str = "FROM jobs j JOIN attempts a ON a.job_id = j.id \
    AND a.attempt = j.attempts WHERE j.state = 'running' ORDER BY j.id";

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

/// A result row, as the decoders below read it. Each getter says, when the column does not
/// hold what its type asks for, what it holds instead (`holds "abc", not an integer`).
pub(super) trait Columns {
    /// An integer column, or NULL.
    fn int(&self, index: usize) -> Result<Option<i64>, String>;
    /// A text column, or NULL.
    fn text(&self, index: usize) -> Result<Option<String>, String>;
    /// A boolean column.
    fn flag(&self, index: usize) -> Result<bool, String>;
    /// The column's name.
    fn name(&self, index: usize) -> String;
}

/// A column whose value is not what jobhost stores there: written by hand, by a bug, or by
/// another program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BadColumn(String);

impl std::fmt::Display for BadColumn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<BadColumn> for StoreError {
    fn from(bad: BadColumn) -> Self {
        StoreError::Query(format!("a stored row cannot be read: {bad}"))
    }
}

/// Reads the columns of one row from `base` on, noting every column that does not hold what
/// jobhost stores there and giving a stand-in for it, so that one bad row can still be shown
/// (with its problem) rather than fail a whole listing.
struct Reader<'r, R> {
    row: &'r R,
    base: usize,
    problems: Vec<String>,
}

impl<'r, R: Columns> Reader<'r, R> {
    fn new(row: &'r R, base: usize) -> Self {
        Self {
            row,
            base,
            problems: Vec::new(),
        }
    }

    fn note(&mut self, offset: usize, problem: impl std::fmt::Display) {
        let column = self.row.name(self.base + offset);
        self.problems.push(format!("column {column} {problem}"));
    }

    /// The value `got` from column `offset`, or `None` (noting why) when it holds none.
    fn optional<T>(&mut self, offset: usize, got: Result<Option<T>, String>) -> Option<T> {
        got.unwrap_or_else(|problem| {
            self.note(offset, problem);
            None
        })
    }

    /// The value `got` from column `offset`, which must hold one, or a stand-in (noting why).
    fn required<T: Default>(&mut self, offset: usize, got: Result<Option<T>, String>) -> T {
        match got {
            Ok(Some(v)) => v,
            Ok(None) => {
                self.note(offset, "is NULL");
                T::default()
            }
            Err(problem) => {
                self.note(offset, problem);
                T::default()
            }
        }
    }

    fn int_or_null(&mut self, offset: usize) -> Option<i64> {
        let got = self.row.int(self.base + offset);
        self.optional(offset, got)
    }

    fn int(&mut self, offset: usize) -> i64 {
        let got = self.row.int(self.base + offset);
        self.required(offset, got)
    }

    /// An integer that must lie in `range`.
    fn ranged(&mut self, offset: usize, range: std::ops::RangeInclusive<i64>) -> i64 {
        let v = self.int(offset);
        if range.contains(&v) {
            v
        } else {
            self.note(
                offset,
                format!(
                    "holds {v}, out of range ({} to {})",
                    range.start(),
                    range.end()
                ),
            );
            *range.start()
        }
    }

    fn small(&mut self, offset: usize) -> u32 {
        self.ranged(offset, 0..=i64::from(u32::MAX)) as u32
    }

    fn millis(&mut self, offset: usize, min: i64) -> Duration {
        Duration::from_millis(self.ranged(offset, min..=i64::MAX) as u64)
    }

    fn text_or_null(&mut self, offset: usize) -> Option<String> {
        let got = self.row.text(self.base + offset);
        self.optional(offset, got)
    }

    fn text(&mut self, offset: usize) -> String {
        let got = self.row.text(self.base + offset);
        self.required(offset, got)
    }

    fn json(&mut self, offset: usize, text: &str) -> Value {
        serde_json::from_str(text).unwrap_or_else(|e| {
            self.note(offset, format!("holds text that is not JSON ({e})"));
            Value::Null
        })
    }

    fn flag(&mut self, offset: usize) -> bool {
        let got = self.row.flag(self.base + offset).map(Some);
        self.required(offset, got)
    }

    /// What was wrong, if anything, in one line.
    fn problem(self) -> Option<String> {
        (!self.problems.is_empty()).then(|| self.problems.join("; "))
    }

    /// The row, if every column held what jobhost stores there.
    fn strict<T>(self, value: T) -> Result<T, BadColumn> {
        match self.problem() {
            None => Ok(value),
            Some(problem) => Err(BadColumn(problem)),
        }
    }
}

/// A job from the [`JOB_COLUMNS`] starting at column `base`. A row that does not hold what
/// jobhost stores is still a record, with stand-ins for what cannot be read and
/// [`JobRecord::problem`] saying what is wrong: the dispatcher quarantines it, listings show
/// it.
pub(super) fn job_at<R: Columns>(row: &R, base: usize) -> JobRecord {
    let mut r = Reader::new(row, base);
    let params = r.text(3);
    let state = r.text(5);
    let state = JobState::parse(&state).unwrap_or_else(|| {
        r.note(5, format!("holds {state:?}, not a job state"));
        JobState::Failed
    });
    let mut job = JobRecord {
        id: r.int(0),
        class: r.text(1),
        method: r.text(2),
        params: r.json(3, &params),
        priority: priority_from_i64(r.ranged(4, 0..=2)),
        state,
        attempts: r.small(6),
        max_attempts: r.small(7),
        retries: r.small(8),
        retry_delay: r.millis(9, 0),
        timeout: r.millis(10, 1),
        plugin: r.text(11).into(),
        run_at: r.int(12),
        created_at: r.int(13),
        started_at: r.int_or_null(14),
        finished_at: r.int_or_null(15),
        cancel_requested: r.flag(16),
        last_error: r.text_or_null(17),
        result: r.text_or_null(18).map(|result| r.json(18, &result)),
        problem: None,
    };
    job.problem = r.problem();
    job
}

/// An attempt from the [`ATTEMPT_COLUMNS`] starting at column `base`.
pub(super) fn attempt_at<R: Columns>(row: &R, base: usize) -> Result<Attempt, BadColumn> {
    let mut r = Reader::new(row, base);
    let attempt = Attempt {
        job_id: r.int(0),
        attempt: r.small(1),
        started_at: r.int(2),
        finished_at: r.int_or_null(3),
        outcome: r.text_or_null(4),
        error: r.text_or_null(5),
        output_path: r.text_or_null(6).map(Into::into),
        output_bytes: r.int_or_null(7).map(|b| b.max(0) as u64),
        pid: r.int_or_null(8).is_some().then(|| r.small(8)),
        plugin_hash: r.text_or_null(9),
        dispatcher: r.int_or_null(10),
    };
    r.strict(attempt)
}

/// A job with the attempts that could be read; what is wrong with the others is added to its
/// [`JobRecord::problem`], so that one bad attempt row does not hide the job.
pub(super) fn with_attempts(
    mut job: JobRecord,
    attempts: Vec<Result<Attempt, BadColumn>>,
) -> (JobRecord, Vec<Attempt>) {
    let mut read = Vec::with_capacity(attempts.len());
    let mut problems: Vec<String> = job.problem.take().into_iter().collect();
    for (n, attempt) in attempts.into_iter().enumerate() {
        match attempt {
            Ok(attempt) => read.push(attempt),
            Err(bad) => problems.push(format!("attempt row {} left out: {bad}", n + 1)),
        }
    }
    job.problem = (!problems.is_empty()).then(|| problems.join("; "));
    (job, read)
}

/// A dispatcher from a row of [`SELECT_DISPATCHERS`].
pub(super) fn dispatcher_at<R: Columns>(row: &R) -> Result<DispatcherRecord, BadColumn> {
    let mut r = Reader::new(row, 0);
    let dispatcher = DispatcherRecord {
        id: r.int(0),
        host: r.text(1),
        pid: r.small(2),
        slots: r.small(3),
        state_dir: r.text(4),
        started_at: r.int(5),
        heartbeat_at: r.int(6),
        running: r.small(7),
    };
    r.strict(dispatcher)
}

/// Why a claim must not run `job`, if it must not: its row does not hold what jobhost stores,
/// or one more attempt could not be counted.
pub(super) fn unclaimable(job: &JobRecord) -> Option<String> {
    if let Some(problem) = &job.problem {
        return Some(problem.clone());
    }
    (job.attempts >= MAX_ATTEMPTS).then(|| {
        format!(
            "column attempts holds {}, the most attempts a job may have",
            job.attempts
        )
    })
}

/// The `last_error` of a job quarantined for `reason`.
pub(super) fn quarantine_error(reason: &str) -> String {
    format!("quarantined: {reason}; the dispatcher cannot run this job as stored")
}

/// A priority as stored: the higher, the sooner.
pub(super) fn priority_to_i64(p: Priority) -> i64 {
    match p {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
    }
}

/// A stored priority, already checked to be 0, 1 or 2.
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

/// For a backend that writes a batch of attempts in one statement, where each row can be
/// written once: which items of the batch to write, by index, one per attempt `keys` names —
/// the first item naming it or, with `last`, the last (what applying them in order leaves).
/// They come in the order of their attempts, so that concurrent batches lock rows in one
/// order.
pub(super) fn one_per_attempt(keys: &[(JobId, u32)], last: bool) -> Vec<usize> {
    let mut chosen: std::collections::HashMap<(JobId, u32), usize> =
        std::collections::HashMap::with_capacity(keys.len());
    for (index, key) in keys.iter().enumerate() {
        chosen
            .entry(*key)
            .and_modify(|i| {
                if last {
                    *i = index;
                }
            })
            .or_insert(index);
    }
    let mut indices: Vec<usize> = chosen.into_values().collect();
    indices.sort_unstable_by_key(|&i| keys[i]);
    indices
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

/// The `(retries, max_attempts)` a retry of job `id` gives it: its retries again after the
/// attempts it used. A retry count stored past [`MAX_RETRIES`] (by a jobhost that did not bound
/// it) is renewed as [`MAX_RETRIES`]; a retry that would allow more than [`MAX_ATTEMPTS`] in all
/// is refused, so the budget always fits the store and reads back.
pub(super) fn renewed_budget(
    id: JobId,
    state: JobState,
    attempts: i64,
    retries: i64,
) -> Result<(i64, i64), StoreError> {
    check_retryable(id, state)?;
    let retries = retries.clamp(0, i64::from(MAX_RETRIES));
    let max_attempts = attempts.max(0) + retries + 1;
    if max_attempts > i64::from(MAX_ATTEMPTS) {
        return Err(StoreError::WrongState {
            id,
            state,
            what: "retrying it would allow more than 1000000 attempts, the most a job may have; \
                   enqueue it anew",
        });
    }
    Ok((retries, max_attempts))
}

/// Counts by state from `(state, count)` pairs; states without jobs count zero.
pub(super) fn stats(counts: impl IntoIterator<Item = (String, i64)>) -> Stats {
    let mut stats = Stats::empty();
    for (state, count) in counts {
        stats.by_state.insert(state, count.max(0) as u64);
    }
    stats
}
