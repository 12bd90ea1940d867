//! The durable queue: jobs and their attempts, behind one [`Store`] trait.
//!
//! A store only stores: it never decides. Which state a job moves to after an attempt is
//! decided by [`crate::queue::lifecycle`] and applied here with [`Store::settle`]; the only logic a
//! store owns is what must be atomic — claiming due jobs in order, cancelling, and refusing to
//! settle an attempt twice. Every backend passes the same behaviour suite
//! (`store/conformance.rs`). SQLite ([`sqlite::SqliteStore`]) is the embedded default;
//! PostgreSQL ([`postgres::PostgresStore`]) lets dispatchers on several hosts share one queue.
//! [`open`] opens either from a [`StoreLocation`]; [`open_existing`] opens one only if it
//! exists, creating nothing, for the commands that only read. What else a backend gives a
//! dispatcher comes from here too, so that the dispatcher never names one: a [`Listener`] for
//! changes made on other hosts ([`listener`]), and the housekeeping it needs on a timer
//! ([`maintenance`]).
//!
//! Times are [`Millis`]: milliseconds since the Unix epoch, given by the caller (the clock is
//! injected, so tests need no sleeps).
//!
//! # Errors
//!
//! Every [`StoreError`] has a class ([`StoreError::class`]) saying what it means for the
//! caller, the same on every backend: *transient* (busy past the wait, disk full, an I/O
//! error, a lost connection, a conflicting transaction: nothing changed, calling again later
//! may succeed), *outcome unknown* (the connection broke while the call committed: it may have
//! been stored), *rejected* (no such job, a wrong state, an unregistered dispatcher, a
//! statement refused: nothing changed, and the same call is refused again) and *fatal* (not a
//! database, corrupt, a newer schema: nothing works until someone fixes it).
//!
//! # Several dispatchers
//!
//! Each dispatcher registers itself ([`Store::register_dispatcher`]) and claims under the
//! [`DispatcherId`] it gets, so every attempt records who runs it ([`Attempt::dispatcher`]). It
//! proves it is alive with [`Store::heartbeat`]; one whose heartbeat is older than the lease
//! ([`Store::expired_dispatchers`]) is rescued by any other:
//!
//! 1. for each expired dispatcher, settle its running attempts (those of [`Store::running`]
//!    whose `dispatcher` is its id) with the outcome `lost` and what [`crate::queue::lifecycle`]
//!    decides for them;
//! 2. then [`Store::deregister`] it. If that refuses, the dispatcher claimed more since it was
//!    read as expired (it was only slow): look again on the next round.
//!
//! Rescuers racing each other, or a dispatcher that was only slow, do no harm: `settle`
//! settles an attempt once, `deregister` refuses while the dispatcher owns an unsettled
//! attempt, and a deregistered dispatcher can claim nothing more
//! ([`StoreError::NotRegistered`]) and learns from `heartbeat` that it was rescued. Heartbeats
//! and cutoffs are the callers' clocks: hosts sharing a queue need synchronised clocks (NTP),
//! well within the lease.

mod rows;

#[cfg(feature = "postgres")]
pub mod postgres;
pub mod sqlite;

#[cfg(test)]
mod conformance;

use std::{
    borrow::Cow,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;
use serde_json::Value;

use crate::job::{JobSpec, Priority};

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// A job's id: positive, increasing in enqueue order.
pub type JobId = i64;

/// A job id as people write it (the command line, the dashboard's addresses): a canonical
/// decimal number from 1 to `i64::MAX` — digits only, no sign, space or leading zero — so that
/// one job has one name. The error names the text: `"+1" is not a job id (...)`.
pub fn parse_job_id(text: &str) -> Result<JobId, String> {
    let canonical =
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && !text.starts_with('0');
    text.parse::<JobId>()
        .ok()
        .filter(|_| canonical)
        .ok_or_else(|| {
            format!(
                "{text:?} is not a job id (a whole number from 1 to {}, written without sign, spaces or leading zeros)",
                JobId::MAX
            )
        })
}

/// A registered dispatcher's id: positive, never reused.
pub type DispatcherId = i64;

/// Where a job is in its life. See `docs/job_state_machine.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Due now, waiting for a free slot.
    Queued,
    /// Waiting for its `run_at`: a delayed start, or a retry's wait.
    Scheduled,
    /// An attempt is running.
    Running,
    /// An attempt succeeded.
    Completed,
    /// Attempts are exhausted, or the last failure could not be retried.
    Failed,
    /// Cancelled; never retried.
    Cancelled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Scheduled,
        JobState::Running,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the job is done for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job to store: its spec and the plugin file the gate chose for it.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// What to run and how.
    pub spec: JobSpec,
    /// The plugin file offering the class.
    pub plugin: PathBuf,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// The class.
    pub class: String,
    /// The method.
    pub method: String,
    /// The params.
    pub params: Value,
    /// The priority.
    pub priority: Priority,
    /// The state.
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// Retries after the first failure, as requested.
    pub retries: u32,
    /// Wait between attempts.
    #[serde(serialize_with = "secs")]
    pub retry_delay: Duration,
    /// How long one attempt may run.
    #[serde(serialize_with = "secs")]
    pub timeout: Duration,
    /// The plugin file.
    pub plugin: PathBuf,
    /// Not before this.
    pub run_at: Millis,
    /// When it was stored.
    pub created_at: Millis,
    /// When its first attempt started.
    pub started_at: Option<Millis>,
    /// When it reached a terminal state.
    pub finished_at: Option<Millis>,
    /// Whether a cancel was requested while it ran.
    pub cancel_requested: bool,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// The successful attempt's result.
    pub result: Option<Value>,
    /// Why the stored row cannot be read as jobhost writes it, if it cannot (a hand edit, a
    /// bug, another program): `column max_attempts holds 4294967296, out of range (...)`.
    /// The fields it names hold stand-ins (zero, empty, `null`, `failed` for an unknown
    /// state). Such a job is never run: a claim quarantines it (`Store::claim`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl JobRecord {
    /// `Class@method`.
    pub fn name(&self) -> String {
        format!("{}@{}", self.class, self.method)
    }
}

