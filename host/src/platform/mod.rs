//! Everything that differs between operating systems, behind one small interface.
//!
//! The rest of the host sees: [`CancelToken`] (a wake-up another thread or a signal handler can
//! fire), [`supervise`] (spawn a child detached from its caller, stream its output, enforce a
//! deadline, stop its whole process tree on cancel or timeout, and say how it ended), [`adopt`]
//! (the same for a worker left behind by a crashed dispatcher), [`OutputPair`] (where a child's
//! output goes), [`prepare_child`] (what a worker does to itself first), [`crash_name`],
//! [`Doorbell`] and [`ring`] (how an enqueuer wakes a dispatcher), [`FileLock`] (one
//! dispatcher per state directory), and a few process helpers. `unix.rs` is the
//! implementation for Linux; a Windows implementation (`start /b` semantics, Job Objects) goes
//! beside it as `windows.rs`.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::{
    adopt, crash_name, detach_self, find_processes, hold_output_open, prepare_child,
    process_command_line, reopen_output, ring, supervise, terminate, CancelToken, Doorbell,
    FileLock, OutputPair,
};

use std::time::Duration;

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

/// What [`supervise`] observed.
#[derive(Debug, Clone)]
pub struct ProcessEnd {
    /// The child's process id.
    pub pid: u32,
    /// How long it ran.
    pub duration: Duration,
    /// How it ended.
    pub exit: ExitKind,
    /// Whether, and why, the supervisor stopped it.
    pub stopped: Option<StopReason>,
}

/// Limits for one supervised process.
#[derive(Debug, Clone, Copy)]
pub struct SuperviseOptions {
    /// How long it may run before it is stopped.
    pub timeout: Duration,
    /// How long it may take to stop after being asked before it is killed.
    pub kill_grace: Duration,
}

/// Where a supervised process's output goes, chunk by chunk, as it is produced.
pub trait OutputSink {
    /// Takes the next chunk of combined stdout and stderr.
    fn write(&mut self, chunk: &[u8]);
}
