//! What keeps the dispatcher from its work (the store, worker spawns), with a backoff before
//! it tries again, and how that is reported to the health file.

use super::*;

/// What keeps the dispatcher from its work for a while: the store failing with an error that
/// passes (busy, disk full, lost connection), or workers that cannot be started. While in
/// trouble it claims nothing new, keeps supervising what runs, holds what it could not write,
/// and tries again with a backoff; every change is logged once.
#[derive(Default)]
pub(super) struct Trouble {
    pub(super) store: Option<Problem>,
    pub(super) workers: Option<Problem>,
}

/// One ongoing problem.
pub(super) struct Problem {
    pub(super) since: Instant,
    /// The same, for the health report.
    pub(super) since_at: Millis,
    pub(super) error: String,
    /// When to try again.
    pub(super) retry_at: Instant,
    /// The pause before the next try after this one fails.
    pub(super) backoff: Duration,
}

/// The first pause after a failure, and the longest.
pub(super) const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Problem {
    pub(super) fn new(error: String) -> Self {
        Self {
            since: Instant::now(),
            since_at: now_millis(),
            error,
            retry_at: Instant::now() + BACKOFF_FIRST,
            backoff: BACKOFF_FIRST * 2,
        }
    }

    /// The same problem again: wait longer before the next try.
    pub(super) fn again(&mut self, error: String) {
        self.error = error;
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

impl Trouble {
    /// Whether the dispatcher may claim now.
    pub(super) fn may_claim(&self) -> bool {
        let now = Instant::now();
        [&self.store, &self.workers]
            .into_iter()
            .flatten()
            .all(|p| now >= p.retry_at)
    }

    /// When to look again, if anything waits for a retry.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        [&self.store, &self.workers]
            .into_iter()
            .flatten()
            .map(|p| p.retry_at)
            .min()
    }

    /// The problems as the health report lists them.
    pub(super) fn problems(&self) -> Vec<health::Problem> {
        [
            (&self.store, "the job database cannot be used"),
            (&self.workers, "workers cannot be started"),
        ]
        .into_iter()
        .filter_map(|(slot, what)| {
            let p = slot.as_ref()?;
            Some(health::Problem::new(what, p.since_at, &p.error))
        })
        .collect()
    }

    /// Records that `what` failed with `error` (`what` names the problem in the log).
    pub(super) fn failed(slot: &mut Option<Problem>, what: &str, error: String) {
        match slot {
            Some(problem) => problem.again(error),
            None => {
                tracing::error!(
                    "{what}: {error}; running attempts stay supervised, nothing new is claimed \
                     until it recovers (retrying with a backoff)"
                );
                *slot = Some(Problem::new(error));
            }
        }
    }

    /// Records that `what` works again.
    pub(super) fn recovered(slot: &mut Option<Problem>, what: &str) {
        if let Some(problem) = slot.take() {
            tracing::warn!(
                "{what} recovered after {} (last error: {})",
                crate::shared::text::secs(problem.since.elapsed()),
                problem.error
            );
        }
    }
}