/// One recorded attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    /// The job.
    pub job_id: JobId,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// When it was claimed to run.
    pub started_at: Millis,
    /// When it ended.
    pub finished_at: Option<Millis>,
    /// How it ended: `ok`, `error`, `crashed: SIGSEGV`, `timed out`, `cancelled`, `lost`, ...
    pub outcome: Option<String>,
    /// Its error message.
    pub error: Option<String>,
    /// The file holding its captured output.
    pub output_path: Option<PathBuf>,
    /// Bytes of output it wrote.
    pub output_bytes: Option<u64>,
    /// Its worker's pid.
    pub pid: Option<u32>,
    /// The BLAKE3 hash of the plugin file it ran.
    pub plugin_hash: Option<String>,
    /// The dispatcher that claimed it (none for attempts claimed before dispatchers
    /// registered). The id is kept after that dispatcher deregisters.
    pub dispatcher: Option<DispatcherId>,
}

/// What became of a running attempt's worker once it was spawned.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptStart {
    /// The worker's pid.
    pub pid: u32,
    /// The plugin file's hash.
    pub plugin_hash: String,
    /// Where its output goes.
    pub output_path: PathBuf,
}

/// One claimed attempt's worker to record ([`Store::attempts_started`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StartedAttempt<'a> {
    /// The job.
    pub id: JobId,
    /// The attempt number the claim gave it.
    pub attempt: u32,
    /// Its worker.
    pub start: &'a AttemptStart,
}

/// One ended attempt to settle ([`Store::settle_many`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settlement<'a> {
    /// The job.
    pub id: JobId,
    /// The attempt number.
    pub attempt: u32,
    /// How it ended.
    pub end: &'a AttemptEnd,
    /// What becomes of the job.
    pub next: &'a Next,
}

/// What [`Store::settle_and_claim`] did.
#[derive(Debug)]
pub struct SettledAndClaimed {
    /// For each settlement, whether it was settled, as [`Store::settle_many`] answers.
    pub settled: Vec<bool>,
    /// The jobs claimed, as [`Store::claim`] answers, or why none were: the settles are
    /// stored either way.
    pub claimed: Result<Vec<JobRecord>, StoreError>,
    /// For each job claimed, whether its worker is on record (and so may start): false for one
    /// `spawn` started none for, or whose record the store refused. Empty when none was
    /// claimed.
    pub recorded: Vec<bool>,
}

/// Starts the workers of jobs just claimed, inside the claim's transaction
/// ([`Store::settle_and_claim`]): for each job, in order, the start of its worker, waiting at
/// its gate, or `None` when none could be started.
pub type SpawnWorkers<'a> = dyn FnMut(&[JobRecord]) -> Vec<Option<AttemptStart>> + 'a;

/// How an attempt ended, to record.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEnd {
    /// When.
    pub finished_at: Millis,
    /// The outcome label.
    pub outcome: String,
    /// The error message, if it failed.
    pub error: Option<String>,
    /// Bytes of output.
    pub output_bytes: u64,
}

impl AttemptEnd {
    /// The error as every store keeps it: a NUL (which a job may say, but PostgreSQL's text
    /// cannot hold) as U+FFFD, so that the attempt is settled on either backend, alike.
    pub(crate) fn stored_error(&self) -> Option<Cow<'_, str>> {
        self.error.as_deref().map(|error| {
            if error.contains('\0') {
                Cow::Owned(error.replace('\0', "\u{FFFD}"))
            } else {
                Cow::Borrowed(error)
            }
        })
    }
}

/// What happens to the job after an attempt, as decided by [`crate::queue::lifecycle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Completed with this result.
    Complete(Value),
    /// Scheduled for another attempt at this time.
    Retry(Millis),
    /// Failed for good.
    Fail,
    /// Cancelled.
    Cancel,
    /// Queued again at once without using up an attempt: the attempt was interrupted by its
    /// dispatcher shutting down, through no fault of the job.
    Requeue,
}

/// A due job a claim could not run as stored, and settled `failed` instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The job.
    pub id: JobId,
    /// Why: what its row holds that jobhost does not store.
    pub reason: String,
}

/// What [`Store::amend_lost`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amended {
    /// The job still waited for what the lost attempt gave it, and moved on as the report says.
    Moved,
    /// The attempt's record was corrected; the job had moved on already (another attempt, or a
    /// cancel), so it stays as it is.
    Recorded,
    /// The attempt is not a lost one (corrected already, or no such attempt): nothing changed.
    NotLost,
}

