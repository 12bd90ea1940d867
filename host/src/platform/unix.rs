//! The Unix (Linux) implementation of the platform layer.
//!
//! A child is spawned with `posix_spawn` semantics (no `pre_exec`, so std keeps its fast
//! vfork path); the worker makes itself a session leader (`setsid`) as its first act, which
//! gives it its own process group, no controlling terminal and so no SIGHUP when the caller's
//! terminal goes away: the spec's `nohup … &`. Until it has done so the group does not exist
//! yet, so a stop falls back to signalling the child itself. The supervisor waits on a pidfd,
//! the output pipe and the cancel token with one `poll`, so it wakes for events, never on a
//! timer, except for the deadline it is enforcing.

use std::{
    io,
    os::{fd::OwnedFd, unix::process::ExitStatusExt},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Instant, SystemTime},
};

use rustix::{
    event::{poll, PollFd, PollFlags, Timespec},
    io::Errno,
    pipe::{pipe_with, PipeFlags},
    process::{kill_process, kill_process_group, pidfd_open, Pid, PidfdFlags, Signal},
};

use super::{ExitKind, OutputSink, ProcessEnd, StopReason, SuperviseOptions};

/// A one-shot cancellation that wakes a supervisor blocked in `poll`. Firing it is
/// async-signal-safe, so it can be wired to SIGINT/SIGTERM.
#[derive(Debug)]
pub struct CancelToken {
    fired: AtomicBool,
    read: OwnedFd,
    write: OwnedFd,
}

impl CancelToken {
    /// A token that has not fired.
    pub fn new() -> io::Result<Arc<Self>> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        Ok(Arc::new(Self {
            fired: AtomicBool::new(false),
            read,
            write,
        }))
    }

    /// Fires the token.
    pub fn cancel(&self) {
        self.fired.store(true, Ordering::SeqCst);
        // A full pipe already wakes the reader; nothing else can go wrong that matters here.
        let _ = rustix::io::write(&self.write, &[1]);
    }

    /// Whether the token has fired.
    pub fn is_cancelled(&self) -> bool {
        if self.fired.load(Ordering::SeqCst) {
            return true;
        }
        // A signal handler registered by `cancel_on_signals` writes to the pipe only.
        let mut buf = [0u8; 1];
        let got = matches!(rustix::io::read(&self.read, &mut buf), Ok(n) if n > 0);
        if got {
            self.cancel();
        }
        got
    }

    /// Waits until the token fires or `timeout` passes; true if it fired. This is how a delay
    /// or a retry's wait stays cancellable without polling.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_cancelled() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut fds = [PollFd::new(&self.read, PollFlags::IN)];
            let _ = poll(&mut fds, Some(&timespec(left)));
        }
    }

    /// Fires the token when the process receives SIGINT, SIGTERM or SIGHUP.
    pub fn cancel_on_signals(&self) -> io::Result<()> {
        for signal in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            signal_hook::low_level::pipe::register(signal, self.write.try_clone()?)?;
        }
        Ok(())
    }
}

/// What a worker or inspector process does to itself before anything else: become a session
/// leader (own session and process group, no controlling terminal), never dump core, and turn
/// SIGTERM into a cancellation request the job can observe. Returns the flag SIGTERM sets.
pub fn prepare_child() -> io::Result<Arc<AtomicBool>> {
    // Already a session leader is fine (EPERM); anything else is not.
    match rustix::process::setsid() {
        Ok(_) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
    signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        Arc::new(AtomicBool::new(false)),
    )?;
    Ok(stop)
}

/// The name of signal `signal`, such as `SIGSEGV`.
pub fn crash_name(signal: i32) -> String {
    const NAMES: [(Signal, &str); 16] = [
        (Signal::SEGV, "SIGSEGV"),
        (Signal::ABORT, "SIGABRT"),
        (Signal::BUS, "SIGBUS"),
        (Signal::ILL, "SIGILL"),
        (Signal::FPE, "SIGFPE"),
        (Signal::KILL, "SIGKILL"),
        (Signal::TERM, "SIGTERM"),
        (Signal::INT, "SIGINT"),
        (Signal::HUP, "SIGHUP"),
        (Signal::QUIT, "SIGQUIT"),
        (Signal::PIPE, "SIGPIPE"),
        (Signal::TRAP, "SIGTRAP"),
        (Signal::SYS, "SIGSYS"),
        (Signal::XCPU, "SIGXCPU"),
        (Signal::XFSZ, "SIGXFSZ"),
        (Signal::ALARM, "SIGALRM"),
    ];
    NAMES
        .iter()
        .find(|(s, _)| s.as_raw() == signal)
        .map_or_else(
            || format!("signal {signal}"),
            |(_, name)| (*name).to_owned(),
        )
}

