//! What happens to a job after an attempt: the one place that decides a job's next state.
//!
//! [`decide`] takes how the attempt came to an end ([`Ending`]: watched to its end, interrupted
//! by its dispatcher stopping, or a claim nobody watches any more), the job's retry policy,
//! whether a cancel was requested and the time, and returns the whole [`Transition`]: what to
//! record for the attempt and where the job goes. The dispatcher only applies it: the store
//! settles it atomically ([`crate::store::Store::settle`]) and the dispatcher logs it. The
//! clock and the cancel flag are parameters, so every rule here is tested without waiting.
//! The states and who moves a job out of each are drawn in `docs/job_state_machine.md`.

use crate::{
    job::outcome::Outcome,
    store::{DispatcherRecord, JobRecord, Millis, Next},
};

/// How an attempt came to an end, as its dispatcher learned it.
#[derive(Debug, Clone, Copy)]
pub enum Ending<'a> {
    /// It ended with this outcome: watched by its supervisor, adopted, or read from its
    /// worker's report.
    Ended(&'a Outcome),
    /// Its dispatcher stopped it because it is shutting down (or was taken for dead by the
    /// others), and it then ended with this outcome.
    Interrupted(&'a Outcome),
    /// This dispatcher claimed it but never learned that it had (the claim's answer was lost
    /// with the connection): no worker was ever started for it.
    ClaimNotLearned,
    /// The dispatcher that claimed it stopped heartbeating; `worker_recorded` says whether a
    /// worker of it was on record (one is recorded before it may start).
    OwnerExpired {
        /// The dispatcher whose lease ran out.
        owner: &'a DispatcherRecord,
        /// Whether the attempt's worker pid was recorded.
        worker_recorded: bool,
    },
}

/// What becomes of an attempt and its job: the attempt's record and the job's next state.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The attempt's outcome label (`ok`, `crashed: SIGSEGV`, `not started`, ...).
    pub outcome: String,
    /// The attempt's error, for every outcome but success.
    pub error: Option<String>,
    /// The job's next state.
    pub next: Next,
}

/// The outcome label and error of an attempt interrupted by its dispatcher.
const INTERRUPTED: &str = "interrupted: the dispatcher shut down";