/// The result of asking to cancel a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was waiting; it is now cancelled and will never start.
    Cancelled,
    /// It is running; its dispatcher will stop it.
    Requested,
    /// It had already finished in this state.
    AlreadyFinished(JobState),
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only in this state.
    pub state: Option<JobState>,
    /// Only of this class.
    pub class: Option<String>,
    /// Only of this priority.
    pub priority: Option<Priority>,
    /// At most this many (newest first).
    pub limit: u32,
    /// Skip this many.
    pub offset: u32,
}

/// Counts of jobs by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// State name → count, for every state.
    pub by_state: std::collections::BTreeMap<String, u64>,
}

impl Stats {
    /// No jobs: every state counts zero.
    pub fn empty() -> Self {
        Self {
            by_state: JobState::ALL
                .into_iter()
                .map(|state| (state.as_str().to_owned(), 0))
                .collect(),
        }
    }
}

/// How many jobs reached an end, since some time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Finished {
    /// Completed.
    pub completed: u64,
    /// Failed.
    pub failed: u64,
}

/// Which finished jobs to prune: those in `state` that finished before `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoff {
    /// A terminal state; cutoffs for other states are ignored (only finished jobs are pruned).
    pub state: JobState,
    /// Jobs that reached it at or after this time are kept.
    pub before: Millis,
}

/// The finished jobs [`Store::prune`] deleted, or [`Store::expired`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Their ids, in the order they finished.
    pub jobs: Vec<JobId>,
    /// How many attempts they had in all. Each attempt's files are under its job's directory,
    /// `attempts/<job_id>/`, in the state directory of the host that ran it.
    pub attempts: u64,
}

/// A dispatcher, as it registers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatcherInfo {
    /// The host it runs on.
    pub host: String,
    /// Its process id on that host.
    pub pid: u32,
    /// How many attempts it runs at once.
    pub slots: u32,
    /// Its state directory on that host: a dispatcher restarting there finds its predecessor.
    pub state_dir: String,
}

impl DispatcherInfo {
    /// This process on this host, with `slots` slots and the state directory `state_dir`.
    pub fn this_process(slots: usize, state_dir: &Path) -> Self {
        Self {
            host: whoami::hostname().unwrap_or_else(|_| "unknown".into()),
            pid: std::process::id(),
            slots: u32::try_from(slots).unwrap_or(u32::MAX),
            state_dir: state_dir.to_string_lossy().into_owned(),
        }
    }
}

/// A registered dispatcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DispatcherRecord {
    /// Its id.
    pub id: DispatcherId,
    /// The host it runs on.
    pub host: String,
    /// Its process id on that host.
    pub pid: u32,
    /// How many attempts it runs at once.
    pub slots: u32,
    /// Its state directory on that host.
    pub state_dir: String,
    /// When it registered.
    pub started_at: Millis,
    /// Its last heartbeat (its registration, before the first).
    pub heartbeat_at: Millis,
    /// How many attempts it claimed that are not settled yet.
    pub running: u32,
}

/// What a [`StoreError`] means for the caller: whether anything changed, and whether calling
/// again can help. See [`StoreError::class`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The call changed nothing and failed for a reason that passes (another process held the
    /// lock too long, the disk is full, an I/O error, the connection broke, a concurrent
    /// transaction conflicted): the same call may succeed later. Retry it with a backoff.
    Transient,
    /// The connection broke while the call's transaction committed: it may or may not have been
    /// stored. The condition passes like a transient one, but repeating the call may do it
    /// twice: look at what the store holds first, or repeat only a call that is harmless twice.
    OutcomeUnknown,
    /// The call was refused for what it asked or what the store holds (no such job, a state
    /// that does not allow it, a dispatcher no longer registered, a row that does not decode,
    /// a statement the database refused): it changed nothing and the same call will be
    /// refused again. Other calls are unaffected.
    Rejected,
    /// The store cannot be used: the database cannot be opened, is not a database, is
    /// corrupt, was moved away while open, or has a newer schema. Repeating helps nothing until
    /// someone fixes it.
    Fatal,
}

