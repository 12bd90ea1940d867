//! The Unix (Linux) implementation of the platform layer.
//!
//! A child is spawned with `posix_spawn` semantics (no `pre_exec`, so std keeps its fast
//! vfork path), or forked by the fork server ([`fork_server`]); the worker makes itself a session leader (`setsid`) as its first act, which
//! gives it its own process group, no controlling terminal and so no SIGHUP when the caller's
//! terminal goes away: the spec's `nohup … &`. Until it has done so the group does not exist
//! yet, so a stop falls back to signalling the child itself, through its pidfd: a worker is
//! never signalled by a bare pid (see [`Worker::signal`]). The supervisor waits on a pidfd,
//! the output pipe and the cancel token with one `poll`, so it wakes for events, never on a
//! timer, except for the deadline it is enforcing.

use std::{
    io,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::process::ExitStatusExt,
    },
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use rustix::{
    event::{poll, PollFd, PollFlags, Timespec},
    fs::{Mode, OFlags},
    io::Errno,
    pipe::{pipe_with, PipeFlags},
    process::{kill_process_group, pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal},
};

use super::{
    fork_server::{self, ForkFds, ForkServer},
    give_go_ahead, ExitKind, OutputSink, ProcessEnd, SignalRequest, StopReason, StopSchedule,
    SuperviseOptions,
};

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
}

/// What a worker or inspector process does to itself before anything else: become a session
/// leader (own session and process group, no controlling terminal), never dump core, and turn
/// SIGTERM into a cancellation request the job can observe. Returns the flag SIGTERM sets.
///
/// The handlers are installed with `sigaction` directly, not through a registry of handlers:
/// a forked worker starts with none set up, and this is all it needs of one.
pub fn prepare_child() -> io::Result<&'static AtomicBool> {
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
    static STOP: AtomicBool = AtomicBool::new(false);
    extern "C" fn on_term(_: libc::c_int) {
        STOP.store(true, Ordering::SeqCst);
    }
    // SIGHUP is caught, not ignored: a job's own children start with its default again.
    extern "C" fn on_hup(_: libc::c_int) {}
    for (signal, handler) in [
        (libc::SIGTERM, on_term as extern "C" fn(libc::c_int)),
        (libc::SIGHUP, on_hup),
    ] {
        // SAFETY: a zeroed `sigaction` is a valid one (empty mask, no flags) once its handler
        // is set; both handlers only store to an atomic or do nothing, which is
        // async-signal-safe.
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if installed != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(&STOP)
}

/// Makes this process the reaper of its descendants (`PR_SET_CHILD_SUBREAPER`): a process
/// whose parent dies is re-parented to it rather than to init, even one that left the process
/// group and session with `setsid()`. So [`kill_adopted`] can find every descendant, however
/// it tried to escape, as long as this process lives.
pub fn adopt_orphans() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    Ok(())
}

/// Kills every descendant of this process and reaps them, until it has no child left. Meant
/// for a process made a reaper by [`adopt_orphans`]: killing a child re-parents the child's
/// own children to it, so repeating until none is left ends the whole tree. Each one is a
/// child not yet waited for, so its pid cannot have been reused; it is still signalled through
/// a pidfd, as every process jobhost stops is.
pub fn kill_adopted() {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    loop {
        for child in children_of(me) {
            if let Some(pidfd) =
                Pid::from_raw(child).and_then(|pid| pidfd_open(pid, PidfdFlags::empty()).ok())
            {
                let _ = pidfd_send_signal(&pidfd, Signal::KILL);
            }
        }
        match rustix::process::waitpid(None, rustix::process::WaitOptions::empty()) {
            Ok(_) | Err(Errno::INTR) => {}
            // ECHILD: no child left, so no descendant either.
            Err(_) => return,
        }
    }
}

/// The processes whose parent is `parent`, from `/proc`.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The parent's pid is the second field after the command name, which is in
            // parentheses and may contain anything.
            stat.rfind(')')
                .and_then(|end| stat[end + 1..].split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<i32>().ok())
                == Some(parent)
        })
        .collect()
}