/// Spawns `command` with stdin from `/dev/null` and stdout and stderr into `sink`, stops its
/// process group at `options.timeout` or when `cancel` fires (SIGTERM, then SIGKILL after
/// `options.kill_grace`), kills whatever it left behind in its group, and reports how it ended.
pub fn supervise(
    mut command: Command,
    options: SuperviseOptions,
    cancel: &CancelToken,
    sink: &mut dyn OutputSink,
) -> io::Result<ProcessEnd> {
    let (out_read, out_write) = pipe_with(PipeFlags::CLOEXEC)?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_write.try_clone()?))
        .stderr(Stdio::from(out_write));
    let started_at = SystemTime::now();
    let started = Instant::now();
    let mut child = command.spawn()?;
    // The command holds the pipe's write ends; drop them so EOF can arrive.
    drop(command);
    let pid = child.id();
    let raw_pid = Pid::from_raw(pid as i32).ok_or_else(|| io::Error::other("child pid 0"))?;
    let pidfd = pidfd_open(raw_pid, PidfdFlags::empty())?;
    rustix::io::ioctl_fionbio(&out_read, true)?;

    let deadline = started + options.timeout;
    let mut stopped: Option<StopReason> = None;
    let mut kill_at: Option<Instant> = None;
    let mut output_open = true;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        if stopped.is_none() && (now >= deadline || cancel.is_cancelled()) {
            stopped = Some(if now >= deadline {
                StopReason::TimedOut
            } else {
                StopReason::Cancelled
            });
            signal_tree(raw_pid, Signal::TERM);
            kill_at = Some(now + options.kill_grace);
        }
        if kill_at.is_some_and(|at| now >= at) {
            signal_tree(raw_pid, Signal::KILL);
            kill_at = None;
        }
        let wake_at = match (stopped, kill_at) {
            (None, _) => Some(deadline),
            (Some(_), at) => at,
        };
        let timeout = wake_at.map(|at| timespec(at.saturating_duration_since(Instant::now())));

        // Once stopping, the fired token stays readable; watching it would spin.
        let watched_cancel = if stopped.is_none() {
            Some(&cancel.read)
        } else {
            None
        };
        let mut fds: Vec<PollFd<'_>> = [
            Some(&pidfd),
            output_open.then_some(&out_read),
            watched_cancel,
        ]
        .into_iter()
        .flatten()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let exited = !fds[0].revents().is_empty();
        if output_open && !fds[1].revents().is_empty() {
            output_open = drain(&out_read, &mut buf, sink)?;
        }
        if exited {
            if output_open {
                drain(&out_read, &mut buf, sink)?;
            }
            break;
        }
    }
    // The worker is a zombie until waited for, so its pid (and group id) cannot have been
    // reused: killing the group now reaches only what the job left behind.
    signal_tree(raw_pid, Signal::KILL);
    let status = child.wait()?;
    let exit = match status.signal() {
        Some(signal) => ExitKind::Signaled(signal),
        None => ExitKind::Exited(status.code().unwrap_or(-1)),
    };
    Ok(ProcessEnd {
        pid,
        started_at,
        duration: started.elapsed(),
        exit,
        stopped,
    })
}

fn timespec(d: std::time::Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// Reads what is available; `Ok(false)` once the pipe is closed.
fn drain(fd: &OwnedFd, buf: &mut [u8], sink: &mut dyn OutputSink) -> io::Result<bool> {
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Ok(0) => return Ok(false),
            Ok(n) => sink.write(&buf[..n]),
            Err(Errno::AGAIN) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Signals the child's process group; before the child has made its group, the child alone.
fn signal_tree(pid: Pid, signal: Signal) {
    if kill_process_group(pid, signal).is_err() {
        let _ = kill_process(pid, signal);
    }
}