/// Why the store failed. [`StoreError::class`] says what it means for the caller.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or is not a jobhost database.
    #[error("cannot open job database {database}: {reason}")]
    Open {
        /// The file, or the URL with its password masked.
        database: String,
        /// Why, in one line.
        reason: String,
    },
    /// The database was written by a newer jobhost.
    #[error("job database {database} has schema version {found}, newer than this jobhost's {supported}; upgrade jobhost")]
    NewerSchema {
        /// The file, or the URL with its password masked.
        database: String,
        /// Its version.
        found: i64,
        /// Ours.
        supported: i64,
    },
    /// The connection to a database server broke (the server restarted, or an administrator
    /// ended the session). The failed call's transaction was rolled back, unless the
    /// connection broke while it committed; the store's next call connects again.
    #[error("lost the connection to job database {database}: {reason}")]
    ConnectionLost {
        /// The URL, with its password masked.
        database: String,
        /// Why, in one line.
        reason: String,
    },
    /// The connection to a database server broke while the call's transaction committed: the
    /// server may or may not have stored it. The store's next call connects again.
    #[error("lost the connection to job database {database} while committing, so the change may or may not have been stored: {reason}")]
    CommitUnknown {
        /// The URL, with its password masked.
        database: String,
        /// Why, in one line.
        reason: String,
    },
    /// Another connection held the database's lock for longer than the store waits for it
    /// (SQLite busy or locked past its busy timeout; PostgreSQL's lock or statement timeout).
    /// The call was rolled back.
    #[error("job database is busy: {0}")]
    Busy(String),
    /// Writing failed because the disk, or the database's size limit, is full. The call was
    /// rolled back.
    #[error("job database is full: {0}")]
    DiskFull(String),
    /// Reading or writing the database failed: an I/O error, a file that cannot be opened or
    /// written for now, or a server out of memory. The call was rolled back.
    #[error("job database I/O failed: {0}")]
    Io(String),
    /// A concurrent transaction conflicted with the call's (a serialization failure or a
    /// deadlock); it was rolled back.
    #[error("job database transaction conflict: {0}")]
    Conflict(String),
    /// The database is corrupt, is not a SQLite database, or its file was moved or deleted
    /// while open.
    #[error("job database is corrupt: {0}")]
    Corrupt(String),
    /// A store location that names no store jobhost can open.
    #[error("invalid store location {location}: {reason}")]
    InvalidLocation {
        /// The location given, with any password masked.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A statement was refused for what it asked (a constraint, a value out of range) or a
    /// row did not decode.
    #[error("job database: {0}")]
    Query(String),
    /// The dispatcher claiming is not registered: it deregistered, or it missed its lease and
    /// another dispatcher rescued its jobs.
    #[error(
        "dispatcher {0} is not registered (its lease may have expired and its jobs been rescued)"
    )]
    NotRegistered(DispatcherId),
    /// No such job.
    #[error("no job with id {0}")]
    NotFound(JobId),
    /// The job is not in a state that allows the operation.
    #[error("job {id} is {state}: {what}")]
    WrongState {
        /// The job.
        id: JobId,
        /// Its state.
        state: JobState,
        /// What was refused.
        what: &'static str,
    },
}

impl StoreError {
    /// What the error means for the caller: see [`ErrorClass`].
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::ConnectionLost { .. }
            | Self::Busy(_)
            | Self::DiskFull(_)
            | Self::Io(_)
            | Self::Conflict(_) => ErrorClass::Transient,
            Self::CommitUnknown { .. } => ErrorClass::OutcomeUnknown,
            Self::Query(_)
            | Self::NotRegistered(_)
            | Self::NotFound(_)
            | Self::WrongState { .. } => ErrorClass::Rejected,
            Self::Open { .. }
            | Self::NewerSchema { .. }
            | Self::Corrupt(_)
            | Self::InvalidLocation { .. } => ErrorClass::Fatal,
        }
    }

    /// Whether the condition passes, so that calling again later may succeed: true for
    /// [`ErrorClass::Transient`] and for [`ErrorClass::OutcomeUnknown`] (see
    /// [`StoreError::outcome_unknown`] before repeating a call that must not happen twice).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.class(),
            ErrorClass::Transient | ErrorClass::OutcomeUnknown
        )
    }

    /// Whether the failed call may nevertheless have been stored ([`ErrorClass::OutcomeUnknown`]).
    /// Every other error means the call changed nothing.
    pub fn outcome_unknown(&self) -> bool {
        self.class() == ErrorClass::OutcomeUnknown
    }

    /// Whether the store cannot be used until someone fixes it ([`ErrorClass::Fatal`]).
    pub fn is_fatal(&self) -> bool {
        self.class() == ErrorClass::Fatal
    }
}

/// The durable queue. Every method is one atomic transaction.
pub trait Store: Send {
    /// Stores `jobs` in one transaction; a job whose `delay` is zero is queued, any other
    /// scheduled at `now + delay`. Returns their ids in order.
    fn enqueue(&mut self, jobs: &[NewJob], now: Millis) -> Result<Vec<JobId>, StoreError>;