/// In a gated worker: waits until its stdin has its go-ahead to read (or its end), from then on
/// no longer dies with its fork server if it was forked (see [`fork_server`]), and reads it:
/// the byte, or `None` at the end of input. A worker killed with its fork server before then
/// has not taken the byte, so its supervisor knows it never started. Read straight from the
/// descriptor: a buffered stdin would be set up for one byte.
pub fn await_go_ahead() -> io::Result<Option<u8>> {
    let stdin = rustix::stdio::stdin();
    let mut ready = [PollFd::new(&stdin, PollFlags::IN)];
    loop {
        match poll(&mut ready, None) {
            Ok(_) => break,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    rustix::process::set_parent_process_death_signal(None)?;
    let mut byte = [0u8; 1];
    loop {
        match rustix::io::read(stdin, &mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(byte[0])),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Ends a child process (a worker, an inspector, the fork server) at once with `code`, once
/// what it wrote to its standard streams is out: no `atexit` handler or library destructor
/// runs, a plugin's neither, so a job's work must be done when its method returns. It also
/// spares each worker the cost of running them, which for a forked one was most of its exit.
/// The host's own code in a child writes to stderr only, which Rust does not buffer; the C
/// streams are flushed.
pub fn exit_child(code: i32) -> ! {
    // SAFETY: `fflush(NULL)` flushes every C stream of this process; `_exit` ends it.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::_exit(code)
    }
}

/// In a gated worker, once its go-ahead is read: stdin becomes `/dev/null`, as for any job.
pub fn stdin_to_null() -> io::Result<()> {
    let null = rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    rustix::stdio::dup2_stdin(&null)?;
    Ok(())
}

/// Whether the go-ahead written into `gate` (kept by [`give_go_ahead`]; `None`: none was
/// given) was read: the pipe holds no byte any more. A pipe that cannot be asked counts as
/// read, so an attempt is never taken for one that did not start when it may have.
fn go_ahead_taken(gate: Option<&impl std::os::fd::AsFd>) -> bool {
    gate.is_some_and(|gate| rustix::io::ioctl_fionread(gate).map_or(true, |unread| unread == 0))
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

/// Where a child's stdout and stderr go: the supervisor reads `read`, the child gets `write`.
pub struct OutputPair {
    read: OwnedFd,
    write: OwnedFd,
}

impl OutputPair {
    /// An anonymous pipe. A worker's output survives a restart of its supervisor all the same:
    /// the worker holds a read end of its own stdout open ([`hold_output_open`] of
    /// [`HELD_OUTPUT`]), so its writes never fail with EPIPE while no supervisor reads (they
    /// wait for the next one instead), and the next supervisor opens another read end through
    /// `/proc` ([`reopen_output`]). No file is created for it: creating one per attempt cost
    /// more than the rest of the supervision on a busy ext4.
    pub fn pipe() -> io::Result<Self> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC)?;
        Ok(Self { read, write })
    }
}

/// What a worker holds open to keep its output pipe readable ([`hold_output_open`]): its own
/// stdout, opened again for reading.
pub const HELD_OUTPUT: Option<&str> = Some("/proc/self/fd/1");

/// Opens another read end of the output pipe of the live worker `pid` (its stdout, else its
/// stderr), without blocking: for a supervisor that adopts it after a crash. Only a pipe is
/// opened (a job that pointed its stdout elsewhere has no output to follow).
pub fn reopen_output(pid: u32) -> io::Result<OwnedFd> {
    let mut last = io::Error::from(io::ErrorKind::NotFound);
    for fd in [1, 2] {
        match open_pipe(Path::new(&format!("/proc/{pid}/fd/{fd}"))) {
            Ok(read) => return Ok(read),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Opens the pipe `path` leads to for reading, without blocking; an error for anything else.
fn open_pipe(path: &Path) -> io::Result<OwnedFd> {
    let read = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let kind = rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&read)?.st_mode);
    if kind != rustix::fs::FileType::Fifo {
        return Err(io::Error::other(format!("{} is not a pipe", path.display())));
    }
    Ok(read)
}

/// In the worker: keeps a read end of its output pipe open for the life of the process, by
/// opening `path` ([`HELD_OUTPUT`]) for reading (see [`OutputPair::pipe`]).
pub fn hold_output_open(path: &Path) -> io::Result<()> {
    std::mem::forget(open_pipe(path)?);
    Ok(())
}

/// A child to supervise: a command to spawn, or a worker the fork server forked.
pub enum Launch {
    /// Spawned by the supervisor, with stdin from a pipe of its own.
    Exec(Command),
    /// Forked by the fork server ([`fork_worker`]): the fork server's child, not this
    /// process's, which the fork server reaps, kills what it left in its group after, and says
    /// how it ended.
    Forked(ForkedWorker),
}

/// `pid` as a [`Pid`].
fn raw(pid: u32) -> io::Result<Pid> {
    Pid::from_raw(pid as i32).ok_or_else(|| io::Error::other("child pid 0"))
}

/// How a supervised child's end is learned.
enum Ending {
    /// It is this process's child: wait for it.
    Child(std::process::Child),
    /// The fork server writes it into this pipe.
    Status(OwnedFd),
    /// It is nobody's this process can ask (an adopted worker): unknown.
    Unknown,
}

/// A child under supervision, driven step by step: by [`supervise`] for one child, or by a
/// poller watching many at once (a dispatcher's loop), which polls each one's [`Supervised::fds`] and calls
/// [`Supervised::step`] when any is ready or [`Supervised::wake_at`] has come. It starts
/// waiting at its gate, until [`Supervised::release`].
pub struct Supervised {
    pid: u32,
    pidfd: OwnedFd,
    /// The read end of its output, until the last writer closed it.
    output: Option<OwnedFd>,
    /// Its go-ahead pipe, kept open while it runs once the go-ahead was given.
    gate: Option<std::fs::File>,
    ending: Ending,
    schedule: StopSchedule,
    started: Instant,
    /// Whether its pidfd said it ended (a forked worker's status may come a moment later).
    exited: bool,
    buf: Vec<u8>,
}

/// The descriptors [`Supervised::fds`] gives, by position: each is polled for reading.
pub const SUPERVISED_FDS: usize = 4;

impl Supervised {
    /// Starts `launch` with stdin from its go-ahead pipe and stdout and stderr into `output`,
    /// its deadline `options.timeout` from now.
    pub fn start(launch: Launch, output: OutputPair, options: SuperviseOptions) -> io::Result<Self> {
        let OutputPair { read, write } = output;
        let (started, pid, pidfd, gate, ending) = match launch {
            Launch::Exec(mut command) => {
                command
                    .stdin(Stdio::piped())
                    .stdout(Stdio::from(write.try_clone()?))
                    .stderr(Stdio::from(write));
                let started = Instant::now();
                let mut child = command.spawn()?;
                // The command holds the write ends; drop them so that only the child writes.
                drop(command);
                let pid = child.id();
                // Our child, not yet waited for: the pid is surely its own.
                let pidfd = pidfd_open(raw(pid)?, PidfdFlags::empty())?;
                let gate = child
                    .stdin
                    .take()
                    .map(|stdin| std::fs::File::from(OwnedFd::from(stdin)));
                (started, pid, pidfd, gate, Ending::Child(child))
            }
            Launch::Forked(worker) => {
                // Only the worker holds the write end now.
                drop(write);
                (
                    worker.forked,
                    worker.pid,
                    worker.pidfd,
                    Some(worker.gate),
                    Ending::Status(worker.status),
                )
            }
        };
        rustix::io::ioctl_fionbio(&read, true)?;
        Ok(Self {
            pid,
            pidfd,
            output: Some(read),
            gate,
            ending,
            schedule: StopSchedule::new(started + options.timeout, options.kill_grace),
            started,
            exited: false,
            buf: Vec::new(),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Gives it its go-ahead (`go`), or refuses it (it then starts nothing).
    pub fn release(&mut self, go: bool) {
        self.gate = give_go_ahead(self.gate.take(), go);
    }

    /// What to poll for it, by position ([`SUPERVISED_FDS`]): its pidfd until it ended, its
    /// output, `cancel` until it is being stopped (a fired token stays readable: watching it
    /// then would spin), and a forked worker's status pipe once it ended.
    pub fn fds<'a>(&'a self, cancel: &'a CancelToken) -> [Option<BorrowedFd<'a>>; SUPERVISED_FDS] {
        let status = match &self.ending {
            Ending::Status(status) if self.exited => Some(status.as_fd()),
            _ => None,
        };
        [
            (!self.exited).then(|| self.pidfd.as_fd()),
            self.output.as_ref().map(|fd| fd.as_fd()),
            self.schedule.stopped().is_none().then(|| cancel.read.as_fd()),
            status,
        ]
    }

    /// When it must be looked at again even if nothing happens.
    pub fn wake_at(&self) -> Option<Instant> {
        self.schedule.wake_at()
    }

    /// Handles what is ready (`ready`, by the positions of [`Supervised::fds`]) and what is
    /// due now: output into `sink`, the stop at its deadline or once `cancel` fired. Its end,
    /// once it ended.
    pub fn step(
        &mut self,
        ready: [bool; SUPERVISED_FDS],
        cancel: &CancelToken,
        sink: &mut dyn OutputSink,
    ) -> io::Result<Option<ProcessEnd>> {
        let [exited, readable, _, status_ready] = ready;
        self.exited |= exited;
        if (readable || exited) && self.output.is_some() {
            if self.buf.is_empty() {
                self.buf = vec![0u8; 64 * 1024];
            }
            let open = match &self.output {
                Some(fd) => drain(fd, &mut self.buf, sink)?,
                None => false,
            };
            if !open {
                self.output = None;
            }
        }
        if !self.exited {
            let actions = self.schedule.at(Instant::now(), cancel.is_cancelled());
            if actions.ask {
                self.worker().signal(Signal::TERM);
            }
            if actions.force {
                self.worker().signal(Signal::KILL);
            }
            return Ok(None);
        }
        if matches!(self.ending, Ending::Child(_)) {
            // The worker is a zombie until waited for, so its pid (and group id) cannot have
            // been reused: killing the group now reaches only what the job left behind.
            self.worker().signal(Signal::KILL);
        }
        let exit = match &mut self.ending {
            Ending::Child(child) => {
                let status = child.wait()?;
                Some(match status.signal() {
                    Some(signal) => ExitKind::Signaled(signal),
                    None => ExitKind::Exited(status.code().unwrap_or(-1)),
                })
            }
            // The fork server says once it has reaped it.
            Ending::Status(_) if !status_ready => return Ok(None),
            Ending::Status(status) => fork_server::read_status(status),
            // Not our child: its parent has reaped it by now, or will at any moment, and then
            // its pid, and group id, may name another process. What it left behind in its
            // group is not signalled: only a stop, while it runs, reaches its group.
            Ending::Unknown => None,
        };
        Ok(Some(ProcessEnd {
            pid: self.pid,
            duration: self.started.elapsed(),
            exit,
            stopped: self.schedule.stopped(),
            took_go_ahead: go_ahead_taken(self.gate.as_ref()),
        }))
    }

    fn worker(&self) -> Worker<'_> {
        Worker {
            pidfd: &self.pidfd,
            // Never 0: it was checked when it was started.
            pid: Pid::from_raw(self.pid as i32).unwrap_or(Pid::INIT),
            our_child: matches!(self.ending, Ending::Child(_)),
        }
    }

    /// Drives it alone to its end: polls its descriptors and steps it until it ended.
    fn run(mut self, cancel: &CancelToken, sink: &mut dyn OutputSink) -> io::Result<ProcessEnd> {
        loop {
            let (_, ready) = poll_supervised(None, &[self.fds(cancel)], self.wake_at())?;
            if let Some(end) = self.step(ready[0], cancel, sink)? {
                return Ok(end);
            }
        }
    }
}

/// Reads the non-blocking pipe `fd` until it is empty: what a wake-up pipe holds means
/// nothing once its reader is awake.
pub fn empty_pipe(fd: &OwnedFd) {
    let mut buf = [0u8; 64];
    while matches!(rustix::io::read(fd, &mut buf), Ok(n) if n > 0) {}
}

/// One `poll` over `wake` and the descriptors of any number of supervised children (`sets`,
/// each from [`Supervised::fds`]), until one is ready or `until` comes: whether `wake` was
/// ready, and what was, for each child in order.
pub fn poll_supervised(
    wake: Option<BorrowedFd<'_>>,
    sets: &[[Option<BorrowedFd<'_>>; SUPERVISED_FDS]],
    until: Option<Instant>,
) -> io::Result<(bool, Vec<[bool; SUPERVISED_FDS]>)> {
    let timeout = until.map(|at| timespec(at.saturating_duration_since(Instant::now())));
    let mut polled: Vec<PollFd<'_>> = wake
        .into_iter()
        .chain(sets.iter().flatten().flatten().copied())
        .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
        .collect();
    match poll(&mut polled, timeout.as_ref()) {
        Ok(_) | Err(Errno::INTR) => {}
        Err(e) => return Err(e.into()),
    }
    let mut revents = polled.iter().map(|fd| !fd.revents().is_empty());
    let woken = wake.is_some() && revents.next().unwrap_or(false);
    let ready = sets
        .iter()
        .map(|set| set.map(|fd| fd.is_some() && revents.next().unwrap_or(false)))
        .collect();
    Ok((woken, ready))
}

/// Starts `launch` with stdin from a pipe that carries only its go-ahead and stdout and
/// stderr into `output`, calls `on_spawn` with its pid, streams its output into `sink`, stops
/// its process group at `options.timeout` or when `cancel` fires (SIGTERM, then SIGKILL after
/// `options.kill_grace`), kills whatever it left behind in its group, and reports how it
/// ended.
pub fn supervise(
    launch: Launch,
    output: OutputPair,
    options: SuperviseOptions,
    cancel: &CancelToken,
    sink: &mut dyn OutputSink,
    on_spawn: &mut dyn FnMut(u32) -> bool,
) -> io::Result<ProcessEnd> {
    let mut supervised = Supervised::start(launch, output, options)?;
    let go = on_spawn(supervised.pid());
    supervised.release(go);
    supervised.run(cancel, sink)
}

/// A worker forked by the fork server ([`fork_worker`]), waiting for [`supervise`].
pub struct ForkedWorker {
    pid: u32,
    /// Its pidfd, opened by the fork server before it could reap it.
    pidfd: OwnedFd,
    /// The write end of its stdin, the go-ahead pipe.
    gate: std::fs::File,
    /// The read end of its status pipe.
    status: OwnedFd,
    forked: Instant,
}

/// Has `server` (see [`fork_server`]) fork a worker that runs `request`, its command line
/// rewritten to `title`, its output going into `output`, with the library `preload` loaded
/// by the fork server before it forks (see [`ForkServer::fork`]). An error means no worker
/// exists.
pub fn fork_worker(
    server: &ForkServer,
    title: &[u8],
    request: &[u8],
    output: &OutputPair,
    preload: Option<&Path>,
) -> io::Result<ForkedWorker> {
    let (gate_read, gate_write) = pipe_with(PipeFlags::CLOEXEC)?;
    let (status_read, status_write) = pipe_with(PipeFlags::CLOEXEC)?;
    let forked = Instant::now();
    let fds = ForkFds {
        gate: gate_read.as_fd(),
        output: output.write.as_fd(),
        status: status_write.as_fd(),
    };
    let (pid, pidfd) = server.fork(title, request, &fds, preload)?;
    Ok(ForkedWorker {
        pid,
        pidfd,
        gate: gate_write.into(),
        status: status_read,
        forked,
    })
}

/// Watches a worker this process did not start (its dispatcher crashed) until it ends, with
/// the same deadline, cancellation and output handling as [`supervise`]. Its exit status
/// cannot be known; whether it was stopped is returned. `Ok(None)` is returned at once, with
/// nothing watched, when no process `pid` exists.
pub fn adopt(
    pid: u32,
    output: Option<OwnedFd>,
    time_left: Duration,
    kill_grace: Duration,
    cancel: &CancelToken,
    sink: &mut dyn OutputSink,
) -> io::Result<Option<StopReason>> {
    let Some(raw_pid) = Pid::from_raw(pid as i32) else {
        return Ok(None);
    };
    let pidfd = match pidfd_open(raw_pid, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(Errno::SRCH) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let supervised = Supervised {
        pid,
        pidfd,
        output,
        gate: None,
        ending: Ending::Unknown,
        schedule: StopSchedule::new(Instant::now() + time_left, kill_grace),
        started: Instant::now(),
        exited: false,
        buf: Vec::new(),
    };
    if let Some(fd) = &supervised.output {
        rustix::io::ioctl_fionbio(fd, true)?;
    }
    Ok(supervised.run(cancel, sink)?.stopped)
}

/// The live worker running the attempt whose command line contains one of `markers` (the
/// paths its report may have): the process `pid` if it is that worker, else any process that
/// is, found in one pass over `/proc`. The command line is checked so that a reused pid is
/// never mistaken for the worker.
pub fn find_worker(pid: Option<u32>, markers: &[&str]) -> Option<u32> {
    let is_ours = |cmdline: &str| {
        cmdline.contains("__worker") && markers.iter().any(|marker| cmdline.contains(marker))
    };
    if let Some(pid) = pid.filter(|&p| command_line(p).is_some_and(|c| is_ours(&c))) {
        return Some(pid);
    }
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&p| command_line(p).is_some_and(|c| is_ours(&c)))
}

fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Calls `handler` with what a signal asks of a long-running process — stop on SIGINT and
/// SIGTERM, reopen the logs on SIGHUP and SIGUSR1 (logrotate's `postrotate` convention) — from
/// a thread of its own.
pub fn on_signals(handler: impl Fn(SignalRequest) + Send + Sync + 'static) -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                handler(match signal {
                    SIGHUP | SIGUSR1 => SignalRequest::ReopenLogs,
                    _ => SignalRequest::Stop,
                });
            }
        })?;
    Ok(())
}

/// Calls `handler` on SIGINT, SIGTERM and SIGHUP (the terminal went away), from a thread of
/// its own: for a command that follows something and has no logs to reopen.
pub fn on_termination(handler: impl Fn() + Send + Sync + 'static) -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                handler();
            }
        })?;
    Ok(())
}