/// What follows attempt `job.attempts` of `job`, which came to an end as `ending` at `now`;
/// `cancel_requested` says whether a cancel was requested for the job while it ran (the job's
/// own flag is not read: the caller may know better).
///
/// - An interrupted attempt that did not succeed queues the job again at once without using up
///   an attempt — unless a cancel was requested: then the job is cancelled, so that a job
///   someone cancelled never starts again.
/// - A claim whose dispatcher never learned of it, or whose dispatcher stopped heartbeating
///   before recording a worker, never started: `not started`. One whose dispatcher stopped
///   heartbeating with a worker on record is `lost`. Then:
/// - success completes the job (even if a cancel arrived too late to stop it);
/// - a cancellation, or any failure after a cancel was requested, cancels it;
/// - an attempt that never started (no plugin code ran) queues it again without using up an
///   attempt;
/// - a retryable failure with attempts left schedules it `retry_delay` from now;
/// - anything else fails it.
pub fn decide(
    job: &JobRecord,
    ending: Ending<'_>,
    cancel_requested: bool,
    now: Millis,
) -> Transition {
    let unwatched;
    let outcome = match ending {
        Ending::Interrupted(outcome) if !matches!(outcome, Outcome::Ok(_)) => {
            return Transition {
                outcome: INTERRUPTED.into(),
                error: Some(INTERRUPTED.into()),
                next: if cancel_requested {
                    Next::Cancel
                } else {
                    Next::Requeue
                },
            };
        }
        Ending::Ended(outcome) | Ending::Interrupted(outcome) => outcome,
        Ending::ClaimNotLearned => {
            unwatched = Outcome::NotStarted(
                "not started: its dispatcher did not learn that it had claimed it".into(),
            );
            &unwatched
        }
        Ending::OwnerExpired {
            owner,
            worker_recorded,
        } => {
            let who = format!("its dispatcher (pid {} on {})", owner.pid, owner.host);
            unwatched = if worker_recorded {
                Outcome::Lost(format!("{who} stopped heartbeating"))
            } else {
                Outcome::NotStarted(format!(
                    "not started: {who} stopped heartbeating before starting a worker"
                ))
            };
            &unwatched
        }
    };
    let next = match outcome {
        Outcome::Ok(result) => Next::Complete(result.clone()),
        Outcome::Cancelled => Next::Cancel,
        _ if cancel_requested => Next::Cancel,
        Outcome::NotStarted(_) => Next::Requeue,
        failure if failure.is_retryable() && job.attempts < job.max_attempts => {
            let delay = i64::try_from(job.retry_delay.as_millis()).unwrap_or(i64::MAX);
            Next::Retry(now.saturating_add(delay))
        }
        _ => Next::Fail,
    };
    Transition {
        outcome: outcome.label(),
        error: outcome.error(),
        next,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::{job::outcome::FailureKind, job::Priority, store::JobState};

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

    fn crashed() -> Outcome {
        Outcome::Crashed {
            signal: "SIGSEGV".into(),
            stack_overflow: false,
        }
    }

    /// The next state after an attempt that ended with `outcome`, with no cancel requested.
    fn after(job: &JobRecord, outcome: &Outcome, now: Millis) -> Next {
        decide(job, Ending::Ended(outcome), false, now).next
    }

    /// The same, with a cancel requested while it ran.
    fn after_cancel(job: &JobRecord, outcome: &Outcome, now: Millis) -> Next {
        decide(job, Ending::Ended(outcome), true, now).next
    }

    fn expired() -> DispatcherRecord {
        DispatcherRecord {
            id: 7,
            host: "far".into(),
            pid: 4242,
            slots: 2,
            state_dir: "/var/jobhost".into(),
            started_at: 0,
            heartbeat_at: 0,
            running: 1,
        }
    }

    #[test]
    fn success_completes_with_its_result() {
        assert_eq!(
            after(&job(1, 4), &Outcome::Ok(json!(7)), 1000),
            Next::Complete(json!(7))
        );
        assert_eq!(
            decide(&job(1, 4), Ending::Ended(&Outcome::Ok(json!(7))), false, 0),
            Transition {
                outcome: "ok".into(),
                error: None,
                next: Next::Complete(json!(7)),
            }
        );
    }

    #[test]
    fn retryable_failure_with_attempts_left_waits_the_retry_delay() {
        assert_eq!(after(&job(1, 4), &failed(), 1000), Next::Retry(6000));
        assert_eq!(after(&job(3, 4), &crashed(), 0), Next::Retry(5000));
        assert_eq!(
            after(&job(1, 2), &Outcome::Lost("gone".into()), 0),
            Next::Retry(5000)
        );
        let panicked = Outcome::Error {
            kind: FailureKind::Panicked,
            message: "panicked".into(),
        };
        assert_eq!(after(&job(1, 2), &panicked, 0), Next::Retry(5000));
        assert_eq!(
            after(&job(1, 2), &Outcome::ExitedWithoutResult(3), 0),
            Next::Retry(5000)
        );
    }

    #[test]
    fn a_retry_delay_past_the_clock_saturates() {
        let mut long = job(1, 4);
        long.retry_delay = Duration::MAX;
        assert_eq!(after(&long, &failed(), 1000), Next::Retry(Millis::MAX));
    }

    #[test]
    fn a_crash_is_retried_and_recorded_with_its_signal() {
        assert_eq!(
            decide(&job(1, 4), Ending::Ended(&crashed()), false, 100),
            Transition {
                outcome: "crashed: SIGSEGV".into(),
                error: Some("worker crashed: SIGSEGV".into()),
                next: Next::Retry(5100),
            }
        );
        assert_eq!(after(&job(4, 4), &crashed(), 0), Next::Fail);
    }

    #[test]
    fn a_timeout_is_retried_while_attempts_are_left() {
        let timed_out = Outcome::TimedOut(Duration::from_secs(1));
        assert_eq!(
            decide(&job(1, 2), Ending::Ended(&timed_out), false, 0),
            Transition {
                outcome: "timed out".into(),
                error: Some("timed out after 1s".into()),
                next: Next::Retry(5000),
            }
        );
        assert_eq!(after(&job(2, 2), &timed_out, 0), Next::Fail);
    }

    #[test]
    fn an_attempt_that_never_started_is_requeued_even_on_the_last_attempt() {
        let never = Outcome::NotStarted("no worker".into());
        assert_eq!(after(&job(1, 1), &never, 0), Next::Requeue);
        assert_eq!(after_cancel(&job(1, 1), &never, 0), Next::Cancel);
    }

    #[test]
    fn last_attempt_fails_for_good() {
        assert_eq!(after(&job(4, 4), &failed(), 1000), Next::Fail);
        assert_eq!(
            after(&job(1, 1), &Outcome::TimedOut(Duration::from_secs(1)), 0),
            Next::Fail
        );
        assert_eq!(
            after(&job(1, 1), &Outcome::Lost("gone".into()), 0),
            Next::Fail
        );
    }

    #[test]
    fn permanent_failure_is_not_retried() {
        for kind in [
            FailureKind::Permanent,
            FailureKind::InvalidParams,
            FailureKind::Unauthorized,
            FailureKind::LoadFailed,
            FailureKind::BadRequest,
        ] {
            let permanent = Outcome::Error {
                kind,
                message: "no".into(),
            };
            assert_eq!(after(&job(1, 4), &permanent, 0), Next::Fail, "{kind:?}");
        }
    }

    #[test]
    fn cancellation_wins_over_retries_but_not_over_success() {
        let j = job(1, 4);
        assert_eq!(after_cancel(&j, &failed(), 0), Next::Cancel);
        assert_eq!(after_cancel(&j, &Outcome::Cancelled, 0), Next::Cancel);
        assert_eq!(
            after_cancel(&j, &Outcome::Ok(json!(null)), 0),
            Next::Complete(json!(null))
        );
    }

    #[test]
    fn a_cancel_requested_during_the_attempt_cancels_whatever_failure_followed() {
        let timed_out = Outcome::TimedOut(Duration::from_secs(1));
        for outcome in [failed(), crashed(), timed_out, Outcome::Lost("gone".into())] {
            assert_eq!(
                after_cancel(&job(1, 4), &outcome, 0),
                Next::Cancel,
                "{outcome:?}"
            );
        }
        // A cancelled attempt is cancelled even if the flag was not seen (the token fired).
        assert_eq!(
            decide(&job(1, 4), Ending::Ended(&Outcome::Cancelled), false, 0),
            Transition {
                outcome: "cancelled".into(),
                error: Some("cancelled".into()),
                next: Next::Cancel,
            }
        );
    }

    #[test]
    fn the_cancel_flag_is_the_parameter_not_the_jobs_own() {
        let mut flagged = job(1, 4);
        flagged.cancel_requested = true;
        assert_eq!(after(&flagged, &failed(), 0), Next::Retry(5000));
    }

    #[test]
    fn an_attempt_interrupted_by_shutdown_is_requeued_without_using_up_an_attempt() {
        let interrupted = |next| Transition {
            outcome: "interrupted: the dispatcher shut down".into(),
            error: Some("interrupted: the dispatcher shut down".into()),
            next,
        };
        let timed_out = Outcome::TimedOut(Duration::from_secs(1));
        for outcome in [Outcome::Cancelled, failed(), crashed(), timed_out] {
            // On its last attempt alike.
            assert_eq!(
                decide(&job(1, 1), Ending::Interrupted(&outcome), false, 0),
                interrupted(Next::Requeue),
                "{outcome:?}"
            );
            // A job someone cancelled while it ran never starts again.
            assert_eq!(
                decide(&job(1, 4), Ending::Interrupted(&outcome), true, 0),
                interrupted(Next::Cancel),
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn an_interrupted_attempt_that_succeeded_anyway_completes() {
        assert_eq!(
            decide(
                &job(1, 4),
                Ending::Interrupted(&Outcome::Ok(json!(1))),
                true,
                0
            ),
            Transition {
                outcome: "ok".into(),
                error: None,
                next: Next::Complete(json!(1)),
            }
        );
    }

    #[test]
    fn a_claim_its_dispatcher_never_learned_of_is_requeued_as_not_started() {
        let why = "not started: its dispatcher did not learn that it had claimed it";
        assert_eq!(
            decide(&job(1, 1), Ending::ClaimNotLearned, false, 0),
            Transition {
                outcome: "not started".into(),
                error: Some(why.into()),
                next: Next::Requeue,
            }
        );
        assert_eq!(
            decide(&job(1, 1), Ending::ClaimNotLearned, true, 0).next,
            Next::Cancel
        );
    }

    #[test]
    fn a_claim_of_an_expired_dispatcher_without_a_worker_is_requeued_as_not_started() {
        let owner = expired();
        let ending = Ending::OwnerExpired {
            owner: &owner,
            worker_recorded: false,
        };
        assert_eq!(
            decide(&job(1, 1), ending, false, 0),
            Transition {
                outcome: "not started".into(),
                error: Some(
                    "not started: its dispatcher (pid 4242 on far) stopped heartbeating \
                     before starting a worker"
                        .into()
                ),
                next: Next::Requeue,
            }
        );
        assert_eq!(decide(&job(1, 1), ending, true, 0).next, Next::Cancel);
    }

    #[test]
    fn a_running_attempt_of_an_expired_dispatcher_is_lost_and_retried_per_its_policy() {
        let owner = expired();
        let ending = Ending::OwnerExpired {
            owner: &owner,
            worker_recorded: true,
        };
        assert_eq!(
            decide(&job(1, 4), ending, false, 1000),
            Transition {
                outcome: "lost".into(),
                error: Some("its dispatcher (pid 4242 on far) stopped heartbeating".into()),
                next: Next::Retry(6000),
            }
        );
        assert_eq!(decide(&job(4, 4), ending, false, 0).next, Next::Fail);
        assert_eq!(decide(&job(1, 4), ending, true, 0).next, Next::Cancel);
    }
}