    /// Claims up to `limit` due jobs — highest priority first, then earliest `run_at`, then
    /// lowest id — marks them running, counts the attempt and records its start and `owner`,
    /// the claiming dispatcher. A job is claimed by one caller only, however many claim at
    /// once. Fails with [`StoreError::NotRegistered`] if `owner` is not registered (a `limit`
    /// of zero claims nothing and checks nothing).
    ///
    /// A due job whose row cannot be read as jobhost stores it (params that are not JSON, a
    /// number out of range, an unknown state or priority, a NULL where none belongs:
    /// [`JobRecord::problem`]) is quarantined instead, in the same transaction: settled
    /// `failed`, without an attempt, its `last_error` `quarantined: WHY; ...`. It is not
    /// returned; [`Store::take_quarantined`] reports it once the claim committed, for the
    /// dispatcher to log. One bad row never fails a claim.
    fn claim(
        &mut self,
        owner: DispatcherId,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError>;

    /// Records the workers of claimed attempts, all in one transaction (group commit: a
    /// dispatcher records every worker waiting at its gate at once). Returns, for each item in
    /// order, whether it was recorded: false, changing nothing for it, when the store holds no
    /// such attempt unsettled — no such job, an attempt number it never claimed, or an attempt
    /// settled already (rescued as lost while its worker waited at its gate: that worker must
    /// not start, its job may run elsewhere). Items are applied in order, so an attempt named
    /// twice holds the later start, and both answers are true. An empty batch does nothing.
    fn attempts_started(&mut self, started: &[StartedAttempt<'_>]) -> Result<Vec<bool>, StoreError>;

    /// Records the worker of one claimed attempt: [`Store::attempts_started`] of one item. For
    /// tests: the dispatcher records its workers in batches.
    #[cfg(test)]
    fn attempt_started(
        &mut self,
        id: JobId,
        attempt: u32,
        start: &AttemptStart,
    ) -> Result<bool, StoreError> {
        let recorded = self.attempts_started(&[StartedAttempt { id, attempt, start }])?;
        Ok(recorded.first().copied().unwrap_or(false))
    }

    /// Settles ended attempts, all in one transaction (group commit): for each item in order,
    /// records how the attempt ended and moves its job on. Returns, for each item, whether it
    /// was settled: false, changing nothing for it, when its job is not running that attempt
    /// (no such job, an old attempt number, an attempt settled already — by someone else, or
    /// by an earlier item of this batch naming the same attempt). One item refused so never
    /// fails the others; an error means none was settled. An empty batch does nothing.
    fn settle_many(&mut self, settlements: &[Settlement<'_>]) -> Result<Vec<bool>, StoreError>;

    /// Settles `settlements` as [`Store::settle_many`] does, claims up to `limit` due jobs for
    /// `owner` as [`Store::claim`] does, has `spawn` start their workers, and records those as
    /// [`Store::attempts_started`] does: a dispatcher's round, in one transaction where the
    /// backend can (SQLite and PostgreSQL do), so that one commit both claims a job and puts
    /// its worker on record, and the worker may be let go right after it.
    ///
    /// `spawn` is called once, with the jobs claimed (not when none were), while the claim is
    /// not yet committed; it answers, for each job in order, the start of its worker, waiting at
    /// its gate, or `None` when none could be started (that job stays claimed, without a worker
    /// on record: its attempt is settled `not started` later). An error means nothing was
    /// settled, claimed or recorded, and a claim that failed once the settles were stored (a
    /// dispatcher no longer registered) fails in [`SettledAndClaimed::claimed`]; either way the
    /// workers `spawn` started are not on record and must not start. Only where the backend
    /// cannot do it all in one transaction are the claim and the records committed apart (see
    /// [`settle_then_claim`]); a worker is then on record only where
    /// [`SettledAndClaimed::recorded`] says so.
    fn settle_and_claim(
        &mut self,
        settlements: &[Settlement<'_>],
        owner: DispatcherId,
        now: Millis,
        limit: usize,
        spawn: &mut SpawnWorkers<'_>,
    ) -> Result<SettledAndClaimed, StoreError> {
        settle_then_claim(self, settlements, owner, now, limit, spawn)
    }

    /// Records how attempt `attempt` ended and moves the job on: [`Store::settle_many`] of one
    /// item. Returns false, changing nothing, when the job is not running that attempt any
    /// more (it was settled already). For tests: the dispatcher settles in batches.
    #[cfg(test)]
    fn settle(
        &mut self,
        id: JobId,
        attempt: u32,
        end: &AttemptEnd,
        next: &Next,
    ) -> Result<bool, StoreError> {
        let settled = self.settle_many(&[Settlement {
            id,
            attempt,
            end,
            next,
        }])?;
        Ok(settled.first().copied().unwrap_or(false))
    }

    /// The attempts settled `lost` whose jobs are still stored, each with its job: the ones a
    /// report may still turn up for (a dispatcher rescued while its workers ran on).
    fn lost_attempts(&mut self) -> Result<Vec<(JobRecord, Attempt)>, StoreError>;

    /// Attempt `attempt` of job `id`, settled `lost`, has its worker's report after all:
    /// records it as `end` says. If the job still waits for what the lost attempt gave it
    /// (queued or scheduled, with no attempt since) it moves on to `next` instead
    /// ([`Amended::Moved`]); otherwise only the attempt's record is corrected.
    fn amend_lost(
        &mut self,
        id: JobId,
        attempt: u32,
        end: &AttemptEnd,
        next: &Next,
    ) -> Result<Amended, StoreError>;

    /// Cancels a waiting job, or asks for a running one to be stopped.
    fn cancel(&mut self, id: JobId, now: Millis) -> Result<CancelOutcome, StoreError>;

    /// Queues a failed or cancelled job again, now, with its retry budget renewed: its
    /// retries (at most [`crate::job::MAX_RETRIES`]) after the attempts it used. Refuses
    /// ([`StoreError::WrongState`]) a retry that would allow more than
    /// [`crate::job::MAX_ATTEMPTS`] attempts in all.
    fn retry(&mut self, id: JobId, now: Millis) -> Result<(), StoreError>;

    /// The jobs this connection's claims quarantined since the last call, oldest first.
    fn take_quarantined(&mut self) -> Vec<Quarantined>;

    /// A job and its attempts.
    fn job(&mut self, id: JobId) -> Result<Option<(JobRecord, Vec<Attempt>)>, StoreError>;

    /// Jobs, newest first.
    fn list(&mut self, filter: &ListFilter) -> Result<Vec<JobRecord>, StoreError>;

    /// Counts by state.
    fn stats(&mut self) -> Result<Stats, StoreError>;

    /// How many jobs completed and how many failed at or after `since`.
    fn finished_since(&mut self, since: Millis) -> Result<Finished, StoreError>;

    /// The running jobs whose cancellation was requested.
    fn cancel_requests(&mut self) -> Result<Vec<JobId>, StoreError>;

    /// Every running job with its current attempt.
    fn running(&mut self) -> Result<Vec<(JobRecord, Attempt)>, StoreError>;

    /// The earliest `run_at` of a waiting job.
    fn next_run_at(&mut self) -> Result<Option<Millis>, StoreError>;

    /// How many jobs are waiting or running. For tests and benches (the `internals` feature).
    #[cfg(any(test, feature = "internals"))]
    fn unfinished(&mut self) -> Result<u64, StoreError>;

    /// The distinct plugin files of the jobs waiting or running: the plugin versions that must
    /// be kept.
    fn unfinished_plugins(&mut self) -> Result<Vec<PathBuf>, StoreError>;

    /// Registers a dispatcher at `now`, its first heartbeat. Returns its id, which it claims
    /// under.
    fn register_dispatcher(
        &mut self,
        info: &DispatcherInfo,
        now: Millis,
    ) -> Result<DispatcherId, StoreError>;

    /// Records that dispatcher `id` is alive at `now`. Returns false, changing nothing, when it
    /// is not registered any more: it was rescued (its attempts settled as lost, and perhaps
    /// already running elsewhere) or it deregistered, so it must claim nothing more and
    /// should stop what it runs.
    fn heartbeat(&mut self, id: DispatcherId, now: Millis) -> Result<bool, StoreError>;

    /// Removes dispatcher `id` from the registry. Refuses, returning false and changing
    /// nothing, while an attempt it claimed is unsettled: settle those first. True when it is
    /// not registered any more (including when it was not).
    fn deregister(&mut self, id: DispatcherId) -> Result<bool, StoreError>;

    /// Deletes up to `limit` finished jobs, each finished before its state's cutoff in
    /// `cutoffs`, oldest first, with their attempts, in one short transaction; returns what it
    /// deleted. Fewer than `limit` means no more are due. `None`, changing nothing, when another
    /// connection is pruning this store at the moment (PostgreSQL, where dispatchers on several
    /// hosts prune one at a time); try again later.
    fn prune(&mut self, cutoffs: &[Cutoff], limit: usize) -> Result<Option<Pruned>, StoreError>;

    /// What [`Store::prune`] would delete with `cutoffs`, with no limit, changing nothing.
    fn expired(&mut self, cutoffs: &[Cutoff]) -> Result<Pruned, StoreError>;

    /// Which of `ids` are stored, in ascending order: the others were pruned (ids are never
    /// reused).
    fn existing_jobs(&mut self, ids: &[JobId]) -> Result<Vec<JobId>, StoreError>;

    /// Every registered dispatcher, by id.
    fn dispatchers(&mut self) -> Result<Vec<DispatcherRecord>, StoreError>;

    /// The registered dispatchers whose last heartbeat is before `cutoff` (now less the
    /// lease), by id: the ones to rescue.
    fn expired_dispatchers(&mut self, cutoff: Millis) -> Result<Vec<DispatcherRecord>, StoreError>;
}

/// [`Store::settle_and_claim`] as separate transactions: [`Store::settle_many`], then
/// [`Store::claim`], then, once `spawn` started the claimed jobs' workers,
/// [`Store::attempts_started`]. For a backend, or a round, that cannot do it in one.
pub(crate) fn settle_then_claim<S: Store + ?Sized>(
    store: &mut S,
    settlements: &[Settlement<'_>],
    owner: DispatcherId,
    now: Millis,
    limit: usize,
    spawn: &mut SpawnWorkers<'_>,
) -> Result<SettledAndClaimed, StoreError> {
    let settled = store.settle_many(settlements)?;
    let (claimed, recorded) = match store.claim(owner, now, limit) {
        Ok(jobs) => {
            // Claimed, and told so; a worker whose record failed is not on record, and is
            // settled `not started` once it ended without its go-ahead.
            let recorded = spawn_and_record(&jobs, spawn, |items| {
                Ok::<_, std::convert::Infallible>(store.attempts_started(items).unwrap_or_default())
            });
            let Ok(recorded) = recorded;
            (Ok(jobs), recorded)
        }
        Err(e) => (Err(e), Vec::new()),
    };
    Ok(SettledAndClaimed {
        settled,
        claimed,
        recorded,
    })
}

/// Has `spawn` start the workers of `jobs`, just claimed (not when there are none), and
/// `record` put those it started on record; answers, for each job, whether its worker is on
/// record. The part of [`Store::settle_and_claim`] every backend shares.
pub(crate) fn spawn_and_record<E>(
    jobs: &[JobRecord],
    spawn: &mut SpawnWorkers<'_>,
    record: impl FnOnce(&[StartedAttempt<'_>]) -> Result<Vec<bool>, E>,
) -> Result<Vec<bool>, E> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let starts = spawn(jobs);
    let (index, items): (Vec<usize>, Vec<StartedAttempt<'_>>) = jobs
        .iter()
        .zip(&starts)
        .enumerate()
        .filter_map(|(i, (job, start))| {
            let start = start.as_ref()?;
            Some((
                i,
                StartedAttempt {
                    id: job.id,
                    attempt: job.attempts,
                    start,
                },
            ))
        })
        .unzip();
    let answers = record(&items)?;
    let mut recorded = vec![false; jobs.len()];
    for (i, answer) in index.into_iter().zip(answers) {
        recorded[i] = answer;
    }
    Ok(recorded)
}

/// Tells a dispatcher that processes on other hosts changed the queue (enqueued, cancelled,
/// retried), as the doorbell does for this host's processes: [`listener`] gives one for a
/// backend that several hosts share.
pub trait Listener: Send {
    /// Waits up to `timeout` for a change. True when the queue may have changed (a
    /// notification came, or the listener connected again and what was sent meanwhile is
    /// unknown), false when nothing came. An error means the listener lost its connection and
    /// connecting again failed: the next call tries again, and a caller looping on this
    /// should pause after an error.
    fn wait_for_change(&mut self, timeout: Duration) -> Result<bool, StoreError>;
}

/// Housekeeping a backend needs while a dispatcher serves, done from a connection of its own
/// on a timer so that nothing on the hot path pays for it: [`maintenance`] gives it.
pub trait Maintenance: Send {
    /// How long to wait between two rounds.
    fn interval(&self) -> Duration;

    /// One round. A failure is for the log: the next round tries again.
    fn maintain(&mut self) -> Result<(), StoreError>;
}

/// A listener for the store at `location`, connected, if its backend is shared by several
/// hosts (PostgreSQL's notifications); none for SQLite, which only this host's processes
/// share, and they ring the doorbell.
pub fn listener(location: &StoreLocation) -> Result<Option<Box<dyn Listener>>, StoreError> {
    Ok(match location {
        StoreLocation::Sqlite(_) => None,
        #[cfg(feature = "postgres")]
        StoreLocation::Postgres(url) => Some(Box::new(postgres::PgListener::connect(url)?)),
    })
}

/// The housekeeping the store at `location` needs beside a dispatcher, with its own
/// connection, if it needs any: SQLite checkpoints its write-ahead log; PostgreSQL needs none.
pub fn maintenance(location: &StoreLocation) -> Result<Option<Box<dyn Maintenance>>, StoreError> {
    Ok(match location {
        StoreLocation::Sqlite(path) => Some(Box::new(sqlite::SqliteStore::open(path)?)),
        #[cfg(feature = "postgres")]
        StoreLocation::Postgres(_) => None,
    })
}

/// Where the job database is.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file: the embedded default, under the state directory.
    Sqlite(PathBuf),
    /// A PostgreSQL database, as a `postgres://` or `postgresql://` URL.
    #[cfg(feature = "postgres")]
    Postgres(String),
}

impl StoreLocation {
    /// The default store of a state directory: the embedded one, a file in it.
    pub fn in_state_dir(state_dir: &Path) -> Self {
        Self::Sqlite(state_dir.join(sqlite::DB_FILE))
    }

    /// The store a setting names: a `postgres://` or `postgresql://` URL (checked here, without
    /// connecting). Anything else is an error naming it; SQLite, the default, has no URL (the
    /// caller gives its path as [`StoreLocation::Sqlite`]). A jobhost built without the
    /// `postgres` feature has no store to name: every value is refused, saying so.
    pub fn parse(value: &str) -> Result<Self, StoreError> {
        #[cfg(feature = "postgres")]
        let parsed = postgres::parse_url(value).map(|_| Self::Postgres(value.to_owned()));
        #[cfg(not(feature = "postgres"))]
        let parsed = Err(WITHOUT_POSTGRES.to_owned());
        parsed.map_err(|reason| StoreError::InvalidLocation {
            location: masked(value),
            reason,
        })
    }
}

/// Why a jobhost built without the `postgres` feature refuses every store location.
#[cfg(not(feature = "postgres"))]
const WITHOUT_POSTGRES: &str = "this jobhost was built without PostgreSQL support (the \
                                `postgres` feature); SQLite under the state directory is its \
                                only store, so leave the store setting out";

/// `url` with its password, if any, replaced by `***`: in the user part
/// (`postgres://user:secret@host`) and in a `password=` parameter.
fn masked(url: &str) -> String {
    let mut out = match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((user_info, host)) => match user_info.split_once(':') {
                    Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
                    None => url.to_owned(),
                },
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    };
    let mut from = 0;
    while let Some(at) = out[from..].find("password=") {
        let start = from + at + "password=".len();
        let end = out[start..]
            .find(['&', ' ', '#'])
            .map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "***");
        from = start + 3;
    }
    out
}

/// The file, or the URL with its password masked.
impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            #[cfg(feature = "postgres")]
            Self::Postgres(url) => f.write_str(&masked(url)),
        }
    }
}

/// Like [`Display`](std::fmt::Display): never shows a password.
impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            #[cfg(feature = "postgres")]
            Self::Postgres(url) => f.debug_tuple("Postgres").field(&masked(url)).finish(),
        }
    }
}

