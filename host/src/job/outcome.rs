//! How an attempt ended, in the job's terms: an [`Outcome`] (the result, the kind of error, a
//! crash, a timeout, ...) and, for an error, its [`FailureKind`]. The runner decides which one
//! an attempt had; [`crate::queue::lifecycle`] decides what it means for the job.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why an attempt did not produce a result, as the worker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The job returned an error; a retry may help.
    Failed,
    /// The job returned an error no retry can fix.
    Permanent,
    /// The params did not fit the method.
    InvalidParams,
    /// The job panicked.
    Panicked,
    /// The job stopped after seeing its cancellation.
    Cancelled,
    /// The allowlist does not approve the job; nothing was loaded.
    Unauthorized,
    /// The plugin could not be loaded, or does not offer the class or method.
    LoadFailed,
    /// The request itself was unusable.
    BadRequest,
    /// The supervisor never gave the go-ahead (see `WorkerRequest::gate` in the runner's protocol): no plugin code
    /// ran, so the attempt does not count.
    NotStarted,
}

impl FailureKind {
    /// Whether another attempt could succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Failed | Self::Panicked)
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The job returned this result.
    Ok(Value),
    /// The job (or the worker on its behalf) reported an error.
    Error {
        /// What kind.
        kind: FailureKind,
        /// The message.
        message: String,
    },
    /// The worker died of a signal (Unix) or crash code (Windows).
    Crashed {
        /// Its name, e.g. `SIGSEGV`.
        signal: String,
        /// Whether the runtime reported a stack overflow just before.
        stack_overflow: bool,
    },
    /// The attempt ran past its timeout and was stopped.
    TimedOut(Duration),
    /// The attempt was cancelled.
    Cancelled,
    /// The worker exited without writing a report.
    ExitedWithoutResult(i32),
    /// The attempt's worker was gone without a report when its dispatcher came back after a
    /// crash; how it ended cannot be known.
    Lost(String),
    /// No plugin code ran: the worker never got the go-ahead (its dispatcher stopped between
    /// claiming the job and recording the worker), or no worker was ever started. The attempt
    /// does not count.
    NotStarted(String),
}

impl Outcome {
    /// Whether another attempt could end differently.
    pub fn is_retryable(&self) -> bool {
        match self {
            Outcome::Ok(_) | Outcome::Cancelled | Outcome::NotStarted(_) => false,
            Outcome::Error { kind, .. } => kind.is_retryable(),
            Outcome::Crashed { .. }
            | Outcome::TimedOut(_)
            | Outcome::ExitedWithoutResult(_)
            | Outcome::Lost(_) => true,
        }
    }

    /// The short outcome label: `ok`, `error`, `crashed: SIGSEGV`, `timed out`, ...
    pub fn label(&self) -> String {
        match self {
            Outcome::Ok(_) => "ok".into(),
            Outcome::Error { .. } => "error".into(),
            Outcome::Crashed { signal, .. } => format!("crashed: {signal}"),
            Outcome::TimedOut(_) => "timed out".into(),
            Outcome::Cancelled => "cancelled".into(),
            Outcome::ExitedWithoutResult(code) => format!("exited without a result: code {code}"),
            Outcome::Lost(_) => "lost".into(),
            Outcome::NotStarted(_) => "not started".into(),
        }
    }

    /// The error message, for every outcome but success.
    pub fn error(&self) -> Option<String> {
        match self {
            Outcome::Ok(_) => None,
            Outcome::Error { message, .. } => Some(message.clone()),
            Outcome::Crashed {
                signal,
                stack_overflow: true,
            } => Some(format!("worker crashed: stack overflow ({signal})")),
            Outcome::Crashed { signal, .. } => Some(format!("worker crashed: {signal}")),
            Outcome::TimedOut(after) => Some(format!(
                "timed out after {}",
                crate::shared::text::secs(*after)
            )),
            Outcome::Cancelled => Some("cancelled".into()),
            Outcome::ExitedWithoutResult(code) => Some(format!(
                "worker exited with code {code} without reporting a result"
            )),
            Outcome::Lost(why) | Outcome::NotStarted(why) => Some(why.clone()),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}
