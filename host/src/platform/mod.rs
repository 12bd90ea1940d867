//! Everything that differs between operating systems, behind one small interface: `unix.rs`
//! implements it for Linux (pidfds, `poll`, process groups, signals, a Unix datagram doorbell)
//! and `windows.rs` for Windows (detached spawn, a Job Object per worker, a named stop event,
//! a loopback-TCP doorbell); the rest of the host is the same code on both.
//!
//! The interface, by what it is for:
//! - supervising a child: [`supervise`] (spawn it detached, or take a worker `fork_worker`
//!   had the fork server fork, [`fork_server`], Linux: a [`Launch`]; stream its output, enforce
//!   a deadline, stop its whole tree on cancel or timeout, say how it ended),
//!   [`supervise_quietly`] (the same for a helper child judged by its report alone),
//!   [`adopt`] (the same for a worker a crashed dispatcher left running), [`CancelToken`],
//!   [`OutputPair`], [`reopen_output`], [`crash_name`], and the `StopSchedule` both
//!   implementations follow;
//! - in the child: [`prepare_child`], [`hold_output_open`] (of [`HELD_OUTPUT`]), [`await_go_ahead`],
//!   [`stdin_to_null`], [`exit_child`], and for the inspector [`adopt_orphans`] and [`kill_adopted`];
//! - between processes: [`Doorbell`], [`ring`], [`answers`], [`FileLock`], [`find_worker`];
//! - detaching and signals: [`detach_command`], [`detach_self`] (the spec's `nohup … &` and
//!   `start /b`), [`on_signals`] and [`on_termination`].

#[cfg(unix)]
pub mod fork_server;
#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::{
    adopt, adopt_orphans, answers, await_go_ahead, crash_name, detach_command, detach_self, exit_child,
    find_worker, fork_worker, hold_output_open, kill_adopted, on_signals, on_termination,
    prepare_child, reopen_output, ring, stdin_to_null, supervise, CancelToken, Doorbell,
    ForkedWorker, Launch, OutputPair, Supervised, HELD_OUTPUT, SUPERVISED_FDS, poll_supervised,
    empty_pipe,
};
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::{
    adopt, adopt_orphans, answers, await_go_ahead, crash_name, detach_command, detach_self, exit_child,
    find_worker, hold_output_open, kill_adopted, on_signals, on_termination, prepare_child,
    reopen_output, ring, stdin_to_null, supervise, CancelToken, Doorbell, Launch, OutputPair,
    HELD_OUTPUT,
};

use std::time::{Duration, Instant};

/// What a signal asks of a long-running process (see [`on_signals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalRequest {
    /// Stop gracefully: SIGINT, SIGTERM; Ctrl+C on Windows.
    Stop,
    /// Open the log files again by their paths: SIGHUP, SIGUSR1 (after logrotate). Windows has
    /// no such signal.
    #[cfg_attr(windows, allow(dead_code))]
    ReopenLogs,
}

/// How a supervised process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal (Unix) or ended with this crash code (Windows).
    Signaled(i32),
}

/// Why the supervisor stopped a process before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Its deadline passed.
    TimedOut,
    /// Someone cancelled it.
    Cancelled,
}

/// When a supervisor stops a process, shared by every platform: nothing until the deadline
/// passes or the process is cancelled; then it is asked to stop (SIGTERM, its stop event) and,
/// if it still runs `kill_grace` later, forced (SIGKILL, `TerminateProcess`), once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StopSchedule {
    deadline: Instant,
    kill_grace: Duration,
    stopped: Option<StopReason>,
    force_at: Option<Instant>,
}

/// What a supervisor does to its process now, by [`StopSchedule::at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct StopActions {
    /// Ask it to stop.
    pub ask: bool,
    /// Force it to stop.
    pub force: bool,
}

impl StopSchedule {
    /// A schedule for a process whose deadline is `deadline`.
    pub(crate) fn new(deadline: Instant, kill_grace: Duration) -> Self {
        Self {
            deadline,
            kill_grace,
            stopped: None,
            force_at: None,
        }
    }