/// Opens the store at `location`, bringing its schema up to date.
pub fn open(location: &StoreLocation) -> Result<Box<dyn Store>, StoreError> {
    Ok(match location {
        StoreLocation::Sqlite(path) => Box::new(sqlite::SqliteStore::open(path)?),
        #[cfg(feature = "postgres")]
        StoreLocation::Postgres(url) => Box::new(postgres::PostgresStore::open(url)?),
    })
}

/// Opens the store at `location` if it exists, for the commands that only read (`list`,
/// `show`, `stats`): `None` when there is no SQLite file, or the PostgreSQL database holds no
/// jobhost schema; nothing is created. An older schema is brought up to date, as [`open`]
/// does.
pub fn open_existing(location: &StoreLocation) -> Result<Option<Box<dyn Store>>, StoreError> {
    Ok(match location {
        StoreLocation::Sqlite(path) => {
            sqlite::SqliteStore::open_existing(path)?.map(|s| Box::new(s) as Box<dyn Store>)
        }
        #[cfg(feature = "postgres")]
        StoreLocation::Postgres(url) => {
            postgres::PostgresStore::open_existing(url)?.map(|s| Box::new(s) as Box<dyn Store>)
        }
    })
}

/// The current time as [`Millis`].
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

#[cfg(test)]
mod tests {
    use super::{masked, open, parse_job_id, StoreError, StoreLocation};

