//! The error a job method returns, and how it crosses the ABI boundary.

use std::fmt;

use crate::ffi::{ErrorKind, FfiError};

/// Why a job method did not succeed.
///
/// Any `std::error::Error` converts into a retryable `JobError` with `?`, carrying its whole
/// cause chain in the message. Use [`JobError::permanent`] when another attempt cannot help
/// (the host then does not retry), and [`JobError::cancelled`] after
/// [`JobContext::is_cancelled`](crate::JobContext::is_cancelled) said to stop.
pub struct JobError {
    kind: ErrorKind,
    message: String,
}

impl JobError {
    /// A failure that another attempt may fix: the host retries it per the job's policy.
    pub fn new(message: impl fmt::Display) -> Self {
        Self::with_kind(ErrorKind::Failed, message)
    }

    /// A failure that no retry can fix: the job fails at once.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self::with_kind(ErrorKind::Permanent, message)
    }

    /// The job stopped because the host asked it to.
    pub fn cancelled() -> Self {
        Self::with_kind(ErrorKind::Cancelled, "cancelled")
    }

    pub(crate) fn with_kind(kind: ErrorKind, message: impl fmt::Display) -> Self {
        Self {
            kind,
            message: message.to_string(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn into_ffi(self) -> FfiError {
        FfiError {
            kind: self.kind,
            message: self.message.into(),
        }
    }
}

impl<E> From<E> for JobError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::new(message)
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobError({:?}: {})", self.kind, self.message)
    }
}

/// The result of a job method.
pub type JobResult<T> = Result<T, JobError>;