fn timespec(d: Duration) -> Timespec {
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

/// A worker being watched, signalled only through its pidfd: never a bare pid that may have
/// been reused by another process.
struct Worker<'a> {
    pidfd: &'a OwnedFd,
    pid: Pid,
    /// Whether it is this process's child, not yet waited for: then its pid stays its own
    /// (alive, or a zombie) until this process waits for it.
    our_child: bool,
}

impl Worker<'_> {
    /// Signals the worker's process group (the worker, once it has made its own, and what its
    /// job started), but only while the group id is known to be the worker's: it is our
    /// unreaped child, or its pidfd says it has not ended. Before it has made its group, and
    /// whenever the group cannot be signalled, the worker alone, through its pidfd (a no-op
    /// once it has ended).
    fn signal(&self, signal: Signal) {
        let group_is_its = self.our_child || !has_ended(self.pidfd);
        if !(group_is_its && kill_process_group(self.pid, signal).is_ok()) {
            let _ = pidfd_send_signal(self.pidfd, signal);
        }
    }
}

/// Whether the process of `pidfd` has ended (its pidfd is readable then).
fn has_ended(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let zero = timespec(Duration::ZERO);
    match poll(&mut fds, Some(&zero)) {
        Ok(n) => n > 0,
        // Unknown: treat it as ended, so that nothing is signalled by number.
        Err(_) => true,
    }
}