    /// What to do at `now`, when the process has been cancelled if `cancelled`: each action
    /// comes once, the ask when the stop begins, the force when its grace is over (at once
    /// with no grace).
    pub(crate) fn at(&mut self, now: Instant, cancelled: bool) -> StopActions {
        let mut actions = StopActions::default();
        if self.stopped.is_none() && (now >= self.deadline || cancelled) {
            self.stopped = Some(if now >= self.deadline {
                StopReason::TimedOut
            } else {
                StopReason::Cancelled
            });
            self.force_at = Some(now + self.kill_grace);
            actions.ask = true;
        }
        if self.force_at.is_some_and(|at| now >= at) {
            self.force_at = None;
            actions.force = true;
        }
        actions
    }

    /// When the supervisor must look again even if nothing happens: the deadline while the
    /// process runs unstopped, the end of the grace while it is being stopped, then never.
    pub(crate) fn wake_at(&self) -> Option<Instant> {
        match self.stopped {
            None => Some(self.deadline),
            Some(_) => self.force_at,
        }
    }

    /// Why the process was stopped, once it was.
    pub(crate) fn stopped(&self) -> Option<StopReason> {
        self.stopped
    }
}

/// What [`supervise`] observed.
#[derive(Debug, Clone)]
pub struct ProcessEnd {
    /// The child's process id.
    pub pid: u32,
    /// How long it ran.
    pub duration: Duration,
    /// How it ended; `None` when that cannot be known (a forked worker whose fork server died
    /// before it could reap it).
    pub exit: Option<ExitKind>,
    /// Whether, and why, the supervisor stopped it.
    pub stopped: Option<StopReason>,
    /// Whether a gated child took its go-ahead: false when it was refused it, or ended
    /// before reading it (then no plugin code ran). Meaningless for a child that does not
    /// wait for one.
    pub took_go_ahead: bool,
}

/// The name of a Windows crash code (an NTSTATUS error), such as `0xC0000005 access
/// violation`: what [`crash_name`] says on Windows. Platform-independent, so it is tested
/// everywhere.
#[cfg(any(windows, test))]
fn ntstatus_name(code: u32) -> String {
    let what = match code {
        0xC000_0005 => "access violation",
        0xC000_0409 => "stack buffer overrun / abort",
        0xC000_00FD => "stack overflow",
        0xC000_001D => "illegal instruction",
        0xC000_0094 => "integer divide by zero",
        0xC000_0374 => "heap corruption",
        0xC000_0135 => "DLL not found",
        0xC000_013A => "terminated by Ctrl+C",
        _ => "",
    };
    if what.is_empty() {
        format!("0x{code:08X}")
    } else {
        format!("0x{code:08X} {what}")
    }
}

/// How a Windows process that exited with `code` ended: a crash for an NTSTATUS error code
/// (`0xC0000000` and up), else an exit with a code the program chose.
#[cfg(any(windows, test))]
fn exit_kind_of_code(code: u32) -> ExitKind {
    if code >= 0xC000_0000 {
        ExitKind::Signaled(code as i32)
    } else {
        ExitKind::Exited(code as i32)
    }
}

/// Limits for one supervised process.
#[derive(Debug, Clone, Copy)]
pub struct SuperviseOptions {
    /// How long it may run before it is stopped.
    pub timeout: Duration,
    /// How long it may take to stop after being asked before it is killed.
    pub kill_grace: Duration,
}

/// The byte [`supervise`] writes to a gated child's stdin to let it start
/// (`crate::runner::protocol::WorkerRequest::gate`).
pub const GO: u8 = b'g';

/// Gives a spawned child its go-ahead: writes [`GO`] to its stdin when `go`, and returns the
/// pipe, to be kept open while the child runs, so that its supervisor can tell afterwards
/// whether the child read it; when not `go`, closes it at once, so the child reads end of
/// input, as from the null device. A child that does not wait for the go-ahead never notices;
/// one that does and gets only end of input starts nothing.
fn give_go_ahead<W: std::io::Write>(stdin: Option<W>, go: bool) -> Option<W> {
    let mut stdin = stdin.filter(|_| go)?;
    // A child that is gone already has nothing to start.
    let _ = stdin.write_all(&[GO]);
    Some(stdin)
}

/// An exclusive lock on a file, held until dropped (or the process dies).
#[derive(Debug)]
pub struct FileLock {
    file: std::fs::File,
}

impl FileLock {
    /// Takes the lock on `path` if nobody holds it, writing this process's id into the file.
    pub fn try_acquire(path: &std::path::Path) -> std::io::Result<Option<Self>> {
        Self::try_acquire_noted(path, "")
    }

