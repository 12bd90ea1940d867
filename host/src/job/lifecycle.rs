//! What happens to a job after an attempt: the one place that decides a job's next state.
//!
//! The store applies the decision atomically ([`crate::store::Store::settle`]); the dispatcher
//! logs it. The clock is a parameter, so every rule here is tested without waiting. The states
//! and who moves a job out of each are drawn in `docs/job_state_machine.md`.

use crate::{
    runner::supervisor::Outcome,
    store::{JobRecord, Millis, Next},
};

/// The job's next state after attempt `job.attempts` ended with `outcome` at `now`:
///
/// - success completes it (even if a cancel arrived too late to stop it);
/// - a cancellation, or any failure after a cancel was requested, cancels it;
/// - an attempt that never started (no plugin code ran) queues it again without using up an
///   attempt;
/// - a retryable failure with attempts left schedules it `retry_delay` from now;
/// - anything else fails it.
pub fn next_after(job: &JobRecord, outcome: &Outcome, now: Millis) -> Next {
    match outcome {
        Outcome::Ok(result) => Next::Complete(result.clone()),
        Outcome::Cancelled => Next::Cancel,
        _ if job.cancel_requested => Next::Cancel,
        Outcome::NotStarted(_) => Next::Requeue,
        failure if failure.is_retryable() && job.attempts < job.max_attempts => {
            let delay = i64::try_from(job.retry_delay.as_millis()).unwrap_or(i64::MAX);
            Next::Retry(now.saturating_add(delay))
        }
        _ => Next::Fail,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::{job::Priority, runner::protocol::FailureKind, store::JobState};

    fn job(attempts: u32, max_attempts: u32) -> JobRecord {
        JobRecord {
            id: 1,
            class: "A".into(),
            method: "m".into(),
            params: json!({}),
            priority: Priority::Normal,
            state: JobState::Running,
            attempts,
            max_attempts,
            retries: max_attempts - 1,
            retry_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            plugin: "p.so".into(),
            run_at: 0,
            created_at: 0,
            started_at: Some(0),
            finished_at: None,
            cancel_requested: false,
            last_error: None,
            result: None,
            problem: None,
        }
    }

    fn failed() -> Outcome {
        Outcome::Error {
            kind: FailureKind::Failed,
            message: "boom".into(),
        }
    }

    #[test]
    fn success_completes_with_its_result() {
        assert_eq!(
            next_after(&job(1, 4), &Outcome::Ok(json!(7)), 1000),
            Next::Complete(json!(7))
        );
    }

    #[test]
    fn retryable_failure_with_attempts_left_waits_the_retry_delay() {
        assert_eq!(next_after(&job(1, 4), &failed(), 1000), Next::Retry(6000));
        let crashed = Outcome::Crashed {
            signal: "SIGSEGV".into(),
            stack_overflow: false,
        };
        assert_eq!(next_after(&job(3, 4), &crashed, 0), Next::Retry(5000));
        assert_eq!(
            next_after(&job(1, 2), &Outcome::Lost("gone".into()), 0),
            Next::Retry(5000)
        );
    }

    #[test]
    fn an_attempt_that_never_started_is_requeued_even_on_the_last_attempt() {
        let never = Outcome::NotStarted("no worker".into());
        assert_eq!(next_after(&job(1, 1), &never, 0), Next::Requeue);
        let mut cancelled = job(1, 1);
        cancelled.cancel_requested = true;
        assert_eq!(next_after(&cancelled, &never, 0), Next::Cancel);
    }

    #[test]
    fn last_attempt_fails_for_good() {
        assert_eq!(next_after(&job(4, 4), &failed(), 1000), Next::Fail);
        assert_eq!(
            next_after(&job(1, 1), &Outcome::TimedOut(Duration::from_secs(1)), 0),
            Next::Fail
        );
    }

    #[test]
    fn permanent_failure_is_not_retried() {
        let permanent = Outcome::Error {
            kind: FailureKind::Permanent,
            message: "no".into(),
        };
        assert_eq!(next_after(&job(1, 4), &permanent, 0), Next::Fail);
    }

    #[test]
    fn cancellation_wins_over_retries_but_not_over_success() {
        let mut j = job(1, 4);
        j.cancel_requested = true;
        assert_eq!(next_after(&j, &failed(), 0), Next::Cancel);
        assert_eq!(next_after(&j, &Outcome::Cancelled, 0), Next::Cancel);
        assert_eq!(
            next_after(&j, &Outcome::Ok(json!(null)), 0),
            Next::Complete(json!(null))
        );
    }
}