/// A dispatcher's doorbell: a Unix datagram socket in the state directory. Anyone who changes
/// the queue rings it with one byte ([`ring`]); the dispatcher blocks in [`Doorbell::wait`].
#[derive(Debug)]
pub struct Doorbell {
    socket: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
}

impl Doorbell {
    /// Binds the doorbell at `path`, replacing a stale socket file left by a crashed owner.
    /// The caller must hold the dispatcher lock, so no live doorbell is replaced.
    pub fn bind(path: &Path) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(Self {
            socket: std::os::unix::net::UnixDatagram::bind(path)?,
            path: path.to_path_buf(),
        })
    }

    /// Blocks until the doorbell rings; returns the byte rung.
    pub fn wait(&self) -> io::Result<u8> {
        let mut buf = [0u8; 1];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::NotConnected.into()),
                Ok(_) => return Ok(buf[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Another handle to the same doorbell (for a listener thread).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            socket: self.socket.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// Removes the socket file, so that ringing it fails from now on, and wakes a thread
    /// blocked in [`Doorbell::wait`] with an error.
    pub fn unlink(&self) -> io::Result<()> {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        std::fs::remove_file(&self.path)
    }
}

/// Whether someone listens at the doorbell `path`, found without ringing it: a datagram
/// socket connects only to a bound one, and connecting delivers nothing to its owner.
pub fn answers(path: &Path) -> io::Result<bool> {
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    match socket.connect(path) {
        Ok(()) => Ok(true),
        Err(e) if nobody_listens(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `e`, from reaching a doorbell, says that nobody listens there.
fn nobody_listens(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

/// Rings the doorbell at `path` with `byte`. `Ok(false)` when nobody is listening there.
pub fn ring(path: &Path, byte: u8) -> io::Result<bool> {
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    match socket.send_to(&[byte], path) {
        Ok(_) => Ok(true),
        // A full queue means the listener has wake-ups pending already.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
        Err(e) if nobody_listens(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Nothing to do when spawning on Unix: the child detaches itself with [`detach_self`].
pub fn detach_command(_command: &mut Command) {}

/// Detaches the calling process from its caller's session and terminal (the spec's `nohup`).
pub fn detach_self() -> io::Result<()> {
    match rustix::process::setsid() {
        Ok(_) | Err(Errno::PERM) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn a_signal_without_a_name_is_named_by_its_number() {
        assert_eq!(crash_name(0), "signal 0");
        assert_eq!(crash_name(99), "signal 99");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn linux_signal_numbers_are_named() {
        for (number, name) in [
            (1, "SIGHUP"),
            (2, "SIGINT"),
            (3, "SIGQUIT"),
            (4, "SIGILL"),
            (5, "SIGTRAP"),
            (6, "SIGABRT"),
            (7, "SIGBUS"),
            (8, "SIGFPE"),
            (9, "SIGKILL"),
            (11, "SIGSEGV"),
            (13, "SIGPIPE"),
            (14, "SIGALRM"),
            (15, "SIGTERM"),
            (24, "SIGXCPU"),
            (25, "SIGXFSZ"),
            (31, "SIGSYS"),
        ] {
            assert_eq!(crash_name(number), name);
        }
    }

    /// A process group of two `sleep 600`: its leader, and a member in the leader's group (a
    /// child of the test, so that the test learns which signal ended it).
    fn group() -> (std::process::Child, std::process::Child) {
        let leader = Command::new("sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .unwrap();
        let member = Command::new("sleep")
            .arg("600")
            .process_group(leader.id() as i32)
            .spawn()
            .unwrap();
        (leader, member)
    }

    /// Ends `member` with SIGTERM and says which signal ended it: SIGKILL if one sent earlier
    /// reached it.
    fn ending_signal(mut member: std::process::Child) -> Option<i32> {
        let pid = Pid::from_raw(member.id() as i32).unwrap();
        let pidfd = pidfd_open(pid, PidfdFlags::empty()).unwrap();
        pidfd_send_signal(&pidfd, Signal::TERM).unwrap();
        member.wait().unwrap().signal()
    }

    #[test]
    fn a_worker_that_ended_is_never_signalled_by_its_number() {
        let (mut leader, member) = group();
        let pid = Pid::from_raw(leader.id() as i32).unwrap();
        let pidfd = pidfd_open(pid, PidfdFlags::empty()).unwrap();
        let adopted = Worker {
            pidfd: &pidfd,
            pid,
            our_child: false,
        };
        assert!(!has_ended(&pidfd));
        // The leader ends and is reaped: from now on its number may be anyone's.
        pidfd_send_signal(&pidfd, Signal::KILL).unwrap();
        leader.wait().unwrap();
        assert!(has_ended(&pidfd));
        adopted.signal(Signal::KILL);
        assert_eq!(
            ending_signal(member),
            Some(Signal::TERM.as_raw()),
            "a group whose leader ended is not signalled by number"
        );
    }

    #[test]
    fn a_running_worker_is_stopped_with_its_whole_group() {
        let (mut leader, member) = group();
        let pid = Pid::from_raw(leader.id() as i32).unwrap();
        let pidfd = pidfd_open(pid, PidfdFlags::empty()).unwrap();
        let adopted = Worker {
            pidfd: &pidfd,
            pid,
            our_child: false,
        };
        adopted.signal(Signal::KILL);
        assert_eq!(leader.wait().unwrap().signal(), Some(Signal::KILL.as_raw()));
        assert_eq!(
            ending_signal(member),
            Some(Signal::KILL.as_raw()),
            "the group member was killed with its leader"
        );
    }
}