    /// Takes the lock on `path` if nobody holds it, writing this process's id into the file
    /// and `note` (one line: what kind of holder it is) on the line after it.
    pub fn try_acquire_noted(path: &std::path::Path, note: &str) -> std::io::Result<Option<Self>> {
        let file = Self::open(path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        Self::held(file, note).map(Some)
    }

    /// Takes the lock on `path`, waiting for whoever holds it.
    pub fn acquire(path: &std::path::Path) -> std::io::Result<Self> {
        let file = Self::open(path)?;
        file.lock()?;
        Self::held(file, "")
    }

    /// Opens (creating) the lock file at `path`: never blocking on a FIFO, and only a regular
    /// file.
    fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
        let mut options = std::fs::OpenOptions::new();
        options.create(true).truncate(false).read(true).write(true);
        crate::shared::files::open_regular(&mut options, path, "a lock file")
    }

    fn held(file: std::fs::File, note: &str) -> std::io::Result<Self> {
        use std::io::Write;
        file.set_len(0)?;
        let mut text = format!("{}\n", std::process::id());
        if !note.is_empty() {
            text.push_str(note);
            text.push('\n');
        }
        (&file).write_all(text.as_bytes())?;
        Ok(Self { file })
    }

    /// Whether somebody holds the lock on `path` now. Looks without taking it for long and
    /// without changing the file: a shared lock cannot be had while the lock is held.
    pub fn is_held(path: &std::path::Path) -> bool {
        let mut options = std::fs::OpenOptions::new();
        let Ok(file) = crate::shared::files::open_regular(options.read(true), path, "a lock file")
        else {
            return false;
        };
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                false
            }
            Err(std::fs::TryLockError::WouldBlock) => true,
            Err(std::fs::TryLockError::Error(_)) => false,
        }
    }

    /// The pid written by whoever holds (or last held) the lock on `path`.
    pub fn holder(path: &std::path::Path) -> Option<u32> {
        let text = Self::read(path)?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The note written by whoever holds (or last held) the lock on `path` (see
    /// [`FileLock::try_acquire_noted`]); empty when it wrote none.
    pub fn holder_note(path: &std::path::Path) -> Option<String> {
        let text = Self::read(path)?;
        Some(text.lines().nth(1).unwrap_or_default().trim().to_owned())
    }

    /// What the lock file at `path` says, if it is a regular file of a lock file's size.
    fn read(path: &std::path::Path) -> Option<String> {
        crate::shared::files::read_capped_text(
            path,
            crate::shared::files::MAX_STATE_FILE_BYTES,
            "a lock file",
        )
        .ok()
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// An [`OutputSink`] that drops everything: for a child whose output is of no use, such as
/// an inspector's (its verdict is its report).
struct DiscardOutput;

impl OutputSink for DiscardOutput {
    fn write(&mut self, _: &[u8]) {}
}

/// [`supervise`] for a helper child whose verdict is a report file: its output is dropped,
/// nothing cancels it but `options.timeout`, and it starts without waiting for a go-ahead.
pub fn supervise_quietly(
    command: std::process::Command,
    options: SuperviseOptions,
) -> std::io::Result<ProcessEnd> {
    let never = CancelToken::new()?;
    supervise(
        Launch::Exec(command),
        OutputPair::pipe()?,
        options,
        &never,
        &mut DiscardOutput,
        &mut |_| true,
    )
}

/// Where a supervised process's output goes, chunk by chunk, as it is produced (on Windows,
/// from a reader thread).
pub trait OutputSink: Send {
    /// Takes the next chunk of combined stdout and stderr.
    fn write(&mut self, chunk: &[u8]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_crash_codes_are_named_with_their_hex_code() {
        for (code, name) in [
            (0xC000_0005, "0xC0000005 access violation"),
            (0xC000_00FD, "0xC00000FD stack overflow"),
            (0xC000_0409, "0xC0000409 stack buffer overrun / abort"),
            (0xC000_001D, "0xC000001D illegal instruction"),
            (0xC000_0094, "0xC0000094 integer divide by zero"),
            (0xC000_0374, "0xC0000374 heap corruption"),
            (0xC000_0135, "0xC0000135 DLL not found"),
            (0xC000_013A, "0xC000013A terminated by Ctrl+C"),
            (0xC000_0001, "0xC0000001"),
            (0xE06D_7363, "0xE06D7363"),
        ] {
            assert_eq!(ntstatus_name(code), name);
        }
    }

    #[test]
    fn a_windows_exit_code_is_a_crash_only_when_it_is_an_ntstatus_error() {
        assert_eq!(exit_kind_of_code(0), ExitKind::Exited(0));
        assert_eq!(exit_kind_of_code(1), ExitKind::Exited(1));
        assert_eq!(
            exit_kind_of_code(0xBFFF_FFFF),
            ExitKind::Exited(-1_073_741_825)
        );
        assert_eq!(
            exit_kind_of_code(0xC000_0005),
            ExitKind::Signaled(0xC000_0005_u32 as i32)
        );
        assert_eq!(
            exit_kind_of_code(0xC000_00FD),
            ExitKind::Signaled(0xC000_00FD_u32 as i32)
        );
        // What `unwrap_or(-1)` gives for a process with no exit code.
        assert_eq!(exit_kind_of_code(-1_i32 as u32), ExitKind::Signaled(-1));
    }

    const GRACE: Duration = Duration::from_secs(5);

    fn schedule() -> (Instant, StopSchedule) {
        let start = Instant::now();
        (
            start,
            StopSchedule::new(start + Duration::from_secs(60), GRACE),
        )
    }

    const NOTHING: StopActions = StopActions {
        ask: false,
        force: false,
    };
    const ASK: StopActions = StopActions {
        ask: true,
        force: false,
    };
    const FORCE: StopActions = StopActions {
        ask: false,
        force: true,
    };

    #[test]
    fn nothing_happens_before_the_deadline_and_it_wakes_at_the_deadline() {
        let (start, mut schedule) = schedule();
        assert_eq!(schedule.at(start + Duration::from_secs(59), false), NOTHING);
        assert_eq!(schedule.wake_at(), Some(start + Duration::from_secs(60)));
        assert_eq!(schedule.stopped(), None);
    }

    /// A stop that begins at `begin` (`cancelled` or not) for `reason`: asked once at once,
    /// nothing within the grace, forced once when it is over, then nothing to wake for.
    fn stops_once(
        schedule: &mut StopSchedule,
        begin: Instant,
        cancelled: bool,
        reason: StopReason,
    ) {
        assert_eq!(schedule.at(begin, cancelled), ASK);
        assert_eq!(schedule.stopped(), Some(reason));
        assert_eq!(schedule.wake_at(), Some(begin + GRACE));
        assert_eq!(schedule.at(begin + GRACE / 2, cancelled), NOTHING);
        assert_eq!(schedule.at(begin + GRACE, cancelled), FORCE);
        assert_eq!(schedule.wake_at(), None);
    }

    #[test]
    fn at_the_deadline_it_is_asked_then_forced_once_after_the_grace() {
        let (start, mut schedule) = schedule();
        let deadline = start + Duration::from_secs(60);
        stops_once(&mut schedule, deadline, false, StopReason::TimedOut);
        // A cancel arriving afterwards changes nothing.
        assert_eq!(schedule.at(deadline + GRACE * 2, true), NOTHING);
        assert_eq!(schedule.stopped(), Some(StopReason::TimedOut));
    }

    #[test]
    fn a_cancel_before_the_deadline_stops_it_as_cancelled() {
        let (start, mut schedule) = schedule();
        stops_once(
            &mut schedule,
            start + Duration::from_secs(1),
            true,
            StopReason::Cancelled,
        );
        // The deadline passing afterwards changes neither the reason nor asks again.
        assert_eq!(schedule.at(start + Duration::from_secs(60), true), NOTHING);
        assert_eq!(schedule.stopped(), Some(StopReason::Cancelled));
    }

    #[test]
    fn without_a_grace_it_is_asked_and_forced_at_once() {
        let start = Instant::now();
        let mut schedule = StopSchedule::new(start, Duration::ZERO);
        assert_eq!(
            schedule.at(start, false),
            StopActions {
                ask: true,
                force: true
            }
        );
        assert_eq!(schedule.wake_at(), None);
    }

    #[test]
    fn a_late_look_past_deadline_and_grace_asks_first_and_forces_at_the_next() {
        let (start, mut schedule) = schedule();
        let late = start + Duration::from_secs(120);
        // The grace counts from when the stop began, so a supervisor that wakes late still
        // gives the process its grace.
        assert_eq!(schedule.at(late, false), ASK);
        assert_eq!(schedule.wake_at(), Some(late + GRACE));
    }
}
