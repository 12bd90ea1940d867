//! Running a job to its end in the foreground (`jobhost run --wait`): the delay, then attempts
//! until one succeeds, one fails in a way no retry can fix, the retries run out, or the job is
//! cancelled. Each attempt is a fresh worker; every transition is logged in the spec's format.

use std::path::Path;

use serde_json::Value;

use crate::{
    attempt::{run_attempt, AttemptError, AttemptRecord, AttemptSpec, Outcome},
    job::JobSpec,
    joblog,
    platform::CancelToken,
    settings::Settings,
};

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEnd {
    /// An attempt succeeded with this result.
    Completed(Value),
    /// The last attempt failed with this error and no retry followed.
    Failed(String),
    /// The job was cancelled.
    Cancelled,
}

/// Runs `spec` from `plugin` now, honouring its delay and retries. `cancel` stops it at any
/// point: during the delay, an attempt, or a retry's wait.
pub fn run_to_end(
    settings: &Settings,
    spec: &JobSpec,
    job_id: &str,
    plugin: &Path,
    cancel: &CancelToken,
) -> Result<(JobEnd, Vec<AttemptRecord>), AttemptError> {
    let name = spec.name();
    let mut attempts = Vec::new();
    if cancel.wait(spec.delay) {
        joblog::cancelled(&name, &spec.params);
        return Ok((JobEnd::Cancelled, attempts));
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        joblog::started(&name, &spec.params);
        let record = run_attempt(
            settings,
            &AttemptSpec {
                job_id,
                attempt,
                class: &spec.class,
                method: &spec.method,
                params: &spec.params,
                plugin,
                timeout: spec.timeout,
            },
            cancel,
            &mut |_| {},
        )?;
        joblog::attempt_finished(&name, 0, &record);
        let outcome = record.outcome.clone();
        attempts.push(record);
        let error = match outcome {
            Outcome::Ok(result) => {
                joblog::completed(&name, &spec.params);
                return Ok((JobEnd::Completed(result), attempts));
            }
            Outcome::Cancelled => {
                joblog::cancelled(&name, &spec.params);
                return Ok((JobEnd::Cancelled, attempts));
            }
            ref failed => failed.error().unwrap_or_default(),
        };
        if !outcome.is_retryable() || attempt > spec.retries {
            joblog::failed(&name, &spec.params, &error);
            return Ok((JobEnd::Failed(error), attempts));
        }
        joblog::retrying(&name, &spec.params, attempt, &error, spec.retry_delay);
        if cancel.wait(spec.retry_delay) {
            joblog::cancelled(&name, &spec.params);
            return Ok((JobEnd::Cancelled, attempts));
        }
    }
}
