//! What a running job knows about itself and may ask of the host.

use std::fmt;

use abi_stable::{prefix_type::WithMetadata, std_types::RStr};

use crate::{
    ffi::{HostApi, HostApiRef},
    JobError,
};

/// The context of one attempt of one job: its id, its attempt number, a logger whose lines
/// land in the attempt's captured output, and the host's cancellation signal.
pub struct JobContext<'a> {
    job_id: &'a str,
    attempt: u32,
    host: HostApiRef,
}

impl<'a> JobContext<'a> {
    pub(crate) fn new(job_id: &'a str, attempt: u32, host: HostApiRef) -> Self {
        Self {
            job_id,
            attempt,
            host,
        }
    }

    /// A context for calling job methods directly from plain Rust, as unit tests do: log lines
    /// go to standard error and the job is never cancelled.
    pub fn detached(job_id: &'a str, attempt: u32) -> Self {
        extern "C" fn log(line: RStr<'_>) {
            eprintln!("{line}");
        }
        extern "C" fn is_cancelled() -> bool {
            false
        }
        const DETACHED: &WithMetadata<HostApi> = &WithMetadata::new(HostApi { log, is_cancelled });
        Self::new(job_id, attempt, HostApiRef(DETACHED.static_as_prefix()))
    }

    /// The id of the job this attempt belongs to.
    pub fn job_id(&self) -> &str {
        self.job_id
    }

    /// The attempt number: 1 for the first run, 2 for the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Writes one line to this attempt's captured output.
    pub fn log(&self, message: impl fmt::Display) {
        let line = message.to_string();
        (self.host.log())(RStr::from_str(&line));
    }

    /// Whether the host has asked this job to stop (it was cancelled or timed out). A job that
    /// checks this between units of work can stop cleanly before the host's hard kill.
    pub fn is_cancelled(&self) -> bool {
        (self.host.is_cancelled())()
    }

    /// `Err(JobError::cancelled())` once the host has asked this job to stop, for use with `?`.
    pub fn check_cancelled(&self) -> Result<(), JobError> {
        if self.is_cancelled() {
            Err(JobError::cancelled())
        } else {
            Ok(())
        }
    }
}