    #[test]
    fn a_job_id_is_written_one_way_only() {
        assert_eq!(parse_job_id("1"), Ok(1));
        assert_eq!(parse_job_id("42"), Ok(42));
        assert_eq!(parse_job_id("9223372036854775807"), Ok(i64::MAX));
        for text in [
            "",
            "0",
            "00",
            "+1",
            "-1",
            "00001",
            "01",
            " 1",
            "1 ",
            "1e3",
            "0x1",
            "1_000",
            "١",
            "9223372036854775808",
            "abc",
        ] {
            let error = parse_job_id(text).unwrap_err();
            assert!(
                error.starts_with(&format!("{text:?} is not a job id (")),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn passwords_are_masked_in_the_user_part_and_in_parameters() {
        assert_eq!(
            masked("postgres://jobs:s3cr:et@db.example:5432/queue"),
            "postgres://jobs:***@db.example:5432/queue"
        );
        assert_eq!(
            masked("postgresql://jobs@db/queue?password=s3cret&sslmode=disable"),
            "postgresql://jobs@db/queue?password=***&sslmode=disable"
        );
        assert_eq!(masked("postgres://db/queue"), "postgres://db/queue");
        assert_eq!(masked("host=db password=s3cret"), "host=db password=***");
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn a_store_location_is_a_postgres_url_and_never_shows_its_password() {
        for url in [
            "postgres://jobs:s3cret@db.example:5432/queue",
            "postgresql://jobs@db.example/queue?connect_timeout=5",
        ] {
            let location = StoreLocation::parse(url).unwrap();
            assert_eq!(location, StoreLocation::Postgres(url.into()));
            assert!(!location.to_string().contains("s3cret"), "{location}");
            assert!(!format!("{location:?}").contains("s3cret"), "{location:?}");
        }
        assert_eq!(
            StoreLocation::parse("postgres://jobs:s3cret@db/queue")
                .unwrap()
                .to_string(),
            "postgres://jobs:***@db/queue"
        );
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn anything_else_is_an_error_naming_it() {
        for (value, named) in [
            ("/var/jobs.sqlite3", "/var/jobs.sqlite3"),
            ("mysql://jobs:s3cret@db/queue", "mysql://jobs:***@db/queue"),
            ("postgres://db:port/queue", "postgres://db:port/queue"),
        ] {
            let Err(e) = StoreLocation::parse(value) else {
                panic!("{value} was taken for a store location")
            };
            assert!(matches!(e, StoreError::InvalidLocation { .. }), "{e}");
            let message = e.to_string();
            assert!(
                message.starts_with(&format!("invalid store location {named}: ")),
                "{message}"
            );
        }
    }

    #[cfg(not(feature = "postgres"))]
    #[test]
    fn without_the_postgres_feature_every_location_is_one_error_saying_so() {
        for (value, named) in [
            (
                "postgres://jobs:s3cret@db.example:5432/queue",
                "postgres://jobs:***@db.example:5432/queue",
            ),
            ("postgresql://jobs@db/queue", "postgresql://jobs@db/queue"),
            ("/var/jobs.sqlite3", "/var/jobs.sqlite3"),
        ] {
            let Err(e) = StoreLocation::parse(value) else {
                panic!("{value} was taken for a store location")
            };
            assert!(matches!(e, StoreError::InvalidLocation { .. }), "{e}");
            assert_eq!(
                e.to_string(),
                format!(
                    "invalid store location {named}: this jobhost was built without PostgreSQL \
                     support (the `postgres` feature); SQLite under the state directory is its \
                     only store, so leave the store setting out"
                )
            );
        }
    }

    #[test]
    fn open_opens_a_sqlite_location() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&StoreLocation::Sqlite(dir.path().join("jobs.sqlite3"))).unwrap();
        assert_eq!(store.unfinished().unwrap(), 0);
    }
}
